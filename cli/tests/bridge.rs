//! Cross-region bridges, as real processes: two clusters on one machine,
//! each with its own control plane, CA and region (`eu`, `us`). A bridge
//! made on the `eu` control plane carries `acme/prod/orders` to `us`
//! while the source shard's leader and then a target broker are
//! SIGKILLed; the target then holds every source record exactly once, in
//! source order per shard, with its key, headers and timestamp. Pause,
//! resume and delete do what `docs/bridges.md` says, and a stream no
//! bridge names never reaches `us`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::LocalCluster;
use common::cp::{call, free_port, leader, until, Proc, SECRET};
use felix_client::wire::Start;
use felix_client::{Client, ProducerConfig, ProducerRecord, SubscribeOptions};
use reqwest::Method;
use serde_json::{json, Value};

const STREAM: &str = "acme/prod/orders";
/// Named by no bridge: it must never reach `us`.
const LOCAL: &str = "acme/prod/local";
const SHARDS: u32 = 2;

/// A record as the test compares them: offset, key, value, timestamp and
/// headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    offset: u64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    timestamp_ms: i64,
    headers: Vec<(Bytes, Bytes)>,
}

fn follow(region: &str, port: u16) -> String {
    format!(
        "region = \"{region}\"\n[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 500\nrequire_tokens = false\n"
    )
}

async fn ok(http: &reqwest::Client, port: u16, method: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = call(http, port, method, path, body).await.unwrap();
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

/// The tenant and namespace on the control plane at `port`.
async fn make_tenant(http: &reqwest::Client, port: u16) {
    let ports = [port];
    until(30, "a control-plane leader", || leader(http, &ports)).await;
    for (path, body) in [
        ("/v1/tenants", json!({"name": "acme"})),
        ("/v1/tenants/acme/namespaces", json!({"name": "prod"})),
    ] {
        ok(http, port, Method::POST, path, Some(body)).await;
    }
}

/// Both streams, once the cluster's three brokers are registered.
async fn make_streams(http: &reqwest::Client, port: u16) {
    for body in [
        json!({"name": "orders", "shards": SHARDS, "replication_factor": 3}),
        json!({"name": "local", "shards": 1, "replication_factor": 3}),
    ] {
        until(60, "a stream placed on three brokers", || async {
            let (s, _) = call(
                http,
                port,
                Method::POST,
                "/v1/tenants/acme/namespaces/prod/streams",
                Some(body.clone()),
            )
            .await
            .ok()?;
            (s == 200).then_some(())
        })
        .await;
    }
}

/// Every record of `shard` of `stream` until none comes for `quiet`, or
/// until `want` have come.
async fn read_all(
    client: &Client,
    stream: &str,
    shard: u32,
    want: Option<usize>,
    quiet: Duration,
) -> Vec<Seen> {
    let opts = SubscribeOptions {
        shards: vec![shard],
        start: Start::Offset(0),
        ..SubscribeOptions::default()
    };
    let mut sub = until(30, "a subscription", || async {
        client.subscribe(stream, opts.clone()).await.ok()
    })
    .await;
    let mut out = Vec::new();
    loop {
        if want.is_some_and(|n| out.len() >= n) {
            return out;
        }
        let wait = match want {
            Some(_) => Duration::from_secs(120),
            None => quiet,
        };
        match tokio::time::timeout(wait, sub.next()).await {
            Err(_) if want.is_none() => return out,
            Err(_) => panic!(
                "{stream} shard {shard}: {} of {want:?} records after {wait:?}",
                out.len()
            ),
            Ok(d) => {
                let r = d.expect("subscription open").expect("record").record;
                out.push(Seen {
                    offset: r.offset.0,
                    key: r.key,
                    value: r.value,
                    timestamp_ms: r.timestamp_ms,
                    headers: r.headers,
                });
            }
        }
    }
}

/// `felix` as an operator of the cluster whose control plane is at `port`.
struct Felix {
    profile: std::path::PathBuf,
    secret: std::path::PathBuf,
}

impl Felix {
    fn new(dir: &std::path::Path, c: &LocalCluster, port: u16) -> Felix {
        let secret = dir.join("operator-secret");
        std::fs::write(&secret, SECRET).unwrap();
        let profile = dir.join("operator.toml");
        let text = std::fs::read_to_string(c.members[0].at.data_dir.join("client.toml")).unwrap();
        std::fs::write(
            &profile,
            format!("controlplane = \"http://127.0.0.1:{port}\"\n{text}"),
        )
        .unwrap();
        Felix { profile, secret }
    }

    /// Runs `felix ARGS --profile …`; its standard output, once it succeeded.
    fn run(&self, args: &[&str]) -> String {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_felix"))
                .args(args)
                .arg("--profile")
                .arg(&self.profile)
                .env("FELIX_CONTROLPLANE_SECRET_FILE", &self.secret)
                .output()
                .unwrap()
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "felix {args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn header<'a>(s: &'a Seen, name: &str) -> Option<&'a [u8]> {
    s.headers
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| &v[..])
}

/// Publishes `{prefix}{i}` keyed records, with a header each, 50 at a
/// time until `stop` (one round when it is set already);
/// returns how many were acknowledged. Failures (a leader being killed)
/// are retried by the producer or counted out: the comparison is with
/// what the source holds, not with what was acknowledged.
async fn publish_until(client: Client, prefix: &'static str, stop: Arc<AtomicBool>) -> usize {
    let p = client
        .producer(
            STREAM,
            ProducerConfig {
                linger_ms: 2,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
    let mut acked = 0;
    let mut i = 0u64;
    loop {
        let mut pending = Vec::new();
        for _ in 0..50 {
            let mut r = ProducerRecord::keyed(format!("k{i}"), format!("{prefix}{i}"));
            r.headers = vec![(Bytes::from_static(b"trace"), Bytes::from(format!("t{i}")))];
            r.timestamp_ms = Some(1_700_000_000_000 + i as i64);
            i += 1;
            match p.send(r).await {
                Ok(a) => pending.push(a),
                Err(_) => break,
            }
        }
        for a in pending {
            if a.wait().await.is_ok() {
                acked += 1;
            }
        }
        if stop.load(Ordering::Relaxed) {
            return acked;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The target holds exactly the source's records of every shard, in
/// order, each with its source offset and region in headers.
async fn assert_carried_exactly(eu: &Client, us: &Client) -> usize {
    let mut total = 0;
    for shard in 0..SHARDS {
        let source = read_all(eu, STREAM, shard, None, Duration::from_secs(3)).await;
        let target = read_all(us, STREAM, shard, Some(source.len()), Duration::ZERO).await;
        // Nothing beyond: a duplicate would show as an extra record.
        let extra = read_all(us, STREAM, shard, None, Duration::from_secs(2)).await;
        assert_eq!(
            extra.len(),
            source.len(),
            "shard {shard}: the target holds more than the source"
        );
        for (s, t) in source.iter().zip(&target) {
            assert_eq!(
                (&t.key, &t.value, t.timestamp_ms),
                (&s.key, &s.value, s.timestamp_ms),
                "shard {shard}"
            );
            assert_eq!(
                header(t, "trace"),
                header(s, "trace"),
                "shard {shard}: headers kept"
            );
            assert_eq!(
                header(t, "felix-source-offset"),
                Some(s.offset.to_string().as_bytes()),
                "shard {shard}: the source offset travels"
            );
            assert_eq!(header(t, "felix-source-region"), Some(&b"eu"[..]));
        }
        total += source.len();
    }
    total
}

async fn bridge_lag(http: &reqwest::Client, port: u16) -> Option<(u64, Value)> {
    let (s, v) = call(http, port, Method::GET, "/v1/bridges/eu-us", None)
        .await
        .ok()?;
    (s == 200).then_some(())?;
    Some((v["lag_total"].as_u64()?, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_carries_every_record_exactly_once_through_kills_and_only_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (eu_port, us_port) = (free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("cp-eu")).unwrap();
    std::fs::create_dir_all(dir.path().join("cp-us")).unwrap();
    let _cp_eu = Proc::start_with(&dir.path().join("cp-eu"), 1, &[eu_port], "region = \"eu\"");
    let _cp_us = Proc::start_with(&dir.path().join("cp-us"), 1, &[us_port], "region = \"us\"");
    make_tenant(&http, eu_port).await;
    make_tenant(&http, us_port).await;
    let mut eu = tokio::task::block_in_place(|| {
        LocalCluster::start(&dir.path().join("eu"), 3, &follow("eu", eu_port))
    });
    let mut us = tokio::task::block_in_place(|| {
        LocalCluster::start(&dir.path().join("us"), 3, &follow("us", us_port))
    });
    make_streams(&http, eu_port).await;
    make_streams(&http, us_port).await;
    let eu_client = Client::connect(eu.client_config()).await.unwrap();
    let us_client = Client::connect(us.client_config()).await.unwrap();
    for s in 0..SHARDS {
        eu.leader(&eu_client, STREAM, s).await;
        us.leader(&us_client, STREAM, s).await;
    }

    // Records before the bridge exists are carried too: it starts at the
    // source's beginning.
    let early = publish_until(eu_client.clone(), "early", Arc::new(AtomicBool::new(true))).await;
    let p = eu_client
        .producer(LOCAL, ProducerConfig::default())
        .await
        .unwrap();
    p.send(ProducerRecord::new("stays in eu"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();

    let ca_pem = std::fs::read_to_string(&us.ca).unwrap();
    // A bridge into its own region is refused.
    let (s, _) = call(
        &http,
        eu_port,
        Method::POST,
        "/v1/bridges",
        Some(json!({"name": "bad", "spec": {"tenant": "acme", "streams": ["prod/orders"], "target": {"region": "eu", "brokers": ["127.0.0.1:1"], "server_name": "localhost", "ca_pem": ca_pem}}})),
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "a bridge into its own region is refused");
    // The operator's command makes it (its profile names the control
    // plane; the operator secret is in a file).
    let felix = Felix::new(dir.path(), &eu, eu_port);
    let mut create = vec![
        "bridge",
        "create",
        "eu-us",
        "--tenant",
        "acme",
        "--stream",
        "prod/orders",
        "--target-region",
        "us",
    ];
    let targets: Vec<String> = us.members.iter().map(|m| m.at.client.to_string()).collect();
    for t in &targets {
        create.extend(["--target-broker", t.as_str()]);
    }
    let ca = us.ca.display().to_string();
    create.extend(["--target-ca", ca.as_str()]);
    felix.run(&create);
    let line = felix.run(&["bridge", "list"]);
    assert!(line.contains("eu-us") && line.contains("running"), "{line}");
    let listed = ok(&http, eu_port, Method::GET, "/v1/bridges", None).await;
    assert!(
        !listed.to_string().contains("\"token\""),
        "no token in a listing: {listed}"
    );

    // Load while the source leader of shard 0, then a target broker, die.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(publish_until(eu_client.clone(), "live", stop.clone()));
    until(60, "the bridge carrying", || async {
        let (_, v) = bridge_lag(&http, eu_port).await?;
        v["lag"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["position"].as_u64() > Some(0)))
            .then_some(())
    })
    .await;
    let source_leader = eu.leader(&eu_client, STREAM, 0).await;
    let i = eu.index_of(source_leader);
    tokio::task::block_in_place(|| eu.kill(i));
    // The fault lasts 3 s (an election and writes to the new leader).
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| eu.restart(i));
    let target_leader = us.leader(&us_client, STREAM, 0).await;
    let j = us.index_of(target_leader);
    tokio::task::block_in_place(|| us.kill(j));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| us.restart(j));
    // The load goes on for 2 s past the last restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let live = load.await.unwrap();
    assert!(early + live > 100, "the load ran: {early} + {live} acknowledged");

    let (lag, described) = until(120, "the bridge caught up", || async {
        let (lag, v) = bridge_lag(&http, eu_port).await?;
        let shards = v["lag"].as_array()?.len();
        (lag == 0 && shards == SHARDS as usize).then_some((lag, v))
    })
    .await;
    assert_eq!(lag, 0, "{described}");
    let d: Value = serde_json::from_str(&felix.run(&["bridge", "describe", "eu-us"])).unwrap();
    assert_eq!(d["lag"].as_array().map(Vec::len), Some(SHARDS as usize), "{d}");
    assert!(d["spec"]["target"].get("token").is_none(), "{d}");
    let carried = assert_carried_exactly(&eu_client, &us_client).await;
    eprintln!("carried {carried} records ({early} + {live} acknowledged); {described}");
    assert!(
        carried >= early + live,
        "{carried} carried, {} acknowledged",
        early + live
    );

    // A client may not move a bridge's source position.
    let forged = felix_client::wire::Message::CommitCursor {
        stream: STREAM.into(),
        shard: 0,
        name: "bridge/eu-us".into(),
        offset: 0,
    };
    let e = eu_client
        .call(felix_client::Route::Shard(STREAM, 0), &forged)
        .await
        .expect_err("a client committed a bridge's cursor");
    assert!(e.to_string().contains("bridges"), "{e}");

    // Isolation: a client holding the us cluster's CA does not get through
    // the eu brokers' TLS, and the stream no bridge names is empty in us.
    let mut cross = eu.client_config();
    cross.tls = felix_client::transport::ClientTls::from_pem_files(&us.ca, None).unwrap();
    assert!(
        Client::connect(cross).await.is_err(),
        "a us client reached eu brokers"
    );
    assert!(read_all(&us_client, LOCAL, 0, None, Duration::from_secs(2))
        .await
        .is_empty());

    // Paused, nothing moves; resumed, it carries on from where it was.
    felix.run(&["bridge", "pause", "eu-us"]);
    assert!(felix.run(&["bridge", "list"]).contains("paused"));
    // Stopped carriers report nothing: once no broker reports one, none
    // runs.
    until(30, "every carrier of the paused bridge stopped", || async {
        let (_, v) = bridge_lag(&http, eu_port).await?;
        v["lag"].as_array()?.is_empty().then_some(())
    })
    .await;
    let before = publish_until(eu_client.clone(), "paused", Arc::new(AtomicBool::new(true))).await;
    assert_eq!(before, 50);
    // An observation window: a carrier running would have carried 50
    // records within it many times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut held = 0;
    for shard in 0..SHARDS {
        held += read_all(&us_client, STREAM, shard, None, Duration::from_secs(1))
            .await
            .len();
    }
    assert_eq!(held, carried, "a paused bridge carried records");
    felix.run(&["bridge", "resume", "eu-us"]);
    until(60, "the resumed bridge caught up", || async {
        let (lag, v) = bridge_lag(&http, eu_port).await?;
        let positions: u64 = v["lag"]
            .as_array()?
            .iter()
            .filter_map(|e| e["position"].as_u64())
            .sum();
        (lag == 0 && positions > 0).then_some(())
    })
    .await;
    assert_eq!(assert_carried_exactly(&eu_client, &us_client).await, carried + 50);

    // Deleted, it carries nothing more.
    felix.run(&["bridge", "delete", "eu-us"]);
    // The brokers hear of the deletion within a feed long-poll and stop
    // their carriers at the next plan round (500 ms); nothing on the
    // control plane reports a deleted bridge's carriers, so this waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_until(eu_client.clone(), "deleted", Arc::new(AtomicBool::new(true))).await;
    // An observation window, as for the pause.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = BTreeMap::new();
    for shard in 0..SHARDS {
        after.insert(
            shard,
            read_all(&us_client, STREAM, shard, None, Duration::from_secs(1))
                .await
                .len(),
        );
    }
    assert_eq!(
        after.values().sum::<usize>(),
        carried + 50,
        "a deleted bridge carried records"
    );
    let (s, _) = call(&http, eu_port, Method::GET, "/v1/bridges/eu-us", None)
        .await
        .unwrap();
    assert_eq!(s, 404);
    drop((eu, us));
}
