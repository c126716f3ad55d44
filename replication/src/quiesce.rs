//! When an idle group goes quiet, and what keeps a quiet group's followers
//! from standing. Decisions, and the flag a parked group is touched
//! through: the driver (`driver`) reads the group and flips openraft's
//! switches.
//!
//! A leader whose group has had nothing to replicate for
//! [`QUIESCE_AFTER_MS`], every replica holding and applying every entry,
//! stops openraft's tick and heartbeats for it. Its broker then names the
//! group, with its term and last entry, in the one beat it sends each peer
//! broker per heartbeat interval ([`Beat`]); a follower that agrees on
//! both counts the beat as its leader's heartbeat and stops its own tick
//! too. A follower that disagrees (it restarted behind, or moved on to
//! another term) asks for the group to be woken in its reply, and the
//! leader's heartbeats start again. A write, a vote request or an
//! AppendEntries wakes a group on the replica that sees it; a leader whose
//! broker stops beating is mourned like one whose heartbeats stopped.
//!
//! A broker's driver does not look at its quiet groups every pass: it
//! parks them (`driver`), and looks again when something touches the group
//! (a write, an RPC, a membership change: `Park::touch`), when the
//! leader's broker stops beating, when the leader's list stops naming it,
//! and once every [`SWEEP_PASSES`] passes in any case.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::types::{GroupId, NodeId};

/// How long a leader sees its group settled before it quiesces.
pub const QUIESCE_AFTER_MS: u64 = 2_000;
/// A sender whose beats this broker could not follow for this long sends
/// its list again, whatever its epoch (its leaderships may have changed
/// meanwhile, unseen by this broker's parked replicas).
pub const RESYNC_AFTER_SILENT_MS: u64 = 1_000;
/// A parked group is looked at by at least one pass in this many, whatever
/// touched it or not (the net under every event that should have).
pub const SWEEP_PASSES: usize = 64;
/// Quiet groups one beat names at most: past it, the rest stay awake
/// (bounds a beat to about 400 KiB).
pub const BEAT_GROUPS_MAX: usize = 16_384;

/// A quiet group the sending broker leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    pub group: GroupId,
    pub term: u64,
    /// The group's last entry (every replica holds it).
    pub last_index: Option<u64>,
}

/// One broker's beat to one peer broker, once per heartbeat interval
/// (kind 11).
///
/// The list of quiet groups travels only when it changed since the
/// receiver last acknowledged it (`epoch`): an idle broker's beat is then
/// a few bytes however many groups are quiet, and its receiver does no
/// work per group. A receiver that does not hold `epoch` (it restarted,
/// missed a change, or had not heard the sender for a while) answers
/// without it, and the next beat carries the list again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// The sender's Raft node id.
    pub from: NodeId,
    /// The version of the sender's list for this receiver: it changes
    /// whenever the list does, and starts at random when the sender does.
    pub epoch: u64,
    /// The quiet groups the sender leads on the receiver, when the
    /// receiver has not acknowledged `epoch`.
    pub quiet: Option<Vec<Quiet>>,
    /// Groups the receiver leads that the sender follows and cannot keep
    /// quiet (at most [`WAKES_PER_BEAT_MAX`]).
    pub wake: Vec<GroupId>,
}

/// The answer to a [`Beat`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatReply {
    /// Groups of the beat's list the receiver cannot keep quiet.
    pub wake: Vec<GroupId>,
    /// The sender's list version the receiver now holds (none: send it).
    pub epoch: Option<u64>,
}

/// A version-4 peer's beat (kind 10): the whole list, every time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatV4 {
    pub from: NodeId,
    pub quiet: Vec<Quiet>,
}

/// The answer to a [`BeatV4`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatReplyV4 {
    pub wake: Vec<GroupId>,
}

/// Groups one beat, or its reply, wakes at most (a beat goes every
/// heartbeat interval, so about 850 groups a second per peer at 150 ms).
pub const WAKES_PER_BEAT_MAX: usize = 128;

/// Parked groups touched since the driver's last pass, each once.
#[derive(Debug, Default)]
pub(crate) struct Touched(Mutex<HashSet<GroupId>>);

impl Touched {
    pub(crate) fn take(&self) -> HashSet<GroupId> {
        std::mem::take(&mut *self.0.lock().expect("touched lock"))
    }
}

/// Whether the driver passes a group by, and how to make it look again.
#[derive(Debug)]
pub(crate) struct Park {
    group: GroupId,
    parked: AtomicBool,
    touched: Arc<Touched>,
}

impl Park {
    pub(crate) fn new(group: GroupId, touched: Arc<Touched>) -> Park {
        Park {
            group,
            parked: AtomicBool::new(false),
            touched,
        }
    }

    /// Something may have changed the group: if parked, the next pass
    /// looks at it. One atomic load on every write's path; the lock only
    /// for a parked group.
    pub(crate) fn touch(&self) {
        if self.parked.load(Ordering::Acquire) && self.parked.swap(false, Ordering::AcqRel) {
            self.touched.0.lock().expect("touched lock").insert(self.group);
        }
    }

    pub(crate) fn set(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }
}

/// What a leader sees of its group at one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) last_index: Option<u64>,
    /// Every other member has matched `last_index`, and this one applied it.
    pub(crate) all_hold_it: bool,
    /// One configuration (not joint), committed.
    pub(crate) membership_settled: bool,
    /// A hand-over is under way (it needs the followers' leases to lapse).
    pub(crate) yielding: bool,
}

/// How long a leader's group has looked settled.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    seen: Option<Option<u64>>,
    since_ms: u64,
}

impl Idle {
    /// Whether the group may be quiet at `now_ms`, settled `after_ms`.
    pub(crate) fn may_quiesce(&mut self, s: Settled, now_ms: u64, after_ms: u64) -> bool {
        let settled = s.all_hold_it && s.membership_settled && !s.yielding;
        if !settled || self.seen != Some(s.last_index) {
            self.restart(s.last_index, now_ms);
            return false;
        }
        now_ms.saturating_sub(self.since_ms) >= after_ms
    }

    /// Counts the settled time afresh (a peer asked for the group awake).
    pub(crate) fn restart(&mut self, last_index: Option<u64>, now_ms: u64) {
        self.seen = Some(last_index);
        self.since_ms = now_ms;
    }
}

/// What a follower sees of a group a beat names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Following {
    pub(crate) follower: bool,
    pub(crate) term: u64,
    pub(crate) leader: Option<NodeId>,
    pub(crate) last_index: Option<u64>,
    pub(crate) applied: Option<u64>,
}

/// Whether a follower may count `q`, from `from`, as its leader's
/// heartbeat and stay quiet: only when it follows `from` in the same term,
/// holds the same last entry and has applied it. A follower that holds
/// the entry but never heard it committed (the commit rides on the
/// leader's next AppendEntries) would otherwise stay quiet, and behind,
/// for as long as the group is idle.
pub(crate) fn agrees(q: &Quiet, from: NodeId, here: Option<Following>) -> bool {
    here.is_some_and(|f| {
        f.follower
            && f.term == q.term
            && f.leader == Some(from)
            && f.last_index == q.last_index
            && f.applied == q.last_index
    })
}

/// Whether this replica and the voters heard from within `lease_ms`
/// (`seen`: peer → when, [`crate::clock::heard_now`] clock) make a
/// majority: a replica cut off from most of its group must not stand (it
/// cannot win, and its raised term would unseat the leader on its return).
pub(crate) fn reachable(
    voters: &[NodeId],
    me: NodeId,
    seen: &HashMap<NodeId, u64>,
    now: u64,
    lease_ms: u64,
) -> bool {
    let up = voters
        .iter()
        .filter(|v| **v == me || seen.get(v).is_some_and(|at| now.saturating_sub(*at) <= lease_ms))
        .count();
    2 * up > voters.len()
}

/// The instant by which a majority of the group's voters had been heard
/// from (`seen`, [`crate::clock::heard_now`] clock), this replica counting
/// as heard at `now`; 0 if no majority ever was. `now` minus it is how
/// long this replica has been cut off from most of its group, measured by
/// the peers' own beats, so a pass that came late (a loaded or paused
/// process) still sees the whole gap.
pub(crate) fn majority_heard_at(voters: &[NodeId], me: NodeId, seen: &HashMap<NodeId, u64>, now: u64) -> u64 {
    let mut at: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == me {
                now
            } else {
                seen.get(v).copied().unwrap_or(0)
            }
        })
        .collect();
    at.sort_unstable_by(|a, b| b.cmp(a));
    at.get(voters.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(last: u64) -> Settled {
        Settled {
            last_index: Some(last),
            all_hold_it: true,
            membership_settled: true,
            yielding: false,
        }
    }

    #[test]
    fn a_group_quiesces_only_after_staying_settled_long_enough() {
        let mut idle = Idle::default();
        assert!(!idle.may_quiesce(settled(5), 1_000, QUIESCE_AFTER_MS));
        assert!(!idle.may_quiesce(settled(5), 1_000 + QUIESCE_AFTER_MS - 1, QUIESCE_AFTER_MS));
        assert!(idle.may_quiesce(settled(5), 1_000 + QUIESCE_AFTER_MS, QUIESCE_AFTER_MS));
        // A write restarts the count.
        assert!(!idle.may_quiesce(settled(6), 1_000 + QUIESCE_AFTER_MS + 1, QUIESCE_AFTER_MS));
        assert!(!idle.may_quiesce(settled(6), 2_000 + QUIESCE_AFTER_MS, QUIESCE_AFTER_MS));
        assert!(idle.may_quiesce(settled(6), 1_001 + 2 * QUIESCE_AFTER_MS, QUIESCE_AFTER_MS));
    }

    #[test]
    fn a_follower_behind_a_joint_membership_or_a_hand_over_keeps_it_awake() {
        for s in [
            Settled {
                all_hold_it: false,
                ..settled(5)
            },
            Settled {
                membership_settled: false,
                ..settled(5)
            },
            Settled {
                yielding: true,
                ..settled(5)
            },
        ] {
            let mut idle = Idle::default();
            for t in 0..10 {
                assert!(
                    !idle.may_quiesce(s, t * QUIESCE_AFTER_MS, QUIESCE_AFTER_MS),
                    "{s:?}"
                );
            }
        }
        let mut idle = Idle::default();
        assert!(!idle.may_quiesce(settled(5), 0, QUIESCE_AFTER_MS));
        idle.restart(Some(5), QUIESCE_AFTER_MS);
        assert!(!idle.may_quiesce(settled(5), QUIESCE_AFTER_MS + 1, QUIESCE_AFTER_MS));
    }

    #[test]
    fn a_beat_keeps_a_follower_quiet_only_if_it_agrees_on_leader_term_and_last_entry_and_applied_it() {
        let q = Quiet {
            group: GroupId(3),
            term: 4,
            last_index: Some(9),
        };
        let f = Following {
            follower: true,
            term: 4,
            leader: Some(1),
            last_index: Some(9),
            applied: Some(9),
        };
        assert!(agrees(&q, 1, Some(f)));
        assert!(!agrees(&q, 2, Some(f)), "another broker's beat");
        assert!(!agrees(&q, 1, None), "not hosted here");
        for other in [
            Following { term: 5, ..f },
            Following { leader: None, ..f },
            Following {
                last_index: Some(8),
                ..f
            },
            Following { follower: false, ..f },
            Following {
                applied: Some(8),
                ..f
            },
        ] {
            assert!(!agrees(&q, 1, Some(other)), "{other:?}");
        }
    }

    #[test]
    fn only_a_replica_that_hears_a_majority_may_stand() {
        let voters = [1, 2, 3];
        let mut seen = HashMap::new();
        assert!(!reachable(&voters, 1, &seen, 10_000, 800), "alone");
        seen.insert(2, 9_500);
        assert!(reachable(&voters, 1, &seen, 10_000, 800));
        assert!(!reachable(&voters, 1, &seen, 10_301, 800), "heard too long ago");
        let five = [1, 2, 3, 4, 5];
        assert!(!reachable(&five, 1, &seen, 10_000, 800));
        seen.insert(4, 10_000);
        assert!(reachable(&five, 1, &seen, 10_000, 800));
        // How long since a majority was heard: this replica, and the
        // majority's least recently heard peer.
        assert_eq!(
            majority_heard_at(&voters, 1, &seen, 10_000),
            9_500,
            "this one and 2"
        );
        assert_eq!(
            majority_heard_at(&five, 1, &seen, 10_000),
            9_500,
            "this one, 4 and 2"
        );
        seen.insert(3, 9_900);
        assert_eq!(
            majority_heard_at(&voters, 1, &seen, 10_000),
            9_900,
            "3 came later than 2"
        );
        assert_eq!(majority_heard_at(&five, 1, &HashMap::new(), 10_000), 0);
        assert_eq!(
            majority_heard_at(&[1], 1, &HashMap::new(), 10_000),
            10_000,
            "alone is a majority"
        );
    }
}
