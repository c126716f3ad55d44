//! The nemesis: chooses faults from a seeded generator, injects them into
//! the running cluster, and heals them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use felix_client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::cluster::LocalCluster;
use felix_testkit::net::{Net, Rules};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a broker (the leader half the time), restart it after a while.
    Kill,
    /// SIGSTOP a broker past the election timeout, then SIGCONT.
    Pause,
    /// Cut one broker off from the others (both ways, or only its
    /// outgoing half).
    Partition,
    /// Drop a share of every datagram between brokers.
    Loss,
    /// Hold back every datagram between brokers.
    Delay,
    /// Move the brokers' clocks apart (within the run's skew bound).
    Skew,
    /// Damage a stopped follower's segment files, then restart it.
    Disk,
    /// SIGTERM a broker (the leader half the time): it drains and hands
    /// over; restart it.
    Drain,
    /// Replace a follower with an empty one (a new identity joins, the old
    /// one is gone for good).
    Membership,
    /// A new broker joins (through a proxy of its own); the control plane
    /// rebalances replicas onto it.
    Join,
    /// A running broker is decommissioned: its replicas move away, it
    /// leaves the registry, and it is stopped for good.
    Decommission,
}

/// The most brokers the nemesis grows the cluster to, and the fewest it
/// shrinks it to (each a replication factor of 3 and a spare or more).
pub const ACTIVE_MAX: usize = 6;
pub const ACTIVE_MIN: usize = 4;
/// The replication factor the suite's streams get on 4 to 6 brokers.
pub const REPLICATION_FACTOR: usize = 3;
/// How long a join's rebalance, or a decommission, may take.
const RESHAPE_WAIT_MAX: Duration = Duration::from_secs(120);

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Loss => "loss",
            Fault::Delay => "delay",
            Fault::Skew => "clock-skew",
            Fault::Disk => "disk",
            Fault::Drain => "drain",
            Fault::Membership => "membership",
            Fault::Join => "join",
            Fault::Decommission => "decommission",
        }
    }
}

pub struct Nemesis {
    pub rng: StdRng,
    /// The stream whose shard-0 leader faults prefer.
    pub stream: String,
    pub skew_ms_max: u64,
    /// Faults injected, by kind (and disk damage by kind).
    pub injected: BTreeMap<String, usize>,
    pub log: Vec<String>,
    started: Instant,
}

/// How the bytes of a stopped replica are damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One bit of a random written byte.
    BitFlip,
    /// The last bytes written zeroed: an append that never completed.
    TornTail,
    /// Everything after a point in the last 64 KiB zeroed: only an older
    /// (fsynced) prefix survived.
    DropTail,
    /// The file cut short inside its written bytes.
    Truncate,
}

impl Nemesis {
    pub fn new(seed: u64, stream: &str, skew_ms_max: u64) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x6e656d65),
            stream: stream.into(),
            skew_ms_max,
            injected: BTreeMap::new(),
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
        eprintln!("nemesis {line}");
        self.log.push(line);
    }

    fn count(&mut self, what: &str) {
        *self.injected.entry(what.to_owned()).or_default() += 1;
    }

    /// The member indexes of the stream's shard-0 leader (if one is known)
    /// and of its other replicas.
    async fn shard0(&self, c: &LocalCluster, client: &Client) -> (Option<usize>, Vec<usize>) {
        let _ = client.refresh_metadata(std::slice::from_ref(&self.stream)).await;
        let Ok(info) = client.stream_info(&self.stream).await else {
            return (None, Vec::new());
        };
        let Some(s) = info.shards.iter().find(|s| s.shard == 0) else {
            return (None, Vec::new());
        };
        let index = |id: u64| {
            c.members
                .iter()
                .position(|m| m.at.id == id)
                .filter(|&i| c.is_running(i))
        };
        let leader = s.leader.and_then(index);
        let others = s
            .replicas
            .iter()
            .filter_map(|&r| index(r))
            .filter(|&i| Some(i) != leader)
            .collect();
        (leader, others)
    }

    fn active(c: &LocalCluster) -> usize {
        c.members.iter().filter(|m| !m.retired).count()
    }

    /// Half the time the leader, else any running member.
    fn target(&mut self, c: &LocalCluster, leader: Option<usize>) -> usize {
        if let Some(l) = leader {
            if self.rng.gen_bool(0.5) {
                return l;
            }
        }
        let up: Vec<usize> = (0..c.members.len()).filter(|&i| c.is_running(i)).collect();
        *up.choose(&mut self.rng).expect("a running member")
    }

    /// A follower of the stream's shard 0 when one runs (a broker holding
    /// no replica of it would make a disk fault a no-op), else any running
    /// member but the leader.
    fn follower(&mut self, c: &LocalCluster, leader: Option<usize>, followers: &[usize]) -> usize {
        if let Some(f) = followers.choose(&mut self.rng) {
            return *f;
        }
        let up: Vec<usize> = (0..c.members.len())
            .filter(|&i| c.is_running(i) && Some(i) != leader)
            .collect();
        *up.choose(&mut self.rng).expect("a running follower")
    }

    fn hold(&mut self, min_ms: u64, max_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.gen_range(min_ms..=max_ms)));
    }

    /// Injects `f`, waits, and heals it.
    pub fn inject(
        &mut self,
        f: Fault,
        c: &mut LocalCluster,
        net: &Net,
        client: &Client,
        rt: &tokio::runtime::Runtime,
    ) {
        let (leader, followers) = rt.block_on(self.shard0(c, client));
        let ids: Vec<u64> = c.members.iter().map(|m| m.at.id).collect();
        // The cluster stays within ACTIVE_MIN..=ACTIVE_MAX brokers.
        let f = match f {
            Fault::Join if Self::active(c) >= ACTIVE_MAX => Fault::Decommission,
            Fault::Decommission if Self::active(c) <= ACTIVE_MIN => Fault::Join,
            f => f,
        };
        self.count(f.name());
        match f {
            Fault::Kill => {
                let i = self.target(c, leader);
                self.note(format!(
                    "SIGKILL broker {} (leader: {})",
                    ids[i],
                    Some(i) == leader
                ));
                c.kill(i);
                self.hold(200, 2_000);
                c.restart(i);
                self.note(format!("restarted broker {}", ids[i]));
            }
            Fault::Pause => {
                let i = self.target(c, leader);
                self.note(format!(
                    "SIGSTOP broker {} (leader: {})",
                    ids[i],
                    Some(i) == leader
                ));
                c.signal(i, "-STOP");
                self.hold(1_000, 4_000);
                c.signal(i, "-CONT");
                self.note(format!("SIGCONT broker {}", ids[i]));
            }
            Fault::Partition => {
                let i = self.target(c, leader);
                let me = ids[i];
                let others: Vec<u64> = ids.iter().copied().filter(|&x| x != me).collect();
                let rules = if self.rng.gen_bool(0.75) {
                    self.note(format!("partition [{me}] | {others:?}"));
                    Rules::partition(&[vec![me], others])
                } else {
                    self.note(format!("one-way partition: {me} → {others:?} dropped"));
                    let mut r = Rules::default();
                    for o in others {
                        r.blocked.insert((me, o));
                    }
                    r
                };
                net.set(rules);
                self.hold(1_500, 5_000);
                net.heal();
                self.note("healed the network".into());
            }
            Fault::Loss => {
                let loss = self.rng.gen_range(0.1..0.5);
                self.note(format!("loss {:.0}% between brokers", loss * 100.0));
                net.set(Rules {
                    loss,
                    ..Rules::default()
                });
                self.hold(1_000, 4_000);
                net.heal();
                self.note("healed the network".into());
            }
            Fault::Delay => {
                let delay_ms = self.rng.gen_range(20..150);
                let jitter_ms = self.rng.gen_range(0..80);
                self.note(format!(
                    "delay {delay_ms} ms + up to {jitter_ms} ms between brokers"
                ));
                net.set(Rules {
                    delay_ms,
                    jitter_ms,
                    ..Rules::default()
                });
                self.hold(1_000, 4_000);
                net.heal();
                self.note("healed the network".into());
            }
            Fault::Skew => {
                let dir = c.skew_dir.clone().expect("a cluster with skewable clocks");
                let m = self.skew_ms_max as i64;
                let skews: Vec<(u64, i64)> = ids.iter().map(|&id| (id, self.rng.gen_range(-m..=m))).collect();
                self.note(format!("clock skew (ms) {skews:?}"));
                for (id, s) in &skews {
                    set_skew(&dir, *id, *s);
                }
                self.hold(1_000, 4_000);
            }
            Fault::Disk => {
                let i = self.follower(c, leader, &followers);
                let damage = *[
                    Damage::BitFlip,
                    Damage::TornTail,
                    Damage::DropTail,
                    Damage::Truncate,
                ]
                .choose(&mut self.rng)
                .unwrap();
                c.kill(i);
                let what = damage_segments(&c.members[i].at.data_dir, damage, &mut self.rng);
                self.count(&format!("disk:{damage:?}"));
                self.note(format!("broker {} stopped; {what}", ids[i]));
                match c.try_restart(i) {
                    Ok(()) => self.note(format!("broker {} recovered and restarted", ids[i])),
                    Err(why) => {
                        // Interior damage: the broker must refuse, not guess.
                        self.count("disk:refused");
                        self.note(format!(
                            "broker {} refused its data ({why}); rebuilding it empty",
                            ids[i]
                        ));
                        c.wipe(i);
                        c.restart(i);
                        await_healthy(c, rt, RESHAPE_WAIT_MAX);
                        self.note(format!("broker {} admitted again", ids[i]));
                    }
                }
                // Lost entries are a replica short of the quorum's copy:
                // it must catch up before another fault may count on it.
                std::thread::sleep(Duration::from_secs(3));
            }
            Fault::Drain => {
                let i = self.target(c, leader);
                self.note(format!(
                    "SIGTERM broker {} (leader: {})",
                    ids[i],
                    Some(i) == leader
                ));
                let (clean, took) = c.terminate(i);
                assert!(clean, "broker {} did not exit cleanly after SIGTERM", ids[i]);
                self.note(format!("broker {} drained in {took:?}", ids[i]));
                self.hold(200, 1_500);
                c.restart(i);
            }
            Fault::Membership => {
                let i = self.follower(c, leader, &followers);
                self.note(format!("replacing broker {} with an empty one", ids[i]));
                c.kill(i);
                c.wipe(i);
                c.restart(i);
                // It must be a voter again before the next fault may take
                // another replica away.
                let t = Instant::now();
                await_healthy(c, rt, RESHAPE_WAIT_MAX);
                self.note(format!(
                    "broker {} admitted again after {:?}",
                    ids[i],
                    t.elapsed()
                ));
            }
            Fault::Join => {
                let t = Instant::now();
                let id = c.add_routed(|id, real| Some(rt.block_on(net.add(id, real))));
                self.note(format!("broker {id} joined ({} active)", Self::active(c)));
                let port = cp_port(c);
                rt.block_on(async {
                    let http = reqwest::Client::new();
                    // Registering starts the rebalance (in the same change).
                    crate::common::cp::until(RESHAPE_WAIT_MAX.as_secs(), "the broker registered", || async {
                        let (_, v) =
                            crate::common::cp::call(&http, port, reqwest::Method::GET, "/v1/brokers", None)
                                .await
                                .ok()?;
                        v["items"]
                            .as_array()?
                            .iter()
                            .any(|b| {
                                b["registration"]["id"] == serde_json::json!(id) && b["status"] == "active"
                            })
                            .then_some(())
                    })
                    .await;
                    crate::common::cp::until(RESHAPE_WAIT_MAX.as_secs(), "the join's rebalance", || async {
                        let (_, r) =
                            crate::common::cp::call(&http, port, reqwest::Method::GET, "/v1/rebalance", None)
                                .await
                                .ok()?;
                        r["rebalance"].is_null().then_some(())
                    })
                    .await;
                });
                await_healthy(c, rt, RESHAPE_WAIT_MAX);
                let held = shard_dirs(&c.members[c.index_of(id)].at.data_dir);
                self.note(format!(
                    "broker {id} holds {held} replicas; rebalanced after {:?}",
                    t.elapsed()
                ));
            }
            Fault::Decommission => {
                let i = self.target(c, leader);
                let id = ids[i];
                self.note(format!(
                    "decommissioning broker {id} (leader: {})",
                    Some(i) == leader
                ));
                let t = Instant::now();
                let port = cp_port(c);
                let shards = c.members[i].at.data_dir.join("shards");
                rt.block_on(async {
                    use crate::common::cp::{call, until};
                    let http = reqwest::Client::new();
                    let path = format!("/v1/brokers/{id}/decommission");
                    let (s, v) = call(
                        &http,
                        port,
                        reqwest::Method::POST,
                        &path,
                        Some(serde_json::json!({})),
                    )
                    .await
                    .expect("the control plane answers");
                    assert_eq!(s, 200, "decommission {id}: {v}");
                    until(
                        RESHAPE_WAIT_MAX.as_secs(),
                        "the broker out of the registry",
                        || async {
                            let (_, v) = call(&http, port, reqwest::Method::GET, "/v1/brokers", None)
                                .await
                                .ok()?;
                            let listed = v["items"]
                                .as_array()?
                                .iter()
                                .any(|b| b["registration"]["id"] == serde_json::json!(id));
                            (!listed).then_some(())
                        },
                    )
                    .await;
                    // Each replica is deleted once its move is done.
                    until(RESHAPE_WAIT_MAX.as_secs(), "its replicas deleted", || async {
                        (shard_dirs(&shards) == 0).then_some(())
                    })
                    .await;
                });
                let (clean, _) = c.terminate(i);
                assert!(clean, "decommissioned broker {id} did not exit cleanly");
                c.members[i].retired = true;
                await_healthy(c, rt, RESHAPE_WAIT_MAX);
                self.note(format!(
                    "broker {id} decommissioned and stopped after {:?} ({} active)",
                    t.elapsed(),
                    Self::active(c)
                ));
            }
        }
    }

    /// Undoes what lasts: clocks back to true, the network healed, every
    /// member running.
    pub fn heal_all(&mut self, c: &mut LocalCluster, net: &Net) {
        net.heal();
        if let Some(dir) = c.skew_dir.clone() {
            for m in &c.members {
                set_skew(&dir, m.at.id, 0);
            }
        }
        for i in 0..c.members.len() {
            if !c.is_running(i) && !c.members[i].retired {
                c.restart(i);
            }
        }
    }
}

/// The API port of the cluster's own control plane.
fn cp_port(c: &LocalCluster) -> u16 {
    c.controlplane.as_ref().expect("the cluster's control plane").1
}

/// How many shard replicas a broker's data directory holds.
fn shard_dirs(data_dir: &Path) -> usize {
    let dir = if data_dir.ends_with("shards") {
        data_dir.to_path_buf()
    } else {
        data_dir.join("shards")
    };
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Waits until every running member knows the same streams and, in each,
/// every shard has a leader and [`REPLICATION_FACTOR`] live replicas (a
/// broker rebuilt empty counts once it was admitted to the shard's group
/// again). Until then a second lost replica could be a majority's:
/// operators wait for under-replication to clear before taking another
/// replica away, and so does the nemesis.
pub fn await_healthy(c: &LocalCluster, rt: &tokio::runtime::Runtime, within: Duration) {
    let deadline = Instant::now() + within;
    let ask = felix_client::wire::Message::Metadata { streams: Vec::new() };
    let up: Vec<usize> = (0..c.members.len()).filter(|&i| c.is_running(i)).collect();
    rt.block_on(async {
        let mut clients = Vec::new();
        for &i in &up {
            let Ok(client) = Client::connect(c.member_config(i)).await else {
                panic!("broker {} does not take connections", c.members[i].at.id);
            };
            clients.push((i, client));
        }
        loop {
            let mut problems = Vec::new();
            let mut names: Option<Vec<String>> = None;
            for (i, client) in &clients {
                let at = c.members[*i].at.client.to_string();
                let id = c.members[*i].at.id;
                match client.call(felix_client::Route::Broker(&at), &ask).await {
                    Ok(felix_client::wire::Message::MetadataReply { streams, .. }) => {
                        let mut these: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
                        these.sort();
                        match &names {
                            None => names = Some(these),
                            Some(n) if *n != these => {
                                problems.push(format!("broker {id} knows {these:?}, another {n:?}"))
                            }
                            Some(_) => {}
                        }
                        for s in &streams {
                            for sh in &s.shards {
                                if sh.leader.is_none() || sh.replicas.len() < REPLICATION_FACTOR {
                                    problems.push(format!(
                                        "broker {id} sees {}/{}: leader {:?}, replicas {:?}",
                                        s.name, sh.shard, sh.leader, sh.replicas
                                    ));
                                }
                            }
                        }
                    }
                    r => problems.push(format!("no metadata from broker {id}: {r:?}")),
                }
            }
            if problems.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster was not healthy within {within:?}: {problems:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for (_, client) in clients {
            client.close().await;
        }
    });
}

pub fn set_skew(dir: &Path, id: u64, ms: i64) {
    let tmp = dir.join(format!(".skew-b{id}"));
    std::fs::write(&tmp, ms.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("skew-b{id}"))).unwrap();
}

/// Segment files of a broker's shards, oldest first per shard.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(data_dir.join("shards")) else {
        return out;
    };
    for s in shards.flatten() {
        if let Ok(files) = std::fs::read_dir(s.path()) {
            let mut segs: Vec<PathBuf> = files
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect();
            segs.sort();
            out.extend(segs);
        }
    }
    out
}

/// The length of a segment's written bytes (it is preallocated with
/// zeros).
fn written_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
}

/// Damages one segment with data; returns what was done.
fn damage_segments(data_dir: &Path, damage: Damage, rng: &mut StdRng) -> String {
    let segs: Vec<(PathBuf, usize)> = segments(data_dir)
        .into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            let n = written_len(&b);
            (n > 64).then_some((p, n))
        })
        .collect();
    let Some((path, len)) = segs.choose(rng).cloned() else {
        return "no segment had data to damage".into();
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let what = match damage {
        Damage::BitFlip => {
            let at = rng.gen_range(0..len);
            let bit = rng.gen_range(0..8);
            bytes[at] ^= 1 << bit;
            std::fs::write(&path, &bytes).unwrap();
            format!("flipped bit {bit} of byte {at} of {len}")
        }
        Damage::TornTail => {
            let cut = len - rng.gen_range(1..len.min(200));
            bytes[cut..len].fill(0);
            std::fs::write(&path, &bytes).unwrap();
            format!("zeroed bytes {cut}..{len}")
        }
        Damage::DropTail => {
            let cut = len.saturating_sub(rng.gen_range(1..len.min(65_536)));
            bytes[cut..len].fill(0);
            std::fs::write(&path, &bytes).unwrap();
            format!("kept only the first {cut} of {len} bytes")
        }
        Damage::Truncate => {
            let cut = rng.gen_range(0..len);
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut as u64).unwrap();
            format!("truncated the file to {cut} of {len} written bytes")
        }
    };
    format!(
        "{what} in {}",
        path.strip_prefix(data_dir).unwrap_or(&path).display()
    )
}
