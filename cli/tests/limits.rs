//! Retention under a live reader, and backpressure under load, against a
//! real broker process.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin, create, dev_broker, rt, stream_config, Broker};
use felix_client::wire::{ErrorReply, Message, Start};
use felix_client::{ClientError, ProducerConfig, ProducerRecord, SubscribeOptions};

async fn earliest(c: &felix_client::Client, name: &str) -> u64 {
    match admin(c, Message::StreamDescribe { name: name.into() }).await {
        Message::StreamDescription { shards, .. } => shards[0].earliest,
        m => panic!("{m:?}"),
    }
}

#[test]
fn retention_removes_old_segments_while_a_subscriber_reads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let b = Broker::start_configured(
        dir.path(),
        "maintenance_interval_ms = 100\n[log]\nsegment_bytes = 4194304\nbatch_bytes_max = 262144\n",
    );
    rt.block_on(async {
        let c = b.client().await;
        let mut cfg = stream_config("metrics", 1);
        cfg.durability = felix_client::wire::Durability::None;
        create(&c, cfg).await;
        let p = c
            .producer(
                "metrics",
                ProducerConfig {
                    batch_bytes_max: 256 << 10,
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
        let total = 3000u64;
        let value = vec![b'x'; 4096];
        for _ in 0..total {
            p.send(ProducerRecord::new(value.clone())).await.unwrap();
        }
        p.flush().await.unwrap();
        // A slow reader from the start.
        let opts = SubscribeOptions {
            start: Start::Earliest,
            credit_bytes: 64 << 10,
            buffer_records: 8,
            ..SubscribeOptions::default()
        };
        let mut sub = c.subscribe("metrics", opts).await.unwrap();
        let first = sub.next().await.unwrap().unwrap();
        assert_eq!(first.record.offset.0, 0);
        // Keep at most 4 MiB: the sealed segments before the last go.
        let set = Message::StreamSetRetention {
            name: "metrics".into(),
            retention_ms: None,
            retention_bytes: Some(4 << 20),
        };
        assert_eq!(admin(&c, set).await, Message::Done);
        let deadline = Instant::now() + Duration::from_secs(20);
        while earliest(&c, "metrics").await == 0 {
            assert!(Instant::now() < deadline, "retention did not run within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cut = earliest(&c, "metrics").await;
        assert!(cut > 0 && cut < total, "earliest moved to {cut}");
        // The reader sees contiguous offsets until it either reaches the end
        // (it had already read past the cut) or is told exactly what is gone.
        let mut next = 1u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("progress")
            {
                Some(Ok(d)) => {
                    assert_eq!(d.record.offset.0, next, "no gap, no repeat");
                    next += 1;
                    if next == total {
                        break;
                    }
                }
                Some(Err(ClientError::Broker(ErrorReply::OffsetOutOfRange { earliest, latest }))) => {
                    assert!(next < earliest, "told {next} is gone, with earliest {earliest}");
                    assert_eq!(latest, total);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // A new reader from offset 0 is told the range.
        let opts = SubscribeOptions {
            start: Start::Offset(0),
            ..SubscribeOptions::default()
        };
        let mut old = c.subscribe("metrics", opts).await.unwrap();
        match old.next().await.unwrap() {
            Err(ClientError::Broker(ErrorReply::OffsetOutOfRange { earliest, .. })) => {
                assert_eq!(earliest, cut)
            }
            other => panic!("{other:?}"),
        }
    });
}

/// Resident memory the broker must stay under in the soak below. What
/// bounds it: per shard 64 MiB of publishes in flight, per connection
/// 64 MiB of requests and the QUIC receive windows; the stalled
/// subscriber holds only its credit.
const SOAK_RSS_BYTES_MAX: u64 = 1 << 30;

/// Acknowledgements the soak runs until (besides its `FELIX_SOAK_SECS`),
/// so that the memory bound is checked under load however fast this
/// machine is.
const SOAK_ACKS_MIN: u64 = 1_000;
/// How long, from its start, the soak waits for [`SOAK_ACKS_MIN`].
const SOAK_ACKS_WAIT: Duration = Duration::from_secs(120);

#[test]
fn fifty_connections_publishing_flat_out_with_a_stalled_subscriber_stay_bounded() {
    let secs: u64 = std::env::var("FELIX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let (_dir, rt, b) = dev_broker();
    let (acked, peak) = rt.block_on(async {
        let admin_client = b.client().await;
        let mut cfg = stream_config("firehose", 2);
        cfg.durability = felix_client::wire::Durability::Interval { ms: 50 };
        create(&admin_client, cfg).await;
        // Subscribes, takes one record, then never reads again.
        let mut stalled = admin_client
            .subscribe(
                "firehose",
                SubscribeOptions {
                    start: Start::Earliest,
                    credit_bytes: 1 << 20,
                    buffer_records: 16,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let client = b.client().await;
            let (stop, acked) = (stop.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let p = client
                    .producer(
                        "firehose",
                        ProducerConfig {
                            buffer_bytes_max: 4 << 20,
                            ..ProducerConfig::default()
                        },
                    )
                    .await
                    .unwrap();
                let mut pending = std::collections::VecDeque::new();
                let mut mine = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v = format!("{i}:{n}:{}", "p".repeat(1000));
                    pending.push_back((v.clone(), p.send(ProducerRecord::new(v)).await.unwrap()));
                    n += 1;
                    while pending.len() > 256 {
                        let (v, a) = pending.pop_front().unwrap();
                        if let Ok(a) = a.wait().await {
                            mine.push((a.shard, a.offset, v));
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for (v, a) in pending {
                    if let Ok(a) = a.wait().await {
                        mine.push((a.shard, a.offset, v));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                mine
            }));
        }
        let _ = stalled.next().await;
        // Load for `secs`, and on until the publishers have made progress
        // (its rate is the benchmarks' to judge, not this test's).
        let mut peak = 0u64;
        let started = Instant::now();
        let end = started + Duration::from_secs(secs);
        loop {
            peak = peak.max(b.rss_bytes());
            let n = acked.load(Ordering::Relaxed);
            if n >= SOAK_ACKS_MIN && Instant::now() >= end {
                break;
            }
            assert!(
                n >= SOAK_ACKS_MIN || started.elapsed() < SOAK_ACKS_WAIT,
                "publishers made no progress: {n} acknowledgements in {SOAK_ACKS_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        peak = peak.max(b.rss_bytes());
        // Nothing acknowledged is lost: every ack reads back with its value.
        all.sort();
        for shard in 0..2u32 {
            let want: Vec<&(u32, u64, String)> = all.iter().filter(|r| r.0 == shard).collect();
            let mut sub = admin_client
                .subscribe(
                    "firehose",
                    SubscribeOptions {
                        shards: vec![shard],
                        start: Start::Earliest,
                        ..SubscribeOptions::default()
                    },
                )
                .await
                .unwrap();
            let mut at = 0usize;
            while at < want.len() {
                let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
                    .await
                    .expect("replay progresses")
                    .unwrap()
                    .unwrap();
                if d.record.offset.0 == want[at].1 {
                    assert_eq!(d.record.value.as_deref(), Some(want[at].2.as_bytes()));
                    at += 1;
                }
            }
        }
        drop(stalled);
        (acked.load(Ordering::Relaxed), peak)
    });
    eprintln!(
        "soak: {secs} s, 50 connections, {acked} records acknowledged, broker peak RSS {} MiB (bound {} MiB)",
        peak >> 20,
        SOAK_RSS_BYTES_MAX >> 20
    );
    assert!(acked >= SOAK_ACKS_MIN, "publishers made progress: {acked}");
    assert!(peak < SOAK_RSS_BYTES_MAX, "peak RSS {peak} above the bound");
}

/// Opens a raw QUIC connection to the broker as its clients do.
async fn raw_connection(b: &Broker) -> (quinn::Endpoint, quinn::Connection) {
    use felix_client::transport::{self, ClientTls, TransportConfig};
    let tls = ClientTls::from_pem_files(&b.profile.ca, None).unwrap();
    let ep = transport::client_endpoint(&tls, transport::ALPN, &TransportConfig::default()).unwrap();
    let addr: std::net::SocketAddr = b.profile.brokers[0].parse().unwrap();
    let conn = ep.connect(addr, &b.profile.server_name).unwrap().await.unwrap();
    (ep, conn)
}

/// On `streams` new streams of `conn`, the header of a publish declaring
/// the largest body, then `sent` bytes of it, never the rest. Returns the
/// streams, kept open.
async fn unfinished_frames(
    conn: &quinn::Connection,
    streams: usize,
    sent: usize,
) -> Vec<(quinn::SendStream, quinn::RecvStream)> {
    use felix_client::wire::{kind, FrameHeader, FRAME_BODY_BYTES_MAX};
    let mut out = Vec::new();
    let filler = vec![0xabu8; sent];
    for i in 0..streams {
        // Streams are credited back only as they close: past the
        // broker's limit of open streams, opening waits.
        let Ok(Ok((mut send, recv))) = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await
        else {
            break;
        };
        let mut head = bytes::BytesMut::new();
        FrameHeader {
            kind: kind::PUBLISH,
            flags: 0,
            request_id: i as u64 + 1,
            body_len: FRAME_BODY_BYTES_MAX as u32,
        }
        .encode(&mut head);
        // A stream the broker stopped (over budget) refuses the rest.
        if send.write_all(&head).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&filler)).await;
        }
        out.push((send, recv));
    }
    out
}

/// Memory before authentication, and partial frames after it: 4
/// connections that never say Hello, each starting 256 publishes of the
/// largest body and sending 256 KiB of each, and one that does, starting
/// 255 and sending 1 MiB of each, would have the broker buffer 511 MiB
/// (and reserve 16 MiB a stream). It refuses the large frames before Hello
/// without buffering them, and after Hello answers streams past 32 MiB of
/// unfinished frames with `Overloaded`: its resident memory grows less
/// than 160 MiB, the bound of one connection (64 MiB of QUIC window,
/// 32 MiB of unfinished frames, 64 MiB of decoded requests), and it goes
/// on serving.
#[test]
fn unfinished_frames_cannot_pin_the_brokers_memory_before_or_after_hello() {
    use felix_client::transport::framed::{encode, FrameReader, Incoming};
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        create(&c, stream_config("pinned", 1)).await;
        let before = b.rss_bytes();

        let mut held = Vec::new();
        for _ in 0..4 {
            let (ep, conn) = raw_connection(&b).await;
            let streams = unfinished_frames(&conn, 256, 256 << 10).await;
            held.push((ep, conn, streams));
        }
        let pre_hello = b.rss_bytes();

        let (ep, conn) = raw_connection(&b).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello {
            version: 1,
            capabilities: 0,
            token: bytes::Bytes::from(b.profile.token.clone().unwrap_or_default()),
        };
        send.write_all(&encode(1, &hello).unwrap()).await.unwrap();
        send.finish().unwrap();
        match FrameReader::new(recv).next().await.unwrap() {
            Some(Incoming::Message(1, Message::Welcome { .. })) => {}
            m => panic!("no Welcome: {m:?}"),
        }
        let mut streams = unfinished_frames(&conn, 255, 1 << 20).await;
        let after = b.rss_bytes();
        let grown = after.saturating_sub(before).max(pre_hello.saturating_sub(before));
        eprintln!(
            "RSS grew {} MiB before Hello, {} MiB in all",
            pre_hello.saturating_sub(before) >> 20,
            grown >> 20
        );
        assert!(
            grown < 160 << 20,
            "the broker grew {} MiB (before Hello: {} MiB) holding unfinished frames",
            grown >> 20,
            pre_hello.saturating_sub(before) >> 20
        );
        // The last stream came past the budget: it was answered Overloaded.
        let (_s, last) = streams.pop().expect("streams");
        let answer = tokio::time::timeout(Duration::from_secs(10), FrameReader::new(last).next()).await;
        assert!(
            matches!(
                answer,
                Ok(Ok(Some(Incoming::Message(
                    _,
                    Message::Error(ErrorReply::Overloaded { .. })
                ))))
            ),
            "{answer:?}"
        );
        held.push((ep, conn, streams));

        // It still serves: a publish on a fresh client.
        let c2 = b.client().await;
        match c2
            .call(felix_client::Route::Any, &common::publish_one("pinned", b"after"))
            .await
        {
            Ok(Message::PublishAck { .. }) => {}
            r => panic!("{r:?}"),
        }
        drop(held);
    });
}
