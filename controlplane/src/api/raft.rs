//! The control-plane nodes' own RPCs (Raft and forwarded proposals),
//! behind the cluster secret.

use super::*;

pub(super) fn internal(n: &Node, h: &HeaderMap) -> ApiResult<()> {
    let ok = h
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| same(s, n.cfg.peer_credential()));
    if ok {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "internal endpoint".into()))
    }
}

pub(super) async fn raft_append(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    internal(&n, &h)?;
    let r = n.raft.append_entries(body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

pub(super) async fn raft_vote(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    internal(&n, &h)?;
    let r = n.raft.vote(body(&b)?).await;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

pub(super) async fn raft_snapshot(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
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

pub(super) async fn raft_propose(State(n): S, h: HeaderMap, b: Bytes) -> Result<Json<Outcome>, ApiError> {
    internal(&n, &h)?;
    let f: Forwarded = body(&b)?;
    match n.propose_local(&f.actor, f.command).await {
        Ok(a) => Ok(Json(Outcome(Ok(a)))),
        Err(CpError::Apply(e)) => Ok(Json(Outcome(Err(e)))),
        Err(e) => Err(e.into()),
    }
}
