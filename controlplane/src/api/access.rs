//! Who may do what: upstream issuers, RBAC policies and groupings,
//! token exchange and issue, signing keys, the audit log, and the day-0
//! bootstrap.

use super::*;

pub(super) async fn list_issuers(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| {
        Ok(Json(
            json!({"items": m.tenant(&t)?.idp_issuers.values().collect::<Vec<_>>()}),
        ))
    })
}

pub(super) async fn put_issuer(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let issuer: IdpIssuer = body(&b)?;
    issuer.validate().map_err(bad)?;
    Ok(applied(
        n.propose(&c.actor(), Command::PutIdpIssuer { tenant: t, issuer })
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerQuery {
    issuer: String,
}

pub(super) async fn delete_issuer(
    State(n): S,
    h: HeaderMap,
    Path(t): Path<String>,
    Query(q): Query<IssuerQuery>,
) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let cmd = Command::DeleteIdpIssuer {
        tenant: t,
        issuer: q.issuer,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn list_policies(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::RbacView, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| Ok(Json(json!({"items": m.tenant(&t)?.rules.policies}))))
}

pub(super) async fn list_groupings(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::RbacView, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| Ok(Json(json!({"items": m.tenant(&t)?.rules.groupings}))))
}

/// An RBAC edit: a body of `T` made into a command that `apply` checks
/// against the caller's own grants (nobody grants what they lack).
pub(super) async fn rbac_edit<T: DeserializeOwned>(
    n: &Node,
    h: &HeaderMap,
    t: String,
    b: &Bytes,
    command: impl FnOnce(Vec<Grant>, String, T) -> Command,
) -> ApiResult {
    let c = caller(n, h, &t)?;
    let x: T = body(b)?;
    let cmd = command(c.grants(&t), t, x);
    n.read(|m| m.refuses(&cmd)).map_err(CpError::Apply)?;
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn add_policy(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, policy| Command::AddPolicy {
        caller,
        tenant,
        policy,
    })
    .await
}

pub(super) async fn remove_policy(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, policy| Command::RemovePolicy {
        caller,
        tenant,
        policy,
    })
    .await
}

pub(super) async fn add_grouping(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, grouping| Command::AddGrouping {
        caller,
        tenant,
        grouping,
    })
    .await
}

pub(super) async fn remove_grouping(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, grouping| {
        Command::RemoveGrouping {
            caller,
            tenant,
            grouping,
        }
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExchangeRequest {
    #[serde(default)]
    requested: Option<Vec<Action>>,
    #[serde(default)]
    resources: Option<Vec<Object>>,
}

/// Signs a token for `principal` with what RBAC grants it, narrowed.
pub(super) fn mint(
    n: &Node,
    tenant: &str,
    principal: &str,
    groups: &[String],
    req: &ExchangeRequest,
) -> ApiResult {
    if let Some(r) = req.resources.iter().flatten().find(|r| r.tenant() != tenant) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("resource {r} is outside tenant {tenant:?}"),
        ));
    }
    let (grants, key) = n.read(|m| {
        let t = m.tenant(tenant)?;
        let key = t
            .keys
            .last()
            .cloned()
            .ok_or_else(|| crate::state::ApplyError::conflict("the tenant has no signing key"))?;
        Ok::<_, crate::state::ApplyError>((t.rules.grants(principal, groups), key))
    })?;
    let perms = for_token(&grants, req.requested.as_deref(), req.resources.as_deref())
        .map_err(|e| ApiError(StatusCode::FORBIDDEN, e.to_string()))?;
    let ttl = n.cfg.token_ttl_s;
    let token = auth::sign(&key, tenant, principal, perms.clone(), now_ms() / 1000, ttl)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "principal": principal,
        "permissions": perms,
    })))
}

pub(super) async fn exchange(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let upstream = bearer(&h)?;
    let req: ExchangeRequest = if b.is_empty() {
        ExchangeRequest::default()
    } else {
        body(&b)?
    };
    let iss = auth::unverified_issuer(upstream)?;
    let issuer = n
        .read(|m| m.tenants.get(&t).and_then(|x| x.idp_issuers.get(&iss).cloned()))
        .ok_or(AuthError::UnknownIssuer(iss))?;
    let now = now_ms() / 1000;
    let mut jwks = n.upstream_jwks(&issuer, false).await?;
    let mut verified = verify_with(upstream, &issuer, &jwks, now);
    if matches!(verified, Err(AuthError::UnknownKey(_))) && issuer.jwks.is_none() {
        // The IdP may have rotated: fetch its keys again, once.
        jwks = n.upstream_jwks(&issuer, true).await?;
        verified = verify_with(upstream, &issuer, &jwks, now);
    }
    let id = verified?;
    mint(&n, &t, &id.subject, &id.groups, &req)
}

pub(super) fn verify_with(
    token: &str,
    issuer: &IdpIssuer,
    jwks: &Value,
    now_s: u64,
) -> Result<auth::Identity, AuthError> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone())
        .map_err(|e| AuthError::Malformed(format!("issuer JWKS: {e}")))?;
    auth::verify_upstream(token, issuer, &set, now_s)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(flatten)]
    narrow: ExchangeRequest,
}

pub(super) async fn issue(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    operator(&n, &h)?;
    let r: IssueRequest = body(&b)?;
    mint(&n, &t, &r.principal, &r.groups, &r.narrow)
}

pub(super) async fn jwks(State(n): S, Path(t): Path<String>) -> ApiResult {
    Ok(Json(n.read(|m| m.jwks(&t))?))
}

pub(super) async fn rotate(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let cmd = Command::RotateKey {
        tenant: t,
        key: fresh_key(),
        overlap_ms: key_overlap_ms(&n),
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn tenant_audit(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    n.read(|m| {
        m.tenant(&t)?;
        let items: Vec<_> = m.tenant_audit.get(&t).into_iter().flatten().collect();
        Ok(Json(json!({ "items": items })))
    })
}

pub(super) async fn audit(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    Ok(Json(n.read(|m| json!({ "items": m.audit }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BootstrapRequest {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    idp_issuers: Vec<IdpIssuer>,
    initial_admin_principals: Vec<String>,
}

pub(super) async fn bootstrap(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let secret = n.cfg.bootstrap_secret.clone().unwrap_or_default();
    let given = h
        .get("x-felix-bootstrap-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if secret.is_empty() || !same(given, &secret) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "bad or missing X-Felix-Bootstrap-Token".into(),
        ));
    }
    check_name("tenant", &t)?;
    let r: BootstrapRequest = body(&b)?;
    for i in &r.idp_issuers {
        i.validate().map_err(bad)?;
    }
    let cmd = Command::Bootstrap {
        tenant: t,
        spec: TenantSpec {
            display_name: r.display_name,
            ..TenantSpec::default()
        },
        issuers: r.idp_issuers,
        admins: r.initial_admin_principals,
        key: fresh_key(),
    };
    Ok(applied(n.propose("bootstrap", cmd).await?))
}
