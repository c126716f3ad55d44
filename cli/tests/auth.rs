//! The control plane's auth and metadata as brokers enforce them, end to
//! end: `felix dev` (broker plus embedded control plane) as a real
//! process; tenants, RBAC, quotas and tokens set up through the control
//! plane's HTTP API as an operator would.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{dev_broker, publish_one as publish, Broker, Cp};
use felix_client::conn::Connection;
use felix_client::wire::{ErrorReply, Message, Start};
use felix_client::{Client, ClientError, Route, SubscribeOptions};
use serde_json::json;

/// Tenant `acme` with namespace `prod`, through the operator's API.
trait AcmeProd {
    async fn acme_prod(&self);
    async fn token(&self, tenant: &str, principal: &str) -> String;
}

impl AcmeProd for Cp {
    async fn acme_prod(&self) {
        self.ok(reqwest::Method::POST, "/v1/tenants", json!({"name": "acme"}))
            .await;
        self.ok(
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            json!({"name": "prod"}),
        )
        .await;
    }

    async fn token(&self, tenant: &str, principal: &str) -> String {
        let v = self
            .ok(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/token/issue"),
                json!({ "principal": principal }),
            )
            .await;
        v["access_token"].as_str().unwrap().to_owned()
    }
}

async fn client_with(b: &Broker, token: &str) -> Result<Client, ClientError> {
    let mut c = b.client_config();
    c.token = Bytes::from(token.to_owned());
    Client::connect(c).await
}

/// What a request is refused with (panics if it is not refused).
async fn refusal(c: &Client, m: &Message) -> ErrorReply {
    match c.call(Route::Any, m).await {
        Err(ClientError::Broker(e)) => e,
        Ok(Message::Error(e)) => e,
        other => panic!("{m:?} was not refused: {other:?}"),
    }
}

fn stream(name: &str) -> felix_client::wire::StreamConfig {
    felix_client::wire::StreamConfig::stream(name, 1, felix_client::wire::Durability::Always)
}

#[test]
fn tokens_are_checked_at_the_handshake_and_tenants_cannot_see_or_touch_each_other() {
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let cp = Cp::of(&b);
        // Tenant acme: alice manages namespace prod, bob may only read one stream.
        cp.acme_prod().await;
        for action in [
            "stream.publish",
            "stream.subscribe",
            "resource.manage",
            "cache.read",
            "cache.write",
        ] {
            cp.ok(
                reqwest::Method::POST,
                "/v1/tenants/acme/rbac/policies",
                json!({"subject": "p:alice", "object": "namespace:acme/prod", "action": action}),
            )
            .await;
        }
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/acme/rbac/policies",
            json!({"subject": "p:bob", "object": "stream:acme/prod/orders", "action": "stream.subscribe"}),
        )
        .await;
        let alice_token = cp.token("acme", "p:alice").await;
        let bob_token = cp.token("acme", "p:bob").await;

        // The development token (tenant dev) and alice each create a stream.
        let dev = b.client().await;
        common::create(&dev, stream("mine")).await;
        let alice = client_with(&b, &alice_token)
            .await
            .expect("alice's token is accepted");
        common::create(&alice, stream("acme/prod/orders")).await;
        assert!(matches!(
            alice.call(Route::Any, &publish("acme/prod/orders", b"a1")).await,
            Ok(Message::PublishAck { .. })
        ));
        // The creation went through the control plane, which now holds it.
        let (s, v) = cp
            .call(
                reqwest::Method::GET,
                "/v1/tenants/acme/namespaces/prod/streams/orders",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");

        // dev cannot see or touch acme, and acme cannot see or touch dev.
        for (c, other) in [(&dev, "acme/prod/orders"), (&alice, "dev/default/mine")] {
            let e = refusal(c, &publish(other, b"x")).await;
            assert!(matches!(e, ErrorReply::Forbidden(_)), "{e:?}");
            let e = refusal(
                c,
                &Message::Metadata {
                    streams: vec![other.into()],
                },
            )
            .await;
            assert!(matches!(e, ErrorReply::Forbidden(_)), "{e:?}");
            let e = refusal(
                c,
                &Message::StreamDelete {
                    name: other.into(),
                    force: true,
                },
            )
            .await;
            assert!(matches!(e, ErrorReply::Forbidden(_)), "{e:?}");
            let sub = c
                .subscribe(other, SubscribeOptions::starting(Start::Earliest))
                .await;
            assert!(sub.is_err(), "subscribing to another tenant's stream was allowed");
        }
        // A tenant's own listing shows only its streams.
        for (c, mine, theirs) in [(&dev, "dev/", "acme/"), (&alice, "acme/", "dev/")] {
            let Message::MetadataReply { streams, .. } =
                common::admin(c, Message::Metadata { streams: vec![] }).await
            else {
                panic!("no metadata reply")
            };
            assert!(!streams.is_empty());
            assert!(streams
                .iter()
                .all(|s| s.name.starts_with(mine) && !s.name.starts_with(theirs)));
        }

        // bob reads but may not write or manage.
        let bob = client_with(&b, &bob_token)
            .await
            .expect("bob's token is accepted");
        let e = refusal(&bob, &publish("acme/prod/orders", b"b")).await;
        assert!(matches!(e, ErrorReply::Forbidden(_)), "{e:?}");
        let e = refusal(&bob, &Message::StreamCreate(stream("acme/prod/other"))).await;
        assert!(matches!(e, ErrorReply::Forbidden(_)), "{e:?}");
        let mut sub = bob
            .subscribe("acme/prod/orders", SubscribeOptions::starting(Start::Earliest))
            .await
            .expect("bob may subscribe");
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.record.value.as_deref(), Some(&b"a1"[..]));

        // Tokens the broker refuses at the handshake.
        let mut tampered = alice_token.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        // Claims to be acme's, signed by a key acme never had.
        let foreign = felix_controlplane::auth::new_signing_key("stranger", [7; 32]);
        let forged = felix_controlplane::auth::sign(
            &foreign,
            "acme",
            "p:mallory",
            serde_json::from_value(json!([{"action": "stream.publish", "object": "tenant:acme"}])).unwrap(),
            felix_log::now_ms() as u64 / 1000,
            600,
        )
        .unwrap();
        // A tenant that does not exist.
        let ghost = felix_controlplane::auth::sign(
            &foreign,
            "ghost",
            "p:x",
            vec![],
            felix_log::now_ms() as u64 / 1000,
            600,
        )
        .unwrap();
        for (what, t) in [
            ("no token", ""),
            ("garbage", "not-a-token"),
            ("tampered", tampered.as_str()),
            ("unknown key", forged.as_str()),
            ("unknown tenant", ghost.as_str()),
        ] {
            match client_with(&b, t).await {
                Err(e) => assert!(e.to_string().contains("unauthorized"), "{what}: {e}"),
                Ok(c) => {
                    // The pool connects lazily: the first request meets the refusal.
                    let r = c.call(Route::Any, &Message::Metadata { streams: vec![] }).await;
                    assert!(
                        r.as_ref().is_err_and(|e| e.to_string().contains("unauthorized")),
                        "{what}: {r:?}"
                    );
                }
            }
        }
    });
}

#[test]
fn quotas_retention_and_deletes_from_the_control_plane_reach_the_broker() {
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let cp = Cp::of(&b);
        let dev = b.client().await;
        // A stream made through the control plane appears on the broker.
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/dev/namespaces/default/streams",
            json!({"name": "events", "shards": 2}),
        )
        .await;
        let info = wait_for(|| async { dev.stream_info("events").await.ok() }).await;
        assert_eq!(info.shards.len(), 2);

        // A namespace quota of 50 records/s: a burst is cut off with a
        // retryable Overloaded that says when to come back.
        cp.ok(
            reqwest::Method::PUT,
            "/v1/tenants/dev/namespaces/default",
            json!({"quotas": {"publish_records_per_s_max": QUOTA}}),
        )
        .await;
        let conn = dev.connection(&b.profile.brokers[0]).await.unwrap();
        // Until the feed brings the quota nothing is refused; from then the
        // bucket holds a second's worth, so at least that many pass before
        // the first refusal. (Bursts, not one publish at a time: a quota
        // refills a record every 20 ms, as long as a slow fsync may take.)
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admitted = 0;
        loop {
            let (a, refused, _) = burst(&conn, BURST).await;
            admitted += a;
            if refused > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the quota never refused");
        }
        assert!(
            admitted >= QUOTA,
            "{admitted} publishes admitted by the first refusal: the bucket starts with {QUOTA}"
        );
        // A burst far over the rate admits at most what the quota allows
        // over the time it took, measured. A run so slow that the quota
        // would allow all of it proves nothing, and is sent again.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (admitted, refused, elapsed) = burst(&conn, BURST).await;
            let allowed = quota_allows(QUOTA, elapsed);
            assert!(
                admitted <= allowed,
                "{admitted} of {BURST} admitted in {elapsed:?} at {QUOTA}/s: at most {allowed} may be"
            );
            if allowed < BURST {
                assert!(refused > 0, "{refused}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no burst of {BURST} was sent fast enough to meet the quota in 60 s"
            );
        }
        // After the wait it asks for, a publish goes through.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match conn.request(&publish("events", b"q"), 30_000).await {
                Ok(Message::PublishAck { .. }) => break,
                Ok(Message::Error(ErrorReply::Overloaded { retry_after_ms }))
                | Err(ClientError::Broker(ErrorReply::Overloaded { retry_after_ms })) => {
                    assert!(Instant::now() < deadline, "still refused after 30 s");
                    tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
                }
                r => panic!("{r:?}"),
            }
        }
        // Lifting the quota lifts the limit: once the feed brings the
        // change, a burst is admitted whole, and faster than the quota
        // would have allowed.
        cp.ok(
            reqwest::Method::PUT,
            "/v1/tenants/dev/namespaces/default",
            json!({"quotas": {}}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (admitted, refused, elapsed) = burst(&conn, BURST).await;
            if refused == 0 && admitted > quota_allows(QUOTA, elapsed) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still limited 60 s after the quota was lifted: {refused} of {BURST} refused in {elapsed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A retention change reaches the broker live.
        cp.ok(
            reqwest::Method::PATCH,
            "/v1/tenants/dev/namespaces/default/streams/events",
            json!({"retention_ms": 3_600_000}),
        )
        .await;
        wait_for(|| async {
            match common::admin(
                &dev,
                Message::StreamDescribe {
                    name: "events".into(),
                },
            )
            .await
            {
                Message::StreamDescription { config, .. } => {
                    (config.retention_ms == Some(3_600_000)).then_some(())
                }
                _ => None,
            }
        })
        .await;

        // A delete is refused while a subscriber is attached (the broker's
        // heartbeat says so), and goes through with force.
        let mut sub = dev
            .subscribe("events", SubscribeOptions::starting(Start::Earliest))
            .await
            .unwrap();
        // A record delivered: the broker counts the subscription.
        tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a record within 30 s")
            .expect("subscription open")
            .expect("a record");
        let path = "/v1/tenants/dev/namespaces/default/streams/events";
        // The delete is judged on the counts of the broker's last heartbeat
        // (every 5 s), which no read endpoint shows. The first heartbeat
        // answered after this point may have been sent before the
        // subscription was counted; the broker sends the next only once
        // that one is answered, so the second carries the count.
        let before = heartbeats_answered(&cp).await;
        wait_for(|| async { (heartbeats_answered(&cp).await >= before + 2.0).then_some(()) }).await;
        let (s, refused) = cp.call(reqwest::Method::DELETE, path, None).await;
        assert_eq!(s, 409, "{refused}");
        assert!(refused.to_string().contains("subscri"), "{refused}");
        let (s, v) = cp
            .call(reqwest::Method::DELETE, &format!("{path}?force=true"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        wait_for(|| async {
            match dev
                .call(
                    Route::Any,
                    &Message::StreamDescribe {
                        name: "events".into(),
                    },
                )
                .await
            {
                Err(ClientError::Broker(ErrorReply::UnknownStream(_))) => Some(()),
                _ => None,
            }
        })
        .await;
    });
}

/// Polls `f` until it gives a value (the feed and heartbeats are
/// asynchronous), for at most 30 s.
async fn wait_for<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not reached within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespace quota the quota test sets, in records a second.
const QUOTA: u32 = 50;
/// Publishes in one burst: far more than [`QUOTA`] admits in the second
/// or so a burst takes.
const BURST: u32 = 400;

/// The most a quota of `rate` records/s admits in `elapsed`: its bucket
/// when full (a second's worth), the one record it may go into debt by,
/// and what refills meanwhile (2 ms more for millisecond rounding).
fn quota_allows(rate: u32, elapsed: Duration) -> u32 {
    let refilled = (u128::from(rate) * (elapsed.as_millis() + 2)).div_ceil(1000);
    u32::try_from(u128::from(rate) + 1 + refilled).unwrap_or(u32::MAX)
}

/// Sends `n` single-record publishes to `events` over `conn` from 16
/// concurrent senders: how many were acknowledged, how many refused, and
/// the time from the first send to the last answer. A refusal must be a
/// retryable `Overloaded` that says when to come back.
async fn burst(conn: &Arc<Connection>, n: u32) -> (u32, u32, Duration) {
    let sent = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (conn, sent) = (conn.clone(), sent.clone());
        senders.spawn(async move {
            let (mut admitted, mut refused) = (0u32, 0u32);
            while sent.fetch_add(1, Ordering::Relaxed) < n {
                match conn.request(&publish("events", b"q"), 30_000).await {
                    Ok(Message::PublishAck { .. }) => admitted += 1,
                    Ok(Message::Error(e)) | Err(ClientError::Broker(e)) => {
                        let ErrorReply::Overloaded { retry_after_ms } = e else {
                            panic!("refused with {e:?}")
                        };
                        assert!(e.retryable());
                        assert!((1..=1_000).contains(&retry_after_ms), "{retry_after_ms}");
                        refused += 1;
                    }
                    r => panic!("{r:?}"),
                }
            }
            (admitted, refused)
        });
    }
    let (mut admitted, mut refused) = (0, 0);
    while let Some(r) = senders.join_next().await {
        let (a, f) = r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        admitted += a;
        refused += f;
    }
    (admitted, refused, started.elapsed())
}

/// Broker heartbeats the control plane has answered, from its request
/// counter (`felix dev`'s one broker is the only one heartbeating).
async fn heartbeats_answered(cp: &Cp) -> f64 {
    let text = felix_testkit::scrape::fetch(&cp.http, &cp.url).await;
    felix_testkit::scrape::sum(
        &text,
        "felix_cp_api_requests_total",
        &["route=\"/v1/brokers/:broker/heartbeat\"", "status=\"200\""],
    )
}

/// Issue 26 finding 8: a producer id is bound to the principal that sends
/// it. Another principal who saw it (every reader sees batches' producer
/// ids) cannot claim its next sequence and have the owner's write answered
/// as a duplicate and dropped; the owner's own retry, from a new
/// connection too, is still recognised.
#[test]
fn a_producer_id_is_bound_to_its_principal_so_another_cannot_claim_its_sequence() {
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let cp = Cp::of(&b);
        cp.acme_prod().await;
        for (who, action) in [
            ("p:alice", "stream.publish"),
            ("p:alice", "resource.manage"),
            ("p:bob", "stream.publish"),
        ] {
            cp.ok(
                reqwest::Method::POST,
                "/v1/tenants/acme/rbac/policies",
                json!({"subject": who, "object": "namespace:acme/prod", "action": action}),
            )
            .await;
        }
        let alice_token = cp.token("acme", "p:alice").await;
        let bob_token = cp.token("acme", "p:bob").await;
        let alice = client_with(&b, &alice_token).await.unwrap();
        common::create(&alice, stream("acme/prod/orders")).await;
        const P: u64 = 0x1234_5678_9abc;
        let publish = |value: &[u8]| Message::Publish {
            stream: "acme/prod/orders".into(),
            shard: Some(0),
            ack: felix_client::wire::AckLevel::Leader,
            producer_id: P,
            sequence: 0,
            batch: felix_testkit::Batch::of(&[value]).producer(P, 0).bytes(),
        };
        let offset = |r: Result<Message, ClientError>| match r {
            Ok(Message::PublishAck { base_offset, .. }) => base_offset,
            other => panic!("{other:?}"),
        };
        let bob = client_with(&b, &bob_token).await.unwrap();
        let squatted = offset(bob.call(Route::Any, &publish(b"bob")).await);
        let first = offset(alice.call(Route::Any, &publish(b"alice")).await);
        assert_ne!(first, squatted, "alice's write was taken for bob's and dropped");
        let again = client_with(&b, &alice_token).await.unwrap();
        assert_eq!(
            offset(again.call(Route::Any, &publish(b"alice")).await),
            first,
            "alice's retry is her own duplicate"
        );
    });
}

/// Issue 26 finding 5: a namespace's quotas on streams, shards, storage and
/// subscriptions, set by the operator, are enforced: creates past a count
/// are refused by the control plane, and brokers refuse a publish once the
/// namespace holds its storage quota and a subscription past its count,
/// each as `QuotaExceeded`, while what was written stays readable, other
/// namespaces go on, and a delete frees room.
#[test]
fn usage_quotas_refuse_what_would_pass_them_and_keep_what_was_written() {
    const STORAGE_BYTES_MAX: u64 = 64 * 1024;
    const RECORD_BYTES: usize = 4096;
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let cp = Cp::of(&b);
        let dev = b.client().await;
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/dev/namespaces",
            json!({"name": "small", "quotas": {"streams_max": 2, "shards_max": 2,
                   "storage_bytes_max": STORAGE_BYTES_MAX, "subscribe_connections_max": 1}}),
        )
        .await;
        let quota_refusal = |e: ErrorReply, says: &str| match e {
            ErrorReply::QuotaExceeded(m) => assert!(m.contains(says), "{m}"),
            e => panic!("refused with {e:?}, not QuotaExceeded ({says})"),
        };
        // Counts: two shards and two streams at most.
        common::create(&dev, common::stream_config("dev/small/a", 1)).await;
        let e = refusal(
            &dev,
            &Message::StreamCreate(common::stream_config("dev/small/b", 2)),
        )
        .await;
        quota_refusal(e, "shards_max");
        common::create(&dev, common::stream_config("dev/small/b", 1)).await;
        let e = refusal(
            &dev,
            &Message::StreamCreate(common::stream_config("dev/small/c", 1)),
        )
        .await;
        quota_refusal(e, "streams_max");

        // Storage: publishes are acknowledged until the brokers see the
        // namespace hold its quota, then refused. Paced so that the
        // overshoot (what is written before the broker's next look at
        // itself, every second) stays measurable.
        let conn = dev.connection(&b.profile.brokers[0]).await.unwrap();
        let value = vec![7u8; RECORD_BYTES];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut acked = 0u64;
        let refused = loop {
            match conn.request(&publish("dev/small/a", &value), 30_000).await {
                Ok(Message::PublishAck { .. }) => acked += 1,
                Ok(Message::Error(e)) | Err(ClientError::Broker(e)) => break e,
                r => panic!("{r:?}"),
            }
            assert!(Instant::now() < deadline, "{acked} publishes and no refusal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        quota_refusal(refused, "storage_bytes_max");
        let acked_bytes = acked * RECORD_BYTES as u64;
        assert!(
            acked_bytes >= STORAGE_BYTES_MAX - RECORD_BYTES as u64,
            "refused after {acked_bytes} bytes"
        );
        // At most about two seconds of these publishes past the quota.
        let overshoot_max = 100 * RECORD_BYTES as u64;
        assert!(
            acked_bytes <= STORAGE_BYTES_MAX + overshoot_max,
            "{acked_bytes} bytes acknowledged against a quota of {STORAGE_BYTES_MAX}"
        );
        // The other stream of the namespace is refused too; another
        // namespace is not.
        let e = refusal(&dev, &publish("dev/small/b", b"x")).await;
        quota_refusal(e, "storage_bytes_max");
        common::create(&dev, common::stream_config("other", 1)).await;
        assert!(matches!(
            conn.request(&publish("other", b"x"), 30_000).await,
            Ok(Message::PublishAck { .. })
        ));

        // Everything acknowledged is readable, through the namespace's one
        // subscription; a second is refused while it is open.
        let mut sub = dev
            .subscribe("dev/small/a", SubscribeOptions::starting(Start::Earliest))
            .await
            .unwrap();
        for i in 0..acked {
            let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .unwrap_or_else(|_| panic!("record {i} of {acked} within 30 s"))
                .expect("subscription open")
                .expect("a record");
            assert_eq!(d.record.offset.0, i);
            assert_eq!(d.record.value.map(|v| v.len()), Some(RECORD_BYTES));
        }
        // (A subscription is opened by its first request: the refusal is
        // its first delivery.)
        let first = |stream: &'static str| {
            let dev = dev.clone();
            async move {
                let mut sub = dev
                    .subscribe(stream, SubscribeOptions::starting(Start::Earliest))
                    .await
                    .unwrap();
                tokio::time::timeout(Duration::from_secs(30), sub.next())
                    .await
                    .expect("a delivery or a refusal within 30 s")
                    .expect("a delivery or a refusal")
            }
        };
        match first("dev/small/a").await {
            Err(ClientError::Broker(e)) => quota_refusal(e, "subscribe_connections_max"),
            r => panic!("a second subscription: {r:?}"),
        }
        // The control plane shows the usage the brokers reported.
        wait_for(|| async {
            let text = felix_testkit::scrape::fetch(&cp.http, &cp.url).await;
            let used = felix_testkit::scrape::sum(
                &text,
                "felix_cp_quota_used",
                &["scope=\"dev/small\"", "quota=\"storage_bytes_max\""],
            );
            let limit = felix_testkit::scrape::sum(
                &text,
                "felix_cp_quota_limit",
                &["scope=\"dev/small\"", "quota=\"storage_bytes_max\""],
            );
            (used >= (STORAGE_BYTES_MAX - RECORD_BYTES as u64) as f64 && limit == STORAGE_BYTES_MAX as f64)
                .then_some(())
        })
        .await;

        // Once the subscription closes, another may open; deleting the
        // full stream makes room for publishes again.
        drop(sub);
        wait_for(|| async { first("dev/small/a").await.ok() }).await;
        common::admin(
            &dev,
            Message::StreamDelete {
                name: "dev/small/a".into(),
                force: true,
            },
        )
        .await;
        wait_for(|| async {
            matches!(
                conn.request(&publish("dev/small/b", b"x"), 30_000).await,
                Ok(Message::PublishAck { .. })
            )
            .then_some(())
        })
        .await;
    });
}
