//! Kafka's RecordBatch v2 to and from Felix batches, sans-IO
//! (`docs/format/kafka-records.md`).
//!
//! In: every batch of a produce's `records` is checked (CRC-32C, lengths
//! against what is left, counts against Felix's limits), inflated through
//! a cap, and its records become one Felix batch. Out: each Felix batch a
//! fetch reads becomes one uncompressed RecordBatch v2 with the same base
//! offset, so a Kafka offset is the Felix offset unchanged.

use std::io::Read;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use felix_log::batch::layout as fl;
use felix_log::batch::{Batch, BatchBuilder, BatchError, Compression, RecordInput};

/// Bytes of a v2 batch before its records.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Where `batchLength` counts from (after baseOffset and itself).
const LENGTH_FROM: usize = 12;
/// Where the CRC-32C starts (the attributes).
const CRC_FROM: usize = 21;
const _: () =
    assert!(CRC_FROM == 8 + 4 + 4 + 1 + 4 && BATCH_HEADER_BYTES == CRC_FROM + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4);
/// What one produce's records may inflate to: what one Felix batch holds.
pub const INFLATED_BYTES_MAX: usize = fl::RECORDS_RAW_BYTES_MAX;

const ATTR_CODEC: i16 = 0b111;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Why a produce's records were refused, with the Kafka error it is
/// answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// CORRUPT_MESSAGE: a checksum or a length does not hold.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// INVALID_RECORD: well formed, but not something Felix stores.
    #[error("invalid record batch: {0}")]
    Invalid(String),
    /// MESSAGE_TOO_LARGE: past one of Felix's limits.
    #[error("record batch too large: {0}")]
    TooLarge(String),
    /// UNSUPPORTED_COMPRESSION_TYPE.
    #[error("unknown compression codec {0}")]
    Codec(i16),
}

impl RecordsError {
    /// The Kafka error code.
    pub fn code(&self) -> i16 {
        match self {
            RecordsError::Corrupt(_) => 2,
            RecordsError::TooLarge(_) => 10,
            RecordsError::Invalid(_) => 87,
            RecordsError::Codec(_) => 76,
        }
    }
}

fn corrupt(s: impl Into<String>) -> RecordsError {
    RecordsError::Corrupt(s.into())
}

/// One record as a producer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Kafka allows a header without a value; Felix stores it empty.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// One produced batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub compressed: bool,
    pub records: Vec<KafkaRecord>,
}

/// Parses every batch of a produce's `records`. A record without a
/// timestamp (-1) takes `now_ms`.
pub fn parse(mut b: Bytes, now_ms: i64) -> Result<Vec<ProducedBatch>, RecordsError> {
    let mut out = Vec::new();
    let mut count = 0usize;
    while !b.is_empty() {
        if b.len() < BATCH_HEADER_BYTES {
            return Err(corrupt(format!("{} bytes cannot hold a batch header", b.len())));
        }
        let len = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        if len < (BATCH_HEADER_BYTES - LENGTH_FROM) as i32 {
            return Err(corrupt(format!("batchLength {len}")));
        }
        let whole = LENGTH_FROM + len as usize;
        if whole > b.len() {
            return Err(corrupt(format!(
                "batchLength {len} runs past the {} bytes sent",
                b.len() - LENGTH_FROM
            )));
        }
        let batch = b.split_to(whole);
        let parsed = parse_one(batch, now_ms)?;
        count += parsed.records.len();
        if count > fl::RECORD_COUNT_MAX as usize {
            return Err(RecordsError::TooLarge(format!(
                "more than {} records in one produce to one partition",
                fl::RECORD_COUNT_MAX
            )));
        }
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(RecordsError::Invalid("no record batch".into()));
    }
    Ok(out)
}

fn parse_one(mut b: Bytes, now_ms: i64) -> Result<ProducedBatch, RecordsError> {
    let magic = b[16];
    if magic != 2 {
        return Err(RecordsError::Invalid(format!(
            "message format v{magic}: only RecordBatch v2 (Produce v3 and later) is taken"
        )));
    }
    let stored_crc = u32::from_be_bytes(b[17..21].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&b[CRC_FROM..]);
    if stored_crc != computed {
        return Err(corrupt(format!(
            "CRC-32C {stored_crc:#010x}, computed {computed:#010x}"
        )));
    }
    b.advance(CRC_FROM);
    let attributes = b.get_i16();
    let _last_offset_delta = b.get_i32();
    let base_timestamp = b.get_i64();
    let _max_timestamp = b.get_i64();
    let producer_id = b.get_i64();
    let producer_epoch = b.get_i16();
    let base_sequence = b.get_i32();
    let count = b.get_i32();
    if attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return Err(RecordsError::Invalid(
            "transactional and control batches are not taken (no transactions here)".into(),
        ));
    }
    if count < 0 || count as u32 > fl::RECORD_COUNT_MAX {
        return Err(RecordsError::TooLarge(format!("{count} records in one batch")));
    }
    let codec = attributes & ATTR_CODEC;
    let mut recs = match codec {
        0 => b,
        c => Bytes::from(inflate(c, &b, INFLATED_BYTES_MAX)?),
    };
    // Each record is at least 7 bytes: a count past that is a lie.
    if count as usize > recs.len() / 7 + 1 {
        return Err(corrupt(format!("{count} records in {} bytes", recs.len())));
    }
    let mut records = Vec::with_capacity(count as usize);
    for i in 0..count {
        let len = varint(&mut recs)?;
        if len < 0 || len as usize > recs.len() {
            return Err(corrupt(format!(
                "record {i}: length {len} with {} bytes left",
                recs.len()
            )));
        }
        let mut r = recs.split_to(len as usize);
        if r.is_empty() {
            return Err(corrupt(format!("record {i} is empty")));
        }
        let _attrs = r.get_i8();
        let ts_delta = varint(&mut r)?;
        let _offset_delta = varint(&mut r)?;
        let key = nullable(&mut r, "key")?;
        let value = nullable(&mut r, "value")?;
        let nh = varint(&mut r)?;
        if nh < 0 || nh as usize > fl::RECORD_HEADERS_MAX {
            return Err(RecordsError::TooLarge(format!(
                "record {i} has {nh} headers (at most {})",
                fl::RECORD_HEADERS_MAX
            )));
        }
        let mut headers = Vec::with_capacity(nh as usize);
        for _ in 0..nh {
            let k = nullable(&mut r, "header key")?.ok_or_else(|| corrupt("a header without a key"))?;
            let v = nullable(&mut r, "header value")?;
            headers.push((k, v));
        }
        if !r.is_empty() {
            return Err(corrupt(format!(
                "record {i} has {} bytes after its headers",
                r.len()
            )));
        }
        let timestamp_ms = if base_timestamp < 0 {
            now_ms
        } else {
            base_timestamp.saturating_add(ts_delta)
        };
        records.push(KafkaRecord {
            timestamp_ms,
            key,
            value,
            headers,
        });
    }
    if !recs.is_empty() {
        return Err(corrupt(format!(
            "{} bytes after the batch's last record",
            recs.len()
        )));
    }
    Ok(ProducedBatch {
        producer_id,
        producer_epoch,
        base_sequence,
        compressed: codec != 0,
        records,
    })
}

/// A zigzag varint (Kafka's `varint` and `varlong`), at most 10 bytes.
fn varint(b: &mut Bytes) -> Result<i64, RecordsError> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        if b.is_empty() {
            return Err(corrupt("a varint runs past the record"));
        }
        let x = b.get_u8();
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(corrupt("a varint longer than 10 bytes"))
}

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.leading_zeros() as usize).max(1).div_ceil(7)
}

fn nullable(b: &mut Bytes, what: &str) -> Result<Option<Bytes>, RecordsError> {
    match varint(b)? {
        -1 => Ok(None),
        n if n < -1 || n as usize > b.len() => {
            Err(corrupt(format!("{what} length {n} with {} bytes left", b.len())))
        }
        n => Ok(Some(b.split_to(n as usize))),
    }
}

/// Inflates a records section, refusing to produce more than `max` bytes.
fn inflate(codec: i16, stored: &[u8], max: usize) -> Result<Vec<u8>, RecordsError> {
    let cap = max as u64 + 1;
    let mut out = Vec::new();
    let r = match codec {
        1 => flate2::read::GzDecoder::new(stored)
            .take(cap)
            .read_to_end(&mut out),
        2 => return unsnappy(stored, max),
        3 => lz4_flex::frame::FrameDecoder::new(stored)
            .take(cap)
            .read_to_end(&mut out),
        4 => zstd::stream::read::Decoder::new(stored).and_then(|d| d.take(cap).read_to_end(&mut out)),
        c => return Err(RecordsError::Codec(c)),
    };
    r.map_err(|e| corrupt(format!("decompressing (codec {codec}): {e}")))?;
    if out.len() > max {
        return Err(RecordsError::TooLarge(format!(
            "records inflate past {max} bytes"
        )));
    }
    Ok(out)
}

/// The Java client's framing (a magic header, then length-prefixed raw
/// blocks), or one raw block as librdkafka may send.
fn unsnappy(stored: &[u8], max: usize) -> Result<Vec<u8>, RecordsError> {
    const MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let n = snap::raw::decompress_len(block).map_err(|e| corrupt(format!("snappy: {e}")))?;
        if out.len() + n > max {
            return Err(RecordsError::TooLarge(format!(
                "records inflate past {max} bytes"
            )));
        }
        let at = out.len();
        out.resize(at + n, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[at..])
            .map_err(|e| corrupt(format!("snappy: {e}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if stored.len() >= 16 && &stored[..8] == MAGIC {
        let mut b = &stored[16..];
        while !b.is_empty() {
            if b.len() < 4 {
                return Err(corrupt("snappy: a block length is cut short"));
            }
            let n = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as usize;
            b = &b[4..];
            if n > b.len() {
                return Err(corrupt("snappy: a block runs past the records"));
            }
            raw(&b[..n], &mut out)?;
            b = &b[n..];
        }
    } else {
        raw(stored, &mut out)?;
    }
    Ok(out)
}

/// One Felix batch holding a produce's records, zstd-compressed when the
/// producer compressed its own.
pub fn to_felix(batches: &[ProducedBatch], producer: Option<(u64, u64)>) -> Result<Vec<u8>, RecordsError> {
    let mut b = BatchBuilder::new(fl::BATCH_BYTES_MAX);
    if let Some((id, first_seq)) = producer {
        b = b.producer(felix_log::ProducerId(id), first_seq);
    }
    let mut compressed = false;
    for batch in batches {
        compressed |= batch.compressed;
        for r in &batch.records {
            let headers: Vec<(&[u8], &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (&k[..], v.as_deref().unwrap_or(&[])))
                .collect();
            b.push(RecordInput {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                timestamp_ms: r.timestamp_ms,
                ttl_ms: None,
                headers: &headers,
            })
            .map_err(felix_refusal)?;
        }
    }
    let compression = if compressed {
        Compression::Zstd(1)
    } else {
        Compression::None
    };
    b.build(compression).map_err(felix_refusal)
}

fn felix_refusal(e: BatchError) -> RecordsError {
    match e {
        BatchError::TooLarge { .. } => RecordsError::TooLarge(e.to_string()),
        e => RecordsError::Invalid(e.to_string()),
    }
}

/// What one fetch of a partition turned into.
#[derive(Debug, Default)]
pub struct Transcoded {
    /// Kafka batches, one per Felix batch read.
    pub bytes: BytesMut,
    /// The offset after the last batch written.
    pub next_offset: u64,
}

/// Re-encodes `felix` (whole Felix batches, as a subscription pushes
/// them) as RecordBatch v2, appending to `into`. A batch whose records are
/// all gone (compaction) or that carries none (a control batch) still
/// goes out, empty, so a consumer moves past its offsets.
pub fn from_felix(mut felix: Bytes, into: &mut Transcoded) -> Result<(), BatchError> {
    while !felix.is_empty() {
        if felix.len() < 4 {
            return Err(BatchError::Truncated {
                need: 4,
                have: felix.len(),
            });
        }
        let len = u32::from_le_bytes(felix[..4].try_into().expect("4 bytes")) as usize;
        if len > felix.len() || len < fl::HEADER_BYTES {
            return Err(BatchError::Truncated {
                need: len,
                have: felix.len(),
            });
        }
        let batch = Batch::new(felix.split_to(len))?;
        // A control batch (a cursor commit, a replication marker) holds no
        // offset: as a Kafka batch it would claim the offset after it,
        // which a client skips past, then finds beyond the end and resets
        // from (auto.offset.reset). Kafka clients are not shown it.
        if batch.header().flags.control() {
            continue;
        }
        encode_batch(&batch, &mut into.bytes)?;
        into.next_offset = batch.header().next_offset().0;
    }
    Ok(())
}

fn encode_batch(batch: &Batch, out: &mut BytesMut) -> Result<(), BatchError> {
    let h = batch.header();
    let base = h.base_offset.0;
    let first_ts = h.first_timestamp_ms;
    let records: Vec<_> = if h.flags.control() {
        Vec::new()
    } else {
        batch.records()?.collect::<Result<_, _>>()?
    };
    let start = out.len();
    out.put_i64(base as i64);
    out.put_i32(0); // batchLength, below
    out.put_i32(-1); // partitionLeaderEpoch: Felix has none to give
    out.put_i8(2);
    out.put_u32(0); // CRC-32C, below
    out.put_i16(0); // no codec, CreateTime, not transactional
    out.put_i32(h.offset_count.saturating_sub(1) as i32);
    out.put_i64(first_ts);
    out.put_i64(h.max_timestamp_ms.max(first_ts));
    out.put_i64(-1);
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i32(records.len() as i32);
    for r in &records {
        let ts = r.timestamp_ms - first_ts;
        let od = (r.offset.0 - base) as i64;
        let blen = |b: &Option<Bytes>| {
            b.as_ref()
                .map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len())
        };
        let mut body = 1 + varint_len(ts) + varint_len(od) + blen(&r.key) + blen(&r.value);
        body += varint_len(r.headers.len() as i64);
        for (k, v) in &r.headers {
            body += varint_len(k.len() as i64) + k.len() + varint_len(v.len() as i64) + v.len();
        }
        put_varint(out, body as i64);
        out.put_i8(0);
        put_varint(out, ts);
        put_varint(out, od);
        for b in [&r.key, &r.value] {
            match b {
                None => put_varint(out, -1),
                Some(b) => {
                    put_varint(out, b.len() as i64);
                    out.put_slice(b);
                }
            }
        }
        put_varint(out, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_varint(out, k.len() as i64);
            out.put_slice(k);
            put_varint(out, v.len() as i64);
            out.put_slice(v);
        }
    }
    let len = (out.len() - start - LENGTH_FROM) as i32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_FROM..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as KCompression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn kafka_record(i: i64, headers: bool) -> Record {
        let mut h = IndexMap::new();
        if headers {
            h.insert(
                StrBytes::from_static_str("trace"),
                Some(Bytes::from(format!("t{i}"))),
            );
            h.insert(StrBytes::from_static_str("empty"), None);
        }
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: (i % 3 != 0).then(|| Bytes::from(format!("k{i}"))),
            value: (i % 5 != 4).then(|| Bytes::from(vec![b'v'; (i as usize) * 7])),
            headers: h,
        }
    }

    fn produced(n: i64, compression: KCompression) -> Bytes {
        let recs: Vec<Record> = (0..n).map(|i| kafka_record(i, true)).collect();
        let mut b = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut b,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        b.freeze()
    }

    /// Every codec a producer may use, encoded by kafka-protocol (an
    /// implementation independent of this one), reads back record for
    /// record, and survives the trip through a Felix batch and back.
    #[test]
    fn batches_of_every_codec_round_trip_through_felix() {
        for c in [
            KCompression::None,
            KCompression::Gzip,
            KCompression::Snappy,
            KCompression::Lz4,
            KCompression::Zstd,
        ] {
            let parsed = parse(produced(40, c), 0).unwrap();
            let got: Vec<&KafkaRecord> = parsed.iter().flat_map(|b| &b.records).collect();
            assert_eq!(got.len(), 40, "{c:?}");
            for (i, r) in got.iter().enumerate() {
                let want = kafka_record(i as i64, true);
                assert_eq!(
                    (r.key.clone(), r.value.clone(), r.timestamp_ms),
                    (want.key, want.value, want.timestamp),
                    "{c:?} #{i}"
                );
                assert_eq!(
                    r.headers[0],
                    (Bytes::from_static(b"trace"), Some(Bytes::from(format!("t{i}"))))
                );
                assert_eq!(r.headers[1], (Bytes::from_static(b"empty"), None));
            }
            // Into a Felix batch, stamped as the log would, and out as Kafka.
            let mut felix = to_felix(&parsed, None).unwrap();
            felix_log::batch::stamp(
                &mut felix,
                felix_log::Offset(1_000),
                felix_log::RaftTerm(1),
                felix_log::RaftIndex(1),
            );
            let mut t = Transcoded::default();
            from_felix(Bytes::from(felix), &mut t).unwrap();
            assert_eq!(t.next_offset, 1_040);
            let mut out = t.bytes.freeze();
            let set = RecordBatchDecoder::decode(&mut out).unwrap();
            assert_eq!(set.records.len(), 40);
            for (i, r) in set.records.iter().enumerate() {
                let want = kafka_record(i as i64, true);
                assert_eq!(r.offset, 1_000 + i as i64);
                assert_eq!(
                    (r.key.clone(), r.value.clone(), r.timestamp),
                    (want.key, want.value, want.timestamp)
                );
                // A header without a value comes back empty.
                assert_eq!(
                    r.headers.get(&StrBytes::from_static_str("empty")),
                    Some(&Some(Bytes::new()))
                );
            }
        }
    }

    /// Control batches take no offset; between two data batches they leave
    /// the Kafka batches' offsets contiguous, as a client follows them.
    #[test]
    fn control_batches_are_not_shown_to_kafka_clients() {
        let stamped = |mut b: Vec<u8>, at: u64| {
            felix_log::batch::stamp(
                &mut b,
                felix_log::Offset(at),
                felix_log::RaftTerm(1),
                felix_log::RaftIndex(1),
            );
            b
        };
        let data = |at: u64| {
            let parsed = parse(produced(2, KCompression::None), 0).unwrap();
            stamped(to_felix(&parsed, None).unwrap(), at)
        };
        let mut control = BatchBuilder::new(fl::BATCH_BYTES_MAX).control();
        control
            .push(RecordInput {
                value: Some(b"cursor"),
                ..RecordInput::default()
            })
            .unwrap();
        let control = stamped(control.build(Compression::None).unwrap(), 12);
        let felix: Vec<u8> = [data(10), control, data(12)].concat();
        let mut t = Transcoded::default();
        from_felix(Bytes::from(felix), &mut t).unwrap();
        assert_eq!(t.next_offset, 14);
        let mut out = t.bytes.freeze();
        let sets = RecordBatchDecoder::decode_all(&mut out).unwrap();
        let offsets: Vec<i64> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(offsets, vec![10, 11, 12, 13]);
        assert_eq!(sets.len(), 2, "the control batch is left out");
    }

    #[test]
    fn a_flipped_byte_is_corrupt_and_a_cut_batch_too() {
        let good = produced(5, KCompression::None);
        let mut bad = good.to_vec();
        let at = bad.len() - 3;
        bad[at] ^= 0x40;
        assert!(matches!(
            parse(Bytes::from(bad), 0),
            Err(RecordsError::Corrupt(_))
        ));
        let cut = good.slice(..good.len() - 1);
        assert_eq!(parse(cut, 0).unwrap_err().code(), 2);
        assert!(matches!(parse(Bytes::new(), 0), Err(RecordsError::Invalid(_))));
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        // 64 MiB of zeros, zstd-compressed to a few KiB.
        let zeros = vec![0u8; 64 << 20];
        let z = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(matches!(
            inflate(4, &z, INFLATED_BYTES_MAX),
            Err(RecordsError::TooLarge(_))
        ));
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut g, &zeros).unwrap();
        let g = g.finish().unwrap();
        assert!(matches!(
            inflate(1, &g, INFLATED_BYTES_MAX),
            Err(RecordsError::TooLarge(_))
        ));
        assert_eq!(inflate(7, &z, 10), Err(RecordsError::Codec(7)));
    }

    #[test]
    fn varints_match_kafkas_zigzag() {
        for v in [
            0i64,
            -1,
            1,
            63,
            -64,
            64,
            300,
            -301,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(varint(&mut b.freeze()).unwrap(), v);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_parsed_or_refused(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(Bytes::from(b), 0);
        }
    }
}
