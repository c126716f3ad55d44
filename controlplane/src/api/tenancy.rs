//! Tenants and namespaces.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
    #[serde(flatten)]
    spec: TenantSpec,
}

pub(super) async fn list_tenants(State(n): S, h: HeaderMap, Query(p): Query<Page>) -> ApiResult {
    operator(&n, &h)?;
    n.read_barrier().await;
    n.read(|m| paginate(m.tenants.iter().map(|(k, t)| (k.clone(), t.spec.clone())), &p))
}

pub(super) async fn create_tenant(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    let c = operator(&n, &h)?;
    let t: NewTenant = body(&b)?;
    check_name("tenant", &t.name)?;
    t.spec.validate().map_err(bad)?;
    let data_key = data_key_for(&t.spec);
    let a = n
        .propose(
            &c.actor(),
            Command::PutTenant {
                tenant: t.name,
                spec: t.spec,
                key: Some(fresh_key()),
                keep_quotas: false,
                data_key,
            },
        )
        .await?;
    Ok(applied(a))
}

pub(super) async fn get_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = m.tenant(&t)?;
        // Which data keys, never their material (that is the brokers').
        let data_keys: Vec<Value> = x
            .data_keys
            .iter()
            .map(|k| json!({"id": k.id, "master_key_id": k.master_key_id, "created_ms": k.created_ms}))
            .collect();
        Ok(Json(
            json!({"name": t, "spec": x.spec, "namespaces": x.namespaces.len(), "data_keys": data_keys}),
        ))
    })
}

pub(super) async fn put_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let spec: TenantSpec = body(&b)?;
    spec.validate().map_err(bad)?;
    let current = n.read(|m| m.tenant(&t).map(|x| x.spec.quotas))?;
    let keep_quotas = quotas_kept(&c, &spec.quotas, &current)?;
    // The spec sent is the spec: one without `encryption` turns it off
    // (the data keys stay, so what was sealed stays readable).
    let data_key = data_key_for(&spec);
    Ok(applied(
        n.propose(
            &c.actor(),
            Command::PutTenant {
                tenant: t,
                spec,
                key: None,
                keep_quotas,
                data_key,
            },
        )
        .await?,
    ))
}

/// A fresh data key's material whenever `spec` has encryption: apply uses
/// it only if the tenant needs a new data key (it has none under the
/// spec's master key), and it must be drawn here, not in apply.
fn data_key_for(spec: &TenantSpec) -> Option<String> {
    spec.encryption.is_some().then(fresh_data_key_material)
}

/// `POST /v1/tenants/{tenant}/data-keys/rotate`: a new data key seals the
/// tenant's new records; the older ones still open what they sealed.
pub(super) async fn rotate_data_key(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let cmd = Command::RotateDataKey {
        tenant: t,
        material: fresh_data_key_material(),
        due_only: false,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn delete_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    let c = operator(&n, &h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::DeleteTenant { tenant: t }).await?,
    ))
}

/// Quotas are the operator's to set: anyone else may leave them out or
/// send them back as they are (a read-modify-write of the rest), and the
/// command then keeps whatever they are when it is applied, so it cannot
/// undo an operator's change made meanwhile.
fn quotas_kept(c: &Caller, asked: &Quotas, current: &Quotas) -> ApiResult<bool> {
    if matches!(c, Caller::Operator) {
        return Ok(false);
    }
    if asked != current && *asked != Quotas::default() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "quotas are set by the cluster operator; send them unchanged or leave them out".into(),
        ));
    }
    Ok(true)
}

pub(super) fn ns_object(t: &str, ns: &str) -> Object {
    Object::Namespace {
        tenant: t.into(),
        namespace: crate::rbac::Scope::Named(ns.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNamespace {
    name: String,
    #[serde(flatten)]
    spec: NamespaceSpec,
}

pub(super) async fn list_namespaces(
    State(n): S,
    h: HeaderMap,
    Path(t): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    n.read_barrier().await;
    n.read(|m| {
        let x = m.tenant(&t)?;
        // A namespace-scoped admin sees the namespaces it manages.
        let visible = x
            .namespaces
            .iter()
            .filter(|(k, _)| c.require(Action::ResourceManage, &ns_object(&t, k)).is_ok())
            .map(|(k, v)| (k.clone(), v.spec.clone()));
        paginate(visible, &p)
    })
}

pub(super) async fn create_namespace(
    State(n): S,
    h: HeaderMap,
    Path(t): Path<String>,
    b: Bytes,
) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    let x: NewNamespace = body(&b)?;
    check_name("namespace", &x.name)?;
    c.require(Action::ResourceManage, &ns_object(&t, &x.name))?;
    x.spec.validate().map_err(bad)?;
    let current = n.read(|m| {
        m.namespace(&t, &x.name)
            .map(|n| n.spec.quotas)
            .unwrap_or_default()
    });
    let keep_quotas = quotas_kept(&c, &x.spec.quotas, &current)?;
    let cmd = Command::PutNamespace {
        tenant: t,
        namespace: x.name,
        spec: x.spec,
        keep_quotas,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn get_namespace(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
) -> ApiResult {
    ns_caller(&n, &h, &t, &ns)?.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = m.namespace(&t, &ns)?;
        Ok(Json(
            json!({"name": ns, "spec": x.spec, "streams": x.streams.len(), "caches": x.caches.len()}),
        ))
    })
}

pub(super) async fn put_namespace(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let c = ns_caller(&n, &h, &t, &ns)?;
    c.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    let spec: NamespaceSpec = body(&b)?;
    spec.validate().map_err(bad)?;
    let current = n.read(|m| m.namespace(&t, &ns).map(|n| n.spec.quotas))?;
    let keep_quotas = quotas_kept(&c, &spec.quotas, &current)?;
    let cmd = Command::PutNamespace {
        tenant: t,
        namespace: ns,
        spec,
        keep_quotas,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn delete_namespace(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
) -> ApiResult {
    let c = ns_caller(&n, &h, &t, &ns)?;
    c.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    Ok(applied(
        n.propose(
            &c.actor(),
            Command::DeleteNamespace {
                tenant: t,
                namespace: ns,
            },
        )
        .await?,
    ))
}
