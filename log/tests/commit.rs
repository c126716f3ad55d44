//! Group commit and durability modes of SharedLog, and a full disk.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use felix_log::{Durability, LogConfig, LogError, Offset, RaftTerm, SharedLog};

#[test]
fn concurrent_always_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    let threads = 32;
    let per = 50;
    let acked = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (log, acked) = (&log, &acked);
            s.spawn(move || {
                for i in 0..per {
                    log.append(
                        &common::batch_of(&[common::payload(t * 1000 + i, 256)], 1),
                        RaftTerm(1),
                    )
                    .unwrap();
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let total = threads * per;
    assert_eq!(acked.load(Ordering::Relaxed), total);
    let syncs = log.sync_count();
    assert!(syncs >= 1, "always mode never fsynced");
    assert!(
        syncs < total,
        "no fsync was shared: {syncs} fsyncs for {total} appends"
    );
    assert_eq!(
        log.with(|l| l.batches_from(Offset(0)).unwrap().count()) as u64,
        total
    );
    log.close().unwrap();
    let (log, report) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(report.clean);
    assert_eq!(log.with(|l| l.next_offset()), Offset(total));
}

#[test]
fn interval_mode_flushes_in_the_background_and_none_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        durability: Durability::Interval { ms: 20 },
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(dir.path(), cfg).unwrap();
    // Every 20 ms, each append is flushed well within the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 1..=2 {
        log.append(&common::batch_of(&[b"a".to_vec()], 1), RaftTerm(1))
            .unwrap();
        while log.sync_count() < n {
            assert!(Instant::now() < deadline, "interval flusher did not run");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(dir.path(), cfg).unwrap();
    for _ in 0..10 {
        log.append(&common::batch_of(&[b"a".to_vec()], 1), RaftTerm(1))
            .unwrap();
    }
    assert_eq!(log.sync_count(), 0);
}

#[test]
fn durability_parses() {
    assert_eq!("always".parse::<Durability>().unwrap(), Durability::Always);
    assert_eq!(
        "interval:50".parse::<Durability>().unwrap(),
        Durability::Interval { ms: 50 }
    );
    assert_eq!("none".parse::<Durability>().unwrap(), Durability::None);
    for bad in ["", "interval:", "interval:0", "sometimes"] {
        assert!(bad.parse::<Durability>().is_err(), "{bad}");
    }
}

/// Logs in `interval` mode share one flusher thread for the process, each
/// is flushed once its interval is due after an append, and an idle one is
/// not fsynced at all.
#[test]
fn interval_logs_share_one_flusher_thread_and_idle_ones_are_not_fsynced() {
    let dirs: Vec<tempfile::TempDir> = (0..200).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg = LogConfig {
        durability: Durability::Interval { ms: 20 },
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        ..LogConfig::default()
    };
    let logs: Vec<SharedLog> = dirs
        .iter()
        .map(|d| SharedLog::open(d.path(), cfg.clone()).unwrap().0)
        .collect();
    for (i, l) in logs.iter().enumerate() {
        l.append(
            &common::batch_of(&[common::payload(i as u64, 64)], 1),
            RaftTerm(1),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs.iter().all(|l| l.sync_count() >= 1) {
        assert!(Instant::now() < deadline, "not every log was flushed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let flushers = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("felix-log-flush"))
        })
        .count();
    assert_eq!(flushers, 1, "one flusher thread for every log");
    // Ten intervals with nothing appended: no fsync.
    let before: Vec<u64> = logs.iter().map(SharedLog::sync_count).collect();
    std::thread::sleep(Duration::from_millis(200));
    let after: Vec<u64> = logs.iter().map(SharedLog::sync_count).collect();
    assert_eq!(before, after, "idle logs are not fsynced");
}

/// A full disk is a typed error when a segment file grows by a step and
/// when a segment is created, and the log keeps serving what it has. Needs
/// a small tmpfs, so it runs where the test may mount one (root, as in CI)
/// and says so otherwise.
#[test]
fn full_disk_is_a_typed_error_when_a_segment_grows_or_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(dir.path());
    let fill = |log: &mut felix_log::Log| {
        let mut appended = 0u64;
        let err = loop {
            let b = common::batch_of(&[common::payload(appended, 30 << 10)], 1);
            match log.append(&b, RaftTerm(1), log.next_raft_index(), 1) {
                Ok(_) => appended += 1,
                Err(e) => break e,
            }
            assert!(appended < 1000, "never ran out of space");
        };
        assert!(matches!(err, LogError::DiskFull { .. }), "{err}");
        assert!(appended > 0);
        // Everything appended before is still there and readable.
        assert_eq!(log.batches_from(Offset(0)).unwrap().count() as u64, appended);
        assert_eq!(log.next_offset(), Offset(appended));
        appended
    };

    // A segment of 4 MiB on a 1 MiB disk opens (only its first step is
    // allocated) and fails when it would grow past the disk.
    let growing = dir.path().join("growing");
    let cfg = LogConfig {
        segment_bytes: 4 << 20,
        batch_bytes_max: 64 << 10,
        ..LogConfig::default()
    };
    let (mut log, _) = felix_log::Log::open(&growing, cfg.clone(), 1).unwrap();
    let appended = fill(&mut log);
    assert_eq!(
        log.segments().len(),
        1,
        "the disk filled inside the first segment"
    );
    // The log is not poisoned: a small append that fits what is allocated
    // goes through (the refused one wrote nothing).
    let small = common::batch_of(&[common::payload(appended, 16)], 1);
    let room = log.append(&small, RaftTerm(1), log.next_raft_index(), 1);
    assert!(matches!(room, Ok(_) | Err(LogError::DiskFull { .. })), "{room:?}");
    drop(log);
    // Reopened, it holds what was acknowledged.
    let (log, _) = felix_log::Log::open(&growing, cfg, 1).unwrap();
    assert!(log.batches_from(Offset(0)).unwrap().count() as u64 >= appended);
    drop(log);
    std::fs::remove_dir_all(&growing).unwrap();

    // Segments smaller than the first step: the disk fills at a roll, when
    // the next segment is created.
    let path = dir.path().join("log");
    let cfg = LogConfig {
        segment_bytes: 400 << 10,
        batch_bytes_max: 64 << 10,
        ..LogConfig::default()
    };
    let (mut log, _) = felix_log::Log::open(&path, cfg, 1).unwrap();
    fill(&mut log);
    assert!(log.segments().len() > 1, "it rolled before the disk filled");
}

/// An idle log holds one small allocation step, not a whole segment; a
/// busy one grows its file in steps and loses nothing across a reopen.
#[test]
fn segment_files_grow_in_steps_from_a_small_first_one() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes: 64 << 20,
        batch_bytes_max: 256 << 10,
        ..LogConfig::default()
    };
    let (mut log, _) = felix_log::Log::open(dir.path(), cfg.clone(), 1).unwrap();
    let seg_file = |dir: &std::path::Path| {
        let mut segs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        assert_eq!(segs.len(), 1, "{segs:?}");
        segs.pop().unwrap()
    };
    let first = felix_log::ALLOCATION_BYTES_FIRST;
    let m = std::fs::metadata(seg_file(dir.path())).unwrap();
    assert_eq!(m.len(), first, "an empty segment is its first step long");
    assert!(
        m.blocks() * 512 <= first,
        "and holds no more blocks: {}",
        m.blocks() * 512
    );
    // 3 MiB of batches: the file doubles to 4 MiB, not 64.
    let n = 24u64;
    for i in 0..n {
        let b = common::batch_of(&[common::payload(i, 128 << 10)], 1);
        log.append(&b, RaftTerm(1), log.next_raft_index(), 1).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(std::fs::metadata(seg_file(dir.path())).unwrap().len(), 4 << 20);
    drop(log);
    let (log, _) = felix_log::Log::open(dir.path(), cfg, 1).unwrap();
    assert_eq!(log.next_offset(), Offset(n));
    assert_eq!(log.batches_from(Offset(0)).unwrap().count() as u64, n);
}

/// A Raft follower's path: entries at given indexes, a truncated suffix
/// whose replacement waits for its own fsync, and a restart after a
/// snapshot that starts the log at an offset and index it never held.
#[test]
fn raft_appends_truncation_and_reset() {
    use felix_log::RaftIndex;
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    let b = |n| common::batch_of(&[common::payload(n, 64)], 1);
    for i in 0..5 {
        log.append_at(&b(i), RaftTerm(1), RaftIndex(i)).unwrap();
    }
    log.wait_durable(RaftIndex(4)).unwrap();
    let gap = log.append_at(&b(9), RaftTerm(1), RaftIndex(9));
    assert!(matches!(gap, Err(LogError::RaftIndexGap { .. })), "{gap:?}");
    log.truncate_after(RaftIndex(2)).unwrap();
    let syncs = log.sync_count();
    let out = log.append_at(&b(30), RaftTerm(2), RaftIndex(3)).unwrap();
    assert_eq!(
        out.base_offset,
        Offset(3),
        "the replacement takes the removed entry's offset"
    );
    log.wait_durable(RaftIndex(3)).unwrap();
    assert!(
        log.sync_count() > syncs,
        "index 3 was durable before truncation; its replacement was not"
    );

    log.reset_after(Offset(1000), Some((RaftTerm(5), RaftIndex(99))))
        .unwrap();
    log.with(|l| {
        assert_eq!(l.last_raft(), Some((RaftTerm(5), RaftIndex(99))));
        assert_eq!(l.purged_last(), Some((RaftTerm(5), RaftIndex(99))));
        assert_eq!(l.next_offset(), Offset(1000));
        assert_eq!(l.first_raft_index(), None);
    });
    let out = log.append_at(&b(100), RaftTerm(5), RaftIndex(100)).unwrap();
    assert_eq!(out.base_offset, Offset(1000));
    log.wait_durable(RaftIndex(100)).unwrap();
    log.close().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    log.with(|l| {
        assert_eq!(
            l.purged_last(),
            Some((RaftTerm(5), RaftIndex(99))),
            "the restart point survives reopening"
        );
        assert_eq!(l.first_raft_index(), Some(RaftIndex(100)));
        assert_eq!(l.earliest_offset(), Offset(1000));
    });
}

/// Counts its wakes.
struct CountingWaker(AtomicU64);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn async_waiters_share_one_fsync_run_by_one_duty_and_a_dropped_duty_is_taken_again() {
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use felix_log::SyncDuty;

    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    let woken = Arc::new(CountingWaker(AtomicU64::new(0)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let duties: Arc<Mutex<Vec<SyncDuty>>> = Arc::default();
    let waiting = 64;
    let before = log.sync_count();
    let mut futures: Vec<_> = (0..waiting)
        .map(|i| {
            let out = log
                .append_unwaited(&common::batch_of(&[common::payload(i, 256)], 1), RaftTerm(1))
                .unwrap();
            let duties = duties.clone();
            Box::pin(log.durable(out.raft_index, move |d| duties.lock().unwrap().push(d)))
        })
        .collect();
    for f in &mut futures {
        assert!(f.as_mut().poll(&mut cx).is_pending(), "durable before any fsync");
    }
    // A second poll registers nothing twice and asks for no second fsync.
    assert!(futures[0].as_mut().poll(&mut cx).is_pending());
    let duty = {
        let mut d = duties.lock().unwrap();
        assert_eq!(d.len(), 1, "one waiter runs the fsync for all");
        d.pop().unwrap()
    };
    std::thread::spawn(move || duty.run()).join().unwrap();
    assert_eq!(log.sync_count() - before, 1, "one fsync covered every waiter");
    assert_eq!(woken.0.load(Ordering::SeqCst), waiting, "each waiter woken once");
    for f in &mut futures {
        assert!(matches!(f.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }

    // A duty dropped unrun wakes its waiters, and the next poll takes it.
    let out = log
        .append_unwaited(&common::batch_of(&[common::payload(999, 8)], 1), RaftTerm(1))
        .unwrap();
    let d2 = duties.clone();
    let mut f = Box::pin(log.durable(out.raft_index, move |d| d2.lock().unwrap().push(d)));
    assert!(f.as_mut().poll(&mut cx).is_pending());
    let seen = woken.0.load(Ordering::SeqCst);
    drop(duties.lock().unwrap().pop().expect("a duty"));
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        seen + 1,
        "the dropped duty woke its waiter"
    );
    assert!(f.as_mut().poll(&mut cx).is_pending());
    let duty = duties.lock().unwrap().pop().expect("the duty taken again");
    duty.run();
    assert!(matches!(f.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    // The futures share the log; they go before it closes.
    drop((futures, f));
    log.close().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.with(|l| l.next_offset()), Offset(waiting + 1));
}

/// Wakes a parked thread, and says it did.
struct ThreadWaker(std::thread::Thread, std::sync::atomic::AtomicBool);

impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.1.store(true, Ordering::SeqCst);
        self.0.unpark();
    }
}

#[test]
fn async_and_blocking_waiters_mixed_all_become_durable() {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), LogConfig::default()).unwrap();
    let log = Arc::new(log);
    let per = 150u64;
    std::thread::scope(|s| {
        // Blocking appenders fsync as they find none running; async ones
        // park between those fsyncs, and must still be woken to take the
        // next (a waiter parked during a blocking caller's fsync, for an
        // entry it did not cover, used to be left waiting).
        for t in 0..3u64 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..per {
                    log.append(
                        &common::batch_of(&[common::payload(t * 10_000 + i, 64)], 1),
                        RaftTerm(1),
                    )
                    .unwrap();
                }
            });
        }
        for t in 3..6u64 {
            let log = log.clone();
            s.spawn(move || {
                let woken = Arc::new(ThreadWaker(std::thread::current(), false.into()));
                let waker = Waker::from(woken.clone());
                let mut cx = Context::from_waker(&waker);
                for i in 0..per {
                    let out = log
                        .append_unwaited(
                            &common::batch_of(&[common::payload(t * 10_000 + i, 64)], 1),
                            RaftTerm(1),
                        )
                        .unwrap();
                    let mut f = Box::pin(log.durable(out.raft_index, |duty| {
                        std::thread::spawn(move || duty.run());
                    }));
                    loop {
                        if let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                            break r.unwrap();
                        }
                        // Polled again only when woken, as an executor
                        // would. A wake is due within an fsync or two; a
                        // minute without one is a lost waiter.
                        let since = Instant::now();
                        while !woken.1.swap(false, Ordering::SeqCst) {
                            assert!(
                                since.elapsed() < Duration::from_secs(60),
                                "waiter {t}/{i} never woken"
                            );
                            std::thread::park_timeout(Duration::from_millis(100));
                        }
                    }
                }
            });
        }
    });
    assert_eq!(log.with(|l| l.next_offset()), Offset(6 * per));
}
