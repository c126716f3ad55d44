//! Reading and checking batches that already exist as bytes.

use bytes::Bytes;

use super::layout::{self as l, le};
use super::record::{self, RecordIter};
use super::BatchError;
use crate::types::{Offset, ProducerId, RaftIndex, RaftTerm};

/// Flags of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchFlags(pub u8);

impl BatchFlags {
    pub fn zstd(self) -> bool {
        self.0 & l::FLAG_ZSTD != 0
    }
    pub fn control(self) -> bool {
        self.0 & l::FLAG_CONTROL != 0
    }
    /// The records section is sealed (encrypted at rest); see
    /// [`crate::batch::seal`].
    pub fn sealed(self) -> bool {
        self.0 & l::FLAG_SEALED != 0
    }
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_len: u32,
    pub header_crc: u32,
    pub flags: BatchFlags,
    /// Runs in the producer table between the header and the records (a
    /// merged batch); 0 for a batch from one producer (or none).
    pub producer_count: u16,
    pub record_count: u32,
    pub base_offset: Offset,
    pub raft_term: RaftTerm,
    pub raft_index: RaftIndex,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: ProducerId,
    pub producer_seq: u64,
    /// Offsets this batch occupies: `[base_offset, base_offset + offset_count)`.
    /// Zero for control batches; at least `record_count` for data batches
    /// (more once compaction has removed records).
    pub offset_count: u32,
    pub records_len: u32,
    pub records_raw_len: u32,
    pub records_crc: u32,
}

impl BatchHeader {
    /// Decodes and checks the fixed header: version, flags, reserved bytes,
    /// header checksum, and that the lengths and counts agree with each other
    /// and with the limits. Does not look at the records.
    pub fn decode(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < l::HEADER_BYTES {
            return Err(BatchError::Truncated {
                need: l::HEADER_BYTES,
                have: buf.len(),
            });
        }
        let version = buf[l::VERSION_AT];
        if version != l::VERSION && version != l::VERSION_SEALED {
            return Err(BatchError::Version(version));
        }
        let stored = le::u32_at(buf, l::HEADER_CRC_AT);
        let computed = crc32fast::hash(&buf[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
        if stored != computed {
            return Err(BatchError::HeaderCrc { stored, computed });
        }
        let flags = buf[l::FLAGS_AT];
        if flags & !l::FLAGS_KNOWN != 0 {
            return Err(BatchError::UnknownFlags(flags));
        }
        if (version == l::VERSION_SEALED) != (flags & l::FLAG_SEALED != 0) {
            return Err(BatchError::Inconsistent(
                "the sealed flag is set on a version 1 batch or missing on a version 2 one",
            ));
        }
        let h = BatchHeader {
            batch_len: le::u32_at(buf, l::LEN_AT),
            header_crc: stored,
            flags: BatchFlags(flags),
            producer_count: le::u16_at(buf, l::PRODUCER_COUNT_AT),
            record_count: le::u32_at(buf, l::RECORD_COUNT_AT),
            base_offset: Offset(le::u64_at(buf, l::BASE_OFFSET_AT)),
            raft_term: RaftTerm(le::u64_at(buf, l::RAFT_TERM_AT)),
            raft_index: RaftIndex(le::u64_at(buf, l::RAFT_INDEX_AT)),
            first_timestamp_ms: le::i64_at(buf, l::FIRST_TIMESTAMP_AT),
            max_timestamp_ms: le::i64_at(buf, l::MAX_TIMESTAMP_AT),
            producer_id: ProducerId(le::u64_at(buf, l::PRODUCER_ID_AT)),
            producer_seq: le::u64_at(buf, l::PRODUCER_SEQ_AT),
            offset_count: le::u32_at(buf, l::OFFSET_COUNT_AT),
            records_len: le::u32_at(buf, l::RECORDS_LEN_AT),
            records_raw_len: le::u32_at(buf, l::RECORDS_RAW_LEN_AT),
            records_crc: le::u32_at(buf, l::RECORDS_CRC_AT),
        };
        h.check_consistent()?;
        Ok(h)
    }

    fn check_consistent(&self) -> Result<(), BatchError> {
        let too_large = |what, value: u64, max: usize| BatchError::TooLarge {
            what,
            value,
            max: max as u64,
        };
        if self.batch_len as usize > l::BATCH_BYTES_MAX {
            return Err(too_large(
                "batch length",
                self.batch_len.into(),
                l::BATCH_BYTES_MAX,
            ));
        }
        if self.records_len as usize > l::BATCH_BYTES_MAX - l::HEADER_BYTES {
            return Err(too_large(
                "records length",
                self.records_len.into(),
                l::BATCH_BYTES_MAX - l::HEADER_BYTES,
            ));
        }
        if usize::from(self.producer_count) > l::PRODUCER_RUNS_MAX {
            return Err(too_large(
                "producer table runs",
                self.producer_count.into(),
                l::PRODUCER_RUNS_MAX,
            ));
        }
        if self.producer_count > 0
            && (self.producer_id.0 != 0
                || self.producer_seq != 0
                || self.flags.zstd()
                || self.flags.control())
        {
            return Err(BatchError::Inconsistent(
                "a producer table on a batch that names a producer, is compressed or is a control batch",
            ));
        }
        if self.batch_len as usize != self.records_at() + self.records_len as usize {
            return Err(BatchError::Inconsistent(
                "batch length is not header, producer table and records length",
            ));
        }
        if self.records_raw_len as usize > l::RECORDS_RAW_BYTES_MAX {
            return Err(too_large(
                "uncompressed records length",
                self.records_raw_len.into(),
                l::RECORDS_RAW_BYTES_MAX,
            ));
        }
        // What the records section would be in the clear.
        let open_len = if self.flags.sealed() {
            if self.flags.control() || (self.records_len as usize) < l::SEAL_OVERHEAD_BYTES {
                return Err(BatchError::Inconsistent(
                    "a sealed control batch, or a seal too short for its envelope",
                ));
            }
            self.records_len - l::SEAL_OVERHEAD_BYTES as u32
        } else {
            self.records_len
        };
        if !self.flags.zstd() && self.records_raw_len != open_len {
            return Err(BatchError::Inconsistent(
                "uncompressed batch with raw length different from stored length",
            ));
        }
        if self.record_count > l::RECORD_COUNT_MAX {
            return Err(too_large(
                "record count",
                self.record_count.into(),
                l::RECORD_COUNT_MAX as usize,
            ));
        }
        if (self.record_count as usize) * l::REC_MIN_BYTES > self.records_raw_len as usize {
            return Err(BatchError::Inconsistent(
                "record count larger than the records section can hold",
            ));
        }
        if self.record_count == 0 {
            // Only compaction produces these: a data batch whose every record
            // was dropped keeps its header so that its Raft index and offsets
            // stay accounted for.
            if self.flags.control() || self.offset_count == 0 {
                return Err(BatchError::Inconsistent("batch without records"));
            }
            if self.records_len != 0 || self.flags.zstd() || self.flags.sealed() {
                return Err(BatchError::Inconsistent("emptied batch with a records section"));
            }
        }
        if self.flags.control() {
            if self.offset_count != 0 {
                return Err(BatchError::Inconsistent("control batch occupies offsets"));
            }
        } else if self.offset_count < self.record_count {
            return Err(BatchError::Inconsistent("offset count smaller than record count"));
        }
        if self.max_timestamp_ms < self.first_timestamp_ms {
            return Err(BatchError::Inconsistent("max timestamp before first timestamp"));
        }
        Ok(())
    }

    /// Where the records section starts: after the header and the producer
    /// table.
    pub fn records_at(&self) -> usize {
        l::HEADER_BYTES + usize::from(self.producer_count) * l::PRODUCER_RUN_BYTES
    }

    /// First offset after this batch.
    pub fn next_offset(&self) -> Offset {
        self.base_offset.add(self.offset_count.into())
    }

    /// Whether `offset` is one of the offsets this batch occupies.
    pub fn contains(&self, offset: Offset) -> bool {
        self.base_offset <= offset && offset < self.next_offset()
    }
}

/// Checks the records checksum of a batch whose header is already decoded.
pub(crate) fn check_records_crc(buf: &[u8], h: &BatchHeader) -> Result<(), BatchError> {
    let end = h.batch_len as usize;
    if buf.len() < end {
        return Err(BatchError::Truncated {
            need: end,
            have: buf.len(),
        });
    }
    let computed = crc32fast::hash(&buf[l::HEADER_BYTES..end]);
    if computed != h.records_crc {
        return Err(BatchError::RecordsCrc {
            stored: h.records_crc,
            computed,
        });
    }
    Ok(())
}

/// A range of a batch's offsets written by one idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerRun {
    pub producer_id: ProducerId,
    /// Sequence of the run's first record.
    pub first_seq: u64,
    /// The run's first offset minus the batch's base offset.
    pub offset_delta: u32,
    pub offset_count: u32,
}

/// The producer runs of a batch whose header and checksums were checked:
/// its producer table, or the header's producer as one run covering the
/// whole batch; none for a control batch or an anonymous one. Runs are
/// checked to name a producer, to be non-empty, in offset order, disjoint
/// and inside the batch's offsets.
pub(crate) fn producer_runs(buf: &[u8], h: &BatchHeader) -> Result<Vec<ProducerRun>, BatchError> {
    if h.producer_count == 0 {
        if h.flags.control() || h.producer_id.0 == 0 {
            return Ok(Vec::new());
        }
        return Ok(vec![ProducerRun {
            producer_id: h.producer_id,
            first_seq: h.producer_seq,
            offset_delta: 0,
            offset_count: h.offset_count,
        }]);
    }
    let table = &buf[l::HEADER_BYTES..h.records_at()];
    let mut runs = Vec::with_capacity(h.producer_count.into());
    let mut next_free = 0u64;
    for at in (0..table.len()).step_by(l::PRODUCER_RUN_BYTES) {
        let r = ProducerRun {
            producer_id: ProducerId(le::u64_at(table, at + l::RUN_PRODUCER_ID_AT)),
            first_seq: le::u64_at(table, at + l::RUN_FIRST_SEQ_AT),
            offset_delta: le::u32_at(table, at + l::RUN_OFFSET_DELTA_AT),
            offset_count: le::u32_at(table, at + l::RUN_OFFSET_COUNT_AT),
        };
        let end = u64::from(r.offset_delta) + u64::from(r.offset_count);
        if r.producer_id.0 == 0 || r.offset_count == 0 {
            return Err(BatchError::Inconsistent(
                "producer run without a producer or offsets",
            ));
        }
        if u64::from(r.offset_delta) < next_free || end > u64::from(h.offset_count) {
            return Err(BatchError::Inconsistent(
                "producer runs overlap, are out of order or leave the batch's offsets",
            ));
        }
        next_free = end;
        runs.push(r);
    }
    Ok(runs)
}

/// Structural check of the records of a batch whose header and checksums were
/// checked; see [`Batch::validate`].
pub(crate) fn validate_records(buf: &[u8], h: &BatchHeader) -> Result<(), BatchError> {
    producer_runs(buf, h)?;
    if h.flags.sealed() {
        // Without the key the records cannot be walked: the leader that
        // sealed them walked them in the clear first, and the AEAD tag
        // refuses any change since, at the first read.
        return Ok(());
    }
    let stored = &buf[h.records_at()..h.batch_len as usize];
    let (n, _max_ts) = if h.flags.zstd() {
        let raw = record::decompress(stored, h.records_raw_len as usize)?;
        record::check_all(&raw, h)?
    } else {
        record::check_all(stored, h)?
    };
    if n != h.record_count {
        return Err(BatchError::Inconsistent(
            "record count differs from records present",
        ));
    }
    // Records are each checked to be at or before `max_timestamp_ms`; it
    // need not be reached, because compaction keeps a batch's timestamps
    // when it drops the record that carried the maximum.
    Ok(())
}

/// Writes the fields the log owns (base offset, Raft term and index) into an
/// encoded batch and recomputes the header checksum. The records and their
/// checksum are not touched: stamping costs one CRC over 80 bytes whatever the
/// batch size.
pub fn stamp(buf: &mut [u8], base_offset: Offset, term: RaftTerm, index: RaftIndex) {
    assert!(
        buf.len() >= l::HEADER_BYTES,
        "stamp on a buffer shorter than a batch header"
    );
    le::put_u64(buf, l::BASE_OFFSET_AT, base_offset.0);
    le::put_u64(buf, l::RAFT_TERM_AT, term.0);
    le::put_u64(buf, l::RAFT_INDEX_AT, index.0);
    let crc = crc32fast::hash(&buf[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    le::put_u32(buf, l::HEADER_CRC_AT, crc);
}

/// Rewrites a single-producer batch's producer id in place and re-seals
/// the header's checksum (the broker binds a client's id to its principal
/// before the batch is appended; the records and their checksum are
/// untouched).
pub fn stamp_producer(buf: &mut [u8], id: ProducerId) {
    assert!(
        buf.len() >= l::HEADER_BYTES,
        "stamp_producer on a buffer shorter than a batch header"
    );
    le::put_u64(buf, l::PRODUCER_ID_AT, id.0);
    let crc = crc32fast::hash(&buf[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    le::put_u32(buf, l::HEADER_CRC_AT, crc);
}

/// A whole, checked batch over shared bytes (a slice of a segment map, or a
/// buffer from the network).
#[derive(Clone, Debug)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Checks header and records checksum, and that `bytes` holds exactly one
    /// batch. Does not parse records; see [`Batch::validate`].
    pub fn new(bytes: Bytes) -> Result<Batch, BatchError> {
        let header = BatchHeader::decode(&bytes)?;
        check_records_crc(&bytes, &header)?;
        if bytes.len() != header.batch_len as usize {
            return Err(BatchError::Inconsistent("bytes after the end of the batch"));
        }
        producer_runs(&bytes, &header)?;
        Ok(Batch { header, bytes })
    }

    /// Wraps bytes whose header was decoded and checksums checked by the caller
    /// (the log, which verified them on append or on recovery).
    pub(crate) fn trusted(header: BatchHeader, bytes: Bytes) -> Batch {
        debug_assert_eq!(bytes.len(), header.batch_len as usize);
        Batch { header, bytes }
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Checks both checksums again over the bytes as they are now: a
    /// batch the log hands out may come from a sealed segment that was not
    /// re-read when the log opened, and the disk may have changed since.
    pub fn check_checksums(&self) -> Result<(), BatchError> {
        let h = BatchHeader::decode(&self.bytes)?;
        check_records_crc(&self.bytes, &h)
    }

    /// The encoded batch, exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Full structural check: decompresses if needed and walks every record,
    /// checking each length against what remains, offset deltas strictly
    /// increasing inside the batch's offset range, timestamps inside
    /// `[first, max]`, and the record count.
    pub fn validate(&self) -> Result<(), BatchError> {
        validate_records(&self.bytes, &self.header)
    }

    /// Which producer wrote which of the batch's offsets (see
    /// [`ProducerRun`]); empty when no idempotent producer did.
    pub fn producer_runs(&self) -> Result<Vec<ProducerRun>, BatchError> {
        producer_runs(&self.bytes, &self.header)
    }

    /// The records, decompressing first if the batch is compressed. Each
    /// record is itself checked as it is decoded.
    pub fn records(&self) -> Result<RecordIter, BatchError> {
        let h = &self.header;
        if h.flags.sealed() {
            return Err(BatchError::Sealed(super::seal::key_id(self)));
        }
        let stored = self.bytes.slice(h.records_at()..h.batch_len as usize);
        let raw = if h.flags.zstd() {
            record::decompress(&stored, h.records_raw_len as usize)?
        } else {
            stored
        };
        Ok(RecordIter::new(raw, *h))
    }
}

/// The data batches of a read chunk (batches back to back, as
/// `Log::read` gives them), control batches stepped over: what every
/// reader of records (a group's fetch, a bridge) walks.
pub fn data_batches(chunk: Bytes) -> DataBatches {
    DataBatches { rest: chunk }
}

/// See [`data_batches`]. After an error it ends.
#[derive(Debug)]
pub struct DataBatches {
    rest: Bytes,
}

impl Iterator for DataBatches {
    type Item = Result<Batch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let step = BatchHeader::decode(&self.rest).and_then(|h| {
                let len = h.batch_len as usize;
                if len > self.rest.len() {
                    return Err(BatchError::Truncated {
                        need: len,
                        have: self.rest.len(),
                    });
                }
                Ok((h.flags.control(), Batch::new(self.rest.split_to(len))?))
            });
            match step {
                Ok((true, _)) => continue,
                Ok((false, b)) => return Some(Ok(b)),
                Err(e) => {
                    self.rest = Bytes::new();
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Compression, RecordInput};

    fn built(value: &[u8], control: bool) -> Vec<u8> {
        let mut b = BatchBuilder::new(1 << 20);
        if control {
            b = b.control();
        }
        b.push(RecordInput {
            value: Some(value),
            timestamp_ms: 1,
            ..RecordInput::default()
        })
        .unwrap();
        b.build(Compression::None).unwrap()
    }

    #[test]
    fn a_chunk_gives_its_data_batches_and_ends_at_a_cut_one() {
        let mut chunk = built(b"a", false);
        chunk.extend(built(b"ctl", true));
        chunk.extend(built(b"b", false));
        let values: Vec<Bytes> = data_batches(Bytes::from(chunk.clone()))
            .map(|b| {
                b.unwrap()
                    .records()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .value
                    .unwrap()
            })
            .collect();
        assert_eq!(values, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);

        let cut = Bytes::from(chunk[..chunk.len() - 3].to_vec());
        let got: Vec<_> = data_batches(cut).collect();
        assert_eq!(
            got.len(),
            2,
            "the first batch, then the cut one's error, then nothing"
        );
        assert!(got[0].is_ok());
        assert!(
            matches!(got[1], Err(BatchError::Truncated { .. })),
            "{:?}",
            got[1]
        );
    }
}
