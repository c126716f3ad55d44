//! Redis's meaning of the data commands, over a Felix cache ([`Store`]).
//!
//! A command that reads before it writes (`SET NX`, `INCR`, `APPEND`,
//! `EXPIRE`, ...) writes with compare-and-set on the version it read, and
//! reads again when another write came first: the decision is the shard
//! leader's, as a plain compare-and-set is, so concurrent increments never
//! lose one. Tries are bounded by [`CAS_TRIES_MAX`].
//!
//! Time is an argument (`now_ms`, the broker's clock), so every rule here
//! runs deterministically in tests.

use std::collections::HashSet;
use std::future::Future;

use bytes::{Bytes, BytesMut};
use felix_client::wire::CacheEntry;
use futures_util::future::join_all;

use crate::codec::{format_double, Reply};
use crate::command::{float, int, Command, Exists, ExpireIf, Expiry, GetEx};

/// Reads and compare-and-set writes one command makes at most before it
/// gives up on a key other writers keep changing.
pub const CAS_TRIES_MAX: usize = 64;

/// Keys of one multi-key command (`MGET`, `MSET`, `DEL`, `EXISTS`) asked
/// of the shards at once; more go in further rounds. One after another,
/// an `MSET` of n keys on an `always` cache would wait for n fsyncs.
pub const KEYS_AT_ONCE_MAX: usize = 64;

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the key's new version.
    Done(u64),
    /// The key's version was not the one given; the entry as it is.
    Conflict(Option<CacheEntry>),
}

/// One Felix cache, as the commands see it. Errors are replies already
/// (`-ERR ...`, `-NOPERM ...`), sent as they are.
pub trait Store: Send + Sync {
    /// The live entry of `key` (an expired one is absent).
    fn get(&self, key: Bytes) -> impl Future<Output = Result<Option<CacheEntry>, Reply>> + Send;
    /// Writes `value` with a TTL (`None`: the cache's default TTL, if it
    /// has one), only if the key's version is `if_version` (0: absent)
    /// when given.
    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
    ) -> impl Future<Output = Result<Written, Reply>> + Send;
    /// Deletes `key`, only if its version is `if_version` when given.
    fn delete(
        &self,
        key: Bytes,
        if_version: Option<u64>,
    ) -> impl Future<Output = Result<Written, Reply>> + Send;
    /// How many shards the cache has (pages of keys come one shard at a
    /// time).
    fn shards(&self) -> impl Future<Output = Result<u32, Reply>> + Send;
    /// A page of shard `shard`'s live keys after `after` (from the first
    /// when `None`), about `count` of them, and where the next page starts
    /// (`None`: the shard has no more).
    fn scan(
        &self,
        shard: u32,
        after: Option<Bytes>,
        count: usize,
    ) -> impl Future<Output = Result<(Vec<Bytes>, Option<Bytes>), Reply>> + Send;
    /// Waits before try `attempt` (from 1) of a compare-and-set that lost
    /// to another writer: writers contending for one key spread out
    /// instead of colliding again at once.
    fn backoff(&self, attempt: usize) -> impl Future<Output = ()> + Send;
}

fn busy() -> Reply {
    Reply::err("TRYAGAIN the key kept changing under other writers; retry")
}

fn not_int() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

/// The version a compare-and-set expects of `e` (0: absent).
fn version_of(e: &Option<CacheEntry>) -> u64 {
    e.as_ref().map_or(0, |e| e.version)
}

/// The TTL that keeps `e`'s expiry (`None`: it has none).
fn kept_ttl(e: &Option<CacheEntry>, now_ms: i64) -> Option<u64> {
    e.as_ref()
        .and_then(|e| e.expiry_ms)
        .map(|at| at.saturating_sub(now_ms).max(1) as u64)
}

/// An expiry as an absolute time.
fn deadline(e: Expiry, now_ms: i64) -> i64 {
    match e {
        Expiry::In(ms) => now_ms.saturating_add(ms),
        Expiry::At(at) => at,
    }
}

/// Runs a data command; `None` for commands this module does not run
/// (the connection's own: `PING`, `HELLO`, `AUTH`, ...).
pub async fn exec<S: Store>(store: &S, cmd: Command, now_ms: i64) -> Option<Reply> {
    Some(match cmd {
        Command::Get(k) => match store.get(k).await {
            Ok(e) => e.map_or(Reply::Nil, |e| Reply::Bulk(e.value)),
            Err(r) => r,
        },
        Command::Set {
            key,
            value,
            expiry,
            cond,
            get,
            keep_ttl,
        } => set(store, key, value, expiry, cond, get, keep_ttl, now_ms)
            .await
            .unwrap_or_else(|r| r),
        Command::SetNx(k, v) => match set(store, k, v, None, Some(Exists::No), false, false, now_ms).await {
            Ok(Reply::Nil) => Reply::Int(0),
            Ok(_) => Reply::Int(1),
            Err(r) => r,
        },
        Command::GetDel(k) => getdel(store, k).await.unwrap_or_else(|r| r),
        Command::GetEx(k, how) => getex(store, k, how, now_ms).await.unwrap_or_else(|r| r),
        Command::Del(keys) => {
            // `DEL k k` deletes k once and counts it once.
            let mut seen = HashSet::new();
            let keys: Vec<Bytes> = keys.into_iter().filter(|k| seen.insert(k.clone())).collect();
            let mut n = 0;
            for chunk in keys.chunks(KEYS_AT_ONCE_MAX) {
                for r in join_all(chunk.iter().map(|k| getdel(store, k.clone()))).await {
                    match r {
                        Ok(Reply::Nil) => {}
                        Ok(_) => n += 1,
                        Err(r) => return Some(r),
                    }
                }
            }
            Reply::Int(n)
        }
        Command::Exists(keys) => {
            let mut n = 0;
            for chunk in keys.chunks(KEYS_AT_ONCE_MAX) {
                for r in join_all(chunk.iter().map(|k| store.get(k.clone()))).await {
                    match r {
                        Ok(e) => n += i64::from(e.is_some()),
                        Err(r) => return Some(r),
                    }
                }
            }
            Reply::Int(n)
        }
        Command::MGet(keys) => {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(KEYS_AT_ONCE_MAX) {
                for r in join_all(chunk.iter().map(|k| store.get(k.clone()))).await {
                    match r {
                        Ok(e) => out.push(e.map_or(Reply::Nil, |e| Reply::Bulk(e.value))),
                        Err(r) => return Some(r),
                    }
                }
            }
            Reply::Array(out)
        }
        Command::MSet(pairs) => {
            // Of a key given twice the last value stands, as in Redis:
            // written at once, two writes of one key could land either way.
            let mut seen = HashSet::new();
            let last: Vec<(Bytes, Bytes)> = pairs
                .into_iter()
                .rev()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            for chunk in last.chunks(KEYS_AT_ONCE_MAX) {
                let puts = chunk
                    .iter()
                    .map(|(k, v)| store.put(k.clone(), v.clone(), None, None));
                if let Some(Err(r)) = join_all(puts).await.into_iter().find(Result::is_err) {
                    return Some(r);
                }
            }
            Reply::ok()
        }
        Command::Expire { key, at, cond } => expire(store, key, at, cond, now_ms).await.unwrap_or_else(|r| r),
        Command::Ttl { key, ms } => match store.get(key).await {
            Ok(None) => Reply::Int(-2),
            Ok(Some(CacheEntry { expiry_ms: None, .. })) => Reply::Int(-1),
            Ok(Some(CacheEntry {
                expiry_ms: Some(at), ..
            })) => {
                let left = at.saturating_sub(now_ms).max(0);
                Reply::Int(if ms { left } else { (left + 500) / 1000 })
            }
            Err(r) => r,
        },
        Command::Persist(k) => update(store, k, now_ms, |e, _| match e {
            Some(e) if e.expiry_ms.is_some() => Ok(Change::Put(e.value.clone(), None, Reply::Int(1))),
            _ => Ok(Change::None(Reply::Int(0))),
        })
        .await
        .unwrap_or_else(|r| r),
        Command::IncrBy(k, by) => update(store, k, now_ms, |e, now| {
            let old = match e {
                None => 0,
                Some(e) => int(&e.value).ok_or_else(not_int)?,
            };
            let new = old
                .checked_add(by)
                .ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
            Ok(Change::Put(
                Bytes::from(new.to_string()),
                kept_ttl(e, now),
                Reply::Int(new),
            ))
        })
        .await
        .unwrap_or_else(|r| r),
        Command::IncrByFloat(k, by) => update(store, k, now_ms, |e, now| {
            let old = match e {
                None => 0.0,
                Some(e) => float(&e.value).ok_or_else(|| Reply::err("ERR value is not a valid float"))?,
            };
            let new = old + by;
            if !new.is_finite() {
                return Err(Reply::err("ERR increment would produce NaN or Infinity"));
            }
            let text = Bytes::from(format_double(new));
            Ok(Change::Put(text.clone(), kept_ttl(e, now), Reply::Bulk(text)))
        })
        .await
        .unwrap_or_else(|r| r),
        Command::Append(k, tail) => update(store, k, now_ms, |e, now| {
            let mut v = BytesMut::new();
            if let Some(e) = e {
                v.extend_from_slice(&e.value);
            }
            v.extend_from_slice(&tail);
            let len = v.len() as i64;
            Ok(Change::Put(v.freeze(), kept_ttl(e, now), Reply::Int(len)))
        })
        .await
        .unwrap_or_else(|r| r),
        Command::StrLen(k) => match store.get(k).await {
            Ok(e) => Reply::Int(e.map_or(0, |e| e.value.len() as i64)),
            Err(r) => r,
        },
        Command::Type(k) => match store.get(k).await {
            Ok(Some(_)) => Reply::Status("string"),
            Ok(None) => Reply::Status("none"),
            Err(r) => r,
        },
        Command::Cas {
            key,
            version,
            value,
            ttl_ms,
        } => match store
            .put(key, value, ttl_ms.map(|t| t as u64), Some(version))
            .await
        {
            Ok(Written::Done(v)) => version_reply(v),
            Ok(Written::Conflict(_)) => Reply::Nil,
            Err(r) => r,
        },
        Command::Version(k) => match store.get(k).await {
            Ok(e) => e.map_or(Reply::Nil, |e| version_reply(e.version)),
            Err(r) => r,
        },
        _ => return None,
    })
}

fn version_reply(v: u64) -> Reply {
    i64::try_from(v).map_or_else(|_| Reply::text(&v.to_string()), Reply::Int)
}

/// What a read-modify-write decides from the entry it read.
enum Change {
    /// Write this value with this TTL, then reply.
    Put(Bytes, Option<u64>, Reply),
    Delete(Reply),
    /// Write nothing; reply.
    None(Reply),
}

/// Reads `key`, lets `decide` choose, and writes with compare-and-set on
/// the version read, again from the read when another write came first.
async fn update<S: Store>(
    store: &S,
    key: Bytes,
    now_ms: i64,
    decide: impl Fn(&Option<CacheEntry>, i64) -> Result<Change, Reply>,
) -> Result<Reply, Reply> {
    for attempt in 0..CAS_TRIES_MAX {
        if attempt > 0 {
            store.backoff(attempt).await;
        }
        let cur = store.get(key.clone()).await?;
        let expected = version_of(&cur);
        let written = match decide(&cur, now_ms)? {
            Change::None(r) => return Ok(r),
            Change::Put(v, ttl, r) => (store.put(key.clone(), v, ttl, Some(expected)).await?, r),
            Change::Delete(r) => (store.delete(key.clone(), Some(expected)).await?, r),
        };
        if let (Written::Done(_), r) = written {
            return Ok(r);
        }
    }
    Err(busy())
}

#[allow(clippy::too_many_arguments)]
async fn set<S: Store>(
    store: &S,
    key: Bytes,
    value: Bytes,
    expiry: Option<Expiry>,
    cond: Option<Exists>,
    get: bool,
    keep_ttl: bool,
    now_ms: i64,
) -> Result<Reply, Reply> {
    let at = expiry.map(|e| deadline(e, now_ms));
    let past = at.is_some_and(|at| at <= now_ms);
    if cond.is_none() && !get && !keep_ttl && !past {
        let ttl = at.map(|at| (at - now_ms) as u64);
        store.put(key, value, ttl, None).await?;
        return Ok(Reply::ok());
    }
    update(store, key, now_ms, |cur, now| {
        let old = || cur.as_ref().map_or(Reply::Nil, |e| Reply::Bulk(e.value.clone()));
        let refused = match cond {
            Some(Exists::No) => cur.is_some(),
            Some(Exists::Yes) => cur.is_none(),
            None => false,
        };
        let reply = if get { old() } else { Reply::ok() };
        if refused {
            return Ok(Change::None(if get { old() } else { Reply::Nil }));
        }
        if past {
            // Redis stores it and it is gone at once: nothing is left.
            return Ok(if cur.is_some() {
                Change::Delete(reply)
            } else {
                Change::None(reply)
            });
        }
        let ttl = match at {
            Some(at) => Some((at - now) as u64),
            None if keep_ttl => kept_ttl(cur, now),
            None => None,
        };
        Ok(Change::Put(value.clone(), ttl, reply))
    })
    .await
}

async fn getdel<S: Store>(store: &S, key: Bytes) -> Result<Reply, Reply> {
    update(store, key, 0, |cur, _| {
        Ok(match cur {
            Some(e) => Change::Delete(Reply::Bulk(e.value.clone())),
            None => Change::None(Reply::Nil),
        })
    })
    .await
}

async fn getex<S: Store>(store: &S, key: Bytes, how: GetEx, now_ms: i64) -> Result<Reply, Reply> {
    update(store, key, now_ms, |cur, now| {
        let Some(e) = cur else {
            return Ok(Change::None(Reply::Nil));
        };
        let value = Reply::Bulk(e.value.clone());
        Ok(match how {
            GetEx::Keep => Change::None(value),
            GetEx::Persist if e.expiry_ms.is_none() => Change::None(value),
            GetEx::Persist => Change::Put(e.value.clone(), None, value),
            GetEx::Set(x) => {
                let at = deadline(x, now);
                if at <= now {
                    Change::Delete(value)
                } else {
                    Change::Put(e.value.clone(), Some((at - now) as u64), value)
                }
            }
        })
    })
    .await
}

async fn expire<S: Store>(
    store: &S,
    key: Bytes,
    at: Expiry,
    cond: Option<ExpireIf>,
    now_ms: i64,
) -> Result<Reply, Reply> {
    update(store, key, now_ms, |cur, now| {
        let Some(e) = cur else {
            return Ok(Change::None(Reply::Int(0)));
        };
        let new = deadline(at, now);
        // No expiry counts as an infinite one, as Redis compares them.
        let allowed = match (cond, e.expiry_ms) {
            (None, _) => true,
            (Some(ExpireIf::Nx), old) => old.is_none(),
            (Some(ExpireIf::Xx), old) => old.is_some(),
            (Some(ExpireIf::Gt), old) => old.is_some_and(|old| new > old),
            (Some(ExpireIf::Lt), old) => old.is_none_or(|old| new < old),
        };
        if !allowed {
            return Ok(Change::None(Reply::Int(0)));
        }
        Ok(if new <= now {
            Change::Delete(Reply::Int(1))
        } else {
            Change::Put(e.value.clone(), Some((new - now) as u64), Reply::Int(1))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::command::parse;

    /// A cache in memory with Felix's rules: versions grow with every
    /// write, an entry past its expiry is absent, and a write without a
    /// TTL gets the default one.
    #[derive(Default)]
    struct Mem {
        map: Mutex<HashMap<Bytes, CacheEntry>>,
        next: Mutex<u64>,
        now: AtomicI64,
        default_ttl_ms: Option<u64>,
        /// Writes to make behind the next compare-and-sets' backs.
        interfere: AtomicUsize,
        /// Reads and writes under way, and the most at once.
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl Mem {
        fn live(&self, key: &Bytes) -> Option<CacheEntry> {
            let now = self.now.load(Ordering::SeqCst);
            self.map
                .lock()
                .unwrap()
                .get(key)
                .filter(|e| e.expiry_ms.is_none_or(|at| at > now))
                .cloned()
        }

        /// Stands for the trip to a shard: every caller polled in the
        /// meantime is under way at the same time.
        async fn trip(&self) {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }

        fn version(&self) -> u64 {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            *n
        }

        fn check(&self, key: &Bytes, if_version: Option<u64>) -> Option<Written> {
            if self.interfere.load(Ordering::SeqCst) > 0 {
                self.interfere.fetch_sub(1, Ordering::SeqCst);
                let e = CacheEntry {
                    value: Bytes::from_static(b"0"),
                    version: self.version(),
                    expiry_ms: None,
                };
                self.map.lock().unwrap().insert(key.clone(), e);
            }
            let cur = self.live(key);
            match if_version {
                Some(v) if v != version_of(&cur) => Some(Written::Conflict(cur)),
                _ => None,
            }
        }
    }

    impl Store for Mem {
        async fn get(&self, key: Bytes) -> Result<Option<CacheEntry>, Reply> {
            self.trip().await;
            Ok(self.live(&key))
        }

        async fn put(
            &self,
            key: Bytes,
            value: Bytes,
            ttl_ms: Option<u64>,
            if_version: Option<u64>,
        ) -> Result<Written, Reply> {
            self.trip().await;
            if let Some(c) = self.check(&key, if_version) {
                return Ok(c);
            }
            let now = self.now.load(Ordering::SeqCst);
            let version = self.version();
            let ttl = ttl_ms.or(self.default_ttl_ms);
            self.map.lock().unwrap().insert(
                key,
                CacheEntry {
                    value,
                    version,
                    expiry_ms: ttl.map(|t| now + t as i64),
                },
            );
            Ok(Written::Done(version))
        }

        async fn delete(&self, key: Bytes, if_version: Option<u64>) -> Result<Written, Reply> {
            if let Some(c) = self.check(&key, if_version) {
                return Ok(c);
            }
            self.map.lock().unwrap().remove(&key);
            Ok(Written::Done(self.version()))
        }

        async fn shards(&self) -> Result<u32, Reply> {
            Ok(1)
        }

        async fn scan(
            &self,
            _shard: u32,
            after: Option<Bytes>,
            count: usize,
        ) -> Result<(Vec<Bytes>, Option<Bytes>), Reply> {
            let mut keys: Vec<Bytes> = self
                .map
                .lock()
                .unwrap()
                .keys()
                .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                .cloned()
                .collect();
            keys.sort();
            keys.retain(|k| self.live(k).is_some());
            let more = keys.len() > count;
            keys.truncate(count);
            let next = if more { keys.last().cloned() } else { None };
            Ok((keys, next))
        }

        async fn backoff(&self, _attempt: usize) {}
    }

    async fn run(m: &Mem, words: &[&str]) -> Reply {
        let args: Vec<Bytes> = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        match parse(&args) {
            Ok(c) => exec(m, c, m.now.load(Ordering::SeqCst))
                .await
                .expect("a data command"),
            Err(r) => r,
        }
    }

    fn bulk(s: &str) -> Reply {
        Reply::text(s)
    }

    #[tokio::test]
    async fn set_get_and_their_conditions() {
        let m = Mem::default();
        assert_eq!(run(&m, &["GET", "k"]).await, Reply::Nil);
        assert_eq!(run(&m, &["SET", "k", "v1"]).await, Reply::ok());
        assert_eq!(run(&m, &["SET", "k", "v2", "NX"]).await, Reply::Nil);
        assert_eq!(run(&m, &["SET", "k", "v2", "NX", "GET"]).await, bulk("v1"));
        assert_eq!(run(&m, &["SET", "k", "v2", "XX", "GET"]).await, bulk("v1"));
        assert_eq!(run(&m, &["GET", "k"]).await, bulk("v2"));
        assert_eq!(run(&m, &["SET", "nokey", "v", "XX"]).await, Reply::Nil);
        assert_eq!(run(&m, &["GET", "nokey"]).await, Reply::Nil);
        assert_eq!(run(&m, &["SETNX", "k", "x"]).await, Reply::Int(0));
        assert_eq!(run(&m, &["SETNX", "n", "x"]).await, Reply::Int(1));
        assert_eq!(run(&m, &["GETSET", "n", "y"]).await, bulk("x"));
        assert_eq!(run(&m, &["GETDEL", "n"]).await, bulk("y"));
        assert_eq!(run(&m, &["GETDEL", "n"]).await, Reply::Nil);
        assert_eq!(run(&m, &["MSET", "a", "1", "b", "2"]).await, Reply::ok());
        assert_eq!(
            run(&m, &["MGET", "a", "zz", "b"]).await,
            Reply::Array(vec![bulk("1"), Reply::Nil, bulk("2")])
        );
        assert_eq!(run(&m, &["EXISTS", "a", "a", "zz"]).await, Reply::Int(2));
        assert_eq!(run(&m, &["DEL", "a", "zz", "b"]).await, Reply::Int(2));
        assert_eq!(run(&m, &["TYPE", "k"]).await, Reply::Status("string"));
        assert_eq!(run(&m, &["TYPE", "a"]).await, Reply::Status("none"));
        assert_eq!(run(&m, &["STRLEN", "k"]).await, Reply::Int(2));
        assert_eq!(run(&m, &["APPEND", "k", "abc"]).await, Reply::Int(5));
        assert_eq!(run(&m, &["GET", "k"]).await, bulk("v2abc"));
    }

    #[tokio::test]
    async fn ttls_expiry_and_their_conditions() {
        let m = Mem::default();
        m.now.store(1_000_000, Ordering::SeqCst);
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(-2));
        run(&m, &["SET", "k", "v"]).await;
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(-1));
        assert_eq!(run(&m, &["EXPIRE", "k", "10", "XX"]).await, Reply::Int(0));
        assert_eq!(
            run(&m, &["EXPIRE", "k", "10", "GT"]).await,
            Reply::Int(0),
            "none is infinite"
        );
        assert_eq!(run(&m, &["EXPIRE", "k", "10", "NX"]).await, Reply::Int(1));
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(10));
        assert_eq!(run(&m, &["PTTL", "k"]).await, Reply::Int(10_000));
        assert_eq!(run(&m, &["PEXPIRE", "k", "5000", "GT"]).await, Reply::Int(0));
        assert_eq!(run(&m, &["PEXPIRE", "k", "5000", "LT"]).await, Reply::Int(1));
        // A plain SET clears the TTL; KEEPTTL keeps it; INCR keeps it.
        assert_eq!(run(&m, &["SET", "k", "w", "KEEPTTL"]).await, Reply::ok());
        assert_eq!(run(&m, &["PTTL", "k"]).await, Reply::Int(5000));
        run(&m, &["SET", "k", "1"]).await;
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(-1));
        run(&m, &["EXPIRE", "k", "100"]).await;
        run(&m, &["INCR", "k"]).await;
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(100));
        assert_eq!(run(&m, &["PERSIST", "k"]).await, Reply::Int(1));
        assert_eq!(run(&m, &["PERSIST", "k"]).await, Reply::Int(0));
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(-1));
        // Expiry is checked on every read.
        run(&m, &["SET", "e", "v", "PX", "1500"]).await;
        assert_eq!(
            run(&m, &["TTL", "e"]).await,
            Reply::Int(2),
            "rounded as Redis rounds"
        );
        m.now.fetch_add(1_500, Ordering::SeqCst);
        assert_eq!(run(&m, &["GET", "e"]).await, Reply::Nil);
        assert_eq!(run(&m, &["EXISTS", "e"]).await, Reply::Int(0));
        // An expiry in the past deletes.
        run(&m, &["SET", "p", "v"]).await;
        assert_eq!(run(&m, &["EXPIREAT", "p", "1"]).await, Reply::Int(1));
        assert_eq!(run(&m, &["GET", "p"]).await, Reply::Nil);
        assert_eq!(run(&m, &["SET", "p", "v", "PXAT", "5"]).await, Reply::ok());
        assert_eq!(run(&m, &["GET", "p"]).await, Reply::Nil);
        run(&m, &["SET", "g", "v"]).await;
        assert_eq!(run(&m, &["GETEX", "g", "EX", "7"]).await, bulk("v"));
        assert_eq!(run(&m, &["TTL", "g"]).await, Reply::Int(7));
        assert_eq!(run(&m, &["GETEX", "g", "PERSIST"]).await, bulk("v"));
        assert_eq!(run(&m, &["TTL", "g"]).await, Reply::Int(-1));
    }

    #[tokio::test]
    async fn counters_and_their_errors() {
        let m = Mem::default();
        assert_eq!(run(&m, &["INCR", "n"]).await, Reply::Int(1));
        assert_eq!(run(&m, &["INCRBY", "n", "41"]).await, Reply::Int(42));
        assert_eq!(run(&m, &["DECR", "n"]).await, Reply::Int(41));
        assert_eq!(run(&m, &["DECRBY", "n", "50"]).await, Reply::Int(-9));
        run(&m, &["SET", "big", "9223372036854775807"]).await;
        assert_eq!(
            run(&m, &["INCR", "big"]).await,
            Reply::err("ERR increment or decrement would overflow")
        );
        run(&m, &["SET", "s", "abc"]).await;
        assert_eq!(run(&m, &["INCR", "s"]).await, not_int());
        assert_eq!(
            run(&m, &["GET", "s"]).await,
            bulk("abc"),
            "a refused INCR writes nothing"
        );
        assert_eq!(run(&m, &["INCRBYFLOAT", "f", "10.5"]).await, bulk("10.5"));
        assert_eq!(run(&m, &["INCRBYFLOAT", "f", "0.5"]).await, bulk("11"));
        assert_eq!(
            run(&m, &["INCRBYFLOAT", "s", "1"]).await,
            Reply::err("ERR value is not a valid float")
        );
    }

    #[tokio::test]
    async fn a_write_that_lands_between_the_read_and_the_cas_is_never_lost() {
        let m = Mem::default();
        run(&m, &["SET", "n", "5"]).await;
        // Two other writers set the key to "0" behind the next two CASes.
        m.interfere.store(2, Ordering::SeqCst);
        assert_eq!(
            run(&m, &["INCR", "n"]).await,
            Reply::Int(1),
            "read again after each conflict"
        );
        // A key that changes under every try gives up with TRYAGAIN.
        m.interfere.store(usize::MAX, Ordering::SeqCst);
        assert_eq!(run(&m, &["INCR", "n"]).await, busy());
    }

    #[tokio::test]
    async fn felix_cas_and_version() {
        let m = Mem::default();
        assert_eq!(run(&m, &["FELIX.VERSION", "k"]).await, Reply::Nil);
        let Reply::Int(v1) = run(&m, &["FELIX.CAS", "k", "0", "a"]).await else {
            panic!("CAS on an absent key with version 0 writes")
        };
        assert_eq!(run(&m, &["FELIX.VERSION", "k"]).await, Reply::Int(v1));
        assert_eq!(run(&m, &["FELIX.CAS", "k", "0", "b"]).await, Reply::Nil);
        assert_eq!(
            run(&m, &["FELIX.CAS", "k", &(v1 + 7).to_string(), "b"]).await,
            Reply::Nil
        );
        assert!(matches!(run(&m, &["FELIX.CAS", "k", &v1.to_string(), "b"]).await, Reply::Int(v) if v > v1));
        assert_eq!(run(&m, &["GET", "k"]).await, bulk("b"));
    }

    #[tokio::test]
    async fn multi_key_commands_ask_their_keys_at_once_with_redis_answers() {
        let m = Mem::default();
        let mut mset = vec!["MSET".to_owned()];
        for i in 0..100 {
            mset.extend([format!("k{i}"), i.to_string()]);
        }
        mset.extend(["k7".to_owned(), "last".to_owned()]);
        let words: Vec<&str> = mset.iter().map(String::as_str).collect();
        assert_eq!(run(&m, &words).await, Reply::ok());
        assert_eq!(
            m.most_in_flight.load(Ordering::SeqCst),
            KEYS_AT_ONCE_MAX,
            "MSET wrote its keys at once, at most KEYS_AT_ONCE_MAX"
        );
        assert_eq!(
            run(&m, &["GET", "k7"]).await,
            bulk("last"),
            "the last value given stands"
        );
        assert_eq!(run(&m, &["GET", "k8"]).await, bulk("8"));

        m.most_in_flight.store(0, Ordering::SeqCst);
        let Reply::Array(got) = run(&m, &["MGET", "k1", "nope", "k2", "k7"]).await else {
            panic!("MGET answers an array")
        };
        assert_eq!(
            got,
            vec![bulk("1"), Reply::Nil, bulk("2"), bulk("last")],
            "in the order asked"
        );
        assert_eq!(m.most_in_flight.load(Ordering::SeqCst), 4);
        assert_eq!(run(&m, &["EXISTS", "k1", "k1", "nope"]).await, Reply::Int(2));
        assert_eq!(run(&m, &["DEL", "k1", "k1", "k2", "nope"]).await, Reply::Int(2));
        assert_eq!(run(&m, &["EXISTS", "k1", "k2", "k3"]).await, Reply::Int(1));
    }

    #[tokio::test]
    async fn a_cache_default_ttl_applies_to_writes_without_one() {
        let m = Mem {
            default_ttl_ms: Some(60_000),
            ..Mem::default()
        };
        run(&m, &["SET", "k", "v"]).await;
        assert_eq!(run(&m, &["TTL", "k"]).await, Reply::Int(60));
    }
}
