//! The NATS JetStream side, through `async-nats`: the single server the
//! peers script starts, and a three-node cluster this benchmark runs
//! itself (the script starts one node only).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::load::{self, closed_loop, Figure};

/// How long the consumers may take to catch up after the publisher stops.
const DRAIN_MAX: Duration = Duration::from_secs(30);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh stream (file storage, `replicas` copies) and its subject.
async fn fresh(
    js: &jetstream::Context,
    what: &str,
    replicas: usize,
    retention: stream::RetentionPolicy,
) -> anyhow::Result<(stream::Stream, String)> {
    let name = format!("bench_{what}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let subject = format!("{name}.x");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cfg = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention,
            ..Default::default()
        };
        match js.get_or_create_stream(cfg).await {
            Ok(s) => return Ok((s, subject)),
            // A cluster still electing its meta leader.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("creating a JetStream stream"),
        }
    }
}

async fn context(addr: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(addr)
        .await
        .with_context(|| format!("connecting to NATS at {addr}"))?;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(10));
    Ok(js)
}

/// `n` producers, each publishing and awaiting the ack before the next.
pub async fn publish(addr: String, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
    let js = context(&addr).await?;
    let (s, subject) = fresh(&js, "publish", 1, stream::RetentionPolicy::Limits).await?;
    let f = acked_publishes(&js, &subject, n, size, secs).await;
    let _ = js.delete_stream(&s.cached_info().config.name).await;
    f
}

async fn acked_publishes(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    size: usize,
    secs: Duration,
) -> anyhow::Result<Figure> {
    let value = Bytes::from(vec![b'v'; size]);
    let (js, subject) = (js.clone(), subject.to_owned());
    closed_loop(n, secs, move |_| {
        let (js, subject, v) = (js.clone(), subject.clone(), value.clone());
        async move {
            js.publish(subject, v).await?.await?;
            Ok(())
        }
    })
    .await
}

/// One publisher (64 awaiting acks), `k` ordered consumers from the tail.
pub async fn fanout(
    addr: String,
    k: usize,
    size: usize,
    secs: Duration,
    pace: Option<u32>,
) -> anyhow::Result<Figure> {
    let js = context(&addr).await?;
    let (s, subject) = fresh(&js, "fanout", 1, stream::RetentionPolicy::Limits).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..k {
        let c = s
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut msgs = c.messages().await?;
        let (delivered, stop) = (delivered.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut h = load::hist();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(50), msgs.next()).await {
                    Ok(Some(Ok(m))) => {
                        h.record(load::age_ns(&m.payload).max(1)).expect("in bounds");
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            h
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let window = load::Window::open();
    let published = match pace {
        None => {
            let mut pending = std::collections::VecDeque::with_capacity(super::felix::FANOUT_WINDOW);
            let mut published = 0u64;
            while window.elapsed() < secs {
                if pending.len() == super::felix::FANOUT_WINDOW {
                    let a: jetstream::context::PublishAckFuture = pending.pop_front().expect("full");
                    a.await?;
                }
                pending.push_back(
                    js.publish(subject.clone(), Bytes::from(load::stamped(size)))
                        .await?,
                );
                published += 1;
            }
            for a in pending {
                a.await?;
            }
            published
        }
        Some(rate) => {
            let (js, subject) = (js.clone(), subject.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let rt = tokio::runtime::Handle::current();
                let mut pending = std::collections::VecDeque::with_capacity(super::felix::FANOUT_WINDOW);
                let sent = load::paced(rate, secs, || {
                    if pending.len() == super::felix::FANOUT_WINDOW {
                        let a: jetstream::context::PublishAckFuture = pending.pop_front().expect("full");
                        rt.block_on(std::future::IntoFuture::into_future(a))?;
                    }
                    pending.push_back(
                        rt.block_on(js.publish(subject.clone(), Bytes::from(load::stamped(size))))?,
                    );
                    Ok(())
                })?;
                for a in pending {
                    rt.block_on(std::future::IntoFuture::into_future(a))?;
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
    let _ = js.delete_stream(&s.cached_info().config.name).await;
    anyhow::ensure!(got >= want, "consumers got {got} of {want} deliveries");
    Ok(figure(&all))
}

async fn prefill(js: &jetstream::Context, subject: &str, records: u64, size: usize) -> anyhow::Result<()> {
    let v = Bytes::from(vec![b'q'; size]);
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..records {
        if pending.len() >= 4096 {
            let a: jetstream::context::PublishAckFuture = pending.pop_front().expect("non-empty");
            a.await?;
        }
        pending.push_back(js.publish(subject.to_owned(), v.clone()).await?);
    }
    for a in pending {
        a.await?;
    }
    Ok(())
}

/// A work-queue stream drained by `consumers` sharing one durable pull
/// consumer, batches of 100, each message acked.
pub async fn queue(addr: String, consumers: usize, size: usize, records: u64) -> anyhow::Result<Figure> {
    let js = context(&addr).await?;
    let (s, subject) = fresh(&js, "queue", 1, stream::RetentionPolicy::WorkQueue).await?;
    prefill(&js, &subject, records, size).await?;
    let c = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100 * consumers as i64 * 2,
            ..Default::default()
        })
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let window = load::Window::open();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (c, done) = (c.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = load::hist();
            while done.load(Ordering::Relaxed) < records {
                let t = Instant::now();
                let mut batch = c
                    .fetch()
                    .max_messages(100)
                    .expires(Duration::from_millis(200))
                    .messages()
                    .await?;
                let mut n = 0u64;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    n += 1;
                }
                if n > 0 {
                    h.record(t.elapsed().as_nanos().max(1) as u64).expect("in bounds");
                    done.fetch_add(n, Ordering::Relaxed);
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = load::hist();
    for t in tasks {
        all.add(t.await??)?;
    }
    let figure = window.figure(records, Some(&all), 0);
    let _ = js.delete_stream(&s.cached_info().config.name).await;
    Ok(figure)
}

/// `records` published, then read from the start by an ordered consumer.
pub async fn replay(addr: String, records: u64, size: usize) -> anyhow::Result<Figure> {
    let js = context(&addr).await?;
    let (s, subject) = fresh(&js, "replay", 1, stream::RetentionPolicy::Limits).await?;
    prefill(&js, &subject, records, size).await?;
    let window = load::Window::open();
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut msgs = c.messages().await?;
    let mut got = 0u64;
    while got < records {
        match tokio::time::timeout(DRAIN_MAX, msgs.next()).await {
            Ok(Some(Ok(_))) => got += 1,
            other => anyhow::bail!(
                "replay stopped after {got} records: {:?}",
                other.map(|o| o.map(|r| r.map(|_| ())))
            ),
        }
    }
    let figure = window.figure(records, None, 0);
    drop(msgs);
    let _ = js.delete_stream(&s.cached_info().config.name).await;
    Ok(figure)
}

/// Three nats-server processes clustered on loopback, JetStream on each.
pub struct Cluster {
    children: Vec<Child>,
    pub addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `sync_always`: every node fsyncs a message before acknowledging it
    /// (`sync_interval: always`), the like of Felix's `always`.
    pub async fn start(bin: &Path, sync_always: bool) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<u16> = {
            let held: Vec<std::net::TcpListener> = (0..9)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<_, _>>()?;
            held.iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<Result<_, _>>()?
        };
        let (client, route, http) = (&ports[0..3], &ports[3..6], &ports[6..9]);
        let mut children = Vec::new();
        for i in 0..3 {
            let routes: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", route[j]))
                .collect();
            let store = dir.path().join(format!("n{i}"));
            let sync = if sync_always {
                ", sync_interval: always"
            } else {
                ""
            };
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: {:?}{sync} }}\ncluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                client[i],
                http[i],
                store.display().to_string(),
                route[i],
                routes.join(", ")
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf)?;
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log")))?;
            children.push(
                Command::new(bin)
                    .arg("-c")
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("starting nats-server")?,
            );
        }
        let c = Cluster {
            children,
            addrs: client.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            _dir: dir,
        };
        // Ready when every node reports JetStream healthy.
        let deadline = Instant::now() + Duration::from_secs(60);
        for p in http {
            loop {
                let ok = reqwest::get(format!("http://127.0.0.1:{p}/healthz?js-enabled-only=true"))
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the NATS cluster did not become healthy"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(c)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    pub fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// [`publish`] to an R3 stream of the cluster.
pub async fn publish_r3(c: &Cluster, n: usize, size: usize, secs: Duration) -> anyhow::Result<Figure> {
    let js = context(&c.addrs[0]).await?;
    let (s, subject) = fresh(&js, "r3", 3, stream::RetentionPolicy::Limits).await?;
    let f = acked_publishes(&js, &subject, n, size, secs).await;
    let _ = js.delete_stream(&s.cached_info().config.name).await;
    f
}
