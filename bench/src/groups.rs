//! Many Raft groups on three brokers' replication layers in this process:
//! what an idle group costs once it is quiet, beside the same groups kept
//! awake (openraft's per-group heartbeats), the messages between two
//! brokers per second, how long the first write to a quiet group takes
//! beside one to an awake group, and how long every group led by a broker
//! that vanishes takes to elect a new leader.
//!
//! In-process so that the figures are the replication layer's alone (no
//! shard index, no client listener): CPU is this process's, three
//! brokers' worth, divided by three.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use felix_client::transport::dev_certificates;
use felix_log::{Durability, LogConfig, RaftIndex, SharedLog};
use felix_replication::{Applier, BrokerNode, GroupConfig, GroupId, Replica, Router, Traffic, Transport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Groups (each with a replica on all three brokers).
    #[arg(long, default_value_t = 1_000)]
    groups: u64,
    /// Seconds each idle figure is measured over.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// 100 groups, 2 s figures.
    #[arg(long)]
    quick: bool,
    /// Measure only the quiet groups (to profile them).
    #[arg(long)]
    quiet_only: bool,
}

/// Applies nothing: the layer's own cost is what is measured.
#[derive(Default)]
struct Nothing {
    through: AtomicU64,
}

impl Applier for Nothing {
    fn apply_through(&self, through: RaftIndex) -> Result<(), String> {
        self.through.fetch_max(through.0, Ordering::AcqRel);
        Ok(())
    }
    fn installed(&self, last: RaftIndex, _state: &[u8]) -> Result<(), String> {
        self.through.store(last.0, Ordering::Release);
        Ok(())
    }
}

struct Broker {
    id: u64,
    transport: Arc<Transport>,
    router: Router,
    replicas: Vec<Replica>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (groups, secs) = if a.quick {
        (a.groups.min(100), 2.0)
    } else {
        (a.groups, a.secs)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!("\n## {groups} groups on 3 brokers (RF=3), one process\n");
        let quiet = measure(groups, secs, true).await?;
        if a.quiet_only {
            println!(
                "| groups quiet | CPU per broker, % of one core | openraft ticks per second, per broker | start-up, s |\n|---:|---:|---:|---:|\n| {} | {:.2} | {:.1} | {:.1} |",
                quiet.quiet,
                quiet.cpu_pct_per_broker,
                quiet.ticks_per_s,
                quiet.start.as_secs_f64()
            );
            return Ok(());
        }
        let awake = measure(groups, secs, false).await?;
        println!("| | groups kept awake | groups quiet |");
        println!("|---|---:|---:|");
        let row = |what: &str, f: &dyn Fn(&Figures) -> String| {
            println!("| {what} | {} | {} |", f(&awake), f(&quiet));
        };
        row("start-up of all replicas, s", &|f| format!("{:.1}", f.start.as_secs_f64()));
        row("groups quiet at the end", &|f| format!("{}", f.quiet));
        row("CPU per broker, % of one core", &|f| format!("{:.2}", f.cpu_pct_per_broker));
        row("beats per second, one broker to another", &|f| format!("{:.1}", f.beats_per_s));
        row(
            "openraft heartbeats per second, one broker to another",
            &|f| format!("{:.1}", f.heartbeats_per_s),
        );
        row(
            "RPCs on lanes per second, one broker to another",
            &|f| format!("{:.1}", f.lane_rpcs_per_s),
        );
        row(
            "streams opened per second, one broker to another",
            &|f| format!("{:.1}", f.streams_per_s),
        );
        row("openraft tick wake-ups per second, per broker", &|f| format!("{:.1}", f.ticks_per_s));
        row("first write to a group, p50 ms", &|f| format!("{:.2}", f.first_write_p50_ms));
        row("second write to a group, p50 ms", &|f| format!("{:.2}", f.second_write_p50_ms));
        row(
            "every group of a vanished broker has a new leader after, ms",
            &|f| format!("{:.0}", f.failover.as_secs_f64() * 1e3),
        );
        println!(
            "\nWrites and failover are measured after the idle figure. The vanished broker's endpoint closes at once (as a killed process's would); {} of its groups' leaderships moved.",
            quiet.moved
        );
        Ok(())
    })
}

struct Figures {
    start: Duration,
    quiet: usize,
    cpu_pct_per_broker: f64,
    beats_per_s: f64,
    heartbeats_per_s: f64,
    lane_rpcs_per_s: f64,
    streams_per_s: f64,
    ticks_per_s: f64,
    first_write_p50_ms: f64,
    second_write_p50_ms: f64,
    failover: Duration,
    moved: usize,
}

async fn measure(groups: u64, secs: f64, quiesce: bool) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let ca = dev_certificates(dir.path(), &[])?;
    let cfg = GroupConfig {
        quiesce_after_ms: if quiesce {
            GroupConfig::default().quiesce_after_ms
        } else {
            u64::MAX
        },
        ..GroupConfig::default()
    };
    let mut brokers = Vec::new();
    for id in 1..=3u64 {
        let router = Router::default();
        let broker = felix_replication::broker_of(id);
        let certs = ca.issue_broker(
            broker,
            felix_client::transport::identity::REGION_DEFAULT,
            &dir.path().join(format!("b{id}")),
        )?;
        let transport = Transport::start(
            id,
            "local",
            "127.0.0.1:0".parse()?,
            &certs.server_tls()?,
            &certs.client_tls()?,
            router.clone(),
        )?;
        brokers.push(Broker {
            id,
            transport,
            router,
            replicas: Vec::new(),
        });
    }
    let members: BTreeMap<u64, BrokerNode> = brokers
        .iter()
        .map(|b| {
            Ok((
                b.id,
                BrokerNode {
                    raft_addr: b.transport.local_addr()?.to_string(),
                    client_addr: String::new(),
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let log_cfg = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    let began = Instant::now();
    for g in 1..=groups {
        for b in &mut brokers {
            let at = dir.path().join(format!("b{}/g{g}", b.id));
            let (log, _) = SharedLog::open(at.join("log"), log_cfg.clone())?;
            let r = Replica::start(
                b.id,
                GroupId(g),
                Arc::new(log),
                at.join("raft"),
                Arc::new(Nothing::default()),
                None,
                b.transport.clone(),
                &b.router,
                cfg,
            )
            .await?;
            b.replicas.push(r);
        }
        // Leaders spread: the founder stands first.
        let founder = (g % 3) as usize;
        brokers[founder].replicas[(g - 1) as usize]
            .initialize(members.clone())
            .await?;
    }
    let leaders = |brokers: &[Broker], g: usize| brokers.iter().position(|b| b.replicas[g].is_leader());
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..groups as usize).any(|g| leaders(&brokers, g).is_none()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every group elected a leader in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = began.elapsed();
    // One write each, so every group has an entry of its leader's term.
    for g in 0..groups as usize {
        let l = leaders(&brokers, g).context("leader")?;
        brokers[l].replicas[g].write(batch()).await?;
    }
    if quiesce {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !brokers.iter().all(|b| b.replicas.iter().all(|r| r.is_quiet())) {
            anyhow::ensure!(Instant::now() < deadline, "groups did not all go quiet in 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let before: Vec<Traffic> = brokers.iter().map(|b| b.transport.traffic()).collect();
    let ticks = |brokers: &[Broker]| {
        brokers
            .iter()
            .flat_map(|b| &b.replicas)
            .map(|r| r.ticks())
            .sum::<u64>()
    };
    let ticks0 = ticks(&brokers);
    let cpu0 = process_cpu();
    let t = Instant::now();
    eprintln!("idle figure: measuring for {secs} s");
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    let ticks_per_s = (ticks(&brokers) - ticks0) as f64 / 3.0 / wall;
    let after: Vec<Traffic> = brokers.iter().map(|b| b.transport.traffic()).collect();
    let quiet = brokers[0].replicas.iter().filter(|r| r.is_quiet()).count();
    // Each broker sends to two peers.
    let per_pair = |f: fn(&Traffic) -> u64| {
        before.iter().zip(&after).map(|(b, a)| f(a) - f(b)).sum::<u64>() as f64 / 6.0 / wall
    };
    let beats_per_s = per_pair(|t| t.beats);
    let heartbeats_per_s = per_pair(|t| t.heartbeats);
    let lane_rpcs_per_s = per_pair(|t| t.lane_rpcs);
    let streams_per_s = per_pair(|t| t.streams);

    // Writes: the first to each of some groups (quiet ones, in the quiet
    // run), then a second to the same group at once (awake).
    let sample = (groups as usize).min(50);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for g in 0..sample {
        let l = leaders(&brokers, g).context("leader")?;
        let t = Instant::now();
        brokers[l].replicas[g].write(batch()).await?;
        first.push(t.elapsed());
        let t = Instant::now();
        brokers[l].replicas[g].write(batch()).await?;
        second.push(t.elapsed());
    }

    // Failover: broker 1's endpoint closes; its groups elect elsewhere.
    let led: Vec<usize> = (0..groups as usize)
        .filter(|g| brokers[0].replicas[*g].is_leader())
        .collect();
    let gone = brokers.remove(0);
    let vanished = Instant::now();
    gone.transport.close();
    let deadline = vanished + Duration::from_secs(120);
    while !led
        .iter()
        .all(|g| brokers.iter().any(|b| b.replicas[*g].is_leader()))
    {
        if Instant::now() >= deadline {
            let mut states: BTreeMap<String, usize> = BTreeMap::new();
            for g in &led {
                for b in &brokers {
                    let m = b.replicas[*g].raft.metrics().borrow().clone();
                    let k = format!(
                        "{:?} quiet={} leader={:?}",
                        m.state,
                        b.replicas[*g].is_quiet(),
                        m.current_leader.map(felix_replication::broker_of)
                    );
                    *states.entry(k).or_default() += 1;
                }
            }
            anyhow::bail!("not every group of the vanished broker elected a leader in 120 s: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover = vanished.elapsed();
    for b in brokers.iter().chain(std::iter::once(&gone)) {
        for r in &b.replicas {
            r.shutdown(&b.router).await;
        }
        b.transport.close();
    }
    Ok(Figures {
        start,
        quiet,
        cpu_pct_per_broker: cpu.as_secs_f64() / wall / 3.0 * 100.0,
        beats_per_s,
        heartbeats_per_s,
        lane_rpcs_per_s,
        streams_per_s,
        ticks_per_s,
        first_write_p50_ms: p50_ms(&mut first),
        second_write_p50_ms: p50_ms(&mut second),
        failover,
        moved: led.len(),
    })
}

fn batch() -> bytes::Bytes {
    let mut b = felix_log::BatchBuilder::new(usize::MAX);
    b.push(felix_log::RecordInput {
        value: Some(b"idle"),
        timestamp_ms: felix_log::now_ms(),
        ..felix_log::RecordInput::default()
    })
    .expect("one small record fits");
    bytes::Bytes::from(
        b.build(felix_log::Compression::None)
            .expect("a batch of one record"),
    )
}

fn p50_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// CPU time of this process so far (user and system).
pub(crate) fn process_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which zero is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}
