//! A static cluster of brokers: the replication transport, the metadata
//! group that carries stream definitions, and who bootstraps which group.
//!
//! Every broker listed in `[cluster]` holds every shard; the control
//! plane's placement decides which of them are a shard group's voters
//! (`control/moves.rs`). Stream creations, deletions and
//! retention changes are entries of the metadata group (`GroupId::META`,
//! run by every broker): each broker applies them in the same order, so
//! shard ids (allocated at apply) and shard groups are the same everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use felix_client::transport::dev_certificates;
use felix_client::wire::StreamConfig;
use felix_log::{BatchBuilder, Compression, Durability, LogConfig, RaftIndex, RecordInput, SharedLog};
use felix_replication::{
    broker_of, Applier, BrokerNode, GroupConfig, GroupId, NodeId, Replica, Router, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::error::BrokerError;
use crate::identity::Identity;

// Where a clustered broker keeps the metadata group, under its data
// directory (defined beside the identity, which checks for it).
pub use crate::identity::META_DIR;
/// How often a broker without metadata state asks its peers whether the
/// cluster exists yet.
const FORM_POLL: Duration = Duration::from_millis(500);

/// Outcomes of applied metadata entries kept for the writers waiting on
/// them (the oldest go first).
const META_OUTCOMES_MAX: usize = 1024;

/// A change to the cluster's stream definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaOp {
    Create {
        stream: StreamConfig,
        /// The node ids that found its shard groups: the metadata group's
        /// voters when the creation was written.
        #[serde(default)]
        replicas: Vec<NodeId>,
    },
    Delete {
        name: String,
    },
    SetRetention {
        name: String,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    },
    /// A stream's (or cache's) state at control-plane feed version
    /// `version`: created, changed or (`stream` absent) deleted to match.
    Follow {
        version: u64,
        name: String,
        stream: Option<StreamConfig>,
        /// Founders, should it be created (as for `Create`).
        #[serde(default)]
        replicas: Vec<NodeId>,
        /// Where the control plane wants each shard's replicas (brokers).
        #[serde(default)]
        placement: Vec<felix_controlplane::model::ShardPlacement>,
    },
}

/// This broker's part in a cluster.
pub struct Cluster {
    /// This broker's Raft node id (broker id and incarnation).
    pub me: NodeId,
    pub broker: u64,
    /// Every broker, this one included, by broker id.
    pub peers: BTreeMap<u64, BrokerNode>,
    pub transport: Arc<Transport>,
    pub router: Router,
    pub group: GroupConfig,
    pub write_timeout: Duration,
    meta: OnceLock<Replica>,
    /// The first metadata entry not applied yet.
    pub(crate) meta_next: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Result<(), String>>>,
    pub(crate) meta_log: Arc<SharedLog>,
    /// Leaders and voters of groups held elsewhere, as learned.
    pub views: crate::views::GroupViews,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the replication transport and the metadata log (not its
    /// group yet: see [`Cluster::start_meta`]).
    pub fn open(
        identity: &Identity,
        c: &ClusterConfig,
        data_dir: &Path,
        meta_applied: Option<u64>,
    ) -> Result<Cluster, BrokerError> {
        let me = identity.node_id();
        let certs = dev_certificates(&c.tls_dir, &[])?;
        let router = Router::default();
        let transport = Transport::start(
            me,
            c.raft_listen,
            &certs.server_tls(true)?,
            &certs.client_tls(true)?,
            router.clone(),
        )?;
        let peers = c
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    BrokerNode {
                        raft_addr: p.raft.clone(),
                        client_addr: p.client.clone(),
                    },
                )
            })
            .collect();
        let (meta_log, _) = SharedLog::open(
            meta_dir(data_dir).join("log"),
            LogConfig {
                durability: Durability::Always,
                segment_bytes: 8 << 20,
                ..LogConfig::default()
            },
        )?;
        Ok(Cluster {
            me,
            broker: u64::from(identity.broker_id),
            peers,
            transport,
            router,
            group: c.group_config(),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            meta: OnceLock::new(),
            meta_next: watch::channel(meta_applied.map_or(0, |a| a + 1)).0,
            outcomes: Mutex::new(BTreeMap::new()),
            meta_log: Arc::new(meta_log),
            views: crate::views::GroupViews::default(),
        })
    }

    /// Starts the metadata group, its committed entries applied by
    /// `applier` (the node's, `metagroup::MetaApplier`).
    pub async fn start_meta(&self, applier: Arc<dyn Applier>, data_dir: &Path) -> Result<(), BrokerError> {
        let applied = (*self.meta_next.borrow()).checked_sub(1).map(RaftIndex);
        let replica = Replica::start(
            self.me,
            GroupId::META,
            self.meta_log.clone(),
            meta_dir(data_dir).join("raft"),
            applier,
            applied,
            self.transport.clone(),
            &self.router,
            self.group,
        )
        .await?;
        tokio::spawn(form_or_join_meta(
            replica.clone(),
            self.transport.clone(),
            self.broker,
            self.peers.clone(),
        ));
        let _ = self.meta.set(replica);
        Ok(())
    }

    /// This broker's addresses.
    pub fn my_node(&self) -> BrokerNode {
        self.peers.get(&self.broker).cloned().unwrap_or_default()
    }

    /// The other brokers' addresses.
    fn others(&self) -> Vec<BrokerNode> {
        self.peers
            .iter()
            .filter(|(b, _)| **b != self.broker)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The metadata group's voters: who founds a stream created now.
    pub fn meta_voters(&self) -> Result<Vec<NodeId>, BrokerError> {
        let voters = self.meta.get().map(Replica::voters).unwrap_or_default();
        if voters.is_empty() {
            return Err(BrokerError::Timeout("the metadata group is forming".into()));
        }
        Ok(voters)
    }

    /// The brokers that replicate `replica`'s group as far as this broker
    /// knows: its voters, less incarnations that are gone (not voters of
    /// the metadata group, or an earlier incarnation of this broker). A
    /// broker rebuilt from an empty disk is listed again once it is
    /// admitted to the group; until then the shard is under-replicated.
    pub fn live_replicas(&self, replica: &Replica) -> Vec<u64> {
        self.live_brokers(replica.voters())
    }

    /// The brokers of `voters` (see [`Cluster::live_replicas`]).
    pub fn live_brokers(&self, voters: Vec<NodeId>) -> Vec<u64> {
        let meta: Vec<NodeId> = self.meta.get().map(Replica::voters).unwrap_or_default();
        let mut v: Vec<u64> = voters
            .into_iter()
            .filter(|id| meta.contains(id) && (broker_of(*id) != self.broker || *id == self.me))
            .map(broker_of)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `replicas` with their addresses (a broker no longer configured is
    /// left out: nothing could reach it).
    fn members(&self, replicas: &[NodeId]) -> BTreeMap<NodeId, BrokerNode> {
        replicas
            .iter()
            .filter_map(|id| Some((*id, self.peers.get(&broker_of(*id))?.clone())))
            .collect()
    }

    /// How long a replayed group waits for an existing leader before it
    /// bootstraps one.
    fn bootstrap_wait(&self) -> Duration {
        Duration::from_millis(self.group.election_timeout_max_ms * 3)
    }

    /// Starts the group of shard `shard`, founded by `replicas`: bootstraps
    /// it if this broker is the shard's designated first leader, or asks to
    /// join it if this broker is not among the founders (it was rebuilt
    /// from an empty disk, or added, after the stream was created).
    /// `fresh`: the stream was just created (no leader can exist yet).
    pub async fn start_shard(
        &self,
        shard: &Arc<crate::shard::HostedShard>,
        state_dir: PathBuf,
        fresh: bool,
        replicas: &[NodeId],
        preferred: Option<u64>,
    ) -> Result<(), BrokerError> {
        let applied = felix_replication::machine::saved_applied(&state_dir).map(RaftIndex);
        let replica = Replica::start(
            self.me,
            group_of(shard.id),
            shard.log().clone(),
            state_dir,
            shard.clone() as Arc<dyn Applier>,
            applied,
            self.transport.clone(),
            &self.router,
            self.group,
        )
        .await?;
        if !replicas.contains(&self.me) {
            let (r, peers, me) = (replica.clone(), self.others(), self.my_node());
            tokio::spawn(async move { r.join(&peers, &me).await });
        } else if initializer(shard.id, replicas, preferred) == Some(self.me) {
            let wait = if fresh {
                Duration::ZERO
            } else {
                self.bootstrap_wait()
            };
            tokio::spawn(bootstrap(replica.clone(), self.members(replicas), wait));
        } else {
            // The designated founder may be an incarnation that is gone: a
            // stream created while a rebuilt broker was still being
            // admitted lists the old one among its founders, and a group
            // nobody founds never has a leader (the fault suite's
            // dead-letter streams stayed leaderless so). Each other founder
            // founds it, with the same members, if it hears of no leader
            // within a wait that grows with its rank.
            let mut ids = replicas.to_vec();
            ids.sort_unstable();
            let rank = ids.iter().position(|id| *id == self.me).unwrap_or(0) as u32;
            let wait = self.bootstrap_wait() * (rank + 1);
            tokio::spawn(bootstrap(replica.clone(), self.members(replicas), wait));
        }
        shard.attach(replica, self.write_timeout);
        Ok(())
    }

    /// Writes a metadata change through the metadata group (forwarded to
    /// its leader) and waits until this broker has applied it.
    pub async fn write_meta(&self, op: &MetaOp, now_ms: i64) -> Result<(), BrokerError> {
        let Some(replica) = self.meta.get() else {
            return Err(BrokerError::Timeout("the metadata group is starting".into()));
        };
        let value = serde_json::to_vec(op).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        let mut b = BatchBuilder::new(1 << 20);
        b.push(RecordInput {
            value: Some(&value),
            timestamp_ms: now_ms,
            ..RecordInput::default()
        })?;
        let batch = Bytes::from(b.build(Compression::None)?);
        let index = match tokio::time::timeout(self.write_timeout, replica.write_anywhere(batch)).await {
            Ok(Ok(r)) => r.raft_index,
            // No leader yet (an election is on): the client retries.
            Ok(Err(felix_replication::WriteError::NotLeader { .. })) => {
                return Err(BrokerError::NotLeader { leader: None })
            }
            Ok(Err(e)) => return Err(BrokerError::Replication(format!("metadata: {e}"))),
            Err(_) => {
                return Err(BrokerError::Timeout(format!(
                    "the metadata change was not committed within {:?}; it may still be",
                    self.write_timeout
                )))
            }
        };
        let mut next = self.meta_next.subscribe();
        let applied = tokio::time::timeout(self.write_timeout, next.wait_for(|n| *n > index)).await;
        if !matches!(applied, Ok(Ok(_))) {
            return Err(BrokerError::Timeout(
                "the metadata change committed but is not applied here yet".into(),
            ));
        }
        match self.outcomes.lock().expect("outcomes lock").remove(&index) {
            Some(Err(why)) => Err(refusal(why)),
            _ => Ok(()),
        }
    }

    /// Waits until this broker has applied every stream definition the
    /// metadata group had acknowledged when the call began, so a stream
    /// created through another broker is known here before this one
    /// answers `UnknownStream`.
    pub async fn meta_barrier(&self) -> Result<(), BrokerError> {
        let Some(replica) = self.meta.get() else {
            return Err(BrokerError::Timeout("the metadata group is starting".into()));
        };
        match replica.read_barrier(self.write_timeout).await {
            Ok(()) => Ok(()),
            Err(felix_replication::WriteError::NotLeader { .. }) => {
                Err(BrokerError::NotLeader { leader: None })
            }
            Err(e) => Err(BrokerError::Replication(format!("metadata: {e}"))),
        }
    }

    pub(crate) fn record_outcome(&self, index: u64, outcome: Result<(), String>) {
        let mut o = self.outcomes.lock().expect("outcomes lock");
        o.insert(index, outcome);
        while o.len() > META_OUTCOMES_MAX {
            o.pop_first();
        }
    }

    /// The metadata group's replica here, once it runs.
    pub fn meta_replica(&self) -> Option<Replica> {
        self.meta.get().cloned()
    }

    pub async fn shutdown(&self) {
        if let Some(r) = self.meta.get() {
            r.shutdown(&self.router).await;
        }
        self.transport.close();
    }
}

/// A shard's Raft group id (shard ids start at 1; 0 is the metadata group).
pub fn group_of(shard: felix_log::ShardId) -> GroupId {
    GroupId(shard.0)
}

fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(META_DIR)
}

/// The founder that bootstraps a shard's group (and so usually leads it
/// first): the control plane's preferred leader (`preferred`, a broker id)
/// when it is a founder, else spread over the founders by shard id,
/// balancing leaders.
fn initializer(shard: felix_log::ShardId, replicas: &[NodeId], preferred: Option<u64>) -> Option<NodeId> {
    if let Some(id) = preferred.and_then(|b| replicas.iter().copied().find(|id| broker_of(*id) == b)) {
        return Some(id);
    }
    let mut ids = replicas.to_vec();
    ids.sort_unstable();
    ids.get((shard.0 % ids.len().max(1) as u64) as usize).copied()
}

/// Brings the metadata group up on a broker that has no state in it: the
/// lowest broker id founds it once every peer has answered and none holds
/// metadata (a new cluster); a broker that finds a peer holding metadata
/// joins the existing group under its own node id (it was rebuilt from an
/// empty disk, or added). A replica with state has done one or the other
/// before, unless it stopped while still a learner.
async fn form_or_join_meta(
    replica: Replica,
    transport: Arc<Transport>,
    me: u64,
    peers: BTreeMap<u64, BrokerNode>,
) {
    let my_node = peers.get(&me).cloned().unwrap_or_default();
    let others: Vec<(u64, BrokerNode)> = peers
        .iter()
        .filter(|(b, _)| **b != me)
        .map(|(b, n)| (*b, n.clone()))
        .collect();
    let lowest = peers.keys().next() == Some(&me);
    loop {
        if replica.has_state() {
            if !replica.is_voter() {
                tokio::time::sleep(FORM_POLL).await;
                if replica.has_state() && !replica.is_voter() {
                    let nodes: Vec<BrokerNode> = others.iter().map(|(_, n)| n.clone()).collect();
                    replica.join(&nodes, &my_node).await;
                }
            }
            return;
        }
        let mut members = BTreeMap::from([(replica.id, my_node.clone())]);
        let mut formed = false;
        for (b, n) in &others {
            match transport.who(&n.raft_addr).await {
                Ok(w) if broker_of(w.id) == *b => {
                    formed |= w.meta_formed;
                    members.insert(w.id, n.clone());
                }
                Ok(w) => tracing::warn!(
                    peer = %n,
                    expected = b,
                    answered = broker_of(w.id),
                    "a peer answers as another broker; check cluster.peers"
                ),
                Err(e) => tracing::debug!(peer = %n, error = %e, "peer not reachable yet"),
            }
        }
        if formed {
            // A founding member that has not heard from the founder yet is
            // admitted at once; a rebuilt or added broker catches up first.
            tracing::info!(
                id = format!("{:#x}", replica.id),
                "the cluster exists: asking to be admitted to its metadata group"
            );
            let nodes: Vec<BrokerNode> = others.iter().map(|(_, n)| n.clone()).collect();
            replica.join(&nodes, &my_node).await;
            return;
        }
        if lowest && members.len() == peers.len() {
            if let Err(e) = replica.initialize(members).await {
                tracing::warn!(error = %e, "founding the metadata group failed");
            }
            return;
        }
        if replica.is_shut_down() {
            return;
        }
        tokio::time::sleep(FORM_POLL).await;
    }
}

/// Turns an apply-time refusal back into the error the writer would have
/// got on a single node.
fn refusal(why: String) -> BrokerError {
    if let Some(n) = why.strip_prefix("exists:") {
        BrokerError::StreamExists(n.to_owned())
    } else if let Some(n) = why.strip_prefix("unknown:") {
        BrokerError::UnknownStream(n.to_owned())
    } else {
        BrokerError::Invalid(why)
    }
}

/// Bootstraps `replica`'s group in the background (see
/// [`Replica::bootstrap`]).
async fn bootstrap(replica: Replica, members: BTreeMap<NodeId, BrokerNode>, wait: Duration) {
    if let Err(e) = replica.bootstrap(members, wait).await {
        tracing::warn!(group = %replica.group, error = %e, "bootstrapping the group failed");
    }
}

#[cfg(test)]
mod tests {
    use felix_client::wire::{Durability, StreamKind};

    use super::*;

    /// Metadata entries are in every broker's log: the stream in them is
    /// the wire's `StreamConfig`, stored as entries always stored it.
    #[test]
    fn a_metadata_entry_keeps_its_json_shape_and_old_entries_still_read() {
        let op = MetaOp::Create {
            stream: StreamConfig {
                kind: StreamKind::Compacted,
                ..StreamConfig::stream("t/n/s", 2, Durability::Interval { ms: 5 })
            },
            replicas: vec![1, 2],
        };
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["op"], "create");
        assert_eq!(json["stream"]["kind"], 1, "the kind as its code: {json}");
        assert_eq!(json["stream"]["durability"], "interval:5");
        let before_replication_factor = r#"{"op":"create","stream":{"name":"t/n/s","kind":2,"shards":1,
            "durability":"always","retention_ms":null,"retention_bytes":null,"max_deliveries":5,
            "default_ttl_ms":60000},"replicas":[1]}"#;
        let MetaOp::Create { stream, .. } = serde_json::from_str(before_replication_factor).unwrap() else {
            panic!("a create entry reads back as a create");
        };
        assert_eq!(
            (stream.kind, stream.durability, stream.replication_factor),
            (StreamKind::Cache, Durability::Always, 0)
        );
        let unknown_kind = before_replication_factor.replace(r#""kind":2"#, r#""kind":9"#);
        assert!(serde_json::from_str::<MetaOp>(&unknown_kind).is_err());
    }
}
