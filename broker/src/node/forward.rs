//! Writes to a shard this broker holds no replica of: with RF below the
//! number of brokers, a stream's dead-letter stream is often placed on
//! other brokers than the stream itself. The write goes to the shard's
//! leader over the replication transport (`forward`), which publishes it
//! under its producer window, so a retry after a lost answer lands once.

use bytes::Bytes;

use super::{Node, StreamHandle};

/// How often a write to a shard held elsewhere asks again for its leader.
const LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(200);
use crate::error::BrokerError;
use crate::shard::Appended;

impl Node {
    /// Publishes `batch` (a producer's) to shard `n` of `h`, held
    /// elsewhere: at its leader, as the brokers placed on it name it.
    pub(crate) async fn publish_elsewhere(
        &self,
        h: &StreamHandle,
        n: u32,
        batch: Bytes,
    ) -> Result<Appended, BrokerError> {
        let no_leader = || BrokerError::NotLeader { leader: None };
        let c = self.cluster().ok_or_else(no_leader)?;
        let m = h.meta();
        let id = m
            .shard_id(n)
            .ok_or_else(|| BrokerError::Invalid(format!("{} has no shard {n}", h.name)))?;
        let group = crate::cluster::group_of(id);
        let placed: Vec<u64> = m.placed(n as usize).collect();
        // A shard just created (a first dead letter makes its stream) may
        // not have elected its leader yet: wait for one as a local write
        // would, within the write timeout.
        let until = tokio::time::Instant::now() + c.write_timeout;
        let leader = loop {
            let views = c
                .views
                .learn(&c.transport, c.broker, &c.peers.all(), &[(group, placed.clone())])
                .await;
            if let Some(l) = views.get(&group).and_then(|v| v.leader) {
                break l;
            }
            if tokio::time::Instant::now() >= until {
                return Err(no_leader());
            }
            tokio::time::sleep(LEADER_POLL).await;
        };
        let node = c
            .peers
            .get(felix_replication::broker_of(leader))
            .ok_or_else(no_leader)?;
        let r = c
            .transport
            .forward(&node, group, &felix_replication::Request(batch))
            .await
            .map_err(|e| BrokerError::Replication(format!("forwarding to shard {n} of {}: {e}", h.name)))?;
        Ok(Appended {
            base_offset: r.base_offset,
            count: r.count,
        })
    }

    /// The largest batch this broker's shards take.
    pub(crate) fn batch_bytes_max(&self) -> usize {
        self.log.batch_bytes_max
    }
}
