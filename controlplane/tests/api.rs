//! The HTTP API of a one-node control plane, end to end over 127.0.0.1.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use felix_controlplane::api::ROUTES;
use felix_controlplane::auth::{new_signing_key, Verifier};
use felix_controlplane::node::NodeConfig;
use felix_controlplane::server::{self, Handle};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "test-cluster-secret-0123456789";
const BOOT: &str = "test-bootstrap-secret-0123456789";

struct Cp {
    h: Handle,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Cp {
    async fn start() -> Cp {
        Cp::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::single(
            dir.path().join("cp"),
            "127.0.0.1:0".parse().unwrap(),
            SECRET.into(),
        );
        configure(&mut cfg);
        cfg.bootstrap_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.bootstrap_secret = Some(BOOT.into());
        cfg.token_ttl_s = 60;
        let h = server::start(cfg).await.unwrap();
        let cp = Cp {
            h,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        cp.wait_leader().await;
        cp
    }

    /// Waits for the one node to lead.
    async fn wait_leader(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.h.node.is_leader() {
            assert!(std::time::Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("http://{}{path}", self.h.addr));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn op(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(SECRET), body).await
    }
}

fn err(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

async fn with_brokers(cp: &Cp, n: u32) {
    for id in 1..=n {
        let (s, v) = cp
            .op(
                Method::POST,
                "/v1/brokers",
                Some(json!({"id": id, "client_addr": format!("127.0.0.1:{}", 7000 + id), "raft_addr": format!("127.0.0.1:{}", 7100 + id), "zone": format!("z{id}")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

/// A documented route (`ROUTES`) as a request: its method, and its path
/// with every parameter filled in, the tenant as `tenant`.
fn concrete(method: &str, path: &str, tenant: &str) -> (Method, String) {
    let path = path
        .replace("{tenant}", tenant)
        .replace("{namespace}", "n")
        .replace("{stream}", "s")
        .replace("{cache}", "c")
        .replace("{name}", "s")
        .replace("{shard}", "0")
        .replace("{broker}", "1")
        .replace("{group}", "1");
    (
        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
        path,
    )
}

#[tokio::test]
async fn every_documented_route_is_served_and_the_openapi_document_lists_it() {
    let cp = Cp::start().await;
    let (s, doc) = cp.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for (method, path, _, _) in ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
        let (m, concrete) = concrete(method, path, "t");
        let (s, v) = cp.call(m, &concrete, Some("x"), Some(json!({}))).await;
        assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(!err(&v).contains("no such endpoint"), "{method} {path}: {v}");
    }
    let (s, v) = cp.call(Method::GET, "/v1/nope", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(err(&v).contains("openapi"), "{v}");
    cp.h.shutdown().await;
}

#[tokio::test]
async fn tenants_namespaces_streams_and_caches_with_bad_input() {
    let cp = Cp::start().await;
    with_brokers(&cp, 3).await;
    // Authentication first.
    let (s, _) = cp
        .call(Method::POST, "/v1/tenants", None, Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/tenants",
            Some("wrong"),
            Some(json!({"name": "acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Bad input says what is wrong.
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants", Some(json!({"name": "bad name"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("bad name"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "acme", "colour": "red"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("colour"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "acme", "quotas": {"publish_records_per_s_max": 0}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "acme", "display_name": "ACME"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for i in 0..5 {
        cp.op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": format!("t{i}")})),
        )
        .await;
    }
    // Pagination: 6 tenants in pages of 4.
    let (_, p1) = cp.op(Method::GET, "/v1/tenants?page_size=4", None).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 4);
    let tok = p1["next_page_token"].as_str().unwrap().to_owned();
    let (_, p2) = cp
        .op(
            Method::GET,
            &format!("/v1/tenants?page_size=4&page_token={tok}"),
            None,
        )
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 2);
    assert!(p2["next_page_token"].is_null());
    let (s, _) = cp.op(Method::GET, "/v1/tenants?page_size=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(json!({"name": "pay"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = cp
        .op(
            Method::POST,
            "/v1/tenants/nope/namespaces",
            Some(json!({"name": "pay"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let streams = "/v1/tenants/acme/namespaces/pay/streams";
    let (s, v) = cp
        .op(
            Method::POST,
            streams,
            Some(json!({"name": "orders", "shards": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("shards"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            streams,
            Some(json!({"name": "orders", "durability": "sometimes"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("durability"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            streams,
            Some(json!({"name": "orders", "replication_factor": 4})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "three brokers cannot hold four replicas: {v}"
    );
    let (s, v) = cp
        .op(Method::POST, streams, Some(json!({"name": "orders", "shards": 3, "replication_factor": 3, "retention_ms": 86400000, "kind": "stream"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, st) = cp.op(Method::GET, &format!("{streams}/orders"), None).await;
    assert_eq!(s, StatusCode::OK);
    let placement = st["placement"].as_array().unwrap();
    assert_eq!(placement.len(), 3);
    for p in placement {
        let mut r: Vec<u64> = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        r.sort();
        assert_eq!(r, vec![1, 2, 3]);
    }
    // A retention update reaches the feed.
    let (_, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    let v0 = snap["version"].as_u64().unwrap();
    assert_eq!(
        snap["tenants"]["acme"]["namespaces"]["pay"]["streams"]["orders"]["spec"]["retention_ms"],
        86400000
    );
    assert!(
        snap["tenants"]["acme"].get("idp_issuers").is_none(),
        "no secrets in the brokers' view"
    );
    let (s, v) = cp
        .op(
            Method::PATCH,
            &format!("{streams}/orders"),
            Some(json!({"retention_ms": 3600000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, feed) = cp
        .op(
            Method::GET,
            &format!("/v1/feed/changes?since={v0}&wait_ms=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ch = &feed["changes"][0]["change"];
    assert_eq!(
        (ch["type"].as_str(), ch["value"]["spec"]["retention_ms"].as_u64()),
        (Some("stream"), Some(3600000))
    );
    let (s, v) = cp
        .op(
            Method::PATCH,
            &format!("{streams}/orders"),
            Some(json!({"shards": 9})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("shards"), "{v}");
    // A long poll with nothing new waits, then answers with no changes.
    let t0 = std::time::Instant::now();
    let (_, v) = cp
        .op(
            Method::GET,
            &format!("/v1/feed/changes?since={}&wait_ms=300", feed["version"]),
            None,
        )
        .await;
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(v["changes"].as_array().unwrap().len(), 0);
    let (s, _) = cp.op(Method::GET, "/v1/feed/changes?since=x", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Delete refuses while subscribers are active.
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/brokers/1/heartbeat",
            Some(json!({"subscribers": {"acme/pay/orders": 2}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp.op(Method::DELETE, &format!("{streams}/orders"), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(err(&v).contains("2 active subscribers"), "{v}");
    let (s, _) = cp
        .op(Method::DELETE, &format!("{streams}/orders?force=true"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = cp.op(Method::GET, &format!("{streams}/orders"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Caches.
    let caches = "/v1/tenants/acme/namespaces/pay/caches";
    let (s, _) = cp
        .op(
            Method::POST,
            caches,
            Some(json!({"name": "sessions", "default_ttl_ms": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A memory bound brokers would not enforce is refused, not ignored.
    let (s, v) = cp.op(Method::POST, caches, Some(json!({"name": "sessions", "shards": 2, "default_ttl_ms": 60000, "memory_bytes_max": 1048576}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("memory_bytes_max"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            caches,
            Some(json!({"name": "sessions", "shards": 2, "default_ttl_ms": 60000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, l) = cp.op(Method::GET, caches, None).await;
    assert_eq!(l["items"][0]["name"], "sessions");
    let (s, v) = cp
        .op(Method::DELETE, "/v1/tenants/acme/namespaces/pay", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "not empty: {v}");
    cp.op(Method::DELETE, &format!("{caches}/sessions"), None).await;
    let (s, _) = cp
        .op(Method::DELETE, "/v1/tenants/acme/namespaces/pay", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // The audit log saw it all.
    let (_, a) = cp.op(Method::GET, "/v1/tenants/acme/audit", None).await;
    let ops: Vec<&str> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert!(ops.iter().any(|o| o.starts_with("delete_stream")), "{ops:?}");
    cp.h.shutdown().await;
}

fn upstream(k: &felix_controlplane::model::SigningKey, claims: Value) -> String {
    let der = URL_SAFE_NO_PAD.decode(&k.pkcs8).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&der)).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn bootstrap_token_exchange_rbac_and_isolation() {
    let cp = Cp::start().await;
    with_brokers(&cp, 1).await;
    let idp = new_signing_key("idp-1", [42; 32]);
    let issuer = json!({
        "issuer": "https://idp.test", "audiences": ["felix"],
        "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "idp-1", "x": idp.public}]},
        "claim_mappings": {"subject_claim": "sub", "groups_claim": "groups"}
    });
    // The bootstrap endpoint is on its own address behind its own secret.
    let boot = format!(
        "http://{}/internal/bootstrap/tenants/acme/initialize",
        cp.h.bootstrap_addr.unwrap()
    );
    let body =
        json!({"display_name": "ACME", "idp_issuers": [issuer], "initial_admin_principals": ["p:alice"]});
    let r = cp
        .http
        .post(&boot)
        .header("x-felix-bootstrap-token", "nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = cp
        .call(
            Method::POST,
            "/internal/bootstrap/tenants/acme/initialize",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not on the API address");
    let r = cp
        .http
        .post(&boot)
        .header("x-felix-bootstrap-token", BOOT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = cp
        .http
        .post(&boot)
        .header("x-felix-bootstrap-token", BOOT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "once per tenant");
    cp.op(Method::POST, "/v1/tenants", Some(json!({"name": "other"})))
        .await;

    let claims = |sub: &str| json!({"iss": "https://idp.test", "aud": "felix", "sub": sub, "exp": now_s() + 300, "groups": ["ops"]});
    let exchange = "/v1/tenants/acme/token/exchange";
    // Alice is an admin: she gets a token and manages the tenant with it.
    let (s, v) = cp
        .call(
            Method::POST,
            exchange,
            Some(&upstream(&idp, claims("alice"))),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let alice = v["access_token"].as_str().unwrap().to_owned();
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(&alice),
            Some(json!({"name": "pay"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Quotas are the operator's: alice cannot raise her own, and an edit
    // of the rest that leaves them out keeps them.
    let limited = json!({"quotas": {"storage_bytes_max": 1000, "streams_max": 3}});
    let (s, v) = cp
        .op(
            Method::PUT,
            "/v1/tenants/acme/namespaces/pay",
            Some(limited.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for body in [
        json!({"quotas": {"storage_bytes_max": 1_000_000_000, "streams_max": 3}}),
        json!({"quotas": {"streams_max": 3}}),
    ] {
        let (s, v) = cp
            .call(
                Method::PUT,
                "/v1/tenants/acme/namespaces/pay",
                Some(&alice),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(err(&v).contains("operator"), "{v}");
    }
    let (s, v) = cp
        .call(
            Method::PUT,
            "/v1/tenants/acme",
            Some(&alice),
            Some(json!({"display_name": "ACME", "quotas": {"shards_max": 1_000_000}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    for body in [limited.clone(), json!({"description": "payments"})] {
        let (s, v) = cp
            .call(
                Method::PUT,
                "/v1/tenants/acme/namespaces/pay",
                Some(&alice),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, v) = cp
        .call(Method::GET, "/v1/tenants/acme/namespaces/pay", Some(&alice), None)
        .await;
    assert_eq!(v["spec"]["description"], "payments", "{v}");
    assert_eq!(v["spec"]["quotas"]["storage_bytes_max"], 1000, "{v}");
    assert_eq!(v["spec"]["quotas"]["streams_max"], 3, "{v}");
    // Malformed RBAC objects are refused with what is wrong.
    for (object, says) in [
        ("tenant:*", "wildcard"),
        ("stream:*/*", "expected stream:{tenant}"),
        ("queue:acme/x", ""),
    ] {
        let (s, v) = cp
            .call(
                Method::POST,
                "/v1/tenants/acme/rbac/policies",
                Some(&alice),
                Some(json!({"subject": "ops", "object": object, "action": "stream.publish"})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{object}: {v}");
        assert!(err(&v).contains(says), "{object}: {v}");
    }
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/tenants/acme/rbac/policies",
            Some(&alice),
            Some(json!({"subject": "ops", "object": "stream:acme/pay/*", "action": "stream.fly"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("stream.fly"), "{v}");
    // The ops group may publish in pay; bob is in ops through his IdP.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/tenants/acme/rbac/policies",
            Some(&alice),
            Some(json!({"subject": "ops", "object": "stream:acme/pay/*", "action": "stream.publish"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp
        .call(
            Method::POST,
            exchange,
            Some(&upstream(&idp, claims("bob"))),
            Some(json!({"requested": ["stream.publish"], "resources": ["stream:acme/pay/orders"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["permissions"],
        json!([{"action": "stream.publish", "object": "stream:acme/pay/orders"}])
    );
    let bob = v["access_token"].as_str().unwrap().to_owned();
    // Nothing remains after narrowing: 403.
    let (s, _) = cp
        .call(
            Method::POST,
            exchange,
            Some(&upstream(&idp, claims("bob"))),
            Some(json!({"requested": ["cache.write"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Bob cannot administer.
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(&bob),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Upstream token failures: 401.
    for (claim, value, why) in [
        ("exp", json!(now_s() - 3600), "expired"),
        ("aud", json!("someone-else"), "audience"),
        ("iss", json!("https://evil.test"), "not trusted"),
    ] {
        let mut c = claims("bob");
        c[claim] = value;
        let (s, v) = cp
            .call(Method::POST, exchange, Some(&upstream(&idp, c)), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{claim}");
        assert!(err(&v).contains(why), "{claim}: {v}");
    }
    let forged = new_signing_key("idp-1", [43; 32]);
    let (s, v) = cp
        .call(
            Method::POST,
            exchange,
            Some(&upstream(&forged, claims("bob"))),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(err(&v).contains("signature"), "{v}");
    // The IdP is trusted by acme only.
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/tenants/other/token/exchange",
            Some(&upstream(&idp, claims("alice"))),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A Felix token of acme is refused by other: it cannot see or touch it.
    for (m, p) in [
        (Method::GET, "/v1/tenants/other"),
        (Method::GET, "/v1/tenants/other/namespaces"),
        (Method::POST, "/v1/tenants/other/namespaces"),
    ] {
        let (s, v) = cp.call(m, p, Some(&alice), Some(json!({"name": "x"}))).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
            "{p}: {s} {v}"
        );
    }
    // Tampered Felix token: 401.
    let mut parts: Vec<String> = alice.split('.').map(String::from).collect();
    parts[2] = URL_SAFE_NO_PAD.encode([0u8; 64]);
    let (s, _) = cp
        .call(Method::GET, "/v1/tenants/acme", Some(&parts.join(".")), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // JWKS, rotation: both keys verify during the overlap.
    let (_, j1) = cp
        .call(Method::GET, "/v1/tenants/acme/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(j1["keys"].as_array().unwrap().len(), 1);
    assert!(Verifier::from_jwks(&j1).verify(&bob, "acme", now_s()).is_ok());
    let (s, v) = cp
        .call(Method::POST, "/v1/tenants/acme/keys/rotate", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, j2) = cp
        .call(Method::GET, "/v1/tenants/acme/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(j2["keys"].as_array().unwrap().len(), 2);
    let v2 = Verifier::from_jwks(&j2);
    assert!(
        v2.verify(&bob, "acme", now_s()).is_ok(),
        "the old key still verifies"
    );
    let (_, v) = cp
        .op(
            Method::POST,
            "/v1/tenants/acme/token/issue",
            Some(json!({"principal": "p:alice"})),
        )
        .await;
    let new = v["access_token"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(new).unwrap().kid.unwrap();
    assert_eq!(kid, j2["keys"][1]["kid"].as_str().unwrap(), "the new key signs");
    assert!(v2.verify(new, "acme", now_s()).is_ok());
    // Operator-issued tokens follow RBAC too.
    let (s, _) = cp
        .op(
            Method::POST,
            "/v1/tenants/acme/token/issue",
            Some(json!({"principal": "p:nobody"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    cp.h.shutdown().await;
}

#[tokio::test]
async fn a_broker_that_stops_heartbeating_is_marked_down_and_its_replicas_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::single(
        dir.path().join("cp"),
        "127.0.0.1:0".parse().unwrap(),
        SECRET.into(),
    );
    // Down after 3 s of silence: brokers 1-3, which heartbeat every 100 ms
    // below, stay up even on a slow machine; broker 4, silent, goes down.
    cfg.broker_heartbeat_interval_ms = 200;
    cfg.broker_heartbeats_missed_max = 15;
    cfg.replace_after_ms = 500;
    let h = server::start(cfg).await.unwrap();
    let cp = Cp {
        h,
        http: reqwest::Client::new(),
        _dir: dir,
    };
    cp.wait_leader().await;
    with_brokers(&cp, 4).await;
    // Brokers 1-3 keep heartbeating, whatever the checks below cost.
    let (http, addr) = (cp.http.clone(), cp.h.addr);
    let beats = tokio::spawn(async move {
        loop {
            for id in 1..=3 {
                let _ = http
                    .post(format!("http://{addr}/v1/brokers/{id}/heartbeat"))
                    .bearer_auth(SECRET)
                    .send()
                    .await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    cp.op(Method::POST, "/v1/tenants", Some(json!({"name": "t"})))
        .await;
    cp.op(
        Method::POST,
        "/v1/tenants/t/namespaces",
        Some(json!({"name": "n"})),
    )
    .await;
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants/t/namespaces/n/streams",
            Some(json!({"name": "s", "shards": 4, "replication_factor": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Broker 4 goes silent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, st) = cp
            .op(Method::GET, "/v1/tenants/t/namespaces/n/streams/s", None)
            .await;
        let on4 = st["placement"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["replicas"].as_array().unwrap().contains(&json!(4)));
        let (_, b) = cp.op(Method::GET, "/v1/brokers", None).await;
        let down = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["registration"]["id"] == 4 && x["status"] == "down");
        let up = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "active")
            .count();
        assert!(up >= 3, "heartbeating brokers stay active: {b}");
        if down && !on4 {
            for p in st["placement"].as_array().unwrap() {
                let r = p["replicas"].as_array().unwrap();
                assert_eq!(r.len(), 3);
                assert!(!r.contains(&json!(4)));
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "broker 4 not re-placed: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A heartbeat brings it back up.
    cp.op(Method::POST, "/v1/brokers/4/heartbeat", None).await;
    let (_, b) = cp.op(Method::GET, "/v1/brokers", None).await;
    assert!(
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["registration"]["id"] == 4 && x["status"] == "active"),
        "{b}"
    );
    beats.abort();
    cp.h.shutdown().await;
}

#[tokio::test]
async fn a_scrape_shows_api_calls_by_route_and_the_nodes_state() {
    let cp = Cp::start().await;
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/tenants",
            Some(SECRET),
            Some(json!({"name": "scraped"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = cp
        .call(Method::GET, "/v1/tenants/scraped", Some("bad"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let url = |p: &str| format!("http://{}{p}", cp.h.addr);
    assert_eq!(
        cp.http.get(url("/live")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        cp.http.get(url("/ready")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let text = felix_testkit::scrape::fetch(&cp.http, &url("")).await;
    let value = |series: &str| -> f64 {
        felix_testkit::scrape::series(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    // Labels by the matched route, never the raw path.
    assert!(value("felix_cp_api_requests_total{route=\"/v1/tenants\",status=\"200\"}") >= 1.0);
    assert!(value("felix_cp_api_requests_total{route=\"/v1/tenants/:tenant\",status=\"401\"}") >= 1.0);
    assert!(!text.contains("route=\"/v1/tenants/scraped\""));
    assert_eq!(value("felix_cp_leader"), 1.0);
    assert!(value("felix_cp_metadata_version") >= 1.0);
    assert!(value("felix_cp_tenants") >= 1.0);
    // Another test's node may have set it (one recorder per process).
    assert!(value("felix_cp_bridges") >= 0.0);
    assert!(text.contains("felix_cp_api_request_duration_seconds_bucket{route=\"/v1/tenants\""));
    cp.h.shutdown().await;
}

/// A token without `rbac.policy.manage` asking, again and again, for
/// policies it may not write is refused before anything is proposed: the
/// audit log (capped, shared by every tenant) does not fill with its
/// refusals, and nothing it asked for is granted.
#[tokio::test]
async fn refused_rbac_edits_are_not_proposed_and_do_not_fill_the_audit_log() {
    let cp = Cp::start().await;
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let reader = json!({"subject": "p:reader", "object": "stream:acme/pay/*", "action": "stream.subscribe"});
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants/acme/rbac/policies", Some(reader))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants/acme/token/issue",
            Some(json!({"principal": "p:reader"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["access_token"].as_str().unwrap().to_owned();
    let audited = |v: &Value| v["items"].as_array().map_or(0, Vec::len);
    let (_, before) = cp.op(Method::GET, "/v1/audit", None).await;
    for i in 0..50 {
        let (s, v) = cp
            .call(
                Method::POST,
                "/v1/tenants/acme/rbac/policies",
                Some(&token),
                Some(json!({"subject": "p:reader", "object": format!("stream:acme/ns{i}/*"), "action": "stream.publish"})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    let (_, after) = cp.op(Method::GET, "/v1/audit", None).await;
    assert_eq!(
        audited(&after),
        audited(&before),
        "refusals were audited: {after}"
    );
    let (_, policies) = cp.op(Method::GET, "/v1/tenants/acme/rbac/policies", None).await;
    assert!(
        !policies.to_string().contains("stream.publish"),
        "a refused policy was written: {policies}"
    );
    cp.h.shutdown().await;
}

const BROKERS: &str = "test-brokers-secret-0123456789";
const PEERS: &str = "test-peers-secret-0123456789";

/// Three credentials: the brokers' one registers, heartbeats, reports
/// moves and reads the feed, and is refused everything else (it cannot
/// mint a token, create a tenant or a stream, drain a broker or speak
/// Raft); the peers' one opens the Raft routes, which the operator's no
/// longer does.
#[tokio::test]
async fn the_brokers_and_the_peers_credentials_open_only_their_own_routes() {
    let cp = Cp::start_with(|c| {
        c.broker_secret = Some(BROKERS.into());
        c.peer_secret = Some(PEERS.into());
    })
    .await;
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut brokers_routes = 0;
    for (method, path, who, _) in ROUTES {
        let (m, concrete) = concrete(method, path, "acme");
        let (s, v) = cp.call(m, &concrete, Some(BROKERS), Some(json!({}))).await;
        let refused = s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN;
        match *who {
            "anyone" | "upstream IdP token" => {}
            "operator or broker" => {
                brokers_routes += 1;
                assert!(
                    !refused,
                    "{method} {path}: the brokers' credential was refused: {s} {v}"
                );
            }
            // Refused, not understood, or a list filtered to nothing:
            // never done, nothing shown.
            _ => assert!(
                refused
                    || s == StatusCode::BAD_REQUEST
                    || s == StatusCode::NOT_FOUND
                    || (s == StatusCode::OK && v["items"] == json!([])),
                "{method} {path} ({who}) served the brokers' credential: {s} {v}"
            ),
        }
    }
    assert_eq!(brokers_routes, 5);
    with_brokers(&cp, 1).await;
    // A stream: the operator may create it, the brokers' credential only
    // its dead-letter stream.
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(json!({"name": "pay"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let stream = |name: &str| json!({"name": name, "shards": 1, "replication_factor": 1});
    let streams = "/v1/tenants/acme/namespaces/pay/streams";
    let (s, v) = cp.op(Method::POST, streams, Some(stream("orders"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for name in ["other", "nothing.dlq"] {
        let (s, v) = cp
            .call(Method::POST, streams, Some(BROKERS), Some(stream(name)))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{name}: {v}");
    }
    let (s, v) = cp
        .call(Method::POST, streams, Some(BROKERS), Some(stream("orders.dlq")))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/tenants/acme/token/issue",
            Some(BROKERS),
            Some(json!({"principal": "p:x"})),
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED,
        "{s} {v}"
    );
    // What a broker does, done with its credential.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/brokers",
            Some(BROKERS),
            Some(json!({"id": 1, "client_addr": "127.0.0.1:1", "raft_addr": "127.0.0.1:2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp
        .call(Method::GET, "/v1/feed/snapshot", Some(BROKERS), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Raft: the peers' credential only.
    let raft = |secret: &'static str| {
        cp.http
            .post(format!("http://{}/raft/vote", cp.h.addr))
            .header(felix_controlplane::raft::network::SECRET_HEADER, secret)
            .body("{}")
            .send()
    };
    for wrong in [SECRET, BROKERS] {
        assert_eq!(raft(wrong).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_ne!(raft(PEERS).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // A one-node control plane proposes to itself; a write through it still
    // works with the operator's credential.
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants", Some(json!({"name": "beta"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    cp.h.shutdown().await;
}

/// An HTTP server on 127.0.0.1 that answers every request with `reply`
/// (status line, headers and body) and counts the requests it saw.
async fn idp_server(reply: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, seen)
}

fn http_reply(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

/// Finding 6: a tenant administrator's `jwks_url` is fetched only over
/// https from a public address (a development override allows loopback
/// and http), without following redirects, within a body cap, at most
/// once per interval whatever tokens arrive, and a refusal tells the
/// caller nothing about the network.
#[tokio::test]
async fn token_exchange_fetches_only_public_https_keys_without_redirects_within_limits() {
    use std::sync::atomic::Ordering;
    let idp = new_signing_key("idp-1", [42; 32]);
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "idp-1", "x": idp.public}]});
    let (good, good_seen) = idp_server(http_reply("200 OK", "", &jwks.to_string())).await;
    let bootstrap = |cp: &Cp, tenant: &str, url: String| {
        let issuer = json!({
            "issuer": format!("https://{tenant}.idp.test"), "audiences": ["felix"], "jwks_url": url,
            "claim_mappings": {"subject_claim": "sub"}
        });
        let body =
            json!({"display_name": tenant, "idp_issuers": [issuer], "initial_admin_principals": ["p:alice"]});
        let boot = format!(
            "http://{}/internal/bootstrap/tenants/{tenant}/initialize",
            cp.h.bootstrap_addr.unwrap()
        );
        let req = cp
            .http
            .post(boot)
            .header("x-felix-bootstrap-token", BOOT)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        }
    };
    async fn exchange(
        cp: &Cp,
        tenant: &str,
        key: &felix_controlplane::model::SigningKey,
    ) -> (StatusCode, Value) {
        let claims = json!({"iss": format!("https://{tenant}.idp.test"), "aud": "felix", "sub": "alice", "exp": now_s() + 300});
        let token = upstream(key, claims);
        let path = format!("/v1/tenants/{tenant}/token/exchange");
        cp.call(Method::POST, &path, Some(&token), None).await
    }

    // The default: neither http nor a loopback address is fetched, and the
    // caller is not told what was tried.
    let cp = Cp::start().await;
    bootstrap(&cp, "plain", format!("http://127.0.0.1:{good}/jwks")).await;
    bootstrap(&cp, "inward", format!("https://127.0.0.1:{good}/jwks")).await;
    bootstrap(&cp, "named", format!("https://localhost:{good}/jwks")).await;
    for tenant in ["plain", "inward", "named"] {
        let (s, v) = exchange(&cp, tenant, &idp).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{tenant}: {v}");
        let text = v.to_string();
        assert!(
            text.contains("could not be fetched") && !text.contains("127.0.0.1"),
            "{tenant}: {text}"
        );
    }
    assert_eq!(good_seen.load(Ordering::SeqCst), 0, "nothing was fetched");
    cp.h.shutdown().await;

    // With the development override, a loopback IdP serves; a redirect is
    // not followed, an oversized body is refused, and unknown keys do not
    // make the control plane fetch again and again.
    let cp = Cp::start_with(|c| c.idp_fetch_insecure = true).await;
    bootstrap(&cp, "good", format!("http://127.0.0.1:{good}/jwks")).await;
    let (s, v) = exchange(&cp, "good", &idp).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let stranger = new_signing_key("idp-2", [7; 32]);
    for _ in 0..5 {
        let (s, v) = exchange(&cp, "good", &stranger).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
    assert_eq!(good_seen.load(Ordering::SeqCst), 1, "one fetch for six exchanges");

    let (target, target_seen) = idp_server(http_reply("200 OK", "", &jwks.to_string())).await;
    let (moved, _) = idp_server(http_reply(
        "302 Found",
        &format!("location: http://127.0.0.1:{target}/jwks\r\n"),
        "",
    ))
    .await;
    bootstrap(&cp, "redirected", format!("http://127.0.0.1:{moved}/jwks")).await;
    let (s, v) = exchange(&cp, "redirected", &idp).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        target_seen.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );

    let padding = "x".repeat(felix_controlplane::upstream::DOCUMENT_BYTES_MAX);
    let big = json!({"keys": jwks["keys"], "padding": padding}).to_string();
    let (huge, _) = idp_server(http_reply("200 OK", "", &big)).await;
    bootstrap(&cp, "huge", format!("http://127.0.0.1:{huge}/jwks")).await;
    let (s, v) = exchange(&cp, "huge", &idp).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    cp.h.shutdown().await;
}

/// Finding 7's limits: the Raft routes refuse a caller without the peers'
/// secret before reading its body, and a change too large for one Raft
/// entry is refused before it enters the log.
#[tokio::test]
async fn raft_routes_check_the_peer_before_the_body_and_cap_an_entry() {
    use felix_controlplane::raft::network::{
        ENTRY_BYTES_MAX, REGION_HEADER, SECRET_HEADER, SMALL_RPC_BYTES_MAX,
    };
    let cp = Cp::start_with(|c| c.peer_secret = Some(PEERS.into())).await;
    let url = |path: &str| format!("http://{}{path}", cp.h.addr);
    let big = vec![0u8; 8 << 20];
    for wrong in [None, Some(SECRET)] {
        let mut r = cp.http.post(url("/raft/snapshot")).body(big.clone());
        if let Some(s) = wrong {
            r = r.header(SECRET_HEADER, s);
        }
        // The server may answer before the whole body is sent and close.
        if let Ok(r) = r.send().await {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    // A forwarded change just over one entry (and under the route's limit)
    // is refused, and nothing is proposed.
    let name = "t".repeat(ENTRY_BYTES_MAX + 1024);
    let body = json!({"actor": "x", "command": {"op": "delete_tenant", "tenant": name}}).to_string();
    assert!(body.len() < SMALL_RPC_BYTES_MAX);
    let before = cp.h.node.raft.metrics().borrow().last_log_index;
    let r = cp
        .http
        .post(url("/raft/propose"))
        .header(SECRET_HEADER, PEERS)
        .header(REGION_HEADER, "local")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("largest Raft entry"), "{text}");
    assert_eq!(cp.h.node.raft.metrics().borrow().last_log_index, before);
    // Over the route's own limit: refused without being read whole.
    let over = vec![b' '; SMALL_RPC_BYTES_MAX + 1];
    let r = cp
        .http
        .post(url("/raft/vote"))
        .header(SECRET_HEADER, PEERS)
        .header(REGION_HEADER, "local")
        .body(over)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    cp.h.shutdown().await;
}

#[tokio::test]
async fn a_broker_of_another_region_is_refused_and_never_placed_a_replica() {
    let cp = Cp::start_with(|c| c.region = "eu".into()).await;
    let (s, v) = cp.call(Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["region"], "eu", "{v}");
    let register = |id: u32, region: Option<&str>| {
        let mut b = json!({"id": id, "client_addr": format!("127.0.0.1:{}", 7000 + id),
                           "raft_addr": format!("127.0.0.1:{}", 7100 + id)});
        if let Some(r) = region {
            b["region"] = json!(r);
        }
        cp.op(Method::POST, "/v1/brokers", Some(b))
    };
    // A us broker, and one that names no region (the default one).
    let (s, v) = register(4, Some("us")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        err(&v).contains("region \"us\"") && err(&v).contains("\"eu\""),
        "{v}"
    );
    let (s, v) = register(5, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // A region that is no region is a bad request, not a refusal.
    let (s, v) = register(6, Some("EU")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for id in 1..=3 {
        let (s, v) = register(id, Some("eu")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, b) = cp.op(Method::GET, "/v1/brokers", None).await;
    let ids: Vec<u64> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["registration"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{b}");
    assert!(b["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["registration"]["region"] == "eu"));

    // A control-plane peer of another region (or of none) is refused even
    // with the right credential: two regions' nodes never form one group.
    use felix_controlplane::raft::network::{REGION_HEADER, SECRET_HEADER};
    for region in [Some("us"), None] {
        let mut r = cp
            .http
            .post(format!("http://{}/raft/vote", cp.h.addr))
            .header(SECRET_HEADER, SECRET)
            .body("{}");
        if let Some(region) = region {
            r = r.header(REGION_HEADER, region);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{region:?}");
        assert!(r.text().await.unwrap().contains("same region"));
    }
}

#[tokio::test]
async fn a_tenant_with_encryption_shows_its_data_keys_ids_and_only_the_feed_their_material() {
    let cp = Cp::start().await;
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "sec", "encryption": {"key_id": "bad id"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(err(&v).contains("key_id"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "sec", "encryption": {"key_id": "mk1", "rotation_period_ms": 59_999}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(err(&v).contains("rotation_period_ms"), "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "sec", "encryption": {"key_id": "mk1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp.op(Method::GET, "/v1/tenants/sec", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["encryption"]["key_id"], "mk1");
    let keys = v["data_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{v}");
    assert_eq!(keys[0]["master_key_id"], "mk1");
    let first = keys[0]["id"].as_u64().unwrap();
    assert!(first >= 1);
    assert!(!v.to_string().contains("material"), "{v}");
    // Rotated on request: a new key, still no material shown.
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants/sec/data-keys/rotate", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = cp.op(Method::GET, "/v1/tenants/sec", None).await;
    let ids: Vec<u64> = v["data_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![first, first + 1]);
    assert!(!v.to_string().contains("material"), "{v}");
    // The feed carries the materials, for the brokers.
    let (s, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let t = &snap["tenants"]["sec"];
    assert_eq!(t["encryption"], json!({"key_id": "mk1", "rotation_period_ms": 0}));
    let keys = t["data_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{t}");
    for k in keys {
        let m = URL_SAFE_NO_PAD.decode(k["material"].as_str().unwrap()).unwrap();
        assert_eq!(m.len(), 32);
    }
    assert_ne!(keys[0]["material"], keys[1]["material"]);
    // A tenant without encryption has nothing to rotate.
    cp.op(Method::POST, "/v1/tenants", Some(json!({"name": "plain"})))
        .await;
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants/plain/data-keys/rotate", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(err(&v).contains("no encryption"), "{v}");
    let (_, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    assert_eq!(snap["tenants"]["plain"]["encryption"], Value::Null);
    assert_eq!(snap["tenants"]["plain"]["data_keys"], json!([]));
    // A PUT without encryption turns it off and keeps the keys.
    let (s, v) = cp
        .op(Method::PUT, "/v1/tenants/sec", Some(json!({"display_name": "S"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = cp.op(Method::GET, "/v1/tenants/sec", None).await;
    assert!(v["spec"].get("encryption").is_none(), "{v}");
    assert_eq!(v["data_keys"].as_array().unwrap().len(), 2);
    // Deleted: gone from the feed, materials and all.
    let material = keys[0]["material"].as_str().unwrap().to_owned();
    let (s, v) = cp.op(Method::DELETE, "/v1/tenants/sec", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    assert!(snap["tenants"].get("sec").is_none());
    let (s, changes) = cp.op(Method::GET, "/v1/feed/changes?since=0", None).await;
    assert_eq!(s, StatusCode::OK, "{changes}");
    assert!(!changes.to_string().contains(&material), "{changes}");
    cp.h.shutdown().await;
}

const TARGET_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.target-cluster-token.sig";

fn bridge(name: &str, tenant: &str, region: &str) -> Value {
    json!({
        "name": name,
        "spec": {
            "tenant": tenant,
            "streams": ["pay/*", "audit/logins"],
            "target": {
                "region": region,
                "brokers": ["us1.example:7070", "us2.example:7070"],
                "server_name": "brokers.us.example",
                "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "token": TARGET_TOKEN,
            },
        },
    })
}

/// A bridge is the operator's: made once (to another region only, for a
/// tenant that exists), listed and described without its token, which
/// only the brokers' feed carries; its lag is what the brokers last
/// reported, one row per shard; paused, resumed and deleted, each
/// audited; and it goes with its tenant.
#[tokio::test]
async fn a_bridge_is_made_shown_without_its_token_reports_lag_and_goes_with_its_tenant() {
    let cp = Cp::start_with(|c| c.region = "eu".into()).await;
    let (s, v) = cp
        .op(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, v) = cp
        .op(Method::POST, "/v1/bridges", Some(bridge("loop", "acme", "eu")))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(err(&v).contains("this control plane's own"), "{v}");
    let (s, v) = cp
        .op(Method::POST, "/v1/bridges", Some(bridge("ghost", "nobody", "us")))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let mut bad = bridge("bad", "acme", "us");
    bad["spec"]["streams"] = json!(["orders"]);
    let (s, v) = cp.op(Method::POST, "/v1/bridges", Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(err(&v).contains("namespace/stream"), "{v}");
    let (s, v) = cp
        .op(Method::POST, "/v1/bridges", Some(bridge("a b", "acme", "us")))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Not without the operator's credential.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/bridges",
            Some("not-the-secret"),
            Some(bridge("b", "acme", "us")),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/bridges",
            Some(bridge("acme-eu-us", "acme", "us")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "acme-eu-us");
    assert_eq!(v["paused"], false);
    assert_eq!(v["spec"]["target"]["token_set"], true, "{v}");
    assert!(v["spec"]["target"].get("token").is_none(), "{v}");
    assert!(!v.to_string().contains(TARGET_TOKEN), "{v}");
    // The same again is the same bridge; another spec under its name is
    // a conflict.
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/bridges",
            Some(bridge("acme-eu-us", "acme", "us")),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp
        .op(
            Method::POST,
            "/v1/bridges",
            Some(bridge("acme-eu-us", "acme", "ap")),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    let (s, v) = cp.op(Method::GET, "/v1/bridges", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let all = v["bridges"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{v}");
    assert_eq!(all[0]["spec"]["streams"], json!(["pay/*", "audit/logins"]));
    assert!(!v.to_string().contains(TARGET_TOKEN), "{v}");
    // The brokers' feed carries it whole.
    let (s, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        snap["bridges"]["acme-eu-us"]["spec"]["target"]["token"], TARGET_TOKEN,
        "{snap}"
    );

    // Lag: brokers 1 and 2 report; 2 still names a shard 1 now leads
    // (its leadership just moved) and is behind on it.
    for id in 1..=2 {
        let (s, v) = cp
            .op(
                Method::POST,
                "/v1/brokers",
                Some(
                    json!({"id": id, "client_addr": format!("127.0.0.1:{}", 7000 + id),
                            "raft_addr": format!("127.0.0.1:{}", 7100 + id), "region": "eu"}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let row = |stream: &str, shard: u32, position: u64, end: u64| json!({"bridge": "acme-eu-us", "stream": stream, "shard": shard, "position": position, "end": end});
    let mut failing = row("acme/pay/orders", 0, 90, 100);
    failing["error"] = json!("target unreachable");
    let beat = |id: u32, bridges: Value| {
        let path = format!("/v1/brokers/{id}/heartbeat");
        let cp = &cp;
        async move {
            cp.op(Method::POST, &path, Some(json!({"bridges": bridges})))
                .await
        }
    };
    let (s, v) = beat(
        1,
        json!([
            row("acme/pay/refunds", 1, 5, 5),
            failing,
            row("acme/pay/refunds", 0, 10, 40)
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let other =
        json!({"bridge": "other", "stream": "acme/pay/orders", "shard": 0, "position": 0, "end": 999});
    let (s, v) = beat(2, json!([row("acme/pay/refunds", 0, 3, 40), other])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cp.op(Method::GET, "/v1/bridges/acme-eu-us", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v.to_string().contains(TARGET_TOKEN), "{v}");
    let lag: Vec<(String, u64, u64, u64, u64)> = v["lag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["stream"].as_str().unwrap().to_owned(),
                r["shard"].as_u64().unwrap(),
                r["position"].as_u64().unwrap(),
                r["lag"].as_u64().unwrap(),
                r["broker"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lag,
        vec![
            ("acme/pay/orders".into(), 0, 90, 10, 1),
            ("acme/pay/refunds".into(), 0, 10, 30, 1),
            ("acme/pay/refunds".into(), 1, 5, 0, 1),
        ],
        "{v}"
    );
    assert_eq!(v["lag"][0]["error"], "target unreachable");
    assert_eq!(v["lag"][1]["error"], Value::Null);
    assert_eq!(v["lag_total"], 40);
    // A report without bridges: broker 1 carries none now.
    let (s, _) = beat(1, json!([])).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = cp.op(Method::GET, "/v1/bridges/acme-eu-us", None).await;
    assert_eq!(v["lag"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["lag"][0]["broker"], 2);
    assert_eq!(v["lag_total"], 37);

    let (s, v) = cp.op(Method::POST, "/v1/bridges/acme-eu-us/pause", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["paused"], true);
    let (s, v) = cp.op(Method::POST, "/v1/bridges/acme-eu-us/resume", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["paused"], false);
    let (s, _) = cp.op(Method::POST, "/v1/bridges/nope/pause", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, v) = cp.op(Method::DELETE, "/v1/bridges/acme-eu-us", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = cp.op(Method::GET, "/v1/bridges/acme-eu-us", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, changes) = cp.op(Method::GET, "/v1/feed/changes?since=0", None).await;
    assert!(!changes.to_string().contains(TARGET_TOKEN), "{changes}");
    let (_, audit) = cp.op(Method::GET, "/v1/audit", None).await;
    let text = audit.to_string();
    for op in [
        "bridge.create acme-eu-us",
        "bridge.pause acme-eu-us",
        "bridge.resume acme-eu-us",
        "bridge.delete acme-eu-us",
    ] {
        assert!(text.contains(op), "{op} not audited: {audit}");
    }
    assert!(!text.contains(TARGET_TOKEN), "{audit}");

    // A tenant's deletion takes its bridges.
    let (s, v) = cp
        .op(Method::POST, "/v1/bridges", Some(bridge("again", "acme", "us")))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = cp.op(Method::DELETE, "/v1/tenants/acme", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = cp.op(Method::GET, "/v1/bridges", None).await;
    assert_eq!(v["bridges"], json!([]), "{v}");
    let (_, snap) = cp.op(Method::GET, "/v1/feed/snapshot", None).await;
    assert_eq!(snap["bridges"], json!({}), "{snap}");
    cp.h.shutdown().await;
}
