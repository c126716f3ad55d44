//! Joining the cluster: each hosted shard's Raft group started as founder
//! or joiner, and, in a static cluster without a control plane, the
//! metadata group.

use std::collections::HashMap;
use std::sync::Arc;

use super::Node;
use crate::cluster::{Cluster, MetaOp};
use crate::error::BrokerError;
use crate::meta::StreamMeta;
use crate::metagroup::{MetaApplier, MetaOwner};
use crate::names::StreamName;
use crate::shard::HostedShard;

impl Node {
    /// Joins the cluster: starts the replication transport, a group for
    /// every shard this broker hosts and, without a control plane
    /// (`registry` absent), the metadata group. `registry`: this broker's
    /// client address, when the control plane's registry names the peers.
    pub async fn start_cluster(
        self: &Arc<Self>,
        c: &crate::config::ClusterConfig,
        registry: Option<String>,
    ) -> Result<(), BrokerError> {
        let (applied, saved) = {
            let meta = self.meta.lock().expect("meta lock");
            (meta.raft_applied(), meta.peers())
        };
        let identity = crate::identity::Identity::load_or_create(&self.data_dir, self.broker_id)?;
        let follows = registry.is_some();
        let cluster = Arc::new(Cluster::open(
            &identity,
            c,
            &self.data_dir,
            applied,
            registry,
            saved,
        )?);
        let _ = self.cluster.set(cluster.clone());
        for h in self.streams() {
            let m = h.meta();
            // Rebuilt with the cluster's addresses for the shards held elsewhere.
            let h = self.rehost(&h.name, m.clone(), false)?;
            for (i, s) in h.hosted() {
                let i = i as usize;
                let dir = HostedShard::raft_dir(&self.shard_dir(s.id));
                cluster
                    .start_shard(s, dir, false, m.founders_of(i), m.preferred_leader(i))
                    .await?;
            }
        }
        if follows {
            return Ok(());
        }
        let owner: Arc<dyn MetaOwner> = self.clone();
        let applier = Arc::new(MetaApplier {
            node: Arc::downgrade(&owner),
        });
        cluster.start_meta(applier, &self.data_dir).await
    }

    /// Applies metadata entry `index` (cluster only). `fresh`: written just
    /// now, so new shard groups need not wait for an existing leader.
    pub(crate) fn apply_meta(&self, op: &MetaOp, index: u64, fresh: bool) -> Result<(), BrokerError> {
        match op {
            MetaOp::Create { stream, replicas } => {
                self.create_local(stream, Some(index), replicas.clone(), Vec::new(), fresh)?;
                Ok(())
            }
            MetaOp::Delete { name } => self.delete_local(&StreamName::parse(name)?, Some(index)),
            MetaOp::SetRetention {
                name,
                retention_ms,
                retention_bytes,
            } => self.set_retention_local(
                &StreamName::parse(name)?,
                *retention_ms,
                *retention_bytes,
                Some(index),
            ),
        }
    }

    /// The metadata group's state, for its snapshot.
    pub(crate) fn meta_snapshot(&self) -> Result<Vec<u8>, BrokerError> {
        self.meta.lock().expect("meta lock").to_bytes()
    }

    /// Replaces the stream definitions with a metadata snapshot's: streams
    /// it lacks are closed and removed, new ones opened.
    pub(crate) fn install_meta(&self, state: &[u8], index: u64) -> Result<(), BrokerError> {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.replace(state)?;
        meta.set_raft_applied(index);
        let wanted: HashMap<String, StreamMeta> =
            meta.streams().map(|(n, m)| (n.to_string(), m.clone())).collect();
        drop(meta);
        for h in self.streams() {
            if !wanted.contains_key(&h.name.to_string()) {
                self.streams
                    .write()
                    .expect("streams lock")
                    .remove(&h.name.to_string());
                for (_, s) in h.hosted() {
                    self.retire(s)?;
                }
            }
        }
        // Streams kept may have moved: their replicas here follow.
        for (name, m) in wanted {
            self.rehost(&StreamName::parse(&name)?, m, false)?;
        }
        Ok(())
    }
}
