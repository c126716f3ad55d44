//! The Redis door end to end: `felix dev` as a real process, spoken to by
//! `redis-cli` (Debian's `redis-tools`, installed by `.ci/run`) and by a
//! plain RESP client over TCP, as any Redis library would.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::Broker;

/// A reply as the test reads it.
#[derive(Debug, Clone, PartialEq)]
enum R {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<R>),
    Map(Vec<(R, R)>),
}

fn bulk(s: &str) -> R {
    R::Bulk(s.as_bytes().to_vec())
}

/// A blocking RESP client: what a Redis library does, without one.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn authed(addr: &str, token: &str) -> Conn {
        let mut c = Conn::open(addr);
        assert_eq!(c.call(&["AUTH", token]), R::Status("OK".into()));
        c
    }

    fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    fn call(&mut self, args: &[&str]) -> R {
        self.send_raw(&Self::encode(args));
        self.read()
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "a reply line without CRLF: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn read(&mut self) -> R {
        let l = self.line();
        let (kind, rest) = l.split_at(1);
        match kind {
            "+" => R::Status(rest.into()),
            "-" => R::Error(rest.into()),
            ":" => R::Int(rest.parse().unwrap()),
            "_" => R::Nil,
            "," => R::Bulk(rest.as_bytes().to_vec()),
            "$" if rest == "-1" => R::Nil,
            "$" => {
                let mut b = vec![0; rest.parse::<usize>().unwrap() + 2];
                self.r.read_exact(&mut b).unwrap();
                b.truncate(b.len() - 2);
                R::Bulk(b)
            }
            "*" if rest == "-1" => R::Nil,
            "*" => R::Array((0..rest.parse::<usize>().unwrap()).map(|_| self.read()).collect()),
            "%" => R::Map(
                (0..rest.parse::<usize>().unwrap())
                    .map(|_| (self.read(), self.read()))
                    .collect(),
            ),
            _ => panic!("not a reply: {l:?}"),
        }
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

fn redis_addr(b: &Broker) -> String {
    b.profile.redis.clone().expect("felix dev serves the Redis door")
}

fn token_of(b: &Broker) -> String {
    b.profile.token.clone().expect("felix dev issues a token")
}

/// `redis-cli` with `args`, its stdout.
fn cli(addr: &str, token: &str, stdin: Option<&str>, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", host, "-p", port, "--no-auth-warning", "-a", token])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .expect("redis-cli is not installed: install Debian's redis-tools (.ci/run does)");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Python that has redis-py: `FELIX_TEST_PYTHON`, else the venv `.ci/run`
/// makes.
fn redis_py() -> String {
    if let Ok(p) = std::env::var("FELIX_TEST_PYTHON") {
        return p;
    }
    let p = format!("{}/.cache/felix-venv/bin/python3", std::env::var("HOME").unwrap());
    assert!(
        std::path::Path::new(&p).exists(),
        "redis-py is not installed: `bash .ci/run` makes {p} (or set FELIX_TEST_PYTHON to a Python that has redis-py)"
    );
    p
}

/// Runs `tests/redis_py/check.py` with `args`; it exits non-zero on the
/// first answer that differs from Redis's.
fn redis_py_check(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis_py/check.py");
    let out = Command::new(redis_py()).arg(script).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "redis-py {args:?}:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ok");
}

#[test]
fn redis_py_speaks_to_felix_dev_in_resp2_and_resp3() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let addr = redis_addr(&b);
    let (host, port) = addr.rsplit_once(':').unwrap();
    redis_py_check(&["single", host, port, &token_of(&b)]);
}

#[test]
fn redis_cli_sessions_against_felix_dev() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));
    assert_eq!(cli(&addr, &token, None, &["PING"]), "PONG\n");
    assert_eq!(
        cli(
            &addr,
            &token,
            None,
            &["SET", "greeting", "hello world", "EX", "100"]
        ),
        "OK\n"
    );
    assert_eq!(cli(&addr, &token, None, &["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&addr, &token, None, &["TTL", "greeting"]), "100\n");
    // A script on stdin, as `redis-cli < script` runs one: replies in order.
    let script = "SET n 10\nINCRBY n 5\nDECR n\nGET n\nSET n x NX\nEXISTS n missing\nDEL n missing\nGET n\nTTL n\nMSET a 1 b 2\nMGET a nothere b\nAPPEND a 23\nSTRLEN a\nTYPE a\nTYPE nothere\nGETDEL a\nFOO bar\n";
    let out = cli(&addr, &token, Some(script), &[]);
    let want = "OK\n15\n14\n14\n\n1\n1\n\n-2\nOK\n1\n\n2\n3\n3\nstring\nnone\n123\nERR unknown command 'FOO', with args beginning with: 'bar' \n\n";
    assert_eq!(out, want, "got:\n{out}");
    // The same token with a Redis user name (`--user`), and a wrong one.
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("redis-cli")
        .args([
            "-h",
            host,
            "-p",
            port,
            "--no-auth-warning",
            "--user",
            "dev",
            "--pass",
            "not-a-token",
            "GET",
            "greeting",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("WRONGPASS") || text.contains("NOAUTH"), "{text}");
}

/// SCAN's reply: the next cursor and the page's keys.
fn scan_page(r: R) -> (String, Vec<String>) {
    let R::Array(parts) = r else {
        panic!("SCAN answers an array: {r:?}")
    };
    let (R::Bulk(cursor), R::Array(keys)) = (&parts[0], &parts[1]) else {
        panic!("SCAN answers a cursor and keys: {parts:?}")
    };
    let keys = keys
        .iter()
        .map(|k| match k {
            R::Bulk(k) => String::from_utf8(k.clone()).unwrap(),
            other => panic!("a key: {other:?}"),
        })
        .collect();
    (String::from_utf8(cursor.clone()).unwrap(), keys)
}

#[test]
fn scan_keys_dbsize_and_flushdb_walk_every_shard_of_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));
    let mut c = Conn::authed(&addr, &token);
    let ok = R::Status("OK".into());
    let mut want: Vec<String> = Vec::new();
    let mut batch = Vec::new();
    for i in 0..150 {
        for k in [format!("user:{i}"), format!("order:{i}")] {
            batch.extend_from_slice(&Conn::encode(&["SET", &k, "v"]));
            want.push(k);
        }
    }
    c.send_raw(&batch);
    for _ in 0..300 {
        assert_eq!(c.read(), ok);
    }
    want.sort();
    // Neither a deleted key nor an expired one is walked over.
    assert_eq!(c.call(&["SET", "gone", "v"]), ok);
    assert_eq!(c.call(&["DEL", "gone"]), R::Int(1));
    assert_eq!(c.call(&["SET", "brief", "v", "PX", "1"]), ok);
    let expired = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(5));
        c.call(&["GET", "brief"]) == R::Nil
    });
    assert!(expired, "a 1 ms TTL never expired");
    assert_eq!(c.call(&["DBSIZE"]), R::Int(300));

    // A walk by hand, 7 keys a page: every key once.
    let (mut cursor, mut got, mut calls) = ("0".to_string(), Vec::new(), 0);
    loop {
        let (next, keys) = scan_page(c.call(&["SCAN", &cursor, "COUNT", "7"]));
        assert!(keys.len() <= 7, "{keys:?}");
        got.extend(keys);
        calls += 1;
        assert!(calls < 1_000, "the walk did not end");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    got.sort();
    assert_eq!(got, want, "every live key exactly once");
    assert!(calls >= 300 / 7, "{calls} calls for pages of 7");
    // A cursor goes on from another connection of the same token (a
    // client's pool), and one never given is refused.
    let (next, _) = scan_page(c.call(&["SCAN", "0", "COUNT", "3"]));
    let mut other = Conn::authed(&addr, &token);
    assert!(matches!(other.call(&["SCAN", &next]), R::Array(_)));
    assert_eq!(
        other.call(&["SCAN", "987654321"]),
        R::Error("ERR invalid cursor".into())
    );

    // redis-cli's own walk with MATCH, and KEYS.
    let out = cli(&addr, &token, None, &["--scan", "--pattern", "user:*"]);
    let mut users: Vec<&str> = out.lines().collect();
    users.sort();
    let want_users: Vec<&str> = want
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("user:"))
        .collect();
    assert_eq!(users, want_users);
    let R::Array(found) = c.call(&["KEYS", "order:1?"]) else {
        panic!("KEYS answers an array")
    };
    let mut found: Vec<R> = found;
    found.sort_by_key(|k| format!("{k:?}"));
    let mut orders: Vec<R> = (10..20).map(|i| bulk(&format!("order:{i}"))).collect();
    orders.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(found, orders);

    // FLUSHDB empties the cache, through the log like any delete.
    assert_eq!(c.call(&["FLUSHDB"]), ok);
    assert_eq!(c.call(&["DBSIZE"]), R::Int(0));
    assert_eq!(c.call(&["GET", "user:1"]), R::Nil);
}

#[test]
fn resp_protocol_auth_pipelines_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));

    // Without AUTH: refused, as Redis refuses with requirepass.
    let mut c = Conn::open(&addr);
    assert_eq!(
        c.call(&["GET", "k"]),
        R::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        c.call(&["AUTH", "wrong"]),
        R::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(c.call(&["AUTH", "default", &token]), R::Status("OK".into()));
    assert_eq!(c.call(&["SET", "k", "v"]), R::Status("OK".into()));

    // Inline commands, case-insensitive names, RESP3 through HELLO.
    c.send_raw(b"ping\r\n");
    assert_eq!(c.read(), R::Status("PONG".into()));
    let R::Map(hello) = c.call(&["HELLO", "3"]) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(hello.contains(&(bulk("proto"), R::Int(3))), "{hello:?}");
    assert_eq!(c.call(&["GET", "missing"]), R::Nil);
    assert_eq!(
        c.call(&["HELLO", "4"]),
        R::Error("NOPROTO unsupported protocol version".into())
    );
    assert!(
        matches!(c.call(&["HELLO", "2"]), R::Array(_)),
        "RESP2 sends a map as an array"
    );
    assert_eq!(c.call(&["GET", "missing"]), R::Nil);

    // A pipeline of 1,000 commands: one write, replies in order.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(&Conn::encode(&["INCR", "counter"]));
        if i % 100 == 0 {
            batch.extend_from_slice(&Conn::encode(&["GET", "counter"]));
        }
    }
    c.send_raw(&batch);
    let mut n = 0;
    for i in 0..1000 {
        n += 1;
        assert_eq!(c.read(), R::Int(n), "INCR {i}");
        if i % 100 == 0 {
            assert_eq!(c.read(), bulk(&n.to_string()));
        }
    }

    // Refusals that keep the connection.
    assert!(matches!(c.call(&["NOSUCH"]), R::Error(e) if e.starts_with("ERR unknown command 'NOSUCH'")));
    assert_eq!(
        c.call(&["SET", "k", "v", "NX", "XX"]),
        R::Error("ERR syntax error".into())
    );
    assert_eq!(c.call(&["SELECT", "0"]), R::Status("OK".into()));
    assert_eq!(c.call(&["FELIX.USE", "nosuchcache"]), R::Status("OK".into()));
    assert!(matches!(c.call(&["GET", "k"]), R::Error(e) if e.contains("unknown cache")));
    assert_eq!(c.call(&["FELIX.USE", "redis"]), R::Status("OK".into()));
    assert_eq!(c.call(&["GET", "k"]), bulk("v"));

    // Malformed and oversized requests: an error, then the connection
    // closes; the broker keeps serving others and nothing is lost.
    for bad in [
        &b"*abc\r\n"[..],
        b"*1\r\n$99999999999\r\n",
        b"*1\r\n:5\r\n",
        b"*99999999\r\n",
    ] {
        let mut m = Conn::authed(&addr, &token);
        m.send_raw(bad);
        assert!(
            matches!(m.read(), R::Error(e) if e.starts_with("ERR Protocol error")),
            "{bad:?}"
        );
        assert!(m.closed(), "{bad:?}: the connection stays open");
    }
    let mut m = Conn::open(&addr);
    m.send_raw(&vec![b'x'; 70 << 10]);
    assert!(matches!(m.read(), R::Error(e) if e.contains("too big inline")));
    assert_eq!(c.call(&["GET", "counter"]), bulk("1000"));
    assert_eq!(c.call(&["QUIT"]), R::Status("OK".into()));
    assert!(c.closed());
}

fn fsyncs(b: &Broker) -> f64 {
    let admin = b
        .profile
        .admin
        .first()
        .expect("felix dev serves /metrics")
        .clone();
    let text = common::rt().block_on(felix_testkit::scrape::fetch(&reqwest::Client::new(), &admin));
    felix_testkit::scrape::sum(&text, "felix_fsync_duration_seconds_count", &[])
}

/// A pipeline's writes to distinct keys run together and share fsyncs
/// (the dev cache is `always`), each key's commands keep their order, and
/// every acknowledged write survives a SIGKILL.
#[test]
fn a_pipeline_shares_fsyncs_between_keys_and_keeps_each_keys_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));
    let mut c = Conn::authed(&addr, &token);
    const KEYS: usize = 640;
    let before = fsyncs(&b);
    let mut batch = Vec::new();
    for i in 0..KEYS {
        batch.extend_from_slice(&Conn::encode(&["SET", &format!("p{i}"), &i.to_string()]));
    }
    c.send_raw(&batch);
    for i in 0..KEYS {
        assert_eq!(c.read(), R::Status("OK".into()), "SET p{i}");
    }
    let taken = fsyncs(&b) - before;
    // One after another, the pipeline's writes would take one fsync each.
    assert!(
        taken < (KEYS / 2) as f64,
        "{taken} fsyncs for a pipeline of {KEYS} SETs"
    );

    // Read-then-write commands of distinct keys too: their
    // compare-and-sets hold only their own keys' stripes of the shard's
    // write lock.
    let before = fsyncs(&b);
    let mut batch = Vec::new();
    for i in 0..KEYS {
        batch.extend_from_slice(&Conn::encode(&["INCR", &format!("c{i}")]));
    }
    c.send_raw(&batch);
    for i in 0..KEYS {
        assert_eq!(c.read(), R::Int(1), "INCR c{i}");
    }
    let taken = fsyncs(&b) - before;
    // Fewer of these merge than of plain SETs (each holds its stripe from
    // its read through its append), and how many do depends on the
    // machine's load: 341 were seen once on 2 busy cores. One fsync per
    // write would be 640.
    assert!(
        taken < (KEYS * 3 / 4) as f64,
        "{taken} fsyncs for a pipeline of {KEYS} INCRs of distinct keys"
    );

    // Commands on one key, mixed with others, keep their order.
    let mut batch = Vec::new();
    let mut trail = String::new();
    for i in 0..100 {
        batch.extend_from_slice(&Conn::encode(&["SET", &format!("q{i}"), "x"]));
        batch.extend_from_slice(&Conn::encode(&["APPEND", "trail", &format!("{i},")]));
        batch.extend_from_slice(&Conn::encode(&["GET", "trail"]));
    }
    c.send_raw(&batch);
    for i in 0..100 {
        assert_eq!(c.read(), R::Status("OK".into()), "SET q{i}");
        trail.push_str(&format!("{i},"));
        assert_eq!(c.read(), R::Int(trail.len() as i64), "APPEND {i}");
        assert_eq!(c.read(), bulk(&trail), "GET after APPEND {i}");
    }
    drop(c);

    b.kill();
    let b = Broker::start(dir.path());
    let mut c = Conn::authed(&redis_addr(&b), &token_of(&b));
    assert_eq!(c.call(&["GET", "trail"]), bulk(&trail));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("p{i}")).collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let R::Array(got) = c.call(&args) else {
        panic!("MGET answers an array")
    };
    let want: Vec<R> = (0..KEYS).map(|i| bulk(&i.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn concurrent_increments_lose_none_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));
    const CONNECTIONS: usize = 16;
    const EACH: i64 = 50;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                let mut c = Conn::authed(&addr, &token);
                for j in 0..EACH {
                    let r = c.call(&["INCR", "hits"]);
                    assert!(matches!(r, R::Int(n) if n >= 1), "{r:?}");
                    assert_eq!(
                        c.call(&["SET", &format!("k{i}-{j}"), &j.to_string()]),
                        R::Status("OK".into())
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total = CONNECTIONS as i64 * EACH;
    let mut c = Conn::authed(&addr, &token);
    assert_eq!(c.call(&["GET", "hits"]), bulk(&total.to_string()));
    drop(c);

    // The dev cache is `always`: every acknowledged write is on disk.
    b.kill();
    let b = Broker::start(dir.path());
    let (addr, token) = (redis_addr(&b), token_of(&b));
    let mut c = Conn::authed(&addr, &token);
    assert_eq!(c.call(&["GET", "hits"]), bulk(&total.to_string()));
    for i in 0..CONNECTIONS {
        let keys: Vec<String> = (0..EACH).map(|j| format!("k{i}-{j}")).collect();
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        let R::Array(got) = c.call(&args) else {
            panic!("MGET answers an array")
        };
        let want: Vec<R> = (0..EACH).map(|j| bulk(&j.to_string())).collect();
        assert_eq!(got, want, "connection {i}'s writes");
    }
}

/// Issue 28: in a cluster any broker's door answers any key (forwarding
/// to the key's shard leader under the connection's token), cluster
/// clients are given a slot table naming each shard's leader's door, a
/// door with `moved` redirects as Redis Cluster does, and a shard leader
/// killed mid-run loses no acknowledged write.
#[test]
fn every_door_of_a_three_broker_cluster_answers_every_key_and_a_killed_leader_loses_no_write() {
    use felix_client::wire::{Durability, KeyRouting, StreamConfig, StreamKind};
    use felix_client::Client;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let mut c = common::cluster::LocalCluster::configure(dir.path(), 3, "", |_| None);
    let doors: Vec<String> = (0..3)
        .map(|i| {
            let port = common::cp::free_port();
            // The third door redirects; the others forward.
            let moved = i == 2;
            c.append_config(
                i,
                &format!("[redis]\nlisten = \"127.0.0.1:{port}\"\nmoved = {moved}\n"),
            );
            format!("127.0.0.1:{port}")
        })
        .collect();
    c.launch();
    let rt = common::rt();
    let client = rt.block_on(Client::connect(c.client_config())).unwrap();
    let mut cfg = StreamConfig::stream("redis", 4, Durability::Always);
    cfg.kind = StreamKind::Cache;
    rt.block_on(common::create_when_ready(&client, cfg));
    let leaders: Vec<u64> = (0..4)
        .map(|s| rt.block_on(c.leader(&client, "redis", s)))
        .collect();
    assert!(
        leaders.iter().any(|l| *l != leaders[0]) || leaders.len() == 1,
        "four shards on three brokers: {leaders:?}"
    );

    // The two forwarding doors write keys of every shard, and read each
    // other's keys.
    let door_of = |leader: u64| doors[c.index_of(leader)].clone();
    let mut conns: Vec<Conn> = doors.iter().map(|d| Conn::open(d)).collect();
    for (i, conn) in conns.iter_mut().enumerate().take(2) {
        for j in 0..40 {
            let r = conn.call(&["SET", &format!("d{i}-{j}"), &format!("v{j}")]);
            assert_eq!(r, R::Status("OK".into()), "door {i}, key {j}");
        }
    }
    for (k, conn) in conns.iter_mut().enumerate().take(2) {
        for i in 0..2 {
            for j in 0..40 {
                let r = conn.call(&["GET", &format!("d{i}-{j}")]);
                assert_eq!(r, bulk(&format!("v{j}")), "door {k} reading door {i}'s key {j}");
            }
        }
        assert!(matches!(conn.call(&["INCR", "shared"]), R::Int(_)));
    }
    assert_eq!(conns[0].call(&["GET", "shared"]), bulk("2"));

    // The redirecting door answers the keys its broker leads and sends
    // the others to their leader's door, naming the key's slot.
    let mut redirected = 0;
    for j in 0..40 {
        let key = format!("d0-{j}");
        let shard = KeyRouting::Slots.shard(key.as_bytes(), 4);
        let slot = match conns[0].call(&["CLUSTER", "KEYSLOT", &key]) {
            R::Int(s) => s,
            other => panic!("KEYSLOT {key}: {other:?}"),
        };
        match conns[2].call(&["GET", &key]) {
            R::Error(e) => {
                assert_eq!(
                    e,
                    format!("MOVED {slot} {}", door_of(leaders[shard as usize])),
                    "{key}"
                );
                redirected += 1;
            }
            got => {
                assert_eq!(got, bulk(&format!("v{j}")), "{key}");
                assert_eq!(
                    c.index_of(leaders[shard as usize]),
                    2,
                    "{key} answered by a non-leader"
                );
            }
        }
    }
    assert!(redirected > 0, "some of 40 keys are led by the other two brokers");
    // redis-cli -c follows the redirect.
    let port2 = doors[2].rsplit_once(':').unwrap().1;
    for j in 0..40 {
        let key = format!("d1-{j}");
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", port2, "GET", &key])
            .output()
            .expect("redis-cli runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("v{j}"),
            "{key}"
        );
    }

    // A cluster client's view: each shard's range of slots at its
    // leader's door.
    let R::Array(ranges) = conns[1].call(&["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS answers an array")
    };
    let mut next = 0;
    for range in &ranges {
        let R::Array(range) = range else {
            panic!("{ranges:?}")
        };
        let (R::Int(a), R::Int(b), R::Array(node)) = (&range[0], &range[1], &range[2]) else {
            panic!("{range:?}")
        };
        assert_eq!(*a, next, "ranges in order, covering every slot: {ranges:?}");
        next = b + 1;
        for slot in [*a, *b] {
            let shard = (slot * 4 / 16384) as usize;
            let (host, port) = door_of(leaders[shard])
                .rsplit_once(':')
                .map(|(h, p)| (h.to_owned(), p.parse::<i64>().unwrap()))
                .unwrap();
            assert_eq!(
                node[..2],
                [bulk(&host), R::Int(port)],
                "slot {slot}, shard {shard}"
            );
        }
    }
    assert_eq!(next, 16384);
    let distinct: std::collections::BTreeSet<u64> = leaders.iter().copied().collect();
    let R::Bulk(nodes) = conns[1].call(&["CLUSTER", "NODES"]) else {
        panic!()
    };
    assert_eq!(
        String::from_utf8_lossy(&nodes).lines().count(),
        distinct.len(),
        "one node per leading door"
    );
    // The slots Redis's documentation gives for these keys.
    assert_eq!(conns[0].call(&["CLUSTER", "KEYSLOT", "somekey"]), R::Int(11058));
    assert_eq!(
        conns[0].call(&["CLUSTER", "KEYSLOT", "foo{hash_tag}"]),
        R::Int(2515)
    );
    drop(conns);
    // redis-py's RedisCluster, given every door as a start-up node.
    let mut args = vec!["cluster"];
    args.extend(doors.iter().map(String::as_str));
    redis_py_check(&args);

    // Kill shard 0's leader while another broker's door writes.
    let victim = c.index_of(leaders[0]);
    // A forwarding door of another broker writes.
    let door = doors[if victim == 0 { 1 } else { 0 }].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, door) = (stop.clone(), acked.clone(), door.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(&door);
            let mut refused = 0;
            let mut j = 0u64;
            while !stop.load(Ordering::Acquire) {
                match conn.call(&["SET", &format!("w-{j}"), &j.to_string()]) {
                    R::Status(s) if s == "OK" => acked.lock().unwrap().push(j),
                    R::Error(e) if e.starts_with("TRYAGAIN") => {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => panic!("SET w-{j}: {other:?}"),
                }
                j += 1;
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(1_500));
    c.kill(victim);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Release);
    let refused = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "{} writes acknowledged, {refused} refused",
        acked.len()
    );
    c.restart(victim);
    // The restarted broker may stand for election and unseat the leader for
    // a moment: TRYAGAIN is retried, as Redis clients retry it.
    for d in [&doors[0], &doors[1]] {
        let mut conn = Conn::open(d);
        for j in &acked {
            let key = format!("w-{j}");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let got = loop {
                match conn.call(&["GET", &key]) {
                    R::Error(e) if e.starts_with("TRYAGAIN") && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => break other,
                }
            };
            assert_eq!(got, bulk(&j.to_string()), "at {d}");
        }
    }
}

#[test]
fn the_tls_door_serves_clients_that_trust_the_brokers_ca_and_no_others() {
    use felix_client::wire::{Durability, StreamConfig, StreamKind};

    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_configured(
        dir.path(),
        "[redis]\nlisten = \"127.0.0.1:0\"\ntls = true\ncache = \"secure\"\n",
    );
    let rt = common::rt();
    rt.block_on(async {
        let c = b.client().await;
        let mut cfg = StreamConfig::stream("secure", 2, Durability::Always);
        cfg.kind = StreamKind::Cache;
        common::create(&c, cfg).await;
    });
    let addr = redis_addr(&b);
    let (host, port) = addr.rsplit_once(':').unwrap();
    let ca = b.profile.ca.to_str().unwrap().to_owned();

    let tls_cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(tls_cli(&["SET", "over-tls", "sealed"]), "OK\n");
    assert_eq!(tls_cli(&["GET", "over-tls"]), "sealed\n");
    assert_eq!(tls_cli(&["INCR", "counted"]), "1\n");

    // Plain RESP on the TLS port is a failed handshake: no reply, the
    // connection closed, and the door goes on serving TLS clients.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    plain.write_all(&Conn::encode(&["GET", "over-tls"])).unwrap();
    let mut answered = Vec::new();
    let _ = plain.read_to_end(&mut answered);
    assert!(
        !answered.windows(6).any(|w| w == b"sealed") && !answered.starts_with(b"$"),
        "a plain client was answered: {answered:?}"
    );
    assert_eq!(tls_cli(&["GET", "over-tls"]), "sealed\n");

    // redis-py: both protocols with the chain and the address checked; a
    // client without the CA and a plain one refused.
    redis_py_check(&["tls", host, port, &ca]);
    assert_eq!(tls_cli(&["GET", "counted"]), "1\n");
}
