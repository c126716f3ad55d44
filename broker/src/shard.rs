//! One shard hosted on this node: its segment log, its index entries, the
//! offset up to which readers may read, and the limits on what is in flight.
//!
//! Single-node rule for "committed": an append is committed once it is as
//! durable as the stream's mode promises (the append call returned). The
//! high watermark moves only then, and readers never read past it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use felix_index::{Index, ShardKind};
use felix_log::{Batch, BatchHeader, LogConfig, Offset, RaftIndex, RaftTerm, ReadChunk, ShardId, SharedLog};
use tokio::sync::{watch, RwLock, Semaphore};

use crate::error::BrokerError;

/// Bytes of publishes to one shard being appended at once; beyond it a
/// publish is answered `Overloaded` at once.
pub const SHARD_IN_FLIGHT_BYTES_MAX: usize = 64 << 20;
/// What an overloaded shard tells the client to wait.
pub const SHARD_OVERLOADED_RETRY_MS: u32 = 20;
/// Producers whose last batch a shard remembers for deduplication.
pub const PRODUCERS_PER_SHARD_MAX: usize = 100_000;
/// The term every entry gets until replication assigns real ones.
pub const SINGLE_NODE_TERM: RaftTerm = RaftTerm(1);

/// Where a publish landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub count: u32,
}

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
    /// producer id → (sequence, where that batch landed).
    producers: Mutex<HashMap<u64, (u64, Appended)>>,
    /// Bumped after every append; shared by the shards of one stream so a
    /// subscription over several shards waits on one thing.
    signal: Arc<watch::Sender<u64>>,
    /// Set when the stream is deleted: readers and writers stop.
    closed: AtomicBool,
    /// Keyed writes: plain writes share it, a compare-and-set holds it alone
    /// so that nothing lands between its check and its append.
    pub(crate) writes: RwLock<()>,
    /// Appends applied so far (the hot cache's staleness check).
    pub(crate) applied_count: AtomicU64,
    /// Group fetches, acks and nacks of this shard, one at a time: a fetch
    /// reads the group's state and appends the leases it decided.
    pub(crate) groups: tokio::sync::Mutex<()>,
}

impl HostedShard {
    /// Opens (or creates) the shard's log under `dir` and brings its index
    /// in line with it.
    pub fn open(
        dir: &Path,
        id: ShardId,
        kind: ShardKind,
        config: LogConfig,
        index: Arc<Index>,
    ) -> Result<HostedShard, BrokerError> {
        let (log, report) = SharedLog::open(dir, config)?;
        if let Some((path, pos, why)) = &report.torn_tail {
            tracing::warn!(shard = id.0, path = %path.display(), pos, why, "cut a torn tail");
        }
        let (next, next_index) = log.with(|l| -> Result<_, BrokerError> {
            index.recover_shard(id, kind, l)?;
            Ok((l.next_offset().0, l.next_raft_index()))
        })?;
        Ok(HostedShard {
            id,
            kind,
            log: Arc::new(log),
            index,
            hwm: watch::channel(next).0,
            in_flight: Arc::new(Semaphore::new(SHARD_IN_FLIGHT_BYTES_MAX)),
            unapplied: Mutex::new(next_index),
            producers: Mutex::new(HashMap::new()),
            signal: Arc::new(watch::channel(0).0),
            closed: AtomicBool::new(false),
            writes: RwLock::new(()),
            applied_count: AtomicU64::new(0),
            groups: tokio::sync::Mutex::new(()),
        })
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
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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

    /// Appends a producer-built data batch; returns once it is durable per
    /// the stream's mode. A retry of the producer's last batch (same
    /// producer id and sequence) returns where the first attempt landed.
    pub async fn publish(
        &self,
        batch: Bytes,
        producer_id: u64,
        sequence: u64,
    ) -> Result<Appended, BrokerError> {
        let checked = Batch::new(batch)?;
        if checked.header().flags.control() {
            return Err(BrokerError::Invalid(
                "clients may not publish control batches".into(),
            ));
        }
        if producer_id != 0 {
            if let Some((seq, at)) = self.producers.lock().expect("producers lock").get(&producer_id) {
                if *seq == sequence {
                    return Ok(*at);
                }
                if sequence < *seq {
                    return Err(BrokerError::Invalid(format!(
                        "producer {producer_id}: sequence {sequence} is behind {seq}, already written"
                    )));
                }
            }
        }
        let permit = self.reserve_in_flight(checked.bytes().len())?;
        let at = self.append(checked.bytes().clone()).await?;
        drop(permit);
        if producer_id != 0 {
            let mut p = self.producers.lock().expect("producers lock");
            if p.len() >= PRODUCERS_PER_SHARD_MAX && !p.contains_key(&producer_id) {
                // Forget an arbitrary producer; it loses only its dedup window.
                if let Some(k) = p.keys().next().copied() {
                    p.remove(&k);
                }
            }
            p.insert(producer_id, (sequence, at));
        }
        Ok(at)
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
        if self.is_closed() {
            return Err(BrokerError::Invalid("the stream was deleted".into()));
        }
        let log = self.log.clone();
        let out = tokio::task::spawn_blocking(move || log.append(&batch, SINGLE_NODE_TERM))
            .await
            .map_err(|e| BrokerError::Invalid(format!("append task: {e}")))??;
        self.apply_through(out.raft_index)?;
        self.applied_count.fetch_add(1, Ordering::AcqRel);
        self.hwm.send_if_modified(|h| {
            let moved = out.next_offset.0 > *h;
            *h = (*h).max(out.next_offset.0);
            moved
        });
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Appended {
            base_offset: out.base_offset.0,
            count: (out.next_offset.0 - out.base_offset.0) as u32,
        })
    }

    /// Indexes every entry up to `through` not indexed yet, in log order.
    fn apply_through(&self, through: RaftIndex) -> Result<(), BrokerError> {
        let mut unapplied = self.unapplied.lock().expect("unapplied lock");
        if *unapplied > through {
            return Ok(());
        }
        let entries: Vec<_> = self.log.with(|l| {
            l.positioned_from_raft_index(*unapplied)
                .take_while(|p| p.batch.header().raft_index <= through)
                .collect()
        });
        if let Some(last) = entries.last() {
            let outcome = self.index.apply(self.id, self.kind, &entries)?;
            if !outcome.refusals.is_empty() {
                tracing::debug!(
                    shard = self.id.0,
                    refusals = outcome.refusals.len(),
                    "control ops refused"
                );
            }
            *unapplied = last.batch.header().raft_index.next();
        }
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
        let chunk = self.log.with(|l| l.read(Offset(from), max_bytes))?;
        Ok(cut_at(chunk, from, hwm))
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
