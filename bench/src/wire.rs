//! The wire benchmark of issue "Wire protocol": request/response round trip
//! p50/p99 over loopback QUIC with real TLS for 256 B and 4 KiB payloads at
//! concurrency 1 and 32, and the bytes/s of one push stream under credit.
//!
//! The server is the real transport (`felix_client::server`) with a handler
//! that does no work: a request carrying N bytes (`CachePut`) is answered
//! with the same N bytes (`CacheValue`), and a subscription pushes one
//! prebuilt 1 MiB run of batches as fast as credit allows. So the figures
//! are the protocol's and the transport's cost, not the broker's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args as ClapArgs;
use felix_client::conn::{ConnectOptions, Connection};
use felix_client::server::{Handler, HelloRequest, Peer, PushData, PushFuture, PushSource, Reply, Server};
use felix_client::transport::framed::Incoming;
use felix_client::transport::{self, TransportConfig};
use felix_client::wire::{CacheEntry, ErrorReply, Message, Start};
use felix_log::{BatchBuilder, Compression, RecordInput};
use hdrhistogram::Histogram;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Seconds per round-trip figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of the push-stream figure.
    #[arg(long, default_value_t = 5.0)]
    push_seconds: f64,
    /// A short run (0.5 s per figure).
    #[arg(long)]
    quick: bool,
}

struct Echo {
    run: Bytes,
}

struct Repeat {
    run: Bytes,
    next: u64,
}

impl PushSource for Repeat {
    fn next_push(&mut self, _credit: u64) -> PushFuture<'_> {
        Box::pin(async move {
            self.next += 1;
            Some(Ok(PushData {
                shard: 0,
                next_offset: self.next,
                batches: self.run.clone(),
            }))
        })
    }
}

impl Handler for Echo {
    type Session = ();

    async fn hello(&self, _: &Peer, _: HelloRequest) -> Result<((), u64), ErrorReply> {
        Ok(((), 1))
    }

    async fn request(&self, _: &(), m: Message) -> Reply {
        match m {
            Message::CachePut { value, .. } => Reply::Message(Message::CacheValue {
                entry: Some(CacheEntry {
                    value,
                    version: 1,
                    expiry_ms: None,
                }),
            }),
            Message::Subscribe { .. } => Reply::Subscription(Box::new(Repeat {
                run: self.run.clone(),
                next: 0,
            })),
            other => ErrorReply::InvalidRequest(format!("the bench server does not handle {other:?}")).into(),
        }
    }
}

/// About 1 MiB of 64 KiB batches of 1 KiB records, as a shard would store.
fn push_run() -> anyhow::Result<Bytes> {
    let value = vec![0x5a; 1024];
    let mut out = Vec::new();
    while out.len() < (1 << 20) {
        let mut b = BatchBuilder::new(64 << 10);
        while b
            .push(RecordInput {
                value: Some(&value),
                ..Default::default()
            })
            .is_ok()
        {}
        out.extend_from_slice(&b.build(Compression::None)?);
    }
    Ok(Bytes::from(out))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (seconds, push_seconds) = if a.quick {
        (0.5, 0.5)
    } else {
        (a.seconds, a.push_seconds)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(seconds, push_seconds))
}

async fn bench(seconds: f64, push_seconds: f64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = transport::dev_certificates(dir.path(), &[])?;
    let cfg = TransportConfig::default();
    let ep = transport::server_endpoint(
        "127.0.0.1:0".parse()?,
        &certs.server_tls(false)?,
        transport::ALPN,
        &cfg,
    )?;
    let server = Server::start(ep, Arc::new(Echo { run: push_run()? }));
    let client_ep = transport::client_endpoint(&certs.client_tls(false)?, transport::ALPN, &cfg)?;
    let opts = ConnectOptions {
        server_name: "localhost".into(),
        token: Bytes::new(),
        streams: 4,
        timeout_ms: 5_000,
    };
    let conn = Arc::new(Connection::open(&client_ep, server.local_addr(), &opts).await?);
    let (_, rcv, snd) = transport::udp_socket("127.0.0.1:0".parse()?, cfg.udp_buffer_bytes)?;
    println!(
        "felix-bench wire: loopback QUIC + TLS 1.3; UDP buffers as the kernel reports them (twice what it grants): rcv {} KiB snd {} KiB",
        rcv >> 10,
        snd >> 10
    );
    println!("| payload | concurrency | requests/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|");
    for size in [256usize, 4096] {
        for conc in [1usize, 32] {
            let (rate, h) = round_trips(&conn, size, conc, seconds).await?;
            println!(
                "| {size} B | {conc} | {rate:.0} | {:.1} | {:.1} | {:.1} |",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
            );
        }
    }
    let (bytes_per_s, pushes) = push_stream(&conn, push_seconds).await?;
    println!(
        "push stream: {:.0} MB/s ({:.0} MiB/s), {pushes} pushes of ~1 MiB in {push_seconds} s, credit 8 MiB",
        bytes_per_s / 1e6,
        bytes_per_s / (1 << 20) as f64
    );
    drop(conn);
    server.close().await;
    Ok(())
}

async fn round_trips(
    conn: &Arc<Connection>,
    size: usize,
    conc: usize,
    seconds: f64,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![7u8; size]);
    // Warm up the connection and the code paths.
    for _ in 0..200 {
        conn.request(&put(&value), 5_000).await?;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (conn, stop, count, value) = (conn.clone(), stop.clone(), count.clone(), value.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let m = put(&value);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let reply = conn.request(&m, 5_000).await?;
                    h.record(t.elapsed().as_nanos() as u64).expect("in range");
                    anyhow::ensure!(
                        matches!(reply, Message::CacheValue { entry: Some(ref e) } if e.value.len() == size)
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(h)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        all,
    ))
}

fn put(value: &Bytes) -> Message {
    Message::CachePut {
        cache: "bench".into(),
        key: Bytes::from_static(b"k"),
        value: value.clone(),
        ttl_ms: None,
        if_version: None,
        writer: 0,
        sequence: 0,
    }
}

async fn push_stream(conn: &Arc<Connection>, seconds: f64) -> anyhow::Result<(f64, u64)> {
    let credit: u32 = 8 << 20;
    let m = Message::Subscribe {
        stream: "bench".into(),
        shards: vec![0],
        start: Start::Earliest,
        durable: None,
        credit_bytes: credit,
    };
    let (sub, mut pushes) = conn.subscribe_raw(&m, 5_000).await?;
    let start = Instant::now();
    let (mut bytes, mut n, mut owed) = (0u64, 0u64, 0u32);
    while start.elapsed().as_secs_f64() < seconds {
        match pushes.next().await? {
            Some(Incoming::Message(_, Message::Push { batches, .. })) => {
                bytes += batches.len() as u64;
                n += 1;
                owed += batches.len() as u32;
                if owed >= credit / 4 {
                    conn.notify(&Message::Credit {
                        subscription: sub,
                        bytes: owed,
                    })
                    .await?;
                    owed = 0;
                }
            }
            other => anyhow::bail!("unexpected on the push stream: {other:?}"),
        }
    }
    let rate = bytes as f64 / start.elapsed().as_secs_f64();
    conn.request(&Message::Unsubscribe { subscription: sub }, 5_000)
        .await?;
    Ok((rate, n))
}
