//! The control plane at scale: `--brokers` simulated brokers register and
//! heartbeat as real ones do, `--streams` streams (RF=3) are created one
//! after another through the API, and a follower long-polls the change
//! feed as a broker does. Prints the API's create latency as the count
//! grows, the feed's lag behind the API, heartbeat latency, the node's
//! memory and the size of its feed snapshot and data.
//!
//! The node is the embedded one `felix dev` runs (one voter), in this
//! process: RSS is the process's, the benchmark's own client included.
//! Then the same number of streams is recorded in a broker's metadata
//! store, as following the feed does, with the bytes written per change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated brokers (registered, heartbeating).
    #[arg(long, default_value_t = 100)]
    brokers: u32,
    /// Streams created through the API.
    #[arg(long, default_value_t = 10_000)]
    streams: u32,
    /// Shards per stream.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// How often each simulated broker heartbeats (a real one's default
    /// is the control plane's `broker_heartbeat_interval_ms`, 5 s; the
    /// tests' brokers use 500 ms).
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// 10 brokers and 300 streams.
    #[arg(long)]
    quick: bool,
}

/// Create latencies are reported per this many streams.
const LATENCY_BUCKETS: u32 = 5;

struct Api {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Vec<u8>> {
        let (s, b) = self.call(method, path, body).await?;
        anyhow::ensure!(s == 200, "{path}: {s} {}", String::from_utf8_lossy(&b));
        Ok(b)
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (brokers, streams) = if a.quick {
        (10, 300)
    } else {
        (a.brokers, a.streams)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(brokers, streams, a.shards, a.heartbeat_ms))?;
    broker_follow(streams)
}

/// What following the feed costs a broker's own metadata store: the same
/// number of streams recorded one at a time, each as a followed change is
/// (the feed version noted, then the stream with its placement), in a
/// fresh directory, with the bytes this process caused to be written.
fn broker_follow(streams: u32) -> anyhow::Result<()> {
    use felix_controlplane::model::ShardPlacement;
    let dir = tempfile::tempdir()?;
    let mut m = felix_broker::meta::MetaStore::open(dir.path())?;
    let per_bucket = streams.div_ceil(LATENCY_BUCKETS).max(1);
    let mut buckets: Vec<(Histogram<u64>, u64)> = Vec::new();
    let started = Instant::now();
    let mut written = crate::scale::written_bytes(std::process::id())?;
    for k in 0..streams {
        if k % per_bucket == 0 {
            buckets.push((Histogram::new(3)?, 0));
        }
        let c = felix_client::wire::StreamConfig::stream(
            &format!("bench/scale/s{k:05}"),
            1,
            felix_log::Durability::Always,
        );
        let placement = vec![ShardPlacement {
            group: u64::from(k) + 1,
            replicas: vec![1, 2, 3],
            leaving: Vec::new(),
            leader_pinned: false,
            founders: vec![1_001, 2_001, 3_001],
        }];
        let t = Instant::now();
        m.note_follow(u64::from(k) + 1)?;
        m.create(&c, Vec::new(), placement)?;
        let now_written = crate::scale::written_bytes(std::process::id())?;
        let b = buckets.last_mut().expect("a bucket");
        b.0.record((t.elapsed().as_micros() as u64).max(1))?;
        b.1 += now_written.saturating_sub(written);
        written = now_written;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "
## A broker's metadata store following {streams} stream creations
"
    );
    println!(
        "Took {secs:.1} s ({:.0} changes/s).
",
        f64::from(streams) / secs
    );
    println!("| streams already there | p50 ms | p99 ms | written per change KiB |");
    println!("|---:|---:|---:|---:|");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (i, (h, bytes)) in buckets.iter().enumerate() {
        println!(
            "| {}–{} | {:.2} | {:.2} | {:.1} |",
            i as u32 * per_bucket,
            ((i as u32 + 1) * per_bucket).min(streams),
            ms(h, 0.5),
            ms(h, 0.99),
            *bytes as f64 / h.len().max(1) as f64 / 1024.0
        );
    }
    Ok(())
}

async fn bench(brokers: u32, streams: u32, shards: u32, heartbeat_ms: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = felix_cli::embedded::start(dir.path(), "127.0.0.1:0".parse()?, dir.path()).await?;
    let api = Arc::new(Api {
        http: cp.api_client()?,
        base: cp.handle.url(),
        secret: cp.operator_secret.clone(),
    });
    let post = reqwest::Method::POST;
    api.ok(post.clone(), "/v1/tenants", Some(json!({"name": "bench"})))
        .await?;
    api.ok(
        post.clone(),
        "/v1/tenants/bench/namespaces",
        Some(json!({"name": "scale"})),
    )
    .await?;
    for id in 1..=brokers {
        let port = 20_000 + 2 * id;
        let body = json!({
            "id": id,
            "client_addr": format!("127.0.0.1:{port}"),
            "raft_addr": format!("127.0.0.1:{}", port + 1),
            "zone": format!("z{}", id % 3),
        });
        api.ok(post.clone(), "/v1/brokers", Some(body)).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Heartbeats, as each broker's follow loop sends them.
    let beats = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let beat_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 1..=brokers {
        let (api, stop, beats, errors) = (api.clone(), stop.clone(), beats.clone(), beat_errors.clone());
        tasks.push(tokio::spawn(async move {
            // Spread over the interval, as brokers started at different times.
            tokio::time::sleep(Duration::from_millis(
                heartbeat_ms * u64::from(id) / u64::from(brokers),
            ))
            .await;
            let mut tick = tokio::time::interval(Duration::from_millis(heartbeat_ms));
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let t = Instant::now();
                let path = format!("/v1/brokers/{id}/heartbeat");
                match api.call(reqwest::Method::POST, &path, Some(json!({}))).await {
                    Ok((200, _)) => {
                        let us = t.elapsed().as_micros() as u64;
                        let _ = beats.lock().expect("beats lock").record(us.max(1));
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // A follower of the feed: when each stream's definition reached it.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let follower = {
        let (api, stop, seen) = (api.clone(), stop.clone(), seen.clone());
        tokio::spawn(async move {
            let snapshot = api.ok(reqwest::Method::GET, "/v1/feed/snapshot", None).await?;
            let v: Value = serde_json::from_slice(&snapshot)?;
            let mut version = v["version"].as_u64().context("a snapshot version")?;
            while !stop.load(Ordering::Acquire) {
                let path = format!("/v1/feed/changes?since={version}&wait_ms=1000");
                let b = api.ok(reqwest::Method::GET, &path, None).await?;
                let now = Instant::now();
                let v: Value = serde_json::from_slice(&b)?;
                version = v["version"].as_u64().context("a feed version")?;
                let mut names = Vec::new();
                if let Some(changes) = v["changes"].as_array() {
                    for c in changes {
                        stream_names(c, &mut names);
                    }
                }
                let mut seen = seen.lock().expect("seen lock");
                for n in names {
                    seen.entry(n).or_insert(now);
                }
            }
            anyhow::Ok(())
        })
    };

    // The streams, one at a time, each create timed.
    let per_bucket = streams.div_ceil(LATENCY_BUCKETS).max(1);
    let mut buckets: Vec<Histogram<u64>> = Vec::new();
    let mut created: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for k in 0..streams {
        if k % per_bucket == 0 {
            buckets.push(Histogram::new(3)?);
        }
        let name = format!("s{k:05}");
        let body = json!({"name": name, "shards": shards, "replication_factor": 3});
        let t = Instant::now();
        api.ok(
            post.clone(),
            "/v1/tenants/bench/namespaces/scale/streams",
            Some(body),
        )
        .await?;
        let done = Instant::now();
        let us = (done - t).as_micros() as u64;
        buckets.last_mut().expect("a bucket").record(us.max(1))?;
        created.insert(name, done);
    }
    let create_secs = started.elapsed().as_secs_f64();
    // Give the follower time to see the last ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("seen lock").len() < created.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads at this size: one stream, and the list of all.
    let mut get_one = Histogram::<u64>::new(3)?;
    let mut list_all = Histogram::<u64>::new(3)?;
    let mut list_bytes = 0;
    for i in 0..20u32 {
        let t = Instant::now();
        let path = format!(
            "/v1/tenants/bench/namespaces/scale/streams/s{:05}",
            (i * 7919) % streams.max(1)
        );
        api.ok(reqwest::Method::GET, &path, None).await?;
        get_one.record((t.elapsed().as_micros() as u64).max(1))?;
        if i < 5 {
            let t = Instant::now();
            let b = api
                .ok(
                    reqwest::Method::GET,
                    "/v1/tenants/bench/namespaces/scale/streams",
                    None,
                )
                .await?;
            list_all.record((t.elapsed().as_micros() as u64).max(1))?;
            list_bytes = b.len();
        }
    }
    let snapshot = api.ok(reqwest::Method::GET, "/v1/feed/snapshot", None).await?;
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    let _ = follower.await;

    let mut lag = Histogram::<u64>::new(3)?;
    let mut missed = 0;
    {
        let seen = seen.lock().expect("seen lock");
        for (name, at) in &created {
            match seen.get(name) {
                Some(s) => lag.record((s.saturating_duration_since(*at).as_micros() as u64).max(1))?,
                None => missed += 1,
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("\n## Control plane: {brokers} brokers heartbeating every {heartbeat_ms} ms, {streams} streams × {shards} shard(s) at RF=3\n");
    println!(
        "Created in {create_secs:.1} s ({:.0} streams/s), one at a time.\n",
        f64::from(streams) / create_secs
    );
    println!("| streams already there | create p50 ms | create p99 ms |");
    println!("|---:|---:|---:|");
    for (i, b) in buckets.iter().enumerate() {
        println!(
            "| {}–{} | {:.2} | {:.2} |",
            i as u32 * per_bucket,
            ((i as u32 + 1) * per_bucket).min(streams),
            ms(b, 0.5),
            ms(b, 0.99)
        );
    }
    let beats = beats.lock().expect("beats lock");
    println!("\n| figure | value |");
    println!("|---|---:|");
    println!(
        "| get one stream p50 / p99 ms | {:.2} / {:.2} |",
        ms(&get_one, 0.5),
        ms(&get_one, 0.99)
    );
    println!(
        "| list all streams p50 ms ({} KiB) | {:.1} |",
        list_bytes / 1024,
        ms(&list_all, 0.5)
    );
    println!(
        "| feed lag behind the API p50 / p99 ms | {:.1} / {:.1} (not seen: {missed}) |",
        ms(&lag, 0.5),
        ms(&lag, 0.99)
    );
    println!(
        "| heartbeat p50 / p99 ms | {:.2} / {:.2} ({} failed) |",
        ms(&beats, 0.5),
        ms(&beats, 0.99),
        beat_errors.load(Ordering::Relaxed)
    );
    println!("| process RSS MiB | {} |", rss_kib() / 1024);
    println!("| feed snapshot KiB | {} |", snapshot.len() / 1024);
    println!("| data directory KiB | {} |", dir_bytes(dir.path()) / 1024);
    println!("\nload average at end {}", crate::cluster::load_average());
    drop(cp);
    Ok(())
}

/// Names of streams `s#####` defined anywhere in a feed change (a
/// stream change names it under `stream`).
fn stream_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(n)) = m.get("stream") {
                if n.len() == 6 && n.starts_with('s') && n[1..].bytes().all(|b| b.is_ascii_digit()) {
                    out.push(n.clone());
                }
            }
            for x in m.values() {
                stream_names(x, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                stream_names(x, out);
            }
        }
        _ => {}
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}
