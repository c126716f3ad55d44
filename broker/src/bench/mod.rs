//! `felix bench`: benchmarks that print figures (never timed tests).

mod index;
mod log;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Segment log: append throughput and latency per durability mode beside
    /// the machine's write+fdatasync limit, replay, and reopen times.
    Log(log::Args),
    /// Index: latest(key) latency with many keys, offset lookups/s,
    /// compaction throughput, append latency while compacting.
    Index(index::Args),
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Log(a) => log::run(a),
        BenchCommand::Index(a) => index::run(a),
    }
}
