//! Brokers following a control plane, as real processes: streams made
//! through it on every broker, its tokens enforced, serving on without it;
//! its placement carried out (a broker killed for good re-placed, a decommissioned
//! broker emptied, leadership back on the preferred replica after a
//! failover; dead letters forwarded to a dead-letter stream placed on
//! other brokers); `felix dev --brokers 3` with its embedded control plane.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cp::{call, free_port, leader, until, Proc, SECRET};
use serde_json::{json, Value};

/// Publishes `k{i}` → `v{i}` for every `i` of `range` to `acme/prod/orders`
/// and waits for every acknowledgement; returns each (shard, offset).
async fn publish_keyed(
    client: &felix_client::Client,
    range: std::ops::Range<u32>,
    what: &str,
) -> Vec<(u32, u64)> {
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
    let mut at = Vec::new();
    for a in acks {
        let a = a.wait().await.expect(what);
        at.push((a.shard, a.offset));
    }
    at
}

/// Reads `acme/prod/orders` from the start (from each shard's leader) and
/// checks that every acknowledged (shard, offset) is there.
async fn read_back(client: &felix_client::Client, acked: &[(u32, u64)]) {
    use felix_client::wire::Start;
    use felix_client::SubscribeOptions;
    let shards: std::collections::BTreeSet<u32> = acked.iter().map(|a| a.0).collect();
    for shard in shards {
        let want: std::collections::BTreeSet<u64> =
            acked.iter().filter(|a| a.0 == shard).map(|a| a.1).collect();
        let last = *want.iter().next_back().unwrap();
        let opts = SubscribeOptions {
            shards: vec![shard],
            start: Start::Earliest,
            ..SubscribeOptions::default()
        };
        let mut sub = client.subscribe("acme/prod/orders", opts).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        while seen.last().is_none_or(|o| *o < last) {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("records within 10 s")
                .unwrap()
                .unwrap();
            seen.insert(d.record.offset.0);
        }
        assert!(
            want.is_subset(&seen),
            "shard {shard}: acknowledged offsets missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cluster_follows_the_control_plane_enforces_its_tokens_and_serves_without_it() {
    use bytes::Bytes;
    use felix_client::wire::Message;
    use felix_client::{Client, Route};
    use reqwest::Method;

    let dir = tempfile::tempdir().unwrap();
    // Three brokers requiring tokens; acme/prod/orders made through the
    // control plane, replicated on all three.
    let mut p = Placed::start(dir.path(), 3, "", true).await;
    let (http, port, cluster) = (p.http.clone(), p.port, &p.cluster);
    let ok = |m: Method, path: &'static str, body: Value| {
        let http = http.clone();
        async move {
            let (s, v) = call(&http, port, m, path, Some(body)).await.unwrap();
            assert!((200..300).contains(&s), "{path}: {s} {v}");
            v
        }
    };
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
    let mut acked = publish_keyed(&client, 0..50, "acknowledged with the control plane up").await;

    // The control plane goes away: brokers keep serving what they host,
    // and a new connection's token is still checked with the keys held.
    p.cp.kill();
    let client = Client::connect(all)
        .await
        .expect("connects without the control plane");
    acked.extend(publish_keyed(&client, 50..100, "acknowledged with the control plane down").await);
    read_back(&client, &acked).await;
}

/// One placement of a shard as the control plane has it.
#[derive(Debug, Clone, PartialEq)]
struct Placement {
    /// Sorted.
    replicas: Vec<u64>,
    preferred: u64,
    leaving: Vec<u64>,
}

/// A control-plane node (`cp_extra` in its file) and `n` brokers following
/// it (heartbeats every 500 ms, tokens required or not), with tenant acme,
/// namespace prod and stream orders (2 shards, RF 3) made through it.
struct Placed {
    cp: Proc,
    cluster: common::cluster::LocalCluster,
    port: u16,
    http: reqwest::Client,
}

impl Placed {
    async fn start(dir: &Path, n: u64, cp_extra: &str, require_tokens: bool) -> Placed {
        Placed::start_with_shards(dir, n, cp_extra, require_tokens, 2).await
    }

    /// [`Placed::start`] with orders made of `shards` shards.
    async fn start_with_shards(
        dir: &Path,
        n: u64,
        cp_extra: &str,
        require_tokens: bool,
        shards: u32,
    ) -> Placed {
        use reqwest::Method;
        let http = reqwest::Client::new();
        let port = free_port();
        let cp = Proc::start_with(dir, 1, &[port], cp_extra);
        let ports = [port];
        until(20, "a control-plane leader", || leader(&http, &ports)).await;
        let extra = format!(
            "[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 500\nrequire_tokens = {require_tokens}\n"
        );
        let root = dir.join("brokers");
        let cluster = tokio::task::block_in_place(|| common::cluster::LocalCluster::start(&root, n, &extra));
        until(30, "every broker active", || async {
            let (_, v) = call(&http, port, Method::GET, "/v1/brokers", None).await.ok()?;
            let active = v["items"]
                .as_array()?
                .iter()
                .filter(|b| b["status"] == "active")
                .count();
            (active == n as usize).then_some(())
        })
        .await;
        for (path, body) in [
            ("/v1/tenants", json!({"name": "acme"})),
            ("/v1/tenants/acme/namespaces", json!({"name": "prod"})),
            (
                "/v1/tenants/acme/namespaces/prod/streams",
                json!({"name": "orders", "shards": shards, "replication_factor": 3}),
            ),
        ] {
            let (s, v) = call(&http, port, Method::POST, path, Some(body)).await.unwrap();
            assert_eq!(s, 200, "{path}: {v}");
        }
        Placed {
            cp,
            cluster,
            port,
            http,
        }
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        call(
            &self.http,
            self.port,
            reqwest::Method::POST,
            path,
            Some(json!({})),
        )
        .await
        .unwrap()
    }

    async fn placement(&self) -> Option<Vec<Placement>> {
        let path = "/v1/tenants/acme/namespaces/prod/streams/orders";
        let (s, v) = call(&self.http, self.port, reqwest::Method::GET, path, None)
            .await
            .ok()?;
        if s != 200 {
            return None;
        }
        let ids = |v: &Value| -> Vec<u64> {
            v.as_array()
                .map(|a| a.iter().filter_map(|b| b.as_u64()).collect())
                .unwrap_or_default()
        };
        v["placement"]
            .as_array()?
            .iter()
            .map(|p| {
                let replicas = ids(&p["replicas"]);
                let mut sorted = replicas.clone();
                sorted.sort_unstable();
                Some(Placement {
                    preferred: *replicas.first()?,
                    replicas: sorted,
                    leaving: ids(&p["leaving"]),
                })
            })
            .collect()
    }

    /// The placement, once every group's voters (as `client` learns them)
    /// are its placed brokers, nothing is leaving, and each group's
    /// leader is its preferred broker.
    async fn settled(&self, client: &felix_client::Client) -> Option<Vec<Placement>> {
        let want = self.placement().await?;
        if want.iter().any(|p| !p.leaving.is_empty()) {
            return None;
        }
        client.refresh_metadata(&["acme/prod/orders".into()]).await.ok()?;
        let info = client.stream_info("acme/prod/orders").await.ok()?;
        let ok = info
            .shards
            .iter()
            .zip(&want)
            .all(|(s, p)| s.replicas == p.replicas && s.leader == Some(p.preferred));
        ok.then_some(want)
    }

    /// [`Placed::settled`], once no rebalance is in progress.
    async fn rebalanced(&self, client: &felix_client::Client) -> Option<Vec<Placement>> {
        let (_, r) = call(&self.http, self.port, reqwest::Method::GET, "/v1/rebalance", None)
            .await
            .ok()?;
        if !r["rebalance"].is_null() {
            return None;
        }
        self.settled(client).await
    }

    /// [`Placed::settled`], with broker `gone` in no group.
    async fn settled_without(&self, client: &felix_client::Client, gone: u64) -> Option<Vec<Placement>> {
        let r = self.settled(client).await?;
        r.iter().all(|s| !s.replicas.contains(&gone)).then_some(r)
    }

    /// A client of the brokers other than `gone`.
    async fn client_without(&self, gone: Option<u64>) -> felix_client::Client {
        let mut cfg = self.cluster.client_config();
        cfg.brokers = self
            .cluster
            .members
            .iter()
            .filter(|m| Some(m.at.id) != gone)
            .map(|m| m.at.client.to_string())
            .collect();
        felix_client::Client::connect(cfg).await.unwrap()
    }
}

/// A producer writing keyed records through whatever happens meanwhile,
/// each batch of ten awaited (a failed publish panics its task).
struct Writing {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u32, u64)>>,
}

impl Writing {
    async fn start(p: &Placed, what: &'static str) -> Writing {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, flag) = (p.client_without(None).await, stop.clone());
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut next = 1_000u32;
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                acked.extend(publish_keyed(&client, next..next + 10, what).await);
                next += 10;
            }
            acked
        });
        Writing { stop, task }
    }

    /// Every (shard, offset) acknowledged; panics if a publish failed.
    async fn finish(self) -> Vec<(u32, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let acked = self.task.await.expect("no publish failed");
        assert!(!acked.is_empty());
        acked
    }
}

/// Hosting follows placement: 5 brokers and a stream of 10 shards at RF 3
/// hold exactly the 30 placed replicas (6 per broker, each where the
/// placement puts it, none elsewhere), and every broker's metadata names
/// each shard's leader and its 3 voters, held there or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_brokers_hold_exactly_their_placed_replicas_and_each_names_every_leader() {
    use felix_client::wire::Message;
    use felix_client::{Client, Route};

    let dir = tempfile::tempdir().unwrap();
    let p = Placed::start_with_shards(dir.path(), 5, "", false, 10).await;
    let created = Instant::now();
    let client = p.client_without(None).await;
    let placed = until(
        90,
        "every shard led by its preferred broker with its 3 placed voters",
        || p.settled(&client),
    )
    .await;
    println!(
        "10 shards on 5 brokers: led and fully placed {:.1} s after the create",
        created.elapsed().as_secs_f64()
    );
    assert_eq!(placed.len(), 10);
    assert!(placed.iter().all(|s| s.replicas.len() == 3), "{placed:?}");

    // Each broker's shard directories are exactly its placed replicas.
    let mut total = 0;
    for m in &p.cluster.members {
        let b = m.at.id;
        let meta = stream_meta(&m.at.data_dir, "acme/prod/orders");
        let ids: Vec<u64> = meta["shards"]
            .as_array()
            .expect("the stream is known to every broker")
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 10, "broker {b}: {meta}");
        let want: std::collections::BTreeSet<String> = ids
            .iter()
            .zip(&placed)
            .filter(|(_, s)| s.replicas.contains(&b))
            .map(|(id, _)| id.to_string())
            .collect();
        let have: std::collections::BTreeSet<String> = std::fs::read_dir(m.at.data_dir.join("shards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(have, want, "broker {b} holds what is placed on it");
        assert_eq!(have.len(), 6, "broker {b}: 30 replicas over 5 brokers");
        total += have.len();
    }
    assert_eq!(total, 30);

    // Whichever broker answers, it names the real leader and voters.
    let want: Vec<(Option<u64>, Vec<u64>)> = placed
        .iter()
        .map(|s| (Some(s.preferred), s.replicas.clone()))
        .collect();
    for (i, m) in p.cluster.members.iter().enumerate() {
        let c = Client::connect(p.cluster.member_config(i)).await.unwrap();
        let ask = Message::Metadata {
            streams: vec!["acme/prod/orders".into()],
        };
        let got = until(10, "the broker's metadata agrees with the placement", || async {
            let Ok(Message::MetadataReply { streams, .. }) = c.call(Route::Any, &ask).await else {
                return None;
            };
            let got: Vec<(Option<u64>, Vec<u64>)> = streams
                .first()?
                .shards
                .iter()
                .map(|s| {
                    let mut r = s.replicas.clone();
                    r.sort_unstable();
                    (s.leader, r)
                })
                .collect();
            (got == want).then_some(got)
        })
        .await;
        assert_eq!(got.len(), 10, "broker {}", m.at.id);
    }
    // And `felix cluster status` finds every shard led and fully
    // replicated. Asked again a few times: on this loaded machine (ten
    // five-broker clusters at once) a group may be between leaders at the
    // moment of one look, an election it finishes within a second.
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["cluster", "status", "--output", "json", "--profile"])
            .arg(p.cluster.members[0].at.data_dir.join("client.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let mut s = status();
    for _ in 0..10 {
        if (&s["without_leader"], &s["under_replicated"]) == (&json!(0), &json!(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        s = status();
    }
    assert_eq!(
        (&s["shards_total"], &s["without_leader"], &s["under_replicated"]),
        (&json!(10), &json!(0), &json!(0)),
        "{s}"
    );

    // An operator moves shard 0's leadership to another of its replicas.
    let to = *placed[0]
        .replicas
        .iter()
        .find(|b| **b != placed[0].preferred)
        .unwrap();
    let transfer = |broker: u64| {
        let path = "/v1/tenants/acme/namespaces/prod/shards/orders/0/leader";
        call(
            &p.http,
            p.port,
            reqwest::Method::POST,
            path,
            Some(json!({"broker": broker})),
        )
    };
    let (status, v) = transfer(to).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let moved = Instant::now();
    let after = until(30, "shard 0 led by the broker it was transferred to", || async {
        let s = p.settled(&client).await?;
        (s[0].preferred == to).then_some(s)
    })
    .await;
    println!("leadership transferred in {:.1} s", moved.elapsed().as_secs_f64());
    assert_eq!(after[0].replicas, placed[0].replicas, "only the leader changed");
    // A broker that holds no replica cannot be made its leader.
    let outsider = (1..=5u64).find(|b| !placed[0].replicas.contains(b)).unwrap();
    let (status, v) = transfer(outsider).await.unwrap();
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_for_good_has_its_replicas_re_placed_and_its_shards_fully_replicated_again() {
    let dir = tempfile::tempdir().unwrap();
    // Down after 3 missed 500 ms heartbeats; re-placed 2 s after that.
    let mut p = Placed::start(
        dir.path(),
        5,
        "broker_heartbeat_interval_ms = 500\nreplace_after_ms = 2000\n",
        false,
    )
    .await;
    // Every shard's voters are exactly its three placed brokers (of five),
    // led by the preferred one.
    let client = p.client_without(None).await;
    let before = until(60, "groups matching the placement", || p.settled(&client)).await;
    assert!(before.iter().all(|s| s.replicas.len() == 3), "{before:?}");
    let mut acked = publish_keyed(&client, 0..40, "acknowledged").await;

    // Kill for good a broker that holds a replica of shard 0.
    let victim = before[0].replicas[0];
    let i = p.cluster.index_of(victim);
    p.cluster.kill(i);
    let killed_at = Instant::now();
    let client = p.client_without(Some(victim)).await;
    let after = until(90, "re-placed and fully replicated", || {
        p.settled_without(&client, victim)
    })
    .await;
    println!(
        "re-placed and fully replicated {:.1} s after the kill (down after 1.5 s, re-placed after 2 s more)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(after.iter().all(|s| s.replicas.len() == 3), "{after:?}");

    // Writes go on, and every acknowledged record reads back.
    acked.extend(publish_keyed(&client, 40..80, "acknowledged after the re-placement").await);
    read_back(&client, &acked).await;
    let (_, v) = call(&p.http, p.port, reqwest::Method::GET, "/v1/cluster", None)
        .await
        .unwrap();
    assert_eq!(v["under_replicated_groups"], json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_broker_gives_up_its_replicas_and_leaderships_and_its_id_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Placed::start(dir.path(), 5, "", false).await;
    let client = p.client_without(None).await;
    let before = until(60, "groups matching the placement", || p.settled(&client)).await;
    let mut acked = publish_keyed(&client, 0..30, "acknowledged").await;
    // A producer writes on through the whole decommission.
    let load = Writing::start(&p, "acknowledged during the decommission").await;
    // The preferred leader of shard 0: it holds a replica and leads.
    let drained = before[0].preferred;
    let (s, v) = p.post(&format!("/v1/brokers/{drained}/decommission")).await;
    assert_eq!(s, 200, "{v}");
    let started = Instant::now();
    let after = until(60, "the drained broker out of every group", || {
        p.settled_without(&client, drained)
    })
    .await;
    println!(
        "decommissioned in {:.1} s (replicas moved, leaders handed over)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        after
            .iter()
            .all(|s| s.replicas.len() == 3 && s.preferred != drained),
        "{after:?}"
    );
    // It still runs, it just holds nothing: its replicas were deleted once
    // each move was done, and the data is all on the others.
    let shards_dir = p.cluster.members[p.cluster.index_of(drained)]
        .at
        .data_dir
        .join("shards");
    until(30, "the drained broker's replicas deleted", || async {
        (std::fs::read_dir(&shards_dir).ok()?.count() == 0).then_some(())
    })
    .await;
    // It left the registry, and its id cannot come back.
    let gone = until(30, "the broker out of the registry", || async {
        let (_, v) = call(&p.http, p.port, reqwest::Method::GET, "/v1/brokers", None)
            .await
            .ok()?;
        let listed = v["items"]
            .as_array()?
            .iter()
            .any(|b| b["registration"]["id"] == json!(drained));
        (!listed).then_some(v)
    })
    .await;
    assert_eq!(gone["retired"], json!([drained]), "{gone}");
    let again = json!({"id": drained, "client_addr": "127.0.0.1:1", "raft_addr": "127.0.0.1:2"});
    let (s, v) = call(&p.http, p.port, reqwest::Method::POST, "/v1/brokers", Some(again))
        .await
        .unwrap();
    assert_eq!(s, 400, "a retired id is refused: {v}");
    acked.extend(load.finish().await);
    acked.extend(publish_keyed(&client, 30..60, "acknowledged after the decommission").await);
    let others = p.client_without(Some(drained)).await;
    read_back(&others, &acked).await;
    drop((client, others));
    tokio::task::block_in_place(|| p.cluster.stop_all());
    replicas_agree(&p.cluster, &after, &acked);
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
    // A stream's default replication factor is one per active broker up to
    // 3: felix dev writes the profile only once all three have registered,
    // so a stream made as soon as it is there gets three replicas.
    let secret = std::fs::read_to_string(dir.path().join("controlplane/secret")).unwrap();
    let cp = profile.controlplane.clone().unwrap();
    // A GET of the control plane's API as the operator.
    let get = |path: &str| {
        let req = common::controlplane_client(&profile)
            .get(format!("{cp}{path}"))
            .bearer_auth(secret.trim());
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = get("/v1/brokers").await;
    let active = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "active")
        .count();
    assert_eq!(
        active, 3,
        "the profile was written before every broker registered: {v}"
    );
    let create = Message::StreamCreate(felix_client::wire::StreamConfig::stream(
        "orders",
        2,
        felix_client::wire::Durability::Always,
    ));
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
    assert!(
        cp.starts_with("https://"),
        "felix dev's control plane serves TLS: {cp}"
    );
    let v = get("/v1/tenants/dev/namespaces/default/streams/orders").await;
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
    // Each broker's file names the control plane's secret, and its own
    // replication key: only their owner reads them. No broker holds the
    // CA's key, and each certificate names its own broker only.
    use std::os::unix::fs::PermissionsExt;
    for n in 1..=3u64 {
        let b = dir.path().join(format!("broker{n}"));
        let certs = dir.path().join(format!("certs/broker{n}"));
        for secret in [b.join("broker.toml"), certs.join("broker.key")] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: mode {mode:o}", secret.display());
        }
        let toml = std::fs::read_to_string(b.join("broker.toml")).unwrap();
        assert!(!toml.contains("ca.key"), "{toml}");
        assert!(!b.join("tls/ca.key").exists() && !certs.join("ca.key").exists());
        let pem = std::fs::read(certs.join("broker.pem")).unwrap();
        let cert = felix_client::transport::identity::first_certificate(&pem).unwrap();
        for other in 1..=3u64 {
            assert_eq!(
                felix_client::transport::identity::names_broker(&cert, other),
                other == n,
                "broker {n}'s certificate and broker {other}"
            );
        }
    }
    child.kill();
}

/// A rebalance fills an empty broker: 5 brokers, 10 shards at RF 3; one is
/// drained empty (its replicas and their files go), taken back, and a
/// rebalance moves replicas onto it until every broker holds 6 again, with
/// a producer writing throughout and every acknowledged record read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_moves_replicas_onto_an_empty_broker_until_every_broker_holds_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let p = Placed::start_with_shards(dir.path(), 5, "", false, 10).await;
    let client = p.client_without(None).await;
    let before = until(90, "groups matching the placement", || p.settled(&client)).await;
    let mut acked = publish_keyed(&client, 0..40, "acknowledged").await;
    let empty = before[0].preferred;
    let shards_dir = p.cluster.members[p.cluster.index_of(empty)]
        .at
        .data_dir
        .join("shards");
    let (s, v) = p.post(&format!("/v1/brokers/{empty}/drain")).await;
    assert_eq!(s, 200, "{v}");
    until(60, "the drained broker empty", || async {
        p.settled_without(&client, empty).await?;
        (std::fs::read_dir(&shards_dir).ok()?.count() == 0).then_some(())
    })
    .await;
    let (s, v) = p.post(&format!("/v1/brokers/{empty}/undrain")).await;
    assert_eq!(s, 200, "{v}");
    // A producer writes through the rebalance.
    let load = Writing::start(&p, "acknowledged during the rebalance").await;
    let started = Instant::now();
    let (s, v) = call(
        &p.http,
        p.port,
        reqwest::Method::POST,
        "/v1/rebalance",
        Some(json!({"strategy": "minimize_movement"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let after = until(90, "every broker holding 6 replicas, nothing moving", || async {
        let placed = p.rebalanced(&client).await?;
        let (per, _) = shares(&placed);
        (per.len() == 5 && per.values().all(|n| *n == 6)).then_some(placed)
    })
    .await;
    println!(
        "rebalanced onto the empty broker in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Its directories are its placed replicas, caught up from the others.
    let held = after.iter().filter(|s| s.replicas.contains(&empty)).count();
    assert_eq!(std::fs::read_dir(&shards_dir).unwrap().count(), held);
    acked.extend(load.finish().await);
    read_back(&client, &acked).await;
}

/// Replicas per broker, and preferred leaderships per broker.
fn shares(placed: &[Placement]) -> (BTreeMap<u64, usize>, BTreeMap<u64, usize>) {
    let (mut replicas, mut leaders) = (BTreeMap::new(), BTreeMap::new());
    for s in placed {
        *leaders.entry(s.preferred).or_default() += 1;
        for b in &s.replicas {
            *replicas.entry(*b).or_default() += 1;
        }
    }
    (replicas, leaders)
}

/// After the cluster stopped: on every broker placed on a shard of
/// `acme/prod/orders`, the shard's log holds the same records, no value
/// twice (an idempotent producer's retries left no duplicate), and every
/// acknowledged offset.
fn replicas_agree(c: &common::cluster::LocalCluster, placed: &[Placement], acked: &[(u32, u64)]) {
    use felix_log::{Log, LogConfig, Offset};
    for (shard, s) in placed.iter().enumerate() {
        let mut copies = Vec::new();
        for b in &s.replicas {
            let dir = &c.members[c.index_of(*b)].at.data_dir;
            let id = stream_meta(dir, "acme/prod/orders")["shards"][shard]
                .as_u64()
                .unwrap();
            let (log, _) = Log::open(dir.join(format!("shards/{id}")), LogConfig::default(), 0)
                .unwrap_or_else(|e| panic!("broker {b} shard {shard}: {e}"));
            let mut records = Vec::new();
            for batch in log.batches_from(Offset(log.earliest_offset().0)).unwrap() {
                if batch.header().flags.control() {
                    continue;
                }
                for r in batch.records().unwrap() {
                    let r = r.unwrap();
                    records.push((r.offset.0, r.value.unwrap()));
                }
            }
            copies.push((*b, records));
        }
        for (b, have) in &copies {
            let values: std::collections::BTreeSet<_> = have.iter().map(|(_, v)| v.clone()).collect();
            assert_eq!(
                values.len(),
                have.len(),
                "shard {shard} on broker {b}: a value twice"
            );
            let offsets: std::collections::BTreeSet<u64> = have.iter().map(|(o, _)| *o).collect();
            for (_, o) in acked.iter().filter(|(s, _)| *s as usize == shard) {
                assert!(
                    offsets.contains(o),
                    "shard {shard} on broker {b}: acknowledged offset {o} missing"
                );
            }
        }
        // What one replica got past the last acknowledgement before the
        // stop, another may not have: the common part is the same.
        let (first, want) = &copies[0];
        for (b, have) in &copies[1..] {
            let n = have.len().min(want.len());
            assert!(
                have[..n] == want[..n],
                "shard {shard}: broker {b} differs from broker {first}"
            );
        }
    }
}

/// A sixth broker started against the control plane (no peer list
/// anywhere changes) joins while a producer and a reader run: the
/// replicas rebalance to 5 per broker and the leaderships to within one,
/// and every replica of every shard holds every acknowledged record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_broker_joins_a_running_cluster_and_takes_its_share_under_load() {
    use felix_client::wire::Start;
    use felix_client::SubscribeOptions;

    let dir = tempfile::tempdir().unwrap();
    let mut p = Placed::start_with_shards(dir.path(), 5, "", false, 10).await;
    let client = p.client_without(None).await;
    until(90, "groups matching the placement", || p.settled(&client)).await;
    let mut acked = publish_keyed(&client, 0..40, "acknowledged").await;
    let load = Writing::start(&p, "acknowledged while a broker joins").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (client, stop) = (p.client_without(None).await, stop.clone());
        tokio::spawn(async move {
            let opts = SubscribeOptions {
                shards: vec![0],
                start: Start::Earliest,
                ..SubscribeOptions::default()
            };
            let mut sub = client.subscribe("acme/prod/orders", opts).await.unwrap();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
                    seen.push(d.expect("the reader reads on through the move").record.offset.0);
                }
            }
            seen
        })
    };
    let started = Instant::now();
    let new = tokio::task::block_in_place(|| p.cluster.add());
    assert_eq!(new, 6);
    let after = until(
        120,
        "6 brokers holding 5 replicas each, leaders within one",
        || async {
            let placed = p.rebalanced(&client).await?;
            let (replicas, leaders) = shares(&placed);
            let spread = leaders.values().max()?
                - (0..6)
                    .map(|i| leaders.get(&(i + 1)).copied().unwrap_or(0))
                    .min()?;
            (replicas.len() == 6 && replicas.values().all(|n| *n == 5) && spread <= 1).then_some(placed)
        },
    )
    .await;
    println!(
        "a sixth broker took its share in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let shards_dir = p.cluster.members[p.cluster.index_of(new)]
        .at
        .data_dir
        .join("shards");
    assert_eq!(std::fs::read_dir(&shards_dir).unwrap().count(), 5);
    acked.extend(load.finish().await);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen = reader.await.unwrap();
    assert!(!seen.is_empty(), "the reader saw records");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the reader saw each offset once, in order"
    );
    read_back(&client, &acked).await;
    drop(client);
    tokio::task::block_in_place(|| p.cluster.stop_all());
    replicas_agree(&p.cluster, &after, &acked);
}

/// Three processes, each a broker and a control-plane node (combined
/// mode, no other process): they form both quorums among themselves,
/// serve a stream at replication factor 3, and go on when one process is
/// SIGKILLed, broker and control-plane node together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_combined_processes_run_the_cluster_and_its_control_plane_and_survive_losing_one() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let ports = [free_port(), free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let extra = format!(
        "[controlplane]\nurls = {urls:?}\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 500\nrequire_tokens = false\n"
    );
    let root = dir.path().join("brokers");
    let mut c = common::cluster::LocalCluster::configure(&root, 3, &extra, |_| None);
    for (i, m) in c.members.iter_mut().enumerate() {
        m.controlplane = Some(Proc::configure(dir.path(), i as u64 + 1, &ports, ""));
    }
    tokio::task::block_in_place(|| c.launch());
    until(30, "a control-plane leader among the brokers' processes", || {
        leader(&http, &ports)
    })
    .await;
    let port = ports[0];
    until(30, "three brokers registered and active", || async {
        let (_, v) = call(&http, port, Method::GET, "/v1/brokers", None).await.ok()?;
        let items = v["items"].as_array()?;
        (items.iter().filter(|b| b["status"] == "active").count() == 3).then_some(())
    })
    .await;
    for (path, body) in [
        ("/v1/tenants", json!({"name": "acme"})),
        ("/v1/tenants/acme/namespaces", json!({"name": "prod"})),
        (
            "/v1/tenants/acme/namespaces/prod/streams",
            json!({"name": "orders", "shards": 3, "replication_factor": 3}),
        ),
    ] {
        let (s, v) = call(&http, port, Method::POST, path, Some(body)).await.unwrap();
        assert_eq!(s, 200, "{path}: {v}");
    }
    let client = felix_client::Client::connect(c.client_config()).await.unwrap();
    let mut acked = until(30, "the stream serving", || async {
        let p = client
            .producer("acme/prod/orders", felix_client::ProducerConfig::default())
            .await
            .ok()?;
        let a = p
            .send(felix_client::ProducerRecord::keyed(
                "k",
                bytes::Bytes::from_static(b"v"),
            ))
            .await
            .ok()?;
        let a = a.wait().await.ok()?;
        Some(vec![(a.shard, a.offset)])
    })
    .await;
    acked.extend(publish_keyed(&client, 0..30, "acknowledged by three").await);
    // One machine lost: its broker and its control-plane node at once.
    tokio::task::block_in_place(|| c.kill(0));
    let mut cfg = c.client_config();
    cfg.brokers.remove(0);
    let client = felix_client::Client::connect(cfg).await.unwrap();
    acked.extend(publish_keyed(&client, 30..60, "acknowledged by the two left").await);
    read_back(&client, &acked).await;
    // The two control-plane nodes left elect a leader and take changes.
    until(30, "a stream created through the two nodes left", || async {
        let body = json!({"name": "later", "shards": 1, "replication_factor": 2});
        let path = "/v1/tenants/acme/namespaces/prod/streams";
        let (s, _) = call(&http, ports[1], Method::POST, path, Some(body)).await.ok()?;
        (s == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_preferred_replica_after_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let p = Placed::start(dir.path(), 3, "", false).await;
    let client = p.client_without(None).await;
    let placed = until(60, "the preferred leaders lead", || p.settled(&client)).await;
    let mut acked = publish_keyed(&client, 0..20, "acknowledged").await;

    // Pause shard 0's leader past its lease: another broker takes over.
    let leaders = || async {
        client.refresh_metadata(&["acme/prod/orders".into()]).await.ok()?;
        let info = client.stream_info("acme/prod/orders").await.ok()?;
        info.shards.iter().map(|s| s.leader).collect::<Option<Vec<u64>>>()
    };
    let paused = p.cluster.index_of(placed[0].preferred);
    p.cluster.signal(paused, "-STOP");
    until(20, "a failover", || async {
        (leaders().await?[0] != placed[0].preferred).then_some(())
    })
    .await;
    p.cluster.signal(paused, "-CONT");
    let back = Instant::now();
    // Once it is back and caught up, the leadership is handed back to it.
    until(30, "leadership back with the preferred replicas", || {
        p.settled(&client)
    })
    .await;
    println!(
        "leaders back on their preferred replicas {:.1} s after SIGCONT",
        back.elapsed().as_secs_f64()
    );
    acked.extend(publish_keyed(&client, 20..40, "acknowledged after the hand-over").await);
    read_back(&client, &acked).await;
}

/// With fewer replicas than brokers, a stream's dead-letter stream is
/// placed on its own, here (replication factor 1 of 5 brokers) on another
/// broker than the stream's only replica: the stream's leader forwards
/// each dead letter to the dead-letter shard's leader, and each lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_reach_a_dead_letter_stream_placed_on_other_brokers() {
    use felix_client::wire::Start;
    use felix_client::{ProducerConfig, ProducerRecord, SubscribeOptions};

    let dir = tempfile::tempdir().unwrap();
    let p = Placed::start(dir.path(), 5, "", false).await;
    let streams = "/v1/tenants/acme/namespaces/prod/streams";
    let spec = json!({"name": "jobs", "shards": 1, "replication_factor": 1, "max_deliveries": 1});
    let (s, v) = call(&p.http, p.port, reqwest::Method::POST, streams, Some(spec))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let placed_on = |name: &'static str| {
        let http = p.http.clone();
        let port = p.port;
        async move {
            let path = format!("{streams}/{name}");
            let (s, v) = call(&http, port, reqwest::Method::GET, &path, None).await.ok()?;
            if s != 200 {
                return None;
            }
            let on: Vec<u64> = v["placement"][0]["replicas"]
                .as_array()?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            (!on.is_empty()).then_some(on)
        }
    };
    let client = p.client_without(None).await;
    let producer = client
        .producer("acme/prod/jobs", ProducerConfig::default())
        .await
        .unwrap();
    for v in ["poison", "bad"] {
        producer.send_wait(ProducerRecord::keyed("j", v)).await.unwrap();
    }
    let g = client.group_consumer("acme/prod/jobs", "g");
    assert_eq!(g.fetch(2, 10_000).await.unwrap().records.len(), 2);
    g.nack(&[(0, 0), (0, 1)], 0).await.unwrap();
    // Delivered once already: this fetch dead-letters both.
    assert!(g.fetch(2, 10_000).await.unwrap().records.is_empty());
    let jobs_on = until(30, "the stream's placement", || placed_on("jobs")).await;
    let dlq_on = until(30, "the dead-letter stream's placement", || placed_on("jobs.dlq")).await;
    assert!(
        jobs_on.iter().all(|b| !dlq_on.contains(b)),
        "the case under test: jobs on {jobs_on:?}, jobs.dlq on {dlq_on:?}"
    );
    let opts = SubscribeOptions::starting(Start::Earliest);
    let mut dlq = client.subscribe("acme/prod/jobs.dlq", opts).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both dead letters within 30 s: {got:?}"
        );
        match tokio::time::timeout(Duration::from_millis(500), dlq.next()).await {
            Ok(d) => got.push(d.unwrap().unwrap().record.value.unwrap()),
            // A dead letter not written is tried again at the next fetch,
            // which serves nothing meanwhile.
            Err(_) => assert!(g.fetch(2, 10_000).await.unwrap().records.is_empty()),
        }
    }
    got.sort();
    assert_eq!(got, vec![bytes::Bytes::from("bad"), bytes::Bytes::from("poison")]);
    // Acked in the source once written: nothing comes back.
    assert!(g.fetch(2, 1_000).await.unwrap().records.is_empty());
}

/// Sovereignty: a control plane of region eu admits the brokers of eu and
/// refuses one of us (which says why in its log), so nothing is ever
/// placed outside eu; `felix cluster status` names the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_admits_only_brokers_of_its_region() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let _cp = Proc::start_with(dir.path(), 1, &[port], "region = \"eu\"");
    let ports = [port];
    until(20, "a control-plane leader", || leader(&http, &ports)).await;
    let follow = |region: &str| {
        format!(
            "region = \"{region}\"\n[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{SECRET}\"\nheartbeat_interval_ms = 500\nrequire_tokens = false\n"
        )
    };
    let eu = tokio::task::block_in_place(|| {
        common::cluster::LocalCluster::start(&dir.path().join("eu"), 3, &follow("eu"))
    });
    // Broker 4 of region us, given the eu control plane's address and
    // broker secret all the same.
    let mut us = common::cluster::LocalCluster::configure(&dir.path().join("us"), 4, &follow("us"), |_| None);
    let logs = dir.path().join("us-logs");
    std::fs::create_dir_all(&logs).unwrap();
    us.stderr_dir = Some(logs.clone());
    tokio::task::block_in_place(|| us.try_restart(3)).unwrap();
    until(30, "the us broker told it is refused", || async {
        let log = std::fs::read_to_string(logs.join("b4.log")).unwrap_or_default();
        log.contains("region \"us\"").then_some(())
    })
    .await;
    let registered = until(30, "the three eu brokers active", || async {
        let (_, v) = call(&http, port, Method::GET, "/v1/brokers", None).await.ok()?;
        let items = v["items"].as_array()?.clone();
        (items.iter().filter(|b| b["status"] == "active").count() == 3).then_some(items)
    })
    .await;
    let ids: Vec<(u64, &str)> = registered
        .iter()
        .map(|b| {
            let r = &b["registration"];
            (r["id"].as_u64().unwrap(), r["region"].as_str().unwrap())
        })
        .collect();
    assert_eq!(ids, vec![(1, "eu"), (2, "eu"), (3, "eu")]);

    // Every replica of a stream made now is in eu.
    for (path, body) in [
        ("/v1/tenants", json!({"name": "acme"})),
        ("/v1/tenants/acme/namespaces", json!({"name": "prod"})),
        (
            "/v1/tenants/acme/namespaces/prod/streams",
            json!({"name": "orders", "shards": 4, "replication_factor": 3}),
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
    let placed: Vec<u64> = v["placement"]
        .as_array()
        .unwrap_or_else(|| panic!("no placement in {v}"))
        .iter()
        .flat_map(|p| {
            p["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
        })
        .collect();
    assert_eq!(placed.len(), 12, "{v}");
    assert!(placed.iter().all(|b| (1..=3).contains(b)), "{v}");

    let secret = dir.path().join("operator-secret");
    std::fs::write(&secret, SECRET).unwrap();
    // The broker's profile, told where the control plane is (an operator's
    // profile names it; a broker writes only its own address).
    let profile = dir.path().join("operator.toml");
    let text = std::fs::read_to_string(eu.members[0].at.data_dir.join("client.toml")).unwrap();
    std::fs::write(
        &profile,
        format!("controlplane = \"http://127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    let status = until(30, "cluster status naming the region", || async {
        let out = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["cluster", "status", "--output", "json", "--profile"])
            .arg(&profile)
            .env("FELIX_CONTROLPLANE_SECRET_FILE", &secret)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["region"] != "eu" {
            eprintln!("status: {v} {}", String::from_utf8_lossy(&out.stderr));
        }
        (v["region"] == "eu").then_some(v)
    })
    .await;
    let regions: Vec<&Value> = status["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["region"])
        .collect();
    assert_eq!(regions, vec!["eu", "eu", "eu"], "{status}");
    drop(us);
}

/// A broker's record of stream `name`, read from its own file in the data
/// directory (`streams/<first shard id>.json`, see `broker/src/meta.rs`).
fn stream_meta(data_dir: &std::path::Path, name: &str) -> Value {
    for entry in std::fs::read_dir(data_dir.join("streams")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let f: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if f["name"] == name {
            return f["meta"].clone();
        }
    }
    panic!("{}: no record of {name}", data_dir.display());
}
