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
