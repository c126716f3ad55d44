//! Consumer groups: a stream consumed as a queue. The group's state lives
//! in the index, derived from control records in each shard's log, so it
//! survives restarts (and, with replication, failovers). The broker decides
//! (what to lease, what to dead-letter) under the shard's group lock and
//! appends its decision; the index applies it.

use std::collections::BTreeMap;

use bytes::Bytes;
use felix_client::wire::GroupRecord;
use felix_index::control::{control_batch, ControlOp, GROUP_OFFSETS_PER_OP_MAX};
use felix_index::group::{ConsumerId, GroupState, Refusal, GROUP_WINDOW_MAX};
use felix_log::{BatchBuilder, Compression, Offset, ProducerId, Record, RecordInput};

use crate::error::BrokerError;
use crate::node::{Node, StreamHandle};
use crate::shard::HostedShard;

/// Records one fetch may lease.
pub const FETCH_RECORDS_MAX: u32 = 1000;
/// Longest lease a fetch or extend may ask for.
pub const LEASE_MS_MAX: u32 = 12 * 3600 * 1000;
/// Lease of a fetch that asks for 0.
pub const LEASE_MS_DEFAULT: u32 = 30_000;
/// Longest nack delay.
pub const NACK_DELAY_MS_MAX: u32 = 12 * 3600 * 1000;
/// Bytes of log a fetch reads per shard looking for new records.
const FETCH_READ_BYTES: usize = 1 << 20;
/// Header names on a dead-lettered record.
pub const DLQ_REASON_HEADER: &[u8] = b"felix-dlq-reason";
pub const DLQ_SOURCE_HEADER: &[u8] = b"felix-dlq-source";
pub const DLQ_DELIVERIES_HEADER: &[u8] = b"felix-dlq-deliveries";

fn check_group(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > felix_index::encoding::NAME_BYTES_MAX {
        return Err(BrokerError::Invalid(format!(
            "group name must be 1 to {} bytes",
            felix_index::encoding::NAME_BYTES_MAX
        )));
    }
    Ok(())
}

fn group_state(node: &Node, shard: &HostedShard, group: &str) -> Result<GroupState, BrokerError> {
    Ok(node
        .index()
        .group(shard.id, group.as_bytes())?
        // A new group starts at the oldest record (work queues want every job).
        .unwrap_or_else(|| GroupState::starting_at(Offset(shard.earliest()))))
}

fn chunks(offsets: Vec<Offset>) -> impl Iterator<Item = Vec<Offset>> {
    let mut v = offsets;
    std::iter::from_fn(move || {
        if v.is_empty() {
            return None;
        }
        let rest = v.split_off(v.len().min(GROUP_OFFSETS_PER_OP_MAX));
        Some(std::mem::replace(&mut v, rest))
    })
}

async fn append_ops(shard: &HostedShard, ops: Vec<ControlOp>, now_ms: i64) -> Result<(), BrokerError> {
    if ops.is_empty() {
        return Ok(());
    }
    let b = control_batch(&ops, now_ms)?;
    shard.append(Bytes::from(b)).await?;
    Ok(())
}

/// Leases up to `max_records` to `consumer` for `lease_ms`: redeliveries
/// first (expired leases, nacks whose delay passed), then new records.
/// Records past `max_deliveries` go to the dead-letter stream instead.
pub async fn fetch(
    node: &Node,
    h: &StreamHandle,
    group: &str,
    consumer: u64,
    max_records: u32,
    lease_ms: u32,
) -> Result<(i64, Vec<GroupRecord>), BrokerError> {
    check_group(group)?;
    let max = max_records.clamp(1, FETCH_RECORDS_MAX) as usize;
    let lease_ms = if lease_ms == 0 {
        LEASE_MS_DEFAULT
    } else {
        lease_ms.min(LEASE_MS_MAX)
    };
    let meta = h.meta();
    let mut out: Vec<GroupRecord> = Vec::new();
    let mut until = node.now_ms() + i64::from(lease_ms);
    let n = h.count() as usize;
    let mut not_here = None;
    let mut served = false;
    let first = (node.spread.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize) % n;
    for i in 0..n {
        if out.len() >= max {
            break;
        }
        let number = ((first + i) % n) as u32;
        // A shard held on other brokers only: their leader serves it.
        let shard = match h.shard(number) {
            Ok(s) => s,
            Err(e) => {
                not_here = Some(e);
                continue;
            }
        };
        let _g = shard.groups.lock().await;
        // In a cluster each shard is served by its leader; others are
        // skipped (the client is pointed at a leader if none is here).
        if let Err(e) = shard.lead().await {
            not_here = Some(e);
            continue;
        }
        served = true;
        let now = node.now_ms();
        until = now + i64::from(lease_ms);
        let state = group_state(node, shard, group)?;
        let mut lease: Vec<(Record, u32)> = Vec::new();
        let mut finish: Vec<Offset> = Vec::new();
        let mut dead: Vec<(Record, u32)> = Vec::new();
        for (o, d) in state.redeliverable(now, max - out.len()) {
            let rec = shard.log().with(|l| node.index().record_at(l, shard.id, o))?;
            match rec {
                // Gone (retention, compaction): nothing to deliver.
                None => finish.push(o),
                Some(r) if d.deliveries >= meta.max_deliveries => dead.push((r, d.deliveries)),
                Some(r) => lease.push((r, d.deliveries + 1)),
            }
        }
        let mut from = state.next.0.max(shard.earliest());
        // The window counts from the lowest open offset, as the index's
        // `can_lease` does (so a gap never stalls the group); with nothing
        // open, from the first record leased here.
        let mut base = state.window_base();
        'read: while lease.len() < max - out.len() {
            let chunk = shard.read(from, FETCH_READ_BYTES)?;
            if chunk.bytes.is_empty() {
                break;
            }
            for b in felix_log::batch::data_batches(chunk.bytes.clone()) {
                for r in b?.records()? {
                    let r = r?;
                    if r.offset.0 < from {
                        continue;
                    }
                    let b = *base.get_or_insert(r.offset);
                    if r.offset.0 - b.0 >= GROUP_WINDOW_MAX || lease.len() >= max - out.len() {
                        break 'read;
                    }
                    lease.push((r, 1));
                }
            }
            from = chunk.next_offset.0;
        }
        let mut ops = Vec::new();
        for offsets in chunks(lease.iter().map(|(r, _)| r.offset).collect()) {
            ops.push(ControlOp::GroupLease {
                group: Bytes::copy_from_slice(group.as_bytes()),
                consumer: ConsumerId(consumer),
                until_ms: until,
                offsets,
            });
        }
        if !dead.is_empty() {
            match dead_letter(node, h, (group, number), &dead, meta.max_deliveries).await {
                Ok(()) => {
                    felix_log::failpoint::hit("queue.dead_lettered");
                    finish.extend(dead.iter().map(|(r, _)| r.offset));
                }
                // Not the fetch's failure: the dead records stay unacked
                // (past max_deliveries, so never delivered again) and the
                // next fetch tries again, while the rest of the group moves
                // on instead of waiting for the dead-letter stream.
                Err(e) => {
                    metrics::counter!(crate::observe::metrics::DEAD_LETTER_FAILURES_TOTAL).increment(1);
                    tracing::warn!(stream = %h.name, shard = number, records = dead.len(), error = %e,
                        "dead letters not written; tried again at the next fetch");
                }
            }
        }
        for offsets in chunks(finish) {
            ops.push(ControlOp::GroupAck {
                group: Bytes::copy_from_slice(group.as_bytes()),
                offsets,
            });
        }
        append_ops(shard, ops, now).await?;
        out.extend(lease.into_iter().map(|(r, deliveries)| GroupRecord {
            shard: number,
            offset: r.offset.0,
            deliveries,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value.unwrap_or_default(),
        }));
    }
    if !served {
        if let Some(e) = not_here {
            return Err(e);
        }
    }
    Ok((until, out))
}

/// Appends dead records to `<stream>.dlq` with why; the caller then acks
/// them in the source shard. The two writes are in different Raft groups,
/// so the ack can be lost after the dead letter landed (a leader change in
/// between), and the next fetch dead-letters the record again. Each dead
/// letter is therefore its own batch under a producer id derived from the
/// record it replaces ([`dead_letter_producer`]), sequence 0: the
/// dead-letter shard's producer windows answer the second attempt with
/// the first one's offset instead of writing it twice.
async fn dead_letter(
    node: &Node,
    h: &StreamHandle,
    (group, shard): (&str, u32),
    dead: &[(Record, u32)],
    max_deliveries: u32,
) -> Result<(), BrokerError> {
    let dlq = node.ensure_stream(&h.name.dlq(), &h.meta()).await?;
    let reason = format!("max_deliveries ({max_deliveries}) reached");
    // Not held here when the dead-letter stream is placed on other brokers.
    let target = match dlq.shard(0) {
        Ok(t) => Some(t),
        Err(BrokerError::NotLeader { .. }) => None,
        Err(e) => return Err(e),
    };
    let bytes_max = target.map_or(node.batch_bytes_max(), |t| {
        t.log().with(|l| l.config().batch_bytes_max)
    });
    let mut writes = Vec::with_capacity(dead.len());
    for (r, deliveries) in dead {
        let source = format!("{}/{shard}/{}", h.name, r.offset.0);
        let producer = dead_letter_producer(&source, group);
        let deliveries = deliveries.to_string();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (DLQ_REASON_HEADER, reason.as_bytes()),
            (DLQ_SOURCE_HEADER, source.as_bytes()),
            (DLQ_DELIVERIES_HEADER, deliveries.as_bytes()),
        ];
        let mut b = BatchBuilder::new(bytes_max).producer(ProducerId(producer), 0);
        b.push(RecordInput {
            key: r.key.as_deref(),
            value: Some(r.value.as_deref().unwrap_or_default()),
            timestamp_ms: node.now_ms(),
            ttl_ms: None,
            headers: &headers,
        })?;
        let bytes = Bytes::from(b.build(Compression::None)?);
        // Concurrent, so a leader's proposer puts them in one entry.
        let dlq = &dlq;
        writes.push(async move {
            match target {
                Some(t) => t.publish_anywhere(bytes, producer, 0).await,
                None => node.publish_elsewhere(dlq, 0, bytes).await,
            }
        });
    }
    for written in futures_util::future::join_all(writes).await {
        written?;
    }
    tracing::info!(stream = %h.name, records = dead.len(), "dead-lettered");
    Ok(())
}

/// The producer id of the dead letter of the record at `source`
/// (`<stream>/<shard>/<offset>`) for `group`: the same on every broker and
/// every attempt, never 0 (0 means "no producer").
fn dead_letter_producer(source: &str, group: &str) -> u64 {
    let mut key = Vec::with_capacity(source.len() + group.len() + 5);
    key.extend_from_slice(b"dlq\0");
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(group.as_bytes());
    felix_model::routing::fnv1a64(&key).max(1)
}

/// Groups items by shard number, checking each exists.
fn by_shard(h: &StreamHandle, items: &[(u32, u64)]) -> Result<BTreeMap<u32, Vec<Offset>>, BrokerError> {
    let mut m: BTreeMap<u32, Vec<Offset>> = BTreeMap::new();
    for (s, o) in items {
        h.shard(*s)?;
        m.entry(*s).or_default().push(Offset(*o));
    }
    Ok(m)
}

/// What a nack or extend does to each item.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    Ack,
    Nack { delay_ms: u32 },
    Extend { lease_ms: u32 },
}

/// Acks, nacks or extends items. Nack and extend are refused, naming the
/// offset, when the consumer no longer holds its lease (it expired and
/// another consumer took the record, or it was acked).
pub async fn change(
    node: &Node,
    h: &StreamHandle,
    group: &str,
    consumer: u64,
    items: &[(u32, u64)],
    change: Change,
) -> Result<(), BrokerError> {
    check_group(group)?;
    let consumer = ConsumerId(consumer);
    let g = Bytes::copy_from_slice(group.as_bytes());
    for (number, offsets) in by_shard(h, items)? {
        let shard = h.shard(number)?;
        let _lock = shard.groups.lock().await;
        shard.lead().await?;
        let now = node.now_ms();
        let mut state = group_state(node, shard, group)?;
        let mut refused: Vec<(Offset, Refusal)> = Vec::new();
        for o in &offsets {
            let r = match change {
                Change::Ack => continue,
                Change::Nack { delay_ms } => state.nack(*o, consumer, now + i64::from(delay_ms)),
                Change::Extend { lease_ms } => state.extend(*o, consumer, now + i64::from(lease_ms)),
            };
            if let Err(why) = r {
                refused.push((*o, why));
            }
        }
        if let Some(e) = shard.closed_error() {
            // Retired meanwhile: the refusals may come of its index going.
            return Err(e);
        }
        if let Some((o, why)) = refused.first() {
            return Err(BrokerError::Invalid(format!(
                "shard {number} offset {}: {} ({} of {} refused; nothing was changed on this shard)",
                o.0,
                refusal_text(*why),
                refused.len(),
                offsets.len()
            )));
        }
        let ops: Vec<ControlOp> = chunks(offsets)
            .map(|offsets| match change {
                Change::Ack => ControlOp::GroupAck {
                    group: g.clone(),
                    offsets,
                },
                Change::Nack { delay_ms } => ControlOp::GroupNack {
                    group: g.clone(),
                    consumer,
                    redeliver_at_ms: now + i64::from(delay_ms.min(NACK_DELAY_MS_MAX)),
                    offsets,
                },
                Change::Extend { lease_ms } => ControlOp::GroupExtend {
                    group: g.clone(),
                    consumer,
                    until_ms: now + i64::from(lease_ms.min(LEASE_MS_MAX)),
                    offsets,
                },
            })
            .collect();
        append_ops(shard, ops, now).await?;
    }
    Ok(())
}

fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::Finished => "already finished (acked or dead-lettered)",
        Refusal::NotDelivered => "never delivered to this group",
        Refusal::AlreadyAcked => "already acked",
        Refusal::LeasedToOther => "leased to another consumer",
        Refusal::NotHolder => "not leased to this consumer (the lease expired or was never held)",
        Refusal::WindowFull => "beyond the group's window",
    }
}
