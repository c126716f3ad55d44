//! Walking a cache's keys: `SCAN` (one page per call), `KEYS`, `DBSIZE`
//! and `FLUSHDB`, over a [`Store`]'s pages of one shard at a time.
//!
//! A Redis cursor is a number, but where a Felix walk stands is a shard and
//! a key (any bytes). So the door parks positions in [`Cursors`] and hands
//! out random numbers for them: a cursor is good on the door that gave it,
//! for the cache and the token it was given to, until [`CURSORS_MAX`] newer
//! ones (or [`CURSOR_KEY_BYTES_MAX`] of their keys) push it out. A cursor
//! no longer there is answered `ERR invalid cursor`; the walk starts again
//! from 0.
//!
//! A walk keeps Redis's promise: a key there from its start to its end is
//! returned (here exactly once, as pages run in key order); one written
//! or deleted meanwhile may or may not be.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use felix_client::wire::message::SCAN_KEYS_MAX;

use crate::codec::Reply;
use crate::exec::Store;

/// Cursors one door keeps parked; past it the oldest is forgotten.
pub const CURSORS_MAX: usize = 65_536;
/// Bytes of keys the parked cursors hold at most (a position is a key of
/// up to 64 KiB); past it the oldest are forgotten.
pub const CURSOR_KEY_BYTES_MAX: usize = 64 << 20;
/// Keys `KEYS` answers with at most; past it, it asks for `SCAN`.
pub const KEYS_REPLY_MAX: usize = 100_000;
/// Cursor numbers stay below 2^53, so clients that read them as a double
/// (JavaScript's) send back the number they were given.
const CURSOR_BITS: u32 = 53;

/// Where a walk stands: the next page is shard `shard`'s after `after`
/// (from its first key when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub shard: u32,
    pub after: Option<Bytes>,
}

impl Position {
    pub const START: Position = Position {
        shard: 0,
        after: None,
    };
}

struct Parked {
    cache: String,
    owner: u64,
    at: Position,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, Parked>,
    /// Oldest first.
    order: VecDeque<u64>,
    key_bytes: usize,
}

/// The positions of one door's walks under way, by cursor number.
#[derive(Default)]
pub struct Cursors {
    table: Mutex<Table>,
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.lock().expect("cursors lock");
        write!(f, "Cursors({} parked)", t.by_id.len())
    }
}

impl Cursors {
    /// Parks `at` for `owner`'s walk of `cache`; its cursor number (never 0).
    pub fn park(&self, cache: &str, owner: u64, at: Position) -> u64 {
        let mut t = self.table.lock().expect("cursors lock");
        let bytes = at.after.as_ref().map_or(0, Bytes::len);
        while t.by_id.len() >= CURSORS_MAX || t.key_bytes + bytes > CURSOR_KEY_BYTES_MAX {
            let Some(old) = t.order.pop_front() else {
                break;
            };
            if let Some(p) = t.by_id.remove(&old) {
                t.key_bytes -= p.at.after.map_or(0, |k| k.len());
            }
        }
        let id = loop {
            let id = rand::random::<u64>() & ((1 << CURSOR_BITS) - 1);
            if id != 0 && !t.by_id.contains_key(&id) {
                break id;
            }
        };
        t.key_bytes += bytes;
        t.order.push_back(id);
        t.by_id.insert(
            id,
            Parked {
                cache: cache.to_owned(),
                owner,
                at,
            },
        );
        id
    }

    /// Where cursor `id` of `owner`'s walk of `cache` stands; `None` if it
    /// was never given for them or was forgotten. A cursor stays usable
    /// after use, so a client retrying a call it saw no answer to goes on.
    pub fn find(&self, id: u64, cache: &str, owner: u64) -> Option<Position> {
        let t = self.table.lock().expect("cursors lock");
        t.by_id
            .get(&id)
            .filter(|p| p.cache == cache && p.owner == owner)
            .map(|p| p.at.clone())
    }
}

/// One page from `at` (about `count` keys), and where the walk goes on
/// (`None`: it is over).
pub async fn page<S: Store>(
    store: &S,
    at: Position,
    count: usize,
) -> Result<(Vec<Bytes>, Option<Position>), Reply> {
    let shards = store.shards().await?;
    if at.shard >= shards {
        return Ok((Vec::new(), None));
    }
    let (keys, next) = store
        .scan(at.shard, at.after, count.clamp(1, SCAN_KEYS_MAX))
        .await?;
    let on = match next {
        Some(k) => Some(Position {
            shard: at.shard,
            after: Some(k),
        }),
        None if at.shard + 1 < shards => Some(Position {
            shard: at.shard + 1,
            after: None,
        }),
        None => None,
    };
    Ok((keys, on))
}

/// `SCAN`: one page, filtered by `MATCH` and `TYPE` after it is read (as
/// Redis does, so a page may come back empty with the walk not over).
#[allow(clippy::too_many_arguments)]
pub async fn scan<S: Store>(
    store: &S,
    cursors: &Cursors,
    cache: &str,
    owner: u64,
    cursor: u64,
    pattern: Option<&[u8]>,
    count: usize,
    kind: Option<&[u8]>,
) -> Reply {
    let at = if cursor == 0 {
        Position::START
    } else {
        match cursors.find(cursor, cache, owner) {
            Some(p) => p,
            None => return Reply::err("ERR invalid cursor"),
        }
    };
    let (keys, on) = match page(store, at, count).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let next = on.map_or(0, |p| cursors.park(cache, owner, p));
    // Every value of a cache is a string.
    let strings = kind.is_none_or(|k| k.eq_ignore_ascii_case(b"string"));
    let keys = keys
        .into_iter()
        .filter(|k| strings && pattern.is_none_or(|p| matches(p, k)))
        .map(Reply::Bulk)
        .collect();
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(keys),
    ])
}

/// `DBSIZE`: the live keys, counted by walking them all (Redis keeps a
/// count; a Felix cache does not, so this takes time in proportion).
pub async fn dbsize<S: Store>(store: &S) -> Reply {
    let mut at = Some(Position::START);
    let mut n = 0i64;
    while let Some(p) = at {
        match page(store, p, SCAN_KEYS_MAX).await {
            Ok((keys, on)) => {
                n += keys.len() as i64;
                at = on;
            }
            Err(r) => return r,
        }
    }
    Reply::Int(n)
}

/// `KEYS pattern`: every matching key, up to [`KEYS_REPLY_MAX`].
pub async fn keys<S: Store>(store: &S, pattern: &[u8]) -> Reply {
    let mut at = Some(Position::START);
    let mut out = Vec::new();
    while let Some(p) = at {
        match page(store, p, SCAN_KEYS_MAX).await {
            Ok((keys, on)) => {
                out.extend(keys.into_iter().filter(|k| matches(pattern, k)).map(Reply::Bulk));
                if out.len() > KEYS_REPLY_MAX {
                    return Reply::err(format!(
                        "ERR more than {KEYS_REPLY_MAX} keys match; walk them with SCAN"
                    ));
                }
                at = on;
            }
            Err(r) => return r,
        }
    }
    Reply::Array(out)
}

/// `FLUSHDB`: deletes every key it finds, page by page, each delete a
/// write of the cache's durability (so the token needs write access). A
/// key written while it runs, behind where it stands, stays.
pub async fn flushdb<S: Store>(store: &S) -> Reply {
    let mut at = Some(Position::START);
    while let Some(p) = at {
        match page(store, p, SCAN_KEYS_MAX).await {
            Ok((keys, on)) => {
                for k in keys {
                    if let Err(r) = store.delete(k, None).await {
                        return r;
                    }
                }
                at = on;
            }
            Err(r) => return r,
        }
    }
    Reply::ok()
}

/// Redis's glob for keys: `*`, `?`, `[abc]`, `[^a-z]` and `\` escapes;
/// case counts. Linear in practice: a `*` that fails is retried one byte
/// further on, never by backtracking into earlier stars.
pub fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // After the last `*`: the pattern index past it, the string index it
    // was last tried at.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = if pi < p.len() { one(p, pi, s[si]) } else { Step::No };
        match step {
            Step::Star => {
                star = Some((pi + 1, si));
                pi += 1;
            }
            Step::Yes(next) => {
                pi = next;
                si += 1;
            }
            Step::No => match star {
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    pi = sp;
                    si = ss + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

enum Step {
    Star,
    /// Matched one byte; the pattern goes on here.
    Yes(usize),
    No,
}

/// Whether the pattern element at `pi` matches byte `c`.
fn one(p: &[u8], pi: usize, c: u8) -> Step {
    match p[pi] {
        b'*' => Step::Star,
        b'?' => Step::Yes(pi + 1),
        b'\\' if pi + 1 < p.len() => {
            if p[pi + 1] == c {
                Step::Yes(pi + 2)
            } else {
                Step::No
            }
        }
        b'[' => {
            let mut i = pi + 1;
            let not = p.get(i) == Some(&b'^');
            if not {
                i += 1;
            }
            let mut hit = false;
            // An unclosed class ends with the pattern, as in Redis.
            while i < p.len() {
                if p[i] == b']' {
                    i += 1;
                    break;
                }
                if p[i] == b'\\' && i + 1 < p.len() {
                    hit |= p[i + 1] == c;
                    i += 2;
                } else if i + 2 < p.len() && p[i + 1] == b'-' {
                    let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
                    hit |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    hit |= p[i] == c;
                    i += 1;
                }
            }
            if hit != not {
                Step::Yes(i)
            } else {
                Step::No
            }
        }
        lit => {
            if lit == c {
                Step::Yes(pi + 1)
            } else {
                Step::No
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Written;
    use felix_client::wire::CacheEntry;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn globs_as_redis_reads_them() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:1"));
        assert!(!m("user:*", "User:1"), "case counts");
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "a range given backwards");
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("[\\]]", "]"));
        assert!(!m("[]", "a"), "an empty class matches nothing");
        assert!(m("a[bc", "ab"), "an unclosed class ends with the pattern");
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a*", "a") && !m("a*b", "a"));
        assert!(m("ends\\", "ends\\"), "a trailing backslash is itself");
        // Many stars over a long string that does not match: linear, not
        // exponential (this would not finish otherwise).
        let long = "a".repeat(10_000);
        assert!(!matches(b"*a*a*a*a*a*a*a*a*a*a*a*b", long.as_bytes()));
    }

    #[test]
    fn cursors_are_bound_to_their_cache_and_owner_and_old_ones_are_forgotten() {
        let c = Cursors::default();
        let at = Position {
            shard: 2,
            after: Some(Bytes::from_static(b"k")),
        };
        let id = c.park("sessions", 7, at.clone());
        assert_ne!(id, 0);
        assert!(id < 1 << CURSOR_BITS);
        assert_eq!(c.find(id, "sessions", 7), Some(at.clone()));
        assert_eq!(c.find(id, "sessions", 7), Some(at.clone()), "usable again");
        assert_eq!(c.find(id, "other", 7), None, "another cache");
        assert_eq!(c.find(id, "sessions", 8), None, "another token");
        for _ in 0..CURSORS_MAX {
            c.park("sessions", 7, Position::START);
        }
        assert_eq!(c.find(id, "sessions", 7), None, "pushed out by newer ones");
        let t = c.table.lock().unwrap();
        assert_eq!(t.by_id.len(), CURSORS_MAX);
        assert_eq!(t.key_bytes, 0);
    }

    #[test]
    fn parked_keys_are_bounded_in_bytes() {
        let c = Cursors::default();
        let big = Bytes::from(vec![b'k'; 64 << 10]);
        let first = c.park(
            "c",
            1,
            Position {
                shard: 0,
                after: Some(big.clone()),
            },
        );
        for _ in 0..(CURSOR_KEY_BYTES_MAX / big.len()) {
            c.park(
                "c",
                1,
                Position {
                    shard: 0,
                    after: Some(big.clone()),
                },
            );
        }
        assert_eq!(c.find(first, "c", 1), None);
        assert!(c.table.lock().unwrap().key_bytes <= CURSOR_KEY_BYTES_MAX);
    }

    /// A cache of several shards, keys placed by their first byte.
    struct Sharded {
        shards: Vec<Mutex<BTreeMap<Bytes, Bytes>>>,
        scans: AtomicUsize,
    }

    impl Sharded {
        fn new(n: usize, keys: &[&str]) -> Sharded {
            let s = Sharded {
                shards: (0..n).map(|_| Mutex::new(BTreeMap::new())).collect(),
                scans: AtomicUsize::new(0),
            };
            for k in keys {
                s.shard_of(k.as_bytes())
                    .insert(Bytes::copy_from_slice(k.as_bytes()), Bytes::from_static(b"v"));
            }
            s
        }
        fn shard_of(&self, k: &[u8]) -> std::sync::MutexGuard<'_, BTreeMap<Bytes, Bytes>> {
            self.shards[k[0] as usize % self.shards.len()].lock().unwrap()
        }
        fn all(&self) -> Vec<Bytes> {
            let mut v: Vec<Bytes> = self
                .shards
                .iter()
                .flat_map(|s| s.lock().unwrap().keys().cloned().collect::<Vec<_>>())
                .collect();
            v.sort();
            v
        }
    }

    impl Store for Sharded {
        async fn get(&self, key: Bytes) -> Result<Option<CacheEntry>, Reply> {
            Ok(self.shard_of(&key).get(&key).map(|v| CacheEntry {
                value: v.clone(),
                version: 1,
                expiry_ms: None,
            }))
        }
        async fn put(
            &self,
            key: Bytes,
            value: Bytes,
            _: Option<u64>,
            _: Option<u64>,
        ) -> Result<Written, Reply> {
            self.shard_of(&key.clone()).insert(key, value);
            Ok(Written::Done(1))
        }
        async fn delete(&self, key: Bytes, _: Option<u64>) -> Result<Written, Reply> {
            self.shard_of(&key.clone()).remove(&key);
            Ok(Written::Done(1))
        }
        async fn shards(&self) -> Result<u32, Reply> {
            Ok(self.shards.len() as u32)
        }
        async fn scan(
            &self,
            shard: u32,
            after: Option<Bytes>,
            count: usize,
        ) -> Result<(Vec<Bytes>, Option<Bytes>), Reply> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            let m = self.shards[shard as usize].lock().unwrap();
            let mut keys: Vec<Bytes> = m
                .keys()
                .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                .take(count + 1)
                .cloned()
                .collect();
            let more = keys.len() > count;
            keys.truncate(count);
            Ok((keys.clone(), if more { keys.last().cloned() } else { None }))
        }
        async fn backoff(&self, _attempt: usize) {}
    }

    fn texts(r: &Reply) -> Vec<String> {
        match r {
            Reply::Array(v) => v
                .iter()
                .map(|k| match k {
                    Reply::Bulk(b) => String::from_utf8(b.to_vec()).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// Runs a SCAN walk to its end; the keys and the calls it took.
    async fn walk(s: &Sharded, c: &Cursors, pattern: Option<&str>, count: usize) -> (Vec<String>, usize) {
        let (mut cursor, mut got, mut calls) = (0u64, Vec::new(), 0);
        loop {
            let r = scan(s, c, "c", 1, cursor, pattern.map(str::as_bytes), count, None).await;
            calls += 1;
            let Reply::Array(parts) = r else { panic!("{r:?}") };
            let Reply::Bulk(next) = &parts[0] else { panic!() };
            got.extend(texts(&parts[1]));
            cursor = std::str::from_utf8(next).unwrap().parse().unwrap();
            if cursor == 0 {
                return (got, calls);
            }
            assert!(calls < 1_000, "the walk did not end");
        }
    }

    #[tokio::test]
    async fn a_scan_walk_returns_every_key_once_over_every_shard() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("{}key{i}", (b'a' + i % 7) as char))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = Sharded::new(4, &refs);
        let c = Cursors::default();
        let (mut got, calls) = walk(&s, &c, None, 3).await;
        got.sort();
        let want: Vec<String> = s
            .all()
            .iter()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        assert_eq!(got, want, "every key once");
        assert!(calls >= 40 / 3, "pages of about 3: {calls} calls");
        // MATCH filters each page; the walk still covers the whole cache.
        let (got, _) = walk(&s, &c, Some("a*"), 5).await;
        assert!(
            !got.is_empty() && got.iter().all(|k| k.starts_with('a')),
            "{got:?}"
        );
        assert_eq!(got.len(), want.iter().filter(|k| k.starts_with('a')).count());
        // TYPE: every value is a string.
        let r = scan(&s, &c, "c", 1, 0, None, 100, Some(b"hash")).await;
        let Reply::Array(parts) = r else { panic!() };
        assert_eq!(parts[1], Reply::Array(Vec::new()));
        // A cursor of another cache, or one never given: refused.
        assert_eq!(
            scan(&s, &c, "c", 1, 12345, None, 10, None).await,
            Reply::err("ERR invalid cursor")
        );
    }

    #[tokio::test]
    async fn dbsize_keys_and_flushdb_cover_every_shard() {
        let names: Vec<String> = (0..2_500)
            .map(|i| format!("{}k{i}", (b'a' + (i % 5) as u8) as char))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = Sharded::new(3, &refs);
        assert_eq!(dbsize(&s).await, Reply::Int(2_500));
        let b = keys(&s, b"b*").await;
        assert_eq!(texts(&b).len(), 500);
        assert!(texts(&b).iter().all(|k| k.starts_with('b')));
        assert_eq!(flushdb(&s).await, Reply::ok());
        assert_eq!(dbsize(&s).await, Reply::Int(0));
        assert!(s.all().is_empty());
    }
}
