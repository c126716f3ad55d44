//! An in-memory broker behind the real QUIC server, for testing the client
//! and the transport without the broker crate: streams are vectors of
//! stamped batches, the cache a map, the group a leased set.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use felix_client::server::{Handler, HelloRequest, Peer, PushData, PushFuture, PushSource, Reply, Server};
use felix_client::transport::{self, DevCertificates, TransportConfig};
use felix_client::wire::{
    BrokerInfo, CacheEntry, ErrorReply, GroupRecord, Message, ShardInfo, Start, StreamInfo,
};
use felix_client::{Client, ClientConfig};
use felix_log::{Batch, Offset, RaftIndex, RaftTerm};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Shard {
    /// (base offset, stamped batch bytes)
    pub batches: Vec<(u64, Bytes)>,
    pub next: u64,
    /// (producer id, sequence) → base offset, for retried publishes.
    pub seen: HashMap<(u64, u64), (u64, u32)>,
}

#[derive(Default)]
pub struct State {
    pub streams: HashMap<String, Vec<Shard>>,
    pub cache: HashMap<Bytes, (Bytes, u64)>,
    pub cache_version: u64,
    pub group_acked: BTreeMap<(u32, u64), ()>,
    pub group_leased: BTreeMap<(u32, u64), ()>,
}

pub struct MemBroker {
    pub id: u64,
    pub address: Mutex<String>,
    pub state: Mutex<State>,
    pub appended: Notify,
    /// Answer this many publishes `Overloaded` before accepting.
    pub overload_next: AtomicU32,
    /// Answer every request for a stream's shard with `NotLeader` pointing here.
    pub redirect: Mutex<Option<(u64, String)>>,
    pub publishes_seen: AtomicU32,
}

impl MemBroker {
    pub fn new(id: u64, streams: &[(&str, u32)]) -> Arc<MemBroker> {
        let mut st = State::default();
        for (name, shards) in streams {
            st.streams.insert(
                (*name).to_owned(),
                (0..*shards).map(|_| Shard::default()).collect(),
            );
        }
        Arc::new(MemBroker {
            id,
            address: Mutex::new(String::new()),
            state: Mutex::new(st),
            appended: Notify::new(),
            overload_next: AtomicU32::new(0),
            redirect: Mutex::new(None),
            publishes_seen: AtomicU32::new(0),
        })
    }

    /// Every record of a shard, in order: (offset, value).
    pub fn records(&self, stream: &str, shard: u32) -> Vec<(u64, Bytes)> {
        let st = self.state.lock().unwrap();
        let mut out = vec![];
        for (_, b) in &st.streams[stream][shard as usize].batches {
            let batch = Batch::new(b.clone()).unwrap();
            for r in batch.records().unwrap() {
                let r = r.unwrap();
                out.push((r.offset.0, r.value.unwrap()));
            }
        }
        out
    }

    fn publish(&self, stream: &str, shard: u32, producer: u64, seq: u64, batch: Bytes) -> Message {
        self.publishes_seen.fetch_add(1, Ordering::Relaxed);
        if self
            .overload_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Message::Error(ErrorReply::Overloaded { retry_after_ms: 5 });
        }
        let mut st = self.state.lock().unwrap();
        let Some(shards) = st.streams.get_mut(stream) else {
            return Message::Error(ErrorReply::UnknownStream(stream.into()));
        };
        let Some(s) = shards.get_mut(shard as usize) else {
            return Message::Error(ErrorReply::InvalidRequest(format!("no shard {shard}")));
        };
        if let Some((base, count)) = s.seen.get(&(producer, seq)) {
            return Message::PublishAck {
                shard,
                base_offset: *base,
                count: *count,
            };
        }
        let checked = match Batch::new(batch.clone()) {
            Ok(b) => b,
            Err(e) => return Message::Error(ErrorReply::InvalidRequest(e.to_string())),
        };
        let count = checked.header().offset_count;
        let mut raw = batch.to_vec();
        felix_log::batch::stamp(
            &mut raw,
            Offset(s.next),
            RaftTerm(1),
            RaftIndex(s.batches.len() as u64 + 1),
        );
        let base = s.next;
        s.batches.push((base, Bytes::from(raw)));
        s.next += u64::from(count);
        s.seen.insert((producer, seq), (base, count));
        drop(st);
        self.appended.notify_waiters();
        Message::PublishAck {
            shard,
            base_offset: base,
            count,
        }
    }
}

/// Pushes a shard's batches from an offset, waiting for appends.
struct MemSource {
    broker: Arc<MemBroker>,
    stream: String,
    shard: u32,
    next: u64,
}

impl PushSource for MemSource {
    fn next_push(&mut self, credit_bytes: u64) -> PushFuture<'_> {
        Box::pin(async move {
            loop {
                let notified = self.broker.appended.notified();
                {
                    let st = self.broker.state.lock().unwrap();
                    let s = &st.streams[&self.stream][self.shard as usize];
                    let mut out = Vec::new();
                    let mut next = self.next;
                    for (base, b) in &s.batches {
                        let h = Batch::new(b.clone()).unwrap();
                        let end = base + u64::from(h.header().offset_count);
                        if end <= self.next {
                            continue;
                        }
                        if !out.is_empty() && (out.len() + b.len()) as u64 > credit_bytes {
                            break;
                        }
                        out.extend_from_slice(b);
                        next = end;
                    }
                    if !out.is_empty() {
                        self.next = next;
                        return Some(Ok(PushData {
                            shard: self.shard,
                            next_offset: next,
                            batches: Bytes::from(out),
                        }));
                    }
                }
                notified.await;
            }
        })
    }
}

pub struct Mem(pub Arc<MemBroker>);

impl Handler for Mem {
    type Session = Peer;

    async fn hello(&self, peer: &Peer, hello: HelloRequest) -> Result<(Peer, u64), ErrorReply> {
        if &hello.token[..] == b"bad" {
            return Err(ErrorReply::Unauthorized("token refused".into()));
        }
        Ok((peer.clone(), self.0.id))
    }

    async fn request(&self, _peer: &Peer, m: Message) -> Reply {
        let b = &self.0;
        if let Some(l) = b.redirect.lock().unwrap().clone() {
            if !matches!(m, Message::Metadata { .. }) {
                return ErrorReply::NotLeader { leader: Some(l) }.into();
            }
        }
        let reply = match m {
            Message::Metadata { .. } => {
                let st = b.state.lock().unwrap();
                let leader = b.redirect.lock().unwrap().as_ref().map_or(b.id, |l| l.0);
                Message::MetadataReply {
                    brokers: vec![BrokerInfo {
                        id: b.id,
                        address: b.address.lock().unwrap().clone(),
                    }],
                    streams: st
                        .streams
                        .iter()
                        .map(|(name, shards)| StreamInfo {
                            name: name.clone(),
                            kind: felix_client::wire::StreamKind::Stream,
                            key_routing: felix_client::wire::KeyRouting::FOR_NEW,
                            shards: (0..shards.len() as u32)
                                .map(|s| ShardInfo {
                                    shard: s,
                                    leader: Some(leader),
                                    replicas: vec![leader],
                                })
                                .collect(),
                        })
                        .collect(),
                }
            }
            Message::Publish {
                stream,
                shard,
                producer_id,
                sequence,
                batch,
                ..
            } => b.publish(&stream, shard.unwrap_or(0), producer_id, sequence, batch),
            Message::Subscribe {
                stream,
                shards,
                start,
                ..
            } => {
                let st = b.state.lock().unwrap();
                let Some(s) = st.streams.get(&stream) else {
                    return ErrorReply::UnknownStream(stream).into();
                };
                let shard = shards.first().copied().unwrap_or(0);
                let end = s[shard as usize].next;
                let next = match start {
                    Start::Earliest | Start::Committed => 0,
                    Start::Latest => end,
                    Start::Offset(o) if o <= end => o,
                    Start::Offset(_) => {
                        return ErrorReply::OffsetOutOfRange {
                            earliest: 0,
                            latest: end,
                        }
                        .into()
                    }
                    Start::Time(_) => 0,
                };
                return Reply::Subscription(Box::new(MemSource {
                    broker: b.clone(),
                    stream,
                    shard,
                    next,
                }));
            }
            Message::CacheGet { key, .. } => {
                let st = b.state.lock().unwrap();
                Message::CacheValue {
                    entry: st.cache.get(&key).map(|(v, ver)| CacheEntry {
                        value: v.clone(),
                        version: *ver,
                        expiry_ms: None,
                    }),
                }
            }
            Message::CachePut {
                key,
                value,
                if_version,
                ..
            } => {
                let mut st = b.state.lock().unwrap();
                let current = st.cache.get(&key).map(|(v, ver)| CacheEntry {
                    value: v.clone(),
                    version: *ver,
                    expiry_ms: None,
                });
                if let Some(want) = if_version {
                    if current.as_ref().map_or(0, |c| c.version) != want {
                        return Reply::Message(Message::CacheValue { entry: current });
                    }
                }
                st.cache_version += 1;
                let v = st.cache_version;
                st.cache.insert(key, (value, v));
                Message::CacheWritten { version: v }
            }
            Message::CacheDelete { key, .. } => {
                let mut st = b.state.lock().unwrap();
                st.cache.remove(&key);
                st.cache_version += 1;
                Message::CacheWritten {
                    version: st.cache_version,
                }
            }
            Message::GroupFetch {
                stream, max_records, ..
            } => {
                let all = b.records(&stream, 0);
                let mut st = b.state.lock().unwrap();
                let mut records = vec![];
                for (o, v) in all {
                    if records.len() as u32 >= max_records {
                        break;
                    }
                    if st.group_acked.contains_key(&(0, o)) || st.group_leased.contains_key(&(0, o)) {
                        continue;
                    }
                    st.group_leased.insert((0, o), ());
                    records.push(GroupRecord {
                        shard: 0,
                        offset: o,
                        deliveries: 1,
                        timestamp_ms: 0,
                        key: None,
                        value: v,
                    });
                }
                Message::GroupRecords {
                    lease_until_ms: 0,
                    records,
                }
            }
            Message::GroupAck { items, .. } => {
                let mut st = b.state.lock().unwrap();
                for i in items {
                    st.group_leased.remove(&i);
                    st.group_acked.insert(i, ());
                }
                Message::Done
            }
            Message::GroupNack { items, .. } => {
                let mut st = b.state.lock().unwrap();
                for i in items {
                    st.group_leased.remove(&i);
                }
                Message::Done
            }
            Message::GroupExtend { .. } | Message::CommitCursor { .. } => Message::Done,
            other => Message::Error(ErrorReply::InvalidRequest(format!("not handled: {other:?}"))),
        };
        Reply::Message(reply)
    }
}

pub fn certs(dir: &std::path::Path) -> DevCertificates {
    transport::dev_certificates(dir, &[]).unwrap()
}

/// Starts a server for `broker` on `addr` (port 0 for any).
pub async fn serve(broker: &Arc<MemBroker>, certs: &DevCertificates, mtls: bool, addr: SocketAddr) -> Server {
    let tls = certs.server_tls(mtls).unwrap();
    // A restarted server's port may take a moment to be free again.
    let mut tries = 0;
    let ep = loop {
        match transport::server_endpoint(addr, &tls, transport::ALPN, &TransportConfig::default()) {
            Ok(ep) => break ep,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    };
    let server = Server::start(ep, Arc::new(Mem(broker.clone())));
    *broker.address.lock().unwrap() = server.local_addr().to_string();
    server
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn client_config(server: &Server, certs: &DevCertificates) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.local_addr().to_string(), certs.client_tls(false).unwrap());
    cfg.request_timeout_ms = 3_000;
    cfg.connect_timeout_ms = 3_000;
    cfg
}

pub async fn connect(server: &Server, certs: &DevCertificates) -> Client {
    Client::connect(client_config(server, certs)).await.unwrap()
}
