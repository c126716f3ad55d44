//! `RaftLogStorage` over the shard's segment log: no second copy of the data.
//!
//! - Entry `(term, index)` is the batch stamped with that term and index
//!   (openraft's first index, 0, is the log's first index too).
//! - The vote is `raft-vote` in the group's state directory (`vote`),
//!   overwritten in place and synced before `save_vote` returns.
//! - `purge` deletes whole segments, and never past the *purge floor*: the
//!   log is also the stream's data, so only retention (which raises the
//!   floor) decides what goes. Openraft may believe more is purged than is;
//!   it never reads below what it believes, so that is harmless.

use std::fmt::Debug;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use felix_log::{Durability, RaftIndex, RaftTerm, SharedLog};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

use crate::disk::DiskWaits;
use crate::entry;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use crate::vote::{self, VoteFile};

/// Entries one read hands openraft at most (it asks again for the rest).
pub const READ_ENTRIES_MAX: usize = 256;

pub(crate) fn log_id(term: RaftTerm, index: RaftIndex) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(term.0, 0), index.0)
}

pub(crate) fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())),
    }
}

fn log_err(e: impl ToString) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Writes `data` to `path` durably: temporary file, fsync, rename, fsync of
/// the directory. A crash leaves the old file or the new one, whole.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The Raft log of one group: its segment log plus the vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    /// This replica's node id: a vote naming it is read back uncommitted.
    me: NodeId,
    log: Arc<SharedLog>,
    state_dir: PathBuf,
    /// Purges may delete entries below this index only.
    purge_floor: Arc<AtomicU64>,
    disk: DiskWaits,
    /// Opened at the first save.
    vote: Arc<Mutex<Option<VoteFile>>>,
}

impl LogStore {
    pub fn new(
        me: NodeId,
        log: Arc<SharedLog>,
        state_dir: PathBuf,
        purge_floor: Arc<AtomicU64>,
        disk: DiskWaits,
    ) -> LogStore {
        LogStore {
            me,
            log,
            state_dir,
            purge_floor,
            disk,
            vote: Arc::default(),
        }
    }

    /// Entries `[start, end)`, at most `max` of them.
    fn read(&self, start: u64, end: u64, max: usize) -> Result<Vec<Entry>, StorageError> {
        let batches: Vec<_> = self.log.with(|l| {
            l.positioned_from_raft_index(RaftIndex(start))
                .take_while(|p| p.batch.header().raft_index.0 < end)
                .take(max)
                .map(|p| p.batch)
                .collect()
        });
        batches
            .iter()
            .map(|b| {
                // The log verifies batches when it appends them and when it
                // recovers an unsealed tail, not when it opens sealed
                // segments (unless `verify_on_start`). Checking again here
                // keeps damage on this replica from being shipped: a
                // follower would refuse the batch and its group would stop,
                // where this way the damaged replica's own group stops and
                // a healthy one takes over.
                let h = b.header();
                b.check_checksums().map_err(|e| {
                    io_err(
                        ErrorSubject::Logs,
                        ErrorVerb::Read,
                        format!(
                            "entry {} of this replica's log is damaged (`felix log check --full` finds it): {e}",
                            h.raft_index.0
                        ),
                    )
                })?;
                entry::from_batch(b).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
            })
            .collect()
    }
}

/// A read-back vote is committed only if it names another node as leader
/// (see `LogStore::read_vote`).
fn keep_committed_only_for_others(v: &mut Vote, me: NodeId) {
    if v.leader_id().voted_for() == Some(me) {
        v.committed = false;
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        // The whole range: openraft checks that it got every entry it
        // asked for (applying a restarted follower's backlog reads
        // thousands at once) and fails the group if not.
        self.read(start, end, usize::MAX)
    }

    /// Replication's reads, which may stop early: one RPC's worth.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read(start, end, READ_ENTRIES_MAX)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last, purged) = self.log.with(|l| (l.last_raft(), l.purged_last()));
        Ok(LogState {
            last_purged_log_id: purged.map(|(t, i)| log_id(t, i)),
            last_log_id: last.map(|(t, i)| log_id(t, i)),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let err = |e: String| io_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        let data = serde_json::to_vec(vote).map_err(|e| err(e.to_string()))?;
        let (dir, file) = (self.state_dir.clone(), self.vote.clone());
        self.disk
            .run(move || {
                let mut file = file.lock().expect("vote lock");
                if file.is_none() {
                    *file = Some(VoteFile::open(&dir)?);
                }
                file.as_mut().expect("opened above").save(&data)
            })
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("{}: {e}", self.state_dir.display())))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let err = |e: String| {
            io_err(
                ErrorSubject::Vote,
                ErrorVerb::Read,
                format!("{}: {e}", self.state_dir.display()),
            )
        };
        let Some(b) = vote::read(&self.state_dir).map_err(|e| err(e.to_string()))? else {
            return Ok(None);
        };
        let mut v: Vote = serde_json::from_slice(&b).map_err(|e| err(e.to_string()))?;
        // Openraft restarts a node whose committed vote names itself as
        // leader of that term at once. But a crash can cost a leader the
        // unflushed tail it had already sent to followers, and leading the
        // same term with a shorter log would reuse those (term, index) ids
        // for other entries. Restarting as a candidate of a later term lets
        // the longer logs win. A follower keeps a committed vote for
        // another: it knows its leader from the start, so a restarted
        // broker's quiet groups agree with their leaders' beats and stay
        // quiet, instead of each waiting to be woken for an AppendEntries
        // (thousands of groups, a few hundred wakes a second).
        keep_committed_only_for_others(&mut v, self.me);
        Ok(Some(v))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let now = felix_log::now_ms();
        let mut last = None;
        for e in entries {
            let bytes = entry::to_batch(&e, now).map_err(log_err)?;
            let (t, i) = (RaftTerm(e.log_id.leader_id.term), RaftIndex(e.log_id.index));
            self.log.append_at(&bytes, t, i).map_err(log_err)?;
            last = Some(i);
        }
        match (last, self.log.durability()) {
            (Some(i), Durability::Always) => {
                // The fsync runs off the Raft core; group commit shares it
                // with every append waiting meanwhile.
                // The wait holds no thread: the fsync itself runs on a slot
                // of the broker's disk waits, once for every group append
                // it covers.
                let disk = self.disk.clone();
                let durable = self.log.durable(i, move |duty| {
                    let disk = disk.clone();
                    tokio::spawn(async move { disk.run(move || duty.run()).await });
                });
                tokio::spawn(async move {
                    let r = durable.await.map_err(|e| std::io::Error::other(e.to_string()));
                    callback.log_io_completed(r);
                });
            }
            _ => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let Some(keep) = log_id.index.checked_sub(1) else {
            return Err(log_err("refusing to truncate the group's first entry"));
        };
        self.log.truncate_after(RaftIndex(keep)).map_err(log_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let floor = self.purge_floor.load(Ordering::Acquire);
        let Some(below_floor) = floor.checked_sub(1) else {
            return Ok(());
        };
        let upto = log_id.index.min(below_floor);
        let n = self
            .log
            .with(|l| l.delete_through_raft_index(RaftIndex(upto)))
            .map_err(log_err)?;
        if n > 0 {
            tracing::debug!(upto, segments = n, "purged segments");
        }
        Ok(())
    }
}
