//! `felix`: the one command a user runs.

mod bench;
mod logtool;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "felix",
    version,
    about = "Felix: a durable, replicated message log and cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on this machine (not available yet: needs the broker).
    Dev {
        #[arg(long, default_value = "./felix-data")]
        data_dir: PathBuf,
    },
    /// Inspect and recover a shard's segment log directory.
    #[command(subcommand)]
    Log(logtool::LogCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FELIX_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Dev { data_dir } => anyhow::bail!(
            "`felix dev` needs the broker, which is not built yet (see the README's status). \
             Nothing was written to {}. Available today: `felix log check|dump` and `felix bench log`.",
            data_dir.display()
        ),
        Command::Log(c) => logtool::run(c),
        Command::Bench(c) => bench::run(c),
    }
}
