//! Admitting a replica into a group: learner first, voter once caught up,
//! and every lost incarnation of the same broker removed in that change.

use crate::error::ReplicationError;
use crate::types::{broker_of, BrokerNode, GroupId, NodeId, Raft};

/// A learner this close to the leader's last entry is promoted: close
/// enough that it acknowledges new entries at once, far enough that a busy
/// group does not keep it a learner forever.
pub const PROMOTE_LAG_MAX: u64 = 64;
/// Where a replica that asked to join a group stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Admission {
    /// It is a voter, and no other incarnation of its broker is a member.
    Joined,
    /// It is a learner receiving the log; ask again.
    CatchingUp,
    /// Ask the leader (when known).
    NotLeader(Option<BrokerNode>),
}

/// One step of admitting node `id` (at `node`) into the group `raft`
/// leads: adds it as a learner, promotes it once it is within
/// [`PROMOTE_LAG_MAX`] entries, and in the same membership change removes
/// every other incarnation of the same broker (which lost its disk: its
/// vote and acknowledged entries are gone, so it must never count again).
/// Each call does at most one membership change; the caller asks again.
pub(crate) async fn admit(
    raft: &Raft,
    group: GroupId,
    id: NodeId,
    node: BrokerNode,
) -> Result<Admission, ReplicationError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        let leader = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        return Ok(Admission::NotLeader(leader));
    }
    let membership = m.membership_config.membership();
    let mut voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let stale: Vec<NodeId> = membership
        .nodes()
        .map(|(n, _)| *n)
        .filter(|n| *n != id && broker_of(*n) == broker_of(id))
        .collect();
    let err = |e: String| ReplicationError::Raft(format!("admitting {id:#x} to {group}: {e}"));
    if voters.contains(&id) && stale.is_empty() {
        return Ok(Admission::Joined);
    }
    if !voters.contains(&id) {
        if membership.get_node(&id).is_none() {
            raft.add_learner(id, node, false)
                .await
                .map_err(|e| err(e.to_string()))?;
            return Ok(Admission::CatchingUp);
        }
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map(|l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        tracing::debug!(%group, id = format!("{id:#x}"), ?matched, last, "learner progress");
        if matched.is_none_or(|i| i + PROMOTE_LAG_MAX < last) {
            return Ok(Admission::CatchingUp);
        }
        voters.insert(id);
    }
    for s in &stale {
        voters.remove(s);
    }
    raft.change_membership(voters, false)
        .await
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(%group, id = format!("{id:#x}"), replaced = ?stale, "replica admitted");
    Ok(Admission::Joined)
}
