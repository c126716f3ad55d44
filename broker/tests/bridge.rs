//! A bridge's exactly-once path, in one process: a source and a target
//! broker, a bridge between them, and carriers stopped again and again
//! between the target's acknowledgement and the commit of their position
//! (where a killed broker would leave them) while records keep coming.
//! Each successor sends the last batch again, often with more records in
//! it; the target still holds every source record once, in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use felix_broker::config::BrokerConfig;
use felix_broker::node::system_clock;
use felix_broker::server;
use felix_client::transport::ClientTls;
use felix_client::wire::{Message, Start, StreamConfig};
use felix_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, Route, SubscribeOptions};
use felix_controlplane::model::{Bridge, BridgeSpec, BridgeTarget};

const STREAM: &str = "carried";
const SHARDS: u32 = 2;
const RECORDS: usize = 3_000;

async fn start(dir: &std::path::Path) -> (server::Running, Client, String) {
    let config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..BrokerConfig::default()
    };
    let running = server::start(&config, system_clock()).await.unwrap();
    let ca = running.dev_ca.clone().unwrap();
    let client = Client::connect(ClientConfig::new(
        running.addr.to_string(),
        ClientTls::from_pem_files(&ca, None).unwrap(),
    ))
    .await
    .unwrap();
    let c = StreamConfig::stream(STREAM, SHARDS, felix_model::Durability::None);
    assert_eq!(
        client.call(Route::Any, &Message::StreamCreate(c)).await.unwrap(),
        Message::Done
    );
    let pem = std::fs::read_to_string(ca).unwrap();
    (running, client, pem)
}

/// (key, value, headers) of every record of `shard`, until `n` have come.
async fn read(
    client: &Client,
    shard: u32,
    n: usize,
) -> Vec<(Option<Bytes>, Option<Bytes>, Vec<(Bytes, Bytes)>, u64)> {
    let mut sub = client
        .subscribe(
            STREAM,
            SubscribeOptions {
                shards: vec![shard],
                start: Start::Offset(0),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .unwrap_or_else(|_| panic!("shard {shard}: {} of {n} records", out.len()))
            .unwrap()
            .unwrap();
        out.push((d.record.key, d.record.value, d.record.headers, d.record.offset.0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_stopped_before_committing_neither_lose_nor_repeat_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let (source, src, _) = start(&dir.path().join("eu")).await;
    let (target, dst, target_ca) = start(&dir.path().join("us")).await;
    let name = felix_model::names::StreamName::parse(STREAM).unwrap();
    let bridge = Bridge {
        name: "eu-us".into(),
        spec: BridgeSpec {
            tenant: name.tenant.clone(),
            streams: vec![format!("{}/*", name.namespace)],
            target: BridgeTarget {
                region: "us".into(),
                brokers: vec![target.addr.to_string()],
                server_name: "localhost".into(),
                ca_pem: target_ca,
                token: String::new(),
            },
        },
        paused: false,
        created_ms: 0,
        updated_ms: 0,
    };
    source.node.bridges.crash_before_commit_every(3);
    source
        .node
        .bridges
        .replace(BTreeMap::from([(bridge.name.clone(), bridge)]));
    felix_broker::bridge::supervise::start(&source.node, "eu".into());

    // Records arrive while carriers stop and start, in small batches so
    // that a carrier's successor finds more records than it sent.
    let p = src
        .producer(
            STREAM,
            ProducerConfig {
                linger_ms: 1,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
    for i in 0..RECORDS {
        let mut r = ProducerRecord::keyed(format!("k{i}"), format!("v{i}"));
        r.headers = vec![(Bytes::from_static(b"h"), Bytes::from(format!("{i}")))];
        let a = p.send(r).await.unwrap();
        if i % 20 == 19 {
            a.wait().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    p.flush().await.unwrap();

    let full = name.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let held = |n: &felix_broker::node::Node| -> Vec<u64> {
        let h = n.stream(&full).unwrap();
        (0..SHARDS)
            .map(|s| h.shard(s).unwrap().high_watermark())
            .collect()
    };
    let want = held(&source.node);
    while held(&target.node) != want {
        assert!(
            Instant::now() < deadline,
            "target {:?}, source {want:?}",
            held(&target.node)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let crashes = source.node.bridges.crashes();
    assert!(crashes >= 3, "the fault stopped carriers {crashes} times");
    let mut total = 0;
    for shard in 0..SHARDS {
        let n = want[shard as usize] as usize;
        let s = read(&src, shard, n).await;
        let t = read(&dst, shard, n).await;
        for (a, b) in s.iter().zip(&t) {
            assert_eq!(
                (&b.0, &b.1),
                (&a.0, &a.1),
                "shard {shard}: the same records in the same order"
            );
            let offset =
                b.2.iter()
                    .find(|(k, _)| &k[..] == b"felix-source-offset")
                    .unwrap();
            assert_eq!(&offset.1[..], a.3.to_string().as_bytes());
            assert_eq!(b.2[0], a.2[0], "the record's own header first");
        }
        total += n;
    }
    assert_eq!(
        total, RECORDS,
        "every record once: the target's offsets end where the source's do"
    );
    src.close().await;
    dst.close().await;
    source.stop().await;
    target.stop().await;
}
