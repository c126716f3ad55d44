//! Decoding the records inside a batch.

use std::ops::Range;

use bytes::Bytes;

use super::layout::{self as l, le};
use super::{BatchError, BatchHeader};
use crate::types::Offset;

/// One decoded record. Key, value and header values share the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Time to live from `timestamp_ms`, for cache entries.
    pub ttl_ms: Option<u64>,
    pub headers: Vec<(Bytes, Bytes)>,
}

/// Decompresses a records section, refusing to produce more than `raw_len`
/// bytes and insisting on exactly `raw_len`.
pub(crate) fn decompress(stored: &[u8], raw_len: usize) -> Result<Bytes, BatchError> {
    debug_assert!(raw_len <= l::RECORDS_RAW_BYTES_MAX);
    // zstd's bulk API allocates `capacity` up front; raw_len is bounded by
    // RECORDS_RAW_BYTES_MAX (checked in BatchHeader::decode).
    let out = zstd::bulk::decompress(stored, raw_len).map_err(|e| BatchError::Compression(e.to_string()))?;
    if out.len() != raw_len {
        return Err(BatchError::Inconsistent(
            "decompressed records length differs from the header",
        ));
    }
    Ok(Bytes::from(out))
}

/// Where the parts of one record lie in the records section.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    pub offset_delta: u32,
    pub timestamp_ms: i64,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
    pub ttl_ms: Option<u64>,
    /// Only filled when asked for (validation does not need them).
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Decodes the record at `pos` of a records section, checking every length
/// against what remains before using it. Returns its spans and the position of
/// the next record.
pub(crate) fn decode_one(
    buf: &[u8],
    pos: usize,
    index: u32,
    last_delta: Option<u32>,
    h: &BatchHeader,
    want_headers: bool,
) -> Result<(Spans, usize), BatchError> {
    let bad = |reason| BatchError::Record { index, reason };
    let rest = buf.len() - pos;
    if rest < l::REC_MIN_BYTES {
        return Err(bad("record shorter than the minimum record"));
    }
    let body_len = le::u32_at(buf, pos + l::REC_LEN_AT) as usize;
    if body_len > rest - 4 {
        return Err(bad("record length runs past the records section"));
    }
    let end = pos + 4 + body_len;
    if end - pos < l::REC_MIN_BYTES {
        return Err(bad("record shorter than the minimum record"));
    }
    let attrs = buf[pos + l::REC_ATTRS_AT];
    if attrs & !l::REC_ATTRS_KNOWN != 0 {
        return Err(bad("unknown record attribute bits"));
    }
    let delta = le::u32_at(buf, pos + l::REC_OFFSET_DELTA_AT);
    if last_delta.is_some_and(|prev| delta <= prev) {
        return Err(bad("offset deltas not strictly increasing"));
    }
    if h.flags.control() {
        if delta != index {
            return Err(bad("control record offset delta is not its position"));
        }
    } else if delta >= h.offset_count {
        return Err(bad("offset delta outside the batch's offsets"));
    }
    let ts_delta = le::u32_at(buf, pos + l::REC_TIMESTAMP_DELTA_AT) as i32;
    let timestamp_ms = h
        .first_timestamp_ms
        .checked_add(ts_delta.into())
        .ok_or(bad("timestamp overflows"))?;
    if timestamp_ms > h.max_timestamp_ms {
        return Err(bad("timestamp after the batch's max timestamp"));
    }
    let mut cur = Cursor {
        buf: &buf[..end],
        pos: pos + l::REC_FIXED_BYTES,
        index,
    };
    let mut spans = Spans {
        offset_delta: delta,
        timestamp_ms,
        ..Spans::default()
    };
    if attrs & l::REC_HAS_KEY != 0 {
        let len = cur.u32()? as usize;
        if len > l::KEY_BYTES_MAX {
            return Err(bad("key longer than KEY_BYTES_MAX"));
        }
        spans.key = Some(cur.take(len)?);
    }
    if attrs & l::REC_HAS_VALUE != 0 {
        let len = cur.u32()? as usize;
        spans.value = Some(cur.take(len)?);
    }
    if attrs & l::REC_HAS_TTL != 0 {
        spans.ttl_ms = Some(cur.u64()?);
    }
    let header_count = cur.u16()? as usize;
    if header_count > l::RECORD_HEADERS_MAX {
        return Err(bad("more headers than RECORD_HEADERS_MAX"));
    }
    if want_headers {
        spans.headers.reserve_exact(header_count);
    }
    for _ in 0..header_count {
        let name_len = cur.u16()? as usize;
        if name_len > l::HEADER_NAME_BYTES_MAX {
            return Err(bad("header name longer than HEADER_NAME_BYTES_MAX"));
        }
        let name = cur.take(name_len)?;
        let value_len = cur.u32()? as usize;
        let value = cur.take(value_len)?;
        if want_headers {
            spans.headers.push((name, value));
        }
    }
    if cur.pos != end {
        return Err(bad("record length disagrees with its contents"));
    }
    Ok((spans, end))
}

/// Walks every record of a records section without building anything;
/// returns the record count and largest timestamp.
pub(crate) fn check_all(raw: &[u8], h: &BatchHeader) -> Result<(u32, i64), BatchError> {
    let (mut pos, mut n, mut last, mut max_ts) = (0, 0u32, None, i64::MIN);
    while pos < raw.len() {
        if n >= h.record_count {
            return Err(BatchError::Inconsistent(
                "more records than the header's record count",
            ));
        }
        let (spans, next) = decode_one(raw, pos, n, last, h, false)?;
        max_ts = max_ts.max(spans.timestamp_ms);
        last = Some(spans.offset_delta);
        pos = next;
        n += 1;
    }
    Ok((n, max_ts))
}

/// Iterates the records of one batch, checking each as it goes. After the
/// first error it yields nothing more.
#[derive(Debug)]
pub struct RecordIter {
    raw: Bytes,
    pos: usize,
    index: u32,
    last_delta: Option<u32>,
    header: BatchHeader,
    failed: bool,
}

impl RecordIter {
    pub(crate) fn new(raw: Bytes, header: BatchHeader) -> RecordIter {
        RecordIter {
            raw,
            pos: 0,
            index: 0,
            last_delta: None,
            header,
            failed: false,
        }
    }

    fn decode_next(&mut self) -> Result<Record, BatchError> {
        let (s, next) = decode_one(
            &self.raw,
            self.pos,
            self.index,
            self.last_delta,
            &self.header,
            true,
        )?;
        self.pos = next;
        self.index += 1;
        self.last_delta = Some(s.offset_delta);
        let slice = |r: Range<usize>| self.raw.slice(r);
        Ok(Record {
            offset: self.header.base_offset.add(s.offset_delta.into()),
            timestamp_ms: s.timestamp_ms,
            key: s.key.map(slice),
            value: s.value.map(slice),
            ttl_ms: s.ttl_ms,
            headers: s.headers.into_iter().map(|(n, v)| (slice(n), slice(v))).collect(),
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.raw.len() {
            return None;
        }
        if self.index >= self.header.record_count {
            self.failed = true;
            return Some(Err(BatchError::Inconsistent(
                "more records than the header's record count",
            )));
        }
        let r = self.decode_next();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Bounds-checked reader over one record's bytes, handing out ranges.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u32,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<Range<usize>, BatchError> {
        if self.buf.len() - self.pos < n {
            return Err(BatchError::Record {
                index: self.index,
                reason: "field runs past the end of the record",
            });
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }
    fn u16(&mut self) -> Result<u16, BatchError> {
        let r = self.take(2)?;
        Ok(le::u16_at(self.buf, r.start))
    }
    fn u32(&mut self) -> Result<u32, BatchError> {
        let r = self.take(4)?;
        Ok(le::u32_at(self.buf, r.start))
    }
    fn u64(&mut self) -> Result<u64, BatchError> {
        let r = self.take(8)?;
        Ok(le::u64_at(self.buf, r.start))
    }
}
