//! The index benchmark of issue "Index": `latest(key)` latency with many
//! keys, offset lookups per second, compaction throughput of a keyed log
//! that is 90% superseded, and append latency with and without compaction
//! running — all in one run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use felix_index::{CompactionConfig, Index, IndexConfig, ShardKind};
use felix_log::{
    BatchBuilder, Compression, Durability, LogConfig, Offset, Positioned, RaftTerm, RecordInput, ShardId,
    SharedLog,
};
use hdrhistogram::Histogram;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Scratch directory (on the disk to measure); removed afterwards.
    #[arg(long, default_value = "./felix-bench-data")]
    dir: PathBuf,
    /// Keys for the `latest(key)` figure.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Size of the keyed log to compact (90% of its records superseded).
    #[arg(long, default_value_t = 1024)]
    compaction_mib: u64,
    /// Seconds of appends for each append-latency figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Compaction's write rate in MiB/s (0: unpaced); the default is
    /// `CompactionConfig`'s.
    #[arg(long)]
    compaction_write_mib_per_s: Option<u64>,
    /// A short run: 100k keys, a 64 MiB log, 0.5 s of appends.
    #[arg(long)]
    quick: bool,
}

const LOOKUP_SHARD: ShardId = ShardId(1);
const COMPACT_SHARD: ShardId = ShardId(2);
const RECORDS_PER_BATCH: u64 = 256;

fn rng(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn key(i: u64) -> [u8; 12] {
    let mut k = *b"key-00000000";
    k[4..].copy_from_slice(format!("{:08x}", i).as_bytes());
    k
}

fn batch(keys: impl Iterator<Item = u64>, value: &[u8], now: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(usize::MAX);
    for i in keys {
        b.push(RecordInput {
            key: Some(&key(i)),
            value: Some(value),
            timestamp_ms: now,
            ..RecordInput::default()
        })
        .expect("fits");
    }
    b.build(Compression::None).expect("non-empty")
}

fn append_and_index(log: &SharedLog, index: &Index, shard: ShardId, b: &[u8]) -> anyhow::Result<()> {
    let out = log.append(b, RaftTerm(1))?;
    let p: Vec<Positioned> = log.with(|l| l.positioned_from_raft_index(out.raft_index).take(1).collect());
    index.apply(shard, ShardKind::Keyed, &p)?;
    Ok(())
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (keys, mib, seconds) = if a.quick {
        (100_000, 64, 0.5)
    } else {
        (a.keys, a.compaction_mib, a.seconds)
    };
    let root = a.dir.join("index-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!("# felix-bench index\n\nload average at start: {}\n", load());
    let index = Index::open(root.join("index"), IndexConfig::default())?;
    let now = felix_log::now_ms();

    // ----- latest(key) and locate -----
    let cfg = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(root.join("lookup"), cfg)?;
    let t = Instant::now();
    let value = vec![b'v'; 100];
    let mut i = 0;
    while i < keys {
        let n = RECORDS_PER_BATCH.min(keys - i);
        append_and_index(&log, &index, LOOKUP_SHARD, &batch(i..i + n, &value, now))?;
        i += n;
    }
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "loaded {keys} keys (100-byte values, {RECORDS_PER_BATCH} per batch): {load_s:.1} s, {:.0} keyed records/s appended and indexed\n",
        keys as f64 / load_s
    );
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..keys.min(200_000) {
        index.latest(LOOKUP_SHARD, &key(rng(&mut x) % keys), now)?; // warm the block cache
    }
    let mut h = Histogram::<u64>::new(3)?;
    let lookups = 200_000;
    for _ in 0..lookups {
        let k = key(rng(&mut x) % keys);
        let t = Instant::now();
        let e = index.latest(LOOKUP_SHARD, &k, now)?;
        h.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(e.is_some(), "key missing from the index");
    }
    let end = log.with(|l| l.next_offset()).0;
    let t = Instant::now();
    let mut found = 0u64;
    for _ in 0..lookups {
        found += u64::from(index.locate(LOOKUP_SHARD, Offset(rng(&mut x) % end))?.is_some());
    }
    let locate_per_s = lookups as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(found == lookups, "every offset has an entry at or before it");
    println!("| figure | value | target |\n|---|---|---|");
    println!(
        "| latest(key), {keys} keys, warm: p50 / p99 | {:.1} µs / {:.1} µs | p99 < 20 µs |",
        us(&h, 0.5),
        us(&h, 0.99)
    );
    println!("| locate(offset) lookups/s (one thread) | {locate_per_s:.0} | |");
    log.close()?;

    // ----- compaction of a 90%-superseded keyed log, appends beside it -----
    let value = vec![b'c'; 1000];
    let record_bytes = 1000 + 40;
    let total_records = (mib << 20) / record_bytes;
    let live_keys = (total_records / 10).max(1);
    let cfg = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    let (log, _) = SharedLog::open(root.join("compact"), cfg)?;
    let t = Instant::now();
    let mut written = 0;
    while written < total_records {
        let n = 64.min(total_records - written);
        let first = written % live_keys;
        append_and_index(
            &log,
            &index,
            COMPACT_SHARD,
            &batch((first..first + n).map(|k| k % live_keys), &value, now),
        )?;
        written += n;
    }
    log.with(|l| l.roll(now))?;
    let log_bytes = log.with(|l| l.size_bytes());
    println!(
        "\nkeyed log: {total_records} records of 1000-byte values over {live_keys} keys ({:.0} MiB, 90% superseded), written in {:.1} s",
        log_bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    // Appends until `stop` is set (and at least `seconds` when `timed`).
    // (append + index, append alone, index alone)
    type Hists = (Histogram<u64>, Histogram<u64>, Histogram<u64>);
    let appends = |stop: &AtomicBool, timed: bool| -> anyhow::Result<Hists> {
        let mut h = (
            Histogram::<u64>::new(3)?,
            Histogram::<u64>::new(3)?,
            Histogram::<u64>::new(3)?,
        );
        let mut k = 0u64;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        loop {
            let done = stop.load(Ordering::Relaxed);
            if (timed && Instant::now() >= deadline) || (!timed && done && h.0.len() >= 20) {
                break;
            }
            // Fresh keys, so the appends do not supersede what is compacted.
            let b = batch((k..k + 16).map(|k| live_keys + k), &value, now);
            let t = Instant::now();
            let out = log.append(&b, RaftTerm(1))?;
            let appended = t.elapsed();
            let p: Vec<Positioned> =
                log.with(|l| l.positioned_from_raft_index(out.raft_index).take(1).collect());
            index.apply(COMPACT_SHARD, ShardKind::Keyed, &p)?;
            let total = t.elapsed();
            h.0.record(total.as_nanos() as u64)?;
            h.1.record(appended.as_nanos() as u64)?;
            h.2.record((total - appended).as_nanos() as u64)?;
            k += 16;
        }
        Ok(h)
    };
    let idle = appends(&AtomicBool::new(true), true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = CompactionConfig {
        min_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    };
    if let Some(r) = a.compaction_write_mib_per_s {
        cfg.write_bytes_per_s_max = (r > 0).then_some(r << 20);
    }
    println!(
        "compaction write rate: {}",
        cfg.write_bytes_per_s_max
            .map_or("unpaced".to_string(), |r| format!("{} MiB/s", r >> 20))
    );
    let (report, compaction_s, busy) = std::thread::scope(|s| -> anyhow::Result<_> {
        let stop2 = stop.clone();
        let index = &index;
        let log = &log;
        let c = s.spawn(move || {
            let t = Instant::now();
            let r = index.compact_shard(COMPACT_SHARD, log, &cfg, now, true);
            let secs = t.elapsed().as_secs_f64();
            stop2.store(true, Ordering::Relaxed);
            r.map(|r| (r, secs))
        });
        let busy = appends(&stop, false)?;
        let (r, secs) = c.join().expect("compaction thread")?;
        Ok((r, secs, busy))
    })?;
    println!("\n| figure | value | target |\n|---|---|---|");
    println!(
        "| compaction: {:.0} MiB → {:.0} MiB, {} segments, {} records dropped | {compaction_s:.2} s, {:.0} MB/s | < 10 s for 1 GiB |",
        report.bytes_before as f64 / (1 << 20) as f64,
        report.bytes_after as f64 / (1 << 20) as f64,
        report.segments_rewritten,
        report.records_dropped,
        report.bytes_before as f64 / 1e6 / compaction_s
    );
    for (what, h) in [("idle", &idle), ("compaction running", &busy)] {
        println!(
            "| append+index p50 / p99, {what} (16 × 1 KB records, durability always) | {:.0} µs / {:.0} µs ({} appends; log append p99 {:.0} µs, index apply p99 {:.0} µs) | |",
            us(&h.0, 0.5),
            us(&h.0, 0.99),
            h.0.len(),
            us(&h.1, 0.99),
            us(&h.2, 0.99)
        );
    }
    println!(
        "| ratio of p99s (compacting / idle) | {:.2}× | ≤ 2× |",
        us(&busy.0, 0.99) / us(&idle.0, 0.99)
    );
    log.close()?;
    drop(index);
    std::fs::remove_dir_all(&root)?;
    println!("\nload average at end: {}", load());
    Ok(())
}
