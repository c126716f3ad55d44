//! A three-node control plane as real `felix controlplane` processes: the
//! leader is SIGKILLed; the API answers again within 5 s through the
//! survivors, no acknowledged change is lost, and the killed node catches
//! up when it returns. Alone in its test binary, so that no other test's
//! processes share the two cores with its timing.

mod common;

use std::time::{Duration, Instant};

use common::cp::{call, free_port, leader, Proc};
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
