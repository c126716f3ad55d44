//! Merging producers' batches into one (one Raft entry for many publishes).
//!
//! A shard's leader that makes one log entry per publish makes one fsync
//! per publish; merging what arrived while the previous entry was being
//! written makes one fsync per group of publishes. The merged batch is an
//! ordinary data batch to every reader; its producer table keeps who wrote
//! which offsets, which is what deduplication needs.
//!
//! Records are copied byte for byte except two fields: the offset delta
//! (shifted by the offsets of the batches merged before) and the timestamp
//! delta (re-based on the merged batch's first timestamp).

use std::ops::Range;

use super::layout::{self as l, le};
use super::record::decode_one;
use super::{Batch, BatchError};
use crate::types::ProducerId;

/// One merged input.
#[derive(Debug)]
struct Part {
    /// Its records inside `records`.
    range: Range<usize>,
    first_timestamp_ms: i64,
    producer: Option<(ProducerId, u64)>,
    offset_delta: u32,
    offset_count: u32,
}

/// Builds one merged batch from producer-built batches, in the order they
/// are pushed.
#[derive(Debug)]
pub struct BatchMerger {
    bytes_max: usize,
    records: Vec<u8>,
    parts: Vec<Part>,
    producers: usize,
    record_count: u32,
    /// Smallest and largest record timestamp pushed so far.
    ts_lo: i64,
    ts_hi: i64,
    first_min: i64,
    max_ts: i64,
}

impl BatchMerger {
    /// A merger whose batch stays within `bytes_max` (at most
    /// [`l::BATCH_BYTES_MAX`]).
    pub fn new(bytes_max: usize) -> BatchMerger {
        BatchMerger {
            bytes_max: bytes_max.min(l::BATCH_BYTES_MAX),
            records: Vec::new(),
            parts: Vec::new(),
            producers: 0,
            record_count: 0,
            ts_lo: i64::MAX,
            ts_hi: i64::MIN,
            first_min: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    /// Whether `b` can ever be merged: an uncompressed data batch from one
    /// producer (or none) that no compaction touched.
    pub fn mergeable(b: &Batch) -> bool {
        let h = b.header();
        !h.flags.control()
            && !h.flags.zstd()
            && !h.flags.sealed()
            && h.producer_count == 0
            && h.record_count > 0
            && h.offset_count == h.record_count
    }

    /// Batches pushed so far.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Adds `b` and returns the delta of its first offset from the merged
    /// batch's base offset; `Ok(None)` when it does not fit (bytes, records,
    /// producer runs, or timestamps too far apart for the record format's
    /// 32-bit deltas). Errors when `b` is not [mergeable](Self::mergeable)
    /// or its records are malformed.
    pub fn push(&mut self, b: &Batch) -> Result<Option<u32>, BatchError> {
        if !BatchMerger::mergeable(b) {
            return Err(BatchError::Inconsistent(
                "only uncompressed data batches from one producer can be merged",
            ));
        }
        let h = *b.header();
        let producer = (h.producer_id.0 != 0).then_some((h.producer_id, h.producer_seq));
        let producers = self.producers + usize::from(producer.is_some());
        let records_len = self.records.len() + h.records_len as usize;
        let batch_len = l::HEADER_BYTES + producers * l::PRODUCER_RUN_BYTES + records_len;
        if batch_len > self.bytes_max
            || producers > l::PRODUCER_RUNS_MAX
            || self.record_count + h.record_count > l::RECORD_COUNT_MAX
        {
            return Ok(None);
        }
        let raw = &b.bytes()[h.records_at()..h.batch_len as usize];
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let (mut pos, mut n, mut last) = (0, 0u32, None);
        while pos < raw.len() {
            let (s, next) = decode_one(raw, pos, n, last, &h, false)?;
            lo = lo.min(s.timestamp_ms);
            hi = hi.max(s.timestamp_ms);
            last = Some(s.offset_delta);
            pos = next;
            n += 1;
        }
        if n != h.record_count {
            return Err(BatchError::Inconsistent(
                "record count differs from records present",
            ));
        }
        let first_min = self.first_min.min(h.first_timestamp_ms);
        let fits = |t: i64| i32::try_from(t - first_min).is_ok();
        if !(fits(lo.min(self.ts_lo)) && fits(hi.max(self.ts_hi))) {
            return Ok(None);
        }

        let offset_delta = self.record_count;
        let start = self.records.len();
        self.records.extend_from_slice(raw);
        let mut at = start;
        while at < self.records.len() {
            let d = le::u32_at(&self.records, at + l::REC_OFFSET_DELTA_AT);
            le::put_u32(&mut self.records, at + l::REC_OFFSET_DELTA_AT, d + offset_delta);
            at += 4 + le::u32_at(&self.records, at + l::REC_LEN_AT) as usize;
        }
        self.parts.push(Part {
            range: start..self.records.len(),
            first_timestamp_ms: h.first_timestamp_ms,
            producer,
            offset_delta,
            offset_count: h.offset_count,
        });
        self.producers = producers;
        self.record_count += h.record_count;
        self.ts_lo = self.ts_lo.min(lo);
        self.ts_hi = self.ts_hi.max(hi);
        self.first_min = first_min;
        self.max_ts = self.max_ts.max(h.max_timestamp_ms);
        Ok(Some(offset_delta))
    }

    /// Encodes the merged batch (unstamped, like a producer's). Fails when
    /// nothing was pushed.
    pub fn finish(mut self) -> Result<Vec<u8>, BatchError> {
        if self.parts.is_empty() {
            return Err(BatchError::Inconsistent("batch without records"));
        }
        // Re-base every record's timestamp on the earliest first timestamp;
        // `push` checked that every result fits.
        for p in &self.parts {
            let shift = p.first_timestamp_ms - self.first_min;
            if shift == 0 {
                continue;
            }
            let mut at = p.range.start;
            while at < p.range.end {
                let d = le::u32_at(&self.records, at + l::REC_TIMESTAMP_DELTA_AT) as i32;
                let moved = i64::from(d) + shift;
                let moved = i32::try_from(moved).expect("push checked the timestamp spread");
                le::put_u32(&mut self.records, at + l::REC_TIMESTAMP_DELTA_AT, moved as u32);
                at += 4 + le::u32_at(&self.records, at + l::REC_LEN_AT) as usize;
            }
        }
        let table_len = self.producers * l::PRODUCER_RUN_BYTES;
        let records_at = l::HEADER_BYTES + table_len;
        let mut out = vec![0u8; records_at + self.records.len()];
        let batch_len = out.len() as u32;
        le::put_u32(&mut out, l::LEN_AT, batch_len);
        out[l::VERSION_AT] = l::VERSION;
        le::put_u16(&mut out, l::PRODUCER_COUNT_AT, self.producers as u16);
        le::put_u32(&mut out, l::RECORD_COUNT_AT, self.record_count);
        le::put_u64(&mut out, l::FIRST_TIMESTAMP_AT, self.first_min as u64);
        le::put_u64(&mut out, l::MAX_TIMESTAMP_AT, self.max_ts as u64);
        le::put_u32(&mut out, l::OFFSET_COUNT_AT, self.record_count);
        le::put_u32(&mut out, l::RECORDS_LEN_AT, self.records.len() as u32);
        le::put_u32(&mut out, l::RECORDS_RAW_LEN_AT, self.records.len() as u32);
        let mut at = l::HEADER_BYTES;
        for p in &self.parts {
            let Some((id, seq)) = p.producer else { continue };
            le::put_u64(&mut out, at + l::RUN_PRODUCER_ID_AT, id.0);
            le::put_u64(&mut out, at + l::RUN_FIRST_SEQ_AT, seq);
            le::put_u32(&mut out, at + l::RUN_OFFSET_DELTA_AT, p.offset_delta);
            le::put_u32(&mut out, at + l::RUN_OFFSET_COUNT_AT, p.offset_count);
            at += l::PRODUCER_RUN_BYTES;
        }
        out[records_at..].copy_from_slice(&self.records);
        let crc = crc32fast::hash(&out[l::HEADER_BYTES..]);
        le::put_u32(&mut out, l::RECORDS_CRC_AT, crc);
        let crc = crc32fast::hash(&out[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
        le::put_u32(&mut out, l::HEADER_CRC_AT, crc);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Compression, RecordInput};
    use crate::types::{Offset, RaftIndex, RaftTerm};
    use bytes::Bytes;

    fn batch(producer: u64, seq: u64, first_ts: i64, values: &[&str]) -> Batch {
        let mut b = BatchBuilder::new(l::BATCH_BYTES_MAX);
        if producer != 0 {
            b = b.producer(ProducerId(producer), seq);
        }
        for (i, v) in values.iter().enumerate() {
            b.push(RecordInput {
                key: Some(format!("k{i}").as_bytes()),
                value: Some(v.as_bytes()),
                timestamp_ms: first_ts + i as i64,
                ttl_ms: None,
                headers: &[(b"h".as_slice(), b"x".as_slice())],
            })
            .unwrap();
        }
        Batch::new(Bytes::from(b.build(Compression::None).unwrap())).unwrap()
    }

    #[test]
    fn merged_batch_reads_as_the_inputs_in_order_with_a_run_per_producer() {
        let inputs = [
            batch(7, 10, 1_000, &["a", "b"]),
            batch(0, 0, 900, &["c"]),
            batch(9, 3, 1_100, &["d", "e", "f"]),
        ];
        let mut m = BatchMerger::new(l::BATCH_BYTES_MAX);
        let deltas: Vec<_> = inputs.iter().map(|b| m.push(b).unwrap().unwrap()).collect();
        assert_eq!(deltas, [0, 2, 3]);
        let mut bytes = m.finish().unwrap();
        crate::batch::stamp(&mut bytes, Offset(100), RaftTerm(2), RaftIndex(5));
        let merged = Batch::new(Bytes::from(bytes)).unwrap();
        merged.validate().unwrap();
        let h = merged.header();
        assert_eq!((h.record_count, h.offset_count, h.producer_count), (6, 6, 2));
        assert_eq!((h.first_timestamp_ms, h.max_timestamp_ms), (900, 1_102));
        let got: Vec<_> = merged.records().unwrap().map(|r| r.unwrap()).collect();
        let want: Vec<_> = inputs
            .iter()
            .flat_map(|b| b.records().unwrap().map(|r| r.unwrap()))
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.offset, Offset(100 + i as u64));
            assert_eq!(
                (&g.key, &g.value, g.timestamp_ms),
                (&w.key, &w.value, w.timestamp_ms)
            );
            assert_eq!(g.headers, w.headers);
        }
        let runs = merged.producer_runs().unwrap();
        assert_eq!(
            runs,
            [
                crate::batch::ProducerRun {
                    producer_id: ProducerId(7),
                    first_seq: 10,
                    offset_delta: 0,
                    offset_count: 2
                },
                crate::batch::ProducerRun {
                    producer_id: ProducerId(9),
                    first_seq: 3,
                    offset_delta: 3,
                    offset_count: 3
                },
            ]
        );
    }

    #[test]
    fn a_batch_that_does_not_fit_is_left_out_and_the_rest_still_merges() {
        let a = batch(1, 0, 0, &["x"; 10]);
        let room = a.bytes().len() + l::PRODUCER_RUN_BYTES;
        let mut m = BatchMerger::new(room);
        assert_eq!(m.push(&a).unwrap(), Some(0));
        assert_eq!(m.push(&batch(2, 0, 0, &["y"])).unwrap(), None);
        // Timestamps more than 2^31 ms apart cannot share one batch.
        let mut m2 = BatchMerger::new(l::BATCH_BYTES_MAX);
        m2.push(&batch(1, 0, 0, &["x"])).unwrap();
        assert_eq!(m2.push(&batch(2, 0, 1 << 32, &["y"])).unwrap(), None);
        assert_eq!(m.len(), 1);
        Batch::new(Bytes::from(m.finish().unwrap()))
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn compressed_control_and_merged_batches_are_refused() {
        let mut b = BatchBuilder::new(l::BATCH_BYTES_MAX);
        b.push(RecordInput {
            key: None,
            value: Some(b"v"),
            timestamp_ms: 0,
            ttl_ms: None,
            headers: &[],
        })
        .unwrap();
        let z = Batch::new(Bytes::from(b.build(Compression::Zstd(1)).unwrap())).unwrap();
        let mut m = BatchMerger::new(l::BATCH_BYTES_MAX);
        assert!(m.push(&z).is_err());
        let mut m = BatchMerger::new(l::BATCH_BYTES_MAX);
        m.push(&batch(1, 0, 0, &["a"])).unwrap();
        m.push(&batch(2, 0, 0, &["b"])).unwrap();
        let merged = Batch::new(Bytes::from(m.finish().unwrap())).unwrap();
        assert!(BatchMerger::new(l::BATCH_BYTES_MAX).push(&merged).is_err());
    }

    #[test]
    fn compaction_keeps_the_producer_table_of_a_merged_batch() {
        let mut m = BatchMerger::new(l::BATCH_BYTES_MAX);
        m.push(&batch(1, 4, 0, &["a", "b"])).unwrap();
        m.push(&batch(2, 8, 0, &["c"])).unwrap();
        let merged = Batch::new(Bytes::from(m.finish().unwrap())).unwrap();
        let kept = crate::batch::compact(&merged, |r| r.value.as_deref() != Some(b"b"), 1)
            .unwrap()
            .expect("one record dropped");
        let kept = Batch::new(Bytes::from(kept)).unwrap();
        kept.validate().unwrap();
        assert_eq!(kept.header().record_count, 2);
        assert_eq!(kept.producer_runs().unwrap(), merged.producer_runs().unwrap());
        let values: Vec<_> = kept
            .records()
            .unwrap()
            .map(|r| r.unwrap().value.unwrap())
            .collect();
        assert_eq!(values, [&b"a"[..], &b"c"[..]]);
    }

    #[test]
    fn a_damaged_producer_table_is_refused() {
        let mut m = BatchMerger::new(l::BATCH_BYTES_MAX);
        m.push(&batch(1, 0, 0, &["a", "b"])).unwrap();
        m.push(&batch(2, 0, 0, &["c"])).unwrap();
        let good = m.finish().unwrap();
        // Second run overlapping the first, with both checksums made right:
        // the structure check, not a checksum, must catch it.
        let mut bad = good.clone();
        let run2 = l::HEADER_BYTES + l::PRODUCER_RUN_BYTES;
        le::put_u32(&mut bad, run2 + l::RUN_OFFSET_DELTA_AT, 1);
        let crc = crc32fast::hash(&bad[l::HEADER_BYTES..]);
        le::put_u32(&mut bad, l::RECORDS_CRC_AT, crc);
        let crc = crc32fast::hash(&bad[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
        le::put_u32(&mut bad, l::HEADER_CRC_AT, crc);
        assert!(matches!(
            Batch::new(Bytes::from(bad)),
            Err(BatchError::Inconsistent(_))
        ));
        // And any single flipped bit of the table fails a checksum.
        let mut flipped = good;
        flipped[l::HEADER_BYTES + 3] ^= 1;
        assert!(matches!(
            Batch::new(Bytes::from(flipped)),
            Err(BatchError::RecordsCrc { .. })
        ));
    }
}
