//! The index is derived state: rebuilt from the segments it must equal the
//! one maintained incrementally; it follows retention with range deletes;
//! it survives being deleted or corrupted; and the start-up check repairs an
//! index that is behind or ahead of the log.

mod common;

use bytes::Bytes;
use common::{log_config, multi_put, Harness, SHARD};
use felix_index::control::{control_batch, ControlOp};
use felix_index::group::{ConsumerId, Status};
use felix_index::{CompactionConfig, Index, ShardKind};
use felix_log::{Compression, Offset, Positioned, RaftIndex, Retention};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Puts { keys: Vec<u8>, zstd: bool },
    Delete(u8),
    Commit { name: u8, offset: u16 },
    Lease { n: u8, consumer: u8 },
    Ack { k: u8 },
    Nack { k: u8 },
    Roll,
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::collection::vec(0..30u8, 1..12), any::<bool>()).prop_map(|(keys, zstd)| Step::Puts { keys, zstd }),
        1 => (0..30u8).prop_map(Step::Delete),
        2 => (0..3u8, any::<u16>()).prop_map(|(name, offset)| Step::Commit { name, offset }),
        2 => (1..6u8, 0..3u8).prop_map(|(n, consumer)| Step::Lease { n, consumer }),
        2 => (0..8u8).prop_map(|k| Step::Ack { k }),
        1 => (0..8u8).prop_map(|k| Step::Nack { k }),
        1 => Just(Step::Roll),
        1 => Just(Step::Tick),
    ]
}

/// Appends the steps to the log, indexing in chunks of varying size (as Raft
/// applies do), and returns the harness.
fn build(dir: &std::path::Path, steps: &[Step], chunks: &[usize]) -> Harness {
    let h = Harness::open(dir, ShardKind::Keyed, log_config());
    let mut now = 5_000i64;
    let mut pending: Vec<RaftIndex> = Vec::new();
    let mut chunk_i = 0;
    let mut leased: Vec<(Offset, ConsumerId)> = Vec::new();
    let g = Bytes::from_static(b"workers");
    for (i, s) in steps.iter().enumerate() {
        let batch = match s {
            Step::Puts { keys, zstd } => {
                let items: Vec<_> = keys
                    .iter()
                    .map(|k| (vec![*k], format!("v{i}-{k}").into_bytes()))
                    .collect();
                Some(multi_put(
                    &items,
                    now,
                    if *zstd {
                        Compression::Zstd(1)
                    } else {
                        Compression::None
                    },
                ))
            }
            Step::Delete(k) => Some(common::keyed_batch(&[*k], None, None, now)),
            Step::Commit { name, offset } => Some(
                control_batch(
                    &[ControlOp::CursorCommit {
                        name: Bytes::from(vec![b'c', *name]),
                        offset: Offset(u64::from(*offset)),
                    }],
                    now,
                )
                .unwrap(),
            ),
            Step::Lease { n, consumer } => {
                let next = h.with_log(|l| l.next_offset()).0;
                let state = h.index.group(SHARD, &g).unwrap();
                let from = state.map_or(0, |s| s.next.0);
                let offsets: Vec<Offset> = (from..next.min(from + u64::from(*n))).map(Offset).collect();
                leased.extend(offsets.iter().map(|o| (*o, ConsumerId(u64::from(*consumer)))));
                Some(
                    control_batch(
                        &[ControlOp::GroupLease {
                            group: g.clone(),
                            consumer: ConsumerId(u64::from(*consumer)),
                            until_ms: now + 1_000,
                            offsets,
                        }],
                        now,
                    )
                    .unwrap(),
                )
            }
            Step::Ack { k } => leased.get(*k as usize).map(|(o, _)| {
                control_batch(
                    &[ControlOp::GroupAck {
                        group: g.clone(),
                        offsets: vec![*o],
                    }],
                    now,
                )
                .unwrap()
            }),
            Step::Nack { k } => leased.get(*k as usize).map(|(o, c)| {
                control_batch(
                    &[ControlOp::GroupNack {
                        group: g.clone(),
                        consumer: *c,
                        redeliver_at_ms: now + 10,
                        offsets: vec![*o],
                    }],
                    now,
                )
                .unwrap()
            }),
            Step::Roll => {
                h.with_log(|l| l.roll(now)).unwrap();
                None
            }
            Step::Tick => {
                now += 1_000;
                None
            }
        };
        if let Some(b) = batch {
            pending.push(h.log.append(&b, felix_log::RaftTerm(1)).unwrap().raft_index);
        }
        // Group ops read the group's applied state, so apply before the next
        // lease; other entries wait for their chunk.
        let chunk = chunks[chunk_i % chunks.len()].max(1);
        if pending.len() >= chunk || matches!(s, Step::Lease { .. } | Step::Ack { .. } | Step::Nack { .. }) {
            apply_pending(&h, &mut pending);
            chunk_i += 1;
        }
    }
    apply_pending(&h, &mut pending);
    h
}

fn apply_pending(h: &Harness, pending: &mut Vec<RaftIndex>) {
    let Some(first) = pending.first().copied() else {
        return;
    };
    let entries: Vec<Positioned> =
        h.with_log(|l| l.positioned_from_raft_index(first).take(pending.len()).collect());
    h.index.apply(SHARD, ShardKind::Keyed, &entries).unwrap();
    pending.clear();
}

fn rebuilt(h: &Harness, dir: &std::path::Path) -> Index {
    let fresh = Index::open(dir, common::index_config()).unwrap();
    let report = h
        .with_log(|l| fresh.recover_shard(SHARD, ShardKind::Keyed, l))
        .unwrap();
    assert_eq!(report.rebuilt, Some("no index for the shard"));
    fresh
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn rebuilt_index_equals_incremental(
        steps in prop::collection::vec(step(), 1..60),
        chunks in prop::collection::vec(1..6usize, 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let h = build(dir.path(), &steps, &chunks);
        let other = tempfile::tempdir().unwrap();
        let fresh = rebuilt(&h, other.path());
        let a = h.index.dump_shard(SHARD).unwrap();
        let b = fresh.dump_shard(SHARD).unwrap();
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x, y);
        }
    }
}

#[test]
fn rebuilt_after_compaction_agrees_on_everything_but_counters() {
    let dir = tempfile::tempdir().unwrap();
    let steps: Vec<Step> = (0..200)
        .map(|i| match i % 10 {
            9 => Step::Roll,
            7 => Step::Delete((i % 13) as u8),
            5 => Step::Commit {
                name: 1,
                offset: i as u16,
            },
            _ => Step::Puts {
                keys: vec![(i % 17) as u8, (i % 5) as u8],
                zstd: i % 3 == 0,
            },
        })
        .collect();
    let h = build(dir.path(), &steps, &[3]);
    let cfg = CompactionConfig {
        min_dirty_ratio: 0.0,
        delete_retention_ms: 0,
        ..CompactionConfig::default()
    };
    let r = h
        .index
        .compact_shard(SHARD, &h.log, &cfg, 1_000_000, false)
        .unwrap();
    assert!(r.segments_rewritten > 0 && r.records_dropped > 0, "{r:?}");
    assert!(
        r.key_entries_removed > 0,
        "tombstones past retention were dropped: {r:?}"
    );
    assert!(r.bytes_after < r.bytes_before);
    let other = tempfile::tempdir().unwrap();
    let fresh = rebuilt(&h, other.path());
    let strip = |d: Vec<(&'static str, Vec<u8>, Vec<u8>)>| -> Vec<_> {
        d.into_iter().filter(|e| e.0 != "meta").collect()
    };
    assert_eq!(
        strip(h.index.dump_shard(SHARD).unwrap()),
        strip(fresh.dump_shard(SHARD).unwrap())
    );
    assert_eq!(
        h.index.cursor(SHARD, b"c\x01").unwrap().map(|c| c.0),
        Some(Offset(195))
    );
}

#[test]
fn groups_and_cursors_survive_reopen_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), ShardKind::Stream, log_config());
    let items: Vec<_> = (0..10u8).map(|i| (vec![i], vec![i; 10])).collect();
    h.append(&multi_put(&items, 100, Compression::None));
    let g = Bytes::from_static(b"g");
    let ops = [
        ControlOp::GroupLease {
            group: g.clone(),
            consumer: ConsumerId(1),
            until_ms: 1_000,
            offsets: (0..4).map(Offset).collect(),
        },
        ControlOp::GroupLease {
            group: g.clone(),
            consumer: ConsumerId(2),
            until_ms: 1_000,
            offsets: vec![Offset(3), Offset(4)],
        },
        ControlOp::GroupAck {
            group: g.clone(),
            offsets: vec![Offset(0), Offset(1), Offset(3)],
        },
        ControlOp::GroupNack {
            group: g.clone(),
            consumer: ConsumerId(2),
            redeliver_at_ms: 500,
            offsets: vec![Offset(4)],
        },
        ControlOp::CursorCommit {
            name: Bytes::from_static(b"sub"),
            offset: Offset(7),
        },
    ];
    let (_, out) = h.append(&control_batch(&ops, 200).unwrap());
    // Offset 3 was leased to consumer 1 until 1000: consumer 2 is refused it.
    assert_eq!(out.refusals.len(), 1);
    assert_eq!(out.refusals[0].2, Offset(3));
    let check = |h: &Harness| {
        let s = h.index.group(SHARD, &g).unwrap().unwrap();
        assert_eq!(s.floor, Offset(2), "0 and 1 acked, 2 still leased");
        assert_eq!(s.next, Offset(5));
        assert_eq!(s.entries[&Offset(3)].status, Status::Acked);
        assert_eq!(s.entries[&Offset(4)].status, Status::Ready { at_ms: 500 });
        assert_eq!(s.entries[&Offset(4)].deliveries, 1);
        assert_eq!(
            s.redeliverable(1_000, 10).len(),
            2,
            "2's lease expired, 4 was nacked"
        );
        assert_eq!(h.index.cursor(SHARD, b"sub").unwrap(), Some((Offset(7), 200)));
    };
    check(&h);
    h = h.reopen(log_config());
    check(&h);
    let root = h.root.clone();
    h.log.close().unwrap();
    drop(h.index);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    let h = Harness::open(&root, ShardKind::Stream, log_config());
    check(&h);
}

#[test]
fn retention_removes_index_entries_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::open(dir.path(), ShardKind::Stream, log_config());
    for i in 0..200i64 {
        let items: Vec<_> = (0..4u8).map(|k| (vec![k], vec![k; 100])).collect();
        h.append(&multi_put(&items, 1_000 + i * 10, Compression::None));
    }
    assert_eq!(h.index.offset_for_time(SHARD, 0).unwrap(), Some(Offset(0)));
    assert_eq!(h.index.offset_for_time(SHARD, 1_005).unwrap(), Some(Offset(4)));
    assert_eq!(
        h.index.offset_for_time(SHARD, 1_000 + 199 * 10).unwrap(),
        Some(Offset(796))
    );
    assert_eq!(
        h.index.offset_for_time(SHARD, 1_000 + 199 * 10 + 1).unwrap(),
        None
    );
    let (base, _) = h.index.locate(SHARD, Offset(401)).unwrap().unwrap();
    assert!(base <= Offset(401));
    let out = h
        .with_log(|l| {
            l.apply_retention(
                0,
                Retention {
                    retention_ms: None,
                    retention_bytes: Some(30 << 10),
                },
            )
        })
        .unwrap();
    assert!(out.segments_deleted > 0);
    h.with_log(|l| h.index.on_retention(SHARD, l)).unwrap();
    let earliest = out.earliest_offset;
    let dump = h.index.dump_shard(SHARD).unwrap();
    for (cf, k, v) in &dump {
        match *cf {
            "offsets" => assert!(felix_index::encoding::decode_offsets_key(k).unwrap().1 >= earliest),
            "time" => assert!(felix_index::encoding::decode_time_value(v).unwrap() >= earliest),
            _ => {}
        }
    }
    assert!(h.index.locate(SHARD, Offset(earliest.0 - 1)).unwrap().is_none());
    let t = h.index.offset_for_time(SHARD, 0).unwrap().unwrap();
    assert!(t >= earliest, "replay by time starts at what is still held");
    assert_eq!(
        h.index.shard_state(SHARD).unwrap().unwrap().earliest_offset,
        earliest
    );
    // Every record still held is found through the index.
    for o in (earliest.0..800).step_by(37) {
        let r = h
            .with_log(|l| h.index.record_at(l, SHARD, Offset(o)))
            .unwrap()
            .unwrap();
        assert_eq!(r.offset, Offset(o));
    }
    // The next write starts from retention's meta, not from the copy the
    // index kept of its own last apply.
    h.append(&multi_put(&[(vec![9], vec![9; 10])], 5_000, Compression::None));
    let state = h.index.shard_state(SHARD).unwrap().unwrap();
    assert_eq!(state.earliest_offset, earliest);
    assert_eq!(state.next_offset, Offset(801));
}

#[test]
fn a_corrupt_index_directory_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    for i in 0..50u8 {
        h.put(&[i % 7], &[i; 30], None, 1_000);
    }
    let before = h.index.dump_shard(SHARD).unwrap();
    let root = h.root.clone();
    h.log.close().unwrap();
    drop(h.index);
    // Garble every file RocksDB keeps its state in.
    for e in std::fs::read_dir(root.join("index")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("MANIFEST") || name == "CURRENT" || name.ends_with(".sst") {
            std::fs::write(&p, b"not a rocksdb file").unwrap();
        }
    }
    assert!(Index::open(root.join("index"), common::index_config()).is_err());
    let (index, reset) = Index::open_or_reset(root.join("index"), common::index_config(), 1).unwrap();
    assert!(reset);
    let (log, _) = felix_log::SharedLog::open(root.join("log"), log_config()).unwrap();
    let report = log
        .with(|l| index.recover_shard(SHARD, ShardKind::Keyed, l))
        .unwrap();
    assert!(report.rebuilt.is_some());
    assert_eq!(index.dump_shard(SHARD).unwrap(), before);
    h = Harness {
        root,
        log,
        index,
        kind: ShardKind::Keyed,
        report,
    };
    assert_eq!(h.get(&[0], 2_000).unwrap().0.as_ref(), &[49u8; 30][..]);
}

#[test]
fn start_up_indexes_a_missing_tail_and_rebuilds_an_index_ahead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    h.put(b"a", b"1", None, 1);
    // Appended but never indexed (a crash between the two).
    h.log
        .append(
            &common::keyed_batch(b"a", Some(b"2"), None, 2),
            felix_log::RaftTerm(1),
        )
        .unwrap();
    h.log
        .append(
            &common::keyed_batch(b"b", Some(b"3"), None, 3),
            felix_log::RaftTerm(1),
        )
        .unwrap();
    let h = h.reopen(log_config());
    assert_eq!(h.get(b"a", 10).unwrap().0.as_ref(), b"2");
    assert_eq!(h.get(b"b", 10).unwrap().0.as_ref(), b"3");
    // Now the log loses its last entry (Raft truncation of an uncommitted
    // suffix, or a lost unsynced tail) while the index still has it.
    let last = h.with_log(|l| l.last_raft().unwrap().1);
    h.with_log(|l| l.truncate_after(RaftIndex(last.0 - 1), 20))
        .unwrap();
    let report = h
        .with_log(|l| h.index.recover_shard(SHARD, ShardKind::Keyed, l))
        .unwrap();
    assert_eq!(report.rebuilt, Some("index ahead of the log's end"));
    assert!(
        h.get(b"b", 10).is_none(),
        "the index no longer points past the log"
    );
    assert_eq!(h.get(b"a", 10).unwrap().0.as_ref(), b"2");
}
