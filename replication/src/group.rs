//! Starting one group and writing through it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use felix_log::{RaftIndex, SharedLog};
use openraft::error::{ClientWriteError, InitializeError, RaftError};

use crate::clock::heard_now;
pub use crate::config::{GroupConfig, PAYLOAD_ENTRIES_MAX};
pub use crate::elections::HANDOVER_MS_MAX;
use crate::elections::{Handover, Refusals};
use crate::error::ReplicationError;
use crate::machine::{Applier, StateMachine};
use crate::membership::admit;
pub use crate::membership::{Admission, PROMOTE_LAG_MAX};
use crate::network::{NetworkFactory, Router, Transport};
use crate::store::LogStore;
use crate::types::{BrokerNode, GroupId, NodeId, Raft, Request, Response};

/// How often a joining replica asks to be admitted.
pub const JOIN_POLL: std::time::Duration = std::time::Duration::from_millis(300);
/// How long a joining replica waits for one answer (a membership change
/// on the leader included).
pub const JOIN_ANSWER_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a stepping-down leader waits for a voter to acknowledge the
/// successor it chose.
pub const SUCCESSOR_ASK_MAX: std::time::Duration = std::time::Duration::from_millis(1_000);
/// How long a retention release waits for the snapshot it asked for.
pub const SNAPSHOT_BUILD_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a write through a group did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("not the leader of {group}; leader: {leader:?}")]
    NotLeader {
        group: GroupId,
        leader: Option<(NodeId, BrokerNode)>,
    },
    /// The leader cannot reach a quorum of its group.
    #[error("{group} has no quorum: {why}")]
    NoQuorum { group: GroupId, why: String },
    /// The group here stopped (its replica was placed elsewhere or the
    /// broker is shutting down) before the write was answered; the entry
    /// may still be committed by the others.
    #[error("{group} stopped here before answering the write; it may still be committed")]
    Stopped { group: GroupId },
    #[error(transparent)]
    Other(#[from] ReplicationError),
}

/// One group hosted on this broker.
#[derive(Clone)]
pub struct Replica {
    pub group: GroupId,
    pub id: NodeId,
    pub raft: Raft,
    transport: Arc<Transport>,
    purge_floor: Arc<AtomicU64>,
    /// Leadership hand-over (see [`Replica::hand_over`]).
    handover: Arc<Handover>,
    /// Reads answered from this leader's state (see
    /// [`Replica::confirm_for_read`]).
    lease: Arc<ReadLease>,
    read_lease_ms: u64,
}

/// When this leader last knew it led: the start ([`heard_now`] clock) of
/// the last confirmation round a quorum answered, and one round at a time.
#[derive(Debug, Default)]
struct ReadLease {
    confirmed_at: AtomicU64,
    confirming: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group", &self.group)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Starts the group over `log`. `applied` is how far `applier`'s state
    /// already reflects the log.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        id: NodeId,
        group: GroupId,
        log: Arc<SharedLog>,
        state_dir: PathBuf,
        applier: Arc<dyn Applier>,
        applied: Option<RaftIndex>,
        transport: Arc<Transport>,
        router: &Router,
        cfg: GroupConfig,
    ) -> Result<Replica, ReplicationError> {
        std::fs::create_dir_all(&state_dir).map_err(|source| ReplicationError::Io {
            op: "create",
            path: state_dir.clone(),
            source,
        })?;
        let purge_floor = Arc::new(AtomicU64::new(0));
        let store = LogStore::new(
            id,
            log.clone(),
            state_dir.clone(),
            purge_floor.clone(),
            router.disk(),
        );
        let sm = StateMachine::open(log.clone(), state_dir.clone(), applier.clone(), applied)
            .map_err(ReplicationError::Apply)?;
        let (outvoted, outran) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let net = NetworkFactory {
            transport: transport.clone(),
            group,
            outvoted: outvoted.clone(),
            outran: outran.clone(),
        };
        let handover = Arc::new(Handover::new(router.park(group)));
        let unsaved = sm.unsaved();
        let raft = crate::runtime::with_gate(
            handover.quiet.clone(),
            Raft::new(id, Arc::new(cfg.raft(group)?), net, store, sm),
        )
        .await
        .map_err(|e| ReplicationError::Raft(e.to_string()))?;
        // Openraft's election timer stays off: the driver decides every
        // election, after a pre-vote (see `Candidacy`, `prevote`).
        raft.runtime_config().elect(false);
        let votes = Refusals { outvoted, outran };
        router.add(
            group,
            raft.clone(),
            state_dir,
            handover.clone(),
            votes,
            applier,
            log.clone(),
            unsaved,
        );
        router.drive_once(|| {
            tokio::spawn(crate::driver::drive(
                router.clone(),
                Arc::downgrade(&transport),
                cfg,
            ));
        });
        Ok(Replica {
            group,
            id,
            raft,
            transport,
            purge_floor,
            handover,
            lease: Arc::new(ReadLease::default()),
            read_lease_ms: cfg.read_lease_ms(),
        })
    }

    /// Makes `members` the group's first membership. Every initial member
    /// may call it with the same set; a group that already has state
    /// ignores it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, BrokerNode>) -> Result<(), ReplicationError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ReplicationError::Raft(e.to_string())),
        }
    }

    /// Waits up to `wait` for the group to show state on this replica
    /// (another founder founded it, or a leader reached it). Returns
    /// whether it did.
    pub async fn founded_within(&self, wait: std::time::Duration) -> bool {
        let has_state = |m: &openraft::RaftMetrics<NodeId, BrokerNode>| {
            m.current_leader.is_some()
                || m.last_log_index.is_some()
                || m.membership_config.membership().voter_ids().next().is_some()
        };
        if self.has_state() {
            return true;
        }
        let mut metrics = self.raft.metrics();
        let r = tokio::time::timeout(wait, metrics.wait_for(has_state)).await;
        matches!(r, Ok(Ok(_)))
    }

    /// Waits up to `wait` until the group has a leader and this replica
    /// has applied an entry of the leader's term: an election over and its
    /// first entry held by a quorum. Returns whether that happened.
    pub async fn led_within(&self, wait: std::time::Duration) -> bool {
        let led = |m: &openraft::RaftMetrics<NodeId, BrokerNode>| {
            m.current_leader.is_some() && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
        };
        let mut metrics = self.raft.metrics();
        let r = tokio::time::timeout(wait, metrics.wait_for(led)).await;
        matches!(r, Ok(Ok(_)))
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<(NodeId, BrokerNode)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// The group's voters as this replica knows them.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether the membership this replica acts on is committed (applied
    /// here): a removal seen before that could still be undone by a new
    /// leader, so nothing may be deleted on the strength of it.
    pub fn membership_committed(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        match (m.membership_config.log_id(), m.last_applied) {
            (None, _) => true,
            (Some(at), Some(applied)) => at.index <= applied.index,
            (Some(_), None) => false,
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Shutdown
    }

    /// Whether this replica is one of its group's voters.
    pub fn is_voter(&self) -> bool {
        self.voters().contains(&self.id)
    }

    /// Whether this replica holds any of its group's state (a membership,
    /// entries, or a leader it heard).
    pub fn has_state(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader.is_some()
            || m.last_log_index.is_some()
            || m.membership_config.membership().voter_ids().next().is_some()
    }

    /// Admits node `id` at `node` (one step; see [`Admission`]). Called on
    /// the leader by a joining replica's RPC, or by the control plane.
    pub async fn admit(&self, id: NodeId, node: BrokerNode) -> Result<Admission, ReplicationError> {
        self.handover.park.touch();
        admit(&self.raft, self.group, id, node).await
    }

    /// Asks the group's leader, through `peers`, to admit this replica
    /// (reachable at `me`) until it is a voter: how a broker rebuilt from
    /// an empty disk, under a new node id, takes the place of its lost
    /// incarnation. Returns when it is a voter or the group shuts down.
    pub async fn join(&self, peers: &[BrokerNode], me: &BrokerNode) {
        let mut hint: Option<BrokerNode> = None;
        let mut turn = 0usize;
        let mut last_said = String::new();
        while !self.is_voter() {
            if self.is_shut_down() || peers.is_empty() {
                return;
            }
            let ask = hint.take().unwrap_or_else(|| {
                turn += 1;
                peers[turn % peers.len()].clone()
            });
            let answer = tokio::time::timeout(
                JOIN_ANSWER_MAX,
                self.transport.join(&ask.raft_addr, self.group, self.id, me),
            )
            .await
            .unwrap_or_else(|_| Err(ReplicationError::Transport("no answer in time".into())));
            let said = format!("{answer:?}");
            if said != last_said {
                tracing::debug!(group = %self.group, asked = %ask, answer = %said, "joining");
                last_said = said;
            }
            match answer {
                Ok(Admission::Joined) | Ok(Admission::CatchingUp) => hint = Some(ask),
                Ok(Admission::NotLeader(l)) => hint = l,
                Err(_) => {}
            }
            tokio::time::sleep(JOIN_POLL).await;
        }
        tracing::info!(group = %self.group, id = format!("{:#x}", self.id), "joined as a voter");
    }

    /// Whether the group is quiescent on this replica (see `quiesce`).
    pub fn is_quiet(&self) -> bool {
        self.handover.quiet.is_quiet()
    }

    /// How many times openraft's tick task for this replica has woken (it
    /// sleeps while the group is quiet).
    pub fn ticks(&self) -> u64 {
        self.handover.quiet.ticks()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether this replica leads and is the one the placement prefers (or
    /// none is preferred): a hand-over has nothing to do.
    pub fn leads_as_preferred(&self) -> bool {
        let preferred = self.handover.preferred.load(Ordering::Acquire);
        (preferred == 0 || preferred == self.id) && self.is_leader()
    }

    /// Names the replica the placement prefers as leader. A follower that
    /// is preferred stands as soon as the leader's lease lapses; the others
    /// wait a lease longer while a leader that is not preferred is in
    /// office, so a hand-over lands on the preferred replica.
    pub fn set_preferred(&self, id: Option<NodeId>) {
        self.handover.preferred.store(id.unwrap_or(0), Ordering::Release);
    }

    /// Steps aside for the preferred replica, if this replica leads, is not
    /// preferred, and the preferred one is a voter that has every entry:
    /// for up to `HANDOVER_MS_MAX` it takes no writes (answered `NotLeader`
    /// so clients retry) and sends no heartbeats, so the followers' leases
    /// lapse and the preferred one, standing first, is elected. openraft
    /// 0.9 has no leadership transfer; this is one from its parts. Returns
    /// whether it stepped aside.
    pub fn hand_over(&self) -> bool {
        let preferred = self.handover.preferred.load(Ordering::Acquire);
        if preferred == 0 || preferred == self.id || !self.is_leader() {
            return false;
        }
        let m = self.raft.metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == preferred);
        let last = m.last_log_index;
        let caught_up = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).cloned())
            .flatten()
            .map(|l| Some(l.index) == last)
            .unwrap_or(false);
        if !voter || !caught_up {
            return false;
        }
        let now = heard_now();
        if self.handover.yielding_until.load(Ordering::Acquire) > now {
            return false;
        }
        tracing::info!(group = %self.group, to = format!("{preferred:#x}"), "handing leadership to the preferred replica");
        self.handover
            .yielding_until
            .store(now + HANDOVER_MS_MAX, Ordering::Release);
        self.stop_heartbeats();
        true
    }

    /// Hands leadership to the most caught-up voter before this replica
    /// stops (a broker's graceful shutdown): it stops taking writes (they
    /// are answered `NotLeader`, which clients retry; writes already
    /// proposed still commit), waits up to `wait` until a voter holds every
    /// entry, tells every voter which one it chose, and stops
    /// heartbeating, so the chosen one stands first when the followers'
    /// leases lapse. Returns whether another replica leads within `wait`.
    pub async fn step_down(&self, wait: std::time::Duration) -> bool {
        if !self.is_leader() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let now = heard_now();
        self.handover
            .yielding_until
            .store(now + wait.as_millis() as u64, Ordering::Release);
        let mut metrics = self.raft.metrics();
        // A successor: a voter holding every entry (the last ones are the
        // in-flight writes proposed before the yield).
        let chosen = loop {
            let m = metrics.borrow().clone();
            if m.current_leader != Some(self.id) {
                return m.current_leader.is_some();
            }
            let best = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != self.id)
                .filter_map(|v| {
                    let at = m.replication.as_ref()?.get(&v)?.as_ref()?.index;
                    Some((at, v))
                })
                .max();
            if let Some((at, v)) = best {
                if Some(at) == m.last_log_index {
                    break Some((v, m.current_term, m));
                }
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                break None;
            }
        };
        let Some((successor, term, m)) = chosen else {
            tracing::warn!(group = %self.group, "no voter caught up in time to hand leadership to");
            self.stop_yielding();
            return false;
        };
        let peers: Vec<(NodeId, BrokerNode)> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| {
                **id != self.id && m.membership_config.membership().voter_ids().any(|v| v == **id)
            })
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for (id, n) in peers {
            let t = self.transport.clone();
            let (group, addr) = (self.group, n.raft_addr.clone());
            // A peer that is gone must not hold the hand-over (or the
            // shutdown waiting on it) for a whole connect timeout.
            let ask_by = deadline.min(tokio::time::Instant::now() + SUCCESSOR_ASK_MAX);
            asks.spawn(async move {
                let r = tokio::time::timeout_at(ask_by, t.successor(&addr, group, successor, term)).await;
                (id, matches!(r, Ok(Ok(()))))
            });
        }
        let mut successor_told = false;
        while let Some(r) = asks.join_next().await {
            successor_told |= r.is_ok_and(|(id, ok)| id == successor && ok);
        }
        if !successor_told {
            tracing::warn!(group = %self.group, to = format!("{successor:#x}"), "the chosen successor could not be told");
            self.stop_yielding();
            return false;
        }
        tracing::info!(group = %self.group, to = format!("{successor:#x}"), term, "stepping down");
        self.stop_heartbeats();
        loop {
            let leader = metrics.borrow().current_leader;
            if leader.is_some_and(|l| l != self.id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                // Not elected in time: lead on until the process stops.
                self.stop_yielding();
                return false;
            }
        }
    }

    /// While this leader steps aside, a write waits (at most until the
    /// hand-over's deadline) to learn who leads next, so its client is sent
    /// straight there instead of retrying blind through the election.
    async fn next_leader(&self) -> WriteError {
        let until = self.handover.yielding_until.load(Ordering::Acquire);
        let mut metrics = self.raft.metrics();
        loop {
            let leader = {
                let m = metrics.borrow();
                m.current_leader.filter(|l| *l != self.id).map(|l| {
                    let node = m.membership_config.membership().get_node(&l).cloned();
                    (l, node)
                })
            };
            if let Some((l, node)) = leader {
                return WriteError::NotLeader {
                    group: self.group,
                    leader: node.map(|n| (l, n)),
                };
            }
            let left_ms = until.saturating_sub(heard_now());
            if left_ms == 0 || !self.yielding() {
                return WriteError::NotLeader {
                    group: self.group,
                    leader: None,
                };
            }
            let wait = std::time::Duration::from_millis(left_ms);
            if tokio::time::timeout(wait, metrics.changed()).await.is_err() {
                return WriteError::NotLeader {
                    group: self.group,
                    leader: None,
                };
            }
        }
    }

    /// Stops heartbeating so that the followers' leases lapse (a
    /// hand-over): a quiet group wakes first, or its broker's beats would
    /// keep the followers from standing.
    fn stop_heartbeats(&self) {
        self.handover.park.touch();
        let rc = self.raft.runtime_config();
        if self.handover.quiet.wake() {
            rc.tick(true);
        }
        rc.heartbeat(false);
    }

    fn stop_yielding(&self) {
        self.handover.yielding_until.store(0, Ordering::Release);
        self.raft.runtime_config().heartbeat(true);
    }

    fn yielding(&self) -> bool {
        self.handover.yielding_until.load(Ordering::Acquire) > heard_now()
    }

    /// The term this replica is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Confirms with a quorum that this replica leads, and waits until it
    /// has applied every entry committed before its term: only then does
    /// its applied state (producer windows, group leases) answer for the
    /// group. Returns the term it leads in.
    pub async fn ensure_leading(&self) -> Result<u64, WriteError> {
        use openraft::error::CheckIsLeaderError;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.term()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(WriteError::NotLeader {
                group: self.group,
                leader: f.leader_id.zip(f.leader_node),
            }),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(WriteError::NoQuorum {
                group: self.group,
                why: q.to_string(),
            }),
            Err(e) => Err(WriteError::Other(ReplicationError::Raft(e.to_string()))),
        }
    }

    /// Confirms that this replica still leads before a read is answered
    /// from its own state, at most one quorum round per read lease: a
    /// leader cut off from the others would otherwise answer reads from a
    /// state that a newly elected leader has already moved past (the fault
    /// suite's partitions showed a stale cache get). Followers refuse votes
    /// for `election_timeout_max` after they last heard a leader, so no
    /// other leader is elected until that long after a round that a quorum
    /// answered began; the lease is shorter (`election_timeout_min` less a
    /// heartbeat), which leaves room for the clocks' drift.
    pub async fn confirm_for_read(&self) -> Result<(), WriteError> {
        if self.yielding() {
            return Err(WriteError::NotLeader {
                group: self.group,
                leader: None,
            });
        }
        let fresh = || {
            let at = self.lease.confirmed_at.load(Ordering::Acquire);
            at != 0 && heard_now() < at + self.read_lease_ms
        };
        if fresh() {
            return Ok(());
        }
        let _one = self.lease.confirming.lock().await;
        if fresh() {
            return Ok(());
        }
        let began = heard_now();
        self.ensure_leading().await?;
        self.lease.confirmed_at.fetch_max(began, Ordering::AcqRel);
        Ok(())
    }

    /// Waits until this replica has applied every entry the group had
    /// acknowledged when the call began (a Raft read index, asked of the
    /// leader when this is a follower), at most `timeout`.
    pub async fn read_barrier(&self, timeout: std::time::Duration) -> Result<(), WriteError> {
        let index = match self.ensure_leading().await {
            Ok(_) => return Ok(()),
            Err(WriteError::NotLeader {
                leader: Some((_, node)),
                ..
            }) => tokio::time::timeout(timeout, self.transport.read_index(&node, self.group))
                .await
                .map_err(|_| WriteError::NoQuorum {
                    group: self.group,
                    why: "the leader did not answer a read index in time".into(),
                })??,
            Err(e) => return Err(e),
        };
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::NoQuorum {
                group: self.group,
                why: format!("applying through the leader's read index {index}: {e}"),
            })
    }

    /// Writes `batch` and returns once a quorum holds it and it is applied
    /// here: the quorum acknowledgement.
    pub async fn write(&self, batch: bytes::Bytes) -> Result<Response, WriteError> {
        self.submit(batch).await?.await
    }

    /// Hands `batch` to the group and returns, without waiting for the
    /// commit, a future of [`Replica::write`]'s answer. Entries are
    /// proposed in the order of `submit` calls that returned, so one task
    /// can keep several entries in flight and still keep their order.
    pub async fn submit(
        &self,
        batch: bytes::Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Response, WriteError>> + Send + 'static, WriteError>
    {
        if self.yielding() {
            return Err(self.next_leader().await);
        }
        // A parked quiet leader is looked at again: its beats must stop
        // naming the old last entry.
        self.handover.park.touch();
        let rx = self
            .raft
            .client_write_ff(Request(batch))
            .await
            .map_err(|e| WriteError::Other(ReplicationError::Raft(e.to_string())))?;
        let group = self.group;
        Ok(async move {
            match rx.await {
                Ok(Ok(r)) => Ok(r.data),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader {
                    group,
                    leader: f.leader_id.zip(f.leader_node),
                }),
                Ok(Err(e)) => Err(WriteError::Other(ReplicationError::Raft(e.to_string()))),
                Err(_) => Err(WriteError::Stopped { group }),
            }
        })
    }

    /// [`Replica::write`], forwarded to the leader when this is not it.
    pub async fn write_anywhere(&self, batch: bytes::Bytes) -> Result<Response, WriteError> {
        match self.write(batch.clone()).await {
            Err(WriteError::NotLeader {
                leader: Some((_, node)),
                ..
            }) => Ok(self.transport.forward(&node, self.group, &Request(batch)).await?),
            r => r,
        }
    }

    /// Lets purges delete entries below `index` (retention decided they
    /// may go), then asks for a snapshot covering them and the purge.
    pub async fn release_through(&self, index: RaftIndex) -> Result<(), ReplicationError> {
        self.purge_floor.fetch_max(index.0 + 1, Ordering::AcqRel);
        let covered = self
            .raft
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= index.0);
        let err = |e: openraft::error::Fatal<NodeId>| ReplicationError::Raft(e.to_string());
        if !covered {
            self.raft.trigger().snapshot().await.map_err(err)?;
            // Openraft drops a purge that no snapshot covers yet, so wait
            // for the build first.
            let mut m = self.raft.metrics();
            let wait = async move {
                m.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= index.0))
                    .await
                    .map(|_| ())
            };
            match tokio::time::timeout(SNAPSHOT_BUILD_WAIT_MAX, wait).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ReplicationError::Raft("the group shut down".into())),
                Err(_) => {
                    return Err(ReplicationError::Raft(format!(
                        "no snapshot covering entry {index} after {SNAPSHOT_BUILD_WAIT_MAX:?}"
                    )))
                }
            }
        }
        self.raft.trigger().purge_log(index.0).await.map_err(err)
    }

    /// Adds `node` as a learner (it catches up) and, with `promote`, makes
    /// it a voter once it has.
    pub async fn add_replica(
        &self,
        id: NodeId,
        node: BrokerNode,
        promote: bool,
    ) -> Result<(), ReplicationError> {
        self.handover.park.touch();
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| ReplicationError::Raft(e.to_string()))?;
        if promote {
            self.change_voters(|v| {
                v.insert(id);
            })
            .await?;
        }
        Ok(())
    }

    /// Removes `id` from the group's voters and learners.
    pub async fn remove_replica(&self, id: NodeId) -> Result<(), ReplicationError> {
        self.change_voters(|v| {
            v.remove(&id);
        })
        .await
    }

    /// Commits the current voters as `edit` changes them.
    async fn change_voters(
        &self,
        edit: impl FnOnce(&mut std::collections::BTreeSet<NodeId>),
    ) -> Result<(), ReplicationError> {
        self.handover.park.touch();
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        edit(&mut voters);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| ReplicationError::Raft(e.to_string()))?;
        Ok(())
    }

    pub async fn shutdown(&self, router: &Router) {
        router.remove(self.group);
        let _ = self.raft.shutdown().await;
    }
}
