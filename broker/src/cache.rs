//! The cache: a keyed, compacted log. A put appends a keyed record (with
//! its TTL) and its version is the record's offset; a delete appends a
//! tombstone. Reads come from the hot map, else from the index and the log.
//!
//! Compare-and-set: the check and the append happen under the shard's
//! write lock held alone, while plain writes share it, so nothing lands
//! between a CAS's check and its write and plain writes still share fsyncs.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use felix_client::wire::message::{KEY_BYTES_MAX, SCAN_KEYS_MAX, SCAN_REPLY_KEY_BYTES_MAX};
use felix_client::wire::{CacheEntry, Message};
use felix_log::{BatchBuilder, Compression, RecordInput};

use crate::error::BrokerError;
use crate::hot::Hot;
use crate::node::{Node, StreamHandle};
use crate::shard::HostedShard;

fn shard_of<'a>(h: &'a StreamHandle, key: &[u8]) -> Result<&'a HostedShard, BrokerError> {
    if !h.kind().keyed() {
        return Err(BrokerError::Invalid(format!(
            "{} is a stream; cache operations need a cache or compacted stream",
            h.name
        )));
    }
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(BrokerError::Invalid(format!(
            "a cache key is 1 to {KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(h.shard(h.shard_of(key))?)
}

/// Confirms this replica leads the shard; the hot map forgets the shard
/// when leadership is new, as another leader may have written meanwhile.
async fn lead(node: &Node, shard: &HostedShard) -> Result<(), BrokerError> {
    shard.lead().await?;
    if shard.take_lead_began() {
        node.hot.forget_shard(shard.id);
    }
    Ok(())
}

/// The live entry of `key`, if any.
/// In a cluster only the shard's leader answers, once it has confirmed
/// within a read lease that it still leads, so a get sees every
/// acknowledged write.
pub async fn get(node: &Node, h: &StreamHandle, key: &Bytes) -> Result<Option<CacheEntry>, BrokerError> {
    let shard = shard_of(h, key)?;
    lead(node, shard).await?;
    // A leader cut off from a quorum must not answer from its own state.
    shard.lead_for_read().await?;
    let now = node.now_ms();
    let found = match node.hot.get(shard.id, key, now) {
        Some(known) => known,
        None => read_through(node, shard, key, now)?,
    };
    // Retired meanwhile: its index may have been half removed.
    if let Some(e) = shard.closed_error() {
        return Err(e);
    }
    Ok(found)
}

/// Entries of a shard one scan page looks at, at most: a shard full of
/// tombstones or expired keys costs each page a bounded time.
pub const SCAN_EXAMINED_MAX: usize = 10_000;

/// A page of shard `shard`'s live keys after `after`, and where the next
/// page starts. As a get, only the shard's leader answers, within its read
/// lease, so a page holds every key written before it was asked (and not
/// deleted since).
pub async fn scan(
    node: &Node,
    h: &StreamHandle,
    shard: u32,
    after: Option<Bytes>,
    count: usize,
) -> Result<(Vec<Bytes>, Option<Bytes>), BrokerError> {
    if !h.meta().kind.keyed() {
        return Err(BrokerError::Invalid(format!(
            "{} is a stream; cache operations need a cache or compacted stream",
            h.name
        )));
    }
    let shard = h.shard(shard)?;
    lead(node, shard).await?;
    shard.lead_for_read().await?;
    let now = node.now_ms();
    let (mut keys, mut next) = node.index().live_keys(
        shard.id,
        after.as_deref(),
        count.clamp(1, SCAN_KEYS_MAX),
        SCAN_EXAMINED_MAX,
        now,
    )?;
    // A page of long keys ends early: the reply stays within its bound, and
    // the next page starts after the last key kept.
    let mut bytes = 0;
    if let Some(cut) = keys.iter().position(|k| {
        bytes += k.len();
        bytes > SCAN_REPLY_KEY_BYTES_MAX
    }) {
        keys.truncate(cut.max(1));
        next = keys.last().cloned();
    }
    if let Some(e) = shard.closed_error() {
        return Err(e);
    }
    Ok((keys, next))
}

fn read_through(
    node: &Node,
    shard: &HostedShard,
    key: &Bytes,
    now: i64,
) -> Result<Option<CacheEntry>, BrokerError> {
    let before = shard.applied_count.load(Ordering::Acquire);
    let found = shard
        .log()
        .with(|l| node.index().get_value(l, shard.id, key, now))?;
    let entry = found.map(|(value, e)| CacheEntry {
        value,
        version: e.version(),
        expiry_ms: e.expiry_ms,
    });
    // Only what no write overtook may be cached (a write in between would
    // have a newer version, but if it was evicted since, this older one
    // would look current).
    if let Some(e) = &entry {
        if shard.applied_count.load(Ordering::Acquire) == before {
            node.hot.offer(shard.id, key.clone(), Hot::Value(e.clone()));
        }
    }
    Ok(entry)
}

/// The version a write by (`writer`, `sequence`) landed at, if it did.
fn landed(shard: &HostedShard, writer: u64, sequence: u64) -> Result<Option<u64>, BrokerError> {
    if writer == 0 {
        return Ok(None);
    }
    Ok(shard
        .duplicate_of(writer, sequence)?
        .map(|at| felix_index::encoding::version_of(felix_log::Offset(at.base_offset))))
}

/// Writes `value` (or a tombstone) at `key`; `Message::CacheWritten` with
/// the new version, or `Message::CacheValue` with the entry as it is when
/// `if_version` does not match (0: only if absent).
/// A write whose `writer` is not 0 is idempotent: a retry of the same
/// (`writer`, `sequence`) is answered with the first attempt's version.
pub async fn write(
    node: &Node,
    h: &StreamHandle,
    key: Bytes,
    value: Option<Bytes>,
    ttl_ms: Option<u64>,
    if_version: Option<u64>,
    (writer, sequence): (u64, u64),
) -> Result<Message, BrokerError> {
    let shard = shard_of(h, &key)?;
    lead(node, shard).await?;
    let ttl_ms = match value {
        Some(_) => ttl_ms.or(h.meta().default_ttl_ms),
        None => None,
    };
    if ttl_ms == Some(0) {
        return Err(BrokerError::Invalid("a TTL of 0 would expire at once".into()));
    }
    let _shared;
    let _alone;
    let now;
    if let Some(expected) = if_version {
        _alone = shard.writes_of(&key).write().await;
        now = node.now_ms();
        // Before the version check: a retry of a compare-and-set that won
        // would otherwise see its own write as the conflict.
        if let Some(version) = landed(shard, writer, sequence)? {
            return Ok(Message::CacheWritten { version });
        }
        if !node.index().version_matches(shard.id, &key, expected, now)? {
            let entry = read_through(node, shard, &key, now)?;
            // Retired meanwhile: the mismatch may be its index going.
            if let Some(e) = shard.closed_error() {
                return Err(e);
            }
            return Ok(Message::CacheValue { entry });
        }
    } else {
        _shared = shard.writes_of(&key).read().await;
        now = node.now_ms();
        if let Some(version) = landed(shard, writer, sequence)? {
            return Ok(Message::CacheWritten { version });
        }
    }
    let mut b = BatchBuilder::new(shard.log().with(|l| l.config().batch_bytes_max));
    if writer != 0 {
        b = b.producer(felix_log::ProducerId(writer), sequence);
    }
    b.push(RecordInput {
        key: Some(&key),
        value: value.as_deref(),
        timestamp_ms: now,
        ttl_ms,
        headers: &[],
    })?;
    let batch = Bytes::from(b.build(Compression::None)?);
    // `publish` answers a retry that is still in flight, or that landed
    // since the check above, from the shard's producer windows.
    let at = if writer != 0 {
        shard.publish(batch, writer, sequence).await?
    } else {
        shard.append(batch).await?
    };
    let version = felix_index::encoding::version_of(felix_log::Offset(at.base_offset));
    let hot = match value {
        Some(value) => Hot::Value(CacheEntry {
            value,
            version,
            expiry_ms: ttl_ms.map(|t| now.saturating_add(t.min(i64::MAX as u64) as i64)),
        }),
        None => Hot::Gone { version },
    };
    node.hot.offer(shard.id, key, hot);
    Ok(Message::CacheWritten { version })
}
