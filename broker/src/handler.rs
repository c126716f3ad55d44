//! The wire protocol's meaning on one node: each request message mapped to
//! what the node does and the reply it gets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use felix_client::server::{Handler, HelloRequest, Peer, Reply};
use felix_client::wire::frame::VERSION;
use felix_client::wire::{AckLevel, ErrorReply, Message, Start};
use felix_controlplane::model::Adding;
use felix_index::control::{control_batch, ControlOp};
use felix_log::Batch;

use std::time::Duration;

use crate::cache;
use crate::control::access::{self, Checked, Principal};
use crate::control::{admin, ControlLink};
use crate::error::BrokerError;
use crate::names::StreamName;
use crate::node::{Node, StreamHandle};
use crate::observe;
use crate::owned_ids::{self, Kind};
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
    /// Who the connection's token says it is (`None`: tokens are not
    /// required, no control plane).
    pub principal: Option<Principal>,
}

impl Drop for Session {
    fn drop(&mut self) {
        metrics::gauge!(observe::metrics::CONNECTIONS).decrement(1.0);
    }
}

/// How long a handshake waits for a tenant's keys it has not seen.
const KEY_FETCH_WAIT_MS: u64 = 3_000;

impl Handler for NodeHandler {
    type Session = Session;

    async fn hello(&self, peer: &Peer, hello: HelloRequest) -> Result<(Session, u64), ErrorReply> {
        if hello.version != u16::from(VERSION) {
            return Err(ErrorReply::InvalidRequest(format!(
                "protocol version {} is not supported (this broker speaks {VERSION})",
                hello.version
            )));
        }
        let principal = match self.node.control() {
            Some(link) if link.requires_tokens() => Some(
                self.authenticate(link, &hello.token)
                    .await
                    .map_err(ErrorReply::from)?,
            ),
            // Without a control plane there are no tokens to check: any
            // connection that passed TLS (and mTLS, when configured) is in.
            _ => None,
        };
        metrics::gauge!(observe::metrics::CONNECTIONS).increment(1.0);
        Ok((
            Session {
                peer: peer.clone(),
                principal,
            },
            self.node.broker_id(),
        ))
    }

    async fn request(&self, session: &Session, request: Message) -> Reply {
        use tracing::Instrument;
        let op = observe::metrics::op_name(&request);
        // Every log line a request causes carries who asked and for what.
        let span =
            tracing::debug_span!("request", op, peer = %session.peer.address, stream = tracing::field::Empty);
        if let Some(name) = stream_of(&request) {
            span.record("stream", name);
        }
        self.request_in_span(session, request, op).instrument(span).await
    }

    fn tenant(&self, session: &Session) -> Option<String> {
        session.principal.as_ref().map(|p| p.tenant().to_owned())
    }
}

/// Requests slower than this are logged (long polls excepted).
pub const SLOW_REQUEST_MS: u64 = 1_000;

/// The stream (or cache) a request names, for its span.
fn stream_of(m: &Message) -> Option<&str> {
    match m {
        Message::Publish { stream, .. }
        | Message::Subscribe { stream, .. }
        | Message::CommitCursor { stream, .. }
        | Message::GroupFetch { stream, .. }
        | Message::GroupAck { stream, .. }
        | Message::GroupNack { stream, .. }
        | Message::GroupExtend { stream, .. } => Some(stream),
        Message::CacheGet { cache, .. }
        | Message::CacheScan { cache, .. }
        | Message::CachePut { cache, .. }
        | Message::CacheDelete { cache, .. } => Some(cache),
        Message::StreamCreate(c) => Some(&c.name),
        Message::StreamDelete { name, .. }
        | Message::StreamSetRetention { name, .. }
        | Message::StreamDescribe { name } => Some(name),
        _ => None,
    }
}

impl NodeHandler {
    async fn request_in_span(&self, session: &Session, request: Message, op: &'static str) -> Reply {
        let started = std::time::Instant::now();
        if let Message::Publish { batch, .. } = &request {
            metrics::counter!(observe::metrics::PUBLISH_BYTES_TOTAL).increment(batch.len() as u64);
        }
        let checked = self.admit(session, &request);
        let admitted = checked.is_ok();
        let r = match checked {
            Ok(()) => self.handle(session, request).await,
            Err(e) => Err(e),
        };
        let outcome = match &r {
            Ok(Reply::Message(Message::PublishAck { count, .. })) => {
                metrics::counter!(observe::metrics::PUBLISH_RECORDS_TOTAL).increment(u64::from(*count));
                "ok"
            }
            Ok(_) => "ok",
            Err(BrokerError::Overloaded { .. }) => "overloaded",
            Err(BrokerError::NotLeader { .. }) => "not_leader",
            Err(BrokerError::Unauthorized(_) | BrokerError::Forbidden(_)) => "refused",
            Err(BrokerError::Timeout(_) | BrokerError::ControlPlane(_)) => "timeout",
            Err(_) => "error",
        };
        if outcome == "overloaded" && admitted {
            metrics::counter!(observe::metrics::OVERLOADED_TOTAL, "reason" => "limit").increment(1);
        }
        metrics::counter!(observe::metrics::REQUESTS_TOTAL, "op" => op, "outcome" => outcome).increment(1);
        let took = started.elapsed();
        metrics::histogram!(observe::metrics::REQUEST_SECONDS, "op" => op).record(took.as_secs_f64());
        if took.as_millis() as u64 > SLOW_REQUEST_MS && !matches!(op, "subscribe" | "group_fetch") {
            tracing::warn!(ms = took.as_millis() as u64, outcome, "slow request");
        }
        match r {
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
    let n = h.count();
    let first_key = batch.records()?.next().transpose()?.and_then(|r| r.key);
    Ok(match first_key {
        Some(k) => h.shard_of(&k),
        None => (node.spread.fetch_add(1, Ordering::Relaxed) % u64::from(n)) as u32,
    })
}

impl NodeHandler {
    /// Checks a token at the handshake: against the keys the feed brought,
    /// or, for a key not seen yet (a rotation, a new tenant), against keys
    /// fetched now (at most once a second per tenant).
    async fn authenticate(&self, link: &ControlLink, token: &[u8]) -> Result<Principal, BrokerError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| BrokerError::Unauthorized("the token is not UTF-8".into()))?;
        let now = self.node.now_ms();
        let mut fetched = false;
        loop {
            match link.keys.check(token, now)? {
                Checked::Valid(claims) => {
                    return Ok(Principal {
                        claims,
                        token: token.to_owned(),
                    })
                }
                Checked::UnknownKey { tenant } if !fetched && link.keys.may_refetch(&tenant, now) => {
                    fetched = true;
                    let wait = Duration::from_millis(KEY_FETCH_WAIT_MS);
                    match tokio::time::timeout(wait, link.fetch_keys(&tenant, now)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(tenant, error = %e, "fetching a tenant's keys failed"),
                        Err(_) => tracing::warn!(tenant, "fetching a tenant's keys timed out"),
                    }
                }
                Checked::UnknownKey { tenant } => {
                    return Err(BrokerError::Unauthorized(format!(
                        "the token is not signed by a key of tenant {tenant:?} (unknown tenant, or a key this broker cannot fetch)"
                    )))
                }
            }
        }
    }

    /// The permission and quota checks a request passes before it is
    /// handled.
    fn admit(&self, session: &Session, request: &Message) -> Result<(), BrokerError> {
        if let Some(p) = &session.principal {
            let kind_of = |n: &str| self.node.stream(n).ok().map(|s| s.kind());
            if let Some((action, object)) = access::required(request, kind_of)? {
                let now_s = u64::try_from(self.node.now_ms() / 1000).unwrap_or(0);
                p.check(action, &object, now_s)?;
            }
        }
        if let Message::Publish { batch, .. } = request {
            crate::shard::check_timestamps(batch, self.node.now_ms())?;
        }
        self.admit_usage(request)?;
        if let Message::Publish { stream, batch, .. } = request {
            let mut quotas = self.node.quotas.lock().expect("quota lock");
            if quotas.is_empty() {
                return Ok(());
            }
            let n = StreamName::parse(stream)?;
            let records = Batch::new(batch.clone())
                .map(|b| u64::from(b.header().record_count))
                .unwrap_or(1);
            let verdict = quotas.admit(
                &n.tenant,
                &n.namespace,
                records,
                batch.len() as u64,
                self.node.now_ms(),
            );
            if let Err(q) = verdict {
                tracing::debug!(whose = q.whose, what = q.what, "publish over quota");
                metrics::counter!(observe::metrics::OVERLOADED_TOTAL, "reason" => "quota").increment(1);
                return Err(BrokerError::Overloaded {
                    retry_after_ms: q.retry_after_ms,
                });
            }
        }
        Ok(())
    }

    /// Whether a publish, cache write or subscription still fits its
    /// tenant's and namespace's usage quotas. Deletes and reads always
    /// pass, so a tenant at its quota can free space.
    fn admit_usage(&self, request: &Message) -> Result<(), BrokerError> {
        let (name, adding) = match request {
            Message::Publish { stream, .. } => (stream, Adding::StreamBytes),
            Message::CachePut { cache, .. } => (cache, Adding::CacheBytes),
            Message::Subscribe { stream, .. } => (stream, Adding::Subscription),
            _ => return Ok(()),
        };
        if self.node.quotas.lock().expect("quota lock").usage.is_empty() {
            return Ok(());
        }
        let n = StreamName::parse(name)?;
        // Counted outside the quota lock: it reads every stream's count.
        let live =
            (adding == Adding::Subscription).then(|| self.node.live_subscriptions(&n.tenant, &n.namespace));
        let quotas = self.node.quotas.lock().expect("quota lock");
        if let Err(refusal) = quotas.usage.admit(&n.tenant, &n.namespace, adding, live) {
            metrics::counter!(observe::metrics::QUOTA_REFUSALS_TOTAL, "quota" => refusal.quota).increment(1);
            return Err(BrokerError::QuotaExceeded(refusal.to_string()));
        }
        Ok(())
    }

    async fn handle(&self, session: &Session, request: Message) -> Result<Reply, BrokerError> {
        let node = &self.node;
        let token = session.principal.as_ref().map(|p| p.token.as_str());
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
                let bound = owned_ids::bind(session.principal.as_ref(), Kind::Producer, producer_id);
                let batch = owned_ids::rebind_batch(batch, producer_id, bound)?;
                let number = match shard {
                    Some(n) => n,
                    None => route(node, &h, &Batch::new(batch.clone())?)?,
                };
                let at = h.shard(number)?.publish(batch, bound, sequence).await?;
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
                    (0..h.count()).collect()
                } else {
                    shards
                };
                let mut at = Vec::with_capacity(numbers.len());
                for n in numbers {
                    let shard = h.shard(n)?;
                    // A leader elected moments ago may not yet have applied
                    // all its predecessor acknowledged, and a client resuming
                    // after the failover asks for just such an offset: past
                    // this replica's high watermark, it is judged once the
                    // leader has caught up.
                    let past = matches!(start, Start::Offset(o) if o > shard.high_watermark());
                    if past && shard.replica().is_some_and(|r| r.is_leader()) {
                        shard.lead().await?;
                    }
                    let o = start_offset(node, shard, start, durable.as_deref())?;
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
                if name.starts_with(crate::bridge::BRIDGE_CURSOR_PREFIX) {
                    return Err(BrokerError::Invalid(format!(
                        "cursor names beginning {:?} are the bridges' source positions",
                        crate::bridge::BRIDGE_CURSOR_PREFIX
                    )));
                }
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
                let consumer = owned_ids::bind(session.principal.as_ref(), Kind::Consumer, consumer);
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
                let consumer = owned_ids::bind(session.principal.as_ref(), Kind::Consumer, consumer);
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
                let consumer = owned_ids::bind(session.principal.as_ref(), Kind::Consumer, consumer);
                queue::change(node, &h, &group, consumer, &items, Change::Extend { lease_ms }).await?;
                done()
            }
            Message::CacheGet { cache: name, key } => {
                let h = node.find_stream(&name).await?;
                let entry = cache::get(node, &h, &key).await?;
                Ok(Reply::Message(Message::CacheValue { entry }))
            }
            Message::CacheScan {
                cache: name,
                shard,
                after,
                count,
            } => {
                let h = node.find_stream(&name).await?;
                let (keys, next) = cache::scan(node, &h, shard, after, count as usize).await?;
                Ok(Reply::Message(Message::CacheKeys { keys, next }))
            }
            Message::CachePut {
                cache: name,
                key,
                value,
                ttl_ms,
                if_version,
                writer,
                sequence,
            } => {
                let h = node.find_stream(&name).await?;
                let writer = owned_ids::bind(session.principal.as_ref(), Kind::Writer, writer);
                let m =
                    cache::write(node, &h, key, Some(value), ttl_ms, if_version, (writer, sequence)).await?;
                Ok(Reply::Message(m))
            }
            Message::CacheDelete {
                cache: name,
                key,
                if_version,
                writer,
                sequence,
            } => {
                let h = node.find_stream(&name).await?;
                let writer = owned_ids::bind(session.principal.as_ref(), Kind::Writer, writer);
                let m = cache::write(node, &h, key, None, None, if_version, (writer, sequence)).await?;
                Ok(Reply::Message(m))
            }
            Message::Metadata { streams } => {
                // A token sees its own tenant only: naming another tenant's
                // stream is refused whether or not it exists.
                if let Some(p) = &session.principal {
                    for n in &streams {
                        let s = StreamName::parse(n)?;
                        if s.tenant != p.tenant() {
                            return Err(BrokerError::Forbidden(format!(
                                "the token is for tenant {:?}, not {:?}",
                                p.tenant(),
                                s.tenant
                            )));
                        }
                    }
                }
                let (brokers, mut found) = node.metadata(&streams).await?;
                if let Some(p) = &session.principal {
                    found.retain(|s| StreamName::parse(&s.name).is_ok_and(|n| n.tenant == p.tenant()));
                }
                Ok(Reply::Message(Message::MetadataReply {
                    brokers,
                    streams: found,
                }))
            }
            Message::StreamCreate(c) => {
                let c = node.with_defaults(c);
                match node.control() {
                    Some(link) => admin::create(node, link, &c, token).await?,
                    None => {
                        node.create_stream(&c).await?;
                    }
                }
                done()
            }
            Message::StreamDelete { name, force } => {
                match node.control() {
                    Some(link) => admin::delete(node, link, &name, force, token).await?,
                    None => node.delete_stream(&name, force).await?,
                }
                done()
            }
            Message::StreamSetRetention {
                name,
                retention_ms,
                retention_bytes,
            } => {
                match node.control() {
                    Some(link) => {
                        admin::set_retention(node, link, &name, retention_ms, retention_bytes, token).await?
                    }
                    None => node.set_retention(&name, retention_ms, retention_bytes).await?,
                }
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
