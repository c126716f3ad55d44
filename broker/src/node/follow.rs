//! Following the control plane: making the node's streams match the feed
//! (create, change in place, delete), each change applied once.

use felix_client::wire::StreamConfig;

use super::{Followed, Node};
use crate::error::BrokerError;
use crate::meta::StreamMeta;
use crate::names::StreamName;

impl Node {
    /// The streams created by following the control plane.
    pub fn managed_streams(&self) -> Vec<String> {
        self.meta
            .lock()
            .expect("meta lock")
            .streams()
            .filter(|(_, m)| m.managed())
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// Makes stream `name` match the control plane's view of it at feed
    /// version `version` (`want` absent: deleted). Every broker applies
    /// the feed itself, in the feed's order; what they must agree on (shard
    /// ids, founders) the feed carries. Nothing is written when it
    /// matches already. `fresh`: learned from the changes as they happened
    /// (not a snapshot), so a new shard group need not wait for a leader
    /// that might exist already.
    pub fn follow(
        &self,
        version: u64,
        name: &StreamName,
        want: Option<Followed>,
        fresh: bool,
    ) -> Result<(), BrokerError> {
        if !self.follow_changes(version, name, want.as_ref()) {
            return Ok(());
        }
        // Placements that name no founders (made before brokers
        // registered their node ids) are founded by the current ones.
        let current = self.cluster().map(|c| c.peers.node_ids()).unwrap_or_default();
        self.apply_follow(version, name, want, current, fresh)
    }

    /// Records the cluster's peers as the registry names them now, so a
    /// restart knows them before the control plane answers.
    pub fn keep_peers(&self) -> Result<(), BrokerError> {
        match self.cluster() {
            Some(c) => self.meta.lock().expect("meta lock").set_peers(c.peers.records()),
            None => Ok(()),
        }
    }

    /// Whether following `want` at `version` would change anything here.
    pub(super) fn follow_changes(&self, version: u64, name: &StreamName, want: Option<&Followed>) -> bool {
        let meta = self.meta.lock().expect("meta lock");
        if version < meta.cp_version() {
            return false;
        }
        match (meta.get(name), want) {
            (None, None) => false,
            (Some(m), Some(w)) => {
                !same_shape(m, &w.config) || !same_settings(m, &w.config) || m.placement != w.placement
            }
            _ => true,
        }
    }

    /// Applies a followed change. A stream of another shape than wanted was
    /// deleted and made again while this broker did not follow: it is
    /// replaced.
    pub(super) fn apply_follow(
        &self,
        version: u64,
        name: &StreamName,
        want: Option<Followed>,
        replicas: Vec<u64>,
        fresh: bool,
    ) -> Result<(), BrokerError> {
        let current = {
            let mut meta = self.meta.lock().expect("meta lock");
            if !meta.note_follow(version)? {
                return Ok(());
            }
            meta.get(name).cloned()
        };
        match (current, want) {
            (None, None) => Ok(()),
            (Some(_), None) => self.delete_local(name),
            (Some(m), Some(Followed { config: c, placement })) if same_shape(&m, &c) => {
                let m = self.meta.lock().expect("meta lock").update(name, |m| {
                    m.placement = placement;
                    m.retention_ms = c.retention_ms;
                    m.retention_bytes = c.retention_bytes;
                    m.default_ttl_ms = c.default_ttl_ms;
                    if c.max_deliveries > 0 {
                        m.max_deliveries = c.max_deliveries;
                    }
                })?;
                self.rehost(name, m, false)?;
                Ok(())
            }
            (current, Some(Followed { config: c, placement })) => {
                if current.is_some() {
                    tracing::warn!(stream = %name, "replacing a stream the control plane deleted and made again with another shape");
                    self.delete_local(name)?;
                }
                self.create_local(&c, replicas, placement, fresh)?;
                Ok(())
            }
        }
    }
}

/// Whether a stream is the one `c` describes (kind and shard count; what
/// cannot change in place).
fn same_shape(m: &StreamMeta, c: &StreamConfig) -> bool {
    m.kind == c.kind && m.shards.len() == c.shards as usize
}

/// Whether what may change in place already matches.
fn same_settings(m: &StreamMeta, c: &StreamConfig) -> bool {
    m.managed()
        && m.retention_ms == c.retention_ms
        && m.retention_bytes == c.retention_bytes
        && m.default_ttl_ms == c.default_ttl_ms
        && (c.max_deliveries == 0 || m.max_deliveries == c.max_deliveries)
}
