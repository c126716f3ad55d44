//! Batches sealed at rest in a real log: appended, stamped and recovered
//! without keys; read in the clear only through a keyring; compacted
//! into batches sealed again under the tenant's current key.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::small_config;
use felix_log::batch::seal::{self, Keyring, SealKey};
use felix_log::{Batch, Compression, Log, LogError, Offset, RaftIndex, RaftTerm};

#[derive(Debug)]
struct Ring {
    keys: Vec<(u32, [u8; 32])>,
    current: Mutex<Option<u32>>,
    nonces: Mutex<u64>,
}

impl Ring {
    fn new(keys: &[(u32, [u8; 32])], current: Option<u32>) -> Arc<Ring> {
        Arc::new(Ring {
            keys: keys.to_vec(),
            current: Mutex::new(current),
            nonces: Mutex::new(0),
        })
    }
}

impl Keyring for Ring {
    fn key(&self, id: u32) -> Option<SealKey> {
        self.keys
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, k)| SealKey::new(k))
    }
    fn current(&self) -> Option<u32> {
        *self.current.lock().unwrap()
    }
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.nonces.lock().unwrap();
        *n += 1;
        let mut out = [0; 12];
        out[..8].copy_from_slice(&n.to_le_bytes());
        out
    }
}

const SECRET: &str = "plaintext-that-must-not-reach-the-disk";

fn keyed(keys: &[&str], ts: i64) -> Vec<u8> {
    let records: Vec<(&str, Option<String>)> =
        keys.iter().map(|k| (*k, Some(format!("{SECRET}-{k}")))).collect();
    felix_testkit::Batch::keyed(&records)
        .ts(ts)
        .ts_step(1)
        .compression(Compression::None)
        .build()
}

fn segment_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg") {
            all.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(!all.is_empty(), "segments were written");
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn values(log: &Log, b: &Batch) -> Vec<(Offset, String)> {
    let clear = log.clear(b).unwrap();
    clear
        .records()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn sealed_batches_recover_without_keys_and_compact_under_the_current_key() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::new(&[(1, [1; 32]), (2, [2; 32])], Some(1));
    let (mut log, _) = Log::open(dir.path(), small_config(), 0).unwrap();
    log.set_keys(Some(ring.clone()));
    for i in 0..30u64 {
        let sealed = seal::seal_current(&keyed(&["x", "y", "z"], i as i64), ring.as_ref())
            .unwrap()
            .unwrap();
        log.append(&sealed, RaftTerm(1), RaftIndex(i), 0).unwrap();
    }
    log.roll(0).unwrap();
    log.flush().unwrap();
    assert!(
        !contains(&segment_bytes(dir.path()), SECRET),
        "no record in the clear on disk"
    );
    drop(log);

    // Recovery checks every checksum without any key.
    let (mut log, report) = Log::open(dir.path(), small_config(), 0).unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(log.next_offset(), Offset(90));
    let first = log.entry(RaftIndex(0)).unwrap();
    assert!(first.header().flags.sealed(), "reads hand out stored bytes");
    assert!(
        matches!(log.clear(&first), Err(LogError::Batch(_))),
        "no keyring, no records"
    );
    log.set_keys(Some(ring.clone()));
    assert_eq!(values(&log, &first)[2], (Offset(2), format!("{SECRET}-z")));
    let chunk = log.read(Offset(0), 1 << 20).unwrap();
    let clear = log.clear_chunk(chunk.bytes).unwrap();
    assert!(contains(&clear, SECRET));

    // Rotation: compaction writes what it keeps under key 2.
    *ring.current.lock().unwrap() = Some(2);
    let seg = log.segments()[0].clone();
    log.compact_segment(seg.id, |r| r.key.as_deref() == Some(b"z"))
        .unwrap()
        .unwrap();
    assert!(
        !contains(&segment_bytes(dir.path()), SECRET),
        "compaction wrote nothing in the clear"
    );
    let b = log.entry(RaftIndex(0)).unwrap();
    assert_eq!(seal::key_id(&b), 2);
    assert_eq!(values(&log, &b), vec![(Offset(2), format!("{SECRET}-z"))]);
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config(), 0).unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(log.next_offset(), Offset(90));

    // Crypto-shredding: without key 2 (a deleted tenant's), the compacted
    // batch does not open, even with every other key.
    let mut log = log;
    log.set_keys(Some(Ring::new(&[(1, [1; 32])], Some(1))));
    let b = log.entry(RaftIndex(0)).unwrap();
    assert!(log.clear(&b).is_err());
}

#[test]
fn a_sealed_byte_flipped_on_disk_is_caught_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::new(&[(1, [1; 32])], Some(1));
    let (mut log, _) = Log::open(dir.path(), small_config(), 0).unwrap();
    let sealed = seal::seal_current(&keyed(&["a"], 0), ring.as_ref())
        .unwrap()
        .unwrap();
    let at = log.append(&sealed, RaftTerm(1), RaftIndex(0), 0).unwrap();
    log.flush().unwrap();
    let b = log.entry(RaftIndex(0)).unwrap();
    let mut bytes = b.bytes().to_vec();
    let n = bytes.len();
    bytes[n - 20] ^= 0x10;
    assert!(
        Batch::new(Bytes::from(bytes)).is_err(),
        "the records checksum covers the seal"
    );
    assert_eq!(at.base_offset, Offset(0));
}
