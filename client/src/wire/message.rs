//! Message bodies: every request, response and push, binary and
//! little-endian, specified in `docs/format/wire.md`. A publish carries the
//! producer-built record batch unchanged. Every length and count is checked
//! against its limit and against the bytes present before anything is
//! allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::error::{code, ErrorReply, WireError, ERROR_MESSAGE_BYTES_MAX};
use super::frame::{FrameHeader, FRAME_BODY_BYTES_MAX};

// Longest stream, cache, group, subscription name or broker address, and
// longest credential in a handshake: the model's, shared with the index and
// the control plane.
pub use felix_model::limits::{NAME_BYTES_MAX, REPLICATION_FACTOR_MAX, TOKEN_BYTES_MAX};
use felix_model::{Durability, KeyRouting, StreamKind};
/// Longest key (as in a record batch).
pub const KEY_BYTES_MAX: usize = felix_log::batch::layout::KEY_BYTES_MAX;
/// Largest cache value or single record value.
pub const VALUE_BYTES_MAX: usize = felix_log::batch::layout::BATCH_BYTES_MAX;
/// Shards named in one request.
pub const SHARDS_PER_REQUEST_MAX: usize = 4096;
/// (shard, offset) items in one ack, nack or extend.
pub const ITEMS_PER_REQUEST_MAX: usize = 4096;
/// Records in one group fetch reply.
pub const GROUP_RECORDS_MAX: usize = 4096;
/// Streams and brokers in one metadata reply.
pub const METADATA_ENTRIES_MAX: usize = 65_536;
/// Replicas listed per shard.
pub const REPLICAS_MAX: usize = 16;
/// Keys one `CacheScan` may ask for (and one `CacheKeys` hold).
pub const SCAN_KEYS_MAX: usize = 1_000;
/// The bytes of keys one `CacheKeys` holds at most: the broker ends a page
/// early rather than pass it.
pub const SCAN_REPLY_KEY_BYTES_MAX: usize = 1 << 20;
const _: () =
    assert!(SCAN_REPLY_KEY_BYTES_MAX + 4 * SCAN_KEYS_MAX + 2 * KEY_BYTES_MAX < FRAME_BODY_BYTES_MAX);

/// Message type codes (the frame header's `kind`).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const PUBLISH: u8 = 0x10;
    pub const PUBLISH_ACK: u8 = 0x11;
    pub const SUBSCRIBE: u8 = 0x20;
    pub const SUBSCRIBED: u8 = 0x21;
    pub const CREDIT: u8 = 0x22;
    pub const PUSH: u8 = 0x23;
    pub const COMMIT_CURSOR: u8 = 0x24;
    pub const UNSUBSCRIBE: u8 = 0x25;
    pub const GROUP_FETCH: u8 = 0x30;
    pub const GROUP_RECORDS: u8 = 0x31;
    pub const GROUP_ACK: u8 = 0x32;
    pub const GROUP_NACK: u8 = 0x33;
    pub const GROUP_EXTEND: u8 = 0x34;
    pub const CACHE_GET: u8 = 0x40;
    pub const CACHE_PUT: u8 = 0x41;
    pub const CACHE_DELETE: u8 = 0x42;
    pub const CACHE_VALUE: u8 = 0x43;
    pub const CACHE_WRITTEN: u8 = 0x44;
    pub const CACHE_SCAN: u8 = 0x45;
    pub const CACHE_KEYS: u8 = 0x46;
    pub const METADATA: u8 = 0x50;
    pub const METADATA_REPLY: u8 = 0x51;
    pub const DONE: u8 = 0x60;
    pub const STREAM_CREATE: u8 = 0x70;
    pub const STREAM_DELETE: u8 = 0x71;
    pub const STREAM_SET_RETENTION: u8 = 0x72;
    pub const STREAM_DESCRIBE: u8 = 0x73;
    pub const STREAM_DESCRIPTION: u8 = 0x74;
    pub const ERROR: u8 = 0x7f;

    /// Whether `k` is a type this version knows.
    pub fn known(k: u8) -> bool {
        matches!(
            k,
            HELLO
                | WELCOME
                | PUBLISH
                | PUBLISH_ACK
                | SUBSCRIBE
                | SUBSCRIBED
                | CREDIT
                | PUSH
                | COMMIT_CURSOR
                | UNSUBSCRIBE
                | GROUP_FETCH
                | GROUP_RECORDS
                | GROUP_ACK
                | GROUP_NACK
                | GROUP_EXTEND
                | CACHE_GET
                | CACHE_PUT
                | CACHE_DELETE
                | CACHE_VALUE
                | CACHE_WRITTEN
                | CACHE_SCAN
                | CACHE_KEYS
                | METADATA
                | METADATA_REPLY
                | DONE
                | STREAM_CREATE
                | STREAM_DELETE
                | STREAM_SET_RETENTION
                | STREAM_DESCRIBE
                | STREAM_DESCRIPTION
                | ERROR
        )
    }
}

/// When a publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Not at all (no reply is sent).
    None = 0,
    /// Once the leader has appended it per the stream's durability.
    Leader = 1,
    /// Once a quorum of replicas holds it (committed and applied).
    Quorum = 2,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record timestamped at or after this many ms since the epoch.
    Time(i64),
    /// The durable subscription's committed cursor (earliest if none).
    Committed,
}

/// A record handed to a group consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub shard: u32,
    pub offset: u64,
    pub deliveries: u32,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
}

/// A cache entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub value: Bytes,
    pub version: u64,
    pub expiry_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: u64,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard: u32,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    /// On the wire as its code (0 stream, 1 compacted stream, 2 cache).
    pub kind: StreamKind,
    /// How its keys map to its shards; on the wire as its code.
    pub key_routing: KeyRouting,
    pub shards: Vec<ShardInfo>,
}

impl StreamInfo {
    /// The shard `key` belongs to, or `None` for a stream without shards.
    pub fn shard_of(&self, key: &[u8]) -> Option<u32> {
        let n = self.shards.len() as u32;
        (n > 0).then(|| self.key_routing.shard(key, n))
    }
}

/// A stream's (or cache's) settings, as created and described: on the
/// wire, and as the brokers' metadata entries store it (JSON, the kind as
/// its code there too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// `tenant/namespace/name`.
    pub name: String,
    /// On the wire as its code (0 stream, 1 compacted stream, 2 cache).
    #[serde(with = "felix_model::spec::as_code")]
    pub kind: StreamKind,
    pub shards: u32,
    /// On the wire as its spelling (`always`, `interval:<ms>`, `none`).
    pub durability: Durability,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    /// Deliveries after which a group's record is dead-lettered.
    pub max_deliveries: u32,
    /// Caches: the TTL of a put that gives none.
    pub default_ttl_ms: Option<u64>,
    /// Replicas of each shard; 0 asks for the default,
    /// `min(REPLICATION_FACTOR_DEFAULT, brokers)`. A description gives the
    /// number the stream has (0 for one no control plane placed).
    #[serde(default)]
    pub replication_factor: u32,
    /// How keys map to shards. A create names the new stream's
    /// ([`KeyRouting::FOR_NEW`] unless it has a reason); a broker's
    /// metadata entry without it is a stream made before routings had a
    /// name, which routes by FNV-1a.
    #[serde(default)]
    pub key_routing: KeyRouting,
}

impl StreamConfig {
    /// A plain stream with no retention limit, the broker's default
    /// `max_deliveries` (0) and no TTL.
    pub fn stream(name: &str, shards: u32, durability: Durability) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            kind: StreamKind::Stream,
            shards,
            durability,
            retention_ms: None,
            retention_bytes: None,
            max_deliveries: 0,
            default_ttl_ms: None,
            replication_factor: 0,
            key_routing: KeyRouting::FOR_NEW,
        }
    }
}

/// One shard as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub earliest: u64,
    /// The offset the next record gets.
    pub next: u64,
    pub bytes: u64,
    pub segments: u32,
}

/// Every message of protocol version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    Hello {
        version: u16,
        capabilities: u64,
        token: Bytes,
    },
    Welcome {
        version: u16,
        capabilities: u64,
        broker_id: u64,
    },
    /// `shard: None` lets the broker route (by the batch's key hash).
    Publish {
        stream: String,
        shard: Option<u32>,
        ack: AckLevel,
        producer_id: u64,
        sequence: u64,
        batch: Bytes,
    },
    PublishAck {
        shard: u32,
        base_offset: u64,
        count: u32,
    },
    /// `shards` empty = every shard. `credit_bytes`: what the broker may push
    /// before the next `Credit`.
    Subscribe {
        stream: String,
        shards: Vec<u32>,
        start: Start,
        durable: Option<String>,
        credit_bytes: u32,
    },
    Subscribed {
        subscription: u64,
    },
    Credit {
        subscription: u64,
        bytes: u32,
    },
    /// Whole batches of one shard, exactly as stored; `next_offset` is where
    /// the subscription continues.
    Push {
        subscription: u64,
        shard: u32,
        next_offset: u64,
        batches: Bytes,
    },
    CommitCursor {
        stream: String,
        shard: u32,
        name: String,
        offset: u64,
    },
    Unsubscribe {
        subscription: u64,
    },
    /// `consumer`: an id the client picks once per consumer (random), so
    /// that its leases are its own whichever connection carries a request.
    GroupFetch {
        stream: String,
        group: String,
        consumer: u64,
        max_records: u32,
        lease_ms: u32,
    },
    GroupRecords {
        lease_until_ms: i64,
        records: Vec<GroupRecord>,
    },
    GroupAck {
        stream: String,
        group: String,
        items: Vec<(u32, u64)>,
    },
    GroupNack {
        stream: String,
        group: String,
        consumer: u64,
        delay_ms: u32,
        items: Vec<(u32, u64)>,
    },
    GroupExtend {
        stream: String,
        group: String,
        consumer: u64,
        lease_ms: u32,
        items: Vec<(u32, u64)>,
    },
    CacheGet {
        cache: String,
        key: Bytes,
    },
    CachePut {
        cache: String,
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
        /// The writer's idempotence identity (0: none) and this write's
        /// sequence: a retry of the same pair is answered with the first
        /// attempt's outcome instead of being written again.
        writer: u64,
        sequence: u64,
    },
    CacheDelete {
        cache: String,
        key: Bytes,
        if_version: Option<u64>,
        writer: u64,
        sequence: u64,
    },
    CacheValue {
        entry: Option<CacheEntry>,
    },
    CacheWritten {
        version: u64,
    },
    /// A page of one shard's live keys, in key order, after `after` (from
    /// the first when `None`); asked of the shard's leader.
    CacheScan {
        cache: String,
        shard: u32,
        after: Option<Bytes>,
        /// Keys wanted, 1 to [`SCAN_KEYS_MAX`] (a hint: a page may hold
        /// fewer, even none, and still not be the last).
        count: u32,
    },
    /// `next`: where the next page starts (`None`: the shard has no more).
    CacheKeys {
        keys: Vec<Bytes>,
        next: Option<Bytes>,
    },
    /// `streams` empty = all.
    Metadata {
        streams: Vec<String>,
    },
    MetadataReply {
        brokers: Vec<BrokerInfo>,
        streams: Vec<StreamInfo>,
    },
    /// Success without a payload.
    Done,
    /// Answered `Done`.
    StreamCreate(StreamConfig),
    /// `force` deletes even with subscribers attached. Answered `Done`.
    StreamDelete {
        name: String,
        force: bool,
    },
    /// `None` keeps forever on that axis. Answered `Done`.
    StreamSetRetention {
        name: String,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    },
    StreamDescribe {
        name: String,
    },
    StreamDescription {
        config: StreamConfig,
        shards: Vec<ShardStats>,
    },
    Error(ErrorReply),
}

struct W<'a>(&'a mut BytesMut);

impl W<'_> {
    fn name(&mut self, what: &'static str, s: &str) -> Result<(), WireError> {
        check(what, s.len(), NAME_BYTES_MAX)?;
        self.0.put_u8(s.len() as u8);
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
    fn blob(&mut self, what: &'static str, b: &[u8], max: usize) -> Result<(), WireError> {
        check(what, b.len(), max)?;
        self.0.put_u32_le(b.len() as u32);
        self.0.put_slice(b);
        Ok(())
    }
    fn opt_blob(&mut self, what: &'static str, b: Option<&[u8]>, max: usize) -> Result<(), WireError> {
        match b {
            Some(b) => {
                self.0.put_u8(1);
                self.blob(what, b, max)
            }
            None => {
                self.0.put_u8(0);
                Ok(())
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(x) => {
                self.0.put_u8(1);
                self.0.put_u64_le(x);
            }
            None => self.0.put_u8(0),
        }
    }
    fn count(&mut self, what: &'static str, n: usize, max: usize) -> Result<(), WireError> {
        check(what, n, max)?;
        self.0.put_u32_le(n as u32);
        Ok(())
    }
    fn config(&mut self, c: &StreamConfig) -> Result<(), WireError> {
        self.name("stream", &c.name)?;
        self.0.put_u8(c.kind.code());
        self.0.put_u32_le(c.shards);
        self.name("durability", &c.durability.to_string())?;
        self.opt_u64(c.retention_ms);
        self.opt_u64(c.retention_bytes);
        self.0.put_u32_le(c.max_deliveries);
        self.opt_u64(c.default_ttl_ms);
        check(
            "replication factor",
            c.replication_factor as usize,
            REPLICATION_FACTOR_MAX as usize,
        )?;
        self.0.put_u8(c.replication_factor as u8);
        self.0.put_u8(c.key_routing.code());
        Ok(())
    }
    fn items(&mut self, items: &[(u32, u64)]) -> Result<(), WireError> {
        self.count("items", items.len(), ITEMS_PER_REQUEST_MAX)?;
        for (s, o) in items {
            self.0.put_u32_le(*s);
            self.0.put_u64_le(*o);
        }
        Ok(())
    }
}

fn check(what: &'static str, n: usize, max: usize) -> Result<(), WireError> {
    if n > max {
        return Err(WireError::TooLarge {
            what,
            value: n as u64,
            max: max as u64,
        });
    }
    Ok(())
}

struct R {
    b: Bytes,
}

impl R {
    fn need(&self, n: usize, what: &'static str) -> Result<(), WireError> {
        if self.b.remaining() < n {
            return Err(WireError::Truncated(what));
        }
        Ok(())
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        self.need(1, what)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.need(2, what)?;
        Ok(self.b.get_u16_le())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.need(4, what)?;
        Ok(self.b.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.need(8, what)?;
        Ok(self.b.get_u64_le())
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(self.u64(what)? as i64)
    }
    fn name(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u8(what)? as usize;
        self.need(n, what)?;
        let b = self.b.split_to(n);
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Invalid(what))
    }
    fn blob(&mut self, what: &'static str, max: usize) -> Result<Bytes, WireError> {
        let n = self.u32(what)? as usize;
        check(what, n, max)?;
        self.need(n, what)?;
        Ok(self.b.split_to(n))
    }
    fn opt_blob(&mut self, what: &'static str, max: usize) -> Result<Option<Bytes>, WireError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.blob(what, max).map(Some),
            _ => Err(WireError::Invalid(what)),
        }
    }
    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, WireError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.u64(what).map(Some),
            _ => Err(WireError::Invalid(what)),
        }
    }
    /// A count of elements of at least `min_bytes` each.
    fn count(&mut self, what: &'static str, max: usize, min_bytes: usize) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        check(what, n, max)?;
        if n.saturating_mul(min_bytes) > self.b.remaining() {
            return Err(WireError::CountExceedsBody(what));
        }
        Ok(n)
    }
    fn stream_kind(&mut self) -> Result<StreamKind, WireError> {
        StreamKind::from_code(self.u8("stream kind")?).map_err(|_| WireError::Invalid("stream kind"))
    }
    fn key_routing(&mut self) -> Result<KeyRouting, WireError> {
        KeyRouting::from_code(self.u8("key routing")?).map_err(|_| WireError::Invalid("key routing"))
    }
    fn config(&mut self) -> Result<StreamConfig, WireError> {
        Ok(StreamConfig {
            name: self.name("stream")?,
            kind: self.stream_kind()?,
            shards: self.u32("shards")?,
            durability: self
                .name("durability")?
                .parse()
                .map_err(|_| WireError::Invalid("durability"))?,
            retention_ms: self.opt_u64("retention ms")?,
            retention_bytes: self.opt_u64("retention bytes")?,
            max_deliveries: self.u32("max deliveries")?,
            default_ttl_ms: self.opt_u64("default ttl")?,
            replication_factor: match u32::from(self.u8("replication factor")?) {
                rf if rf <= REPLICATION_FACTOR_MAX => rf,
                _ => return Err(WireError::Invalid("replication factor")),
            },
            key_routing: self.key_routing()?,
        })
    }
    fn items(&mut self) -> Result<Vec<(u32, u64)>, WireError> {
        let n = self.count("items", ITEMS_PER_REQUEST_MAX, 12)?;
        (0..n)
            .map(|_| Ok((self.u32("item shard")?, self.u64("item offset")?)))
            .collect()
    }
    fn end(self) -> Result<(), WireError> {
        match self.b.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

impl Message {
    /// The frame type of this message.
    pub fn kind(&self) -> u8 {
        use kind::*;
        match self {
            Message::Hello { .. } => HELLO,
            Message::Welcome { .. } => WELCOME,
            Message::Publish { .. } => PUBLISH,
            Message::PublishAck { .. } => PUBLISH_ACK,
            Message::Subscribe { .. } => SUBSCRIBE,
            Message::Subscribed { .. } => SUBSCRIBED,
            Message::Credit { .. } => CREDIT,
            Message::Push { .. } => PUSH,
            Message::CommitCursor { .. } => COMMIT_CURSOR,
            Message::Unsubscribe { .. } => UNSUBSCRIBE,
            Message::GroupFetch { .. } => GROUP_FETCH,
            Message::GroupRecords { .. } => GROUP_RECORDS,
            Message::GroupAck { .. } => GROUP_ACK,
            Message::GroupNack { .. } => GROUP_NACK,
            Message::GroupExtend { .. } => GROUP_EXTEND,
            Message::CacheGet { .. } => CACHE_GET,
            Message::CachePut { .. } => CACHE_PUT,
            Message::CacheDelete { .. } => CACHE_DELETE,
            Message::CacheValue { .. } => CACHE_VALUE,
            Message::CacheWritten { .. } => CACHE_WRITTEN,
            Message::CacheScan { .. } => CACHE_SCAN,
            Message::CacheKeys { .. } => CACHE_KEYS,
            Message::Metadata { .. } => METADATA,
            Message::MetadataReply { .. } => METADATA_REPLY,
            Message::Done => DONE,
            Message::StreamCreate(_) => STREAM_CREATE,
            Message::StreamDelete { .. } => STREAM_DELETE,
            Message::StreamSetRetention { .. } => STREAM_SET_RETENTION,
            Message::StreamDescribe { .. } => STREAM_DESCRIBE,
            Message::StreamDescription { .. } => STREAM_DESCRIPTION,
            Message::Error(_) => ERROR,
        }
    }

    /// Appends the whole frame (header and body) to `out`. Refuses, leaving
    /// `out` as it was, a message the peer would refuse.
    pub fn encode(&self, request_id: u64, out: &mut BytesMut) -> Result<(), WireError> {
        let start = out.len();
        out.put_bytes(0, super::frame::HEADER_BYTES);
        let r = self.encode_body(out);
        let body_len = out.len() - start - super::frame::HEADER_BYTES;
        let r = r.and_then(|()| check("frame body", body_len, FRAME_BODY_BYTES_MAX));
        if let Err(e) = r {
            out.truncate(start);
            return Err(e);
        }
        let mut h = BytesMut::with_capacity(super::frame::HEADER_BYTES);
        FrameHeader {
            kind: self.kind(),
            flags: 0,
            request_id,
            body_len: body_len as u32,
        }
        .encode(&mut h);
        out[start..start + super::frame::HEADER_BYTES].copy_from_slice(&h);
        Ok(())
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let mut w = W(out);
        match self {
            Message::Hello {
                version,
                capabilities,
                token,
            } => {
                w.0.put_u16_le(*version);
                w.0.put_u64_le(*capabilities);
                w.blob("token", token, TOKEN_BYTES_MAX)?;
            }
            Message::Welcome {
                version,
                capabilities,
                broker_id,
            } => {
                w.0.put_u16_le(*version);
                w.0.put_u64_le(*capabilities);
                w.0.put_u64_le(*broker_id);
            }
            Message::Publish {
                stream,
                shard,
                ack,
                producer_id,
                sequence,
                batch,
            } => {
                w.name("stream", stream)?;
                w.0.put_u32_le(shard.unwrap_or(u32::MAX));
                w.0.put_u8(*ack as u8);
                w.0.put_u64_le(*producer_id);
                w.0.put_u64_le(*sequence);
                w.blob("batch", batch, felix_log::batch::layout::BATCH_BYTES_MAX)?;
            }
            Message::PublishAck {
                shard,
                base_offset,
                count,
            } => {
                w.0.put_u32_le(*shard);
                w.0.put_u64_le(*base_offset);
                w.0.put_u32_le(*count);
            }
            Message::Subscribe {
                stream,
                shards,
                start,
                durable,
                credit_bytes,
            } => {
                w.name("stream", stream)?;
                w.count("shards", shards.len(), SHARDS_PER_REQUEST_MAX)?;
                for s in shards {
                    w.0.put_u32_le(*s);
                }
                let (tag, v) = match start {
                    Start::Earliest => (0, 0),
                    Start::Latest => (1, 0),
                    Start::Offset(o) => (2, *o),
                    Start::Time(t) => (3, *t as u64),
                    Start::Committed => (4, 0),
                };
                w.0.put_u8(tag);
                w.0.put_u64_le(v);
                match durable {
                    Some(d) => {
                        w.0.put_u8(1);
                        w.name("durable name", d)?;
                    }
                    None => w.0.put_u8(0),
                }
                w.0.put_u32_le(*credit_bytes);
            }
            Message::Subscribed { subscription } | Message::Unsubscribe { subscription } => {
                w.0.put_u64_le(*subscription);
            }
            Message::Credit { subscription, bytes } => {
                w.0.put_u64_le(*subscription);
                w.0.put_u32_le(*bytes);
            }
            Message::Push {
                subscription,
                shard,
                next_offset,
                batches,
            } => {
                w.0.put_u64_le(*subscription);
                w.0.put_u32_le(*shard);
                w.0.put_u64_le(*next_offset);
                w.blob("batches", batches, FRAME_BODY_BYTES_MAX)?;
            }
            Message::CommitCursor {
                stream,
                shard,
                name,
                offset,
            } => {
                w.name("stream", stream)?;
                w.0.put_u32_le(*shard);
                w.name("cursor name", name)?;
                w.0.put_u64_le(*offset);
            }
            Message::GroupFetch {
                stream,
                group,
                consumer,
                max_records,
                lease_ms,
            } => {
                w.name("stream", stream)?;
                w.name("group", group)?;
                w.0.put_u64_le(*consumer);
                w.0.put_u32_le(*max_records);
                w.0.put_u32_le(*lease_ms);
            }
            Message::GroupRecords {
                lease_until_ms,
                records,
            } => {
                w.0.put_i64_le(*lease_until_ms);
                w.count("records", records.len(), GROUP_RECORDS_MAX)?;
                for r in records {
                    w.0.put_u32_le(r.shard);
                    w.0.put_u64_le(r.offset);
                    w.0.put_u32_le(r.deliveries);
                    w.0.put_i64_le(r.timestamp_ms);
                    match &r.key {
                        Some(k) => {
                            w.0.put_u8(1);
                            w.blob("key", k, KEY_BYTES_MAX)?;
                        }
                        None => w.0.put_u8(0),
                    }
                    w.blob("value", &r.value, VALUE_BYTES_MAX)?;
                }
            }
            Message::GroupAck { stream, group, items } => {
                w.name("stream", stream)?;
                w.name("group", group)?;
                w.items(items)?;
            }
            Message::GroupNack {
                stream,
                group,
                consumer,
                delay_ms: t,
                items,
            }
            | Message::GroupExtend {
                stream,
                group,
                consumer,
                lease_ms: t,
                items,
            } => {
                w.name("stream", stream)?;
                w.name("group", group)?;
                w.0.put_u64_le(*consumer);
                w.0.put_u32_le(*t);
                w.items(items)?;
            }
            Message::CacheGet { cache, key } => {
                w.name("cache", cache)?;
                w.blob("key", key, KEY_BYTES_MAX)?;
            }
            Message::CachePut {
                cache,
                key,
                value,
                ttl_ms,
                if_version,
                writer,
                sequence,
            } => {
                w.name("cache", cache)?;
                w.blob("key", key, KEY_BYTES_MAX)?;
                w.blob("value", value, VALUE_BYTES_MAX)?;
                w.opt_u64(*ttl_ms);
                w.opt_u64(*if_version);
                w.0.put_u64_le(*writer);
                w.0.put_u64_le(*sequence);
            }
            Message::CacheDelete {
                cache,
                key,
                if_version,
                writer,
                sequence,
            } => {
                w.name("cache", cache)?;
                w.blob("key", key, KEY_BYTES_MAX)?;
                w.opt_u64(*if_version);
                w.0.put_u64_le(*writer);
                w.0.put_u64_le(*sequence);
            }
            Message::CacheValue { entry } => match entry {
                Some(e) => {
                    w.0.put_u8(1);
                    w.blob("value", &e.value, VALUE_BYTES_MAX)?;
                    w.0.put_u64_le(e.version);
                    w.opt_u64(e.expiry_ms.map(|x| x as u64));
                }
                None => w.0.put_u8(0),
            },
            Message::CacheWritten { version } => w.0.put_u64_le(*version),
            Message::CacheScan {
                cache,
                shard,
                after,
                count,
            } => {
                w.name("cache", cache)?;
                w.0.put_u32_le(*shard);
                w.opt_blob("after", after.as_deref(), KEY_BYTES_MAX)?;
                check("scan count", *count as usize, SCAN_KEYS_MAX)?;
                w.0.put_u32_le(*count);
            }
            Message::CacheKeys { keys, next } => {
                w.count("keys", keys.len(), SCAN_KEYS_MAX)?;
                for k in keys {
                    w.blob("key", k, KEY_BYTES_MAX)?;
                }
                w.opt_blob("next", next.as_deref(), KEY_BYTES_MAX)?;
            }
            Message::Metadata { streams } => {
                w.count("streams", streams.len(), METADATA_ENTRIES_MAX)?;
                for s in streams {
                    w.name("stream", s)?;
                }
            }
            Message::MetadataReply { brokers, streams } => {
                w.count("brokers", brokers.len(), METADATA_ENTRIES_MAX)?;
                for b in brokers {
                    w.0.put_u64_le(b.id);
                    w.name("broker address", &b.address)?;
                }
                w.count("streams", streams.len(), METADATA_ENTRIES_MAX)?;
                for s in streams {
                    w.name("stream", &s.name)?;
                    w.0.put_u8(s.kind.code());
                    w.0.put_u8(s.key_routing.code());
                    w.count("shards", s.shards.len(), SHARDS_PER_REQUEST_MAX)?;
                    for sh in &s.shards {
                        w.0.put_u32_le(sh.shard);
                        w.opt_u64(sh.leader);
                        check("replicas", sh.replicas.len(), REPLICAS_MAX)?;
                        w.0.put_u8(sh.replicas.len() as u8);
                        for r in &sh.replicas {
                            w.0.put_u64_le(*r);
                        }
                    }
                }
            }
            Message::Done => {}
            Message::StreamCreate(c) => w.config(c)?,
            Message::StreamDelete { name, force } => {
                w.name("stream", name)?;
                w.0.put_u8(u8::from(*force));
            }
            Message::StreamSetRetention {
                name,
                retention_ms,
                retention_bytes,
            } => {
                w.name("stream", name)?;
                w.opt_u64(*retention_ms);
                w.opt_u64(*retention_bytes);
            }
            Message::StreamDescribe { name } => w.name("stream", name)?,
            Message::StreamDescription { config, shards } => {
                w.config(config)?;
                w.count("shards", shards.len(), SHARDS_PER_REQUEST_MAX)?;
                for s in shards {
                    w.0.put_u32_le(s.shard);
                    w.0.put_u64_le(s.earliest);
                    w.0.put_u64_le(s.next);
                    w.0.put_u64_le(s.bytes);
                    w.0.put_u32_le(s.segments);
                }
            }
            Message::Error(e) => {
                w.0.put_u16_le(e.code());
                let text: &str = match e {
                    ErrorReply::NotLeader { leader } => {
                        match leader {
                            Some((id, addr)) => {
                                w.0.put_u8(1);
                                w.0.put_u64_le(*id);
                                w.name("leader address", addr)?;
                            }
                            None => w.0.put_u8(0),
                        }
                        ""
                    }
                    ErrorReply::Overloaded { retry_after_ms } => {
                        w.0.put_u32_le(*retry_after_ms);
                        ""
                    }
                    ErrorReply::OffsetOutOfRange { earliest, latest } => {
                        w.0.put_u64_le(*earliest);
                        w.0.put_u64_le(*latest);
                        ""
                    }
                    ErrorReply::UnknownStream(m)
                    | ErrorReply::Unauthorized(m)
                    | ErrorReply::Forbidden(m)
                    | ErrorReply::InvalidRequest(m)
                    | ErrorReply::Timeout(m)
                    | ErrorReply::Internal(m)
                    | ErrorReply::QuotaExceeded(m) => m,
                };
                // Messages are cut, never refused: an error must always be sendable.
                let mut end = text.len().min(ERROR_MESSAGE_BYTES_MAX);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                w.0.put_u16_le(end as u16);
                w.0.put_slice(&text.as_bytes()[..end]);
            }
        }
        Ok(())
    }

    /// Decodes the body of a frame of type `kind`.
    pub fn decode(frame_kind: u8, body: Bytes) -> Result<Message, WireError> {
        use self::kind as k;
        let mut r = R { b: body };
        let m = match frame_kind {
            k::HELLO => Message::Hello {
                version: r.u16("version")?,
                capabilities: r.u64("capabilities")?,
                token: r.blob("token", TOKEN_BYTES_MAX)?,
            },
            k::WELCOME => Message::Welcome {
                version: r.u16("version")?,
                capabilities: r.u64("capabilities")?,
                broker_id: r.u64("broker id")?,
            },
            k::PUBLISH => Message::Publish {
                stream: r.name("stream")?,
                shard: Some(r.u32("shard")?).filter(|s| *s != u32::MAX),
                ack: match r.u8("ack level")? {
                    0 => AckLevel::None,
                    1 => AckLevel::Leader,
                    2 => AckLevel::Quorum,
                    _ => return Err(WireError::Invalid("ack level")),
                },
                producer_id: r.u64("producer id")?,
                sequence: r.u64("sequence")?,
                batch: r.blob("batch", felix_log::batch::layout::BATCH_BYTES_MAX)?,
            },
            k::PUBLISH_ACK => Message::PublishAck {
                shard: r.u32("shard")?,
                base_offset: r.u64("base offset")?,
                count: r.u32("count")?,
            },
            k::SUBSCRIBE => {
                let stream = r.name("stream")?;
                let n = r.count("shards", SHARDS_PER_REQUEST_MAX, 4)?;
                let shards = (0..n).map(|_| r.u32("shard")).collect::<Result<_, _>>()?;
                let tag = r.u8("start")?;
                let v = r.u64("start value")?;
                let start = match tag {
                    0 => Start::Earliest,
                    1 => Start::Latest,
                    2 => Start::Offset(v),
                    3 => Start::Time(v as i64),
                    4 => Start::Committed,
                    _ => return Err(WireError::Invalid("start")),
                };
                let durable = match r.u8("durable")? {
                    0 => None,
                    1 => Some(r.name("durable name")?),
                    _ => return Err(WireError::Invalid("durable")),
                };
                Message::Subscribe {
                    stream,
                    shards,
                    start,
                    durable,
                    credit_bytes: r.u32("credit")?,
                }
            }
            k::SUBSCRIBED => Message::Subscribed {
                subscription: r.u64("subscription")?,
            },
            k::UNSUBSCRIBE => Message::Unsubscribe {
                subscription: r.u64("subscription")?,
            },
            k::CREDIT => Message::Credit {
                subscription: r.u64("subscription")?,
                bytes: r.u32("credit")?,
            },
            k::PUSH => Message::Push {
                subscription: r.u64("subscription")?,
                shard: r.u32("shard")?,
                next_offset: r.u64("next offset")?,
                batches: r.blob("batches", FRAME_BODY_BYTES_MAX)?,
            },
            k::COMMIT_CURSOR => Message::CommitCursor {
                stream: r.name("stream")?,
                shard: r.u32("shard")?,
                name: r.name("cursor name")?,
                offset: r.u64("offset")?,
            },
            k::GROUP_FETCH => Message::GroupFetch {
                stream: r.name("stream")?,
                group: r.name("group")?,
                consumer: r.u64("consumer")?,
                max_records: r.u32("max records")?,
                lease_ms: r.u32("lease")?,
            },
            k::GROUP_RECORDS => {
                let lease_until_ms = r.i64("lease until")?;
                // Smallest record: shard, offset, deliveries, timestamp, key
                // tag, value length.
                let n = r.count("records", GROUP_RECORDS_MAX, 4 + 8 + 4 + 8 + 1 + 4)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(GroupRecord {
                        shard: r.u32("shard")?,
                        offset: r.u64("offset")?,
                        deliveries: r.u32("deliveries")?,
                        timestamp_ms: r.i64("timestamp")?,
                        key: match r.u8("key tag")? {
                            0 => None,
                            1 => Some(r.blob("key", KEY_BYTES_MAX)?),
                            _ => return Err(WireError::Invalid("key tag")),
                        },
                        value: r.blob("value", VALUE_BYTES_MAX)?,
                    });
                }
                Message::GroupRecords {
                    lease_until_ms,
                    records,
                }
            }
            k::GROUP_ACK => Message::GroupAck {
                stream: r.name("stream")?,
                group: r.name("group")?,
                items: r.items()?,
            },
            k::GROUP_NACK => Message::GroupNack {
                stream: r.name("stream")?,
                group: r.name("group")?,
                consumer: r.u64("consumer")?,
                delay_ms: r.u32("delay")?,
                items: r.items()?,
            },
            k::GROUP_EXTEND => Message::GroupExtend {
                stream: r.name("stream")?,
                group: r.name("group")?,
                consumer: r.u64("consumer")?,
                lease_ms: r.u32("lease")?,
                items: r.items()?,
            },
            k::CACHE_GET => Message::CacheGet {
                cache: r.name("cache")?,
                key: r.blob("key", KEY_BYTES_MAX)?,
            },
            k::CACHE_PUT => Message::CachePut {
                cache: r.name("cache")?,
                key: r.blob("key", KEY_BYTES_MAX)?,
                value: r.blob("value", VALUE_BYTES_MAX)?,
                ttl_ms: r.opt_u64("ttl")?,
                if_version: r.opt_u64("if version")?,
                writer: r.u64("writer")?,
                sequence: r.u64("sequence")?,
            },
            k::CACHE_DELETE => Message::CacheDelete {
                cache: r.name("cache")?,
                key: r.blob("key", KEY_BYTES_MAX)?,
                if_version: r.opt_u64("if version")?,
                writer: r.u64("writer")?,
                sequence: r.u64("sequence")?,
            },
            k::CACHE_VALUE => Message::CacheValue {
                entry: match r.u8("entry tag")? {
                    0 => None,
                    1 => Some(CacheEntry {
                        value: r.blob("value", VALUE_BYTES_MAX)?,
                        version: r.u64("version")?,
                        expiry_ms: r.opt_u64("expiry")?.map(|x| x as i64),
                    }),
                    _ => return Err(WireError::Invalid("entry tag")),
                },
            },
            k::CACHE_WRITTEN => Message::CacheWritten {
                version: r.u64("version")?,
            },
            k::CACHE_SCAN => Message::CacheScan {
                cache: r.name("cache")?,
                shard: r.u32("shard")?,
                after: r.opt_blob("after", KEY_BYTES_MAX)?,
                count: {
                    let n = r.u32("scan count")?;
                    check("scan count", n as usize, SCAN_KEYS_MAX)?;
                    n
                },
            },
            k::CACHE_KEYS => {
                let n = r.count("keys", SCAN_KEYS_MAX, 4)?;
                Message::CacheKeys {
                    keys: (0..n)
                        .map(|_| r.blob("key", KEY_BYTES_MAX))
                        .collect::<Result<_, _>>()?,
                    next: r.opt_blob("next", KEY_BYTES_MAX)?,
                }
            }
            k::METADATA => {
                let n = r.count("streams", METADATA_ENTRIES_MAX, 1)?;
                Message::Metadata {
                    streams: (0..n).map(|_| r.name("stream")).collect::<Result<_, _>>()?,
                }
            }
            k::METADATA_REPLY => {
                let n = r.count("brokers", METADATA_ENTRIES_MAX, 9)?;
                let brokers = (0..n)
                    .map(|_| {
                        Ok(BrokerInfo {
                            id: r.u64("broker id")?,
                            address: r.name("broker address")?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                let n = r.count("streams", METADATA_ENTRIES_MAX, 6)?;
                let mut streams = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.name("stream")?;
                    let kind = r.stream_kind()?;
                    let key_routing = r.key_routing()?;
                    let m = r.count("shards", SHARDS_PER_REQUEST_MAX, 6)?;
                    let mut shards = Vec::with_capacity(m);
                    for _ in 0..m {
                        let shard = r.u32("shard")?;
                        let leader = r.opt_u64("leader")?;
                        let k = r.u8("replica count")? as usize;
                        check("replicas", k, REPLICAS_MAX)?;
                        let replicas = (0..k).map(|_| r.u64("replica")).collect::<Result<_, _>>()?;
                        shards.push(ShardInfo {
                            shard,
                            leader,
                            replicas,
                        });
                    }
                    streams.push(StreamInfo {
                        name,
                        kind,
                        key_routing,
                        shards,
                    });
                }
                Message::MetadataReply { brokers, streams }
            }
            k::DONE => Message::Done,
            k::STREAM_CREATE => Message::StreamCreate(r.config()?),
            k::STREAM_DELETE => Message::StreamDelete {
                name: r.name("stream")?,
                force: match r.u8("force")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("force")),
                },
            },
            k::STREAM_SET_RETENTION => Message::StreamSetRetention {
                name: r.name("stream")?,
                retention_ms: r.opt_u64("retention ms")?,
                retention_bytes: r.opt_u64("retention bytes")?,
            },
            k::STREAM_DESCRIBE => Message::StreamDescribe {
                name: r.name("stream")?,
            },
            k::STREAM_DESCRIPTION => {
                let config = r.config()?;
                let n = r.count("shards", SHARDS_PER_REQUEST_MAX, 32)?;
                let shards = (0..n)
                    .map(|_| {
                        Ok(ShardStats {
                            shard: r.u32("shard")?,
                            earliest: r.u64("earliest")?,
                            next: r.u64("next")?,
                            bytes: r.u64("bytes")?,
                            segments: r.u32("segments")?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Message::StreamDescription { config, shards }
            }
            k::ERROR => {
                let c = r.u16("error code")?;
                let mut fixed = None;
                match c {
                    code::NOT_LEADER => {
                        let leader = match r.u8("leader tag")? {
                            0 => None,
                            1 => Some((r.u64("leader id")?, r.name("leader address")?)),
                            _ => return Err(WireError::Invalid("leader tag")),
                        };
                        fixed = Some(ErrorReply::NotLeader { leader });
                    }
                    code::OVERLOADED => {
                        fixed = Some(ErrorReply::Overloaded {
                            retry_after_ms: r.u32("retry after")?,
                        })
                    }
                    code::OFFSET_OUT_OF_RANGE => {
                        fixed = Some(ErrorReply::OffsetOutOfRange {
                            earliest: r.u64("earliest")?,
                            latest: r.u64("latest")?,
                        })
                    }
                    _ => {}
                }
                let n = r.u16("error message")? as usize;
                check("error message", n, ERROR_MESSAGE_BYTES_MAX)?;
                r.need(n, "error message")?;
                let text = String::from_utf8(r.b.split_to(n).to_vec())
                    .map_err(|_| WireError::Invalid("error message"))?;
                Message::Error(match (c, fixed) {
                    (_, Some(e)) => e,
                    (code::UNKNOWN_STREAM, None) => ErrorReply::UnknownStream(text),
                    (code::UNAUTHORIZED, None) => ErrorReply::Unauthorized(text),
                    (code::FORBIDDEN, None) => ErrorReply::Forbidden(text),
                    (code::INVALID_REQUEST, None) => ErrorReply::InvalidRequest(text),
                    (code::TIMEOUT, None) => ErrorReply::Timeout(text),
                    (code::INTERNAL, None) => ErrorReply::Internal(text),
                    (code::QUOTA_EXCEEDED, None) => ErrorReply::QuotaExceeded(text),
                    _ => return Err(WireError::Invalid("error code")),
                })
            }
            other => return Err(WireError::UnknownType(other)),
        };
        r.end()?;
        Ok(m)
    }
}
