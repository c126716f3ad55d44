//! A shard's log and the index over it, driven like a broker would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use felix_index::{ApplyOutcome, Index, IndexConfig, KeyEntry, RecoverReport, ShardKind};
use felix_log::{Compression, Durability, Log, LogConfig, Offset, Positioned, RaftTerm, ShardId, SharedLog};

pub const SHARD: ShardId = ShardId(7);

pub fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        batch_bytes_max: 8 << 10,
        index_interval_bytes: 256,
        durability: Durability::None,
        ..LogConfig::default()
    }
}

pub fn index_config() -> IndexConfig {
    IndexConfig {
        sparse_interval_bytes: 256,
        block_cache_bytes: 8 << 20,
        sync_writes: false,
    }
}

pub struct Harness {
    pub root: PathBuf,
    pub log: SharedLog,
    pub index: Index,
    pub kind: ShardKind,
    /// What the start-up check found.
    pub report: RecoverReport,
}

impl Harness {
    /// Opens (creating or recovering) the log under `root/log` and the index
    /// under `root/index`, and brings the index in line with the log.
    pub fn open(root: &Path, kind: ShardKind, cfg: LogConfig) -> Harness {
        let (log, _) = SharedLog::open(root.join("log"), cfg).expect("open log");
        let index = Index::open(root.join("index"), index_config()).expect("open index");
        let report = log
            .with(|l| index.recover_shard(SHARD, kind, l))
            .expect("recover shard");
        Harness {
            root: root.to_path_buf(),
            log,
            index,
            kind,
            report,
        }
    }

    pub fn reopen(self, cfg: LogConfig) -> Harness {
        let (root, kind) = (self.root.clone(), self.kind);
        self.log.close().expect("close log");
        drop(self.index);
        Harness::open(&root, kind, cfg)
    }

    /// Appends a batch and indexes it; returns its first offset and what the
    /// index decided.
    pub fn append(&self, batch: &[u8]) -> (Offset, ApplyOutcome) {
        let out = self.log.append(batch, RaftTerm(1)).expect("append");
        let p: Vec<Positioned> = self
            .log
            .with(|l| l.positioned_from_raft_index(out.raft_index).take(1).collect());
        assert_eq!(p.len(), 1);
        let applied = self.index.apply(SHARD, self.kind, &p).expect("apply");
        (out.base_offset, applied)
    }

    pub fn put(&self, key: &[u8], value: &[u8], ttl_ms: Option<u64>, now: i64) -> Offset {
        self.append(&keyed_batch(key, Some(value), ttl_ms, now)).0
    }

    pub fn delete(&self, key: &[u8], now: i64) -> Offset {
        self.append(&keyed_batch(key, None, None, now)).0
    }

    /// A compare-and-set as the leader does it: check, then append only if
    /// the check passed. `None` if refused.
    pub fn put_if_version(&self, key: &[u8], value: &[u8], version: u64, now: i64) -> Option<Offset> {
        if !self
            .index
            .version_matches(SHARD, key, version, now)
            .expect("check")
        {
            return None;
        }
        Some(self.append(&keyed_batch(key, Some(value), None, now)).0)
    }

    pub fn get(&self, key: &[u8], now: i64) -> Option<(Bytes, KeyEntry)> {
        self.log
            .with(|l| self.index.get_value(l, SHARD, key, now))
            .expect("get")
    }

    pub fn with_log<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        self.log.with(f)
    }
}

pub fn keyed_batch(key: &[u8], value: Option<&[u8]>, ttl_ms: Option<u64>, now: i64) -> Vec<u8> {
    felix_testkit::Batch::keyed(&[(key, value)])
        .ttl(ttl_ms)
        .ts(now)
        .build()
}

/// A batch of several keyed puts at once.
pub fn multi_put(items: &[(Vec<u8>, Vec<u8>)], now: i64, compression: Compression) -> Vec<u8> {
    let records: Vec<(&[u8], Option<&[u8]>)> = items.iter().map(|(k, v)| (&k[..], Some(&v[..]))).collect();
    felix_testkit::Batch::keyed(&records)
        .ts(now)
        .compression(compression)
        .build()
}
