//! This broker's part in a cluster: the replication transport, its peers,
//! and who bootstraps which shard group.
//!
//! Stream definitions, placement and the broker registry all come from the
//! control plane's feed: shard ids are the placement's group ids, founders
//! the node ids it recorded, and peers' addresses its registry
//! (`peers.rs`). Nothing about metadata is agreed among brokers
//! themselves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use felix_log::RaftIndex;
use felix_replication::{
    broker_of, Applier, BrokerNode, GroupConfig, GroupId, NodeId, Replica, Router, Transport,
};

use crate::config::ClusterConfig;
use crate::error::BrokerError;
use crate::identity::Identity;

/// How often a founder that does not know every founder's address yet
/// looks again (the feed brings them).
const PEERS_POLL: Duration = Duration::from_millis(500);

/// Groups a broker founds at once. Founding a group is an election and
/// its first entries, each fsynced on every replica; a stream of 1,024
/// shards founded all at once queued thousands of fsyncs behind one
/// another, AppendEntries outwaited openraft's heartbeat-long timeout,
/// followers stood again, and after 60 s some shards still had no leader.
/// A few dozen at a time, each held until its first entry commits, found
/// them all in a few seconds.
pub const FOUNDINGS_PARALLEL_MAX: usize = 32;
/// Longest a founding holds its slot waiting for its first leader and
/// entry (a group that takes longer elects on without it).
pub const FOUNDING_HOLD_MS_MAX: u64 = 5_000;

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
    /// Leaders and voters of groups held elsewhere, as learned.
    pub views: crate::views::GroupViews,
    /// Slots for founding groups ([`FOUNDINGS_PARALLEL_MAX`]).
    foundings: Arc<tokio::sync::Semaphore>,
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
    /// Starts the replication transport. `client_addr`: this broker's, as
    /// registered; `saved`: the registry as last heard.
    pub fn open(
        identity: &Identity,
        c: &ClusterConfig,
        region: &str,
        client_addr: String,
        saved: BTreeMap<u64, crate::peers::Peer>,
    ) -> Result<Cluster, BrokerError> {
        let me = identity.node_id();
        let certs = c.certificate();
        let router = Router::default();
        let transport = Transport::start(
            me,
            region,
            c.raft_listen,
            &certs.server_tls()?,
            &certs.client_tls()?,
            router.clone(),
        )?;
        transport.set_catchup_bytes_per_s(c.catchup_bytes_per_s);
        let peers = crate::peers::Peers::from_registry(
            u64::from(identity.broker_id),
            BrokerNode {
                raft_addr: c.raft_address(),
                client_addr,
            },
            me,
            saved,
        );
        Ok(Cluster {
            me,
            broker: u64::from(identity.broker_id),
            peers: Arc::new(peers),
            transport,
            router,
            group: c.group_config(),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            views: crate::views::GroupViews::default(),
            foundings: Arc::new(tokio::sync::Semaphore::new(FOUNDINGS_PARALLEL_MAX)),
        })
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

    /// The brokers' current node ids, as the registry names them.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.peers.node_ids()
    }

    /// The brokers that replicate `replica`'s group as far as this broker
    /// knows: its voters, less incarnations that are gone (not the one the
    /// registry names, or an earlier incarnation of this broker). A
    /// broker rebuilt from an empty disk is listed again once it is
    /// admitted to the group; until then the shard is under-replicated.
    pub fn live_replicas(&self, replica: &Replica) -> Vec<u64> {
        self.live_brokers(replica.voters())
    }

    /// The brokers of `voters` (see [`Cluster::live_replicas`]).
    pub fn live_brokers(&self, voters: Vec<NodeId>) -> Vec<u64> {
        let mut v: Vec<u64> = voters
            .into_iter()
            .filter(|id| {
                self.peers.is_current(broker_of(*id), *id)
                    && (broker_of(*id) != self.broker || *id == self.me)
            })
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
                self.foundings.clone(),
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
                self.foundings.clone(),
            ));
        }
        shard.attach(replica, self.write_timeout);
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.transport.close();
    }
}

/// A shard's Raft group id (shard ids start at 1; 0 is reserved).
pub fn group_of(shard: felix_log::ShardId) -> GroupId {
    GroupId(shard.0)
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
/// [`Replica::founded_within`]), once the founders' addresses are known (a
/// broker restarted before the control plane answers may not know them).
async fn bootstrap(
    replica: Replica,
    peers: Arc<crate::peers::Peers>,
    founders: Vec<NodeId>,
    wait: Duration,
    foundings: Arc<tokio::sync::Semaphore>,
) {
    let members = loop {
        if let Some(m) = members(&peers, &founders) {
            break m;
        }
        if replica.is_shut_down() || replica.has_state() {
            return;
        }
        tokio::time::sleep(PEERS_POLL).await;
    };
    if !wait.is_zero() {
        // A stand-in founder's wait starts when this broker's foundings
        // reach the group, as the designated founder's do on its broker:
        // a long queue of them is not a founder gone.
        drop(foundings.acquire().await.expect("never closed"));
        if replica.founded_within(wait).await {
            return;
        }
    }
    let _slot = foundings.acquire().await.expect("never closed");
    if replica.is_shut_down() || replica.has_state() {
        return;
    }
    if let Err(e) = replica.initialize(members).await {
        tracing::warn!(group = %replica.group, error = %e, "bootstrapping the group failed");
        return;
    }
    replica
        .led_within(Duration::from_millis(FOUNDING_HOLD_MS_MAX))
        .await;
}
