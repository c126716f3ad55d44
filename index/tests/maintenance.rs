//! The background task compacts a dirty keyed shard and sweeps its expired
//! keys without being asked, and stops when dropped.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{index_config, keyed_batch, log_config, SHARD};
use felix_index::{CompactionConfig, Index, Maintenance, ShardKind};
use felix_log::{Positioned, RaftTerm, SharedLog};

#[test]
fn maintenance_compacts_and_sweeps_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path().join("log"), log_config()).unwrap();
    let log = Arc::new(log);
    let index = Arc::new(Index::open(dir.path().join("index"), index_config()).unwrap());
    log.with(|l| index.recover_shard(SHARD, ShardKind::Keyed, l))
        .unwrap();
    let now = felix_log::now_ms();
    let put = |key: &[u8], value: &[u8], ttl: Option<u64>| {
        let out = log
            .append(&keyed_batch(key, Some(value), ttl, now), RaftTerm(1))
            .unwrap();
        let p: Vec<Positioned> = log.with(|l| l.positioned_from_raft_index(out.raft_index).take(1).collect());
        index.apply(SHARD, ShardKind::Keyed, &p).unwrap();
    };
    for i in 0..600u32 {
        let k = i % 20;
        let ttl = (k >= 15).then_some(1);
        put(format!("k{k}").as_bytes(), format!("{i:0>200}").as_bytes(), ttl);
    }
    log.with(|l| l.roll(now)).unwrap();
    let before: u64 = log.with(|l| l.segments()).iter().map(|s| s.bytes).sum();
    assert!(index.dirty_ratio(SHARD).unwrap() > 0.9);

    let m = Maintenance::start(index.clone(), Duration::from_millis(20), felix_log::now_ms).unwrap();
    m.register(
        SHARD,
        log.clone(),
        CompactionConfig {
            min_dirty_ratio: 0.5,
            compaction_lag_ms: 0,
            delete_retention_ms: 0,
            keys_max: 1 << 20,
            write_bytes_per_s_max: None,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = m.stats();
        if s.segments_rewritten > 0 && s.keys_swept >= 5 {
            assert_eq!(s.errors, 0);
            break;
        }
        assert!(Instant::now() < deadline, "nothing done in time: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(m);
    let after: u64 = log.with(|l| l.segments()).iter().map(|s| s.bytes).sum();
    // Single-record batches: each emptied one keeps its 88-byte header.
    assert!(after < before / 2, "{after} of {before} bytes left");
    assert!(index.dirty_ratio(SHARD).unwrap() < 0.5);
    let later = felix_log::now_ms();
    for k in 0..20u32 {
        let key = format!("k{k}");
        let got = log
            .with(|l| index.get_value(l, SHARD, key.as_bytes(), later))
            .unwrap();
        if k >= 15 {
            assert!(got.is_none(), "{key} expired");
            assert!(
                index.key_entry(SHARD, key.as_bytes()).unwrap().is_none(),
                "{key} swept"
            );
        } else {
            let last = 580 + k;
            assert_eq!(
                got.unwrap().0.as_ref(),
                format!("{last:0>200}").as_bytes(),
                "{key}"
            );
        }
    }
}

/// A keyed shard whose sealed segment was damaged after it was opened
/// (bytes flipped on disk under the mapping) fails its compaction with an
/// error naming the file; the maintenance thread goes on, and compacts
/// another shard registered beside it. Before, the damaged header was an
/// `expect` on the maintenance thread: the panic ended compaction and TTL
/// sweeps for every shard of the broker.
#[test]
fn a_damaged_sealed_segment_fails_its_compaction_and_the_other_shards_go_on() {
    use felix_log::ShardId;
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), index_config()).unwrap());
    let now = felix_log::now_ms();
    let shard = |id: ShardId| {
        let (log, _) = SharedLog::open(dir.path().join(format!("log{}", id.0)), log_config()).unwrap();
        let log = Arc::new(log);
        log.with(|l| index.recover_shard(id, ShardKind::Keyed, l))
            .unwrap();
        for i in 0..300u32 {
            let key = format!("k{}", i % 10);
            let b = keyed_batch(key.as_bytes(), Some(format!("{i:0>200}").as_bytes()), None, now);
            let out = log.append(&b, RaftTerm(1)).unwrap();
            let p: Vec<Positioned> =
                log.with(|l| l.positioned_from_raft_index(out.raft_index).take(1).collect());
            index.apply(id, ShardKind::Keyed, &p).unwrap();
        }
        log.with(|l| l.roll(now)).unwrap();
        log
    };
    let damaged_id = ShardId(8);
    let (damaged, healthy) = (shard(damaged_id), shard(SHARD));
    let sealed = damaged
        .with(|l| l.segments())
        .into_iter()
        .find(|s| s.sealed)
        .unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&sealed.path)
            .unwrap();
        // The first batch's header: its length and checksums.
        f.seek(SeekFrom::Start(felix_log::SEGMENT_HEADER_BYTES as u64))
            .unwrap();
        f.write_all(&[0xFF; 16]).unwrap();
    }
    let config = CompactionConfig {
        min_dirty_ratio: 0.5,
        compaction_lag_ms: 0,
        delete_retention_ms: 0,
        keys_max: 1 << 20,
        write_bytes_per_s_max: None,
    };
    let m = Maintenance::start(index.clone(), Duration::from_millis(20), felix_log::now_ms).unwrap();
    m.register(damaged_id, damaged.clone(), config);
    m.register(SHARD, healthy.clone(), config);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = m.stats();
        if s.compactions > 0 && s.errors > 0 && s.rounds > 3 {
            assert_eq!(s.panics, 0, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not both seen in time: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The healthy shard was rewritten; the damaged one was not.
    let gen = |log: &SharedLog| log.with(|l| l.segments()).iter().map(|s| s.bytes).sum::<u64>();
    assert!(index.dirty_ratio(SHARD).unwrap() < 0.5);
    assert!(
        index.dirty_ratio(damaged_id).unwrap() > 0.5,
        "the damaged shard was compacted"
    );
    assert!(gen(&healthy) < gen(&damaged));
}
