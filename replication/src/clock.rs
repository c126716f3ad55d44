//! The clocks and the one random source of elections, kept apart so that
//! every module may read them without importing one another.

/// Milliseconds on a monotonic clock private to this process, never 0.
pub(crate) fn heard_now() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// A number below `n` that differs between replicas and calls (election
/// jitter; not for anything secret).
pub(crate) fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % n.max(1)
}
