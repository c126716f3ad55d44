//! The fault-injection suite: client workloads against a real cluster of
//! broker processes on 127.0.0.1 while a nemesis injects faults; every
//! operation is recorded and the history checked at the end (see
//! `docs/faults.md`).
//!
//! Each test prints its seed; `FELIX_SEED=<seed>` repeats its fault
//! schedule and client choices, and `FELIX_SOAK_SECS=<s>` runs it that
//! long instead of the short default.

#[path = "../common/mod.rs"]
mod common;
mod history;
mod linear;
mod nemesis;
mod workloads;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use felix_client::wire::StreamConfig;
use felix_client::Client;
use felix_log::{Log, LogConfig, Offset};
use rand::{Rng, SeedableRng};

use common::cluster::LocalCluster;
use common::create_when_ready;
use felix_testkit::net::Net;
use history::{Anomalies, CacheHistory, GroupHistory, Outcome, RunClock, StreamHistory, TtlHistory};
use nemesis::{Fault, Nemesis};
use workloads::Ctx;

/// Seconds of faults per test unless `FELIX_SOAK_SECS` says otherwise.
const FAULT_SECS_DEFAULT: u64 = 12;
/// How far apart the clock-skew fault moves clocks (each within ±this).
const SKEW_MS_MAX: u64 = 3_000;
/// The TTL workload's TTL: longer than four skews, so the bound it checks
/// is not vacuous.
const TTL_MS: u64 = 15_000;
const MAX_DELIVERIES: u32 = 3;
/// Small segments, so runs roll them and disk faults can hit sealed ones.
const SEGMENT_BYTES: u64 = 2 << 20;
const BATCH_BYTES_MAX: usize = 256 << 10;
const LEASE_MS: u32 = 1_500;
/// Brokers a run starts with: more than the replication factor, so each
/// shard lives on some of them only and joins and decommissions move
/// replicas.
const BROKERS: u64 = 5;

const STREAM: &str = "dev/default/log";
const JOBS: &str = "dev/default/jobs";
const KV: &str = "dev/default/kv";
const TTL: &str = "dev/default/ttl";

#[derive(Clone, Copy)]
struct Workloads {
    stream: bool,
    group: bool,
    cache: bool,
    ttl: bool,
}

const fn only(stream: bool, group: bool, cache: bool, ttl: bool) -> Workloads {
    Workloads {
        stream,
        group,
        cache,
        ttl,
    }
}

const STREAMS: Workloads = only(true, false, false, false);
const GROUPS: Workloads = only(false, true, false, false);
const CACHE: Workloads = only(false, false, true, false);
const TTLS: Workloads = only(false, false, false, true);
const ALL: Workloads = only(true, true, true, true);

fn seed() -> u64 {
    std::env::var("FELIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

fn fault_secs() -> u64 {
    std::env::var("FELIX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FAULT_SECS_DEFAULT)
}

/// One record as stored: offset, key, value, headers.
type Stored = (u64, Option<String>, String, Vec<(String, String)>);

/// Every shard's records on one stopped broker, by shard directory.
fn stored(data_dir: &Path) -> BTreeMap<String, Vec<Stored>> {
    let mut out = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(data_dir.join("shards")) else {
        return out;
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for d in dirs.flatten() {
        // The brokers' segment size: opening never grows a preallocation.
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            batch_bytes_max: BATCH_BYTES_MAX,
            ..LogConfig::default()
        };
        let (log, _) = Log::open(d.path(), config, 0).unwrap_or_else(|e| {
            panic!(
                "{}: a replica's log opens after a clean stop: {e}",
                d.path().display()
            )
        });
        let mut records = Vec::new();
        for b in log.batches_from(Offset(log.earliest_offset().0)).expect("read") {
            if b.header().flags.control() {
                continue;
            }
            for r in b.records().expect("records") {
                let r = r.expect("record");
                records.push((
                    r.offset.0,
                    r.key.as_deref().map(text),
                    text(r.value.as_deref().unwrap_or_default()),
                    r.headers.iter().map(|(k, v)| (text(k), text(v))).collect(),
                ));
            }
        }
        out.insert(d.file_name().to_string_lossy().into_owned(), records);
    }
    out
}

/// What one run saw, for the report.
struct Report {
    name: String,
    seed: u64,
    ops: BTreeMap<&'static str, usize>,
    faults: BTreeMap<String, usize>,
    anomalies: Anomalies,
}

impl Report {
    fn print(&self) {
        eprintln!("==== {} (seed {}) ====", self.name, self.seed);
        eprintln!("operations: {:?}", self.ops);
        eprintln!("faults injected: {:?}", self.faults);
        if self.anomalies.total() == 0 {
            eprintln!("anomalies: none");
        }
        for (class, (n, examples)) in &self.anomalies.by_class {
            eprintln!("anomaly {class}: {n}");
            for e in examples {
                eprintln!("    {e}");
            }
        }
        eprintln!(
            "repeat with: FELIX_SEED={} cargo test -p felix --test faults {}",
            self.seed, self.name
        );
    }
}

/// Runs `work` under `faults` and checks the history.
fn run(name: &str, work: Workloads, faults: &[Fault]) -> Report {
    let _one = felix_testkit::serial::serial();
    let seed = seed();
    eprintln!("faults: {name}: seed {seed} (FELIX_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = KeptOnPanic(Some(tempfile::tempdir().unwrap()));
    let rt = common::rt();
    let logs = dir.path().join("logs");
    let skews = dir.path().join("clock");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&skews).unwrap();
    let mut net_slot = None;
    let mut c = LocalCluster::configure(
        dir.path(),
        BROKERS,
        // Full verification at start: the nemesis flips bits in sealed
        // segments too (docs/faults.md, "Left").
        &format!("[log]\nsegment_bytes = {SEGMENT_BYTES}\nbatch_bytes_max = {BATCH_BYTES_MAX}\nverify_on_start = true\n"),
        |real| {
            let net = rt.block_on(Net::start(real, seed));
            let routes = net.proxies.clone();
            net_slot = Some(net);
            Some(routes)
        },
    );
    let net = net_slot.expect("the proxies");
    c.stderr_dir = Some(logs.clone());
    c.skew_dir = Some(skews);
    c.launch();
    let mut cfg = c.client_config();
    cfg.request_timeout_ms = 3_000;
    cfg.retry.deadline_ms = 10_000;
    let client = rt.block_on(Client::connect(cfg.clone())).expect("connect");
    rt.block_on(async {
        create_when_ready(
            &client,
            StreamConfig::stream(STREAM, 1, felix_client::wire::Durability::Always),
        )
        .await;
        if work.group {
            create_when_ready(
                &client,
                StreamConfig {
                    max_deliveries: MAX_DELIVERIES,
                    ..StreamConfig::stream(JOBS, 1, felix_client::wire::Durability::Always)
                },
            )
            .await;
        }
        for (name, on) in [(KV, work.cache), (TTL, work.ttl)] {
            if on {
                create_when_ready(
                    &client,
                    StreamConfig {
                        kind: felix_client::wire::StreamKind::Cache,
                        ..StreamConfig::stream(name, 2, felix_client::wire::Durability::Always)
                    },
                )
                .await;
            }
        }
    });
    let ctx = Ctx {
        clock: RunClock(Instant::now()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    // Consumers outlive the others: they drain the group at the end.
    let consumers = Ctx {
        clock: ctx.clock,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let drain = Arc::new(AtomicBool::new(false));
    let streams = Arc::new(Mutex::new(StreamHistory::default()));
    let groups = Arc::new(Mutex::new(GroupHistory::default()));
    let cache = Arc::new(Mutex::new(CacheHistory::default()));
    let ttls = Arc::new(Mutex::new(TtlHistory::default()));
    let mut tasks = Vec::new();
    let mut consumer_tasks = Vec::new();
    if work.stream {
        for id in 0..2 {
            tasks.push(rt.spawn(workloads::produce(
                client.clone(),
                STREAM.into(),
                id,
                ctx.clone(),
                streams.clone(),
            )));
        }
        for id in 0..2 {
            tasks.push(rt.spawn(workloads::read(
                client.clone(),
                STREAM.into(),
                id,
                ctx.clone(),
                streams.clone(),
            )));
        }
    }
    if work.group {
        tasks.push(rt.spawn(workloads::publish_jobs(
            client.clone(),
            JOBS.into(),
            ctx.clone(),
            groups.clone(),
            Duration::from_millis(10),
        )));
        for id in 0..3 {
            consumer_tasks.push(rt.spawn(workloads::consume(
                client.clone(),
                JOBS.into(),
                seed.wrapping_add(id),
                LEASE_MS,
                consumers.clone(),
                drain.clone(),
                groups.clone(),
            )));
        }
    }
    if work.cache {
        let keys: Vec<String> = (0..4).map(|k| format!("k{k}")).collect();
        for id in 0..5 {
            // A client each: one client's view of who leads is not every
            // client's (a stale read needs a reader still talking to a
            // deposed leader while another writes to the new one).
            let own = rt.block_on(Client::connect(cfg.clone())).expect("connect");
            tasks.push(rt.spawn(workloads::cache_ops(
                own,
                KV.into(),
                keys.clone(),
                id,
                id == 4,
                seed.wrapping_add(100 + id),
                ctx.clone(),
                cache.clone(),
            )));
        }
    }
    if work.ttl {
        for id in 0..2 {
            tasks.push(rt.spawn(workloads::ttl_ops(
                client.clone(),
                TTL.into(),
                id,
                TTL_MS,
                seed.wrapping_add(200 + id),
                ctx.clone(),
                ttls.clone(),
            )));
        }
    }
    // The nemesis, on this thread.
    // Faults aimed at "the leader" aim at the leader of the workload's
    // (first) shard.
    let target = if work.stream {
        STREAM
    } else if work.group {
        JOBS
    } else if work.cache {
        KV
    } else {
        TTL
    };
    let mut nemesis = Nemesis::new(seed, target, SKEW_MS_MAX);
    let deadline = Instant::now() + Duration::from_secs(fault_secs());
    std::thread::sleep(Duration::from_millis(1_000));
    while Instant::now() < deadline {
        let f = faults[rng.gen_range(0..faults.len())];
        nemesis.inject(f, &mut c, &net, &client, &rt);
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1_200)));
    }
    nemesis.heal_all(&mut c, &net);
    // Healthy for a while: writes must go through again.
    let before = ok_writes(&streams, &groups, &cache, &ttls);
    let t = Instant::now();
    while ok_writes(&streams, &groups, &cache, &ttls) <= before {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no write succeeded within 60 s of healing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("writes resumed {:?} after healing", t.elapsed());
    std::thread::sleep(Duration::from_millis(1_000));
    ctx.stop.store(true, Ordering::Release);
    for t in tasks {
        rt.block_on(t).expect("a workload task");
    }
    if work.group {
        drain.store(true, Ordering::Release);
        // Until deliveries stop (an expired lease redelivers within
        // LEASE_MS), at most 60 s. A consumer call the client is still
        // retrying (its shard between leaders after the last kill) is not a
        // stop: it counts as activity, and how long the longest took is
        // reported.
        let t = Instant::now();
        let mut last = (usize::MAX, Instant::now());
        let mut stalled_ms = 0;
        loop {
            let (n, stalled) = {
                let g = groups.lock().unwrap();
                let now_us = ctx.clock.us();
                let oldest = g.in_flight.values().map(|at| now_us.saturating_sub(*at)).max();
                (g.deliveries.len(), oldest.unwrap_or(0) / 1000)
            };
            stalled_ms = stalled_ms.max(stalled);
            if n != last.0 || stalled > u64::from(LEASE_MS) {
                last = (n, Instant::now());
            }
            if last.1.elapsed() > Duration::from_millis(3 * u64::from(LEASE_MS))
                || t.elapsed() > Duration::from_secs(60)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "group drain: from {} ms into the run, {} ms long, the longest consumer call in it {stalled_ms} ms",
            (ctx.clock.us() / 1000).saturating_sub(t.elapsed().as_millis() as u64),
            t.elapsed().as_millis(),
        );
    }
    consumers.stop.store(true, Ordering::Release);
    for t in consumer_tasks {
        rt.block_on(t).expect("a consumer task");
    }
    // Every replica caught up on every shard before the logs are compared.
    for (name, on) in [
        (STREAM, true),
        (JOBS, work.group),
        (KV, work.cache),
        (TTL, work.ttl),
    ] {
        if on {
            rt.block_on(c.converged(name));
        }
    }
    rt.block_on(client.close());
    c.stop_all();
    let (forwarded, dropped, delayed) = net.counters();
    let mut anomalies = Anomalies::default();
    let replicas: Vec<BTreeMap<String, Vec<Stored>>> =
        c.members.iter().map(|m| stored(&m.at.data_dir)).collect();
    check_replicas(&replicas, &mut anomalies);
    let mut ops = BTreeMap::new();
    ops.insert(
        "brokers at the end",
        c.members.iter().filter(|m| !m.retired).count(),
    );
    let shard_with = |pred: &dyn Fn(&Stored) -> bool| -> Option<String> {
        replicas
            .iter()
            .flat_map(|r| r.iter())
            .find(|(_, rs)| rs.iter().any(pred))
            .map(|(d, _)| d.clone())
    };
    // A shard's copies: the members holding it.
    let copies = |dir: &str| -> Vec<&Vec<Stored>> { replicas.iter().filter_map(|r| r.get(dir)).collect() };
    if work.stream {
        let h = streams.lock().unwrap();
        let dir = shard_with(&|r: &Stored| r.2.starts_with('p') && r.2.contains('-'));
        let mut logs: Vec<Vec<(u64, String)>> = dir
            .as_deref()
            .map(&copies)
            .unwrap_or_default()
            .into_iter()
            .map(|rs| rs.iter().map(|(o, _, v, _)| (*o, v.clone())).collect())
            .collect();
        if logs.is_empty() {
            // No copy holds a record: checked as one empty log.
            logs.push(Vec::new());
        }
        history::check_stream(&h, &logs, &mut anomalies);
        ops.insert(
            "publish ok",
            h.sends
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
                .count(),
        );
        ops.insert(
            "publish failed",
            h.sends
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Fail(_)))
                .count(),
        );
        ops.insert(
            "publish unknown",
            h.sends
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Unknown(_)))
                .count(),
        );
        ops.insert("records read", h.reads.values().map(Vec::len).sum());
        for why in h
            .sends
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Unknown(why) => Some(why),
                _ => None,
            })
            .take(3)
        {
            eprintln!("a publish of unknown outcome: {why}");
        }
        assert!(
            !h.sends.is_empty() && logs.first().is_some_and(|l| !l.is_empty()),
            "the stream workload did something"
        );
    }
    if work.group {
        let mut h = groups.lock().unwrap();
        let source = |r: &Stored| {
            r.3.iter()
                .find(|(k, _)| k.as_bytes() == felix_broker::queue::DLQ_SOURCE_HEADER)
                .map(|(_, v)| v.clone())
        };
        let deliveries = |r: &Stored| {
            r.3.iter()
                .find(|(k, _)| k.as_bytes() == felix_broker::queue::DLQ_DELIVERIES_HEADER)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        if let Some(d) = shard_with(&|r: &Stored| source(r).is_some_and(|s| s.starts_with(JOBS))) {
            h.dead = copies(&d)[0]
                .iter()
                .filter_map(|r| {
                    let s = source(r)?;
                    let off: u64 = s.rsplit('/').next()?.parse().ok()?;
                    Some((off, deliveries(r)))
                })
                .collect();
        }
        history::check_group(&h, MAX_DELIVERIES, &mut anomalies);
        let mut errors: Vec<_> = h.errors.iter().collect();
        errors.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        for (e, n) in errors.iter().take(5) {
            eprintln!("group client errors: {n} × {e}");
        }
        ops.insert("jobs published", h.published.len());
        ops.insert("deliveries", h.deliveries.len());
        ops.insert("acks", h.acks.len());
        ops.insert("nacks", h.nacks);
        ops.insert("dead-lettered", h.dead.len());
        assert!(
            !h.published.is_empty() && !h.deliveries.is_empty(),
            "the group workload did something"
        );
    }
    if work.cache {
        let h = cache.lock().unwrap();
        let keys = history::check_cache(&h, &mut anomalies);
        ops.insert("cache keys checked", keys);
        ops.insert("cache operations", h.ops.values().map(Vec::len).sum());
        ops.insert(
            "cache unknown",
            h.ops
                .values()
                .flatten()
                .filter(|o| o.ret == linear::Ret::Unknown)
                .count(),
        );
        assert!(keys > 0, "the cache workload did something");
    }
    if work.ttl {
        let h = ttls.lock().unwrap();
        history::check_ttl(
            &h,
            if faults.contains(&Fault::Skew) {
                SKEW_MS_MAX
            } else {
                0
            },
            &mut anomalies,
        );
        ops.insert("ttl puts", h.puts.len());
        ops.insert("ttl gets", h.gets.len());
        assert!(!h.gets.is_empty(), "the TTL workload did something");
    }
    let mut faults_seen = nemesis.injected.clone();
    faults_seen.insert("datagrams forwarded".into(), forwarded as usize);
    faults_seen.insert("datagrams dropped".into(), dropped as usize);
    faults_seen.insert("datagrams delayed".into(), delayed as usize);
    let report = Report {
        name: name.into(),
        seed,
        ops,
        faults: faults_seen,
        anomalies,
    };
    report.print();
    if report.anomalies.total() > 0 {
        for l in &nemesis.log {
            eprintln!("  {l}");
        }
        for m in &c.members {
            let p = logs.join(format!("b{}.log", m.at.id));
            if let Ok(s) = std::fs::read_to_string(&p) {
                let tail: Vec<&str> = s.lines().rev().take(20).collect();
                eprintln!("--- broker {} stderr (last lines) ---", m.at.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
    if report.anomalies.total() > 0 {
        dir.keep();
    }
    report
}

/// The run's directory (data and broker logs), kept for a post-mortem
/// when the run panics or finds anomalies.
struct KeptOnPanic(Option<tempfile::TempDir>);

impl KeptOnPanic {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("the run directory").path()
    }

    fn keep(mut self) {
        if let Some(d) = self.0.take() {
            eprintln!("data and broker logs kept in {}", d.keep().display());
        }
    }
}

impl Drop for KeptOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("data and broker logs kept in {}", d.keep().display());
            }
        }
    }
}

fn ok_writes(
    s: &Arc<Mutex<StreamHistory>>,
    g: &Arc<Mutex<GroupHistory>>,
    c: &Arc<Mutex<CacheHistory>>,
    t: &Arc<Mutex<TtlHistory>>,
) -> usize {
    s.lock()
        .unwrap()
        .sends
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
        .count()
        + g.lock().unwrap().published.len()
        + c.lock()
            .unwrap()
            .ops
            .values()
            .flatten()
            .filter(|o| matches!(o.ret, linear::Ret::Written(_)))
            .count()
        + t.lock().unwrap().puts.len()
}

/// Every shard on the members holding it: exactly the replication
/// factor's number of copies (a move or a decommission left none behind
/// and lost none), an offset two copies both hold has the same record on
/// both, and each copy's records end at the same offset (compaction may
/// have removed different records on each).
fn check_replicas(replicas: &[BTreeMap<String, Vec<Stored>>], a: &mut Anomalies) {
    let mut shards: Vec<&String> = replicas.iter().flat_map(|r| r.keys()).collect();
    shards.sort();
    shards.dedup();
    for s in shards {
        let holders: Vec<(usize, HashMap<u64, &Stored>)> = replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.get(s)?.iter().map(|x| (x.0, x)).collect())))
            .collect();
        if holders.len() != nemesis::REPLICATION_FACTOR {
            let on: Vec<usize> = holders.iter().map(|(i, _)| *i).collect();
            a.add(
                "replica-count",
                format!(
                    "shard {s}: copies on members {on:?}, not {}",
                    nemesis::REPLICATION_FACTOR
                ),
            );
        }
        let ends: Vec<Option<u64>> = holders
            .iter()
            .map(|(i, _)| replicas[*i][s].last().map(|x| x.0))
            .collect();
        if ends.iter().any(|e| *e != ends[0]) {
            a.add("replicas-diverge", format!("shard {s}: last offsets {ends:?}"));
        }
        let (first, rest) = holders.split_first().expect("a holder");
        for (o, x) in &first.1 {
            for (i, m) in rest {
                if let Some(y) = m.get(o) {
                    if y != x {
                        a.add(
                            "offset-two-values",
                            format!("shard {s} offset {o}: {x:?} on member {}, {y:?} on {i}", first.0),
                        );
                    }
                }
            }
        }
    }
}

fn expect_clean(r: Report) {
    assert!(
        r.anomalies.by_class.is_empty(),
        "{}: anomalies {:?} (seed {})",
        r.name,
        r.anomalies.by_class,
        r.seed
    );
}

// ---- the catalogue: workload × fault ----

#[test]
fn streams_under_leader_kills() {
    expect_clean(run("streams_under_leader_kills", STREAMS, &[Fault::Kill]));
}

#[test]
fn streams_under_pauses() {
    expect_clean(run("streams_under_pauses", STREAMS, &[Fault::Pause]));
}

#[test]
fn streams_under_partitions() {
    expect_clean(run("streams_under_partitions", STREAMS, &[Fault::Partition]));
}

#[test]
fn streams_under_loss_and_delay() {
    expect_clean(run(
        "streams_under_loss_and_delay",
        STREAMS,
        &[Fault::Loss, Fault::Delay],
    ));
}

#[test]
fn streams_under_disk_faults() {
    expect_clean(run("streams_under_disk_faults", STREAMS, &[Fault::Disk]));
}

#[test]
fn streams_under_drains_and_membership_changes() {
    expect_clean(run(
        "streams_under_drains_and_membership_changes",
        STREAMS,
        &[Fault::Drain, Fault::Membership, Fault::Join, Fault::Decommission],
    ));
}

#[test]
fn cache_and_groups_while_brokers_join_and_are_decommissioned() {
    expect_clean(run(
        "cache_and_groups_while_brokers_join_and_are_decommissioned",
        only(false, true, true, false),
        &[Fault::Join, Fault::Decommission, Fault::Kill],
    ));
}

#[test]
fn groups_under_leader_kills() {
    expect_clean(run("groups_under_leader_kills", GROUPS, &[Fault::Kill]));
}

#[test]
fn groups_under_partitions_and_pauses() {
    expect_clean(run(
        "groups_under_partitions_and_pauses",
        GROUPS,
        &[Fault::Partition, Fault::Pause],
    ));
}

#[test]
fn groups_under_disk_faults_and_drains() {
    expect_clean(run(
        "groups_under_disk_faults_and_drains",
        GROUPS,
        &[Fault::Disk, Fault::Drain],
    ));
}

#[test]
fn cache_under_partitions() {
    expect_clean(run("cache_under_partitions", CACHE, &[Fault::Partition]));
}

#[test]
fn cache_under_kills_and_pauses() {
    expect_clean(run(
        "cache_under_kills_and_pauses",
        CACHE,
        &[Fault::Kill, Fault::Pause],
    ));
}

#[test]
fn cache_under_loss_delay_and_membership_changes() {
    expect_clean(run(
        "cache_under_loss_delay_and_membership_changes",
        CACHE,
        &[Fault::Loss, Fault::Delay, Fault::Membership],
    ));
}

#[test]
fn ttls_under_clock_skew() {
    expect_clean(run("ttls_under_clock_skew", TTLS, &[Fault::Skew, Fault::Kill]));
}

#[test]
fn everything_under_every_fault() {
    expect_clean(run(
        "everything_under_every_fault",
        ALL,
        &[
            Fault::Kill,
            Fault::Pause,
            Fault::Partition,
            Fault::Loss,
            Fault::Delay,
            Fault::Skew,
            Fault::Disk,
            Fault::Drain,
            Fault::Membership,
            Fault::Join,
            Fault::Decommission,
        ],
    ));
}
