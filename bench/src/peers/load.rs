//! The load shapes every driver shares: closed-loop workers that each do
//! one operation at a time, and a clock for publish→deliver latency.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Operations (or deliveries, records) per second.
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    /// CPU time (user + system) of the server processes per operation,
    /// in microseconds: the broker's or the peer's, not the load
    /// generator's.
    pub server_cpu_us_per_op: Option<f64>,
}

impl Figure {
    pub fn rate_only(rate: f64) -> Figure {
        Figure {
            rate,
            p50_ms: None,
            p99_ms: None,
            errors: 0,
            server_cpu_us_per_op: None,
        }
    }
}

/// The server processes (a Felix broker, or a peer) whose CPU the next
/// figures count; set before each side of a row runs.
static WATCHED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn watch(pids: Vec<u32>) {
    *WATCHED.lock().unwrap_or_else(|e| e.into_inner()) = pids;
}

/// The watched processes' CPU time so far; `None` when nothing is watched
/// or one of them cannot be read.
fn watched_cpu() -> Option<Duration> {
    let pids = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| crate::cluster::cpu_time(*p).ok())
        .sum::<Option<Duration>>()
}

/// The measured part of a workload: its wall time and the servers' CPU
/// over it.
pub struct Window {
    start: Instant,
    cpu: Option<Duration>,
}

impl Window {
    pub fn open() -> Window {
        Window {
            cpu: watched_cpu(),
            start: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The figure for `ops` operations done since the window opened, with
    /// latencies from `h`.
    pub fn figure(&self, ops: u64, h: Option<&Histogram<u64>>, errors: u64) -> Figure {
        let took = self.start.elapsed().as_secs_f64();
        let cpu = match (self.cpu, watched_cpu()) {
            (Some(a), Some(b)) if ops > 0 => Some(b.saturating_sub(a).as_secs_f64() * 1e6 / ops as f64),
            _ => None,
        };
        let q = |p: f64| {
            h.filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(p) as f64 / 1e6)
        };
        Figure {
            rate: ops as f64 / took,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            errors,
            server_cpu_us_per_op: cpu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    Put,
    /// Gets of a filled key space: every key is found.
    Get,
    /// Gets of keys never written: every one is answered absent.
    GetMiss,
}

/// A key the cache workloads never write, for [`CacheOp::GetMiss`].
pub fn missing_key(i: u64) -> String {
    format!("miss-{i:08}")
}

pub use crate::measure::hist;

/// `n` workers for `secs`, each calling `op(worker)` and awaiting it before
/// the next: the rate is completed operations per second, the latency each
/// call's.
pub async fn closed_loop<F, Fut>(n: usize, secs: Duration, op: F) -> anyhow::Result<Figure>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let window = Window::open();
    let end = Instant::now() + secs;
    let mut tasks = Vec::with_capacity(n);
    for w in 0..n {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match op(w).await {
                    Ok(()) => h.record(t.elapsed().as_nanos().max(1) as u64).expect("in bounds"),
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let (all, errors) = crate::measure::join_workers(tasks).await?;
    anyhow::ensure!(!all.is_empty(), "no operation succeeded ({errors} failed)");
    Ok(window.figure(all.len(), Some(&all), errors))
}

/// Calls `send` `rate` times a second for `secs` on the calling thread,
/// which must be one that may block: tokio's timers tick in whole
/// milliseconds, too coarse to space 10,000 sends a second. Send `n` is
/// due at `n / rate` seconds; one that is late goes at once, so the rate
/// holds. Returns the sends made.
pub fn paced(rate: u32, secs: Duration, mut send: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<u64> {
    anyhow::ensure!(rate > 0, "a pace of 0 a second");
    let gap_ns = 1_000_000_000 / u64::from(rate);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let due = Duration::from_nanos(gap_ns * n);
        if due >= secs {
            return Ok(n);
        }
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        send()?;
        n += 1;
    }
}

/// Nanoseconds on a clock private to this process (publisher and
/// subscribers run in it, so their stamps compare).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// A payload of `size` bytes (at least 8) that starts with the time now.
pub fn stamped(size: usize) -> Vec<u8> {
    let mut v = vec![b's'; size.max(8)];
    v[..8].copy_from_slice(&now_ns().to_le_bytes());
    v
}

/// How long ago `payload` was stamped (0 if it carries no stamp).
pub fn age_ns(payload: &[u8]) -> u64 {
    match payload.get(..8) {
        Some(b) => now_ns().saturating_sub(u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        None => 0,
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The key of number `i` in a key space.
pub fn key(i: u64) -> String {
    format!("key-{i:08}")
}

/// A cheap per-worker random sequence.
pub fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs `op(i)` for every `i` below `count`, `n` at a time.
pub async fn each<F, Fut>(n: usize, count: u64, op: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Waits until `count` reaches `want`, at most `max` (subscribers catching
/// up after the publisher stopped).
pub async fn await_count(count: &std::sync::atomic::AtomicU64, want: u64, max: Duration) {
    let deadline = Instant::now() + max;
    while count.load(std::sync::atomic::Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_divides_the_watched_processes_cpu_by_the_operations() {
        watch(vec![std::process::id()]);
        let w = Window::open();
        let before = watched_cpu().expect("our own CPU is readable");
        // Busy until the process has spent 200 ms more CPU.
        let mut x = 1u64;
        while watched_cpu().expect("readable") < before + Duration::from_millis(200) {
            for _ in 0..10_000 {
                x = next_rand(&mut x).max(1);
            }
        }
        assert_ne!(x, 0);
        let f = w.figure(1000, None, 0);
        let us = f.server_cpu_us_per_op.expect("our own CPU is readable");
        // At least 200 ms over 1000 operations; at most what every core
        // could have spent meanwhile (other tests run in this process).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let most = (w.elapsed().as_secs_f64() * cores + 0.02) * 1e3;
        assert!((200.0..=most).contains(&us), "{us} µs per op, at most {most}");
        watch(Vec::new());
        assert_eq!(w.figure(1000, None, 0).server_cpu_us_per_op, None);
    }

    #[test]
    fn a_pace_makes_the_sends_due_in_the_window_each_no_earlier_than_due() {
        let start = Instant::now();
        let mut at = Vec::new();
        let n = paced(1_000, Duration::from_millis(30), || {
            at.push(start.elapsed());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 30);
        assert_eq!(at.len(), 30);
        for (i, t) in at.iter().enumerate() {
            assert!(*t >= Duration::from_millis(i as u64), "send {i} at {t:?}");
        }
        assert!(paced(0, Duration::from_millis(1), || Ok(())).is_err());
        let failing = paced(1_000, Duration::from_millis(5), || anyhow::bail!("refused"));
        assert!(failing.is_err(), "a failed send ends the pace");
    }
}
