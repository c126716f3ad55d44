//! The load shapes every driver shares: closed-loop workers that each do
//! one operation at a time, and a clock for publish→deliver latency.

use std::future::Future;
use std::sync::OnceLock;
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
}

impl Figure {
    pub fn from_hist(rate: f64, h: &Histogram<u64>, errors: u64) -> Figure {
        let q = |p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1e6);
        Figure {
            rate,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            errors,
        }
    }

    pub fn rate_only(rate: f64) -> Figure {
        Figure {
            rate,
            p50_ms: None,
            p99_ms: None,
            errors: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    Put,
    Get,
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
    let start = Instant::now();
    let end = start + secs;
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
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(!all.is_empty(), "no operation succeeded ({errors} failed)");
    Ok(Figure::from_hist(all.len() as f64 / took, &all, errors))
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
