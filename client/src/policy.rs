//! Sans-IO decisions the client makes about failures: how long to back off
//! before a retry, and whether a broker's circuit is open. Both take `now`
//! and randomness as inputs, so they are tested deterministically.

use std::time::Duration;

/// Retries with exponential backoff and full jitter: before retry `n`
/// (from 1) wait a uniformly random time in `[0, min(max, initial·2^(n-1))]`.
/// Full jitter spreads clients that failed together (a leader change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts in all, the first included (at least 1). `NotLeader`
    /// answers do not count (the cluster is electing or handing over):
    /// `deadline_ms` bounds those.
    pub attempts_max: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// An overall limit on one operation, retries included.
    pub deadline_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 10,
            backoff_initial_ms: 20,
            backoff_max_ms: 2_000,
            deadline_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 = the first retry), given a
    /// uniform random `unit` in [0, 1).
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self
            .backoff_initial_ms
            .saturating_mul(1u64 << retry.saturating_sub(1).min(32))
            .min(self.backoff_max_ms);
        Duration::from_millis((ceiling as f64 * unit.clamp(0.0, 1.0)) as u64)
    }
}

/// When a broker's circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures_max: u32,
    /// How long it stays open before one trial request is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_max: 5,
            open_ms: 1_000,
        }
    }
}

/// A per-broker circuit breaker: closed (requests flow), open (requests fail
/// at once), half-open (one trial request; its outcome closes or reopens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    cfg: BreakerConfig,
    failures: u32,
    state: BreakerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { trial_in_flight: bool },
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a request may go now. In half-open, only the first caller
    /// gets through until its outcome is recorded.
    pub fn admit(&mut self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { trial_in_flight } => {
                if trial_in_flight {
                    false
                } else {
                    self.state = BreakerState::HalfOpen {
                        trial_in_flight: true,
                    };
                    true
                }
            }
        }
    }

    /// How long until `admit` could let a request through again: the rest
    /// of the open period, zero otherwise. A caller refused by an open
    /// circuit waits this long rather than spending its retries at once.
    pub fn reopens_in_ms(&self, now_ms: u64) -> u64 {
        match self.state {
            BreakerState::Open { until_ms } => until_ms.saturating_sub(now_ms),
            _ => 0,
        }
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// A transport failure (not a broker's typed error, which proves the
    /// broker is alive).
    pub fn on_failure(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let reopen = matches!(self.state, BreakerState::HalfOpen { .. });
        if reopen || self.failures >= self.cfg.failures_max {
            self.state = BreakerState::Open {
                until_ms: now_ms + self.cfg.open_ms,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_jitters_below_it() {
        let p = RetryPolicy {
            attempts_max: 10,
            backoff_initial_ms: 10,
            backoff_max_ms: 100,
            deadline_ms: 1000,
        };
        assert_eq!(p.backoff(1, 0.999_999).as_millis(), 9);
        assert_eq!(p.backoff(3, 0.999_999).as_millis(), 39);
        assert_eq!(p.backoff(10, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(60, 0.5).as_millis(), 50);
        assert_eq!(p.backoff(4, 0.0).as_millis(), 0);
    }

    #[test]
    fn breaker_opens_after_failures_then_lets_one_trial_through() {
        let mut b = Breaker::new(BreakerConfig {
            failures_max: 3,
            open_ms: 100,
        });
        for t in 0..2 {
            assert!(b.admit(t));
            b.on_failure(t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(2);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 102 });
        assert!(!b.admit(50));
        assert_eq!(
            b.reopens_in_ms(50),
            52,
            "a refused caller waits out the open period"
        );
        assert_eq!(b.reopens_in_ms(150), 0);
        assert!(b.admit(102), "half-open admits a trial");
        assert_eq!(b.reopens_in_ms(102), 0);
        assert!(!b.admit(103), "only one trial at a time");
        b.on_failure(104);
        assert_eq!(
            b.state(),
            BreakerState::Open { until_ms: 204 },
            "a failed trial reopens"
        );
        assert!(b.admit(204));
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit(205) && b.admit(205));
    }
}
