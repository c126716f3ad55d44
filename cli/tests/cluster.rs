//! Replication across real broker processes on 127.0.0.1: leaders killed
//! with SIGKILL and paused with SIGSTOP under a continuous idempotent
//! workload, followers lost, consumer-group leases across a failover.
//! Every check reads the replicas' own segment logs at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::LocalCluster;
use common::{create_when_ready, rt, stream_config};
use felix_client::{Client, ClientError, ProducerConfig, ProducerRecord};
use felix_log::{Log, LogConfig, Offset};
use felix_testkit::serial::serial;

/// What a producer saw: acknowledged (offset → value) and how many sends
/// failed (their outcome unknown).
#[derive(Default)]
struct History {
    acked: BTreeMap<u64, String>,
    failed: usize,
}

/// Publishes unique values to shard 0 of `stream` in windows of 20 until
/// `stop`, recording every outcome.
async fn produce(client: Client, stream: String, stop: Arc<AtomicBool>, h: Arc<Mutex<History>>) {
    let p = common::eager_producer(&client, &stream).await.expect("producer");
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut pending = Vec::new();
        for _ in 0..20 {
            let v = format!("v{n}");
            n += 1;
            let mut r = ProducerRecord::new(v.clone().into_bytes());
            r.shard = Some(0);
            match p.send(r).await {
                Ok(a) => pending.push((v, a)),
                Err(_) => h.lock().unwrap().failed += 1,
            }
        }
        for (v, a) in pending {
            match a.wait().await {
                Ok(ack) => {
                    let old = h.lock().unwrap().acked.insert(ack.offset, v.clone());
                    assert!(
                        old.is_none(),
                        "offset {} acknowledged twice ({old:?}, {v})",
                        ack.offset
                    );
                }
                Err(e) => {
                    eprintln!("send of {v} failed: {e}");
                    h.lock().unwrap().failed += 1
                }
            }
        }
    }
}

/// Every member's records of shard id 1 (the stream's only shard), read
/// from its segment log after the cluster stopped, below `next` (opened
/// with the member's keys when the cluster encrypts at rest).
fn replica_records(c: &LocalCluster, next: u64) -> Vec<Vec<(u64, String)>> {
    c.members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let config = LogConfig {
                keys: c.dev_keys(i, 1),
                ..LogConfig::default()
            };
            let (log, _) = Log::open(m.at.data_dir.join("shards/1"), config, 0).expect("open log");
            let mut out = Vec::new();
            for b in log.batches_from(Offset(log.earliest_offset().0)).expect("read") {
                if b.header().flags.control() {
                    continue;
                }
                let b = log.clear(&b).expect("a batch this member's keys open");
                for r in b.records().expect("records") {
                    let r = r.expect("record");
                    if r.offset.0 < next {
                        out.push((r.offset.0, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
                    }
                }
            }
            out
        })
        .collect()
}

/// Runs the workload through `faults` (each given the cluster and the
/// current leader), then checks: every acknowledged record is present
/// exactly once at its offset on every replica, and the replicas hold
/// identical records.
/// Returns how many sends failed.
fn faults_keep_acknowledged_records(
    rounds: usize,
    fault: impl Fn(&mut LocalCluster, usize) + Send + Sync + 'static,
) -> usize {
    faults_keep_acknowledged_records_watched(rounds, false, fault)
}

/// Reads shard 0 of `stream` from the start until dropped, recording
/// every delivery (offset, value).
async fn watch(client: Client, stream: String, seen: Arc<Mutex<Vec<(u64, String)>>>) {
    let opts = felix_client::SubscribeOptions {
        shards: vec![0],
        start: felix_client::wire::Start::Earliest,
        ..felix_client::SubscribeOptions::default()
    };
    let mut sub = client.subscribe(&stream, opts).await.expect("subscribe");
    while let Some(d) = sub.next().await {
        let d = d.expect("a subscription resumes across leader changes");
        let v = String::from_utf8(d.record.value.unwrap().to_vec()).unwrap();
        seen.lock().unwrap().push((d.record.offset.0, v));
    }
}

/// [`faults_keep_acknowledged_records`]; with `subscribed`, a subscriber
/// reads the shard throughout and must end up with every record, in
/// order, once.
fn faults_keep_acknowledged_records_watched(
    rounds: usize,
    subscribed: bool,
    fault: impl Fn(&mut LocalCluster, usize) + Send + Sync + 'static,
) -> usize {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/faults";
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        create_when_ready(&client, stream_config(stream, 1)).await;
        client
    });
    let worker = rt.spawn(produce(
        client.clone(),
        stream.into(),
        stop.clone(),
        history.clone(),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = subscribed.then(|| rt.spawn(watch(client.clone(), stream.into(), seen.clone())));
    let mut progress = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(700));
        let leader = rt.block_on(c.leader(&client, stream, 0));
        let i = c.index_of(leader);
        let before = history.lock().unwrap().acked.len();
        let t = Instant::now();
        fault(&mut c, i);
        let faulted = t.elapsed();
        // Writes must resume before the next fault.
        while history.lock().unwrap().acked.len() <= before {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "round {round}: writes did not resume in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        progress.push(before);
        eprintln!(
            "round {round}: fault on leader {leader} for {faulted:?}; writes resumed {:?} after it began ({before} acknowledged before)",
            t.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Release);
    rt.block_on(worker).unwrap();
    let view = rt.block_on(c.converged(stream));
    if let Some(w) = watcher {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (seen.lock().unwrap().len() as u64) < view[0].1 {
            assert!(!w.is_finished(), "the subscription ended");
            assert!(
                Instant::now() < deadline,
                "the subscriber has {} of {} records",
                seen.lock().unwrap().len(),
                view[0].1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w.abort();
    }
    c.stop_all();
    let h = history.lock().unwrap();
    eprintln!(
        "{} acknowledged, {} failed, shard view {view:?}",
        h.acked.len(),
        h.failed
    );
    // Writes resumed after every fault.
    assert!(
        h.acked.len() > progress.last().copied().unwrap_or(0),
        "no write was acknowledged after the last fault"
    );
    let next = view[0].1;
    let replicas = replica_records(&c, next);
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r, &replicas[0], "replica {i} differs from replica 0");
    }
    let at: BTreeMap<u64, &String> = replicas[0].iter().map(|(o, v)| (*o, v)).collect();
    let mut values = std::collections::HashSet::new();
    for (o, v) in &replicas[0] {
        assert!(
            values.insert(v.clone()),
            "value {v} is stored twice (again at offset {o})"
        );
    }
    for (o, v) in &h.acked {
        assert_eq!(at.get(o), Some(&v), "acknowledged {v} at offset {o} is missing");
    }
    // Offsets are dense: one offset, one value.
    assert_eq!(replicas[0].len() as u64, next);
    if subscribed {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.as_slice(),
            replicas[0].as_slice(),
            "the subscriber saw exactly the log, in order, once"
        );
    }
    h.failed
}

#[test]
fn sigkill_of_the_leader_ten_times_loses_and_duplicates_nothing() {
    faults_keep_acknowledged_records(10, |c, i| {
        c.kill(i);
        std::thread::sleep(Duration::from_millis(300));
        c.restart(i);
    });
}

#[test]
fn sigterm_of_the_leader_under_load_hands_over_and_loses_nothing() {
    let failed = faults_keep_acknowledged_records_watched(3, true, |c, i| {
        let (clean, took) = c.terminate(i);
        assert!(clean, "a broker stopped by SIGTERM exits 0");
        eprintln!("SIGTERM: broker exited after {took:?}");
        c.restart(i);
    });
    // Writes during the hand-over were answered NotLeader and retried by
    // the producer at the new leader: none failed.
    assert_eq!(failed, 0, "publishes failed across a graceful stop");
}

#[test]
fn sigstop_of_the_leader_past_its_election_timeout_causes_no_divergence() {
    faults_keep_acknowledged_records(3, |c, i| {
        c.signal(i, "-STOP");
        std::thread::sleep(Duration::from_millis(3_000));
        c.signal(i, "-CONT");
    });
}

#[test]
fn writes_survive_one_lost_follower_and_fail_clearly_without_a_quorum() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/quorum";
    rt.block_on(async {
        let mut cfg = c.client_config();
        cfg.retry.deadline_ms = 10_000;
        let client = Client::connect(cfg).await.unwrap();
        create_when_ready(&client, stream_config(stream, 1)).await;
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        let send = |v: &'static str| {
            let mut r = ProducerRecord::new(v.as_bytes().to_vec());
            r.shard = Some(0);
            r
        };
        assert_eq!(p.send_wait(send("a")).await.unwrap().offset, 0);
        let leader = c.leader(&client, stream, 0).await;
        let followers: Vec<usize> = (0..3).filter(|i| c.members[*i].at.id != leader).collect();
        c.kill(followers[0]);
        assert_eq!(
            p.send_wait(send("b")).await.unwrap().offset,
            1,
            "one follower down: writes go on"
        );
        c.kill(followers[1]);
        let t = Instant::now();
        let err = p
            .send_wait(send("c"))
            .await
            .expect_err("no quorum: the write must fail");
        let took = t.elapsed();
        eprintln!("without a quorum: {err} after {took:?}");
        assert!(took < Duration::from_secs(25), "the failure took {took:?}");
        assert!(
            matches!(
                &*err,
                ClientError::RetriesExhausted { .. } | ClientError::Broker(_) | ClientError::Timeout(_)
            ),
            "{err:?}"
        );
        c.restart(followers[0]);
        c.restart(followers[1]);
        let d = p.send_wait(send("d")).await.unwrap();
        // "c" may or may not have landed (its outcome was unknown); "d"
        // comes after whatever did.
        assert!(d.offset == 2 || d.offset == 3, "{d:?}");
        client.close().await;
    });
    let view = rt.block_on(c.converged(stream));
    c.stop_all();
    let replicas = replica_records(&c, view[0].1);
    for r in &replicas {
        assert_eq!(r, &replicas[0]);
    }
    let values: Vec<&str> = replicas[0].iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(&values[..2], &["a", "b"], "acknowledged records survive");
    assert_eq!(values.last(), Some(&"d"));
}

fn record(v: String) -> ProducerRecord {
    let mut r = ProducerRecord::new(v.into_bytes());
    r.shard = Some(0);
    r
}

#[test]
fn a_lease_lost_with_its_leader_is_redelivered_and_acked_records_never_are() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/jobs";
    rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        create_when_ready(&client, stream_config(stream, 1)).await;
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        for i in 0..3 {
            assert_eq!(p.send_wait(record(format!("job{i}"))).await.unwrap().offset, i);
        }
        let g = client.group_consumer(stream, "workers");
        let first = g.fetch(1, 60_000).await.unwrap().records;
        assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0]);
        g.ack(&[(0, 0)]).await.unwrap();
        let second = g.fetch(1, 1_500).await.unwrap().records;
        assert_eq!(second.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1]);
        // The leader that granted the lease dies before the ack.
        let leader = c.leader(&client, stream, 0).await;
        c.kill(c.index_of(leader));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < 2 {
            assert!(Instant::now() < deadline, "no redelivery; got {got:?}");
            match g.fetch(3, 60_000).await {
                Ok(l) => got.extend(l.records.into_iter().map(|r| (r.offset, r.deliveries))),
                Err(e) => eprintln!("fetch during failover: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        got.sort();
        assert_eq!(
            got,
            vec![(1, 2), (2, 1)],
            "record 1 redelivered (second delivery), record 2 new, record 0 never again"
        );
        g.ack(&[(0, 1), (0, 2)]).await.unwrap();
        assert!(
            g.fetch(3, 1_000).await.unwrap().records.is_empty(),
            "everything was acked"
        );
        client.close().await;
    });
}

#[test]
fn a_follower_behind_the_leaders_retention_catches_up_by_snapshot() {
    snapshot_catch_up(false);
}

/// The same with encryption at rest: entries, the snapshot and every
/// replica's segments carry the tenant's records sealed only.
#[test]
fn an_encrypted_follower_catches_up_by_snapshot_and_no_replica_holds_a_record_in_the_clear() {
    snapshot_catch_up(true);
}

/// Publishes to a stream of its own until a record is on no broker's
/// disk in the clear: the tenant's data key seals (it does from
/// `KEY_ACTIVATION_MS` after the control plane made it).
async fn until_sealing(c: &LocalCluster, client: &Client) {
    let probe_stream = "dev/default/probe";
    create_when_ready(client, stream_config(probe_stream, 1)).await;
    let p = client
        .producer(probe_stream, ProducerConfig::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        let probe = format!("probe-{i}-of-the-switch");
        p.send_wait(record(probe.clone())).await.unwrap();
        if !c
            .members
            .iter()
            .any(|m| common::holds(&m.at.data_dir.join("shards"), probe.as_bytes()))
        {
            return;
        }
        assert!(Instant::now() < deadline, "still written in the clear after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn snapshot_catch_up(encrypted: bool) {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut extra =
        "maintenance_interval_ms = 200\n[log]\nsegment_bytes = 65536\nbatch_bytes_max = 16384\n".to_string();
    if encrypted {
        extra = LocalCluster::encrypted(dir.path(), &extra);
    }
    let mut c = LocalCluster::start(dir.path(), 3, &extra);
    let stream = "dev/default/retained";
    let pad = "x".repeat(1000);
    let (leader, follower) = rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        let mut cfg = stream_config(stream, 1);
        cfg.retention_bytes = Some(200_000);
        create_when_ready(&client, cfg).await;
        if encrypted {
            until_sealing(&c, &client).await;
        }
        // A batch above the log's limit is refused and nothing breaks.
        let big_cfg = ProducerConfig {
            linger_ms: 500,
            ..ProducerConfig::default()
        };
        let big = client.producer(stream, big_cfg).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..40 {
            pending.push(big.send(record(format!("big{i}{pad}"))).await.unwrap());
        }
        for a in pending {
            let refused = a.wait().await.expect_err("a 40 KB batch is above 16 KiB");
            assert!(refused.to_string().contains("batch_bytes_max"), "{refused}");
        }
        let p = client
            .producer(
                stream,
                ProducerConfig {
                    batch_bytes_max: 12_000,
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
        for i in 0..50 {
            p.send_wait(record(format!("{i:05}{pad}"))).await.unwrap();
        }
        let leader = c.leader(&client, stream, 0).await;
        let follower = (0..3).find(|i| c.members[*i].at.id != leader).unwrap();
        c.kill(follower);
        let mut acks = Vec::new();
        for i in 50..1500 {
            acks.push(p.send(record(format!("{i:05}{pad}"))).await.unwrap());
        }
        for a in acks {
            a.wait().await.unwrap();
        }
        // Retention on the leader removes what the follower lacks.
        let li = c.index_of(leader);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = c.shard_view(li, stream).await;
            if v.as_ref().is_some_and(|v| v[0].0 > 100) {
                eprintln!("leader after retention: {v:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "retention did not run on the leader: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client.close().await;
        (li, follower)
    });
    c.restart(follower);
    let (earliest_leader, next) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let l = c.shard_view(leader, stream).await;
            let f = c.shard_view(follower, stream).await;
            if let (Some(l), Some(f)) = (&l, &f) {
                if l[0].1 == f[0].1 && f[0].1 == 1500 {
                    eprintln!("caught up: leader {l:?}, follower {f:?}");
                    break (l[0].0, l[0].1);
                }
            }
            assert!(
                Instant::now() < deadline,
                "the follower did not catch up: leader {l:?}, follower {f:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    c.stop_all();
    let replicas = replica_records(&c, next);
    let f = &replicas[follower];
    // The leader no longer holds offsets 50..earliest as entries, so the
    // follower, down since offset 50, can only have them from a snapshot.
    assert!(earliest_leader > 50, "{earliest_leader}");
    assert!(
        replicas[leader]
            .first()
            .is_some_and(|(o, _)| *o >= earliest_leader),
        "the leader's log starts at its retention point"
    );
    assert!(
        f.iter().any(|(o, _)| *o > 50 && *o < earliest_leader) || f.first().is_some_and(|(o, _)| *o >= 50),
        "the follower holds what only a snapshot could give it"
    );
    let offsets: Vec<u64> = f.iter().map(|(o, _)| *o).collect();
    let first = offsets[0];
    assert_eq!(
        offsets,
        (first..1500).collect::<Vec<_>>(),
        "dense offsets on the follower"
    );
    // Where both hold records, they hold the same ones.
    let l: BTreeMap<u64, &String> = replicas[leader].iter().map(|(o, v)| (*o, v)).collect();
    for (o, v) in f {
        if *o >= earliest_leader {
            assert_eq!(l.get(o), Some(&v), "offset {o}");
        }
        assert_eq!(&v[..5], format!("{o:05}"), "offset {o} holds its own record");
    }
    assert_eq!(f.last().map(|(o, _)| *o), Some(1499));
    // The tenant's records on each replica's disk: in the clear without
    // encryption (so the search finds them), nowhere with it.
    let marker = format!("01499{}", &pad[..64]);
    for m in &c.members {
        assert_eq!(
            common::holds(&m.at.data_dir.join("shards"), marker.as_bytes()),
            !encrypted,
            "broker {}",
            m.at.id
        );
    }
}

/// The Raft node id in a broker's `identity.json`.
fn identity_of(c: &LocalCluster, i: usize) -> String {
    std::fs::read_to_string(c.members[i].at.data_dir.join("identity.json")).expect("identity.json")
}

/// A broker whose data directory is lost comes back under a new identity:
/// it registers its new node id with the control plane and is admitted to
/// the shard's group in place of its lost incarnation, catches up, and then carries quorums, for old
/// shards and for a stream created afterwards. Nothing acknowledged is lost.
#[test]
fn a_broker_rebuilt_from_an_empty_disk_joins_under_a_new_identity() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/rebuilt";
    let mut acked = Vec::new();
    let client = rt.block_on(async {
        let mut cfg = c.client_config();
        cfg.retry.deadline_ms = 20_000;
        let client = Client::connect(cfg).await.unwrap();
        create_when_ready(&client, stream_config(stream, 1)).await;
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        for i in 0..100 {
            acked.push(p.send_wait(record(format!("a{i}"))).await.unwrap().offset);
        }
        client
    });
    let victim = 2;
    let old = identity_of(&c, victim);
    c.kill(victim);
    c.wipe(victim);
    c.restart(victim);
    let new = identity_of(&c, victim);
    assert_ne!(old, new, "a rebuilt directory draws a new incarnation");
    let rebuilt_id = c.members[victim].at.id;
    rt.block_on(async {
        // The rebuilt broker lists itself among the shard's replicas once
        // it is admitted to the shard's group.
        let mine = Client::connect(c.member_config(victim)).await.unwrap();
        let t = Instant::now();
        loop {
            let ask = felix_client::wire::Message::Metadata {
                streams: vec![stream.to_owned()],
            };
            let at = c.members[victim].at.client.to_string();
            let replicas = match mine.call(felix_client::Route::Broker(&at), &ask).await {
                Ok(felix_client::wire::Message::MetadataReply { streams, .. }) => {
                    streams[0].shards[0].replicas.clone()
                }
                _ => Vec::new(),
            };
            if replicas.contains(&rebuilt_id) {
                eprintln!(
                    "rebuilt broker admitted after {:?}: replicas {replicas:?}",
                    t.elapsed()
                );
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not admitted: {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        mine.close().await;
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        for i in 100..200 {
            acked.push(p.send_wait(record(format!("a{i}"))).await.unwrap().offset);
        }
    });
    let view = rt.block_on(c.converged(stream));
    assert_eq!(view[0].1, 200, "the rebuilt broker holds every record");
    // Without one of the original brokers, quorums need the rebuilt one:
    // the shard's group, and a new stream's groups.
    c.kill(0);
    rt.block_on(async {
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        for i in 200..250 {
            acked.push(p.send_wait(record(format!("a{i}"))).await.unwrap().offset);
        }
        create_when_ready(&client, stream_config("dev/default/after", 1)).await;
        let q = client
            .producer("dev/default/after", ProducerConfig::default())
            .await
            .unwrap();
        q.send_wait(record("after".into())).await.unwrap();
        client.close().await;
    });
    c.stop_all();
    let replicas = replica_records(&c, 250);
    assert_eq!(replicas[1], replicas[2], "the survivors hold identical records");
    let offsets: Vec<u64> = replicas[2].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, acked, "every acknowledged record, once, at its offset");
    assert_eq!(replicas[2].last().map(|(_, v)| v.as_str()), Some("a249"));
}

/// A consumer group over a stream whose shards are led by different
/// brokers receives every shard's records, each once, and its acks reach
/// every leader.
#[test]
fn a_group_consumes_shards_led_by_different_brokers() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/spread";
    rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        create_when_ready(&client, stream_config(stream, 3)).await;
        let mut leaders = std::collections::BTreeSet::new();
        for shard in 0..3 {
            leaders.insert(c.leader(&client, stream, shard).await);
        }
        eprintln!("shard leaders: {leaders:?}");
        assert!(leaders.len() > 1, "founders spread the shards' leaders");
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        let mut sent = std::collections::BTreeSet::new();
        for i in 0..60u32 {
            let mut r = ProducerRecord::new(format!("job{i}").into_bytes());
            r.shard = Some(i % 3);
            let a = p.send_wait(r).await.unwrap();
            sent.insert((i % 3, a.offset));
        }
        let g = client.group_consumer(stream, "workers");
        let mut got = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < sent.len() {
            assert!(
                Instant::now() < deadline,
                "only {} of {} delivered",
                got.len(),
                sent.len()
            );
            let leased = g.fetch(25, 60_000).await.unwrap().records;
            let items: Vec<(u32, u64)> = leased.iter().map(|r| (r.shard, r.offset)).collect();
            for it in &items {
                assert!(got.insert(*it), "{it:?} delivered twice");
            }
            if !items.is_empty() {
                g.ack(&items).await.unwrap();
            }
        }
        assert_eq!(got, sent);
        // Every shard's acks landed with its own leader: nothing comes back.
        let again = g.fetch(100, 1_000).await.unwrap().records;
        assert!(again.is_empty(), "acked records redelivered: {again:?}");
        client.close().await;
    });
}

fn cluster_status(profile: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(["cluster", "status", "--output", "json", "--profile"])
        .arg(profile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// `felix cluster status` asks every broker: leaders, per-replica lag, a
/// broker down and the shards it leaves under-replicated.
#[test]
fn cluster_status_reports_leaders_lag_and_a_broker_down() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let stream = "dev/default/watched";
    rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        create_when_ready(&client, stream_config(stream, 2)).await;
        let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
        for i in 0..40u32 {
            let mut r = ProducerRecord::new(format!("r{i}").into_bytes());
            r.shard = Some(i % 2);
            p.send_wait(r).await.unwrap();
        }
        for shard in 0..2 {
            c.leader(&client, stream, shard).await;
        }
        client.close().await;
    });
    rt.block_on(c.converged(stream));
    let profiles: Vec<std::path::PathBuf> = c
        .members
        .iter()
        .map(|m| m.at.data_dir.join("client.toml"))
        .collect();
    let profile = |i: usize| profiles[i].clone();
    let s = cluster_status(&profile(0));
    assert_eq!(s["brokers"].as_array().unwrap().len(), 3, "{s}");
    assert!(
        s["brokers"].as_array().unwrap().iter().all(|b| b["up"] == true),
        "{s}"
    );
    let shards: Vec<&serde_json::Value> = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["stream"] == stream)
        .collect();
    assert_eq!(shards.len(), 2, "{s}");
    for sh in &shards {
        assert!(sh["leader"].is_u64(), "{sh}");
        assert_eq!(sh["end"], 20, "{sh}");
        assert_eq!(sh["replicas"], serde_json::json!([1, 2, 3]), "{sh}");
        assert!(
            sh["lag"].as_array().unwrap().iter().all(|l| l["records"] == 0),
            "{sh}"
        );
        assert_eq!(sh["under_replicated"], false, "{sh}");
    }
    assert_eq!(s["without_leader"], 0);

    // Broker 3 goes: it shows down, every shard it replicated is
    // under-replicated, and each shard still has a leader.
    c.kill(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = cluster_status(&profile(0));
        if s["without_leader"] == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "shards stayed without a leader: {s}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let down: Vec<&serde_json::Value> = s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["up"] == false)
        .collect();
    assert_eq!(down.len(), 1, "{s}");
    assert_eq!(down[0]["id"], 3);
    let under = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["stream"] == stream && x["under_replicated"] == true)
        .count();
    assert_eq!(under, 2, "{s}");

    // `stream describe` takes each shard's figures from its leader.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(["stream", "describe", stream, "--output", "json", "--profile"])
        .arg(profile(1))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let latest: Vec<u64> = d["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["latest"].as_u64().unwrap())
        .collect();
    assert_eq!(latest, vec![20, 20], "{d}");
    c.stop_all();
}

/// A leader whose followers stopped answering does not answer cache gets
/// from its own state once its read lease has run out: a new leader could
/// be taking writes it has not seen (the fault suite's partitions caught a
/// deposed leader serving stale gets). With the followers back, gets are
/// answered again.
#[test]
fn a_leader_cut_off_from_its_followers_stops_answering_cache_gets() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let c = LocalCluster::start(dir.path(), 3, "");
    let name = "dev/default/kv";
    rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        create_when_ready(
            &client,
            felix_client::wire::StreamConfig {
                kind: felix_client::wire::StreamKind::Cache,
                ..stream_config(name, 1)
            },
        )
        .await;
        client.cache(name).put("k", "v1", None).await.unwrap();
        let leader = c.index_of(c.leader(&client, name, 0).await);
        let mut cfg = c.member_config(leader);
        cfg.retry.attempts_max = 1;
        let direct = Client::connect(cfg).await.unwrap();
        let e = direct.cache(name).get("k").await.unwrap().unwrap();
        assert_eq!(e.value, "v1", "the leader answers while its followers do");
        let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        for f in &followers {
            c.signal(*f, "-STOP");
        }
        // Past the read lease (350 ms with the default timing).
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let stale = direct.cache(name).get("k").await;
        for f in &followers {
            c.signal(*f, "-CONT");
        }
        assert!(
            stale.is_err(),
            "a leader without a quorum answered a get from its own state: {stale:?}"
        );
        eprintln!("get without a quorum: {}", stale.unwrap_err());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.cache(name).get("k").await {
                Ok(Some(e)) => {
                    assert_eq!(e.value, "v1");
                    break;
                }
                r => assert!(Instant::now() < deadline, "gets did not resume: {r:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client.close().await;
        direct.close().await;
    });
}

/// Every value in the non-control records of every shard log under member
/// `i`'s data directory (read after the cluster stopped).
fn all_values(c: &LocalCluster, i: usize) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for dir in std::fs::read_dir(c.members[i].at.data_dir.join("shards")).expect("shards dir") {
        let dir = dir.expect("entry").path();
        let (log, _) = Log::open(&dir, LogConfig::default(), 0).expect("open log");
        for b in log.batches_from(Offset(log.earliest_offset().0)).expect("read") {
            if b.header().flags.control() {
                continue;
            }
            for r in b.records().expect("records") {
                let r = r.expect("record");
                out.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
    }
    out
}

/// Issue 25's failover and restart tests at CI size: three streams of
/// 1,024 shards (3,072 groups on three brokers). A broker leading about a
/// third of them is SIGKILLed: both others name a live leader for every
/// shard and every shard takes writes. It is restarted: it names a leader
/// for every shard again, and its own logs hold every record
/// acknowledged before, during and after its absence.
#[test]
fn a_broker_with_thousands_of_shards_fails_over_restarts_and_loses_nothing() {
    const SHARDS: u32 = 1024;
    const STREAMS: [&str; 3] = ["dev/default/many-0", "dev/default/many-1", "dev/default/many-2"];
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = LocalCluster::start(dir.path(), 3, "");
    let victim = 2;
    let victim_id = c.members[victim].at.id;
    let acked = rt.block_on(async {
        let client = Client::connect(c.client_config()).await.unwrap();
        let mut acked = BTreeMap::new();
        for stream in STREAMS {
            create_when_ready(&client, stream_config(stream, SHARDS)).await;
            write_every_shard(&client, stream, "before", &mut acked).await;
        }
        client.close().await;
        acked
    });
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let led = rt.block_on(leaders_named(&c, survivors[0], &STREAMS, |_| true));
    c.kill(victim);
    let t = Instant::now();
    let acked = rt.block_on(async {
        for &i in &survivors {
            let live = leaders_named(&c, i, &STREAMS, |l| l != victim_id);
            tokio::time::timeout(Duration::from_secs(120), live)
                .await
                .unwrap_or_else(|_| {
                    panic!("broker {i} named no live leader for some shard 120 s after the kill")
                });
        }
        eprintln!(
            "failover of {} of {} groups: every shard named a live leader after {:?}",
            led.iter().filter(|l| **l == victim_id).count(),
            led.len(),
            t.elapsed()
        );
        let client = Client::connect(c.client_config()).await.unwrap();
        let mut acked = acked;
        for stream in STREAMS {
            write_every_shard(&client, stream, "during", &mut acked).await;
        }
        client.close().await;
        acked
    });
    let t = Instant::now();
    c.restart(victim);
    let acked = rt.block_on(async {
        // The restarted broker's own answer: a leader for every shard.
        let own = leaders_named(&c, victim, &STREAMS, |_| true);
        tokio::time::timeout(Duration::from_secs(120), own)
            .await
            .expect("the restarted broker names a leader for every shard within 120 s");
        eprintln!("restart to a leader named for every shard: {:?}", t.elapsed());
        let client = Client::connect(c.client_config()).await.unwrap();
        let mut acked = acked;
        for stream in STREAMS {
            write_every_shard(&client, stream, "after", &mut acked).await;
        }
        client.close().await;
        for stream in STREAMS {
            c.converged(stream).await;
        }
        acked
    });
    c.stop_all();
    let held = all_values(&c, victim);
    let missing: Vec<_> = acked.values().filter(|v| !held.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records missing on the restarted broker, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

/// Asks member `i` for the leaders of `streams`' shards until it names
/// one that `ok` accepts for every shard, and returns them (broker ids).
async fn leaders_named(c: &LocalCluster, i: usize, streams: &[&str], ok: impl Fn(u64) -> bool) -> Vec<u64> {
    let address = c.members[i].at.client.to_string();
    let own = Client::connect(c.member_config(i)).await.unwrap();
    let ask = felix_client::wire::Message::Metadata {
        streams: streams.iter().map(|s| s.to_string()).collect(),
    };
    loop {
        if let Ok(felix_client::wire::Message::MetadataReply { streams, .. }) =
            own.call(felix_client::Route::Broker(&address), &ask).await
        {
            let leaders: Vec<Option<u64>> =
                streams.iter().flat_map(|s| &s.shards).map(|s| s.leader).collect();
            if !leaders.is_empty() && leaders.iter().all(|l| l.is_some_and(&ok)) {
                own.close().await;
                return leaders.into_iter().flatten().collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one record to every shard of `stream` and waits for all the
/// acknowledgements, recording (stream, shard, offset) → value.
async fn write_every_shard(
    client: &Client,
    stream: &str,
    tag: &str,
    acked: &mut BTreeMap<(String, u32, u64), String>,
) {
    let p = client.producer(stream, ProducerConfig::default()).await.unwrap();
    let mut pending = Vec::new();
    for shard in 0..p.shards() {
        let v = format!("{stream}-{tag}-{shard}");
        let mut r = ProducerRecord::new(v.clone().into_bytes());
        r.shard = Some(shard);
        pending.push((v, p.send(r).await.unwrap()));
    }
    for (v, ack) in pending {
        let a = ack.wait().await.unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(acked.insert((stream.to_owned(), a.shard, a.offset), v).is_none());
    }
    p.close().await.unwrap();
}
