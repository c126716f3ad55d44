//! `felix-bench peers`: the same workloads against Felix and a peer (NATS
//! JetStream, Redis) in one invocation, each figure printed beside the
//! peer's and their ratio, with the machine's own limits measured in the
//! same run. Peers are started with the scripts of `../shared/peers/`
//! (loopback only); a peer that cannot be started leaves its column empty
//! with the reason, and the Felix figures still print.

mod felix;
mod kafka;
mod limits;
mod load;
mod nats;
mod redis;
mod report;
mod resp;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

pub use load::Figure;
use report::{Row, Table};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Records the replay reads from offset 0.
    #[arg(long, default_value_t = 1_000_000)]
    replay_records: u64,
    /// Messages the queue workload drains.
    #[arg(long, default_value_t = 200_000)]
    queue_records: u64,
    /// Where the markdown table and PNG charts go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The peers' start scripts (default: $FELIX_PEERS_DIR, else
    /// ../shared/peers).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Workloads to run, comma separated: publish, fanout, queue, cache,
    /// redis, kafka, replay, replicated, limits (default: all).
    #[arg(long)]
    only: Option<String>,
    /// A short run (0.5 s per figure, fewer cases, 20,000-record replay):
    /// proves every driver works; its figures are not the published ones.
    #[arg(long)]
    quick: bool,
}

/// What one run measures: the shapes.
pub(crate) struct Plan {
    pub secs: Duration,
    pub producers: Vec<usize>,
    pub sizes: Vec<usize>,
    /// Value sizes of the cache workloads.
    pub cache_sizes: Vec<usize>,
    pub subscribers: Vec<usize>,
    pub consumers: Vec<usize>,
    pub cache_clients: usize,
    pub replay_records: u64,
    pub queue_records: u64,
    pub quick: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let plan = if a.quick {
        Plan {
            secs: Duration::from_millis(500),
            producers: vec![1, 16],
            sizes: vec![256],
            cache_sizes: vec![256],
            subscribers: vec![1, 4],
            consumers: vec![1],
            cache_clients: 8,
            replay_records: 20_000,
            queue_records: 5_000,
            quick: true,
        }
    } else {
        Plan {
            secs: Duration::from_secs_f64(a.seconds),
            producers: vec![1, 16, 64],
            sizes: vec![256, 4096],
            cache_sizes: vec![0, 64, 256, 1024, 4096],
            subscribers: vec![1, 4, 16],
            consumers: vec![1, 4],
            cache_clients: 32,
            replay_records: a.replay_records,
            queue_records: a.queue_records,
            quick: false,
        }
    };
    let only: Option<Vec<String>> = a
        .only
        .as_deref()
        .map(|o| o.split(',').map(|s| s.trim().to_owned()).collect());
    let wants = |w: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == w));
    let peers = PeerScripts::find(a.peers_dir.clone());
    let load_start = load::load_average();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut tables: Vec<Table> = Vec::new();
    if wants("limits") {
        tables.push(limits::run(&plan, &rt)?);
    }
    if wants("publish") {
        tables.push(rt.block_on(publish(&plan, &peers))?);
    }
    if wants("fanout") {
        tables.push(rt.block_on(fanout(&plan, &peers))?);
    }
    if wants("queue") {
        tables.push(rt.block_on(queue(&plan, &peers))?);
    }
    if wants("cache") {
        tables.push(rt.block_on(cache(&plan, &peers))?);
    }
    if wants("redis") {
        tables.push(rt.block_on(resp::run(&plan, &peers))?);
    }
    if wants("kafka") {
        tables.push(rt.block_on(kafka::run(&plan))?);
    }
    if wants("replay") {
        tables.push(rt.block_on(replay(&plan, &peers))?);
    }
    if wants("replicated") {
        tables.push(rt.block_on(replicated(&plan, &peers))?);
    }
    let load_end = load::load_average();
    report::write(&tables, &a.out, &load_start, &load_end, plan.quick)
}

/// The peers' start and stop scripts. A peer started is stopped when this
/// is dropped if the run did not stop it, so a run that fails or panics
/// half-way leaves no server behind.
pub(crate) struct PeerScripts {
    dir: Option<PathBuf>,
    /// `(script, mode)` of every peer started and not yet stopped.
    running: std::sync::Mutex<Vec<(String, String)>>,
}

impl Drop for PeerScripts {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()));
        for (script, mode) in left {
            eprintln!("stopping {script} {mode}, which the run left running");
            self.run_stop(&script, &mode);
        }
    }
}

impl PeerScripts {
    fn find(given: Option<PathBuf>) -> PeerScripts {
        let candidates = given
            .into_iter()
            .chain(std::env::var_os("FELIX_PEERS_DIR").map(PathBuf::from))
            .chain([
                PathBuf::from("../shared/peers"),
                PathBuf::from("/work/shared/peers"),
            ]);
        let dir = candidates.into_iter().find(|d| d.join("nats.sh").exists());
        PeerScripts {
            dir,
            running: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Starts `script` (`nats.sh`, `redis.sh`) in `mode`; its address.
    pub fn start(&self, script: &str, mode: &str) -> Result<String, String> {
        let dir = self
            .dir
            .as_ref()
            .ok_or("no peers scripts (pass --peers-dir or set FELIX_PEERS_DIR)")?;
        // Recorded before it runs: a start that fails half-way may still
        // have left a server.
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((script.to_owned(), mode.to_owned()));
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(dir.join(script)).arg("start");
        if mode != "default" {
            cmd.arg(mode);
        }
        let out = cmd.output().map_err(|e| format!("running {script}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{script} start {mode} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let addr = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(addr)
    }

    pub fn stop(&self, script: &str, mode: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, m)| !(s == script && m == mode));
        self.run_stop(script, mode);
    }

    fn run_stop(&self, script: &str, mode: &str) {
        if let Some(dir) = &self.dir {
            let mut cmd = std::process::Command::new("bash");
            cmd.arg(dir.join(script)).arg("stop");
            if mode != "default" {
                cmd.arg(mode);
            }
            let _ = cmd.output();
        }
    }

    /// The server process `script` started in `mode` (its pid file), for
    /// its CPU per operation.
    pub fn pids(&self, script: &str, mode: &str) -> Vec<u32> {
        let name = script.trim_end_matches(".sh");
        peers_home()
            .and_then(|h| std::fs::read_to_string(h.join(format!("{name}-{mode}/pid"))).ok())
            .and_then(|p| p.trim().parse().ok())
            .into_iter()
            .collect()
    }

    /// The nats-server binary the script installed, for a cluster.
    pub fn nats_server(&self) -> Option<PathBuf> {
        let bin = peers_home()?.join("venv/bin/nats-server");
        bin.exists().then_some(bin)
    }
}

/// Where the peers' scripts install servers and keep their pid files.
fn peers_home() -> Option<PathBuf> {
    std::env::var_os("FELIX_PEERS_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/felix-peers")))
}

/// One plain broker whose file has `door(addr)` added, `addr` a free
/// loopback port for the door it configures: the broker, the door's
/// address and the directory they live in.
pub(crate) fn broker_with_door(
    door: impl FnOnce(&str) -> String,
) -> anyhow::Result<(felix_cli::devcluster::LocalBrokers, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    // A free port for the door: the broker's file must name it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let brokers = felix_cli::devcluster::LocalBrokers::spawn(
        crate::RUN_BROKER,
        dir.path(),
        "127.0.0.1:0".parse()?,
        1,
        &door(&addr),
        false,
    )?;
    Ok((brokers, addr, dir))
}

/// A peer's figure, or why there is none.
type PeerFigure = Result<Figure, String>;

/// A peer's figure from `f`, counting the CPU of the processes `pids`.
async fn peer_or<F: std::future::Future<Output = anyhow::Result<Figure>>>(
    addr: &Result<String, String>,
    pids: Vec<u32>,
    f: impl FnOnce(String) -> F,
) -> PeerFigure {
    load::watch(pids);
    match addr {
        Ok(a) => f(a.clone()).await.map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.clone()),
    }
}

async fn publish(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "publish",
        "Durable publish, acks awaited (each producer sends one record, awaits its ack, repeats)",
        "msg/s",
    );
    for (felix_mode, nats_mode) in [("always", "always"), ("interval:10", "default")] {
        let addr = peers.start("nats.sh", nats_mode);
        let felix = felix::Single::start(felix_mode).await?;
        for &size in &plan.sizes {
            for &n in &plan.producers {
                eprintln!("publish {felix_mode} {size} B x{n}");
                load::watch(felix.pids());
                let f = felix.publish(n, size, plan.secs).await?;
                let p = peer_or(&addr, peers.pids("nats.sh", nats_mode), |a| {
                    nats::publish(a, n, size, plan.secs)
                })
                .await;
                let target = match (felix_mode, size, n) {
                    ("always", 256, 64) => Some(10.0),
                    ("interval:10", 256, _) => Some(1.5),
                    _ => None,
                };
                t.push(Row::new(
                    format!("{size} B, {n} producers"),
                    format!("Felix `{felix_mode}`"),
                    format!(
                        "NATS {}",
                        if nats_mode == "always" {
                            "`sync_interval: always`"
                        } else {
                            "default"
                        }
                    ),
                    f,
                    p,
                    target,
                ));
            }
        }
        felix.stop().await;
        peers.stop("nats.sh", nats_mode);
    }
    Ok(t)
}

/// Records a second of the paced fan-out: the rate at which the reference
/// measured its publish-to-deliver latency.
const PACED_PER_SEC: u32 = 10_000;

async fn fanout(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "fanout",
        "Fan-out: one publisher (64 records awaiting acks), N subscribers from the tail; deliveries/s over all subscribers, latency publish→deliver",
        "deliveries/s",
    );
    let addr = peers.start("nats.sh", "default");
    let felix = felix::Single::start("interval:10").await?;
    for &k in &plan.subscribers {
        eprintln!("fanout x{k}");
        load::watch(felix.pids());
        let f = felix.fanout(k, 256, plan.secs, None).await?;
        let p = peer_or(&addr, peers.pids("nats.sh", "default"), |a| {
            nats::fanout(a, k, 256, plan.secs, None)
        })
        .await;
        t.push(Row::new(
            format!("256 B, {k} subscribers"),
            "Felix `interval:10`".into(),
            "NATS default".into(),
            f,
            p,
            Some(1.5),
        ));
    }
    // The latency the reference promises: a publisher paced well below
    // either system's limit, so the figure is the path, not a queue.
    eprintln!("fanout x1 paced {PACED_PER_SEC}/s");
    load::watch(felix.pids());
    let f = felix.fanout(1, 256, plan.secs, Some(PACED_PER_SEC)).await?;
    let p = peer_or(&addr, peers.pids("nats.sh", "default"), |a| {
        nats::fanout(a, 1, 256, plan.secs, Some(PACED_PER_SEC))
    })
    .await;
    t.push(Row::new(
        format!("256 B, 1 subscriber, paced at {PACED_PER_SEC} records/s (latency target: p50 ≤ 150 µs, p99 ≤ 1 ms)"),
        "Felix `interval:10`".into(),
        "NATS default".into(),
        f,
        p,
        None,
    ));
    felix.stop().await;
    peers.stop("nats.sh", "default");
    Ok(t)
}

async fn queue(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "queue",
        "Queue: one group drains the records, batches of 100 leased and explicitly acked",
        "msg/s",
    );
    let addr = peers.start("nats.sh", "default");
    let felix = felix::Single::start("interval:10").await?;
    for &c in &plan.consumers {
        eprintln!("queue x{c}");
        load::watch(felix.pids());
        let f = felix.queue(c, 256, plan.queue_records).await?;
        let p = peer_or(&addr, peers.pids("nats.sh", "default"), |a| {
            nats::queue(a, c, 256, plan.queue_records)
        })
        .await;
        t.push(Row::new(
            format!("{} records of 256 B, {c} consumers", plan.queue_records),
            "Felix `interval:10`".into(),
            "NATS default (work queue)".into(),
            f,
            p,
            None,
        ));
    }
    felix.stop().await;
    peers.stop("nats.sh", "default");
    Ok(t)
}

async fn cache(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "cache",
        "Cache: clients each doing one operation at a time over a key space of 10,000",
        "ops/s",
    );
    for (felix_mode, redis_mode, label) in [
        ("none", "default", "Redis, no persistence"),
        ("always", "always", "Redis AOF `appendfsync always`"),
    ] {
        let addr = peers.start("redis.sh", redis_mode);
        let felix = felix::Single::start(felix_mode).await?;
        for &size in &plan.cache_sizes {
            for op in [load::CacheOp::Put, load::CacheOp::Get, load::CacheOp::GetMiss] {
                let n = plan.cache_clients;
                eprintln!("cache {felix_mode} {op:?} {size} B x{n}");
                load::watch(felix.pids());
                let f = felix.cache(op, n, size, plan.secs).await?;
                let p = peer_or(&addr, peers.pids("redis.sh", redis_mode), |a| {
                    redis::cache(a, op, n, size, plan.secs)
                })
                .await;
                t.push(Row::new(
                    format!("{op:?} {size} B, {n} clients"),
                    format!("Felix `{felix_mode}`"),
                    label.into(),
                    f,
                    p,
                    Some(1.0),
                ));
            }
        }
        felix.stop().await;
        peers.stop("redis.sh", redis_mode);
    }
    Ok(t)
}

async fn replay(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "replay",
        "Replay: one subscriber reads every record from offset 0",
        "records/s",
    );
    let addr = peers.start("nats.sh", "default");
    let felix = felix::Single::start("interval:10").await?;
    let n = plan.replay_records;
    eprintln!("replay {n}");
    load::watch(felix.pids());
    let f = felix.replay(n, 256).await?;
    let p = peer_or(&addr, peers.pids("nats.sh", "default"), |a| {
        nats::replay(a, n, 256)
    })
    .await;
    t.push(Row::new(
        format!("{n} records of 256 B"),
        "Felix".into(),
        "NATS (ordered consumer)".into(),
        f,
        p,
        None,
    ));
    felix.stop().await;
    peers.stop("nats.sh", "default");
    Ok(t)
}

async fn replicated(plan: &Plan, peers: &PeerScripts) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "replicated",
        "Replicated publish, acks awaited: three Felix brokers (RF=3, a quorum holds each record) vs a three-node NATS JetStream cluster (R3), all on loopback",
        "msg/s",
    );
    // The script installs the server; the cluster is this benchmark's.
    let installed = peers.start("nats.sh", "default").map(|_| ());
    peers.stop("nats.sh", "default");
    // `always` is Felix's durable promise, met by NATS with
    // `sync_interval: always`; NATS R3 by default acknowledges once a quorum
    // holds the message in memory, which `interval:10` matches.
    for (mode, sync_always, label, target) in [
        ("always", true, "NATS R3 `sync_interval: always`", 2.0),
        ("interval:10", false, "NATS R3 default", 1.0),
    ] {
        let cluster = match (&installed, peers.nats_server()) {
            (Ok(()), Some(bin)) => nats::Cluster::start(&bin, sync_always)
                .await
                .map_err(|e| format!("{e:#}")),
            (Err(e), _) => Err(e.clone()),
            (Ok(()), None) => Err("nats-server is not installed where nats.sh puts it".into()),
        };
        let felix = felix::Replicated::start(mode).await?;
        for &n in &plan.producers {
            eprintln!("replicated {mode} x{n}");
            load::watch(felix.pids());
            let f = felix.publish(n, 256, plan.secs).await?;
            let p = match &cluster {
                Ok(c) => {
                    load::watch(c.pids());
                    nats::publish_r3(c, n, 256, plan.secs)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
                Err(e) => Err(e.clone()),
            };
            t.push(Row::new(
                format!("256 B, {n} producers"),
                format!("Felix RF=3 `{mode}`"),
                label.into(),
                f,
                p,
                (n == 64).then_some(target),
            ));
        }
        felix.stop().await;
        if let Ok(c) = cluster {
            c.stop();
        }
    }
    Ok(t)
}
