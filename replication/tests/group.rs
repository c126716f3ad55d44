//! Three replicas of one group in one process, over real QUIC with mutual
//! TLS: quorum writes, identical logs, failover, snapshot catch-up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use felix_client::transport::dev_certificates;
use felix_log::{Durability, LogConfig, RaftIndex, SharedLog};
use felix_replication::{
    node_id, Applier, BrokerNode, GroupConfig, GroupId, Replica, Router, Transport, WriteError,
};

/// Records how far it was told to apply.
#[derive(Default)]
struct Counter {
    through: AtomicU64,
    installs: AtomicU64,
}

impl Applier for Counter {
    fn apply_through(&self, through: RaftIndex) -> Result<(), String> {
        self.through.fetch_max(through.0, Ordering::AcqRel);
        Ok(())
    }
    fn installed(&self, last: RaftIndex, _state: &[u8]) -> Result<(), String> {
        self.installs.fetch_add(1, Ordering::AcqRel);
        self.through.store(last.0, Ordering::Release);
        Ok(())
    }
}

struct Node {
    id: u64,
    addr: String,
    log: Arc<SharedLog>,
    replica: Replica,
    transport: Arc<Transport>,
    router: Router,
    applier: Arc<Counter>,
}

fn batch(v: &str) -> bytes::Bytes {
    felix_testkit::Batch::of(&[v]).ts(1).bytes()
}

fn log_config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 2 << 20,
        batch_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

async fn start(root: &std::path::Path, id: u64, listen: &str) -> Node {
    start_applied(root, id, listen, |_| None).await
}

/// [`start`] telling the replica how far its applier's state reaches, as
/// a broker does from the mark the state machine saved.
async fn start_applied(
    root: &std::path::Path,
    id: u64,
    listen: &str,
    applied: impl Fn(&std::path::Path) -> Option<RaftIndex>,
) -> Node {
    let broker = felix_replication::broker_of(id);
    let certs = dev_certificates(root, &[])
        .unwrap()
        .issue_broker(broker, "local", &root.join(format!("certs-b{broker}")))
        .unwrap();
    let router = Router::default();
    let until = Instant::now() + Duration::from_secs(10);
    let transport = loop {
        // A restarted node rebinds its old port, which its closing endpoint
        // may hold a moment longer.
        match Transport::start(
            id,
            "local",
            listen.parse().unwrap(),
            &certs.server_tls().unwrap(),
            &certs.client_tls().unwrap(),
            router.clone(),
        ) {
            Ok(t) => break t,
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {listen}: {e}"),
        }
    };
    let addr = transport.local_addr().unwrap().to_string();
    let dir = root.join(format!("n{id}"));
    let log = loop {
        // The previous incarnation's log lock goes when its Raft task ends.
        match SharedLog::open(dir.join("log"), log_config()) {
            Ok((l, _)) => break Arc::new(l),
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open log: {e}"),
        }
    };
    let applier = Arc::new(Counter::default());
    let replica = Replica::start(
        id,
        GroupId(7),
        log.clone(),
        dir.join("raft"),
        applier.clone(),
        applied(&dir.join("raft")),
        transport.clone(),
        &router,
        GroupConfig::default(),
    )
    .await
    .unwrap();
    Node {
        id,
        addr,
        log,
        replica,
        transport,
        router,
        applier,
    }
}

async fn leader_of(nodes: &[&Node]) -> usize {
    // Generous: an election takes about a second; the deadline only turns
    // a group that never elects into a failure (speed is the benchmark's).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = nodes.iter().position(|n| n.replica.is_leader()) {
            return i;
        }
        if Instant::now() >= until {
            for n in nodes {
                let m = n.replica.raft.metrics().borrow().clone();
                eprintln!(
                    "node {}: state {:?} term {} vote {} leader {:?} last_log {:?}",
                    n.id, m.state, m.current_term, m.vote, m.current_leader, m.last_log_index
                );
            }
            panic!("no leader elected in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entries(log: &SharedLog) -> Vec<(u64, u64, u64, Vec<u8>)> {
    log.with(|l| {
        l.positioned_from_raft_index(RaftIndex(0))
            .map(|p| {
                let h = *p.batch.header();
                (
                    h.raft_index.0,
                    h.raft_term.0,
                    h.base_offset.0,
                    p.batch.bytes()[88..].to_vec(),
                )
            })
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_failover_and_identical_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let mut offsets = Vec::new();
    for i in 0..20 {
        let r = nodes[l].replica.write(batch(&format!("v{i}"))).await.unwrap();
        assert_eq!(r.count, 1);
        offsets.push(r.base_offset);
    }
    assert_eq!(
        offsets,
        (0..20).collect::<Vec<u64>>(),
        "offsets are dense and in order"
    );
    // A follower refuses and names the leader.
    let f = (l + 1) % 3;
    match nodes[f].replica.write(batch("x")).await {
        Err(WriteError::NotLeader {
            leader: Some((id, _)),
            ..
        }) => assert_eq!(id, nodes[l].id),
        other => panic!("follower write: {other:?}"),
    }
    // The follower forwards when asked to.
    let r = nodes[f].replica.write_anywhere(batch("fwd")).await.unwrap();
    assert_eq!(r.base_offset, 20);

    // Stop the leader; the others elect a new one (how fast is
    // `felix-bench cluster`'s failover figure, not this test's verdict).
    let old = nodes.remove(l);
    let stopped = Instant::now();
    old.replica.shutdown(&old.router).await;
    old.transport.close();
    let rest: Vec<&Node> = nodes.iter().collect();
    let nl = leader_of(&rest).await;
    let failover = stopped.elapsed();
    eprintln!("failover: new leader {failover:?} after the old one stopped");
    let _ = nl;
    // Two survivors can both stand for election; the first winner may be
    // deposed by the other's higher term a moment later, and a write that
    // meets the change is refused before it is proposed (NotLeader), so it
    // is retried on whoever leads next. Being refused twice in a row at the
    // same instant would be a real fault and still fails by the deadline.
    let until = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let rest: Vec<&Node> = nodes.iter().collect();
        let nl = leader_of(&rest).await;
        match nodes[nl].replica.write(batch("after")).await {
            Ok(r) => break r,
            Err(WriteError::NotLeader { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write after failover: {e:?}"),
        }
    };
    assert_eq!(r.base_offset, 21, "the new leader continues the numbering");

    // Both survivors hold identical entries and applied everything.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let a = entries(&nodes[0].log);
        let b = entries(&nodes[1].log);
        if a == b
            && nodes
                .iter()
                .all(|n| n.applier.through.load(Ordering::Acquire) >= r.raft_index)
        {
            break;
        }
        assert!(Instant::now() < until, "replicas differ: {a:?} vs {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stopped leader's log is a prefix of theirs (nothing it held diverged).
    let survivor = entries(&nodes[0].log);
    let before = entries(&old.log);
    assert_eq!(&survivor[..before.len()], &before[..]);
}

/// Three replicas under `root`, initialized by the first; returns them and
/// the leader's position.
async fn cluster(root: &std::path::Path) -> (Vec<Node>, usize) {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(root, id, "127.0.0.1:0").await);
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    (nodes, l)
}

fn members_of(nodes: &[Node]) -> BTreeMap<u64, BrokerNode> {
    nodes
        .iter()
        .map(|n| {
            (
                n.id,
                BrokerNode {
                    raft_addr: n.addr.clone(),
                    client_addr: String::new(),
                },
            )
        })
        .collect()
}

async fn stop(n: Node) -> (u64, String) {
    n.replica.shutdown(&n.router).await;
    n.transport.close();
    (n.id, n.addr)
}

async fn wait_applied(n: &Node, index: u64) {
    let until = Instant::now() + Duration::from_secs(20);
    while n.applier.through.load(Ordering::Acquire) < index {
        assert!(Instant::now() < until, "node {} did not apply {index}", n.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A follower restarted from its disk keeps its vote and log and catches
/// up; one whose missing entries retention removed on the leader catches up
/// by snapshot, and ends with the leader's entries at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_snapshot_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let leader = nodes.remove(l);
    for i in 0..10 {
        leader.replica.write(batch(&format!("a{i}"))).await.unwrap();
    }

    // Restart one follower from its disk: it rejoins and catches up by log.
    let (id, addr) = stop(nodes.remove(0)).await;
    let r = leader.replica.write(batch("while-down")).await.unwrap();
    let back = start(tmp.path(), id, &addr).await;
    wait_applied(&back, r.raft_index).await;
    assert_eq!(entries(&back.log), entries(&leader.log));
    assert_eq!(
        back.applier.installs.load(Ordering::Acquire),
        0,
        "caught up by log, not snapshot"
    );

    // Stop it again; the leader writes across several segments and retention
    // releases the oldest ones, so the follower's next entry is gone.
    let (id, addr) = stop(back).await;
    let value = "x".repeat(200 << 10);
    let mut last = 0;
    for _ in 0..40 {
        last = leader.replica.write(batch(&value)).await.unwrap().raft_index;
    }
    let sealed_last = leader.log.with(|l| {
        let segs = l.segments();
        segs[segs.len() - 2].last_raft_index.unwrap()
    });
    leader.replica.release_through(sealed_last).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while leader.log.with(|l| l.first_raft_index()).unwrap() <= RaftIndex(r.raft_index) {
        assert!(Instant::now() < until, "the leader never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = start(tmp.path(), id, &addr).await;
    wait_applied(&back, last).await;
    assert!(
        back.applier.installs.load(Ordering::Acquire) >= 1,
        "caught up by snapshot"
    );
    // From the leader's first entry on, the two logs are identical.
    let lead = entries(&leader.log);
    let theirs = entries(&back.log);
    let first = lead[0].0;
    let from = theirs
        .iter()
        .position(|e| e.0 == first)
        .expect("follower holds the leader's first entry");
    assert_eq!(&theirs[from..], &lead[..]);
    // The third replica was never touched and agrees too.
    wait_applied(&nodes[0], last).await;
    let third = entries(&nodes[0].log);
    let from = third.iter().position(|e| e.0 == first).unwrap();
    assert_eq!(&third[from..third.len().min(from + lead.len())], &lead[..]);
}

/// A follower whose disk is lost comes back under a new node id at the
/// same address. Until it is admitted, the leader's RPCs for the old id
/// reach it and are refused (it holds nothing); once it asks to join, it
/// catches up as a learner and replaces the old id among the voters, and
/// the group reaches a quorum with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_rebuilt_from_an_empty_disk_replaces_its_old_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for broker in 1..=3 {
        nodes.push(start(tmp.path(), node_id(broker, 1), "127.0.0.1:0").await);
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let leader = nodes.remove(l);
    for i in 0..20 {
        leader.replica.write(batch(&format!("a{i}"))).await.unwrap();
    }
    let (old_id, addr) = stop(nodes.remove(0)).await;
    std::fs::remove_dir_all(tmp.path().join(format!("n{old_id}"))).unwrap();
    let new_id = node_id(felix_replication::broker_of(old_id) as u32, 2);
    let rebuilt = start(tmp.path(), new_id, &addr).await;
    let last = leader
        .replica
        .write(batch("while-rebuilt"))
        .await
        .unwrap()
        .raft_index;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        rebuilt.log.with(|l| l.last_raft()).is_none(),
        "entries addressed to the old identity were refused"
    );
    let peers = vec![
        BrokerNode {
            raft_addr: leader.addr.clone(),
            client_addr: String::new(),
        },
        BrokerNode {
            raft_addr: nodes[0].addr.clone(),
            client_addr: String::new(),
        },
    ];
    let me = BrokerNode {
        raft_addr: addr.clone(),
        client_addr: String::new(),
    };
    tokio::time::timeout(Duration::from_secs(30), rebuilt.replica.join(&peers, &me))
        .await
        .expect("admitted within 30 s");
    let mut expected = vec![leader.id, nodes[0].id, new_id];
    expected.sort_unstable();
    assert_eq!(voters(&leader), expected, "the old identity is gone");
    wait_applied(&rebuilt, last).await;

    // The other original follower stops: the quorum needs the rebuilt one.
    let _ = stop(nodes.remove(0)).await;
    let mut last = 0;
    for i in 0..5 {
        last = leader
            .replica
            .write(batch(&format!("b{i}")))
            .await
            .unwrap()
            .raft_index;
    }
    wait_applied(&rebuilt, last).await;
    assert_eq!(entries(&rebuilt.log), entries(&leader.log));
}

/// The voters of the group as `n` sees them.
fn voters(n: &Node) -> Vec<u64> {
    let m = n.replica.raft.metrics().borrow().clone();
    m.membership_config.membership().voter_ids().collect()
}

/// A fourth replica is added (it catches up as a learner, then becomes a
/// voter), a first one is removed, and the group keeps a quorum and
/// identical logs throughout; the removed replica gets nothing more. Then
/// a follower's read barrier sees every write acknowledged before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, l) = cluster(tmp.path()).await;
    let mut last = 0;
    for i in 0..20 {
        last = nodes[l]
            .replica
            .write(batch(&format!("before{i}")))
            .await
            .unwrap()
            .raft_index;
    }
    let fourth = start(tmp.path(), 4, "127.0.0.1:0").await;
    nodes[l]
        .replica
        .add_replica(
            4,
            BrokerNode {
                raft_addr: fourth.addr.clone(),
                client_addr: String::new(),
            },
            true,
        )
        .await
        .unwrap();
    wait_applied(&fourth, last).await;
    assert_eq!(voters(&nodes[l]), vec![1, 2, 3, 4]);
    assert_eq!(
        entries(&fourth.log)[..20],
        entries(&nodes[l].log)[..20],
        "the new replica holds the leader's entries at the same indexes"
    );

    // Remove a follower; the group of three (one of them new) goes on.
    let gone = (0..3).find(|i| *i != l).unwrap();
    let gone_id = nodes[gone].id;
    nodes[l].replica.remove_replica(gone_id).await.unwrap();
    assert!(!voters(&nodes[l]).contains(&gone_id));
    let removed_at = nodes[gone].applier.through.load(Ordering::Acquire);
    for i in 0..10 {
        last = nodes[l]
            .replica
            .write(batch(&format!("after{i}")))
            .await
            .unwrap()
            .raft_index;
    }
    wait_applied(&fourth, last).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        nodes[gone].applier.through.load(Ordering::Acquire) < last,
        "a removed replica is sent nothing more (it had {removed_at}, the group is at {last})"
    );

    // A read barrier on a follower covers the leader's acknowledged writes.
    let follower = (0..3).find(|i| *i != l && *i != gone).unwrap();
    let w = nodes[l].replica.write(batch("barrier")).await.unwrap().raft_index;
    nodes[follower]
        .replica
        .read_barrier(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(nodes[follower].applier.through.load(Ordering::Acquire) >= w);

    // Removing the leader itself: the others elect one among themselves.
    let leader_id = nodes[l].id;
    nodes[l].replica.remove_replica(leader_id).await.unwrap();
    let rest: Vec<&Node> = vec![&nodes[follower], &fourth];
    let until = Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some(n) = rest.iter().find(|n| n.replica.is_leader()) {
            break n;
        }
        assert!(Instant::now() < until, "no leader after the old one left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(new.id, leader_id);
    assert!(!voters(new).contains(&leader_id));
    new.replica.write(batch("without the old leader")).await.unwrap();
}

/// A learner (a move's new replica) is sent the log no faster than the
/// leader's catch-up rate, while the voters' own replication is never
/// held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_no_faster_than_the_catchup_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, l) = cluster(tmp.path()).await;
    let rate: u64 = 1 << 20;
    nodes[l].transport.set_catchup_bytes_per_s(rate);
    let value_bytes: u64 = 32 << 10;
    let writes = 96;
    let value = "x".repeat(value_bytes as usize);
    let mut last = 0;
    for _ in 0..writes {
        last = nodes[l].replica.write(batch(&value)).await.unwrap().raft_index;
    }
    for n in &nodes {
        wait_applied(n, last).await;
    }
    assert_eq!(
        nodes[l].transport.catchup_stats().bytes,
        0,
        "replication to voters is not catch-up traffic"
    );

    let fourth = start(tmp.path(), 4, "127.0.0.1:0").await;
    let started = Instant::now();
    nodes[l]
        .replica
        .add_replica(
            4,
            BrokerNode {
                raft_addr: fourth.addr.clone(),
                client_addr: String::new(),
            },
            false,
        )
        .await
        .unwrap();
    wait_applied(&fourth, last).await;
    let took = started.elapsed();
    let sent = nodes[l].transport.catchup_stats();
    let logged = writes * value_bytes;
    assert!(sent.bytes >= logged, "{sent:?}: the learner's entries were paced");
    assert!(sent.held > 0, "{sent:?}");
    // Everything past the bucket's burst and the last RPC waits for the rate.
    let burst = (rate * felix_replication::throttle::BURST_MS / 1000)
        .max(felix_replication::throttle::BURST_BYTES_MIN);
    let rpc_max = felix_replication::group::PAYLOAD_ENTRIES_MAX * (value_bytes + 1024);
    let least = Duration::from_millis((logged - burst - rpc_max) * 1000 / rate);
    println!("caught up {logged} bytes in {took:?} at {rate} B/s (at least {least:?}); {sent:?}");
    assert!(
        took >= least,
        "caught up {logged} bytes in {took:?}, under {least:?} at {rate} B/s"
    );
    assert_eq!(entries(&fourth.log), entries(&nodes[l].log));
}

/// A replica restarted with more committed-but-unapplied entries than one
/// log read returns (its applied index is saved only now and then, and a
/// crash can come before the first save) applies them all and stays in the
/// group. This killed the group (openraft found the read short) before
/// whole-range reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_a_backlog_longer_than_one_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let leader = nodes.remove(l);
    let backlog = felix_replication::store::READ_ENTRIES_MAX * 3;
    let writes: Vec<_> = (0..backlog)
        .map(|i| {
            let r = leader.replica.clone();
            tokio::spawn(async move { r.write(batch(&format!("w{i}"))).await })
        })
        .collect();
    let mut last = 0;
    for w in writes {
        last = last.max(w.await.unwrap().unwrap().raft_index);
    }
    wait_applied(&nodes[0], last).await;
    let (id, addr) = stop(nodes.remove(0)).await;
    // As if it crashed before ever saving what it had applied.
    std::fs::remove_file(
        tmp.path()
            .join(format!("n{id}"))
            .join("raft")
            .join(felix_replication::machine::APPLIED_FILE),
    )
    .unwrap();
    let back = start(tmp.path(), id, &addr).await;
    wait_applied(&back, last).await;
    let after = leader.replica.write(batch("after")).await.unwrap().raft_index;
    wait_applied(&back, after).await;
    assert_eq!(entries(&back.log), entries(&leader.log));
}

/// Finds `needle` in the files under `dir` and flips a bit of its first
/// byte in place (the log's mapping sees it at once); where it was.
fn flip_in(dir: &std::path::Path, needle: &[u8]) -> (std::path::PathBuf, usize) {
    let mut found = Vec::new();
    for e in walk(dir) {
        let bytes = std::fs::read(&e).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            found.push((e, at));
        }
    }
    assert_eq!(found.len(), 1, "{needle:?} once under {}", dir.display());
    let (path, at) = found.pop().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[needle[0] ^ 0x20], at as u64).unwrap();
    (path, at)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A leader whose log was damaged after the entries were written (a bit
/// flipped on disk) must not ship the damage: the follower that needs
/// those entries would refuse them and its group would stop for good.
/// The damaged leader's own group stops instead, the healthy replica takes
/// over, and the follower catches up from it with the undamaged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_damaged_entry_stops_rather_than_ship_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let leader = nodes.remove(l);
    let (id, addr) = stop(nodes.remove(0)).await;
    let mut last = 0;
    for i in 0..10 {
        last = leader
            .replica
            .write(batch(&format!("payload-{i}")))
            .await
            .unwrap()
            .raft_index;
    }
    let healthy = nodes.remove(0);
    wait_applied(&healthy, last).await;
    flip_in(
        &tmp.path().join(format!("n{}", leader.id)).join("log"),
        b"payload-5",
    );

    let behind = start(tmp.path(), id, &addr).await;
    wait_applied(&behind, last).await;
    // An undamaged replica leads (the healthy one, or the caught-up one
    // if it won a later election): leadership may still be settling the
    // moment the follower has applied, so it is polled to a deadline.
    let until = Instant::now() + Duration::from_secs(30);
    while !(healthy.replica.is_leader() || behind.replica.is_leader()) {
        assert!(Instant::now() < until, "no undamaged replica took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entries(&behind.log), entries(&healthy.log));
    assert!(
        entries(&behind.log)
            .iter()
            .any(|e| e.3.windows(9).any(|w| w == b"payload-5")),
        "the follower holds the undamaged entry"
    );
    // Either undamaged replica may lead the write (and leadership may
    // still move between the two): written on whichever leads, retried
    // when it was refused as a former leader.
    let until = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let on = if healthy.replica.is_leader() {
            &healthy
        } else {
            &behind
        };
        match on.replica.write(batch("after")).await {
            Ok(r) => break r.raft_index,
            Err(WriteError::NotLeader { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write after the takeover: {e:?}"),
        }
    };
    wait_applied(&behind, after).await;
    wait_applied(&healthy, after).await;
}

/// Waits until the group is quiet on every one of `nodes`.
async fn all_quiet(nodes: &[&Node]) {
    let until = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|n| n.replica.is_quiet()) {
        let quiet: Vec<bool> = nodes.iter().map(|n| n.replica.is_quiet()).collect();
        assert!(Instant::now() < until, "the group did not go quiet: {quiet:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terms(nodes: &[&Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.replica.term()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_goes_quiet_and_a_write_wakes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, l) = cluster(tmp.path()).await;
    let all: Vec<&Node> = nodes.iter().collect();
    for i in 0..5 {
        nodes[l].replica.write(batch(&format!("v{i}"))).await.unwrap();
    }
    all_quiet(&all).await;
    let term = terms(&all);
    // Quiet: beats between the brokers go on, openraft's heartbeats stop,
    // and so does its tick task (a tick already asleep may end once).
    let before = nodes[l].transport.traffic();
    let ticks: Vec<u64> = nodes.iter().map(|n| n.replica.ticks()).collect();
    let window = Duration::from_millis(1_500);
    tokio::time::sleep(window).await;
    let after = nodes[l].transport.traffic();
    for (n, t) in nodes.iter().zip(&ticks) {
        assert!(
            n.replica.ticks() - t <= 1,
            "a quiet replica's tick task woke {} times in {window:?}",
            n.replica.ticks() - t
        );
    }
    assert!(
        after.heartbeats - before.heartbeats <= 2,
        "a quiet leader sent {} heartbeats in {window:?}",
        after.heartbeats - before.heartbeats
    );
    assert!(
        after.beats - before.beats >= 4,
        "a quiet leader's broker sent {} beats in {window:?}",
        after.beats - before.beats
    );
    assert_eq!(terms(&all), term, "no election while quiet");
    assert!(nodes[l].replica.is_leader());

    // A write wakes it, commits on a quorum, and reaches every replica.
    let began = Instant::now();
    let r = nodes[l].replica.write(batch("after quiet")).await.unwrap();
    eprintln!("first write to a quiet group: {:?}", began.elapsed());
    assert_eq!(r.base_offset, 5);
    for n in &nodes {
        wait_applied(n, r.raft_index).await;
    }
    // Awake, the leader's tick task runs again (every 1.5 heartbeats).
    let woke_at = nodes[l].replica.ticks();
    let until = Instant::now() + Duration::from_secs(5);
    while nodes[l].replica.ticks() < woke_at + 2 {
        assert!(Instant::now() < until, "the woken leader's tick task did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle again, it goes quiet again at the new last entry.
    all_quiet(&all).await;
    assert_eq!(terms(&all), term);
    for n in nodes {
        stop(n).await;
    }
}

/// A follower restarted beside a quiet group knows its leader from its
/// own disk (the committed vote it saved), so the leader's beats keep it
/// quiet: the group is not woken for it. A broker restarting with
/// thousands of quiet groups would otherwise wait for each to be woken, a
/// few hundred a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_of_a_quiet_group_knows_its_leader_without_waking_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let w = nodes[l].replica.write(batch("before")).await.unwrap();
    for n in &nodes {
        wait_applied(n, w.raft_index).await;
    }
    all_quiet(&nodes.iter().collect::<Vec<_>>()).await;
    let leader = nodes[l].id;
    let term = nodes[l].replica.term();
    let f = (l + 1) % nodes.len();
    let (id, addr) = stop(nodes.remove(f)).await;
    let l = nodes.iter().position(|n| n.id == leader).unwrap();
    let sent = nodes[l].transport.traffic().heartbeats;
    let back = start_applied(tmp.path(), id, &addr, |d| {
        felix_replication::machine::saved_applied(d).map(RaftIndex)
    })
    .await;
    // Nothing from the quiet leader's group reaches it: what it names, it
    // read from its own disk.
    let mut metrics = back.replica.raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(10),
        metrics.wait_for(|m| m.current_leader == Some(leader)),
    )
    .await
    .expect("the restarted follower names its leader")
    .unwrap();
    nodes.push(back);
    all_quiet(&nodes.iter().collect::<Vec<_>>()).await;
    let woke = nodes[l].transport.traffic().heartbeats - sent;
    assert!(
        woke <= 1,
        "the quiet leader was woken for the restarted follower ({woke} heartbeats)"
    );
    assert!(nodes[l].replica.is_leader());
    assert!(nodes.iter().all(|n| n.replica.term() == term), "no election");
    // And it is a follower like any other: a write reaches it.
    let r = nodes[l].replica.write(batch("after")).await.unwrap();
    for n in &nodes {
        wait_applied(n, r.raft_index).await;
    }
    for n in nodes {
        stop(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_elects_a_new_leader_when_its_leader_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, l) = cluster(tmp.path()).await;
    let w = nodes[l].replica.write(batch("before")).await.unwrap();
    all_quiet(&nodes.iter().collect::<Vec<_>>()).await;
    let old = nodes.remove(l);
    let stopped = Instant::now();
    stop(old).await;
    let rest: Vec<&Node> = nodes.iter().collect();
    let nl = leader_of(&rest).await;
    eprintln!("failover of a quiet group: {:?}", stopped.elapsed());
    let r = nodes[nl].replica.write(batch("after")).await.unwrap();
    assert_eq!(r.base_offset, w.base_offset + 1, "nothing acknowledged was lost");
    for n in nodes {
        stop(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_a_quiet_group_does_not_raise_the_term() {
    use felix_testkit::net::{Net, Rules};
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(tmp.path(), id, "127.0.0.1:0").await);
    }
    // Every replica reaches the others through their proxies.
    let real: Vec<(u64, std::net::SocketAddr)> =
        nodes.iter().map(|n| (n.id, n.addr.parse().unwrap())).collect();
    let net = Net::start(&real, 7).await;
    for (n, (_, proxy)) in nodes.iter_mut().zip(&net.proxies) {
        n.addr = proxy.to_string();
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    nodes[l].replica.write(batch("v")).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    all_quiet(&all).await;
    let term = terms(&all);

    let f = (l + 1) % 3;
    let others: Vec<u64> = nodes
        .iter()
        .filter(|n| n.id != nodes[f].id)
        .map(|n| n.id)
        .collect();
    net.set(Rules::partition(&[vec![nodes[f].id], others]));
    // Several election timeouts: a follower that stood would have by now.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let m = nodes[f].replica.raft.metrics().borrow().clone();
        assert_eq!(
            m.current_term, term[f],
            "the cut-off follower stood: {:?}",
            m.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.heal();
    let r = nodes[l].replica.write(batch("healed")).await.unwrap();
    for n in &nodes {
        wait_applied(n, r.raft_index).await;
    }
    assert_eq!(terms(&all), term, "the partition cost an election");
    assert!(nodes[l].replica.is_leader(), "the leader kept its office");
    for n in nodes {
        stop(n).await;
    }
}

/// A follower cut off while its group is busy misses entries, and the
/// leader and the other follower go quiet without it. Back, it must be
/// caught up by the beat alone (nothing more is written), and it must not
/// stand: the first beat to reach it may be the other follower's, before
/// its leader's names the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_behind_a_group_that_went_quiet_without_it_catches_up() {
    use felix_testkit::net::{Net, Rules};
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(tmp.path(), id, "127.0.0.1:0").await);
    }
    let real: Vec<(u64, std::net::SocketAddr)> =
        nodes.iter().map(|n| (n.id, n.addr.parse().unwrap())).collect();
    let net = Net::start(&real, 11).await;
    for (n, (_, proxy)) in nodes.iter_mut().zip(&net.proxies) {
        n.addr = proxy.to_string();
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    nodes[l].replica.write(batch("v")).await.unwrap();
    all_quiet(&nodes.iter().collect::<Vec<_>>()).await;
    let term = terms(&nodes.iter().collect::<Vec<_>>());
    let f = (l + 1) % 3;
    let others: Vec<u64> = nodes
        .iter()
        .filter(|n| n.id != nodes[f].id)
        .map(|n| n.id)
        .collect();
    for round in 0..3 {
        net.set(Rules::partition(&[vec![nodes[f].id], others.clone()]));
        let mut last = 0;
        for i in 0..100 {
            last = nodes[l]
                .replica
                .write(batch(&format!("r{round} v{i}")))
                .await
                .unwrap_or_else(|e| panic!("round {round}, write {i}: {e}"))
                .raft_index;
        }
        let rest: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != f)
            .map(|(_, n)| n)
            .collect();
        all_quiet(&rest).await;
        net.heal();
        wait_applied(&nodes[f], last).await;
        let all: Vec<&Node> = nodes.iter().collect();
        assert_eq!(terms(&all), term, "round {round}: the partition cost an election");
    }
    for n in nodes {
        stop(n).await;
    }
}

/// A follower that cannot hear its leader while the other follower can
/// (the leader's packets to it are lost, a one-way fault) asks before it
/// stands, and is refused: the term does not move, so the leader is not
/// unseated when the fault heals, and writes go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_cannot_hear_a_live_leader_does_not_unseat_it() {
    use felix_testkit::net::{Net, Rules};
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(tmp.path(), id, "127.0.0.1:0").await);
    }
    let real: Vec<(u64, std::net::SocketAddr)> =
        nodes.iter().map(|n| (n.id, n.addr.parse().unwrap())).collect();
    let net = Net::start(&real, 13).await;
    for (n, (_, proxy)) in nodes.iter_mut().zip(&net.proxies) {
        n.addr = proxy.to_string();
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    nodes[l].replica.write(batch("v")).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    let term = terms(&all);
    let f = (l + 1) % 3;
    let mut rules = Rules::default();
    rules.blocked.insert((nodes[l].id, nodes[f].id));
    net.set(rules);
    // The group stays busy (its leader heartbeats), for several election
    // timeouts: without asking first, the follower would have stood.
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while Instant::now() < until {
        nodes[l]
            .replica
            .write(batch(&format!("w{i}")))
            .await
            .unwrap_or_else(|e| panic!("write {i} during the fault: {e}"));
        assert_eq!(
            nodes[f].replica.term(),
            term[f],
            "the follower that cannot hear its leader raised the term"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    net.heal();
    let r = nodes[l].replica.write(batch("healed")).await.unwrap();
    for n in &nodes {
        wait_applied(n, r.raft_index).await;
    }
    assert_eq!(terms(&all), term, "the one-way fault cost an election");
    assert!(nodes[l].replica.is_leader(), "the leader kept its office");
    for n in nodes {
        stop(n).await;
    }
}

/// Writes `n` records one at a time on the leader, then waits until every
/// replica holds the leader's entries.
async fn write_and_converge(nodes: &[Node], l: usize, n: usize) {
    let mut last = 0;
    for i in 0..n {
        last = nodes[l]
            .replica
            .write(batch(&format!("w{i}")))
            .await
            .unwrap()
            .raft_index;
    }
    for node in nodes {
        wait_applied(node, last).await;
    }
    let until = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| entries(&n.log) == entries(&nodes[l].log)) {
        assert!(Instant::now() < until, "the replicas' logs differ");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader's AppendEntries go framed on the lanes it opened once, not a
/// stream each; brokers that serve no lanes (as before they existed) are
/// sent the same RPCs on a stream each, and replicate all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_share_a_few_lanes_and_a_peer_without_lanes_gets_a_stream_each() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, l) = cluster(tmp.path()).await;
    // Lanes are opened by the election and first RPCs.
    write_and_converge(&nodes, l, 5).await;
    let before = nodes[l].transport.traffic();
    write_and_converge(&nodes, l, 200).await;
    let after = nodes[l].transport.traffic();
    // Each write is one AppendEntries to each follower at least.
    let on_lanes = after.lane_rpcs - before.lane_rpcs;
    let streams = after.streams - before.streams;
    assert!(on_lanes >= 200, "{on_lanes} RPCs on lanes for 200 writes");
    assert!(
        streams <= 2 * felix_replication::lanes::LANES_PER_PEER as u64,
        "{streams} streams opened for 200 writes on lanes"
    );
    for n in nodes {
        stop(n).await;
    }

    // Three brokers that answer a lane request as older brokers do.
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let n = start(tmp.path(), id, "127.0.0.1:0").await;
        n.transport.serve_lanes(false);
        nodes.push(n);
    }
    nodes[0].replica.initialize(members_of(&nodes)).await.unwrap();
    let l = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let before = nodes[l].transport.traffic();
    write_and_converge(&nodes, l, 50).await;
    let after = nodes[l].transport.traffic();
    assert_eq!(after.lane_rpcs, 0, "an RPC went on a lane no peer serves");
    assert!(
        after.streams - before.streams >= 100,
        "{} streams for 50 writes to two followers",
        after.streams - before.streams
    );
    for n in nodes {
        stop(n).await;
    }
}
