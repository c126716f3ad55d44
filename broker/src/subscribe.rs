//! Subscriptions: where each shard starts, and the push source that hands
//! the transport whole batches under the client's credit, waiting for
//! appends when it has caught up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use felix_client::server::{PushData, PushFuture, PushSource};
use felix_client::wire::{ErrorReply, Start};
use felix_log::Offset;
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::node::{Node, StreamHandle};
use crate::shard::HostedShard;

/// Largest push, whatever the credit (a batch larger than this still goes
/// alone).
pub const PUSH_BYTES_MAX: u64 = 4 << 20;

/// Where shard `shard` of a subscription starts.
pub fn start_offset(
    node: &Node,
    shard: &HostedShard,
    start: Start,
    durable: Option<&str>,
) -> Result<u64, BrokerError> {
    let earliest = shard.earliest();
    let hwm = shard.high_watermark();
    Ok(match start {
        Start::Earliest => earliest,
        Start::Latest => hwm,
        Start::Offset(o) => {
            // A follower cannot tell an offset past the end from one it has
            // not caught up with yet (a subscription resuming after its
            // leader changed): the leader can, so the client asks it.
            if let Some(r) = shard.replica().filter(|r| o > hwm && !r.is_leader()) {
                return Err(crate::shard::not_leader(r.leader()));
            }
            if o < earliest || o > hwm {
                return Err(BrokerError::OffsetOutOfRange {
                    requested: o,
                    earliest,
                    latest: hwm,
                });
            }
            o
        }
        Start::Time(t) => match node.index().offset_for_time(shard.id, t)? {
            Some(o) => o.0.clamp(earliest, hwm),
            None => hwm,
        },
        Start::Committed => {
            let Some(name) = durable else {
                return Err(BrokerError::Invalid(
                    "start = committed needs a durable subscription name".into(),
                ));
            };
            match node.index().cursor(shard.id, name.as_bytes())? {
                // Retention may have passed the cursor; resume at what is left.
                Some((o, _)) => o.0.clamp(earliest, hwm),
                None => earliest,
            }
        }
    })
}

/// Counts a live subscription for as long as it exists.
#[derive(Debug)]
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The push source of one subscription over some shards of a stream.
#[derive(Debug)]
pub struct StreamPush {
    stream: String,
    /// (shard, its number in the stream, next offset to send)
    shards: Vec<(Arc<HostedShard>, u32, u64)>,
    signal: watch::Receiver<u64>,
    /// Which shard goes first next time, so none starves the others.
    turn: usize,
    _live: Live,
}

impl StreamPush {
    pub fn new(h: &StreamHandle, shards: Vec<(u32, u64)>) -> Result<StreamPush, BrokerError> {
        let mut v = Vec::with_capacity(shards.len());
        for (n, next) in shards {
            v.push((h.shard(n)?.clone(), n, next));
        }
        let signal = v
            .first()
            .map(|(s, _, _)| s.signal())
            .ok_or_else(|| BrokerError::Invalid("a subscription needs at least one shard".into()))?;
        h.subscribers.fetch_add(1, Ordering::AcqRel);
        Ok(StreamPush {
            stream: h.name.to_string(),
            shards: v,
            signal,
            turn: 0,
            _live: Live(h.subscribers.clone()),
        })
    }

    /// A push from whichever shard has data, or `None` if none has.
    fn poll_shards(&mut self, credit: u64) -> Result<Option<PushData>, ErrorReply> {
        let n = self.shards.len();
        for i in 0..n {
            let at = (self.turn + i) % n;
            let (shard, number, next) = &mut self.shards[at];
            match shard.closed_error() {
                None => {}
                // The replica moved: the client resumes where it is now.
                Some(e @ crate::error::BrokerError::NotLeader { .. }) => return Err(ErrorReply::from(e)),
                Some(_) => return Err(ErrorReply::UnknownStream(format!("{} was deleted", self.stream))),
            }
            let chunk = shard
                .read(*next, credit.clamp(1, PUSH_BYTES_MAX) as usize)
                .map_err(ErrorReply::from)?;
            if chunk.bytes.is_empty() {
                continue;
            }
            *next = chunk.next_offset.0;
            self.turn = (at + 1) % n;
            metrics::counter!(crate::observe::metrics::PUSH_BYTES_TOTAL).increment(chunk.bytes.len() as u64);
            return Ok(Some(PushData {
                shard: *number,
                next_offset: *next,
                batches: chunk.bytes,
            }));
        }
        Ok(None)
    }
}

impl PushSource for StreamPush {
    fn next_push(&mut self, credit_bytes: u64) -> PushFuture<'_> {
        Box::pin(async move {
            loop {
                // Mark the current appends seen before reading, so an append
                // landing after the read wakes the wait below.
                self.signal.borrow_and_update();
                match self.poll_shards(credit_bytes) {
                    Ok(Some(p)) => return Some(Ok(p)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                if self.signal.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

/// The offset a named subscription's commit stores, checked against the shard.
pub fn check_commit(shard: &HostedShard, offset: u64) -> Result<Offset, BrokerError> {
    let hwm = shard.high_watermark();
    if offset > hwm {
        return Err(BrokerError::Invalid(format!(
            "cannot commit offset {offset}: the shard ends at {hwm}"
        )));
    }
    Ok(Offset(offset))
}
