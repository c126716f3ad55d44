//! Replays every checked-in fuzz corpus file through the fuzz entry points.
//! With FELIX_WRITE_CORPUS=1 it first (re)writes the seed inputs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use felix_log::{BatchBuilder, Compression, RecordInput};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds_batch() -> Vec<Vec<u8>> {
    let plain = common::batch_of(&[b"a".to_vec(), b"bb".to_vec()], 5);
    let mut b = BatchBuilder::new(usize::MAX);
    let hdrs: [(&[u8], &[u8]); 2] = [(b"trace", b"1"), (b"ct", b"json")];
    b.push(RecordInput {
        key: Some(b"k"),
        value: Some(b"v"),
        timestamp_ms: 9,
        ttl_ms: Some(60_000),
        headers: &hdrs,
    })
    .unwrap();
    b.push(RecordInput {
        key: Some(b"k"),
        value: None,
        timestamp_ms: 7,
        ..RecordInput::default()
    })
    .unwrap();
    let rich = b.build(Compression::None).unwrap();
    let mut z = BatchBuilder::new(usize::MAX);
    for i in 0..20u8 {
        z.push(RecordInput {
            value: Some(&[i; 64]),
            timestamp_ms: 1,
            ..RecordInput::default()
        })
        .unwrap();
    }
    let zstd = z.build(Compression::Zstd(3)).unwrap();
    let mut c = BatchBuilder::new(usize::MAX).control();
    c.push(RecordInput {
        value: Some(b"cursor"),
        timestamp_ms: 1,
        ..RecordInput::default()
    })
    .unwrap();
    let control = c.build(Compression::None).unwrap();
    let mut truncated = rich.clone();
    truncated.truncate(rich.len() - 3);
    vec![plain, rich, zstd, control, truncated]
}

fn seeds_segment() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    // One record per batch: offset and Raft index advance together.
    for i in 0..4u64 {
        let mut b = common::batch_of(&[common::payload(i, 30)], 1);
        felix_log::batch::stamp(
            &mut b,
            felix_log::Offset(i),
            felix_log::RaftTerm(1),
            felix_log::RaftIndex(i),
        );
        body.extend(b);
    }
    out.push(body.clone());
    let mut torn = body.clone();
    torn.truncate(body.len() - 10);
    out.push(torn);
    let mut interior = body.clone();
    interior[150] ^= 1;
    out.push(interior);
    let mut zeros = body.clone();
    zeros.extend([0u8; 300]);
    out.push(zeros);
    out
}

#[test]
fn replay_fuzz_corpora() {
    if std::env::var_os("FELIX_WRITE_CORPUS").is_some() {
        for (target, seeds) in [
            ("batch_decode", seeds_batch()),
            ("segment_recovery", seeds_segment()),
        ] {
            fs::create_dir_all(corpus_dir(target)).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                fs::write(corpus_dir(target).join(format!("seed-{i}")), s).unwrap();
            }
        }
    }
    for (target, f) in [
        ("batch_decode", felix_log::fuzzing::batch_decode as fn(&[u8])),
        ("segment_recovery", felix_log::fuzzing::segment_recovery),
    ] {
        let mut n = 0;
        for e in fs::read_dir(corpus_dir(target)).unwrap() {
            let data = fs::read(e.unwrap().path()).unwrap();
            f(&data);
            n += 1;
        }
        assert!(n >= 4, "{target}: corpus has only {n} inputs");
    }
}
