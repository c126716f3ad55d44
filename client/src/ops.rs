//! [`GroupConsumer`] (a stream consumed as a queue) and [`Cache`] (a keyed,
//! compacted log used as a key-value cache).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::client::{Client, Route};
use crate::error::ClientError;
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
    /// Which shard leader a fetch asks first (rotates, so no leader's
    /// shards starve the others').
    turn: Arc<AtomicUsize>,
    /// When an empty fetch last reloaded the stream's leaders.
    refreshed: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// An empty fetch reloads the stream's leaders at most this often: a
/// leader that moved while it served other shards too sends no redirect.
const LEADERS_REFRESH_MIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Client {
    pub fn group_consumer(&self, stream: &str, group: &str) -> GroupConsumer {
        GroupConsumer {
            client: self.clone(),
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: rand::random::<u64>() | 1,
            turn: Arc::new(AtomicUsize::new(0)),
            refreshed: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    pub fn cache(&self, name: &str) -> Cache {
        Cache {
            client: self.clone(),
            name: name.to_owned(),
            writers: Arc::new(Writers::default()),
        }
    }
}

impl GroupConsumer {
    /// The id this consumer's leases are held under.
    pub fn consumer_id(&self) -> u64 {
        self.consumer
    }

    /// The stream's shards grouped by the broker the client believes leads
    /// them (shards with no known leader form one group): each broker
    /// serves group requests for the shards it leads, so one request per
    /// group reaches them all. Each group is routed by its first shard, so
    /// a stale belief is corrected by the `NotLeader` redirect.
    async fn by_leader(&self) -> Result<Vec<Vec<u32>>, ClientError> {
        let info = self.client.stream_info(&self.stream).await?;
        let mut groups: BTreeMap<Option<u64>, Vec<u32>> = BTreeMap::new();
        for s in &info.shards {
            groups.entry(s.leader).or_default().push(s.shard);
        }
        if groups.is_empty() {
            return Err(ClientError::UnknownStream(self.stream.clone()));
        }
        Ok(groups.into_values().collect())
    }

    /// Sends `make(items of one leader's shards)` to each leader.
    async fn change(
        &self,
        items: &[(u32, u64)],
        make: impl Fn(Vec<(u32, u64)>) -> Message,
    ) -> Result<(), ClientError> {
        let mut first_err = None;
        let groups = self.by_leader().await?;
        // Items naming no shard of the stream go to any leader, which
        // refuses them by name.
        let strays: Vec<(u32, u64)> = items
            .iter()
            .filter(|(shard, _)| !groups.iter().any(|g| g.contains(shard)))
            .copied()
            .collect();
        for shards in groups {
            let mine: Vec<(u32, u64)> = items
                .iter()
                .filter(|(shard, _)| shards.contains(shard))
                .copied()
                .collect();
            let Some(&(route, _)) = mine.first() else {
                continue;
            };
            match self
                .client
                .call(Route::Shard(&self.stream, route), &make(mine))
                .await
            {
                Ok(Message::Done) => {}
                Ok(other) => return Err(ClientError::unexpected(&other)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if !strays.is_empty() {
            match self.client.call(Route::Stream(&self.stream), &make(strays)).await {
                Ok(Message::Done) => {}
                Ok(other) => return Err(ClientError::unexpected(&other)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Leases up to `max_records` for `lease_ms`; an empty result means
    /// nothing is available now. Asks each shard leader in turn until
    /// `max_records` are leased; a leader that cannot be reached is skipped
    /// (its records come on a later fetch) unless none answers.
    pub async fn fetch(&self, max_records: u32, lease_ms: u32) -> Result<Leased, ClientError> {
        let mut groups = self.by_leader().await?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % groups.len();
        groups.rotate_left(turn);
        let mut out = Leased {
            lease_until_ms: 0,
            records: Vec::new(),
        };
        let mut answered = false;
        let mut first_err = None;
        for shards in groups {
            let want = max_records.saturating_sub(out.records.len() as u32);
            if want == 0 {
                break;
            }
            let m = Message::GroupFetch {
                stream: self.stream.clone(),
                group: self.group.clone(),
                consumer: self.consumer,
                max_records: want,
                lease_ms,
            };
            match self.client.call(Route::Shard(&self.stream, shards[0]), &m).await {
                Ok(Message::GroupRecords {
                    lease_until_ms,
                    records,
                }) => {
                    // The earliest expiry of what was leased.
                    if !answered || (!records.is_empty() && lease_until_ms < out.lease_until_ms) {
                        out.lease_until_ms = lease_until_ms;
                    }
                    answered = true;
                    out.records.extend(records);
                }
                Ok(other) => return Err(ClientError::unexpected(&other)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if out.records.is_empty() {
            let due = {
                let mut r = self.refreshed.lock().expect("refresh lock");
                let due = r.is_none_or(|t| t.elapsed() >= LEADERS_REFRESH_MIN);
                if due {
                    *r = Some(std::time::Instant::now());
                }
                due
            };
            if due {
                // Best effort: the next fetch uses what it learns.
                let _ = self
                    .client
                    .refresh_metadata(std::slice::from_ref(&self.stream))
                    .await;
            }
        }
        match (answered, first_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }

    /// Acknowledges (shard, offset) pairs: they are never redelivered.
    pub async fn ack(&self, items: &[(u32, u64)]) -> Result<(), ClientError> {
        self.change(items, |items| Message::GroupAck {
            stream: self.stream.clone(),
            group: self.group.clone(),
            items,
        })
        .await
    }

    /// Gives records back for redelivery after `delay_ms`.
    pub async fn nack(&self, items: &[(u32, u64)], delay_ms: u32) -> Result<(), ClientError> {
        self.change(items, |items| Message::GroupNack {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer,
            delay_ms,
            items,
        })
        .await
    }

    /// Extends the lease of held records to `lease_ms` from now.
    pub async fn extend(&self, items: &[(u32, u64)], lease_ms: u32) -> Result<(), ClientError> {
        self.change(items, |items| Message::GroupExtend {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer,
            lease_ms,
            items,
        })
        .await
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

/// A cache: keys routed to shards by the cache's `KeyRouting`, each
/// shard's leader answering for its keys.
#[derive(Debug, Clone)]
pub struct Cache {
    client: Client,
    name: String,
    writers: Arc<Writers>,
}

/// The idempotence identities a cache handle writes under, each with its
/// next sequence. A write borrows one for its whole life, retries
/// included, so writes under one identity never overlap: the broker keeps
/// one sequence per identity and shard, which is then enough to answer a
/// retry with the first attempt's outcome (a write that timed out and
/// was sent again is not applied twice, and a compare-and-set that won
/// is not reported as a conflict with itself). The pool grows to the
/// handle's highest number of concurrent writes.
#[derive(Debug, Default)]
struct Writers {
    free: std::sync::Mutex<Vec<(u64, u64)>>,
}

/// One borrowed identity; returned with its sequence advanced, whatever
/// the write's outcome (a write of unknown outcome may still land, under
/// the old sequence).
struct Borrowed<'a> {
    pool: &'a Writers,
    writer: u64,
    sequence: u64,
}

impl Writers {
    fn borrow(&self) -> Borrowed<'_> {
        let (writer, sequence) = self
            .free
            .lock()
            .expect("writers lock")
            .pop()
            // The same id space as producers: top bit clear, never 0.
            .unwrap_or_else(|| (rand::random::<u64>() >> 1 | 1, 0));
        Borrowed {
            pool: self,
            writer,
            sequence,
        }
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .expect("writers lock")
            .push((self.writer, self.sequence + 1));
    }
}

impl Cache {
    async fn shard(&self, key: &[u8]) -> Result<u32, ClientError> {
        let info = self.client.stream_info(&self.name).await?;
        info.shard_of(key)
            .ok_or_else(|| ClientError::UnknownStream(self.name.clone()))
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

    /// How many shards the cache has (its keys are spread over them by its
    /// [`KeyRouting`](felix_model::KeyRouting)).
    pub async fn shards(&self) -> Result<u32, ClientError> {
        let info = self.client.stream_info(&self.name).await?;
        Ok(info.shards.len() as u32)
    }

    /// A page of shard `shard`'s live keys after `after` (from the first
    /// when `None`), `count` wanted (a hint, clamped to
    /// [`SCAN_KEYS_MAX`](crate::wire::message::SCAN_KEYS_MAX)), and where
    /// the next page starts (`None`: the shard has no more). A page may
    /// hold fewer keys than asked, even none, and still not be the last.
    /// Keys written or deleted while a walk goes on may or may not be
    /// seen; a key there throughout is seen once.
    pub async fn scan(
        &self,
        shard: u32,
        after: Option<Bytes>,
        count: usize,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), ClientError> {
        let m = Message::CacheScan {
            cache: self.name.clone(),
            shard,
            after,
            count: count.clamp(1, crate::wire::message::SCAN_KEYS_MAX) as u32,
        };
        match self.client.call(Route::Shard(&self.name, shard), &m).await? {
            Message::CacheKeys { keys, next } => Ok((keys, next)),
            other => Err(ClientError::unexpected(&other)),
        }
    }

    async fn write(&self, key: Bytes, mut m: Message) -> Result<CasOutcome, ClientError> {
        let me = self.writers.borrow();
        if let Message::CachePut { writer, sequence, .. } | Message::CacheDelete { writer, sequence, .. } =
            &mut m
        {
            *writer = me.writer;
            *sequence = me.sequence;
        }
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
            writer: 0,
            sequence: 0,
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
            writer: 0,
            sequence: 0,
        };
        self.write(key, m).await
    }
}
