//! Who stands for election and when: Felix's loop beside openraft's own
//! timer, and the hand-over state it reads.

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
#[derive(Debug, Default)]
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
}

/// Three nudges openraft 0.9's elections need, checked every heartbeat.
///
/// - A follower stands when its own random timeout (`election_timeout_min..
///   max`) runs out, but the other followers refuse any vote until their
///   leader lease (`election_timeout_max` since they last heard the leader)
///   has, so the first round of a failover is almost always lost and the
///   next waits another timeout. A follower that has heard no leader for
///   the lease plus a random jitter stands at once instead: the others,
///   who heard the dead leader last at the same moment, are free to grant.
/// - Openraft checks timeouts only on its tick (1.5 heartbeats), so two
///   candidates whose ticks line up split every vote forever, and a
///   replica that is behind and stood first keeps the up-to-date one from
///   winning that term. A candidate still without a leader after a short
///   random wait stands again, off the tick: the other grants the higher
///   term if the candidate's log is at least as long as its own.
/// - A replica whose log is behind can never win, but openraft does not
///   make a peer that refuses it for its log adopt its term, so a behind
///   replica that keeps standing keeps taking every term first and the
///   up-to-date one is refused for "already voted" in each (seen: no
///   leader for 30 s after a kill). A replica told by a peer that the
///   peer's log is longer (`NetworkFactory::outvoted`) stops standing,
///   openraft's own timer included, for two leases; the up-to-date peer
///   then passes its term within a try or two and wins: a candidate
///   refused by a peer with a shorter log (`NetworkFactory::outran`)
///   stands again at the next heartbeat instead of after the random wait,
///   since that peer cannot be a rival.
pub(crate) async fn elections(
    raft: Raft,
    me: NodeId,
    cfg: GroupConfig,
    heard: Arc<AtomicU64>,
    votes: Refusals,
    handover: Arc<Handover>,
) {
    use openraft::ServerState;
    let lease = cfg.election_timeout_max_ms;
    let mut timer_on = true;
    let jitter_max = 2 * cfg.heartbeat_interval_ms;
    let mut jitter = rand_below(jitter_max);
    let mut stood_at = 0u64;
    let mut candidate_since: Option<u64> = None;
    let split_wait_of = || 2 * cfg.heartbeat_interval_ms + rand_below(lease / 2);
    let mut split_wait = split_wait_of();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(cfg.heartbeat_interval_ms)).await;
        let state = raft.metrics().borrow().state;
        if state == ServerState::Shutdown {
            return;
        }
        let now = heard_now();
        // A hand-over that did not happen in time ends: lead on.
        let until = handover.yielding_until.load(Ordering::Acquire);
        if until != 0 && (until <= now || state != ServerState::Leader) {
            handover.yielding_until.store(0, Ordering::Release);
            raft.runtime_config().heartbeat(true);
        }
        let preferred = handover.preferred_at(now);
        let leader = raft.metrics().borrow().current_leader;
        // Preferred: no jitter. Not preferred while a leader that is not
        // preferred holds office (a hand-over may be on): a lease more.
        let extra = if preferred == me {
            0
        } else if preferred != 0 && leader.is_some_and(|l| l != preferred) {
            jitter + lease
        } else {
            jitter
        };
        let last_outvoted = votes.outvoted.load(Ordering::Acquire);
        let behind = last_outvoted != 0 && now.saturating_sub(last_outvoted) < 2 * lease;
        // openraft's own timer ignores the preference: off while it could
        // beat the preferred replica to a hand-over.
        let defer = preferred != 0 && preferred != me && leader.is_some_and(|l| l != preferred);
        if (behind || defer) == timer_on {
            timer_on = !(behind || defer);
            raft.runtime_config().elect(timer_on);
        }
        let stand = !behind
            && match state {
                ServerState::Follower => {
                    candidate_since = None;
                    let last = heard.load(Ordering::Acquire);
                    // Never heard a leader since starting: openraft's own timer
                    // decides (a fresh or restarted replica must not disturb).
                    last != 0
                        && now.saturating_sub(last) > lease + extra
                        && now.saturating_sub(stood_at) > lease
                }
                ServerState::Candidate => {
                    let since = *candidate_since.get_or_insert(now);
                    now.saturating_sub(since) > split_wait || votes.outran.load(Ordering::Acquire) >= since
                }
                _ => {
                    candidate_since = None;
                    false
                }
            };
        if stand {
            stood_at = now;
            candidate_since = Some(now);
            jitter = rand_below(jitter_max);
            split_wait = split_wait_of();
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

impl Handover {
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
pub(crate) struct Refusals {
    pub(crate) outvoted: Arc<AtomicU64>,
    pub(crate) outran: Arc<AtomicU64>,
}
