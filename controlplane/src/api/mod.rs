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
use crate::node::{fresh_data_key_material, fresh_key, now_ms, CpError, Forwarded, Node};
use crate::raft::network::SECRET_HEADER;
use crate::raft::Outcome;
use crate::rbac::{for_token, Action, Grant, Object};
use crate::state::{tenant_admin_grants, Command, ErrorKind, Placed};
use felix_model::names::name_problem;

// The handlers, by family; the router below names them all.
mod access;
mod bridges;
mod brokers;
mod raft;
mod resources;
mod tenancy;

use access::*;
use bridges::*;
use brokers::*;
use resources::*;
use tenancy::*;

/// Items one list page holds at most.
pub const PAGE_SIZE_MAX: usize = 1000;
/// Longest a feed long-poll waits.
pub const FEED_WAIT_MS_MAX: u64 = 30_000;
/// Largest request body accepted (the Raft routes have their own).
pub const BODY_BYTES_MAX: usize = 1 << 20;
// A command an API body carries becomes one Raft entry: it must fit.
const _: () = assert!(BODY_BYTES_MAX + 64 * 1024 <= crate::raft::network::ENTRY_BYTES_MAX);
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
    ("post", "/v1/tenants", "operator", "Create a tenant {name, display_name?, quotas?, encryption?: {key_id, rotation_period_ms?}}."),
    ("get", "/v1/tenants/{tenant}", "tenant.manage", "A tenant's spec and its data keys' ids (never their material)."),
    ("put", "/v1/tenants/{tenant}", "tenant.manage", "Update a tenant's display name, quotas and encryption (the spec sent replaces it: one without encryption turns it off, keeping the data keys)."),
    ("delete", "/v1/tenants/{tenant}", "operator", "Delete an empty tenant."),
    ("get", "/v1/tenants/{tenant}/namespaces", "resource.manage", "List namespaces (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces", "resource.manage", "Create a namespace {name, description?, quotas?}."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "A namespace's spec."),
    ("put", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "Update a namespace's quotas."),
    ("delete", "/v1/tenants/{tenant}/namespaces/{namespace}", "resource.manage", "Delete an empty namespace."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/streams", "resource.manage", "List streams (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces/{namespace}/streams", "resource.manage", "Create a stream {name, shards, replication_factor, durability, retention_ms, retention_bytes, kind, key_routing}."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "A stream's spec and placement."),
    ("patch", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "Change retention or max_deliveries; reaches brokers through the feed."),
    ("delete", "/v1/tenants/{tenant}/namespaces/{namespace}/streams/{stream}", "resource.manage", "Delete a stream; 409 while subscribers are active unless ?force=true."),
    ("post", "/v1/tenants/{tenant}/namespaces/{namespace}/shards/{name}/{shard}/leader", "operator", "Move a shard's leadership (stream or cache `name`) to one of its replicas {broker}; pinned there against leader balancing."),
    ("get", "/v1/tenants/{tenant}/namespaces/{namespace}/caches", "resource.manage", "List caches (paginated)."),
    ("post", "/v1/tenants/{tenant}/namespaces/{namespace}/caches", "resource.manage", "Create a cache {name, shards, replication_factor, default_ttl_ms, key_routing}."),
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
    ("post", "/v1/tenants/{tenant}/data-keys/rotate", "tenant.manage", "A new data key seals the tenant's new records (encryption at rest must be on); the older ones still open what they sealed."),
    ("get", "/v1/tenants/{tenant}/audit", "tenant.manage", "The tenant's audit log (newest last)."),
    ("get", "/v1/audit", "operator", "The whole audit log."),
    ("get", "/v1/brokers", "operator", "Brokers, their status and the replicas on each; retired ids."),
    ("post", "/v1/brokers", "operator or broker", "Register a broker {id, client_addr, raft_addr, zone?, shards_max?, region?}; 403 when its region is not the control plane's."),
    ("post", "/v1/brokers/{broker}/heartbeat", "operator or broker", "A broker is alive {subscribers: {\"t/ns/s\": n}, usage: {\"t/ns\": {storage_bytes, cache_bytes, subscriptions}}, bridges?: [{bridge, stream: \"t/ns/s\", shard, position, end, error?}]}; answered with the cluster's usage of every scope with a usage quota."),
    ("post", "/v1/brokers/{broker}/drain", "operator", "Move a broker's leaderships and replicas away."),
    ("post", "/v1/brokers/{broker}/undrain", "operator", "Let a drained broker take shards again (ends a decommission)."),
    ("post", "/v1/brokers/{broker}/decommission", "operator", "Move every replica and leadership off a broker, then remove it from the registry; its id is never reused."),
    ("post", "/v1/brokers/{broker}/moves/{group}/done", "operator or broker", "A move off this broker finished: it left the group."),
    ("post", "/v1/rebalance", "operator", "Even out preferred leaders; with a body {strategy?: balanced|minimize_movement, stream?: \"t/ns/name\"}, replicas too."),
    ("get", "/v1/rebalance", "operator", "The rebalance in progress and the replica moves in progress."),
    ("get", "/v1/feed/snapshot", "operator or broker", "The brokers' view at version V: no signing keys, issuers or rules; tenants' data key materials (which open nothing without the brokers' master key); every bridge whole, its target's token included."),
    ("get", "/v1/feed/changes", "operator or broker", "Changes since ?since=V, long-polled up to ?wait_ms=; 410 when V is too old."),
    ("post", "/v1/bridges", "operator", "Create a bridge {name, spec: {tenant, streams: [\"ns/stream\" (either part may be \"*\")], target: {region, brokers: [\"host:port\"], server_name, ca_pem, token?}}}: the tenant's matching streams are carried to another region's cluster; 201 with the bridge, its token never shown (token_set)."),
    ("get", "/v1/bridges", "operator", "Every bridge {bridges: [...]}, tokens never shown."),
    ("get", "/v1/bridges/{name}", "operator", "A bridge with its lag per source shard as the brokers last reported it {lag: [{stream, shard, position, end, lag, error, broker}], lag_total}."),
    ("post", "/v1/bridges/{name}/pause", "operator", "Stop sending; the bridge keeps its source positions."),
    ("post", "/v1/bridges/{name}/resume", "operator", "Send again from where the bridge stopped."),
    ("delete", "/v1/bridges/{name}", "operator", "Delete a bridge; what reached the target stays there."),
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
                ErrorKind::Forbidden | ErrorKind::QuotaExceeded => StatusCode::FORBIDDEN,
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

/// [`check_name`] for a stream or cache, whose name may end in dead-letter
/// suffixes beyond the length limit.
fn check_stream_name(what: &str, n: &str) -> ApiResult<()> {
    match felix_model::names::stream_name_problem(n) {
        Some(why) => Err(bad(format!("{what} {n:?}: {why}"))),
        None => Ok(()),
    }
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
    /// The brokers' secret: registration, heartbeats, moves done, the feed.
    Broker,
    Token(FelixClaims),
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Broker => "broker".into(),
            Caller::Token(c) => c.sub.clone(),
        }
    }

    fn require(&self, action: Action, object: &Object) -> ApiResult<()> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Broker => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("the brokers' credential does not allow {action} on {object}"),
            )),
            Caller::Token(c) => Ok(c.check(action, object)?),
        }
    }

    fn grants(&self, tenant: &str) -> Vec<Grant> {
        match self {
            Caller::Operator => tenant_admin_grants(tenant),
            Caller::Broker => Vec::new(),
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

/// The operator, or a broker with the brokers' credential (when the
/// control plane has one): for what brokers do, and nothing else.
fn broker_or_operator(node: &Node, h: &HeaderMap) -> ApiResult<Caller> {
    let t = bearer(h)?;
    if same(t, &node.cfg.cluster_secret) {
        return Ok(Caller::Operator);
    }
    if node.cfg.broker_secret.as_deref().is_some_and(|b| same(t, b)) {
        return Ok(Caller::Broker);
    }
    Err(ApiError(
        StatusCode::FORBIDDEN,
        "this operation needs the operator's or the brokers' credential".into(),
    ))
}

/// The caller of a request on namespace `ns` of tenant `t`: the name is
/// checked first, so a bad one is a 400 before any token is looked at.
fn ns_caller(n: &Node, h: &HeaderMap, t: &str, ns: &str) -> ApiResult<Caller> {
    check_name("namespace", ns)?;
    caller(n, h, t)
}

/// The operator, or a Felix token of `tenant` verified against its keys.
fn caller(node: &Node, h: &HeaderMap, tenant: &str) -> ApiResult<Caller> {
    let t = bearer(h)?;
    if same(t, &node.cfg.cluster_secret) {
        return Ok(Caller::Operator);
    }
    if node.cfg.broker_secret.as_deref().is_some_and(|b| same(t, b)) {
        // Refused by `require`; allowed only what brokers define
        // themselves (a stream's dead-letter stream).
        return Ok(Caller::Broker);
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
            "/v1/tenants/:tenant/namespaces/:namespace/shards/:name/:shard/leader",
            post(transfer_leader),
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
        .route("/v1/tenants/:tenant/data-keys/rotate", post(rotate_data_key))
        .route("/v1/tenants/:tenant/audit", get(tenant_audit))
        .route("/v1/audit", get(audit))
        .route("/v1/brokers", get(list_brokers).post(register_broker))
        .route("/v1/brokers/:broker/heartbeat", post(heartbeat))
        .route("/v1/brokers/:broker/drain", post(drain))
        .route("/v1/brokers/:broker/undrain", post(undrain))
        .route("/v1/brokers/:broker/decommission", post(decommission))
        .route("/v1/brokers/:broker/moves/:group/done", post(move_done))
        .route("/v1/rebalance", post(rebalance).get(rebalance_status))
        .route("/v1/feed/snapshot", get(feed_snapshot))
        .route("/v1/feed/changes", get(feed_changes))
        .route("/v1/bridges", get(list_bridges).post(create_bridge))
        .route("/v1/bridges/:name", get(get_bridge).delete(delete_bridge))
        .route("/v1/bridges/:name/pause", post(pause_bridge))
        .route("/v1/bridges/:name/resume", post(resume_bridge))
        .merge(raft::router(node.clone()))
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
        "region": n.cfg.region,
        "leader": m.current_leader,
        "term": m.current_term,
        "members": m.membership_config.membership().nodes().map(|(id, node)| json!({"id": id, "addr": node.addr})).collect::<Vec<_>>(),
        "version": version,
        "under_replicated_groups": under,
    }))
}
