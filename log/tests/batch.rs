//! The record batch format: round trips, stamping, checksums, limits.

mod common;

use bytes::Bytes;
use felix_log::batch::layout as l;
use felix_log::{
    Batch, BatchBuilder, BatchError, BatchHeader, Compression, Log, LogConfig, LogError, Offset, ProducerId,
    RaftIndex, RaftTerm, RecordInput,
};

fn rich(compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(usize::MAX).producer(ProducerId(77), 1000);
    let hdrs: [(&[u8], &[u8]); 2] = [(b"trace", b"abc"), (b"empty", b"")];
    b.push(RecordInput {
        key: Some(b"user-1"),
        value: Some(b"hello"),
        timestamp_ms: 1_000,
        ttl_ms: None,
        headers: &hdrs,
    })
    .unwrap();
    b.push(RecordInput {
        key: Some(b"user-1"),
        value: None,
        timestamp_ms: 900,
        ..RecordInput::default()
    })
    .unwrap();
    b.push(RecordInput {
        key: None,
        value: Some(&[7u8; 3000]),
        timestamp_ms: 1_500,
        ttl_ms: Some(30_000),
        headers: &[],
    })
    .unwrap();
    b.build(compression).unwrap()
}

#[test]
fn round_trip_plain_and_zstd() {
    for c in [Compression::None, Compression::Zstd(1)] {
        let bytes = rich(c);
        let b = Batch::new(Bytes::from(bytes)).unwrap();
        b.validate().unwrap();
        let h = b.header();
        assert_eq!((h.record_count, h.offset_count), (3, 3));
        assert_eq!((h.first_timestamp_ms, h.max_timestamp_ms), (1_000, 1_500));
        assert_eq!((h.producer_id, h.producer_seq), (ProducerId(77), 1000));
        assert_eq!(h.flags.zstd(), c != Compression::None);
        let r: Vec<_> = b.records().unwrap().map(Result::unwrap).collect();
        assert_eq!(r[0].key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(r[0].headers.len(), 2);
        assert_eq!(r[0].headers[0].1.as_ref(), b"abc");
        assert_eq!(r[1].value, None, "tombstone");
        assert_eq!(r[1].timestamp_ms, 900);
        assert_eq!(r[2].ttl_ms, Some(30_000));
        assert_eq!(r[2].value.as_ref().unwrap().len(), 3000);
        assert_eq!(r.iter().map(|r| r.offset.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
    assert!(rich(Compression::Zstd(1)).len() < rich(Compression::None).len());
}

#[test]
fn stamping_touches_only_the_owned_fields() {
    let before = rich(Compression::None);
    let mut after = before.clone();
    felix_log::batch::stamp(&mut after, Offset(500), RaftTerm(3), RaftIndex(9));
    let h = BatchHeader::decode(&after).unwrap();
    assert_eq!(
        (h.base_offset, h.raft_term, h.raft_index),
        (Offset(500), RaftTerm(3), RaftIndex(9))
    );
    let owned = [
        l::HEADER_CRC_AT..l::HEADER_CRC_AT + 4,
        l::BASE_OFFSET_AT..l::RAFT_INDEX_AT + 8,
    ];
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        if a != b {
            assert!(
                owned.iter().any(|r| r.contains(&i)),
                "byte {i} changed by stamping"
            );
        }
    }
    let b = Batch::new(Bytes::from(after)).unwrap();
    assert_eq!(b.records().unwrap().next().unwrap().unwrap().offset, Offset(500));
}

#[test]
fn every_single_bit_flip_is_detected() {
    let good = rich(Compression::None);
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Batch::new(Bytes::from(bad)).is_err(),
            "flip of bit {bit} went unnoticed"
        );
    }
}

/// Re-seals a hand-edited header so only the field under test is wrong.
fn reseal(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    b[l::HEADER_CRC_AT..l::HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn lengths_and_counts_are_bounded_before_use() {
    let good = rich(Compression::None);
    // A record count the records section cannot hold.
    let mut b = good.clone();
    b[l::RECORD_COUNT_AT..l::RECORD_COUNT_AT + 4].copy_from_slice(&(l::RECORD_COUNT_MAX).to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        BatchHeader::decode(&b),
        Err(BatchError::Inconsistent(_))
    ));
    // A huge claimed length.
    let mut b = good.clone();
    b[l::RECORDS_LEN_AT..l::RECORDS_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        BatchHeader::decode(&b),
        Err(BatchError::TooLarge { .. })
    ));
    // A zstd frame claiming a huge raw length.
    let mut b = rich(Compression::Zstd(1));
    b[l::RECORDS_RAW_LEN_AT..l::RECORDS_RAW_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        BatchHeader::decode(&b),
        Err(BatchError::TooLarge { .. })
    ));
    // A zstd frame lying about its raw length (within bounds).
    let mut b = rich(Compression::Zstd(1));
    b[l::RECORDS_RAW_LEN_AT..l::RECORDS_RAW_LEN_AT + 4].copy_from_slice(&100u32.to_le_bytes());
    reseal(&mut b);
    assert!(Batch::new(Bytes::from(b)).unwrap().validate().is_err());
    // Unknown flags and versions.
    let mut b = good.clone();
    b[l::FLAGS_AT] |= 0x80;
    reseal(&mut b);
    assert_eq!(BatchHeader::decode(&b), Err(BatchError::UnknownFlags(0x80)));
    let mut b = good;
    b[l::VERSION_AT] = 3;
    reseal(&mut b);
    assert_eq!(BatchHeader::decode(&b), Err(BatchError::Version(3)));
    // Version 2 is a sealed batch: without the flag it is refused.
    b[l::VERSION_AT] = l::VERSION_SEALED;
    reseal(&mut b);
    assert!(matches!(
        BatchHeader::decode(&b),
        Err(BatchError::Inconsistent(_))
    ));
    assert!(matches!(
        BatchHeader::decode(&[0u8; 10]),
        Err(BatchError::Truncated { .. })
    ));
}

#[test]
fn builder_refuses_what_does_not_fit_and_stays_usable() {
    let mut b = BatchBuilder::new(300);
    b.push(RecordInput {
        value: Some(&[1; 100]),
        ..RecordInput::default()
    })
    .unwrap();
    let err = b
        .push(RecordInput {
            value: Some(&[1; 200]),
            ..RecordInput::default()
        })
        .unwrap_err();
    assert!(matches!(err, BatchError::TooLarge { .. }));
    assert_eq!(b.len(), 1);
    let long_key = vec![0u8; l::KEY_BYTES_MAX + 1];
    let mut big = BatchBuilder::new(usize::MAX);
    assert!(big
        .push(RecordInput {
            key: Some(&long_key),
            ..RecordInput::default()
        })
        .is_err());
    assert!(
        BatchBuilder::new(1000).build(Compression::None).is_err(),
        "empty batch"
    );
    assert_eq!(
        Batch::new(Bytes::from(b.build(Compression::None).unwrap()))
            .unwrap()
            .header()
            .record_count,
        1
    );
}

#[test]
fn log_rejects_bad_appends_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        batch_bytes_max: 4096,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), cfg, 1).unwrap();
    let ok = common::batch_of(&[b"x".to_vec()], 1);
    log.append(&ok, RaftTerm(2), RaftIndex(0), 1).unwrap();

    let big = common::batch_of(&[vec![0; 5000]], 1);
    assert!(matches!(
        log.append(&big, RaftTerm(2), RaftIndex(1), 1),
        Err(LogError::BatchTooLarge { .. })
    ));
    let mut corrupt = ok.clone();
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    assert!(matches!(
        log.append(&corrupt, RaftTerm(2), RaftIndex(1), 1),
        Err(LogError::Batch(_))
    ));
    assert!(matches!(
        log.append(&ok, RaftTerm(2), RaftIndex(5), 1),
        Err(LogError::RaftIndexGap { .. })
    ));
    assert!(matches!(
        log.append(&ok, RaftTerm(1), RaftIndex(1), 1),
        Err(LogError::RaftTermRegressed { .. })
    ));
    let mut trailing = ok.clone();
    trailing.push(0);
    assert!(log.append(&trailing, RaftTerm(2), RaftIndex(1), 1).is_err());

    assert_eq!(
        (log.next_offset(), log.next_raft_index()),
        (Offset(1), RaftIndex(1))
    );
    let out = log.append(&ok, RaftTerm(2), RaftIndex(1), 1).unwrap();
    assert_eq!(out.base_offset, Offset(1));
    assert_eq!(log.batches_from(Offset(0)).unwrap().count(), 2);
}
