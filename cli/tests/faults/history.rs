//! What the clients saw, and the checks that turn it into anomalies.
//!
//! Every operation is recorded with its invocation and completion times
//! (µs since the run began) and one of three outcomes: ok (with what it
//! returned), fail (the broker certainly did not apply it) or unknown (a
//! timeout or a lost connection: it may have been applied, now or later).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use felix_client::wire::ErrorReply;
use felix_client::ClientError;

use crate::linear;

/// Microseconds since the run began.
#[derive(Clone, Copy)]
pub struct RunClock(pub Instant);

impl RunClock {
    pub fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

#[derive(Debug, Clone)]
pub enum Outcome<T> {
    Ok(T),
    Fail(String),
    Unknown(String),
}

/// Whether an error means the request certainly took no effect: it was
/// refused before anything was written, or never sent. Timeouts, lost
/// connections and `NotLeader` after a write began are unknown: the entry
/// may sit in a deposed leader's log and still be committed.
pub fn definite(e: &ClientError) -> bool {
    match e {
        ClientError::Broker(r) => matches!(
            r,
            ErrorReply::UnknownStream(_)
                | ErrorReply::Unauthorized(_)
                | ErrorReply::Forbidden(_)
                | ErrorReply::InvalidRequest(_)
                | ErrorReply::Overloaded { .. }
        ),
        ClientError::Connect { .. }
        | ClientError::CircuitOpen(_)
        | ClientError::Encode(_)
        | ClientError::Record(_)
        | ClientError::Invalid(_)
        | ClientError::UnknownStream(_) => true,
        // Retries exhausted included: the client does not say whether an
        // earlier attempt was delivered, so the outcome is unknown.
        _ => false,
    }
}

pub fn outcome<T>(r: Result<T, &ClientError>) -> Outcome<T> {
    match r {
        Ok(t) => Outcome::Ok(t),
        Err(e) if definite(e) => Outcome::Fail(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// Anomalies by class, with the first few of each described.
#[derive(Default, Debug)]
pub struct Anomalies {
    pub by_class: BTreeMap<&'static str, (usize, Vec<String>)>,
}

/// Descriptions kept per class (the count is exact).
const EXAMPLES_MAX: usize = 5;

impl Anomalies {
    pub fn add(&mut self, class: &'static str, detail: String) {
        let e = self.by_class.entry(class).or_default();
        e.0 += 1;
        if e.1.len() < EXAMPLES_MAX {
            e.1.push(detail);
        }
    }

    pub fn total(&self) -> usize {
        self.by_class.values().map(|(n, _)| n).sum()
    }
}

// ---- streams ----

#[derive(Debug, Clone)]
pub struct Send {
    pub value: String,
    pub outcome: Outcome<u64>,
}

#[derive(Default)]
pub struct StreamHistory {
    pub sends: Vec<Send>,
    /// Per reader, what it was delivered, in order: (offset, value).
    pub reads: BTreeMap<u64, Vec<(u64, String)>>,
}

/// Checks a stream's history against each replica's final records of its
/// shard (offset, value), every replica stopped and caught up.
pub fn check_stream(h: &StreamHistory, replicas: &[Vec<(u64, String)>], a: &mut Anomalies) {
    // Replicas: one offset, one value, and the same records on each.
    for (i, r) in replicas.iter().enumerate().skip(1) {
        if r != &replicas[0] {
            let diff = r.iter().zip(&replicas[0]).find(|(x, y)| x != y).map_or_else(
                || format!("lengths {} and {}", r.len(), replicas[0].len()),
                |(x, y)| format!("{x:?} against {y:?}"),
            );
            a.add(
                "replicas-diverge",
                format!("replica {i} differs from replica 0: {diff}"),
            );
        }
    }
    let log = &replicas[0];
    let at: BTreeMap<u64, &str> = log.iter().map(|(o, v)| (*o, v.as_str())).collect();
    let mut where_: HashMap<&str, Vec<u64>> = HashMap::new();
    for (o, v) in log {
        where_.entry(v.as_str()).or_default().push(*o);
    }
    for (v, os) in &where_ {
        if os.len() > 1 {
            a.add("duplicate", format!("{v} at offsets {os:?}"));
        }
    }
    let sent: HashSet<&str> = h.sends.iter().map(|s| s.value.as_str()).collect();
    for (o, v) in log {
        if !sent.contains(v.as_str()) {
            a.add("phantom", format!("{v} at offset {o} was never sent"));
        }
    }
    for s in &h.sends {
        match &s.outcome {
            Outcome::Ok(o) => match at.get(o) {
                Some(v) if *v == s.value => {}
                Some(other) => a.add(
                    "lost-acknowledged",
                    format!("{} acknowledged at offset {o}, which holds {other}", s.value),
                ),
                None => a.add(
                    "lost-acknowledged",
                    format!("{} acknowledged at offset {o}, which no replica holds", s.value),
                ),
            },
            Outcome::Fail(why) => {
                if where_.contains_key(s.value.as_str()) {
                    a.add(
                        "failed-write-present",
                        format!("{} failed ({why}) but is stored", s.value),
                    );
                }
            }
            Outcome::Unknown(_) => {}
        }
    }
    let failed: HashSet<&str> = h
        .sends
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Fail(_)))
        .map(|s| s.value.as_str())
        .collect();
    for (reader, seen) in &h.reads {
        let mut last: Option<u64> = None;
        for (o, v) in seen {
            if last.is_some_and(|l| *o <= l) {
                a.add(
                    "poll-not-monotonic",
                    format!("reader {reader}: offset {o} after {last:?}"),
                );
            }
            last = Some(*o);
            if at.get(o) != Some(&v.as_str()) {
                a.add(
                    "read-disagrees-with-log",
                    format!("reader {reader} read {v} at {o}; the log has {:?}", at.get(o)),
                );
            }
            if failed.contains(v.as_str()) {
                a.add(
                    "failed-write-read",
                    format!("reader {reader} read {v}, whose publish failed"),
                );
            }
        }
    }
}

// ---- consumer groups ----

#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer: u64,
    pub offset: u64,
    pub deliveries: u32,
    pub invoke_us: u64,
}

#[derive(Debug, Clone)]
pub struct AckOp {
    pub offset: u64,
    pub done_us: u64,
    pub ok: bool,
}

#[derive(Default)]
pub struct GroupHistory {
    /// Acknowledged publishes: offset → value.
    pub published: BTreeMap<u64, String>,
    pub deliveries: Vec<Delivery>,
    pub acks: Vec<AckOp>,
    pub nacks: usize,
    /// The dead-letter stream at the end: (source offset, deliveries).
    pub dead: Vec<(u64, u32)>,
    /// Failed fetches, acks and nacks by error, for the report.
    pub errors: BTreeMap<String, usize>,
    /// Consumer calls under way: consumer → when the call began (run µs).
    /// A call the client is still retrying (a shard between leaders) is not
    /// an idle group, so the drain waits for it.
    pub in_flight: BTreeMap<u64, u64>,
}

impl GroupHistory {
    pub fn error(&mut self, what: &str, e: &ClientError) {
        let text: String = format!("{what}: {e}").chars().take(160).collect();
        *self.errors.entry(text).or_default() += 1;
    }
}

pub fn check_group(h: &GroupHistory, max_deliveries: u32, a: &mut Anomalies) {
    let mut acked_at: HashMap<u64, u64> = HashMap::new();
    for k in h.acks.iter().filter(|k| k.ok) {
        let e = acked_at.entry(k.offset).or_insert(k.done_us);
        *e = (*e).min(k.done_us);
    }
    for d in &h.deliveries {
        if let Some(t) = acked_at.get(&d.offset) {
            if d.invoke_us > *t {
                a.add(
                    "acked-redelivered",
                    format!(
                        "offset {} delivered to consumer {} (delivery {}) {} µs after its ack was answered",
                        d.offset,
                        d.consumer,
                        d.deliveries,
                        d.invoke_us - t
                    ),
                );
            }
        }
        if d.deliveries > max_deliveries {
            a.add(
                "delivered-past-max",
                format!(
                    "offset {} delivered a {}th time (max {max_deliveries})",
                    d.offset, d.deliveries
                ),
            );
        }
    }
    let mut dead: HashMap<u64, usize> = HashMap::new();
    for (o, n) in &h.dead {
        *dead.entry(*o).or_default() += 1;
        if *n < max_deliveries {
            a.add(
                "dead-lettered-early",
                format!("offset {o} dead-lettered after {n} deliveries"),
            );
        }
    }
    for (o, n) in &dead {
        if *n > 1 {
            a.add(
                "dead-lettered-twice",
                format!("offset {o} is in the dead-letter stream {n} times"),
            );
        }
    }
    for o in h.published.keys() {
        if !acked_at.contains_key(o) && !dead.contains_key(o) {
            // Where it got to, for the report: each delivery (consumer,
            // count, ms into the run) and the acks tried.
            let got: Vec<String> = h
                .deliveries
                .iter()
                .filter(|d| d.offset == *o)
                .map(|d| format!("c{}#{}@{}ms", d.consumer % 1000, d.deliveries, d.invoke_us / 1000))
                .collect();
            let tried = h.acks.iter().filter(|k| k.offset == *o).count();
            a.add(
                "never-completed",
                format!(
                    "offset {o} was neither acked nor dead-lettered by the end (deliveries {got:?}, acks tried {tried})"
                ),
            );
        }
    }
}

// ---- cache ----

#[derive(Default)]
pub struct CacheHistory {
    pub ops: BTreeMap<String, Vec<linear::Op>>,
}

/// Checks each key; returns how many keys were checked.
pub fn check_cache(h: &CacheHistory, a: &mut Anomalies) -> usize {
    for (key, ops) in &h.ops {
        match linear::check(ops) {
            linear::Verdict::Linearizable => {}
            linear::Verdict::NotLinearizable(why) => a.add(
                "cache-not-linearizable",
                format!("key {key} ({} operations): {why}", ops.len()),
            ),
            linear::Verdict::Unknown => a.add(
                "cache-unchecked",
                format!("key {key}: more than {} states", linear::SEARCH_STATES_MAX),
            ),
        }
    }
    h.ops.len()
}

// ---- TTLs under clock skew ----

#[derive(Debug, Clone)]
pub struct TtlPut {
    pub value: String,
    pub ttl_ms: u64,
    pub invoke_us: u64,
    pub done_us: u64,
}

#[derive(Debug, Clone)]
pub struct TtlGet {
    pub key: String,
    pub invoke_us: u64,
    pub done_us: u64,
    pub value: Option<String>,
}

#[derive(Default)]
pub struct TtlHistory {
    /// Each key is put once (acknowledged) and never written again.
    pub puts: HashMap<String, TtlPut>,
    pub gets: Vec<TtlGet>,
}

/// With every broker's clock within `skew_ms` of the truth, a key put
/// with a TTL is visible until `ttl - 2·skew` after its put completed and
/// gone from `ttl + 2·skew` after the put began.
pub fn check_ttl(h: &TtlHistory, skew_ms: u64, a: &mut Anomalies) {
    let margin_us = 2 * skew_ms * 1000;
    for g in &h.gets {
        let Some(p) = h.puts.get(&g.key) else { continue };
        let ttl_us = p.ttl_ms * 1000;
        match &g.value {
            Some(v) if *v == p.value => {
                if g.invoke_us > p.done_us + ttl_us + margin_us {
                    a.add(
                        "read-after-expiry",
                        format!(
                            "{} read {} ms after its put completed (ttl {} ms, skew ≤ {skew_ms} ms)",
                            g.key,
                            (g.invoke_us - p.done_us) / 1000,
                            p.ttl_ms
                        ),
                    );
                }
            }
            Some(v) => a.add(
                "ttl-wrong-value",
                format!("{} read {v}; {} was put", g.key, p.value),
            ),
            None => {
                if g.invoke_us > p.done_us && g.done_us + margin_us < p.invoke_us + ttl_us {
                    a.add(
                        "expired-early",
                        format!(
                            "{} absent {} ms after its put began (ttl {} ms, skew ≤ {skew_ms} ms)",
                            g.key,
                            (g.done_us - p.invoke_us) / 1000,
                            p.ttl_ms
                        ),
                    );
                }
            }
        }
    }
}
