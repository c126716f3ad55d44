//! One segment file: mapped at its full capacity but allocated in growing
//! steps (`allocation.rs`), appended through a shared writable mapping while
//! active, sealed (trimmed, fsynced, remapped read-only) when full or old.
//! Reads hand out `Bytes` over the mapping without copying.
//!
//! Blocks are reserved with `fallocate` before any write reaches them, so a
//! full disk is a typed error at append and never a SIGBUS on a mapped page
//! past the file's end; an idle shard holds one small step, not a whole
//! segment.

pub mod allocation;
pub mod format;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions, MmapRaw};

use crate::batch::{self, Batch, BatchHeader};
use crate::error::{LogError, Result};
use crate::fsio;
use crate::scan::{self, ScanFrom, Summary};
use crate::types::{Offset, RaftIndex, RaftTerm, SegmentId};
use format::{SegmentHeader, SEGMENT_HEADER_BYTES};

/// A sparse index entry: the batch starting at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub base_offset: Offset,
    pub raft_index: RaftIndex,
    pub pos: u32,
}

/// Appends an entry for the batch at `pos` if it is at least `interval`
/// bytes past the previous entry (or is the first).
pub(crate) fn push_sparse(idx: &mut Vec<IndexEntry>, interval: u32, pos: usize, h: &BatchHeader) {
    let pos = pos as u32;
    if idx.last().is_none_or(|e| pos - e.pos >= interval) {
        idx.push(IndexEntry {
            base_offset: h.base_offset,
            raft_index: h.raft_index,
            pos,
        });
    }
}

/// Owner of the published prefix of an active segment's mapping.
struct PublishedPrefix {
    map: Arc<MmapRaw>,
    len: usize,
}

impl AsRef<[u8]> for PublishedPrefix {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` never exceeds the mapping, and bytes below a published
        // length are never written again while the mapping lives: the writer
        // only writes at or past the current end, and truncation writes a new
        // file instead of changing these bytes (see `Log::truncate_after`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

enum Map {
    Active {
        file: Arc<File>,
        raw: Arc<MmapRaw>,
        /// Bytes of the file reserved so far: writes stay below it.
        allocated: u64,
    },
    Sealed {
        bytes: Bytes,
    },
}

pub(crate) struct Segment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// Bytes in use, segment header included.
    pub len: u64,
    /// Summary of this segment's batches (`next_offset` starts at the header's
    /// first offset; `last` starts at the previous segment's last batch).
    pub summary: Summary,
    map: Map,
    index: OnceLock<Vec<IndexEntry>>,
    index_interval_bytes: u32,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("sealed", &self.is_sealed())
            .finish()
    }
}

impl Segment {
    pub fn id(&self) -> SegmentId {
        SegmentId(self.header.first_raft_index.0)
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self.map, Map::Sealed { .. })
    }

    pub fn has_batches(&self) -> bool {
        self.len > SEGMENT_HEADER_BYTES as u64
    }

    /// Creates a new active segment file: preallocated, header written and
    /// fsynced, directory entry fsynced.
    pub fn create(
        dir: &Path,
        first_offset: Offset,
        first_raft_index: RaftIndex,
        prev_last: Option<(RaftTerm, RaftIndex)>,
        now_ms: i64,
        segment_bytes: u64,
        index_interval_bytes: u32,
    ) -> Result<Segment> {
        let path = dir.join(format::file_name(first_offset, first_raft_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(LogError::io("create segment", &path))?;
        let first = allocation::next(0, SEGMENT_HEADER_BYTES as u64, segment_bytes);
        if let Err(e) = fsio::preallocate(&file, first) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(if fsio::is_no_space(&e) {
                LogError::DiskFull { path }
            } else {
                LogError::Io {
                    op: "preallocate segment",
                    path,
                    source: e,
                }
            });
        }
        let header = SegmentHeader {
            first_offset,
            first_raft_index,
            created_ms: now_ms,
            preallocated_bytes: segment_bytes,
            generation: 0,
            prev_term: prev_last
                .filter(|(_, i)| i.next() == first_raft_index)
                .map(|(t, _)| t),
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(LogError::io("write segment header", &path))?;
        file.sync_all().map_err(LogError::io("fsync segment", &path))?;
        fsio::sync_dir(dir)?;
        let mut summary = Summary::empty(first_offset);
        summary.last = prev_last;
        Segment::map_active(
            path,
            file,
            header,
            SEGMENT_HEADER_BYTES as u64,
            summary,
            Some(Vec::new()),
            segment_bytes,
            index_interval_bytes,
        )
    }

    /// Opens an existing file as the active segment with `len` bytes in use,
    /// mapped at `segment_bytes` and allocated at least through `len` (a
    /// file allocated further, as an older version made them, stays so).
    #[allow(clippy::too_many_arguments)]
    pub fn map_active(
        path: PathBuf,
        file: File,
        header: SegmentHeader,
        len: u64,
        summary: Summary,
        index: Option<Vec<IndexEntry>>,
        segment_bytes: u64,
        index_interval_bytes: u32,
    ) -> Result<Segment> {
        let size = segment_bytes.max(len);
        let file_len = file
            .metadata()
            .map_err(LogError::io("stat segment", &path))?
            .len();
        let allocated = file_len.max(allocation::next(0, len, size)).min(size);
        fsio::preallocate(&file, allocated).map_err(|e| {
            if fsio::is_no_space(&e) {
                LogError::DiskFull { path: path.clone() }
            } else {
                LogError::Io {
                    op: "preallocate segment",
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let raw = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(LogError::io("map segment", &path))?;
        Ok(Segment {
            path,
            header,
            len,
            summary,
            map: Map::Active {
                file: Arc::new(file),
                raw: Arc::new(raw),
                allocated,
            },
            index: index.map_or_else(OnceLock::new, OnceLock::from),
            index_interval_bytes,
        })
    }

    /// Opens an existing file (already open read-write, `file_len` bytes long)
    /// as a sealed segment of `len` bytes, trimming anything past `len`.
    #[allow(clippy::too_many_arguments)]
    pub fn open_sealed(
        path: PathBuf,
        file: File,
        file_len: u64,
        header: SegmentHeader,
        len: u64,
        summary: Summary,
        index: Option<Vec<IndexEntry>>,
        index_interval_bytes: u32,
    ) -> Result<Segment> {
        if file_len != len {
            file.set_len(len).map_err(LogError::io("trim segment", &path))?;
            file.sync_all().map_err(LogError::io("fsync segment", &path))?;
        }
        let bytes = map_read_only(&file, &path)?;
        Ok(Segment {
            path,
            header,
            len,
            summary,
            map: Map::Sealed { bytes },
            index: index.map_or_else(OnceLock::new, OnceLock::from),
            index_interval_bytes,
        })
    }

    /// Room left for batches.
    pub fn remaining(&self) -> u64 {
        match &self.map {
            Map::Active { raw, .. } => raw.len() as u64 - self.len,
            Map::Sealed { .. } => 0,
        }
    }

    /// Reserves blocks for `n` more bytes past the data, growing the file
    /// by the next step if they are not reserved yet. The caller checked
    /// that they fit the segment. `DiskFull` when the disk has no room:
    /// nothing was written, and the log stays usable.
    pub fn reserve(&mut self, n: u64) -> Result<()> {
        let Map::Active { file, raw, allocated } = &mut self.map else {
            panic!("reserve in sealed segment {}", self.path.display());
        };
        let needed = self.len + n;
        if needed <= *allocated {
            return Ok(());
        }
        let to = allocation::next(*allocated, needed, raw.len() as u64);
        fsio::preallocate(file, to).map_err(|e| {
            if fsio::is_no_space(&e) {
                LogError::DiskFull {
                    path: self.path.clone(),
                }
            } else {
                LogError::Io {
                    op: "grow segment",
                    path: self.path.clone(),
                    source: e,
                }
            }
        })?;
        *allocated = to;
        Ok(())
    }

    /// Copies a checked batch to the end of the active segment and stamps the
    /// fields the log owns in place. The caller checked that it fits.
    pub fn append(
        &mut self,
        src: &[u8],
        h: &BatchHeader,
        base: Offset,
        term: RaftTerm,
        index: RaftIndex,
    ) -> u64 {
        let Map::Active { raw, allocated, .. } = &self.map else {
            panic!("append to sealed segment {}", self.path.display());
        };
        let pos = self.len as usize;
        assert!(pos + src.len() <= raw.len(), "append past the segment's end");
        // A write past the reserved blocks would be a SIGBUS, not an error.
        assert!(
            (pos + src.len()) as u64 <= *allocated,
            "append past the segment's reserved bytes"
        );
        // SAFETY: [pos, pos + len) lies inside the mapping (asserted) and past
        // the published prefix, so no reader holds a view of it; `&mut self`
        // excludes other writers.
        let dst = unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().add(pos), src.len()) };
        dst.copy_from_slice(src);
        batch::stamp(dst, base, term, index);
        let mut stamped = *h;
        stamped.base_offset = base;
        stamped.raft_term = term;
        stamped.raft_index = index;
        if let Some(idx) = self.index.get_mut() {
            push_sparse(idx, self.index_interval_bytes, pos, &stamped);
        }
        let contiguous =
            self.summary.last.is_none_or(|(_, i)| i.next() == index) && base == self.summary.next_offset;
        debug_assert!(contiguous, "the log checked contiguity before appending");
        self.summary.next_offset = stamped.next_offset();
        self.summary.last = Some((term, index));
        self.summary.max_timestamp_ms = self.summary.max_timestamp_ms.max(h.max_timestamp_ms);
        self.len += src.len() as u64;
        pos as u64
    }

    /// Rewrites the creation time in the header of an empty active segment,
    /// so that a segment made long before its first batch is not rolled
    /// right after it.
    pub fn restart_clock(&mut self, now_ms: i64) -> Result<()> {
        debug_assert!(!self.has_batches());
        self.header.created_ms = now_ms;
        let Map::Active { file, .. } = &self.map else {
            return Ok(());
        };
        file.write_all_at(&self.header.encode(), 0)
            .map_err(LogError::io("write segment header", &self.path))
    }

    /// fdatasync of an active segment (sealed ones were synced when sealed).
    pub fn sync_handle(&self) -> Option<Arc<File>> {
        match &self.map {
            Map::Active { file, .. } => Some(file.clone()),
            Map::Sealed { .. } => None,
        }
    }

    pub fn flush(&self) -> Result<()> {
        match &self.map {
            Map::Active { file, .. } => file
                .sync_data()
                .map_err(LogError::io("fsync segment", &self.path)),
            Map::Sealed { .. } => Ok(()),
        }
    }

    /// Seals an active segment: fsync, trim to the bytes in use, fsync the
    /// new length, remap read-only. Readers of the old mapping keep it.
    pub fn seal(&mut self) -> Result<()> {
        let Map::Active { file, .. } = &self.map else {
            return Ok(());
        };
        let p = &self.path;
        file.sync_data().map_err(LogError::io("fsync segment", p))?;
        file.set_len(self.len).map_err(LogError::io("trim segment", p))?;
        file.sync_all().map_err(LogError::io("fsync segment", p))?;
        let bytes = map_read_only(file, p)?;
        self.map = Map::Sealed { bytes };
        Ok(())
    }

    /// Bytes `[from, to)` of the segment, sharing the mapping.
    pub fn bytes(&self, from: usize, to: usize) -> Bytes {
        assert!(
            from <= to && to as u64 <= self.len,
            "read outside the segment's data"
        );
        match &self.map {
            Map::Sealed { bytes } => bytes.slice(from..to),
            Map::Active { raw, .. } => Bytes::from_owner(PublishedPrefix {
                map: raw.clone(),
                len: self.len as usize,
            })
            .slice(from..to),
        }
    }

    /// The segment's data, borrowed (no `Bytes` owner is created).
    fn data(&self) -> &[u8] {
        match &self.map {
            Map::Sealed { bytes } => &bytes[..self.len as usize],
            // SAFETY: as for `PublishedPrefix`: `len` is within the mapping and
            // bytes below it are never written while mapped; the borrow of
            // `self` keeps the writer (`&mut self`) out while it lives.
            Map::Active { raw, .. } => unsafe { std::slice::from_raw_parts(raw.as_ptr(), self.len as usize) },
        }
    }

    /// Header of the batch at `pos`, which the log put there.
    pub fn header_at(&self, pos: usize) -> BatchHeader {
        BatchHeader::decode(&self.data()[pos..]).unwrap_or_else(|e| {
            panic!(
                "batch header at {}:{pos} was verified before but now fails: {e}",
                self.path.display()
            )
        })
    }

    /// The batch at `pos`.
    pub fn batch_at(&self, pos: usize) -> Batch {
        let h = self.header_at(pos);
        Batch::trusted(h, self.bytes(pos, pos + h.batch_len as usize))
    }

    /// The sparse index, built from the batch headers on first use.
    fn index(&self) -> &[IndexEntry] {
        self.index.get_or_init(|| {
            let data = self.data();
            let mut idx = Vec::new();
            let from = ScanFrom {
                pos: SEGMENT_HEADER_BYTES,
                summary: Summary::empty(self.header.first_offset),
                min_raft_index: self.header.first_raft_index,
                verify_records: false,
            };
            let interval = self.index_interval_bytes;
            scan::scan(data, from, |pos, h| push_sparse(&mut idx, interval, pos, h));
            idx
        })
    }

    /// Position of the first batch that holds `offset` or, when `offset` falls
    /// in a gap, the first batch after it; `None` if no batch does.
    pub fn find_offset(&self, offset: Offset) -> Option<usize> {
        let idx = self.index();
        let start = match idx.partition_point(|e| e.base_offset <= offset) {
            0 => SEGMENT_HEADER_BYTES,
            n => idx[n - 1].pos as usize,
        };
        self.hop(start, |h| h.next_offset() > offset)
    }

    /// Position of the batch with Raft index `index`.
    pub fn find_raft_index(&self, index: RaftIndex) -> Option<usize> {
        let idx = self.index();
        let start = match idx.partition_point(|e| e.raft_index <= index) {
            0 => SEGMENT_HEADER_BYTES,
            n => idx[n - 1].pos as usize,
        };
        let pos = self.hop(start, |h| h.raft_index >= index)?;
        (self.header_at(pos).raft_index == index).then_some(pos)
    }

    /// Position of the batch with Raft index `index` or, if there is none,
    /// the first batch after it.
    pub fn find_raft_index_at_or_after(&self, index: RaftIndex) -> Option<usize> {
        let idx = self.index();
        let start = match idx.partition_point(|e| e.raft_index <= index) {
            0 => SEGMENT_HEADER_BYTES,
            n => idx[n - 1].pos as usize,
        };
        self.hop(start, |h| h.raft_index >= index)
    }

    /// Like [`Segment::find_offset`], starting at a remembered batch position
    /// instead of the sparse index; `None` if `pos` is not where a batch
    /// starting at or before `offset` lies (a stale hint).
    pub fn hop_from_hint(&self, pos: usize, offset: Offset) -> Option<usize> {
        if pos < SEGMENT_HEADER_BYTES || pos as u64 >= self.len {
            return None;
        }
        let h = BatchHeader::decode(&self.data()[pos..]).ok()?;
        if h.base_offset > offset || pos as u64 + u64::from(h.batch_len) > self.len {
            return None;
        }
        self.hop(pos, |h| h.next_offset() > offset)
    }

    /// From `pos`, the first batch position for which `stop` holds.
    fn hop(&self, mut pos: usize, stop: impl Fn(&BatchHeader) -> bool) -> Option<usize> {
        while (pos as u64) < self.len {
            let h = self.header_at(pos);
            if stop(&h) {
                return Some(pos);
            }
            pos += h.batch_len as usize;
        }
        None
    }

    /// Whole batches from `pos`, at least one, stopping before `max_bytes`
    /// would be exceeded. Returns the bytes and the offset after the last.
    pub fn read_from(&self, pos: usize, max_bytes: usize) -> (Bytes, Offset) {
        let mut end = pos;
        let mut next = self.header_at(pos).base_offset;
        while (end as u64) < self.len {
            let h = self.header_at(end);
            if end > pos && end - pos + h.batch_len as usize > max_bytes {
                break;
            }
            end += h.batch_len as usize;
            next = h.next_offset();
        }
        (self.bytes(pos, end), next)
    }
}

fn map_read_only(file: &File, path: &Path) -> Result<Bytes> {
    // SAFETY: the log owns the directory (flock) and never changes a sealed
    // segment's bytes; a rewrite (compaction, truncation, repair) writes a new
    // file and renames it over, which leaves this mapping on the old inode.
    let map = unsafe { Mmap::map(file) }.map_err(LogError::io("map segment", path))?;
    Ok(Bytes::from_owner(map))
}
