//! The network between brokers, under a test's control: one UDP
//! proxy in front of each broker's replication port. Every broker is told
//! that its peers live at their proxies, so all Raft traffic (QUIC over
//! UDP) passes through them, and the test can drop it (partitions,
//! loss) or hold it back (delay) per direction.
//!
//! A broker's QUIC endpoint connects from the port it listens on, so the
//! source address of a datagram names the broker that sent it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// What the network does to a datagram from one broker to another.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Ordered (from, to) broker-id pairs whose datagrams are dropped.
    pub blocked: HashSet<(u64, u64)>,
    /// Probability that any datagram between brokers is dropped.
    pub loss: f64,
    /// Every datagram is held back this long, plus up to `jitter_ms`.
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

impl Rules {
    /// Cuts every link between `a` and `b` (both directions).
    pub fn partition(groups: &[Vec<u64>]) -> Rules {
        let mut r = Rules::default();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a {
                    for &y in b {
                        r.blocked.insert((x, y));
                        r.blocked.insert((y, x));
                    }
                }
            }
        }
        r
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: u64,
    pub dropped: u64,
    pub delayed: u64,
}

struct Shared {
    rules: Mutex<Rules>,
    rng: Mutex<rand::rngs::StdRng>,
    counters: Mutex<Counters>,
    /// Real replication address → broker id (a joining broker adds itself).
    ids: Mutex<HashMap<SocketAddr, u64>>,
}

/// Datagrams the proxy carries are at most this big (QUIC's are ~1.5 KB).
const DATAGRAM_BYTES_MAX: usize = 65_536;

pub struct Net {
    shared: Arc<Shared>,
    /// Per broker id: the proxy address its peers are given.
    pub proxies: Vec<(u64, SocketAddr)>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What to do with one datagram from `from` to `to`.
enum Fate {
    Drop,
    Now,
    After(Duration),
}

impl Shared {
    fn fate(&self, from: u64, to: u64) -> Fate {
        let rules = self.rules.lock().unwrap();
        let mut counters = self.counters.lock().unwrap();
        if rules.blocked.contains(&(from, to)) {
            counters.dropped += 1;
            return Fate::Drop;
        }
        let mut rng = self.rng.lock().unwrap();
        if rules.loss > 0.0 && rng.gen_bool(rules.loss.min(1.0)) {
            counters.dropped += 1;
            return Fate::Drop;
        }
        counters.forwarded += 1;
        if rules.delay_ms == 0 && rules.jitter_ms == 0 {
            return Fate::Now;
        }
        counters.delayed += 1;
        let jitter = if rules.jitter_ms > 0 {
            rng.gen_range(0..=rules.jitter_ms)
        } else {
            0
        };
        Fate::After(Duration::from_millis(rules.delay_ms + jitter))
    }
}

async fn send(socket: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, fate: Fate) {
    match fate {
        Fate::Drop => {}
        Fate::Now => {
            let _ = socket.send_to(&data, to).await;
        }
        Fate::After(d) => {
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = socket.send_to(&data, to).await;
            });
        }
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Binds one proxy per `(id, real replication address)`, seeded so a
    /// run's losses repeat.
    pub async fn start(brokers: &[(u64, SocketAddr)], seed: u64) -> Net {
        let shared = Arc::new(Shared {
            rules: Mutex::new(Rules::default()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            counters: Mutex::new(Counters::default()),
            ids: Mutex::new(brokers.iter().map(|(id, a)| (*a, *id)).collect()),
        });
        let mut proxies = Vec::new();
        let mut tasks = Vec::new();
        for &(id, real) in brokers {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            proxies.push((id, front.local_addr().unwrap()));
            tasks.push(tokio::spawn(serve(front, id, real, shared.clone())));
        }
        Net {
            shared,
            proxies,
            tasks: Mutex::new(tasks),
        }
    }

    /// Puts a proxy in front of a broker that joins later (`real`: its
    /// replication address); returns the address its peers are given.
    pub async fn add(&self, id: u64, real: SocketAddr) -> SocketAddr {
        self.shared.ids.lock().unwrap().insert(real, id);
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let at = front.local_addr().unwrap();
        let task = tokio::spawn(serve(front, id, real, self.shared.clone()));
        self.tasks.lock().unwrap().push(task);
        at
    }

    pub fn set(&self, rules: Rules) {
        *self.shared.rules.lock().unwrap() = rules;
    }

    pub fn heal(&self) {
        self.set(Rules::default());
    }

    pub fn counters(&self) -> (u64, u64, u64) {
        let c = self.shared.counters.lock().unwrap();
        (c.forwarded, c.dropped, c.delayed)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
    }
}

/// The proxy in front of broker `to` (listening on `front`, forwarding to
/// `real`): one upstream socket per sender, whose replies go back through
/// `front`.
async fn serve(front: Arc<UdpSocket>, to: u64, real: SocketAddr, shared: Arc<Shared>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((n, from_addr)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let from = shared.ids.lock().unwrap().get(&from_addr).copied().unwrap_or(0);
        let up = match upstreams.get(&from_addr) {
            Some(u) => u.clone(),
            None => {
                let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                upstreams.insert(from_addr, u.clone());
                tokio::spawn(replies(
                    u.clone(),
                    front.clone(),
                    from_addr,
                    from,
                    to,
                    shared.clone(),
                ));
                u
            }
        };
        let fate = shared.fate(from, to);
        send(up, buf[..n].to_vec(), real, fate).await;
    }
}

/// Carries broker `to`'s replies to `from` back through the proxy.
async fn replies(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    from: u64,
    to: u64,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        let fate = shared.fate(to, from);
        send(front.clone(), buf[..n].to_vec(), client, fate).await;
    }
}
