//! `felix log`: recovery and inspection of one log directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use felix_log::{Log, LogConfig, Offset, Verify};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Open (and so recover) a log directory and report what recovery found.
    /// Cuts a torn tail like any open; refuses interior corruption unless
    /// --repair is given.
    Check {
        dir: PathBuf,
        /// Verify every batch, not only what the checkpoint does not vouch for.
        #[arg(long)]
        full: bool,
        /// Quarantine damaged ranges into DIR/quarantine and keep the rest.
        #[arg(long)]
        repair: bool,
    },
    /// Print the batches of a log directory.
    Dump {
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
}

pub fn run(c: LogCommand) -> anyhow::Result<()> {
    match c {
        LogCommand::Check { dir, full, repair } => {
            let cfg = LogConfig {
                verify: if full {
                    Verify::Full
                } else {
                    Verify::FromCheckpoint
                },
                repair,
                ..LogConfig::default()
            };
            let (log, report) = Log::open(&dir, cfg, felix_log::now_ms())
                .with_context(|| format!("recovering {}", dir.display()))?;
            println!("segments: {}", report.segments);
            println!("previous close clean: {}", report.clean);
            println!("verified bytes: {}", report.verified_bytes);
            if let Some((p, at, why)) = &report.torn_tail {
                println!("torn tail cut: {} at byte {at}: {why}", p.display());
            }
            for q in &report.quarantined {
                println!(
                    "quarantined: {} bytes [{}, {}) -> {}",
                    q.segment.display(),
                    q.from,
                    q.to,
                    q.saved_to.display()
                );
            }
            println!("offsets: [{}, {})", log.earliest_offset(), log.next_offset());
            println!(
                "raft: first {:?}, last {:?}",
                log.first_raft_index(),
                log.last_raft()
            );
            log.close()?;
        }
        LogCommand::Dump { dir, from, count } => {
            let (log, _) = Log::open(&dir, LogConfig::default(), felix_log::now_ms())?;
            for b in log.batches_from(Offset(from))?.take(count) {
                let h = b.header();
                // Which data key a batch is sealed under (encryption at
                // rest) is in the clear: an operator can see what is sealed
                // without any key.
                let sealed = match felix_log::batch::seal::key_id(&b) {
                    0 => String::new(),
                    id => format!(" sealed key {id}"),
                };
                println!(
                    "offset {} +{} index {} term {} records {} bytes {} ts [{}, {}] producer {}:{}{}{}{sealed}",
                    h.base_offset,
                    h.offset_count,
                    h.raft_index,
                    h.raft_term,
                    h.record_count,
                    h.batch_len,
                    h.first_timestamp_ms,
                    h.max_timestamp_ms,
                    h.producer_id,
                    h.producer_seq,
                    if h.flags.zstd() { " zstd" } else { "" },
                    if h.flags.control() { " control" } else { "" },
                );
            }
            log.close()?;
        }
    }
    Ok(())
}
