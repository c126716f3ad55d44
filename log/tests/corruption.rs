//! Flipped bits on disk: a torn tail is cut, interior damage refuses to open
//! (naming file and byte), and repair quarantines exactly the damaged range.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use felix_log::{Log, LogConfig, LogError, Offset, RaftIndex, RaftTerm, Verify};

const BATCHES: u64 = 10;

/// Writes BATCHES batches into one segment and crashes (no clean close).
/// Returns the segment path and each batch's (position, len).
fn setup(dir: &Path, cfg: &LogConfig) -> (PathBuf, Vec<(u64, u32)>) {
    let (mut log, _) = Log::open(dir, cfg.clone(), 1).unwrap();
    let mut at = Vec::new();
    for i in 0..BATCHES {
        let out = log
            .append(
                &common::batch_of(&[common::payload(i, 100)], 1),
                RaftTerm(1),
                RaftIndex(i),
                1,
            )
            .unwrap();
        at.push((out.position, out.len));
    }
    log.flush().unwrap();
    let path = log.segments().last().unwrap().path.clone();
    drop(log); // not closed: the next open verifies the active segment
    (path, at)
}

fn flip(path: &Path, pos: u64) {
    let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, pos).unwrap();
}

fn values(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.batches_from(log.earliest_offset())
        .unwrap()
        .flat_map(|b| b.records().unwrap().collect::<Vec<_>>())
        .map(|r| {
            let r = r.unwrap();
            (r.offset.0, r.value.unwrap().to_vec())
        })
        .collect()
}

#[test]
fn flipped_bit_in_last_batch_is_cut_as_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::default();
    let (path, at) = setup(dir.path(), &cfg);
    let (pos, len) = at[BATCHES as usize - 1];
    flip(&path, pos + u64::from(len) - 5);
    let (log, report) = Log::open(dir.path(), cfg.clone(), 2).unwrap();
    let (p, cut_at, _) = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!((p, cut_at), (path.clone(), pos));
    assert_eq!(log.next_offset(), Offset(BATCHES - 1));
    assert_eq!(log.next_raft_index(), RaftIndex(BATCHES - 1));
    let v = values(&log);
    assert_eq!(v.len() as u64, BATCHES - 1);
    for (i, (off, val)) in v.iter().enumerate() {
        assert_eq!((*off, val), (i as u64, &common::payload(i as u64, 100)));
    }
    // The cut is durable and the bytes are gone: a second open finds nothing torn.
    drop(log);
    let (mut log, report) = Log::open(dir.path(), cfg, 3).unwrap();
    assert!(report.torn_tail.is_none());
    let mut tail = vec![0u8; len as usize];
    fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut tail, pos)
        .unwrap();
    assert!(tail.iter().all(|&b| b == 0), "torn bytes still on disk");
    // And the log continues from there.
    let out = log
        .append(
            &common::batch_of(&[b"after".to_vec()], 3),
            RaftTerm(1),
            RaftIndex(BATCHES - 1),
            3,
        )
        .unwrap();
    assert_eq!(out.base_offset, Offset(BATCHES - 1));
}

#[test]
fn interior_flip_refuses_to_open_then_repair_quarantines_exactly_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::default();
    let (path, at) = setup(dir.path(), &cfg);
    let (pos, len) = at[4];
    flip(&path, pos + 100); // inside the records of batch 4

    match Log::open(dir.path(), cfg.clone(), 2) {
        Err(LogError::Corrupt {
            path: p,
            position,
            end,
            reason,
        }) => {
            assert_eq!(p, path);
            assert_eq!((position, end), (pos, pos + u64::from(len)));
            assert!(reason.contains("checksum"), "{reason}");
            let msg = LogError::Corrupt {
                path: p,
                position,
                end,
                reason,
            }
            .to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(&pos.to_string()),
                "{msg}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Refusing changed nothing.
    let (pos2, _) = at[4];
    assert_eq!(pos2, pos);

    let repair = LogConfig {
        repair: true,
        ..cfg.clone()
    };
    let (log, report) = Log::open(dir.path(), repair, 2).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    let q = &report.quarantined[0];
    assert_eq!((q.from, q.to), (pos, pos + u64::from(len)));
    assert_eq!(fs::read(&q.saved_to).unwrap().len(), len as usize);
    let v = values(&log);
    let offsets: Vec<u64> = v.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2, 3, 5, 6, 7, 8, 9],
        "exactly batch 4 is gone"
    );
    for (off, val) in &v {
        assert_eq!(val, &common::payload(*off, 100));
    }
    assert_eq!(log.next_offset(), Offset(BATCHES));
    drop(log);
    // Once repaired, the log opens normally.
    Log::open(dir.path(), cfg, 3).unwrap();
}

#[test]
fn corruption_in_a_sealed_segment_is_found_by_full_verification() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::small_config();
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), 1).unwrap();
    for i in 0..60u64 {
        log.append(
            &common::batch_of(&[common::payload(i, 300)], 1),
            RaftTerm(1),
            RaftIndex(i),
            1,
        )
        .unwrap();
    }
    let first = log.segments()[0].clone();
    assert!(first.sealed && log.segments().len() > 3);
    log.close().unwrap();
    flip(&first.path, first.bytes - 10);

    // The checkpoint vouches for sealed segments, so a normal open trusts them…
    Log::open(dir.path(), cfg.clone(), 2).unwrap().0.close().unwrap();
    // …and full verification does not.
    let full = LogConfig {
        verify: Verify::Full,
        ..cfg.clone()
    };
    match Log::open(dir.path(), full.clone(), 2) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, first.path),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let (log, report) = Log::open(dir.path(), LogConfig { repair: true, ..full }, 2).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].to, first.bytes);
    assert_eq!(log.next_offset(), Offset(60));
}

#[test]
fn damaged_segment_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::default();
    let (path, _) = setup(dir.path(), &cfg);
    flip(&path, 20);
    match Log::open(dir.path(), cfg, 2) {
        Err(LogError::Corrupt {
            path: p, position: 0, ..
        }) => assert_eq!(p, path),
        other => panic!("expected Corrupt at 0, got {other:?}"),
    }
}

#[test]
fn a_lock_held_a_moment_by_a_forked_child_does_not_refuse_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default(), 1).unwrap();
    // The child shares the lock's open file description until it exits, as a
    // `Command` child does until its exec.
    // SAFETY: the child only sleeps and exits, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, in the forked child.
        unsafe {
            libc::usleep(100_000);
            libc::_exit(0);
        }
    }
    drop(log);
    let reopened = Log::open(dir.path(), LogConfig::default(), 1);
    let mut status = 0;
    // SAFETY: reaps the child forked above; `status` outlives the call.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), LogConfig::default(), 1).unwrap();
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default(), 1),
        Err(LogError::Locked { .. })
    ));
}

/// Under a locked parent a log keeps no lock file, yet a second open in
/// the process is still refused, and allowed once the first closes; the
/// parent's lock refuses a second holder.
#[test]
fn a_log_under_a_locked_parent_keeps_no_lock_file_and_is_still_opened_once() {
    let root = tempfile::tempdir().unwrap();
    let guard = std::sync::Arc::new(felix_log::lock_dir(root.path()).unwrap());
    assert!(matches!(
        felix_log::lock_dir(root.path()),
        Err(LogError::Locked { .. })
    ));
    let dir = root.path().join("shards").join("7");
    let cfg = LogConfig {
        dir_lock: felix_log::DirLock::Parent(guard.clone()),
        ..LogConfig::default()
    };
    let (log, _) = Log::open(&dir, cfg.clone(), 1).unwrap();
    assert!(!dir.join("lock").exists(), "a lock file was made");
    // The same directory by another spelling is the same log.
    let other = root.path().join("shards").join(".").join("7");
    assert!(matches!(
        Log::open(&other, cfg.clone(), 1),
        Err(LogError::Locked { .. })
    ));
    // A tool's open (its own lock file) is refused under the locked parent.
    assert!(matches!(
        Log::open(&dir, LogConfig::default(), 1),
        Err(LogError::Locked { .. })
    ));
    drop(log);
    let (log, _) = Log::open(&dir, cfg.clone(), 1).unwrap();
    drop(cfg);
    // The parent stays locked while a log under it is open, even once its
    // owner let go of its share.
    drop(guard);
    assert!(matches!(
        felix_log::lock_dir(root.path()),
        Err(LogError::Locked { .. })
    ));
    drop(log);
    assert!(felix_log::lock_dir(root.path()).is_ok());
}

#[test]
fn a_segment_whose_creation_was_interrupted_is_removed() {
    // A SIGKILL while rolling can leave the new segment's file created but
    // without its header: empty, or preallocated zeros.
    for contents in [Vec::new(), vec![0u8; 4096]] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig::default();
        let (_, at) = setup(dir.path(), &cfg);
        let (next_offset, next_index) = (Offset(BATCHES), RaftIndex(BATCHES));
        let name = format!("{:020}-{:020}.seg", next_offset.0, next_index.0);
        fs::write(dir.path().join(&name), &contents).unwrap();
        let (mut log, _) = Log::open(dir.path(), cfg.clone(), 2).unwrap();
        assert_eq!(log.next_offset(), next_offset, "nothing lost");
        assert_eq!(values(&log).len(), at.len());
        log.append(&common::batch_of(&[vec![1]], 3), RaftTerm(1), next_index, 3)
            .unwrap();
        log.close().unwrap();
        // A header that is not zeros is damage, not an interrupted creation.
        let (path, _) = (dir.path().join(&name), ());
        if path.exists() {
            continue;
        }
        let mut junk = vec![0u8; 64];
        junk[0] = b'X';
        let other = format!("{:020}-{:020}.seg", next_offset.0 + 100, next_index.0 + 100);
        fs::write(dir.path().join(other), &junk).unwrap();
        assert!(matches!(
            Log::open(dir.path(), cfg, 4),
            Err(LogError::Corrupt { .. })
        ));
    }
}
