//! Which publishes share a Raft entry.
//!
//! openraft 0.9's core flushes each entry it appends before it takes the
//! next, so a shard leader that proposes one entry per publish makes one
//! fsync per publish, one after another. Here a shard's publishes queue to
//! one proposer task, which keeps at most [`PROPOSALS_IN_FLIGHT_MAX`] entries
//! in flight; whatever queued meanwhile is merged into the next entry (a
//! batch with a producer table, `docs/format/batch.md`). Under load the
//! entries grow instead of the fsync queue, and without load a publish is
//! proposed as soon as it arrives, unmerged.
//!
//! Everything goes through the one task in arrival order, including batches
//! that cannot be merged (compressed ones, proposed alone), so a producer's
//! batches keep their order.

use std::sync::Arc;

use bytes::Bytes;
use felix_log::batch::seal::Keyring;
use felix_log::{Batch, BatchMerger};
use felix_replication::{Replica, Response, WriteError};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries a shard leader proposes before the earliest is answered: one
/// being flushed on the leader while the one before it replicates.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// Publishes waiting for an entry; beyond it a publish is `Overloaded`.
pub const MERGE_QUEUE_MAX: usize = 4096;

/// Where one publish landed, or why its entry failed.
pub type Outcome = Result<Response, Arc<WriteError>>;

/// The sending side of a shard's proposer.
#[derive(Debug, Clone)]
pub struct Coalescer {
    tx: mpsc::Sender<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    batch: Batch,
    reply: oneshot::Sender<Outcome>,
}

/// Why a publish was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// [`MERGE_QUEUE_MAX`] publishes are waiting.
    Full,
    /// The proposer stopped (its shard is closing).
    Stopped,
}

impl Coalescer {
    /// Starts the proposer of `replica`'s group; entries stay within
    /// `bytes_max`. It stops when every `Coalescer` clone is dropped.
    /// Each entry is sealed at rest with `keys` (when its tenant's
    /// encryption is on) after merging, so one seal covers a whole entry.
    pub fn start(replica: Replica, bytes_max: usize, keys: Option<Arc<dyn Keyring>>) -> Coalescer {
        let (tx, rx) = mpsc::channel(MERGE_QUEUE_MAX);
        tokio::spawn(propose(replica, bytes_max, keys, rx));
        Coalescer { tx }
    }

    /// Queues a checked data batch; the answer says where it landed (its
    /// own offsets, inside whatever entry carried it).
    pub fn publish(&self, batch: Batch) -> Result<oneshot::Receiver<Outcome>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Waiting { batch, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Full,
            mpsc::error::TrySendError::Closed(_) => Refused::Stopped,
        })?;
        Ok(rx)
    }
}

/// A publish inside an entry being built.
struct Part {
    reply: oneshot::Sender<Outcome>,
    offset_delta: u32,
}

async fn propose(
    replica: Replica,
    bytes_max: usize,
    keys: Option<Arc<dyn Keyring>>,
    mut rx: mpsc::Receiver<Waiting>,
) {
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    let mut carried: Option<Waiting> = None;
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let Some((bytes, parts)) = gather(first, bytes_max, &mut rx, &mut carried) else {
            continue;
        };
        let bytes = match seal_at_rest(bytes, keys.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                let e = WriteError::Other(felix_replication::ReplicationError::Log(e.into()));
                answer_parts(parts, &Err(Arc::new(e)));
                continue;
            }
        };
        match replica.submit(bytes).await {
            Ok(answer) => {
                tokio::spawn(async move {
                    let outcome = answer.await.map_err(Arc::new);
                    answer_parts(parts, &outcome);
                    drop(permit);
                });
            }
            Err(e) => answer_parts(parts, &Err(Arc::new(e))),
        }
    }
}

/// The next entry: `first` and whatever else is queued and fits. A batch
/// that does not fit (or cannot be merged) waits in `carried` for the next
/// entry. `None` when `first` was answered with an error instead.
fn gather(
    first: Waiting,
    bytes_max: usize,
    rx: &mut mpsc::Receiver<Waiting>,
    carried: &mut Option<Waiting>,
) -> Option<(Bytes, Vec<Part>)> {
    if !BatchMerger::mergeable(&first.batch) {
        return Some(alone(first));
    }
    let mut merger = BatchMerger::new(bytes_max);
    let delta = match merger.push(&first.batch) {
        Ok(Some(delta)) => delta,
        // Alone it fits the log; with a producer table it might not.
        Ok(None) => return Some(alone(first)),
        Err(e) => {
            refuse(first.reply, e);
            return None;
        }
    };
    let mut parts = vec![Part {
        reply: first.reply,
        offset_delta: delta,
    }];
    let only = first.batch;
    while let Ok(w) = rx.try_recv() {
        let placed = match BatchMerger::mergeable(&w.batch) {
            true => merger.push(&w.batch),
            false => Ok(None),
        };
        match placed {
            Ok(Some(offset_delta)) => parts.push(Part {
                reply: w.reply,
                offset_delta,
            }),
            Ok(None) => {
                *carried = Some(w);
                break;
            }
            Err(e) => refuse(w.reply, e),
        }
    }
    let bytes = match parts.len() {
        1 => only.bytes().clone(),
        _ => Bytes::from(merger.finish().expect("the merger holds at least one batch")),
    };
    Some((bytes, parts))
}

/// Answers a publish whose records the merger refused (the publish path
/// validates them first, so this is a broken invariant, reported rather
/// than lost).
fn refuse(reply: oneshot::Sender<Outcome>, e: felix_log::BatchError) {
    let why = felix_replication::ReplicationError::Raft(format!("batch: {e}"));
    let _ = reply.send(Err(Arc::new(WriteError::Other(why))));
}

fn alone(w: Waiting) -> (Bytes, Vec<Part>) {
    let part = Part {
        reply: w.reply,
        offset_delta: 0,
    };
    (w.batch.bytes().clone(), vec![part])
}

fn answer_parts(parts: Vec<Part>, outcome: &Result<Response, Arc<WriteError>>) {
    let mut iter = parts.into_iter().peekable();
    while let Some(p) = iter.next() {
        let answer = outcome.as_ref().map_err(Arc::clone).map(|r| {
            // A part's offsets run to the next part's (or the entry's end).
            let end = iter.peek().map_or(r.count, |n| n.offset_delta);
            Response {
                base_offset: r.base_offset + u64::from(p.offset_delta),
                count: end - p.offset_delta,
                raft_index: r.raft_index,
            }
        });
        let _ = p.reply.send(answer);
    }
}

/// A data entry sealed under its tenant's current data key, or as it is
/// when the tenant's encryption is off (or the entry is a control one,
/// which holds no records of a user's).
pub fn seal_at_rest(bytes: Bytes, keys: Option<&dyn Keyring>) -> Result<Bytes, felix_log::BatchError> {
    let Some(k) = keys else {
        return Ok(bytes);
    };
    if k.current().is_none() {
        return Ok(bytes);
    }
    let b = Batch::new(bytes)?;
    let h = b.header();
    if h.flags.control() || h.flags.sealed() || h.record_count == 0 {
        return Ok(b.bytes().clone());
    }
    // Once sealed, no replica's log can walk the records: they are
    // checked here, in the clear, whichever path the entry came by.
    b.validate()?;
    Ok(felix_log::batch::seal::seal_current(b.bytes(), k)?.map_or_else(|| b.bytes().clone(), Bytes::from))
}
