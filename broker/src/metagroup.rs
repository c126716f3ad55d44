//! The node's side of the metadata group: committed entries (stream
//! creations, deletions, retention changes, followed control-plane
//! changes) applied to the node in log order, and its snapshot. The
//! cluster runs the group and hands each commit to this `Applier`, so the
//! cluster needs no knowledge of the node.

use std::sync::{Arc, Weak};

use felix_log::RaftIndex;
use felix_replication::Applier;

use crate::cluster::{Cluster, MetaOp};
use crate::error::BrokerError;

/// What the metadata group's entries change: the node (`node/`
/// implements it). A trait so that this module, below the node, can call
/// up into it.
pub(crate) trait MetaOwner: Send + Sync {
    fn cluster(&self) -> Option<&Arc<Cluster>>;
    fn now_ms(&self) -> i64;
    /// Applies entry `index`; `fresh`: written just now, so new shard
    /// groups need not wait for an existing leader.
    fn apply_meta(&self, op: &MetaOp, index: u64, fresh: bool) -> Result<(), BrokerError>;
    /// Replaces the metadata with a snapshot's, applied through `index`.
    fn install_meta(&self, state: &[u8], index: u64) -> Result<(), BrokerError>;
    fn meta_snapshot(&self) -> Result<Vec<u8>, BrokerError>;
}

/// A metadata entry whose record is older than this when applied is a
/// replay (a restart, or a broker rebuilt from an empty disk): its shard
/// groups wait for an existing leader before bootstrapping.
const FRESH_CREATE_MS: i64 = 30_000;

fn refusal_text(e: &BrokerError) -> String {
    match e {
        BrokerError::StreamExists(n) => format!("exists:{n}"),
        BrokerError::UnknownStream(n) => format!("unknown:{n}"),
        e => e.to_string(),
    }
}

/// Applies committed metadata entries to the node.
pub(crate) struct MetaApplier {
    pub(crate) node: Weak<dyn MetaOwner>,
}

impl Applier for MetaApplier {
    fn apply_through(&self, through: RaftIndex) -> Result<(), String> {
        let Some(node) = self.node.upgrade() else {
            return Err("the node is gone".into());
        };
        let Some(cluster) = node.cluster() else {
            return Err("not in a cluster".into());
        };
        let next = *cluster.meta_next.borrow();
        if through.0 < next {
            return Ok(());
        }
        let Some(log) = &cluster.meta_log else {
            return Err("no metadata group in a cluster with a control plane".into());
        };
        let entries: Vec<_> = log.with(|l| {
            l.positioned_from_raft_index(RaftIndex(next))
                .take_while(|p| p.batch.header().raft_index <= through)
                .map(|p| p.batch)
                .collect()
        });
        let now = node.now_ms();
        for b in entries {
            let index = b.header().raft_index.0;
            if b.header().flags.control() {
                continue;
            }
            let records = b.records().map_err(|e| e.to_string())?;
            for r in records {
                let r = r.map_err(|e| e.to_string())?;
                let fresh = now.saturating_sub(r.timestamp_ms) < FRESH_CREATE_MS;
                let outcome = match r.value.as_deref().map(serde_json::from_slice::<MetaOp>) {
                    Some(Ok(op)) => node.apply_meta(&op, index, fresh).map_err(|e| refusal_text(&e)),
                    Some(Err(e)) => Err(format!("unreadable metadata entry: {e}")),
                    None => Err("empty metadata entry".into()),
                };
                if let Err(why) = &outcome {
                    tracing::debug!(index, why, "metadata change refused");
                }
                cluster.record_outcome(index, outcome);
            }
        }
        cluster.meta_next.send_replace(through.0 + 1);
        Ok(())
    }

    fn installed(&self, last: RaftIndex, state: &[u8]) -> Result<(), String> {
        let Some(node) = self.node.upgrade() else {
            return Err("the node is gone".into());
        };
        node.install_meta(state, last.0).map_err(|e| e.to_string())?;
        if let Some(c) = node.cluster() {
            c.meta_next.send_replace(last.0 + 1);
        }
        Ok(())
    }

    fn snapshot_state(&self) -> Result<Vec<u8>, String> {
        let Some(node) = self.node.upgrade() else {
            return Err("the node is gone".into());
        };
        node.meta_snapshot().map_err(|e| e.to_string())
    }
}
