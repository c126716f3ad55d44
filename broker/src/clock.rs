//! The clock a broker reads: the wall clock, or (fault injection) the
//! wall clock moved by an offset a test writes to a file.

use std::sync::Arc;

/// The clock a node reads; tests inject one to move TTLs and leases.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock, in ms since the epoch.
pub fn system_clock() -> Clock {
    Arc::new(felix_log::now_ms)
}

/// How often a skewed clock re-reads its offset file.
const SKEW_POLL_MS: u64 = 50;

/// The wall clock plus an offset (ms, may be negative) read from `path`
/// and re-read every [`SKEW_POLL_MS`]: the fault-injection suite moves a
/// live broker's clock this way (`FELIX_CLOCK_SKEW_FILE`). A missing or
/// unreadable file means no offset, so the clock never stops.
pub fn skewed_clock(path: std::path::PathBuf) -> Clock {
    use std::sync::atomic::{AtomicI64, Ordering};
    let offset = Arc::new(AtomicI64::new(0));
    let read = |path: &std::path::Path| -> i64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    offset.store(read(&path), Ordering::Release);
    let o = offset.clone();
    std::thread::Builder::new()
        .name("clock-skew".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(SKEW_POLL_MS));
            o.store(read(&path), Ordering::Release);
        })
        .expect("spawn the clock-skew thread");
    Arc::new(move || felix_log::now_ms() + offset.load(Ordering::Acquire))
}
