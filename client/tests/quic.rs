//! The client and the transport over real QUIC and TLS on loopback, against
//! an in-memory broker (tests/common).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use felix_client::transport::framed::{FrameReader, Incoming};
use felix_client::transport::{self, TransportConfig};
use felix_client::wire::KeyRouting;
use felix_client::wire::{kind, ErrorReply, FrameHeader, Message, Start, FRAME_BODY_BYTES_MAX};
use felix_client::{CasOutcome, Client, ClientError, ProducerConfig, ProducerRecord, SubscribeOptions};

#[tokio::test]
async fn a_client_rejects_a_server_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_certs = certs(&dir.path().join("a"));
    let other = certs(&dir.path().join("b"));
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &server_certs, false, any_port()).await;
    let err = Client::connect(client_config(&server, &other)).await.unwrap_err();
    match &err {
        ClientError::Connect { why, .. } => {
            assert!(why.contains("certificate") || why.contains("Unknown"), "{why}")
        }
        e => panic!("expected a TLS failure, got {e}"),
    }
    // The right CA connects.
    Client::connect(client_config(&server, &server_certs))
        .await
        .unwrap();
}

#[tokio::test]
async fn with_mtls_a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, true, any_port()).await;
    let err = Client::connect(client_config(&server, &c)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Connect { .. } | ClientError::Timeout(_)),
        "{err}"
    );
    let mut cfg = client_config(&server, &c);
    cfg.tls = c.client_tls(true).unwrap();
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.stream_info("s").await.unwrap().shards.len(), 1);
}

#[tokio::test]
async fn a_refused_token_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let server = serve(&MemBroker::new(1, &[]), &c, false, any_port()).await;
    let mut cfg = client_config(&server, &c);
    cfg.token = Bytes::from_static(b"bad");
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Broker(ErrorReply::Unauthorized(_))),
        "{err}"
    );
}

fn header(kind: u8, flags: u16, id: u64, body_len: u32) -> BytesMut {
    let mut b = BytesMut::new();
    FrameHeader {
        kind,
        flags,
        request_id: id,
        body_len,
    }
    .encode(&mut b);
    b
}

async fn answer(r: &mut FrameReader) -> (u64, Message) {
    match tokio::time::timeout(Duration::from_secs(5), r.next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(Incoming::Message(id, m)) => (id, m),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn invalid(m: &Message, needle: &str) {
    match m {
        Message::Error(ErrorReply::InvalidRequest(s)) => {
            assert!(s.contains(needle), "{s:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidRequest({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let ep = transport::client_endpoint(
        &c.client_tls(false).unwrap(),
        transport::ALPN,
        &TransportConfig::default(),
    )
    .unwrap();
    let conn = ep
        .connect(server.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut r = FrameReader::new(recv);
    let mut out = BytesMut::new();
    Message::Hello {
        version: 1,
        capabilities: 0,
        token: Bytes::new(),
    }
    .encode(1, &mut out)
    .unwrap();
    send.write_all(&out).await.unwrap();
    assert!(matches!(
        answer(&mut r).await,
        (1, Message::Welcome { broker_id: 1, .. })
    ));

    // Unknown type, with a body the decoder must skip.
    let mut f = header(0x6e, 0, 11, 3);
    f.extend_from_slice(b"xyz");
    // Unknown flag on a known type.
    f.extend_from_slice(&header(kind::CACHE_GET, 0x8000, 12, 2));
    f.extend_from_slice(b"ab");
    // A count larger than the body: 1000 ack items in 12 bytes.
    let mut body = BytesMut::new();
    body.extend_from_slice(&[1, b's', 1, b'g']);
    body.extend_from_slice(&1000u32.to_le_bytes());
    body.extend_from_slice(&[0; 12]);
    f.extend_from_slice(&header(kind::GROUP_ACK, 0, 13, body.len() as u32));
    f.extend_from_slice(&body);
    // Then a valid request.
    Message::CacheGet {
        cache: "s".into(),
        key: Bytes::from_static(b"k"),
    }
    .encode(14, &mut f)
    .unwrap();
    send.write_all(&f).await.unwrap();
    let (id, m) = answer(&mut r).await;
    assert_eq!(id, 11);
    invalid(&m, "unknown message type");
    let (id, m) = answer(&mut r).await;
    assert_eq!(id, 12);
    invalid(&m, "unknown frame flags");
    let (id, m) = answer(&mut r).await;
    assert_eq!(id, 13);
    invalid(&m, "count larger");
    assert_eq!(answer(&mut r).await, (14, Message::CacheValue { entry: None }));

    // An oversized body on the same stream: refused, skipped without being
    // buffered, and the next request still answered.
    let too_big = FRAME_BODY_BYTES_MAX as u32 + 1;
    send.write_all(&header(kind::CACHE_GET, 0, 15, too_big))
        .await
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = too_big as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        send.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    let mut ok = BytesMut::new();
    Message::Metadata { streams: vec![] }.encode(16, &mut ok).unwrap();
    send.write_all(&ok).await.unwrap();
    let (id, m) = answer(&mut r).await;
    assert_eq!(id, 15);
    invalid(&m, "above the limit");
    assert!(matches!(
        answer(&mut r).await,
        (16, Message::MetadataReply { .. })
    ));

    // A frame cut short by the end of its stream: an error frame on that
    // stream, and the connection's other streams keep working.
    let (mut s2, r2) = conn.open_bi().await.unwrap();
    let mut r2 = FrameReader::new(r2);
    s2.write_all(&header(kind::CACHE_GET, 0, 21, 100)[..12])
        .await
        .unwrap();
    s2.finish().unwrap();
    let (_, m) = answer(&mut r2).await;
    invalid(&m, "truncated");
    let mut again = BytesMut::new();
    Message::CacheGet {
        cache: "s".into(),
        key: Bytes::from_static(b"k"),
    }
    .encode(17, &mut again)
    .unwrap();
    send.write_all(&again).await.unwrap();
    assert_eq!(answer(&mut r).await, (17, Message::CacheValue { entry: None }));
    assert!(conn.close_reason().is_none(), "the connection stayed open");
}

#[tokio::test]
async fn keyed_records_land_on_their_hash_shard_in_order_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("events", 4)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let client = connect(&server, &c).await;
    let producer = client
        .producer(
            "events",
            ProducerConfig {
                batch_bytes_max: 4096,
                linger_ms: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut pending = vec![];
    for i in 0..2000u32 {
        let key = format!("user-{}", i % 37);
        let value = format!("{key}:{i}");
        pending.push((
            key.clone(),
            value.clone(),
            producer.send(ProducerRecord::keyed(key, value)).await.unwrap(),
        ));
    }
    let mut acks = HashMap::new();
    for (key, value, p) in pending {
        let ack = p.wait().await.unwrap();
        assert_eq!(ack.shard, KeyRouting::FOR_NEW.shard(key.as_bytes(), 4), "{key}");
        acks.insert(value, ack);
    }
    producer.close().await.unwrap();
    let mut total = 0;
    for shard in 0..4 {
        let recs = broker.records("events", shard);
        total += recs.len();
        let mut last_i = HashMap::new();
        for (n, (offset, value)) in recs.iter().enumerate() {
            assert_eq!(*offset, n as u64, "offsets are dense");
            let v = std::str::from_utf8(value).unwrap();
            let ack = acks[v];
            assert_eq!(
                (ack.shard, ack.offset),
                (shard, *offset),
                "the ack names where {v} is"
            );
            let (key, i) = v.split_once(':').unwrap();
            let i: u32 = i.parse().unwrap();
            if let Some(prev) = last_i.insert(key.to_owned(), i) {
                assert!(prev < i, "per-key order kept");
            }
        }
    }
    assert_eq!(total, 2000);
}

#[tokio::test]
async fn overloaded_publishes_are_retried_and_acknowledged_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let client = connect(&server, &c).await;
    broker.overload_next.store(3, Ordering::Release);
    let producer = client.producer("s", ProducerConfig::default()).await.unwrap();
    let ack = producer.send_wait(ProducerRecord::new("v")).await.unwrap();
    assert_eq!(ack.offset, 0);
    assert_eq!(
        broker.publishes_seen.load(Ordering::Acquire),
        4,
        "three refusals and one success"
    );
    assert_eq!(broker.records("s", 0).len(), 1);
}

#[tokio::test]
async fn not_leader_hints_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let follower = MemBroker::new(1, &[("s", 2)]);
    let leader = MemBroker::new(2, &[("s", 2)]);
    let fs = serve(&follower, &c, false, any_port()).await;
    let ls = serve(&leader, &c, false, any_port()).await;
    *follower.redirect.lock().unwrap() = Some((2, ls.local_addr().to_string()));
    let client = connect(&fs, &c).await;
    let producer = client.producer("s", ProducerConfig::default()).await.unwrap();
    let ack = producer
        .send_wait(ProducerRecord {
            shard: Some(1),
            ..ProducerRecord::new("x")
        })
        .await
        .unwrap();
    assert_eq!((ack.shard, ack.offset), (1, 0));
    assert_eq!(leader.records("s", 1).len(), 1);
    assert_eq!(follower.records("s", 1).len(), 0);
    // The leader is now cached: the next publish goes straight there.
    let before = follower.publishes_seen.load(Ordering::Acquire);
    producer
        .send_wait(ProducerRecord {
            shard: Some(1),
            ..ProducerRecord::new("y")
        })
        .await
        .unwrap();
    assert_eq!(follower.publishes_seen.load(Ordering::Acquire), before);
    drop(ls);
}

/// A leader stepping aside for a successor answers `NotLeader` naming
/// itself until the successor leads. Such answers are waited out (backing
/// off, bounded by the deadline), not spent as attempts: a client that
/// retried at once used up its 10 attempts in milliseconds and failed the
/// publish (seen in a SIGTERM hand-over under load).
#[tokio::test]
async fn a_leader_stepping_aside_is_waited_out_not_spent_as_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let client = connect(&server, &c).await;
    let producer = client.producer("s", ProducerConfig::default()).await.unwrap();
    *broker.redirect.lock().unwrap() = Some((1, server.local_addr().to_string()));
    let stepping_aside = broker.clone();
    // The hand-over ends after a while (this paces the fault; the verdict
    // is the publish's outcome).
    let ends = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        *stepping_aside.redirect.lock().unwrap() = None;
    });
    let ack = producer.send_wait(ProducerRecord::new("x")).await;
    ends.await.unwrap();
    assert_eq!(
        ack.unwrap().offset,
        0,
        "the publish landed once the hand-over ended"
    );
    assert_eq!(broker.records("s", 0).len(), 1);
}

/// A request for one broker and no other is answered with that broker's
/// `NotLeader` at once, hint included, not retried against it until the
/// deadline (the Redis door's forwarder follows the hint itself).
#[tokio::test]
async fn not_leader_from_a_broker_asked_by_name_is_returned_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let client = connect(&server, &c).await;
    *broker.redirect.lock().unwrap() = Some((2, "127.0.0.1:9".into()));
    let at = server.local_addr().to_string();
    let started = std::time::Instant::now();
    let r = client
        .call(
            felix_client::Route::Broker(&at),
            &Message::CacheGet {
                cache: "s".into(),
                key: Bytes::from_static(b"k"),
            },
        )
        .await;
    match r {
        Err(ClientError::Broker(ErrorReply::NotLeader { leader })) => {
            assert_eq!(leader, Some((2, "127.0.0.1:9".into())))
        }
        other => panic!("wanted NotLeader naming broker 2, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}: retried instead",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_subscription_resumes_after_the_broker_restarts_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 2)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let addr = server.local_addr();
    let client = connect(&server, &c).await;
    let producer = client
        .producer(
            "s",
            ProducerConfig {
                batch_bytes_max: 512,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 0..300 {
        producer
            .send(ProducerRecord::keyed(format!("k{}", i % 5), format!("{i}")))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let mut sub = client
        .subscribe(
            "s",
            SubscribeOptions {
                start: Start::Earliest,
                credit_bytes: 1024,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut next = [0u64; 2];
    let mut take = |d: felix_client::Delivery, seen: &mut HashSet<String>| {
        assert_eq!(
            d.record.offset.0, next[d.shard as usize],
            "no gap, no repeat on shard {}",
            d.shard
        );
        next[d.shard as usize] += 1;
        assert!(seen.insert(String::from_utf8(d.record.value.unwrap().to_vec()).unwrap()));
    };
    for _ in 0..150 {
        take(sub.next().await.unwrap().unwrap(), &mut seen);
    }
    // The broker goes away and comes back on the same address.
    server.close().await;
    let server = serve(&broker, &c, false, addr).await;
    for i in 300..400 {
        producer
            .send(ProducerRecord::keyed(format!("k{}", i % 5), format!("{i}")))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    while seen.len() < 400 {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        take(d, &mut seen);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "nothing more"
    );
    drop(server);
}

#[tokio::test]
async fn cache_and_group_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("kv", 3), ("q", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let client = connect(&server, &c).await;
    let cache = client.cache("kv");
    assert_eq!(cache.get("a").await.unwrap(), None);
    let v1 = cache.put("a", "1", Some(60_000)).await.unwrap();
    assert_eq!(cache.get("a").await.unwrap().unwrap().version, v1);
    assert!(matches!(
        cache.put_if_version("a", "2", None, v1 + 100).await.unwrap(),
        CasOutcome::Conflict(Some(e)) if e.version == v1 && &e.value[..] == b"1"
    ));
    let CasOutcome::Written(v2) = cache.put_if_version("a", "2", None, v1).await.unwrap() else {
        panic!("a matching version writes")
    };
    assert!(v2 > v1);
    cache.delete("a", None).await.unwrap();
    assert_eq!(cache.get("a").await.unwrap(), None);

    let p = client.producer("q", ProducerConfig::default()).await.unwrap();
    for i in 0..10 {
        p.send(ProducerRecord::new(format!("m{i}"))).await.unwrap();
    }
    p.flush().await.unwrap();
    let g = client.group_consumer("q", "workers");
    let first = g.fetch(4, 30_000).await.unwrap();
    assert_eq!(
        first.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    g.ack(&[(0, 0), (0, 1)]).await.unwrap();
    g.nack(&[(0, 2), (0, 3)], 0).await.unwrap();
    let second = g.fetch(100, 30_000).await.unwrap();
    assert_eq!(
        second.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7, 8, 9],
        "nacked records come back, acked ones do not"
    );
}

#[tokio::test]
async fn a_dead_broker_opens_the_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let broker = MemBroker::new(1, &[("s", 1)]);
    let server = serve(&broker, &c, false, any_port()).await;
    let mut cfg = client_config(&server, &c);
    cfg.request_timeout_ms = 300;
    cfg.connect_timeout_ms = 300;
    cfg.retry.attempts_max = 8;
    cfg.retry.backoff_max_ms = 10;
    cfg.breaker.failures_max = 2;
    cfg.breaker.open_ms = 60_000;
    let client = Client::connect(cfg).await.unwrap();
    server.close().await;
    let err = client.cache("s").get("k").await.unwrap_err();
    match err {
        ClientError::RetriesExhausted { last, .. } => {
            assert!(matches!(*last, ClientError::CircuitOpen(_)), "{last}")
        }
        e => panic!("expected retries to end on an open circuit, got {e}"),
    }
}
