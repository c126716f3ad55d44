//! The Redis door beside Redis itself, both driven by the same tool,
//! `redis-benchmark` (installed with the Redis peer): Felix's figures are
//! then what a Redis user would measure.

use std::process::Command;
use std::time::Duration;

use felix_client::wire::{Message, StreamConfig, StreamKind};
use felix_client::{Client, Route};

use super::load::{self, Figure, Window};
use super::report::{Row, Table};
use super::{peer_or, PeerScripts, Plan};
use crate::cluster::client_config;
use felix_cli::devcluster::LocalBrokers;

/// The cache the door serves.
const CACHE: &str = "bench/peers/redis";
/// Concurrent connections, as the issue's `redis-benchmark -c 32`.
const CLIENTS: usize = 32;
/// Keys the requests spread over (`-r`).
const KEYS: u64 = 10_000;

/// One broker serving a Redis door onto a cache of `durability`.
struct Door {
    brokers: LocalBrokers,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Door {
    async fn start(durability: &str) -> anyhow::Result<Door> {
        let (brokers, addr, dir) =
            super::broker_with_door(|addr| format!("[redis]\nlisten = {addr:?}\ncache = {CACHE:?}\n"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let client = loop {
            match Client::connect(client_config(&brokers)?).await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut cfg = StreamConfig::stream(CACHE, 4, durability.parse()?);
        cfg.kind = StreamKind::Cache;
        match client.call(Route::Any, &Message::StreamCreate(cfg)).await? {
            Message::Done => {}
            r => anyhow::bail!("creating {CACHE}: {r:?}"),
        }
        client.close().await;
        Ok(Door {
            brokers,
            addr,
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.brokers.children.iter().flatten().map(|c| c.id()).collect()
    }
}

/// `redis-benchmark` of one test against `addr`: its rate and latencies,
/// with the watched server's CPU per request.
async fn bench(
    addr: String,
    test: &'static str,
    size: usize,
    pipeline: usize,
    requests: u64,
) -> anyhow::Result<Figure> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("not host:port: {addr}"))?;
    let (host, port) = (host.to_owned(), port.to_owned());
    let w = Window::open();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-benchmark")
            .args(["-h", &host, "-p", &port, "-t", test, "--csv"])
            .args(["-d", &size.to_string(), "-c", &CLIENTS.to_string()])
            .args(["-P", &pipeline.to_string(), "-n", &requests.to_string()])
            .args(["-r", &KEYS.to_string()])
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut f = w.figure(requests, None, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let (rate, p50, p99) =
        parse_csv(&text).ok_or_else(|| anyhow::anyhow!("no figures in redis-benchmark's output: {text}"))?;
    f.rate = rate;
    f.p50_ms = Some(p50);
    f.p99_ms = Some(p99);
    Ok(f)
}

/// The rate, p50 and p99 (ms) of `redis-benchmark --csv`'s first test.
fn parse_csv(text: &str) -> Option<(f64, f64, f64)> {
    let mut lines = text.lines().filter(|l| l.starts_with('"'));
    let head: Vec<String> = lines
        .next()?
        .split(',')
        .map(|c| c.trim_matches('"').to_owned())
        .collect();
    let row: Vec<f64> = lines
        .next()?
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().ok())
        .collect::<Option<_>>()?;
    let col = |name: &str| {
        head.iter()
            .skip(1)
            .position(|h| h == name)
            .and_then(|i| row.get(i).copied())
    };
    Some((col("rps")?, col("p50_latency_ms")?, col("p99_latency_ms")?))
}

pub(crate) async fn run(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "redis",
        "The Redis door: `redis-benchmark -c 32 -r 10000` against Felix's Redis door and against Redis, the same tool and flags",
        "ops/s",
    );
    let (sizes, pipelines, requests): (&[usize], &[usize], u64) = if plan.quick {
        (&[256], &[1], 2_000)
    } else {
        (&[256, 4096], &[1, 16], 100_000)
    };
    for (felix_mode, redis_mode, label) in [
        ("none", "default", "Redis, no persistence"),
        ("always", "always", "Redis AOF `appendfsync always`"),
    ] {
        // Started first: its script installs redis-benchmark too.
        let addr = peers.start("redis.sh", redis_mode);
        let tool = Command::new("redis-benchmark").arg("--version").output();
        if !tool.is_ok_and(|o| o.status.success()) {
            eprintln!("redis: no redis-benchmark (install Debian's redis-tools); this table is left empty");
            peers.stop("redis.sh", redis_mode);
            return Ok(t);
        }
        let door = Door::start(felix_mode).await?;
        for &size in sizes {
            for &pipeline in pipelines {
                for test in ["set", "get", "incr"] {
                    let n = requests * pipeline as u64;
                    eprintln!("redis {felix_mode} {test} {size} B -P {pipeline}");
                    load::watch(door.pids());
                    let f = bench(door.addr.clone(), test, size, pipeline, n).await?;
                    let p = peer_or(&addr, peers.pids("redis.sh", redis_mode), |a| {
                        bench(a, test, size, pipeline, n)
                    })
                    .await;
                    t.push(Row::new(
                        format!("{} {size} B, pipeline {pipeline}", test.to_uppercase()),
                        format!("Felix `{felix_mode}`"),
                        label.into(),
                        f,
                        p,
                        (test != "incr").then_some(1.0),
                    ));
                }
            }
        }
        drop(door);
        peers.stop("redis.sh", redis_mode);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"41152.26\",\"0.745\",\"0.200\",\"0.711\",\"1.063\",\"1.455\",\"3.351\"\n";
        assert_eq!(super::parse_csv(text), Some((41152.26, 0.711, 1.455)));
        assert_eq!(super::parse_csv("nothing"), None);
    }
}
