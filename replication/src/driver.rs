//! The broker's one timer for every group it hosts: each heartbeat
//! interval, one pass steps the awake groups' [`Candidacy`] (who stands for
//! election), quiets the groups it leads that are idle and wakes those
//! that are not ([`quiesce`]), and sends each peer broker one beat about
//! the quiet groups it leads there.
//!
//! A quiet group is parked: the pass goes by it until something touches it
//! (`Park::touch`: a write, an RPC, a membership change), its leader's
//! broker stops beating, its leader's list stops naming it, or the sweep
//! comes round (one pass in [`SWEEP_PASSES`] looks at each). An idle broker
//! then does no work per group at all but for the sweep: no task, timer,
//! heartbeat or look per group (openraft's tick task sleeps too:
//! `runtime`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;

use crate::clock::{heard_now, rand_below};
use crate::config::GroupConfig;
use crate::elections::{Candidacy, Turn};
use crate::network::{Hosted, PeerQuiet, Router, Transport};
use crate::quiesce::{
    self, Beat, BeatV4, Following, Idle, Quiet, Settled, BEAT_GROUPS_MAX, SWEEP_PASSES, WAKES_PER_BEAT_MAX,
};
use crate::types::{GroupId, NodeId};

/// Why the pass goes by a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parked {
    /// Quiet, led here: named in the beats to its followers.
    Leader,
    /// Quiet, following this node, whose beats name it.
    Follower(NodeId),
}

/// The driver's memory of one group.
struct Driven {
    hosted: Arc<Hosted>,
    candidacy: Candidacy,
    idle: Idle,
    /// This replica quieted the group as its leader.
    quiet_as_leader: bool,
    /// The membership the two lists below were read from (its log id):
    /// read again only when it changes, not on every pass.
    members_at: Option<Option<openraft::LogId<NodeId>>>,
    voters: Vec<NodeId>,
    /// Its voter sets: one, or two during a joint change (a quorum needs a
    /// majority of each).
    configs: Vec<Vec<NodeId>>,
    /// The other voters and their replication addresses.
    peers: Vec<(NodeId, String)>,
    parked: Option<Parked>,
}

/// What this broker tells one peer broker.
struct PeerOut {
    addr: String,
    /// Hosted groups with a voter there (no beats once none is left).
    users: usize,
    /// The quiet groups this broker leads there.
    led: BTreeMap<GroupId, Quiet>,
    /// The version of `led`: moves with every change.
    epoch: u64,
    /// The version the peer said it holds in its last reply.
    acked: Option<u64>,
    /// The peer does not know kind 11 (version 4): it gets the whole list
    /// every time.
    v4: bool,
    in_flight: bool,
    /// Groups it leads that this broker follows and cannot keep quiet.
    wake: Vec<GroupId>,
}

type Outs = Arc<Mutex<HashMap<NodeId, PeerOut>>>;

/// What one pass reads of a group, taken under its metrics' borrow.
struct View {
    state: ServerState,
    leader: Option<NodeId>,
    term: u64,
    settled: Settled,
    following: Following,
}

/// Runs until the transport closes or is dropped.
pub(crate) async fn drive(router: Router, transport: Weak<Transport>, cfg: GroupConfig) {
    let mut d = Driver {
        router,
        cfg,
        generation: None,
        groups: HashMap::new(),
        awake: HashSet::new(),
        parked_under: HashMap::new(),
        order: Vec::new(),
        cursor: 0,
        outs: Arc::default(),
    };
    let mut every = tokio::time::interval(Duration::from_millis(cfg.heartbeat_interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(t) = transport.upgrade() else {
            return;
        };
        if t.is_closed() {
            return;
        }
        d.pass(&t);
        send_beats(&d.router, &t, &d.cfg, &d.outs);
    }
}

struct Driver {
    router: Router,
    cfg: GroupConfig,
    /// The router's generation the groups below were read at.
    generation: Option<u64>,
    groups: HashMap<GroupId, Driven>,
    /// The groups not parked: every pass looks at them.
    awake: HashSet<GroupId>,
    /// Parked followers by their leader: looked at once its broker is
    /// silent.
    parked_under: HashMap<NodeId, HashSet<GroupId>>,
    /// The sweep's order, and where it is.
    order: Vec<GroupId>,
    cursor: usize,
    outs: Outs,
}

/// What one pass reads of group `h` (and, when its membership changed,
/// its voters into `d`, returned with the peers it had before).
#[allow(clippy::type_complexity)]
fn view(
    h: &Hosted,
    d: &mut Driven,
    up: impl Fn(&NodeId) -> bool,
) -> Option<(View, Option<Vec<(NodeId, String)>>)> {
    let m = h.raft.metrics();
    let m = m.borrow();
    if m.state == ServerState::Shutdown {
        return None;
    }
    let membership = m.membership_config.membership();
    let at = *m.membership_config.log_id();
    let mut old_peers = None;
    if d.members_at != Some(at) {
        d.members_at = Some(at);
        d.voters = membership.voter_ids().collect();
        d.configs = membership
            .get_joint_config()
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        let peers = membership
            .nodes()
            .filter(|(id, _)| **id != h.me && d.voters.contains(id))
            .map(|(id, n)| (*id, n.raft_addr.clone()))
            .collect();
        old_peers = Some(std::mem::replace(&mut d.peers, peers));
    }
    let last_index = m.last_log_index;
    let applied = m.last_applied.map(|l| l.index);
    // A follower whose broker is down cannot hear heartbeats anyway: the
    // group may quiet without it if a majority holds the last entry, and
    // it wakes the group when it returns behind (its beat reply).
    let all_hold_it = applied == last_index
        && m.replication.as_ref().is_some_and(|r| {
            let mut holding = 1;
            let all = r.iter().filter(|(id, _)| **id != h.me).all(|(id, matched)| {
                let holds = matched.map(|l| l.index) == last_index;
                holding += usize::from(holds && d.voters.contains(id));
                holds || !up(id)
            });
            all && 2 * holding > d.voters.len()
        });
    let membership_settled =
        membership.get_joint_config().len() == 1 && m.membership_config.log_id().map(|l| l.index) <= applied;
    let following = Following {
        follower: m.state == ServerState::Follower,
        term: m.current_term,
        leader: m.current_leader,
        last_index,
        applied,
    };
    Some((
        View {
            state: m.state,
            leader: m.current_leader,
            term: m.current_term,
            settled: Settled {
                last_index,
                all_hold_it,
                membership_settled,
                yielding: h
                    .handover
                    .yielding_until
                    .load(std::sync::atomic::Ordering::Acquire)
                    != 0,
            },
            following,
        },
        old_peers,
    ))
}

impl Driver {
    /// Reads the hosted groups again if any was added or removed.
    fn sync(&mut self) {
        let generation = self.router.generation();
        if self.generation == Some(generation) {
            return;
        }
        self.generation = Some(generation);
        let hosted: HashMap<GroupId, Arc<Hosted>> = self.router.hosted().into_iter().collect();
        let outs = self.outs.clone();
        let mut outs = outs.lock().expect("outs lock");
        let gone: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(g, d)| !hosted.get(g).is_some_and(|h| Arc::ptr_eq(h, &d.hosted)))
            .map(|(g, _)| *g)
            .collect();
        for g in gone {
            self.drop_group(&mut outs, g);
        }
        for (g, h) in hosted {
            self.groups.entry(g).or_insert_with(|| {
                self.awake.insert(g);
                Driven {
                    hosted: h,
                    candidacy: Candidacy::new(&self.cfg),
                    idle: Idle::default(),
                    quiet_as_leader: false,
                    members_at: None,
                    voters: Vec::new(),
                    configs: Vec::new(),
                    peers: Vec::new(),
                    parked: None,
                }
            });
        }
        self.order = self.groups.keys().copied().collect();
        self.cursor = 0;
    }

    /// Forgets group `g` (shut down, or no longer hosted).
    fn drop_group(&mut self, outs: &mut HashMap<NodeId, PeerOut>, g: GroupId) {
        if let Some(d) = self.groups.remove(&g) {
            forget_peers(outs, g, &d.peers);
            self.unpark(g, d.parked);
        }
        self.awake.remove(&g);
    }

    /// Takes `g` off the parked lists (it was parked as `parked`).
    fn unpark(&mut self, g: GroupId, parked: Option<Parked>) {
        if let Some(Parked::Follower(l)) = parked {
            if let Some(under) = self.parked_under.get_mut(&l) {
                under.remove(&g);
                if under.is_empty() {
                    self.parked_under.remove(&l);
                }
            }
        }
    }

    /// One pass: every awake group, and the parked ones something asks to
    /// be looked at.
    fn pass(&mut self, t: &Arc<Transport>) {
        self.sync();
        let now = heard_now();
        let cfg = self.cfg;
        let mut look = self.router.take_touched();
        if !self.order.is_empty() {
            let n = self.order.len();
            for _ in 0..n.div_ceil(SWEEP_PASSES) {
                look.insert(self.order[self.cursor % n]);
                self.cursor = (self.cursor + 1) % n;
            }
        }
        look.extend(self.awake.iter().copied());
        let seen = self.router.seen();
        let router = self.router.clone();
        let outs = self.outs.clone();
        let mut outs = outs.lock().expect("outs lock");
        let mut gone = Vec::new();
        router.with_quiet_of(|quiet_of| {
            // Leaders whose brokers stopped beating here: their parked
            // followers stand if they must.
            let stale_after = 2 * cfg.heartbeat_interval_ms;
            for (l, p) in quiet_of {
                if now.saturating_sub(p.beat_at) > stale_after {
                    if let Some(under) = self.parked_under.get(l) {
                        look.extend(under.iter().copied());
                    }
                }
            }
            for g in look {
                let Some(d) = self.groups.get_mut(&g) else {
                    continue;
                };
                let was = d.parked.take();
                if was.is_some() {
                    d.hosted.handover.park.set(false);
                }
                let alive = visit(g, d, &cfg, now, &seen, quiet_of, &mut outs, t);
                let now_parked = d.parked;
                if !alive {
                    self.unpark(g, was);
                    gone.push(g);
                    continue;
                }
                if was != now_parked {
                    self.unpark(g, was);
                    if let Some(Parked::Follower(l)) = now_parked {
                        self.parked_under.entry(l).or_default().insert(g);
                    }
                }
                if now_parked.is_some() {
                    self.awake.remove(&g);
                } else {
                    self.awake.insert(g);
                }
            }
        });
        for g in gone {
            self.drop_group(&mut outs, g);
        }
    }
}

/// `g`'s voters `peers` are no longer its voters here.
fn forget_peers(outs: &mut HashMap<NodeId, PeerOut>, g: GroupId, peers: &[(NodeId, String)]) {
    for (id, _) in peers {
        if let Some(p) = outs.get_mut(id) {
            if p.led.remove(&g).is_some() {
                p.epoch = p.epoch.wrapping_add(1);
            }
            p.users = p.users.saturating_sub(1);
            if p.users == 0 {
                outs.remove(id);
            }
        }
    }
}

/// Names `g` quiet (`Some`) or not in the beats to `peers`.
fn set_led(outs: &mut HashMap<NodeId, PeerOut>, peers: &[(NodeId, String)], g: GroupId, q: Option<Quiet>) {
    for (id, _) in peers {
        if let Some(p) = outs.get_mut(id) {
            let changed = match q {
                Some(q) => p.led.insert(g, q) != Some(q),
                None => p.led.remove(&g).is_some(),
            };
            if changed {
                p.epoch = p.epoch.wrapping_add(1);
            }
        }
    }
}

/// One look at group `g`; false when it has shut down.
#[allow(clippy::too_many_arguments)]
fn visit(
    g: GroupId,
    d: &mut Driven,
    cfg: &GroupConfig,
    now: u64,
    seen: &HashMap<NodeId, u64>,
    quiet_of: &HashMap<NodeId, PeerQuiet>,
    outs: &mut HashMap<NodeId, PeerOut>,
    t: &Arc<Transport>,
) -> bool {
    let lease = cfg.election_timeout_max_ms;
    let h = d.hosted.clone();
    let up = |id: &NodeId| seen.get(id).is_some_and(|at| now.saturating_sub(*at) <= lease);
    let Some((v, old_peers)) = view(&h, d, up) else {
        return false;
    };
    if let Some(old) = old_peers {
        forget_peers(outs, g, &old);
        for (id, addr) in &d.peers {
            let p = outs.entry(*id).or_insert_with(|| PeerOut {
                addr: addr.clone(),
                users: 0,
                led: BTreeMap::new(),
                epoch: rand_below(u64::MAX),
                acked: None,
                v4: false,
                in_flight: false,
                wake: Vec::new(),
            });
            p.users += 1;
            p.addr.clone_from(addr);
        }
    }
    let leading = v.state == ServerState::Leader;
    if leading {
        if d.quiet_as_leader && !h.is_quiet() {
            // A peer asked for it awake, or a hand-over woke it.
            d.quiet_as_leader = false;
            d.idle.restart(v.settled.last_index, now);
        } else if !d.quiet_as_leader && h.is_quiet() {
            // Quieted as a follower before it was elected.
            h.wake();
        }
        let room = d.peers.iter().all(|(id, _)| {
            outs.get(id)
                .is_some_and(|p| p.led.len() < BEAT_GROUPS_MAX || p.led.contains_key(&g))
        });
        let may = room && d.idle.may_quiesce(v.settled, now, cfg.quiesce_after_ms);
        if may && !d.quiet_as_leader {
            d.quiet_as_leader = h.quiesce();
        } else if !may && d.quiet_as_leader {
            h.wake();
            d.quiet_as_leader = false;
            d.idle.restart(v.settled.last_index, now);
        }
        let q = d.quiet_as_leader.then_some(Quiet {
            group: g,
            term: v.term,
            last_index: v.settled.last_index,
        });
        set_led(outs, &d.peers, g, q);
    } else {
        if d.quiet_as_leader {
            d.quiet_as_leader = false;
            h.wake();
        }
        set_led(outs, &d.peers, g, None);
    }
    // What the leader's broker last said of this group, if it named it
    // quiet: agreed, the group stays quiet here and its beats count as
    // heartbeats; not, the leader is asked to wake it.
    // A replica that does not know its leader yet (it restarted) looks for
    // the broker whose list names the group: asked to wake it, that leader
    // sends the AppendEntries that tell it.
    let mut agreed = None;
    let named = |l: &NodeId| {
        quiet_of
            .get(l)
            .and_then(|p| p.named.get(&g).map(|q| (*l, *q, p.beat_at)))
    };
    let leader_said = match v.leader {
        _ if leading => None,
        Some(l) => named(&l),
        None => quiet_of.keys().find_map(named),
    };
    if let Some((l, q, at)) = leader_said {
        if quiesce::agrees(&q, l, Some(v.following)) {
            h.heard.fetch_max(at, Ordering::AcqRel);
            h.quiesce();
            agreed = Some(l);
        } else {
            if q.term >= v.term {
                h.heard.fetch_max(at, Ordering::AcqRel);
            }
            if let Some(p) = outs.get_mut(&l) {
                if p.wake.len() < WAKES_PER_BEAT_MAX && !p.wake.contains(&g) {
                    p.wake.push(g);
                }
            }
        }
    }
    let turn = Turn {
        me: h.me,
        state: v.state,
        leader: v.leader,
        heard: h.heard.load(Ordering::Acquire),
        quorum_reachable: quiesce::reachable(&d.voters, h.me, seen, now, lease),
        cut_off_ms: now.saturating_sub(quiesce::majority_heard_at(&d.voters, h.me, seen, now)),
    };
    if d.candidacy.step(&h.raft, cfg, turn, &h.votes, &h.handover, now) {
        tracing::debug!(
            group = %g,
            state = ?turn.state,
            heard_ms_ago = now.saturating_sub(turn.heard),
            "standing for election"
        );
        let (h, t, peers, configs) = (h.clone(), t.clone(), d.peers.clone(), d.configs.clone());
        let wait = Duration::from_millis(cfg.election_timeout_min_ms);
        tokio::spawn(async move {
            // Read here, not in the pass: the log's lock may be busy.
            let last_log = h.last_log_id();
            if prevote_won(&t, g, h.me, last_log, &peers, &configs, wait).await {
                let _ = h.raft.trigger().elect().await;
            }
        });
        return true;
    }
    let parked = if leading && d.quiet_as_leader && h.is_quiet() {
        Some(Parked::Leader)
    } else if !leading && h.is_quiet() {
        agreed.map(Parked::Follower)
    } else {
        None
    };
    if parked.is_some() {
        d.parked = parked;
        h.handover.park.set(true);
    }
    true
}

/// Whether a quorum of the group (a majority of each voter set in
/// `configs`), this replica (`me`) included, would vote for it
/// (`prevote`): asked within `wait`, a peer that does not answer refuses;
/// one that does not know pre-votes (an older version) grants, as it would
/// have before.
async fn prevote_won(
    t: &Arc<Transport>,
    g: GroupId,
    me: NodeId,
    last_log: Option<crate::types::LogId>,
    peers: &[(NodeId, String)],
    configs: &[Vec<NodeId>],
    wait: Duration,
) -> bool {
    let ask = crate::prevote::PreVote { last_log };
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in peers {
        let (t, id, addr) = (t.clone(), *id, addr.clone());
        asks.spawn(async move {
            let granted = match tokio::time::timeout(wait, t.prevote(&addr, g, id, &ask)).await {
                Ok(Ok(granted)) => granted,
                Ok(Err(crate::ReplicationError::Transport(e))) => e.contains("unknown rpc kind"),
                _ => false,
            };
            (id, granted)
        });
    }
    let mut granted = vec![me];
    let quorum = |granted: &[NodeId]| {
        configs
            .iter()
            .all(|c| 2 * c.iter().filter(|v| granted.contains(v)).count() > c.len())
    };
    if quorum(&granted) {
        return true;
    }
    while let Some(r) = asks.join_next().await {
        if let Ok((id, true)) = r {
            granted.push(id);
            if quorum(&granted) {
                return true;
            }
        }
    }
    false
}

/// One beat to each peer, at most one in flight per peer: a peer that
/// does not answer within an election timeout counts as not heard.
fn send_beats(router: &Router, t: &Arc<Transport>, cfg: &GroupConfig, outs: &Outs) {
    let wait = Duration::from_millis(cfg.election_timeout_min_ms);
    let mut all = outs.lock().expect("outs lock");
    for (peer, p) in all.iter_mut() {
        if p.in_flight {
            continue;
        }
        p.in_flight = true;
        let (peer, addr, epoch, v4) = (*peer, p.addr.clone(), p.epoch, p.v4);
        let quiet = (v4 || p.acked != Some(epoch)).then(|| p.led.values().copied().collect::<Vec<_>>());
        let wake = std::mem::take(&mut p.wake);
        let (t, router, outs) = (t.clone(), router.clone(), outs.clone());
        tokio::spawn(async move {
            let from = t.me();
            let (answer, acked) = if v4 {
                let beat = BeatV4 {
                    from,
                    quiet: quiet.unwrap_or_default(),
                };
                match tokio::time::timeout(wait, t.beat_v4(&addr, &beat)).await {
                    Ok(Ok(r)) => (Some(r.wake), None),
                    _ => (None, None),
                }
            } else {
                let beat = Beat {
                    from,
                    epoch,
                    quiet,
                    wake,
                };
                match tokio::time::timeout(wait, t.beat(&addr, &beat)).await {
                    Ok(Ok(r)) => (Some(r.wake), Some(r.epoch)),
                    Ok(Err(crate::ReplicationError::Transport(e))) if e.contains("unknown rpc kind") => {
                        if let Some(p) = outs.lock().expect("outs lock").get_mut(&peer) {
                            p.v4 = true;
                        }
                        (None, None)
                    }
                    _ => (None, None),
                }
            };
            if let Some(wake) = answer {
                router.saw(peer);
                // The rest are named again in the next reply: a broker
                // back from a restart behind in thousands of groups must
                // not wake them all into one storm of catch-ups.
                for g in wake.into_iter().take(WAKES_PER_BEAT_MAX) {
                    if let Some(h) = router.get(g) {
                        h.wake();
                    }
                }
            }
            if let Some(p) = outs.lock().expect("outs lock").get_mut(&peer) {
                if let Some(acked) = acked {
                    p.acked = acked;
                }
                p.in_flight = false;
            }
        });
    }
}
