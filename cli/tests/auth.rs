//! The control plane's auth and metadata as brokers enforce them, end to
//! end: `felix dev` (broker plus embedded control plane) as a real
//! process; tenants, RBAC, quotas and tokens set up through the control
//! plane's HTTP API as an operator would.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{publish_one as publish, rt, Broker};
use felix_client::wire::{ErrorReply, Message, Start};
use felix_client::{Client, ClientError, Route, SubscribeOptions};
use serde_json::{json, Value};

struct Cp {
    url: String,
    secret: String,
    http: reqwest::Client,
}

impl Cp {
    fn of(b: &Broker) -> Cp {
        Cp {
            url: b
                .profile
                .controlplane
                .clone()
                .expect("felix dev names its control plane"),
            secret: std::fs::read_to_string(b.dir.join("controlplane/secret")).unwrap(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body)).await;
        assert!((200..300).contains(&s), "{path}: {s} {v}");
        v
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
    felix_client::wire::StreamConfig::stream(name, 1, "always")
}

#[test]
fn tokens_are_checked_at_the_handshake_and_tenants_cannot_see_or_touch_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let cp = Cp::of(&b);
        // Tenant acme: alice manages namespace prod, bob may only read one stream.
        cp.ok(reqwest::Method::POST, "/v1/tenants", json!({"name": "acme"}))
            .await;
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            json!({"name": "prod"}),
        )
        .await;
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
                .subscribe(
                    other,
                    SubscribeOptions {
                        start: Start::Earliest,
                        ..SubscribeOptions::default()
                    },
                )
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
            .subscribe(
                "acme/prod/orders",
                SubscribeOptions {
                    start: Start::Earliest,
                    ..SubscribeOptions::default()
                },
            )
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
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let b = Broker::start(dir.path());
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
            json!({"quotas": {"publish_records_per_s_max": 50}}),
        )
        .await;
        let conn = dev.connection(&b.profile.brokers[0]).await.unwrap();
        let started = Instant::now();
        let mut admitted = 0;
        let refused = loop {
            match conn.request(&publish("events", b"q"), 5_000).await {
                Ok(Message::PublishAck { .. }) => admitted += 1,
                Ok(Message::Error(e)) | Err(ClientError::Broker(e)) => break e,
                r => panic!("{r:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the quota never refused"
            );
        };
        let ErrorReply::Overloaded { retry_after_ms } = refused else {
            panic!("refused with {refused:?}")
        };
        assert!(refused.retryable());
        assert!((1..=1_000).contains(&retry_after_ms), "{retry_after_ms}");
        assert!(
            (40..=200).contains(&admitted),
            "{admitted} publishes admitted before the refusal at 50/s"
        );
        // After the wait it asked for, a publish goes through.
        tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms) + 50)).await;
        assert!(matches!(
            conn.request(&publish("events", b"q"), 5_000).await.unwrap(),
            Message::PublishAck { .. }
        ));
        // Lifting the quota lifts the limit.
        cp.ok(
            reqwest::Method::PUT,
            "/v1/tenants/dev/namespaces/default",
            json!({"quotas": {}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..200 {
            assert!(matches!(
                conn.request(&publish("events", b"q"), 5_000).await.unwrap(),
                Message::PublishAck { .. }
            ));
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
            .subscribe(
                "events",
                SubscribeOptions {
                    start: Start::Earliest,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        let path = "/v1/tenants/dev/namespaces/default/streams/events";
        // Heartbeats come every 5 s; wait for one that carries the count.
        tokio::time::sleep(Duration::from_millis(6_000)).await;
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
/// asynchronous), for at most 15 s.
async fn wait_for<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not reached within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
