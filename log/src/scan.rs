//! Recovery scanning: walks the batches of one segment's bytes and decides
//! where valid data ends and what follows it. Pure (bytes in, verdict out) so
//! that it can be fuzzed and tested without files.
//!
//! The verdict for the first bad batch at position `p`:
//! - a zeroed header at `p` (or only zero bytes left) is the **clean end**;
//! - otherwise, if some later bytes form a valid batch that continues the log
//!   (its Raft index above the last good one), the range between is **interior
//!   corruption**: something acknowledged may sit behind it, so recovery must
//!   not guess;
//! - otherwise it is a **torn tail**: an append that never completed.

use crate::batch::layout::{self as l};
use crate::batch::view::check_records_crc;
use crate::batch::BatchHeader;
use crate::types::{Offset, RaftIndex, RaftTerm};

/// What the batches seen so far add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// First offset after the last batch.
    pub next_offset: Offset,
    /// Term and index of the last batch.
    pub last: Option<(RaftTerm, RaftIndex)>,
    /// Newest record timestamp seen; `i64::MIN` when there is none.
    pub max_timestamp_ms: i64,
    /// Batches whose Raft index skipped ahead (left by a repair).
    pub gaps: u64,
}

impl Summary {
    pub fn empty(next_offset: Offset) -> Summary {
        Summary {
            next_offset,
            last: None,
            max_timestamp_ms: i64::MIN,
            gaps: 0,
        }
    }

    /// Whether a batch with this header may follow what was seen so far.
    fn accepts(&self, h: &BatchHeader, min_raft_index: RaftIndex) -> Result<bool, &'static str> {
        match self.last {
            Some((term, index)) => {
                if h.raft_index <= index {
                    return Err("raft index does not increase");
                }
                if h.raft_term < term {
                    return Err("raft term decreases");
                }
            }
            None => {
                if h.raft_index < min_raft_index {
                    return Err("raft index below the segment's first");
                }
            }
        }
        if h.base_offset < self.next_offset {
            return Err("base offset goes backwards");
        }
        let contiguous = match self.last {
            Some((_, index)) => h.raft_index == index.next() && h.base_offset == self.next_offset,
            None => h.raft_index == min_raft_index && h.base_offset == self.next_offset,
        };
        Ok(contiguous)
    }

    fn add(&mut self, h: &BatchHeader, contiguous: bool) {
        self.next_offset = h.next_offset();
        self.last = Some((h.raft_term, h.raft_index));
        self.max_timestamp_ms = self.max_timestamp_ms.max(h.max_timestamp_ms);
        self.gaps += u64::from(!contiguous);
    }
}

/// How the scanned bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Only zeros (or nothing) after the last valid batch.
    Clean,
    /// Invalid bytes after the last valid batch and no valid batch beyond.
    Torn { reason: String },
    /// Invalid bytes in `[valid_end, end)` followed by a valid batch at `end`.
    Corrupt { end: usize, reason: String },
}

/// The result of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Position just after the last valid batch.
    pub valid_end: usize,
    pub summary: Summary,
    pub end: ScanEnd,
}

/// Options for [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct ScanFrom {
    pub pos: usize,
    pub summary: Summary,
    /// Raft index the segment's first batch must have at least.
    pub min_raft_index: RaftIndex,
    /// Check records checksums (recovery) or only headers (index building
    /// over bytes verified before).
    pub verify_records: bool,
}

/// Walks batches in `buf` from `from.pos`, calling `on_batch(position,
/// header)` for every valid one.
pub fn scan(buf: &[u8], from: ScanFrom, mut on_batch: impl FnMut(usize, &BatchHeader)) -> ScanResult {
    let mut pos = from.pos;
    let mut summary = from.summary;
    loop {
        if buf.len() - pos < l::HEADER_BYTES || is_zero(&buf[pos..pos + l::HEADER_BYTES]) {
            let end = if is_zero(&buf[pos..buf.len().min(pos + l::HEADER_BYTES)]) {
                ScanEnd::Clean
            } else {
                ScanEnd::Torn {
                    reason: "partial batch header at the end".into(),
                }
            };
            return ScanResult {
                valid_end: pos,
                summary,
                end,
            };
        }
        match check_at(buf, pos, &summary, from.min_raft_index, from.verify_records) {
            Ok((h, contiguous)) => {
                on_batch(pos, &h);
                summary.add(&h, contiguous);
                pos += h.batch_len as usize;
            }
            Err(reason) => {
                let end = match find_resumption(buf, pos, &summary, from.min_raft_index, from.verify_records)
                {
                    Some(end) => ScanEnd::Corrupt { end, reason },
                    None => ScanEnd::Torn { reason },
                };
                return ScanResult {
                    valid_end: pos,
                    summary,
                    end,
                };
            }
        }
    }
}

/// Checks the batch at `pos` as the next one after `summary`.
fn check_at(
    buf: &[u8],
    pos: usize,
    summary: &Summary,
    min_raft_index: RaftIndex,
    verify_records: bool,
) -> Result<(BatchHeader, bool), String> {
    let rest = &buf[pos..];
    let h = BatchHeader::decode(rest).map_err(|e| e.to_string())?;
    if h.batch_len as usize > rest.len() {
        return Err(format!(
            "batch of {} bytes runs past the end of the segment",
            h.batch_len
        ));
    }
    if verify_records {
        check_records_crc(rest, &h).map_err(|e| e.to_string())?;
    }
    let contiguous = summary.accepts(&h, min_raft_index)?;
    Ok((h, contiguous))
}

/// After a bad batch at `bad`, looks for a later valid batch that continues
/// the log: first where the bad batch's own length points (a damaged record
/// section under an intact header), then at every later byte.
fn find_resumption(
    buf: &[u8],
    bad: usize,
    summary: &Summary,
    min_raft_index: RaftIndex,
    verify_records: bool,
) -> Option<usize> {
    let plausible = |at: usize| {
        buf.len() - at >= l::HEADER_BYTES
            && (buf[at + l::VERSION_AT] == l::VERSION || buf[at + l::VERSION_AT] == l::VERSION_SEALED)
            && buf[at + l::FLAGS_AT] & !l::FLAGS_KNOWN == 0
            && usize::from(l::le::u16_at(buf, at + l::PRODUCER_COUNT_AT)) <= l::PRODUCER_RUNS_MAX
            && check_at(buf, at, summary, min_raft_index, verify_records).is_ok()
    };
    if let Ok(h) = BatchHeader::decode(&buf[bad..]) {
        let next = bad + h.batch_len as usize;
        if next < buf.len() && plausible(next) {
            return Some(next);
        }
    }
    (bad + 1..buf.len().saturating_sub(l::HEADER_BYTES - 1)).find(|&at| plausible(at))
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
