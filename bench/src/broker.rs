//! The broker benchmark (the reference Felix's shapes): publish→deliver
//! latency at batch 1 and throughput at batch 64, fan-out 1 and 10,
//! payloads 256 B and 4 KiB; cache put and get at concurrency 1 and 32
//! with 0 / 256 / 4096 B values. A real broker (in this process, its own
//! data directory) over loopback QUIC with TLS, driven by `felix-client`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args as ClapArgs;
use felix_broker::config::BrokerConfig;
use felix_broker::node::system_clock;
use felix_broker::server;
use felix_client::transport::ClientTls;
use felix_client::wire::{AckLevel, Message, Start, StreamConfig, StreamKind};
use felix_client::{Client, ClientConfig, Route, SubscribeOptions};
use felix_log::{BatchBuilder, Compression, RecordInput};
use hdrhistogram::Histogram;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) seconds: f64,
    /// Durability of the benchmark's streams and caches.
    #[arg(long, default_value = "none")]
    pub(crate) durability: String,
    /// A short run (0.5 s per figure).
    #[arg(long)]
    pub(crate) quick: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let secs = if a.quick { 0.5 } else { a.seconds };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(Duration::from_secs_f64(secs), &a.durability))
}

pub(crate) struct Row {
    pub(crate) shape: String,
    pub(crate) ops_s: f64,
    pub(crate) hist: Histogram<u64>,
}

fn print(rows: &[Row]) {
    println!("| shape | ops/s | p50 µs | p99 µs | p999 µs |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        let q = |p: f64| r.hist.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            r.shape,
            r.ops_s,
            q(0.5),
            q(0.99),
            q(0.999)
        );
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

async fn bench(secs: Duration, durability: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse()?,
        ..BrokerConfig::default()
    };
    let running = server::start(&config, system_clock()).await?;
    let ca = running.dev_ca.clone().expect("dev certificates");
    let mk = || {
        let mut c = ClientConfig::new(running.addr.to_string(), ClientTls::from_pem_files(&ca, None)?);
        c.connections_per_broker = 2;
        anyhow::Ok(c)
    };
    let client = Client::connect(mk()?).await?;
    println!(
        "broker bench: loopback QUIC + TLS, durability {durability}, {:.1} s per figure, load average {}",
        secs.as_secs_f64(),
        loadavg()
    );
    let epoch = Instant::now();
    let mut rows = Vec::new();
    let mut n = 0;
    for payload in [256usize, 4096] {
        for fanout in [1usize, 10] {
            n += 1;
            let name = format!("lat{n}");
            create(&client, &name, StreamKind::Stream, durability).await?;
            rows.push(latency(&client, &name, payload, fanout, secs, epoch).await?);
            n += 1;
            let name = format!("tput{n}");
            create(&client, &name, StreamKind::Stream, durability).await?;
            rows.push(throughput(&client, &name, payload, fanout, secs).await?);
        }
    }
    print(&rows);
    println!();
    let mut rows = Vec::new();
    create(&client, "bench-cache", StreamKind::Cache, durability).await?;
    for value in [0usize, 256, 4096] {
        for conc in [1usize, 32] {
            rows.extend(cache(&client, "bench-cache", value, conc, secs).await?);
        }
    }
    print(&rows);
    println!("load average at end: {}", loadavg());
    client.close().await;
    running.stop().await;
    Ok(())
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) async fn create(
    client: &Client,
    name: &str,
    kind: StreamKind,
    durability: &str,
) -> anyhow::Result<()> {
    let c = StreamConfig {
        kind,
        max_deliveries: 5,
        ..StreamConfig::stream(name, 1, durability.parse()?)
    };
    match client.call(Route::Any, &Message::StreamCreate(c)).await? {
        Message::Done => Ok(()),
        m => anyhow::bail!("create {name}: {m:?}"),
    }
}

fn batch(records: usize, payload: usize, stamp_ns: u64) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new(felix_log::batch::layout::BATCH_BYTES_MAX);
    let mut v = vec![0u8; payload.max(8)];
    v[..8].copy_from_slice(&stamp_ns.to_le_bytes());
    for _ in 0..records {
        b.push(RecordInput {
            value: Some(&v),
            timestamp_ms: felix_log::now_ms(),
            ..Default::default()
        })?;
    }
    Ok(Bytes::from(b.build(Compression::None)?))
}

async fn subscribers(
    client: &Client,
    name: &str,
    fanout: usize,
) -> anyhow::Result<Vec<felix_client::Subscription>> {
    let mut subs = Vec::new();
    for _ in 0..fanout {
        let opts = SubscribeOptions {
            start: Start::Latest,
            credit_bytes: 8 << 20,
            ..SubscribeOptions::default()
        };
        subs.push(client.subscribe(name, opts).await?);
    }
    // Let every subscription reach the broker before the first publish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(subs)
}

async fn publish(client: &Client, name: &str, b: Bytes) -> anyhow::Result<()> {
    let m = Message::Publish {
        stream: name.into(),
        shard: Some(0),
        ack: AckLevel::Leader,
        producer_id: 0,
        sequence: 0,
        batch: b,
    };
    match client.call(Route::Shard(name, 0), &m).await? {
        Message::PublishAck { .. } => Ok(()),
        m => anyhow::bail!("publish: {m:?}"),
    }
}

/// Batch 1: one record at a time; each subscriber measures publish→deliver.
pub(crate) async fn latency(
    client: &Client,
    name: &str,
    payload: usize,
    fanout: usize,
    secs: Duration,
    epoch: Instant,
) -> anyhow::Result<Row> {
    let subs = subscribers(client, name, fanout).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut s in subs {
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut h = hist();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), s.next()).await else {
                    continue;
                };
                let v = d.record.value.unwrap_or_default();
                let sent = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                let now = epoch.elapsed().as_nanos() as u64;
                let _ = h.record(now.saturating_sub(sent).max(1));
            }
            h
        }));
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < secs {
        publish(
            client,
            name,
            batch(1, payload, epoch.elapsed().as_nanos() as u64)?,
        )
        .await?;
        sent += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut h = hist();
    for r in readers {
        h.add(r.await?)?;
    }
    Ok(Row {
        shape: format!("publish→deliver batch 1, {payload} B, fan-out {fanout}"),
        ops_s: sent as f64 / elapsed,
        hist: h,
    })
}

/// Batch 64, 8 publishes in flight; records/s delivered to each subscriber
/// (latency column: publish→deliver of those records).
pub(crate) async fn throughput(
    client: &Client,
    name: &str,
    payload: usize,
    fanout: usize,
    secs: Duration,
) -> anyhow::Result<Row> {
    let subs = subscribers(client, name, fanout).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut readers = Vec::new();
    for mut s in subs {
        let (stop, delivered) = (stop.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let mut h = hist();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), s.next()).await else {
                    continue;
                };
                delivered.fetch_add(1, Ordering::Relaxed);
                if d.record.offset.0 % 64 == 0 {
                    let v = d.record.value.unwrap_or_default();
                    let sent = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                    let _ = h.record((epoch.elapsed().as_nanos() as u64).saturating_sub(sent).max(1));
                }
            }
            h
        }));
    }
    let start = Instant::now();
    let mut pubs = Vec::new();
    for _ in 0..8 {
        let (client, name) = (client.clone(), name.to_owned());
        pubs.push(tokio::spawn(async move {
            while start.elapsed() < secs {
                publish(
                    &client,
                    &name,
                    batch(64, payload, epoch.elapsed().as_nanos() as u64)?,
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in pubs {
        p.await??;
    }
    let measured = delivered.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut h = hist();
    for r in readers {
        h.add(r.await?)?;
    }
    Ok(Row {
        shape: format!("throughput batch 64, {payload} B, fan-out {fanout} (records/s per subscriber)"),
        ops_s: measured as f64 / fanout as f64 / elapsed,
        hist: h,
    })
}

/// Puts then gets of `value` bytes from `conc` tasks.
async fn cache(
    client: &Client,
    name: &str,
    value: usize,
    conc: usize,
    secs: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for op in ["put", "get"] {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..conc {
            let cache = client.cache(name);
            let v = Bytes::from(vec![b'v'; value]);
            tasks.push(tokio::spawn(async move {
                let mut h = hist();
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let key = format!("k{t}-{}", n % 1000);
                    let t0 = Instant::now();
                    if op == "put" {
                        cache.put(key, v.clone(), None).await?;
                    } else {
                        cache.get(key).await?;
                    }
                    let _ = h.record(t0.elapsed().as_nanos() as u64);
                    n += 1;
                }
                anyhow::Ok((n, h))
            }));
        }
        let mut h = hist();
        let mut total = 0;
        for t in tasks {
            let (n, th) = t.await??;
            total += n;
            h.add(th)?;
        }
        rows.push(Row {
            shape: format!("cache {op}, {value} B, concurrency {conc}"),
            ops_s: total as f64 / start.elapsed().as_secs_f64(),
            hist: h,
        });
    }
    Ok(rows)
}
