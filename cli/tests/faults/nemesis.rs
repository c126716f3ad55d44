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
use crate::net::{Net, Rules};

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
}

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

    /// The member index of the stream's shard-0 leader, if one is known.
    async fn leader(&self, c: &LocalCluster, client: &Client) -> Option<usize> {
        let _ = client.refresh_metadata(std::slice::from_ref(&self.stream)).await;
        let info = client.stream_info(&self.stream).await.ok()?;
        let l = info.shards.iter().find(|s| s.shard == 0)?.leader?;
        let i = c.members.iter().position(|m| m.at.id == l)?;
        c.is_running(i).then_some(i)
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

    fn follower(&mut self, c: &LocalCluster, leader: Option<usize>) -> usize {
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
        let leader = rt.block_on(self.leader(c, client));
        let ids: Vec<u64> = c.members.iter().map(|m| m.at.id).collect();
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
                let i = self.follower(c, leader);
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
                        await_admitted(c, i, rt);
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
                let i = self.follower(c, leader);
                self.note(format!("replacing broker {} with an empty one", ids[i]));
                c.kill(i);
                c.wipe(i);
                c.restart(i);
                // It must be a voter again before the next fault may take
                // another replica away.
                let t = Instant::now();
                await_admitted(c, i, rt);
                self.note(format!(
                    "broker {} admitted again after {:?}",
                    ids[i],
                    t.elapsed()
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
            if !c.is_running(i) {
                c.restart(i);
            }
        }
    }
}

/// Waits until member `i`, rebuilt empty, is a replica of every shard
/// again (it answers with itself among each shard's replicas once it was
/// admitted to the shard's group). Until then a second lost disk would be
/// a majority's: operators wait for under-replication to clear before
/// taking another replica away, and so does the nemesis.
fn await_admitted(c: &LocalCluster, i: usize, rt: &tokio::runtime::Runtime) {
    let id = c.members[i].at.id;
    let at = c.members[i].at.client.to_string();
    let deadline = Instant::now() + ADMISSION_WAIT_MAX;
    let ask = felix_client::wire::Message::Metadata { streams: Vec::new() };
    // The streams a member that kept its disk knows: a rebuilt broker
    // that has not caught up with the metadata knows none.
    let other = (0..c.members.len())
        .find(|&j| j != i && c.is_running(j))
        .expect("another member runs");
    let other_at = c.members[other].at.client.to_string();
    rt.block_on(async {
        let expected: Vec<String> = {
            let client = Client::connect(c.member_config(other)).await.expect("connect");
            let r = client.call(felix_client::Route::Broker(&other_at), &ask).await;
            client.close().await;
            match r {
                Ok(felix_client::wire::Message::MetadataReply { streams, .. }) => {
                    streams.into_iter().map(|s| s.name).collect()
                }
                r => panic!("no metadata from broker {}: {r:?}", c.members[other].at.id),
            }
        };
        let Ok(client) = Client::connect(c.member_config(i)).await else {
            panic!("broker {id} does not take connections after its rebuild");
        };
        loop {
            let missing: Vec<String> = match client.call(felix_client::Route::Broker(&at), &ask).await {
                Ok(felix_client::wire::Message::MetadataReply { streams, .. }) => {
                    let mut missing: Vec<String> = expected
                        .iter()
                        .filter(|n| !streams.iter().any(|s| &s.name == *n))
                        .cloned()
                        .collect();
                    missing.extend(streams.iter().flat_map(|s| {
                        s.shards
                            .iter()
                            .filter(|sh| !sh.replicas.contains(&id))
                            .map(move |sh| format!("{}/{}", s.name, sh.shard))
                    }));
                    missing
                }
                r => vec![format!("no metadata: {r:?}")],
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker {id} was not admitted again within {ADMISSION_WAIT_MAX:?}: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        client.close().await;
    });
}

/// How long a broker rebuilt empty may take to be a replica of every shard
/// again (it copies every shard from the leaders).
const ADMISSION_WAIT_MAX: Duration = Duration::from_secs(120);

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
