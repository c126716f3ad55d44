//! Time-based rolling (`segment_ms`) and retention by time of whole segments.

mod common;

use felix_log::{Log, LogConfig, Offset, RaftIndex, RaftTerm, Retention};

#[test]
fn segments_roll_by_age_and_age_out_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 1_000,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), 0).unwrap();
    let mut idx = 0;
    let mut append = |log: &mut Log, now: i64| {
        log.append(
            &common::batch_of(&[b"v".to_vec()], now),
            RaftTerm(1),
            RaftIndex(idx),
            now,
        )
        .unwrap();
        idx += 1;
    };
    append(&mut log, 0);
    append(&mut log, 500);
    assert_eq!(log.segments().len(), 1, "younger than segment_ms");
    append(&mut log, 1_000);
    assert_eq!(
        log.segments().len(),
        2,
        "rolled at the first append past segment_ms"
    );
    assert!(log.segments()[0].sealed);
    assert!(!log.roll_if_due(1_500).unwrap());
    assert!(log.roll_if_due(2_000).unwrap(), "an idle segment rolls on tick");
    assert!(
        !log.roll_if_due(10_000).unwrap(),
        "an empty active segment never rolls"
    );
    // An empty segment created long ago does not roll right after its first batch.
    append(&mut log, 20_000);
    append(&mut log, 20_100);
    assert_eq!(log.segments().len(), 3);

    // Retention by time: segments whose newest record is older than 5 s at
    // t = 6_001 go (the first: newest 500; the second: newest 1_000); the
    // active segment stays.
    let out = log
        .apply_retention(
            6_001,
            Retention {
                retention_ms: Some(5_000),
                retention_bytes: None,
            },
        )
        .unwrap();
    assert_eq!(out.segments_deleted, 2);
    assert_eq!(out.earliest_offset, Offset(3));
    assert!(log
        .read(Offset(0), 1 << 20)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert_eq!(log.batches_from(Offset(3)).unwrap().count(), 2);
    log.close().unwrap();
    let (log, report) = Log::open(dir.path(), cfg, 30_000).unwrap();
    assert!(report.clean);
    assert_eq!((log.earliest_offset(), log.next_offset()), (Offset(3), Offset(5)));
}

/// Issue 26: a `retention_ms` past `i64::MAX` was cast to a negative
/// number, so every sealed segment counted as expired and was deleted.
#[test]
fn a_retention_longer_than_any_clock_keeps_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 1_000,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), cfg, 0).unwrap();
    for (i, now) in [0i64, 1_000, 2_000, 3_000].into_iter().enumerate() {
        log.append(
            &common::batch_of(&[b"v".to_vec()], now),
            RaftTerm(1),
            RaftIndex(i as u64),
            now,
        )
        .unwrap();
    }
    assert_eq!(log.segments().len(), 4);
    for retention_ms in [1u64 << 63, u64::MAX, i64::MAX as u64] {
        let r = Retention {
            retention_ms: Some(retention_ms),
            retention_bytes: None,
        };
        assert_eq!(log.retention_through(10_000, r), None, "{retention_ms}");
        let out = log.apply_retention(10_000, r).unwrap();
        assert_eq!(
            out.segments_deleted, 0,
            "retention_ms {retention_ms} deleted segments"
        );
    }
    assert_eq!(log.earliest_offset(), Offset(0));
}
