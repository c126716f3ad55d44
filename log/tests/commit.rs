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
    log.append(&common::batch_of(&[b"a".to_vec()], 1), RaftTerm(1))
        .unwrap();
    // Every 20 ms: two flushes come well within the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.sync_count() < 2 {
        assert!(Instant::now() < deadline, "interval flusher did not run");
        std::thread::sleep(Duration::from_millis(10));
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

/// A full disk is a typed error when a segment is created, and the log keeps
/// serving what it has. Needs a small tmpfs, so it runs where the test may
/// mount one (root, as in CI) and says so otherwise.
#[test]
fn full_disk_is_a_typed_error_at_segment_creation() {
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
    let path = dir.path().join("log");
    let too_big = LogConfig {
        segment_bytes: 4 << 20,
        ..LogConfig::default()
    };
    assert!(matches!(
        felix_log::Log::open(&path, too_big, 1),
        Err(LogError::DiskFull { .. })
    ));

    let cfg = LogConfig {
        segment_bytes: 400 << 10,
        batch_bytes_max: 64 << 10,
        ..LogConfig::default()
    };
    let (mut log, _) = felix_log::Log::open(&path, cfg, 1).unwrap();
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
