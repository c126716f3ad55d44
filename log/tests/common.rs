//! Helpers shared by the integration tests.
#![allow(dead_code)]

use felix_log::LogConfig;

/// A small-segment configuration so tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        batch_bytes_max: 2048,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// A data batch of the given values, keyed by their position.
pub fn batch_of(values: &[Vec<u8>], ts: i64) -> Vec<u8> {
    felix_testkit::Batch::of(values)
        .ts(ts)
        .keyed_by_position()
        .build()
}

/// Deterministic payload for entry `n` (so a checker can recompute it).
pub fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
