//! The control plane's Raft log and state machine, both in one RocksDB
//! database (`docs/format/controlplane-store.md`):
//!
//! - column family `log`: entry index (u64 big-endian, so keys sort by
//!   index) → the entry as JSON;
//! - column family `meta`: `vote`, `last_purged` → JSON;
//! - column family `state`: `machine` → the applied state (last applied
//!   log id, membership, [`Metadata`]) as JSON; `snapshot` → the last
//!   snapshot built or installed.
//!
//! Every log write and vote is synced before it is acknowledged: a lost
//! vote or entry breaks Raft's guarantees. The state machine is written
//! whole, but only with each snapshot and every so many applied entries
//! ([`entries_between_saves`]: more, the larger the last save, so each
//! entry pays for at most about [`SAVED_BYTES_PER_ENTRY`] of it), not after
//! every applied batch: at 10,000 streams it is about 2 MB of JSON, and
//! writing it per create made each create cost time and disk in
//! proportion to everything there is. What was applied
//! since the last save is in the log (never purged past the saved state,
//! which is at least the last snapshot), and openraft applies it again at
//! start from the committed index this store keeps.

// openraft's StorageError is large and is what its traits return.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{
    LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine, Snapshot,
};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::*;
use crate::state::{Applied, Metadata};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_STATE: &str = "state";
/// Entries one read hands openraft at most.
pub const READ_ENTRIES_MAX: usize = 512;
/// Applied entries between two saves of the whole state machine, at least.
pub const SAVE_EVERY_ENTRIES: u64 = 256;
/// ... and at most: what a start applies again from the log.
pub const SAVE_EVERY_ENTRIES_MAX: u64 = 16_384;
/// Bytes of a save each applied entry pays for, amortized, between the two
/// bounds above.
pub const SAVED_BYTES_PER_ENTRY: u64 = 1024;
const _: () = assert!(SAVE_EVERY_ENTRIES < SAVE_EVERY_ENTRIES_MAX);

/// Applied entries after which the state machine is saved again, when the
/// last save was `saved_bytes` long.
pub fn entries_between_saves(saved_bytes: u64) -> u64 {
    (saved_bytes / SAVED_BYTES_PER_ENTRY).clamp(SAVE_EVERY_ENTRIES, SAVE_EVERY_ENTRIES_MAX)
}

fn err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())),
    }
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// Opens (or creates) the store under `dir`.
pub fn open(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_META, CF_STATE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&o, dir, cfs)?))
}

#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> LogStore {
        LogStore { db }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        v.map(|b| serde_json::from_slice(&b).map_err(|e| err(ErrorSubject::Store, ErrorVerb::Read, e)))
            .transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        let b = serde_json::to_vec(v).map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.db
            .put_cf_opt(self.cf(CF_META), key, b, &synced())
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    fn last_entry(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, v))) => {
                let e: Entry =
                    serde_json::from_slice(&v).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start.to_be_bytes(), Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| err(ErrorSubject::Logs, ErrorVerb::Read, "bad key"))?,
            );
            if !range.contains(&idx) || out.len() >= READ_ENTRIES_MAX {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_meta("last_purged")?;
        let last = self.last_entry()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        for e in entries {
            let b = serde_json::to_vec(&e).map_err(|x| err(ErrorSubject::Logs, ErrorVerb::Write, x))?;
            batch.put_cf(self.cf(CF_LOG), e.log_id.index.to_be_bytes(), b);
        }
        let r = self.db.write_opt(batch, &synced()).map_err(std::io::Error::other);
        let failed = r.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(r);
        match failed {
            Some(e) => Err(err(ErrorSubject::Logs, ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index.to_be_bytes();
        let to = u64::MAX.to_be_bytes();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), from, to);
        // delete_range excludes its end key.
        batch.delete_cf(self.cf(CF_LOG), to);
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge mark goes first: a crash between the two leaves
        // entries below it, which are ignored, never a gap.
        self.put_meta("last_purged", &log_id)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            0u64.to_be_bytes(),
            (log_id.index + 1).to_be_bytes(),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// What the state machine holds; shared with the API, which reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine: [`Machine`] in memory, written whole to RocksDB
/// now and then (see the module). `version` announces each new metadata version
/// to long-polling readers.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    pub shared: Arc<RwLock<Machine>>,
    version: Arc<watch::Sender<u64>>,
    /// Entries applied since the state machine was last saved.
    unsaved: Arc<std::sync::atomic::AtomicU64>,
    /// How long the last save was.
    saved_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachine {
    pub fn open(db: Arc<DB>) -> Result<StateMachine, StorageError> {
        let cf = db.cf_handle(CF_STATE).expect("created at open");
        let saved = db
            .get_cf(cf, "machine")
            .map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let saved_bytes = saved.as_ref().map_or(0, |b| b.len() as u64);
        let machine = match saved {
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
            }
            None => Machine {
                metadata: Metadata::new(),
                ..Machine::default()
            },
        };
        let (tx, _) = watch::channel(machine.metadata.version);
        Ok(StateMachine {
            db,
            shared: Arc::new(RwLock::new(machine)),
            version: Arc::new(tx),
            unsaved: Arc::default(),
            saved_bytes: Arc::new(saved_bytes.into()),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn save(&self, m: &Machine) -> Result<(), StorageError> {
        let b = serde_json::to_vec(m).map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        self.save_bytes(&b)
    }

    /// Saves a state machine already serialized.
    fn save_bytes(&self, b: &[u8]) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(CF_STATE).expect("created at open");
        self.db
            .put_cf_opt(cf, "machine", b, &synced())
            .map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        self.unsaved.store(0, std::sync::atomic::Ordering::Release);
        self.saved_bytes
            .store(b.len() as u64, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Serialized from a copy: this task is not the state machine's,
        // so while it held the read lock the next apply would wait for the
        // write lock, and every reader (a broker's heartbeat, the API)
        // behind that apply; a copy takes a fraction of the serializing.
        let m = self.shared.read().expect("machine lock").clone();
        let (applied, membership) = (m.applied, m.membership.clone());
        let data =
            serde_json::to_vec(&m).map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        drop(m);
        // The saved state is never behind a snapshot, so the log entries
        // it still needs at start are never purged.
        self.save_bytes(&data)?;
        let id = applied.map_or("empty".to_owned(), |l| {
            format!("{}-{}", l.leader_id.term, l.index)
        });
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: id,
        };
        let stored = serde_json::to_vec(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let cf = self.db.cf_handle(CF_STATE).expect("created at open");
        self.db
            .put_cf_opt(cf, "snapshot", stored, &synced())
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.shared.read().expect("machine lock");
        Ok((m.applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Applied in place under the write lock, so readers see whole
        // batches without a copy of all the metadata per batch.
        let mut out = Vec::new();
        let mut applied = 0u64;
        let mut next = self.shared.write().expect("machine lock");
        for e in entries {
            applied += 1;
            next.applied = Some(e.log_id);
            let r = match e.payload {
                EntryPayload::Normal(env) => next.metadata.apply(&env),
                EntryPayload::Membership(mem) => {
                    next.membership = StoredMembership::new(Some(e.log_id), mem);
                    Ok(unchanged(&next.metadata))
                }
                EntryPayload::Blank => Ok(unchanged(&next.metadata)),
            };
            out.push(Outcome(r));
        }
        let version = next.metadata.version;
        drop(next);
        self.version.send_replace(version);
        let unsaved = self
            .unsaved
            .fetch_add(applied, std::sync::atomic::Ordering::AcqRel)
            + applied;
        let saved_bytes = self.saved_bytes.load(std::sync::atomic::Ordering::Acquire);
        if unsaved >= entries_between_saves(saved_bytes) {
            // Only openraft's state-machine task writes the machine, so it
            // does not change while it is serialized under the read lock,
            // which is let go before the synced write.
            let b = {
                let m = self.shared.read().expect("machine lock");
                serde_json::to_vec(&*m).map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
            };
            self.save_bytes(&b)?;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let m: Machine = serde_json::from_slice(&data)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        self.save(&m)?;
        let stored = serde_json::to_vec(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let cf = self.db.cf_handle(CF_STATE).expect("created at open");
        self.db
            .put_cf_opt(cf, "snapshot", stored, &synced())
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let version = m.metadata.version;
        *self.shared.write().expect("machine lock") = m;
        self.version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cf = self.db.cf_handle(CF_STATE).expect("created at open");
        let Some(b) = self
            .db
            .get_cf(cf, "snapshot")
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let s: StoredSnapshot =
            serde_json::from_slice(&b).map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

fn unchanged(m: &Metadata) -> Applied {
    Applied {
        version: m.version,
        changed: false,
        moves: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_state_is_saved_after_more_entries_so_each_entry_pays_a_bounded_share() {
        assert_eq!(entries_between_saves(0), SAVE_EVERY_ENTRIES);
        assert_eq!(entries_between_saves(2 << 20), 2048);
        assert_eq!(entries_between_saves(u64::MAX), SAVE_EVERY_ENTRIES_MAX);
        for bytes in [256 << 10, 1 << 20, 2 << 20, 16 << 20] {
            assert!(bytes / entries_between_saves(bytes) <= SAVED_BYTES_PER_ENTRY);
        }
    }
}
