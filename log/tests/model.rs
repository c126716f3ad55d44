//! Model-based test: random sequences of append / read / roll /
//! truncate_after / retention / reopen against an in-memory model.

mod common;

use felix_log::{Batch, Log, LogError, Offset, RaftIndex, RaftTerm, Retention};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { values: Vec<Vec<u8>>, bump_term: bool },
    Read { at: u16, max_bytes: u16 },
    Entry { at: u16 },
    Roll,
    TruncateAfter { at: u16 },
    DeleteBefore { at: u16 },
    RetainMs { ms: u16 },
    RetainBytes { bytes: u16 },
    Reopen { clean: bool },
    Advance { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..6), any::<bool>())
            .prop_map(|(values, bump_term)| Op::Append { values, bump_term }),
        3 => (any::<u16>(), 1..4096u16).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        2 => any::<u16>().prop_map(|at| Op::Entry { at }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|at| Op::TruncateAfter { at }),
        1 => any::<u16>().prop_map(|at| Op::DeleteBefore { at }),
        1 => any::<u16>().prop_map(|ms| Op::RetainMs { ms }),
        1 => any::<u16>().prop_map(|bytes| Op::RetainBytes { bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        2 => any::<u16>().prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Debug, Clone)]
struct MBatch {
    index: RaftIndex,
    term: RaftTerm,
    base: Offset,
    values: Vec<Vec<u8>>,
    ts: i64,
}

fn check_batch(b: &Batch, m: &MBatch) {
    let h = b.header();
    assert_eq!(h.raft_index, m.index);
    assert_eq!(h.raft_term, m.term);
    assert_eq!(h.base_offset, m.base);
    assert_eq!(h.max_timestamp_ms, m.ts);
    b.validate().expect("stored batch validates");
    let got: Vec<Vec<u8>> = b
        .records()
        .unwrap()
        .map(|r| r.unwrap().value.unwrap().to_vec())
        .collect();
    assert_eq!(got, m.values);
    for (i, r) in b.records().unwrap().enumerate() {
        assert_eq!(r.unwrap().offset, m.base.add(i as u64));
    }
}

fn pick<T>(v: &[T], at: u16) -> Option<&T> {
    (!v.is_empty()).then(|| &v[at as usize % v.len()])
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::small_config();
    let mut now: i64 = 1_000_000;
    let (mut log, _) = Log::open(dir.path(), cfg.clone(), now).unwrap();
    let mut model: Vec<MBatch> = Vec::new();
    let mut next_offset = Offset(0);
    let mut next_index = RaftIndex(0);
    let mut term = RaftTerm(1);
    // Last entry ever appended and not truncated: the log remembers it even
    // when retention removed the entry itself (Raft's last purged log id).
    let mut last: Option<(RaftTerm, RaftIndex)> = None;
    // The newest entry retention or deletion removed from the front.
    let mut purged: Option<(RaftTerm, RaftIndex)> = None;
    let purge = |model: &mut Vec<MBatch>,
                 purged: &mut Option<(RaftTerm, RaftIndex)>,
                 keep: &dyn Fn(&MBatch) -> bool| {
        let n = model.iter().take_while(|b| !keep(b)).count();
        if n > 0 {
            *purged = Some((model[n - 1].term, model[n - 1].index));
        }
        model.drain(..n);
        assert!(model.iter().all(keep), "the log deletes from the front only");
    };

    // Whether the checkpoint on disk is a clean close's that the open
    // trusted and nothing has changed since: only then may a crash be
    // reported as a clean close.
    let mut clean_on_disk = false;
    for op in ops {
        let before = log.segments();
        let reopen = matches!(op, Op::Reopen { .. });
        match op {
            Op::Append { values, bump_term } => {
                if bump_term {
                    term = RaftTerm(term.0 + 1);
                }
                let bytes = common::batch_of(&values, now);
                match log.append(&bytes, term, next_index, now) {
                    Ok(out) => {
                        assert_eq!(out.base_offset, next_offset);
                        assert_eq!(out.raft_index, next_index);
                        model.push(MBatch {
                            index: next_index,
                            term,
                            base: next_offset,
                            values: values.clone(),
                            ts: now,
                        });
                        next_offset = next_offset.add(values.len() as u64);
                        next_index = next_index.next();
                        last = Some((term, out.raft_index));
                    }
                    Err(LogError::BatchTooLarge { .. }) => assert!(bytes.len() > cfg.batch_bytes_max),
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            Op::Read { at, max_bytes } => {
                let from = if model.is_empty() {
                    log.earliest_offset()
                } else {
                    let lo = model[0].base.0;
                    Offset(lo + u64::from(at) % (next_offset.0 - lo + 1))
                };
                let chunk = log.read(from, max_bytes.into()).unwrap();
                let mut expect = model
                    .iter()
                    .skip_while(|b| b.base.add(b.values.len() as u64) <= from);
                let mut at_bytes = 0;
                let mut n = 0;
                while at_bytes < chunk.bytes.len() {
                    let h = felix_log::BatchHeader::decode(&chunk.bytes[at_bytes..]).unwrap();
                    let b = Batch::new(chunk.bytes.slice(at_bytes..at_bytes + h.batch_len as usize)).unwrap();
                    check_batch(
                        &b,
                        expect.next().expect("read returned more than the model holds"),
                    );
                    at_bytes += h.batch_len as usize;
                    n += 1;
                }
                assert!(
                    n >= 1 || from == next_offset,
                    "a read before the end returns a batch"
                );
                assert!(n <= 1 || chunk.bytes.len() <= max_bytes as usize);
                // The iterator sees exactly the model from there.
                let all: Vec<Batch> = log.batches_from(from).unwrap().collect();
                let want: Vec<&MBatch> = model
                    .iter()
                    .filter(|b| b.base.add(b.values.len() as u64) > from)
                    .collect();
                assert_eq!(all.len(), want.len());
                for (b, m) in all.iter().zip(want) {
                    check_batch(b, m);
                }
            }
            Op::Entry { at } => {
                if let Some(m) = pick(&model, at) {
                    check_batch(&log.entry(m.index).expect("entry present"), m);
                }
                assert!(log.entry(next_index).is_none());
            }
            Op::Roll => log.roll(now).unwrap(),
            Op::TruncateAfter { at } => {
                if let Some(m) = pick(&model, at).cloned() {
                    // Keep up to (and including) the entry before m, or m itself.
                    let keep = if at % 2 == 0 {
                        m.index
                    } else {
                        RaftIndex(m.index.0.wrapping_sub(1))
                    };
                    if keep.0 == u64::MAX {
                        continue;
                    }
                    log.truncate_after(keep, now).unwrap();
                    model.retain(|b| b.index <= keep);
                    last = model
                        .last()
                        .map(|b| (b.term, b.index))
                        .or(purged.filter(|(_, i)| *i == keep));
                    next_index = keep.next();
                    next_offset = model.last().map_or(m.base, |b| b.base.add(b.values.len() as u64));
                    if model.is_empty() {
                        next_offset = m.base;
                    }
                }
            }
            Op::DeleteBefore { at } => {
                if let Some(m) = pick(&model, at) {
                    log.delete_before(m.base).unwrap();
                    let earliest = log.earliest_offset();
                    assert!(
                        earliest <= m.base,
                        "deleted records at or above the requested offset"
                    );
                    purge(&mut model, &mut purged, &|b| b.base >= earliest);
                }
            }
            Op::RetainMs { ms } => {
                let cutoff = now - i64::from(ms);
                log.apply_retention(
                    now,
                    Retention {
                        retention_ms: Some(ms.into()),
                        retention_bytes: None,
                    },
                )
                .unwrap();
                let first = log.first_raft_index();
                for b in &model {
                    if first.is_none_or(|f| b.index < f) {
                        assert!(
                            b.ts < cutoff,
                            "retention removed a record newer than retention_ms"
                        );
                    }
                }
                purge(&mut model, &mut purged, &|b| first.is_some_and(|f| b.index >= f));
            }
            Op::RetainBytes { bytes } => {
                let limit = u64::from(bytes) * 4;
                log.apply_retention(
                    now,
                    Retention {
                        retention_ms: None,
                        retention_bytes: Some(limit),
                    },
                )
                .unwrap();
                let segs = log.segments();
                assert!(log.size_bytes() <= limit || segs.len() == 1 || !segs[0].sealed);
                let first = log.first_raft_index();
                purge(&mut model, &mut purged, &|b| first.is_some_and(|f| b.index >= f));
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap()
                } else {
                    drop(log)
                }
                let (l, report) = Log::open(dir.path(), cfg.clone(), now).unwrap();
                assert!(
                    report.torn_tail.is_none() && report.quarantined.is_empty(),
                    "{report:?}"
                );
                assert_eq!(report.clean, clean || clean_on_disk, "{report:?}");
                clean_on_disk = report.clean && report.verified_bytes == 0;
                log = l;
            }
            Op::Advance { ms } => now += i64::from(ms),
        }
        if !reopen && log.segments() != before {
            clean_on_disk = false;
        }
        assert_eq!(log.next_offset(), next_offset);
        assert_eq!(log.next_raft_index(), next_index);
        assert_eq!(log.first_raft_index(), model.first().map(|b| b.index));
        assert_eq!(log.last_raft(), last);
    }
    // Everything the model holds is readable at the end, after a reopen.
    drop(log);
    let (log, _) = Log::open(dir.path(), cfg, now).unwrap();
    let from = model.first().map_or(log.earliest_offset(), |b| b.base);
    let all: Vec<Batch> = log.batches_from(from).unwrap().collect();
    assert_eq!(all.len(), model.len());
    for (b, m) in all.iter().zip(&model) {
        check_batch(b, m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
