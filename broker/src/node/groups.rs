//! Joining the cluster: each hosted shard's Raft group started as founder
//! or joiner.

use std::sync::Arc;

use futures_util::StreamExt;

use super::Node;
use crate::cluster::Cluster;
use crate::error::BrokerError;
use crate::shard::HostedShard;

/// Shard groups a broker starts at once when it joins the cluster.
pub const GROUP_STARTS_PARALLEL_MAX: usize = 16;

impl Node {
    /// Joins the cluster: starts the replication transport and a group for
    /// every shard this broker hosts. `client_addr`: this broker's, as it
    /// registers with the control plane, whose registry names the peers;
    /// `region`: this broker's, which its peers' certificates must name.
    pub async fn start_cluster(
        self: &Arc<Self>,
        c: &crate::config::ClusterConfig,
        region: &str,
        client_addr: String,
    ) -> Result<(), BrokerError> {
        let saved = self.meta.lock().expect("meta lock").peers();
        let identity = crate::identity::Identity::load_or_create(&self.data_dir, self.broker_id)?;
        let cluster = Arc::new(Cluster::open(&identity, c, region, client_addr, saved)?);
        let _ = self.cluster.set(cluster.clone());
        let mut starts = Vec::new();
        for h in self.streams() {
            let m = h.meta();
            // Rebuilt with the cluster's addresses for the shards held elsewhere.
            let h = self.rehost(&h.name, m.clone(), false)?;
            for (i, s) in h.hosted() {
                let i = i as usize;
                let dir = HostedShard::raft_dir(&self.shard_dir(s.id));
                starts.push((s.clone(), dir, m.founders_of(i).to_vec(), m.preferred_leader(i)));
            }
        }
        let (began, groups) = (std::time::Instant::now(), starts.len());
        // Several at once: a group's start is mostly waiting on its files.
        let mut started =
            futures_util::stream::iter(starts.into_iter().map(|(s, dir, founders, preferred)| {
                let cluster = cluster.clone();
                async move { cluster.start_shard(&s, dir, false, &founders, preferred).await }
            }))
            .buffer_unordered(GROUP_STARTS_PARALLEL_MAX);
        while let Some(r) = started.next().await {
            r?;
        }
        tracing::info!(
            groups,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "groups started"
        );
        Ok(())
    }
}
