//! How many of a broker's groups wait on the disk at once.
//!
//! A vote and an `always` append each end in an fsync run on tokio's
//! blocking pool. When a thousand groups elect together (a stream of
//! 1,024 shards created, a broker's peers failing over its leaderships),
//! each would take a thread of its own: measured, 500 threads per broker
//! sat in fsync at once, the load average passed 30 and elections took
//! longer than their timeouts, so they began again and asked for more.
//! The disk completes fsyncs no faster for being asked 500 at a time, so
//! a broker runs at most [`DISK_WAITS_PARALLEL_MAX`] and the rest queue
//! without a thread.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Blocking disk waits one broker's groups run at once: enough to keep a
/// device's queue busy (on this project's 2-core virtual machine, in-place
/// fdatasyncs of distinct files: 5,400/s from one thread, 6,600/s from 16,
/// 9,000/s from 64, 4,300/s from 256), few enough that a burst of
/// elections costs a bounded number of threads.
pub const DISK_WAITS_PARALLEL_MAX: usize = 64;

/// The broker's slots for blocking disk waits, shared by its groups.
#[derive(Debug, Clone)]
pub struct DiskWaits(Arc<Semaphore>);

impl Default for DiskWaits {
    fn default() -> Self {
        DiskWaits(Arc::new(Semaphore::new(DISK_WAITS_PARALLEL_MAX)))
    }
}

impl DiskWaits {
    /// Runs `f` on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let slot = self
            .0
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let r = f();
            drop(slot);
            r
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_limit_run_at_once() {
        let disk = DiskWaits::default();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut waits = tokio::task::JoinSet::new();
        for _ in 0..4 * DISK_WAITS_PARALLEL_MAX {
            let (disk, running, most) = (disk.clone(), running.clone(), most.clone());
            waits.spawn(async move {
                disk.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            });
        }
        while let Some(w) = waits.join_next().await {
            w.expect("task").expect("blocking call");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= DISK_WAITS_PARALLEL_MAX, "{most} ran at once");
        assert!(most > 1, "the waits ran one at a time");
    }
}
