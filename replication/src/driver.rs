//! The broker's one timer for every group it hosts: each heartbeat
//! interval, one pass steps every group's [`Candidacy`] (who stands for
//! election), quiets the groups it leads that are idle and wakes those
//! that are not ([`quiesce`]), and sends each peer broker one beat naming
//! the quiet groups it leads there. No task, timer or heartbeat per group
//! is left on an idle broker but openraft's own tick task, which skips its
//! work while the group is quiet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;

use crate::clock::heard_now;
use crate::config::GroupConfig;
use crate::elections::{Candidacy, Turn};
use crate::network::{Hosted, Router, Transport};
use crate::quiesce::{self, Beat, Idle, Quiet, Settled, BEAT_GROUPS_MAX};
use crate::types::{GroupId, NodeId};

/// Groups one beat reply wakes at most (a beat goes every heartbeat
/// interval, so about 850 groups a second per peer at 150 ms).
pub const WAKES_PER_BEAT_MAX: usize = 128;

/// The driver's memory of one group.
struct Driven {
    candidacy: Candidacy,
    idle: Idle,
    /// This replica quieted the group as its leader.
    quiet_as_leader: bool,
    /// The membership the two lists below were read from (its log id):
    /// read again only when it changes, not on every pass.
    members_at: Option<Option<openraft::LogId<NodeId>>>,
    voters: Vec<NodeId>,
    /// The other voters and their replication addresses.
    peers: Vec<(NodeId, String)>,
}

/// What one pass reads of a group, taken under its metrics' borrow.
struct View {
    state: ServerState,
    leader: Option<NodeId>,
    term: u64,
    settled: Settled,
}

/// Runs until the transport closes or is dropped.
pub(crate) async fn drive(router: Router, transport: Weak<Transport>, cfg: GroupConfig) {
    let mut groups: HashMap<GroupId, Driven> = HashMap::new();
    let beating: Arc<Mutex<HashSet<NodeId>>> = Arc::default();
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
        let beats = pass(&router, &cfg, &mut groups);
        send_beats(&router, &t, &cfg, &beating, beats);
    }
}

/// What one pass reads of group `h` (and, when its membership changed,
/// its voters into `d`).
fn view(h: &Hosted, d: &mut Driven, up: impl Fn(&NodeId) -> bool) -> Option<View> {
    let m = h.raft.metrics();
    let m = m.borrow();
    if m.state == ServerState::Shutdown {
        return None;
    }
    let membership = m.membership_config.membership();
    let at = *m.membership_config.log_id();
    if d.members_at != Some(at) {
        d.members_at = Some(at);
        d.voters = membership.voter_ids().collect();
        d.peers = membership
            .nodes()
            .filter(|(id, _)| **id != h.me && d.voters.contains(id))
            .map(|(id, n)| (*id, n.raft_addr.clone()))
            .collect();
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
    Some(View {
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
    })
}

/// One pass over every hosted group; returns each peer's beat: its
/// address and the quiet groups this broker leads there.
fn pass(
    router: &Router,
    cfg: &GroupConfig,
    groups: &mut HashMap<GroupId, Driven>,
) -> BTreeMap<NodeId, (String, Vec<Quiet>)> {
    let now = heard_now();
    let hosted = router.hosted();
    let live: HashSet<GroupId> = hosted.iter().map(|(g, _)| *g).collect();
    groups.retain(|g, _| live.contains(g));
    let seen = router.seen();
    let lease = cfg.election_timeout_max_ms;
    let mut beats: BTreeMap<NodeId, (String, Vec<Quiet>)> = BTreeMap::new();
    for (g, h) in &hosted {
        let d = groups.entry(*g).or_insert_with(|| Driven {
            candidacy: Candidacy::new(cfg),
            idle: Idle::default(),
            quiet_as_leader: false,
            members_at: None,
            voters: Vec::new(),
            peers: Vec::new(),
        });
        let up = |id: &NodeId| seen.get(id).is_some_and(|at| now.saturating_sub(*at) <= lease);
        let Some(v) = view(h, d, up) else {
            groups.remove(g);
            continue;
        };
        for (id, addr) in &d.peers {
            if !beats.contains_key(id) {
                beats.insert(*id, (addr.clone(), Vec::new()));
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
            let room = d
                .peers
                .iter()
                .all(|(id, _)| beats.get(id).is_some_and(|b| b.1.len() < BEAT_GROUPS_MAX));
            let may = room && d.idle.may_quiesce(v.settled, now, cfg.quiesce_after_ms);
            if may && !d.quiet_as_leader {
                d.quiet_as_leader = h.quiesce();
            } else if !may && d.quiet_as_leader {
                h.wake();
                d.quiet_as_leader = false;
                d.idle.restart(v.settled.last_index, now);
            }
            if d.quiet_as_leader {
                let q = Quiet {
                    group: *g,
                    term: v.term,
                    last_index: v.settled.last_index,
                };
                for (id, _) in &d.peers {
                    if let Some(b) = beats.get_mut(id) {
                        b.1.push(q);
                    }
                }
            }
        } else if d.quiet_as_leader {
            d.quiet_as_leader = false;
            h.wake();
        }
        let turn = Turn {
            me: h.me,
            state: v.state,
            leader: v.leader,
            heard: h.heard.load(std::sync::atomic::Ordering::Acquire),
            quorum_reachable: quiesce::reachable(&d.voters, h.me, &seen, now, lease),
            cut_off_ms: now.saturating_sub(quiesce::majority_heard_at(&d.voters, h.me, &seen, now)),
            quiet: !leading && h.is_quiet(),
        };
        if d.candidacy.step(&h.raft, cfg, turn, &h.votes, &h.handover, now) {
            h.wake();
            let raft = h.raft.clone();
            tokio::spawn(async move {
                let _ = raft.trigger().elect().await;
            });
        }
    }
    beats
}

/// One beat to each peer, at most one in flight per peer: a peer that
/// does not answer within an election timeout counts as not heard.
fn send_beats(
    router: &Router,
    t: &Arc<Transport>,
    cfg: &GroupConfig,
    beating: &Arc<Mutex<HashSet<NodeId>>>,
    beats: BTreeMap<NodeId, (String, Vec<Quiet>)>,
) {
    let wait = Duration::from_millis(cfg.election_timeout_min_ms);
    for (peer, (addr, quiet)) in beats {
        if !beating.lock().expect("beating lock").insert(peer) {
            continue;
        }
        let (t, router, beating) = (t.clone(), router.clone(), beating.clone());
        tokio::spawn(async move {
            let beat = Beat { from: t.me(), quiet };
            if let Ok(Ok(reply)) = tokio::time::timeout(wait, t.beat(&addr, &beat)).await {
                router.saw(peer);
                // The rest are named again in the next reply: a broker
                // back from a restart behind in thousands of groups must
                // not wake them all into one storm of catch-ups.
                for g in reply.wake.into_iter().take(WAKES_PER_BEAT_MAX) {
                    if let Some(h) = router.get(g) {
                        h.wake();
                    }
                }
            }
            beating.lock().expect("beating lock").remove(&peer);
        });
    }
}
