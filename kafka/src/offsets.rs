//! Committed offsets as entries of the tenant's offsets cache
//! (`docs/format/kafka-offsets.md`): one entry per (group, topic,
//! partition), in a log-compacted Felix cache whose one shard is
//! replicated like any other, so a coordinator's failover keeps them.
//! Sans-IO: keys and values to and from bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// The cache of a door's namespace that holds its groups' offsets. Kafka
/// clients never see it as a topic (Metadata lists streams, not caches).
pub const CACHE_NAME: &str = "__consumer_offsets";
/// Shards of the offsets cache: one, whose leader is every group's
/// coordinator for the namespace.
pub const CACHE_SHARDS: u32 = 1;
/// How long a committed offset is kept after its last commit (Kafka's
/// `offsets.retention.minutes` default: 7 days).
pub const RETENTION_MS: u64 = 7 * 24 * 3_600_000;
/// Bytes of a commit's metadata string (Kafka's
/// `offset.metadata.max.bytes` default).
pub const METADATA_BYTES_MAX: usize = 4_096;
/// Version byte leading every value.
pub const VALUE_VERSION: u8 = 1;
/// Bytes of a value before its metadata: version, offset, leader epoch,
/// commit time, metadata length.
pub const VALUE_HEAD_BYTES: usize = 1 + 8 + 4 + 8 + 2;
/// Longest group id a key holds (Kafka sets none; a longer one is
/// refused as INVALID_GROUP_ID).
pub const GROUP_ID_BYTES_MAX: usize = 4_096;
/// Longest topic name a key holds (Kafka's 249; Felix's rule allows 64).
pub const TOPIC_BYTES_MAX: usize = 249;
const _: () =
    assert!(2 + GROUP_ID_BYTES_MAX + 2 + TOPIC_BYTES_MAX + 4 <= felix_log::batch::layout::KEY_BYTES_MAX);
const _: () = assert!(METADATA_BYTES_MAX <= u16::MAX as usize);

/// The key prefix every key of `group` starts with.
pub fn group_prefix(group: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + group.len());
    b.put_u16(group.len() as u16);
    b.put_slice(group.as_bytes());
    b.freeze()
}

/// The key of (group, topic, partition).
pub fn key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + group.len() + 2 + topic.len() + 4);
    b.put_u16(group.len() as u16);
    b.put_slice(group.as_bytes());
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    b.put_i32(partition);
    b.freeze()
}

/// (group, topic, partition) of a key, or `None` if it is not one.
pub fn parse_key(k: &[u8]) -> Option<(String, String, i32)> {
    let take = |k: &[u8]| -> Option<(String, usize)> {
        let n = usize::from(u16::from_be_bytes(k.get(..2)?.try_into().ok()?));
        let s = std::str::from_utf8(k.get(2..2 + n)?).ok()?;
        Some((s.to_owned(), 2 + n))
    };
    let (group, at) = take(k)?;
    let (topic, more) = take(&k[at..])?;
    let rest = &k[at + more..];
    let partition = i32::from_be_bytes(rest.try_into().ok()?);
    Some((group, topic, partition))
}

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub commit_ms: i64,
    pub metadata: String,
}

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetsError {
    #[error("a committed offset's value is {0} bytes, shorter than its head")]
    Short(usize),
    #[error("a committed offset's value has version {0}; this broker reads {VALUE_VERSION}")]
    Version(u8),
    #[error("a committed offset's metadata is not UTF-8 or not its stated length")]
    Metadata,
}

pub fn value(c: &Committed) -> Bytes {
    let meta = c.metadata.as_bytes();
    let meta = &meta[..meta.len().min(METADATA_BYTES_MAX)];
    let mut b = BytesMut::with_capacity(VALUE_HEAD_BYTES + meta.len());
    b.put_u8(VALUE_VERSION);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    b.put_i64(c.commit_ms);
    b.put_u16(meta.len() as u16);
    b.put_slice(meta);
    b.freeze()
}

pub fn parse_value(v: &[u8]) -> Result<Committed, OffsetsError> {
    if v.len() < VALUE_HEAD_BYTES {
        return Err(OffsetsError::Short(v.len()));
    }
    if v[0] != VALUE_VERSION {
        return Err(OffsetsError::Version(v[0]));
    }
    let i64_at = |at: usize| i64::from_be_bytes(v[at..at + 8].try_into().expect("8 bytes"));
    let n = usize::from(u16::from_be_bytes(v[21..23].try_into().expect("2 bytes")));
    let meta = v
        .get(VALUE_HEAD_BYTES..)
        .filter(|m| m.len() == n)
        .ok_or(OffsetsError::Metadata)?;
    Ok(Committed {
        offset: i64_at(1),
        leader_epoch: i32::from_be_bytes(v[9..13].try_into().expect("4 bytes")),
        commit_ms: i64_at(13),
        metadata: std::str::from_utf8(meta)
            .map_err(|_| OffsetsError::Metadata)?
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_read_back_and_a_groups_keys_share_its_prefix() {
        let k = key("billing", "orders", 7);
        assert_eq!(parse_key(&k), Some(("billing".into(), "orders".into(), 7)));
        assert!(k.starts_with(&group_prefix("billing")));
        // A group whose id is a prefix of another's does not share keys.
        assert!(!key("billing2", "orders", 7).starts_with(&group_prefix("billing")));
        assert_eq!(parse_key(&k[..k.len() - 1]), None);
        let c = Committed {
            offset: 42,
            leader_epoch: -1,
            commit_ms: 1_700_000_000_000,
            metadata: "ü".into(),
        };
        assert_eq!(parse_value(&value(&c)), Ok(c));
    }

    #[test]
    fn damaged_values_are_errors_not_offsets() {
        let v = value(&Committed {
            offset: 1,
            leader_epoch: 0,
            commit_ms: 0,
            metadata: "abc".into(),
        });
        assert_eq!(parse_value(&v[..5]), Err(OffsetsError::Short(5)));
        assert_eq!(parse_value(&v[..v.len() - 1]), Err(OffsetsError::Metadata));
        let mut w = v.to_vec();
        w[0] = 9;
        assert_eq!(parse_value(&w), Err(OffsetsError::Version(9)));
    }
}
