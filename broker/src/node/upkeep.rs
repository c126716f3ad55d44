//! The background upkeep of hosted shards: retention, segment rolling,
//! TTL sweeps and compaction, and releasing what the index has covered.

use std::sync::Arc;
use std::time::Duration;

use felix_log::Retention;

use super::Node;
use crate::error::BrokerError;
use crate::shard::HostedShard;

impl Node {
    /// One round of upkeep: retention and segment rolling on every shard.
    /// (TTL sweeps and compaction run on the index's maintenance thread.)
    /// Returns the replicated shards whose retention must go through their
    /// group, with the last entry each may release.
    pub fn upkeep(&self, now_ms: i64) -> Vec<(Arc<HostedShard>, felix_log::RaftIndex)> {
        let mut release = Vec::new();
        for h in self.streams() {
            let m = h.meta();
            let r = Retention {
                retention_ms: m.retention_ms,
                retention_bytes: m.retention_bytes,
            };
            for (_, s) in h.hosted() {
                // Read before the log lock: applying takes the shard's
                // applied-index lock and then the log's, so taking them the
                // other way round here deadlocked a broker under load.
                let applied = s.applied_through();
                let res = s.log().with(|l| -> Result<(), BrokerError> {
                    l.roll_if_due(now_ms)?;
                    if s.is_replicated() {
                        // Only applied entries may go: a follower's sealed
                        // segment can end in entries not committed yet.
                        if let Some(i) = l.retention_through(now_ms, r).map(|i| i.min(applied)) {
                            if applied.0 > 0 {
                                release.push((s.clone(), i));
                            }
                        }
                        return Ok(());
                    }
                    let out = l.apply_retention(now_ms, r)?;
                    if out.segments_deleted > 0 {
                        self.index.on_retention(s.id, l)?;
                        tracing::debug!(shard = s.id.0, segments = out.segments_deleted, "retention");
                    }
                    Ok(())
                });
                if let Err(e) = res {
                    tracing::warn!(shard = s.id.0, error = %e, "upkeep failed");
                }
            }
        }
        release
    }

    /// Retention of a replicated shard: its group snapshots what goes,
    /// then purges it; the index then forgets it.
    pub(super) async fn release(&self, s: &HostedShard, through: felix_log::RaftIndex) {
        let Some(r) = s.replica() else { return };
        if let Err(e) = r.release_through(through).await {
            tracing::warn!(shard = s.id.0, error = %e, "retention through the group failed");
            return;
        }
        if let Err(e) = s.log().with(|l| self.index.on_retention(s.id, l)) {
            tracing::warn!(shard = s.id.0, error = %e, "index retention failed");
        }
    }

    /// Runs [`Node::upkeep`] every `every` until the node is dropped.
    pub fn start_upkeep(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let now = node.now_ms();
                let n = node.clone();
                let release = tokio::task::spawn_blocking(move || n.upkeep(now))
                    .await
                    .unwrap_or_default();
                for (s, through) in release {
                    node.release(&s, through).await;
                }
            }
        })
    }
}
