//! Opening a log: which segments there are, what an intact checkpoint
//! vouches for, what must be verified, and what is done about damage (a
//! torn tail is cut; anything else stops the open, or is quarantined when
//! repair is asked for). `scan.rs` gives the verdict over one segment's
//! bytes; this module acts on it. Also the file rewrites that truncation
//! and compaction share with recovery (`write_synced`, `rewrite_prefix`,
//! `rescan_rewritten`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{LogConfig, Verify};
use crate::error::{LogError, Result};
use crate::fsio;
use crate::scan::{self, ScanEnd, ScanFrom, Summary};
use crate::segment::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::segment::{push_sparse, IndexEntry, Segment};
use crate::types::{Offset, RaftIndex, RaftTerm};

pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// A damaged range moved aside by repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub segment: PathBuf,
    pub from: u64,
    pub to: u64,
    pub saved_to: PathBuf,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub segments: usize,
    /// The previous close was clean (nothing needed verifying).
    pub clean: bool,
    /// Bytes whose checksums were verified.
    pub verified_bytes: u64,
    /// A torn tail that was cut: segment, position, reason.
    pub torn_tail: Option<(PathBuf, u64, String)>,
    pub quarantined: Vec<Quarantined>,
}

pub(crate) struct Listed {
    path: PathBuf,
    first_offset: Offset,
    first_raft_index: RaftIndex,
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(LogError::io("list directory", dir))? {
        let e = e.map_err(LogError::io("list directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            let p = e.path();
            fs::remove_file(&p).map_err(LogError::io("remove leftover", &p))?;
            continue;
        }
        if let Some((first_offset, first_raft_index)) = format::parse_file_name(name) {
            out.push(Listed {
                path: e.path(),
                first_offset,
                first_raft_index,
            });
        }
    }
    out.sort_by_key(|l| (l.first_raft_index, l.first_offset));
    Ok(out)
}

pub(crate) fn corrupt(path: &Path, position: u64, end: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        position,
        end,
        reason: reason.into(),
    }
}

/// Recovers every segment of `dir`: trusts what an intact checkpoint vouches
/// for, verifies the rest, cuts a torn tail off the last segment, and reports
/// anything else as corruption.
pub(crate) fn recover(dir: &Path, config: &LogConfig, report: &mut OpenReport) -> Result<Vec<Segment>> {
    let listed = list_segments(dir)?;
    let ck = Checkpoint::read(dir);
    report.clean = ck.as_ref().is_some_and(|c| c.clean);
    let mut listed = listed;
    let removable =
        |l: &Listed| listed.len() > 1 || (l.first_offset == Offset(0) && l.first_raft_index == RaftIndex(0));
    if listed
        .last()
        .is_some_and(|l| removable(l) && creation_interrupted(&l.path))
    {
        // A crash while rolling: the new segment was created but its header
        // never written. Nothing can have been appended to it (appends
        // start after the header is fsynced), so it goes, and the segment
        // before it, never sealed, is the active one again.
        let l = listed.pop().expect("checked");
        tracing::warn!(path = %l.path.display(), "removing a segment whose creation was interrupted");
        fs::remove_file(&l.path).map_err(LogError::io("remove segment", &l.path))?;
        fsio::sync_dir(dir)?;
    }
    let mut segments: Vec<Segment> = Vec::with_capacity(listed.len());
    for (i, l) in listed.iter().enumerate() {
        let is_last = i + 1 == listed.len();
        let prev = segments.last().map(|s| s.summary);
        let entry = ck.as_ref().and_then(|c| {
            c.segments
                .iter()
                .find(|e| e.first_offset == l.first_offset && e.first_raft_index == l.first_raft_index)
                .map(|e| (*e, c.clean))
        });
        segments.push(recover_segment(l, is_last, prev, entry, config, report)?);
    }
    Ok(segments)
}

/// Whether a segment file is one whose creation stopped before its header
/// was written: shorter than a header, or a header of zeros.
pub(crate) fn creation_interrupted(path: &Path) -> bool {
    let Ok(f) = File::open(path) else { return false };
    let mut hb = [0u8; SEGMENT_HEADER_BYTES];
    match std::os::unix::fs::FileExt::read_at(&f, &mut hb, 0) {
        Ok(n) if n < SEGMENT_HEADER_BYTES => hb[..n].iter().all(|b| *b == 0),
        Ok(_) => hb.iter().all(|b| *b == 0),
        Err(_) => false,
    }
}

pub(crate) fn recover_segment(
    l: &Listed,
    is_last: bool,
    prev: Option<Summary>,
    entry: Option<(checkpoint::Entry, bool)>,
    config: &LogConfig,
    report: &mut OpenReport,
) -> Result<Segment> {
    let path = &l.path;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LogError::io("open segment", path))?;
    let file_len = file.metadata().map_err(LogError::io("stat segment", path))?.len();
    let mut hb = [0u8; SEGMENT_HEADER_BYTES];
    let header = std::os::unix::fs::FileExt::read_exact_at(&file, &mut hb, 0)
        .map_err(|_| "file shorter than a segment header")
        .and_then(|_| SegmentHeader::decode(&hb))
        .map_err(|why| corrupt(path, 0, file_len, why))?;
    if header.first_offset != l.first_offset || header.first_raft_index != l.first_raft_index {
        return Err(corrupt(
            path,
            0,
            file_len,
            "segment header disagrees with the file name",
        ));
    }
    if let Some(p) = prev {
        if header.first_offset < p.next_offset || p.last.is_some_and(|(_, i)| header.first_raft_index <= i) {
            return Err(corrupt(
                path,
                0,
                file_len,
                "segment overlaps the segment before it",
            ));
        }
    }
    // The first segment held learns its predecessor from its own header:
    // retention may have removed the segment that held it.
    let start_summary = Summary {
        last: prev.and_then(|p| p.last).or(header.prev_last()),
        ..Summary::empty(header.first_offset)
    };

    // What the checkpoint vouches for.
    let trusted = match entry {
        Some((e, _)) if config.verify == Verify::FromCheckpoint && !is_last && e.len == file_len => Some(e),
        Some((e, true)) if config.verify == Verify::FromCheckpoint && is_last && e.len <= file_len => Some(e),
        _ => None,
    };
    let trusted_summary = |e: checkpoint::Entry| Summary {
        next_offset: e.next_offset,
        last: e.last,
        max_timestamp_ms: e.max_timestamp_ms,
        gaps: 0,
    };
    if let (Some(e), false) = (trusted, is_last) {
        return Segment::open_sealed(
            path.clone(),
            file,
            file_len,
            header,
            e.len,
            trusted_summary(e),
            None,
            config.index_interval_bytes,
        );
    }

    // SAFETY: we hold the directory lock; nobody else changes the file while
    // this read-only view is alive (it is dropped before any rewrite below).
    let map = unsafe { Mmap::map(&file) }.map_err(LogError::io("map segment", path))?;
    let (from, summary) = match trusted {
        Some(e) => (e.len as usize, trusted_summary(e)),
        None => (SEGMENT_HEADER_BYTES, start_summary),
    };
    let mut index: Vec<IndexEntry> = Vec::new();
    let build_index = from == SEGMENT_HEADER_BYTES;
    let interval = config.index_interval_bytes;
    let scanned = scan::scan(
        &map,
        ScanFrom {
            pos: from,
            summary,
            min_raft_index: header.first_raft_index,
            verify_records: true,
        },
        |pos, h| {
            if build_index {
                push_sparse(&mut index, interval, pos, h);
            }
        },
    );
    drop(map);
    report.verified_bytes += (scanned.valid_end - from) as u64;
    if scanned.summary.gaps > 0 {
        tracing::warn!(path = %path.display(), gaps = scanned.summary.gaps, "Raft index gaps (left by an earlier repair)");
    }
    let end = scanned.valid_end as u64;
    match scanned.end {
        ScanEnd::Clean => {}
        ScanEnd::Corrupt { end: bad_end, reason } => return Err(corrupt(path, end, bad_end as u64, reason)),
        ScanEnd::Torn { reason } if !is_last => return Err(corrupt(path, end, file_len, reason)),
        ScanEnd::Torn { reason } => {
            tracing::warn!(path = %path.display(), position = end, %reason, "cutting torn tail");
            report.torn_tail = Some((path.clone(), end, reason));
        }
    }
    let index = build_index.then_some(index);
    if is_last {
        if trusted.is_none() || report.torn_tail.is_some() {
            // Whatever lies past the valid end (a torn batch, pages written
            // out of order before a power loss) must never come back.
            fsio::zero_range(&file, end, file_len).map_err(LogError::io("zero torn tail", path))?;
            file.sync_all().map_err(LogError::io("fsync segment", path))?;
        }
        Segment::map_active(
            path.clone(),
            file,
            header,
            end,
            scanned.summary,
            index,
            config.segment_bytes,
            config.index_interval_bytes,
        )
    } else {
        Segment::open_sealed(
            path.clone(),
            file,
            file_len,
            header,
            end,
            scanned.summary,
            index,
            config.index_interval_bytes,
        )
    }
}

/// Moves `[from, to)` of a segment into `quarantine/` and rewrites the
/// segment without it (the whole file when its header is damaged).
pub(crate) fn quarantine(dir: &Path, path: &Path, from: u64, to: u64) -> Result<Quarantined> {
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir).map_err(LogError::io("create directory", &qdir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
    let data = fs::read(path).map_err(LogError::io("read segment", path))?;
    let to = to.min(data.len() as u64);
    let saved_to = qdir.join(format!("{name}.{from}-{to}.bad"));
    if from < SEGMENT_HEADER_BYTES as u64 {
        fs::rename(path, &saved_to).map_err(LogError::io("quarantine segment", path))?;
    } else {
        write_synced(&saved_to, &[&data[from as usize..to as usize]])?;
        let tmp = path.with_extension("seg.tmp");
        write_synced(&tmp, &[&data[..from as usize], &data[to as usize..]])?;
        fs::rename(&tmp, path).map_err(LogError::io("replace segment", path))?;
    }
    fsio::sync_dir(&qdir)?;
    fsio::sync_dir(dir)?;
    Ok(Quarantined {
        segment: path.to_path_buf(),
        from,
        to,
        saved_to,
    })
}

pub(crate) fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut f = File::create(path).map_err(LogError::io("create", path))?;
    for p in parts {
        f.write_all(p).map_err(LogError::io("write", path))?;
    }
    f.sync_all().map_err(LogError::io("fsync", path))
}

/// After a segment file was rewritten (and renamed into place at `path`)
/// from `bytes`, batches the log had verified: their summary and sparse
/// index, and the file opened for mapping.
pub(crate) fn rescan_rewritten(
    path: &Path,
    bytes: &[u8],
    header: &SegmentHeader,
    prev_last: Option<(RaftTerm, RaftIndex)>,
    index_interval_bytes: u32,
) -> Result<(Summary, Vec<IndexEntry>, File)> {
    let mut index = Vec::new();
    let scanned = scan::scan(
        bytes,
        ScanFrom {
            pos: SEGMENT_HEADER_BYTES,
            summary: Summary {
                last: prev_last,
                ..Summary::empty(header.first_offset)
            },
            min_raft_index: header.first_raft_index,
            verify_records: false,
        },
        |pos, h| push_sparse(&mut index, index_interval_bytes, pos, h),
    );
    assert_eq!(
        scanned.valid_end,
        bytes.len(),
        "a rewrite of verified batches scans to its end"
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LogError::io("open segment", path))?;
    Ok((scanned.summary, index, file))
}

/// Replaces `seg` by a new active segment holding its first `cut` bytes:
/// written to a temporary file, fsynced, renamed over the old name. The old
/// mapping (and any `Bytes` over it) stays valid on the unlinked inode.
pub(crate) fn rewrite_prefix(
    dir: &Path,
    seg: &Segment,
    cut: u64,
    prev_last: Option<(RaftTerm, RaftIndex)>,
    config: &LogConfig,
) -> Result<Segment> {
    let tmp = seg.path.with_extension("seg.tmp");
    let prefix = seg.bytes(0, cut as usize);
    write_synced(&tmp, &[&prefix])?;
    fs::rename(&tmp, &seg.path).map_err(LogError::io("replace segment", &seg.path))?;
    fsio::sync_dir(dir)?;
    let (summary, index, file) = rescan_rewritten(
        &seg.path,
        &prefix,
        &seg.header,
        prev_last,
        config.index_interval_bytes,
    )?;
    Segment::map_active(
        seg.path.clone(),
        file,
        seg.header,
        cut,
        summary,
        Some(index),
        config.segment_bytes,
        config.index_interval_bytes,
    )
}
