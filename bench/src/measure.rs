//! What every benchmark's workers share: the latency histogram, and
//! joining the workers into one histogram and one error count.

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

/// Latency in nanoseconds, 1 ns to 60 s.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Waits for every worker and merges their latencies and error counts.
pub async fn join_workers(
    tasks: Vec<JoinHandle<(Histogram<u64>, u64)>>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut all = hist();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        all.add(h)?;
        errors += e;
    }
    Ok((all, errors))
}
