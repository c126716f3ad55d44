//! [`Producer`]: batches records per shard by size and linger time, sends
//! each batch to its shard's leader with an idempotent producer id and
//! per-shard sequence, and resolves each record's acknowledgement.
//!
//! Order: one batch per shard is in flight at a time, so a retried batch
//! can never be overtaken by the next; batching recovers the throughput.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use felix_log::{BatchBuilder, Compression, ProducerId, RecordInput};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::wire::{AckLevel, Message};

/// Bytes of records a producer buffers before `send` waits for room.
pub const PRODUCER_BUFFER_BYTES_MAX: usize = 1 << 30;
/// Built batches queued per shard behind the one in flight.
const SHARD_QUEUE_BATCHES_MAX: usize = 4;

/// How a producer batches and acknowledges.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sent once it would grow past this many encoded bytes.
    pub batch_bytes_max: usize,
    /// ...or once its first record has waited this long.
    pub linger_ms: u64,
    pub ack: AckLevel,
    pub compression: Compression,
    /// Records buffered (bytes) before `send` waits; capped at
    /// [`PRODUCER_BUFFER_BYTES_MAX`].
    pub buffer_bytes_max: usize,
    /// End-to-end encryption: every value is sealed under the last of
    /// these keys before it leaves this process (`crate::sealed`); the
    /// brokers store and replicate only the sealed bytes.
    pub seal: Option<std::sync::Arc<crate::sealed::ValueKeys>>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes_max: 1 << 20,
            linger_ms: 2,
            ack: AckLevel::Quorum,
            compression: Compression::None,
            buffer_bytes_max: 64 << 20,
            seal: None,
        }
    }
}

/// A record to publish.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(Bytes, Bytes)>,
    /// Milliseconds since the epoch; `None` stamps the time of `send`.
    pub timestamp_ms: Option<i64>,
    /// Overrides key routing.
    pub shard: Option<u32>,
}

impl ProducerRecord {
    pub fn new(value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            value: value.into(),
            ..Default::default()
        }
    }

    pub fn keyed(key: impl Into<Bytes>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            key: Some(key.into()),
            value: value.into(),
            ..Default::default()
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAck {
    pub shard: u32,
    pub offset: u64,
}

/// The acknowledgement of one sent record, to await.
#[derive(Debug)]
pub struct PendingAck(oneshot::Receiver<Result<RecordAck, Arc<ClientError>>>);

impl PendingAck {
    pub async fn wait(self) -> Result<RecordAck, Arc<ClientError>> {
        self.0
            .await
            .unwrap_or_else(|_| Err(Arc::new(ClientError::Closed)))
    }
}

type AckTx = oneshot::Sender<Result<RecordAck, Arc<ClientError>>>;

enum Cmd {
    Record(ProducerRecord, AckTx, OwnedSemaphorePermit),
    Flush(oneshot::Sender<()>),
}

/// Publishes to one stream.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Cmd>,
    room: Arc<Semaphore>,
    buffer_bytes_max: usize,
    shards: u32,
    task: JoinHandle<()>,
    stream: Arc<str>,
    seal: Option<Arc<crate::sealed::ValueKeys>>,
}

impl Client {
    /// A producer for `stream` (which must exist).
    pub async fn producer(&self, stream: &str, cfg: ProducerConfig) -> Result<Producer, ClientError> {
        let info = self.stream_info(stream).await?;
        let shards = info.shards.len() as u32;
        if shards == 0 {
            return Err(ClientError::UnknownStream(stream.to_owned()));
        }
        if cfg.ack == AckLevel::None {
            return Err(ClientError::Invalid(
                "a Producer resolves every record to its offset, so it needs ack Leader or Quorum".into(),
            ));
        }
        if cfg.batch_bytes_max > felix_log::batch::layout::BATCH_BYTES_MAX {
            return Err(ClientError::Invalid(format!(
                "batch_bytes_max {} is above the limit of {}",
                cfg.batch_bytes_max,
                felix_log::batch::layout::BATCH_BYTES_MAX
            )));
        }
        let buffer_bytes_max = cfg.buffer_bytes_max.clamp(1, PRODUCER_BUFFER_BYTES_MAX);
        let (tx, rx) = mpsc::channel(1024);
        // Producer ids are random 63-bit numbers: collisions need ~3·10^9
        // producers on one shard. 0 means "not idempotent" to the broker.
        let producer_id = rand::random::<u64>() >> 1 | 1;
        let seal = cfg.seal.clone();
        let accumulator = Accumulator {
            client: self.clone(),
            stream: Arc::from(stream),
            cfg,
            producer_id,
            shards,
            key_routing: info.key_routing,
            open: HashMap::new(),
            workers: HashMap::new(),
            next_sticky: rand::random::<u32>() % shards,
        };
        let task = tokio::spawn(accumulator.run(rx));
        Ok(Producer {
            tx,
            room: Arc::new(Semaphore::new(buffer_bytes_max)),
            buffer_bytes_max,
            shards,
            task,
            stream: Arc::from(stream),
            seal,
        })
    }
}

impl Producer {
    /// The stream's shard count as this producer routes.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Buffers a record, waiting while the buffer is full; the returned
    /// [`PendingAck`] resolves once the broker acknowledges it.
    pub async fn send(&self, mut record: ProducerRecord) -> Result<PendingAck, ClientError> {
        if let Some(keys) = &self.seal {
            record.value = keys.seal(&self.stream, record.key.as_deref(), &record.value)?;
        }
        if let Some(s) = record.shard {
            if s >= self.shards {
                return Err(ClientError::Invalid(format!(
                    "shard {s} of a {}-shard stream",
                    self.shards
                )));
            }
        }
        let size = record_size(&record).min(self.buffer_bytes_max) as u32;
        let permit = self
            .room
            .clone()
            .acquire_many_owned(size.max(1))
            .await
            .map_err(|_| ClientError::Closed)?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Record(record, tx, permit))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(PendingAck(rx))
    }

    /// Sends and waits for the acknowledgement.
    pub async fn send_wait(&self, record: ProducerRecord) -> Result<RecordAck, Arc<ClientError>> {
        self.send(record).await.map_err(Arc::new)?.wait().await
    }

    /// Sends every buffered record now and waits until all are answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes and stops.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        drop(self.tx);
        let _ = self.task.await;
        Ok(())
    }
}

fn record_size(r: &ProducerRecord) -> usize {
    r.value.len()
        + r.key.as_ref().map_or(0, |k| k.len())
        + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + 32
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A batch being filled.
struct Open {
    builder: BatchBuilder,
    acks: Vec<(AckTx, OwnedSemaphorePermit)>,
    deadline: Instant,
}

/// A batch built and waiting for its shard's worker.
struct Built {
    batch: Bytes,
    sequence: u64,
    acks: Vec<(AckTx, OwnedSemaphorePermit)>,
}

enum Job {
    Send(Built),
    /// Answered when every job before it is done.
    Marker(oneshot::Sender<()>),
}

struct Worker {
    tx: mpsc::Sender<Job>,
    next_sequence: u64,
}

struct Accumulator {
    client: Client,
    stream: Arc<str>,
    cfg: ProducerConfig,
    producer_id: u64,
    shards: u32,
    key_routing: felix_model::KeyRouting,
    open: HashMap<u32, Open>,
    workers: HashMap<u32, Worker>,
    /// Keyless records stick to one shard per batch (fewer, fuller batches).
    next_sticky: u32,
}

impl Accumulator {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let deadline = self.open.values().map(|o| o.deadline).min();
            let cmd = match deadline {
                // A due batch goes at once, after whatever is already
                // queued joins it: a timer would add its millisecond of
                // resolution to every `linger_ms = 0` send.
                Some(d) if d <= Instant::now() => match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.flush_due(Instant::now()).await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
                Some(d) => tokio::select! {
                    c = rx.recv() => c,
                    _ = tokio::time::sleep_until(d) => {
                        self.flush_due(Instant::now()).await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match cmd {
                None => break,
                Some(Cmd::Record(r, ack, permit)) => self.add(r, ack, permit).await,
                Some(Cmd::Flush(done)) => {
                    let shards: Vec<u32> = self.open.keys().copied().collect();
                    for s in shards {
                        self.flush_shard(s).await;
                    }
                    self.wait_idle().await;
                    let _ = done.send(());
                }
            }
        }
        let shards: Vec<u32> = self.open.keys().copied().collect();
        for s in shards {
            self.flush_shard(s).await;
        }
        self.wait_idle().await;
    }

    fn route(&mut self, r: &ProducerRecord) -> u32 {
        match (r.shard, &r.key) {
            (Some(s), _) => s,
            (None, Some(k)) => self.key_routing.shard(k, self.shards),
            (None, None) => self.next_sticky,
        }
    }

    async fn add(&mut self, r: ProducerRecord, ack: AckTx, permit: OwnedSemaphorePermit) {
        let shard = self.route(&r);
        let headers: Vec<(&[u8], &[u8])> = r.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let input = RecordInput {
            key: r.key.as_deref(),
            value: Some(&r.value),
            timestamp_ms: r.timestamp_ms.unwrap_or_else(now_ms),
            ttl_ms: None,
            headers: &headers,
        };
        for _ in 0..2 {
            let o = self.open.entry(shard).or_insert_with(|| Open {
                builder: BatchBuilder::new(self.cfg.batch_bytes_max),
                acks: Vec::new(),
                deadline: Instant::now() + Duration::from_millis(self.cfg.linger_ms),
            });
            match o.builder.push(input) {
                Ok(()) => {
                    o.acks.push((ack, permit));
                    if o.builder.encoded_len() >= self.cfg.batch_bytes_max {
                        self.flush_shard(shard).await;
                    }
                    return;
                }
                // Full: send what is there and start a new batch.
                Err(_) if !o.builder.is_empty() => self.flush_shard(shard).await,
                Err(e) => {
                    let _ = ack.send(Err(Arc::new(ClientError::Record(e))));
                    self.open.remove(&shard);
                    return;
                }
            }
        }
    }

    async fn flush_due(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            self.flush_shard(s).await;
        }
    }

    async fn flush_shard(&mut self, shard: u32) {
        let Some(open) = self.open.remove(&shard) else {
            return;
        };
        if open.acks.is_empty() {
            return;
        }
        if shard == self.next_sticky {
            self.next_sticky = (self.next_sticky + 1) % self.shards;
        }
        let count = u64::from(open.builder.len());
        let worker = self.workers.entry(shard).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE_BATCHES_MAX);
            tokio::spawn(send_loop(
                self.client.clone(),
                self.stream.clone(),
                shard,
                self.cfg.ack,
                self.producer_id,
                rx,
            ));
            Worker { tx, next_sequence: 0 }
        });
        let sequence = worker.next_sequence;
        worker.next_sequence += count;
        let builder = open.builder.producer(ProducerId(self.producer_id), sequence);
        let built = match builder.build(self.cfg.compression) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                let e = Arc::new(ClientError::Record(e));
                for (a, _) in open.acks {
                    let _ = a.send(Err(e.clone()));
                }
                return;
            }
        };
        let _ = worker
            .tx
            .send(Job::Send(Built {
                batch: built,
                sequence,
                acks: open.acks,
            }))
            .await;
    }

    /// Waits until every worker has sent what it was given.
    async fn wait_idle(&mut self) {
        for w in self.workers.values() {
            let (tx, rx) = oneshot::channel();
            if w.tx.send(Job::Marker(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }
}

async fn send_loop(
    client: Client,
    stream: Arc<str>,
    shard: u32,
    ack: AckLevel,
    producer_id: u64,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = rx.recv().await {
        let b = match job {
            Job::Send(b) => b,
            Job::Marker(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let m = Message::Publish {
            stream: stream.to_string(),
            shard: Some(shard),
            ack,
            producer_id,
            sequence: b.sequence,
            batch: b.batch,
        };
        let result = client.call(Route::Shard(&stream, shard), &m).await;
        let result = match result {
            Ok(Message::PublishAck {
                shard,
                base_offset,
                count,
            }) if count as usize == b.acks.len() => Ok((shard, base_offset)),
            Ok(other) => Err(Arc::new(ClientError::unexpected(&other))),
            Err(e) => Err(Arc::new(e)),
        };
        for (i, (a, _permit)) in b.acks.into_iter().enumerate() {
            let _ = a.send(result.clone().map(|(shard, base)| RecordAck {
                shard,
                offset: base + i as u64,
            }));
        }
    }
}
