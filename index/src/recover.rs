//! Keeping a shard's index consistent with its log: the start-up check, the
//! full rebuild, re-indexing a segment that compaction rewrote, and the
//! range deletes that follow retention.

use std::collections::HashSet;
use std::sync::Arc;

use felix_log::batch::seal::Keyring;
use felix_log::{Log, Offset, Positioned, RaftIndex, SegmentId, SegmentInfo, ShardId};
use rocksdb::WriteBatch;

use crate::db::{Index, CF_EXPIRY, CF_KEYS, CF_META, CF_OFFSETS, CF_TIME, COLUMN_FAMILIES};
use crate::encoding::{self as enc, KeyEntry, Location};
use crate::error::Result;
use crate::meta::{ShardKind, ShardMeta};

/// Log entries indexed per `WriteBatch` when catching up or rebuilding.
pub const REINDEX_ENTRIES_PER_BATCH_MAX: usize = 4096;

/// What [`Index::recover_shard`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    /// Why the shard was rebuilt from scratch, if it was.
    pub rebuilt: Option<&'static str>,
    /// Log entries indexed to catch up (or to rebuild).
    pub entries_indexed: u64,
    /// Sealed segments whose compaction the index had not recorded.
    pub segments_reindexed: Vec<SegmentId>,
    /// Whether retention had removed segments the index still covered.
    pub retention_caught_up: bool,
}

/// What a re-index of one segment knows about the key entries it affects.
pub(crate) enum KeyFix<'a> {
    /// Exactly these (key, offset) latest writes left the segment.
    Removed(&'a [(Vec<u8>, Offset)]),
    /// Unknown (a crash between compaction and index update): scan the keys.
    Scan,
}

impl Index {
    /// Brings `shard`'s index in line with `log` at start-up (or after the
    /// log changed under it): an index that is missing, ahead of the log, or
    /// behind the log's first entry is rebuilt from the segments; otherwise
    /// retention and compaction it missed are caught up and the missing tail
    /// indexed. Must run before the shard's first apply.
    pub fn recover_shard(&self, shard: ShardId, kind: ShardKind, log: &Log) -> Result<RecoverReport> {
        self.recover_shard_through(shard, kind, log, None)
    }

    /// [`Index::recover_shard`] that indexes no entry above `through` (when
    /// given): a replicated shard's log may end in entries not committed yet,
    /// which only Raft may apply.
    pub fn recover_shard_through(
        &self,
        shard: ShardId,
        kind: ShardKind,
        log: &Log,
        through: Option<RaftIndex>,
    ) -> Result<RecoverReport> {
        let mut report = RecoverReport::default();
        let log_first = log.first_raft_index().unwrap_or(log.next_raft_index());
        let meta = self.load_meta(shard)?;
        if let Some(m) = &meta {
            m.check_kind(shard, kind)?;
        }
        let reason = match &meta {
            None => Some("no index for the shard"),
            Some(m) if m.next_raft_index > log.next_raft_index() => Some("index ahead of the log's end"),
            Some(m) if m.next_raft_index < log_first => Some("log starts after the index's end"),
            Some(_) => None,
        };
        let Some(meta) = meta.filter(|_| reason.is_none()) else {
            let reason = reason.expect("a missing index has a reason");
            tracing::info!(%shard, reason, "rebuilding shard index from the log");
            report.rebuilt = Some(reason);
            report.entries_indexed = self.rebuild_shard_through(shard, kind, log, through)?;
            return Ok(report);
        };
        if meta.earliest_offset < log.earliest_offset() {
            self.on_retention(shard, log)?;
            report.retention_caught_up = true;
        }
        for s in log.segments().iter().filter(|s| s.sealed) {
            if self.segment_generation(shard, s.id)? != s.generation {
                let batches: Vec<Positioned> = log.positioned_in(s.id).into_iter().flatten().collect();
                let batches = in_clear(log.keys(), batches)?;
                self.reindex_segment(shard, s, &batches, KeyFix::Scan, 0)?;
                report.segments_reindexed.push(s.id);
            }
        }
        report.entries_indexed = self.index_tail(shard, kind, log, meta.next_raft_index, through)?;
        Ok(report)
    }

    /// Drops everything indexed for `shard` and indexes its log from the
    /// first segment. Cursor and group state come back from the control
    /// records still in the log. Returns the entries indexed.
    pub fn rebuild_shard(&self, shard: ShardId, kind: ShardKind, log: &Log) -> Result<u64> {
        self.rebuild_shard_through(shard, kind, log, None)
    }

    /// [`Index::rebuild_shard`] that stops after entry `through`.
    pub fn rebuild_shard_through(
        &self,
        shard: ShardId,
        kind: ShardKind,
        log: &Log,
        through: Option<RaftIndex>,
    ) -> Result<u64> {
        self.clear_shard(shard)?;
        let first = log.first_raft_index().unwrap_or(log.next_raft_index());
        let mut meta = ShardMeta::new(kind, first);
        meta.earliest_offset = log.earliest_offset();
        meta.next_offset = log.earliest_offset();
        let mut wb = WriteBatch::default();
        self.put_meta(&mut wb, shard, &meta);
        self.write(wb)?;
        self.index_tail(shard, kind, log, first, through)
    }

    /// Removes every entry of `shard` from every column family.
    pub fn clear_shard(&self, shard: ShardId) -> Result<()> {
        let lock = self.shard_lock(shard);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.forget_kept(shard);
        let mut wb = WriteBatch::default();
        for cf in COLUMN_FAMILIES {
            // Only where the shard has entries: a range tombstone costs
            // every later read of its memtable (a new shard has none, and
            // every stream creation comes through here).
            let it = self.range(cf, &enc::shard_prefix(shard), &enc::shard_end(shard));
            let any = it.valid();
            self.iter_status(&it)?;
            drop(it);
            if any {
                wb.delete_range_cf(self.cf(cf), enc::shard_prefix(shard), enc::shard_end(shard));
            }
        }
        self.write(wb)
    }

    fn index_tail(
        &self,
        shard: ShardId,
        kind: ShardKind,
        log: &Log,
        from: RaftIndex,
        through: Option<RaftIndex>,
    ) -> Result<u64> {
        let mut n = 0u64;
        let mut chunk = Vec::with_capacity(REINDEX_ENTRIES_PER_BATCH_MAX);
        let within = |p: &Positioned| through.is_none_or(|t| p.batch.header().raft_index <= t);
        for p in log.positioned_from_raft_index(from).take_while(within) {
            chunk.push(p);
            if chunk.len() == REINDEX_ENTRIES_PER_BATCH_MAX {
                let clear = keyed_in_clear(log.keys(), kind, std::mem::take(&mut chunk))?;
                self.apply(shard, kind, &clear)?;
                n += clear.len() as u64;
            }
        }
        if !chunk.is_empty() {
            let clear = keyed_in_clear(log.keys(), kind, chunk)?;
            self.apply(shard, kind, &clear)?;
            n += clear.len() as u64;
        }
        Ok(n)
    }

    /// The compaction generation the index last recorded for a segment.
    pub fn segment_generation(&self, shard: ShardId, segment: SegmentId) -> Result<u32> {
        let k = enc::segment_meta_key(shard, segment);
        match self.get(CF_META, &k)? {
            Some(v) => Ok(enc::decode_segment_meta(&k, &v)?.1),
            None => Ok(0),
        }
    }

    /// Re-indexes one rewritten segment in one `WriteBatch`: its `offsets`
    /// entries are replaced, key entries pointing at records it no longer
    /// holds are removed, and its generation recorded.
    pub(crate) fn reindex_segment(
        &self,
        shard: ShardId,
        seg: &SegmentInfo,
        batches: &[Positioned],
        fix: KeyFix<'_>,
        records_dropped: u64,
    ) -> Result<u64> {
        let lock = self.shard_lock(shard);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut meta) = self.load_meta(shard)? else {
            return Ok(0);
        };
        let mut wb = WriteBatch::default();
        let offsets = self.cf(CF_OFFSETS);
        wb.delete_range_cf(
            offsets,
            enc::offsets_key(shard, seg.first_offset),
            enc::offsets_key(shard, seg.next_offset),
        );
        let mut last: Option<u32> = None;
        let interval = self.config().sparse_interval_bytes;
        let generation = batches.first().map_or(seg.generation, |b| b.generation);
        for b in batches.iter().filter(|b| !b.batch.header().flags.control()) {
            if last.is_none_or(|l| b.position - l >= interval) {
                let loc = Location {
                    segment: b.segment,
                    generation: b.generation,
                    position: b.position,
                };
                wb.put_cf(
                    offsets,
                    enc::offsets_key(shard, b.batch.header().base_offset),
                    enc::offsets_value(loc),
                );
                last = Some(b.position);
            }
        }
        // The tail's sparse tracking may point into this segment's old layout.
        if meta.sparse_segment == seg.id {
            meta.sparse_position = last.unwrap_or(0);
        }
        let mut removed = 0u64;
        if meta.kind == ShardKind::Keyed {
            let gone: Vec<(Vec<u8>, KeyEntry)> = match fix {
                KeyFix::Removed(list) => {
                    let mut out = Vec::new();
                    for (k, o) in list {
                        if let Some(e) = self.key_entry(shard, k)? {
                            if e.offset == *o {
                                out.push((k.clone(), e));
                            }
                        }
                    }
                    out
                }
                KeyFix::Scan => {
                    let mut present = HashSet::new();
                    for b in batches.iter().filter(|b| !b.batch.header().flags.control()) {
                        for r in b.batch.records()? {
                            present.insert(r?.offset);
                        }
                    }
                    self.key_entries(shard)?
                        .into_iter()
                        .filter(|(_, e)| {
                            e.offset >= seg.first_offset
                                && e.offset < seg.next_offset
                                && !present.contains(&e.offset)
                        })
                        .map(|(k, e)| (k.to_vec(), e))
                        .collect()
                }
            };
            for (k, e) in &gone {
                wb.delete_cf(self.cf(CF_KEYS), enc::keys_key(shard, k));
                if let Some(exp) = e.expiry_ms {
                    wb.delete_cf(self.cf(CF_EXPIRY), enc::expiry_key(shard, exp, k));
                }
            }
            removed = gone.len() as u64;
            meta.keyed_records = meta.keyed_records.saturating_sub(records_dropped);
            // The dropped latest writes were live; everything else was dead.
            meta.dead_records = meta
                .dead_records
                .saturating_sub(records_dropped.saturating_sub(removed));
        }
        wb.put_cf(
            self.cf(CF_META),
            enc::segment_meta_key(shard, seg.id),
            generation.to_be_bytes(),
        );
        self.put_meta(&mut wb, shard, &meta);
        self.write(wb)?;
        Ok(removed)
    }

    /// Follows retention: removes the index entries of the segments the log
    /// deleted from its front — range deletes for `offsets`, `time` and the
    /// segment records. Key entries of a keyed shard that point below the
    /// new start are removed one by one (retention on keyed logs is rare;
    /// compaction is what normally bounds them).
    pub fn on_retention(&self, shard: ShardId, log: &Log) -> Result<()> {
        let lock = self.shard_lock(shard);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut meta) = self.load_meta(shard)? else {
            return Ok(());
        };
        let earliest = log.earliest_offset();
        let first_segment = log.segments().first().map_or(SegmentId(0), |s| s.id);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_OFFSETS),
            enc::offsets_key(shard, Offset(0)),
            enc::offsets_key(shard, earliest),
        );
        // `time` entries grow with their offsets, so those below `earliest`
        // are a prefix of the shard's range.
        let mut it = self.range(CF_TIME, &enc::shard_prefix(shard), &enc::shard_end(shard));
        let mut cut: Option<i64> = None;
        while it.valid() {
            if enc::decode_time_value(it.value().expect("valid"))? >= earliest {
                break;
            }
            cut = Some(enc::decode_time_key(it.key().expect("valid"))?.1);
            it.next();
        }
        self.iter_status(&it)?;
        drop(it);
        if let Some(ts) = cut {
            let end = match ts.checked_add(1) {
                Some(t) => enc::time_key(shard, t).to_vec(),
                None => enc::shard_end(shard).to_vec(),
            };
            wb.delete_range_cf(self.cf(CF_TIME), enc::shard_prefix(shard).to_vec(), end);
        }
        wb.delete_range_cf(
            self.cf(CF_META),
            enc::segment_meta_key(shard, SegmentId(0)),
            enc::segment_meta_key(shard, first_segment),
        );
        if meta.kind == ShardKind::Keyed {
            for (k, e) in self.key_entries(shard)? {
                if e.offset < earliest {
                    wb.delete_cf(self.cf(CF_KEYS), enc::keys_key(shard, &k));
                    if let Some(exp) = e.expiry_ms {
                        wb.delete_cf(self.cf(CF_EXPIRY), enc::expiry_key(shard, exp, &k));
                    }
                }
            }
        }
        meta.earliest_offset = earliest;
        self.put_meta(&mut wb, shard, &meta);
        self.write(wb)
    }
}

/// `batches` with every batch sealed at rest opened by `keys` (a log's
/// keyring): what reads records reads them in the clear.
pub fn in_clear(keys: Option<&Arc<dyn Keyring>>, batches: Vec<Positioned>) -> Result<Vec<Positioned>> {
    batches
        .into_iter()
        .map(|p| {
            if !p.batch.header().flags.sealed() {
                return Ok(p);
            }
            let clear = match keys {
                Some(k) => felix_log::batch::seal::open(&p.batch, k.as_ref())?,
                None => felix_log::batch::seal::open(&p.batch, &felix_log::batch::seal::NoKeys)?,
            };
            Ok(Positioned { batch: clear, ..p })
        })
        .collect()
}

/// [`in_clear`] where [`Index::apply`] reads records: only a keyed
/// shard's (a stream's records are indexed by their headers alone).
pub fn keyed_in_clear(
    keys: Option<&Arc<dyn Keyring>>,
    kind: ShardKind,
    batches: Vec<Positioned>,
) -> Result<Vec<Positioned>> {
    if kind == ShardKind::Keyed {
        in_clear(keys, batches)
    } else {
        Ok(batches)
    }
}
