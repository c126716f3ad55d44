//! The wire codec: round trips, golden vectors, and malformed input answered
//! with an error frame while the stream keeps serving.

use bytes::{Bytes, BytesMut};
use felix_client::wire::{
    self, kind, AckLevel, BrokerInfo, CacheEntry, Decoded, Durability, ErrorReply, GroupRecord, KeyRouting,
    Message, ShardInfo, ShardStats, Start, StreamConfig, StreamInfo, StreamKind, WireError, HEADER_BYTES,
};
use proptest::prelude::*;

fn sample_config() -> StreamConfig {
    StreamConfig {
        name: "dev/default/orders".into(),
        kind: StreamKind::Stream,
        shards: 4,
        durability: Durability::Interval { ms: 5 },
        retention_ms: Some(86_400_000),
        retention_bytes: Some(1 << 30),
        max_deliveries: 5,
        default_ttl_ms: None,
        replication_factor: 3,
        key_routing: KeyRouting::Slots,
    }
}

/// One message of every type, with every optional field both ways somewhere.
fn samples() -> Vec<(&'static str, Message)> {
    let b = |s: &'static [u8]| Bytes::from_static(s);
    vec![
        (
            "hello",
            Message::Hello {
                version: 1,
                capabilities: 3,
                token: b(b"tok"),
            },
        ),
        (
            "welcome",
            Message::Welcome {
                version: 1,
                capabilities: 1,
                broker_id: 9,
            },
        ),
        (
            "publish",
            Message::Publish {
                stream: "orders".into(),
                shard: Some(2),
                ack: AckLevel::Quorum,
                producer_id: 77,
                sequence: 5,
                batch: b(b"\x01\x02\x03"),
            },
        ),
        (
            "publish_routed",
            Message::Publish {
                stream: "s".into(),
                shard: None,
                ack: AckLevel::None,
                producer_id: 0,
                sequence: 0,
                batch: b(b""),
            },
        ),
        (
            "publish_ack",
            Message::PublishAck {
                shard: 2,
                base_offset: 1000,
                count: 64,
            },
        ),
        (
            "subscribe",
            Message::Subscribe {
                stream: "orders".into(),
                shards: vec![0, 1],
                start: Start::Time(-5),
                durable: Some("audit".into()),
                credit_bytes: 1 << 20,
            },
        ),
        (
            "subscribe_all",
            Message::Subscribe {
                stream: "o".into(),
                shards: vec![],
                start: Start::Latest,
                durable: None,
                credit_bytes: 0,
            },
        ),
        ("subscribed", Message::Subscribed { subscription: 4 }),
        (
            "credit",
            Message::Credit {
                subscription: 4,
                bytes: 65536,
            },
        ),
        (
            "push",
            Message::Push {
                subscription: 4,
                shard: 1,
                next_offset: 12,
                batches: b(b"batches"),
            },
        ),
        (
            "commit_cursor",
            Message::CommitCursor {
                stream: "o".into(),
                shard: 1,
                name: "audit".into(),
                offset: 12,
            },
        ),
        ("unsubscribe", Message::Unsubscribe { subscription: 4 }),
        (
            "group_fetch",
            Message::GroupFetch {
                stream: "jobs".into(),
                group: "w".into(),
                consumer: 0x0102_0304_0506_0708,
                max_records: 10,
                lease_ms: 30_000,
            },
        ),
        (
            "group_records",
            Message::GroupRecords {
                lease_until_ms: 1_700_000_000_000,
                records: vec![
                    GroupRecord {
                        shard: 0,
                        offset: 3,
                        deliveries: 1,
                        timestamp_ms: 5,
                        key: Some(b(b"k")),
                        value: b(b"v"),
                    },
                    GroupRecord {
                        shard: 1,
                        offset: 4,
                        deliveries: 2,
                        timestamp_ms: 6,
                        key: None,
                        value: b(b""),
                    },
                ],
            },
        ),
        (
            "group_ack",
            Message::GroupAck {
                stream: "jobs".into(),
                group: "w".into(),
                items: vec![(0, 3), (1, 4)],
            },
        ),
        (
            "group_nack",
            Message::GroupNack {
                stream: "jobs".into(),
                group: "w".into(),
                consumer: 0x0102_0304_0506_0708,
                delay_ms: 500,
                items: vec![(0, 3)],
            },
        ),
        (
            "group_extend",
            Message::GroupExtend {
                stream: "jobs".into(),
                group: "w".into(),
                consumer: 0x0102_0304_0506_0708,
                lease_ms: 1000,
                items: vec![],
            },
        ),
        (
            "cache_get",
            Message::CacheGet {
                cache: "sessions".into(),
                key: b(b"user:1"),
            },
        ),
        (
            "cache_put",
            Message::CachePut {
                cache: "sessions".into(),
                key: b(b"user:1"),
                value: b(b"{}"),
                ttl_ms: Some(60_000),
                if_version: None,
                writer: 0x5157_0000_0000_0001,
                sequence: 7,
            },
        ),
        (
            "cache_delete",
            Message::CacheDelete {
                cache: "sessions".into(),
                key: b(b"user:1"),
                if_version: Some(41),
                writer: 0,
                sequence: 0,
            },
        ),
        (
            "cache_value",
            Message::CacheValue {
                entry: Some(CacheEntry {
                    value: b(b"{}"),
                    version: 41,
                    expiry_ms: Some(1_700_000_060_000),
                }),
            },
        ),
        ("cache_miss", Message::CacheValue { entry: None }),
        ("cache_written", Message::CacheWritten { version: 42 }),
        (
            "cache_scan",
            Message::CacheScan {
                cache: "sessions".into(),
                shard: 3,
                after: Some(b(b"user:1")),
                count: 10,
            },
        ),
        (
            "cache_scan_first",
            Message::CacheScan {
                cache: "sessions".into(),
                shard: 0,
                after: None,
                count: 1_000,
            },
        ),
        (
            "cache_keys",
            Message::CacheKeys {
                keys: vec![b(b"user:2"), b(b"user:3")],
                next: Some(b(b"user:4")),
            },
        ),
        (
            "cache_keys_last",
            Message::CacheKeys {
                keys: vec![],
                next: None,
            },
        ),
        (
            "metadata",
            Message::Metadata {
                streams: vec!["orders".into()],
            },
        ),
        (
            "metadata_reply",
            Message::MetadataReply {
                brokers: vec![BrokerInfo {
                    id: 1,
                    address: "127.0.0.1:7000".into(),
                }],
                streams: vec![StreamInfo {
                    name: "orders".into(),
                    kind: StreamKind::Stream,
                    key_routing: KeyRouting::Slots,
                    shards: vec![
                        ShardInfo {
                            shard: 0,
                            leader: Some(1),
                            replicas: vec![1, 2, 3],
                        },
                        ShardInfo {
                            shard: 1,
                            leader: None,
                            replicas: vec![],
                        },
                    ],
                }],
            },
        ),
        ("done", Message::Done),
        ("stream_create", Message::StreamCreate(sample_config())),
        (
            "stream_delete",
            Message::StreamDelete {
                name: "dev/default/orders".into(),
                force: true,
            },
        ),
        (
            "stream_set_retention",
            Message::StreamSetRetention {
                name: "dev/default/orders".into(),
                retention_ms: Some(3_600_000),
                retention_bytes: None,
            },
        ),
        (
            "stream_describe",
            Message::StreamDescribe {
                name: "dev/default/orders".into(),
            },
        ),
        (
            "stream_description",
            Message::StreamDescription {
                config: StreamConfig {
                    retention_ms: None,
                    default_ttl_ms: Some(60_000),
                    ..sample_config()
                },
                shards: vec![ShardStats {
                    shard: 0,
                    earliest: 5,
                    next: 99,
                    bytes: 4096,
                    segments: 2,
                }],
            },
        ),
        (
            "error_not_leader",
            Message::Error(ErrorReply::NotLeader {
                leader: Some((2, "127.0.0.1:7001".into())),
            }),
        ),
        (
            "error_overloaded",
            Message::Error(ErrorReply::Overloaded { retry_after_ms: 50 }),
        ),
        (
            "error_out_of_range",
            Message::Error(ErrorReply::OffsetOutOfRange {
                earliest: 10,
                latest: 20,
            }),
        ),
        (
            "error_unknown_stream",
            Message::Error(ErrorReply::UnknownStream("no stream \"x\"".into())),
        ),
        (
            "error_unauthorized",
            Message::Error(ErrorReply::Unauthorized("token expired".into())),
        ),
        (
            "error_forbidden",
            Message::Error(ErrorReply::Forbidden("publish on orders".into())),
        ),
        (
            "error_invalid",
            Message::Error(ErrorReply::InvalidRequest("bad".into())),
        ),
        (
            "error_timeout",
            Message::Error(ErrorReply::Timeout("quorum".into())),
        ),
    ]
}

fn encode(m: &Message, id: u64) -> BytesMut {
    let mut out = BytesMut::new();
    m.encode(id, &mut out).unwrap();
    out
}

fn decode_all(bytes: &[u8]) -> Vec<Decoded> {
    let mut d = wire::decoder();
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(x) = d.next_frame().unwrap() {
        out.push(x);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_sample_round_trips_and_every_type_is_covered() {
    let mut kinds = std::collections::BTreeSet::new();
    for (name, m) in samples() {
        kinds.insert(m.kind());
        let bytes = encode(&m, 7);
        match &decode_all(&bytes)[..] {
            [Decoded::Frame(f)] => assert_eq!(wire::decode(f.clone()).unwrap(), (7, m), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let all: Vec<u8> = (0..=255u8).filter(|k| kind::known(*k)).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        all,
        "a sample of every message type"
    );
}

/// `client/tests/golden.txt`: `name hex` per line; regenerate with
/// FELIX_WRITE_GOLDEN=1 after a deliberate format change (and bump the
/// version in docs/format/wire.md).
#[test]
fn golden_vectors_match() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden.txt");
    let lines: Vec<String> = samples()
        .iter()
        .map(|(n, m)| format!("{n} {}", hex(&encode(m, 0x0102_0304_0506_0708))))
        .collect();
    if std::env::var("FELIX_WRITE_GOLDEN").is_ok() {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }
    let want = std::fs::read_to_string(path).unwrap();
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(want.len(), lines.len());
    for (w, g) in want.iter().zip(&lines) {
        assert_eq!(w, g);
    }
    // The header layout, spelled out once: magic, version, type, flags,
    // reserved, request id, body length.
    let done = want.iter().find(|l| l.starts_with("done ")).unwrap();
    assert_eq!(&done[5..], "4658016000000000080706050403020100000000");
}

/// Kind and durability are typed, so the codec is where a spelling or a
/// code no layer knows is refused (the broker never sees one).
#[test]
fn a_stream_config_with_an_unknown_kind_durability_replication_factor_or_routing_is_refused_as_it_is_read() {
    let c = StreamConfig {
        durability: Durability::None,
        ..sample_config()
    };
    let frame = encode(&Message::StreamCreate(c.clone()), 1);
    let body = &frame[HEADER_BYTES..];
    let at = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle).unwrap();
    let decode = |body: Vec<u8>| Message::decode(kind::STREAM_CREATE, Bytes::from(body));
    assert_eq!(
        decode(body.to_vec()).unwrap(),
        Message::StreamCreate(c),
        "the untouched body reads back"
    );

    let mut bad_kind = body.to_vec();
    bad_kind[at(b"dev/default/orders") + "dev/default/orders".len()] = 7;
    assert!(matches!(decode(bad_kind), Err(WireError::Invalid("stream kind"))));

    let mut bad_rf = body.to_vec();
    let n = bad_rf.len();
    bad_rf[n - 2] = 8;
    assert!(matches!(
        decode(bad_rf),
        Err(WireError::Invalid("replication factor"))
    ));

    let mut bad_routing = body.to_vec();
    *bad_routing.last_mut().unwrap() = 2;
    assert!(matches!(
        decode(bad_routing),
        Err(WireError::Invalid("key routing"))
    ));

    let mut bad_durability = body.to_vec();
    let d = at(b"none");
    bad_durability[d..d + 4].copy_from_slice(b"some");
    assert!(matches!(
        decode(bad_durability),
        Err(WireError::Invalid("durability"))
    ));
}

#[test]
fn malformed_frames_are_rejected_and_the_stream_carries_on() {
    let good = encode(
        &Message::CacheGet {
            cache: "c".into(),
            key: Bytes::from_static(b"k"),
        },
        1,
    );
    // unknown type 0x6e, unknown flag, oversized length (no body sent beyond
    // what the stream holds), count larger than the body.
    let mut unknown_type = encode(&Message::Done, 2);
    unknown_type[3] = 0x6e;
    let mut unknown_flag = encode(&Message::Done, 3);
    unknown_flag[4] = 0x01;
    let mut oversized = BytesMut::from(&encode(&Message::Done, 4)[..]);
    oversized[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let mut bad_count = encode(
        &Message::Metadata {
            streams: vec!["a".into()],
        },
        5,
    );
    bad_count[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&1000u32.to_le_bytes());

    let mut d = wire::decoder();
    let mut stream = Vec::new();
    for part in [
        &unknown_type[..],
        &good[..],
        &unknown_flag[..],
        &good[..],
        &bad_count[..],
        &good[..],
        &oversized[..],
    ] {
        stream.extend_from_slice(part);
    }
    d.feed(&stream);
    let mut seen = Vec::new();
    while let Some(x) = d.next_frame().unwrap() {
        seen.push(x);
    }
    // The oversized frame's declared body is skipped as it arrives, without
    // being buffered, and then the stream serves again.
    let rest = vec![0u8; 64 << 20];
    for chunk in rest.chunks(1 << 20) {
        d.feed(chunk);
        assert!(d.buffered() <= HEADER_BYTES, "skipped bytes are not kept");
    }
    d.feed(&good);
    while let Some(x) = d.next_frame().unwrap() {
        seen.push(x);
    }
    d.finish().unwrap();

    let mut replies = BytesMut::new();
    let mut outcomes = Vec::new();
    for x in seen {
        match x {
            Decoded::Rejected { request_id, error } => {
                wire::reject(request_id, &error, &mut replies);
                outcomes.push((request_id, Err(error)));
            }
            Decoded::Frame(f) => match wire::decode(f) {
                Ok((id, m)) => outcomes.push((id, Ok(m))),
                Err((id, e)) => {
                    wire::reject(id, &e, &mut replies);
                    outcomes.push((id, Err(e)));
                }
            },
        }
    }
    let ids: Vec<u64> = outcomes.iter().map(|o| o.0).collect();
    assert_eq!(ids, vec![2, 1, 3, 1, 5, 1, 4, 1]);
    assert_eq!(outcomes[0].1, Err(WireError::UnknownType(0x6e)));
    assert_eq!(outcomes[2].1, Err(WireError::UnknownFlags(1)));
    assert_eq!(outcomes[4].1, Err(WireError::CountExceedsBody("streams")));
    assert!(matches!(outcomes[6].1, Err(WireError::BodyTooLarge { .. })));
    assert_eq!(
        outcomes.iter().filter(|o| o.1.is_ok()).count(),
        4,
        "every valid request served"
    );
    // Each rejection is answered with a decodable error frame to its id.
    let answers = decode_all(&replies);
    assert_eq!(answers.len(), 4);
    for a in answers {
        let Decoded::Frame(f) = a else { panic!("{a:?}") };
        let (id, m) = wire::decode(f).unwrap();
        assert!([2, 3, 5, 4].contains(&id));
        assert!(matches!(m, Message::Error(ErrorReply::InvalidRequest(_))));
    }
}

#[test]
fn truncation_waits_then_fails_at_the_end_of_the_stream_and_bad_magic_is_fatal() {
    let f = encode(&Message::CacheWritten { version: 1 }, 1);
    for cut in 0..f.len() {
        let mut d = wire::decoder();
        d.feed(&f[..cut]);
        assert_eq!(d.next_frame().unwrap(), None, "cut at {cut} waits for more");
        assert_eq!(d.finish().is_err(), cut > 0);
        // A body cut short inside a complete frame is a decode error.
        if cut >= HEADER_BYTES {
            let body = Bytes::copy_from_slice(&f[HEADER_BYTES..cut]);
            assert!(Message::decode(kind::CACHE_WRITTEN, body).is_err());
        }
    }
    let mut bad = encode(&Message::Done, 1);
    bad[0] = b'G';
    let mut d = wire::decoder();
    d.feed(&bad);
    assert!(matches!(d.next_frame(), Err(WireError::BadMagic(_))));
    let mut v2 = encode(&Message::Done, 1);
    v2[2] = 2;
    let mut d = wire::decoder();
    d.feed(&v2);
    assert_eq!(d.next_frame(), Err(WireError::UnsupportedVersion(2)));
}

#[test]
fn encoding_refuses_what_the_peer_would_refuse() {
    let mut out = BytesMut::from(&b"prefix"[..]);
    let long = Message::CacheGet {
        cache: "x".repeat(256),
        key: Bytes::new(),
    };
    assert!(matches!(
        long.encode(1, &mut out),
        Err(WireError::TooLarge { .. })
    ));
    assert_eq!(&out[..], b"prefix", "nothing written on refusal");
    let many = Message::GroupAck {
        stream: "s".into(),
        group: "g".into(),
        items: vec![(0, 0); 4097],
    };
    assert!(many.encode(1, &mut out).is_err());
    // An error message is cut to its limit, never refused.
    let huge = Message::Error(ErrorReply::Internal("é".repeat(2000)));
    huge.encode(9, &mut out).unwrap();
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,20}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn config() -> impl Strategy<Value = StreamConfig> {
    (
        name(),
        (0..3u8).prop_map(|k| StreamKind::from_code(k).unwrap()),
        any::<u32>(),
        prop_oneof![
            Just(Durability::Always),
            Just(Durability::None),
            (1..u64::MAX).prop_map(|ms| Durability::Interval { ms }),
        ],
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<u32>(),
        any::<Option<u64>>(),
        0..=7u32,
        (0..2u8).prop_map(|c| KeyRouting::from_code(c).unwrap()),
    )
        .prop_map(
            |(
                name,
                kind,
                shards,
                durability,
                retention_ms,
                retention_bytes,
                max_deliveries,
                default_ttl_ms,
                replication_factor,
                key_routing,
            )| {
                StreamConfig {
                    name,
                    kind,
                    shards,
                    durability,
                    retention_ms,
                    retention_bytes,
                    max_deliveries,
                    default_ttl_ms,
                    replication_factor,
                    key_routing,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        config().prop_map(Message::StreamCreate),
        (
            config(),
            prop::collection::vec(any::<(u32, u64, u64, u64, u32)>(), 0..4)
        )
            .prop_map(|(config, s)| {
                Message::StreamDescription {
                    config,
                    shards: s
                        .into_iter()
                        .map(|(shard, earliest, next, bytes, segments)| ShardStats {
                            shard,
                            earliest,
                            next,
                            bytes,
                            segments,
                        })
                        .collect(),
                }
            }),
        (any::<u16>(), any::<u64>(), blob()).prop_map(|(version, capabilities, token)| Message::Hello {
            version,
            capabilities,
            token
        }),
        (
            name(),
            prop::option::of(0..u32::MAX),
            0..3u8,
            any::<u64>(),
            any::<u64>(),
            blob()
        )
            .prop_map(|(stream, shard, ack, producer_id, sequence, batch)| {
                let ack = [AckLevel::None, AckLevel::Leader, AckLevel::Quorum][ack as usize];
                Message::Publish {
                    stream,
                    shard,
                    ack,
                    producer_id,
                    sequence,
                    batch,
                }
            }),
        (
            name(),
            prop::collection::vec(any::<u32>(), 0..8),
            0..5u8,
            any::<u64>(),
            prop::option::of(name()),
            any::<u32>()
        )
            .prop_map(|(stream, shards, tag, v, durable, credit_bytes)| {
                let start = [
                    Start::Earliest,
                    Start::Latest,
                    Start::Offset(v),
                    Start::Time(v as i64),
                    Start::Committed,
                ][tag as usize];
                Message::Subscribe {
                    stream,
                    shards,
                    start,
                    durable,
                    credit_bytes,
                }
            }),
        (any::<u64>(), any::<u32>(), any::<u64>(), blob()).prop_map(
            |(subscription, shard, next_offset, batches)| Message::Push {
                subscription,
                shard,
                next_offset,
                batches
            }
        ),
        (
            any::<i64>(),
            prop::collection::vec(
                (
                    any::<u32>(),
                    any::<u64>(),
                    any::<u32>(),
                    any::<i64>(),
                    prop::option::of(blob()),
                    blob()
                ),
                0..5
            )
        )
            .prop_map(|(lease_until_ms, rs)| {
                let records = rs
                    .into_iter()
                    .map(
                        |(shard, offset, deliveries, timestamp_ms, key, value)| GroupRecord {
                            shard,
                            offset,
                            deliveries,
                            timestamp_ms,
                            key,
                            value,
                        },
                    )
                    .collect();
                Message::GroupRecords {
                    lease_until_ms,
                    records,
                }
            }),
        (
            name(),
            name(),
            any::<u64>(),
            any::<u32>(),
            prop::collection::vec((any::<u32>(), any::<u64>()), 0..8)
        )
            .prop_map(|(stream, group, consumer, delay_ms, items)| Message::GroupNack {
                stream,
                group,
                consumer,
                delay_ms,
                items
            }),
        (
            name(),
            blob(),
            blob(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(cache, key, value, ttl_ms, if_version, writer, sequence)| {
                Message::CachePut {
                    cache,
                    key,
                    value,
                    ttl_ms,
                    if_version,
                    writer,
                    sequence,
                }
            }),
        prop::option::of((blob(), any::<u64>(), prop::option::of(any::<i64>()))).prop_map(|e| {
            Message::CacheValue {
                entry: e.map(|(value, version, expiry_ms)| CacheEntry {
                    value,
                    version,
                    expiry_ms,
                }),
            }
        }),
        (
            prop::collection::vec((any::<u64>(), name()), 0..4),
            prop::collection::vec(
                (
                    name(),
                    any::<u8>(),
                    prop::collection::vec(
                        (
                            any::<u32>(),
                            prop::option::of(any::<u64>()),
                            prop::collection::vec(any::<u64>(), 0..5)
                        ),
                        0..4
                    )
                ),
                0..4
            )
        )
            .prop_map(|(b, s)| {
                Message::MetadataReply {
                    brokers: b
                        .into_iter()
                        .map(|(id, address)| BrokerInfo { id, address })
                        .collect(),
                    streams: s
                        .into_iter()
                        .map(|(name, kind, sh)| StreamInfo {
                            name,
                            kind: StreamKind::from_code(kind % 3).unwrap(),
                            key_routing: KeyRouting::from_code(kind % 2).unwrap(),
                            shards: sh
                                .into_iter()
                                .map(|(shard, leader, replicas)| ShardInfo {
                                    shard,
                                    leader,
                                    replicas,
                                })
                                .collect(),
                        })
                        .collect(),
                }
            }),
        (
            prop::option::of((any::<u64>(), name())),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            "[ -~]{0,40}"
        )
            .prop_map(|(leader, r, e, l, text)| {
                Message::Error(match r % 4 {
                    0 => ErrorReply::NotLeader { leader },
                    1 => ErrorReply::Overloaded { retry_after_ms: r },
                    2 => ErrorReply::OffsetOutOfRange {
                        earliest: e,
                        latest: l,
                    },
                    _ => ErrorReply::Forbidden(text),
                })
            }),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_through_a_split_stream(ms in prop::collection::vec(message(), 1..6), split in 1..64usize) {
        let mut bytes = BytesMut::new();
        for (i, m) in ms.iter().enumerate() {
            m.encode(i as u64, &mut bytes).unwrap();
        }
        let mut d = wire::decoder();
        let mut got = Vec::new();
        for chunk in bytes.chunks(split) {
            d.feed(chunk);
            while let Some(Decoded::Frame(f)) = d.next_frame().unwrap() {
                got.push(wire::decode(f).unwrap());
            }
        }
        d.finish().unwrap();
        let want: Vec<(u64, Message)> = ms.into_iter().enumerate().map(|(i, m)| (i as u64, m)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200), k in any::<u8>()) {
        let _ = Message::decode(k, Bytes::from(b.clone()));
        let mut d = wire::decoder();
        d.feed(&b);
        while let Ok(Some(x)) = d.next_frame() {
            if let Decoded::Frame(f) = x {
                let _ = wire::decode(f);
            }
        }
    }
}
