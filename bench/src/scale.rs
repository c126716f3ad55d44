//! Scale-out: the same write workload (a fixed number of records into a
//! stream of many shards at RF=3) on 3 and on 6 brokers following a
//! control plane, which places each shard's replicas. Per broker: bytes
//! written to disk (`/proc/PID/io` `write_bytes`) and CPU seconds
//! (`/proc/PID/stat`); the ratio 6/3 is the figure (target ≤ 0.6: each of
//! six brokers does about half of what each of three does).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args as ClapArgs;
use felix_client::producer::{ProducerConfig, ProducerRecord};
use felix_client::Client;

use crate::cluster::{client_config, cluster_on_loopback, cpu_time};

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
    /// A short run: 20,000 records.
    #[arg(long)]
    quick: bool,
}

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
    Ok(())
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
fn written_bytes(pid: u32) -> anyhow::Result<u64> {
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
    let cp = felix_cli::embedded::start(dir.path(), "127.0.0.1:0".parse()?).await?;
    let link = &cp.link;
    let extra = format!(
        "[controlplane]\nurls = {:?}\nsecret = {:?}\n",
        link.urls, link.secret
    );
    let brokers = cluster_on_loopback(dir.path(), n, &extra)?;
    let mut cfg = client_config(&brokers)?;
    cfg.token = Bytes::from(cp.dev_token.clone());
    let stream = "dev/default/scale";
    let http = reqwest::Client::new();
    let deadline = Instant::now() + READY_WAIT_MAX;
    // Every broker registered, so placement spreads over all of them.
    loop {
        let v: serde_json::Value = http
            .get(format!("http://{}/v1/brokers", cp.handle.addr))
            .bearer_auth(&link.secret)
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
        .post(format!(
            "http://{}/v1/tenants/dev/namespaces/default/streams",
            cp.handle.addr
        ))
        .bearer_auth(&link.secret)
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
            c.refresh_metadata(&[stream.to_owned()]).await.ok();
            if let Ok(info) = c.stream_info(stream).await {
                if info.shards.len() == shards as usize && info.shards.iter().all(|s| s.leader.is_some()) {
                    break c;
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{stream} has shards without a leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pids: Vec<u32> = brokers.children.iter().flatten().map(|c| c.id()).collect();
    let sample = |pids: &[u32]| -> anyhow::Result<Vec<(Duration, u64)>> {
        pids.iter()
            .map(|p| Ok((cpu_time(*p)?, written_bytes(*p)?)))
            .collect()
    };
    let before = sample(&pids)?;
    let start = Instant::now();
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
