//! The Kafka door end to end: `felix dev` as a real process, spoken to by
//! kcat (Debian's, an older librdkafka; installed by `.ci/run`) and by
//! raw Kafka requests over TCP for what a client library would never send.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;
use felix_client::subscription::SubscribeOptions;
use felix_client::wire::Start;

/// Runs kcat against `b`'s door with `args`, feeding `stdin`; gives its
/// exit success, stdout and stderr. Killed after 60 s.
fn kcat(b: &Broker, password: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let addr = b.profile.kafka.clone().expect("felix dev serves a Kafka door");
    kcat_at(&addr, Some(password), args, stdin)
}

/// [`kcat`] against the door at `addr`, with SASL PLAIN when a password
/// is given.
fn kcat_at(addr: &str, password: Option<&str>, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", addr]);
    if let Some(password) = password {
        cmd.args([
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanism=PLAIN",
        ])
        .args([
            "-X",
            "sasl.username=dev",
            "-X",
            &format!("sasl.password={password}"),
        ]);
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kcat (apt install kcat; .ci/run does)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token(b: &Broker) -> String {
    b.profile.token.clone().expect("felix dev's token")
}

/// One raw request: size, header v1 (key, version, correlation id 7,
/// client id "raw"), body. Gives the response's body after its
/// correlation id, or `None` if the connection was closed instead.
fn raw(s: &mut TcpStream, key: i16, version: i16, body: &[u8]) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    req.extend_from_slice(&key.to_be_bytes());
    req.extend_from_slice(&version.to_be_bytes());
    req.extend_from_slice(&7i32.to_be_bytes());
    req.extend_from_slice(&3i16.to_be_bytes());
    req.extend_from_slice(b"raw");
    req.extend_from_slice(body);
    let mut framed = (req.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&req);
    s.write_all(&framed).ok()?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let mut resp = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut resp).ok()?;
    assert_eq!(&resp[..4], &7i32.to_be_bytes(), "the correlation id comes back");
    Some(resp[4..].to_vec())
}

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(b.profile.kafka.as_deref().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn kcat_produces_and_consumes_with_keys_headers_and_every_codec() {
    let (_dir, rt, b) = common::dev_broker();
    let t = token(&b);
    // A record written through Felix's own protocol first: the doors share
    // the stream.
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("orders", 2)).await;
        common::admin(&c, common::publish_one("orders", b"from-quic")).await;
    });
    let (ok, out, err) = kcat(&b, &t, &["-L"], "");
    assert!(ok, "kcat -L: {err}");
    assert!(out.contains("topic \"orders\" with 2 partitions"), "{out}");
    assert!(out.contains("broker 1 at 127.0.0.1:"), "{out}");
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for (i, codec) in codecs.iter().enumerate() {
        let lines: String = (0..3).map(|j| format!("k{i}-{j}:{codec}-{j}\n")).collect();
        let (ok, _, err) = kcat(
            &b,
            &t,
            &[
                "-P", "-t", "orders", "-p", "0", "-K", ":", "-H", "trace=t1", "-z", codec, "-X", "acks=all",
            ],
            &lines,
        );
        assert!(ok, "kcat -P -z {codec}: {err}");
    }
    let (ok, out, err) = kcat(
        &b,
        &t,
        &[
            "-C",
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s|%h\n",
        ],
        "",
    );
    assert!(ok, "kcat -C: {err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 1 + 3 * codecs.len(), "{out}");
    assert_eq!(got[0], "0||from-quic|", "the QUIC door's record, at offset 0");
    for (i, codec) in codecs.iter().enumerate() {
        for j in 0..3 {
            let o = 1 + 3 * i + j;
            assert_eq!(got[o], format!("{o}|k{i}-{j}|{codec}-{j}|trace=t1"));
        }
    }
    // From an offset in the middle of a batch: earlier records of it are
    // skipped by the client.
    let (ok, out, _) = kcat(
        &b,
        &t,
        &["-C", "-t", "orders", "-p", "0", "-o", "5", "-e", "-f", "%o\n"],
        "",
    );
    assert!(ok);
    assert_eq!(out.lines().next(), Some("5"));
    assert_eq!(out.lines().count(), 11);
    // And what kcat wrote reads back through Felix's client, key and all.
    rt.block_on(async {
        let c = b.client().await;
        let opts = SubscribeOptions {
            shards: vec![0],
            start: Start::Offset(1),
            ..SubscribeOptions::default()
        };
        let mut sub = c.subscribe("orders", opts).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.record.key.as_deref(), Some(&b"k0-0"[..]));
        assert_eq!(d.record.value.as_deref(), Some(&b"none-0"[..]));
        assert_eq!(
            d.record.headers,
            vec![(
                bytes::Bytes::from_static(b"trace"),
                bytes::Bytes::from_static(b"t1")
            )]
        );
    });
    // By time: every record was written after the test began.
    let (ok, out, _) = kcat(
        &b,
        &t,
        &["-C", "-t", "orders", "-p", "0", "-o", "s@1", "-e", "-f", "%o\n"],
        "",
    );
    assert!(ok);
    assert_eq!(out.lines().next(), Some("0"));
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    let (ok, out, _) = kcat(
        &b,
        &t,
        &[
            "-C",
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            &format!("s@{far}"),
            "-e",
            "-f",
            "%o\n",
        ],
        "",
    );
    assert!(ok);
    assert_eq!(out.lines().count(), 0, "nothing is an hour ahead: {out}");
    // A topic kcat names that does not exist is made (felix dev's
    // auto_create_partitions = 1), and produced to.
    let (ok, _, err) = kcat(&b, &t, &["-P", "-t", "fresh", "-X", "acks=1"], "hello\n");
    assert!(ok, "{err}");
    let (ok, out, _) = kcat(
        &b,
        &t,
        &["-C", "-t", "fresh", "-o", "beginning", "-e", "-f", "%s\n"],
        "",
    );
    assert!(ok);
    assert_eq!(out, "hello\n");
}

#[test]
fn a_wrong_token_and_bad_requests_get_errors_and_the_door_keeps_serving() {
    let (_dir, _rt, b) = common::dev_broker();
    let t = token(&b);
    let (ok, _, err) = kcat(&b, "not-a-token", &["-L", "-m", "10"], "");
    assert!(!ok);
    assert!(
        err.contains("Authentication failed") || err.contains("SASL"),
        "{err}"
    );

    // ApiVersions above the highest served: v0 answer, UNSUPPORTED_VERSION
    // (35), and the table (KIP-511).
    let mut s = connect(&b);
    let r = raw(&mut s, 18, 9, &[]).expect("an answer");
    assert_eq!(i16::from_be_bytes([r[0], r[1]]), 35);
    let n = i32::from_be_bytes(r[2..6].try_into().unwrap());
    assert!(n >= 7, "{n} APIs listed");
    // On the same connection, a served version works.
    let r = raw(&mut s, 18, 2, &[]).expect("an answer");
    assert_eq!(i16::from_be_bytes([r[0], r[1]]), 0);

    // A request before SASL closes the connection (as Kafka's does).
    let mut s = connect(&b);
    assert_eq!(raw(&mut s, 3, 1, &(-1i32).to_be_bytes()), None);

    // An oversized declared size is refused before its bytes come.
    let mut s = connect(&b);
    s.write_all(&(512i32 << 20).to_be_bytes()).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed");

    // Authenticated, a Metadata declaring 2^31 - 1 topics in 4 bytes and
    // an unknown API key each close only their own connection.
    let authed = |b: &Broker| {
        let mut s = connect(b);
        let mech = [&5i16.to_be_bytes()[..], b"PLAIN"].concat();
        let r = raw(&mut s, 17, 1, &mech).unwrap();
        assert_eq!(i16::from_be_bytes([r[0], r[1]]), 0);
        let auth = [b"\0dev\0", t.as_bytes()].concat();
        let body = [&(auth.len() as i32).to_be_bytes()[..], &auth].concat();
        let r = raw(&mut s, 36, 1, &body).unwrap();
        assert_eq!(i16::from_be_bytes([r[0], r[1]]), 0, "authenticated");
        s
    };
    let mut s = authed(&b);
    assert_eq!(raw(&mut s, 3, 1, &i32::MAX.to_be_bytes()), None);
    let mut s = authed(&b);
    assert_eq!(raw(&mut s, 999, 0, &[]), None);
    // A wrong password over raw SASL: error 58 with the reason.
    let mut s = connect(&b);
    let mech = [&5i16.to_be_bytes()[..], b"PLAIN"].concat();
    raw(&mut s, 17, 1, &mech).unwrap();
    let auth = b"\0dev\0wrong";
    let body = [&(auth.len() as i32).to_be_bytes()[..], &auth[..]].concat();
    let r = raw(&mut s, 36, 1, &body).unwrap();
    assert_eq!(i16::from_be_bytes([r[0], r[1]]), 58);

    // A produce of a corrupt batch is answered per partition with
    // CORRUPT_MESSAGE, and the door still serves kcat afterwards.
    let mut s = authed(&b);
    let mut batch = vec![0u8; 61];
    batch[8..12].copy_from_slice(&49i32.to_be_bytes());
    batch[16] = 2;
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional_id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks=all
    body.extend_from_slice(&5_000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(b"bad");
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(&batch);
    let r = raw(&mut s, 0, 3, &body).expect("a produce response");
    // responses[1] { name "bad", partitions[1] { index 0, error_code } }
    let at = 4 + 2 + 3 + 4 + 4;
    assert_eq!(i16::from_be_bytes([r[at], r[at + 1]]), 2, "CORRUPT_MESSAGE");
    let (ok, out, err) = kcat(&b, &t, &["-L"], "");
    assert!(ok, "{err}");
    assert!(out.contains("broker 1"));
}

/// In a cluster each door registers its address, and Metadata from any
/// door names each partition's shard leader with that broker's door, so
/// kcat sends each produce and fetch to the leader, as with Kafka.
#[test]
fn every_door_of_a_three_broker_cluster_names_each_partitions_leader() {
    use felix_client::wire::{Durability, StreamConfig};
    use felix_client::Client;

    let dir = tempfile::tempdir().unwrap();
    let mut c = common::cluster::LocalCluster::configure(dir.path(), 3, "", |_| None);
    let doors: Vec<String> = (0..3)
        .map(|i| {
            let port = common::cp::free_port();
            c.append_config(i, &format!("[kafka]\nlisten = \"127.0.0.1:{port}\"\n"));
            format!("127.0.0.1:{port}")
        })
        .collect();
    c.launch();
    let rt = common::rt();
    let client = rt.block_on(Client::connect(c.client_config())).unwrap();
    rt.block_on(common::create_when_ready(
        &client,
        StreamConfig::stream("dev/default/orders", 3, Durability::Always),
    ));
    // Until every door's registration has reached every broker, a leader
    // may be named "not available"; leaders may also move meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<u64> = (0..3)
            .map(|s| rt.block_on(c.leader(&client, "orders", s)))
            .collect();
        let mut all = true;
        for door in &doors {
            let (ok, out, _) = kcat_at(door, None, &["-L", "-t", "orders", "-m", "10"], "");
            all &= ok
                && out.contains(" 3 brokers:")
                && doors.iter().all(|d| out.contains(&format!(" at {d}")))
                && (0..3).all(|s| out.contains(&format!("partition {s}, leader {},", leaders[s as usize])));
            if !all {
                break;
            }
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the doors never named every shard's leader"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Bootstrapped from one door, each partition's records go to, and
    // come from, its leader's.
    for s in 0..3 {
        let p = s.to_string();
        let (ok, _, err) = kcat_at(
            &doors[0],
            None,
            &["-P", "-t", "orders", "-p", &p, "-X", "acks=all"],
            &format!("m{s}\n"),
        );
        assert!(ok, "produce to partition {s}: {err}");
    }
    for s in 0..3 {
        let p = s.to_string();
        let (ok, out, err) = kcat_at(
            &doors[1],
            None,
            &[
                "-C",
                "-t",
                "orders",
                "-p",
                &p,
                "-o",
                "beginning",
                "-e",
                "-f",
                "%s\n",
            ],
            "",
        );
        assert!(ok, "consume partition {s}: {err}");
        assert_eq!(out, format!("m{s}\n"));
    }
}

/// Runs `tests/kafka_py/<script>` with `args` under the Python that has
/// confluent-kafka and kafka-python (`FELIX_TEST_PYTHON`, else the venv
/// `.ci/run` makes); gives its stdout, failing with its stderr if it
/// failed.
fn kafka_py(script: &str, args: &[&str]) -> String {
    let python = std::env::var("FELIX_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/felix-venv/bin/python3", std::env::var("HOME").unwrap()));
    let script = format!("{}/tests/kafka_py/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .expect("a Python with confluent-kafka (`bash .ci/run` makes one)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{script} {:?}:\n{stdout}\n{stderr}",
        &args[..1]
    );
    stdout
}

#[test]
fn a_confluent_kafka_group_rebalances_when_a_member_is_killed_or_leaves_and_its_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    let rt = common::rt();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("clicks", 3)).await;
    });
    let addr = b.profile.kafka.clone().unwrap();
    // Three members (one its own process, SIGKILLed; one leaving): every
    // record is read exactly once by the group, each committed as read.
    let committed = kafka_py("groups.py", &["group", &addr, &token(&b), "clicks", "billing"]);
    assert_eq!(committed.trim(), "100,100,100");
    // The offsets are in the replicated offsets cache: a restarted broker
    // still has them, and a new member resumes where the group stopped.
    b.stop();
    let b = Broker::start(dir.path());
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py(
        "groups.py",
        &["resume", &addr, &token(&b), "clicks", "billing", committed.trim()],
    );
    assert_eq!(out.trim(), "ok");
    // Kafka clients do not see the offsets cache as a topic.
    let (ok, out, err) = kcat(&b, &token(&b), &["-L"], "");
    assert!(ok, "{err}");
    assert!(out.contains("topic \"clicks\""), "{out}");
    assert!(!out.contains("__consumer_offsets"), "{out}");
}

#[test]
fn a_static_confluent_kafka_member_restarts_into_its_partitions_without_a_rebalance() {
    let (_dir, rt, b) = common::dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("jobs", 3)).await;
    });
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py("groups.py", &["static", &addr, &token(&b), "jobs", "workers"]);
    let parts: Vec<u32> = out.trim().split(',').map(|p| p.parse().unwrap()).collect();
    assert!(!parts.is_empty() && parts.len() < 3, "{parts:?}");
}

#[test]
fn kafka_python_creates_describes_produces_consumes_in_a_group_and_deletes() {
    let (_dir, _rt, b) = common::dev_broker();
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py("clients.py", &["admin", &addr, &token(&b)]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn confluent_kafka_consumes_from_earliest_latest_and_a_timestamp() {
    let (_dir, rt, b) = common::dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("ticks", 1)).await;
    });
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py("clients.py", &["positions", &addr, &token(&b), "ticks"]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn confluent_kafka_alters_a_topics_retention_and_the_stream_keeps_it() {
    let (_dir, rt, b) = common::dev_broker();
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py("clients.py", &["configs", &addr, &token(&b), "cfg"]);
    assert_eq!(out.trim(), "ok");
    // What the door altered is the Felix stream's own retention.
    let described = rt.block_on(async {
        let c = b.client().await;
        common::admin(
            &c,
            felix_client::wire::Message::StreamDescribe {
                name: "dev/default/cfg".into(),
            },
        )
        .await
    });
    let felix_client::wire::Message::StreamDescription { config, .. } = described else {
        panic!("{described:?}");
    };
    assert_eq!(
        (config.retention_ms, config.retention_bytes),
        (Some(120_000), None)
    );
}

#[test]
fn an_idempotent_confluent_kafka_producer_writes_each_record_once() {
    let (_dir, rt, b) = common::dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("ledger", 2)).await;
    });
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py("clients.py", &["idempotent", &addr, &token(&b), "ledger", "2000"]);
    assert_eq!(out.trim(), "2000");
    // What the shards hold is exactly what was acknowledged.
    let (ok, out, err) = kcat(
        &b,
        &token(&b),
        &["-C", "-t", "ledger", "-o", "beginning", "-e", "-f", "%s\n"],
        "",
    );
    assert!(ok, "{err}");
    let mut got: Vec<u32> = out.lines().map(|l| l.parse().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..2000).collect::<Vec<u32>>());
}

/// Kafka's verifiable producer/consumer check at its usual size: 100,000
/// records through an idempotent producer, every one acknowledged, then
/// consumed exactly once by a group, in order and dense per partition,
/// with the group's commits ending at each high watermark.
#[test]
fn a_verifiable_producer_and_consumer_pair_loses_and_repeats_none_of_100000_records() {
    let (_dir, rt, b) = common::dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        common::create(&c, common::stream_config("audit", 3)).await;
    });
    let addr = b.profile.kafka.clone().unwrap();
    let out = kafka_py(
        "verify.py",
        &["run", &addr, &token(&b), "audit", "auditors", "100000"],
    );
    assert_eq!(out.trim(), "ok 100000");
}

#[test]
fn a_shard_leader_killed_under_an_idempotent_producer_and_a_group_loses_and_repeats_nothing() {
    use std::io::BufRead;

    use felix_client::wire::{Durability, StreamConfig};
    use felix_client::Client;

    let dir = tempfile::tempdir().unwrap();
    let mut c = common::cluster::LocalCluster::configure(dir.path(), 3, "", |_| None);
    let doors: Vec<String> = (0..3)
        .map(|i| {
            let port = common::cp::free_port();
            c.append_config(i, &format!("[kafka]\nlisten = \"127.0.0.1:{port}\"\n"));
            format!("127.0.0.1:{port}")
        })
        .collect();
    c.launch();
    let rt = common::rt();
    let client = rt.block_on(Client::connect(c.client_config())).unwrap();
    rt.block_on(common::create_when_ready(
        &client,
        StreamConfig::stream("dev/default/payments", 3, Durability::Always),
    ));
    let python = std::env::var("FELIX_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/felix-venv/bin/python3", std::env::var("HOME").unwrap()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_py/failover.py");
    let mut py = Command::new(python)
        .args([script, "run", &doors.join(","), "-", "payments", "settle", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(py.stdout.take().unwrap()).lines();
    let first = lines.next().expect("failover.py says when to kill").unwrap();
    assert_eq!(first, "killing-time");
    // SIGKILL the group's coordinator (the leader of the offsets cache's
    // shard, made by the consumers' FindCoordinator) while records are in
    // flight: the group must find the new one and keep its commits. The
    // partitions it led move too, under the idempotent producer.
    let coordinator = rt.block_on(c.leader(&client, "__consumer_offsets", 0));
    let mut led = Vec::new();
    for p in 0..3 {
        if rt.block_on(c.leader(&client, "payments", p)) == coordinator {
            led.push(p);
        }
    }
    eprintln!("killing broker {coordinator}: the coordinator, and leader of partitions {led:?}");
    c.kill(c.index_of(coordinator));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = py.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failover.py: {rest:?}\n{stderr}");
    let last = rest.last().cloned().unwrap_or_default();
    let figures: Vec<usize> = last
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("failover.py: {rest:?}\n{stderr}"))
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(figures[0], 3000, "every record acknowledged");
    assert_eq!(figures[1], 3000, "each consumed once: {stderr}");
}
