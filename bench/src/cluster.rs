//! The replication benchmark: quorum publish throughput and latency on a
//! three-broker cluster (RF=3) beside one plain broker (RF=1) in the same
//! run, durability `always` and `none`, 1 / 16 / 64 producers, 256 B
//! records; then the failover time: how long writes to a shard stop when
//! its leader is SIGKILLed. Brokers are separate `felix broker` processes on
//! loopback, as a user runs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args as ClapArgs;
use felix_client::producer::{ProducerConfig, ProducerRecord};
use felix_client::transport::ClientTls;
use felix_client::wire::{Message, StreamConfig};
use felix_client::{Client, ClientConfig, Route};
use hdrhistogram::Histogram;

use felix_cli::devcluster::LocalBrokers;

use crate::measure::{hist, join_workers};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Producer counts, comma separated.
    #[arg(long, default_value = "1,16,64")]
    producers: String,
    /// Records each producer may have awaiting acknowledgement, comma
    /// separated (1: one request at a time).
    #[arg(long, default_value = "1,16")]
    windows: String,
    /// Leader kills for the failover figure.
    #[arg(long, default_value_t = 3)]
    failovers: u32,
    /// Shards per benchmark stream (leaders spread over the brokers).
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Shards of the idle figure (CPU of brokers hosting them, no traffic).
    #[arg(long, default_value_t = 100)]
    idle_shards: u32,
    /// A short run: 0.5 s per figure, producers 1 and 16, one failover.
    #[arg(long)]
    quick: bool,
    /// Only the idle figure (CPU, memory, threads and disk of brokers
    /// hosting `--idle-shards` shards with no traffic).
    #[arg(long)]
    idle_only: bool,
}

/// Bytes per record, the shape.
const RECORD_BYTES: usize = 256;
/// Longest wait for a cluster to elect leaders and take a stream.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

pub fn run(a: Args) -> anyhow::Result<()> {
    let secs = Duration::from_secs_f64(if a.quick { 0.5 } else { a.seconds });
    let producers: Vec<usize> = if a.quick {
        vec![1, 16]
    } else {
        a.producers
            .split(',')
            .map(|p| p.trim().parse().context("--producers takes numbers"))
            .collect::<anyhow::Result<_>>()?
    };
    let windows: Vec<usize> = a
        .windows
        .split(',')
        .map(|w| match w.trim().parse() {
            Ok(w) if w >= 1 => Ok(w),
            _ => anyhow::bail!("--windows takes numbers of at least 1"),
        })
        .collect::<anyhow::Result<_>>()?;
    let failovers = if a.quick { a.failovers.min(1) } else { a.failovers };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if a.idle_only {
        return rt.block_on(idle(a.idle_shards, if a.quick { 2.0 } else { 10.0 }));
    }
    rt.block_on(bench(
        a.idle_shards,
        if a.quick { 2.0 } else { 10.0 },
        secs,
        &producers,
        &windows,
        failovers,
        a.shards,
    ))
}

struct Row {
    rf: u32,
    durability: &'static str,
    producers: usize,
    window: usize,
    msgs_s: f64,
    errors: u64,
    hist: Histogram<u64>,
}

pub(crate) fn client_config(brokers: &LocalBrokers) -> anyhow::Result<ClientConfig> {
    let addrs = brokers.client_addresses();
    let mut c = ClientConfig::new(addrs[0].clone(), ClientTls::from_pem_files(&brokers.ca, None)?);
    c.brokers = addrs;
    c.connections_per_broker = 2;
    c.connect_timeout_ms = 1_000;
    c.request_timeout_ms = 10_000;
    Ok(c)
}

/// Connects once the brokers answer and creates `name`, retrying while
/// the cluster elects its metadata leader.
pub(crate) async fn ready_stream(
    brokers: &LocalBrokers,
    name: &str,
    durability: &str,
    shards: u32,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    let client = loop {
        match Client::connect(client_config(brokers)?).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("connecting to the benchmark brokers"),
        }
    };
    let create = Message::StreamCreate(StreamConfig::stream(name, shards, durability.parse()?));
    let mut tried = false;
    loop {
        match client.call(Route::Any, &create).await {
            Ok(Message::Done) => break,
            // An earlier try created it and its answer was lost (a
            // control plane busy with thousands of groups answers late).
            Err(felix_client::ClientError::Broker(felix_client::wire::ErrorReply::InvalidRequest(m)))
                if tried && m.ends_with("exists") =>
            {
                break
            }
            r if Instant::now() < deadline => {
                tried = true;
                let _ = r;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => anyhow::bail!("creating {name}: {r:?}"),
        }
    }
    // Every shard has a leader before the clock starts.
    loop {
        client.refresh_metadata(&[name.to_owned()]).await.ok();
        let mut leaderless = None;
        if let Ok(info) = client.stream_info(name).await {
            let n = info.shards.iter().filter(|s| s.leader.is_none()).count();
            if n == 0 {
                return Ok(client);
            }
            leaderless = Some(n);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: {} of {shards} shards without a leader after {READY_WAIT_MAX:?}",
            leaderless.map_or("all".to_owned(), |n| n.to_string())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` producers for `secs`, each with up to `window` records awaiting
/// their acknowledgement (1: closed loop, one record per request; more: the
/// producer batches what accumulates, with its default linger).
async fn publish(
    client: &Client,
    stream: &str,
    n: usize,
    window: usize,
    secs: Duration,
) -> anyhow::Result<(f64, u64, Histogram<u64>)> {
    let value = Bytes::from(vec![b'v'; RECORD_BYTES]);
    let cfg = match window {
        1 => ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        },
        _ => ProducerConfig::default(),
    };
    let mut tasks = Vec::new();
    let start = Instant::now();
    let end = start + secs;
    for _ in 0..n {
        let p = client.producer(stream, cfg.clone()).await?;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut errors = 0u64;
            let mut pending = std::collections::VecDeque::with_capacity(window);
            let mut settle = |ok: bool, t: Instant, h: &mut Histogram<u64>| match ok {
                true => h.record(t.elapsed().as_nanos() as u64).expect("in bounds"),
                false => errors += 1,
            };
            while Instant::now() < end {
                if pending.len() == window {
                    let (t, ack): (Instant, felix_client::PendingAck) = pending.pop_front().expect("full");
                    settle(ack.wait().await.is_ok(), t, &mut h);
                }
                let t = Instant::now();
                match p.send(ProducerRecord::new(value.clone())).await {
                    Ok(ack) => pending.push_back((t, ack)),
                    Err(_) => settle(false, t, &mut h),
                }
            }
            for (t, ack) in pending {
                settle(ack.wait().await.is_ok(), t, &mut h);
            }
            let _ = p.close().await;
            (h, errors)
        }));
    }
    let (all, errors) = join_workers(tasks).await?;
    let took = start.elapsed().as_secs_f64();
    Ok((all.len() as f64 / took, errors, all))
}

async fn bench(
    idle_shards: u32,
    idle_secs: f64,
    secs: Duration,
    producers: &[usize],
    windows: &[usize],
    failovers: u32,
    shards: u32,
) -> anyhow::Result<()> {
    let load_start = load_average();
    let mut rows = Vec::new();
    for (rf, replicated) in [(1u32, false), (3, true)] {
        let dir = tempfile::tempdir()?;
        let (brokers, _cp) = brokers_on_loopback(dir.path(), rf, replicated, &format!("rf{rf}")).await?;
        for durability in ["always", "none"] {
            let stream = format!("bench/rf{rf}/{durability}");
            let client = ready_stream(&brokers, &stream, durability, shards).await?;
            for &window in windows {
                for &n in producers {
                    let (msgs_s, errors, hist) = publish(&client, &stream, n, window, secs).await?;
                    eprintln!("rf={rf} {durability} producers={n} window={window}: {msgs_s:.0} msg/s");
                    rows.push(Row {
                        rf,
                        durability,
                        producers: n,
                        window,
                        msgs_s,
                        errors,
                        hist,
                    });
                }
            }
            client.close().await;
        }
    }
    println!(
        "## Quorum publish, {RECORD_BYTES} B records, {shards} shards; window = records awaiting acks per producer\n"
    );
    println!("| RF | durability | producers | window | msg/s | p50 ms | p99 ms | errors | RF=3 / RF=1 |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let q = |p: f64| r.hist.value_at_quantile(p) as f64 / 1e6;
        let ratio = match r.rf {
            3 => rows
                .iter()
                .find(|o| {
                    o.rf == 1
                        && o.durability == r.durability
                        && o.producers == r.producers
                        && o.window == r.window
                })
                .map_or("".into(), |o| format!("{:.2}", r.msgs_s / o.msgs_s)),
            _ => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.rf,
            r.durability,
            r.producers,
            r.window,
            r.msgs_s,
            q(0.5),
            q(0.99),
            r.errors,
            ratio
        );
    }
    println!();
    failover(failovers).await?;
    idle(idle_shards, idle_secs).await?;
    println!("\nload average at start {load_start}, at end {}", load_average());
    Ok(())
}

/// Kills the leader of shard 0 while producers write to it, and reports
/// how long no write to that shard was acknowledged.
async fn failover(rounds: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The brokers' logs (level from FELIX_LOG, which they inherit) outlive
    // the run, failed or not, when FELIX_BENCH_KEEP is set.
    let (_removed_at_end, dir) = match std::env::var_os("FELIX_BENCH_KEEP") {
        Some(_) => {
            let kept = dir.keep();
            eprintln!("failover brokers' directories kept in {}", kept.display());
            (None, kept)
        }
        None => {
            let path = dir.path().to_owned();
            (Some(dir), path)
        }
    };
    let OnLoopback {
        mut brokers, cp: _cp, ..
    } = cluster_on_loopback(&dir, 3, "", &["failover"]).await?;
    let stream = "bench/failover/always";
    let client = ready_stream(&brokers, stream, "always", 3).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // The instant of every acknowledgement, in order.
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let p = client
            .producer(
                stream,
                ProducerConfig {
                    linger_ms: 0,
                    ..ProducerConfig::default()
                },
            )
            .await?;
        let (stop, acks, last_error) = (stop.clone(), acks.clone(), last_error.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let r = ProducerRecord {
                    shard: Some(0),
                    ..ProducerRecord::new(vec![b'f'; RECORD_BYTES])
                };
                match p.send_wait(r).await {
                    Ok(_) => acks.lock().expect("acks lock").push(Instant::now()),
                    Err(e) => *last_error.lock().expect("error lock") = Some(e.to_string()),
                }
            }
        }));
    }
    let mut gaps = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = shard0_leader(&client, stream).await?;
        let i = brokers
            .members
            .iter()
            .position(|m| m.id == leader)
            .context("leader is not a benchmark broker")?;
        let killed = Instant::now();
        brokers.kill(i);
        let survivors: Vec<String> = (0..brokers.members.len())
            .filter(|j| *j != i)
            .map(|j| brokers.members[j].client.to_string())
            .collect();
        let elected = tokio::spawn(new_leader_named(
            client.clone(),
            survivors,
            stream.to_owned(),
            leader,
        ));
        // Answers already on their way when the leader died can land
        // just after the kill; the outage is the longest silence between
        // two acknowledgements around it, once writes flow again.
        let deadline = killed + Duration::from_secs(30);
        let gap = loop {
            let mut after: Vec<Instant> = acks
                .lock()
                .expect("acks lock")
                .iter()
                .copied()
                .filter(|t| *t + Duration::from_millis(500) > killed)
                .collect();
            after.sort();
            let resumed = after.iter().filter(|t| **t > killed).count() >= 50;
            if resumed {
                break after.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "writes did not resume 30 s after the kill; last error: {:?}",
                last_error.lock().expect("error lock")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!(
            "failover {round}: no write acknowledged for {gap:?} around the SIGKILL of broker {leader}"
        );
        let elected = elected.await??.duration_since(killed);
        gaps.push((elected, gap));
        brokers.restart(i)?;
        // The next kill waits until this broker is back in the group (it
        // knows the leader again): a failover, not a double fault.
        rejoined(&client, &brokers.members[i].client.to_string(), stream).await?;
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    client.close().await;
    println!("## Failover: SIGKILL of shard 0's leader under 4 producers, RF=3, `always`\n");
    println!(
        "| round | a survivor names a new leader after, ms | longest time without an acknowledgement, ms |"
    );
    println!("|---:|---:|---:|");
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    for (i, (e, g)) in gaps.iter().enumerate() {
        println!("| {i} | {:.0} | {:.0} |", ms(e), ms(g));
    }
    if let (Some(e), Some(g)) = (gaps.iter().map(|x| x.0).max(), gaps.iter().map(|x| x.1).max()) {
        println!("| max | {:.0} | {:.0} |", ms(&e), ms(&g));
    }
    Ok(())
}

/// `n` brokers on loopback: a cluster following a control plane in this
/// process (returned, to be kept as long as the brokers) whose tenant
/// `bench` has `namespace`, or (`replicated: false`, `n` = 1) one plain
/// broker, the RF=1 baseline.
pub(crate) async fn brokers_on_loopback(
    dir: &std::path::Path,
    n: u32,
    replicated: bool,
    namespace: &str,
) -> anyhow::Result<(LocalBrokers, Option<felix_cli::embedded::Embedded>)> {
    if replicated {
        let c = cluster_on_loopback(dir, n, "", &[namespace]).await?;
        return Ok((c.brokers, Some(c.cp)));
    }
    let b = LocalBrokers::spawn(crate::RUN_BROKER, dir, "127.0.0.1:0".parse()?, n, "", false)?;
    Ok((b, None))
}

/// Broker processes of one cluster and the control plane they follow.
pub(crate) struct OnLoopback {
    pub brokers: LocalBrokers,
    pub cp: felix_cli::embedded::Embedded,
    /// What each broker's file says of the control plane (for one added).
    pub follow: String,
}

/// `n` broker processes of one cluster on loopback ports (`extra` in each
/// broker's file) following a control plane in this process, which holds
/// the tenant `bench` with `namespaces` (streams `bench/NAMESPACE/…`) and
/// requires no tokens of clients.
pub(crate) async fn cluster_on_loopback(
    dir: &std::path::Path,
    n: u32,
    extra: &str,
    namespaces: &[&str],
) -> anyhow::Result<OnLoopback> {
    // The brokers' development CA (under `cluster/`) issues the control
    // plane's certificate too.
    let cp = felix_cli::embedded::start(dir, "127.0.0.1:0".parse()?, &dir.join("cluster")).await?;
    let api = cp.handle.url();
    let http = cp.api_client()?;
    let bodies = std::iter::once(("/v1/tenants".to_owned(), serde_json::json!({"name": "bench"}))).chain(
        namespaces.iter().map(|ns| {
            (
                "/v1/tenants/bench/namespaces".to_owned(),
                serde_json::json!({"name": ns}),
            )
        }),
    );
    for (path, body) in bodies {
        let r = http
            .post(format!("{api}{path}"))
            .bearer_auth(&cp.operator_secret)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.text().await?);
    }
    // Clients bring no tokens here, so brokers create streams for them
    // as the operator: they get the operator's credential.
    let follow = format!(
        "[controlplane]\nurls = {:?}\nsecret = {:?}\nrequire_tokens = false\n{}",
        cp.link.urls,
        cp.operator_secret,
        felix_cli::devcluster::ca_line(cp.link.ca.as_deref())
    );
    let brokers = LocalBrokers::spawn(
        crate::RUN_BROKER,
        dir,
        "127.0.0.1:0".parse()?,
        n,
        &format!("{extra}\n{follow}"),
        true,
    )?;
    Ok(OnLoopback { brokers, cp, follow })
}

/// CPU time of process `pid` so far (user + system), from /proc.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// CPU, memory, threads and disk of three brokers hosting `shards` idle
/// shards (one stream, default segment size), each broker leading about a
/// third: what an idle replica costs.
async fn idle(shards: u32, secs: f64) -> anyhow::Result<()> {
    let mut dir = tempfile::tempdir()?;
    // The brokers' logs and data, kept to look into a failed run.
    if std::env::var_os("FELIX_BENCH_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    let OnLoopback { brokers, cp: _cp, .. } = cluster_on_loopback(dir.path(), 3, "", &["idle"]).await?;
    // A stream has at most 1,024 shards: more are spread over streams.
    let names = idle_streams(shards);
    for (name, n) in &names {
        let t = Instant::now();
        let client = ready_stream(&brokers, name, "always", *n).await?;
        println!(
            "{name}: {n} shards created, each with a leader, in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        client.close().await;
        if names.len() > 1 {
            // A new group heartbeats until it goes quiet; the next
            // thousand are created once these are.
            tokio::time::sleep(Duration::from_millis(
                1_000 + felix_replication::quiesce::QUIESCE_AFTER_MS,
            ))
            .await;
        }
    }
    // Let elections and connections settle, and idle groups go quiet,
    // before measuring.
    tokio::time::sleep(Duration::from_millis(
        3_000 + felix_replication::quiesce::QUIESCE_AFTER_MS,
    ))
    .await;
    settled(&brokers, &names).await?;
    let pids: Vec<u32> = brokers.children.iter().flatten().map(|c| c.id()).collect();
    let before = pids
        .iter()
        .map(|p| cpu_time(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let wall = t.elapsed().as_secs_f64();
    let after = pids
        .iter()
        .map(|p| cpu_time(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("\n## Idle: {shards} shards (RF=3) on 3 brokers, no traffic, {secs:.0} s\n");
    println!(
        "| broker | CPU % of one core | RSS MiB | RSS KiB per replica | threads | disk KiB per replica |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pids[i]))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let rss_kib = field("VmRSS:");
        let shards_dir = dir.path().join(format!("broker{}", i + 1)).join("shards");
        let (replicas, disk) = disk_per_replica(&shards_dir);
        let per = |v: u64| v.checked_div(replicas).unwrap_or(0);
        println!(
            "| {} | {:.1} | {} | {} | {} | {} |",
            i + 1,
            (*a - *b).as_secs_f64() / wall * 100.0,
            rss_kib / 1024,
            per(rss_kib),
            field("Threads:"),
            per(disk / 1024),
        );
    }
    let mut brokers = brokers;
    restart_figures(&mut brokers, &names).await?;
    failover_figure(&mut brokers, &names).await
}

/// Waits until the leaders the brokers name stop changing: the control
/// plane balances leaderships a few hand-overs at a time after streams
/// are created, and an idle figure taken meanwhile measures elections.
/// Leaders unchanged over three polls two seconds apart, or 180 s.
async fn settled(brokers: &LocalBrokers, streams: &[(String, u32)]) -> anyhow::Result<()> {
    let client = Client::connect(client_config(brokers)?).await?;
    let ask = Message::Metadata {
        streams: streams.iter().map(|(name, _)| name.clone()).collect(),
    };
    let t = Instant::now();
    let (mut last, mut same) = (Vec::new(), 0);
    while same < 3 && t.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now: Vec<Option<u64>> = match client.call(Route::Any, &ask).await {
            Ok(Message::MetadataReply { streams, .. }) => {
                streams.iter().flat_map(|s| &s.shards).map(|s| s.leader).collect()
            }
            _ => Vec::new(),
        };
        same = if !now.is_empty() && now == last {
            same + 1
        } else {
            0
        };
        last = now;
    }
    client.close().await;
    println!(
        "leaders settled (unchanged over 3 polls) {:.0} s after the last creation",
        t.elapsed().as_secs_f64() + 3.0 + felix_replication::quiesce::QUIESCE_AFTER_MS as f64 / 1e3
    );
    Ok(())
}

/// The streams (name, shards) that hold `shards` idle shards.
fn idle_streams(shards: u32) -> Vec<(String, u32)> {
    const PER_STREAM_MAX: u32 = 1024;
    (0..shards.div_ceil(PER_STREAM_MAX))
        .map(|i| {
            let n = (shards - i * PER_STREAM_MAX).min(PER_STREAM_MAX);
            let name = if i == 0 {
                "bench/idle/shards".to_owned()
            } else {
                format!("bench/idle/shards-{i}")
            };
            (name, n)
        })
        .collect()
}

/// SIGTERMs broker 3 of an idle cluster (it hands every leadership over
/// first) and starts it again: how long each takes, the second until the
/// broker names a leader for every shard of the stream.
async fn restart_figures(brokers: &mut LocalBrokers, streams: &[(String, u32)]) -> anyhow::Result<()> {
    let shards: u32 = streams.iter().map(|(_, n)| n).sum();
    let i = 2;
    let child = brokers.children[i].as_mut().context("broker 3 runs")?;
    // SAFETY: kill(2) with a child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "broker 3 did not stop within 120 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = t.elapsed();
    brokers.restart(i)?;
    let t = Instant::now();
    let address = brokers.members[i].client.to_string();
    let client = Client::connect(client_config(brokers)?).await?;
    let ask = Message::Metadata {
        streams: streams.iter().map(|(name, _)| name.clone()).collect(),
    };
    let deadline = t + Duration::from_secs(300);
    // The curve, a line a second: a step means start-up, a slope waking.
    let mut shown = Duration::ZERO;
    loop {
        let led = match client.call(Route::Broker(&address), &ask).await {
            Ok(Message::MetadataReply { streams, .. }) => streams
                .iter()
                .flat_map(|s| &s.shards)
                .filter(|s| s.leader.is_some())
                .count(),
            _ => 0,
        };
        if led == shards as usize {
            break;
        }
        if t.elapsed() >= shown + Duration::from_secs(1) {
            shown = t.elapsed();
            println!(
                "  {:.1} s after the restart: {led} of {shards} shards name a leader",
                shown.as_secs_f64()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted broker named leaders for {led} of {shards} shards after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serving = t.elapsed();
    client.close().await;
    println!(
        "\nBroker 3: SIGTERM to exit (leaderships handed over) {:.1} s; restart to naming a leader for all {shards} shards {:.1} s.",
        stopped.as_secs_f64(),
        serving.as_secs_f64()
    );
    Ok(())
}

/// SIGKILLs broker 1 of the idle cluster and times how long until both
/// other brokers name a live leader for every shard: the elections of every
/// group it led (its beats stop, so its quiet groups' followers stand too).
async fn failover_figure(brokers: &mut LocalBrokers, streams: &[(String, u32)]) -> anyhow::Result<()> {
    let shards: u32 = streams.iter().map(|(_, n)| n).sum();
    let client = Client::connect(client_config(brokers)?).await?;
    let ask = Message::Metadata {
        streams: streams.iter().map(|(name, _)| name.clone()).collect(),
    };
    let survivors: Vec<String> = brokers.members[1..]
        .iter()
        .map(|m| m.client.to_string())
        .collect();
    // Leaders as each survivor names them; None when a survivor cannot say.
    let leaders = |reply: anyhow::Result<Message>| -> Option<Vec<Option<u64>>> {
        match reply {
            Ok(Message::MetadataReply { streams, .. }) => {
                Some(streams.iter().flat_map(|s| &s.shards).map(|s| s.leader).collect())
            }
            _ => None,
        }
    };
    let before = leaders(
        client
            .call(Route::Broker(&survivors[0]), &ask)
            .await
            .map_err(Into::into),
    )
    .context("broker 2 answers before the kill")?;
    let killed = brokers.members[0].id;
    let led = before.iter().filter(|l| **l == Some(killed)).count();
    let child = brokers.children[0].as_mut().context("broker 1 runs")?;
    child.kill()?;
    child.wait()?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    let mut shown = Duration::ZERO;
    loop {
        let mut live = usize::MAX;
        for at in &survivors {
            let n = leaders(client.call(Route::Broker(at), &ask).await.map_err(Into::into)).map_or(0, |ls| {
                ls.iter().filter(|l| l.is_some_and(|b| b != killed)).count()
            });
            live = live.min(n);
        }
        if live == shards as usize {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "300 s after broker 1 was killed, {live} of {shards} shards had a live leader"
        );
        if t.elapsed() >= shown + Duration::from_secs(1) {
            shown = t.elapsed();
            println!(
                "  {:.1} s after the kill: {live} of {shards} shards name a live leader on both survivors",
                shown.as_secs_f64()
            );
        }
        // Each answer names every shard's leader: asked less often than
        // the restart's one broker, so the watching slows the survivors'
        // elections less.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elected = t.elapsed();
    client.close().await;
    println!(
        "\nBroker 1 (leading {led} of {shards} shards) SIGKILLed: every shard named a live leader on both other brokers after {:.1} s.",
        elected.as_secs_f64()
    );
    Ok(())
}

/// The replicas under a broker's `shards` directory, and the bytes their
/// files hold on disk (allocated blocks, not lengths).
fn disk_per_replica(shards: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if !m.is_dir() {
            return m.blocks() * 512;
        }
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
            .unwrap_or(0)
    }
    let replicas = std::fs::read_dir(shards).map_or(0, |d| d.count() as u64);
    (replicas, walk(shards))
}

/// The leader of `stream`'s shard 0 as the broker at `address` sees it
/// (`None` when it names none or does not answer).
async fn shard0_leader_at(client: &Client, address: &str, stream: &str) -> Option<u64> {
    let ask = Message::Metadata {
        streams: vec![stream.to_owned()],
    };
    match client.call(Route::Broker(address), &ask).await {
        Ok(Message::MetadataReply { streams, .. }) => streams
            .iter()
            .flat_map(|s| &s.shards)
            .find(|s| s.shard == 0)
            .and_then(|s| s.leader),
        _ => None,
    }
}

/// When one of `survivors` first names a leader of `stream`'s shard 0
/// other than `dead`: the election's end as the cluster sees it.
async fn new_leader_named(
    client: Client,
    survivors: Vec<String>,
    stream: String,
    dead: u64,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        for a in &survivors {
            if shard0_leader_at(&client, a, &stream)
                .await
                .is_some_and(|l| l != dead)
            {
                return Ok(Instant::now());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no new leader for shard 0 of {stream}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the broker at `address` names a leader for `stream`'s
/// shard 0.
async fn rejoined(client: &Client, address: &str, stream: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    while shard0_leader_at(client, address, stream).await.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{address} did not rejoin shard 0's group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The leader of `stream`'s shard 0, once the cluster agrees on one.
async fn shard0_leader(client: &Client, stream: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        client.refresh_metadata(&[stream.to_owned()]).await.ok();
        if let Ok(info) = client.stream_info(stream).await {
            if let Some(l) = info.shards.iter().find(|s| s.shard == 0).and_then(|s| s.leader) {
                return Ok(l);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "shard 0 of {stream} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
