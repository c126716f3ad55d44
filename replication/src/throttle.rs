//! How fast a broker sends catch-up traffic (entries and snapshots for a
//! replica that is still a learner: a move's or a join's new replica),
//! sans-IO: bytes and `now` in, how long to wait out.
//!
//! A token bucket that may go into debt: a send goes once the bytes before
//! it are paid for, however large it is, and the next one waits for it.
//! So an RPC at the hard size limit still goes out, and by any time `T`
//! the bytes sent stay within `rate × T + burst + one send`. The wait
//! falls between sends, not inside one: openraft gives an AppendEntries
//! one heartbeat interval, and a sender that is owed longer reports the
//! peer unreachable (openraft backs off and asks again). Voters' traffic
//! is never throttled: a write's quorum must not wait for a move.

/// The catch-up rate when none is configured: about what Redpanda allows a
/// learner's recovery by default, well under a disk's or a 10 Gb/s link's.
pub const CATCHUP_BYTES_PER_S_DEFAULT: u64 = 100 << 20;
/// The least a configuration may set: below it a shard of one full segment
/// would take hours to move.
pub const CATCHUP_BYTES_PER_S_MIN: u64 = 64 << 10;
/// The most a configuration may set (no link here is faster).
pub const CATCHUP_BYTES_PER_S_MAX: u64 = 10 << 30;
/// How long the bucket may save up for when idle: a burst of at most this
/// much of a second's rate.
pub const BURST_MS: u64 = 100;
/// The bucket never saves less than this, so small rates still send one
/// ordinary batch without waiting.
pub const BURST_BYTES_MIN: u64 = 64 << 10;

/// A token bucket in milli-bytes (a byte per second for a millisecond is
/// one milli-byte), so refills are exact in integers.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate_bytes_per_s: u64,
    burst_millibytes: i128,
    /// Negative: debt the sender is waiting out.
    tokens_millibytes: i128,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket at `rate_bytes_per_s` (clamped to the allowed range).
    pub fn new(rate_bytes_per_s: u64, now_ms: u64) -> Bucket {
        let rate = rate_bytes_per_s.clamp(CATCHUP_BYTES_PER_S_MIN, CATCHUP_BYTES_PER_S_MAX);
        let burst = (rate * BURST_MS / 1000).max(BURST_BYTES_MIN);
        Bucket {
            rate_bytes_per_s: rate,
            burst_millibytes: i128::from(burst) * 1000,
            tokens_millibytes: i128::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// How long, at `now_ms`, until the bytes already sent are paid for
    /// (0: the next send may go at once).
    pub fn debt_ms(&mut self, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let refill = i128::from(elapsed) * i128::from(self.rate_bytes_per_s);
        self.tokens_millibytes = (self.tokens_millibytes + refill).min(self.burst_millibytes);
        if self.tokens_millibytes >= 0 {
            return 0;
        }
        let rate = i128::from(self.rate_bytes_per_s);
        let wait = (-self.tokens_millibytes + rate - 1) / rate;
        u64::try_from(wait).unwrap_or(u64::MAX)
    }

    /// Counts `bytes` as sent: the next send waits until they are paid
    /// for.
    pub fn charge(&mut self, bytes: u64) {
        self.tokens_millibytes -= i128::from(bytes) * 1000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst(rate: u64) -> u64 {
        (rate * BURST_MS / 1000).max(BURST_BYTES_MIN)
    }

    #[test]
    fn a_burst_goes_at_once_and_what_follows_waits_for_the_rate() {
        let rate = 1 << 20;
        let mut b = Bucket::new(rate, 0);
        assert_eq!(b.debt_ms(0), 0);
        b.charge(burst(rate));
        assert_eq!(b.debt_ms(0), 0, "a full bucket sends its burst at once");
        // A send larger than the bucket goes, and the next waits for it.
        b.charge(rate);
        assert_eq!(b.debt_ms(0), 1000);
        assert_eq!(b.debt_ms(500), 500);
        assert_eq!(b.debt_ms(1000), 0);
    }

    #[test]
    fn by_any_time_the_bytes_stay_within_rate_times_time_plus_burst_and_one_send() {
        let rate = 3 << 20;
        let send = 300 << 10;
        let mut b = Bucket::new(rate, 0);
        let mut now = 0u64;
        let mut sent = 0u64;
        // A sender that waits out its debt, sends, and repeats.
        for _ in 0..1000 {
            now += b.debt_ms(now);
            b.charge(send);
            sent += send;
            assert!(
                sent <= rate * now / 1000 + burst(rate) + send,
                "{sent} bytes by {now} ms"
            );
        }
        // And it is not held back more than the rate asks.
        now += b.debt_ms(now);
        assert!(sent >= rate * now / 1000, "{sent} bytes by {now} ms");
    }

    #[test]
    fn idle_time_saves_no_more_than_the_burst() {
        let rate = 1 << 20;
        let mut b = Bucket::new(rate, 0);
        b.charge(burst(rate));
        // An hour idle refills only the burst.
        assert_eq!(b.debt_ms(3_600_000), 0);
        b.charge(burst(rate));
        assert_eq!(b.debt_ms(3_600_000), 0);
        b.charge(rate / 10);
        assert_eq!(b.debt_ms(3_600_000), 100);
    }

    #[test]
    fn rates_are_clamped_and_a_clock_going_back_refills_nothing() {
        assert_eq!(Bucket::new(0, 0).rate_bytes_per_s(), CATCHUP_BYTES_PER_S_MIN);
        assert_eq!(
            Bucket::new(u64::MAX, 0).rate_bytes_per_s(),
            CATCHUP_BYTES_PER_S_MAX
        );
        let mut b = Bucket::new(CATCHUP_BYTES_PER_S_MIN, 10_000);
        b.charge(BURST_BYTES_MIN + 1024);
        assert!(b.debt_ms(5_000) > 0, "an earlier now refills nothing");
    }
}
