//! The active TTL sweeper: reclaims the key entries whose expiry has passed,
//! oldest expiry first, using the `expiry` column family so it never scans
//! live keys. Reads do not depend on it (they check expiry themselves); it
//! exists so that expired keys stop taking index space and become dead for
//! compaction.

use felix_log::ShardId;
use rocksdb::WriteBatch;

use crate::db::{Index, CF_EXPIRY, CF_KEYS};
use crate::encoding as enc;
use crate::error::Result;

/// Expired keys reclaimed per sweep call (one `WriteBatch`).
pub const SWEEP_KEYS_MAX: usize = 10_000;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Expired key entries removed.
    pub keys_removed: usize,
    /// Whether more expired entries may remain (the sweep stopped at `max`).
    pub more: bool,
}

impl Index {
    /// Removes up to `max` (at most [`SWEEP_KEYS_MAX`]) key entries of
    /// `shard` that expired at or before `now_ms`, in one `WriteBatch`.
    pub fn sweep_expired(&self, shard: ShardId, now_ms: i64, max: usize) -> Result<SweepOutcome> {
        let max = max.min(SWEEP_KEYS_MAX);
        let lock = self.shard_lock(shard);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut meta) = self.load_meta(shard)? else {
            return Ok(SweepOutcome::default());
        };
        let end = match now_ms.checked_add(1) {
            Some(t) => enc::expiry_prefix(shard, t).to_vec(),
            None => enc::shard_end(shard).to_vec(),
        };
        let mut it = self.range(CF_EXPIRY, &enc::shard_prefix(shard), &end);
        let mut wb = WriteBatch::default();
        let mut swept = 0;
        let mut seen = 0;
        while it.valid() && seen < max {
            let k = it.key().expect("valid");
            let (exp, key) = enc::decode_expiry_key(k)?;
            // The key may have been rewritten since with another expiry (its
            // old expiry entry is removed then, but be exact anyway).
            if let Some(e) = self.key_entry(shard, key)? {
                if e.expiry_ms == Some(exp) {
                    wb.delete_cf(self.cf(CF_KEYS), enc::keys_key(shard, key));
                    if !e.tombstone {
                        meta.dead_records += 1;
                    }
                    swept += 1;
                }
            }
            wb.delete_cf(self.cf(CF_EXPIRY), k);
            seen += 1;
            it.next();
        }
        self.iter_status(&it)?;
        drop(it);
        if seen > 0 {
            self.put_meta(&mut wb, shard, &meta);
            self.write(wb)?;
        }
        Ok(SweepOutcome {
            keys_removed: swept,
            more: seen == max,
        })
    }
}
