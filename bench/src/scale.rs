//! Scale-out: the same write workload (a fixed number of records into a
//! stream of many shards at RF=3) on 3 and on 6 brokers following a
//! control plane, which places each shard's replicas. Per broker: bytes
//! written to disk (`/proc/PID/io` `write_bytes`) and CPU seconds
//! (`/proc/PID/stat`); the ratio 6/3 is the figure (target ≤ 0.6: each of
//! six brokers does about half of what each of three does).
//!
//! Then a rebalance onto a new broker: three brokers hold a preloaded
//! stream, a fourth is started (nothing else changes: it registers and the
//! control plane moves its share onto it), and the figures are the catch-up
//! rate (what the new broker wrote, over the time until the last move was
//! done) beside this machine's fsync'd disk and loopback TCP rates, and the
//! p99 latency of a producer publishing one record at a time before and
//! during the moves.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args as ClapArgs;
use felix_client::producer::{ProducerConfig, ProducerRecord};
use felix_client::Client;

use crate::cluster::{client_config, cluster_on_loopback, cpu_time, OnLoopback};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Records in the workload (each 256 B).
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Shards of the stream.
    #[arg(long, default_value_t = 12)]
    shards: u32,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: u64,
    /// Records preloaded before a broker is added (each 256 B).
    #[arg(long, default_value_t = 400_000)]
    preload: u64,
    /// A short run: 20,000 records (and 40,000 preloaded).
    #[arg(long)]
    quick: bool,
}

/// How long the latency probe runs before the new broker starts.
const PROBE_BEFORE: Duration = Duration::from_secs(5);
/// Longest a rebalance may take before the benchmark gives up.
const REBALANCE_WAIT_MAX: Duration = Duration::from_secs(300);

const RECORD_BYTES: usize = 256;
/// Records a producer may have awaiting acknowledgement.
const WINDOW: usize = 64;
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

pub fn run(a: Args) -> anyhow::Result<()> {
    let records = if a.quick { 20_000 } else { a.records };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "## Scale-out: {records} records of {RECORD_BYTES} B into {} shards at RF=3, {} producers\n",
        a.shards, a.producers
    );
    println!("| brokers | records/s | per broker: MB written (mean, max) | per broker: CPU s (mean, max) |");
    println!("|---:|---:|---:|---:|");
    let three = rt.block_on(one(3, records, a.shards, a.producers))?;
    let six = rt.block_on(one(6, records, a.shards, a.producers))?;
    for (n, r) in [(3, &three), (6, &six)] {
        println!(
            "| {n} | {:.0} | {:.1}, {:.1} | {:.2}, {:.2} |",
            r.rate,
            mean(&r.written_mb),
            max(&r.written_mb),
            mean(&r.cpu_s),
            max(&r.cpu_s)
        );
    }
    println!(
        "\n6 brokers / 3 brokers, per broker: bytes written {:.2}×, CPU {:.2}× (target ≤ 0.6×)",
        mean(&six.written_mb) / mean(&three.written_mb).max(f64::MIN_POSITIVE),
        mean(&six.cpu_s) / mean(&three.cpu_s).max(f64::MIN_POSITIVE)
    );
    let preload = if a.quick { 40_000 } else { a.preload };
    rt.block_on(onto_new_broker(preload, a.shards, a.producers))
}

/// Three brokers, a stream preloaded with `preload` records, then a fourth
/// broker started while a probe publishes one record at a time.
async fn onto_new_broker(preload: u64, shards: u32, producers: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk_mb_s = disk_rate(dir.path())?;
    let loopback_mb_s = loopback_rate().await?;
    let c = Placed::start(dir.path(), 3, shards).await?;
    write(&c.client, STREAM, preload, producers).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (p, stop) = (
            c.client.producer(STREAM, ProducerConfig::default()).await?,
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let value = Bytes::from(vec![b'p'; RECORD_BYTES]);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let t = Instant::now();
                p.send(ProducerRecord::new(value.clone())).await?.wait().await?;
                seen.push((t, t.elapsed()));
            }
            anyhow::Ok(seen)
        })
    };
    tokio::time::sleep(PROBE_BEFORE).await;
    let mut brokers = c.brokers;
    let added = Instant::now();
    let i = brokers.add(&c.extra)?;
    let pid = brokers.children[i].as_ref().context("the new broker")?.id();
    let http = c.cp.api_client()?;
    let cp = c.cp.handle.url();
    let get = |path: &'static str| {
        let (http, cp, secret) = (http.clone(), cp.clone(), c.cp.operator_secret.clone());
        async move {
            let v: serde_json::Value = http
                .get(format!("{cp}{path}"))
                .bearer_auth(secret)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    // Registered (which starts the rebalance), then no goal and no move left.
    loop {
        let b = get("/v1/brokers").await?;
        if b["items"].as_array().map_or(0, Vec::len) == 4 {
            break;
        }
        anyhow::ensure!(
            added.elapsed() < REBALANCE_WAIT_MAX,
            "the new broker did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let r = get("/v1/rebalance").await?;
        let moving = r["moves_in_progress"].as_array().map_or(0, Vec::len);
        if r["rebalance"].is_null() && moving == 0 {
            break;
        }
        anyhow::ensure!(
            added.elapsed() < REBALANCE_WAIT_MAX,
            "the rebalance did not finish: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = added.elapsed();
    let caught_up_mb = written_bytes(pid)? as f64 / 1e6;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen = probe.await??;
    let p99 = |from: Instant, to: Instant| {
        let mut l: Vec<f64> = seen
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .collect();
        l.sort_by(f64::total_cmp);
        let at = ((l.len() as f64 * 0.99).ceil() as usize).clamp(1, l.len().max(1)) - 1;
        (l.get(at).copied().unwrap_or(f64::NAN), l.len())
    };
    let start = seen.first().map_or(added, |s| s.0);
    let (before, n_before) = p99(start, added);
    let (during, n_during) = p99(added, added + took);
    println!(
        "\n## Rebalance onto a fourth broker: {preload} records of {RECORD_BYTES} B preloaded into {shards} shards at RF=3\n"
    );
    println!("| figure | value |\n|---|---:|");
    println!("| until the last move was done | {:.1} s |", took.as_secs_f64());
    println!("| written by the new broker | {caught_up_mb:.1} MB |");
    println!(
        "| catch-up rate | {:.1} MB/s |",
        caught_up_mb / took.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    println!("| this machine: fsync'd sequential disk writes | {disk_mb_s:.0} MB/s |");
    println!("| this machine: one loopback TCP stream | {loopback_mb_s:.0} MB/s |");
    println!("| probe p99 before ({n_before} publishes) | {before:.1} ms |");
    println!("| probe p99 during the moves ({n_during} publishes) | {during:.1} ms |");
    println!("\nduring / before p99: {:.2}×", during / before);
    c.client.close().await;
    Ok(())
}

const STREAM: &str = "dev/default/scale";

/// A control plane in this process and brokers following it, with a
/// stream of `shards` shards at RF=3 led everywhere.
struct Placed {
    cp: felix_cli::embedded::Embedded,
    brokers: felix_cli::devcluster::LocalBrokers,
    client: Client,
    /// The brokers' control-plane settings.
    extra: String,
}

impl Placed {
    async fn start(dir: &std::path::Path, n: u32, shards: u32) -> anyhow::Result<Placed> {
        let OnLoopback { brokers, cp, follow } = cluster_on_loopback(dir, n, "", &[]).await?;
        let mut cfg = client_config(&brokers)?;
        cfg.token = Bytes::from(cp.dev_token.clone());
        let http = cp.api_client()?;
        let api = cp.handle.url();
        let deadline = Instant::now() + READY_WAIT_MAX;
        // Every broker registered, so placement spreads over all of them.
        loop {
            let v: serde_json::Value = http
                .get(format!("{api}/v1/brokers"))
                .bearer_auth(&cp.operator_secret)
                .send()
                .await?
                .json()
                .await?;
            if v["items"].as_array().map_or(0, Vec::len) == n as usize {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "brokers did not register");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let made = http
            .post(format!("{api}/v1/tenants/dev/namespaces/default/streams"))
            .bearer_auth(&cp.operator_secret)
            .json(&serde_json::json!({"name": "scale", "shards": shards, "replication_factor": 3}))
            .send()
            .await?;
        anyhow::ensure!(
            made.status().is_success(),
            "creating the stream: {}",
            made.text().await?
        );
        let client = loop {
            if let Ok(c) = Client::connect(cfg.clone()).await {
                c.refresh_metadata(&[STREAM.to_owned()]).await.ok();
                if let Ok(info) = c.stream_info(STREAM).await {
                    if info.shards.len() == shards as usize && info.shards.iter().all(|s| s.leader.is_some())
                    {
                        break c;
                    }
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "{STREAM} has shards without a leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Ok(Placed {
            cp,
            brokers,
            client,
            extra: follow,
        })
    }
}

/// `records` records of [`RECORD_BYTES`] into `stream` from `producers`
/// producers, each keeping [`WINDOW`] unacknowledged.
async fn write(client: &Client, stream: &str, records: u64, producers: u64) -> anyhow::Result<()> {
    let value = Bytes::from(vec![b'v'; RECORD_BYTES]);
    let mut tasks = Vec::new();
    for i in 0..producers {
        let p = client.producer(stream, ProducerConfig::default()).await?;
        let value = value.clone();
        let mine = records / producers + u64::from(i < records % producers);
        tasks.push(tokio::spawn(async move {
            let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
            for _ in 0..mine {
                if pending.len() == WINDOW {
                    let ack: felix_client::PendingAck = pending.pop_front().expect("full");
                    ack.wait().await?;
                }
                pending.push_back(p.send(ProducerRecord::new(value.clone())).await?);
            }
            for ack in pending {
                ack.wait().await?;
            }
            p.close().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// MB/s of 64 MiB written in 1 MiB writes and fsync'd, under `dir`.
fn disk_rate(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("disk-rate");
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..64 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let mb_s = (64 << 20) as f64 / 1e6 / t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(mb_s)
}

/// MB/s of 256 MiB through one TCP connection on 127.0.0.1.
async fn loopback_rate() -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 256 << 20;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let at = l.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < TOTAL {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the loopback stream closed early");
            got += n;
        }
        anyhow::Ok(())
    });
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(at).await?;
    let chunk = vec![1u8; 1 << 16];
    for _ in 0..TOTAL / chunk.len() {
        s.write_all(&chunk).await?;
    }
    reader.await??;
    Ok(TOTAL as f64 / 1e6 / t.elapsed().as_secs_f64())
}

struct Figures {
    rate: f64,
    written_mb: Vec<f64>,
    cpu_s: Vec<f64>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Bytes process `pid` has caused to be written to storage so far.
pub(crate) fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .context("no write_bytes in /proc io")?
        .trim()
        .parse()
        .context("write_bytes")
}

/// The workload on `n` brokers and an embedded control plane.
async fn one(n: u32, records: u64, shards: u32, producers: u64) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let placed = Placed::start(dir.path(), n, shards).await?;
    let (brokers, client) = (&placed.brokers, &placed.client);
    let pids: Vec<u32> = brokers.children.iter().flatten().map(|c| c.id()).collect();
    let sample = |pids: &[u32]| -> anyhow::Result<Vec<(Duration, u64)>> {
        pids.iter()
            .map(|p| Ok((cpu_time(*p)?, written_bytes(*p)?)))
            .collect()
    };
    let before = sample(&pids)?;
    let start = Instant::now();
    write(client, STREAM, records, producers).await?;
    let took = start.elapsed().as_secs_f64();
    // What the brokers still owe the disk for this workload (interval
    // flushes, segment syncs) lands within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sample(&pids)?;
    client.close().await;
    Ok(Figures {
        rate: records as f64 / took,
        written_mb: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.1.saturating_sub(b.1) as f64 / 1e6)
            .collect(),
        cpu_s: before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a.0 - b.0).as_secs_f64())
            .collect(),
    })
}
