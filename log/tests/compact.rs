//! Compaction at the log level: rewriting batches and sealed segments keeps
//! offsets, Raft indexes and control batches, and the result recovers.

mod common;

use bytes::Bytes;
use common::small_config;
use felix_log::batch::compact;
use felix_log::{Batch, Compression, Log, LogConfig, Offset, RaftIndex, RaftTerm, Verify};

fn keyed(keys: &[&str], ts: i64, compression: Compression) -> Vec<u8> {
    let records: Vec<(&str, Option<String>)> = keys.iter().map(|k| (*k, Some(format!("v-{k}")))).collect();
    felix_testkit::Batch::keyed(&records)
        .ts(ts)
        .ts_step(1)
        .compression(compression)
        .build()
}

#[test]
fn a_compacted_batch_keeps_its_identity_and_validates() {
    for compression in [Compression::None, Compression::Zstd(3)] {
        let mut raw = keyed(&["a", "b", "c", "d"], 100, compression);
        felix_log::batch::stamp(&mut raw, Offset(40), RaftTerm(2), RaftIndex(9));
        let b = Batch::new(Bytes::from(raw)).unwrap();
        assert_eq!(
            compact(&b, |_| true, 1).unwrap(),
            None,
            "keeping all is no rewrite"
        );
        let out = compact(
            &b,
            |r| r.key.as_deref() != Some(b"b") && r.key.as_deref() != Some(b"d"),
            1,
        )
        .unwrap()
        .unwrap();
        let c = Batch::new(Bytes::from(out)).unwrap();
        c.validate().unwrap();
        let (h, o) = (c.header(), b.header());
        assert_eq!(
            (h.base_offset, h.offset_count, h.raft_term, h.raft_index),
            (o.base_offset, o.offset_count, o.raft_term, o.raft_index)
        );
        assert_eq!(
            (h.first_timestamp_ms, h.max_timestamp_ms),
            (o.first_timestamp_ms, o.max_timestamp_ms)
        );
        assert_eq!(h.record_count, 2);
        let recs: Vec<_> = c.records().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![Offset(40), Offset(42)]
        );
        assert_eq!(recs[1].value.as_deref(), Some(&b"v-c"[..]));
        assert_eq!(recs[1].timestamp_ms, 102);
        // Dropping everything leaves an emptied batch that still counts.
        let empty = Batch::new(Bytes::from(compact(&b, |_| false, 1).unwrap().unwrap())).unwrap();
        empty.validate().unwrap();
        assert_eq!(empty.header().record_count, 0);
        assert_eq!(empty.header().next_offset(), Offset(44));
        assert_eq!(empty.records().unwrap().count(), 0);
    }
}

#[test]
fn the_log_refuses_an_emptied_batch_from_a_producer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config(), 0).unwrap();
    let b = Batch::new(Bytes::from(keyed(&["a"], 0, Compression::None))).unwrap();
    let empty = compact(&b, |_| false, 1).unwrap().unwrap();
    assert!(log.append(&empty, RaftTerm(1), RaftIndex(0), 0).is_err());
}

/// A follower catching up a compacted shard receives the leader's emptied
/// batches as Raft entries: the log takes them, and they keep their offsets
/// (the fault suite found a rebuilt replica's group stopped on one).
#[test]
fn the_log_takes_an_emptied_batch_as_a_replicated_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config(), 0).unwrap();
    let b = Batch::new(Bytes::from(keyed(&["a", "b"], 0, Compression::None))).unwrap();
    let empty = compact(&b, |_| false, 1).unwrap().unwrap();
    let out = log.append_entry(&empty, RaftTerm(1), RaftIndex(0), 0).unwrap();
    assert_eq!(out.base_offset.0, 0);
    log.append(&keyed(&["c"], 1, Compression::None), RaftTerm(1), RaftIndex(1), 0)
        .unwrap();
    assert_eq!(
        log.next_offset().0,
        3,
        "the emptied batch still occupies its two offsets"
    );
    assert_eq!(log.next_raft_index(), RaftIndex(2));
    drop(log);
    let (log, _) = Log::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(log.next_offset().0, 3, "and recovery agrees");
}

#[test]
fn compacting_a_sealed_segment_keeps_offsets_entries_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), 0).unwrap();
    for i in 0..30u64 {
        log.append(
            &keyed(&["x", "y", "z"], i as i64, Compression::None),
            RaftTerm(1),
            RaftIndex(i),
            0,
        )
        .unwrap();
    }
    log.roll(0).unwrap();
    let seg = log.segments()[0].clone();
    assert!(seg.sealed);
    let before_entries: Vec<_> = (0..30).map(|i| log.entry(RaftIndex(i)).is_some()).collect();
    // Keep only "z" from the first segment.
    let out = log
        .compact_segment(seg.id, |r| r.key.as_deref() == Some(b"z"))
        .unwrap()
        .unwrap();
    assert!(out.bytes_after < out.bytes_before);
    assert_eq!(out.generation, 1);
    assert!(log
        .compact_segment(seg.id, |r| r.key.as_deref() == Some(b"z"))
        .unwrap()
        .is_none());
    let active = log.segments().last().unwrap().id;
    assert!(
        log.compact_segment(active, |_| false).is_err(),
        "the active segment is never compacted"
    );
    let check = |log: &Log| {
        assert_eq!(
            (0..30)
                .map(|i| log.entry(RaftIndex(i)).is_some())
                .collect::<Vec<_>>(),
            before_entries
        );
        let all: Vec<_> = log
            .batches_from(Offset(0))
            .unwrap()
            .flat_map(|b| b.records().unwrap().map(|r| r.unwrap()).collect::<Vec<_>>())
            .collect();
        for r in &all {
            if r.offset < seg.next_offset {
                assert_eq!(
                    r.key.as_deref(),
                    Some(&b"z"[..]),
                    "only z kept in the compacted range"
                );
                assert_eq!(r.offset.0 % 3, 2, "z keeps its offset");
            }
        }
        assert_eq!(log.next_offset(), Offset(90));
        let chunk = log.read(Offset(4), 1 << 20).unwrap();
        assert!(!chunk.bytes.is_empty());
    };
    check(&log);
    log.close().unwrap();
    let (log, report) = Log::open(
        dir.path(),
        LogConfig {
            verify: Verify::Full,
            ..cfg
        },
        0,
    )
    .unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(log.segments()[0].generation, 1);
    check(&log);
}
