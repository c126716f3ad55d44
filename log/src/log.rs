//! The log of one shard replica: an ordered run of segments, the last one
//! active. Single writer (`&mut self`); [`crate::SharedLog`] adds locking and
//! group commit on top.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::seal::{self, Keyring, NoKeys};
use crate::batch::view::{check_records_crc, validate_records};
use crate::batch::{Batch, BatchHeader};
use crate::checkpoint::{self, Checkpoint};
use crate::config::LogConfig;
use crate::error::{LogError, Result};
use crate::fsio;
use crate::segment::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::segment::Segment;
use crate::types::{Offset, RaftIndex, RaftTerm, SegmentId};

use crate::config::DirLock;
use crate::recovery::{quarantine, recover, rescan_rewritten, rewrite_prefix};
pub use crate::recovery::{OpenReport, Quarantined};

const LOCK_FILE: &str = "lock";
/// The lock file of a directory that holds logs (`lock_dir`).
const PARENT_LOCK_FILE: &str = "felix-data.lock";
/// Repairs one open may make before giving up (each removes a damaged range).
const REPAIRS_MAX: usize = 1024;
/// Compaction recompresses batches that were compressed at this zstd level.
const COMPACTION_ZSTD_LEVEL: i32 = 1;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: Offset,
    /// First offset after the batch.
    pub next_offset: Offset,
    pub raft_index: RaftIndex,
    pub segment: SegmentId,
    pub position: u64,
    pub len: u32,
}

/// A run of whole batches from one segment.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    /// Encoded batches, back to back, sharing the segment's mapping.
    pub bytes: Bytes,
    /// The offset to read from next.
    pub next_offset: Offset,
}

/// Retention policy; `None` keeps forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub earliest_offset: Offset,
}

/// A segment as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub path: PathBuf,
    pub first_offset: Offset,
    pub next_offset: Offset,
    pub last_raft_index: Option<RaftIndex>,
    pub bytes: u64,
    pub sealed: bool,
    pub max_timestamp_ms: i64,
    /// Times compaction has rewritten the segment.
    pub generation: u32,
}

/// What [`Log::compact_segment`] did to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOutcome {
    pub segment: SegmentId,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_dropped: u64,
    /// The segment's generation after the rewrite.
    pub generation: u32,
    dir: PathBuf,
}

impl CompactOutcome {
    /// Makes the installing rename durable (fsync of the log directory).
    /// Needs no lock on the log.
    pub fn sync(&self) -> Result<()> {
        fsio::sync_dir(&self.dir)
    }
}

/// A sealed segment's bytes, read without holding the log.
#[derive(Clone)]
pub struct SealedSegment {
    path: PathBuf,
    header: SegmentHeader,
    bytes: Bytes,
    /// The log's keyring: compaction opens batches sealed at rest and
    /// seals what it keeps again.
    keys: Option<Arc<dyn Keyring>>,
}

impl std::fmt::Debug for SealedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSegment")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// A compacted segment written and fsynced beside the original, waiting for
/// [`Log::install_compaction`].
#[derive(Debug)]
pub struct StagedCompaction {
    tmp: PathBuf,
    header: SegmentHeader,
    bytes: Vec<u8>,
    bytes_before: u64,
    records_dropped: u64,
}

impl SealedSegment {
    pub fn id(&self) -> SegmentId {
        SegmentId(self.header.first_raft_index.0)
    }

    pub fn generation(&self) -> u32 {
        self.header.generation
    }

    /// The segment's batches, in order, each checked (header and
    /// checksums): the file may have been damaged since it was opened, and
    /// a rewrite must not carry damage into a new generation. Ends after
    /// the first error.
    pub fn batches(&self) -> impl Iterator<Item = Result<Batch>> + '_ {
        let mut pos = SEGMENT_HEADER_BYTES;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || pos >= self.bytes.len() {
                return None;
            }
            let next = BatchHeader::decode(&self.bytes[pos..])
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    let end = pos
                        .checked_add(h.batch_len as usize)
                        .filter(|end| *end <= self.bytes.len())
                        .ok_or_else(|| {
                            format!("a batch of {} bytes runs past the segment's end", h.batch_len)
                        })?;
                    Batch::new(self.bytes.slice(pos..end)).map_err(|e| e.to_string())
                });
            match next {
                Ok(b) => {
                    pos += b.bytes().len();
                    Some(Ok(b))
                }
                Err(reason) => {
                    failed = true;
                    Some(Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: pos as u64,
                        end: self.bytes.len() as u64,
                        reason,
                    }))
                }
            }
        })
    }

    /// Builds the segment without the data records `keep` rejects and writes
    /// it, fsynced, to a temporary file beside the original. Offsets, Raft
    /// indexes and control batches are untouched; a batch that loses every
    /// record stays as an emptied header. `None` when nothing is dropped.
    /// Needs no lock on the log: this is the slow half of compaction.
    ///
    /// `write_bytes_per_s_max` paces the write so that it does not crowd
    /// out appends' fsyncs on the same disk.
    pub fn stage_compaction(
        &self,
        mut keep: impl FnMut(&crate::batch::Record) -> bool,
        write_bytes_per_s_max: Option<u64>,
    ) -> Result<Option<StagedCompaction>> {
        let mut header = self.header;
        header.generation = header.generation.wrapping_add(1);
        let mut out = Vec::with_capacity(self.bytes.len());
        out.extend_from_slice(&header.encode());
        let mut dropped = 0u64;
        for b in self.batches() {
            let b = b?;
            let before = b.header().record_count;
            let sealed_under = seal::key_id(&b);
            let clear = match (&self.keys, sealed_under) {
                (_, 0) => b.clone(),
                (Some(k), _) => seal::open(&b, k.as_ref())?,
                (None, id) => return Err(crate::batch::BatchError::KeyUnknown(id).into()),
            };
            let compacted = crate::batch::compact(&clear, &mut keep, COMPACTION_ZSTD_LEVEL)?;
            // What a sealed batch keeps is sealed again, under the tenant's
            // current key (its own when encryption was turned off since):
            // compaction never writes records in the clear that were not.
            let compacted = match (compacted, &self.keys) {
                (Some(new), Some(k)) if sealed_under != 0 && BatchHeader::decode(&new)?.record_count > 0 => {
                    // A current key this broker cannot derive must not stop
                    // compaction: the batch's own key still seals.
                    let id = k
                        .current()
                        .filter(|id| k.key(*id).is_some())
                        .unwrap_or(sealed_under);
                    let key = k.key(id).ok_or(crate::batch::BatchError::KeyUnknown(id))?;
                    Some(seal::seal(&new, id, &key, k.nonce())?)
                }
                (c, _) => c,
            };
            match compacted {
                Some(new) => {
                    let after = BatchHeader::decode(&new)?.record_count;
                    dropped += u64::from(before - after);
                    out.extend_from_slice(&new);
                }
                None => out.extend_from_slice(b.bytes()),
            }
        }
        if dropped == 0 {
            return Ok(None);
        }
        let tmp = self.path.with_extension("seg.compact.tmp");
        fsio::write_paced(&tmp, &out, write_bytes_per_s_max)?;
        crate::failpoint::hit("log.compact.tmp_synced");
        Ok(Some(StagedCompaction {
            tmp,
            header,
            bytes: out,
            bytes_before: self.bytes.len() as u64,
            records_dropped: dropped,
        }))
    }
}

/// Where an index last saw a batch: valid while the segment keeps its
/// generation (compaction moves batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadHint {
    pub segment: SegmentId,
    pub generation: u32,
    pub position: u32,
}

/// A batch with where it lies: what an index records to find it again.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub segment: SegmentId,
    /// The segment's compaction generation.
    pub generation: u32,
    /// Byte position of the batch in its segment file.
    pub position: u32,
    pub batch: Batch,
}

/// How long [`Log::open`] retries a held directory lock before answering
/// [`LogError::Locked`]. A `flock` belongs to the open file description, and
/// a child forked by any thread of this process (a test's `mount`, a hook)
/// holds a copy of every descriptor until its `exec` closes them: a log
/// closed and reopened in that window would otherwise be refused.
pub const LOCK_WAIT_MS_MAX: u64 = 500;
const LOCK_RETRY_MS: u64 = 5;
const _: () = assert!(LOCK_RETRY_MS > 0 && LOCK_RETRY_MS < LOCK_WAIT_MS_MAX);

fn lock_within(lock: &File, lock_path: &Path, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS_MAX);
    loop {
        if fsio::lock_exclusive(lock).map_err(LogError::io("lock", lock_path))? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(LogError::Locked {
                path: dir.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
    }
}

/// How a log keeps a second writer off its directory while open.
#[derive(Debug)]
enum Held {
    /// Its own `lock` file, held with `flock` (one open file per log)
    /// until dropped.
    File(#[allow(dead_code)] File),
    /// Its entry in this process's table of open log directories, and a
    /// share of the lock on a directory above it, which lasts as long as
    /// the last log under it.
    Listed(PathBuf, #[allow(dead_code)] Arc<DirGuard>),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Listed(dir, _) = self {
            open_dirs().remove(dir);
        }
    }
}

fn open_dirs() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    static OPEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    // The table stays right through a panic elsewhere: an insert or a
    // remove is one step.
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `dir`'s lock file called `name`, held.
fn lock_file(dir: &Path, name: &str) -> Result<File> {
    let lock_path = dir.join(name);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(LogError::io("open", &lock_path))?;
    lock_within(&lock, &lock_path, dir)?;
    Ok(lock)
}

/// [`LogError::Locked`] if a directory above `dir` is locked with
/// [`lock_dir`] (a running broker's data directory): a log opened with its
/// own lock file (a tool's) must not write under a broker whose logs keep
/// none.
fn refuse_under_locked_parent(dir: &Path) -> Result<()> {
    let canonical = fs::canonicalize(dir).map_err(LogError::io("resolve", dir))?;
    for parent in canonical.ancestors().skip(1) {
        let path = parent.join(PARENT_LOCK_FILE);
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !fsio::lock_exclusive(&file).map_err(LogError::io("lock", &path))? {
            return Err(LogError::Locked {
                path: dir.to_path_buf(),
            });
        }
        // Dropping the file releases the trial lock.
    }
    Ok(())
}

fn hold(dir: &Path, how: &DirLock) -> Result<Held> {
    match how {
        DirLock::File => {
            refuse_under_locked_parent(dir)?;
            Ok(Held::File(lock_file(dir, LOCK_FILE)?))
        }
        DirLock::Parent(guard) => {
            let key = fs::canonicalize(dir).map_err(LogError::io("resolve", dir))?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS_MAX);
            loop {
                if open_dirs().insert(key.clone()) {
                    return Ok(Held::Listed(key, guard.clone()));
                }
                if std::time::Instant::now() >= deadline {
                    return Err(LogError::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
            }
        }
    }
}

/// A directory locked for this process (its `felix-data.lock` file held
/// with `flock`) for as long as the guard lives, and every log opened
/// under it with [`DirLock::Parent`] shares it, so that thousands of logs
/// do not each keep a file open for their lock.
#[derive(Debug)]
pub struct DirGuard {
    _file: File,
}

/// Locks `dir` (created if missing) for this process: [`LogError::Locked`]
/// if another process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirGuard> {
    fs::create_dir_all(dir).map_err(LogError::io("create directory", dir))?;
    Ok(DirGuard {
        _file: lock_file(dir, PARENT_LOCK_FILE)?,
    })
}

/// The segment log of one shard replica.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Never empty; the last is the only active segment.
    segments: Vec<Segment>,
    _held: Held,
    poisoned: bool,
    /// The checkpoint on disk is the clean one this log was opened from,
    /// unchanged since: it must be replaced by one without `CLEAN` before
    /// the first change ([`Log::unclean`]), and a close with no change in
    /// between has nothing to write.
    clean_on_disk: bool,
}

impl Log {
    /// Opens or creates the log in `dir`, recovering it as described in
    /// `docs/format/segment.md`.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig, now_ms: i64) -> Result<(Log, OpenReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(LogError::io("create directory", &dir))?;
        let held = hold(&dir, &config.dir_lock)?;
        let mut report = OpenReport::default();
        let mut repairs = 0;
        let segments = loop {
            match recover(&dir, &config, &mut report) {
                Ok(s) => break s,
                Err(LogError::Corrupt {
                    path,
                    position,
                    end,
                    reason,
                }) if config.repair && repairs < REPAIRS_MAX => {
                    tracing::warn!(path = %path.display(), position, end, %reason, "quarantining damaged range");
                    report.quarantined.push(quarantine(&dir, &path, position, end)?);
                    repairs += 1;
                    report.verified_bytes = 0;
                }
                Err(e) => return Err(e),
            }
        };
        let mut log = Log {
            dir,
            config,
            segments,
            _held: held,
            poisoned: false,
            clean_on_disk: false,
        };
        let mut created = false;
        if log.segments.is_empty() {
            let s = log.new_segment(Offset(0), RaftIndex(0), None, now_ms)?;
            log.segments.push(s);
            created = true;
        } else if log.active().is_sealed() {
            // A crash between sealing a segment and creating the next one.
            let (next_offset, next_index, last) = (log.next_offset(), log.next_raft_index(), log.last_raft());
            let s = log.new_segment(next_offset, next_index, last, now_ms)?;
            log.segments.push(s);
            created = true;
        }
        report.segments = log.segments.len();
        // From now on a crash must not be mistaken for a clean close. When
        // the clean checkpoint vouched for every byte (nothing verified,
        // cut or created), replacing it waits for the first change: a
        // broker restarting with thousands of idle replicas then writes and
        // fsyncs no file per replica (`docs/format/segment.md`).
        log.clean_on_disk = report.clean
            && report.verified_bytes == 0
            && report.torn_tail.is_none()
            && report.quarantined.is_empty()
            && !created;
        if !log.clean_on_disk {
            log.write_checkpoint(false)?;
        }
        Ok((log, report))
    }

    fn new_segment(
        &self,
        first_offset: Offset,
        first_raft_index: RaftIndex,
        last: Option<(RaftTerm, RaftIndex)>,
        now_ms: i64,
    ) -> Result<Segment> {
        Segment::create(
            &self.dir,
            first_offset,
            first_raft_index,
            last,
            now_ms,
            self.config.segment_bytes,
            self.config.index_interval_bytes,
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    /// Replaces a clean checkpoint left from the open with one without
    /// `CLEAN`, before anything changes: a crash after the change must not
    /// be taken for a clean close (the clean checkpoint would vouch for
    /// bytes that are no longer there).
    fn unclean(&mut self) -> Result<()> {
        if self.clean_on_disk {
            self.write_checkpoint(false)?;
            self.clean_on_disk = false;
        }
        Ok(())
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has a segment")
    }

    /// Offset the next data record will get.
    pub fn next_offset(&self) -> Offset {
        self.active().summary.next_offset
    }

    /// First offset still held (retention moves it forward).
    pub fn earliest_offset(&self) -> Offset {
        self.segments[0].header.first_offset
    }

    /// Term and index of the last batch, if any.
    pub fn last_raft(&self) -> Option<(RaftTerm, RaftIndex)> {
        self.active().summary.last
    }

    /// The Raft index the next append must carry.
    pub fn next_raft_index(&self) -> RaftIndex {
        match self.last_raft() {
            Some((_, i)) => i.next(),
            None => self.active().header.first_raft_index,
        }
    }

    /// Term and index of the entry just before the first one this log can
    /// hold (removed by a purge, or before a snapshot it restarted from).
    pub fn purged_last(&self) -> Option<(RaftTerm, RaftIndex)> {
        self.segments[0].header.prev_last()
    }

    /// Raft index of the first batch held, if any.
    pub fn first_raft_index(&self) -> Option<RaftIndex> {
        let s = self.segments.iter().find(|s| s.has_batches())?;
        Some(s.header_at(SEGMENT_HEADER_BYTES).raft_index)
    }

    /// Bytes in all segments (headers included).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .map(|s| SegmentInfo {
                id: s.id(),
                path: s.path.clone(),
                first_offset: s.header.first_offset,
                next_offset: s.summary.next_offset,
                last_raft_index: s
                    .summary
                    .last
                    .map(|(_, i)| i)
                    .filter(|i| s.has_batches() && *i >= s.header.first_raft_index),
                bytes: s.len,
                sealed: s.is_sealed(),
                max_timestamp_ms: s.summary.max_timestamp_ms,
                generation: s.header.generation,
            })
            .collect()
    }

    /// Verifies a producer-built batch and appends it as Raft entry
    /// `(term, index)`, assigning its base offset (the log's next offset).
    /// Only the base offset, term and index are written; the records are
    /// copied unchanged. Durability is the caller's: see [`Log::flush`] and
    /// [`crate::SharedLog`].
    pub fn append(
        &mut self,
        batch: &[u8],
        term: RaftTerm,
        index: RaftIndex,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        self.append_checked(batch, term, index, now_ms, false)
    }

    /// [`Log::append`] for an entry a Raft leader replicates, which may be
    /// a batch the leader's compaction emptied (a header that keeps its
    /// index and offsets, no records): a follower catching up a compacted
    /// shard must take it as it is.
    pub fn append_entry(
        &mut self,
        batch: &[u8],
        term: RaftTerm,
        index: RaftIndex,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        self.append_checked(batch, term, index, now_ms, true)
    }

    fn append_checked(
        &mut self,
        batch: &[u8],
        term: RaftTerm,
        index: RaftIndex,
        now_ms: i64,
        emptied_allowed: bool,
    ) -> Result<AppendOutcome> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let h = BatchHeader::decode(batch)?;
        let seal = if h.flags.sealed() {
            crate::batch::layout::SEAL_OVERHEAD_BYTES
        } else {
            0
        };
        if batch.len() > self.config.batch_bytes_max + seal {
            return Err(LogError::BatchTooLarge {
                len: batch.len(),
                max: self.config.batch_bytes_max + seal,
            });
        }
        if h.batch_len as usize != batch.len() {
            return Err(crate::batch::BatchError::Inconsistent(
                "buffer length differs from the batch length",
            )
            .into());
        }
        if h.record_count == 0 && !emptied_allowed {
            // Emptied batches are compaction's; a producer must send records.
            return Err(crate::batch::BatchError::Inconsistent("batch without records").into());
        }
        check_records_crc(batch, &h)?;
        validate_records(batch, &h)?;
        if let Some((last_term, _)) = self.last_raft() {
            if term < last_term {
                return Err(LogError::RaftTermRegressed {
                    last: last_term,
                    got: term,
                });
            }
        }
        let expected = self.next_raft_index();
        if index != expected {
            return Err(LogError::RaftIndexGap { expected, got: index });
        }
        self.unclean()?;

        let active = self.active();
        let too_old = active.has_batches()
            && now_ms.saturating_sub(active.header.created_ms) >= self.config.segment_ms as i64;
        if active.remaining() < batch.len() as u64 || too_old {
            self.roll(now_ms)?;
        } else if !active.has_batches()
            && now_ms.saturating_sub(active.header.created_ms) >= self.config.segment_ms as i64
        {
            self.active_mut().restart_clock(now_ms)?;
        }
        let base = self.next_offset();
        let seg = self.active_mut();
        seg.reserve(batch.len() as u64)?;
        let position = seg.append(batch, &h, base, term, index);
        Ok(AppendOutcome {
            base_offset: base,
            next_offset: base.add(h.offset_count.into()),
            raft_index: index,
            segment: seg.id(),
            position,
            len: h.batch_len,
        })
    }

    /// fdatasync of the active segment: every append so far is durable when
    /// it returns. A failed fsync poisons the log (the kernel may have
    /// dropped the dirty pages, so retrying could falsely succeed).
    pub fn flush(&mut self) -> Result<()> {
        let r = self.active().flush();
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// The active segment's file and the last Raft index it covers, for a
    /// group-commit fsync done without holding the log.
    pub(crate) fn sync_point(&self) -> (Option<Arc<File>>, Option<RaftIndex>) {
        (self.active().sync_handle(), self.last_raft().map(|(_, i)| i))
    }

    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Seals the active segment and starts a new one, unless it is empty.
    /// The new file is created first, so a full disk leaves the log as it was.
    pub fn roll(&mut self, now_ms: i64) -> Result<()> {
        if !self.active().has_batches() {
            return Ok(());
        }
        self.unclean()?;
        let next = self.new_segment(
            self.next_offset(),
            self.next_raft_index(),
            self.last_raft(),
            now_ms,
        )?;
        if let Err(e) = self.active_mut().seal() {
            self.poisoned = true;
            let _ = fs::remove_file(&next.path);
            return Err(e);
        }
        self.segments.push(next);
        self.write_checkpoint(false)
    }

    /// Rolls if the active segment is older than `segment_ms`. Returns
    /// whether it rolled.
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<bool> {
        let a = self.active();
        if a.has_batches() && now_ms.saturating_sub(a.header.created_ms) >= self.config.segment_ms as i64 {
            self.roll(now_ms)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn segment_for_offset(&self, offset: Offset) -> usize {
        self.segments
            .partition_point(|s| s.header.first_offset <= offset)
            .saturating_sub(1)
    }

    /// Whole batches starting with the one holding `from` (or the first after
    /// it if `from` fell in a gap), up to `max_bytes` (at least one batch),
    /// from one segment. Empty at the end of the log.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<ReadChunk> {
        let (earliest, latest) = (self.earliest_offset(), self.next_offset());
        if from < earliest || from > latest {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                earliest,
                latest,
            });
        }
        let mut i = self.segment_for_offset(from);
        while i < self.segments.len() {
            let s = &self.segments[i];
            if let Some(pos) = s.find_offset(from) {
                let (bytes, next_offset) = s.read_from(pos, max_bytes);
                return Ok(ReadChunk {
                    bytes,
                    next_offset: next_offset.max(from),
                });
            }
            i += 1;
        }
        Ok(ReadChunk {
            bytes: Bytes::new(),
            next_offset: latest,
        })
    }

    /// Gives the log the keyring its sealed batches open with (the
    /// broker's view of the shard's tenant's keys).
    pub fn set_keys(&mut self, keys: Option<Arc<dyn Keyring>>) {
        self.config.keys = keys;
    }

    pub fn keys(&self) -> Option<&Arc<dyn Keyring>> {
        self.config.keys.as_ref()
    }

    /// `b` in the clear: itself, or opened when it is sealed at rest. The
    /// log's read methods hand out batches as stored (Raft and snapshots
    /// move them so); whoever reads records opens them here.
    pub fn clear(&self, b: &Batch) -> Result<Batch> {
        match (&self.config.keys, b.header().flags.sealed()) {
            (_, false) => Ok(b.clone()),
            (Some(k), true) => Ok(seal::open(b, k.as_ref())?),
            (None, true) => Err(crate::batch::BatchError::KeyUnknown(seal::key_id(b)).into()),
        }
    }

    /// A read chunk in the clear: [`Log::clear`] for batches back to back.
    pub fn clear_chunk(&self, chunk: Bytes) -> Result<Bytes> {
        match &self.config.keys {
            Some(k) => Ok(seal::open_chunk(chunk, k.as_ref())?),
            None => Ok(seal::open_chunk(chunk, &NoKeys)?),
        }
    }

    /// Iterates batches from `from` to the current end, across segments.
    pub fn batches_from(&self, from: Offset) -> Result<Batches<'_>> {
        let (earliest, latest) = (self.earliest_offset(), self.next_offset());
        if from < earliest || from > latest {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                earliest,
                latest,
            });
        }
        let seg = self.segment_for_offset(from);
        let pos = self.segments[seg].find_offset(from);
        Ok(Batches { log: self, seg, pos })
    }

    /// The batch that is Raft entry `index`, if the log holds it.
    pub fn entry(&self, index: RaftIndex) -> Option<Batch> {
        let i = self
            .segments
            .partition_point(|s| s.header.first_raft_index <= index)
            .checked_sub(1)?;
        let s = &self.segments[i];
        s.find_raft_index(index).map(|pos| s.batch_at(pos))
    }

    /// Batches with their positions from Raft entry `from` (or the first
    /// entry after it) to the current end, across segments.
    pub fn positioned_from_raft_index(&self, from: RaftIndex) -> PositionedBatches<'_> {
        let seg = self
            .segments
            .partition_point(|s| s.header.first_raft_index <= from)
            .saturating_sub(1);
        let pos = self.segments[seg].find_raft_index_at_or_after(from);
        PositionedBatches {
            log: self,
            seg,
            pos: Some(pos.unwrap_or(self.segments[seg].len as usize)),
            end_seg: self.segments.len(),
        }
    }

    /// The batches of one segment with their positions.
    pub fn positioned_in(&self, segment: SegmentId) -> Option<PositionedBatches<'_>> {
        let seg = self.segments.iter().position(|s| s.id() == segment)?;
        Some(PositionedBatches {
            log: self,
            seg,
            pos: Some(SEGMENT_HEADER_BYTES),
            end_seg: seg + 1,
        })
    }

    /// [`Log::read`] starting from a position an index remembered for a batch
    /// at or before `from`. A hint that no longer fits (the segment was
    /// compacted or deleted since) is ignored, so a stale index costs a
    /// lookup, never a wrong answer.
    pub fn read_at(&self, hint: ReadHint, from: Offset, max_bytes: usize) -> Result<ReadChunk> {
        let fits = |s: &&Segment| s.id() == hint.segment && s.header.generation == hint.generation;
        if let Some(s) = self.segments.iter().find(fits) {
            if let Some(pos) = s.hop_from_hint(hint.position as usize, from) {
                let (bytes, next_offset) = s.read_from(pos, max_bytes);
                return Ok(ReadChunk {
                    bytes,
                    next_offset: next_offset.max(from),
                });
            }
        }
        self.read(from, max_bytes)
    }

    /// A sealed segment's bytes, for compaction to read without holding the
    /// log (sealed bytes never change; a rewrite replaces the file).
    pub fn sealed_segment(&self, segment: SegmentId) -> Option<SealedSegment> {
        let i = self.segments.iter().position(|s| s.id() == segment)?;
        let s = &self.segments[i];
        if !s.is_sealed() || i + 1 == self.segments.len() {
            return None;
        }
        Some(SealedSegment {
            path: s.path.clone(),
            header: s.header,
            bytes: s.bytes(0, s.len as usize),
            keys: self.config.keys.clone(),
        })
    }

    /// Rewrites sealed segment `segment` without the data records `keep`
    /// rejects: [`SealedSegment::stage_compaction`] then
    /// [`Log::install_compaction`] in one call, holding the log throughout.
    pub fn compact_segment(
        &mut self,
        segment: SegmentId,
        keep: impl FnMut(&crate::batch::Record) -> bool,
    ) -> Result<Option<CompactOutcome>> {
        let sealed = self
            .sealed_segment(segment)
            .ok_or(LogError::NotSealed { segment })?;
        match sealed.stage_compaction(keep, None)? {
            Some(staged) => {
                let out = self.install_compaction(staged)?;
                out.sync()?;
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }

    /// Puts a staged compaction in place: renames the new file over the old
    /// (atomic) and maps it. Fails, leaving the log unchanged and the staged
    /// file removed, if the segment changed since it was staged (deleted by
    /// retention, truncated, compacted again).
    ///
    /// This is all the log needs to be held for. The rename is made durable
    /// by [`CompactOutcome::sync`] afterwards, without the log: until then a
    /// power loss may bring back the old segment, which is as good (it holds
    /// a superset of the records, and an index notices the generation). The
    /// checkpoint is not rewritten either: it lists the old length, so the
    /// next open verifies the (smaller) new segment instead of trusting it.
    pub fn install_compaction(&mut self, staged: StagedCompaction) -> Result<CompactOutcome> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let segment = SegmentId(staged.header.first_raft_index.0);
        let i = self.segments.iter().position(|s| {
            s.id() == segment
                && s.is_sealed()
                && s.header.generation.wrapping_add(1) == staged.header.generation
        });
        let Some(i) =
            i.filter(|i| i + 1 < self.segments.len() && self.segments[*i].len == staged.bytes_before)
        else {
            let _ = fs::remove_file(&staged.tmp);
            return Err(LogError::NotSealed { segment });
        };
        self.unclean()?;
        let path = self.segments[i].path.clone();
        fs::rename(&staged.tmp, &path).map_err(LogError::io("replace segment", &path))?;
        crate::failpoint::hit("log.compact.renamed");
        let prev_last = i.checked_sub(1).and_then(|p| self.segments[p].summary.last);
        let (mut summary, index, file) = rescan_rewritten(
            &path,
            &staged.bytes,
            &staged.header,
            prev_last,
            self.config.index_interval_bytes,
        )?;
        let len = staged.bytes.len() as u64;
        // Time retention keeps judging the segment by what it held.
        summary.max_timestamp_ms = summary
            .max_timestamp_ms
            .max(self.segments[i].summary.max_timestamp_ms);
        self.segments[i] = Segment::open_sealed(
            path,
            file,
            len,
            staged.header,
            len,
            summary,
            Some(index),
            self.config.index_interval_bytes,
        )?;
        Ok(CompactOutcome {
            segment,
            bytes_before: staged.bytes_before,
            bytes_after: len,
            records_dropped: staged.records_dropped,
            generation: staged.header.generation,
            dir: self.dir.clone(),
        })
    }

    /// Removes every batch with a Raft index above `index` (a suffix Raft no
    /// longer wants). Bytes handed out earlier stay valid: the shortened
    /// segment is written to a new file that replaces the old one.
    pub fn truncate_after(&mut self, index: RaftIndex, now_ms: i64) -> Result<()> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        match self.last_raft() {
            Some((_, last)) if last > index => {}
            _ => return Ok(()),
        }
        self.unclean()?;
        // Segments that start above `index` go entirely, newest first so a
        // crash midway leaves a prefix of the log.
        let keep = self
            .segments
            .partition_point(|s| s.header.first_raft_index <= index);
        let first_removed = self.segments.get(keep).map(|s| {
            (
                s.header.first_offset,
                s.header.first_raft_index,
                s.header.prev_last(),
            )
        });
        while self.segments.len() > keep {
            let s = self.segments.pop().expect("len > keep");
            fs::remove_file(&s.path).map_err(LogError::io("remove segment", &s.path))?;
        }
        fsio::sync_dir(&self.dir)?;
        let Some(last) = self.segments.last() else {
            let (o, i, before) = first_removed.expect("some segment was removed");
            // Everything held is gone; what is left is the purged entry
            // before it, when that is the one asked to be kept.
            let s = self.new_segment(o, i, before.filter(|(_, b)| *b == index), now_ms)?;
            self.segments.push(s);
            return self.write_checkpoint(false);
        };
        let cut = last
            .find_raft_index(index.next())
            .map(|p| p as u64)
            .unwrap_or(last.len);
        let prev_last = match self.segments.len().checked_sub(2) {
            Some(i) => self.segments[i].summary.last,
            None => last.header.prev_last(),
        };
        let last = self.segments.pop().expect("checked above");
        if cut == last.len && last.is_sealed() {
            let (o, i, l) = (
                last.summary.next_offset,
                last.summary
                    .last
                    .map_or(last.header.first_raft_index, |(_, i)| i.next()),
                last.summary.last,
            );
            self.segments.push(last);
            let s = self.new_segment(o, i, l, now_ms)?;
            self.segments.push(s);
        } else {
            let s = rewrite_prefix(&self.dir, &last, cut, prev_last, &self.config)?;
            self.segments.push(s);
        }
        self.write_checkpoint(false)
    }

    /// Drops every entry and restarts the log empty right after `last` (from index 0 when `None`), with
    /// `next_offset` the offset of the next record (installing a snapshot
    /// that covers more than this log holds). Segments are removed newest
    /// first, so a crash midway leaves a prefix of the old log.
    pub fn reset_after(
        &mut self,
        next_offset: Offset,
        last: Option<(RaftTerm, RaftIndex)>,
        now_ms: i64,
    ) -> Result<()> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.unclean()?;
        while let Some(s) = self.segments.pop() {
            fs::remove_file(&s.path).map_err(LogError::io("remove segment", &s.path))?;
        }
        fsio::sync_dir(&self.dir)?;
        let first = last.map_or(RaftIndex(0), |(_, i)| i.next());
        let s = self.new_segment(next_offset, first, last, now_ms)?;
        self.segments.push(s);
        self.write_checkpoint(false)
    }

    /// Deletes whole sealed segments all of whose offsets are below `offset`.
    /// Returns how many went.
    pub fn delete_before(&mut self, offset: Offset) -> Result<usize> {
        self.delete_front_while(|s, _| s.summary.next_offset <= offset)
            .map(|o| o.segments_deleted)
    }

    /// Deletes whole sealed segments all of whose Raft entries are at or below
    /// `index` (entries a snapshot now covers).
    pub fn delete_through_raft_index(&mut self, index: RaftIndex) -> Result<usize> {
        self.delete_front_while(|s, _| s.summary.last.is_some_and(|(_, i)| i <= index))
            .map(|o| o.segments_deleted)
    }

    /// Retention: deletes the oldest sealed segments whose newest record is
    /// older than `retention_ms`, then more while the log is larger than
    /// `retention_bytes`. The active segment is never deleted.
    pub fn apply_retention(&mut self, now_ms: i64, r: Retention) -> Result<RetentionOutcome> {
        let n = self.retention_count(now_ms, r);
        self.delete_front_while(|_, deleted| deleted < n)
    }

    /// The last Raft entry [`Log::apply_retention`] would delete now, if
    /// any: a replicated log deletes through its group instead, which first
    /// covers the entries with a snapshot.
    pub fn retention_through(&self, now_ms: i64, r: Retention) -> Option<RaftIndex> {
        let n = self.retention_count(now_ms, r);
        self.segments[..n]
            .iter()
            .rev()
            .find_map(|s| s.summary.last.map(|(_, i)| i))
    }

    /// How many of the oldest segments retention removes.
    fn retention_count(&self, now_ms: i64, r: Retention) -> usize {
        // A retention past i64::MAX milliseconds keeps everything (cast,
        // it would turn negative and expire every segment).
        let cutoff = r
            .retention_ms
            .map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        let mut size = self.size_bytes();
        let sealed = self.segments.len().saturating_sub(1);
        self.segments[..sealed]
            .iter()
            .take_while(|s| {
                let expired = cutoff.is_some_and(|c| s.summary.max_timestamp_ms < c);
                let over = r.retention_bytes.is_some_and(|b| size > b);
                let go = s.is_sealed() && (expired || over);
                if go {
                    size -= s.len;
                }
                go
            })
            .count()
    }

    fn delete_front_while(
        &mut self,
        mut pred: impl FnMut(&Segment, usize) -> bool,
    ) -> Result<RetentionOutcome> {
        let mut n = 0;
        let mut bytes = 0;
        while self.segments.len() > 1 && self.segments[0].is_sealed() && pred(&self.segments[0], n) {
            self.unclean()?;
            let s = self.segments.remove(0);
            fs::remove_file(&s.path).map_err(LogError::io("remove segment", &s.path))?;
            n += 1;
            bytes += s.len;
        }
        if n > 0 {
            fsio::sync_dir(&self.dir)?;
            self.write_checkpoint(false)?;
        }
        Ok(RetentionOutcome {
            segments_deleted: n,
            bytes_deleted: bytes,
            earliest_offset: self.earliest_offset(),
        })
    }

    /// Flushes and records a clean checkpoint, so the next open verifies
    /// nothing.
    pub fn close(mut self) -> Result<()> {
        self.close_in_place()
    }

    /// [`Log::close`] for an owner that drops the log right after.
    pub(crate) fn close_in_place(&mut self) -> Result<()> {
        self.checkpoint_clean()
    }

    /// Flushes and records a clean checkpoint, as a close does, while the
    /// log stays open: a change after it replaces the checkpoint first
    /// ([`Log::unclean`]), so the next open verifies only what a clean
    /// checkpoint still vouches for. A poisoned log is refused: its pages
    /// may be lost, and a clean checkpoint would vouch for them.
    pub fn checkpoint_clean(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.flush()?;
        if !self.clean_on_disk {
            // Set first: a write that fails after its rename (the
            // directory's fsync) may have left the clean file in place,
            // and the next change must replace it all the same.
            self.clean_on_disk = true;
            self.write_checkpoint(true)?;
        }
        Ok(())
    }

    fn write_checkpoint(&self, clean: bool) -> Result<()> {
        let n = if clean {
            self.segments.len()
        } else {
            self.segments.len() - 1
        };
        let ck = Checkpoint {
            clean,
            segments: self.segments[..n]
                .iter()
                .map(|s| checkpoint::Entry {
                    first_offset: s.header.first_offset,
                    first_raft_index: s.header.first_raft_index,
                    len: s.len,
                    next_offset: s.summary.next_offset,
                    last: s.summary.last,
                    max_timestamp_ms: s.summary.max_timestamp_ms,
                    created_ms: s.header.created_ms,
                })
                .collect(),
        };
        ck.write(&self.dir)
    }
}

/// Iterator over batches from an offset; see [`Log::batches_from`].
#[derive(Debug)]
pub struct Batches<'a> {
    log: &'a Log,
    seg: usize,
    pos: Option<usize>,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            let s = self.log.segments.get(self.seg)?;
            match self.pos {
                Some(pos) if (pos as u64) < s.len => {
                    let b = s.batch_at(pos);
                    self.pos = Some(pos + b.bytes().len());
                    return Some(b);
                }
                _ => {
                    self.seg += 1;
                    self.pos = Some(SEGMENT_HEADER_BYTES);
                }
            }
        }
    }
}

/// Iterator of [`Positioned`] batches.
#[derive(Debug)]
pub struct PositionedBatches<'a> {
    log: &'a Log,
    seg: usize,
    pos: Option<usize>,
    end_seg: usize,
}

impl Iterator for PositionedBatches<'_> {
    type Item = Positioned;

    fn next(&mut self) -> Option<Positioned> {
        loop {
            if self.seg >= self.end_seg {
                return None;
            }
            let s = self.log.segments.get(self.seg)?;
            match self.pos {
                Some(pos) if (pos as u64) < s.len => {
                    let batch = s.batch_at(pos);
                    self.pos = Some(pos + batch.bytes().len());
                    return Some(Positioned {
                        segment: s.id(),
                        generation: s.header.generation,
                        position: pos as u32,
                        batch,
                    });
                }
                _ => {
                    self.seg += 1;
                    self.pos = Some(SEGMENT_HEADER_BYTES);
                }
            }
        }
    }
}
