//! Carrying out the control plane's placement: the leader of each shard
//! group makes the group's voters the brokers the placement names. A
//! broker placed but not a voter is added (a learner first, promoted once
//! it has caught up); only once every placed broker votes are voters the
//! placement does not name removed, so the group never shrinks below its
//! target while a replacement catches up. A removal of a broker the
//! placement lists as `leaving` is reported done once that membership is
//! committed, which ends the move (and lets the leaving broker delete its
//! replica, `node/hosting.rs`).
//! Once a group matches its placement, a leader that is not the preferred
//! one (`replicas[0]`, which the control plane balances, and moves off a
//! draining broker) hands leadership over to it.
//!
//! What to change is decided by [`plan`], a pure function; the task
//! around it only reads the group's state and calls the replication API.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use felix_controlplane::model::ShardPlacement;
use felix_replication::{broker_of, NodeId};

use super::ControlLink;
use crate::node::Node;

/// How often leaders compare their groups with the placement.
pub const RECONCILE_INTERVAL_MS: u64 = 1_000;
/// Shortest time between two hand-overs of one group's leadership.
pub const HANDOVER_RETRY_MS: u64 = 10_000;
/// Hand-overs one broker begins per round. Each is an election; after a
/// restart the preferred broker of a thousand groups is back at once, and
/// handing them all back in one round began a storm of elections that
/// outwaited their own RPC timeouts.
pub const HANDOVERS_PER_ROUND_MAX: usize = 32;
/// How long adding one replica (its catch-up included) may take before
/// the next round tries again.
pub const ADD_TIMEOUT_MS: u64 = 120_000;

/// One membership change for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Add(NodeId),
    Remove(NodeId),
    /// The broker left the group: tell the control plane.
    Done(u32),
}

/// What to do next for a group with `voters`, placed on `p`, given the
/// current node id of each broker (`nodes`). One kind of step at a time:
/// adds first; removals only when every placed broker is a voter.
pub fn plan(voters: &[NodeId], p: &ShardPlacement, nodes: &BTreeMap<u32, NodeId>) -> Vec<Step> {
    let voting: BTreeSet<u32> = voters
        .iter()
        .filter_map(|v| u32::try_from(broker_of(*v)).ok())
        .collect();
    let adds: Vec<Step> = p
        .replicas
        .iter()
        .filter(|b| !voting.contains(b))
        .filter_map(|b| nodes.get(b).map(|n| Step::Add(*n)))
        .collect();
    if !adds.is_empty() {
        return adds;
    }
    if p.replicas.iter().any(|b| !voting.contains(b)) {
        // A placed broker whose node id is not known yet: wait for it.
        return Vec::new();
    }
    let placed: BTreeSet<u32> = p.replicas.iter().copied().collect();
    let mut steps: Vec<Step> = voters
        .iter()
        .filter(|v| u32::try_from(broker_of(**v)).is_ok_and(|b| !placed.contains(&b)))
        .map(|v| Step::Remove(*v))
        .collect();
    // Leaving brokers no longer voting have left: the move is over.
    steps.extend(
        p.leaving
            .iter()
            .filter(|b| !voting.contains(b))
            .map(|b| Step::Done(*b)),
    );
    steps
}

/// What `plan` reads of shard `p` beside its voters: its placement and the
/// node ids of its brokers.
fn fingerprint(p: &ShardPlacement, nodes: &BTreeMap<u32, NodeId>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.replicas.hash(&mut h);
    p.leaving.hash(&mut h);
    for b in p.replicas.iter().chain(&p.leaving) {
        nodes.get(b).hash(&mut h);
    }
    h.finish()
}

/// Runs the reconciliation every [`RECONCILE_INTERVAL_MS`] until the node
/// is dropped (cluster brokers only).
pub fn start(link: Arc<ControlLink>, node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let adding = Arc::new(Mutex::new(HashSet::new()));
        let handed = Mutex::new(HashMap::new());
        // Groups found quiet and led from their preferred replica, with the
        // fingerprint of the placement they were found under.
        let settled = Mutex::new(HashMap::new());
        let mut tick = tokio::time::interval(Duration::from_millis(RECONCILE_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !round(&link, &weak, &adding, &handed, &settled).await {
                return;
            }
        }
    });
}

/// One pass over every hosted shard this broker leads. `false` once the
/// node is gone.
async fn round(
    link: &Arc<ControlLink>,
    node: &Weak<Node>,
    adding: &Arc<Mutex<HashSet<(u64, NodeId)>>>,
    handed: &Mutex<HashMap<u64, std::time::Instant>>,
    settled: &Mutex<HashMap<u64, u64>>,
) -> bool {
    let Some(n) = node.upgrade() else { return false };
    let Some(cluster) = n.cluster().cloned() else {
        return false;
    };
    // The current incarnation of each broker, as the registry names it.
    let nodes: BTreeMap<u32, NodeId> = cluster
        .node_ids()
        .into_iter()
        .filter_map(|id| Some((u32::try_from(broker_of(id)).ok()?, id)))
        .collect();
    let mut handovers = 0;
    let mut work = Vec::new();
    {
        let mut kept = settled.lock().expect("settled lock");
        let mut hosted = 0;
        for h in n.streams() {
            h.with_meta(|m| {
                if !m.managed() {
                    return;
                }
                for (i, s) in h.hosted() {
                    hosted += 1;
                    let Some(p) = m.placement.get(i as usize) else {
                        continue;
                    };
                    let Some(r) = s.replica() else { continue };
                    r.set_preferred(p.replicas.first().and_then(|b| nodes.get(b)).copied());
                    let seen = fingerprint(p, &nodes);
                    // Quiet, it is settled (one committed configuration, every
                    // replica holding everything); led from its preferred
                    // replica under this very placement last round, nothing
                    // here can have changed: an idle broker does not plan
                    // thousands of settled shards every second.
                    if r.is_quiet() && kept.get(&p.group) == Some(&seen) {
                        continue;
                    }
                    kept.remove(&p.group);
                    if !r.is_leader() {
                        continue;
                    }
                    work.push((p.clone(), r.clone(), seen));
                }
            });
        }
        // Groups no longer hosted leave the memory now and then.
        if kept.len() > 2 * hosted {
            kept.clear();
        }
    }
    for (p, r, seen) in work {
        let p = &p;
        let mut steps = plan(&r.voters(), p, &nodes);
        // The old replica is deleted once its move is reported done:
        // only on a removal no new leader could undo.
        if !r.membership_committed() {
            steps.retain(|s| !matches!(s, Step::Done(_)));
        }
        if steps.is_empty() {
            if r.is_quiet() && r.leads_as_preferred() {
                settled.lock().expect("settled lock").insert(p.group, seen);
                continue;
            }
            // Settled: lead from the preferred replica (balance, and a
            // drained broker's leaderships), at most once per
            // HANDOVER_RETRY_MS per group.
            let mut last = handed.lock().expect("handed lock");
            let due = last
                .get(&p.group)
                .is_none_or(|t: &std::time::Instant| t.elapsed() >= Duration::from_millis(HANDOVER_RETRY_MS));
            if due && handovers < HANDOVERS_PER_ROUND_MAX && r.hand_over() {
                last.insert(p.group, std::time::Instant::now());
                handovers += 1;
            }
            continue;
        }
        for step in steps {
            match step {
                Step::Add(id) => {
                    let Some(addr) = cluster.peers.get(broker_of(id)) else {
                        continue;
                    };
                    if !adding.lock().expect("adding lock").insert((p.group, id)) {
                        continue;
                    }
                    let (r, adding, group) = (r.clone(), adding.clone(), p.group);
                    tokio::spawn(async move {
                        tracing::info!(group, node = format!("{id:#x}"), "adding a placed replica");
                        let added = tokio::time::timeout(
                            Duration::from_millis(ADD_TIMEOUT_MS),
                            r.add_replica(id, addr, true),
                        )
                        .await;
                        match added {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(group, error = %e, "adding a replica failed"),
                            Err(_) => tracing::warn!(group, "adding a replica timed out"),
                        }
                        adding.lock().expect("adding lock").remove(&(group, id));
                    });
                }
                Step::Remove(id) => {
                    tracing::info!(
                        group = p.group,
                        node = format!("{id:#x}"),
                        "removing a replica the placement moved away"
                    );
                    if let Err(e) = r.remove_replica(id).await {
                        tracing::warn!(group = p.group, error = %e, "removing a replica failed");
                    }
                }
                Step::Done(b) => {
                    if let Err(e) = link.move_done(b, p.group).await {
                        tracing::debug!(group = p.group, broker = b, error = %e, "reporting a finished move");
                    }
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use felix_replication::node_id;

    fn placed(replicas: &[u32], leaving: &[u32]) -> ShardPlacement {
        ShardPlacement {
            group: 7,
            replicas: replicas.to_vec(),
            leaving: leaving.to_vec(),
            leader_pinned: false,
            founders: Vec::new(),
        }
    }

    #[test]
    fn adds_come_first_then_removals_then_the_move_is_reported() {
        let nodes: BTreeMap<u32, NodeId> = (1..=4).map(|b| (b, node_id(b, 1))).collect();
        let n = |b: u32| node_id(b, 1);
        // Broker 3 is down; the placement moved its replica to 4.
        let p = placed(&[1, 2, 4], &[3]);
        assert_eq!(plan(&[n(1), n(2), n(3)], &p, &nodes), vec![Step::Add(n(4))]);
        // 4 votes: 3 goes.
        assert_eq!(
            plan(&[n(1), n(2), n(3), n(4)], &p, &nodes),
            vec![Step::Remove(n(3))]
        );
        // 3 has left: report it.
        assert_eq!(plan(&[n(1), n(2), n(4)], &p, &nodes), vec![Step::Done(3)]);
        // Settled.
        assert!(plan(&[n(1), n(2), n(4)], &placed(&[1, 2, 4], &[]), &nodes).is_empty());
        // Founded on every broker, placed on three: the fourth is removed.
        assert_eq!(
            plan(&[n(1), n(2), n(3), n(4)], &placed(&[1, 2, 3], &[]), &nodes),
            vec![Step::Remove(n(4))]
        );
        // A placed broker with no known node id: nothing is removed meanwhile.
        let few: BTreeMap<u32, NodeId> = (1..=3).map(|b| (b, node_id(b, 1))).collect();
        assert!(plan(&[n(1), n(2), n(3)], &p, &few).is_empty());
    }
}
