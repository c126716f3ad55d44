//! Operating a broker: configuration checks, environment overrides, SIGHUP
//! reloads; real `felix` processes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin, rt, stream_config, Broker};
use felix_client::wire::{ErrorReply, Message};
use felix_client::ClientError;

fn felix(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_felix"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run felix");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_good_files_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write(
        "good.toml",
        "listen = \"127.0.0.1:7000\"\n[defaults]\nretention_ms = 3600000\n",
    );
    let (ok, out, _) = felix(&["config", "check", &good], &[]);
    assert!(ok && out.contains("valid broker"), "{out}");

    // An unknown key, a nested unknown key, a wrong type, a bad value:
    // each refused, each naming the key.
    for (text, named) in [
        ("segmnet_bytes = 5\n", "segmnet_bytes"),
        (
            "[cluster]\nraft_listen = \"127.0.0.1:1\"\ncert = \"/tmp/c\"\nkey = \"/tmp/k\"\nca = \"/tmp/a\"\npeers = []\nheartbeat_ms = 3\n",
            "heartbeat_ms",
        ),
        ("broker_id = \"one\"\n", "broker_id"),
        ("log_level = \"felix=loud\"\n", "log_level"),
        ("[defaults]\nretention_ms = 0\n", "defaults.retention_ms"),
    ] {
        let f = write("bad.toml", text);
        let (ok, _, err) = felix(&["config", "check", &f], &[]);
        assert!(!ok, "{text:?} was accepted");
        assert!(
            err.contains(named),
            "{text:?}: the error does not name {named}: {err}"
        );
    }

    // The environment is checked with the file: a good override passes,
    // a bad value or a variable naming no key is refused by name.
    let (ok, _, err) = felix(&["config", "check", &good], &[("FELIX_BROKER_ID", "7")]);
    assert!(ok, "{err}");
    let (ok, _, err) = felix(&["config", "check", &good], &[("FELIX_BROKER_ID", "seven")]);
    assert!(!ok && err.contains("broker_id"), "{err}");
    let (ok, _, err) = felix(&["config", "check", &good], &[("FELIX_LISTNE", "127.0.0.1:1")]);
    assert!(!ok && err.contains("FELIX_LISTNE"), "{err}");

    // A control-plane node's file is recognised by its cluster_secret.
    let cp = write(
        "cp.toml",
        "id = 1\nlisten = \"127.0.0.1:7100\"\ndata_dir = \"/tmp/cp\"\ncluster_secret = \"0123456789abcdef0123\"\n",
    );
    let (ok, out, err) = felix(&["config", "check", &cp], &[]);
    assert!(ok && out.contains("valid control-plane"), "{out}{err}");
    let (ok, _, err) = felix(
        &["config", "check", &cp],
        &[("FELIX_CP_ELECTION_TIMEOUT_MIN_MS", "5000")],
    );
    assert!(!ok && err.contains("election_timeout_min_ms"), "{err}");

    // The documented schema is the one the binary holds.
    let (ok, docs, _) = felix(&["config", "docs"], &[]);
    assert!(ok);
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    assert!(
        docs == on_disk,
        "docs/configuration.md differs from `felix config docs`"
    );
    let (ok, script, _) = felix(&["completions", "bash"], &[]);
    assert!(
        ok && script.contains("felix") && script.contains("complete"),
        "{script}"
    );
}

fn retention_of(m: Message) -> (Option<u64>, Option<u64>) {
    match m {
        Message::StreamDescription { config, .. } => (config.retention_ms, config.retention_bytes),
        m => panic!("{m:?}"),
    }
}

async fn scrape(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn counter(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sighup_applies_defaults_and_quotas_refuses_a_bad_file_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let base = "admin_listen = \"127.0.0.1:0\"\n";
    let b = Broker::start_configured(dir.path(), base);
    let file = dir.path().join("broker.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let admin_url = b.profile.admin[0].clone();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &b.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    rt.block_on(async {
        let c = b.client().await;
        let describe = |name: &str| Message::StreamDescribe { name: name.into() };
        admin(&c, Message::StreamCreate(stream_config("before", 1))).await;
        assert_eq!(retention_of(admin(&c, describe("before")).await), (None, None));

        // New defaults and a quota, and a changed key that needs a restart.
        std::fs::write(
            &file,
            original.clone()
                + "maintenance_interval_ms = 500\n[defaults]\nretention_ms = 3600000\nretention_bytes = 1048576\n[quotas]\npublish_records_per_s_max = 20\n",
        )
        .unwrap();
        hup();
        let applied = "felix_config_reloads_total{outcome=\"applied\"}";
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&scrape(&admin_url).await, applied) < 1.0 {
            assert!(Instant::now() < deadline, "the reload was not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin(&c, Message::StreamCreate(stream_config("after", 1))).await;
        assert_eq!(
            retention_of(admin(&c, describe("after")).await),
            (Some(3_600_000), Some(1 << 20)),
            "a stream created after the reload gets the new defaults"
        );
        assert_eq!(
            retention_of(admin(&c, describe("before")).await),
            (None, None),
            "existing streams keep theirs"
        );
        // 20 records a second: a burst is refused with a retryable error.
        let conn = c.connection(&b.profile.brokers[0]).await.unwrap();
        let publish = common::publish_one("after", b"q");
        let mut admitted = 0;
        let refused = loop {
            match conn.request(&publish, 5_000).await {
                Ok(Message::PublishAck { .. }) => admitted += 1,
                Ok(Message::Error(e)) | Err(ClientError::Broker(e)) => break e,
                r => panic!("{r:?}"),
            }
            assert!(admitted <= 200, "the quota never refused");
        };
        assert!(matches!(refused, ErrorReply::Overloaded { .. }), "{refused:?}");
        assert!((15..=60).contains(&admitted), "admitted {admitted} of a 20/s quota");

        // A broken file is refused whole: the running settings stay.
        std::fs::write(&file, "listen = [").unwrap();
        hup();
        let refused_series = "felix_config_reloads_total{outcome=\"refused\"}";
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&scrape(&admin_url).await, refused_series) < 1.0 {
            assert!(Instant::now() < deadline, "the bad file was not reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin(&c, Message::StreamCreate(stream_config("still", 1))).await;
        assert_eq!(retention_of(admin(&c, describe("still")).await).0, Some(3_600_000));

        // Lifting the quota (the original file) lets the burst through.
        std::fs::write(&file, &original).unwrap();
        hup();
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&scrape(&admin_url).await, applied) < 2.0 {
            assert!(Instant::now() < deadline, "the second reload was not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..100 {
            assert!(matches!(
                conn.request(&publish, 5_000).await,
                Ok(Message::PublishAck { .. })
            ));
        }
    });
}

/// JSON log lines carry the request's span (operation, peer, stream), and
/// levels are set per module: the broker's debug lines appear while the
/// other crates stay at warn.
#[test]
fn json_logs_carry_the_request_span_with_per_module_levels() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let log_path = dir.path().join("stderr.log");
    let b = Broker::start_configured_with(
        dir.path(),
        "log_level = \"warn,felix_broker=debug\"\n[quotas]\npublish_records_per_s_max = 1\n",
        &[("FELIX_LOG_FORMAT", "json")],
        Some(std::fs::File::create(&log_path).unwrap()),
    );
    rt.block_on(async {
        let c = b.client().await;
        admin(&c, Message::StreamCreate(stream_config("limited", 1))).await;
        let conn = c.connection(&b.profile.brokers[0]).await.unwrap();
        let publish = common::publish_one("limited", b"x");
        // The second publish within a second is over the quota.
        let mut refused = false;
        for _ in 0..5 {
            refused |= matches!(
                conn.request(&publish, 5_000).await,
                Err(ClientError::Broker(ErrorReply::Overloaded { .. }))
            );
        }
        assert!(refused);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "publish over quota");
        if let Some(v) = found {
            break v;
        }
        assert!(Instant::now() < deadline, "no quota line in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(line["span"]["name"], "request", "{line}");
    assert_eq!(line["span"]["op"], "publish", "{line}");
    assert_eq!(line["span"]["stream"], "limited", "{line}");
    assert!(
        line["span"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    // Per-module levels: nothing below warn from any other crate.
    let text = std::fs::read_to_string(&log_path).unwrap();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let target = v["target"].as_str().unwrap_or("");
        let level = v["level"].as_str().unwrap_or("");
        if !target.starts_with("felix_broker") {
            assert!(matches!(level, "WARN" | "ERROR"), "{v}");
        }
    }
}

/// The client commands as a user runs them against `felix dev`: a bulk
/// publish from a file, a replay to a file, describe, cluster status, and
/// errors that say what to do.
#[test]
fn the_cli_publishes_a_file_replays_to_a_file_and_explains_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let profile = b.dir.join("client.toml").display().to_string();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--profile", &profile]);
        felix(&all, &[])
    };
    let (ok, _, err) = run(&["stream", "create", "bulk", "--shards", "2"]);
    assert!(ok, "{err}");
    let input = dir.path().join("in.txt");
    let lines: Vec<String> = (0..500).map(|i| format!("line-{i}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (ok, out, err) = run(&[
        "publish",
        "bulk",
        "--file",
        &input.display().to_string(),
        "--quiet",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["records"], 500, "{summary}");
    let per_shard: u64 = summary["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["last"].as_u64().unwrap() - s["first"].as_u64().unwrap() + 1)
        .sum();
    assert_eq!(per_shard, 500, "{summary}");

    let replay = dir.path().join("replay.jsonl");
    let (ok, out, err) = run(&[
        "subscribe",
        "bulk",
        "--from",
        "earliest",
        "--count",
        "500",
        "--to",
        &replay.display().to_string(),
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    assert!(out.is_empty(), "records went to the file, not stdout: {out}");
    let mut replayed: Vec<String> = std::fs::read_to_string(&replay)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    replayed.sort();
    let mut want = lines.clone();
    want.sort();
    assert_eq!(replayed, want);

    let (ok, out, _) = run(&["stream", "describe", "bulk", "--output", "json"]);
    assert!(ok);
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let total: u64 = d["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["latest"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 500);
    assert_eq!(d["replication_factor"], 1, "the default on one broker: {d}");
    // A replication factor is asked for per stream; more copies than
    // brokers is refused with the numbers, and an impossible one by the CLI.
    let (ok, _, err) = run(&["stream", "create", "wide", "--replication-factor", "2"]);
    assert!(!ok);
    assert!(
        err.contains("replication factor 2 needs 2 active brokers"),
        "{err}"
    );
    let (ok, _, err) = run(&["cache", "create", "wide", "--replication-factor", "9"]);
    assert!(!ok);
    assert!(err.contains("1..=7"), "{err}");
    let (ok, _, err) = run(&["stream", "create", "narrow", "--replication-factor", "1"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["cluster", "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("0 without a leader, 0 under-replicated"), "{out}");

    // Errors name the problem and the way out.
    let (ok, _, err) = run(&["subscribe", "nosuch", "--count", "1"]);
    assert!(!ok);
    assert!(
        err.contains("nosuch") && err.contains("felix stream create"),
        "{err}"
    );
    let (ok, _, err) = felix(&["stream", "list", "--profile", "/nonexistent/client.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("felix dev") && err.contains("--profile"), "{err}");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(p);
            }
        }
    }
    found
}

/// Issue 29's end-to-end encryption: values sealed by the producer (the
/// library and `felix publish --value-keys`) never reach the broker's
/// files in the clear; a reader with the key file opens them, one without
/// sees sealed bytes only, one with another key file is told so.
#[test]
fn sealed_values_reach_no_broker_file_in_the_clear_and_open_only_with_their_key() {
    use bytes::Bytes;
    use felix_client::wire::Start;
    use felix_client::{ProducerConfig, ProducerRecord, SubscribeOptions, ValueKeys};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = Broker::start(&data);
    let profile = b.dir.join("client.toml").display().to_string();
    let keys_path = dir.path().join("orders.keys");
    let other_path = dir.path().join("other.keys");
    for p in [&keys_path, &other_path] {
        let (ok, out, err) = felix(&["value-key", "new", &p.display().to_string()], &[]);
        assert!(ok && out.contains("key 1 seals"), "{out} {err}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keys_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Rotated: key 2 seals what follows, key 1 still opens.
    let (ok, out, err) = felix(&["value-key", "new", &keys_path.display().to_string()], &[]);
    assert!(ok && out.contains("key 2 seals"), "{out} {err}");
    let keys = Arc::new(ValueKeys::load(&keys_path).unwrap());
    let other = Arc::new(ValueKeys::load(&other_path).unwrap());
    const MARK: &str = "plaintext-mark-5c1e";

    let rt = rt();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, stream_config("sealed", 2)).await;
        let p = c
            .producer(
                "sealed",
                ProducerConfig {
                    seal: Some(keys.clone()),
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
        for i in 0..40 {
            let r = ProducerRecord::keyed(format!("k{i}"), Bytes::from(format!("{MARK}-{i}")));
            p.send_wait(r).await.unwrap();
        }
        let read = |open: Option<Arc<ValueKeys>>| {
            let c = c.clone();
            async move {
                let opts = SubscribeOptions {
                    start: Start::Earliest,
                    open,
                    ..SubscribeOptions::default()
                };
                let mut sub = c.subscribe("sealed", opts).await.unwrap();
                let mut got = Vec::new();
                while got.len() < 40 {
                    let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
                        .await
                        .expect("records within 20 s")
                        .expect("subscription open");
                    got.push(d.map(|d| d.record.value.unwrap()));
                }
                got
            }
        };
        let mut opened: Vec<String> = read(Some(keys.clone()))
            .await
            .into_iter()
            .map(|v| String::from_utf8(v.unwrap().to_vec()).unwrap())
            .collect();
        opened.sort();
        let mut want: Vec<String> = (0..40).map(|i| format!("{MARK}-{i}")).collect();
        want.sort();
        assert_eq!(opened, want);
        for v in read(None).await {
            let v = v.unwrap();
            assert_eq!(v[0], felix_client::sealed::SEALED_MARKER);
            assert!(!v.windows(MARK.len()).any(|w| w == MARK.as_bytes()));
        }
        for v in read(Some(other.clone())).await {
            let e = v.expect_err("another file's key opened a value");
            assert!(matches!(e, ClientError::Sealed(_)), "{e}");
        }
    });

    // The CLI seals and opens the same way.
    let input = dir.path().join("in.txt");
    std::fs::write(&input, format!("{MARK}-cli\n")).unwrap();
    let keys_arg = keys_path.display().to_string();
    let (ok, _, err) = felix(
        &[
            "publish",
            "sealed",
            "--key",
            "cli",
            "--file",
            &input.display().to_string(),
            "--quiet",
            "--value-keys",
            &keys_arg,
            "--profile",
            &profile,
        ],
        &[],
    );
    assert!(ok, "{err}");
    // Every record from the start, opened with the key file `keys`.
    let replay = |keys: &str| {
        felix(
            &[
                "subscribe",
                "sealed",
                "--from",
                "earliest",
                "--count",
                "41",
                "--value-keys",
                keys,
                "--profile",
                &profile,
            ],
            &[],
        )
    };
    let (ok, out, err) = replay(&keys_arg);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{MARK}-cli")) && out.contains(&format!("{MARK}-39")),
        "{out}"
    );
    let (ok, _, err) = replay(&other_path.display().to_string());
    assert!(!ok && err.contains("sealed value: "), "{err}");

    // Nothing the broker wrote holds a value in the clear: not the
    // segments, not the index, not a log.
    drop(b);
    assert_eq!(
        files_holding(&data, MARK.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
}
