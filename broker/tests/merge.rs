//! Publishes to a replicated shard share Raft entries under load, and
//! every producer's batch inside a shared entry keeps its own offsets and
//! its own deduplication window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use felix_broker::shard::HostedShard;
use felix_broker::BrokerError;
use felix_client::transport::dev_certificates;
use felix_index::{Index, IndexConfig, ShardKind};
use felix_log::{Batch, Durability, LogConfig, RaftIndex, ShardId};
use felix_replication::{node_id, BrokerNode, GroupConfig, GroupId, Replica, Router, Transport};

const PRODUCERS: u64 = 48;
const BATCHES_EACH: u64 = 4;
const RECORDS_EACH: u64 = 2;

fn pbatch(producer: u64, sequence: u64) -> Bytes {
    let values: Vec<String> = (0..RECORDS_EACH)
        .map(|r| format!("p{producer}-s{}", sequence + r))
        .collect();
    felix_testkit::Batch::of(&values)
        .ts(1_700_000_000_000 + (producer * 7 + sequence) as i64)
        .producer(producer, sequence)
        .bytes()
}

/// A shard whose writes go through a one-replica Raft group.
async fn replicated_shard(root: &std::path::Path) -> (Arc<HostedShard>, Router) {
    let index = Arc::new(Index::open(root.join("index"), IndexConfig::default()).unwrap());
    let cfg = LogConfig {
        durability: Durability::Always,
        segment_bytes: 4 << 20,
        ..Default::default()
    };
    let dir = root.join("shard");
    let shard =
        Arc::new(HostedShard::open_replicated(&dir, ShardId(3), ShardKind::Stream, cfg, index).unwrap());
    let certs = dev_certificates(root, &[])
        .unwrap()
        .issue_broker(1, felix_model::names::REGION_DEFAULT, &root.join("b1"))
        .unwrap();
    let router = Router::default();
    let id = node_id(1, 1);
    let transport = Transport::start(
        id,
        "local",
        "127.0.0.1:0".parse().unwrap(),
        &certs.server_tls().unwrap(),
        &certs.client_tls().unwrap(),
        router.clone(),
    )
    .unwrap();
    let addr = transport.local_addr().unwrap().to_string();
    let replica = Replica::start(
        id,
        GroupId(3),
        shard.log().clone(),
        HostedShard::raft_dir(&dir),
        shard.clone(),
        None,
        transport,
        &router,
        GroupConfig::default(),
    )
    .await
    .unwrap();
    let me = BrokerNode {
        raft_addr: addr.clone(),
        client_addr: addr,
    };
    replica.initialize(BTreeMap::from([(id, me)])).await.unwrap();
    shard.attach(replica, Duration::from_secs(5));
    (shard, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_entries_and_each_keeps_its_offsets_and_dedup_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (shard, _router) = replicated_shard(tmp.path()).await;
    let until = Instant::now() + Duration::from_secs(10);
    // The first write waits for the group to elect itself.
    let first = loop {
        match shard.publish(pbatch(1000, 0), 1000, 0).await {
            Ok(a) => break a,
            Err(BrokerError::NotLeader { .. } | BrokerError::Timeout(_)) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("first publish: {e}"),
        }
    };
    assert_eq!((first.base_offset, first.count), (0, RECORDS_EACH as u32));

    // Every producer sends its batches one after another; producers run
    // at once, so their batches queue behind each other's entries.
    let mut tasks = Vec::new();
    // Producer id 0 means none (no deduplication).
    for p in 1..=PRODUCERS {
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let mut landed = Vec::new();
            for b in 0..BATCHES_EACH {
                let seq = b * RECORDS_EACH;
                landed.push((seq, shard.publish(pbatch(p, seq), p, seq).await.unwrap()));
            }
            (p, landed)
        }));
    }
    let mut landed = BTreeMap::new();
    for t in tasks {
        let (p, l) = t.await.unwrap();
        for (seq, at) in l {
            landed.insert((p, seq), at);
        }
    }
    let publishes = PRODUCERS * BATCHES_EACH;
    let records = (publishes + 1) * RECORDS_EACH;
    assert_eq!(shard.high_watermark(), records);

    // Each publish's answer names exactly its own records.
    let mut covered = vec![false; records as usize];
    covered[..RECORDS_EACH as usize].fill(true);
    let by_offset: BTreeMap<u64, String> = {
        let chunk = shard.read(0, 16 << 20).unwrap().bytes;
        let mut rest = chunk.clone();
        let mut out = BTreeMap::new();
        while !rest.is_empty() {
            let h = felix_log::BatchHeader::decode(&rest).unwrap();
            let b = Batch::new(rest.split_to(h.batch_len as usize)).unwrap();
            for r in b.records().unwrap() {
                let r = r.unwrap();
                out.insert(r.offset.0, String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        out
    };
    for (&(p, seq), at) in &landed {
        assert_eq!(at.count as u64, RECORDS_EACH, "producer {p} seq {seq}");
        for r in 0..RECORDS_EACH {
            let o = at.base_offset + r;
            assert!(!covered[o as usize], "offset {o} answered twice");
            covered[o as usize] = true;
            assert_eq!(by_offset[&o], format!("p{p}-s{}", seq + r));
        }
    }
    assert!(covered.iter().all(|c| *c));

    // Fewer entries than publishes: some were merged.
    let data_entries = shard.log().with(|l| {
        l.positioned_from_raft_index(RaftIndex(0))
            .filter(|e| !e.batch.header().flags.control())
            .count() as u64
    });
    assert!(
        data_entries < publishes + 1,
        "{data_entries} entries for {} publishes",
        publishes + 1
    );
    let merged = shard.log().with(|l| {
        l.positioned_from_raft_index(RaftIndex(0))
            .filter(|e| e.batch.header().producer_count > 1)
            .count()
    });
    assert!(merged > 0, "no entry carries a producer table");

    // A retry of any producer's last batch, even one that shared an entry,
    // answers where it landed and writes nothing.
    for p in [1, PRODUCERS / 2, PRODUCERS] {
        let seq = (BATCHES_EACH - 1) * RECORDS_EACH;
        let again = shard.publish(pbatch(p, seq), p, seq).await.unwrap();
        assert_eq!(again, landed[&(p, seq)]);
        // And an older one is refused, not written again.
        assert!(matches!(
            shard.publish(pbatch(p, 0), p, 0).await,
            Err(BrokerError::Invalid(_))
        ));
    }
    assert_eq!(shard.high_watermark(), records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_batch_with_a_producer_table_or_bad_records_is_refused_and_the_group_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (shard, _router) = replicated_shard(tmp.path()).await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match shard.publish(pbatch(1, 0), 1, 0).await {
            Ok(_) => break,
            Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("first publish: {e}"),
        }
    }
    // A merged batch built by a client: it could claim any producer's
    // sequences, so it is refused.
    let mut m = felix_log::BatchMerger::new(1 << 20);
    m.push(&Batch::new(pbatch(5, 0)).unwrap()).unwrap();
    m.push(&Batch::new(pbatch(6, 0)).unwrap()).unwrap();
    let merged = Bytes::from(m.finish().unwrap());
    assert!(matches!(
        shard.publish(merged, 0, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    // Records that break the format under a correct checksum: refused
    // before they become an entry every replica would fail to store.
    let mut bad = pbatch(7, 0).to_vec();
    let rec = felix_log::batch::layout::HEADER_BYTES;
    bad[rec + felix_log::batch::layout::REC_ATTRS_AT] = 0x80;
    let crc = crc32fast::hash(&bad[rec..]);
    bad[felix_log::batch::layout::RECORDS_CRC_AT..][..4].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&bad[felix_log::batch::layout::HEADER_CRC_FROM..rec]);
    bad[felix_log::batch::layout::HEADER_CRC_AT..][..4].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        shard.publish(Bytes::from(bad), 7, 0).await,
        Err(BrokerError::Batch(_))
    ));
    let next = shard.publish(pbatch(1, 2), 1, 2).await.unwrap();
    assert_eq!(next.base_offset, RECORDS_EACH);
}
