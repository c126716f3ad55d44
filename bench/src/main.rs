//! `felix-bench`: benchmarks that print figures (never timed tests). Run
//! as `cargo run --release -p felix-bench -- <log|index|wire|broker|cluster|groups|scale|controlplane|peers>`.
//! Kept out of the `felix` binary so that a user's install carries none of
//! the peers' clients (async-nats, redis) or the charts (plotters).

mod at_rest;
mod bridge;
mod broker;
mod cluster;
mod controlplane;
mod groups;
mod index;
mod log;
mod measure;
mod peers;
mod scale;
mod wire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The hidden subcommand that runs a broker (`felix broker` in `felix`).
pub const RUN_BROKER: &str = "run-broker";

#[derive(Parser)]
#[command(name = "felix-bench", about = "Felix benchmarks that print figures")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Segment log: append throughput and latency per durability mode beside
    /// the machine's write+fdatasync limit, replay, and reopen times.
    Log(log::Args),
    /// Index: latest(key) latency with many keys, offset lookups/s,
    /// compaction throughput, append latency while compacting.
    Index(index::Args),
    /// Wire protocol over loopback QUIC: request/response round trips at
    /// 256 B and 4 KiB, concurrency 1 and 32; bytes/s of one push stream.
    Wire(wire::Args),
    /// The broker: publish→deliver latency and throughput, fan-out 1 and
    /// 10, 256 B and 4 KiB; cache put/get at concurrency 1 and 32.
    Broker(broker::Args),
    /// Encryption at rest's cost: publish→deliver latency and throughput
    /// at 256 B and 4 KiB with the tenant's encryption off, then on, in
    /// one run, with the ratio and CPU per record.
    #[command(name = "at-rest")]
    AtRest(at_rest::Args),
    /// Bridges: a backlog carried from a source broker to a target
    /// broker (records/s), then paced records' lag from the source's
    /// acknowledgement to a subscriber of the target, and CPU per record.
    Bridge(bridge::Args),
    /// Replication: RF=3 quorum publish beside RF=1 (separate broker
    /// processes), durability `always` and `none`, 1 / 16 / 64 producers;
    /// then the failover time after a leader's SIGKILL.
    Cluster(cluster::Args),
    /// Many Raft groups on three brokers' replication layers in one
    /// process: idle CPU and messages between brokers with groups quiet
    /// and kept awake, the first write to a quiet group, and the failover
    /// of every group a vanished broker led.
    Groups(groups::Args),
    /// The control plane at scale: simulated brokers heartbeating,
    /// thousands of streams created through the API, a feed follower;
    /// create latency as the count grows, feed lag, memory, snapshot size.
    Controlplane(controlplane::Args),
    /// Scale-out: one write workload (RF=3, many shards) on 3 and on 6
    /// brokers placed by a control plane; bytes written and CPU seconds
    /// per broker, and their ratio.
    Scale(scale::Args),
    /// The same workloads against Felix and a peer in one run (NATS
    /// JetStream: publish, fan-out, queue, replay, RF=3; Redis: cache),
    /// with ratios, the machine's limits, a markdown table and PNG charts.
    Peers(peers::Args),
    /// A broker from a configuration file, as `felix broker` runs it: the
    /// benchmarks start their broker processes as this executable.
    #[command(hide = true, name = RUN_BROKER)]
    RunBroker {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    felix_cli::logs::init();
    match Cli::parse().command {
        BenchCommand::Log(a) => log::run(a),
        BenchCommand::Index(a) => index::run(a),
        BenchCommand::Wire(a) => wire::run(a),
        BenchCommand::Broker(a) => broker::run(a),
        BenchCommand::AtRest(a) => at_rest::run(a),
        BenchCommand::Bridge(a) => bridge::run(a),
        BenchCommand::Cluster(a) => cluster::run(a),
        BenchCommand::Groups(a) => groups::run(a),
        BenchCommand::Scale(a) => scale::run(a),
        BenchCommand::Controlplane(a) => controlplane::run(a),
        BenchCommand::Peers(a) => peers::run(a),
        BenchCommand::RunBroker { config } => felix_cli::run::broker_from_file(config),
    }
}
