//! Per-shard bookkeeping in the `meta` column family: how far the shard is
//! indexed, the state that indexing carries from one batch to the next, and
//! compaction's counters. Layout in `docs/format/index.md`.

use felix_log::{Offset, RaftIndex, SegmentId, ShardId};

use crate::encoding::{self as enc, SHARD_META_VALUE_BYTES};
use crate::error::{IndexError, Result};

const META_VERSION: u8 = 1;

/// What a shard's log holds, which decides what is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardKind {
    /// A stream: offsets, time, cursors and groups; keys are not indexed.
    Stream,
    /// A cache or compacted stream: also the latest write of every key.
    Keyed,
}

impl ShardKind {
    pub fn name(self) -> &'static str {
        match self {
            ShardKind::Stream => "stream",
            ShardKind::Keyed => "keyed",
        }
    }
    fn code(self) -> u8 {
        match self {
            ShardKind::Stream => 0,
            ShardKind::Keyed => 1,
        }
    }
    fn from_code(c: u8) -> Result<ShardKind> {
        match c {
            0 => Ok(ShardKind::Stream),
            1 => Ok(ShardKind::Keyed),
            _ => Err(IndexError::Corrupt {
                cf: "meta",
                reason: format!("unknown shard kind {c}"),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardMeta {
    pub kind: ShardKind,
    pub next_offset: Offset,
    pub next_raft_index: RaftIndex,
    pub earliest_offset: Offset,
    /// Running maximum of batch timestamps (the `time` entries' keys).
    pub max_timestamp_ms: i64,
    /// Segment and position of the last `offsets` entry.
    pub sparse_segment: SegmentId,
    pub sparse_position: u32,
    pub keyed_records: u64,
    pub dead_records: u64,
}

impl ShardMeta {
    pub fn new(kind: ShardKind, first_raft_index: RaftIndex) -> ShardMeta {
        ShardMeta {
            kind,
            next_offset: Offset(0),
            next_raft_index: first_raft_index,
            earliest_offset: Offset(0),
            max_timestamp_ms: i64::MIN,
            sparse_segment: SegmentId(u64::MAX),
            sparse_position: 0,
            keyed_records: 0,
            dead_records: 0,
        }
    }

    pub fn check_kind(&self, shard: ShardId, kind: ShardKind) -> Result<()> {
        if self.kind != kind {
            return Err(IndexError::KindMismatch {
                shard,
                was: self.kind.name(),
                now: kind.name(),
            });
        }
        Ok(())
    }

    pub fn state(&self) -> ShardState {
        ShardState {
            kind: self.kind,
            next_offset: self.next_offset,
            next_raft_index: self.next_raft_index,
            earliest_offset: self.earliest_offset,
            keyed_records: self.keyed_records,
            dead_records: self.dead_records,
        }
    }

    pub fn encode(&self) -> [u8; SHARD_META_VALUE_BYTES] {
        let mut v = [0u8; SHARD_META_VALUE_BYTES];
        v[0] = META_VERSION;
        v[1] = self.kind.code();
        let mut at = 2;
        for x in [
            self.next_offset.0,
            self.next_raft_index.0,
            self.earliest_offset.0,
            self.max_timestamp_ms as u64,
            self.sparse_segment.0,
        ] {
            v[at..at + 8].copy_from_slice(&x.to_be_bytes());
            at += 8;
        }
        v[at..at + 4].copy_from_slice(&self.sparse_position.to_be_bytes());
        at += 8; // 4 reserved bytes follow the position
        v[at..at + 8].copy_from_slice(&self.keyed_records.to_be_bytes());
        v[at + 8..at + 16].copy_from_slice(&self.dead_records.to_be_bytes());
        debug_assert_eq!(at + 16, SHARD_META_VALUE_BYTES);
        v
    }

    pub fn decode(v: &[u8]) -> Result<ShardMeta> {
        enc::check_value_len("meta", v, SHARD_META_VALUE_BYTES)?;
        if v[0] != META_VERSION {
            return Err(IndexError::Corrupt {
                cf: "meta",
                reason: format!("shard meta version {}", v[0]),
            });
        }
        let u = |at| enc::be64_at(v, at);
        Ok(ShardMeta {
            kind: ShardKind::from_code(v[1])?,
            next_offset: Offset(u(2)),
            next_raft_index: RaftIndex(u(10)),
            earliest_offset: Offset(u(18)),
            max_timestamp_ms: u(26) as i64,
            sparse_segment: SegmentId(u(34)),
            sparse_position: enc::be32_at(v, 42),
            keyed_records: u(50),
            dead_records: u(58),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let m = ShardMeta {
            kind: ShardKind::Keyed,
            next_offset: Offset(1),
            next_raft_index: RaftIndex(2),
            earliest_offset: Offset(3),
            max_timestamp_ms: -4,
            sparse_segment: SegmentId(5),
            sparse_position: 6,
            keyed_records: 7,
            dead_records: 8,
        };
        assert_eq!(ShardMeta::decode(&m.encode()).unwrap(), m);
        let mut bad = m.encode();
        bad[1] = 9;
        assert!(ShardMeta::decode(&bad).is_err());
        assert!(ShardMeta::decode(&bad[..10]).is_err());
    }
}

/// Per-shard progress as the index sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardState {
    pub kind: ShardKind,
    /// Offset after the last indexed batch.
    pub next_offset: Offset,
    /// Raft index after the last indexed entry.
    pub next_raft_index: RaftIndex,
    pub earliest_offset: Offset,
    /// Keyed records indexed and not yet compacted away.
    pub keyed_records: u64,
    /// Of those, how many are superseded or expired: compaction's
    /// estimate of what it can reclaim.
    pub dead_records: u64,
}

impl ShardState {
    /// The fraction of keyed records compaction could drop.
    pub fn dirty_ratio(&self) -> f64 {
        if self.keyed_records == 0 {
            0.0
        } else {
            self.dead_records as f64 / self.keyed_records as f64
        }
    }
}
