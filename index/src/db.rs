//! The RocksDB database: one per broker, a column family per purpose, every
//! shard's entries under its 8-byte prefix. Applying log entries writes one
//! `WriteBatch`, so the index moves from one consistent state to the next.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use felix_log::{
    Batch, BatchHeader, Log, LogError, Offset, Positioned, RaftIndex, ReadHint, Record, ShardId,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

use crate::control::ControlOp;
use crate::encoding::{self as enc, KeyEntry, Location};
use crate::error::{IndexError, Result};
use crate::group::{ConsumerId, Delivery, GroupState, Refusal, Status};
use crate::meta::{ShardKind, ShardMeta, ShardState};

pub const CF_OFFSETS: &str = "offsets";
pub const CF_TIME: &str = "time";
pub const CF_KEYS: &str = "keys";
pub const CF_EXPIRY: &str = "expiry";
pub const CF_CURSORS: &str = "cursors";
pub const CF_GROUPS: &str = "groups";
pub const CF_META: &str = "meta";
pub const COLUMN_FAMILIES: [&str; 7] = [
    CF_OFFSETS, CF_TIME, CF_KEYS, CF_EXPIRY, CF_CURSORS, CF_GROUPS, CF_META,
];

/// Bytes read from the log to find one record (whole batches; a batch
/// larger than this is still read whole).
const RECORD_READ_BYTES: usize = 64 << 10;

/// Tunables of the index database.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// About one `offsets` entry per this many bytes of log.
    pub sparse_interval_bytes: u32,
    /// Block cache shared by all column families.
    pub block_cache_bytes: usize,
    /// fsync RocksDB's WAL on every write. Off by default: the index is
    /// derived, and start-up re-indexes whatever tail a power loss took.
    pub sync_writes: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            sparse_interval_bytes: 4096,
            block_cache_bytes: 256 << 20,
            sync_writes: false,
        }
    }
}

/// What applying a run of log entries decided beyond indexing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Control ops that left some offsets alone: (entry, op number in the
    /// entry, offset, why).
    pub refusals: Vec<(RaftIndex, u32, Offset, Refusal)>,
    /// Control ops that could not be decoded (skipped, by entry).
    pub bad_control: Vec<RaftIndex>,
}

/// Bytes of keys whose latest entry the index keeps in memory, so that
/// the apply of a write to a key written recently needs no RocksDB read
/// (a memtable search that was a tenth of a cache put's CPU). Past it,
/// everything kept is dropped and kept afresh.
pub const KEYS_KEPT_BYTES_MAX: usize = 8 << 20;
/// What one kept key costs beside its bytes: its map slot and entry.
const KEY_KEPT_OVERHEAD_BYTES: usize = 64;

/// What `apply` wrote of each shard, so the apply of every write does not
/// read it back from RocksDB: the shard's meta (a skip-list search that was
/// a tenth of a cache put's CPU) and the latest entries of the keys it
/// wrote. Exactly what RocksDB holds for them, as every other writer of a
/// shard's meta or keys drops the shard's part (through
/// [`Index::put_meta`] or [`Index::clear_shard`]) while holding the
/// shard's lock.
#[derive(Default)]
struct Kept {
    /// One entry per shard this broker indexes.
    metas: HashMap<ShardId, ShardMeta>,
    keys: HashMap<ShardId, HashMap<Vec<u8>, KeyEntry>>,
    /// Of `keys`, bounded by [`KEYS_KEPT_BYTES_MAX`].
    bytes: usize,
}

impl Kept {
    fn forget(&mut self, shard: ShardId) {
        self.metas.remove(&shard);
        if let Some(m) = self.keys.remove(&shard) {
            let gone: usize = m.keys().map(|k| k.len() + KEY_KEPT_OVERHEAD_BYTES).sum();
            self.bytes = self.bytes.saturating_sub(gone);
        }
    }

    fn keep(&mut self, shard: ShardId, meta: ShardMeta, written: HashMap<Vec<u8>, Option<KeyEntry>>) {
        self.metas.insert(shard, meta);
        let m = self.keys.entry(shard).or_default();
        for (k, e) in written {
            let Some(e) = e else { continue };
            let len = k.len();
            if m.insert(k, e).is_none() {
                self.bytes += len + KEY_KEPT_OVERHEAD_BYTES;
            }
        }
        if self.bytes > KEYS_KEPT_BYTES_MAX {
            self.keys.clear();
            self.bytes = 0;
        }
    }
}

/// One raw entry of [`Index::dump_shard`]: column family, key, value.
pub type DumpEntry = (&'static str, Vec<u8>, Vec<u8>);

/// The index database.
pub struct Index {
    db: DB,
    path: PathBuf,
    config: IndexConfig,
    locks: Mutex<HashMap<ShardId, Arc<Mutex<()>>>>,
    kept: Mutex<Kept>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

/// Named subscriptions' committed offsets and groups' floors of a shard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions {
    pub cursors: Vec<(Bytes, Offset)>,
    pub groups: Vec<(Bytes, Offset)>,
}

impl Index {
    /// Opens (or creates) the index database at `path`.
    pub fn open(path: impl AsRef<Path>, config: IndexConfig) -> Result<Index> {
        let path = path.as_ref().to_path_buf();
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if matches!(*name, CF_KEYS | CF_CURSORS | CF_META) {
                // Point lookups dominate: a bloom filter spares most misses a
                // block read.
                table.set_bloom_filter(10.0, false);
            }
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(|source| IndexError::Rocks {
            path: path.clone(),
            source,
        })?;
        Ok(Index {
            db,
            path,
            config,
            locks: Mutex::new(HashMap::new()),
            kept: Mutex::new(Kept::default()),
        })
    }

    /// Opens the index at `path`; if RocksDB cannot open it (corrupt,
    /// truncated, from an incompatible version), moves it aside to
    /// `<path>.broken-<ms>` and starts empty, so that each shard is rebuilt
    /// from its segments by [`Index::recover_shard`]. Returns whether it did.
    pub fn open_or_reset(path: impl AsRef<Path>, config: IndexConfig, now_ms: i64) -> Result<(Index, bool)> {
        let path = path.as_ref();
        match Index::open(path, config.clone()) {
            Ok(i) => Ok((i, false)),
            Err(IndexError::Rocks { source, .. }) => {
                let aside = path.with_extension(format!("broken-{now_ms}"));
                tracing::error!(path = %path.display(), error = %source, aside = %aside.display(),
                    "index unreadable: moving it aside and rebuilding from the segments");
                std::fs::rename(path, &aside).map_err(|e| IndexError::Corrupt {
                    cf: "-",
                    reason: format!("cannot move unreadable index {} aside: {e}", path.display()),
                })?;
                Index::open(path, config).map(|i| (i, true))
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    pub(crate) fn rocks<T>(&self, r: std::result::Result<T, rocksdb::Error>) -> Result<T> {
        r.map_err(|source| IndexError::Rocks {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn write(&self, wb: WriteBatch) -> Result<()> {
        let mut o = WriteOptions::default();
        o.set_sync(self.config.sync_writes);
        self.rocks(self.db.write_opt(wb, &o))
    }

    /// Serialises writers of one shard (apply, sweep, compaction, recovery).
    pub(crate) fn shard_lock(&self, shard: ShardId) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(shard).or_default().clone()
    }

    pub(crate) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.rocks(self.db.get_cf(self.cf(cf), key))
    }

    /// A raw iterator over `[from, to)` of a column family.
    pub(crate) fn range(&self, cf: &str, from: &[u8], to: &[u8]) -> rocksdb::DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek(from);
        it
    }

    pub(crate) fn iter_status(&self, it: &rocksdb::DBRawIterator<'_>) -> Result<()> {
        self.rocks(it.status())
    }

    pub(crate) fn load_meta(&self, shard: ShardId) -> Result<Option<ShardMeta>> {
        self.get(CF_META, &enc::shard_meta_key(shard))?
            .map(|v| ShardMeta::decode(&v))
            .transpose()
    }

    /// Writes a shard's meta into `wb` for any writer but `apply`, which
    /// keeps its own copy: the copy is dropped, as `wb` may or may not land,
    /// and so are the shard's kept keys, which every such writer may change.
    pub(crate) fn put_meta(&self, wb: &mut WriteBatch, shard: ShardId, m: &ShardMeta) {
        self.forget_kept(shard);
        wb.put_cf(self.cf(CF_META), enc::shard_meta_key(shard), m.encode());
    }

    pub(crate) fn forget_kept(&self, shard: ShardId) {
        self.kept().forget(shard);
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- reads -----

    /// Progress of `shard`, if it was ever indexed.
    pub fn shard_state(&self, shard: ShardId) -> Result<Option<ShardState>> {
        Ok(self.load_meta(shard)?.map(|m| m.state()))
    }

    /// The indexed batch at or before `offset` and where it lies: a start for
    /// a scan that finds `offset` (pass it to `Log::read_at`).
    pub fn locate(&self, shard: ShardId, offset: Offset) -> Result<Option<(Offset, Location)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(enc::shard_prefix(shard).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_OFFSETS), ro);
        it.seek_for_prev(enc::offsets_key(shard, offset));
        if !it.valid() {
            self.iter_status(&it)?;
            return Ok(None);
        }
        let (s, base) = enc::decode_offsets_key(it.key().expect("valid"))?;
        if s != shard {
            return Ok(None);
        }
        Ok(Some((
            base,
            enc::decode_offsets_value(it.value().expect("valid"))?,
        )))
    }

    /// The base offset of the first batch holding a record timestamped at or
    /// after `ts_ms` (timestamps taken as their running maximum, so the answer
    /// is monotonic in `ts_ms`); `None` if every record is older.
    pub fn offset_for_time(&self, shard: ShardId, ts_ms: i64) -> Result<Option<Offset>> {
        let it = self.range(CF_TIME, &enc::time_key(shard, ts_ms), &enc::shard_end(shard));
        if !it.valid() {
            self.iter_status(&it)?;
            return Ok(None);
        }
        Ok(Some(enc::decode_time_value(it.value().expect("valid"))?))
    }

    /// The latest write of `key` if a read at `now_ms` sees it: never a
    /// tombstone, never an entry whose expiry has passed (whether or not the
    /// sweeper got to it).
    pub fn latest(&self, shard: ShardId, key: &[u8], now_ms: i64) -> Result<Option<KeyEntry>> {
        Ok(self.key_entry(shard, key)?.filter(|e| e.visible(now_ms)))
    }

    /// Whether `key`'s version as a read at `now_ms` sees it is `expected`
    /// (0 = absent): the check of a compare-and-set.
    ///
    /// The leader makes this check before it appends a conditional write,
    /// and appends only writes that pass, so the log holds decisions rather
    /// than conditions. Conditions re-evaluated at apply would not be
    /// replayable: once compaction has dropped the version a condition
    /// named, a rebuild would judge it differently.
    pub fn version_matches(&self, shard: ShardId, key: &[u8], expected: u64, now_ms: i64) -> Result<bool> {
        let have = self.latest(shard, key, now_ms)?.map_or(0, |e| e.version());
        Ok(have == expected)
    }

    /// The raw entry of `key`, tombstones and expired ones included.
    pub fn key_entry(&self, shard: ShardId, key: &[u8]) -> Result<Option<KeyEntry>> {
        let k = enc::keys_key(shard, key);
        let v = self.rocks(self.db.get_pinned_cf(self.cf(CF_KEYS), &k))?;
        v.map(|v| enc::decode_keys_value(&v)).transpose()
    }

    /// Every key entry of a shard, in key order.
    pub fn key_entries(&self, shard: ShardId) -> Result<Vec<(Bytes, KeyEntry)>> {
        let mut out = Vec::new();
        let mut it = self.range(CF_KEYS, &enc::shard_prefix(shard), &enc::shard_end(shard));
        while it.valid() {
            let k = it.key().expect("valid");
            out.push((
                Bytes::copy_from_slice(&k[enc::SHARD_PREFIX_BYTES..]),
                enc::decode_keys_value(it.value().expect("valid"))?,
            ));
            it.next();
        }
        self.iter_status(&it)?;
        Ok(out)
    }

    /// A page of a shard's keys a read at `now_ms` sees, in key order,
    /// strictly after `after` (from the first when `None`): at most
    /// `keys_max` keys, from at most `examined_max` entries looked at
    /// (tombstones and expired ones count, so a page costs a bounded time
    /// however much of the shard is dead). Also where the next page starts:
    /// the last entry looked at, or `None` when the shard has no more.
    pub fn live_keys(
        &self,
        shard: ShardId,
        after: Option<&[u8]>,
        keys_max: usize,
        examined_max: usize,
        now_ms: i64,
    ) -> Result<(Vec<Bytes>, Option<Bytes>)> {
        let from = match after {
            Some(a) => enc::keys_key(shard, a),
            None => enc::shard_prefix(shard).to_vec(),
        };
        let mut it = self.range(CF_KEYS, &from, &enc::shard_end(shard));
        if after.is_some() && it.valid() && it.key() == Some(&from[..]) {
            it.next();
        }
        let (mut keys, mut examined, mut last) = (Vec::new(), 0usize, None);
        while it.valid() && keys.len() < keys_max.max(1) && examined < examined_max.max(1) {
            let k = Bytes::copy_from_slice(&it.key().expect("valid")[enc::SHARD_PREFIX_BYTES..]);
            if enc::decode_keys_value(it.value().expect("valid"))?.visible(now_ms) {
                keys.push(k.clone());
            }
            last = Some(k);
            examined += 1;
            it.next();
        }
        let more = it.valid();
        self.iter_status(&it)?;
        Ok((keys, if more { last } else { None }))
    }

    /// A named subscription's committed offset and when it was committed.
    pub fn cursor(&self, shard: ShardId, name: &[u8]) -> Result<Option<(Offset, i64)>> {
        self.get(CF_CURSORS, &enc::cursor_key(shard, name))?
            .map(|v| enc::decode_cursor_value(&v))
            .transpose()
    }

    /// Where each named subscription and consumer group of `shard` stands,
    /// at most `max` of each: `(name, offset)` with a subscription's
    /// committed offset and a group's floor (its first record not acked).
    /// For lag figures; a group's records are skipped, not read.
    pub fn positions(&self, shard: ShardId, max: usize) -> Result<Positions> {
        let from = enc::shard_prefix(shard).to_vec();
        let to = enc::shard_prefix(ShardId(shard.0 + 1)).to_vec();
        let mut out = Positions::default();
        let mut it = self.range(CF_CURSORS, &from, &to);
        while it.valid() && out.cursors.len() < max {
            let k = it.key().expect("valid");
            let (o, _) = enc::decode_cursor_value(it.value().expect("valid"))?;
            out.cursors
                .push((Bytes::copy_from_slice(&k[enc::SHARD_PREFIX_BYTES..]), o));
            it.next();
        }
        self.iter_status(&it)?;
        let mut it = self.range(CF_GROUPS, &from, &to);
        while it.valid() && out.groups.len() < max {
            let k = it.key().expect("valid").to_vec();
            let len = *k.get(enc::SHARD_PREFIX_BYTES).unwrap_or(&0) as usize;
            let name_end = enc::SHARD_PREFIX_BYTES + 1 + len;
            if k.get(name_end) == Some(&enc::GROUP_META) {
                let v = it.value().expect("valid");
                enc::check_value_len("groups", v, enc::GROUP_META_VALUE_BYTES)?;
                out.groups.push((
                    Bytes::copy_from_slice(&k[enc::SHARD_PREFIX_BYTES + 1..name_end]),
                    Offset(enc::be64_at(v, 0)),
                ));
            }
            // Past this group's records: the next group's prefix.
            let mut next = k[..name_end].to_vec();
            next.push(enc::GROUP_REC + 1);
            it.seek(&next);
        }
        self.iter_status(&it)?;
        Ok(out)
    }

    /// A consumer group's state: floor, next and every entry between.
    pub fn group(&self, shard: ShardId, group: &[u8]) -> Result<Option<GroupState>> {
        if group.len() > enc::NAME_BYTES_MAX {
            return Err(IndexError::NameTooLong {
                len: group.len(),
                max: enc::NAME_BYTES_MAX,
            });
        }
        let Some(m) = self.get(CF_GROUPS, &enc::group_meta_key(shard, group))? else {
            return Ok(None);
        };
        enc::check_value_len("groups", &m, enc::GROUP_META_VALUE_BYTES)?;
        let mut g = GroupState {
            floor: Offset(enc::be64_at(&m, 0)),
            next: Offset(enc::be64_at(&m, 8)),
            entries: Default::default(),
        };
        let from = enc::group_rec_key(shard, group, g.floor);
        let to = enc::group_rec_key(shard, group, g.next);
        let mut it = self.range(CF_GROUPS, &from, &to);
        while it.valid() {
            let o = enc::decode_group_rec_offset(it.key().expect("valid"))?;
            g.entries.insert(o, decode_delivery(it.value().expect("valid"))?);
            it.next();
        }
        self.iter_status(&it)?;
        Ok(Some(g))
    }

    /// The record at `offset`, read from `log` starting where the `offsets`
    /// index points; `None` if the log no longer holds it (compacted away or
    /// removed by retention).
    pub fn record_at(&self, log: &Log, shard: ShardId, offset: Offset) -> Result<Option<Record>> {
        let hint = self.locate(shard, offset)?.map(|(_, l)| ReadHint {
            segment: l.segment,
            generation: l.generation,
            position: l.position,
        });
        let chunk = match hint {
            Some(h) => log.read_at(h, offset, RECORD_READ_BYTES),
            None => log.read(offset, RECORD_READ_BYTES),
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(LogError::OffsetOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut pos = 0;
        while pos < chunk.bytes.len() {
            let h = BatchHeader::decode(&chunk.bytes[pos..])?;
            let end = pos + h.batch_len as usize;
            if h.contains(offset) && !h.flags.control() {
                let b = log.clear(&Batch::new(chunk.bytes.slice(pos..end))?)?;
                for r in b.records()? {
                    let r = r?;
                    if r.offset == offset {
                        return Ok(Some(r));
                    }
                }
                return Ok(None);
            }
            if h.base_offset > offset {
                break;
            }
            pos = end;
        }
        Ok(None)
    }

    /// The value of `key` as a read at `now_ms` sees it, with its entry.
    pub fn get_value(
        &self,
        log: &Log,
        shard: ShardId,
        key: &[u8],
        now_ms: i64,
    ) -> Result<Option<(Bytes, KeyEntry)>> {
        let Some(e) = self.latest(shard, key, now_ms)? else {
            return Ok(None);
        };
        match self.record_at(log, shard, e.offset)? {
            Some(Record { value: Some(v), .. }) => Ok(Some((v, e))),
            _ => Err(IndexError::Corrupt {
                cf: "keys",
                reason: format!("key entry points at offset {} which holds no value", e.offset),
            }),
        }
    }

    /// Every entry of `shard` in every column family, in order: for
    /// comparing two indexes and for debugging.
    pub fn dump_shard(&self, shard: ShardId) -> Result<Vec<DumpEntry>> {
        let mut out = Vec::new();
        for cf in COLUMN_FAMILIES {
            let mut it = self.range(cf, &enc::shard_prefix(shard), &enc::shard_end(shard));
            while it.valid() {
                out.push((
                    cf,
                    it.key().expect("valid").to_vec(),
                    it.value().expect("valid").to_vec(),
                ));
                it.next();
            }
            self.iter_status(&it)?;
        }
        Ok(out)
    }

    // ----- apply -----

    /// Indexes a run of log entries of `shard` (in Raft index order, following
    /// what was indexed before) in one `WriteBatch`. Entries already indexed
    /// are skipped, so replaying an overlap is harmless. The first apply of a
    /// shard fixes its kind.
    pub fn apply(&self, shard: ShardId, kind: ShardKind, entries: &[Positioned]) -> Result<ApplyOutcome> {
        let lock = self.shard_lock(shard);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.kept().metas.get(&shard).copied();
        let mut meta = match known.map_or_else(|| self.load_meta(shard), |m| Ok(Some(m)))? {
            Some(m) => m,
            None => ShardMeta::new(
                kind,
                entries
                    .first()
                    .map_or(RaftIndex(0), |e| e.batch.header().raft_index),
            ),
        };
        meta.check_kind(shard, kind)?;
        let mut wb = WriteBatch::default();
        let mut keys = HashMap::new();
        let out = self.apply_into(&mut wb, shard, &mut meta, entries, &mut keys)?;
        wb.put_cf(self.cf(CF_META), enc::shard_meta_key(shard), meta.encode());
        self.write(wb)?;
        self.kept().keep(shard, meta, keys);
        Ok(out)
    }

    /// [`Index::apply`] into its batch and meta; `keys` ends holding the
    /// latest entry of every key written.
    fn apply_into(
        &self,
        wb: &mut WriteBatch,
        shard: ShardId,
        meta: &mut ShardMeta,
        entries: &[Positioned],
        keys: &mut HashMap<Vec<u8>, Option<KeyEntry>>,
    ) -> Result<ApplyOutcome> {
        let mut out = ApplyOutcome::default();
        let mut groups: HashMap<Bytes, GroupWork> = HashMap::new();
        for e in entries {
            let h = *e.batch.header();
            if h.raft_index < meta.next_raft_index {
                continue;
            }
            if h.raft_index != meta.next_raft_index && meta.next_raft_index != RaftIndex(0) {
                // A gap left by a repair is accepted, as the log accepts it.
                tracing::warn!(%shard, expected = %meta.next_raft_index, got = %h.raft_index, "raft index gap while indexing");
            }
            meta.next_raft_index = h.raft_index.next();
            if h.flags.control() {
                for (n, r) in e.batch.records()?.enumerate() {
                    let r = r?;
                    let Some(v) = &r.value else { continue };
                    match ControlOp::decode(v) {
                        Ok(op) => {
                            self.apply_control(wb, shard, &mut groups, op, r.timestamp_ms, |o, why| {
                                out.refusals.push((h.raft_index, n as u32, o, why))
                            })?
                        }
                        Err(err) => {
                            tracing::warn!(%shard, index = %h.raft_index, %err, "skipping undecodable control record");
                            out.bad_control.push(h.raft_index);
                        }
                    }
                }
                continue;
            }
            // offsets: sparse, plus the first batch of every segment.
            let new_segment = e.segment != meta.sparse_segment || e.position < meta.sparse_position;
            if new_segment || e.position - meta.sparse_position >= self.config.sparse_interval_bytes {
                let loc = Location {
                    segment: e.segment,
                    generation: e.generation,
                    position: e.position,
                };
                wb.put_cf(
                    self.cf(CF_OFFSETS),
                    enc::offsets_key(shard, h.base_offset),
                    enc::offsets_value(loc),
                );
                meta.sparse_segment = e.segment;
                meta.sparse_position = e.position;
            }
            if h.max_timestamp_ms > meta.max_timestamp_ms {
                wb.put_cf(
                    self.cf(CF_TIME),
                    enc::time_key(shard, h.max_timestamp_ms),
                    h.base_offset.0.to_be_bytes(),
                );
                meta.max_timestamp_ms = h.max_timestamp_ms;
            }
            meta.next_offset = h.next_offset();
            if meta.kind == ShardKind::Keyed {
                for r in e.batch.records()? {
                    let r = r?;
                    let Some(key) = &r.key else { continue };
                    self.apply_keyed(wb, shard, meta, keys, key, &r)?;
                }
            }
        }
        for (name, w) in groups {
            self.write_group(wb, shard, &name, w);
        }
        Ok(out)
    }

    fn current_key(
        &self,
        shard: ShardId,
        keys: &mut HashMap<Vec<u8>, Option<KeyEntry>>,
        key: &[u8],
    ) -> Result<Option<KeyEntry>> {
        if let Some(e) = keys.get(key) {
            return Ok(*e);
        }
        let kept = self.kept().keys.get(&shard).and_then(|m| m.get(key).copied());
        let e = match kept {
            Some(e) => Some(e),
            None => self.key_entry(shard, key)?,
        };
        keys.insert(key.to_vec(), e);
        Ok(e)
    }

    /// Indexes one keyed record: it becomes its key's latest write.
    fn apply_keyed(
        &self,
        wb: &mut WriteBatch,
        shard: ShardId,
        meta: &mut ShardMeta,
        keys: &mut HashMap<Vec<u8>, Option<KeyEntry>>,
        key: &[u8],
        r: &felix_log::Record,
    ) -> Result<()> {
        meta.keyed_records += 1;
        let old = self.current_key(shard, keys, key)?;
        let new = KeyEntry {
            offset: r.offset,
            expiry_ms: r
                .ttl_ms
                .map(|t| r.timestamp_ms.saturating_add(t.min(i64::MAX as u64) as i64)),
            timestamp_ms: r.timestamp_ms,
            tombstone: r.value.is_none(),
        };
        if let Some(old) = old {
            meta.dead_records += 1;
            if let Some(exp) = old.expiry_ms {
                wb.delete_cf(self.cf(CF_EXPIRY), enc::expiry_key(shard, exp, key));
            }
        }
        wb.put_cf(self.cf(CF_KEYS), enc::keys_key(shard, key), enc::keys_value(&new));
        if let Some(exp) = new.expiry_ms {
            wb.put_cf(self.cf(CF_EXPIRY), enc::expiry_key(shard, exp, key), []);
        }
        keys.insert(key.to_vec(), Some(new));
        Ok(())
    }

    fn apply_control(
        &self,
        wb: &mut WriteBatch,
        shard: ShardId,
        groups: &mut HashMap<Bytes, GroupWork>,
        op: ControlOp,
        now_ms: i64,
        mut refused: impl FnMut(Offset, Refusal),
    ) -> Result<()> {
        match op {
            ControlOp::CursorCommit { name, offset } => {
                wb.put_cf(
                    self.cf(CF_CURSORS),
                    enc::cursor_key(shard, &name),
                    enc::cursor_value(offset, now_ms),
                );
            }
            ControlOp::GroupLease {
                group: name,
                consumer,
                until_ms,
                offsets,
            } => {
                let start = offsets.iter().min().copied();
                let w = self.group_work(shard, groups, &name, start)?;
                for_each_offset(w, offsets, &mut refused, |g, o| {
                    g.lease(o, consumer, until_ms, now_ms)
                });
            }
            ControlOp::GroupAck { group: name, offsets } => {
                let w = self.group_work(shard, groups, &name, None)?;
                if let Some(w) = for_each_offset(w, offsets, &mut refused, |g, o| g.ack(o)) {
                    w.state.advance_floor();
                }
            }
            ControlOp::GroupNack {
                group: name,
                consumer,
                redeliver_at_ms: t,
                offsets,
            } => {
                let w = self.group_work(shard, groups, &name, None)?;
                for_each_offset(w, offsets, &mut refused, |g, o| g.nack(o, consumer, t));
            }
            ControlOp::GroupExtend {
                group: name,
                consumer,
                until_ms: t,
                offsets,
            } => {
                let w = self.group_work(shard, groups, &name, None)?;
                for_each_offset(w, offsets, &mut refused, |g, o| g.extend(o, consumer, t));
            }
            ControlOp::Foreign(_) => {}
        }
        Ok(())
    }

    /// The group `name` as this apply changes it, loaded on first use;
    /// created at `create_at` if it does not exist and that is given.
    fn group_work<'g>(
        &self,
        shard: ShardId,
        groups: &'g mut HashMap<Bytes, GroupWork>,
        name: &Bytes,
        create_at: Option<Offset>,
    ) -> Result<Option<&'g mut GroupWork>> {
        if !groups.contains_key(name) {
            let loaded = match self.group(shard, name)? {
                Some(g) => Some(g),
                None => create_at.map(GroupState::starting_at),
            };
            let Some(g) = loaded else { return Ok(None) };
            groups.insert(
                name.clone(),
                GroupWork {
                    loaded_floor: g.floor,
                    state: g,
                    dirty: BTreeSet::new(),
                },
            );
        }
        Ok(groups.get_mut(name))
    }

    fn write_group(&self, wb: &mut WriteBatch, shard: ShardId, name: &[u8], w: GroupWork) {
        let cf = self.cf(CF_GROUPS);
        let g = &w.state;
        if g.floor > w.loaded_floor {
            wb.delete_range_cf(
                cf,
                enc::group_rec_key(shard, name, w.loaded_floor),
                enc::group_rec_key(shard, name, g.floor),
            );
        }
        for o in w.dirty.range(g.floor..) {
            if let Some(d) = g.entries.get(o) {
                wb.put_cf(cf, enc::group_rec_key(shard, name, *o), encode_delivery(d));
            }
        }
        let mut m = [0u8; enc::GROUP_META_VALUE_BYTES];
        m[..8].copy_from_slice(&g.floor.0.to_be_bytes());
        m[8..].copy_from_slice(&g.next.0.to_be_bytes());
        wb.put_cf(cf, enc::group_meta_key(shard, name), m);
    }
}

/// Applies `f` to each offset of an op on group `w`, marking what changed
/// and reporting what was refused (everything, if the group does not exist).
fn for_each_offset<'g>(
    w: Option<&'g mut GroupWork>,
    offsets: Vec<Offset>,
    refused: &mut impl FnMut(Offset, Refusal),
    mut f: impl FnMut(&mut GroupState, Offset) -> std::result::Result<(), Refusal>,
) -> Option<&'g mut GroupWork> {
    let Some(w) = w else {
        offsets
            .into_iter()
            .for_each(|o| refused(o, Refusal::NotDelivered));
        return None;
    };
    for o in offsets {
        match f(&mut w.state, o) {
            Ok(()) => {
                w.dirty.insert(o);
            }
            Err(why) => refused(o, why),
        }
    }
    Some(w)
}

/// A group being changed by one apply.
struct GroupWork {
    loaded_floor: Offset,
    state: GroupState,
    dirty: BTreeSet<Offset>,
}

const STATUS_LEASED: u8 = 0;
const STATUS_READY: u8 = 1;
const STATUS_ACKED: u8 = 2;

fn encode_delivery(d: &Delivery) -> [u8; enc::GROUP_REC_VALUE_BYTES] {
    let mut v = [0u8; enc::GROUP_REC_VALUE_BYTES];
    v[..4].copy_from_slice(&d.deliveries.to_be_bytes());
    let (status, consumer, at) = match d.status {
        Status::Leased { consumer, until_ms } => (STATUS_LEASED, consumer.0, until_ms),
        Status::Ready { at_ms } => (STATUS_READY, 0, at_ms),
        Status::Acked => (STATUS_ACKED, 0, 0),
    };
    v[4] = status;
    v[5..13].copy_from_slice(&consumer.to_be_bytes());
    v[13..21].copy_from_slice(&at.to_be_bytes());
    v
}

fn decode_delivery(v: &[u8]) -> Result<Delivery> {
    enc::check_value_len("groups", v, enc::GROUP_REC_VALUE_BYTES)?;
    let consumer = ConsumerId(enc::be64_at(v, 5));
    let at = enc::be64_at(v, 13) as i64;
    let status = match v[4] {
        STATUS_LEASED => Status::Leased {
            consumer,
            until_ms: at,
        },
        STATUS_READY => Status::Ready { at_ms: at },
        STATUS_ACKED => Status::Acked,
        s => {
            return Err(IndexError::Corrupt {
                cf: "groups",
                reason: format!("unknown delivery status {s}"),
            })
        }
    };
    Ok(Delivery {
        deliveries: enc::be32_at(v, 0),
        status,
    })
}
