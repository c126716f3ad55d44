//! The HTTP JSON API (axum): the admin and auth endpoints, the brokers'
//! endpoints and feed, the Raft RPCs, and the day-0 bootstrap listener.
//! [`ROUTES`] lists every endpoint; `/openapi.json` is generated from it
//! and a test checks that the router answers each one.
//!
//! Status codes: 400 bad input (the message says what), 401 no or bad
//! token, 403 token fine but not allowed, 404 unknown, 409 conflict (also
//! "delete while subscribers are active"), 410 feed too far behind, 503
//! no leader yet (retry).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{self, AuthError, FelixClaims, Verifier};
use crate::model::*;
use crate::node::{fresh_key, now_ms, CpError, Forwarded, Node};
use crate::raft::network::{SnapshotRpc, SECRET_HEADER};
use crate::raft::Outcome;
use crate::rbac::{for_token, Action, Grant, Object};
use crate::state::{tenant_admin_grants, Command, ErrorKind, Placed};
use felix_model::names::name_problem;

/// Items one list page holds at most.
pub const PAGE_SIZE_MAX: usize = 1000;
/// Longest a feed long-poll waits.
pub const FEED_WAIT_MS_MAX: u64 = 30_000;
/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// How long a key that stopped signing still verifies: a token's life plus
/// the clock skew allowed.
fn key_overlap_ms(node: &Node) -> u64 {
    (node.cfg.token_ttl_s + auth::CLOCK_SKEW_S_MAX) * 1000
}

/// (method, path, who may call it, what it does): the API's table of
/// contents, rendered as `/openapi.json`.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/openapi.json", "anyone", "This document."),
    ("get", "/metrics", "anyone", "Prometheus metrics of this node."),
    ("get", "/live", "anyone", "200 while the process answers."),
    ("get", "/ready", "anyone", "200 once this node knows a leader (it can take writes, forwarded), else 503."),
    ("get", "/v1/cluster", "anyone", "Control-plane nodes, leader, metadata version, under-replicated shards."),
    ("get", "/v1/tenants", "operator", "List tenants (paginated)."),
    ("post", "/v1/tenants", "operator", "Create a tenant {name, display_name?, quotas?}."),
    ("get", "/v1/tenants/{tenant}", "tenant.manage", "A tenant's spec."),
    ("put", "/v1/tenants/{tenant}", "tenant.manage", "Update a tenant's display name and quotas."),
    ("delete", "/v1/tenants/{tenant}", "operator", "Delete an empty tenant."),
    ("get", "/v1/tenants/{tenant}/namespaces", "resource.manage", "List namespaces (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces", "resource.manage", "Create a namespace {name, description?, quotas?}."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "A namespace's spec."),
    ("put", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "Update a namespace's quotas."),
    ("delete", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "Delete an empty namespace."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/streams", "resource.manage", "List streams (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces/{namespace}/streams", "resource.manage", "Create a stream {name, shards, replication_factor, durability, retention_ms, retention_bytes, kind}."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "A stream's spec and placement."),
    ("patch", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "Change retention or max_deliveries; reaches brokers through the feed."),
    ("delete", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "Delete a stream; 409 while subscribers are active unless ?force=true."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/caches", "resource.manage", "List caches (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces/{namespace}/caches", "resource.manage", "Create a cache {name, shards, replication_factor, default_ttl_ms, memory_bytes_max}."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/caches/{cache}", "resource.manage", "A cache's spec and placement."),
    ("delete", "/v1/tenants/{tenant}/namespaces/{namespace}/caches/{cache}", "resource.manage", "Delete a cache."),
    ("get", "/v1/tenants/{tenant}/idp-issuers", "tenant.manage", "List the tenant's identity providers."),
    ("post", "/v1/tenants/{tenant}/idp-issuers", "tenant.manage", "Create or update an identity provider."),
    ("delete", "/v1/tenants/{tenant}/idp-issuers", "tenant.manage", "Delete an identity provider (?issuer=)."),
    ("get", "/v1/tenants/{tenant}/rbac/policies", "rbac.view", "List policies."),
    ("post", "/v1/tenants/{tenant}/rbac/policies", "rbac.policy.manage", "Add a policy {subject, object, action}, inside the caller's scope."),
    ("delete", "/v1/tenants/{tenant}/rbac/policies", "rbac.policy.manage", "Remove a policy (same body)."),
    ("get", "/v1/tenants/{tenant}/rbac/groupings", "rbac.view", "List groupings."),
    ("post", "/v1/tenants/{tenant}/rbac/groupings", "rbac.assignment.manage", "Add a grouping {member, group}, inside the caller's scope."),
    ("delete", "/v1/tenants/{tenant}/rbac/groupings", "rbac.assignment.manage", "Remove a grouping (same body)."),
    ("post", "/v1/tenants/{tenant}/token/exchange", "upstream IdP token", "Exchange an upstream JWT for a Felix token {requested?, resources?}; 403 when nothing remains."),
    ("post", "/v1/tenants/{tenant}/token/issue", "operator", "Issue a Felix token for {principal, groups?, requested?, resources?} from RBAC, without an IdP."),
    ("get", "/v1/tenants/{tenant}/.well-known/jwks.json", "anyone", "The tenant's token verification keys."),
    ("post", "/v1/tenants/{tenant}/keys/rotate", "tenant.manage", "A new signing key; the old one verifies until its tokens expire."),
    ("get", "/v1/tenants/{tenant}/audit", "tenant.manage", "The tenant's audit log (newest last)."),
    ("get", "/v1/audit", "operator", "The whole audit log."),
    ("get", "/v1/brokers", "operator", "Brokers and their status."),
    ("post", "/v1/brokers", "operator", "Register a broker {id, client_addr, raft_addr, zone?, shards_max?}."),
    ("post", "/v1/brokers/{broker}/heartbeat", "operator", "A broker is alive {subscribers: {\"t/ns/s\": n}}."),
    ("post", "/v1/brokers/{broker}/drain", "operator", "Move a broker's leaderships and replicas away."),
    ("post", "/v1/brokers/{broker}/undrain", "operator", "Let a drained broker take shards again."),
    ("post", "/v1/brokers/{broker}/moves/{group}/done", "operator", "A move off this broker finished: it left the group."),
    ("post", "/v1/rebalance", "operator", "Even out preferred leaders."),
    ("get", "/v1/feed/snapshot", "operator", "The brokers' view (no secrets) at version V."),
    ("get", "/v1/feed/changes", "operator", "Changes since ?since=V, long-polled up to ?wait_ms=; 410 when V is too old."),
];

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<CpError> for ApiError {
    fn from(e: CpError) -> Self {
        let status = match &e {
            CpError::Apply(a) => match a.kind {
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Conflict => StatusCode::CONFLICT,
                ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            },
            CpError::Auth(a) if a.is_forbidden() => StatusCode::FORBIDDEN,
            CpError::Auth(_) => StatusCode::UNAUTHORIZED,
            CpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CpError::NoLeader | CpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        CpError::Auth(e).into()
    }
}

impl From<crate::state::ApplyError> for ApiError {
    fn from(e: crate::state::ApplyError) -> Self {
        CpError::Apply(e).into()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

/// A JSON body, refused with 400 and serde's message (which names an
/// unknown or missing field) rather than axum's 422.
fn body<T: DeserializeOwned>(b: &Bytes) -> ApiResult<T> {
    if b.len() > BODY_BYTES_MAX {
        return Err(bad(format!("body larger than {BODY_BYTES_MAX} bytes")));
    }
    serde_json::from_slice(b).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn check_name(what: &str, n: &str) -> ApiResult<()> {
    match name_problem(n) {
        Some(why) => Err(bad(format!("{what} {n:?}: {why}"))),
        None => Ok(()),
    }
}

/// Who is calling.
enum Caller {
    /// The cluster secret: every operation.
    Operator,
    Token(FelixClaims),
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Token(c) => c.sub.clone(),
        }
    }

    fn require(&self, action: Action, object: &Object) -> ApiResult<()> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Token(c) => Ok(c.check(action, object)?),
        }
    }

    fn grants(&self, tenant: &str) -> Vec<Grant> {
        match self {
            Caller::Operator => tenant_admin_grants(tenant),
            Caller::Token(c) => c.perms.clone(),
        }
    }
}

fn bearer(h: &HeaderMap) -> Result<&str, AuthError> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

fn same(a: &str, b: &str) -> bool {
    // Constant time in the secret's length.
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn operator(node: &Node, h: &HeaderMap) -> ApiResult<Caller> {
    let t = bearer(h)?;
    if same(t, &node.cfg.cluster_secret) {
        return Ok(Caller::Operator);
    }
    Err(ApiError(
        StatusCode::FORBIDDEN,
        "this operation needs the cluster operator's credential".into(),
    ))
}

/// The operator, or a Felix token of `tenant` verified against its keys.
fn caller(node: &Node, h: &HeaderMap, tenant: &str) -> ApiResult<Caller> {
    let t = bearer(h)?;
    if same(t, &node.cfg.cluster_secret) {
        return Ok(Caller::Operator);
    }
    let keys = node.read(|m| m.tenants.get(tenant).map(|t| t.keys.clone()));
    let Some(keys) = keys else {
        // Not 404: a caller without access learns nothing about which
        // tenants exist.
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("no access to tenant {tenant:?}"),
        ));
    };
    let claims = Verifier::from_keys(&keys).verify(t, tenant, now_ms() / 1000)?;
    Ok(Caller::Token(claims))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    page_size: Option<usize>,
    #[serde(default)]
    page_token: Option<String>,
}

fn paginate<T: Serialize>(items: impl Iterator<Item = (String, T)>, p: &Page) -> ApiResult {
    let size = p.page_size.unwrap_or(100);
    if size == 0 || size > PAGE_SIZE_MAX {
        return Err(bad(format!("page_size must be 1 to {PAGE_SIZE_MAX}")));
    }
    let mut out = Vec::new();
    let mut next = None;
    for (name, item) in items.filter(|(n, _)| p.page_token.as_ref().is_none_or(|t| n > t)) {
        if out.len() == size {
            next = out.last().map(|(n, _): &(String, Value)| n.clone());
            break;
        }
        let mut v = serde_json::to_value(item).map_err(|e| bad(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("name".into(), name.clone().into());
        }
        out.push((name, v));
    }
    Ok(Json(json!({
        "items": out.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_page_token": next,
    })))
}

fn applied(a: crate::state::Applied) -> Json<Value> {
    Json(serde_json::to_value(a).unwrap_or_default())
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/cluster", get(cluster))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/v1/tenants/:tenant",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        )
        .route(
            "/v1/tenants/:tenant/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/v1/tenants/:tenant/namespaces/:namespace",
            get(get_namespace).put(put_namespace).delete(delete_namespace),
        )
        .route(
            "/v1/tenants/:tenant/namespaces/:namespace/streams",
            get(list_placed::<Stream>).post(create_placed::<Stream>),
        )
        .route(
            "/v1/tenants/:tenant/namespaces/:namespace/streams/:stream",
            get(get_placed::<Stream>)
                .patch(patch_stream)
                .delete(delete_stream),
        )
        .route(
            "/v1/tenants/:tenant/namespaces/:namespace/caches",
            get(list_placed::<Cache>).post(create_placed::<Cache>),
        )
        .route(
            "/v1/tenants/:tenant/namespaces/:namespace/caches/:cache",
            get(get_placed::<Cache>).delete(delete_cache),
        )
        .route(
            "/v1/tenants/:tenant/idp-issuers",
            get(list_issuers).post(put_issuer).delete(delete_issuer),
        )
        .route(
            "/v1/tenants/:tenant/rbac/policies",
            get(list_policies).post(add_policy).delete(remove_policy),
        )
        .route(
            "/v1/tenants/:tenant/rbac/groupings",
            get(list_groupings).post(add_grouping).delete(remove_grouping),
        )
        .route("/v1/tenants/:tenant/token/exchange", post(exchange))
        .route("/v1/tenants/:tenant/token/issue", post(issue))
        .route("/v1/tenants/:tenant/.well-known/jwks.json", get(jwks))
        .route("/v1/tenants/:tenant/keys/rotate", post(rotate))
        .route("/v1/tenants/:tenant/audit", get(tenant_audit))
        .route("/v1/audit", get(audit))
        .route("/v1/brokers", get(list_brokers).post(register_broker))
        .route("/v1/brokers/:broker/heartbeat", post(heartbeat))
        .route("/v1/brokers/:broker/drain", post(drain))
        .route("/v1/brokers/:broker/undrain", post(undrain))
        .route("/v1/brokers/:broker/moves/:group/done", post(move_done))
        .route("/v1/rebalance", post(rebalance))
        .route("/v1/feed/snapshot", get(feed_snapshot))
        .route("/v1/feed/changes", get(feed_changes))
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .route("/raft/propose", post(raft_propose))
        .route("/metrics", get(metrics_text))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /openapi.json".into(),
            )
        })
        .layer(axum::middleware::from_fn(measure))
        .with_state(node)
}

/// Counts and times every call by its route (the matched pattern, never
/// the raw path) and status.
async fn measure(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let r = next.run(req).await;
    let status = r.status().as_u16().to_string();
    metrics::counter!(crate::metrics::API_REQUESTS_TOTAL, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::API_REQUEST_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    r
}

async fn metrics_text(State(n): S) -> Response {
    let Some(h) = crate::metrics::handle() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no metrics recorder").into_response();
    };
    crate::metrics::observe_node(&n);
    ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response()
}

async fn ready(State(n): S) -> Response {
    if n.leader_addr().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response()
    }
}

/// The bootstrap listener's router: one endpoint, behind its own secret.
pub fn bootstrap_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/internal/bootstrap/tenants/:tenant/initialize", post(bootstrap))
        .with_state(node)
}

type S = State<Arc<Node>>;

async fn openapi() -> Json<Value> {
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for (method, path, who, what) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|p| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        paths.entry(path).or_default().insert(
            method.to_string(),
            json!({
                "summary": what,
                "description": format!("Caller: {who}."),
                "parameters": params,
                "responses": {
                    "200": {"description": "OK (JSON)"},
                    "400": {"description": "Bad input; the error says what is wrong"},
                    "401": {"description": "No or invalid token"},
                    "403": {"description": "Not allowed"},
                    "404": {"description": "Not found"},
                    "409": {"description": "Conflict"},
                    "503": {"description": "No control-plane leader yet; retry"},
                },
            }),
        );
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "Felix control plane", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }))
}

async fn cluster(State(n): S) -> Json<Value> {
    let m = n.raft.metrics().borrow().clone();
    let (version, under) = n.read(|md| (md.version, md.under_replicated()));
    Json(json!({
        "node": n.id,
        "leader": m.current_leader,
        "term": m.current_term,
        "members": m.membership_config.membership().nodes().map(|(id, node)| json!({"id": id, "addr": node.addr})).collect::<Vec<_>>(),
        "version": version,
        "under_replicated_groups": under,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(flatten)]
    spec: TenantSpec,
}

async fn list_tenants(State(n): S, h: HeaderMap, Query(p): Query<Page>) -> ApiResult {
    operator(&n, &h)?;
    n.read_barrier().await;
    n.read(|m| paginate(m.tenants.iter().map(|(k, t)| (k.clone(), t.spec.clone())), &p))
}

async fn create_tenant(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    let c = operator(&n, &h)?;
    let t: NewTenant = body(&b)?;
    check_name("tenant", &t.name)?;
    t.spec.validate().map_err(bad)?;
    let a = n
        .propose(
            &c.actor(),
            Command::PutTenant {
                tenant: t.name,
                spec: t.spec,
                key: Some(fresh_key()),
            },
        )
        .await?;
    Ok(applied(a))
}

async fn get_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = m.tenant(&t)?;
        Ok(Json(
            json!({"name": t, "spec": x.spec, "namespaces": x.namespaces.len()}),
        ))
    })
}

async fn put_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let spec: TenantSpec = body(&b)?;
    spec.validate().map_err(bad)?;
    Ok(applied(
        n.propose(
            &c.actor(),
            Command::PutTenant {
                tenant: t,
                spec,
                key: None,
            },
        )
        .await?,
    ))
}

async fn delete_tenant(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    let c = operator(&n, &h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::DeleteTenant { tenant: t }).await?,
    ))
}

fn ns_object(t: &str, ns: &str) -> Object {
    Object::Namespace {
        tenant: t.into(),
        namespace: crate::rbac::Scope::Named(ns.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNamespace {
    name: String,
    #[serde(flatten)]
    spec: NamespaceSpec,
}

async fn list_namespaces(
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

async fn create_namespace(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    let x: NewNamespace = body(&b)?;
    check_name("namespace", &x.name)?;
    c.require(Action::ResourceManage, &ns_object(&t, &x.name))?;
    x.spec.validate().map_err(bad)?;
    let cmd = Command::PutNamespace {
        tenant: t,
        namespace: x.name,
        spec: x.spec,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn get_namespace(State(n): S, h: HeaderMap, Path((t, ns)): Path<(String, String)>) -> ApiResult {
    check_name("namespace", &ns)?;
    caller(&n, &h, &t)?.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = m.namespace(&t, &ns)?;
        Ok(Json(
            json!({"name": ns, "spec": x.spec, "streams": x.streams.len(), "caches": x.caches.len()}),
        ))
    })
}

async fn put_namespace(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    check_name("namespace", &ns)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    let spec: NamespaceSpec = body(&b)?;
    spec.validate().map_err(bad)?;
    n.read(|m| m.namespace(&t, &ns).map(|_| ()))?;
    let cmd = Command::PutNamespace {
        tenant: t,
        namespace: ns,
        spec,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn delete_namespace(State(n): S, h: HeaderMap, Path((t, ns)): Path<(String, String)>) -> ApiResult {
    check_name("namespace", &ns)?;
    let c = caller(&n, &h, &t)?;
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

/// A stream or cache to create: its name and its spec, in one object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPlaced<Spec> {
    name: String,
    #[serde(flatten)]
    spec: Spec,
}

async fn list_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    Query(p): Query<Page>,
) -> ApiResult {
    check_name("namespace", &ns)?;
    caller(&n, &h, &t)?.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    n.read_barrier().await;
    n.read(|m| {
        paginate(
            P::of(m.namespace(&t, &ns)?)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
            &p,
        )
    })
}

async fn create_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    check_name("namespace", &ns)?;
    let c = caller(&n, &h, &t)?;
    let x: NewPlaced<P::Spec> = body(&b)?;
    check_name(P::KIND, &x.name)?;
    c.require(Action::ResourceManage, &P::object(&t, &ns, &x.name))?;
    P::validate(&x.spec).map_err(bad)?;
    let cmd = P::create(t, ns, x.name, x.spec);
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn get_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
) -> ApiResult {
    check_name(P::KIND, &s)?;
    caller(&n, &h, &t)?.require(Action::ResourceManage, &P::object(&t, &ns, &s))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = P::of(m.namespace(&t, &ns)?)
            .get(&s)
            .ok_or_else(|| crate::state::ApplyError::not_found(format!("no {} {t}/{ns}/{s}", P::KIND)))?;
        let mut v = serde_json::to_value(x).unwrap_or_default();
        v["name"] = s.clone().into();
        Ok(Json(v))
    })
}

async fn patch_stream(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
    b: Bytes,
) -> ApiResult {
    check_name("stream", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::stream(&t, &ns, &s))?;
    let update: StreamUpdate = body(&b)?;
    let cmd = Command::UpdateStream {
        tenant: t,
        namespace: ns,
        stream: s,
        update,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn delete_stream(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
    Query(f): Query<Force>,
) -> ApiResult {
    check_name("stream", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::stream(&t, &ns, &s))?;
    if !f.force {
        // Subscriber counts live on the leader (from heartbeats).
        if !n.is_leader() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "ask the leader (see /v1/cluster) to delete a stream".into(),
            ));
        }
        let active = n.subscribers_of(&format!("{t}/{ns}/{s}"));
        if active > 0 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("stream {t}/{ns}/{s} has {active} active subscribers; stop them or pass ?force=true"),
            ));
        }
    }
    let cmd = Command::DeleteStream {
        tenant: t,
        namespace: ns,
        stream: s,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn delete_cache(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
) -> ApiResult {
    check_name("cache", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::cache(&t, &ns, &s))?;
    let cmd = Command::DeleteCache {
        tenant: t,
        namespace: ns,
        cache: s,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn list_issuers(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| {
        Ok(Json(
            json!({"items": m.tenant(&t)?.idp_issuers.values().collect::<Vec<_>>()}),
        ))
    })
}

async fn put_issuer(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
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
struct IssuerQuery {
    issuer: String,
}

async fn delete_issuer(
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

async fn list_policies(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::RbacView, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| Ok(Json(json!({"items": m.tenant(&t)?.rules.policies}))))
}

async fn list_groupings(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::RbacView, &Object::Tenant(t.clone()))?;
    n.read_barrier().await;
    n.read(|m| Ok(Json(json!({"items": m.tenant(&t)?.rules.groupings}))))
}

/// An RBAC edit: a body of `T` made into a command that `apply` checks
/// against the caller's own grants (nobody grants what they lack).
async fn rbac_edit<T: DeserializeOwned>(
    n: &Node,
    h: &HeaderMap,
    t: String,
    b: &Bytes,
    command: impl FnOnce(Vec<Grant>, String, T) -> Command,
) -> ApiResult {
    let c = caller(n, h, &t)?;
    let x: T = body(b)?;
    let cmd = command(c.grants(&t), t, x);
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn add_policy(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, policy| Command::AddPolicy {
        caller,
        tenant,
        policy,
    })
    .await
}

async fn remove_policy(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, policy| Command::RemovePolicy {
        caller,
        tenant,
        policy,
    })
    .await
}

async fn add_grouping(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    rbac_edit(&n, &h, t, &b, |caller, tenant, grouping| Command::AddGrouping {
        caller,
        tenant,
        grouping,
    })
    .await
}

async fn remove_grouping(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
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
struct ExchangeRequest {
    #[serde(default)]
    requested: Option<Vec<Action>>,
    #[serde(default)]
    resources: Option<Vec<Object>>,
}

/// Signs a token for `principal` with what RBAC grants it, narrowed.
fn mint(n: &Node, tenant: &str, principal: &str, groups: &[String], req: &ExchangeRequest) -> ApiResult {
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

async fn exchange(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
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

fn verify_with(
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
struct IssueRequest {
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(flatten)]
    narrow: ExchangeRequest,
}

async fn issue(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
    operator(&n, &h)?;
    let r: IssueRequest = body(&b)?;
    mint(&n, &t, &r.principal, &r.groups, &r.narrow)
}

async fn jwks(State(n): S, Path(t): Path<String>) -> ApiResult {
    Ok(Json(n.read(|m| m.jwks(&t))?))
}

async fn rotate(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    let c = caller(&n, &h, &t)?;
    c.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let cmd = Command::RotateKey {
        tenant: t,
        key: fresh_key(),
        overlap_ms: key_overlap_ms(&n),
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

async fn tenant_audit(State(n): S, h: HeaderMap, Path(t): Path<String>) -> ApiResult {
    caller(&n, &h, &t)?.require(Action::TenantManage, &Object::Tenant(t.clone()))?;
    let needle = format!("tenant=\"{t}\"");
    n.read(|m| {
        m.tenant(&t)?;
        let items: Vec<_> = m.audit.iter().filter(|a| a.operation.contains(&needle)).collect();
        Ok(Json(json!({ "items": items })))
    })
}

async fn audit(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    Ok(Json(n.read(|m| json!({ "items": m.audit }))))
}

async fn list_brokers(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    n.read_barrier().await;
    Ok(Json(n.read(
        |m| json!({ "items": m.brokers.values().collect::<Vec<_>>() }),
    )))
}

async fn register_broker(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    operator(&n, &h)?;
    let registration: BrokerRegistration = body(&b)?;
    registration.validate().map_err(bad)?;
    let actor = format!("broker:{}", registration.id);
    Ok(applied(
        n.propose(&actor, Command::RegisterBroker { registration })
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    #[serde(default)]
    subscribers: BTreeMap<String, u32>,
}

async fn heartbeat(State(n): S, h: HeaderMap, Path(id): Path<u32>, b: Bytes) -> Result<Response, ApiError> {
    operator(&n, &h)?;
    let hb: Heartbeat = if b.is_empty() {
        Heartbeat::default()
    } else {
        body(&b)?
    };
    if !n.is_leader() {
        // Liveness is the leader's to judge: pass it on.
        let Some((_, leader)) = n.leader_addr() else {
            return Err(CpError::NoLeader.into());
        };
        let r = n
            .http
            .post(format!("http://{leader}/v1/brokers/{id}/heartbeat"))
            .header("authorization", format!("Bearer {}", n.cfg.cluster_secret))
            .timeout(Duration::from_secs(2))
            .json(&json!({ "subscribers": hb.subscribers }))
            .send()
            .await
            .map_err(|e| CpError::Unavailable(e.to_string()))?;
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let v: Value = r.json().await.unwrap_or(Value::Null);
        return Ok((status, Json(v)).into_response());
    }
    n.heartbeat(id, hb.subscribers).await?;
    Ok(Json(json!({ "interval_ms": n.cfg.broker_heartbeat_interval_ms })).into_response())
}

async fn set_status(n: &Node, h: &HeaderMap, broker: u32, status: BrokerStatus) -> ApiResult {
    let c = operator(n, h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::SetBrokerStatus { broker, status })
            .await?,
    ))
}

async fn drain(State(n): S, h: HeaderMap, Path(id): Path<u32>) -> ApiResult {
    set_status(&n, &h, id, BrokerStatus::Draining).await
}

async fn undrain(State(n): S, h: HeaderMap, Path(id): Path<u32>) -> ApiResult {
    set_status(&n, &h, id, BrokerStatus::Active).await
}

async fn move_done(State(n): S, h: HeaderMap, Path((broker, group)): Path<(u32, u64)>) -> ApiResult {
    let c = operator(&n, &h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::MoveDone { group, broker }).await?,
    ))
}

async fn rebalance(State(n): S, h: HeaderMap) -> ApiResult {
    let c = operator(&n, &h)?;
    Ok(applied(n.propose(&c.actor(), Command::Rebalance).await?))
}

/// What brokers see: no issuers, rules or private keys.
fn broker_view(m: &crate::state::Metadata) -> Value {
    let tenants: BTreeMap<&String, Value> = m
        .tenants
        .iter()
        .map(|(name, t)| {
            let namespaces: BTreeMap<&String, Value> = t
                .namespaces
                .iter()
                .map(|(nn, ns)| (nn, json!({"quotas": ns.spec.quotas, "streams": ns.streams, "caches": ns.caches})))
                .collect();
            (name, json!({"quotas": t.spec.quotas, "namespaces": namespaces, "jwks": m.jwks(name).unwrap_or_default()}))
        })
        .collect();
    json!({"version": m.version, "brokers": m.brokers.values().collect::<Vec<_>>(), "tenants": tenants})
}

async fn feed_snapshot(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    Ok(Json(n.read(broker_view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn feed_changes(State(n): S, h: HeaderMap, Query(q): Query<Since>) -> ApiResult {
    operator(&n, &h)?;
    let wait = Duration::from_millis(q.wait_ms.min(FEED_WAIT_MS_MAX));
    let mut rx = n.sm.subscribe();
    // Served by any node from its applied state: brokers keep following a
    // minority partition's stale view rather than nothing.
    let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > q.since)).await;
    n.read(|m| match m.changes_since(q.since) {
        Some(changes) => Ok(Json(json!({"version": m.version, "changes": changes}))),
        None => Err(ApiError(
            StatusCode::GONE,
            format!(
                "version {} is older than the feed keeps; take /v1/feed/snapshot",
                q.since
            ),
        )),
    })
}

fn internal(n: &Node, h: &HeaderMap) -> ApiResult<()> {
    let ok = h
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| same(s, &n.cfg.cluster_secret));
    if ok {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "internal endpoint".into()))
    }
}

async fn raft_append(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    internal(&n, &h)?;
    let r = n.raft.append_entries(body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn raft_vote(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    internal(&n, &h)?;
    let r = n.raft.vote(body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn raft_snapshot(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    internal(&n, &h)?;
    // Snapshots are the whole metadata; allow more than an API body.
    let s: SnapshotRpc = serde_json::from_slice(&b).map_err(|e| bad(e.to_string()))?;
    let snapshot = openraft::storage::Snapshot {
        meta: s.meta,
        snapshot: Box::new(std::io::Cursor::new(s.data)),
    };
    let r = n.raft.install_full_snapshot(s.vote, snapshot).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn raft_propose(State(n): S, h: HeaderMap, b: Bytes) -> Result<Json<Outcome>, ApiError> {
    internal(&n, &h)?;
    let f: Forwarded = body(&b)?;
    match n.propose_local(&f.actor, f.command).await {
        Ok(a) => Ok(Json(Outcome(Ok(a)))),
        Err(CpError::Apply(e)) => Ok(Json(Outcome(Err(e)))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapRequest {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    idp_issuers: Vec<IdpIssuer>,
    initial_admin_principals: Vec<String>,
}

async fn bootstrap(State(n): S, h: HeaderMap, Path(t): Path<String>, b: Bytes) -> ApiResult {
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
            quotas: Quotas::default(),
        },
        issuers: r.idp_issuers,
        admins: r.initial_admin_principals,
        key: fresh_key(),
    };
    Ok(applied(n.propose("bootstrap", cmd).await?))
}
