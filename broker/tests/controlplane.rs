//! A three-node control plane as real `felix controlplane` processes: the
//! leader is SIGKILLed; the API answers again within 5 s through the
//! survivors, no acknowledged change is lost, and the killed node catches
//! up when it returns. And a three-broker cluster following a control
//! plane: streams made through it, its tokens enforced by every broker,
//! and serving on when it is gone.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "cp-test-cluster-secret-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Option<Child>);

impl Proc {
    fn start(dir: &Path, id: u64, ports: &[u16]) -> Proc {
        Proc::start_with(dir, id, ports, "")
    }

    /// With `extra` settings (top-level keys) in the configuration.
    fn start_with(dir: &Path, id: u64, ports: &[u16], extra: &str) -> Proc {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[[peers]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n", i + 1))
            .collect();
        let cfg = format!(
            "id = {id}\nlisten = \"127.0.0.1:{}\"\ndata_dir = {:?}\ncluster_secret = \"{SECRET}\"\n{extra}\n{}",
            ports[id as usize - 1],
            dir.join(format!("cp{id}")).display().to_string(),
            peers.join("\n")
        );
        let path = dir.join(format!("cp{id}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join(format!("cp{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["controlplane", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(Some(child))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SIGKILL: no shutdown path runs.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn call(
    http: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut r = http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(SECRET)
        .timeout(Duration::from_secs(1));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let s = resp.status().as_u16();
    Ok((s, resp.json().await.unwrap_or(Value::Null)))
}

async fn leader(http: &reqwest::Client, ports: &[u16]) -> Option<u64> {
    for p in ports {
        if let Ok((200, v)) = call(http, *p, reqwest::Method::GET, "/v1/cluster", None).await {
            if let Some(l) = v["leader"].as_u64() {
                return Some(l);
            }
        }
    }
    None
}

async fn namespaces(http: &reqwest::Client, port: u16) -> Vec<String> {
    let (s, v) = call(
        http,
        port,
        reqwest::Method::GET,
        "/v1/tenants/acme/namespaces?page_size=1000",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_killed_control_plane_leader_is_replaced_within_5_s_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Proc> = (1..=3).map(|id| Proc::start(dir.path(), id, &ports)).collect();
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while leader(&http, &ports).await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes through every node (followers forward to the leader).
    let (s, v) = call(
        &http,
        ports[2],
        reqwest::Method::POST,
        "/v1/tenants",
        Some(json!({"name": "acme"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let mut acked = Vec::new();
    for i in 0..30 {
        let name = format!("ns{i}");
        let port = ports[i % 3];
        let (s, v) = call(
            &http,
            port,
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(json!({"name": name})),
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{v}");
        acked.push(name);
        // Read-your-writes on the node that took the write.
        assert!(namespaces(&http, port).await.contains(acked.last().unwrap()));
    }
    let old = leader(&http, &ports).await.unwrap();
    procs[old as usize - 1].kill();
    let killed = Instant::now();
    let survivors: Vec<u16> = (1..=3u64)
        .filter(|i| *i != old)
        .map(|i| ports[i as usize - 1])
        .collect();
    // The API answers a write again within 5 s.
    let mut n = 0;
    let recovered = loop {
        let port = survivors[n % 2];
        n += 1;
        if let Ok((200, _)) = call(
            &http,
            port,
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(json!({"name": "after"})),
        )
        .await
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no write accepted within 5 s of the leader's death"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("control plane accepted writes again {recovered:?} after the leader was killed");
    acked.push("after".into());
    // Followers serve reads from what they have applied: give the one
    // that did not take the last write a moment to apply it.
    for p in &survivors {
        let since = Instant::now();
        loop {
            let have = namespaces(&http, *p).await;
            let missing: Vec<&String> = acked.iter().filter(|a| !have.contains(a)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(3),
                "node on {p} lost acknowledged {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The killed node returns with its data and catches up.
    procs[old as usize - 1] = Proc::start(dir.path(), old, &ports);
    let back = Instant::now();
    loop {
        if let Ok((200, v)) = call(
            &http,
            ports[old as usize - 1],
            reqwest::Method::GET,
            "/v1/tenants/acme/namespaces?page_size=1000",
            None,
        )
        .await
        {
            let have: Vec<&str> = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap())
                .collect();
            if acked.iter().all(|a| have.contains(&a.as_str())) {
                break;
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the restarted node did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `k{i}` → `v{i}` for every `i` of `range` to `acme/prod/orders`
/// and waits for every acknowledgement.
async fn publish_keyed(client: &felix_client::Client, range: std::ops::Range<u32>, what: &str) {
    use felix_client::{ProducerConfig, ProducerRecord};
    let p = client
        .producer("acme/prod/orders", ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in range {
        let r = ProducerRecord::keyed(format!("k{i}"), bytes::Bytes::from(format!("v{i}")));
        acks.push(p.send(r).await.unwrap());
    }
    for a in acks {
        a.wait().await.expect(what);
    }
}

/// Reads every record of `acme/prod/orders`'s `shards` shards from the
/// start, up to each shard's end as described now; returns how many.
async fn read_all(client: &felix_client::Client, shards: u32) -> u64 {
    use felix_client::wire::{Message, Start};
    use felix_client::{Route, SubscribeOptions};
    let describe = Message::StreamDescribe {
        name: "acme/prod/orders".into(),
    };
    let Message::StreamDescription { shards: ends, .. } = client.call(Route::Any, &describe).await.unwrap()
    else {
        panic!("no description")
    };
    let mut seen = 0;
    for shard in 0..shards {
        let opts = SubscribeOptions {
            shards: vec![shard],
            start: Start::Earliest,
            ..SubscribeOptions::default()
        };
        let mut sub = client.subscribe("acme/prod/orders", opts).await.unwrap();
        for _ in 0..ends[shard as usize].next {
            tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("records within 10 s")
                .unwrap()
                .unwrap();
            seen += 1;
        }
    }
    seen
}

/// Polls `f` for up to `secs` seconds until it gives a value.
async fn until<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cluster_follows_the_control_plane_enforces_its_tokens_and_serves_without_it() {
    use bytes::Bytes;
    use felix_client::wire::Message;
    use felix_client::{Client, Route};
    use reqwest::Method;

    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let mut cp = Proc::start(dir.path(), 1, &[port]);
    let ports = [port];
    until(20, "a control-plane leader", || leader(&http, &ports)).await;
    let ok = |m: Method, path: &'static str, body: Value| {
        let http = http.clone();
        async move {
            let (s, v) = call(&http, port, m, path, Some(body)).await.unwrap();
            assert!((200..300).contains(&s), "{path}: {s} {v}");
            v
        }
    };
    ok(Method::POST, "/v1/tenants", json!({"name": "acme"})).await;
    ok(
        Method::POST,
        "/v1/tenants/acme/namespaces",
        json!({"name": "prod"}),
    )
    .await;
    for action in ["stream.publish", "stream.subscribe", "resource.manage"] {
        ok(
            Method::POST,
            "/v1/tenants/acme/rbac/policies",
            json!({"subject": "p:alice", "object": "namespace:acme/prod", "action": action}),
        )
        .await;
    }
    let t = ok(
        Method::POST,
        "/v1/tenants/acme/token/issue",
        json!({"principal": "p:alice"}),
    )
    .await;
    let token = Bytes::from(t["access_token"].as_str().unwrap().to_owned());

    let extra = format!(
        "[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 1000\n"
    );
    let root = dir.path().join("brokers");
    let cluster = tokio::task::block_in_place(|| common::cluster::LocalCluster::start(&root, 3, &extra));
    // Every broker registers and heartbeats.
    until(30, "three active brokers", || async {
        let (_, v) = call(&http, port, Method::GET, "/v1/brokers", None).await.ok()?;
        let active = v["items"]
            .as_array()?
            .iter()
            .filter(|b| b["status"] == "active")
            .count();
        (active == 3).then_some(())
    })
    .await;
    // A stream made through the control plane, replicated on all three.
    ok(
        Method::POST,
        "/v1/tenants/acme/namespaces/prod/streams",
        json!({"name": "orders", "shards": 2, "replication_factor": 3}),
    )
    .await;
    let with_token = |i: usize| {
        let mut c = cluster.member_config(i);
        c.token = token.clone();
        c
    };
    for i in 0..3 {
        let c = Client::connect(with_token(i))
            .await
            .expect("the token is accepted");
        until(30, "the stream on every broker", || async {
            match c
                .call(
                    Route::Any,
                    &Message::StreamDescribe {
                        name: "acme/prod/orders".into(),
                    },
                )
                .await
            {
                Ok(Message::StreamDescription { shards, .. }) => (shards.len() == 2).then_some(()),
                _ => None,
            }
        })
        .await;
        // Without a token, or with a tampered one, each broker refuses.
        let mut bad = cluster.member_config(i);
        bad.token = Bytes::from(format!("{}x", t["access_token"].as_str().unwrap()));
        for cfg in [cluster.member_config(i), bad] {
            let r = match Client::connect(cfg).await {
                Ok(c) => c
                    .call(Route::Any, &Message::Metadata { streams: vec![] })
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            assert!(
                r.as_ref().is_err_and(|e| e.to_string().contains("unauthorized")),
                "broker {i}: {r:?}"
            );
        }
    }

    let mut all = cluster.client_config();
    all.token = token.clone();
    let client = Client::connect(all.clone()).await.unwrap();
    publish_keyed(&client, 0..50, "acknowledged with the control plane up").await;

    // The control plane goes away: brokers keep serving what they host,
    // and a new connection's token is still checked with the keys held.
    cp.kill();
    let client = Client::connect(all)
        .await
        .expect("connects without the control plane");
    publish_keyed(&client, 50..100, "acknowledged with the control plane down").await;
    assert_eq!(
        read_all(&client, 2).await,
        100,
        "every acknowledged record is read back"
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_for_good_has_its_replicas_re_placed_and_its_shards_fully_replicated_again() {
    use felix_client::Client;
    use reqwest::Method;

    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    // Down after 3 missed 500 ms heartbeats; re-placed 2 s after that.
    let _cp = Proc::start_with(
        dir.path(),
        1,
        &[port],
        "broker_heartbeat_interval_ms = 500\nreplace_after_ms = 2000\n",
    );
    let ports = [port];
    until(20, "a control-plane leader", || leader(&http, &ports)).await;
    let get = |path: String| {
        let http = http.clone();
        async move {
            let (s, v) = call(&http, port, Method::GET, &path, None).await.ok()?;
            (s == 200).then_some(v)
        }
    };
    let extra = format!(
        "[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 500\nrequire_tokens = false\n"
    );
    let root = dir.path().join("brokers");
    let mut cluster = tokio::task::block_in_place(|| common::cluster::LocalCluster::start(&root, 4, &extra));
    until(30, "four active brokers", || async {
        let v = get("/v1/brokers".into()).await?;
        let active = v["items"]
            .as_array()?
            .iter()
            .filter(|b| b["status"] == "active")
            .count();
        (active == 4).then_some(())
    })
    .await;
    let (s, v) = call(
        &http,
        port,
        Method::POST,
        "/v1/tenants",
        Some(json!({"name": "acme"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    call(
        &http,
        port,
        Method::POST,
        "/v1/tenants/acme/namespaces",
        Some(json!({"name": "prod"})),
    )
    .await
    .unwrap();
    let (s, v) = call(
        &http,
        port,
        Method::POST,
        "/v1/tenants/acme/namespaces/prod/streams",
        Some(json!({"name": "orders", "shards": 2, "replication_factor": 3})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");

    // Every shard's voters become exactly its three placed brokers (the
    // groups were founded on all four).
    let placement = || async {
        let v = get("/v1/tenants/acme/namespaces/prod/streams/orders".into()).await?;
        let p: Vec<(Vec<u64>, Vec<u64>)> = v["placement"]
            .as_array()?
            .iter()
            .map(|s| {
                let ids = |k: &str| {
                    let mut v: Vec<u64> = s[k]
                        .as_array()
                        .map(|a| a.iter().filter_map(|b| b.as_u64()).collect())
                        .unwrap_or_default();
                    v.sort_unstable();
                    v
                };
                (ids("replicas"), ids("leaving"))
            })
            .collect();
        Some(p)
    };
    let client = Client::connect(cluster.client_config()).await.unwrap();
    let matches = |client: &Client| {
        let client = client.clone();
        async move {
            let want = placement().await?;
            if want.iter().any(|(_, leaving)| !leaving.is_empty()) {
                return None;
            }
            client.refresh_metadata(&["acme/prod/orders".into()]).await.ok()?;
            let info = client.stream_info("acme/prod/orders").await.ok()?;
            let have: Vec<Vec<u64>> = info.shards.iter().map(|s| s.replicas.clone()).collect();
            let want: Vec<Vec<u64>> = want.into_iter().map(|(r, _)| r).collect();
            (have == want && info.shards.iter().all(|s| s.leader.is_some())).then_some(want)
        }
    };
    let before = until(60, "voters matching the placement", || matches(&client)).await;
    assert!(before.iter().all(|r| r.len() == 3), "{before:?}");
    // Each group was founded by the control plane's preferred leader.
    let v = get("/v1/tenants/acme/namespaces/prod/streams/orders".into())
        .await
        .unwrap();
    let preferred: Vec<u64> = v["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["replicas"][0].as_u64().unwrap())
        .collect();
    let info = client.stream_info("acme/prod/orders").await.unwrap();
    let leaders: Vec<u64> = info.shards.iter().map(|s| s.leader.unwrap()).collect();
    assert_eq!(
        leaders, preferred,
        "groups are founded by their preferred leaders"
    );

    publish_keyed(&client, 0..40, "acknowledged").await;

    // Kill for good a broker that holds a replica of shard 0.
    let victim = before[0][0];
    cluster.kill(cluster.index_of(victim));
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..4).filter(|i| cluster.members[*i].at.id != victim).collect();
    let mut cfg = cluster.client_config();
    cfg.brokers = survivors
        .iter()
        .map(|i| cluster.members[*i].at.client.to_string())
        .collect();
    let client = Client::connect(cfg).await.unwrap();
    let after = until(90, "re-placed and fully replicated", || async {
        let r = matches(&client).await?;
        r.iter().all(|s| !s.contains(&victim)).then_some(r)
    })
    .await;
    println!(
        "re-placed and fully replicated {:.1} s after the kill (down after 1.5 s, re-placed after 2 s more)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(after.iter().all(|r| r.len() == 3), "{after:?}");

    // Writes go on, and every acknowledged record reads back.
    publish_keyed(&client, 40..80, "acknowledged after the re-placement").await;
    assert_eq!(read_all(&client, 2).await, 80);
    let v = get("/v1/cluster".into()).await.unwrap();
    assert_eq!(v["under_replicated_groups"], json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn felix_dev_with_three_brokers_runs_a_control_plane_they_follow() {
    use felix_broker::server::ClientProfile;
    use felix_client::transport::ClientTls;
    use felix_client::wire::Message;
    use felix_client::{Client, ClientConfig, Route};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Proc(Some(
        Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["dev", "--brokers", "3", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let path = dir.path().join("client.toml");
    let profile = until(60, "the profile", || async { ClientProfile::load(&path).ok() }).await;
    assert_eq!(profile.brokers.len(), 3);
    let token = profile
        .token
        .clone()
        .expect("the profile holds the development token");
    let mut cfg = ClientConfig::new(
        profile.brokers[0].clone(),
        ClientTls::from_pem_files(&profile.ca, None).unwrap(),
    );
    cfg.brokers = profile.brokers.clone();
    cfg.server_name = profile.server_name.clone();
    cfg.token = bytes::Bytes::from(token);
    let client = until(30, "a client", || async {
        Client::connect(cfg.clone()).await.ok()
    })
    .await;
    let create = Message::StreamCreate(felix_client::wire::StreamConfig::stream("orders", 2, "always"));
    until(30, "the stream created through the control plane", || async {
        // A retry after a slow first answer finds it made.
        match client.call(Route::Any, &create).await {
            Ok(Message::Done) => Some(()),
            Err(e) if e.to_string().contains("exists") => Some(()),
            _ => None,
        }
    })
    .await;
    // Every broker has it, and the control plane lists it.
    let secret = std::fs::read_to_string(dir.path().join("controlplane/secret")).unwrap();
    let cp = profile.controlplane.clone().unwrap();
    let v: Value = reqwest::Client::new()
        .get(format!("{cp}/v1/tenants/dev/namespaces/default/streams/orders"))
        .bearer_auth(secret.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["spec"]["replication_factor"], json!(3), "{v}");
    let mut one = cfg.clone();
    for b in &profile.brokers {
        one.brokers = vec![b.clone()];
        let c = Client::connect(one.clone()).await.unwrap();
        until(20, "the stream on each broker", || async {
            matches!(
                c.call(
                    Route::Any,
                    &Message::StreamDescribe {
                        name: "orders".into()
                    }
                )
                .await,
                Ok(Message::StreamDescription { .. })
            )
            .then_some(())
        })
        .await;
    }
    // Without the token a broker refuses the connection.
    cfg.token = bytes::Bytes::new();
    let r = match Client::connect(cfg).await {
        Ok(c) => c
            .call(Route::Any, &Message::Metadata { streams: vec![] })
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(r.is_err_and(|e| e.to_string().contains("unauthorized")));
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_preferred_replica_after_a_failover() {
    use felix_client::Client;
    use reqwest::Method;

    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let _cp = Proc::start(dir.path(), 1, &[port]);
    let ports = [port];
    until(20, "a control-plane leader", || leader(&http, &ports)).await;
    let extra = format!(
        "[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 1000\nrequire_tokens = false\n"
    );
    let root = dir.path().join("brokers");
    let cluster = tokio::task::block_in_place(|| common::cluster::LocalCluster::start(&root, 3, &extra));
    until(30, "three active brokers", || async {
        let (_, v) = call(&http, port, Method::GET, "/v1/brokers", None).await.ok()?;
        let active = v["items"]
            .as_array()?
            .iter()
            .filter(|b| b["status"] == "active")
            .count();
        (active == 3).then_some(())
    })
    .await;
    for (path, body) in [
        ("/v1/tenants", json!({"name": "acme"})),
        ("/v1/tenants/acme/namespaces", json!({"name": "prod"})),
        (
            "/v1/tenants/acme/namespaces/prod/streams",
            json!({"name": "orders", "shards": 2, "replication_factor": 3}),
        ),
    ] {
        let (s, v) = call(&http, port, Method::POST, path, Some(body)).await.unwrap();
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (_, v) = call(
        &http,
        port,
        Method::GET,
        "/v1/tenants/acme/namespaces/prod/streams/orders",
        None,
    )
    .await
    .unwrap();
    let preferred: Vec<u64> = v["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["replicas"][0].as_u64().unwrap())
        .collect();
    let client = Client::connect(cluster.client_config()).await.unwrap();
    let leaders = || async {
        client.refresh_metadata(&["acme/prod/orders".into()]).await.ok()?;
        let info = client.stream_info("acme/prod/orders").await.ok()?;
        info.shards.iter().map(|s| s.leader).collect::<Option<Vec<u64>>>()
    };
    until(30, "the preferred leaders lead", || async {
        (leaders().await? == preferred).then_some(())
    })
    .await;
    publish_keyed(&client, 0..20, "acknowledged").await;

    // Pause shard 0's leader past its lease: another broker takes over.
    let paused = cluster.index_of(preferred[0]);
    cluster.signal(paused, "-STOP");
    until(20, "a failover", || async {
        let l = leaders().await?;
        (l[0] != preferred[0]).then_some(())
    })
    .await;
    cluster.signal(paused, "-CONT");
    let back = Instant::now();
    // Once it is back and caught up, the leadership is handed back to it.
    until(30, "leadership back with the preferred replicas", || async {
        (leaders().await? == preferred).then_some(())
    })
    .await;
    println!(
        "leaders back on their preferred replicas {:.1} s after SIGCONT",
        back.elapsed().as_secs_f64()
    );
    publish_keyed(&client, 20..40, "acknowledged after the hand-over").await;
    assert_eq!(read_all(&client, 2).await, 40);
    drop(cluster);
}
