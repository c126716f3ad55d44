//! The background task that keeps keyed shards compacted and their expired
//! keys swept: one thread per index, visiting every registered shard each
//! interval. The broker registers a shard when it starts hosting it and
//! removes it when it stops; everything the thread does is also callable
//! directly ([`Index::compact_shard`], [`Index::sweep_expired`]).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use felix_log::{ShardId, SharedLog};

use crate::compact::{CompactionConfig, CompactionReport};
use crate::db::Index;
use crate::ttl::SWEEP_KEYS_MAX;

/// Sweeps per shard per round, so one shard full of expired keys cannot
/// starve the others.
pub const SWEEPS_PER_ROUND_MAX: usize = 16;

/// What the task has done so far (for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceStats {
    pub rounds: u64,
    pub keys_swept: u64,
    pub compactions: u64,
    pub segments_rewritten: u64,
    pub records_dropped: u64,
    pub errors: u64,
    /// Shards whose work panicked (each dropped from the rounds).
    pub panics: u64,
    pub last_report: Option<CompactionReport>,
}

type Shards = Arc<Mutex<HashMap<ShardId, (Arc<SharedLog>, CompactionConfig)>>>;

/// Handle of the background task; dropping it stops the thread.
#[derive(Debug)]
pub struct Maintenance {
    shards: Shards,
    stats: Arc<Mutex<MaintenanceStats>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the task over `index`, a round every `interval`. `now_ms`
    /// is the clock (injectable for tests).
    pub fn start(
        index: Arc<Index>,
        interval: Duration,
        now_ms: impl Fn() -> i64 + Send + 'static,
    ) -> std::io::Result<Maintenance> {
        let shards: Shards = Arc::default();
        let stats = Arc::new(Mutex::new(MaintenanceStats::default()));
        let (tx, rx) = mpsc::channel::<()>();
        let (s, st) = (shards.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("felix-index-maintenance".into())
            .spawn(move || loop {
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => round(&index, &s, &st, now_ms()),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Maintenance {
            shards,
            stats,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Keeps `shard` (a keyed shard over `log`) compacted and swept.
    pub fn register(&self, shard: ShardId, log: Arc<SharedLog>, config: CompactionConfig) {
        lock(&self.shards).insert(shard, (log, config));
    }

    pub fn unregister(&self, shard: ShardId) {
        lock(&self.shards).remove(&shard);
    }

    pub fn stats(&self) -> MaintenanceStats {
        lock(&self.stats).clone()
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn round(index: &Index, shards: &Shards, stats: &Mutex<MaintenanceStats>, now_ms: i64) {
    let work: Vec<_> = lock(shards)
        .iter()
        .map(|(s, (l, c))| (*s, l.clone(), *c))
        .collect();
    for (shard, log, config) in work {
        // One thread serves every shard of the broker: a panic in one
        // shard's work (a broken invariant) must not end compaction and
        // TTL sweeps for all of them. That shard is dropped from the
        // rounds, loudly; the others go on.
        let one = std::panic::AssertUnwindSafe(|| maintain(index, stats, shard, &log, &config, now_ms));
        if let Err(panic) = std::panic::catch_unwind(one) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            tracing::error!(%shard, why, "maintenance of the shard panicked: its compaction and TTL sweeps stop until it is registered again");
            lock(shards).remove(&shard);
            let mut st = lock(stats);
            st.errors += 1;
            st.panics += 1;
        }
    }
    lock(stats).rounds += 1;
}

/// One round's work on one shard: TTL sweeps, then compaction.
fn maintain(
    index: &Index,
    stats: &Mutex<MaintenanceStats>,
    shard: ShardId,
    log: &SharedLog,
    config: &CompactionConfig,
    now_ms: i64,
) {
    {
        for _ in 0..SWEEPS_PER_ROUND_MAX {
            match index.sweep_expired(shard, now_ms, SWEEP_KEYS_MAX) {
                Ok(s) => {
                    lock(stats).keys_swept += s.keys_removed as u64;
                    if !s.more {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(%shard, %err, "TTL sweep failed");
                    lock(stats).errors += 1;
                    break;
                }
            }
        }
        match index.compact_shard(shard, log, config, now_ms, false) {
            Ok(r) => {
                let mut st = lock(stats);
                if r.skipped.is_none() {
                    st.compactions += 1;
                    st.segments_rewritten += r.segments_rewritten as u64;
                    st.records_dropped += r.records_dropped;
                    tracing::info!(%shard, segments = r.segments_rewritten, dropped = r.records_dropped,
                        before = r.bytes_before, after = r.bytes_after, "compacted");
                }
                st.last_report = Some(r);
            }
            Err(err) => {
                tracing::warn!(%shard, %err, "compaction failed");
                lock(stats).errors += 1;
            }
        }
    }
}
