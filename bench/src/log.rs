//! The segment log benchmark of issue "Segment log engine".

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use felix_log::{
    BatchBuilder, Compression, Durability, Log, LogConfig, Offset, RaftTerm, RecordInput, SharedLog,
};
use hdrhistogram::Histogram;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Scratch directory (on the disk to measure); removed afterwards.
    #[arg(long, default_value = "./felix-bench-data")]
    dir: PathBuf,
    /// Seconds per append configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Size of the log for the replay and reopen figures.
    #[arg(long, default_value_t = 1024)]
    replay_mib: u64,
    /// A short run: fewer configurations, 0.5 s each, 128 MiB replay.
    #[arg(long)]
    quick: bool,
}

struct Row {
    mode: String,
    record_bytes: usize,
    batch: usize,
    appenders: usize,
    records_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    fsyncs: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let seconds = if a.quick { 0.5 } else { a.seconds };
    let replay_mib = if a.quick { 128 } else { a.replay_mib };
    std::fs::create_dir_all(&a.dir)?;
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "# felix-bench log\n\nmachine: {} cores; load average at start: {}\n",
        num_cpus(),
        load()
    );

    // The machine's limit: one thread, write + fdatasync of equal blocks.
    println!("## write+fdatasync limit (one thread, appending to a fresh file)\n");
    println!("| block | writes/s | MB/s | p50 µs | p99 µs |\n|---|---|---|---|---|");
    let mut limit_mb = std::collections::HashMap::new();
    for block in [256usize, 4096, 256 * 64, 4096 * 64] {
        let (ops, mbs, h) = fdatasync_limit(&a.dir, block, seconds)?;
        limit_mb.insert(block, mbs);
        println!(
            "| {block} | {ops:.0} | {mbs:.1} | {:.0} | {:.0} |",
            us(&h, 0.5),
            us(&h, 0.99)
        );
    }

    println!("\n## append (SharedLog; latency is per append call, acknowledged per the mode)\n");
    println!("| mode | record | batch | appenders | records/s | MB/s | p50 µs | p99 µs | fsyncs | vs fdatasync limit (MB/s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let modes = [
        Durability::Always,
        Durability::Interval { ms: 10 },
        Durability::None,
    ];
    let sizes: &[usize] = if a.quick { &[256] } else { &[256, 4096] };
    let batches: &[usize] = &[1, 64];
    let conc: &[usize] = if a.quick { &[1, 64] } else { &[1, 16, 64] };
    for mode in modes {
        for &size in sizes {
            for &batch in batches {
                for &n in conc {
                    let r = append_bench(&a.dir, mode, size, batch, n, seconds)?;
                    let block = size * batch;
                    let ratio = limit_mb
                        .get(&block)
                        .map_or(String::from("-"), |l| format!("{:.2}", r.mb_per_s / l));
                    println!(
                        "| {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} |",
                        r.mode,
                        r.record_bytes,
                        r.batch,
                        r.appenders,
                        r.records_per_s,
                        r.mb_per_s,
                        r.p50_us,
                        r.p99_us,
                        r.fsyncs,
                        ratio
                    );
                }
            }
        }
    }

    println!(
        "\n## replay and reopen ({replay_mib} MiB log, 4 KiB records in batches of 64, 128 MiB segments)\n"
    );
    replay_and_reopen(&a.dir, replay_mib)?;
    println!("\nload average at end: {}", load());
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) fn fdatasync_limit(
    dir: &Path,
    block: usize,
    seconds: f64,
) -> anyhow::Result<(f64, f64, Histogram<u64>)> {
    let path = dir.join("fdatasync-limit");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let buf = vec![0xA5u8; block];
    let mut h = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((n as f64 / el, (n as f64 * block as f64) / el / 1e6, h))
}

fn make_batch(record_bytes: usize, records: usize) -> Vec<u8> {
    let value = vec![0x5Au8; record_bytes];
    let mut b = BatchBuilder::new(usize::MAX);
    for _ in 0..records {
        b.push(RecordInput {
            value: Some(&value),
            timestamp_ms: felix_log::now_ms(),
            ..RecordInput::default()
        })
        .expect("fits");
    }
    b.build(Compression::None).expect("non-empty")
}

fn append_bench(
    dir: &Path,
    mode: Durability,
    size: usize,
    batch: usize,
    n: usize,
    seconds: f64,
) -> anyhow::Result<Row> {
    let path = dir.join("append");
    let _ = std::fs::remove_dir_all(&path);
    let cfg = LogConfig {
        durability: mode,
        batch_bytes_max: 1 << 20,
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(&path, cfg)?;
    let log = Arc::new(log);
    let bytes = Arc::new(make_batch(size, batch));
    let stop = Arc::new(AtomicBool::new(false));
    // Stop early past this many bytes so `none` mode does not fill the disk.
    let bytes_cap = 2u64 << 30;
    let per_thread_cap = bytes_cap / n as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (log, bytes, stop) = (log.clone(), bytes.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, Histogram<u64>)> {
                let mut h = Histogram::<u64>::new(3)?;
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) && count * (bytes.len() as u64) < per_thread_cap {
                    let t = Instant::now();
                    log.append(&bytes, RaftTerm(1))?;
                    h.record(t.elapsed().as_nanos() as u64)?;
                    count += 1;
                }
                Ok((count, h))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for h in handles {
        let (c, th) = h.join().map_err(|_| anyhow::anyhow!("appender panicked"))??;
        total += c;
        hist.add(th)?;
    }
    let el = start.elapsed().as_secs_f64();
    let fsyncs = log.sync_count();
    drop(log);
    std::fs::remove_dir_all(&path)?;
    let records = total * batch as u64;
    Ok(Row {
        mode: mode.to_string(),
        record_bytes: size,
        batch,
        appenders: n,
        records_per_s: records as f64 / el,
        mb_per_s: (total * bytes.len() as u64) as f64 / el / 1e6,
        p50_us: us(&hist, 0.5),
        p99_us: us(&hist, 0.99),
        fsyncs,
    })
}

fn replay_and_reopen(dir: &Path, mib: u64) -> anyhow::Result<()> {
    let path = dir.join("replay");
    let _ = std::fs::remove_dir_all(&path);
    let cfg = LogConfig {
        durability: Durability::None,
        batch_bytes_max: 1 << 20,
        ..LogConfig::default()
    };
    let bytes = make_batch(4096, 64);
    let batches = (mib << 20) / bytes.len() as u64;
    {
        let (mut log, _) = Log::open(&path, cfg.clone(), felix_log::now_ms())?;
        let t = Instant::now();
        for _ in 0..batches {
            let idx = log.next_raft_index();
            log.append(&bytes, RaftTerm(1), idx, felix_log::now_ms())?;
        }
        // Fill the active segment to just short of a roll: the worst case
        // for a crashed reopen, which verifies the whole active segment.
        while log.segments().last().map_or(0, |s| s.bytes) + 2 * bytes.len() as u64 <= cfg.segment_bytes {
            let idx = log.next_raft_index();
            log.append(&bytes, RaftTerm(1), idx, felix_log::now_ms())?;
        }
        log.close()?;
        println!(
            "- built {} MiB in {:.2} s ({} segments)",
            mib,
            t.elapsed().as_secs_f64(),
            std::fs::read_dir(&path)?.count() - 2
        );
    }
    let t = Instant::now();
    let (log, report) = Log::open(&path, cfg.clone(), felix_log::now_ms())?;
    let clean_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(report.clean);

    // Replay from offset 0 through `read`, checking every batch's records CRC
    // as a consumer would, so every byte is touched. Warm page cache first,
    // then cold if this process may drop the cache (root).
    let replay = |log: &Log| -> anyhow::Result<(u64, f64)> {
        let t = Instant::now();
        let mut from = Offset(0);
        let mut total = 0u64;
        loop {
            let chunk = log.read(from, 1 << 20)?;
            if chunk.bytes.is_empty() {
                break;
            }
            let mut at = 0;
            while at < chunk.bytes.len() {
                let len = felix_log::BatchHeader::decode(&chunk.bytes[at..])?.batch_len as usize;
                felix_log::Batch::new(chunk.bytes.slice(at..at + len))?;
                at += len;
            }
            total += chunk.bytes.len() as u64;
            from = chunk.next_offset;
        }
        Ok((total, t.elapsed().as_secs_f64()))
    };
    let (total, el) = replay(&log)?;
    println!("- replay from offset 0, every batch CRC-checked, page cache warm: {:.2} GB/s ({total} bytes in {el:.3} s)", total as f64 / el / 1e9);
    // Mapped pages survive drop_caches, so close (unmap) first.
    log.close()?;
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let (log, _) = Log::open(&path, cfg.clone(), felix_log::now_ms())?;
    if dropped {
        let (total, el) = replay(&log)?;
        println!(
            "- the same from a cold page cache (log closed, caches dropped, reopened): {:.2} GB/s ({el:.3} s)",
            total as f64 / el / 1e9
        );
    } else {
        println!("- cold-cache replay skipped: cannot write /proc/sys/vm/drop_caches (needs root)");
    }
    // A crash: the same on-disk state SIGKILL leaves (mapped writes are in
    // the page cache), without the clean checkpoint.
    drop(log);
    let t = Instant::now();
    let (log, report) = Log::open(&path, cfg, felix_log::now_ms())?;
    let crashed_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("- reopen after clean close: {clean_ms:.1} ms");
    println!(
        "- reopen after crash (active segment verified: {} MiB): {crashed_ms:.1} ms",
        report.verified_bytes >> 20
    );
    drop(log);
    std::fs::remove_dir_all(&path)?;
    Ok(())
}
