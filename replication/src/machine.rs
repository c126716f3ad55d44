//! The state machine of a group. Committed entries are already in the log,
//! so applying them means telling the owner how far it may index and serve;
//! the owner's derived state (index entries, producer table, metadata) is
//! rebuilt from the log and, after a snapshot, from the snapshot's state.
//!
//! What is applied is also remembered in `raft-applied.json` (the applied
//! log id and the membership as of it), written without fsync: after a crash
//! it may lag, never lead, and a lagging applied index only means entries are
//! applied again, which every owner tolerates (applies are idempotent by
//! Raft index).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use felix_log::{RaftIndex, SharedLog};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb};
use serde::{Deserialize, Serialize};

use crate::snapshot;
use crate::store::{io_err, log_id};
use crate::types::SnapshotFile;
use crate::types::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

pub const APPLIED_FILE: &str = "raft-applied.json";
pub const SNAPSHOT_FILE: &str = "current.snap";
/// The applied file is rewritten at most this often (and on membership changes).
pub const APPLIED_SAVE_INTERVAL_MS: i64 = 500;

/// The owner of a group's data: a shard, or the cluster metadata.
pub trait Applier: Send + Sync + 'static {
    /// Entries through `through` are committed and in the log: index them
    /// and let readers see them. Called in order, possibly again for entries
    /// already applied.
    fn apply_through(&self, through: RaftIndex) -> Result<(), String>;
    /// The log was replaced by a snapshot's entries ending at `last`, and
    /// `state` is the leader's [`Applier::snapshot_state`] as of it: rebuild.
    fn installed(&self, last: RaftIndex, state: &[u8]) -> Result<(), String>;
    /// State that is not derivable from the entries a snapshot carries.
    fn snapshot_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    /// A write a follower forwarded to this replica (as leader). `None`
    /// proposes it as it is. An owner that keeps producer windows returns
    /// its own write path instead, so a forwarded retry of a write that
    /// already landed is answered from the windows, not written twice.
    fn forwarded(self: Arc<Self>, _batch: bytes::Bytes) -> Option<Forwarded> {
        None
    }
}

/// An owner's answer to a forwarded write: where it landed (a
/// `raft_index` of 0 when the owner answered from its windows and does not
/// know the entry).
pub type Forwarded =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, String>> + Send + 'static>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Applied {
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// What an earlier run had applied, from the applied file (the broker uses
/// it to know how far to index at start-up).
pub fn saved_applied(state_dir: &Path) -> Option<u64> {
    let b = std::fs::read(state_dir.join(APPLIED_FILE)).ok()?;
    let a: Applied = serde_json::from_slice(&b).ok()?;
    a.applied.map(|l| l.index)
}

pub struct StateMachine {
    log: Arc<SharedLog>,
    state_dir: PathBuf,
    applier: Arc<dyn Applier>,
    applied: Option<LogId>,
    membership: StoredMembership,
    saved_ms: i64,
    unsaved: Arc<UnsavedMark>,
}

/// The applied mark a save skipped (saves come at most every
/// [`APPLIED_SAVE_INTERVAL_MS`]), written when the group goes quiet
/// (`UnsavedMark::save`): a replica restarted after its group went idle
/// then starts from everything it applied, agrees with its quiet leader's
/// beats and is not woken for an AppendEntries. Saves happen under its
/// lock, so an older mark never lands after a newer one.
#[derive(Debug)]
pub(crate) struct UnsavedMark {
    state_dir: PathBuf,
    pending: Mutex<Option<Applied>>,
}

impl UnsavedMark {
    /// Writes the mark a save skipped, if any.
    pub(crate) fn save(&self) -> Result<(), String> {
        let mut pending = self.pending.lock().expect("applied mark lock");
        match pending.take() {
            Some(a) => write_applied(&self.state_dir, &a).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// [`UnsavedMark::save`] on the process's one saver thread: the caller
    /// (the broker's driver, which beats for every quiet group) must not
    /// wait on a file, or a loaded disk would make its beats late.
    pub(crate) fn save_later(self: &Arc<Self>) {
        // Not waiting on a save under way (the lock is held over a file
        // write): queued anyway, it finds nothing or the newest mark.
        if let Ok(p) = self.pending.try_lock() {
            if p.is_none() {
                return;
            }
        }
        let saver = saver();
        let mut queue = saver.queue.lock().expect("mark saver lock");
        queue.push(Arc::downgrade(self));
        if !saver.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
            std::thread::Builder::new()
                .name("felix-applied-marks".into())
                .spawn(move || saver.run())
                .expect("spawn the applied-mark saver thread");
        }
        saver.wake.notify_one();
    }
}

/// Marks waiting to be saved, and the thread that saves them (asleep while
/// there are none). The queue holds at most one entry per quiescence of a
/// hosted group, drained as fast as the disk takes them.
struct Saver {
    queue: Mutex<Vec<std::sync::Weak<UnsavedMark>>>,
    wake: std::sync::Condvar,
    running: std::sync::atomic::AtomicBool,
}

fn saver() -> &'static Saver {
    static SAVER: std::sync::OnceLock<Saver> = std::sync::OnceLock::new();
    SAVER.get_or_init(|| Saver {
        queue: Mutex::new(Vec::new()),
        wake: std::sync::Condvar::new(),
        running: std::sync::atomic::AtomicBool::new(false),
    })
}

impl Saver {
    fn run(&self) {
        loop {
            let batch = {
                let mut q = self.queue.lock().expect("mark saver lock");
                while q.is_empty() {
                    q = self.wake.wait(q).expect("mark saver lock");
                }
                std::mem::take(&mut *q)
            };
            // A group stopped meanwhile has nothing left to save.
            for m in batch.iter().filter_map(std::sync::Weak::upgrade) {
                if let Err(e) = m.save() {
                    tracing::warn!(dir = %m.state_dir.display(), error = %e, "could not save the applied mark");
                }
            }
        }
    }
}

fn write_applied(state_dir: &Path, a: &Applied) -> std::io::Result<()> {
    let data = serde_json::to_vec(a)?;
    let path = state_dir.join(APPLIED_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, &path)
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("state_dir", &self.state_dir)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// `applied` is how far the owner's state already reflects the log (at
    /// least what the applied file says).
    pub fn open(
        log: Arc<SharedLog>,
        state_dir: PathBuf,
        applier: Arc<dyn Applier>,
        applied: Option<RaftIndex>,
    ) -> Result<StateMachine, String> {
        // Links of snapshots being sent and unfinished builds of an earlier
        // run are of no use now.
        if let Ok(dir) = std::fs::read_dir(&state_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(snapshot::SENDING_PREFIX) || name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let saved: Applied = std::fs::read(state_dir.join(APPLIED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let applied_index = applied.map(|i| i.0).max(saved.applied.map(|l| l.index));
        let applied = match applied_index {
            None => None,
            Some(i) => {
                let term = log.with(|l| {
                    l.entry(RaftIndex(i))
                        .map(|b| b.header().raft_term)
                        .or_else(|| l.purged_last().filter(|(_, p)| p.0 == i).map(|(t, _)| t))
                });
                // The log's last entry, when the applied mark is past it:
                // the log lost a tail it had applied (bytes damaged on a
                // stopped replica, or an unsynced tail lost with the
                // machine). Left as it was, openraft would take the mark
                // for the end of the log and ask the leader only for what
                // follows it, which the log cannot take: the group would
                // stop for good. From the log's end instead, the leader
                // sends the lost entries again.
                let end = log.with(|l| l.last_raft().or_else(|| l.purged_last()));
                match (term, end) {
                    (Some(t), _) => Some(log_id(t, RaftIndex(i))),
                    (None, Some((t, last))) if last.0 < i => {
                        tracing::warn!(
                            applied = i,
                            log_last = last.0,
                            "the applied mark is past the log's end (the log lost its tail); applying from the log's end"
                        );
                        Some(log_id(t, last))
                    }
                    (None, None) => {
                        tracing::warn!(
                            applied = i,
                            "the applied mark names entries of an empty log; applying from the start"
                        );
                        None
                    }
                    // The log no longer holds it (a snapshot replaced it): trust the file.
                    (None, Some(_)) => saved.applied,
                }
            }
        };
        // The membership as of `applied`: the saved one, unless it is past
        // `applied` (lost with the tail), then those in the log up to it.
        let mut membership = saved.membership;
        let upto = applied.map(|l| l.index);
        if membership.log_id().map(|l| l.index) > upto {
            membership = StoredMembership::default();
        }
        if let Some(i) = upto {
            let from = membership.log_id().map_or(0, |l| l.index + 1);
            let found: Vec<_> = log.with(|l| {
                l.positioned_from_raft_index(RaftIndex(from))
                    .take_while(|p| p.batch.header().raft_index.0 <= i)
                    .filter(|p| p.batch.header().flags.control())
                    .map(|p| p.batch)
                    .collect()
            });
            for b in found {
                if let Some(m) = crate::entry::membership_of(&b)? {
                    let h = b.header();
                    membership = StoredMembership::new(Some(log_id(h.raft_term, h.raft_index)), m);
                }
            }
        }
        Ok(StateMachine {
            log,
            unsaved: Arc::new(UnsavedMark {
                state_dir: state_dir.clone(),
                pending: Mutex::new(None),
            }),
            state_dir,
            applier,
            applied,
            membership,
            saved_ms: 0,
        })
    }

    /// The mark a skipped save leaves for the group's quiescence to write.
    pub(crate) fn unsaved(&self) -> Arc<UnsavedMark> {
        self.unsaved.clone()
    }

    fn save(&mut self, force: bool) -> Result<(), StorageError> {
        let now = felix_log::now_ms();
        let a = Applied {
            applied: self.applied,
            membership: self.membership.clone(),
        };
        let mut pending = self.unsaved.pending.lock().expect("applied mark lock");
        if !force && now - self.saved_ms < APPLIED_SAVE_INTERVAL_MS {
            *pending = Some(a);
            return Ok(());
        }
        self.saved_ms = now;
        *pending = None;
        write_applied(&self.state_dir, &a)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.state_dir.join(SNAPSHOT_FILE);
        if !current.exists() {
            return Ok(None);
        }
        // The sender streams a link of its own, which a newer build's
        // rename cannot change under it; the header is read from the link,
        // so meta and content always match.
        let path = self.state_dir.join(format!(
            "{}{}.snap",
            snapshot::SENDING_PREFIX,
            snapshot::unique_suffix()
        ));
        let read = |e: String| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        std::fs::hard_link(&current, &path).map_err(|e| read(format!("link {}: {e}", current.display())))?;
        let h = snapshot::read_header(&path).map_err(|e| read(e.to_string()))?;
        Ok(Some(Snapshot {
            meta: h.meta,
            snapshot: Box::new(SnapshotFile { path }),
        }))
    }
}

/// Builds a snapshot of the log as of the applied entry.
#[derive(Debug)]
pub struct Builder {
    log: Arc<SharedLog>,
    state_dir: PathBuf,
    meta: SnapshotMeta,
    state: Result<Vec<u8>, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let err = |e: String| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let state = self.state.clone().map_err(err)?;
        let path = self.state_dir.join(SNAPSHOT_FILE);
        let (log, meta, p) = (self.log.clone(), self.meta.clone(), path.clone());
        tokio::task::spawn_blocking(move || snapshot::build(&log, meta, &state, &p))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(e.to_string()))?;
        tracing::info!(snapshot = %self.meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(SnapshotFile { path }),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        self.applier
            .apply_through(RaftIndex(last.index))
            .map_err(|e| io_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        let mut out = Vec::with_capacity(entries.len());
        let mut membership_changed = false;
        for e in &entries {
            let mut r = Response {
                raft_index: e.log_id.index,
                ..Response::default()
            };
            match &e.payload {
                EntryPayload::Normal(_) => {
                    if let Some(b) = self.log.with(|l| l.entry(RaftIndex(e.log_id.index))) {
                        let h = b.header();
                        r.base_offset = h.base_offset.0;
                        r.count = h.offset_count;
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    membership_changed = true;
                }
                EntryPayload::Blank => {}
            }
            out.push(r);
        }
        self.applied = Some(last);
        self.save(membership_changed)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        let id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, felix_log::now_ms()),
            None => format!("empty-{}", felix_log::now_ms()),
        };
        Builder {
            log: self.log.clone(),
            state_dir: self.state_dir.clone(),
            meta: SnapshotMeta {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
                snapshot_id: id,
            },
            state: self.applier.snapshot_state(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        Ok(Box::new(SnapshotFile {
            path: self.state_dir.join("incoming.snap"),
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let err = |e: String| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let (log, src) = (self.log.clone(), snapshot.path.clone());
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let loaded = snapshot::load(&src).map_err(|e| e.to_string())?;
            snapshot::install_into(&log, &loaded).map_err(|e| e.to_string())?;
            Ok(loaded)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
        let last = meta.last_log_id.map_or(RaftIndex(0), |l| RaftIndex(l.index));
        self.applier.installed(last, &loaded.state).map_err(err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.save(true)?;
        let current = self.state_dir.join(SNAPSHOT_FILE);
        if snapshot.path != current {
            std::fs::rename(&snapshot.path, &current).map_err(|e| err(e.to_string()))?;
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot()
    }
}
