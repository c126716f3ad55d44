//! Who stands for election and when (openraft's own election timer stays
//! off), and the hand-over state it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::{heard_now, rand_below};
use crate::config::GroupConfig;
use crate::types::{NodeId, Raft};

/// Longest a leader steps aside for its preferred replica: past it, it
/// leads on (a few leases: time for the followers' leases to lapse and for
/// one election).
pub const HANDOVER_MS_MAX: u64 = 4_000;
/// What the election loop reads to let a preferred replica take over.
#[derive(Debug)]
pub(crate) struct Handover {
    /// The node the placement prefers as leader (0: none).
    pub(crate) preferred: AtomicU64,
    /// The node a leader that is stepping down chose, told by it over
    /// `Transport::successor` (0: none); it wins over `preferred` until
    /// `successor_until` (`heard_now` clock).
    pub(crate) successor: AtomicU64,
    pub(crate) successor_until: AtomicU64,
    /// While this leader steps aside (`heard_now` clock; 0: not):
    /// it takes no writes and sends no heartbeats until then.
    pub(crate) yielding_until: AtomicU64,
    /// Whether the group is quiescent on this replica (see `quiesce`):
    /// openraft's tick, heartbeats and election timer are off, and its
    /// tick task sleeps.
    pub(crate) quiet: Arc<crate::runtime::TickGate>,
    /// Whether the driver passes the group by (see `driver`).
    pub(crate) park: crate::quiesce::Park,
}

/// When a replica stands, decided every heartbeat instead of by openraft
/// 0.9's own election timer, which stays off: a replica that would stand
/// first asks its peers (`prevote`) and raises its term only if most of
/// the group would vote for it. Besides, three nudges openraft's elections
/// need:
///
/// - Followers refuse any vote until their leader lease
///   (`election_timeout_max` since they last heard the leader) has run
///   out, so a follower stands once it has heard no leader for the lease
///   plus a random jitter: the others, who heard the dead leader last at
///   the same moment, are free to grant.
/// - Two candidates that stood together split the vote. A candidate still
///   without a leader after a short random wait stands again: the other
///   grants the higher term if the candidate's log is at least as long as
///   its own.
/// - A replica whose log is behind can never win, but openraft does not
///   make a peer that refuses it for its log adopt its term, so a behind
///   replica that keeps standing keeps taking every term first and the
///   up-to-date one is refused for "already voted" in each (seen: no
///   leader for 30 s after a kill). A replica told by a peer that the
///   peer's log is longer (`NetworkFactory::outvoted`) stops standing
///   for two leases; the up-to-date peer
///   then passes its term within a try or two and wins: a candidate
///   refused by a peer with a shorter log (`NetworkFactory::outran`)
///   stands again at the next heartbeat instead of after the random wait,
///   since that peer cannot be a rival.
///
/// One [`Candidacy`] per hosted group, stepped by the broker's one driver
/// (`driver`) every heartbeat interval: no task or timer per group.
#[derive(Debug)]
pub(crate) struct Candidacy {
    jitter: u64,
    stood_at: u64,
    candidate_since: Option<u64>,
    split_wait: u64,
    /// When the driver first saw the group ([`heard_now`] clock).
    born: u64,
    /// The last pass at which this replica had been cut off from most of
    /// its group for an election timeout or more (0: never): back from
    /// such a cut-off, it waits a lease for its leader's word before it
    /// may stand (see [`Candidacy::step`]).
    cut_off_at: u64,
}

/// What one group looks like to the driver at one pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Turn {
    /// This replica's node id.
    pub(crate) me: NodeId,
    pub(crate) state: openraft::ServerState,
    pub(crate) leader: Option<NodeId>,
    /// When a leader was last heard ([`heard_now`] clock; 0: never).
    pub(crate) heard: u64,
    /// Whether this replica and the peers it heard from lately make a
    /// majority of the group's voters (see `quiesce::reachable`).
    pub(crate) quorum_reachable: bool,
    /// How long since a majority of the voters was last heard from, this
    /// replica included (see `quiesce::majority_heard_at`).
    pub(crate) cut_off_ms: u64,
}

impl Candidacy {
    pub(crate) fn new(cfg: &GroupConfig) -> Candidacy {
        Candidacy {
            jitter: rand_below(2 * cfg.heartbeat_interval_ms),
            stood_at: 0,
            candidate_since: None,
            split_wait: Self::split_wait_of(cfg),
            born: heard_now(),
            cut_off_at: 0,
        }
    }

    fn split_wait_of(cfg: &GroupConfig) -> u64 {
        2 * cfg.heartbeat_interval_ms + rand_below(cfg.election_timeout_max_ms / 2)
    }

    /// One pass at `now`: ends a lapsed hand-over
    /// (through `raft`'s runtime switches), and returns whether this
    /// replica should stand now.
    pub(crate) fn step(
        &mut self,
        raft: &Raft,
        cfg: &GroupConfig,
        t: Turn,
        votes: &Refusals,
        handover: &Handover,
        now: u64,
    ) -> bool {
        use openraft::ServerState;
        let me = t.me;
        let lease = cfg.election_timeout_max_ms;
        // A hand-over that did not happen in time ends: lead on.
        let until = handover.yielding_until.load(Ordering::Acquire);
        if until != 0 && (until <= now || t.state != ServerState::Leader) {
            handover.yielding_until.store(0, Ordering::Release);
            raft.runtime_config().heartbeat(true);
        }
        let preferred = handover.preferred_at(now);
        // Preferred: no jitter. Not preferred while a leader that is not
        // preferred holds office (a hand-over may be on): a lease more.
        let extra = if preferred == me {
            0
        } else if preferred != 0 && t.leader.is_some_and(|l| l != preferred) {
            self.jitter + lease
        } else {
            self.jitter
        };
        let last_outvoted = votes.outvoted.load(Ordering::Acquire);
        let behind = last_outvoted != 0 && now.saturating_sub(last_outvoted) < 2 * lease;
        // A follower cut off from most of its group would ask at every
        // timeout, for nothing. So once it has missed most peers' beats for
        // a little under the shortest election timeout (a late beat or two
        // do not count), it does not stand.
        let cut_off = t.heard != 0 && t.cut_off_ms > cut_off_after_ms(cfg);
        // Back from a cut-off long enough for its timer to have run out, it
        // waits a lease: the first beat to reach it may be another
        // follower's, before the leader's (or its wake-up of a quiet group)
        // brings it up to date.
        if t.heard != 0 && t.cut_off_ms >= cfg.election_timeout_min_ms {
            self.cut_off_at = now;
        }
        let back = self.cut_off_at != 0 && now.saturating_sub(self.cut_off_at) <= lease;
        // A replica that has heard no leader since it started counts from
        // its start, and two beats more: the leader of a quiet group sends
        // no heartbeat, only its broker's beat, which takes a connection to
        // arrive after a restart.
        let heard = if t.heard == 0 {
            self.born + 2 * cfg.heartbeat_interval_ms
        } else {
            t.heard
        };
        let stand = !behind
            && match t.state {
                ServerState::Follower => {
                    self.candidate_since = None;
                    // Cut off from most of the group: standing would only
                    // raise the term it returns with.
                    t.quorum_reachable
                        && !cut_off
                        && !back
                        && now.saturating_sub(heard) > lease + extra
                        && now.saturating_sub(self.stood_at) > lease
                }
                ServerState::Candidate => {
                    let since = *self.candidate_since.get_or_insert(now);
                    !cut_off
                        && (now.saturating_sub(since) > self.split_wait
                            || votes.outran.load(Ordering::Acquire) >= since)
                }
                _ => {
                    self.candidate_since = None;
                    false
                }
            };
        if stand {
            self.stood_at = now;
            self.candidate_since = Some(now);
            self.jitter = rand_below(2 * cfg.heartbeat_interval_ms);
            self.split_wait = Self::split_wait_of(cfg);
        }
        stand
    }
}

/// How long without most of the group's beats counts as cut off from it:
/// more than two beat intervals, less than the shortest election timeout
/// (so a replica that lost its peers never asks to stand).
fn cut_off_after_ms(cfg: &GroupConfig) -> u64 {
    cfg.election_timeout_min_ms
        .saturating_sub(cfg.heartbeat_interval_ms)
        .max(2 * cfg.heartbeat_interval_ms)
}

impl Handover {
    pub(crate) fn new(park: crate::quiesce::Park) -> Handover {
        Handover {
            preferred: AtomicU64::new(0),
            successor: AtomicU64::new(0),
            successor_until: AtomicU64::new(0),
            yielding_until: AtomicU64::new(0),
            quiet: Arc::default(),
            park,
        }
    }

    /// A stepping-down leader named `successor`: favour it for the length
    /// of a hand-over.
    pub(crate) fn expect_successor(&self, successor: NodeId) {
        self.successor.store(successor, Ordering::Release);
        self.successor_until
            .store(heard_now() + HANDOVER_MS_MAX, Ordering::Release);
    }

    /// The replica elections should favour at `now` (0: none).
    pub(crate) fn preferred_at(&self, now: u64) -> NodeId {
        if self.successor_until.load(Ordering::Acquire) > now {
            return self.successor.load(Ordering::Acquire);
        }
        self.preferred.load(Ordering::Acquire)
    }
}

/// When this replica's vote requests were last refused by a peer whose log
/// is longer (`outvoted`) or shorter (`outran`) than its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refusals {
    pub(crate) outvoted: Arc<AtomicU64>,
    pub(crate) outran: Arc<AtomicU64>,
}
