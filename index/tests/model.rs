//! Model-based test of the key index: puts, deletes, TTLs, conditional puts,
//! segment rolls, compaction, the TTL sweeper, reopen and a rebuild from a
//! deleted index, against a `BTreeMap`. After every step every key must read
//! exactly as the model says.

mod common;

use std::collections::BTreeMap;

use common::{log_config, Harness};
use felix_index::{CompactionConfig, ShardKind};
use proptest::prelude::*;

const KEYS: u8 = 10;

#[derive(Debug, Clone)]
enum Op {
    Put { k: u8, len: u8, ttl: Option<u16> },
    Delete { k: u8 },
    Cas { k: u8, right: bool },
    Tick { ms: u16 },
    Roll,
    Compact,
    Sweep,
    Reopen,
    DropIndex,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS, 1..200u8, prop::option::weighted(0.3, 1..500u16)).prop_map(|(k, len, ttl)| Op::Put { k, len, ttl }),
        2 => (0..KEYS).prop_map(|k| Op::Delete { k }),
        2 => (0..KEYS, any::<bool>()).prop_map(|(k, right)| Op::Cas { k, right }),
        3 => (1..400u16).prop_map(|ms| Op::Tick { ms }),
        2 => Just(Op::Roll),
        2 => Just(Op::Compact),
        1 => Just(Op::Sweep),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropIndex),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expiry: Option<i64>,
}

fn visible(model: &BTreeMap<u8, Entry>, k: u8, now: i64) -> Option<&Entry> {
    model.get(&k).filter(|e| e.expiry.is_none_or(|x| x > now))
}

fn value(k: u8, n: u64, len: u8) -> Vec<u8> {
    let mut v = format!("{k}:{n}:").into_bytes();
    v.resize(v.len() + len as usize, b'a' + k);
    v
}

fn check(h: &Harness, model: &BTreeMap<u8, Entry>, now: i64, step: usize) {
    for k in 0..KEYS {
        let got = h.get(&[k], now);
        let want = visible(model, k, now);
        match (got, want) {
            (None, None) => {}
            (Some((v, e)), Some(m)) => {
                assert_eq!(v.as_ref(), m.value.as_slice(), "step {step}: key {k} value");
                assert_eq!(e.version(), m.version, "step {step}: key {k} version");
            }
            (g, w) => panic!("step {step}: key {k}: index has {g:?}, model has {w:?}"),
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    let mut model: BTreeMap<u8, Entry> = BTreeMap::new();
    let mut now = 1_000_000i64;
    let compaction = CompactionConfig {
        min_dirty_ratio: 0.0,
        compaction_lag_ms: 0,
        delete_retention_ms: 300,
        keys_max: 1 << 20,
        write_bytes_per_s_max: None,
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Put { k, len, ttl } => {
                let v = value(k, step as u64, len);
                let o = h.put(&[k], &v, ttl.map(u64::from), now);
                model.insert(
                    k,
                    Entry {
                        value: v,
                        version: o.0 + 1,
                        expiry: ttl.map(|t| now + i64::from(t)),
                    },
                );
            }
            Op::Delete { k } => {
                h.delete(&[k], now);
                model.remove(&k);
            }
            Op::Cas { k, right } => {
                let current = visible(&model, k, now).map_or(0, |e| e.version);
                let asked = if right { current } else { current + 1 };
                let v = value(k, step as u64, 8);
                match h.put_if_version(&[k], &v, asked, now) {
                    Some(o) => {
                        assert!(right, "step {step}: a wrong version was accepted");
                        model.insert(
                            k,
                            Entry {
                                value: v,
                                version: o.0 + 1,
                                expiry: None,
                            },
                        );
                    }
                    None => assert!(!right, "step {step}: the right version was refused"),
                }
            }
            Op::Tick { ms } => now += i64::from(ms),
            Op::Roll => h.with_log(|l| l.roll(now)).unwrap(),
            Op::Compact => {
                h.index
                    .compact_shard(common::SHARD, &h.log, &compaction, now, true)
                    .unwrap();
            }
            Op::Sweep => {
                h.index.sweep_expired(common::SHARD, now, usize::MAX).unwrap();
            }
            Op::Reopen => h = h.reopen(log_config()),
            Op::DropIndex => {
                let root = h.root.clone();
                h.log.close().unwrap();
                drop(h.index);
                std::fs::remove_dir_all(root.join("index")).unwrap();
                h = Harness::open(&root, ShardKind::Keyed, log_config());
            }
        }
        check(&h, &model, now, step);
    }
    // Whatever happened, a final rebuild agrees too.
    h.with_log(|l| h.index.rebuild_shard(common::SHARD, ShardKind::Keyed, l))
        .unwrap();
    check(&h, &model, now, usize::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn key_index_matches_a_map(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

#[test]
fn expired_keys_read_as_absent_before_and_after_the_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    h.put(b"a", b"1", Some(100), 1_000);
    h.put(b"b", b"2", None, 1_000);
    assert!(h.get(b"a", 1_099).is_some());
    assert!(
        h.get(b"a", 1_100).is_none(),
        "expired at timestamp + ttl, sweeper or not"
    );
    let s = h.index.sweep_expired(common::SHARD, 1_100, 100).unwrap();
    assert_eq!(s.keys_removed, 1);
    assert!(!s.more);
    assert!(
        h.index.key_entry(common::SHARD, b"a").unwrap().is_none(),
        "the sweeper reclaimed the entry"
    );
    assert!(h.get(b"b", 10_000).is_some());
    // Rewriting a key with a new TTL replaces its expiry entry.
    h.put(b"c", b"3", Some(10), 2_000);
    h.put(b"c", b"4", Some(1_000), 2_001);
    let s = h.index.sweep_expired(common::SHARD, 2_500, 100).unwrap();
    assert_eq!(s.keys_removed, 0);
    assert_eq!(h.get(b"c", 2_500).unwrap().0.as_ref(), b"4");
}

#[test]
fn a_key_written_again_after_the_sweeper_took_it_is_new_to_every_apply() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    h.put(b"a", b"1", Some(100), 1_000);
    assert_eq!(
        h.index
            .sweep_expired(common::SHARD, 1_100, 100)
            .unwrap()
            .keys_removed,
        1
    );
    let dead = |h: &Harness| h.index.shard_state(common::SHARD).unwrap().unwrap().dead_records;
    assert_eq!(dead(&h), 1, "the swept write is dead");
    // What the index kept of its applies must not still hold the swept
    // entry: this write supersedes nothing.
    h.put(b"a", b"2", Some(100), 2_000);
    assert_eq!(dead(&h), 1);
    h.put(b"a", b"3", None, 2_001);
    assert_eq!(dead(&h), 2);
    assert_eq!(h.get(b"a", 5_000).unwrap().0.as_ref(), b"3");
    // The second write's expiry entry went with it: nothing is left to sweep.
    assert_eq!(
        h.index
            .sweep_expired(common::SHARD, 9_000, 100)
            .unwrap()
            .keys_removed,
        0
    );
    assert!(h.get(b"a", 9_000).is_some());
}
