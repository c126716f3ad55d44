//! The wire protocol's meaning on one node: each request message mapped to
//! what the node does and the reply it gets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use felix_client::policy::shard_for_key;
use felix_client::server::{Handler, HelloRequest, Peer, Reply};
use felix_client::wire::frame::VERSION;
use felix_client::wire::{AckLevel, ErrorReply, Message};
use felix_index::control::{control_batch, ControlOp};
use felix_log::Batch;

use crate::cache;
use crate::error::BrokerError;
use crate::node::{Node, StreamHandle};
use crate::queue::{self, Change};
use crate::subscribe::{check_commit, start_offset, StreamPush};

/// The node behind the QUIC server.
#[derive(Debug, Clone)]
pub struct NodeHandler {
    pub node: Arc<Node>,
}

/// A connection's state.
#[derive(Debug)]
pub struct Session {
    pub peer: Peer,
}

impl Handler for NodeHandler {
    type Session = Session;

    async fn hello(&self, peer: &Peer, hello: HelloRequest) -> Result<(Session, u64), ErrorReply> {
        if hello.version != u16::from(VERSION) {
            return Err(ErrorReply::InvalidRequest(format!(
                "protocol version {} is not supported (this broker speaks {VERSION})",
                hello.version
            )));
        }
        // Tokens are checked once the control plane issues them; a single
        // node accepts every connection that passed TLS.
        Ok((Session { peer: peer.clone() }, self.node.broker_id()))
    }

    async fn request(&self, _session: &Session, request: Message) -> Reply {
        match self.handle(request).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e,
                    BrokerError::Log(_) | BrokerError::Index(_) | BrokerError::Io(_)
                ) {
                    tracing::warn!(error = %e, "request failed");
                }
                Reply::Message(Message::Error(e.into()))
            }
        }
    }
}

fn done() -> Result<Reply, BrokerError> {
    Ok(Reply::Message(Message::Done))
}

/// Which shard a publish without one goes to: the key's, else round robin.
fn route(node: &Node, h: &StreamHandle, batch: &Batch) -> Result<u32, BrokerError> {
    let n = h.shards.len() as u32;
    let first_key = batch.records()?.next().transpose()?.and_then(|r| r.key);
    Ok(match first_key {
        Some(k) => shard_for_key(&k, n),
        None => (node.spread.fetch_add(1, Ordering::Relaxed) % u64::from(n)) as u32,
    })
}

impl NodeHandler {
    async fn handle(&self, request: Message) -> Result<Reply, BrokerError> {
        let node = &self.node;
        match request {
            Message::Publish {
                stream,
                shard,
                ack,
                producer_id,
                sequence,
                batch,
            } => {
                let h = node.find_stream(&stream).await?;
                let number = match shard {
                    Some(n) => n,
                    None => route(node, &h, &Batch::new(batch.clone())?)?,
                };
                let at = h.shard(number)?.publish(batch, producer_id, sequence).await?;
                if ack == AckLevel::None {
                    return Ok(Reply::Nothing);
                }
                Ok(Reply::Message(Message::PublishAck {
                    shard: number,
                    base_offset: at.base_offset,
                    count: at.count,
                }))
            }
            Message::Subscribe {
                stream,
                shards,
                start,
                durable,
                credit_bytes: _,
            } => {
                let h = node.find_stream(&stream).await?;
                let numbers: Vec<u32> = if shards.is_empty() {
                    (0..h.shards.len() as u32).collect()
                } else {
                    shards
                };
                let mut at = Vec::with_capacity(numbers.len());
                for n in numbers {
                    let o = start_offset(node, h.shard(n)?, start, durable.as_deref())?;
                    at.push((n, o));
                }
                Ok(Reply::Subscription(Box::new(StreamPush::new(&h, at)?)))
            }
            Message::CommitCursor {
                stream,
                shard,
                name,
                offset,
            } => {
                let h = node.find_stream(&stream).await?;
                let s = h.shard(shard)?;
                let op = ControlOp::CursorCommit {
                    name: Bytes::from(name.into_bytes()),
                    offset: check_commit(s, offset)?,
                };
                s.append(Bytes::from(control_batch(&[op], node.now_ms())?))
                    .await?;
                done()
            }
            Message::GroupFetch {
                stream,
                group,
                consumer,
                max_records,
                lease_ms,
            } => {
                let h = node.find_stream(&stream).await?;
                let (lease_until_ms, records) =
                    queue::fetch(node, &h, &group, consumer, max_records, lease_ms).await?;
                Ok(Reply::Message(Message::GroupRecords {
                    lease_until_ms,
                    records,
                }))
            }
            Message::GroupAck { stream, group, items } => {
                let h = node.find_stream(&stream).await?;
                queue::change(node, &h, &group, 0, &items, Change::Ack).await?;
                done()
            }
            Message::GroupNack {
                stream,
                group,
                consumer,
                delay_ms,
                items,
            } => {
                let h = node.find_stream(&stream).await?;
                queue::change(node, &h, &group, consumer, &items, Change::Nack { delay_ms }).await?;
                done()
            }
            Message::GroupExtend {
                stream,
                group,
                consumer,
                lease_ms,
                items,
            } => {
                let h = node.find_stream(&stream).await?;
                queue::change(node, &h, &group, consumer, &items, Change::Extend { lease_ms }).await?;
                done()
            }
            Message::CacheGet { cache: name, key } => {
                let h = node.find_stream(&name).await?;
                let entry = cache::get(node, &h, &key).await?;
                Ok(Reply::Message(Message::CacheValue { entry }))
            }
            Message::CachePut {
                cache: name,
                key,
                value,
                ttl_ms,
                if_version,
            } => {
                let h = node.find_stream(&name).await?;
                let m = cache::write(node, &h, key, Some(value), ttl_ms, if_version).await?;
                Ok(Reply::Message(m))
            }
            Message::CacheDelete {
                cache: name,
                key,
                if_version,
            } => {
                let h = node.find_stream(&name).await?;
                let m = cache::write(node, &h, key, None, None, if_version).await?;
                Ok(Reply::Message(m))
            }
            Message::Metadata { streams } => {
                let (brokers, streams) = node.metadata(&streams).await?;
                Ok(Reply::Message(Message::MetadataReply { brokers, streams }))
            }
            Message::StreamCreate(c) => {
                node.create_stream(&c).await?;
                done()
            }
            Message::StreamDelete { name, force } => {
                node.delete_stream(&name, force).await?;
                done()
            }
            Message::StreamSetRetention {
                name,
                retention_ms,
                retention_bytes,
            } => {
                node.set_retention(&name, retention_ms, retention_bytes).await?;
                done()
            }
            Message::StreamDescribe { name } => {
                let (config, shards) = node.describe(&name)?;
                Ok(Reply::Message(Message::StreamDescription { config, shards }))
            }
            other => Err(BrokerError::Invalid(format!(
                "message type {:#04x} is not a request a broker answers",
                other.kind()
            ))),
        }
    }
}
