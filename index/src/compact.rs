//! Compaction of keyed logs (caches, compacted streams): rewrite sealed
//! segments keeping only each key's latest write, dropping superseded
//! records, records whose TTL passed, and
//! tombstones older than `delete_retention_ms`.
//!
//! The index is the oracle: a keyed record is live iff its key's entry points
//! at its offset (and it is neither expired nor an old tombstone). A pass
//! loads the live offsets of the range it compacts into memory once, then
//! rewrites segments oldest first, each in three steps:
//!
//! 1. stage: write the new segment beside the old and fsync it (no lock on
//!    the log, so appends carry on);
//! 2. install: rename it over the old, fsync the directory (log locked for
//!    a rename and a remap);
//! 3. index: one `WriteBatch` replaces the segment's `offsets` entries,
//!    removes the key entries of dropped tombstones and expired records, and
//!    records the segment's new generation.
//!
//! A crash before 2 leaves the old segment (the staged file is deleted at
//! open); after 2 the new one. A crash between 2 and 3 leaves the index
//! describing the old layout; `recover_shard` notices the generation
//! mismatch and re-indexes that segment. Every step leaves each key's latest
//! value readable: only records that are not any key's readable latest
//! write are dropped.
//!
//! Tombstones are only dropped in segments whose every predecessor is
//! compacted in the same pass (passes go oldest first over a prefix of the
//! sealed segments), so an older value of the key cannot outlive its
//! tombstone and resurface on a rebuild.

use std::collections::HashMap;

use felix_log::{failpoint, Offset, Positioned, ShardId, SharedLog};

use crate::db::Index;
use crate::encoding::KeyEntry;
use crate::error::{IndexError, Result};
use crate::meta::ShardKind;
use crate::recover::KeyFix;

/// Tunables of compaction.
#[derive(Debug, Clone, Copy)]
pub struct CompactionConfig {
    /// Run a pass only when at least this fraction of the shard's keyed
    /// records is dead (superseded or expired).
    pub min_dirty_ratio: f64,
    /// Leave segments whose newest record is younger than this alone, so
    /// consumers of a compacted stream see recent history in full.
    pub compaction_lag_ms: u64,
    /// Keep tombstones this long after they were written, so consumers see
    /// deletes before they vanish.
    pub delete_retention_ms: u64,
    /// Live keys a pass may hold in memory (about 40 bytes each).
    pub keys_max: u64,
    /// Rate at which a pass writes new segments (None: as fast as the disk
    /// goes). Paced writes keep appenders' fsync latency on the same disk
    /// close to idle.
    pub write_bytes_per_s_max: Option<u64>,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_dirty_ratio: 0.5,
            compaction_lag_ms: 0,
            delete_retention_ms: 24 * 3600 * 1000,
            keys_max: 16 << 20,
            write_bytes_per_s_max: Some(16 << 20),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactionReport {
    /// Dirty ratio that decided the pass.
    pub dirty_ratio: f64,
    /// Set when the pass did nothing, with the reason.
    pub skipped: Option<&'static str>,
    pub segments_considered: usize,
    pub segments_rewritten: usize,
    pub records_dropped: u64,
    /// Latest writes dropped: tombstones past retention and expired records.
    pub key_entries_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Index {
    /// The fraction of `shard`'s keyed records that compaction could drop.
    pub fn dirty_ratio(&self, shard: ShardId) -> Result<f64> {
        Ok(self.shard_state(shard)?.map_or(0.0, |s| s.dirty_ratio()))
    }

    /// One compaction pass over `shard`'s sealed segments (those older than
    /// the compaction lag), if its dirty ratio calls for one or `force`.
    pub fn compact_shard(
        &self,
        shard: ShardId,
        log: &SharedLog,
        config: &CompactionConfig,
        now_ms: i64,
        force: bool,
    ) -> Result<CompactionReport> {
        let mut report = CompactionReport::default();
        let Some(state) = self.shard_state(shard)? else {
            report.skipped = Some("shard not indexed");
            return Ok(report);
        };
        if state.kind != ShardKind::Keyed {
            report.skipped = Some("not a keyed shard");
            return Ok(report);
        }
        report.dirty_ratio = state.dirty_ratio();
        if !force && report.dirty_ratio < config.min_dirty_ratio {
            report.skipped = Some("dirty ratio below min_dirty_ratio");
            return Ok(report);
        }
        let lag_cutoff = now_ms.saturating_sub(config.compaction_lag_ms.min(i64::MAX as u64) as i64);
        let eligible: Vec<_> = log
            .with(|l| l.segments())
            .into_iter()
            .take_while(|s| s.sealed)
            .take_while(|s| s.max_timestamp_ms <= lag_cutoff)
            .collect();
        // The active segment is never sealed, so it is never in the list.
        report.segments_considered = eligible.len();
        let (Some(first), Some(last)) = (eligible.first(), eligible.last()) else {
            report.skipped = Some("no sealed segment past the compaction lag");
            return Ok(report);
        };
        let range = first.first_offset..last.next_offset;
        let mut live: HashMap<Offset, KeyEntry> = HashMap::new();
        for (_, e) in self.key_entries(shard)? {
            if range.contains(&e.offset) {
                live.insert(e.offset, e);
                if live.len() as u64 > config.keys_max {
                    return Err(IndexError::CompactionTooLarge {
                        shard,
                        keys: live.len() as u64,
                        max: config.keys_max,
                    });
                }
            }
        }
        let delete_retention = config.delete_retention_ms.min(i64::MAX as u64) as i64;
        let mut removed_latest = 0u64;
        // Dropping a key's latest write is safe only while every earlier
        // segment has been compacted in this pass.
        let mut prefix_intact = true;
        for seg in &eligible {
            let Some(sealed) = log.with(|l| l.sealed_segment(seg.id)) else {
                continue; // retention took it meanwhile
            };
            let mut gone: Vec<(Vec<u8>, Offset)> = Vec::new();
            let keep = |r: &felix_log::Record| {
                let Some(key) = &r.key else { return true };
                let Some(e) = live.get(&r.offset) else {
                    return false; // superseded
                };
                let drop_latest = prefix_intact
                    && (e.expired(now_ms)
                        || (e.tombstone && now_ms.saturating_sub(e.timestamp_ms) >= delete_retention));
                if drop_latest {
                    gone.push((key.to_vec(), r.offset));
                }
                !drop_latest
            };
            let Some(staged) = sealed.stage_compaction(keep, config.write_bytes_per_s_max)? else {
                continue;
            };
            let outcome = match log.with(|l| l.install_compaction(staged)) {
                Ok(o) => o,
                Err(felix_log::LogError::NotSealed { .. }) => {
                    prefix_intact = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            outcome.sync()?;
            failpoint::hit("index.compact.installed");
            let (info, batches) = log.with(|l| {
                let info = l.segments().into_iter().find(|s| s.id == seg.id);
                let batches: Vec<Positioned> = l.positioned_in(seg.id).into_iter().flatten().collect();
                crate::recover::in_clear(l.keys(), batches).map(|b| (info, b))
            })?;
            let Some(info) = info else { continue };
            let removed = self.reindex_segment(
                shard,
                &info,
                &batches,
                KeyFix::Removed(&gone),
                outcome.records_dropped,
            )?;
            removed_latest += removed;
            failpoint::hit("index.compact.indexed");
            report.segments_rewritten += 1;
            report.records_dropped += outcome.records_dropped;
            report.bytes_before += outcome.bytes_before;
            report.bytes_after += outcome.bytes_after;
        }
        report.key_entries_removed = removed_latest;
        Ok(report)
    }
}
