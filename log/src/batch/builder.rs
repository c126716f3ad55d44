//! Building a batch on the producer side.

use super::layout::{self as l, le};
use super::BatchError;
use crate::types::ProducerId;

/// How the records section is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// zstd at the given level (1 is a good producer default).
    Zstd(i32),
}

/// One record to add to a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordInput<'a> {
    pub key: Option<&'a [u8]>,
    /// `None` writes a tombstone.
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: i64,
    pub ttl_ms: Option<u64>,
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

/// Accumulates records and encodes a batch. The fields the log owns (base
/// offset, term, index) are written as zero; the log stamps them on append.
#[derive(Debug)]
pub struct BatchBuilder {
    raw: Vec<u8>,
    count: u32,
    first_ts: i64,
    max_ts: i64,
    producer_id: ProducerId,
    producer_seq: u64,
    control: bool,
    bytes_max: usize,
}

impl BatchBuilder {
    /// A builder for a data batch whose encoded size may not exceed
    /// `bytes_max` (itself capped at [`l::BATCH_BYTES_MAX`]).
    pub fn new(bytes_max: usize) -> BatchBuilder {
        BatchBuilder {
            raw: Vec::new(),
            count: 0,
            first_ts: 0,
            max_ts: i64::MIN,
            producer_id: ProducerId(0),
            producer_seq: 0,
            control: false,
            bytes_max: bytes_max.min(l::BATCH_BYTES_MAX),
        }
    }

    /// Marks the batch as a control batch (no offsets, never delivered).
    pub fn control(mut self) -> BatchBuilder {
        self.control = true;
        self
    }

    /// Sets the idempotent-producer identity of the batch's first record.
    pub fn producer(mut self, id: ProducerId, first_seq: u64) -> BatchBuilder {
        self.producer_id = id;
        self.producer_seq = first_seq;
        self
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size if built uncompressed now.
    pub fn encoded_len(&self) -> usize {
        l::HEADER_BYTES + self.raw.len()
    }

    /// Adds a record, or refuses it (leaving the builder unchanged) if it
    /// would break a limit; a refused record that fits an empty batch belongs
    /// in the next batch.
    pub fn push(&mut self, r: RecordInput<'_>) -> Result<(), BatchError> {
        let too_large = |what, value: usize, max: usize| BatchError::TooLarge {
            what,
            value: value as u64,
            max: max as u64,
        };
        if self.count >= l::RECORD_COUNT_MAX {
            return Err(too_large(
                "record count",
                self.count as usize + 1,
                l::RECORD_COUNT_MAX as usize,
            ));
        }
        if let Some(k) = r.key {
            if k.len() > l::KEY_BYTES_MAX {
                return Err(too_large("key length", k.len(), l::KEY_BYTES_MAX));
            }
        }
        if r.headers.len() > l::RECORD_HEADERS_MAX {
            return Err(too_large("header count", r.headers.len(), l::RECORD_HEADERS_MAX));
        }
        let ts_delta = if self.count == 0 {
            0
        } else {
            i32::try_from(r.timestamp_ms - self.first_ts).map_err(|_| BatchError::Record {
                index: self.count,
                reason: "timestamp more than 24 days from the batch's first",
            })?
        };
        let mut body = l::REC_FIXED_BYTES - 4 + 2;
        body += r.key.map_or(0, |k| 4 + k.len());
        body += r.value.map_or(0, |v| 4 + v.len());
        body += if r.ttl_ms.is_some() { 8 } else { 0 };
        for (name, value) in r.headers {
            if name.len() > l::HEADER_NAME_BYTES_MAX {
                return Err(too_large(
                    "header name length",
                    name.len(),
                    l::HEADER_NAME_BYTES_MAX,
                ));
            }
            body += 2 + name.len() + 4 + value.len();
        }
        let new_len = self.encoded_len() + 4 + body;
        if new_len > self.bytes_max {
            return Err(too_large("batch length", new_len, self.bytes_max));
        }

        let mut attrs = 0u8;
        attrs |= if r.key.is_some() { l::REC_HAS_KEY } else { 0 };
        attrs |= if r.value.is_some() { l::REC_HAS_VALUE } else { 0 };
        attrs |= if r.ttl_ms.is_some() { l::REC_HAS_TTL } else { 0 };
        let raw = &mut self.raw;
        raw.reserve(4 + body);
        raw.extend_from_slice(&(body as u32).to_le_bytes());
        raw.push(attrs);
        raw.extend_from_slice(&self.count.to_le_bytes()); // offset delta
        raw.extend_from_slice(&ts_delta.to_le_bytes());
        if let Some(k) = r.key {
            raw.extend_from_slice(&(k.len() as u32).to_le_bytes());
            raw.extend_from_slice(k);
        }
        if let Some(v) = r.value {
            raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
            raw.extend_from_slice(v);
        }
        if let Some(ttl) = r.ttl_ms {
            raw.extend_from_slice(&ttl.to_le_bytes());
        }
        raw.extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
        for (name, value) in r.headers {
            raw.extend_from_slice(&(name.len() as u16).to_le_bytes());
            raw.extend_from_slice(name);
            raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
            raw.extend_from_slice(value);
        }
        if self.count == 0 {
            self.first_ts = r.timestamp_ms;
        }
        self.max_ts = self.max_ts.max(r.timestamp_ms);
        self.count += 1;
        Ok(())
    }

    /// Encodes the batch. Fails on an empty builder, or if compression makes
    /// the batch larger than its limit (it never grows it in practice, but the
    /// limit is checked, not assumed).
    pub fn build(self, compression: Compression) -> Result<Vec<u8>, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Inconsistent("batch without records"));
        }
        let (flags_c, stored): (u8, std::borrow::Cow<'_, [u8]>) = match compression {
            Compression::None => (0, self.raw.as_slice().into()),
            Compression::Zstd(level) => {
                let c = zstd::bulk::compress(&self.raw, level)
                    .map_err(|e| BatchError::Compression(e.to_string()))?;
                (l::FLAG_ZSTD, c.into())
            }
        };
        let batch_len = l::HEADER_BYTES + stored.len();
        if batch_len > self.bytes_max {
            return Err(BatchError::TooLarge {
                what: "batch length",
                value: batch_len as u64,
                max: self.bytes_max as u64,
            });
        }
        let mut out = vec![0u8; batch_len];
        let flags = flags_c | if self.control { l::FLAG_CONTROL } else { 0 };
        le::put_u32(&mut out, l::LEN_AT, batch_len as u32);
        out[l::VERSION_AT] = l::VERSION;
        out[l::FLAGS_AT] = flags;
        le::put_u32(&mut out, l::RECORD_COUNT_AT, self.count);
        le::put_u64(&mut out, l::FIRST_TIMESTAMP_AT, self.first_ts as u64);
        le::put_u64(&mut out, l::MAX_TIMESTAMP_AT, self.max_ts as u64);
        le::put_u64(&mut out, l::PRODUCER_ID_AT, self.producer_id.0);
        le::put_u64(&mut out, l::PRODUCER_SEQ_AT, self.producer_seq);
        let offset_count = if self.control { 0 } else { self.count };
        le::put_u32(&mut out, l::OFFSET_COUNT_AT, offset_count);
        le::put_u32(&mut out, l::RECORDS_LEN_AT, stored.len() as u32);
        le::put_u32(&mut out, l::RECORDS_RAW_LEN_AT, self.raw.len() as u32);
        le::put_u32(&mut out, l::RECORDS_CRC_AT, crc32fast::hash(&stored));
        out[l::HEADER_BYTES..].copy_from_slice(&stored);
        let crc = crc32fast::hash(&out[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
        le::put_u32(&mut out, l::HEADER_CRC_AT, crc);
        Ok(out)
    }
}
