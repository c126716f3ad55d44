//! One task per broker that keeps the carriers matching the plan: a
//! carrier starts where this broker leads a bridged shard and stops when
//! it no longer does, when its bridge is paused, changed or deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{carry, plan, CarrierKey, HeldShard};
use crate::meta::StreamKind;
use crate::node::Node;

/// How often the plan is looked at again: a new leader starts carrying
/// within about this long of its election.
pub const PLAN_EVERY_MS: u64 = 500;

struct Running {
    /// The bridge as the carrier was started with: a change restarts it.
    updated_ms: u64,
    task: JoinHandle<carry::Stopped>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs until the node is dropped.
pub async fn supervise(node: Weak<Node>, source_region: String) {
    let mut running: BTreeMap<CarrierKey, Running> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(PLAN_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else { return };
        if n.bridges.is_empty() && running.is_empty() {
            continue;
        }
        let known = n.bridges.known();
        let held = held_shards(&n);
        let want = plan(&known, &held);
        running.retain(|k, r| {
            let keep = !r.task.is_finished() && want.get(k).is_some_and(|b| b.updated_ms == r.updated_ms);
            if !keep {
                tracing::info!(bridge = %k.bridge, stream = %k.stream, shard = k.shard, "bridge carrier stops here");
            }
            keep
        });
        for (k, b) in want {
            if running.contains_key(&k) {
                continue;
            }
            let Ok(h) = n.stream(&k.stream) else { continue };
            let Some(shard) = h.held(k.shard).cloned() else {
                continue;
            };
            tracing::info!(bridge = %k.bridge, stream = %k.stream, shard = k.shard, "bridge carrier starts here");
            let status = n.bridges.status_of(&k);
            let updated_ms = b.updated_ms;
            let task = tokio::spawn(carry::run(
                Arc::downgrade(&n),
                shard,
                k.clone(),
                b,
                source_region.clone(),
                status,
            ));
            running.insert(k, Running { updated_ms, task });
        }
        n.bridges.retain_status(&|k| running.contains_key(k));
        n.bridges.retain_clients();
    }
}

fn held_shards(n: &Node) -> Vec<HeldShard> {
    let mut out = Vec::new();
    for h in n.streams() {
        let carried_kind = h.kind() != StreamKind::Cache;
        let stream = h.name.to_string();
        for (i, s) in h.hosted() {
            out.push(HeldShard {
                stream: stream.clone(),
                shard: i,
                leads: !s.is_closed() && s.replica().is_none_or(|r| r.is_leader()),
                carried_kind,
            });
        }
    }
    out
}

/// Starts the supervisor for a node that follows a control plane.
pub fn start(node: &Arc<Node>, source_region: String) {
    tokio::spawn(supervise(Arc::downgrade(node), source_region));
}
