//! A three-node control plane as real `felix controlplane` processes: the
//! leader is SIGKILLed; the API answers again through the survivors, no
//! acknowledged change is lost, and the killed node catches up when it
//! returns. How long the API was unavailable is printed, not judged: a
//! wall-clock bound on a shared machine measures the machine (the split
//! votes that once made it exceed 5 s are covered by the unit tests of
//! `felix_controlplane::raft::elections`).

mod common;

use std::time::{Duration, Instant};

use common::cp::{call, free_port, leader, until, Proc};
use serde_json::json;

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
    names(&v)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_killed_control_plane_leader_is_replaced_and_loses_nothing() {
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
    // The API answers a write again through the survivors.
    let n = std::sync::atomic::AtomicUsize::new(0);
    until(60, "a write accepted through the survivors", || async {
        let port = survivors[n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2];
        let r = call(
            &http,
            port,
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            Some(json!({"name": "after"})),
        )
        .await;
        matches!(r, Ok((200, _))).then_some(())
    })
    .await;
    let recovered = killed.elapsed();
    eprintln!("control plane accepted writes again {recovered:?} after the leader was killed");
    acked.push("after".into());
    // Followers serve reads from what they have applied: the one that did
    // not take the last write applies it soon after.
    for p in &survivors {
        until(
            30,
            &format!("node on {p} holding every acknowledged write"),
            || async {
                let r = call(
                    &http,
                    *p,
                    reqwest::Method::GET,
                    "/v1/tenants/acme/namespaces?page_size=1000",
                    None,
                )
                .await;
                let have = match r {
                    Ok((200, v)) => names(&v),
                    _ => return None,
                };
                acked.iter().all(|a| have.contains(a)).then_some(())
            },
        )
        .await;
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

/// A lone node SIGKILLed after 300 changes (more than one save of its
/// state machine, and some after the last save) comes back with every one
/// of them: what it applied since the last save is applied again from its
/// log at start.
#[tokio::test]
async fn a_lone_node_killed_between_state_saves_loses_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port()];
    let mut node = Proc::start(dir.path(), 1, &ports);
    let http = reqwest::Client::new();
    until(20, "a leader", || leader(&http, &ports)).await;
    let post = |path: &'static str, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let (s, v) = call(&http, ports[0], reqwest::Method::POST, path, Some(body))
                .await
                .unwrap();
            assert_eq!(s, 200, "{path}: {v}");
        }
    };
    post("/v1/tenants", json!({"name": "acme"})).await;
    let mut acked = Vec::new();
    for i in 0..300 {
        let name = format!("ns{i}");
        post("/v1/tenants/acme/namespaces", json!({"name": name})).await;
        acked.push(name);
    }
    node.kill();
    let _node = Proc::start(dir.path(), 1, &ports);
    until(20, "a leader after the restart", || leader(&http, &ports)).await;
    let have = until(20, "the namespaces after the restart", || async {
        let (s, v) = call(
            &http,
            ports[0],
            reqwest::Method::GET,
            "/v1/tenants/acme/namespaces?page_size=1000",
            None,
        )
        .await
        .ok()?;
        (s == 200).then(|| names(&v))
    })
    .await;
    let missing: Vec<&String> = acked.iter().filter(|a| !have.contains(a)).collect();
    assert!(missing.is_empty(), "lost after the restart: {missing:?}");
}
