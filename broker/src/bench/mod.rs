//! `felix bench`: benchmarks that print figures (never timed tests).

mod log;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Segment log: append throughput and latency per durability mode beside
    /// the machine's write+fdatasync limit, replay, and reopen times.
    Log(log::Args),
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Log(a) => log::run(a),
    }
}
