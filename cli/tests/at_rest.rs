//! Encryption at rest, end to end on a real `felix dev` process: a
//! tenant turns it on through the control plane's API; from then on no
//! record it writes (stream or cache) is on disk in the clear, every
//! record still reads back (also after a SIGKILL and a key rotation), a
//! wrong master key refuses to start, and a deleted tenant's keys are
//! gone from the broker's disk.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{create, publish_one, Broker, Cp};
use felix_client::wire::{Message, Start};
use felix_client::Route;
use serde_json::json;

/// The data keys the batches in the shards' segment files are sealed
/// under, read from the raw bytes (the broker holds the logs open).
fn sealed_under(dir: &Path) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    for p in common::files_under(&dir.join("shards")) {
        if p.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let mut at = felix_log::SEGMENT_HEADER_BYTES;
        while let Ok(h) = felix_log::BatchHeader::decode(&bytes[at.min(bytes.len())..]) {
            if h.flags.sealed() {
                let k = at + h.records_at();
                ids.insert(u32::from_le_bytes(bytes[k..k + 4].try_into().unwrap()));
            }
            at += h.batch_len as usize;
        }
    }
    ids
}

fn on_disk(dir: &Path, needle: &str) -> bool {
    common::holds(&dir.join("shards"), needle.as_bytes())
}

async fn publish(c: &felix_client::Client, stream: &str, value: &str) {
    match c.call(Route::Any, &publish_one(stream, value.as_bytes())).await {
        Ok(Message::PublishAck { .. }) => {}
        other => panic!("publish {value}: {other:?}"),
    }
}

async fn read_all(c: &felix_client::Client, stream: &str, n: usize) -> Vec<String> {
    common::read_n(c, stream, 0, Start::Offset(0), n)
        .await
        .into_iter()
        .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        .collect()
}

/// Publishes probes until one is not on disk in the clear: the broker has
/// heard of the tenant's key (the feed carries it within moments).
async fn until_sealing(c: &felix_client::Client, dir: &Path, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        let probe = format!("probe-{i}-of-the-switch");
        publish(c, stream, &probe).await;
        if !on_disk(dir, &probe) {
            return i + 1;
        }
        assert!(Instant::now() < deadline, "still writing in the clear after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

fn encryption_on(cp: &Cp) -> impl std::future::Future<Output = serde_json::Value> + '_ {
    cp.ok(
        reqwest::Method::PUT,
        "/v1/tenants/dev",
        json!({"display_name": "development", "encryption": {"key_id": "dev-master"}}),
    )
}

#[test]
fn an_encrypted_tenant_leaves_no_record_in_the_clear_and_reads_back_after_sigkill_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::rt();
    let mut b = Broker::start(dir.path());
    let (clear_n, mut probes) = (1, 0);
    let written = rt.block_on(async {
        let c = b.client().await;
        create(&c, common::stream_config("orders", 1)).await;
        publish(&c, "orders", "CLEAR-BEFORE-ENCRYPTION").await;
        assert!(
            on_disk(dir.path(), "CLEAR-BEFORE-ENCRYPTION"),
            "the grep finds a record in the clear"
        );

        let cp = Cp::of(&b);
        encryption_on(&cp).await;
        let v = cp.ok(reqwest::Method::GET, "/v1/tenants/dev", json!(null)).await;
        assert_eq!(v["data_keys"][0]["master_key_id"], "dev-master", "{v}");
        assert!(
            !v.to_string().contains("material"),
            "the API never shows materials: {v}"
        );
        probes = until_sealing(&c, dir.path(), "orders").await;
        for i in 0..200 {
            publish(&c, "orders", &format!("SECRET-STREAM-{i}")).await;
        }
        let cache = c.cache("redis");
        cache
            .put("k1", Bytes::from_static(b"SECRET-CACHE-VALUE"), None)
            .await
            .unwrap();
        // A rotation under load: a publisher keeps writing while the key
        // changes, until records sealed under the new key are on disk.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 200;
                while !stop.load(Ordering::Relaxed) {
                    publish(&c, "orders", &format!("SECRET-STREAM-{n}")).await;
                    n += 1;
                }
                n
            })
        };
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/dev/data-keys/rotate",
            json!({}),
        )
        .await;
        let v = cp.ok(reqwest::Method::GET, "/v1/tenants/dev", json!(null)).await;
        assert_eq!(v["data_keys"].as_array().map(Vec::len), Some(2), "{v}");
        let second = v["data_keys"][1]["id"].as_u64().unwrap() as u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sealed_under(dir.path()).contains(&second) {
            assert!(
                Instant::now() < deadline,
                "nothing sealed under key {second} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.await.unwrap();
        assert!(
            sealed_under(dir.path()).len() >= 2,
            "both keys seal records on disk"
        );
        for needle in ["SECRET-STREAM-", "SECRET-CACHE-VALUE"] {
            assert!(
                !on_disk(dir.path(), needle),
                "{needle} found on disk in the clear"
            );
        }
        let all = read_all(&c, "orders", 1 + probes + written).await;
        assert_eq!(all[0], "CLEAR-BEFORE-ENCRYPTION");
        let secrets: Vec<String> = (0..written).map(|i| format!("SECRET-STREAM-{i}")).collect();
        assert_eq!(
            all[1 + probes..],
            secrets[..],
            "every record once, in order, across the rotation"
        );
        written
    });

    // SIGKILL: the keys are kept beside the data, so the restarted broker
    // reads (and indexes) its sealed shards before the feed answers.
    b.kill();
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        let all = read_all(&c, "orders", clear_n + probes + written).await;
        for i in 0..written {
            assert_eq!(all[clear_n + probes + i], format!("SECRET-STREAM-{i}"));
        }
        let got = c
            .cache("redis")
            .get("k1")
            .await
            .unwrap()
            .expect("the cache entry");
        assert_eq!(&got.value[..], b"SECRET-CACHE-VALUE");
    });
    drop(b);

    // `felix log dump` shows, without any key, which batches are sealed
    // and under which data key.
    let mut dumped = String::new();
    for e in std::fs::read_dir(dir.path().join("shards")).unwrap().flatten() {
        let out = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["log", "dump", "--count", "100000"])
            .arg(e.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        dumped.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let under: std::collections::BTreeSet<&str> = dumped
        .lines()
        .filter_map(|l| l.split(" sealed key ").nth(1))
        .collect();
    assert!(under.len() >= 2, "batches sealed under both keys: {under:?}");

    // Another master key of the same id: refused at start, with why.
    let key = dir.path().join("dev-master.key");
    std::fs::remove_file(&key).unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(["master-key", "new", "--id", "dev-master"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a broker with the wrong master key kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("is not the one"), "{err}");
}

/// The first sealed batch's values among the shard logs under `shards`
/// (copies of a broker's), opened with the tenant's keys as kept in
/// `keys_dir`: `None` when no log holds a sealed batch.
fn first_sealed(
    shards: &Path,
    keys_dir: &Path,
    master: &Path,
    tenant: &str,
) -> Option<Result<Vec<String>, String>> {
    let master: Arc<dyn felix_broker::at_rest::MasterKey> =
        Arc::new(felix_broker::at_rest::FileMasterKey::load(master).unwrap());
    let kept =
        felix_broker::at_rest::Tenants::open(keys_dir, Some(master), felix_broker::clock::system_clock())
            .unwrap();
    for e in std::fs::read_dir(shards).unwrap().flatten() {
        let Ok(id) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let config = felix_log::LogConfig {
            keys: Some(kept.ring(tenant, id)),
            ..felix_log::LogConfig::default()
        };
        let (log, _) = felix_log::Log::open(e.path(), config, 0).unwrap();
        for b in log.batches_from(log.earliest_offset()).unwrap() {
            if b.header().flags.sealed() {
                return Some(log.clear(&b).map_err(|e| e.to_string()).map(|c| {
                    c.records()
                        .unwrap()
                        .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
                        .collect()
                }));
            }
        }
    }
    None
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else if p.file_name().is_some_and(|n| n != "lock") {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Crypto-shredding: a copy of a deleted tenant's segments, taken while it
/// lived, opens with the keys it had and with nothing the broker keeps
/// once the tenant is gone.
#[test]
fn a_deleted_tenant_s_keys_leave_the_broker_and_its_copied_segments_no_longer_open() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let rt = common::rt();
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let cp = Cp::of(&b);
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants",
            json!({"name": "acme", "encryption": {"key_id": "dev-master"}}),
        )
        .await;
        cp.ok(
            reqwest::Method::POST,
            "/v1/tenants/acme/namespaces",
            json!({"name": "prod"}),
        )
        .await;
        for action in ["stream.publish", "resource.manage"] {
            cp.ok(
                reqwest::Method::POST,
                "/v1/tenants/acme/rbac/policies",
                json!({"subject": "p:alice", "object": "namespace:acme/prod", "action": action}),
            )
            .await;
        }
        let token = cp
            .ok(
                reqwest::Method::POST,
                "/v1/tenants/acme/token/issue",
                json!({"principal": "p:alice"}),
            )
            .await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut config = b.client_config();
        config.token = Bytes::from(token);
        let alice = felix_client::Client::connect(config).await.unwrap();
        create(&alice, common::stream_config("acme/prod/orders", 1)).await;
        until_sealing(&alice, dir.path(), "acme/prod/orders").await;
        publish(&alice, "acme/prod/orders", "ACME-SECRET").await;
        alice.close().await;

        let kept = dir.path().join(felix_broker::at_rest::KEYS_FILE);
        let has_acme = || {
            std::fs::read_to_string(&kept)
                .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
                .ok()
                .and_then(|v| {
                    v["tenants"]["acme"]["keys"][0]["material"]
                        .as_str()
                        .map(str::to_owned)
                })
        };
        let material = has_acme().expect("acme's key is kept while it seals");
        // The copy a thief, a backup or a lost disk would hold.
        copy_dir(&dir.path().join("shards"), &backup.path().join("shards"));
        std::fs::copy(&kept, backup.path().join(felix_broker::at_rest::KEYS_FILE)).unwrap();

        for path in [
            "/v1/tenants/acme/namespaces/prod/streams/orders",
            "/v1/tenants/acme/namespaces/prod",
            "/v1/tenants/acme",
        ] {
            cp.ok(reqwest::Method::DELETE, path, json!(null)).await;
        }
        common::cp::until(30, "acme's key leaves the broker", || async {
            has_acme().is_none().then_some(())
        })
        .await;
        let text = std::fs::read_to_string(&kept).unwrap();
        assert!(!text.contains(&material), "{text}");
    });
    let master = dir.path().join(felix_broker::at_rest::DEV_MASTER_KEY_FILE);
    let shards = backup.path().join("shards");
    let with_old_keys =
        first_sealed(&shards, backup.path(), &master, "acme").expect("a sealed batch in the copy");
    assert!(
        with_old_keys.is_ok_and(|v| v.iter().any(|v| v.starts_with("probe-"))),
        "the copy opens with the keys the tenant had"
    );
    let now = first_sealed(&shards, dir.path(), &master, "acme").expect("a sealed batch in the copy");
    assert!(now.is_err(), "and not with what the broker keeps now: {now:?}");
    assert!(!common::holds(&shards, b"ACME-SECRET"));
}
