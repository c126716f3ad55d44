//! The hosted shard and the node's metadata file, below the wire.

use std::sync::Arc;

use bytes::Bytes;
use felix_broker::meta::MetaStore;
use felix_broker::names::StreamName;
use felix_broker::shard::HostedShard;
use felix_broker::BrokerError;
use felix_client::wire::StreamConfig;
use felix_index::{Index, IndexConfig, ShardKind};
use felix_log::{Batch, Durability, LogConfig, ShardId};

fn batch(values: &[&str]) -> Bytes {
    pbatch(values, 0, 0)
}

/// A batch stamped with its producer id and sequence, as clients build them.
fn pbatch(values: &[&str], producer: u64, sequence: u64) -> Bytes {
    felix_testkit::Batch::of(values)
        .ts(1_700_000_000_000)
        .producer(producer, sequence)
        .bytes()
}

fn values(chunk: &Bytes) -> Vec<(u64, String)> {
    let mut out = vec![];
    let mut rest = chunk.clone();
    while !rest.is_empty() {
        let h = felix_log::BatchHeader::decode(&rest).unwrap();
        let b = Batch::new(rest.split_to(h.batch_len as usize)).unwrap();
        for r in b.records().unwrap() {
            let r = r.unwrap();
            out.push((r.offset.0, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
    out
}

fn open(dir: &std::path::Path, index: &Arc<Index>) -> HostedShard {
    let cfg = LogConfig {
        durability: Durability::Always,
        segment_bytes: 4 << 20,
        ..Default::default()
    };
    HostedShard::open(
        &dir.join("shard"),
        ShardId(7),
        ShardKind::Stream,
        cfg,
        index.clone(),
    )
    .unwrap()
}

#[tokio::test]
async fn publishes_get_dense_offsets_retries_are_deduplicated_and_a_reopen_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), IndexConfig::default()).unwrap());
    let shard = open(dir.path(), &index);
    let a = shard.publish(pbatch(&["a", "b"], 42, 0), 42, 0).await.unwrap();
    let b = shard.publish(pbatch(&["c"], 42, 2), 42, 2).await.unwrap();
    assert_eq!((a.base_offset, a.count, b.base_offset, b.count), (0, 2, 2, 1));
    // A retry of the last batch lands nowhere new.
    assert_eq!(shard.publish(pbatch(&["c"], 42, 2), 42, 2).await.unwrap(), b);
    assert!(matches!(
        shard.publish(pbatch(&["a"], 42, 0), 42, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    // Another producer, and a non-idempotent publish.
    shard.publish(pbatch(&["d"], 43, 0), 43, 0).await.unwrap();
    shard.publish(batch(&["e"]), 0, 0).await.unwrap();
    assert_eq!(shard.high_watermark(), 5);
    let chunk = shard.read(1, 1 << 20).unwrap();
    assert_eq!(
        values(&chunk.bytes),
        vec![
            (0, "a".into()),
            (1, "b".into()),
            (2, "c".into()),
            (3, "d".into()),
            (4, "e".into())
        ],
        "whole batches: the first one starts before offset 1"
    );
    assert_eq!(chunk.next_offset.0, 5);
    assert!(
        shard.read(5, 1 << 20).unwrap().bytes.is_empty(),
        "the end reads empty"
    );
    match shard.read(6, 1 << 20) {
        Err(BrokerError::OffsetOutOfRange { earliest, latest, .. }) => assert_eq!((earliest, latest), (0, 5)),
        other => panic!("expected out of range, got {other:?}"),
    }
    // A control batch is not a client's to publish.
    let control = felix_index::control::control_batch(
        &[felix_index::control::ControlOp::CursorCommit {
            name: Bytes::from_static(b"sub"),
            offset: felix_log::Offset(1),
        }],
        1,
    )
    .unwrap();
    assert!(matches!(
        shard.publish(Bytes::from(control), 0, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    drop(shard);

    let shard = open(dir.path(), &index);
    assert_eq!(shard.high_watermark(), 5);
    assert_eq!(values(&shard.read(0, 1 << 20).unwrap().bytes).len(), 5);
    assert!(
        index.locate(ShardId(7), felix_log::Offset(4)).unwrap().is_some(),
        "indexed"
    );
    // The producer windows come back from the log: the retry still lands
    // nowhere new.
    assert_eq!(shard.publish(pbatch(&["c"], 42, 2), 42, 2).await.unwrap(), b);
    // The request's producer must be the one the batch header carries.
    assert!(matches!(
        shard.publish(pbatch(&["g"], 42, 3), 42, 4).await,
        Err(BrokerError::Invalid(_))
    ));
    assert_eq!(shard.publish(batch(&["f"]), 0, 0).await.unwrap().base_offset, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_fsyncs_and_all_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), IndexConfig::default()).unwrap());
    let shard = Arc::new(open(dir.path(), &index));
    let tasks: Vec<_> = (0..32u64)
        .map(|p| {
            let shard = shard.clone();
            tokio::spawn(async move {
                let mut offsets = vec![];
                for s in 0..10u64 {
                    let v = format!("{p}-{s}");
                    offsets.push(
                        shard
                            .publish(pbatch(&[&v], p + 1, s), p + 1, s)
                            .await
                            .unwrap()
                            .base_offset,
                    );
                }
                offsets
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        let o = t.await.unwrap();
        assert!(
            o.windows(2).all(|w| w[0] < w[1]),
            "one producer's batches stay in order"
        );
        all.extend(o);
    }
    all.sort_unstable();
    assert_eq!(all, (0..320).collect::<Vec<_>>());
    let n = values(&shard.read(0, 1 << 20).unwrap().bytes).len();
    assert_eq!(n, 320);
    assert!(
        shard.log().sync_count() < 320,
        "group commit shared fsyncs: {}",
        shard.log().sync_count()
    );
}

fn config(name: &str, shards: u32, durability: &str) -> StreamConfig {
    StreamConfig::stream(name, shards, durability.parse().expect("a durability"))
}

#[test]
fn the_metadata_file_survives_a_reopen_and_refuses_bad_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetaStore::open(dir.path()).unwrap();
    let (name, orders) = m
        .create(&config("orders", 3, "interval:5"), Vec::new(), Vec::new())
        .unwrap();
    assert_eq!(name.to_string(), "dev/default/orders");
    assert_eq!(orders.shards, vec![1, 2, 3]);
    assert_eq!(orders.max_deliveries, 5, "0 means the default");
    let (_, other) = m
        .create(&config("acme/prod/clicks", 2, "none"), Vec::new(), Vec::new())
        .unwrap();
    assert_eq!(other.shards, vec![4, 5], "shard ids are never reused");
    assert!(matches!(
        m.create(&config("orders", 1, "always"), Vec::new(), Vec::new()),
        Err(BrokerError::StreamExists(_))
    ));
    assert!(matches!(
        m.create(&config("x", 0, "always"), Vec::new(), Vec::new()),
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        m.create(&config("a/b", 1, "always"), Vec::new(), Vec::new()),
        Err(BrokerError::InvalidName(_))
    ));
    m.set_retention(&name, Some(60_000), Some(1 << 20)).unwrap();
    m.delete(&StreamName::parse("acme/prod/clicks").unwrap()).unwrap();
    drop(m);

    let mut m = MetaStore::open(dir.path()).unwrap();
    let got = m.get(&name).unwrap();
    assert_eq!(
        (got.retention_ms, got.retention_bytes),
        (Some(60_000), Some(1 << 20))
    );
    assert_eq!(m.streams().count(), 1);
    let (_, again) = m
        .create(&config("acme/prod/clicks", 1, "always"), Vec::new(), Vec::new())
        .unwrap();
    assert_eq!(again.shards, vec![6]);

    std::fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    assert!(matches!(
        MetaStore::open(dir.path()),
        Err(BrokerError::Metadata { .. })
    ));
}

#[tokio::test]
async fn the_first_append_of_a_new_shard_is_indexed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), IndexConfig::default()).unwrap());
    let cfg = LogConfig {
        segment_bytes: 4 << 20,
        ..Default::default()
    };
    let shard = HostedShard::open(
        &dir.path().join("k"),
        ShardId(9),
        ShardKind::Keyed,
        cfg,
        index.clone(),
    )
    .unwrap();
    shard
        .append(felix_testkit::Batch::keyed(&[("k", Some("v"))]).ts(1).bytes())
        .await
        .unwrap();
    let e = index
        .latest(ShardId(9), b"k", 2)
        .unwrap()
        .expect("indexed by the append itself");
    assert_eq!(e.version(), 1);
}

#[tokio::test]
async fn a_publish_beyond_the_shards_in_flight_bytes_is_overloaded_at_once_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), IndexConfig::default()).unwrap());
    let shard = open(dir.path(), &index);
    // Other publishes hold all but 100 bytes of the limit.
    let held = shard
        .reserve_in_flight(felix_broker::shard::SHARD_IN_FLIGHT_BYTES_MAX - 100)
        .unwrap();
    match shard.publish(batch(&["x".repeat(1000).as_str()]), 0, 0).await {
        Err(BrokerError::Overloaded { retry_after_ms }) => assert!(retry_after_ms > 0),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(shard.high_watermark(), 0, "the refused publish wrote nothing");
    drop(held);
    assert_eq!(shard.publish(batch(&["x"]), 0, 0).await.unwrap().base_offset, 0);
}

/// Issue 26: a client batch declaring more offsets than records would open
/// a gap no consumer group's fetch gets past (it stops 2^20 offsets past
/// its floor); it is refused and writes nothing.
#[tokio::test]
async fn a_batch_declaring_more_offsets_than_records_is_refused() {
    use felix_log::batch::layout as l;
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(dir.path().join("index"), IndexConfig::default()).unwrap());
    let shard = open(dir.path(), &index);
    let mut b = felix_testkit::Batch::of(&["a", "b"])
        .ts(1_700_000_000_000)
        .build();
    b[l::OFFSET_COUNT_AT..l::OFFSET_COUNT_AT + 4].copy_from_slice(&(2u32 + (1 << 21)).to_le_bytes());
    let crc = crc32fast::hash(&b[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    b[l::HEADER_CRC_AT..l::HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(
        Batch::new(Bytes::from(b.clone())).is_ok(),
        "a well-formed batch, checksums right"
    );
    match shard.publish(Bytes::from(b), 0, 0).await {
        Err(BrokerError::Invalid(why)) => assert!(why.contains("offsets"), "{why}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(shard.high_watermark(), 0, "the refused publish wrote nothing");
    assert_eq!(shard.publish(batch(&["x"]), 0, 0).await.unwrap().base_offset, 0);
}
