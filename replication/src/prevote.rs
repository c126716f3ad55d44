//! Whether a replica would vote for a candidate, asked before the
//! candidate raises its term (pre-vote, Raft thesis §9.6).
//!
//! Openraft 0.9 has no pre-vote: a replica that stands raises its term
//! first, and the higher term unseats a live leader when it next hears of
//! it. A broker back from a restart behind thousands of groups, or one so
//! loaded that AppendEntries arrive late, stood in group after group, each
//! election adding the RPCs and the load that made the next group's
//! heartbeats late (seen: 1,229 of 3,072 shards led after 300 s). Felix
//! decides every election itself (openraft's timer stays off) and asks
//! first: a replica stands only if a majority, itself included, has not
//! heard a leader for an election timeout and holds no longer log.

use serde::{Deserialize, Serialize};

use crate::types::LogId;

/// What a candidate tells the replicas it asks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreVote {
    /// Its last log entry.
    pub last_log: Option<LogId>,
}

/// What the asked replica knows of its group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Here {
    pub(crate) leads: bool,
    /// A leader stepping aside for another replica (a hand-over).
    pub(crate) yielding: bool,
    /// When a leader last reached it ([`crate::clock::heard_now`] clock;
    /// 0: never), its broker's beats for a quiet group included; a replica
    /// counts its own start as heard, since it cannot know yet.
    pub(crate) heard: u64,
    pub(crate) last_log: Option<LogId>,
}

/// Whether `here` would grant `ask` at `now`: not while it leads (unless it
/// steps aside), nor while it
/// heard a leader within `lease_ms` (the wait openraft's vote makes), and
/// only to a log at least as up to date as its own (the vote's own rule).
pub(crate) fn grants(here: &Here, ask: &PreVote, now: u64, lease_ms: u64) -> bool {
    // A leader refuses even when its quorum's acknowledgements are old: a
    // quiet one sends no heartbeats, and a loaded one hears them late
    // (granting then unseated live leaders by the thousand in a restart).
    if here.leads {
        if !here.yielding {
            return false;
        }
    } else if here.heard != 0 && now.saturating_sub(here.heard) < lease_ms {
        return false;
    }
    ask.last_log >= here.last_log
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    fn log(term: u64, index: u64) -> Option<crate::types::LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(heard: u64) -> Here {
        Here {
            leads: false,
            yielding: false,
            heard,
            last_log: log(3, 10),
        }
    }

    const TIMEOUT_MS: u64 = 800;

    #[test]
    fn a_follower_that_heard_its_leader_lately_refuses() {
        let ask = PreVote { last_log: log(3, 10) };
        assert!(!grants(&follower(10_000), &ask, 10_799, TIMEOUT_MS));
        assert!(grants(&follower(10_000), &ask, 10_800, TIMEOUT_MS));
        // Never heard one since it started.
        assert!(grants(&follower(0), &ask, 10_000, TIMEOUT_MS));
    }

    #[test]
    fn a_shorter_or_older_log_is_refused_as_the_vote_would() {
        let here = follower(0);
        assert!(!grants(&here, &PreVote { last_log: log(3, 9) }, 1, TIMEOUT_MS));
        assert!(!grants(&here, &PreVote { last_log: log(2, 50) }, 1, TIMEOUT_MS));
        assert!(!grants(&here, &PreVote { last_log: None }, 1, TIMEOUT_MS));
        // A later term with a shorter log is more up to date.
        assert!(grants(&here, &PreVote { last_log: log(4, 2) }, 1, TIMEOUT_MS));
    }

    #[test]
    fn a_leader_refuses_unless_it_steps_aside() {
        let ask = PreVote { last_log: log(3, 10) };
        let leader = Here {
            leads: true,
            ..follower(0)
        };
        assert!(!grants(&leader, &ask, 1, TIMEOUT_MS));
        let yielding = Here {
            yielding: true,
            ..leader
        };
        assert!(grants(&yielding, &ask, 1, TIMEOUT_MS));
    }
}
