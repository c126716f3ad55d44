//! Rewriting one batch without some of its records (log compaction). The
//! header keeps everything that identifies the batch — base offset, offset
//! count, Raft term and index, producer — so no record is renumbered and the
//! Raft log keeps every entry; only the records section shrinks.

use super::layout::{self as l, le};
use super::record::{decode_one, decompress};
use super::{Batch, BatchError, Record};

/// The batch without the records `keep` rejects, or `None` when it keeps
/// them all (or the batch is a control batch, which compaction never
/// touches). A batch losing every record becomes an *emptied* batch:
/// `record_count = 0`, no records section, its offsets still counted.
///
/// A compressed batch is recompressed with zstd at `zstd_level`.
pub fn compact(
    batch: &Batch,
    mut keep: impl FnMut(&Record) -> bool,
    zstd_level: i32,
) -> Result<Option<Vec<u8>>, BatchError> {
    let h = *batch.header();
    if h.flags.control() || h.record_count == 0 {
        return Ok(None);
    }
    let stored = batch.bytes().slice(h.records_at()..h.batch_len as usize);
    let raw = if h.flags.zstd() {
        decompress(&stored, h.records_raw_len as usize)?
    } else {
        stored
    };
    // Raw ranges of the kept records, in order.
    let mut kept = Vec::new();
    let (mut pos, mut n, mut last) = (0, 0u32, None);
    while pos < raw.len() {
        let (s, next) = decode_one(&raw, pos, n, last, &h, false)?;
        let rec = Record {
            offset: h.base_offset.add(s.offset_delta.into()),
            timestamp_ms: s.timestamp_ms,
            key: s.key.map(|r| raw.slice(r)),
            value: s.value.map(|r| raw.slice(r)),
            ttl_ms: s.ttl_ms,
            headers: Vec::new(),
        };
        if keep(&rec) {
            kept.push(pos..next);
        }
        last = Some(s.offset_delta);
        pos = next;
        n += 1;
    }
    if kept.len() == n as usize {
        return Ok(None);
    }

    // Timestamps stay: they still bound what the batch held (time retention
    // and the time index read them), and the records' deltas stay valid.
    // The producer table stays too: offsets are not renumbered, so its runs
    // still say who wrote which offsets.
    let mut out = batch.bytes()[..h.records_at()].to_vec();
    let mut new_raw = Vec::with_capacity(kept.iter().map(|k| k.len()).sum());
    for range in &kept {
        new_raw.extend_from_slice(&raw[range.clone()]);
    }
    let (flags, stored): (u8, std::borrow::Cow<'_, [u8]>) = if h.flags.zstd() && !new_raw.is_empty() {
        let c =
            zstd::bulk::compress(&new_raw, zstd_level).map_err(|e| BatchError::Compression(e.to_string()))?;
        (h.flags.0, c.into())
    } else {
        (h.flags.0 & !l::FLAG_ZSTD, new_raw.as_slice().into())
    };
    out[l::FLAGS_AT] = flags;
    le::put_u32(&mut out, l::RECORD_COUNT_AT, kept.len() as u32);
    le::put_u32(&mut out, l::RECORDS_LEN_AT, stored.len() as u32);
    le::put_u32(&mut out, l::RECORDS_RAW_LEN_AT, new_raw.len() as u32);
    le::put_u32(&mut out, l::LEN_AT, (h.records_at() + stored.len()) as u32);
    out.extend_from_slice(&stored);
    let body_crc = crc32fast::hash(&out[l::HEADER_BYTES..]);
    le::put_u32(&mut out, l::RECORDS_CRC_AT, body_crc);
    let crc = crc32fast::hash(&out[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    le::put_u32(&mut out, l::HEADER_CRC_AT, crc);
    Ok(Some(out))
}
