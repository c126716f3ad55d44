//! What a bridge carries on loopback: two brokers in this process (the
//! source and the target cluster, each with its own CA), a bridge given to
//! the source as its control plane's feed would give it, and
//!
//! - **throughput**: a backlog of records published to the source, then
//!   the time until the target holds them all (records/s carried);
//! - **end-to-end lag**: records published one at a time, paced; for each,
//!   the time from the source's acknowledgement to its arrival at a
//!   subscriber of the target (p50/p99);
//! - CPU of this process (both brokers and the clients) per carried record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use felix_broker::config::BrokerConfig;
use felix_broker::node::system_clock;
use felix_broker::server;
use felix_client::transport::ClientTls;
use felix_client::wire::{Message, Start, StreamKind};
use felix_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, Route, SubscribeOptions};
use felix_controlplane::model::{Bridge, BridgeSpec, BridgeTarget};

use crate::broker::{create, loadavg};
use crate::groups::process_cpu;

/// The broker benchmark's settings.
pub type Args = crate::broker::Args;

const STREAM: &str = "bridged";

pub fn run(a: Args) -> anyhow::Result<()> {
    let secs = Duration::from_secs_f64(if a.quick { 0.5 } else { a.seconds });
    let backlog = if a.quick { 5_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "bridge: two brokers on loopback QUIC + TLS (source and target, one shard each), durability {}, load average {}",
        a.durability,
        loadavg()
    );
    rt.block_on(measure(backlog, secs, &a.durability))?;
    println!("load average at end: {}", loadavg());
    Ok(())
}

async fn start(dir: &std::path::Path, name: &str) -> anyhow::Result<(server::Running, Client, String)> {
    let config = BrokerConfig {
        data_dir: dir.join(name),
        listen: "127.0.0.1:0".parse()?,
        ..BrokerConfig::default()
    };
    let running = server::start(&config, system_clock()).await?;
    let ca = running.dev_ca.clone().expect("dev certificates");
    let client = Client::connect(ClientConfig::new(
        running.addr.to_string(),
        ClientTls::from_pem_files(&ca, None)?,
    ))
    .await?;
    Ok((running, client, std::fs::read_to_string(ca)?))
}

async fn measure(backlog: usize, secs: Duration, durability: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (source, src, _) = start(dir.path(), "eu").await?;
    let (target, dst, target_ca) = start(dir.path(), "us").await?;
    create(&src, STREAM, StreamKind::Stream, durability).await?;
    create(&dst, STREAM, StreamKind::Stream, durability).await?;
    let name = felix_model::names::StreamName::parse(STREAM)?;
    let bridge = Bridge {
        name: "bench".into(),
        spec: BridgeSpec {
            tenant: name.tenant.clone(),
            streams: vec![format!("{}/{}", name.namespace, name.name)],
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
    let full = name.to_string();

    // Throughput: a backlog, then the bridge, timed until the target has it.
    let p = src
        .producer(
            STREAM,
            ProducerConfig {
                linger_ms: 1,
                ..ProducerConfig::default()
            },
        )
        .await?;
    let value = Bytes::from(vec![7u8; 256]);
    let mut acks = Vec::with_capacity(backlog);
    for _ in 0..backlog {
        acks.push(p.send(ProducerRecord::new(value.clone())).await?);
    }
    for a in acks {
        a.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let cpu = process_cpu();
    let began = Instant::now();
    source
        .node
        .bridges
        .replace(BTreeMap::from([(bridge.name.clone(), bridge.clone())]));
    felix_broker::bridge::supervise::start(&source.node, "eu".into());
    let target_shard = target.node.stream(&full)?.shard(0)?.clone();
    while target_shard.high_watermark() < backlog as u64 {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(300),
            "the bridge carried {} of {backlog} in 300 s",
            target_shard.high_watermark()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = began.elapsed();
    let cpu_us = (process_cpu() - cpu).as_secs_f64() * 1e6 / backlog as f64;
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| backlog carried (256 B records) | {backlog} |");
    println!(
        "| carried records/s | {:.0} |",
        backlog as f64 / took.as_secs_f64()
    );
    println!(
        "| carried MB/s | {:.1} |",
        backlog as f64 * 256.0 / took.as_secs_f64() / 1e6
    );
    println!("| CPU µs per carried record (this process: both brokers) | {cpu_us:.1} |");

    // End-to-end lag: one record at a time, about 1,000 a second.
    let arrived: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let mut sub = dst
        .subscribe(
            STREAM,
            SubscribeOptions {
                start: Start::Offset(backlog as u64),
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let seen = arrived.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = sub.next().await {
            let v = d.record.value.unwrap_or_default();
            if v.len() >= 8 {
                let i = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                seen.lock().expect("arrivals").insert(i, Instant::now());
            }
        }
    });
    let mut acked = BTreeMap::new();
    let until = Instant::now() + secs.max(Duration::from_secs(1));
    let mut i = 0u64;
    let cpu = process_cpu();
    while Instant::now() < until {
        let mut v = vec![0u8; 256];
        v[..8].copy_from_slice(&i.to_le_bytes());
        let m = Message::Publish {
            stream: STREAM.into(),
            shard: Some(0),
            ack: felix_client::wire::AckLevel::Leader,
            producer_id: 0,
            sequence: 0,
            batch: one_record(&v)?,
        };
        let sent = Instant::now();
        src.call(Route::Shard(STREAM, 0), &m).await?;
        acked.insert(i, (sent, Instant::now()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().expect("arrivals").len() < acked.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_us = (process_cpu() - cpu).as_secs_f64() * 1e6 / i.max(1) as f64;
    reader.abort();
    // From the publish being sent, and from its acknowledgement reaching
    // the publisher: a carrier wakes on the source's commit, so a record
    // often reaches the target before the publisher has its answer.
    let (mut from_send, mut from_ack, mut round_trip) = (hist()?, hist()?, hist()?);
    let got = arrived.lock().expect("arrivals").clone();
    for (k, (sent, ack)) in &acked {
        round_trip.record(ack.duration_since(*sent).as_micros() as u64)?;
        if let Some(r) = got.get(k) {
            from_send.record(r.saturating_duration_since(*sent).as_micros() as u64)?;
            from_ack.record(r.saturating_duration_since(*ack).as_micros() as u64)?;
        }
    }
    anyhow::ensure!(
        from_send.len() == acked.len() as u64,
        "{} of {} paced records arrived",
        from_send.len(),
        acked.len()
    );
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p);
    println!("| paced records (one per request, ~1,000/s) | {} |", acked.len());
    println!(
        "| source publish round trip p50 / p99 µs | {} / {} |",
        q(&round_trip, 0.5),
        q(&round_trip, 0.99)
    );
    println!(
        "| publish sent → target subscriber p50 / p99 µs | {} / {} |",
        q(&from_send, 0.5),
        q(&from_send, 0.99)
    );
    println!(
        "| source ack → target subscriber p50 / p99 µs (0 = before the ack) | {} / {} |",
        q(&from_ack, 0.5),
        q(&from_ack, 0.99)
    );
    println!("| CPU µs per paced record (this process, idle time included) | {cpu_us:.1} |");
    src.close().await;
    dst.close().await;
    source.stop().await;
    target.stop().await;
    Ok(())
}

fn one_record(v: &[u8]) -> anyhow::Result<Bytes> {
    let mut b = felix_log::BatchBuilder::new(felix_log::batch::layout::BATCH_BYTES_MAX);
    b.push(felix_log::RecordInput {
        value: Some(v),
        timestamp_ms: felix_log::now_ms(),
        ..Default::default()
    })?;
    Ok(Bytes::from(b.build(felix_log::Compression::None)?))
}

fn hist() -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::<u64>::new(3)?)
}
