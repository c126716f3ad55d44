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
        // Figures of the replicas held here, each under its shard number.
        let stats = h
            .hosted()
            .map(|(i, s)| {
                s.log().with(|l| ShardStats {
                    shard: i,
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
        // Shards held elsewhere: asked of brokers placed on them.
        let views = match cluster {
            Some(c) => {
                let wanted: Vec<(felix_replication::GroupId, Vec<u64>)> = handles
                    .iter()
                    .flat_map(|(_, h)| {
                        let m = h.meta();
                        (0..h.count())
                            .filter(|n| h.held(*n).is_none())
                            .filter_map(|n| {
                                let id = m.shard_id(n)?;
                                Some((crate::cluster::group_of(id), m.placed(n as usize).collect()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if wanted.is_empty() {
                    Default::default()
                } else {
                    c.views
                        .learn(&c.transport, c.broker, &c.peers.all(), &wanted)
                        .await
                }
            }
            None => Default::default(),
        };
        let streams = handles
            .iter()
            .map(|(name, h)| {
                let m = h.meta();
                StreamInfo {
                    name: name.clone(),
                    kind: m.kind,
                    key_routing: m.key_routing,
                    shards: (0..h.count())
                        .map(|shard| {
                            let (leader, replicas) = match (h.held(shard), cluster) {
                                (Some(s), _) => match (s.replica(), cluster) {
                                    (Some(r), Some(c)) => (
                                        r.leader().map(|(id, _)| felix_replication::broker_of(id)),
                                        c.live_replicas(r),
                                    ),
                                    _ if s.is_replicated() => (None, Vec::new()),
                                    _ => (Some(me), vec![me]),
                                },
                                (None, Some(c)) => {
                                    let view = m
                                        .shard_id(shard)
                                        .and_then(|id| views.get(&crate::cluster::group_of(id)));
                                    match view {
                                        Some(v) => (
                                            v.leader.map(felix_replication::broker_of),
                                            c.live_brokers(v.voters.clone()),
                                        ),
                                        // No placed broker answered: the placement.
                                        None => (None, m.placed(shard as usize).collect()),
                                    }
                                }
                                (None, None) => (None, Vec::new()),
                            };
                            ShardInfo {
                                shard,
                                leader,
                                replicas,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let brokers = match cluster {
            Some(c) => c
                .peers
                .all()
                .into_iter()
                .map(|(id, n)| BrokerInfo {
                    id,
                    address: n.client_addr,
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
