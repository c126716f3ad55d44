//! When the checkpoint is written: a clean one stays until the log first
//! changes after the open that trusted it.

mod common;

use felix_log::{Log, RaftIndex, RaftTerm};

/// Appends entry `i` (100 bytes, term 1).
fn append(log: &mut Log, i: u64) {
    log.append(
        &common::batch_of(&[vec![i as u8; 100]], 1_000),
        RaftTerm(1),
        RaftIndex(i),
        1_000,
    )
    .unwrap();
}

/// A log reopened after a clean close writes no file until it changes, and
/// a close with no change in between leaves the clean checkpoint as it was;
/// once it changes, a crash is never taken for a clean close.
#[test]
fn a_clean_checkpoint_is_replaced_only_when_the_log_first_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::small_config();
    let ck = dir.path().join("checkpoint");
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), 1_000).unwrap();
    for i in 0..5u64 {
        append(&mut log, i);
    }
    log.close().unwrap();
    let written = std::fs::read(&ck).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&ck).unwrap());

    // Opened and closed, then opened and crashed, without a change: the
    // checkpoint file is the same file with the same bytes (each
    // replacement is a rename of a new file, so a new inode).
    for crash in [false, true] {
        let (log, report) = Log::open(dir.path(), cfg.clone(), 2_000).unwrap();
        assert!(report.clean, "{report:?}");
        assert_eq!(report.verified_bytes, 0);
        if crash {
            drop(log);
        } else {
            log.close().unwrap();
        }
        assert_eq!(std::fs::read(&ck).unwrap(), written);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&ck).unwrap()),
            inode
        );
    }

    // The first append replaces it before writing, so a crash after it is
    // recovered as a crash: the tail is verified, and the append kept.
    let (mut log, report) = Log::open(dir.path(), cfg.clone(), 3_000).unwrap();
    assert!(report.clean);
    append(&mut log, 5);
    assert_ne!(
        std::fs::read(&ck).unwrap(),
        written,
        "replaced before the first change"
    );
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg.clone(), 4_000).unwrap();
    assert!(!report.clean, "{report:?}");
    assert!(report.verified_bytes > 0);
    assert_eq!(log.next_raft_index(), RaftIndex(6));

    // Other changes replace it too: a truncation after a clean reopen.
    log.close().unwrap();
    let (mut log, report) = Log::open(dir.path(), cfg.clone(), 5_000).unwrap();
    assert!(report.clean);
    log.truncate_after(RaftIndex(2), 5_000).unwrap();
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg, 6_000).unwrap();
    assert!(!report.clean, "{report:?}");
    assert_eq!(log.next_raft_index(), RaftIndex(3));
}

/// A clean checkpoint recorded while the log stays open (a broker
/// stopping) lets the next open trust everything, unless the log changed
/// after it: then the checkpoint was replaced first, and the change kept.
#[test]
fn a_clean_checkpoint_taken_while_open_is_replaced_by_a_later_change() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::small_config();
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), 1_000).unwrap();
    append(&mut log, 0);
    log.checkpoint_clean().unwrap();
    drop(log);
    let (mut log, report) = Log::open(dir.path(), cfg.clone(), 2_000).unwrap();
    assert!(report.clean && report.verified_bytes == 0, "{report:?}");

    log.checkpoint_clean().unwrap();
    append(&mut log, 1);
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg, 3_000).unwrap();
    assert!(!report.clean, "{report:?}");
    assert!(report.verified_bytes > 0);
    assert_eq!(log.next_raft_index(), RaftIndex(2));
}
