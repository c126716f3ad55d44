//! The hot map: recent cache entries (and deletes) held in memory so that
//! reads of hot keys skip RocksDB and the log, bounded in bytes.
//!
//! Correctness rests on versions: an entry is replaced only by a higher
//! version (a version is the offset of the write, so it grows with every
//! write to a key), so writers finishing out of order and readers filling
//! from the index never put an older value over a newer one. Expiry is
//! checked on every read against the caller's `now`, so an entry whose TTL
//! passed is a miss at once. Eviction is first-in first-out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use felix_client::wire::CacheEntry;
use felix_log::ShardId;

/// Memory charged per entry beyond its key and value.
pub const HOT_ENTRY_OVERHEAD_BYTES: usize = 96;
/// Values larger than this fraction of the bound are not kept.
const LARGEST_SHARE: usize = 16;

/// What the hot map knows of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hot {
    Value(CacheEntry),
    /// Deleted at this version.
    Gone {
        version: u64,
    },
    /// Written at this version with a value too large to keep: reads go to
    /// the index, and older versions may not come back.
    Elsewhere {
        version: u64,
    },
}

impl Hot {
    fn version(&self) -> u64 {
        match self {
            Hot::Value(e) => e.version,
            Hot::Gone { version } | Hot::Elsewhere { version } => *version,
        }
    }

    fn cost(&self, key: &[u8]) -> usize {
        key.len()
            + HOT_ENTRY_OVERHEAD_BYTES
            + match self {
                Hot::Value(e) => e.value.len(),
                Hot::Gone { .. } | Hot::Elsewhere { .. } => 0,
            }
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<(ShardId, Bytes), Hot>,
    /// Insertion order, for eviction: (shard, key, version inserted).
    order: VecDeque<(ShardId, Bytes, u64)>,
    bytes: usize,
}

#[derive(Debug)]
pub struct HotCache {
    inner: Mutex<Inner>,
    bytes_max: usize,
}

impl HotCache {
    pub fn new(bytes_max: usize) -> HotCache {
        HotCache {
            inner: Mutex::new(Inner::default()),
            bytes_max,
        }
    }

    /// `Some(Some(e))`: a live value; `Some(None)`: known absent (deleted or
    /// expired at `now_ms`); `None`: not known here.
    pub fn get(&self, shard: ShardId, key: &Bytes, now_ms: i64) -> Option<Option<CacheEntry>> {
        let inner = self.inner.lock().expect("hot lock");
        match inner.map.get(&(shard, key.clone()))? {
            Hot::Value(e) if e.expiry_ms.is_some_and(|x| x <= now_ms) => Some(None),
            Hot::Value(e) => Some(Some(e.clone())),
            Hot::Gone { .. } => Some(None),
            Hot::Elsewhere { .. } => None,
        }
    }

    /// Records what a write or a read learned, unless something newer is
    /// already known.
    pub fn offer(&self, shard: ShardId, key: Bytes, hot: Hot) {
        let mut hot = hot;
        if hot.cost(&key) > self.bytes_max / LARGEST_SHARE {
            hot = Hot::Elsewhere {
                version: hot.version(),
            };
        }
        let cost = hot.cost(&key);
        let mut inner = self.inner.lock().expect("hot lock");
        let version = hot.version();
        match inner.map.get(&(shard, key.clone())) {
            Some(old) if old.version() >= version => return,
            Some(old) => {
                let c = old.cost(&key);
                inner.bytes -= c;
            }
            None => {}
        }
        inner.map.insert((shard, key.clone()), hot);
        inner.order.push_back((shard, key, version));
        inner.bytes += cost;
        while inner.bytes > self.bytes_max {
            let Some((s, k, v)) = inner.order.pop_front() else {
                break;
            };
            let stale = inner.map.get(&(s, k.clone())).is_none_or(|h| h.version() != v);
            if !stale {
                let h = inner.map.remove(&(s, k.clone())).expect("present");
                inner.bytes -= h.cost(&k);
            }
        }
        // Queue entries of replaced versions accumulate; drop them once
        // they outnumber live entries.
        if inner.order.len() > 2 * inner.map.len() + 1024 {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(s, k, v)| map.get(&(*s, k.clone())).is_some_and(|h| h.version() == *v));
        }
    }

    /// Drops every entry of a shard (its stream was deleted).
    pub fn forget_shard(&self, shard: ShardId) {
        let mut inner = self.inner.lock().expect("hot lock");
        let Inner { map, order, bytes } = &mut *inner;
        map.retain(|(s, k), h| {
            if *s == shard {
                *bytes -= h.cost(k);
                false
            } else {
                true
            }
        });
        order.retain(|(s, _, _)| *s != shard);
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("hot lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(v: &str, version: u64, expiry_ms: Option<i64>) -> Hot {
        Hot::Value(CacheEntry {
            value: Bytes::copy_from_slice(v.as_bytes()),
            version,
            expiry_ms,
        })
    }

    #[test]
    fn newer_versions_win_whatever_the_order() {
        let h = HotCache::new(1 << 20);
        let k = Bytes::from_static(b"k");
        h.offer(ShardId(1), k.clone(), val("new", 9, None));
        h.offer(ShardId(1), k.clone(), val("old", 3, None));
        assert_eq!(h.get(ShardId(1), &k, 0).unwrap().unwrap().value, "new");
        h.offer(ShardId(1), k.clone(), Hot::Gone { version: 10 });
        assert_eq!(h.get(ShardId(1), &k, 0), Some(None));
        h.offer(ShardId(1), k.clone(), val("older", 9, None));
        assert_eq!(h.get(ShardId(1), &k, 0), Some(None));
        assert_eq!(h.get(ShardId(2), &k, 0), None, "shards are separate");
        let big = "x".repeat(1 << 20);
        h.offer(ShardId(1), k.clone(), val(&big, 12, None));
        assert_eq!(h.get(ShardId(1), &k, 0), None, "too large: read elsewhere");
        h.offer(ShardId(1), k.clone(), val("stale", 11, None));
        assert_eq!(h.get(ShardId(1), &k, 0), None, "an older write stays out");
    }

    #[test]
    fn expiry_is_checked_on_read() {
        let h = HotCache::new(1 << 20);
        let k = Bytes::from_static(b"k");
        h.offer(ShardId(1), k.clone(), val("v", 1, Some(100)));
        assert!(h.get(ShardId(1), &k, 99).unwrap().is_some());
        assert_eq!(h.get(ShardId(1), &k, 100), Some(None));
    }

    #[test]
    fn bytes_stay_under_the_bound() {
        let h = HotCache::new(64 << 10);
        for i in 0..10_000u64 {
            h.offer(ShardId(1), Bytes::from(i.to_string()), val("0123456789", i, None));
            assert!(h.bytes() <= 64 << 10);
        }
        // The newest are kept, the oldest evicted.
        assert!(h.get(ShardId(1), &Bytes::from("9999"), 0).is_some());
        assert!(h.get(ShardId(1), &Bytes::from("0"), 0).is_none());
        h.forget_shard(ShardId(1));
        assert_eq!(h.bytes(), 0);
    }
}
