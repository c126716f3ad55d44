//! This broker's part in a cluster: the replication transport, its peers,
//! and who bootstraps which shard group.
//!
//! With a control plane (the way to run a cluster), stream definitions,
//! placement and the broker registry all come from its feed: shard ids are
//! the placement's group ids, founders the node ids it recorded, and peers'
//! addresses its registry (`peers.rs`). Nothing about metadata is agreed
//! among brokers themselves.
//!
//! Without one, a static `[cluster]` list of brokers each holds every
//! shard, and stream creations, deletions and retention changes are
//! entries of a metadata group (`GroupId::META`, run by every listed
//! broker): each applies them in the same order, so shard ids (allocated at
//! apply) are the same everywhere.

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
}

/// This broker's part in a cluster.
pub struct Cluster {
    /// This broker's Raft node id (broker id and incarnation).
    pub me: NodeId,
    pub broker: u64,
    /// Every broker, this one included, by broker id.
    pub peers: Arc<crate::peers::Peers>,
    pub transport: Arc<Transport>,
    pub router: Router,
    pub group: GroupConfig,
    pub write_timeout: Duration,
    meta: OnceLock<Replica>,
    /// The first metadata entry not applied yet.
    pub(crate) meta_next: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Result<(), String>>>,
    /// The metadata group's log (a static cluster only).
    pub(crate) meta_log: Option<Arc<SharedLog>>,
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
    /// `registry`: this broker's client address when a control plane's
    /// registry names the peers (else the static list does).
    pub fn open(
        identity: &Identity,
        c: &ClusterConfig,
        data_dir: &Path,
        meta_applied: Option<u64>,
        registry: Option<String>,
        saved: BTreeMap<u64, crate::peers::Peer>,
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
        let peers = match registry {
            Some(client_addr) => crate::peers::Peers::from_registry(
                u64::from(identity.broker_id),
                BrokerNode {
                    raft_addr: c.raft_address(),
                    client_addr,
                },
                me,
                saved,
            ),
            None => crate::peers::Peers::fixed(
                c.peers
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
                    .collect(),
            ),
        };
        let meta_log = match peers.follows_registry() {
            true => None,
            false => Some(Arc::new(
                SharedLog::open(
                    meta_dir(data_dir).join("log"),
                    LogConfig {
                        durability: Durability::Always,
                        segment_bytes: 8 << 20,
                        ..LogConfig::default()
                    },
                )?
                .0,
            )),
        };
        Ok(Cluster {
            me,
            broker: u64::from(identity.broker_id),
            peers: Arc::new(peers),
            transport,
            router,
            group: c.group_config(),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            meta: OnceLock::new(),
            meta_next: watch::channel(meta_applied.map_or(0, |a| a + 1)).0,
            outcomes: Mutex::new(BTreeMap::new()),
            meta_log,
            views: crate::views::GroupViews::default(),
        })
    }

    /// Starts the metadata group, its committed entries applied by
    /// `applier` (the node's, `metagroup::MetaApplier`).
    pub async fn start_meta(&self, applier: Arc<dyn Applier>, data_dir: &Path) -> Result<(), BrokerError> {
        let Some(log) = self.meta_log.clone() else {
            return Err(BrokerError::Invalid(
                "a cluster with a control plane runs no metadata group".into(),
            ));
        };
        let applied = (*self.meta_next.borrow()).checked_sub(1).map(RaftIndex);
        let replica = Replica::start(
            self.me,
            GroupId::META,
            log,
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
            self.peers.all(),
        ));
        let _ = self.meta.set(replica);
        Ok(())
    }

    /// This broker's addresses.
    pub fn my_node(&self) -> BrokerNode {
        self.peers.get(self.broker).unwrap_or_default()
    }

    /// The other brokers' addresses.
    fn others(&self) -> Vec<BrokerNode> {
        self.peers
            .all()
            .into_iter()
            .filter(|(b, _)| *b != self.broker)
            .map(|(_, n)| n)
            .collect()
    }

    /// The brokers' current node ids: who founds a stream created now
    /// (the registry's, or the metadata group's voters without one).
    pub fn meta_voters(&self) -> Result<Vec<NodeId>, BrokerError> {
        if self.peers.follows_registry() {
            return Ok(self.peers.node_ids());
        }
        let voters = self.meta.get().map(Replica::voters).unwrap_or_default();
        if voters.is_empty() {
            return Err(BrokerError::Timeout("the metadata group is forming".into()));
        }
        Ok(voters)
    }

    /// The brokers that replicate `replica`'s group as far as this broker
    /// knows: its voters, less incarnations that are gone (not the one the
    /// registry names, or not voters of the metadata group without a
    /// control plane, or an earlier incarnation of this broker). A
    /// broker rebuilt from an empty disk is listed again once it is
    /// admitted to the group; until then the shard is under-replicated.
    pub fn live_replicas(&self, replica: &Replica) -> Vec<u64> {
        self.live_brokers(replica.voters())
    }

    /// The brokers of `voters` (see [`Cluster::live_replicas`]).
    pub fn live_brokers(&self, voters: Vec<NodeId>) -> Vec<u64> {
        let meta: Vec<NodeId> = self.meta.get().map(Replica::voters).unwrap_or_default();
        let current = |id: NodeId| match self.peers.follows_registry() {
            true => self.peers.is_current(broker_of(id), id),
            false => meta.contains(&id),
        };
        let mut v: Vec<u64> = voters
            .into_iter()
            .filter(|id| current(*id) && (broker_of(*id) != self.broker || *id == self.me))
            .map(broker_of)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
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
            tokio::spawn(bootstrap(
                replica.clone(),
                self.peers.clone(),
                replicas.to_vec(),
                wait,
            ));
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
            tokio::spawn(bootstrap(
                replica.clone(),
                self.peers.clone(),
                replicas.to_vec(),
                wait,
            ));
        }
        shard.attach(replica, self.write_timeout);
        Ok(())
    }

    /// Writes a metadata change through the metadata group (forwarded to
    /// its leader) and waits until this broker has applied it.
    pub async fn write_meta(&self, op: &MetaOp, now_ms: i64) -> Result<(), BrokerError> {
        if self.peers.follows_registry() {
            return Err(BrokerError::Invalid(
                "this cluster's streams are defined through its control plane".into(),
            ));
        }
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

/// `founders` with their addresses, once every one is known: a group
/// founded with fewer members than the others found it with would be a
/// second group.
fn members(peers: &crate::peers::Peers, founders: &[NodeId]) -> Option<BTreeMap<NodeId, BrokerNode>> {
    founders
        .iter()
        .map(|id| Some((*id, peers.get(broker_of(*id))?)))
        .collect()
}

/// Bootstraps `replica`'s group in the background (see
/// [`Replica::bootstrap`]), once the founders' addresses are known (a
/// broker restarted before the control plane answers may not know them).
async fn bootstrap(replica: Replica, peers: Arc<crate::peers::Peers>, founders: Vec<NodeId>, wait: Duration) {
    let members = loop {
        if let Some(m) = members(&peers, &founders) {
            break m;
        }
        if replica.is_shut_down() || replica.has_state() {
            return;
        }
        tokio::time::sleep(FORM_POLL).await;
    };
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
