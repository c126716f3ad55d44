//! Key and value encodings of every column family, specified in
//! `docs/format/index.md`. Keys are big-endian so that RocksDB's bytewise
//! order is numeric order and a shard's entries form one contiguous range;
//! values are big-endian too, for one convention. Every key starts with the
//! 8-byte shard id.

use felix_log::{Offset, SegmentId, ShardId};

use crate::error::IndexError;

/// Bytes of the shard prefix every key starts with.
pub const SHARD_PREFIX_BYTES: usize = 8;
// Longest cursor or group name: the model's, as on the wire.
pub use felix_model::limits::NAME_BYTES_MAX;

pub const OFFSETS_KEY_BYTES: usize = SHARD_PREFIX_BYTES + 8;
pub const OFFSETS_VALUE_BYTES: usize = 8 + 4 + 4;
pub const TIME_KEY_BYTES: usize = SHARD_PREFIX_BYTES + 8;
pub const TIME_VALUE_BYTES: usize = 8;
pub const KEYS_VALUE_BYTES: usize = 8 + 8 + 8 + 1;
pub const CURSOR_VALUE_BYTES: usize = 8 + 8;
pub const GROUP_META_VALUE_BYTES: usize = 8 + 8;
pub const GROUP_REC_VALUE_BYTES: usize = 4 + 1 + 8 + 8;
pub const SHARD_META_VALUE_BYTES: usize = 1 + 1 + 8 * 4 + 8 + 4 + 4 + 8 + 8;
pub const SEGMENT_META_VALUE_BYTES: usize = 4;

/// `meta` kinds (the byte after the shard prefix).
pub const META_SHARD: u8 = 0;
pub const META_SEGMENT: u8 = 1;
/// `groups` kinds (the byte after the group name).
pub const GROUP_META: u8 = 0;
pub const GROUP_REC: u8 = 1;

const _: () = assert!(OFFSETS_VALUE_BYTES == 16);
const _: () = assert!(KEYS_VALUE_BYTES == 25);
const _: () = assert!(GROUP_REC_VALUE_BYTES == 21);
const _: () = assert!(SHARD_META_VALUE_BYTES == 66);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);

/// Timestamps sort as unsigned big-endian once the sign bit is flipped.
pub fn ts_bits(ts_ms: i64) -> u64 {
    (ts_ms as u64) ^ (1 << 63)
}

pub fn ts_from_bits(bits: u64) -> i64 {
    (bits ^ (1 << 63)) as i64
}

pub fn shard_prefix(shard: ShardId) -> [u8; 8] {
    shard.0.to_be_bytes()
}

/// The first key after every key of `shard` (shard ids are below `u64::MAX`).
pub fn shard_end(shard: ShardId) -> [u8; 8] {
    (shard.0 + 1).to_be_bytes()
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn check_len(cf: &'static str, what: &'static str, b: &[u8], want: usize) -> Result<(), IndexError> {
    if b.len() == want {
        Ok(())
    } else {
        Err(IndexError::Corrupt {
            cf,
            reason: format!("{what} is {} bytes, expected {want}", b.len()),
        })
    }
}

// --- offsets: (shard, offset) -> (segment, generation, position) ---

pub fn offsets_key(shard: ShardId, offset: Offset) -> [u8; OFFSETS_KEY_BYTES] {
    let mut k = [0u8; OFFSETS_KEY_BYTES];
    k[..8].copy_from_slice(&shard.0.to_be_bytes());
    k[8..].copy_from_slice(&offset.0.to_be_bytes());
    k
}

pub fn decode_offsets_key(k: &[u8]) -> Result<(ShardId, Offset), IndexError> {
    check_len("offsets", "key", k, OFFSETS_KEY_BYTES)?;
    Ok((ShardId(be64(k, 0)), Offset(be64(k, 8))))
}

/// Where the batch starting at an offset lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: SegmentId,
    /// The segment's compaction generation when this was recorded.
    pub generation: u32,
    pub position: u32,
}

pub fn offsets_value(l: Location) -> [u8; OFFSETS_VALUE_BYTES] {
    let mut v = [0u8; OFFSETS_VALUE_BYTES];
    v[..8].copy_from_slice(&l.segment.0.to_be_bytes());
    v[8..12].copy_from_slice(&l.generation.to_be_bytes());
    v[12..].copy_from_slice(&l.position.to_be_bytes());
    v
}

pub fn decode_offsets_value(v: &[u8]) -> Result<Location, IndexError> {
    check_len("offsets", "value", v, OFFSETS_VALUE_BYTES)?;
    Ok(Location {
        segment: SegmentId(be64(v, 0)),
        generation: be32(v, 8),
        position: be32(v, 12),
    })
}

// --- time: (shard, running max timestamp) -> offset ---

pub fn time_key(shard: ShardId, ts_ms: i64) -> [u8; TIME_KEY_BYTES] {
    let mut k = [0u8; TIME_KEY_BYTES];
    k[..8].copy_from_slice(&shard.0.to_be_bytes());
    k[8..].copy_from_slice(&ts_bits(ts_ms).to_be_bytes());
    k
}

pub fn decode_time_key(k: &[u8]) -> Result<(ShardId, i64), IndexError> {
    check_len("time", "key", k, TIME_KEY_BYTES)?;
    Ok((ShardId(be64(k, 0)), ts_from_bits(be64(k, 8))))
}

pub fn decode_time_value(v: &[u8]) -> Result<Offset, IndexError> {
    check_len("time", "value", v, TIME_VALUE_BYTES)?;
    Ok(Offset(be64(v, 0)))
}

// --- keys: (shard, key) -> entry; expiry: (shard, expiry, key) -> () ---

pub fn keys_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(SHARD_PREFIX_BYTES + key.len());
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The latest write of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// Offset of the record that wrote it.
    pub offset: Offset,
    /// When it stops being readable (`timestamp + ttl`), if it has a TTL.
    pub expiry_ms: Option<i64>,
    /// The record's timestamp (tombstone age is counted from it).
    pub timestamp_ms: i64,
    /// A delete: the key reads as absent.
    pub tombstone: bool,
}

impl KeyEntry {
    /// The key's version as clients see it: one more than the offset of its
    /// latest write, which is unique, grows with every write and survives
    /// compaction and rebuild unchanged. Never 0, which means "absent".
    pub fn version(&self) -> u64 {
        version_of(self.offset)
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expiry_ms.is_some_and(|e| e <= now_ms)
    }

    /// Whether a read at `now_ms` sees a value.
    pub fn visible(&self, now_ms: i64) -> bool {
        !self.tombstone && !self.expired(now_ms)
    }
}

/// The version a write at `offset` gives its key.
pub fn version_of(offset: Offset) -> u64 {
    offset.0 + 1
}

pub fn keys_value(e: &KeyEntry) -> [u8; KEYS_VALUE_BYTES] {
    let mut v = [0u8; KEYS_VALUE_BYTES];
    v[..8].copy_from_slice(&e.offset.0.to_be_bytes());
    v[8..16].copy_from_slice(&e.expiry_ms.unwrap_or(i64::MAX).to_be_bytes());
    v[16..24].copy_from_slice(&e.timestamp_ms.to_be_bytes());
    v[24] = u8::from(e.tombstone);
    v
}

pub fn decode_keys_value(v: &[u8]) -> Result<KeyEntry, IndexError> {
    check_len("keys", "value", v, KEYS_VALUE_BYTES)?;
    if v[24] > 1 {
        return Err(IndexError::Corrupt {
            cf: "keys",
            reason: format!("unknown flags {:#04x}", v[24]),
        });
    }
    let expiry = be64(v, 8) as i64;
    Ok(KeyEntry {
        offset: Offset(be64(v, 0)),
        expiry_ms: (expiry != i64::MAX).then_some(expiry),
        timestamp_ms: be64(v, 16) as i64,
        tombstone: v[24] == 1,
    })
}

pub fn expiry_key(shard: ShardId, expiry_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + key.len());
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.extend_from_slice(&ts_bits(expiry_ms).to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub fn expiry_prefix(shard: ShardId, expiry_ms: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard.0.to_be_bytes());
    k[8..].copy_from_slice(&ts_bits(expiry_ms).to_be_bytes());
    k
}

pub fn decode_expiry_key(k: &[u8]) -> Result<(i64, &[u8]), IndexError> {
    if k.len() < 16 {
        return Err(IndexError::Corrupt {
            cf: "expiry",
            reason: format!("key of {} bytes is shorter than 16", k.len()),
        });
    }
    Ok((ts_from_bits(be64(k, 8)), &k[16..]))
}

// --- cursors: (shard, name) -> (offset, committed at) ---

pub fn cursor_key(shard: ShardId, name: &[u8]) -> Vec<u8> {
    keys_key(shard, name)
}

pub fn cursor_value(offset: Offset, at_ms: i64) -> [u8; CURSOR_VALUE_BYTES] {
    let mut v = [0u8; CURSOR_VALUE_BYTES];
    v[..8].copy_from_slice(&offset.0.to_be_bytes());
    v[8..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

pub fn decode_cursor_value(v: &[u8]) -> Result<(Offset, i64), IndexError> {
    check_len("cursors", "value", v, CURSOR_VALUE_BYTES)?;
    Ok((Offset(be64(v, 0)), be64(v, 8) as i64))
}

// --- groups: (shard, len, name, kind [, offset]) ---

pub fn group_prefix(shard: ShardId, group: &[u8]) -> Vec<u8> {
    assert!(
        group.len() <= NAME_BYTES_MAX,
        "group names are checked before use"
    );
    let mut k = Vec::with_capacity(SHARD_PREFIX_BYTES + 1 + group.len() + 9);
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.push(group.len() as u8);
    k.extend_from_slice(group);
    k
}

pub fn group_meta_key(shard: ShardId, group: &[u8]) -> Vec<u8> {
    let mut k = group_prefix(shard, group);
    k.push(GROUP_META);
    k
}

pub fn group_rec_key(shard: ShardId, group: &[u8], offset: Offset) -> Vec<u8> {
    let mut k = group_prefix(shard, group);
    k.push(GROUP_REC);
    k.extend_from_slice(&offset.0.to_be_bytes());
    k
}

pub fn decode_group_rec_offset(k: &[u8]) -> Result<Offset, IndexError> {
    if k.len() < 8 {
        return Err(IndexError::Corrupt {
            cf: "groups",
            reason: "record key shorter than an offset".into(),
        });
    }
    Ok(Offset(be64(k, k.len() - 8)))
}

// --- meta: (shard, kind [, segment]) ---

pub fn shard_meta_key(shard: ShardId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard.0.to_be_bytes());
    k[8] = META_SHARD;
    k
}

pub fn segment_meta_key(shard: ShardId, segment: SegmentId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&shard.0.to_be_bytes());
    k[8] = META_SEGMENT;
    k[9..].copy_from_slice(&segment.0.to_be_bytes());
    k
}

pub fn segment_meta_prefix(shard: ShardId) -> [u8; 9] {
    let mut k = shard_meta_key(shard);
    k[8] = META_SEGMENT;
    k
}

pub fn decode_segment_meta(k: &[u8], v: &[u8]) -> Result<(SegmentId, u32), IndexError> {
    check_len("meta", "segment key", k, 17)?;
    check_len("meta", "segment value", v, SEGMENT_META_VALUE_BYTES)?;
    Ok((SegmentId(be64(k, 9)), be32(v, 0)))
}

pub(crate) fn be64_at(b: &[u8], at: usize) -> u64 {
    be64(b, at)
}

pub(crate) fn be32_at(b: &[u8], at: usize) -> u32 {
    be32(b, at)
}

pub(crate) fn check_value_len(cf: &'static str, b: &[u8], want: usize) -> Result<(), IndexError> {
    check_len(cf, "value", b, want)
}
