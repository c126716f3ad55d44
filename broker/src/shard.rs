//! One shard hosted on this node: its segment log, its index entries, the
//! offset up to which readers may read, and the limits on what is in flight.
//!
//! "Committed" on a single node: an append is committed once it is as
//! durable as the stream's mode promises (the append call returned). In a
//! cluster: once its shard group's quorum holds it (Raft commit). Either
//! way the high watermark moves only when an entry is applied, and readers
//! never read past it.
//!
//! Everything that changes a shard (publishes, group leases and acks,
//! cursor commits, cache writes) is an entry of its log, so every replica
//! applies the same changes in the same order, and a new leader starts from
//! the state its predecessor acknowledged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use felix_index::{Index, ShardKind};
use felix_log::batch::seal::Keyring;
use felix_log::{Batch, BatchHeader, LogConfig, Offset, RaftIndex, RaftTerm, ReadChunk, ShardId, SharedLog};
use felix_replication::{Applier, Replica, WriteError};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock, Semaphore};

use crate::coalesce::{self, Coalescer};
use crate::error::BrokerError;
use crate::windows::ProducerWindows;
pub use crate::windows::{
    Appended, PRODUCERS_FORGOTTEN_SHARE, PRODUCERS_PER_SHARD_MAX, PRODUCER_SCAN_ENTRIES_MAX,
};

const OPEN: u8 = 0;
const CLOSED_DELETED: u8 = 1;
const CLOSED_MOVED: u8 = 2;

/// Bytes of publishes to one shard being appended at once; beyond it a
/// publish is answered `Overloaded` at once.
pub const SHARD_IN_FLIGHT_BYTES_MAX: usize = 64 << 20;
/// What an overloaded shard tells the client to wait.
pub const SHARD_OVERLOADED_RETRY_MS: u32 = 20;
/// The term every entry of an unreplicated shard gets.
pub const SINGLE_NODE_TERM: RaftTerm = RaftTerm(1);
/// Stripes of a shard's keyed-write lock: compare-and-sets of keys in
/// different stripes (a pipeline's `INCR`s) append together and share
/// fsyncs instead of one fsync each, one after another. A few hundred
/// bytes per replica.
pub const WRITE_STRIPES: usize = 16;
/// How often a retry of a batch still in flight looks for its outcome.
const IN_FLIGHT_POLL_MS: u64 = 5;

#[derive(Debug)]
pub struct HostedShard {
    pub id: ShardId,
    pub kind: ShardKind,
    log: Arc<SharedLog>,
    index: Arc<Index>,
    /// The first offset readers may not read yet.
    hwm: watch::Sender<u64>,
    in_flight: Arc<Semaphore>,
    /// Serialises index applies, which must follow log order.
    /// The first Raft index not indexed yet.
    unapplied: Mutex<RaftIndex>,
    /// `unapplied` as last released, read without its lock.
    unapplied_seen: AtomicU64,
    /// Woken whenever `unapplied`'s holder lets go, whether it applied or
    /// failed: a local append that found it held waits here.
    apply_ended: tokio::sync::Notify,
    /// producer id → (sequence, where that batch landed).
    producers: Mutex<ProducerWindows>,
    /// Bumped after every append; shared by the shards of one stream so a
    /// subscription over several shards waits on one thing.
    signal: Arc<watch::Sender<u64>>,
    /// Set when the stream is deleted or this replica is moved away
    /// ([`CLOSED_DELETED`], [`CLOSED_MOVED`]): readers and writers stop,
    /// and nothing answered from its state after that counts (its index
    /// entries are being removed).
    closed: AtomicU8,
    /// Keyed writes, one lock per stripe of keys ([`HostedShard::writes_of`]):
    /// plain writes share their key's, a compare-and-set holds its key's
    /// alone so that nothing lands on that key between its check and its
    /// append.
    writes: [RwLock<()>; WRITE_STRIPES],
    /// Appends applied so far (the hot cache's staleness check).
    pub(crate) applied_count: AtomicU64,
    /// Group fetches, acks and nacks of this shard, one at a time: a fetch
    /// reads the group's state and appends the leases it decided.
    pub(crate) groups: tokio::sync::Mutex<()>,
    /// Whether writes go through a Raft group (set at open; the group
    /// itself starts later, asynchronously).
    replicated: bool,
    group: OnceLock<Group>,
    /// The term in which this replica last confirmed it leads with its
    /// applied state caught up (0: not confirmed).
    ready_term: AtomicU64,
    /// Producer id → sequence of a batch being replicated now, so that a
    /// retry waits for it instead of writing it twice.
    in_flight_seqs: Mutex<HashMap<u64, u64>>,
    /// Set when this replica starts leading a term: what it cached in
    /// memory while it last led may have been overwritten since.
    lead_began: AtomicBool,
    /// The tenant's data keys (the log's keyring): entries are sealed at
    /// rest with them, and reads opened.
    keys: Option<Arc<dyn Keyring>>,
}

/// A shard's Raft group as this replica runs it.
#[derive(Debug)]
struct Group {
    replica: Replica,
    write_timeout: Duration,
    /// Publishes on their way into entries (merged under load).
    coalescer: Coalescer,
}

/// What a snapshot carries besides the entries: the producer windows.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShardState {
    producers: Vec<(u64, u64, Appended)>,
}

impl HostedShard {
    /// The lock that orders keyed writes of `key` (see `writes`). The
    /// stripe is a hash of its own, not the routing hash: every key of a
    /// shard shares its routing hash modulo the shard count.
    pub(crate) fn writes_of(&self, key: &[u8]) -> &RwLock<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.writes[(h % WRITE_STRIPES as u64) as usize]
    }

    /// Opens (or creates) an unreplicated shard's log under `dir` and
    /// brings its index in line with it.
    pub fn open(
        dir: &Path,
        id: ShardId,
        kind: ShardKind,
        config: LogConfig,
        index: Arc<Index>,
    ) -> Result<HostedShard, BrokerError> {
        HostedShard::open_as(dir, id, kind, config, index, false)
    }

    /// Opens a shard whose writes go through a Raft group (started with
    /// [`HostedShard::attach`]): only entries an earlier run applied are
    /// indexed and readable until the group commits more.
    pub fn open_replicated(
        dir: &Path,
        id: ShardId,
        kind: ShardKind,
        config: LogConfig,
        index: Arc<Index>,
    ) -> Result<HostedShard, BrokerError> {
        HostedShard::open_as(dir, id, kind, config, index, true)
    }

    /// Where a replicated shard keeps its Raft state (vote, applied mark,
    /// snapshots).
    pub fn raft_dir(dir: &Path) -> std::path::PathBuf {
        dir.join("raft")
    }

    fn open_as(
        dir: &Path,
        id: ShardId,
        kind: ShardKind,
        config: LogConfig,
        index: Arc<Index>,
        replicated: bool,
    ) -> Result<HostedShard, BrokerError> {
        let keys = config.keys.clone();
        let (log, report) = SharedLog::open(dir, config)?;
        if let Some((path, pos, why)) = &report.torn_tail {
            tracing::warn!(shard = id.0, path = %path.display(), pos, why, "cut a torn tail");
        }
        // Index 0 of a group is its first membership, a control entry, so
        // "through 0" indexes no record when nothing was applied yet.
        let through = replicated.then(|| {
            RaftIndex(felix_replication::machine::saved_applied(&HostedShard::raft_dir(dir)).unwrap_or(0))
        });
        let (hwm, unapplied, producers) = log.with(|l| -> Result<_, BrokerError> {
            index.recover_shard_through(id, kind, l, through)?;
            let (hwm, unapplied) = match through {
                None => (l.next_offset().0, l.next_raft_index()),
                Some(t) => match l.entry(t) {
                    Some(b) => (b.header().next_offset().0, t.next()),
                    None => (
                        l.earliest_offset().0,
                        l.first_raft_index().unwrap_or(RaftIndex(0)),
                    ),
                },
            };
            let producers = ProducerWindows::scan(l, unapplied);
            Ok((hwm, unapplied, producers))
        })?;
        Ok(HostedShard {
            id,
            kind,
            log: Arc::new(log),
            index,
            hwm: watch::channel(hwm).0,
            in_flight: Arc::new(Semaphore::new(SHARD_IN_FLIGHT_BYTES_MAX)),
            unapplied: Mutex::new(unapplied),
            unapplied_seen: AtomicU64::new(unapplied.0),
            apply_ended: tokio::sync::Notify::new(),
            producers: Mutex::new(producers),
            signal: Arc::new(watch::channel(0).0),
            closed: AtomicU8::new(OPEN),
            writes: std::array::from_fn(|_| RwLock::new(())),
            applied_count: AtomicU64::new(0),
            groups: tokio::sync::Mutex::new(()),
            replicated,
            group: OnceLock::new(),
            ready_term: AtomicU64::new(0),
            in_flight_seqs: Mutex::new(HashMap::new()),
            lead_began: AtomicBool::new(false),
            keys,
        })
    }

    /// Routes this shard's writes through `replica` from now on.
    /// Must run inside the runtime: it starts the shard's proposer task.
    pub fn attach(&self, replica: Replica, write_timeout: Duration) {
        let bytes_max = self.log.with(|l| l.config().batch_bytes_max);
        let coalescer = Coalescer::start(replica.clone(), bytes_max, self.keys.clone());
        let _ = self.group.set(Group {
            replica,
            write_timeout,
            coalescer,
        });
    }

    pub fn replica(&self) -> Option<&Replica> {
        self.group.get().map(|g| &g.replica)
    }

    /// The last entry applied (index and readers reflect it).
    pub fn applied_through(&self) -> RaftIndex {
        RaftIndex(self.unapplied.lock().expect("unapplied lock").0.saturating_sub(1))
    }

    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// Shares `signal` (the stream's) instead of the shard's own.
    pub fn with_signal(mut self, signal: Arc<watch::Sender<u64>>) -> HostedShard {
        self.signal = signal;
        self
    }

    /// Watches appends to this shard's stream.
    pub fn signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// Marks the shard gone (its stream was deleted) and wakes its readers.
    /// Stops the shard for good: its stream was deleted (`moved`: false)
    /// or the placement moved this replica away (`moved`: true).
    pub fn close(&self, moved: bool) {
        let why = if moved { CLOSED_MOVED } else { CLOSED_DELETED };
        self.closed.store(why, Ordering::Release);
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) != OPEN
    }

    /// Why the shard no longer serves, if it does not: the stream is gone,
    /// or the replica moved (the client asks where the shard is now).
    /// Checked after reading state, too: a replica retired meanwhile may
    /// have read its index half removed.
    pub fn closed_error(&self) -> Option<BrokerError> {
        match self.closed.load(Ordering::Acquire) {
            OPEN => None,
            CLOSED_MOVED => Some(BrokerError::NotLeader { leader: None }),
            _ => Some(BrokerError::Invalid("the stream was deleted".into())),
        }
    }

    pub fn log(&self) -> &Arc<SharedLog> {
        &self.log
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The first offset not yet readable.
    pub fn high_watermark(&self) -> u64 {
        *self.hwm.borrow()
    }

    pub fn earliest(&self) -> u64 {
        self.log.with(|l| l.earliest_offset().0)
    }

    /// Watches the high watermark.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.hwm.subscribe()
    }

    /// Appends a producer-built data batch; returns once it is committed.
    /// A retry of a producer's last batch (same producer id and sequence,
    /// which the batch header carries) returns where the first attempt
    /// landed, also after a failover: the windows are rebuilt from applied
    /// entries.
    pub async fn publish(
        &self,
        batch: Bytes,
        producer_id: u64,
        sequence: u64,
    ) -> Result<Appended, BrokerError> {
        let checked = Batch::new(batch)?;
        let h = checked.header();
        if h.flags.control() || h.producer_count > 0 || h.record_count == 0 || h.flags.sealed() {
            // The Raft log takes emptied batches (a compacted leader's
            // entries); a client's must hold records. Sealing is the
            // leader's: a client's sealed batch could not be checked.
            return Err(BrokerError::Invalid(
                "clients may not publish control batches, batches with a producer table, sealed batches or batches without records"
                    .into(),
            ));
        }
        if h.offset_count != h.record_count {
            // Gaps are what compaction leaves; a client's batch with one
            // would skip offsets no consumer group's fetch gets past.
            return Err(BrokerError::Invalid(format!(
                "a batch of {} records declares {} offsets: a client's batch takes one offset per record",
                h.record_count, h.offset_count
            )));
        }
        if producer_id != 0 && (h.producer_id.0 != producer_id || h.producer_seq != sequence) {
            return Err(BrokerError::Invalid(format!(
                "producer {producer_id} sequence {sequence} differs from the batch header's ({} {})",
                h.producer_id.0, h.producer_seq
            )));
        }
        // A new leader must have applied its predecessor's entries before
        // its producer windows can tell a retry from a new batch.
        let group = self.lead().await?;
        let claim = if producer_id != 0 {
            if let Some(at) = self.duplicate_of(producer_id, sequence)? {
                return Ok(at);
            }
            match self.claim_sequence(producer_id, sequence) {
                Some(claim) => Some(claim),
                None => return self.await_in_flight(producer_id, sequence).await,
            }
        } else {
            None
        };
        let permit = self.reserve_in_flight(checked.bytes().len())?;
        let result = match group {
            Some(_) => self.propose(checked).await,
            None => self.write(None, checked.bytes().clone()).await,
        };
        drop(permit);
        if let (Some(claim), Err(BrokerError::Timeout(_) | BrokerError::Replication(_))) = (&claim, &result) {
            // The entry may still commit: until it is applied (or this
            // replica leads a new term, which applies it first), a retry
            // must wait for it rather than write it again.
            claim.keep();
        }
        result
    }

    /// Where `(producer_id, sequence)` landed if it was applied already; an
    /// error if the producer is past it.
    pub(crate) fn duplicate_of(
        &self,
        producer_id: u64,
        sequence: u64,
    ) -> Result<Option<Appended>, BrokerError> {
        self.producers
            .lock()
            .expect("producers lock")
            .verdict(producer_id, sequence)
            .map_err(|e| BrokerError::Invalid(e.to_string()))
    }

    /// Marks `(producer_id, sequence)` as being written; `None` when it
    /// already is.
    fn claim_sequence(&self, producer_id: u64, sequence: u64) -> Option<InFlightSeq<'_>> {
        let mut m = self.in_flight_seqs.lock().expect("in-flight lock");
        if m.get(&producer_id) == Some(&sequence) {
            return None;
        }
        m.insert(producer_id, sequence);
        Some(InFlightSeq {
            shard: self,
            producer_id,
            sequence,
            kept: AtomicBool::new(false),
        })
    }

    /// A retry that arrived while its first attempt is still being written:
    /// waits for that attempt's outcome.
    async fn await_in_flight(&self, producer_id: u64, sequence: u64) -> Result<Appended, BrokerError> {
        let until = tokio::time::Instant::now() + self.write_timeout();
        loop {
            if let Some(at) = self.duplicate_of(producer_id, sequence)? {
                return Ok(at);
            }
            let still = self
                .in_flight_seqs
                .lock()
                .expect("in-flight lock")
                .get(&producer_id)
                == Some(&sequence);
            if !still {
                // The first attempt failed; the client retries again.
                return Err(BrokerError::Timeout(format!(
                    "producer {producer_id} sequence {sequence}: the first attempt did not complete"
                )));
            }
            if tokio::time::Instant::now() >= until {
                return Err(BrokerError::Timeout(format!(
                    "producer {producer_id} sequence {sequence} is still being written"
                )));
            }
            tokio::time::sleep(Duration::from_millis(IN_FLIGHT_POLL_MS)).await;
        }
    }

    fn write_timeout(&self) -> Duration {
        self.group
            .get()
            .map_or(Duration::from_secs(5), |g| g.write_timeout)
    }

    /// For a replicated shard: this replica's group once it leads with its
    /// state caught up; `NotLeader` (naming the leader if known) otherwise.
    /// `None` for an unreplicated shard.
    pub(crate) async fn lead(&self) -> Result<Option<&Replica>, BrokerError> {
        if !self.replicated {
            return Ok(None);
        }
        let Some(g) = self.group.get() else {
            return Err(BrokerError::NotLeader { leader: None });
        };
        let term = g.replica.term();
        if self.ready_term.load(Ordering::Acquire) == term && g.replica.is_leader() {
            return Ok(Some(&g.replica));
        }
        if !g.replica.is_leader() {
            return Err(not_leader(g.replica.leader()));
        }
        match tokio::time::timeout(g.write_timeout, g.replica.ensure_leading()).await {
            Ok(Ok(t)) => {
                // Everything before this term is applied now: the producer
                // windows answer for writes whose outcome was unknown.
                self.in_flight_seqs.lock().expect("in-flight lock").clear();
                self.lead_began.store(true, Ordering::Release);
                self.ready_term.store(t, Ordering::Release);
                Ok(Some(&g.replica))
            }
            Ok(Err(e)) => Err(self.write_error(&e)),
            Err(_) => Err(BrokerError::Timeout(format!(
                "shard {}: leadership not confirmed by a quorum within {:?}",
                self.id.0, g.write_timeout
            ))),
        }
    }

    /// [`HostedShard::lead`] for a read answered from this replica's state:
    /// also confirms, once per read lease, that no other replica leads.
    pub(crate) async fn lead_for_read(&self) -> Result<(), BrokerError> {
        let Some(replica) = self.lead().await? else {
            return Ok(());
        };
        let timeout = self.write_timeout();
        match tokio::time::timeout(timeout, replica.confirm_for_read()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.write_error(&e)),
            Err(_) => Err(BrokerError::Timeout(format!(
                "shard {}: leadership not confirmed by a quorum within {timeout:?}",
                self.id.0
            ))),
        }
    }

    /// Whether leadership began since the last call (in-memory caches of
    /// this shard must be dropped).
    pub(crate) fn take_lead_began(&self) -> bool {
        self.lead_began.swap(false, Ordering::AcqRel)
    }

    fn write_error(&self, e: &WriteError) -> BrokerError {
        self.ready_term.store(0, Ordering::Release);
        match e {
            WriteError::NotLeader { leader, .. } => not_leader(leader.clone()),
            // This replica is gone: the client asks where the shard leads
            // now and sends again (a producer id makes that idempotent).
            WriteError::Stopped { .. } => not_leader(None),
            WriteError::NoQuorum { why, .. } => {
                BrokerError::Timeout(format!("shard {}: no quorum: {why}", self.id.0))
            }
            e => BrokerError::Replication(e.to_string()),
        }
    }

    /// Writes a checked batch through the group (or the log) and returns
    /// once it is committed and applied here.
    async fn write(&self, group: Option<&Replica>, batch: Bytes) -> Result<Appended, BrokerError> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        self.check_entry_len(batch.len())?;
        let batch = coalesce::seal_at_rest(batch, self.keys.as_deref())?;
        let Some(replica) = group else {
            return self.append_local(batch).await;
        };
        self.committed(replica.write(batch)).await
    }

    /// Waits for a replicated write (at most the write timeout) and says
    /// where it landed.
    async fn committed(
        &self,
        write: impl std::future::Future<Output = Result<felix_replication::Response, WriteError>>,
    ) -> Result<Appended, BrokerError> {
        match tokio::time::timeout(self.write_timeout(), write).await {
            Ok(Ok(r)) => Ok(Appended {
                base_offset: r.base_offset,
                count: r.count,
            }),
            Ok(Err(e)) => Err(self.write_error(&e)),
            Err(_) => Err(self.commit_timeout()),
        }
    }

    fn commit_timeout(&self) -> BrokerError {
        BrokerError::Timeout(format!(
            "shard {}: not committed by a quorum within {:?}; it may still be",
            self.id.0,
            self.write_timeout()
        ))
    }

    /// Writes a producer's batch through the shard's proposer, which may
    /// put it in one entry with other publishes; returns once that entry
    /// is committed and applied here.
    async fn propose(&self, batch: Batch) -> Result<Appended, BrokerError> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        let Some(g) = self.group.get() else {
            return Err(BrokerError::NotLeader { leader: None });
        };
        self.check_entry_len(batch.bytes().len())?;
        // Every replica's log checks the records on append; one it refuses
        // must not become an entry.
        batch.validate()?;
        let answer = g.coalescer.publish(batch).map_err(|refused| match refused {
            coalesce::Refused::Full => BrokerError::Overloaded {
                retry_after_ms: SHARD_OVERLOADED_RETRY_MS,
            },
            coalesce::Refused::Stopped => not_leader(None),
        })?;
        match tokio::time::timeout(g.write_timeout, answer).await {
            Ok(Ok(Ok(r))) => Ok(Appended {
                base_offset: r.base_offset,
                count: r.count,
            }),
            Ok(Ok(Err(e))) => Err(self.write_error(&e)),
            Ok(Err(_)) => Err(not_leader(None)),
            Err(_) => Err(self.commit_timeout()),
        }
    }

    /// A batch the log would refuse must not become a Raft entry: every
    /// replica would fail to store it.
    fn check_entry_len(&self, len: usize) -> Result<(), BrokerError> {
        let max = self.log.with(|l| l.config().batch_bytes_max);
        if len > max {
            return Err(BrokerError::Invalid(format!(
                "a batch of {len} bytes is above this stream's batch_bytes_max of {max}"
            )));
        }
        Ok(())
    }

    /// Bytes of publishes accepted and not yet acknowledged.
    pub fn in_flight_bytes(&self) -> usize {
        SHARD_IN_FLIGHT_BYTES_MAX.saturating_sub(self.in_flight.available_permits())
    }

    /// Counts `bytes` against the shard's in-flight limit until the permit
    /// is dropped; `Overloaded` at once when they do not fit.
    pub fn reserve_in_flight(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, BrokerError> {
        let len = bytes.clamp(1, SHARD_IN_FLIGHT_BYTES_MAX);
        self.in_flight
            .clone()
            .try_acquire_many_owned(len as u32)
            .map_err(|_| BrokerError::Overloaded {
                retry_after_ms: SHARD_OVERLOADED_RETRY_MS,
            })
    }

    /// Appends a batch (data or control) and indexes it.
    pub async fn append(&self, batch: Bytes) -> Result<Appended, BrokerError> {
        let group = self.lead().await?;
        self.write(group, batch).await
    }

    /// [`HostedShard::publish`] that a follower forwards to the leader
    /// (writes a broker makes on its own behalf, like dead letters). The
    /// leader answers a forwarded retry from its producer windows too
    /// (`Applier::forwarded`), so a write with a producer id is idempotent
    /// whichever replica it is handed to.
    pub async fn publish_anywhere(
        &self,
        batch: Bytes,
        producer_id: u64,
        sequence: u64,
    ) -> Result<Appended, BrokerError> {
        match self.publish(batch.clone(), producer_id, sequence).await {
            Err(BrokerError::NotLeader { .. }) if self.group.get().is_some() => {
                // In the clear to the leader (over mutual TLS), whose
                // publish checks, deduplicates and seals it.
                let g = self.group.get().expect("checked");
                self.committed(g.replica.write_anywhere(batch)).await
            }
            r => r,
        }
    }

    async fn append_local(&self, batch: Bytes) -> Result<Appended, BrokerError> {
        // An append is a copy into the mapped segment under the log lock,
        // done here: a round trip through the blocking pool per publish (two
        // thread wake-ups) was most of the broker's CPU (docs/benchmarks.md,
        // "Where the time goes"). With `always` the task then waits for the
        // group commit's fsync without a thread; only the fsync itself runs
        // on the pool, one thread for every append it covers.
        let out = self.log.append_unwaited(&batch, SINGLE_NODE_TERM)?;
        if self.log.durability() == felix_log::Durability::Always {
            self.log
                .durable(out.raft_index, |duty| {
                    tokio::task::spawn_blocking(move || duty.run());
                })
                .await?;
        }
        self.applied_locally(out.raft_index).await?;
        Ok(Appended {
            base_offset: out.base_offset.0,
            count: (out.next_offset.0 - out.base_offset.0) as u32,
        })
    }

    /// [`HostedShard::apply_through`] for a local append, without blocking
    /// a runtime thread while another caller applies: that one indexes what
    /// was appended by the time it read the log, usually this entry too, so
    /// concurrent writes share one index write and no thread sleeps on the
    /// lock (the waits were a tenth of a cache put's CPU, in futex calls
    /// and context switches).
    async fn applied_locally(&self, through: RaftIndex) -> Result<(), BrokerError> {
        // In modes acknowledged before an fsync, whatever is appended is
        // answered as written at once; with `always` an entry is readable
        // only once its own append (whose fsync covers those before it)
        // has returned.
        let upto = if self.log.durability() == felix_log::Durability::Always {
            through
        } else {
            RaftIndex(u64::MAX)
        };
        loop {
            if self.unapplied_seen.load(Ordering::Acquire) > through.0 {
                return Ok(());
            }
            let ended = self.apply_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(r) = self.try_apply_through(upto) {
                return r;
            }
            ended.await;
        }
    }

    /// [`HostedShard::apply_through`] if no one else is applying.
    fn try_apply_through(&self, through: RaftIndex) -> Option<Result<(), BrokerError>> {
        let unapplied = match self.unapplied.try_lock() {
            Ok(u) => u,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("unapplied lock poisoned"),
        };
        let r = self.apply_locked(unapplied, through);
        self.apply_ended.notify_waiters();
        Some(r)
    }

    /// Indexes every entry up to `through` not indexed yet, in log order,
    /// notes producer windows, and lets readers see them.
    fn apply_through(&self, through: RaftIndex) -> Result<(), BrokerError> {
        let unapplied = self.unapplied.lock().expect("unapplied lock");
        let r = self.apply_locked(unapplied, through);
        self.apply_ended.notify_waiters();
        r
    }

    fn apply_locked(
        &self,
        mut unapplied: std::sync::MutexGuard<'_, RaftIndex>,
        through: RaftIndex,
    ) -> Result<(), BrokerError> {
        if *unapplied > through {
            return Ok(());
        }
        let entries: Vec<_> = self.log.with(|l| {
            l.positioned_from_raft_index(*unapplied)
                .take_while(|p| p.batch.header().raft_index <= through)
                .collect()
        });
        let entries = felix_index::keyed_in_clear(self.keys.as_ref(), self.kind, entries)?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let outcome = self.index.apply(self.id, self.kind, &entries)?;
        if !outcome.refusals.is_empty() {
            tracing::debug!(
                shard = self.id.0,
                refusals = outcome.refusals.len(),
                "control ops refused"
            );
        }
        {
            let mut p = self.producers.lock().expect("producers lock");
            for e in &entries {
                p.note(&e.batch);
            }
        }
        let next = entries
            .iter()
            .map(|e| e.batch.header().next_offset().0)
            .max()
            .unwrap_or(0);
        *unapplied = last.batch.header().raft_index.next();
        self.unapplied_seen.store(unapplied.0, Ordering::Release);
        drop(unapplied);
        self.applied_count
            .fetch_add(entries.len() as u64, Ordering::AcqRel);
        self.hwm.send_if_modified(|h| {
            let moved = next > *h;
            *h = (*h).max(next);
            moved
        });
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Whole batches from `from`, up to about `max_bytes`, never past the
    /// high watermark. Empty when nothing is readable yet.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<ReadChunk, BrokerError> {
        let hwm = self.high_watermark();
        if from >= hwm {
            let earliest = self.earliest();
            if from > hwm || from < earliest {
                return Err(BrokerError::OffsetOutOfRange {
                    requested: from,
                    earliest,
                    latest: hwm,
                });
            }
            return Ok(ReadChunk {
                bytes: Bytes::new(),
                next_offset: Offset(from),
            });
        }
        let chunk = cut_at(self.log.with(|l| l.read(Offset(from), max_bytes))?, from, hwm);
        // Opened outside the log's lock: decryption is the slow part.
        Ok(match &self.keys {
            Some(k) => ReadChunk {
                bytes: felix_log::batch::seal::open_chunk(chunk.bytes, k.as_ref())?,
                ..chunk
            },
            None => chunk,
        })
    }
}

/// Releases a producer's in-flight sequence when its write ends.
struct InFlightSeq<'a> {
    shard: &'a HostedShard,
    producer_id: u64,
    sequence: u64,
    /// The write's outcome is unknown: stay in flight after the request.
    kept: AtomicBool,
}

impl InFlightSeq<'_> {
    fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }
}

impl Drop for InFlightSeq<'_> {
    fn drop(&mut self) {
        if self.kept.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.shard.in_flight_seqs.lock().expect("in-flight lock");
        if m.get(&self.producer_id) == Some(&self.sequence) {
            m.remove(&self.producer_id);
        }
    }
}

pub(crate) fn not_leader(leader: Option<(u64, felix_replication::BrokerNode)>) -> BrokerError {
    BrokerError::NotLeader {
        // Clients know brokers, not Raft incarnations.
        leader: leader.map(|(id, n)| (felix_replication::broker_of(id), n.client_addr)),
    }
}

impl Applier for HostedShard {
    fn apply_through(&self, through: RaftIndex) -> Result<(), String> {
        HostedShard::apply_through(self, through).map_err(|e| e.to_string())
    }

    fn installed(&self, last: RaftIndex, state: &[u8]) -> Result<(), String> {
        let s: ShardState = if state.is_empty() {
            ShardState::default()
        } else {
            serde_json::from_slice(state).map_err(|e| format!("shard state: {e}"))?
        };
        let mut unapplied = self.unapplied.lock().expect("unapplied lock");
        let next = self.log.with(|l| -> Result<u64, String> {
            self.index
                .rebuild_shard_through(self.id, self.kind, l, Some(last))
                .map_err(|e| e.to_string())?;
            Ok(l.entry(last)
                .map_or(l.next_offset().0, |b| b.header().next_offset().0))
        })?;
        *unapplied = last.next();
        self.unapplied_seen.store(unapplied.0, Ordering::Release);
        *self.producers.lock().expect("producers lock") = ProducerWindows::from_state(s.producers);
        drop(unapplied);
        self.apply_ended.notify_waiters();
        self.hwm.send_replace(next);
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    fn snapshot_state(&self) -> Result<Vec<u8>, String> {
        let s = ShardState {
            producers: self.producers.lock().expect("producers lock").to_state(),
        };
        serde_json::to_vec(&s).map_err(|e| e.to_string())
    }

    fn forwarded(self: Arc<Self>, batch: Bytes) -> Option<felix_replication::Forwarded> {
        // A data batch takes the publish path here, the leader's: a
        // producer's retry is answered from its window, and the batch is
        // checked and sealed at rest like any other. Anything else is
        // proposed as it came.
        let h = BatchHeader::decode(&batch).ok()?;
        if h.producer_count > 0 || h.flags.control() {
            return None;
        }
        Some(Box::pin(async move {
            self.publish(batch, h.producer_id.0, h.producer_seq)
                .await
                .map(|a| felix_replication::Response {
                    base_offset: a.base_offset,
                    count: a.count,
                    raft_index: 0,
                })
                .map_err(|e| e.to_string())
        }))
    }
}

/// Keeps the batches of `chunk` (read from `from`) that end at or before
/// `hwm`.
fn cut_at(chunk: ReadChunk, from: u64, hwm: u64) -> ReadChunk {
    if chunk.next_offset.0 <= hwm {
        return chunk;
    }
    let mut rest = chunk.bytes.clone();
    let mut keep = 0usize;
    let mut next = None;
    while rest.has_remaining() {
        let Ok(h) = BatchHeader::decode(&rest) else { break };
        let end = h.next_offset().0;
        if end > hwm {
            break;
        }
        keep += h.batch_len as usize;
        next = Some(end);
        rest.advance(h.batch_len as usize);
    }
    ReadChunk {
        bytes: chunk.bytes.slice(..keep),
        next_offset: Offset(next.unwrap_or(from)),
    }
}

/// How far ahead of the broker's clock a published record's timestamp may
/// be (Kafka's `message.timestamp.after.max.ms` is the same idea). Time
/// retention deletes a segment once its newest record is old enough, and
/// a lookup by time finds the first record at or after a time: one record
/// dated years ahead would keep its segment, and every later one, from
/// ever expiring.
pub const RECORD_TIMESTAMP_AHEAD_MS_MAX: i64 = 3_600_000;

/// Refuses a client batch dated more than [`RECORD_TIMESTAMP_AHEAD_MS_MAX`]
/// ahead of `now_ms`. A batch whose header does not decode is left to the
/// publish path, which says what is wrong with it.
pub fn check_timestamps(batch: &[u8], now_ms: i64) -> Result<(), BrokerError> {
    let Ok(h) = felix_log::batch::BatchHeader::decode(batch) else {
        return Ok(());
    };
    let ahead = h.max_timestamp_ms.saturating_sub(now_ms);
    if ahead > RECORD_TIMESTAMP_AHEAD_MS_MAX {
        return Err(BrokerError::Invalid(format!(
            "a record is timestamped {} ms, {ahead} ms ahead of this broker's clock ({now_ms} ms); at most {RECORD_TIMESTAMP_AHEAD_MS_MAX} ms ahead is taken",
            h.max_timestamp_ms
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_dated_past_the_limit_ahead_of_the_clock_is_refused() {
        let now = 1_700_000_000_000i64;
        let at = |ts: i64| felix_testkit::Batch::of(&["v"]).ts(ts).bytes();
        assert!(check_timestamps(&at(now), now).is_ok());
        assert!(
            check_timestamps(&at(now - 10 * 365 * 86_400_000), now).is_ok(),
            "the past is fine"
        );
        assert!(check_timestamps(&at(now + RECORD_TIMESTAMP_AHEAD_MS_MAX), now).is_ok());
        let e = check_timestamps(&at(now + RECORD_TIMESTAMP_AHEAD_MS_MAX + 1), now).unwrap_err();
        assert!(matches!(e, BrokerError::Invalid(_)), "{e}");
        assert!(check_timestamps(&at(i64::MAX), now).is_err());
        assert!(
            check_timestamps(b"not a batch", now).is_ok(),
            "left to the publish path"
        );
    }
}
