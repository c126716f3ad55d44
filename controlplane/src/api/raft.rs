//! The control-plane nodes' own RPCs (Raft and forwarded proposals),
//! behind the peers' secret, checked before a byte of the body is read,
//! each route with its own body limit (`docs/format/controlplane-raft.md`).

use axum::extract::DefaultBodyLimit;

use super::*;
use crate::raft::network::{
    decode_snapshot, APPEND_BYTES_MAX, REGION_HEADER, SMALL_RPC_BYTES_MAX, SNAPSHOT_BYTES_MAX,
};

/// The Raft routes, each with its body limit, behind [`peers_only`].
pub(super) fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/raft/append",
            post(raft_append).layer(DefaultBodyLimit::max(APPEND_BYTES_MAX)),
        )
        .route(
            "/raft/vote",
            post(raft_vote).layer(DefaultBodyLimit::max(SMALL_RPC_BYTES_MAX)),
        )
        .route(
            "/raft/snapshot",
            post(raft_snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BYTES_MAX)),
        )
        .route(
            "/raft/propose",
            post(raft_propose).layer(DefaultBodyLimit::max(SMALL_RPC_BYTES_MAX)),
        )
        .route_layer(axum::middleware::from_fn_with_state(node, peers_only))
}

/// Refuses a caller without the peers' secret before its body is read:
/// the routes' limits are large, and only peers may fill them.
async fn peers_only(State(n): S, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match internal(&n, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn rpc_body<T: DeserializeOwned>(b: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(b).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

pub(super) fn internal(n: &Node, h: &HeaderMap) -> ApiResult<()> {
    let ok = h
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| same(s, n.cfg.peer_credential()));
    if !ok {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "internal endpoint".into()));
    }
    let region = h.get(REGION_HEADER).and_then(|v| v.to_str().ok());
    if region != Some(n.cfg.region.as_str()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "a control-plane peer of region {region:?} called this node of region {:?}: every node of one control plane names the same region",
                n.cfg.region
            ),
        ));
    }
    Ok(())
}

pub(super) async fn raft_append(State(n): S, b: Bytes) -> ApiResult {
    let r = n.raft.append_entries(rpc_body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

pub(super) async fn raft_vote(State(n): S, b: Bytes) -> ApiResult {
    let r = n.raft.vote(rpc_body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

pub(super) async fn raft_snapshot(State(n): S, b: Bytes) -> ApiResult {
    let (head, data) = decode_snapshot(&b).map_err(bad)?;
    let snapshot = openraft::storage::Snapshot {
        meta: head.meta,
        snapshot: Box::new(std::io::Cursor::new(data.to_vec())),
    };
    let r = n.raft.install_full_snapshot(head.vote, snapshot).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

pub(super) async fn raft_propose(State(n): S, b: Bytes) -> Result<Json<Outcome>, ApiError> {
    let f: Forwarded = rpc_body(&b)?;
    match n.propose_local(&f.actor, f.command).await {
        Ok(a) => Ok(Json(Outcome(Ok(a)))),
        Err(CpError::Apply(e)) => Ok(Json(Outcome(Err(e)))),
        Err(e) => Err(e.into()),
    }
}
