//! Creating, deleting and changing a stream on this node, in its metadata
//! file: as the control plane's feed says, or, on a broker without a
//! control plane, as its clients ask.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use felix_client::wire::StreamConfig;
use felix_controlplane::model::ShardPlacement;

use super::{Node, StreamHandle};
use crate::error::BrokerError;
use crate::meta::{StreamKind, StreamMeta};
use crate::names::StreamName;

impl Node {
    /// Creates a stream (or cache) on a broker without a control plane
    /// (one broker alone: a cluster's streams are the control plane's).
    /// With nothing to place replicas, a shard has its one replica here,
    /// and a create that asks for another number is refused rather than
    /// silently given this one.
    pub async fn create_stream(&self, c: &StreamConfig) -> Result<Arc<StreamHandle>, BrokerError> {
        alone(self)?;
        if c.replication_factor > 1 {
            return Err(BrokerError::Invalid(format!(
                "replication_factor {}: a broker without a control plane holds the only replica",
                c.replication_factor
            )));
        }
        self.create_local(c, Vec::new(), Vec::new(), true)
    }

    /// Records and opens a new stream. Nothing stays recorded when its
    /// shards cannot be opened (a followed creation is tried again from the
    /// same feed version).
    pub(super) fn create_local(
        &self,
        c: &StreamConfig,
        replicas: Vec<u64>,
        placement: Vec<ShardPlacement>,
        fresh: bool,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        // One creation at a time: the metadata file and the shard map change together.
        let mut meta = self.meta.lock().expect("meta lock");
        let (name, m) = meta.create(c, replicas, placement)?;
        let h = match self.rehost(&name, m, fresh) {
            Ok(h) => h,
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
            key_routing: felix_model::KeyRouting::FOR_NEW,
        };
        // With a control plane it defines the stream, as any other; the
        // brokers that ask at once find the one it made.
        if let Some(link) = self.control() {
            match link.create(&c, None).await {
                Ok(()) | Err(BrokerError::StreamExists(_)) => link.caught_up(false).await?,
                Err(e) => return Err(e),
            }
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
        alone(self)?;
        self.delete_local(&n)
    }

    pub(super) fn delete_local(&self, n: &StreamName) -> Result<(), BrokerError> {
        let mut meta = self.meta.lock().expect("meta lock");
        let h = self.stream_by_name(n)?;
        meta.delete(n)?;
        self.streams.write().expect("streams lock").remove(&n.to_string());
        for (_, s) in h.hosted() {
            self.retire(s, false)?;
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
        let h = self.stream_by_name(&n)?;
        alone(self)?;
        let mut meta = self.meta.lock().expect("meta lock");
        let m = meta.set_retention(&n, retention_ms, retention_bytes)?;
        *h.meta.lock().expect("stream meta lock") = m;
        Ok(())
    }
}

/// Changes a client asks of a broker's streams directly are for a broker
/// alone; a cluster's streams change through its control plane.
fn alone(n: &Node) -> Result<(), BrokerError> {
    match n.cluster() {
        Some(_) => Err(BrokerError::Invalid(
            "this broker is in a cluster: its streams change through the control plane".into(),
        )),
        None => Ok(()),
    }
}
