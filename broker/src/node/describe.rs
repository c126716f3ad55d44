//! What a node tells clients about its streams: a stream's settings and
//! shard statistics, and the metadata (brokers, leaders, replicas).

use std::sync::Arc;

use felix_client::wire::{BrokerInfo, ShardInfo, ShardStats, StreamConfig, StreamInfo};

use super::{Node, StreamHandle};
use crate::error::BrokerError;

impl Node {
    /// A stream's settings and per-shard figures.
    pub fn describe(&self, name: &str) -> Result<(StreamConfig, Vec<ShardStats>), BrokerError> {
        let h = self.stream(name)?;
        let stats = h
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.log().with(|l| ShardStats {
                    shard: i as u32,
                    earliest: l.earliest_offset().0,
                    next: s.high_watermark(),
                    bytes: l.size_bytes(),
                    segments: l.segments().len() as u32,
                })
            })
            .collect();
        Ok((h.meta().config(&h.name), stats))
    }

    /// Brokers and streams for a metadata reply (`names` empty: every stream).
    pub async fn metadata(
        &self,
        names: &[String],
    ) -> Result<(Vec<BrokerInfo>, Vec<StreamInfo>), BrokerError> {
        // Requested streams are named as asked (a bare `orders` stays
        // `orders`), so a client finds them under the name it uses.
        let handles: Vec<(String, Arc<StreamHandle>)> = if names.is_empty() {
            self.streams()
                .into_iter()
                .map(|h| (h.name.to_string(), h))
                .collect()
        } else {
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                v.push((n.clone(), self.find_stream(n).await?));
            }
            v
        };
        let me = self.broker_id;
        let cluster = self.cluster();
        let streams = handles
            .iter()
            .map(|(name, h)| StreamInfo {
                name: name.clone(),
                kind: h.meta().kind,
                shards: h
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(shard, s)| ShardInfo {
                        shard: shard as u32,
                        leader: match s.replica() {
                            Some(r) => r.leader().map(|(id, _)| felix_replication::broker_of(id)),
                            None if s.is_replicated() => None,
                            None => Some(me),
                        },
                        replicas: match (s.replica(), cluster) {
                            (Some(r), Some(c)) => c.live_replicas(r),
                            _ if s.is_replicated() => Vec::new(),
                            _ => vec![me],
                        },
                    })
                    .collect(),
            })
            .collect();
        let brokers = match cluster {
            Some(c) => c
                .peers
                .iter()
                .map(|(id, n)| BrokerInfo {
                    id: *id,
                    address: n.client_addr.clone(),
                })
                .collect(),
            None => vec![BrokerInfo {
                id: me,
                address: self.address.lock().expect("address lock").clone(),
            }],
        };
        Ok((brokers, streams))
    }
}
