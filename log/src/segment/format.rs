//! Byte layout of a segment file header (format version 1) and segment file
//! names; specified in `docs/format/segment.md`. Little-endian.

use crate::batch::layout::le;
use crate::types::{Offset, RaftIndex, RaftTerm};

pub const MAGIC: [u8; 8] = *b"FELIXSEG";
pub const VERSION: u16 = 1;

pub const MAGIC_AT: usize = 0; // [u8; 8]
pub const VERSION_AT: usize = MAGIC_AT + 8; // u16
pub const HEADER_LEN_AT: usize = VERSION_AT + 2; // u16 = SEGMENT_HEADER_BYTES
/// u32: how many times compaction has rewritten this segment (0 when new).
pub const GENERATION_AT: usize = HEADER_LEN_AT + 2;
pub const FIRST_OFFSET_AT: usize = GENERATION_AT + 4; // u64
pub const FIRST_RAFT_INDEX_AT: usize = FIRST_OFFSET_AT + 8; // u64
pub const CREATED_MS_AT: usize = FIRST_RAFT_INDEX_AT + 8; // i64
pub const PREALLOCATED_AT: usize = CREATED_MS_AT + 8; // u64, informational
/// u64: term of the entry at `first_raft_index - 1`, when `FLAGS_AT` says
/// there is one. Lets a log whose older segments retention removed still
/// name its last entry (Raft's last purged log id) after a crash.
pub const PREV_TERM_AT: usize = PREALLOCATED_AT + 8;
/// u32: bit 0 = `PREV_TERM_AT` holds a term; other bits zero.
pub const FLAGS_AT: usize = PREV_TERM_AT + 8;
pub const FLAG_HAS_PREV_TERM: u32 = 1;
pub const CRC_AT: usize = FLAGS_AT + 4; // u32, CRC-32 of [0, CRC_AT)
/// Batches start here.
pub const SEGMENT_HEADER_BYTES: usize = CRC_AT + 4;

const _: () = assert!(SEGMENT_HEADER_BYTES == 64);
const _: () = assert!(CRC_AT == 60);

/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// The decoded header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_offset: Offset,
    pub first_raft_index: RaftIndex,
    pub created_ms: i64,
    pub preallocated_bytes: u64,
    /// Compaction rewrites; an index records it to notice a rewrite it missed.
    pub generation: u32,
    /// Term of the entry just before `first_raft_index`, if the log had one
    /// when this segment was created.
    pub prev_term: Option<RaftTerm>,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(&MAGIC);
        b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[HEADER_LEN_AT..HEADER_LEN_AT + 2].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        le::put_u32(&mut b, GENERATION_AT, self.generation);
        le::put_u64(&mut b, FIRST_OFFSET_AT, self.first_offset.0);
        le::put_u64(&mut b, FIRST_RAFT_INDEX_AT, self.first_raft_index.0);
        le::put_u64(&mut b, CREATED_MS_AT, self.created_ms as u64);
        le::put_u64(&mut b, PREALLOCATED_AT, self.preallocated_bytes);
        if let Some(t) = self.prev_term {
            le::put_u64(&mut b, PREV_TERM_AT, t.0);
            le::put_u32(&mut b, FLAGS_AT, FLAG_HAS_PREV_TERM);
        }
        let crc = crc32fast::hash(&b[..CRC_AT]);
        le::put_u32(&mut b, CRC_AT, crc);
        b
    }

    /// Term and index of the entry just before this segment, if recorded.
    pub fn prev_last(&self) -> Option<(RaftTerm, RaftIndex)> {
        let i = self.first_raft_index.0.checked_sub(1)?;
        self.prev_term.map(|t| (t, RaftIndex(i)))
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, &'static str> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err("file shorter than a segment header");
        }
        if b[MAGIC_AT..MAGIC_AT + 8] != MAGIC {
            return Err("bad segment magic");
        }
        if le::u32_at(b, CRC_AT) != crc32fast::hash(&b[..CRC_AT]) {
            return Err("segment header checksum mismatch");
        }
        if le::u16_at(b, VERSION_AT) != VERSION {
            return Err("unsupported segment format version");
        }
        if le::u16_at(b, HEADER_LEN_AT) as usize != SEGMENT_HEADER_BYTES {
            return Err("unexpected segment header length");
        }
        let flags = le::u32_at(b, FLAGS_AT);
        if flags & !FLAG_HAS_PREV_TERM != 0 {
            return Err("unknown segment header flags");
        }
        Ok(SegmentHeader {
            first_offset: Offset(le::u64_at(b, FIRST_OFFSET_AT)),
            first_raft_index: RaftIndex(le::u64_at(b, FIRST_RAFT_INDEX_AT)),
            created_ms: le::i64_at(b, CREATED_MS_AT),
            preallocated_bytes: le::u64_at(b, PREALLOCATED_AT),
            generation: le::u32_at(b, GENERATION_AT),
            prev_term: (flags & FLAG_HAS_PREV_TERM != 0).then(|| RaftTerm(le::u64_at(b, PREV_TERM_AT))),
        })
    }
}

/// `<first offset>-<first raft index>.seg`, both zero-padded to 20 digits so
/// that names sort like the segments. Both numbers are needed: a segment that
/// holds only control batches shares its first offset with the next one.
pub fn file_name(first_offset: Offset, first_raft_index: RaftIndex) -> String {
    format!(
        "{:020}-{:020}{SEGMENT_SUFFIX}",
        first_offset.0, first_raft_index.0
    )
}

/// Inverse of [`file_name`]; `None` for anything else in the directory.
pub fn parse_file_name(name: &str) -> Option<(Offset, RaftIndex)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (o, r) = stem.split_once('-')?;
    if o.len() != 20 || r.len() != 20 {
        return None;
    }
    Some((Offset(o.parse().ok()?), RaftIndex(r.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_flips() {
        let h = SegmentHeader {
            first_offset: Offset(42),
            first_raft_index: RaftIndex(7),
            created_ms: 1_700_000_000_000,
            preallocated_bytes: 1 << 20,
            generation: 3,
            prev_term: Some(RaftTerm(5)),
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&c).is_err(), "flip of bit {bit} accepted");
        }
        let none = SegmentHeader { prev_term: None, ..h };
        assert_eq!(SegmentHeader::decode(&none.encode()), Ok(none));
    }

    #[test]
    fn names_sort_and_parse() {
        let a = file_name(Offset(9), RaftIndex(100));
        let b = file_name(Offset(10), RaftIndex(101));
        assert!(a < b);
        assert_eq!(parse_file_name(&a), Some((Offset(9), RaftIndex(100))));
        assert_eq!(parse_file_name("checkpoint"), None);
        assert_eq!(parse_file_name("1-2.seg"), None);
    }
}
