//! [`Client`]: knows the cluster from any broker, keeps a pool of
//! connections per broker, routes requests to shard leaders, follows
//! `NotLeader` hints, retries with backoff and jitter, and stops hammering a
//! broker whose circuit is open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::conn::{Answer, ConnectOptions, Connection};
use crate::error::ClientError;
use crate::policy::{Breaker, BreakerConfig, RetryPolicy};
use crate::transport::{client_endpoint, ClientTls, TransportConfig, ALPN};
use crate::wire::{ErrorReply, Message, StreamInfo};

/// Connections kept to one broker; requests spread over them.
pub const CONNECTIONS_PER_BROKER_MAX: usize = 16;
/// How long a broker whose connection just failed is passed over when
/// picking a broker to ask, and its name as a leader hint distrusted:
/// brokers that have not yet noticed a dead leader still name it.
pub const SUSPECT_MS: u64 = 2_000;

/// How to reach and talk to a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Any brokers of the cluster, `host:port`; the rest are learned.
    pub brokers: Vec<String>,
    /// The name the brokers' certificates are checked against.
    pub server_name: String,
    pub tls: ClientTls,
    /// The Felix token sent in `Hello` (empty when auth is off).
    pub token: Bytes,
    pub transport: TransportConfig,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Connections per broker (1..=[`CONNECTIONS_PER_BROKER_MAX`]).
    pub connections_per_broker: usize,
    /// Request streams per connection.
    pub streams_per_connection: usize,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
}

impl ClientConfig {
    /// Defaults for one broker address and a CA.
    pub fn new(broker: impl Into<String>, tls: ClientTls) -> ClientConfig {
        ClientConfig {
            brokers: vec![broker.into()],
            server_name: "localhost".into(),
            tls,
            token: Bytes::new(),
            transport: TransportConfig::default(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            connections_per_broker: 1,
            streams_per_connection: 4,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The leader of a stream's shard.
    Shard(&'a str, u32),
    /// Any broker that knows the stream (the first shard's leader first).
    Stream(&'a str),
    Any,
    /// This broker (`host:port`) and no other, for questions about its own
    /// state (operators, tests).
    Broker(&'a str),
}

#[derive(Debug, Default)]
struct Metadata {
    brokers: HashMap<u64, String>,
    streams: HashMap<String, StreamInfo>,
}

#[derive(Debug)]
struct Slot {
    conns: Vec<Arc<Connection>>,
    next: usize,
}

#[derive(Debug)]
struct Inner {
    cfg: ClientConfig,
    endpoint: quinn::Endpoint,
    /// One lock per broker, so a slow connect to one does not hold up the rest.
    pool: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
    meta: RwLock<Metadata>,
    bootstrap_next: AtomicUsize,
    /// Brokers whose connection failed, until when they are passed over.
    suspects: Mutex<HashMap<String, Instant>>,
    epoch: Instant,
}

/// A handle to a Felix cluster; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first reachable broker of `cfg.brokers` and loads
    /// the cluster's metadata.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.brokers.is_empty() {
            return Err(ClientError::Invalid("no broker address given".into()));
        }
        let endpoint = client_endpoint(&cfg.tls, ALPN, &cfg.transport)?;
        let client = Client {
            inner: Arc::new(Inner {
                cfg,
                endpoint,
                pool: Default::default(),
                breakers: Default::default(),
                meta: Default::default(),
                bootstrap_next: AtomicUsize::new(0),
                suspects: Default::default(),
                epoch: Instant::now(),
            }),
        };
        let mut last = None;
        for b in client.inner.cfg.brokers.clone() {
            match client.connection(&b).await {
                Ok(_) => {
                    client.refresh_metadata(&[]).await?;
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one broker was tried"))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// A pooled connection to `address`, opening one if needed.
    pub async fn connection(&self, address: &str) -> Result<Arc<Connection>, ClientError> {
        let cfg = &self.inner.cfg;
        let slot = self.slot(address);
        let mut slot = slot.lock().await;
        slot.conns.retain(|c| !c.is_broken());
        let want = cfg.connections_per_broker.clamp(1, CONNECTIONS_PER_BROKER_MAX);
        if slot.conns.len() < want {
            let addr = resolve(address).await?;
            let opts = ConnectOptions {
                server_name: cfg.server_name.clone(),
                token: cfg.token.clone(),
                streams: cfg.streams_per_connection,
                timeout_ms: cfg.connect_timeout_ms,
            };
            let c = Arc::new(Connection::open(&self.inner.endpoint, addr, &opts).await?);
            slot.conns.push(c.clone());
            return Ok(c);
        }
        slot.next = slot.next.wrapping_add(1);
        Ok(slot.conns[slot.next % slot.conns.len()].clone())
    }

    fn slot(&self, address: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut pool = self.inner.pool.lock().expect("pool lock");
        pool.entry(address.to_owned())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Slot {
                    conns: Vec::new(),
                    next: 0,
                }))
            })
            .clone()
    }

    /// Drops broken connections to `address` (`all`: every connection).
    async fn forget(&self, address: &str, all: bool) {
        let slot = self.slot(address);
        slot.lock().await.conns.retain(|c| !all && !c.is_broken());
    }

    /// Reloads metadata for `streams` (all when empty) from any broker.
    pub async fn refresh_metadata(&self, streams: &[String]) -> Result<(), ClientError> {
        let reply = self
            .call(
                Route::Any,
                &Message::Metadata {
                    streams: streams.to_vec(),
                },
            )
            .await?;
        let Message::MetadataReply { brokers, streams } = reply else {
            return Err(ClientError::unexpected(&reply));
        };
        let mut meta = self.inner.meta.write().expect("metadata lock");
        for b in brokers {
            meta.brokers.insert(b.id, b.address);
        }
        for s in streams {
            meta.streams.insert(s.name.clone(), s);
        }
        Ok(())
    }

    /// The stream's metadata, loading it if not known.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, ClientError> {
        if let Some(s) = self.inner.meta.read().expect("metadata lock").streams.get(stream) {
            return Ok(s.clone());
        }
        self.refresh_metadata(&[stream.to_owned()]).await?;
        self.inner
            .meta
            .read()
            .expect("metadata lock")
            .streams
            .get(stream)
            .cloned()
            .ok_or_else(|| ClientError::UnknownStream(stream.to_owned()))
    }

    fn is_suspect(&self, address: &str) -> bool {
        let mut s = self.inner.suspects.lock().expect("suspects lock");
        match s.get(address) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                s.remove(address);
                false
            }
            None => false,
        }
    }

    fn suspect(&self, address: &str, failed: bool) {
        let mut s = self.inner.suspects.lock().expect("suspects lock");
        if failed {
            s.insert(
                address.to_owned(),
                Instant::now() + Duration::from_millis(SUSPECT_MS),
            );
        } else {
            s.remove(address);
        }
    }

    fn address_for(&self, route: Route<'_>) -> String {
        let meta = self.inner.meta.read().expect("metadata lock");
        let leader = |stream: &str, shard: Option<u32>| {
            let s = meta.streams.get(stream)?;
            let info = match shard {
                Some(n) => s.shards.iter().find(|i| i.shard == n)?,
                None => s.shards.first()?,
            };
            meta.brokers.get(&info.leader?).cloned()
        };
        let known = match route {
            Route::Shard(s, n) => leader(s, Some(n)),
            Route::Stream(s) => leader(s, None),
            Route::Any => None,
            Route::Broker(a) => return a.to_owned(),
        };
        // A leader whose connection just failed is asked again only after
        // another broker names it.
        if let Some(a) = known.filter(|a| !self.is_suspect(a)) {
            return a;
        }
        // Bootstrap brokers first, then any broker learned; brokers that
        // just failed last, when nothing else is left.
        let mut all = self.inner.cfg.brokers.clone();
        all.extend(
            meta.brokers
                .values()
                .filter(|a| !all.contains(a))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let healthy: Vec<String> = all.iter().filter(|a| !self.is_suspect(a)).cloned().collect();
        let pick = if healthy.is_empty() { all } else { healthy };
        let i = self.inner.bootstrap_next.fetch_add(1, Ordering::Relaxed);
        pick[i % pick.len()].clone()
    }

    fn learn_leader(&self, route: Route<'_>, leader: Option<(u64, String)>) {
        let mut meta = self.inner.meta.write().expect("metadata lock");
        let Some((id, address)) = leader else {
            // No hint: forget the stale leader so the next try asks around.
            let (s, n) = match route {
                Route::Shard(s, n) => (s, Some(n)),
                Route::Stream(s) => (s, None),
                Route::Any | Route::Broker(_) => return,
            };
            if let Some(info) = meta.streams.get_mut(s) {
                let first = info.shards.first().map(|i| i.shard);
                info.shards
                    .iter_mut()
                    .filter(|i| Some(i.shard) == n.or(first))
                    .for_each(|i| i.leader = None);
            }
            return;
        };
        meta.brokers.insert(id, address);
        let (stream, shard) = match route {
            Route::Shard(s, n) => (s, Some(n)),
            Route::Stream(s) => (s, None),
            Route::Any | Route::Broker(_) => return,
        };
        if let Some(info) = meta.streams.get_mut(stream) {
            for i in info.shards.iter_mut() {
                if shard.is_none_or(|n| n == i.shard) {
                    i.leader = Some(id);
                    if shard.is_none() {
                        break;
                    }
                }
            }
        }
    }

    /// Runs `f` on `address`'s breaker (created closed) with the time now.
    fn breaker<R>(&self, address: &str, f: impl FnOnce(&mut Breaker, u64) -> R) -> R {
        let now = self.now_ms();
        let mut b = self.inner.breakers.lock().expect("breaker lock");
        let br = b
            .entry(address.to_owned())
            .or_insert_with(|| Breaker::new(self.inner.cfg.breaker));
        f(br, now)
    }

    fn admit(&self, address: &str) -> bool {
        self.breaker(address, |b, now| b.admit(now))
    }

    fn outcome(&self, address: &str, ok: bool) {
        self.breaker(
            address,
            |b, now| if ok { b.on_success() } else { b.on_failure(now) },
        )
    }

    /// One attempt at `route` without retries.
    async fn attempt(&self, address: &str, m: &Message) -> Result<(Answer, Arc<Connection>), ClientError> {
        if !self.admit(address) {
            return Err(ClientError::CircuitOpen(address.to_owned()));
        }
        let result = match self.connection(address).await {
            Ok(c) => c.call(m, self.inner.cfg.request_timeout_ms).await.map(|a| (a, c)),
            Err(e) => Err(e),
        };
        // A typed answer, even an error, shows the broker is alive.
        let transport_failed = matches!(
            result,
            Err(ClientError::Connect { .. } | ClientError::ConnectionLost(_) | ClientError::Timeout(_))
        );
        self.outcome(address, !transport_failed);
        self.suspect(address, transport_failed);
        if transport_failed {
            // A request that timed out may sit on a connection to a broker
            // that is gone: start the next attempt on a fresh one.
            self.forget(address, matches!(result, Err(ClientError::Timeout(_))))
                .await;
        }
        match result? {
            (Answer::Message(Message::Error(e)), _) => Err(ClientError::Broker(e)),
            a => Ok(a),
        }
    }

    /// Sends `m` along `route`, retrying what is retryable: `NotLeader`
    /// with a hint goes straight to the hinted leader; other failures wait
    /// a jittered backoff (at least a broker's `retry_after_ms`).
    pub(crate) async fn call_routed(
        &self,
        route: Route<'_>,
        m: &Message,
    ) -> Result<(Answer, Arc<Connection>), ClientError> {
        let policy = self.inner.cfg.retry;
        let deadline = Instant::now() + Duration::from_millis(policy.deadline_ms);
        // Failed attempts (what `attempts_max` bounds), every try, and the
        // `NotLeader` answers in a row.
        let (mut attempt, mut tries, mut not_leader_run) = (0u32, 0u32, 0u32);
        loop {
            tries += 1;
            let address = self.address_for(route);
            let err = match self.attempt(&address, m).await {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            // Asked of one broker and no other, `NotLeader` is the answer:
            // asking it again would only get the same one until the
            // deadline, and the caller (the Redis door's forwarder) follows
            // the hint itself.
            if matches!(route, Route::Broker(_))
                && matches!(err, ClientError::Broker(ErrorReply::NotLeader { .. }))
            {
                return Err(err);
            }
            // `NotLeader` is an answer, not a failure: the cluster is
            // electing or handing a shard over. It spends no attempt; the
            // deadline bounds it (a leader stepping aside may take seconds).
            if matches!(err, ClientError::Broker(ErrorReply::NotLeader { .. })) {
                not_leader_run += 1;
            } else {
                attempt += 1;
                not_leader_run = 0;
            }
            if !err.retryable() || attempt >= policy.attempts_max.max(1) || Instant::now() >= deadline {
                return Err(if tries > 1 && err.retryable() {
                    ClientError::RetriesExhausted {
                        attempts: tries,
                        last: Box::new(err),
                    }
                } else {
                    err
                });
            }
            let mut wait = policy.backoff(attempt, rand::random::<f64>());
            match &err {
                // The leader may be gone: the next attempt asks another
                // broker, which names the new one.
                ClientError::Connect { .. } | ClientError::ConnectionLost(_) | ClientError::Timeout(_) => {
                    self.learn_leader(route, None)
                }
                // Retrying before the circuit lets a trial through would
                // only spend attempts: a broker back after a restart was
                // out of reach for callers that gave up in the open period.
                // The longest backoff still bounds it, so a circuit held
                // open for long keeps failing fast.
                ClientError::CircuitOpen(a) => {
                    let reopens = self
                        .breaker(a, |b, now| b.reopens_in_ms(now))
                        .min(policy.backoff_max_ms);
                    wait = wait.max(Duration::from_millis(reopens));
                    self.learn_leader(route, None)
                }
                ClientError::Broker(ErrorReply::NotLeader { leader }) => {
                    // A hint naming a broker that just failed is stale (the
                    // election is still on), and so is one naming the broker
                    // that answered (a leader stepping aside for a successor):
                    // back off and ask again. A fresh hint is followed at
                    // once, but a run of redirects backs off like any retry,
                    // so a hand-over is waited out, not spun through.
                    let hint = leader
                        .clone()
                        .filter(|(_, a)| !self.is_suspect(a) && *a != address);
                    let hinted = hint.is_some();
                    self.learn_leader(route, hint);
                    wait = match hinted && not_leader_run == 1 {
                        true => Duration::ZERO,
                        false => policy.backoff(not_leader_run, rand::random::<f64>()),
                    };
                }
                ClientError::Broker(ErrorReply::Overloaded { retry_after_ms }) => {
                    wait = wait.max(Duration::from_millis(u64::from(*retry_after_ms)));
                }
                _ => {}
            }
            tracing::debug!(attempt, tries, ?wait, error = %err, "retrying");
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Sends a request along `route` (with retries) and returns its answer.
    pub async fn call(&self, route: Route<'_>, m: &Message) -> Result<Message, ClientError> {
        match self.call_routed(route, m).await?.0 {
            Answer::Message(m) => Ok(m),
            Answer::Subscription { .. } => Err(ClientError::UnexpectedReply("a subscription stream".into())),
        }
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.inner.pool.lock().expect("pool lock").clear();
        self.inner.endpoint.close(0u32.into(), b"client closing");
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    let err = |why: String| ClientError::Connect {
        address: address.to_owned(),
        why,
    };
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("name resolves to no address".into()))
}
