//! Snapshots: the entries a follower is missing, plus the owner's state, in
//! one file (`docs/format/snapshot.md`).
//!
//! ```text
//! 0   magic "FELIXSNP"                       8 bytes
//! 8   version (1)                            u8, then 3 zero bytes
//! 12  header length H                        u32 LE
//! 16  header: JSON {meta, first_offset, prev, state_len}   H bytes
//! ..  owner state                            state_len bytes
//! ..  stamped record batches, in Raft order (each starts with its length)
//! end CRC-32 of every byte before it         u32 LE
//! ```
//!
//! The batches run from the leader's first held entry through
//! `meta.last_log_id`; installing one replaces the follower's log with them
//! at the same offsets, terms and indexes.

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use felix_log::{Batch, BatchHeader, RaftIndex, RaftTerm, SharedLog};
use serde::{Deserialize, Serialize};

use crate::error::ReplicationError;
use crate::types::SnapshotMeta;

pub const MAGIC: [u8; 8] = *b"FELIXSNP";
pub const VERSION: u8 = 1;
pub const HEADER_LEN_AT: usize = MAGIC.len() + 4;
pub const HEADER_AT: usize = HEADER_LEN_AT + 4;
/// A snapshot header is a few hundred bytes; refuse absurd ones.
pub const HEADER_BYTES_MAX: usize = 1 << 20;
/// Owner state shipped beside the entries.
pub const STATE_BYTES_MAX: usize = 256 << 20;
/// Batches copied per log lock while building.
const BUILD_CHUNK_ENTRIES: usize = 512;

const _: () = assert!(HEADER_AT == 16);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    /// Offset of the first record the batches hold (or would hold).
    pub first_offset: u64,
    /// The entry before the first batch (what the follower's log restarts after).
    pub prev: Option<(u64, u64)>,
    pub state_len: u64,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReplicationError {
    let path = path.to_owned();
    move |source| ReplicationError::Io { op, path, source }
}

fn corrupt(why: impl Into<String>) -> ReplicationError {
    ReplicationError::Corrupt {
        what: "snapshot",
        why: why.into(),
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot of `log` through `meta.last_log_id` to `path`
/// (via a temporary file, fsynced, renamed).
/// A suffix no other file of this process gets.
pub fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        felix_log::now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Prefix of the links a snapshot is sent from (removed once sent).
pub const SENDING_PREFIX: &str = "sending-";

pub fn build(log: &SharedLog, meta: SnapshotMeta, state: &[u8], path: &Path) -> Result<(), ReplicationError> {
    let last = meta.last_log_id.map_or(0, |l| l.index);
    let (first_offset, prev, first_index) = log.with(|l| {
        (
            l.earliest_offset().0,
            l.purged_last(),
            l.first_raft_index().unwrap_or(l.next_raft_index()),
        )
    });
    let header = SnapshotHeader {
        meta,
        first_offset,
        prev: prev.map(|(t, i)| (t.0, i.0)),
        state_len: state.len() as u64,
    };
    let h = serde_json::to_vec(&header).map_err(|e| corrupt(e.to_string()))?;
    // A name of its own: two builds may overlap, and the finished file
    // replaces the current one only by rename.
    let tmp = path.with_extension(format!("{}.tmp", unique_suffix()));
    let f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let mut w = CrcWriter {
        inner: BufWriter::new(f),
        crc: crc32fast::Hasher::new(),
    };
    let wr = io("write", &tmp);
    let put = |w: &mut CrcWriter<_>| -> std::io::Result<()> {
        w.write_all(&MAGIC)?;
        w.write_all(&[VERSION, 0, 0, 0])?;
        w.write_all(&(h.len() as u32).to_le_bytes())?;
        w.write_all(&h)?;
        w.write_all(state)?;
        let mut next = first_index;
        while next.0 <= last {
            let chunk: Vec<Batch> = log.with(|l| {
                l.positioned_from_raft_index(next)
                    .take_while(|p| p.batch.header().raft_index.0 <= last)
                    .take(BUILD_CHUNK_ENTRIES)
                    .map(|p| p.batch)
                    .collect()
            });
            let Some(end) = chunk.last() else { break };
            next = end.header().raft_index.next();
            for b in &chunk {
                w.write_all(b.bytes())?;
            }
        }
        Ok(())
    };
    put(&mut w).map_err(wr)?;
    let crc = w.crc.finalize();
    let mut inner = w
        .inner
        .into_inner()
        .map_err(|e| io("write", &tmp)(e.into_error()))?;
    inner.write_all(&crc.to_le_bytes()).map_err(io("write", &tmp))?;
    inner.sync_all().map_err(io("fsync", &tmp))?;
    drop(inner);
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    Ok(())
}

/// A verified snapshot read back: header, owner state and the batches.
#[derive(Debug)]
pub struct Loaded {
    pub header: SnapshotHeader,
    pub state: Vec<u8>,
    pub batches: Vec<Batch>,
}

/// Reads just the header (serving `get_current_snapshot`).
pub fn read_header(path: &Path) -> Result<SnapshotHeader, ReplicationError> {
    let mut f = std::fs::File::open(path).map_err(io("open", path))?;
    let mut fixed = [0u8; HEADER_AT];
    f.read_exact(&mut fixed).map_err(io("read", path))?;
    let len = check_fixed(&fixed)?;
    let mut h = vec![0u8; len];
    f.read_exact(&mut h).map_err(io("read", path))?;
    serde_json::from_slice(&h).map_err(|e| corrupt(format!("header: {e}")))
}

fn check_fixed(b: &[u8]) -> Result<usize, ReplicationError> {
    if b.len() < HEADER_AT || b[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if b[8] != VERSION {
        return Err(corrupt(format!("unknown version {}", b[8])));
    }
    let len = u32::from_le_bytes(b[HEADER_LEN_AT..HEADER_AT].try_into().expect("4 bytes")) as usize;
    if len > HEADER_BYTES_MAX {
        return Err(corrupt(format!("header of {len} bytes")));
    }
    Ok(len)
}

/// Reads and verifies a whole snapshot (checksum, then every batch).
pub fn load(path: &Path) -> Result<Loaded, ReplicationError> {
    let all = bytes::Bytes::from(std::fs::read(path).map_err(io("read", path))?);
    if all.len() < HEADER_AT + 4 {
        return Err(corrupt("shorter than its fixed header"));
    }
    let body = all.len() - 4;
    let want = u32::from_le_bytes(all[body..].try_into().expect("4 bytes"));
    if crc32fast::hash(&all[..body]) != want {
        return Err(corrupt("checksum mismatch"));
    }
    let hlen = check_fixed(&all)?;
    let mut pos = HEADER_AT + hlen;
    if pos > body {
        return Err(corrupt("header runs past the end"));
    }
    let header: SnapshotHeader =
        serde_json::from_slice(&all[HEADER_AT..pos]).map_err(|e| corrupt(format!("header: {e}")))?;
    let slen = header.state_len as usize;
    if slen > STATE_BYTES_MAX || pos + slen > body {
        return Err(corrupt("state runs past the end"));
    }
    let state = all[pos..pos + slen].to_vec();
    pos += slen;
    let mut batches = Vec::new();
    while pos < body {
        let h = BatchHeader::decode(&all[pos..body]).map_err(|e| corrupt(e.to_string()))?;
        let end = pos + h.batch_len as usize;
        if end > body {
            return Err(corrupt("batch runs past the end"));
        }
        batches.push(Batch::new(all.slice(pos..end)).map_err(|e| corrupt(e.to_string()))?);
        pos = end;
    }
    Ok(Loaded {
        header,
        state,
        batches,
    })
}

/// Replaces `log`'s entries with the snapshot's and makes them durable.
pub fn install_into(log: &SharedLog, loaded: &Loaded) -> Result<(), ReplicationError> {
    let prev = loaded.header.prev.map(|(t, i)| (RaftTerm(t), RaftIndex(i)));
    let first_offset = loaded
        .batches
        .first()
        .map_or(loaded.header.first_offset, |b| b.header().base_offset.0);
    log.reset_after(felix_log::Offset(first_offset), prev)?;
    let mut last = None;
    for b in &loaded.batches {
        let h = b.header();
        log.append_at(b.bytes(), h.raft_term, h.raft_index)?;
        last = Some(h.raft_index);
    }
    if let Some(i) = last {
        log.wait_durable(i)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SharedLog::open(dir.path().join("log"), felix_log::LogConfig::default()).unwrap();
        for i in 0..3u64 {
            let mut b = felix_log::BatchBuilder::new(1 << 20);
            b.push(felix_log::RecordInput {
                value: Some(format!("v{i}").as_bytes()),
                timestamp_ms: 1,
                ..felix_log::RecordInput::default()
            })
            .unwrap();
            log.append_at(
                &b.build(felix_log::Compression::None).unwrap(),
                RaftTerm(1),
                RaftIndex(i),
            )
            .unwrap();
        }
        let meta = SnapshotMeta {
            last_log_id: Some(crate::store::log_id(RaftTerm(1), RaftIndex(2))),
            ..SnapshotMeta::default()
        };
        let path = dir.path().join("s.snap");
        build(&log, meta, b"owner-state", &path).unwrap();
        let ok = load(&path).unwrap();
        assert_eq!(ok.batches.len(), 3);
        assert_eq!(ok.state, b"owner-state");
        let good = std::fs::read(&path).unwrap();
        for at in [3, HEADER_AT + 2, good.len() - 10] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(load(&path), Err(ReplicationError::Corrupt { .. })),
                "flip at {at} accepted"
            );
        }
        std::fs::write(&path, &good[..good.len() - 7]).unwrap();
        assert!(load(&path).is_err(), "a cut snapshot was accepted");
    }
}
