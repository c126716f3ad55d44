//! Durability under SIGKILL: a child process appends in `always` mode from
//! several threads and prints each acknowledged append; the parent kills it
//! at a random moment, reopens the log, and checks that every acknowledged
//! batch is present, intact, in order and at its offset, and that nothing
//! follows the recovered tail. Repeated on the same directory, so each round
//! also recovers from the previous round's crash.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use felix_log::{
    BatchBuilder, Compression, Durability, Log, LogConfig, Offset, RaftTerm, RecordInput, SharedLog,
};
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 24;
const WRITERS: u64 = 8;
const CHILD_ENV: &str = "FELIX_LOG_CRASH_CHILD_DIR";

fn config() -> LogConfig {
    // Small segments so kills also land around rolls.
    LogConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 64 << 10,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

fn value(writer: u64, seq: u64) -> Vec<u8> {
    let mut v = format!("{writer}:{seq}:").into_bytes();
    v.extend(common::payload(writer << 32 | seq, 40 + (seq % 7) as usize * 50));
    v
}

/// The child: appends until killed. Not a real test unless CHILD_ENV is set.
#[test]
#[ignore = "run by crash_kill_loop as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let (log, _) = SharedLog::open(&dir, config()).unwrap();
    let out = Mutex::new(std::io::stdout());
    let round: u64 = std::env::var("FELIX_ROUND").unwrap().parse().unwrap();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (log, out) = (&log, &out);
            s.spawn(move || {
                let writer = round * 100 + w;
                for seq in 0.. {
                    let v = value(writer, seq);
                    let mut b = BatchBuilder::new(usize::MAX);
                    let n = 1 + (seq % 3);
                    for _ in 0..n {
                        b.push(RecordInput {
                            value: Some(&v),
                            timestamp_ms: 1,
                            ..RecordInput::default()
                        })
                        .unwrap();
                    }
                    let bytes = b
                        .build(if seq % 4 == 0 {
                            Compression::Zstd(1)
                        } else {
                            Compression::None
                        })
                        .unwrap();
                    let ack = log.append(&bytes, RaftTerm(round + 1)).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(
                        o,
                        "ACK {} {} {writer} {seq} {n}",
                        ack.raft_index.0, ack.base_offset.0
                    )
                    .unwrap();
                    o.flush().unwrap();
                }
            });
        }
    });
}

struct Ack {
    offset: u64,
    writer: u64,
    seq: u64,
    n: u64,
}

#[test]
fn crash_kill_loop() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("FELIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash_kill_loop seed {seed} (FELIX_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked: HashMap<u64, Ack> = HashMap::new();
    let exe = std::env::current_exe().unwrap();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("FELIX_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("ACK "))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "child exited by itself: {status}");
        let lines = reader.join().unwrap();
        for l in &lines {
            let f: Vec<u64> = l[4..].split(' ').map(|x| x.parse().unwrap()).collect();
            let prev = acked.insert(
                f[0],
                Ack {
                    offset: f[1],
                    writer: f[2],
                    seq: f[3],
                    n: f[4],
                },
            );
            assert!(prev.is_none(), "raft index {} acknowledged twice", f[0]);
        }

        let (log, report) = Log::open(dir.path(), config(), felix_log::now_ms()).unwrap();
        assert!(report.quarantined.is_empty(), "round {round}: {report:?}");
        // Walk the whole log: contiguous indexes and offsets, every batch valid.
        let mut next_index = 0;
        let mut next_offset = 0;
        let mut seen = 0;
        for b in log.batches_from(Offset(0)).unwrap() {
            let h = *b.header();
            assert_eq!(h.raft_index.0, next_index, "round {round}: gap in raft indexes");
            assert_eq!(h.base_offset.0, next_offset, "round {round}: gap in offsets");
            b.validate().unwrap();
            if let Some(a) = acked.get(&h.raft_index.0) {
                assert_eq!(a.offset, h.base_offset.0, "acknowledged batch moved");
                assert_eq!(h.record_count as u64, a.n);
                for r in b.records().unwrap() {
                    assert_eq!(
                        r.unwrap().value.unwrap().as_ref(),
                        value(a.writer, a.seq).as_slice()
                    );
                }
                seen += 1;
            }
            next_index += 1;
            next_offset = h.next_offset().0;
        }
        assert_eq!(seen, acked.len(), "round {round}: acknowledged batches missing");
        assert_eq!(log.next_raft_index().0, next_index);
        assert_eq!(log.next_offset().0, next_offset);
        assert!(
            log.entry(log.next_raft_index()).is_none(),
            "something beyond the recovered tail"
        );
        assert!(log.read(log.next_offset(), 1 << 20).unwrap().bytes.is_empty());
        println!(
            "round {round}: {} acks this round, {} in all, log ends at index {next_index}, torn tail: {:?}",
            lines.len(),
            acked.len(),
            report.torn_tail.map(|t| t.1)
        );
    }
    assert!(
        acked.len() > ROUNDS * 10,
        "too few acknowledgements to mean anything: {}",
        acked.len()
    );
}
