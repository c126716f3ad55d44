//! The clients: each loops until told to stop, recording every operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use felix_client::wire::Start;
use felix_client::{CasOutcome, Client, ProducerConfig, ProducerRecord, SubscribeOptions};
use rand::{Rng, SeedableRng};

use crate::history::{
    outcome, AckOp, CacheHistory, Delivery, GroupHistory, Outcome, RunClock, Send, StreamHistory, TtlGet,
    TtlHistory, TtlPut,
};
use crate::linear::{Call, Op, Ret};

#[derive(Clone)]
pub struct Ctx {
    pub clock: RunClock,
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

fn record(v: &str) -> ProducerRecord {
    let mut r = ProducerRecord::new(v.as_bytes().to_vec());
    r.shard = Some(0);
    r
}

/// Publishes unique values `p<id>-<n>` to shard 0 in windows of 10 with an
/// idempotent producer until stopped.
pub async fn produce(client: Client, stream: String, id: u64, ctx: Ctx, h: Arc<Mutex<StreamHistory>>) {
    let p = loop {
        match crate::common::eager_producer(&client, &stream).await {
            Ok(p) => break p,
            Err(_) if !ctx.stopped() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return,
        }
    };
    let mut n = 0u64;
    while !ctx.stopped() {
        let mut pending = Vec::new();
        for _ in 0..10 {
            let v = format!("p{id}-{n}");
            n += 1;
            match p.send(record(&v)).await {
                Ok(a) => pending.push((v, a)),
                Err(e) => h.lock().unwrap().sends.push(Send {
                    value: v,
                    outcome: outcome::<u64>(Err(&e)),
                }),
            }
        }
        for (v, a) in pending {
            let r = a.wait().await;
            let o = match &r {
                Ok(ack) => Outcome::Ok(ack.offset),
                Err(e) => outcome::<u64>(Err(e)),
            };
            h.lock().unwrap().sends.push(Send { value: v, outcome: o });
        }
    }
}

/// Reads shard 0 from the start, resubscribing after the last offset it
/// saw whenever the subscription fails, until stopped.
pub async fn read(client: Client, stream: String, id: u64, ctx: Ctx, h: Arc<Mutex<StreamHistory>>) {
    let mut next = 0u64;
    while !ctx.stopped() {
        let opts = SubscribeOptions {
            shards: vec![0],
            start: Start::Offset(next),
            ..SubscribeOptions::default()
        };
        let Ok(mut sub) = client.subscribe(&stream, opts).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let d = tokio::select! {
                d = sub.next() => d,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if ctx.stopped() { return; }
                    continue;
                }
            };
            match d {
                Some(Ok(d)) => {
                    let v =
                        String::from_utf8_lossy(d.record.value.as_deref().unwrap_or_default()).into_owned();
                    next = d.record.offset.0 + 1;
                    h.lock()
                        .unwrap()
                        .reads
                        .entry(id)
                        .or_default()
                        .push((d.record.offset.0, v));
                }
                _ => break,
            }
        }
    }
}

/// Publishes `n`-numbered jobs to the group's stream, one at a time,
/// while the run lasts.
pub async fn publish_jobs(
    client: Client,
    stream: String,
    ctx: Ctx,
    h: Arc<Mutex<GroupHistory>>,
    pace: Duration,
) {
    let Ok(p) = client.producer(&stream, ProducerConfig::default()).await else {
        return;
    };
    let mut n = 0u64;
    while !ctx.stopped() {
        let v = format!("job{n}");
        n += 1;
        if let Ok(ack) = p.send_wait(record(&v)).await {
            h.lock().unwrap().published.insert(ack.offset, v);
        }
        tokio::time::sleep(pace).await;
    }
}

/// The consumer group the group workload's consumers share.
pub const GROUP: &str = "workers";

/// A consumer of [`GROUP`]: leases up to 5 records for `lease_ms`, then acks
/// most, nacks some and abandons the rest to their lease. With `drain`,
/// acks everything it gets.
pub async fn consume(
    client: Client,
    stream: String,
    seed: u64,
    lease_ms: u32,
    ctx: Ctx,
    drain: Arc<AtomicBool>,
    h: Arc<Mutex<GroupHistory>>,
) {
    let g = client.group_consumer(&stream, GROUP);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !ctx.stopped() {
        let invoke_us = ctx.clock.us();
        h.lock().unwrap().in_flight.insert(g.consumer_id(), invoke_us);
        let fetched = g.fetch(5, lease_ms).await;
        h.lock().unwrap().in_flight.remove(&g.consumer_id());
        let leased = match fetched {
            Ok(l) => l.records,
            Err(e) => {
                h.lock().unwrap().error("fetch", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if leased.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let draining = drain.load(Ordering::Acquire);
        let mut acks = Vec::new();
        let mut nacks = Vec::new();
        {
            let mut h = h.lock().unwrap();
            for r in &leased {
                h.deliveries.push(Delivery {
                    consumer: g.consumer_id(),
                    offset: r.offset,
                    deliveries: r.deliveries,
                    invoke_us,
                });
                match rng.gen_range(0..100) {
                    _ if draining => acks.push((r.shard, r.offset)),
                    0..70 => acks.push((r.shard, r.offset)),
                    70..85 => nacks.push((r.shard, r.offset)),
                    _ => {}
                }
            }
        }
        h.lock()
            .unwrap()
            .in_flight
            .insert(g.consumer_id(), ctx.clock.us());
        if !nacks.is_empty() {
            match g.nack(&nacks, 0).await {
                Ok(()) => h.lock().unwrap().nacks += nacks.len(),
                Err(e) => h.lock().unwrap().error("nack", &e),
            }
        }
        if !acks.is_empty() {
            let r = g.ack(&acks).await;
            let done_us = ctx.clock.us();
            let mut h = h.lock().unwrap();
            if let Err(e) = &r {
                h.error("ack", e);
            }
            for (_, o) in acks {
                h.acks.push(AckOp {
                    offset: o,
                    done_us,
                    ok: r.is_ok(),
                });
            }
        }
        h.lock().unwrap().in_flight.remove(&g.consumer_id());
    }
}

/// Random gets, puts and compare-and-sets on `keys`, with unique values;
/// with `reader`, gets only (a reader is never held up by a write that
/// times out, so it keeps asking whichever broker it believes leads).
#[allow(clippy::too_many_arguments)]
pub async fn cache_ops(
    client: Client,
    cache: String,
    keys: Vec<String>,
    id: u64,
    reader: bool,
    seed: u64,
    ctx: Ctx,
    h: Arc<Mutex<CacheHistory>>,
) {
    let c = client.cache(&cache);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // The version this client last saw per key, for its compare-and-sets.
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    let mut n = 0u64;
    while !ctx.stopped() {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let value = format!("c{id}-{n}");
        n += 1;
        let invoke_us = ctx.clock.us();
        let (call, ret) = match if reader { 0 } else { rng.gen_range(0..10) } {
            0..4 => {
                let r = c.get(key.clone()).await;
                let ret = match r {
                    Ok(e) => {
                        let e = e.map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version));
                        if let Some((_, w)) = &e {
                            seen.insert(key.clone(), *w);
                        }
                        Some(Ret::Read(e))
                    }
                    Err(e) if crate::history::definite(&e) => None,
                    Err(_) => Some(Ret::Unknown),
                };
                (Call::Get, ret)
            }
            4..7 => {
                let r = c.put(key.clone(), value.clone().into_bytes(), None).await;
                let ret = match r {
                    Ok(w) => {
                        seen.insert(key.clone(), w);
                        Some(Ret::Written(w))
                    }
                    Err(e) if crate::history::definite(&e) => None,
                    Err(_) => Some(Ret::Unknown),
                };
                (Call::Put(value), ret)
            }
            _ => {
                let expected = seen.get(&key).copied().unwrap_or(0);
                let r = c
                    .put_if_version(key.clone(), value.clone().into_bytes(), None, expected)
                    .await;
                let ret = match r {
                    Ok(CasOutcome::Written(w)) => {
                        seen.insert(key.clone(), w);
                        Some(Ret::Written(w))
                    }
                    Ok(CasOutcome::Conflict(e)) => {
                        let e = e.map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version));
                        seen.insert(key.clone(), e.as_ref().map_or(0, |(_, w)| *w));
                        Some(Ret::Read(e))
                    }
                    Err(e) if crate::history::definite(&e) => None,
                    Err(_) => Some(Ret::Unknown),
                };
                (Call::Cas { expected, value }, ret)
            }
        };
        let Some(ret) = ret else { continue };
        let done_us = if ret == Ret::Unknown {
            u64::MAX
        } else {
            ctx.clock.us()
        };
        h.lock().unwrap().ops.entry(key).or_default().push(Op {
            process: id,
            call,
            ret,
            invoke_us,
            done_us,
        });
    }
}

/// Puts keys with a TTL (each once) and reads them back until stopped.
pub async fn ttl_ops(
    client: Client,
    cache: String,
    id: u64,
    ttl_ms: u64,
    seed: u64,
    ctx: Ctx,
    h: Arc<Mutex<TtlHistory>>,
) {
    let c = client.cache(&cache);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    while !ctx.stopped() {
        if mine.is_empty() || rng.gen_range(0..4) == 0 {
            let key = format!("t{id}-{n}");
            let value = format!("v{id}-{n}");
            n += 1;
            let invoke_us = ctx.clock.us();
            if c.put(key.clone(), value.clone().into_bytes(), Some(ttl_ms))
                .await
                .is_ok()
            {
                let done_us = ctx.clock.us();
                h.lock().unwrap().puts.insert(
                    key.clone(),
                    TtlPut {
                        value,
                        ttl_ms,
                        invoke_us,
                        done_us,
                    },
                );
                mine.push(key);
            }
            // A put of unknown outcome is never read: its key is not kept.
        } else {
            let key = mine[rng.gen_range(0..mine.len())].clone();
            let invoke_us = ctx.clock.us();
            if let Ok(e) = c.get(key.clone()).await {
                let done_us = ctx.clock.us();
                h.lock().unwrap().gets.push(TtlGet {
                    key,
                    invoke_us,
                    done_us,
                    value: e.map(|e| String::from_utf8_lossy(&e.value).into_owned()),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
