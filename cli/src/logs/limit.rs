//! How many lines one place in the code may log: a broker whose peer is
//! overloaded sees the same RPC failure in every one of thousands of
//! groups, and writing each line (formatting, then tens of MB/s to the
//! log) took the CPU the broker needed to recover. Past
//! [`LINES_PER_SECOND_MAX`] a second, a call site's lines are counted
//! instead of written, and the count is logged every
//! [`SUPPRESSED_REPORT_MS`] (as Kafka and Redpanda write one line per
//! peer, not one per partition).

use std::collections::HashMap;

use tracing::callsite::Identifier;

/// Lines one call site writes a second at most.
pub const LINES_PER_SECOND_MAX: u32 = 20;
/// How often the suppressed counts are reported.
pub const SUPPRESSED_REPORT_MS: u64 = 10_000;
/// Call sites remembered at most (the code has a few thousand; past it,
/// lines from new places are written unlimited).
pub const CALLSITES_MAX: usize = 16_384;

#[derive(Debug, Default)]
struct Window {
    second: u64,
    written: u32,
    suppressed: u64,
}

/// What each call site wrote in its current second, and suppressed since
/// the last report. Time comes in (`now_ms`): no clock inside.
/// Keyed by call site (`K`: tracing's identifier in the process, anything
/// hashable in tests).
#[derive(Debug)]
pub struct Limiter<K = Identifier> {
    sites: HashMap<K, (Window, Place)>,
}

impl<K> Default for Limiter<K> {
    fn default() -> Self {
        Limiter {
            sites: HashMap::new(),
        }
    }
}

/// Where a line comes from: its target (module) and line number.
pub type Place = (&'static str, u32);

impl<K: std::hash::Hash + Eq> Limiter<K> {
    /// Whether a line from `site` (described as `what`) at `now_ms` is
    /// written.
    pub fn admit(&mut self, site: K, what: Place, now_ms: u64) -> bool {
        if !self.sites.contains_key(&site) && self.sites.len() >= CALLSITES_MAX {
            return true;
        }
        let (w, _) = self
            .sites
            .entry(site)
            .or_insert_with(|| (Window::default(), what));
        let second = now_ms / 1_000;
        if w.second != second {
            w.second = second;
            w.written = 0;
        }
        if w.written < LINES_PER_SECOND_MAX {
            w.written += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// The call sites that suppressed lines since the last call, with how
    /// many; their counts start again.
    pub fn take_suppressed(&mut self) -> Vec<(Place, u64)> {
        let mut out: Vec<_> = self
            .sites
            .values_mut()
            .filter(|(w, _)| w.suppressed > 0)
            .map(|(w, what)| (*what, std::mem::take(&mut w.suppressed)))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_writes_its_budget_each_second_and_the_rest_is_counted() {
        let mut l = Limiter::default();
        let written = (0..100).filter(|_| l.admit("a", ("a", 1), 5_000)).count();
        assert_eq!(written, LINES_PER_SECOND_MAX as usize);
        // Another place is not held back by the first.
        assert!(l.admit("b", ("b", 2), 5_999));
        // The next second has a fresh budget.
        assert!(l.admit("a", ("a", 1), 6_000));
        assert_eq!(
            l.take_suppressed(),
            vec![(("a", 1), 100 - u64::from(LINES_PER_SECOND_MAX))]
        );
        // Reported once: the count starts again.
        assert!(l.take_suppressed().is_empty());
    }
}
