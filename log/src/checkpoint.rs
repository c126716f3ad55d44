//! The checkpoint: what recovery may trust without reading it again.
//! Written with write-to-temporary, fsync, rename, fsync-directory, so it is
//! either the old or the new one. Layout in `docs/format/segment.md`.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::batch::layout::le;
use crate::error::{LogError, Result};
use crate::types::{Offset, RaftIndex, RaftTerm};

pub const FILE_NAME: &str = "checkpoint";
const TMP_NAME: &str = "checkpoint.tmp";
pub const MAGIC: [u8; 8] = *b"FELIXCKP";
pub const VERSION: u16 = 1;
/// Flag: written by a clean close; the last segment's `len` is its tail.
pub const FLAG_CLEAN: u16 = 1;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8; // u16
const FLAGS_AT: usize = VERSION_AT + 2; // u16
const COUNT_AT: usize = FLAGS_AT + 2; // u32
pub const FIXED_BYTES: usize = COUNT_AT + 4;

const E_FIRST_OFFSET: usize = 0;
const E_FIRST_RAFT_INDEX: usize = E_FIRST_OFFSET + 8;
const E_LEN: usize = E_FIRST_RAFT_INDEX + 8;
const E_NEXT_OFFSET: usize = E_LEN + 8;
const E_LAST_TERM: usize = E_NEXT_OFFSET + 8;
const E_LAST_INDEX: usize = E_LAST_TERM + 8; // u64::MAX = no batch
const E_MAX_TIMESTAMP: usize = E_LAST_INDEX + 8;
const E_CREATED_MS: usize = E_MAX_TIMESTAMP + 8;
pub const ENTRY_BYTES: usize = E_CREATED_MS + 8;
/// CRC-32 of everything before it.
pub const TRAILER_BYTES: usize = 4;
/// Segments a checkpoint lists; far above any real log (at 128 MiB a
/// segment, 64 TiB), it only bounds what a corrupt count can make us read.
pub const SEGMENTS_MAX: usize = 1 << 19;

const _: () = assert!(FIXED_BYTES == 16);
const _: () = assert!(ENTRY_BYTES == 64);

/// One segment as the checkpoint saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub first_offset: Offset,
    pub first_raft_index: RaftIndex,
    /// Bytes in use, segment header included.
    pub len: u64,
    pub next_offset: Offset,
    pub last: Option<(RaftTerm, RaftIndex)>,
    pub max_timestamp_ms: i64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every segment but the last is sealed; the last is described only when
    /// `clean`.
    pub clean: bool,
    pub segments: Vec<Entry>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_BYTES + self.segments.len() * ENTRY_BYTES + TRAILER_BYTES];
        b[..8].copy_from_slice(&MAGIC);
        b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.clean { FLAG_CLEAN } else { 0 };
        b[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&flags.to_le_bytes());
        le::put_u32(&mut b, COUNT_AT, self.segments.len() as u32);
        for (i, e) in self.segments.iter().enumerate() {
            let at = FIXED_BYTES + i * ENTRY_BYTES;
            let s = &mut b[at..at + ENTRY_BYTES];
            le::put_u64(s, E_FIRST_OFFSET, e.first_offset.0);
            le::put_u64(s, E_FIRST_RAFT_INDEX, e.first_raft_index.0);
            le::put_u64(s, E_LEN, e.len);
            le::put_u64(s, E_NEXT_OFFSET, e.next_offset.0);
            let (term, index) = e.last.map_or((0, u64::MAX), |(t, i)| (t.0, i.0));
            le::put_u64(s, E_LAST_TERM, term);
            le::put_u64(s, E_LAST_INDEX, index);
            le::put_u64(s, E_MAX_TIMESTAMP, e.max_timestamp_ms as u64);
            le::put_u64(s, E_CREATED_MS, e.created_ms as u64);
        }
        let n = b.len() - TRAILER_BYTES;
        let crc = crc32fast::hash(&b[..n]);
        le::put_u32(&mut b, n, crc);
        b
    }

    /// `None` for anything that is not an intact checkpoint: recovery then
    /// verifies every segment, which is slower but never wrong.
    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() < FIXED_BYTES + TRAILER_BYTES || b[..8] != MAGIC {
            return None;
        }
        if le::u16_at(b, VERSION_AT) != VERSION {
            return None;
        }
        let count = le::u32_at(b, COUNT_AT) as usize;
        if count > SEGMENTS_MAX || b.len() != FIXED_BYTES + count * ENTRY_BYTES + TRAILER_BYTES {
            return None;
        }
        let n = b.len() - TRAILER_BYTES;
        if le::u32_at(b, n) != crc32fast::hash(&b[..n]) {
            return None;
        }
        let segments = (0..count)
            .map(|i| {
                let s = &b[FIXED_BYTES + i * ENTRY_BYTES..][..ENTRY_BYTES];
                let index = le::u64_at(s, E_LAST_INDEX);
                Entry {
                    first_offset: Offset(le::u64_at(s, E_FIRST_OFFSET)),
                    first_raft_index: RaftIndex(le::u64_at(s, E_FIRST_RAFT_INDEX)),
                    len: le::u64_at(s, E_LEN),
                    next_offset: Offset(le::u64_at(s, E_NEXT_OFFSET)),
                    last: (index != u64::MAX)
                        .then(|| (RaftTerm(le::u64_at(s, E_LAST_TERM)), RaftIndex(index))),
                    max_timestamp_ms: le::i64_at(s, E_MAX_TIMESTAMP),
                    created_ms: le::i64_at(s, E_CREATED_MS),
                }
            })
            .collect();
        Some(Checkpoint {
            clean: le::u16_at(b, FLAGS_AT) & FLAG_CLEAN != 0,
            segments,
        })
    }

    pub fn read(dir: &Path) -> Option<Checkpoint> {
        let bytes = fs::read(dir.join(FILE_NAME)).ok()?;
        let ck = Checkpoint::decode(&bytes);
        if ck.is_none() {
            tracing::warn!(dir = %dir.display(), "checkpoint unreadable; verifying every segment");
        }
        ck
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(TMP_NAME);
        let mut f = fs::File::create(&tmp).map_err(LogError::io("create", &tmp))?;
        f.write_all(&self.encode()).map_err(LogError::io("write", &tmp))?;
        f.sync_all().map_err(LogError::io("fsync", &tmp))?;
        let dst = dir.join(FILE_NAME);
        fs::rename(&tmp, &dst).map_err(LogError::io("rename", &dst))?;
        crate::fsio::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_flip_is_rejected() {
        let ck = Checkpoint {
            clean: true,
            segments: vec![
                Entry {
                    first_offset: Offset(0),
                    first_raft_index: RaftIndex(0),
                    len: 4096,
                    next_offset: Offset(10),
                    last: Some((RaftTerm(1), RaftIndex(3))),
                    max_timestamp_ms: 5,
                    created_ms: 1,
                },
                Entry {
                    first_offset: Offset(10),
                    first_raft_index: RaftIndex(4),
                    len: 64,
                    next_offset: Offset(10),
                    last: None,
                    max_timestamp_ms: i64::MIN,
                    created_ms: 2,
                },
            ],
        };
        let b = ck.encode();
        assert_eq!(Checkpoint::decode(&b), Some(ck));
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&c), None, "flip of bit {bit} accepted");
        }
        assert_eq!(Checkpoint::decode(&b[..b.len() - 1]), None);
    }
}
