//! End to end: `felix dev` as a real process, real QUIC, the client
//! library; crashes are SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin, create, dev_broker, read_n, rt, stream_config, Broker};
use felix_client::wire::{ErrorReply, Message, Start};
use felix_client::{CasOutcome, ClientError, ProducerConfig, ProducerRecord, SubscribeOptions};

/// A lease, nack delay or TTL no test step could outlast by accident: the
/// tests move the broker's clock past it instead of waiting it out.
const LONG_MS: u32 = 600_000;

/// Moves the clock of a broker started with `FELIX_CLOCK_SKEW_FILE=path`
/// `offset_ms` ahead of the wall clock (written whole, then renamed, so the
/// broker never reads half a number). The broker re-reads the file every
/// 50 ms; callers poll for the effect.
fn move_clock(path: &Path, offset_ms: i64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, offset_ms.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The environment that makes a broker read its clock offset from `path`.
fn skewed(path: &Path) -> [(&'static str, &str); 1] {
    [("FELIX_CLOCK_SKEW_FILE", path.to_str().expect("a UTF-8 path"))]
}

/// Fetches until a fetch leases something (a moved clock reaches the broker
/// within its re-read interval), for at most 30 s.
async fn fetch_until_leased(
    g: &felix_client::GroupConsumer,
    max_records: u32,
    lease_ms: u32,
) -> felix_client::Leased {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = g.fetch(max_records, lease_ms).await.unwrap();
        if !got.records.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "nothing came back within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn acknowledged_records_replay_in_order_at_the_same_offsets_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut b = Broker::start(dir.path());
    let acked: BTreeMap<(u32, u64), Bytes> = rt.block_on(async {
        let c = b.client().await;
        create(&c, stream_config("orders", 3)).await;
        let p = c.producer("orders", ProducerConfig::default()).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..600u32 {
            let v = Bytes::from(format!("order-{i}"));
            let r = ProducerRecord::keyed(format!("customer-{}", i % 17), v.clone());
            pending.push((v, p.send(r).await.unwrap()));
        }
        let mut acked = BTreeMap::new();
        for (v, a) in pending {
            let a = a.wait().await.expect("acked");
            assert!(
                acked.insert((a.shard, a.offset), v).is_none(),
                "an offset acked twice"
            );
        }
        acked
    });
    b.kill();
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        for shard in 0..3u32 {
            let want: Vec<(u64, Bytes)> = acked
                .iter()
                .filter(|((s, _), _)| *s == shard)
                .map(|((_, o), v)| (*o, v.clone()))
                .collect();
            assert!(!want.is_empty(), "keys spread over every shard");
            let got = read_n(&c, "orders", shard, Start::Earliest, want.len()).await;
            assert_eq!(got, want, "shard {shard} replays what was acknowledged, in order");
        }
        // Keyed routing: one key, one shard.
        let (_, streams) = match admin(
            &c,
            Message::Metadata {
                streams: vec!["orders".into()],
            },
        )
        .await
        {
            Message::MetadataReply { brokers, streams } => (brokers, streams),
            m => panic!("{m:?}"),
        };
        assert_eq!(streams[0].shards.len(), 3);
    });
}

#[test]
fn leased_but_unacked_records_are_redelivered_after_sigkill_and_acked_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tempfile::tempdir().unwrap();
    let skew = clock.path().join("skew-ms");
    let rt = rt();
    let mut b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        create(&c, stream_config("jobs", 1)).await;
        let p = c.producer("jobs", ProducerConfig::default()).await.unwrap();
        for i in 0..4 {
            p.send_wait(ProducerRecord::new(format!("job-{i}")))
                .await
                .unwrap();
        }
        let g = c.group_consumer("jobs", "workers");
        let got = g.fetch(2, LONG_MS).await.unwrap();
        let offsets: Vec<u64> = got.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 1]);
        assert!(got.records.iter().all(|r| r.deliveries == 1));
        g.ack(&[(0, 0)]).await.unwrap();
        // Another consumer of the group cannot take what is leased.
        let other = c.group_consumer("jobs", "workers");
        let got2 = other.fetch(10, LONG_MS).await.unwrap();
        let o2: Vec<u64> = got2.records.iter().map(|r| r.offset).collect();
        assert_eq!(o2, vec![2, 3], "no two consumers hold the same record");
        other.ack(&[(0, 2), (0, 3)]).await.unwrap();
        // A consumer that does not hold a lease cannot nack it.
        let e = other.nack(&[(0, 1)], 0).await.unwrap_err();
        assert!(e.to_string().contains("not leased to this consumer"), "{e}");
    });
    b.kill();
    let b = Broker::start_with(dir.path(), &skewed(&skew));
    rt.block_on(async {
        let c = b.client().await;
        let g = c.group_consumer("jobs", "workers");
        let got = g.fetch(10, 30_000).await.unwrap();
        assert!(got.records.is_empty(), "offset 1's lease has not expired yet");
        // Past the lease by the broker's clock: offset 1 comes back.
        move_clock(&skew, i64::from(LONG_MS) + 1_000);
        let got = fetch_until_leased(&g, 10, 30_000).await;
        let o: Vec<(u64, u32)> = got.records.iter().map(|r| (r.offset, r.deliveries)).collect();
        assert_eq!(
            o,
            vec![(1, 2)],
            "only the unacked record comes back, second delivery"
        );
        g.ack(&[(0, 1)]).await.unwrap();
        assert!(g.fetch(10, 1000).await.unwrap().records.is_empty());
    });
}

#[test]
fn nacked_records_come_back_after_the_delay_and_dead_letter_after_max_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tempfile::tempdir().unwrap();
    let skew = clock.path().join("skew-ms");
    let rt = rt();
    let b = Broker::start_with(dir.path(), &skewed(&skew));
    rt.block_on(async {
        let c = b.client().await;
        let mut cfg = stream_config("tasks", 1);
        cfg.max_deliveries = 2;
        create(&c, cfg).await;
        let p = c.producer("tasks", ProducerConfig::default()).await.unwrap();
        p.send_wait(ProducerRecord::keyed("t", "poison")).await.unwrap();
        p.send_wait(ProducerRecord::keyed("t", "fine")).await.unwrap();
        let g = c.group_consumer("tasks", "g");
        let first = g.fetch(1, 10_000).await.unwrap();
        assert_eq!(first.records[0].value, "poison");
        g.nack(&[(0, 0)], LONG_MS).await.unwrap();
        let got = g.fetch(1, 10_000).await.unwrap();
        assert_eq!(
            got.records[0].value, "fine",
            "a nacked record waits out its delay"
        );
        g.ack(&[(0, 1)]).await.unwrap();
        // Past the delay by the broker's clock: the nacked record is back.
        move_clock(&skew, i64::from(LONG_MS) + 1_000);
        let again = fetch_until_leased(&g, 1, 10_000).await;
        assert_eq!((again.records[0].offset, again.records[0].deliveries), (0, 2));
        g.nack(&[(0, 0)], 0).await.unwrap();
        // Third time: past max_deliveries, dead-lettered instead.
        let none = g.fetch(5, 10_000).await.unwrap();
        assert!(none.records.is_empty(), "{none:?}");
        let opts = SubscribeOptions::starting(Start::Earliest);
        let mut dlq = c.subscribe("tasks.dlq", opts).await.unwrap();
        let d = dlq.next().await.unwrap().unwrap();
        assert_eq!(d.record.value.as_deref(), Some(&b"poison"[..]));
        assert_eq!(d.record.key.as_deref(), Some(&b"t"[..]));
        let reason = d
            .record
            .headers
            .iter()
            .find(|(k, _)| k.as_ref() == b"felix-dlq-reason")
            .expect("reason header");
        assert!(std::str::from_utf8(&reason.1)
            .unwrap()
            .contains("max_deliveries (2)"));
        let source = d
            .record
            .headers
            .iter()
            .find(|(k, _)| k.as_ref() == b"felix-dlq-source")
            .unwrap();
        assert_eq!(&source.1[..], b"dev/default/tasks/0/0");
        assert!(g.fetch(5, 1000).await.unwrap().records.is_empty());
        // Dead-lettered exactly once, even by the fetch after it: the
        // dead-letter shard ends at 1.
        let scrape = metrics_text(&reqwest::Client::new(), &b.profile.admin[0]).await;
        assert_eq!(
            series(
                &scrape,
                "felix_shard_log_end_offset{stream=\"dev/default/tasks.dlq\",shard=\"0\"}"
            ),
            Some(1.0),
            "dead-lettered exactly once"
        );
    });
}

/// The dead letter and the ack that follows it are two writes; a crash
/// between them (the failpoint SIGKILLs the broker there) leaves the record
/// unacked, so the next fetch dead-letters it again. That second attempt
/// must find the first in the dead-letter stream's producer windows, which
/// the restarted broker rebuilt from its log.
#[test]
fn a_dead_letter_whose_ack_was_lost_to_a_crash_is_written_once() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut b = Broker::start_with(dir.path(), &[("FELIX_FAILPOINT", "queue.dead_lettered")]);
    let g = rt.block_on(async {
        let c = b.client().await;
        let mut cfg = stream_config("jobs", 1);
        cfg.max_deliveries = 1;
        create(&c, cfg).await;
        let p = c.producer("jobs", ProducerConfig::default()).await.unwrap();
        for v in ["poison", "bad"] {
            p.send_wait(ProducerRecord::keyed("j", v)).await.unwrap();
        }
        let g = c.group_consumer("jobs", "g");
        assert_eq!(g.fetch(2, 10_000).await.unwrap().records.len(), 2);
        g.nack(&[(0, 0), (0, 1)], 0).await.unwrap();
        g
    });
    // This fetch dead-letters both and dies before acking them (its client
    // would retry for a long while: it is abandoned).
    let dying = rt.spawn(async move { g.fetch(2, 10_000).await });
    let status = b.wait_exit();
    dying.abort();
    assert_eq!(
        status.signal(),
        Some(9),
        "the failpoint kills the broker: {status}"
    );
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        let g = c.group_consumer("jobs", "g");
        let none = g.fetch(2, 10_000).await.unwrap();
        assert!(
            none.records.is_empty(),
            "dead-lettered again, and acked: {none:?}"
        );
        let opts = SubscribeOptions::starting(Start::Earliest);
        let mut dlq = c.subscribe("jobs.dlq", opts).await.unwrap();
        // The dead letters of one fetch are proposed concurrently (so that
        // they share a Raft entry): their order is not a promise, their
        // number is (each carries its source in `felix-dlq-source`).
        let mut got = Vec::new();
        while got.len() < 2 {
            let d = tokio::time::timeout(Duration::from_secs(30), dlq.next())
                .await
                .expect("two dead letters within 30 s")
                .unwrap()
                .unwrap();
            got.push((d.record.offset.0, d.record.value.unwrap()));
        }
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1]);
        let mut values: Vec<Bytes> = got.into_iter().map(|g| g.1).collect();
        values.sort();
        assert_eq!(
            values,
            vec![Bytes::from("bad"), Bytes::from("poison")],
            "each record dead-lettered once"
        );
        // Nothing beyond them: the dead-letter shard ends at 2.
        let scrape = metrics_text(&reqwest::Client::new(), &b.profile.admin[0]).await;
        assert_eq!(
            series(
                &scrape,
                "felix_shard_log_end_offset{stream=\"dev/default/jobs.dlq\",shard=\"0\"}"
            ),
            Some(2.0),
            "each record dead-lettered once"
        );
    });
}

/// A stream whose name is as long as names go still gets a dead-letter
/// stream; and a dead letter that cannot be written (a record so close to
/// the batch limit that the dead-letter headers push it over) does not
/// stall the group: the fetch serves the records behind it, and the dead
/// record is never delivered again.
#[test]
fn dead_letters_of_the_longest_name_and_an_unwritable_one_does_not_stall_the_group() {
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        let long = "x".repeat(64);
        let mut cfg = stream_config(&long, 1);
        cfg.max_deliveries = 1;
        create(&c, cfg).await;
        let p = c.producer(&long, ProducerConfig::default()).await.unwrap();
        p.send_wait(ProducerRecord::keyed("k", "poison")).await.unwrap();
        let g = c.group_consumer(&long, "g");
        assert_eq!(g.fetch(1, 10_000).await.unwrap().records.len(), 1);
        g.nack(&[(0, 0)], 0).await.unwrap();
        assert!(g.fetch(1, 10_000).await.unwrap().records.is_empty());
        let opts = SubscribeOptions::starting(Start::Earliest);
        let mut dlq = c.subscribe(&format!("{long}.dlq"), opts.clone()).await.unwrap();
        let d = dlq.next().await.unwrap().unwrap();
        assert_eq!(d.record.value.as_deref(), Some(&b"poison"[..]));

        let mut cfg = stream_config("big", 1);
        cfg.max_deliveries = 1;
        create(&c, cfg).await;
        let p = c.producer("big", ProducerConfig::default()).await.unwrap();
        let huge = Bytes::from(vec![b'h'; (1 << 20) - 150]);
        p.send_wait(ProducerRecord::keyed("k", huge)).await.unwrap();
        let g = c.group_consumer("big", "g");
        assert_eq!(g.fetch(1, 10_000).await.unwrap().records.len(), 1);
        g.nack(&[(0, 0)], 0).await.unwrap();
        p.send_wait(ProducerRecord::keyed("k", "next")).await.unwrap();
        // The dead letter of offset 0 does not fit a batch; the fetch
        // still answers, with the record behind it.
        let got = g.fetch(5, 10_000).await.unwrap();
        let offsets: Vec<u64> = got.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1], "{got:?}");
        g.ack(&[(0, 1)]).await.unwrap();
        let again = g.fetch(5, 1_000).await.unwrap();
        assert!(
            again.records.is_empty(),
            "the dead record is not delivered again: {again:?}"
        );
        let admin = b
            .profile
            .admin
            .first()
            .expect("felix dev serves /metrics")
            .clone();
        let scrape = metrics_text(&reqwest::Client::new(), &admin).await;
        let failures = series(&scrape, "felix_dead_letter_failures_total").unwrap_or(0.0);
        assert!(failures >= 2.0, "each fetch counted its failure: {failures}");
    });
}

#[test]
fn cache_versions_cas_ttl_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tempfile::tempdir().unwrap();
    let skew = clock.path().join("skew-ms");
    let rt = rt();
    let mut b = Broker::start_with(dir.path(), &skewed(&skew));
    rt.block_on(async {
        let c = b.client().await;
        let mut cfg = stream_config("sessions", 2);
        cfg.kind = felix_client::wire::StreamKind::Cache;
        create(&c, cfg).await;
        let cache = c.cache("sessions");
        assert_eq!(cache.get("nobody").await.unwrap(), None);
        let v1 = cache.put("u1", "a", None).await.unwrap();
        assert!(v1 >= 1, "versions are never 0");
        let e = cache.get("u1").await.unwrap().unwrap();
        assert_eq!((e.value.as_ref(), e.version), (&b"a"[..], v1));
        // Compare-and-set: only-if-absent fails on a present key.
        match cache.put_if_version("u1", "b", None, 0).await.unwrap() {
            CasOutcome::Conflict(Some(cur)) => assert_eq!(cur.version, v1),
            o => panic!("{o:?}"),
        }
        let v2 = match cache.put_if_version("u1", "b", None, v1).await.unwrap() {
            CasOutcome::Written(v) => v,
            o => panic!("{o:?}"),
        };
        assert!(v2 > v1);
        assert!(matches!(
            cache.put_if_version("u1", "c", None, v1).await.unwrap(),
            CasOutcome::Conflict(_)
        ));
        // TTL: a miss once it passes (by the broker's clock, moved past it).
        cache
            .put("short", "lived", Some(u64::from(LONG_MS)))
            .await
            .unwrap();
        assert!(cache.get("short").await.unwrap().is_some());
        move_clock(&skew, i64::from(LONG_MS) + 1_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.get("short").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the TTL never passed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Delete writes a tombstone.
        assert!(matches!(
            cache.delete("u1", None).await.unwrap(),
            CasOutcome::Written(_)
        ));
        assert_eq!(cache.get("u1").await.unwrap(), None);
        cache.put("kept", "yes", None).await.unwrap();
        // A stream is not a cache.
        create(&c, stream_config("plain", 1)).await;
        let e = c.cache("plain").put("k", "v", None).await.unwrap_err();
        assert!(e.to_string().contains("is a stream"), "{e}");
    });
    // Survives a crash: values come back from the log through the index
    // (the clock stays moved, so the TTL stays passed).
    b.kill();
    let b = Broker::start_with(dir.path(), &skewed(&skew));
    rt.block_on(async {
        let c = b.client().await;
        let cache = c.cache("sessions");
        assert_eq!(cache.get("kept").await.unwrap().unwrap().value, "yes");
        assert_eq!(cache.get("u1").await.unwrap(), None, "the tombstone survives");
        assert_eq!(cache.get("short").await.unwrap(), None);
    });
}

/// A cache write sent again with the same writer and sequence (a client
/// retry after a timeout) is answered with the first attempt's version and
/// not applied twice; a retried compare-and-set that won is not reported
/// as a conflict with itself. The fault suite found both without this.
#[test]
fn a_retried_cache_write_is_applied_once() {
    let (_dir, rt, b) = dev_broker();
    rt.block_on(async {
        let c = b.client().await;
        let mut cfg = stream_config("kv", 1);
        cfg.kind = felix_client::wire::StreamKind::Cache;
        create(&c, cfg).await;
        let put_as =
            |writer: u64, value: &'static str, if_version: Option<u64>, sequence: u64| Message::CachePut {
                cache: "kv".into(),
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(value.as_bytes()),
                ttl_ms: None,
                if_version,
                writer,
                sequence,
            };
        let put = |value, if_version, sequence| put_as(77, value, if_version, sequence);
        let version = |m: Message| match m {
            Message::CacheWritten { version } => version,
            m => panic!("not written: {m:?}"),
        };
        let v1 = version(admin(&c, put("a", None, 0)).await);
        assert_eq!(
            version(admin(&c, put("a", None, 0)).await),
            v1,
            "the retry lands where the first did"
        );
        let v2 = version(admin(&c, put("b", Some(v1), 1)).await);
        assert!(v2 > v1);
        assert_eq!(
            version(admin(&c, put("b", Some(v1), 1)).await),
            v2,
            "a retried compare-and-set that won is answered as written"
        );
        let e = c.cache("kv").get("k").await.unwrap().unwrap();
        assert_eq!(
            (e.value.as_ref(), e.version),
            (&b"b"[..], v2),
            "nothing was written twice"
        );
        // Without a writer identity every send is a new write.
        let anon = |sequence| put_as(0, "c", None, sequence);
        let v3 = version(admin(&c, anon(0)).await);
        assert!(version(admin(&c, anon(0)).await) > v3);
    });
}

#[test]
fn named_subscriptions_time_starts_and_unknown_streams() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        create(&c, stream_config("audit", 1)).await;
        let p = c.producer("audit", ProducerConfig::default()).await.unwrap();
        for i in 0..5 {
            p.send_wait(ProducerRecord::new(format!("a{i}"))).await.unwrap();
        }
        let opts = SubscribeOptions {
            start: Start::Committed,
            durable: Some("reader".into()),
            ..SubscribeOptions::default()
        };
        let mut sub = c.subscribe("audit", opts).await.unwrap();
        for want in 0..3u64 {
            let d = sub.next().await.unwrap().unwrap();
            assert_eq!(d.record.offset.0, want);
            sub.commit(0, want + 1).await.unwrap();
        }
        drop(sub);
        let e = c
            .subscribe("nope", SubscribeOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::UnknownStream(_) | ClientError::Broker(ErrorReply::UnknownStream(_))
            ),
            "{e}"
        );
    });
    b.kill();
    let b = Broker::start(dir.path());
    rt.block_on(async {
        let c = b.client().await;
        let opts = SubscribeOptions {
            start: Start::Committed,
            durable: Some("reader".into()),
            ..SubscribeOptions::default()
        };
        let mut sub = c.subscribe("audit", opts).await.unwrap();
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(
            d.record.offset.0, 3,
            "resumes at the committed cursor after a crash"
        );
        // A time start: everything is older than now + 1 h, so nothing; all is newer than 0.
        let got = read_n(&c, "audit", 0, Start::Time(0), 5).await;
        assert_eq!(got[0].0, 0);
        // An offset past the end is refused with the range.
        let opts = SubscribeOptions {
            start: Start::Offset(99),
            ..SubscribeOptions::default()
        };
        let mut sub = c.subscribe("audit", opts).await.unwrap();
        match sub.next().await.unwrap() {
            Err(ClientError::Broker(ErrorReply::OffsetOutOfRange { earliest, latest })) => {
                assert_eq!((earliest, latest), (0, 5))
            }
            other => panic!("{other:?}"),
        }
    });
}

/// The value of the series `name{labels}` in a Prometheus text scrape
/// (labels as they appear, in order), if present.
use felix_testkit::scrape::series;

async fn metrics_text(http: &reqwest::Client, admin: &str) -> String {
    felix_testkit::scrape::fetch(http, admin).await
}

#[test]
fn a_scrape_after_a_workload_shows_the_key_series() {
    let (_dir, rt, b) = dev_broker();
    let admin = b
        .profile
        .admin
        .first()
        .expect("felix dev serves the admin endpoints")
        .clone();
    rt.block_on(async {
        let c = b.client().await;
        create(&c, stream_config("metered", 2)).await;
        let p = c.producer("metered", ProducerConfig::default()).await.unwrap();
        let mut acks = Vec::new();
        for i in 0..100u32 {
            acks.push(
                p.send(ProducerRecord::keyed(
                    format!("k{i}"),
                    Bytes::from(vec![b'x'; 100]),
                ))
                .await
                .unwrap(),
            );
        }
        for a in acks {
            a.wait().await.unwrap();
        }
        let got = read_n(&c, "metered", 0, Start::Earliest, 1).await;
        assert_eq!(got.len(), 1);
        // A named subscription that committed offset 3 of shard 0, and a
        // group that has fetched but acked nothing.
        let commit = Message::CommitCursor {
            stream: "metered".into(),
            shard: 0,
            name: "audit".into(),
            offset: 3,
        };
        assert_eq!(common::admin(&c, commit).await, Message::Done);
        let fetch = Message::GroupFetch {
            stream: "metered".into(),
            group: "workers".into(),
            consumer: 1,
            max_records: 5,
            lease_ms: 60_000,
        };
        assert!(matches!(common::admin(&c, fetch).await, Message::GroupRecords { .. }));
        let http = reqwest::Client::new();
        for (path, want) in [("/live", 200), ("/ready", 200)] {
            let s = http.get(format!("{admin}{path}")).send().await.unwrap().status();
            assert_eq!(s.as_u16(), want, "{path}");
        }
        let scrape = metrics_text(&http, &admin).await;
        let v = |s: &str| series(&scrape, s).unwrap_or_else(|| panic!("no series {s} in:\n{scrape}"));
        assert!(v("felix_publish_records_total") >= 100.0);
        assert!(
            v("felix_publish_bytes_total") >= 100.0 * 100.0,
            "batches carry the values"
        );
        assert!(v("felix_push_bytes_total") > 0.0);
        assert!(v("felix_connections") >= 1.0);
        let ends: f64 = (0..2)
            .map(|s| {
                v(&format!(
                    "felix_shard_log_end_offset{{stream=\"dev/default/metered\",shard=\"{s}\"}}"
                ))
            })
            .sum();
        assert_eq!(ends, 100.0, "the two shards' ends add up to what was published");
        let marks: f64 = (0..2)
            .map(|s| {
                v(&format!(
                    "felix_shard_high_watermark_offset{{stream=\"dev/default/metered\",shard=\"{s}\"}}"
                ))
            })
            .sum();
        assert_eq!(marks, 100.0);
        assert!(v("felix_shard_segments{stream=\"dev/default/metered\",shard=\"0\"}") >= 1.0);
        let end0 = v("felix_shard_high_watermark_offset{stream=\"dev/default/metered\",shard=\"0\"}");
        assert_eq!(
            v("felix_consumer_lag_records{stream=\"dev/default/metered\",shard=\"0\",subscription=\"audit\"}"),
            end0 - 3.0,
            "lag is what follows the committed offset"
        );
        let mut groups = 0;
        for shard in 0..2 {
            let lag = series(
                &scrape,
                &format!("felix_consumer_lag_records{{stream=\"dev/default/metered\",shard=\"{shard}\",group=\"workers\"}}"),
            );
            if let Some(lag) = lag {
                let end = v(&format!("felix_shard_high_watermark_offset{{stream=\"dev/default/metered\",shard=\"{shard}\"}}"));
                assert_eq!(lag, end, "nothing acked: all of shard {shard} is the group's lag");
                groups += 1;
            }
        }
        assert!(groups >= 1, "the group's lag is reported");
        let publishes = scrape
            .lines()
            .filter(|l| {
                l.starts_with("felix_requests_total{")
                    && l.contains("op=\"publish\"")
                    && l.contains("outcome=\"ok\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert!(publishes >= 1.0, "{scrape}");
        assert!(
            scrape.contains("felix_request_duration_seconds_bucket{op=\"publish\""),
            "latency histogram of publishes"
        );
        // Durability `always`: every acknowledged publish waited for an
        // fsync, so some were timed.
        assert!(v("felix_fsync_duration_seconds_count") >= 1.0, "fsyncs are timed");
        assert!(v("felix_fsync_duration_seconds_sum") > 0.0);
        // A keyed shard reports how much compaction could drop: two of
        // three writes of one key are superseded.
        let cache = felix_client::wire::StreamConfig {
            kind: felix_client::wire::StreamKind::Cache,
            ..stream_config("sessions", 1)
        };
        create(&c, cache).await;
        for i in 0..3u32 {
            c.cache("sessions").put("k", format!("v{i}"), None).await.unwrap();
        }
        let scrape = metrics_text(&http, &admin).await;
        let dirty = series(
            &scrape,
            "felix_shard_compaction_dirty_ratio{stream=\"dev/default/sessions\",shard=\"0\"}",
        )
        .unwrap_or_else(|| panic!("no dirty ratio in:\n{scrape}"));
        assert!((dirty - 2.0 / 3.0).abs() < 1e-6, "dirty ratio {dirty}");
        assert!(series(&scrape, "felix_compaction_passes_total").is_some());
    });
}
