//! Raft RPCs between brokers over QUIC: ALPN `felix-raft/4`, mutual TLS
//! (both sides present certificates from the cluster CA, each naming its
//! broker: `felix_client::transport::identity`), one connection per peer
//! shared by every group (`docs/format/raft-rpc.md`). Small RPCs travel
//! framed on a few long-lived streams per connection (`lanes`); a
//! snapshot, a large body, or any RPC to a peer without lanes takes one
//! bidirectional stream of its own:
//!
//! ```text
//! request:  kind u8 | group u64 LE | target u64 LE | from u64 LE | length u32 LE | bincode body   [| snapshot bytes to FIN]
//! response: status u8 (0 ok, 1 error) | length u32 LE | bincode body (or UTF-8 error)
//! on a lane, each is preceded by the RPC's id (u64 LE)
//! ```
//!
//! `from` is the sender's Raft node id. The receiver serves an RPC only
//! when the certificate its connection presented names `from`'s broker,
//! and only when what the body claims agrees with `from` (the leader of
//! an AppendEntries, the candidate of a vote, the node a join admits):
//! holding one broker's certificate does not let a process speak for
//! another.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use felix_client::transport::identity::{self, CertificateDer};
use felix_client::transport::{self, ClientTls, ServerTls, TransportConfig};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::Snapshot;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::heard_now;
use crate::elections::{Handover, Refusals};
use crate::error::ReplicationError;
use crate::frame::{head_bytes, Head, HEAD_BYTES};
use crate::lanes::{self, Lanes};
use crate::membership::{self, Admission};
use crate::quiesce::{self, Beat, BeatReply, BeatReplyV4, BeatV4, Following, Quiet};
use crate::throttle::{Bucket, CATCHUP_BYTES_PER_S_DEFAULT};
use crate::types::SnapshotFile;
use crate::types::{BrokerNode, GroupId, NodeId, Raft, Request, Response, SnapshotMeta, TypeConfig, Vote};

pub const RAFT_ALPN: &[u8] = b"felix-raft/4";
/// Snapshot bytes one transfer may carry.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;
pub use crate::frame::{RPC_BYTES_MAX, RPC_STREAMS_MAX};

const KIND_APPEND: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_FORWARD: u8 = 4;
const KIND_READ_INDEX: u8 = 5;
// Kind 6 (who) was retired with the brokers' metadata group: answered
// "unknown rpc kind".
const KIND_JOIN: u8 = 7;
const KIND_SUCCESSOR: u8 = 8;
const KIND_GROUPS: u8 = 9;
const KIND_BEAT: u8 = 10;
const KIND_BEAT_EPOCH: u8 = 11;
const KIND_PREVOTE: u8 = 12;
/// Opens a lane (`lanes`): a stream that carries many RPCs, each framed.
const KIND_LANE: u8 = 13;
/// Groups one [`Transport::groups`] call may ask about: bounds the answer
/// (about 60 bytes a group with 5 voters) well under `RPC_BYTES_MAX`.
pub const GROUPS_ASKED_MAX: usize = 4096;
/// Kinds addressed to one Raft identity: a broker refuses them when the
/// target is not its own node id (an old incarnation's peers must not reach
/// the new one).
const KINDS_TARGETED: [u8; 4] = [KIND_APPEND, KIND_VOTE, KIND_SNAPSHOT, KIND_PREVOTE];
/// `target` of the kinds not addressed to a Raft identity.
const TARGET_ANY: NodeId = 0;

/// A group this broker hosts: what incoming RPCs for it are handed to.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) raft: Raft,
    /// This replica's node id in the group.
    pub(crate) me: NodeId,
    /// Who the group's leader is handing over to, for the election loop.
    pub(crate) handover: Arc<Handover>,
    state_dir: PathBuf,
    /// When a leader's AppendEntries, or a beat naming the group quiet,
    /// last reached this replica ([`heard_now`] clock; 0: never).
    pub(crate) heard: Arc<AtomicU64>,
    /// When peers refused this replica's votes, for the election driver.
    pub(crate) votes: Refusals,
    /// The group's owner, which may write forwarded batches its own way.
    owner: Arc<dyn crate::machine::Applier>,
    /// The group's log, whose last entry a pre-vote compares.
    log: Arc<felix_log::SharedLog>,
    /// When it was started here ([`heard_now`] clock).
    pub(crate) started_at: u64,
    /// The applied mark the state machine has not saved yet.
    unsaved: Arc<crate::machine::UnsavedMark>,
}

impl Hosted {
    /// Quiets the group here: openraft's tick and heartbeats off (its
    /// election timer always is). Returns whether it was awake.
    pub(crate) fn quiesce(&self) -> bool {
        if !self.handover.quiet.quiet() {
            return false;
        }
        let rc = self.raft.runtime_config();
        rc.heartbeat(false);
        rc.tick(false);
        // Quiet, it may stay so for good: what it applied is saved now,
        // so a restart resumes from all of it and agrees with the beats.
        self.unsaved.save_later();
        true
    }

    /// Wakes the group here (openraft's election timer stays off: the
    /// driver decides elections). Returns whether it was quiet.
    pub(crate) fn wake(&self) -> bool {
        self.handover.park.touch();
        if !self.handover.quiet.wake() {
            return false;
        }
        let rc = self.raft.runtime_config();
        rc.tick(true);
        // A leader stepping aside keeps its heartbeats off.
        if self.handover.yielding_until.load(Ordering::Acquire) == 0 {
            rc.heartbeat(true);
        }
        true
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.handover.quiet.is_quiet()
    }

    /// The log's last entry (what a vote compares).
    pub(crate) fn last_log_id(&self) -> Option<crate::types::LogId> {
        self.log
            .with(|l| l.last_raft())
            .map(|(t, i)| crate::store::log_id(t, i))
    }
}

/// The groups hosted here, by id, and when each peer broker was last heard.
/// What a replica's metrics say of whom it follows.
pub(crate) fn following(raft: &Raft) -> Following {
    let m = raft.metrics();
    let m = m.borrow();
    Following {
        follower: m.state == openraft::ServerState::Follower,
        term: m.current_term,
        leader: m.current_leader,
        last_index: m.last_log_index,
        applied: m.last_applied.map(|l| l.index),
    }
}

#[derive(Clone, Default)]
pub struct Router {
    groups: Arc<RwLock<HashMap<GroupId, Arc<Hosted>>>>,
    /// Peer node id → when its last beat, or reply to ours, arrived
    /// ([`heard_now`] clock).
    seen: Arc<Mutex<HashMap<NodeId, u64>>>,
    /// Set once the broker's election driver runs.
    driving: Arc<OnceLock<()>>,
    /// The groups' fsyncs, bounded per broker.
    disk: crate::disk::DiskWaits,
    /// Changes with every group added or removed (the driver reads the
    /// groups again only then).
    generation: Arc<AtomicU64>,
    /// Parked groups touched since the driver's last pass.
    touched: Arc<crate::quiesce::Touched>,
    /// What each peer's beats said of the quiet groups it leads here.
    quiet_of: Arc<Mutex<HashMap<NodeId, PeerQuiet>>>,
}

/// What a peer's beats said of the quiet groups it leads on this broker.
#[derive(Debug, Default)]
pub(crate) struct PeerQuiet {
    /// The version of its list this broker holds (none: it asks for it).
    pub(crate) epoch: Option<u64>,
    pub(crate) named: HashMap<GroupId, Quiet>,
    /// When its last beat that this broker could follow arrived
    /// ([`heard_now`] clock).
    pub(crate) beat_at: u64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.groups.read().map(|g| g.len()).unwrap_or(0);
        f.debug_struct("Router").field("groups", &n).finish()
    }
}

impl Router {
    /// Whether `target` is a learner of `group` (hosted here): a replica
    /// still catching up, whose traffic is throttled.
    fn is_learner(&self, group: GroupId, target: NodeId) -> bool {
        let hosted = self.groups.read().expect("router lock");
        let Some(h) = hosted.get(&group) else {
            return false;
        };
        let m = h.raft.metrics();
        let m = m.borrow();
        let members = m.membership_config.membership();
        members.get_node(&target).is_some() && !members.voter_ids().any(|v| v == target)
    }

    /// Hosts `group`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &self,
        group: GroupId,
        raft: Raft,
        state_dir: PathBuf,
        handover: Arc<Handover>,
        votes: Refusals,
        owner: Arc<dyn crate::machine::Applier>,
        log: Arc<felix_log::SharedLog>,
        unsaved: Arc<crate::machine::UnsavedMark>,
    ) {
        let me = raft.metrics().borrow().id;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.groups.write().expect("router lock").insert(
            group,
            Arc::new(Hosted {
                raft,
                me,
                handover,
                state_dir,
                heard: Arc::new(AtomicU64::new(0)),
                votes,
                owner,
                log,
                started_at: heard_now(),
                unsaved,
            }),
        );
    }

    /// The slots every hosted group's fsyncs take.
    pub(crate) fn disk(&self) -> crate::disk::DiskWaits {
        self.disk.clone()
    }

    /// Runs `start` (which starts the broker's election driver) the first
    /// time it is called on this router.
    pub(crate) fn drive_once(&self, start: impl FnOnce()) {
        self.driving.get_or_init(start);
    }

    /// Every hosted group (the election driver's pass).
    pub(crate) fn hosted(&self) -> Vec<(GroupId, Arc<Hosted>)> {
        let g = self.groups.read().expect("router lock");
        g.iter().map(|(id, h)| (*id, h.clone())).collect()
    }

    /// Notes that `peer` was heard from now.
    pub(crate) fn saw(&self, peer: NodeId) {
        self.seen.lock().expect("seen lock").insert(peer, heard_now());
    }

    /// When each peer was last heard from.
    pub(crate) fn seen(&self) -> HashMap<NodeId, u64> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// A peer's beat (kind 11). Its list, when it carries one, is judged
    /// group by group ([`Router::judge`]); a beat without one whose epoch
    /// this broker holds only notes the time: the groups it named before
    /// are still quiet, and their followers parked here still hear it.
    fn beat_in(&self, beat: Beat) -> Result<BeatReply, String> {
        let named_len = beat.quiet.as_ref().map_or(0, Vec::len);
        if named_len > quiesce::BEAT_GROUPS_MAX || beat.wake.len() > crate::quiesce::WAKES_PER_BEAT_MAX {
            return Err(format!(
                "a beat naming {named_len} quiet groups and {} to wake; at most {} and {}",
                beat.wake.len(),
                quiesce::BEAT_GROUPS_MAX,
                crate::quiesce::WAKES_PER_BEAT_MAX
            ));
        }
        // The sender follows these here and cannot keep them quiet.
        for g in &beat.wake {
            if let Some(h) = self.get(*g) {
                h.wake();
            }
        }
        let now = heard_now();
        let mut reply = BeatReply::default();
        let mut peers = self.quiet_of.lock().expect("quiet_of lock");
        let p = peers.entry(beat.from).or_default();
        match beat.quiet {
            Some(list) => {
                let named = self.judge(beat.from, &list, now, &mut reply.wake);
                self.forget(p, named, now);
                p.epoch = Some(beat.epoch);
            }
            // Silent for a while, the sender may have lost or won
            // leaderships meanwhile that its list, unchanged by epoch, does
            // not show this broker's replicas: have it sent again.
            None if p.epoch == Some(beat.epoch)
                && now.saturating_sub(p.beat_at) <= quiesce::RESYNC_AFTER_SILENT_MS =>
            {
                p.beat_at = now
            }
            None => p.epoch = None,
        }
        reply.epoch = p.epoch;
        Ok(reply)
    }

    /// A version-4 peer's beat (kind 10): its whole list, every time.
    fn beat_in_v4(&self, beat: BeatV4) -> Result<BeatReplyV4, String> {
        if beat.quiet.len() > quiesce::BEAT_GROUPS_MAX {
            return Err(format!(
                "a beat naming {} groups; at most {}",
                beat.quiet.len(),
                quiesce::BEAT_GROUPS_MAX
            ));
        }
        let now = heard_now();
        let mut reply = BeatReplyV4::default();
        let mut peers = self.quiet_of.lock().expect("quiet_of lock");
        let p = peers.entry(beat.from).or_default();
        let named = self.judge(beat.from, &beat.quiet, now, &mut reply.wake);
        self.forget(p, named, now);
        p.epoch = None;
        Ok(reply)
    }

    /// Takes `named` as the sender's list: a group parked here that it no
    /// longer names is looked at again on the driver's next pass.
    fn forget(&self, p: &mut PeerQuiet, named: HashMap<GroupId, Quiet>, now: u64) {
        let hosted = self.groups.read().expect("router lock");
        for g in p.named.keys().filter(|g| !named.contains_key(g)) {
            if let Some(h) = hosted.get(g) {
                h.handover.park.touch();
            }
        }
        p.named = named;
        p.beat_at = now;
    }

    /// Counts each group of `list` (quiet, led by `from`) that this
    /// replica follows `from` in, as it stands, as a heartbeat, and quiets
    /// it here; adds the others to `wake`. Returns the list by group.
    fn judge(
        &self,
        from: NodeId,
        list: &[Quiet],
        now: u64,
        wake: &mut Vec<GroupId>,
    ) -> HashMap<GroupId, Quiet> {
        // The sender is not counted as heard here: only its answer to this
        // broker's own beat is (`driver::send_beats`). A broker whose
        // outgoing packets are lost still receives its peers' beats, and
        // counting those would let it think itself connected and stand,
        // again and again, raising a term that unseats the leaders on its
        // return (seen: writes stalled for 19 s after such a partition).
        let hosted = self.groups.read().expect("router lock");
        for q in list {
            let h = hosted.get(&q.group);
            let here = h.map(|h| following(&h.raft));
            match h {
                Some(h) if quiesce::agrees(q, from, here) => {
                    h.heard.store(now, Ordering::Release);
                    h.quiesce();
                }
                Some(h) => {
                    // The leader of a term not older than this replica's
                    // is alive: standing would only unseat it. Woken, its
                    // AppendEntries bring this replica up to date.
                    if here.is_some_and(|f| q.term >= f.term) {
                        h.heard.store(now, Ordering::Release);
                    }
                    wake.push(q.group)
                }
                // Not started here yet (a broker starting thousands of
                // groups): waking the leader now would only send RPCs that
                // fail; the next beat after the start asks.
                None => {}
            }
        }
        list.iter().map(|q| (q.group, *q)).collect()
    }

    /// When the last beat that names `group` quiet in a term not below
    /// `term` arrived from `leader`'s broker (any broker's, when the leader
    /// is not known: a restarted replica), as the driver counts it.
    fn named_at(&self, leader: Option<NodeId>, group: GroupId, term: u64) -> Option<u64> {
        let quiet_of = self.quiet_of.lock().expect("quiet_of lock");
        let named = |p: &PeerQuiet| p.named.get(&group).filter(|q| q.term >= term).map(|_| p.beat_at);
        match leader {
            Some(l) => quiet_of.get(&l).and_then(named),
            None => quiet_of.values().filter_map(named).max(),
        }
    }

    pub fn remove(&self, group: GroupId) {
        let gone = self.groups.write().expect("router lock").remove(&group);
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A mark the saver thread has not reached yet is saved now: the
        // group may be started again from this directory at once.
        if let Some(Err(e)) = gone.map(|h| h.unsaved.save()) {
            tracing::warn!(group = %group, error = %e, "could not save the applied mark");
        }
    }

    /// Saves every hosted group's applied mark that a save skipped: a
    /// stopping broker's groups then restart from all they applied (the
    /// saver thread may not have reached them). Returns how many failed.
    pub fn save_applied_marks(&self) -> usize {
        let hosted: Vec<Arc<Hosted>> = self
            .groups
            .read()
            .expect("router lock")
            .values()
            .cloned()
            .collect();
        hosted
            .iter()
            .filter(|h| match h.unsaved.save() {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(dir = %h.state_dir.display(), error = %e, "could not save the applied mark");
                    true
                }
            })
            .count()
    }

    /// Changes whenever a group is added or removed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How `group`'s replica here tells the driver it was touched.
    pub(crate) fn park(&self, group: GroupId) -> crate::quiesce::Park {
        crate::quiesce::Park::new(group, self.touched.clone())
    }

    /// The parked groups touched since the last call.
    pub(crate) fn take_touched(&self) -> HashSet<GroupId> {
        self.touched.take()
    }

    /// Runs `f` over what each peer's beats said (the driver's pass).
    pub(crate) fn with_quiet_of<R>(&self, f: impl FnOnce(&HashMap<NodeId, PeerQuiet>) -> R) -> R {
        f(&self.quiet_of.lock().expect("quiet_of lock"))
    }

    /// What this broker knows of each of `groups` it hosts (at most
    /// [`GROUPS_ASKED_MAX`] looked at).
    fn views(&self, groups: &[GroupId]) -> Vec<GroupView> {
        let hosted = self.groups.read().expect("router lock");
        groups
            .iter()
            .take(GROUPS_ASKED_MAX)
            .filter_map(|g| {
                let m = hosted.get(g)?.raft.metrics();
                let m = m.borrow();
                Some(GroupView {
                    group: *g,
                    leader: m.current_leader,
                    voters: m.membership_config.membership().voter_ids().collect(),
                })
            })
            .collect()
    }

    pub(crate) fn get(&self, group: GroupId) -> Option<Arc<Hosted>> {
        self.groups.read().expect("router lock").get(&group).cloned()
    }
}

/// This broker's replication endpoint: serves peers and connects to them.
pub struct Transport {
    /// This broker's Raft node id (every group it hosts uses it).
    me: NodeId,
    /// The name peers are dialled under: a broker of another region
    /// fails the handshake.
    region_name: String,
    endpoint: quinn::Endpoint,
    conns: Mutex<HashMap<String, Peer>>,
    /// Per peer address: one dial at a time, and when the last one failed.
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<u64>>>>>,
    connect_timeout: Duration,
    router: Router,
    closed: AtomicBool,
    traffic: TrafficCounters,
    /// Paces what this broker sends to learners (see `throttle`).
    catchup: Mutex<Bucket>,
    catchup_bytes: AtomicU64,
    catchup_held: AtomicU64,
    /// Whether connections accepted from now on may open lanes (kind 13);
    /// off, this broker answers as one from before lanes did.
    lanes_served: Arc<AtomicBool>,
}

/// Messages this broker has sent to keep groups alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Beats to peer brokers (one per peer per heartbeat interval).
    pub beats: u64,
    /// openraft heartbeats: AppendEntries without entries, one per group
    /// and follower, sent by groups that are awake.
    pub heartbeats: u64,
    /// RPCs sent on lanes (`lanes`), sharing long-lived streams.
    pub lane_rpcs: u64,
    /// Streams opened: one per lane, one per RPC that took its own.
    pub streams: u64,
}

#[derive(Debug, Default)]
struct TrafficCounters {
    beats: AtomicU64,
    heartbeats: AtomicU64,
    lane_rpcs: AtomicU64,
    streams: AtomicU64,
}

/// What this broker has sent to catching-up replicas, and how often the
/// catch-up rate held it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchupStats {
    pub bytes: u64,
    /// Sends that waited, or were refused, because the bytes before them
    /// were not paid for yet.
    pub held: u64,
}

/// Snapshot bytes read and paced at a time.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

/// A connection to a peer, and when a reply last came over it.
#[derive(Clone)]
struct Peer {
    conn: quinn::Connection,
    replied: Arc<AtomicU64>,
    cert: Arc<PeerCert>,
    lanes: Arc<Lanes>,
}

/// The certificate a peer connection presented, and the broker it was
/// last found to name: a connection's steady stream of RPCs parses it
/// once, not per RPC.
struct PeerCert {
    cert: Option<CertificateDer<'static>>,
    named: AtomicU64,
}

const NAMED_NONE: u64 = u64::MAX;

impl PeerCert {
    fn of(conn: &quinn::Connection) -> PeerCert {
        PeerCert {
            cert: identity::peer_certificates(conn).into_iter().next(),
            named: AtomicU64::new(NAMED_NONE),
        }
    }

    /// Whether the certificate names broker `broker`.
    fn names(&self, broker: u64) -> bool {
        if broker != NAMED_NONE && self.named.load(Ordering::Acquire) == broker {
            return true;
        }
        let ok = self
            .cert
            .as_ref()
            .is_some_and(|c| identity::names_broker(c, broker));
        if ok {
            self.named.store(broker, Ordering::Release);
        }
        ok
    }
}

/// A connection that has carried no reply for this long when an RPC on it
/// fails is dropped, so the next RPC connects afresh. A peer that was
/// killed and restarted on the same address never answers the old
/// connection (its new endpoint cannot even reset it), and waiting for the
/// idle timeout would keep a restarted replica out of its groups that long.
pub const SILENT_CONNECTION_MAX: Duration = Duration::from_millis(1000);
/// How long after a failed dial an RPC to the same address fails at once.
pub const REDIAL_AFTER_MS: u64 = 250;

/// Runs [`Transport::suspect`] when dropped armed.
struct SuspectOnDrop<'a> {
    transport: &'a Transport,
    addr: &'a str,
    armed: bool,
}

impl Drop for SuspectOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.transport.suspect(self.addr);
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local", &self.endpoint.local_addr().ok())
            .finish()
    }
}

fn terr(e: impl ToString) -> ReplicationError {
    ReplicationError::Transport(e.to_string())
}

impl Transport {
    /// Binds `listen` and serves RPCs for the groups in `router` as node
    /// `me` of region `region`: only brokers whose certificates name the
    /// same region complete a handshake, dialling or dialled.
    pub fn start(
        me: NodeId,
        region: &str,
        listen: SocketAddr,
        server: &ServerTls,
        client: &ClientTls,
        router: Router,
    ) -> Result<Arc<Transport>, ReplicationError> {
        if server.client_ca.is_none() || client.identity.is_none() {
            return Err(terr(
                "replication requires mutual TLS: a client CA and a certificate to present",
            ));
        }
        let broker = crate::types::broker_of(me);
        let presented = [
            server.chain.first(),
            client.identity.as_ref().and_then(|(c, _)| c.first()),
        ];
        for cert in presented {
            let Some(cert) = cert else {
                return Err(terr("the replication certificate file holds no certificate"));
            };
            if !identity::names_broker_in(cert, broker, region) {
                return Err(terr(format!(
                    "the replication certificate must name this broker in region {region:?}: DNS names {} (issue one per broker; `felix dev` does)",
                    identity::broker_names(broker, region).join(", ")
                )));
            }
        }
        let region_name = identity::region_name(region);
        let server = server.clone().with_client_name(region_name.clone());
        let cfg = TransportConfig {
            // Raft has its own heartbeats; keep connections through quiet groups.
            idle_timeout_ms: 10_000,
            keep_alive_ms: Some(2_000),
            // Every group's RPCs to a peer share its one connection: an
            // election in a thousand groups at once must not wait for
            // stream credit past its RPCs' timeouts. Serving is bounded
            // by the same number.
            bidi_streams_max: RPC_STREAMS_MAX as u32,
            ..TransportConfig::default()
        };
        let mut endpoint = transport::server_endpoint(listen, &server, RAFT_ALPN, &cfg).map_err(terr)?;
        endpoint.set_default_client_config(transport::client_config(client, RAFT_ALPN, &cfg).map_err(terr)?);
        let t = Arc::new(Transport {
            me,
            region_name,
            endpoint: endpoint.clone(),
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(2),
            router: router.clone(),
            catchup: Mutex::new(Bucket::new(CATCHUP_BYTES_PER_S_DEFAULT, heard_now())),
            catchup_bytes: AtomicU64::new(0),
            catchup_held: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            traffic: TrafficCounters::default(),
            lanes_served: Arc::new(AtomicBool::new(true)),
        });
        tokio::spawn(accept_loop(endpoint, router, me, t.lanes_served.clone()));
        Ok(t)
    }

    /// This broker's Raft node id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Sets the rate at which this broker sends catch-up traffic (clamped
    /// to `throttle`'s bounds).
    pub fn set_catchup_bytes_per_s(&self, rate: u64) {
        *self.catchup.lock().expect("catchup lock") = Bucket::new(rate, heard_now());
    }

    pub fn catchup_stats(&self) -> CatchupStats {
        CatchupStats {
            bytes: self.catchup_bytes.load(Ordering::Relaxed),
            held: self.catchup_held.load(Ordering::Relaxed),
        }
    }

    /// Sends `bytes` of catch-up traffic once what went before is paid
    /// for: waits for that, unless it would take longer than `wait_max`
    /// (then nothing is charged, and `Err` says how long it is owed).
    async fn pace(&self, bytes: usize, wait_max: Duration) -> Result<(), u64> {
        let owed_ms = {
            let mut b = self.catchup.lock().expect("catchup lock");
            let owed_ms = b.debt_ms(heard_now());
            if owed_ms > wait_max.as_millis() as u64 {
                self.catchup_held.fetch_add(1, Ordering::Relaxed);
                return Err(owed_ms);
            }
            b.charge(bytes as u64);
            owed_ms
        };
        self.catchup_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if owed_ms > 0 {
            self.catchup_held.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(owed_ms)).await;
        }
        Ok(())
    }

    /// Sets whether connections accepted from now on may open lanes: off,
    /// this broker refuses them as a broker from before lanes does (what
    /// the test of that fallback needs).
    pub fn serve_lanes(&self, on: bool) {
        self.lanes_served.store(on, Ordering::Release);
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ReplicationError> {
        self.endpoint.local_addr().map_err(terr)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            beats: self.traffic.beats.load(Ordering::Relaxed),
            heartbeats: self.traffic.heartbeats.load(Ordering::Relaxed),
            lane_rpcs: self.traffic.lane_rpcs.load(Ordering::Relaxed),
            streams: self.traffic.streams.load(Ordering::Relaxed),
        }
    }

    /// Sends `beat` to the broker at `addr`; returns the groups it asks to
    /// have woken.
    pub(crate) async fn beat(&self, addr: &str, beat: &Beat) -> Result<BeatReply, ReplicationError> {
        self.traffic.beats.fetch_add(1, Ordering::Relaxed);
        let body = bincode::serialize(beat).map_err(terr)?;
        self.ask(
            addr,
            KIND_BEAT_EPOCH,
            GroupId::NONE,
            &body,
            ReplicationError::Transport,
        )
        .await
    }

    /// [`Transport::beat`] to a version-4 peer, which knows only kind 10.
    pub(crate) async fn beat_v4(&self, addr: &str, beat: &BeatV4) -> Result<BeatReplyV4, ReplicationError> {
        self.traffic.beats.fetch_add(1, Ordering::Relaxed);
        let body = bincode::serialize(beat).map_err(terr)?;
        self.ask(addr, KIND_BEAT, GroupId::NONE, &body, ReplicationError::Transport)
            .await
    }

    fn live(&self, addr: &str) -> Option<Peer> {
        let conns = self.conns.lock().expect("conns lock");
        conns
            .get(addr)
            .filter(|p| p.conn.close_reason().is_none())
            .cloned()
    }

    /// The connection to `addr`, dialled if there is none. One dial per
    /// address at a time, and none for [`REDIAL_AFTER_MS`] after one
    /// failed: every group's RPCs to a dead broker would otherwise each
    /// start a handshake (seen: hundreds a second, the CPU they took
    /// stalling the elections that replace the dead broker's leaders).
    async fn connection(&self, addr: &str) -> Result<Peer, ReplicationError> {
        if let Some(p) = self.live(addr) {
            return Ok(p);
        }
        let dial = self
            .dialing
            .lock()
            .expect("dialing lock")
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut failed_at = dial.lock().await;
        if let Some(p) = self.live(addr) {
            return Ok(p);
        }
        if let Some(at) = *failed_at {
            let ago = heard_now().saturating_sub(at);
            if ago < REDIAL_AFTER_MS {
                return Err(terr(format!("{addr} could not be reached {ago} ms ago")));
            }
        }
        let r = self.dial(addr).await;
        *failed_at = r.is_err().then(heard_now);
        r
    }

    async fn dial(&self, addr: &str) -> Result<Peer, ReplicationError> {
        let sa: SocketAddr = addr
            .parse()
            .map_err(|e| terr(format!("peer address {addr}: {e}")))?;
        // Any broker of the region answers under the region's name; which
        // one it is matters per RPC (`call_once`).
        let connecting = self.endpoint.connect(sa, &self.region_name).map_err(terr)?;
        let c = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| terr(format!("connecting to {addr} timed out")))?
            .map_err(terr)?;
        let replied = Arc::new(AtomicU64::new(heard_now()));
        let p = Peer {
            cert: Arc::new(PeerCert::of(&c)),
            lanes: Arc::new(Lanes::new(c.clone(), replied.clone(), self.connect_timeout)),
            conn: c,
            replied,
        };
        self.conns
            .lock()
            .expect("conns lock")
            .insert(addr.to_owned(), p.clone());
        Ok(p)
    }

    /// After a failed RPC to `addr`: drops the connection if nothing has
    /// come back over it for [`SILENT_CONNECTION_MAX`].
    fn suspect(&self, addr: &str) {
        let mut conns = self.conns.lock().expect("conns lock");
        let silent = conns.get(addr).is_some_and(|p| {
            heard_now().saturating_sub(p.replied.load(Ordering::Acquire))
                > SILENT_CONNECTION_MAX.as_millis() as u64
        });
        if silent {
            if let Some(p) = conns.remove(addr) {
                p.conn.close(0u32.into(), b"silent");
                tracing::debug!(peer = addr, "dropped a silent replication connection");
            }
        }
    }

    /// One RPC: returns the peer's reply body, or its error text.
    async fn call(
        &self,
        addr: &str,
        kind: u8,
        group: GroupId,
        target: NodeId,
        body: &[u8],
        tail: Option<(&std::path::Path, bool)>,
    ) -> Result<Result<Vec<u8>, String>, ReplicationError> {
        // Armed until the call has an answer: a call dropped mid-way (an
        // outer timeout, openraft's own among them, usually fires first)
        // is a failure too, and a silent connection must still be let go.
        let mut failed = SuspectOnDrop {
            transport: self,
            addr,
            armed: true,
        };
        let r = self.call_once(addr, kind, group, target, body, tail).await;
        failed.armed = r.is_err();
        r
    }

    async fn call_once(
        &self,
        addr: &str,
        kind: u8,
        group: GroupId,
        target: NodeId,
        body: &[u8],
        tail: Option<(&std::path::Path, bool)>,
    ) -> Result<Result<Vec<u8>, String>, ReplicationError> {
        let peer = self.connection(addr).await?;
        if target != TARGET_ANY && !peer.cert.names(crate::types::broker_of(target)) {
            return Err(terr(format!(
                "the broker at {addr} presented a certificate that does not name broker {}, the RPC's addressee",
                crate::types::broker_of(target)
            )));
        }
        let head = head_bytes(kind, group, target, self.me, body.len());
        if tail.is_none() {
            let lane_head = head_bytes(KIND_LANE, GroupId::NONE, TARGET_ANY, self.me, 0);
            let on_lane = peer
                .lanes
                .call(&lane_head, &head, body, &self.traffic.streams)
                .await;
            if let Some(r) = on_lane {
                self.traffic.lane_rpcs.fetch_add(1, Ordering::Relaxed);
                return r;
            }
        }
        self.traffic.streams.fetch_add(1, Ordering::Relaxed);
        let (mut send, mut recv) = peer.conn.open_bi().await.map_err(terr)?;
        let mut head = head.to_vec();
        head.extend_from_slice(body);
        send.write_all(&head).await.map_err(terr)?;
        if let Some((path, paced)) = tail {
            let mut f = tokio::fs::File::open(path).await.map_err(terr)?;
            if paced {
                let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                loop {
                    let n = tokio::io::AsyncReadExt::read(&mut f, &mut chunk)
                        .await
                        .map_err(terr)?;
                    if n == 0 {
                        break;
                    }
                    // A snapshot has no deadline: it waits as long as it owes.
                    let _ = self.pace(n, Duration::MAX).await;
                    send.write_all(&chunk[..n]).await.map_err(terr)?;
                }
            } else {
                tokio::io::copy(&mut f, &mut send).await.map_err(terr)?;
            }
        }
        send.finish().map_err(terr)?;
        let mut h = [0u8; 5];
        recv.read_exact(&mut h).await.map_err(terr)?;
        let len = u32::from_le_bytes(h[1..5].try_into().expect("4 bytes")) as usize;
        if len > RPC_BYTES_MAX {
            return Err(terr(format!("reply of {len} bytes")));
        }
        let mut b = vec![0u8; len];
        recv.read_exact(&mut b).await.map_err(terr)?;
        peer.replied.store(heard_now(), Ordering::Release);
        Ok(match h[0] {
            0 => Ok(b),
            _ => Err(String::from_utf8_lossy(&b).into_owned()),
        })
    }

    /// An RPC not addressed to a Raft identity, its reply decoded; the
    /// peer's error text becomes `remote(text)`.
    async fn ask<T: DeserializeOwned>(
        &self,
        addr: &str,
        kind: u8,
        group: GroupId,
        body: &[u8],
        remote: fn(String) -> ReplicationError,
    ) -> Result<T, ReplicationError> {
        match self.call(addr, kind, group, TARGET_ANY, body, None).await? {
            Ok(b) => bincode::deserialize(&b).map_err(terr),
            Err(e) => Err(remote(e)),
        }
    }

    /// Asks `leader` to write `req` to `group` (a follower forwarding a
    /// write it may not make itself).
    pub async fn forward(
        &self,
        leader: &BrokerNode,
        group: GroupId,
        req: &Request,
    ) -> Result<Response, ReplicationError> {
        let body = bincode::serialize(req).map_err(terr)?;
        self.ask(
            &leader.raft_addr,
            KIND_FORWARD,
            group,
            &body,
            ReplicationError::Raft,
        )
        .await
    }

    /// Asks `leader` for its read index in `group`: the last entry it had
    /// committed when a quorum last confirmed it leads. A follower that
    /// has applied through it has seen every write acknowledged before
    /// the call.
    pub async fn read_index(&self, leader: &BrokerNode, group: GroupId) -> Result<u64, ReplicationError> {
        self.ask(
            &leader.raft_addr,
            KIND_READ_INDEX,
            group,
            &[],
            ReplicationError::Raft,
        )
        .await
    }

    /// Asks `target` (at `addr`) whether it would vote for this replica
    /// of `group` (see `prevote`).
    pub(crate) async fn prevote(
        &self,
        addr: &str,
        group: GroupId,
        target: NodeId,
        ask: &crate::prevote::PreVote,
    ) -> Result<bool, ReplicationError> {
        let body = bincode::serialize(ask).map_err(terr)?;
        match self.call(addr, KIND_PREVOTE, group, target, &body, None).await? {
            Ok(b) => bincode::deserialize(&b).map_err(terr),
            Err(e) => Err(ReplicationError::Transport(e)),
        }
    }

    /// Tells the replica at `addr` that the leader of `group` in `term` is
    /// handing leadership to `successor` (see `Replica::step_down`).
    pub async fn successor(
        &self,
        addr: &str,
        group: GroupId,
        successor: NodeId,
        term: u64,
    ) -> Result<(), ReplicationError> {
        let body = bincode::serialize(&(successor, term)).map_err(terr)?;
        self.ask(addr, KIND_SUCCESSOR, group, &body, ReplicationError::Raft)
            .await
    }

    /// Asks the broker at `addr` what it knows of `groups` (at most
    /// [`GROUPS_ASKED_MAX`]): the leader and voters of each it hosts. How a
    /// broker that holds no replica of a shard learns who leads it.
    pub async fn groups(&self, addr: &str, groups: &[GroupId]) -> Result<Vec<GroupView>, ReplicationError> {
        if groups.len() > GROUPS_ASKED_MAX {
            return Err(ReplicationError::Transport(format!(
                "{} groups asked at once; at most {GROUPS_ASKED_MAX}",
                groups.len()
            )));
        }
        let body = bincode::serialize(groups).map_err(terr)?;
        self.ask(
            addr,
            KIND_GROUPS,
            GroupId::NONE,
            &body,
            ReplicationError::Transport,
        )
        .await
    }

    /// Asks the broker at `addr` to admit node `id` at `node` into `group`
    /// (see `Replica::admit`).
    pub async fn join(
        &self,
        addr: &str,
        group: GroupId,
        id: NodeId,
        node: &BrokerNode,
    ) -> Result<Admission, ReplicationError> {
        let body = bincode::serialize(&(id, node)).map_err(terr)?;
        self.ask(addr, KIND_JOIN, group, &body, ReplicationError::Transport)
            .await
    }
}

/// One group as a broker hosting it sees it ([`Transport::groups`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupView {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
}

/// What one peer connection's RPCs share on the serving side.
struct Served {
    router: Router,
    me: NodeId,
    cert: Arc<PeerCert>,
    /// RPCs served at once over the connection, on streams and lanes.
    limit: Arc<tokio::sync::Semaphore>,
    lanes: bool,
}

async fn accept_loop(endpoint: quinn::Endpoint, router: Router, me: NodeId, lanes_served: Arc<AtomicBool>) {
    while let Some(incoming) = endpoint.accept().await {
        let router = router.clone();
        let lanes = lanes_served.load(Ordering::Acquire);
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "replication handshake failed");
                    return;
                }
            };
            let served = Arc::new(Served {
                router,
                me,
                cert: Arc::new(PeerCert::of(&conn)),
                limit: Arc::new(tokio::sync::Semaphore::new(RPC_STREAMS_MAX)),
                lanes,
            });
            // QUIC's stream credit (`RPC_STREAMS_MAX`) bounds the streams,
            // and so these tasks; each takes a permit once its head shows
            // it is an RPC rather than a lane.
            while let Ok((send, recv)) = conn.accept_bi().await {
                let served = served.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(&served, send, recv).await {
                        tracing::debug!(error = %e, "replication rpc failed");
                    }
                });
            }
        });
    }
}

fn de<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| format!("malformed rpc body: {e}"))
}

fn ser<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// Whether a body's claim of who sent it (`claimed`, when it names a
/// node) agrees with the head's `from`.
fn claims(from: NodeId, claimed: Option<NodeId>, what: &str) -> Result<(), String> {
    match claimed {
        Some(c) if c != from => Err(format!(
            "the {what} names node {c:#x}, but the sender is node {from:#x}"
        )),
        _ => Ok(()),
    }
}

/// Whether this broker serves an RPC of `head` at all: the sender's
/// certificate, the body's size, and the addressee.
fn admit(served: &Served, head: &Head) -> Result<(), String> {
    let sender = crate::types::broker_of(head.from);
    if !served.cert.names(sender) {
        return Err(format!(
            "refused: the sender claims broker {sender}, but its certificate does not name {}",
            identity::broker_name(sender)
        ));
    }
    if head.len > RPC_BYTES_MAX {
        return Err(format!(
            "request body of {} bytes exceeds {RPC_BYTES_MAX}",
            head.len
        ));
    }
    if KINDS_TARGETED.contains(&head.kind) && head.target != served.me {
        return Err(format!(
            "addressed to node {:#x}, but this is node {:#x} (a broker rebuilt from an empty disk answers under a new identity)",
            head.target, served.me
        ));
    }
    Ok(())
}

/// One stream: an RPC of its own, or a lane.
async fn serve(
    served: &Arc<Served>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), ReplicationError> {
    let mut h = [0u8; HEAD_BYTES];
    recv.read_exact(&mut h).await.map_err(terr)?;
    let head = Head::parse(&h);
    if let Err(e) = admit(served, &head) {
        return reply(&mut send, Err(e)).await;
    }
    if head.kind == KIND_LANE && served.lanes {
        if head.len != 0 {
            return reply(&mut send, Err("a lane request carries no body".into())).await;
        }
        // The lane's RPCs take permits of their own.
        return serve_lane(served, send, recv).await;
    }
    let Ok(permit) = served.limit.clone().acquire_owned().await else {
        return Ok(());
    };
    if head.kind == KIND_SNAPSHOT {
        let out = snapshot_in(served, &head, &mut recv).await;
        return reply(&mut send, out).await;
    }
    let mut body = vec![0u8; head.len];
    recv.read_exact(&mut body).await.map_err(terr)?;
    let out = handle(served, &head, body).await;
    let r = reply(&mut send, out).await;
    drop(permit);
    r
}

/// A lane: serves each framed RPC as it comes, replies in any order, until
/// the peer finishes the stream or it fails.
async fn serve_lane(
    served: &Arc<Served>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), ReplicationError> {
    send.write_all(&[0, 0, 0, 0, 0]).await.map_err(terr)?;
    // Handlers write their replies themselves, one at a time, in the order
    // they finish; the stream ends when the last of them is done.
    let send = Arc::new(tokio::sync::Mutex::new(send));
    loop {
        let Some(framed) = lanes::read_request(&mut recv).await? else {
            return Ok(());
        };
        let head = Head::parse(&framed.head);
        let Ok(permit) = served.limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let (served, send) = (served.clone(), send.clone());
        tokio::spawn(async move {
            let out = match admit(&served, &head) {
                Err(e) => Err(e),
                Ok(()) if head.kind == KIND_SNAPSHOT || head.kind == KIND_LANE => {
                    Err(format!("rpc kind {} takes a stream of its own", head.kind))
                }
                Ok(()) => handle(&served, &head, framed.body).await,
            };
            let frame = lanes::reply_frame(framed.id, out);
            let _ = send.lock().await.write_all(&frame).await;
            // Held until the reply is out: a peer that stops reading its
            // replies runs out of permits, and this lane stops reading its
            // requests, instead of replies piling up here.
            drop(permit);
        });
    }
}

/// Receives a full snapshot: the body, then the file's bytes until FIN.
async fn snapshot_in(served: &Served, head: &Head, recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut body = vec![0u8; head.len];
    recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let Some(hosted) = served.router.get(head.group) else {
        return Err(format!("group {} is not hosted here", head.group));
    };
    let (vote, meta) = de::<(Vote, SnapshotMeta)>(&body)
        .and_then(|r| claims(head.from, r.0.leader_id().voted_for(), "snapshot's leader").map(|()| r))?;
    hosted.wake();
    let path = hosted
        .state_dir
        .join(format!("incoming-{}.snap", felix_log::now_ms()));
    let received: Result<(), std::io::Error> = async {
        let mut f = tokio::fs::File::create(&path).await?;
        let mut limited = tokio::io::AsyncReadExt::take(recv, SNAPSHOT_BYTES_MAX);
        tokio::io::copy(&mut limited, &mut f).await?;
        f.sync_all().await
    }
    .await;
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(format!("receiving the snapshot: {e}"));
    }
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(SnapshotFile { path: path.clone() }),
    };
    let r = hosted.raft.clone().install_full_snapshot(vote, snapshot).await;
    let _ = tokio::fs::remove_file(&path).await;
    ser(&r)
}

/// Serves one RPC (not a snapshot) whose head `admit` let through.
async fn handle(served: &Served, head: &Head, body: Vec<u8>) -> Result<Vec<u8>, String> {
    let (router, from, group, kind) = (&served.router, head.from, head.group, head.kind);
    let sender = crate::types::broker_of(from);
    if kind == KIND_BEAT_EPOCH {
        return de::<Beat>(&body)
            .and_then(|b| claims(from, Some(b.from), "beat").map(|()| b))
            .and_then(|b| ser(&router.beat_in(b)?));
    }
    if kind == KIND_BEAT {
        return de::<BeatV4>(&body)
            .and_then(|b| claims(from, Some(b.from), "beat").map(|()| b))
            .and_then(|b| ser(&router.beat_in_v4(b)?));
    }
    if kind == KIND_GROUPS {
        return de::<Vec<GroupId>>(&body).and_then(|g| ser(&router.views(&g)));
    }
    let Some(hosted) = router.get(group) else {
        return Err(format!("group {group} is not hosted here"));
    };
    let raft = hosted.raft.clone();
    match kind {
        KIND_APPEND => match de::<AppendEntriesRequest<TypeConfig>>(&body)
            .and_then(|r| claims(from, r.vote.leader_id().voted_for(), "AppendEntries' leader").map(|()| r))
        {
            Ok(req) => {
                // The leader is awake (it writes, or heartbeats): so is this.
                hosted.wake();
                let r = raft.append_entries(req).await;
                // Only a leader this replica still follows refreshes it.
                if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    hosted.heard.store(heard_now(), Ordering::Release);
                }
                ser(&r)
            }
            Err(e) => Err(e),
        },
        KIND_VOTE => match de::<VoteRequest<NodeId>>(&body)
            .and_then(|r| claims(from, r.vote.leader_id().voted_for(), "vote's candidate").map(|()| r))
        {
            Ok(req) => {
                hosted.wake();
                ser(&raft.vote(req).await)
            }
            Err(e) => Err(e),
        },
        KIND_PREVOTE => match de::<crate::prevote::PreVote>(&body) {
            // Asked, not told: the group stays as it is (quiet ones too).
            Ok(ask) => {
                let (leads, leader, term) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    (
                        m.state == openraft::ServerState::Leader,
                        m.current_leader,
                        m.current_term,
                    )
                };
                let now = heard_now();
                // A replica back from a restart cannot know yet whether its
                // leader lives: its start counts as heard.
                let mut heard = hosted.heard.load(Ordering::Acquire).max(hosted.started_at);
                // A quiet group's leader is heard through its broker's
                // beats, which name the group.
                if let Some(at) = router.named_at(leader, group, term) {
                    heard = heard.max(at);
                }
                let here = crate::prevote::Here {
                    leads,
                    yielding: hosted.handover.yielding_until.load(Ordering::Acquire) > now,
                    heard,
                    last_log: hosted.last_log_id(),
                };
                ser(&crate::prevote::grants(
                    &here,
                    &ask,
                    now,
                    raft.config().election_timeout_max,
                ))
            }
            Err(e) => Err(e),
        },
        KIND_FORWARD => match de::<Request>(&body) {
            Ok(req) => match hosted.owner.clone().forwarded(req.0.clone()) {
                Some(write) => write.await.and_then(|r| ser(&r)),
                None => match raft.client_write(req).await {
                    Ok(r) => ser(&r.data),
                    Err(e) => Err(e.to_string()),
                },
            },
            Err(e) => Err(e),
        },
        KIND_READ_INDEX => match raft.ensure_linearizable().await {
            Ok(at) => ser(&at.map_or(0, |l| l.index)),
            Err(e) => Err(e.to_string()),
        },
        KIND_JOIN => match de::<(NodeId, BrokerNode)>(&body) {
            // A broker joins groups as itself only.
            Ok((id, _)) if crate::types::broker_of(id) != sender => Err(format!(
                "refused: broker {sender} asked to admit node {id:#x}, of broker {}",
                crate::types::broker_of(id)
            )),
            Ok((id, node)) => {
                hosted.handover.park.touch();
                match membership::admit(&raft, group, id, node).await {
                    Ok(a) => ser(&a),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e),
        },
        KIND_SUCCESSOR => match de::<(NodeId, u64)>(&body) {
            // Only from the leader of this replica's term: a late message
            // from an earlier term must not steer a later election.
            // ... and only from that leader.
            Ok((_, _)) if raft.metrics().borrow().current_leader != Some(from) => Err(format!(
                "a hand-over from node {from:#x}, which does not lead this group here"
            )),
            Ok((successor, term)) if term == raft.metrics().borrow().current_term => {
                hosted.handover.expect_successor(successor);
                ser(&())
            }
            Ok((_, term)) => Err(format!(
                "a hand-over of term {term}, but this replica is in term {}",
                raft.metrics().borrow().current_term
            )),
            Err(e) => Err(e),
        },
        k => Err(format!("unknown rpc kind {k}")),
    }
}

async fn reply(send: &mut quinn::SendStream, out: Result<Vec<u8>, String>) -> Result<(), ReplicationError> {
    let (status, body) = match out {
        Ok(b) => (0u8, b),
        Err(e) => (1u8, e.into_bytes()),
    };
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(status);
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&body);
    send.write_all(&b).await.map_err(terr)?;
    send.finish().map_err(terr)?;
    Ok(())
}

/// Hands openraft a client for each peer of one group.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    pub transport: Arc<Transport>,
    pub group: GroupId,
    /// When a peer last refused this replica's vote because its own log is
    /// longer ([`heard_now`] clock; 0: never).
    pub outvoted: Arc<AtomicU64>,
    /// When a peer whose log is shorter last refused this replica's vote
    /// (it had voted for itself, and cannot win).
    pub outran: Arc<AtomicU64>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.raft_addr.clone(),
            outvoted: self.outvoted.clone(),
            outran: self.outran.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PeerClient {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
    addr: String,
    outvoted: Arc<AtomicU64>,
    outran: Arc<AtomicU64>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BrokerNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
        paced: bool,
    ) -> Result<Resp, RpcErr<E>> {
        let body = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The wait must leave the RPC most of its deadline.
        if paced {
            if let Err(owed_ms) = self.transport.pace(body.len(), option.hard_ttl() / 2).await {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &ReplicationError::Transport(format!("catch-up throttled for {owed_ms} ms")),
                )));
            }
        }
        let call = self
            .transport
            .call(&self.addr, kind, self.group, self.target, &body, None);
        let r = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                self.transport.suspect(&self.addr);
                return Err(RPCError::Unreachable(Unreachable::new(
                    &ReplicationError::Transport(format!("rpc to {} timed out", self.addr)),
                )));
            }
            Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(Err(remote))) => {
                // The peer could not serve it (e.g. it does not host the
                // group yet): retried after a backoff like an unreachable peer.
                return Err(RPCError::Unreachable(Unreachable::new(
                    &ReplicationError::Transport(remote),
                )));
            }
            Ok(Ok(Ok(b))) => b,
        };
        let r: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&r).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // Heartbeats (no entries) to a learner are not catch-up traffic.
        if rpc.entries.is_empty() {
            self.transport.traffic.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        let paced = !rpc.entries.is_empty() && self.transport.router.is_learner(self.group, self.target);
        self.rpc(KIND_APPEND, &rpc, &option, paced).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let resp: VoteResponse<NodeId> = self.rpc(KIND_VOTE, &rpc, &option, false).await?;
        if !resp.vote_granted && resp.last_log_id > rpc.last_log_id {
            self.outvoted.store(heard_now(), Ordering::Release);
        } else if !resp.vote_granted && resp.last_log_id < rpc.last_log_id {
            self.outran.store(heard_now(), Ordering::Release);
        }
        Ok(resp)
    }

    #[allow(deprecated)]
    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<openraft::raft::InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        Err(RPCError::Network(NetworkError::new(
            &ReplicationError::Transport(
                "chunked snapshots are not used; full_snapshot streams the file".into(),
            ),
        )))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let body = bincode::serialize(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let path = snapshot.snapshot.path.clone();
        let paced = self.transport.router.is_learner(self.group, self.target);
        let call = self.transport.call(
            &self.addr,
            KIND_SNAPSHOT,
            self.group,
            self.target,
            &body,
            Some((&path, paced)),
        );
        let r = tokio::select! {
            closed = cancel => {
                remove_sent(&path);
                return Err(StreamingError::Closed(closed));
            }
            r = call => r,
        };
        remove_sent(&path);
        let b = match r {
            Err(e) => return Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Ok(Err(remote)) => {
                return Err(StreamingError::Unreachable(Unreachable::new(
                    &ReplicationError::Transport(remote),
                )))
            }
            Ok(Ok(b)) => b,
        };
        let r: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            bincode::deserialize(&b).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        r.map_err(|f| StreamingError::Network(NetworkError::new(&f)))
    }
}

/// Removes the link a snapshot was sent from (see `machine`).
fn remove_sent(path: &std::path::Path) {
    let sent = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(crate::snapshot::SENDING_PREFIX));
    if sent {
        let _ = std::fs::remove_file(path);
    }
}
