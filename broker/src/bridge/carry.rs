//! One carrier: while this broker leads a bridged shard, reads the shard's
//! committed records from the bridge's source position and publishes them
//! to the same shard of the target stream, one idempotent batch at a time,
//! committing the new position to the source shard's log after each (the
//! reasoning is in the module above).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use felix_client::wire::{AckLevel, Message};
use felix_client::{Client, ClientConfig, Route};
use felix_controlplane::model::Bridge;
use felix_index::control::{control_batch, ControlOp};
use felix_log::{BatchBuilder, Compression, Offset, ProducerId, RecordInput};

use super::{advance, cursor_name, producer_id, CarrierKey, CarrierStatus};
use super::{CARRY_BATCH_BYTES_MAX, CARRY_RECORDS_MAX, SOURCE_OFFSET_HEADER, SOURCE_REGION_HEADER};
use crate::error::BrokerError;
use crate::node::Node;
use crate::shard::HostedShard;

/// Longest wait between tries after the target refused or did not answer.
const BACKOFF_MS_MAX: u64 = 5_000;
const BACKOFF_MS_MIN: u64 = 100;
/// How often an idle carrier looks again at whether it still leads.
const IDLE_LOOK_MS: u64 = 1_000;
/// Bytes of the source read per step.
const READ_BYTES: usize = 1 << 20;

/// Why a carrier stopped.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// This replica no longer leads (or the shard closed): the new leader's
    /// broker carries on from the committed position.
    #[error("no longer leading: {0}")]
    NotLeading(String),
}

/// A client of the bridge's target cluster.
pub async fn connect(b: &Bridge) -> Result<Client, String> {
    let t = &b.spec.target;
    let tls = felix_client::transport::ClientTls::from_ca_pem(t.ca_pem.as_bytes())
        .map_err(|e| format!("the target's CA: {e}"))?;
    let mut cfg = ClientConfig::new(t.brokers.first().cloned().unwrap_or_default(), tls);
    cfg.brokers = t.brokers.clone();
    cfg.server_name = t.server_name.clone();
    cfg.token = Bytes::from(t.token.clone().into_bytes());
    cfg.connect_timeout_ms = 3_000;
    cfg.request_timeout_ms = 10_000;
    Client::connect(cfg)
        .await
        .map_err(|e| format!("connecting to the target cluster: {e}"))
}

/// Runs the carrier until this replica stops leading the shard.
pub async fn run(
    node: Weak<Node>,
    shard: Arc<HostedShard>,
    key: CarrierKey,
    bridge: Bridge,
    source_region: String,
    status: Arc<Mutex<CarrierStatus>>,
) -> Stopped {
    let mut c = Carrier {
        node,
        shard,
        producer_id: producer_id(&source_region, &key.bridge, &key.stream, key.shard),
        cursor: cursor_name(&key.bridge),
        key,
        bridge,
        source_region,
        status,
        client: None,
        backoff_ms: 0,
    };
    c.carry().await
}

struct Carrier {
    /// Weak: a carrier must not keep a stopped broker's node alive.
    node: Weak<Node>,
    shard: Arc<HostedShard>,
    key: CarrierKey,
    bridge: Bridge,
    source_region: String,
    producer_id: u64,
    cursor: String,
    status: Arc<Mutex<CarrierStatus>>,
    client: Option<Client>,
    backoff_ms: u64,
}

/// A batch built for the target, and the source offsets it carries.
struct Built {
    batch: Bytes,
    offsets: Vec<u64>,
}

impl Carrier {
    async fn carry(&mut self) -> Stopped {
        // Leading with the predecessor's entries applied, so the committed
        // position read next is the last one any leader wrote.
        if let Err(e) = self.shard.lead().await {
            return Stopped::NotLeading(e.to_string());
        }
        let Some(node) = self.node.upgrade() else {
            return Stopped::NotLeading("the broker stopped".into());
        };
        let mut position = match node.index().cursor(self.shard.id, self.cursor.as_bytes()) {
            Ok(Some((o, _))) => o.0,
            Ok(None) => 0,
            Err(e) => {
                self.failed(format!("reading the source position: {e}")).await;
                return Stopped::NotLeading("the source position could not be read".into());
            }
        };
        drop(node);
        let mut skip = 0u64;
        let mut watch = self.shard.watch();
        loop {
            if let Some(why) = self.still_leading() {
                return Stopped::NotLeading(why);
            }
            let end = self.shard.high_watermark();
            self.report(position, end);
            if position >= end {
                let _ = tokio::time::timeout(Duration::from_millis(IDLE_LOOK_MS), watch.changed()).await;
                continue;
            }
            let earliest = self.shard.earliest();
            if position < earliest {
                // Retention took records the bridge had not carried (it was
                // paused, or the target was out of reach, for longer than
                // the stream keeps records): they are gone from the source
                // and cannot be carried. Said, and stepped over.
                tracing::warn!(bridge = %self.key.bridge, stream = %self.key.stream, shard = self.key.shard, lost = earliest - position, "retention removed records before the bridge carried them");
                position = earliest;
                skip = 0;
            }
            let built = match self.build(position, skip) {
                Ok(b) => b,
                Err(e) => {
                    self.failed(format!("reading the source: {e}")).await;
                    continue;
                }
            };
            let built = match built {
                Step::Records(b) => b,
                Step::Nothing(next, left) => {
                    // Only control records or records already in the target.
                    position = next;
                    skip = left;
                    continue;
                }
            };
            let count = match self.send(&built).await {
                Ok(c) => c,
                Err(e) => {
                    self.failed(e).await;
                    continue;
                }
            };
            if self.node.upgrade().is_some_and(|n| n.bridges.crash_due()) {
                return Stopped::NotLeading("the test fault: stopped before committing".into());
            }
            let a = advance(&built.offsets, count);
            if let Err(e) = self.commit(a.next).await {
                return Stopped::NotLeading(format!("committing the position: {e}"));
            }
            position = a.next;
            skip = a.skip;
            self.backoff_ms = 0;
            self.status.lock().expect("carrier status lock").error = None;
        }
    }

    /// Why this carrier should stop, if it should.
    fn still_leading(&self) -> Option<String> {
        if self.node.strong_count() == 0 {
            return Some("the broker stopped".into());
        }
        if self.shard.is_closed() {
            return Some("the shard closed".into());
        }
        match self.shard.replica() {
            Some(r) if !r.is_leader() => Some("another replica leads".into()),
            _ => None,
        }
    }

    fn report(&self, position: u64, end: u64) {
        let mut s = self.status.lock().expect("carrier status lock");
        s.position = position;
        s.end = end;
    }

    async fn failed(&mut self, why: String) {
        tracing::warn!(bridge = %self.key.bridge, stream = %self.key.stream, shard = self.key.shard, error = %why, "bridge");
        {
            let mut s = self.status.lock().expect("carrier status lock");
            s.error = Some(why);
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(BACKOFF_MS_MIN, BACKOFF_MS_MAX);
        tokio::time::sleep(Duration::from_millis(self.backoff_ms)).await;
    }

    /// The next batch for the target from `position`, stepping over the
    /// first `skip` records (in the target already).
    fn build(&self, mut position: u64, mut skip: u64) -> Result<Step, BrokerError> {
        let chunk = self.shard.read(position, READ_BYTES)?;
        if chunk.bytes.is_empty() {
            return Ok(Step::Nothing(position, skip));
        }
        let mut records = Vec::new();
        let mut bytes = 0usize;
        'read: for b in felix_log::batch::data_batches(chunk.bytes.clone()) {
            for r in b?.records()? {
                let r = r?;
                if r.offset.0 < position {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    position = r.offset.0 + 1;
                    continue;
                }
                let size = r.key.as_ref().map_or(0, |k| k.len())
                    + r.value.as_ref().map_or(0, |v| v.len())
                    + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    + 64;
                if !records.is_empty()
                    && (records.len() >= CARRY_RECORDS_MAX || bytes + size > CARRY_BATCH_BYTES_MAX)
                {
                    break 'read;
                }
                bytes += size;
                records.push(r);
            }
        }
        if records.is_empty() {
            return Ok(Step::Nothing(chunk.next_offset.0.max(position), skip));
        }
        let first = records[0].offset.0;
        let mut builder = BatchBuilder::new(
            felix_log::batch::layout::BATCH_BYTES_MAX - felix_log::batch::layout::SEAL_OVERHEAD_BYTES,
        )
        .producer(ProducerId(self.producer_id), first);
        let mut offsets = Vec::with_capacity(records.len());
        for r in &records {
            let at = r.offset.0.to_string();
            let mut headers: Vec<(&[u8], &[u8])> = r.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            headers.push((SOURCE_OFFSET_HEADER.as_bytes(), at.as_bytes()));
            headers.push((SOURCE_REGION_HEADER.as_bytes(), self.source_region.as_bytes()));
            builder.push(RecordInput {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                timestamp_ms: r.timestamp_ms,
                ttl_ms: None,
                headers: &headers,
            })?;
            offsets.push(r.offset.0);
        }
        let batch = Bytes::from(builder.build(Compression::None)?);
        Ok(Step::Records(Built { batch, offsets }))
    }

    /// Publishes a built batch to the target; the records the target holds
    /// from the batch's first one on (this attempt's or an earlier one's).
    async fn send(&mut self, b: &Built) -> Result<u32, String> {
        if self.client.is_none() {
            let node = self.node.upgrade().ok_or("the broker stopped")?;
            let c = node.bridges.client(&self.bridge).await?;
            drop(node);
            let info = c
                .stream_info(&self.key.stream)
                .await
                .map_err(|e| format!("the target stream {}: {e}", self.key.stream))?;
            let source_shards = self
                .node
                .upgrade()
                .ok_or("the broker stopped")?
                .stream(&self.key.stream)
                .map_err(|e| e.to_string())?
                .count();
            if info.shards.len() as u32 != source_shards {
                return Err(format!(
                    "the target stream {} has {} shards and the source {source_shards}: a bridge carries each shard to the same shard",
                    self.key.stream,
                    info.shards.len()
                ));
            }
            self.client = Some(c);
        }
        let client = self.client.as_ref().expect("connected above");
        let m = Message::Publish {
            stream: self.key.stream.clone(),
            shard: Some(self.key.shard),
            ack: AckLevel::Quorum,
            producer_id: self.producer_id,
            sequence: b.offsets[0],
            batch: b.batch.clone(),
        };
        match client
            .call(Route::Shard(&self.key.stream, self.key.shard), &m)
            .await
        {
            Ok(Message::PublishAck { count, .. }) => Ok(count),
            Ok(other) => Err(format!("the target answered {other:?}")),
            Err(e) => {
                if !e.retryable() {
                    // Metadata or credentials may have changed: connect
                    // afresh on the next try.
                    self.client = None;
                    if let Some(n) = self.node.upgrade() {
                        n.bridges.forget_client(&self.bridge);
                    }
                }
                Err(format!("publishing to the target: {e}"))
            }
        }
    }

    /// Commits `next` as the bridge's position in the source shard's log.
    async fn commit(&self, next: u64) -> Result<(), BrokerError> {
        let op = ControlOp::CursorCommit {
            name: Bytes::from(self.cursor.clone().into_bytes()),
            offset: Offset(next),
        };
        let now_ms = self
            .node
            .upgrade()
            .ok_or_else(|| BrokerError::Invalid("the broker stopped".into()))?
            .now_ms();
        let batch = control_batch(&[op], now_ms).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        self.shard.append(Bytes::from(batch)).await?;
        Ok(())
    }
}

enum Step {
    Records(Built),
    /// Nothing to send up to this position, with records still to step over.
    Nothing(u64, u64),
}
