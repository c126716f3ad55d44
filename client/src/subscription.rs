//! [`Subscription`]: records of a stream's shards with their offsets, pulled
//! under credit, resuming after a lost connection from the offset after the
//! last one delivered.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use felix_log::{Batch, BatchHeader, Record};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{Client, Route};
use crate::conn::{Answer, Connection};
use crate::error::ClientError;
use crate::transport::framed::{FrameReader, Incoming};
use crate::wire::{ErrorReply, Message, Start};

/// How a subscription starts and how much it buffers.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Shards to read; empty = all.
    pub shards: Vec<u32>,
    pub start: Start,
    /// A named (durable) subscription, whose cursor the broker keeps.
    pub durable: Option<String>,
    /// Bytes of batches the broker may push ahead of consumption, per shard.
    pub credit_bytes: u32,
    /// Records decoded ahead of `next`, in all.
    pub buffer_records: usize,
    /// End-to-end encryption: every value is opened with these keys
    /// (`crate::sealed`); a value that does not open is given as
    /// [`ClientError::Sealed`] in its place, and the subscription goes on.
    pub open: Option<std::sync::Arc<crate::sealed::ValueKeys>>,
}

impl SubscribeOptions {
    /// The defaults, reading from `start`.
    pub fn starting(start: Start) -> SubscribeOptions {
        SubscribeOptions {
            start,
            ..SubscribeOptions::default()
        }
    }
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            shards: Vec::new(),
            start: Start::Latest,
            durable: None,
            open: None,
            credit_bytes: 4 << 20,
            buffer_records: 4096,
        }
    }
}

/// One record delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub shard: u32,
    pub record: Record,
}

/// A live subscription; dropping it ends it.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery, ClientError>>,
    tasks: Vec<JoinHandle<()>>,
    client: Client,
    stream: String,
    durable: Option<String>,
    open: Option<Arc<crate::sealed::ValueKeys>>,
}

impl Client {
    /// Subscribes to `stream`.
    pub async fn subscribe(&self, stream: &str, opts: SubscribeOptions) -> Result<Subscription, ClientError> {
        let info = self.stream_info(stream).await?;
        let shards: Vec<u32> = if opts.shards.is_empty() {
            info.shards.iter().map(|s| s.shard).collect()
        } else {
            opts.shards.clone()
        };
        if let Some(s) = shards
            .iter()
            .find(|s| !info.shards.iter().any(|i| i.shard == **s))
        {
            return Err(ClientError::Invalid(format!("stream {stream} has no shard {s}")));
        }
        let (tx, rx) = mpsc::channel(opts.buffer_records.max(1));
        let opts = Arc::new(opts);
        let tasks = shards
            .into_iter()
            .map(|shard| {
                let follow = Follow {
                    client: self.clone(),
                    stream: stream.to_owned(),
                    shard,
                    opts: opts.clone(),
                    tx: tx.clone(),
                    // Whole batches arrive, so the first may begin before
                    // the offset asked for.
                    next: match opts.start {
                        Start::Offset(o) => Some(o),
                        _ => None,
                    },
                };
                tokio::spawn(follow.run())
            })
            .collect();
        Ok(Subscription {
            rx,
            tasks,
            client: self.clone(),
            stream: stream.to_owned(),
            durable: opts.durable.clone(),
            open: opts.open.clone(),
        })
    }
}

impl Subscription {
    /// The next record; `None` once every shard's subscription has ended.
    /// An error ends that shard's subscription (others carry on), except
    /// [`ClientError::Sealed`]: a value that did not open, in place of its
    /// record, after which the shard goes on.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        let next = self.rx.recv().await;
        match (&self.open, next) {
            (Some(keys), Some(Ok(mut d))) => {
                if let Some(v) = &d.record.value {
                    match keys.open(&self.stream, d.record.key.as_deref(), v) {
                        Ok(plain) => d.record.value = Some(plain),
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                Some(Ok(d))
            }
            (_, next) => next,
        }
    }

    /// Commits the named subscription's cursor: the next offset to read.
    pub async fn commit(&self, shard: u32, next_offset: u64) -> Result<(), ClientError> {
        let Some(name) = &self.durable else {
            return Err(ClientError::Invalid(
                "only a durable subscription has a cursor".into(),
            ));
        };
        let m = Message::CommitCursor {
            stream: self.stream.clone(),
            shard,
            name: name.clone(),
            offset: next_offset,
        };
        match self.client.call(Route::Shard(&self.stream, shard), &m).await? {
            Message::Done => Ok(()),
            other => Err(ClientError::unexpected(&other)),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Follows one shard, resubscribing where it left off.
struct Follow {
    client: Client,
    stream: String,
    shard: u32,
    opts: Arc<SubscribeOptions>,
    tx: mpsc::Sender<Result<Delivery, ClientError>>,
    /// The offset after the last record delivered.
    next: Option<u64>,
}

/// Why following a push stream stopped.
enum Stop {
    /// Connection lost or the leader moved: subscribe again.
    Resume,
    /// The consumer went away or the broker ended the subscription.
    End,
}

impl Follow {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let start = self.next.map_or(self.opts.start, Start::Offset);
            let m = Message::Subscribe {
                stream: self.stream.clone(),
                shards: vec![self.shard],
                start,
                durable: self.opts.durable.clone(),
                credit_bytes: self.opts.credit_bytes,
            };
            let route = Route::Shard(&self.stream, self.shard);
            match self.client.call_routed(route, &m).await {
                Ok((Answer::Subscription { subscription, pushes }, conn)) => {
                    failures = 0;
                    match self.follow(conn, subscription, pushes).await {
                        Stop::End => return,
                        Stop::Resume => {}
                    }
                }
                Ok((Answer::Message(other), _)) => {
                    let _ = self.tx.send(Err(ClientError::unexpected(&other))).await;
                    return;
                }
                Err(e) if e.retryable() => {
                    // call_routed already retried; keep trying while the
                    // consumer is there, more slowly.
                    failures += 1;
                    let policy = self.client.config().retry;
                    tokio::time::sleep(policy.backoff(failures.min(16), rand::random())).await;
                    if self.tx.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    async fn follow(&mut self, conn: Arc<Connection>, subscription: u64, mut pushes: FrameReader) -> Stop {
        let grant_at = (self.opts.credit_bytes / 4).max(1);
        let mut owed = 0u32;
        loop {
            let push = match pushes.next().await {
                Ok(Some(Incoming::Message(_, m))) => m,
                Ok(Some(Incoming::Refused(_, e))) => Message::Error(ErrorReply::Internal(e.to_string())),
                Ok(None) => return Stop::End,
                Err(_) => return Stop::Resume,
            };
            match push {
                Message::Push {
                    next_offset, batches, ..
                } => {
                    let n = batches.len() as u32;
                    if let Err(e) = self.deliver(batches).await {
                        let _ = self.tx.send(Err(e)).await;
                        return Stop::End;
                    }
                    if self.tx.is_closed() {
                        return Stop::End;
                    }
                    self.next = Some(self.next.map_or(next_offset, |o| o.max(next_offset)));
                    owed = owed.saturating_add(n);
                    if owed >= grant_at {
                        let credit = Message::Credit {
                            subscription,
                            bytes: owed,
                        };
                        if conn.notify(&credit).await.is_err() {
                            return Stop::Resume;
                        }
                        owed = 0;
                    }
                }
                Message::Error(e @ ErrorReply::NotLeader { .. }) => {
                    tracing::debug!(shard = self.shard, error = %e, "subscription moves to the new leader");
                    return Stop::Resume;
                }
                Message::Error(e) => {
                    let _ = self.tx.send(Err(ClientError::Broker(e))).await;
                    return Stop::End;
                }
                other => {
                    let _ = self.tx.send(Err(ClientError::unexpected(&other))).await;
                    return Stop::End;
                }
            }
        }
    }

    /// Hands the records of whole batches to the consumer, skipping control
    /// batches and offsets already delivered.
    async fn deliver(&mut self, mut batches: Bytes) -> Result<(), ClientError> {
        while batches.has_remaining() {
            let h = BatchHeader::decode(&batches)?;
            let len = (h.batch_len as usize).min(batches.len());
            let batch = Batch::new(batches.split_to(len))?;
            if batch.header().flags.control() {
                continue;
            }
            for r in batch.records()? {
                let r = r?;
                if self.next.is_some_and(|n| r.offset.0 < n) {
                    continue;
                }
                let next = r.offset.0 + 1;
                let d = Delivery {
                    shard: self.shard,
                    record: r,
                };
                if self.tx.send(Ok(d)).await.is_err() {
                    return Ok(());
                }
                self.next = Some(next);
            }
        }
        Ok(())
    }
}
