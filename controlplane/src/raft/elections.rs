//! Standing again after a split vote.
//!
//! openraft 0.9 draws a node's election timeout once per process and
//! checks it only on its tick, so two candidates that split a vote stand
//! again in lockstep and can split round after round (a control-plane
//! failover took over 5 s this way). Here a candidate still without a
//! leader after a freshly drawn random wait stands again, off openraft's
//! tick, so a second split needs a second coincidence. A candidate a peer
//! refused for having a shorter log does not: it cannot win, and standing
//! would take the term the up-to-date peer needs. The shard groups'
//! elections loop in `felix-replication` does the same for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::types::Raft;

/// How often a node looks at its own election state.
pub const CHECK_MS: u64 = 100;

/// Milliseconds on a monotonic clock private to this process, never 0.
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether a candidate since `candidate_since_ms` should stand again at
/// `now_ms`: it has waited its `wait_ms`, and no peer refused it for a
/// longer log (at `outvoted_at_ms`, 0: never) within two leases.
pub fn restand(
    now_ms: u64,
    candidate_since_ms: u64,
    wait_ms: u64,
    outvoted_at_ms: u64,
    lease_ms: u64,
) -> bool {
    let behind = outvoted_at_ms != 0 && now_ms.saturating_sub(outvoted_at_ms) < 2 * lease_ms;
    !behind && now_ms.saturating_sub(candidate_since_ms) > wait_ms
}

/// The wait before standing again, from a random number: two checks, plus
/// up to half a lease, so two candidates rarely draw the same.
pub fn split_wait_ms(lease_ms: u64, random: u64) -> u64 {
    2 * CHECK_MS + random % (lease_ms / 2).max(1)
}

/// Runs until the group shuts down. `outvoted` is when a peer last refused
/// this node's vote for a longer log (set by the network).
pub async fn restand_split_votes(raft: Raft, outvoted: Arc<AtomicU64>, lease_ms: u64) {
    let draw = || split_wait_ms(lease_ms, random_u64());
    let (mut since, mut term, mut wait) = (None::<u64>, 0u64, draw());
    loop {
        tokio::time::sleep(Duration::from_millis(CHECK_MS)).await;
        let (state, current_term) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_term)
        };
        let now = mono_ms();
        // openraft's own timer stood in a new term: count from there.
        if current_term != term {
            term = current_term;
            since = Some(now);
        }
        match state {
            openraft::ServerState::Shutdown => return,
            openraft::ServerState::Candidate => {
                let s = *since.get_or_insert(now);
                if restand(now, s, wait, outvoted.load(Ordering::Acquire), lease_ms) {
                    since = Some(now);
                    wait = draw();
                    tracing::debug!(term, "no leader after a split vote: standing again");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                }
            }
            _ => since = None,
        }
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random source works");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_stands_again_only_after_its_wait() {
        assert!(!restand(1_000, 800, 300, 0, 1_000));
        assert!(!restand(1_100, 800, 300, 0, 1_000));
        assert!(restand(1_101, 800, 300, 0, 1_000));
    }

    #[test]
    fn a_candidate_refused_for_a_shorter_log_waits_two_leases() {
        // Refused at 1 000 ms by a peer with a longer log: not within 2 s.
        assert!(!restand(2_999, 0, 300, 1_000, 1_000));
        assert!(restand(3_000, 0, 300, 1_000, 1_000));
    }

    #[test]
    fn waits_are_spread_over_half_a_lease_past_two_checks() {
        let lease = 1_000;
        let waits: std::collections::BTreeSet<u64> = (0..1_000).map(|r| split_wait_ms(lease, r)).collect();
        assert_eq!(waits.first(), Some(&(2 * CHECK_MS)));
        assert_eq!(waits.last(), Some(&(2 * CHECK_MS + lease / 2 - 1)));
        assert_eq!(waits.len() as u64, lease / 2);
    }
}
