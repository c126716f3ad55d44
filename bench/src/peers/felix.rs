//! The Felix side: `felix broker` processes on loopback (one, or three
//! replicating), driven through `felix-client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use felix_client::producer::{ProducerConfig, ProducerRecord};
use felix_client::wire::{Message, Start, StreamConfig};
use felix_client::{Client, Route, SubscribeOptions};

use super::load::{self, closed_loop, CacheOp, Figure};
use crate::cluster::{client_config, ready_stream};
use felix_cli::devcluster::LocalBrokers;

/// Keys the cache workload spreads over.
pub const KEYS: u64 = 10_000;
/// Records a fan-out publisher may have awaiting acks.
pub const FANOUT_WINDOW: usize = 64;
/// How long subscribers may take to catch up after the publisher stops.
const DRAIN_MAX: Duration = Duration::from_secs(30);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh stream name in the benchmark's namespace.
fn fresh(what: &str) -> String {
    format!("bench/peers/{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Brokers with the durability their streams get.
struct Brokers {
    brokers: LocalBrokers,
    durability: String,
    /// The control plane a cluster follows.
    _cp: Option<felix_cli::embedded::Embedded>,
    _dir: tempfile::TempDir,
}

impl Brokers {
    async fn start(n: u32, replicated: bool, durability: &str) -> anyhow::Result<Brokers> {
        let dir = tempfile::tempdir()?;
        let (brokers, cp) = crate::cluster::brokers_on_loopback(dir.path(), n, replicated, "peers").await?;
        // Serving (and, in a cluster, with a metadata leader) before any
        // figure's clock starts.
        ready_stream(&brokers, &fresh("ready"), durability, 1)
            .await?
            .close()
            .await;
        Ok(Brokers {
            brokers,
            durability: durability.into(),
            _cp: cp,
            _dir: dir,
        })
    }

    /// The broker processes.
    fn pids(&self) -> Vec<u32> {
        self.brokers.children.iter().flatten().map(|c| c.id()).collect()
    }

    async fn stream(&self, what: &str, shards: u32) -> anyhow::Result<(Client, String)> {
        let name = fresh(what);
        let client = ready_stream(&self.brokers, &name, &self.durability, shards).await?;
        Ok((client, name))
    }

    async fn publish(&self, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
        let (client, name) = self.stream("publish", 1).await?;
        let f = publish_on(&client, &name, n, size, secs).await;
        client.close().await;
        f
    }
}

/// `n` producers on `name` for `secs`, each sending one record of `size`
/// bytes and awaiting its ack before the next.
pub(crate) async fn publish_on(
    client: &Client,
    name: &str,
    n: usize,
    size: usize,
    secs: Duration,
) -> anyhow::Result<Figure> {
    let mut producers = Vec::with_capacity(n);
    for _ in 0..n {
        let cfg = ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        };
        producers.push(Arc::new(client.producer(name, cfg).await?));
    }
    let value = Bytes::from(vec![b'v'; size]);
    closed_loop(n, secs, move |w| {
        let p = producers[w].clone();
        let v = value.clone();
        async move {
            p.send_wait(ProducerRecord::new(v))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await
}

/// One plain broker.
pub struct Single(Brokers);

impl Single {
    pub async fn start(durability: &str) -> anyhow::Result<Single> {
        Ok(Single(Brokers::start(1, false, durability).await?))
    }

    pub async fn stop(self) {
        drop(self);
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.pids()
    }

    pub async fn publish(&self, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
        self.0.publish(n, size, secs).await
    }

    /// One publisher, `k` subscribers from the tail.
    /// `k` subscribers from the tail of one shard; the publisher keeps up
    /// to [`FANOUT_WINDOW`] records awaiting acks, and with `pace` sends
    /// that many records a second, each as soon as it is due (so one
    /// record per request while the broker keeps up).
    pub async fn fanout(
        &self,
        k: usize,
        size: usize,
        secs: Duration,
        pace: Option<u32>,
    ) -> anyhow::Result<Figure> {
        let (client, name) = self.0.stream("fanout", 1).await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let mut subs = Vec::new();
        for _ in 0..k {
            let opts = SubscribeOptions {
                shards: vec![0],
                start: Start::Latest,
                ..SubscribeOptions::default()
            };
            subs.push(client.subscribe(&name, opts).await?);
        }
        // Subscriptions are in place before the first record.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for mut s in subs {
            let (delivered, stop) = (delivered.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut h = load::hist();
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(50), s.next()).await {
                        Ok(Some(Ok(d))) => {
                            let v = d.record.value.unwrap_or_default();
                            h.record(load::age_ns(&v).max(1)).expect("in bounds");
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => break,
                        Err(_) => {}
                    }
                }
                h
            }));
        }
        // No linger: like a NATS async publish, each record goes at once
        // (with whatever queued behind the one in flight).
        let cfg = ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        };
        let p = client.producer(&name, cfg).await?;
        let window = load::Window::open();
        let published = match pace {
            None => {
                let mut pending = std::collections::VecDeque::with_capacity(FANOUT_WINDOW);
                let mut published = 0u64;
                while window.elapsed() < secs {
                    if pending.len() == FANOUT_WINDOW {
                        let a: felix_client::PendingAck = pending.pop_front().expect("full");
                        a.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    pending.push_back(p.send(ProducerRecord::new(load::stamped(size))).await?);
                    published += 1;
                }
                for a in pending {
                    a.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                published
            }
            Some(rate) => {
                tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                    let rt = tokio::runtime::Handle::current();
                    let mut pending = std::collections::VecDeque::with_capacity(FANOUT_WINDOW);
                    let sent = load::paced(rate, secs, || {
                        if pending.len() == FANOUT_WINDOW {
                            let a: felix_client::PendingAck = pending.pop_front().expect("full");
                            rt.block_on(a.wait()).map_err(|e| anyhow::anyhow!("{e}"))?;
                        }
                        pending.push_back(rt.block_on(p.send(ProducerRecord::new(load::stamped(size))))?);
                        Ok(())
                    })?;
                    for a in pending {
                        rt.block_on(a.wait()).map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    Ok(sent)
                })
                .await??
            }
        };
        let want = published * k as u64;
        load::await_count(&delivered, want, DRAIN_MAX).await;
        let got = delivered.load(Ordering::Relaxed);
        let figure = |all: &hdrhistogram::Histogram<u64>| window.figure(got, Some(all), 0);
        stop.store(true, Ordering::Relaxed);
        let mut all = load::hist();
        for r in readers {
            all.add(r.await?)?;
        }
        client.close().await;
        anyhow::ensure!(got >= want, "subscribers got {got} of {want} deliveries");
        Ok(figure(&all))
    }

    /// `records` published, then drained by `consumers` of one group.
    pub async fn queue(&self, consumers: usize, size: usize, records: u64) -> anyhow::Result<Figure> {
        let (client, name) = self.0.stream("queue", 1).await?;
        prefill(&client, &name, records, size).await?;
        let done = Arc::new(AtomicU64::new(0));
        let window = load::Window::open();
        let mut tasks = Vec::new();
        for _ in 0..consumers {
            let g = client.group_consumer(&name, "bench");
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = load::hist();
                while done.load(Ordering::Relaxed) < records {
                    let t = Instant::now();
                    let leased = g.fetch(100, 30_000).await?.records;
                    if leased.is_empty() {
                        continue;
                    }
                    let items: Vec<(u32, u64)> = leased.iter().map(|r| (r.shard, r.offset)).collect();
                    g.ack(&items).await?;
                    h.record(t.elapsed().as_nanos().max(1) as u64).expect("in bounds");
                    done.fetch_add(items.len() as u64, Ordering::Relaxed);
                }
                anyhow::Ok(h)
            }));
        }
        let mut all = load::hist();
        for t in tasks {
            all.add(t.await??)?;
        }
        let figure = window.figure(records, Some(&all), 0);
        client.close().await;
        // Latency is per fetch-and-ack round of up to 100 records.
        Ok(figure)
    }

    pub async fn cache(&self, op: CacheOp, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
        let name = format!("bench/peers/cache-{}-{size}", self.0.durability.replace(':', "-"));
        let mut cfg = StreamConfig::stream(&name, 1, self.0.durability.parse()?);
        cfg.kind = felix_client::wire::StreamKind::Cache;
        let mut c = client_config(&self.0.brokers)?;
        c.connections_per_broker = n.clamp(1, felix_client::client::CONNECTIONS_PER_BROKER_MAX);
        let client = Client::connect(c).await?;
        // Created once per size (puts, then gets of what they wrote).
        match client.call(Route::Any, &Message::StreamCreate(cfg)).await {
            Ok(Message::Done) => {}
            Ok(Message::Error(e)) | Err(felix_client::ClientError::Broker(e))
                if e.to_string().contains("exists") => {}
            r => anyhow::bail!("creating {name}: {r:?}"),
        }
        let cache = Arc::new(client.cache(&name));
        let value = Bytes::from(vec![b'c'; size]);
        if op == CacheOp::Get {
            // Every key present, so each get finds its value.
            let (c, v) = (cache.clone(), value.clone());
            load::each(n, KEYS, move |i| {
                let (c, v) = (c.clone(), v.clone());
                async move {
                    c.put(load::key(i), v, None).await?;
                    Ok(())
                }
            })
            .await?;
        }
        let f = closed_loop(n, secs, move |w| {
            let (c, v) = (cache.clone(), value.clone());
            async move {
                let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ load::now_ns();
                let k = load::key(load::next_rand(&mut x) % KEYS);
                match op {
                    CacheOp::Put => {
                        c.put(k, v, None).await?;
                    }
                    CacheOp::Get => {
                        anyhow::ensure!(c.get(k).await?.is_some(), "a filled key is missing");
                    }
                    CacheOp::GetMiss => {
                        let k = load::missing_key(load::next_rand(&mut x) % KEYS);
                        anyhow::ensure!(c.get(k).await?.is_none(), "a key never written was found");
                    }
                }
                Ok(())
            }
        })
        .await;
        client.close().await;
        f
    }

    /// `records` published, then read from offset 0 by one subscriber.
    pub async fn replay(&self, records: u64, size: usize) -> anyhow::Result<Figure> {
        let (client, name) = self.0.stream("replay", 1).await?;
        prefill(&client, &name, records, size).await?;
        let figure = replay_on(&client, &name, records).await;
        client.close().await;
        figure
    }
}

/// One subscriber reads the `records` records of shard 0 of `name` from
/// offset 0.
pub(crate) async fn replay_on(client: &Client, name: &str, records: u64) -> anyhow::Result<Figure> {
    let window = load::Window::open();
    let opts = SubscribeOptions {
        shards: vec![0],
        start: Start::Earliest,
        ..SubscribeOptions::default()
    };
    let mut s = client.subscribe(name, opts).await?;
    let mut got = 0u64;
    while got < records {
        match tokio::time::timeout(DRAIN_MAX, s.next()).await {
            Ok(Some(Ok(_))) => got += 1,
            other => anyhow::bail!("replay stopped after {got} records: {other:?}"),
        }
    }
    Ok(window.figure(records, None, 0))
}

/// Publishes `records` records as fast as the producer batches them.
pub(crate) async fn prefill(client: &Client, name: &str, records: u64, size: usize) -> anyhow::Result<()> {
    let p = client.producer(name, ProducerConfig::default()).await?;
    let value = Bytes::from(vec![b'q'; size]);
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..records {
        if pending.len() >= 4096 {
            let a: felix_client::PendingAck = pending.pop_front().expect("non-empty");
            a.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        pending.push_back(p.send(ProducerRecord::new(value.clone())).await?);
    }
    for a in pending {
        a.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    p.close().await?;
    Ok(())
}

/// Three brokers replicating every shard.
pub struct Replicated(Brokers);

impl Replicated {
    pub async fn start(durability: &str) -> anyhow::Result<Replicated> {
        Ok(Replicated(Brokers::start(3, true, durability).await?))
    }

    pub async fn publish(&self, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
        self.0.publish(n, size, secs).await
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.pids()
    }

    pub async fn stop(self) {
        drop(self);
    }
}
