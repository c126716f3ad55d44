//! [`GroupConsumer`] (a stream consumed as a queue) and [`Cache`] (a keyed,
//! compacted log used as a key-value cache).

use bytes::Bytes;

use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::policy::shard_for_key;
use crate::wire::{CacheEntry, GroupRecord, Message};

/// Records leased by one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub lease_until_ms: i64,
    pub records: Vec<GroupRecord>,
}

/// One consumer of a consumer group.
#[derive(Debug, Clone)]
pub struct GroupConsumer {
    client: Client,
    stream: String,
    group: String,
    /// Random per consumer: the broker's name for whose leases these are.
    consumer: u64,
}

impl Client {
    pub fn group_consumer(&self, stream: &str, group: &str) -> GroupConsumer {
        GroupConsumer {
            client: self.clone(),
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: rand::random::<u64>() | 1,
        }
    }

    pub fn cache(&self, name: &str) -> Cache {
        Cache {
            client: self.clone(),
            name: name.to_owned(),
        }
    }
}

impl GroupConsumer {
    /// The id this consumer's leases are held under.
    pub fn consumer_id(&self) -> u64 {
        self.consumer
    }

    /// Sends a request answered `Done`.
    async fn done(&self, m: Message) -> Result<(), ClientError> {
        match self.client.call(Route::Stream(&self.stream), &m).await? {
            Message::Done => Ok(()),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// Leases up to `max_records` for `lease_ms`; an empty result means
    /// nothing is available now.
    pub async fn fetch(&self, max_records: u32, lease_ms: u32) -> Result<Leased, ClientError> {
        let m = Message::GroupFetch {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer,
            max_records,
            lease_ms,
        };
        match self.client.call(Route::Stream(&self.stream), &m).await? {
            Message::GroupRecords {
                lease_until_ms,
                records,
            } => Ok(Leased {
                lease_until_ms,
                records,
            }),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    /// Acknowledges (shard, offset) pairs: they are never redelivered.
    pub async fn ack(&self, items: &[(u32, u64)]) -> Result<(), ClientError> {
        let m = Message::GroupAck {
            stream: self.stream.clone(),
            group: self.group.clone(),
            items: items.to_vec(),
        };
        self.done(m).await
    }

    /// Gives records back for redelivery after `delay_ms`.
    pub async fn nack(&self, items: &[(u32, u64)], delay_ms: u32) -> Result<(), ClientError> {
        let m = Message::GroupNack {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer,
            delay_ms,
            items: items.to_vec(),
        };
        self.done(m).await
    }

    /// Extends the lease of held records to `lease_ms` from now.
    pub async fn extend(&self, items: &[(u32, u64)], lease_ms: u32) -> Result<(), ClientError> {
        let m = Message::GroupExtend {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer,
            lease_ms,
            items: items.to_vec(),
        };
        self.done(m).await
    }
}

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new version.
    Written(u64),
    /// Not written: the version did not match. The entry as it is (`None`
    /// if absent).
    Conflict(Option<CacheEntry>),
}

/// A cache: keys routed to `fnv1a64(key) mod shards`, each shard's leader
/// answering for its keys.
#[derive(Debug, Clone)]
pub struct Cache {
    client: Client,
    name: String,
}

impl Cache {
    async fn shard(&self, key: &[u8]) -> Result<u32, ClientError> {
        let info = self.client.stream_info(&self.name).await?;
        let n = info.shards.len() as u32;
        if n == 0 {
            return Err(ClientError::UnknownStream(self.name.clone()));
        }
        Ok(shard_for_key(key, n))
    }

    async fn call(&self, key: &[u8], m: Message) -> Result<Message, ClientError> {
        let shard = self.shard(key).await?;
        self.client.call(Route::Shard(&self.name, shard), &m).await
    }

    /// The live entry for `key`, or `None` (absent, deleted or expired).
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<CacheEntry>, ClientError> {
        let key = key.into();
        let m = Message::CacheGet {
            cache: self.name.clone(),
            key: key.clone(),
        };
        match self.call(&key, m).await? {
            Message::CacheValue { entry } => Ok(entry),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    async fn write(&self, key: Bytes, m: Message) -> Result<CasOutcome, ClientError> {
        match self.call(&key, m).await? {
            Message::CacheWritten { version } => Ok(CasOutcome::Written(version)),
            Message::CacheValue { entry } => Ok(CasOutcome::Conflict(entry)),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    fn put_message(
        &self,
        key: &Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
    ) -> Message {
        Message::CachePut {
            cache: self.name.clone(),
            key: key.clone(),
            value,
            ttl_ms,
            if_version,
        }
    }

    /// Writes `value` (expiring after `ttl_ms`, if given); the new version.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, ClientError> {
        let key = key.into();
        let m = self.put_message(&key, value.into(), ttl_ms, None);
        match self.write(key, m).await? {
            CasOutcome::Written(v) => Ok(v),
            CasOutcome::Conflict(_) => Err(ClientError::UnexpectedReply(
                "a conflict to an unconditional put".into(),
            )),
        }
    }

    /// Writes only if the key's version is `version` (0: only if absent).
    pub async fn put_if_version(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl_ms: Option<u64>,
        version: u64,
    ) -> Result<CasOutcome, ClientError> {
        let key = key.into();
        let m = self.put_message(&key, value.into(), ttl_ms, Some(version));
        self.write(key, m).await
    }

    /// Deletes `key` (a tombstone), optionally only at `if_version`.
    pub async fn delete(
        &self,
        key: impl Into<Bytes>,
        if_version: Option<u64>,
    ) -> Result<CasOutcome, ClientError> {
        let key = key.into();
        let m = Message::CacheDelete {
            cache: self.name.clone(),
            key: key.clone(),
            if_version,
        };
        self.write(key, m).await
    }
}
