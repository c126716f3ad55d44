//! Creating, deleting and changing a stream on this node: through the
//! metadata group in a cluster, in the local metadata file otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use felix_client::wire::StreamConfig;
use felix_controlplane::model::ShardPlacement;

use super::{Node, StreamHandle};
use crate::cluster::MetaOp;
use crate::error::BrokerError;
use crate::meta::{MetaStore, StreamKind, StreamMeta};
use crate::names::StreamName;

impl Node {
    /// Creates a stream (or cache) and opens its shards; in a cluster,
    /// on every broker through the metadata group.
    ///
    /// Without a control plane there is nothing to place replicas: a
    /// shard has one on every broker, and a create that asks for another
    /// number is refused rather than silently given this one.
    pub async fn create_stream(&self, c: &StreamConfig) -> Result<Arc<StreamHandle>, BrokerError> {
        let copies = self.cluster().map_or(1, |c| c.peers.len() as u32);
        if c.replication_factor != 0 && c.replication_factor != copies {
            return Err(BrokerError::Invalid(format!(
                "replication_factor {}: without a control plane every shard has one replica per broker ({copies})",
                c.replication_factor
            )));
        }
        let Some(cluster) = self.cluster() else {
            return self.create_local(c, None, Vec::new(), Vec::new(), true);
        };
        // Refuse what is plainly wrong before it reaches the log.
        MetaStore::check(c)?;
        let name = StreamName::parse(&c.name)?;
        cluster
            .write_meta(
                &MetaOp::Create {
                    stream: c.clone(),
                    replicas: cluster.meta_voters()?,
                },
                self.now_ms(),
            )
            .await?;
        self.stream_by_name(&name)
    }

    pub(super) fn create_local(
        &self,
        c: &StreamConfig,
        raft_index: Option<u64>,
        replicas: Vec<u64>,
        placement: Vec<ShardPlacement>,
        fresh: bool,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        // One creation at a time: the metadata file and the shard map change together.
        let mut meta = self.meta.lock().expect("meta lock");
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        let (name, m) = meta.create(c, replicas, placement)?;
        let h = match self.rehost(&name, m, fresh) {
            Ok(h) => h,
            // A replicated stream stays defined (every broker recorded it);
            // this broker serves it once it can open it.
            Err(e) if raft_index.is_some() => return Err(e),
            Err(e) => {
                let _ = meta.delete(&name);
                return Err(e);
            }
        };
        tracing::info!(stream = %name, shards = c.shards, "stream created");
        Ok(h)
    }

    /// Creates `name` as a one-shard stream like `like` if it does not exist
    /// (dead-letter streams).
    pub async fn ensure_stream(
        &self,
        name: &StreamName,
        like: &StreamMeta,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        if let Ok(h) = self.stream_by_name(name) {
            return Ok(h);
        }
        let c = StreamConfig {
            name: name.to_string(),
            kind: StreamKind::Stream,
            shards: 1,
            durability: like.durability,
            retention_ms: like.retention_ms,
            retention_bytes: like.retention_bytes,
            max_deliveries: like.max_deliveries,
            default_ttl_ms: None,
            replication_factor: 0,
        };
        if let Some(link) = self.control() {
            crate::control::admin::ensure(self, link, &c).await?;
            return self.stream_by_name(name);
        }
        match self.create_stream(&c).await {
            Err(BrokerError::StreamExists(_)) => self.stream_by_name(name),
            r => r,
        }
    }

    /// Deletes a stream: its shards stop, their files and index entries go.
    pub async fn delete_stream(&self, name: &str, force: bool) -> Result<(), BrokerError> {
        let n = StreamName::parse(name)?;
        let h = self.stream_by_name(&n)?;
        let subs = h.subscribers.load(Ordering::Acquire);
        if subs > 0 && !force {
            return Err(BrokerError::Invalid(format!(
                "stream {n} has {subs} active subscription(s); delete with force to end them"
            )));
        }
        match self.cluster() {
            Some(c) => {
                c.write_meta(&MetaOp::Delete { name: n.to_string() }, self.now_ms())
                    .await
            }
            None => self.delete_local(&n, None),
        }
    }

    pub(super) fn delete_local(&self, n: &StreamName, raft_index: Option<u64>) -> Result<(), BrokerError> {
        let mut meta = self.meta.lock().expect("meta lock");
        let h = self.stream_by_name(n)?;
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        meta.delete(n)?;
        self.streams.write().expect("streams lock").remove(&n.to_string());
        for (_, s) in h.hosted() {
            self.retire(s)?;
        }
        tracing::info!(stream = %n, "stream deleted");
        Ok(())
    }

    /// Changes a stream's retention; the next upkeep round applies it.
    pub async fn set_retention(
        &self,
        name: &str,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<(), BrokerError> {
        let n = StreamName::parse(name)?;
        self.stream_by_name(&n)?;
        match self.cluster() {
            Some(c) => {
                let op = MetaOp::SetRetention {
                    name: n.to_string(),
                    retention_ms,
                    retention_bytes,
                };
                c.write_meta(&op, self.now_ms()).await
            }
            None => self.set_retention_local(&n, retention_ms, retention_bytes, None),
        }
    }

    pub(super) fn set_retention_local(
        &self,
        n: &StreamName,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        raft_index: Option<u64>,
    ) -> Result<(), BrokerError> {
        let h = self.stream_by_name(n)?;
        let mut meta = self.meta.lock().expect("meta lock");
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        let m = meta.set_retention(n, retention_ms, retention_bytes)?;
        *h.meta.lock().expect("stream meta lock") = m;
        Ok(())
    }
}
