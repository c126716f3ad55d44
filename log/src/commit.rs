//! A log shared between threads, with the durability mode applied.
//!
//! Group commit: appenders copy their batch under the log lock (a memcpy),
//! then wait for durability. Whoever finds no fsync running becomes the
//! syncer: it notes the last appended index, fsyncs *without* the log lock,
//! publishes the new durable index and wakes everyone it covers. Appenders
//! that arrive during an fsync are covered by the next one, so one fsync
//! serves every append that was waiting for it.
//!
//! Under load the syncer first lingers briefly (see [`linger_before_sync`])
//! so that one fsync covers more appends: on a disk shared by several logs
//! (and, on one machine, by several brokers) the number of fsyncs, not
//! their size, is what runs out.
//!
//! A caller on an async runtime waits without a thread of its own
//! ([`SharedLog::durable`]): it parks a waker, and only the one that finds
//! no fsync running is handed the [`SyncDuty`] to run on a blocking thread.
//! That thread keeps fsyncing while wakers wait beyond what is durable, so
//! under load one thread hand-off serves many appends instead of two per
//! append (a blocking-pool round trip each), but at most
//! [`SYNCS_PER_DUTY_MAX`] fsyncs: then it hands the duty back to a waiter,
//! so a caller that runs duties under a shared limit (the broker's disk
//! slots) sees the next one queue for a slot like any other fsync instead
//! of one busy log holding its slot for as long as the load lasts.
//!
//! `interval` durability: one flusher thread for the whole process fsyncs
//! each such log when its interval is due and it has new entries
//! ([`Flusher`]), so thousands of shards cost one thread.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::config::{Durability, LogConfig};
use crate::error::{LogError, Result};
use crate::log::{AppendOutcome, Log, OpenReport};
use crate::types::{RaftIndex, RaftTerm};

#[derive(Debug, Default)]
struct SyncState {
    /// Highest Raft index known durable; `None` before the first.
    durable: Option<RaftIndex>,
    syncing: bool,
    failed: bool,
    /// fsyncs performed (for benchmarks and tests).
    syncs: u64,
    closing: bool,
    /// Entries the previous fsync covered, and how long it took.
    last_covered: u64,
    last_took: Duration,
    /// Async waiters: the index each waits for and its waker. One per
    /// pending [`Durable`] future, so bounded by the appends in flight,
    /// which the caller bounds (the broker's in-flight bytes per shard).
    wakers: Vec<(RaftIndex, Waker)>,
}

/// fsyncs one [`SyncDuty`] runs before it hands the duty back: enough that
/// the hand-off (a waker and a blocking-pool round trip) stays a small part
/// of the fsyncs' time, few enough that a log under steady load gives its
/// thread back within a few milliseconds of fsyncs.
pub const SYNCS_PER_DUTY_MAX: u32 = 16;

/// The longest a syncer lingers for more appends.
pub const COMMIT_LINGER_MAX: Duration = Duration::from_micros(500);

/// How long the syncer waits before its fsync. A lone writer (the previous
/// fsync covered one entry) never waits; when appends are arriving while
/// fsyncs run, waiting half an fsync's time lets the next one cover about
/// half again as many appends, at a latency cost below the fsync's own.
pub fn linger_before_sync(last_covered: u64, last_took: Duration) -> Duration {
    if last_covered < 2 {
        return Duration::ZERO;
    }
    (last_took / 2).min(COMMIT_LINGER_MAX)
}

#[derive(Debug)]
struct Inner {
    log: Mutex<Log>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    durability: Durability,
}

/// A [`Log`] behind a lock, applying its [`Durability`] on append.
#[derive(Debug)]
pub struct SharedLog {
    inner: Arc<Inner>,
    /// Its place in the process's flusher (`interval` durability).
    flushed_as: Option<u64>,
}

impl SharedLog {
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(SharedLog, OpenReport)> {
        let durability = config.durability;
        let (log, report) = Log::open(dir, config, crate::now_ms())?;
        Ok((SharedLog::new(log, durability), report))
    }

    /// Wraps an open log.
    pub fn new(log: Log, durability: Durability) -> SharedLog {
        let durable = log.last_raft().map(|(_, i)| i);
        let inner = Arc::new(Inner {
            log: Mutex::new(log),
            sync: Mutex::new(SyncState {
                durable,
                ..SyncState::default()
            }),
            synced: Condvar::new(),
            durability,
        });
        let flushed_as = match durability {
            Durability::Interval { ms } => Some(flusher().add(&inner, Duration::from_millis(ms))),
            _ => None,
        };
        SharedLog { inner, flushed_as }
    }

    /// Runs `f` with the log locked (reads, retention, truncation).
    pub fn with<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        f(&mut lock(&self.inner.log))
    }

    /// Appends and returns once the batch is as durable as the mode promises.
    pub fn append(&self, batch: &[u8], term: RaftTerm) -> Result<AppendOutcome> {
        let out = {
            let mut log = lock(&self.inner.log);
            let index = log.next_raft_index();
            log.append(batch, term, index, crate::now_ms())?
        };
        if self.inner.durability == Durability::Always {
            self.wait_durable(out.raft_index)?;
        }
        Ok(out)
    }

    /// Appends at the next index and returns without waiting for an fsync,
    /// whatever the mode; wait with [`SharedLog::durable`].
    pub fn append_unwaited(&self, batch: &[u8], term: RaftTerm) -> Result<AppendOutcome> {
        let mut log = lock(&self.inner.log);
        let index = log.next_raft_index();
        log.append(batch, term, index, crate::now_ms())
    }

    /// Resolves once entry `index` is durable, without holding a thread
    /// while it waits. When no fsync is running, the future hands a
    /// [`SyncDuty`] to `run`, which must run it on a thread that may block
    /// (or drop it, after which the next poll asks again).
    pub fn durable<R: FnMut(SyncDuty) + Unpin>(&self, index: RaftIndex, run: R) -> Durable<R> {
        Durable {
            inner: self.inner.clone(),
            index,
            run,
            registered: false,
        }
    }

    /// Appends entry `(term, index)` (a Raft follower's or leader's write)
    /// without waiting for durability; see [`SharedLog::wait_durable`].
    /// Takes emptied batches ([`Log::append_entry`]).
    pub fn append_at(&self, batch: &[u8], term: RaftTerm, index: RaftIndex) -> Result<AppendOutcome> {
        lock(&self.inner.log).append_entry(batch, term, index, crate::now_ms())
    }

    /// Removes the entries above `index`. What was durable above it no longer
    /// counts, so a new entry at the same index waits for its own fsync.
    pub fn truncate_after(&self, index: RaftIndex) -> Result<()> {
        let mut log = lock(&self.inner.log);
        log.truncate_after(index, crate::now_ms())?;
        let mut st = lock(&self.inner.sync);
        st.durable = st.durable.min(log.last_raft().map(|(_, i)| i));
        Ok(())
    }

    /// Restarts the log empty after `last` (see [`Log::reset_after`]).
    pub fn reset_after(&self, next_offset: crate::Offset, last: Option<(RaftTerm, RaftIndex)>) -> Result<()> {
        let mut log = lock(&self.inner.log);
        log.reset_after(next_offset, last, crate::now_ms())?;
        lock(&self.inner.sync).durable = last.map(|(_, i)| i);
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Blocks until entry `index` is durable, fsyncing if nobody else is.
    pub fn wait_durable(&self, index: RaftIndex) -> Result<()> {
        let mut st = lock(&self.inner.sync);
        loop {
            if st.failed {
                return Err(LogError::Poisoned);
            }
            if st.durable.is_some_and(|d| d >= index) {
                return Ok(());
            }
            if st.syncing {
                st = self.inner.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.syncing = true;
            let linger = linger_before_sync(st.last_covered, st.last_took);
            drop(st);
            if !linger.is_zero() {
                std::thread::sleep(linger);
            }
            sync_once(&self.inner);
            wake_stranded(&self.inner);
            st = lock(&self.inner.sync);
        }
    }

    /// fsyncs performed so far by group commit and the flusher.
    pub fn sync_count(&self) -> u64 {
        lock(&self.inner.sync).syncs
    }

    /// [`Log::checkpoint_clean`]: a broker stopping records each replica's
    /// clean end, so that its restart verifies, zeroes and fsyncs nothing
    /// (other holders of the log may still write after it, safely).
    pub fn checkpoint_clean(&self) -> Result<()> {
        // Taken like a group-commit fsync: one whose error has not been
        // recorded yet (the kernel reports it to one fsync only) must not
        // leave this flush to succeed over the lost pages.
        let mut st = lock(&self.inner.sync);
        while st.syncing {
            st = self.inner.synced.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.failed {
            return Err(LogError::Poisoned);
        }
        st.syncing = true;
        drop(st);
        let r = lock(&self.inner.log).checkpoint_clean();
        lock(&self.inner.sync).syncing = false;
        self.inner.synced.notify_all();
        wake_stranded(&self.inner);
        r
    }

    /// Stops the flusher, flushes, and closes the log cleanly.
    pub fn close(mut self) -> Result<()> {
        self.stop_flusher();
        lock(&self.inner.log).close_in_place()
    }

    fn stop_flusher(&mut self) {
        if let Some(id) = self.flushed_as.take() {
            lock(&self.inner.sync).closing = true;
            flusher().remove(id);
        }
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// Called with every group-commit fsync's duration (the broker turns it
/// into a metric; this crate records nothing itself).
static SYNC_OBSERVER: std::sync::OnceLock<fn(Duration)> = std::sync::OnceLock::new();

/// Sets the process's fsync observer (once; later calls are ignored).
pub fn observe_syncs(f: fn(Duration)) {
    let _ = SYNC_OBSERVER.set(f);
}

/// The future of [`SharedLog::durable`].
#[derive(Debug)]
pub struct Durable<R> {
    inner: Arc<Inner>,
    index: RaftIndex,
    run: R,
    registered: bool,
}

impl<R: FnMut(SyncDuty) + Unpin> Future for Durable<R> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.sync);
        if st.failed {
            return Poll::Ready(Err(LogError::Poisoned));
        }
        if st.durable.is_some_and(|d| d >= this.index) {
            return Poll::Ready(Ok(()));
        }
        let index = this.index;
        let known = this.registered
            && st
                .wakers
                .iter_mut()
                .find(|(i, w)| *i == index && w.will_wake(cx.waker()))
                .map(|(_, w)| w.clone_from(cx.waker()))
                .is_some();
        if !known {
            st.wakers.push((index, cx.waker().clone()));
            this.registered = true;
        }
        if st.syncing {
            return Poll::Pending;
        }
        st.syncing = true;
        drop(st);
        (this.run)(SyncDuty {
            inner: Some(this.inner.clone()),
        });
        Poll::Pending
    }
}

/// The duty to fsync a log for its async waiters; run it on a thread that
/// may block. Dropped unrun (a runtime shutting down refuses blocking
/// work), it gives the duty back so that a waiter's next poll takes it.
#[derive(Debug)]
pub struct SyncDuty {
    inner: Option<Arc<Inner>>,
}

impl SyncDuty {
    /// fsyncs until no async waiter waits beyond what is durable, or
    /// [`SYNCS_PER_DUTY_MAX`] times; then the waiters left are woken and
    /// the first to poll takes the next duty.
    pub fn run(mut self) {
        let inner = self.inner.take().expect("a duty runs once");
        for _ in 0..SYNCS_PER_DUTY_MAX {
            let linger = {
                let st = lock(&inner.sync);
                linger_before_sync(st.last_covered, st.last_took)
            };
            if !linger.is_zero() {
                std::thread::sleep(linger);
            }
            sync_once(&inner);
            let mut st = lock(&inner.sync);
            let durable = st.durable;
            if st.failed || st.syncing || st.wakers.iter().all(|(i, _)| Some(*i) <= durable) {
                return;
            }
            st.syncing = true;
        }
        lock(&inner.sync).syncing = false;
        inner.synced.notify_all();
        wake_stranded(&inner);
    }
}

impl Drop for SyncDuty {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            lock(&inner.sync).syncing = false;
            inner.synced.notify_all();
            wake_stranded(&inner);
        }
    }
}

/// One fsync covering everything appended before it started.
fn sync_once(inner: &Inner) {
    let (file, target) = lock(&inner.log).sync_point();
    let began = std::time::Instant::now();
    let synced_file = file.is_some();
    let ok = match file {
        Some(f) => f.sync_data().is_ok(),
        None => true,
    };
    let took = began.elapsed();
    if let (Some(observe), true) = (SYNC_OBSERVER.get(), synced_file) {
        observe(took);
    }
    if !ok {
        lock(&inner.log).poison();
    }
    let mut st = lock(&inner.sync);
    st.syncing = false;
    st.syncs += 1;
    st.last_covered = match (target, st.durable) {
        (Some(t), Some(d)) => t.0.saturating_sub(d.0),
        (Some(t), None) => t.0,
        (None, _) => 0,
    };
    st.last_took = took;
    if ok {
        st.durable = st.durable.max(target);
    } else {
        st.failed = true;
    }
    let (failed, durable) = (st.failed, st.durable);
    let mut woken = Vec::new();
    st.wakers.retain(|(i, w)| {
        let done = failed || Some(*i) <= durable;
        if done {
            woken.push(w.clone());
        }
        !done
    });
    drop(st);
    inner.synced.notify_all();
    woken.into_iter().for_each(Waker::wake);
}

/// The logs in `interval` mode, flushed by one thread for the whole
/// process: a broker with thousands of shards runs one flusher, not a
/// thread per shard. A log with nothing appended since its last fsync is
/// skipped, so idle shards cost a lock and a comparison per interval.
struct Flusher {
    set: Mutex<FlushSet>,
    wake: Condvar,
}

#[derive(Default)]
struct FlushSet {
    /// id → (the log, its interval, when it is due).
    logs: BTreeMap<u64, (Weak<Inner>, Duration, Instant)>,
    next_id: u64,
    running: bool,
}

fn flusher() -> &'static Flusher {
    static FLUSHER: OnceLock<Flusher> = OnceLock::new();
    FLUSHER.get_or_init(|| Flusher {
        set: Mutex::new(FlushSet::default()),
        wake: Condvar::new(),
    })
}

impl Flusher {
    fn add(&'static self, inner: &Arc<Inner>, every: Duration) -> u64 {
        let mut set = lock(&self.set);
        let id = set.next_id;
        set.next_id += 1;
        set.logs
            .insert(id, (Arc::downgrade(inner), every, Instant::now() + every));
        if !set.running {
            set.running = true;
            std::thread::Builder::new()
                .name("felix-log-flusher".into())
                .spawn(move || self.run())
                .expect("spawn the log flusher thread");
        }
        self.wake.notify_all();
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.set).logs.remove(&id);
    }

    fn run(&self) {
        let mut set = lock(&self.set);
        loop {
            let now = Instant::now();
            let Some(due) = set.logs.values().map(|(_, _, due)| *due).min() else {
                set = self.wake.wait(set).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            if due > now {
                set = self
                    .wake
                    .wait_timeout(set, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let mut now_due = Vec::new();
            set.logs.retain(|_, (log, every, due)| {
                let Some(inner) = log.upgrade() else {
                    return false;
                };
                if *due <= now {
                    *due = now + *every;
                    now_due.push(inner);
                }
                true
            });
            drop(set);
            for inner in now_due {
                flush_if_behind(&inner);
            }
            set = lock(&self.set);
        }
    }
}

/// One fsync of `inner` if entries were appended since the last, and no
/// other fsync of it is under way.
fn flush_if_behind(inner: &Inner) {
    let last = lock(&inner.log).last_raft().map(|(_, i)| i);
    {
        let mut st = lock(&inner.sync);
        if st.closing || st.failed || st.syncing || st.durable >= last {
            return;
        }
        st.syncing = true;
    }
    sync_once(inner);
    wake_stranded(inner);
}

/// After an fsync run by a caller that will not run another: async
/// waiters that parked during it, for entries it did not cover, would wait
/// for a sync no one runs. Woken, each polls again and one takes the duty.
fn wake_stranded(inner: &Inner) {
    let stranded = {
        let mut st = lock(&inner.sync);
        if st.syncing || st.wakers.is_empty() {
            return;
        }
        std::mem::take(&mut st.wakers)
    };
    stranded.into_iter().for_each(|(_, w)| w.wake());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock already broke an invariant loudly; the
    // data itself is still consistent for the next caller to inspect.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod linger_tests {
    use super::*;

    #[test]
    fn a_lone_writer_never_lingers_and_load_lingers_at_most_the_cap() {
        assert_eq!(linger_before_sync(0, Duration::from_millis(5)), Duration::ZERO);
        assert_eq!(linger_before_sync(1, Duration::from_millis(5)), Duration::ZERO);
        assert_eq!(
            linger_before_sync(3, Duration::from_micros(300)),
            Duration::from_micros(150)
        );
        assert_eq!(
            linger_before_sync(50, Duration::from_millis(40)),
            COMMIT_LINGER_MAX
        );
    }
}

#[cfg(test)]
mod duty_bound_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use super::stranded_tests::Count;
    use super::*;
    use crate::config::LogConfig;

    #[test]
    fn a_duty_whose_waiters_never_run_out_hands_the_duty_back_after_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
        let batch = felix_testkit::Batch::of(&[b"v".to_vec()]).build();
        let last = log.append_unwaited(&batch, RaftTerm(1)).unwrap().raft_index;
        // A waiter no fsync can satisfy stands for appends that keep
        // arriving: every fsync leaves one waiting beyond what is durable.
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let before = log.sync_count();
        {
            let mut st = lock(&log.inner.sync);
            st.wakers.push((last.next(), Waker::from(count.clone())));
            st.syncing = true;
        }
        let duty = SyncDuty {
            inner: Some(log.inner.clone()),
        };
        let (done, ran) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            duty.run();
            let _ = done.send(());
        });
        ran.recv_timeout(Duration::from_secs(5))
            .expect("the duty kept fsyncing past its bound");
        assert_eq!(log.sync_count() - before, u64::from(SYNCS_PER_DUTY_MAX));
        let st = lock(&log.inner.sync);
        assert!(!st.syncing, "the duty was handed back");
        assert!(st.wakers.is_empty(), "the waiter left was woken to take it");
        drop(st);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
mod stranded_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};

    use super::*;
    use crate::config::LogConfig;

    /// A waker that counts its wakes.
    pub(super) struct Count(pub(super) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiter_parked_during_a_blocking_callers_fsync_that_missed_its_entry_is_woken_to_take_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
        let batch = felix_testkit::Batch::of(&[b"v".to_vec()]).build();
        let a = log.append_unwaited(&batch, RaftTerm(1)).unwrap().raft_index;
        let b = log.append_unwaited(&batch, RaftTerm(1)).unwrap().raft_index;
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut duties = Vec::new();
        let mut f = Box::pin(log.durable(b, |d| duties.push(d)));
        // A blocking caller's fsync is under way: the waiter parks and is
        // handed no duty.
        lock(&log.inner.sync).syncing = true;
        assert!(f.as_mut().poll(&mut cx).is_pending());
        // That fsync ends having covered `a` only (`b` landed after its
        // sync point); its caller runs no other.
        {
            let mut st = lock(&log.inner.sync);
            st.syncing = false;
            st.durable = Some(a);
        }
        wake_stranded(&log.inner);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the stranded waiter was woken");
        assert!(f.as_mut().poll(&mut cx).is_pending());
        drop(f);
        assert_eq!(duties.len(), 1, "woken, it took the duty");
        duties.pop().unwrap().run();
        assert!(lock(&log.inner.sync).durable >= Some(b));
    }
}
