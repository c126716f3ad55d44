//! One control-plane node at run time: its Raft member, its state, and
//! what only the leader does (broker liveness, reconciling placement,
//! rotating data keys on schedule).
//!
//! Writes go through the leader: a node that is not the leader forwards
//! the command to it (`/raft/propose`) and then waits until its own state
//! machine has applied the write, so a caller reads its own writes from
//! whichever node it asked. Reads are served from the node's applied
//! state; the leader first confirms it still leads (`ensure_linearizable`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::{self, AuthError};
use crate::model::{BridgeLag, BrokerStatus, SigningKey, Usage};
use crate::raft::network::{Network, APPEND_ENTRIES_MAX, ENTRY_BYTES_MAX, SECRET_HEADER};
use crate::raft::store::{self, LogStore, StateMachine};
use crate::raft::{NodeId, Outcome, Raft};
use crate::state::{Applied, ApplyError, Command, Envelope, Metadata};
use crate::upstream;

pub use crate::config::{NodeConfig, PeerAddr};

/// How long a forwarded or local write may take before the caller is told
/// to retry.
pub const WRITE_TIMEOUT_MS: u64 = 5_000;
/// How long dialling another control-plane node may take: an election
/// must not wait on a dead peer longer than its own timeout.
pub const PEER_CONNECT_MS: u64 = 500;
/// How often the leader looks for tenants whose data key is due for
/// rotation (`EncryptionSpec::rotation_period_ms`).
pub const DATA_KEY_ROTATION_CHECK_MS: u64 = 10_000;
/// Rotations the leader proposes per check at most; the rest wait for the
/// next check.
pub const DATA_KEY_ROTATIONS_PER_CHECK_MAX: usize = 64;
/// The actor scheduled rotations are audited under.
pub const DATA_KEY_ROTATION_ACTOR: &str = "felix-rotation";
/// Heartbeat intervals after which a broker's bridge report is no longer
/// shown: a broker that stopped beating (or lost its leaderships) must not
/// leave a frozen lag behind, and one missed beat must not blank it.
pub const BRIDGE_LAG_REPORT_INTERVALS_MAX: u32 = 3;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CpError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    #[error("no control-plane leader is known yet; retry")]
    NoLeader,
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Store(String),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 32 bytes from the operating system's generator.
pub fn random32() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random source works");
    b
}

/// A new signing key with a fresh id and seed.
pub fn fresh_key() -> SigningKey {
    let seed = random32();
    let kid = format!(
        "k{}-{:02x}{:02x}{:02x}",
        now_ms() / 1000,
        seed[0],
        seed[1],
        seed[2]
    );
    auth::new_signing_key(&kid, random32())
}

/// A new data key's material: 32 bytes from the same generator,
/// base64url without padding.
pub fn fresh_data_key_material() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random32())
}

/// The leader's view of broker liveness (not replicated: a new leader
/// starts counting afresh).
#[derive(Debug, Default)]
pub struct Liveness {
    pub seen: HashMap<u32, Instant>,
    /// Active subscribers per `tenant/namespace/stream`, per broker.
    pub subscribers: HashMap<u32, BTreeMap<String, u32>>,
    /// Per broker, what it last reported using per `tenant/namespace`
    /// that has a usage quota (or whose tenant has).
    pub usage: HashMap<u32, BTreeMap<String, Usage>>,
    /// Per broker, its last bridge report and when it came.
    pub bridge_lag: HashMap<u32, (Instant, Vec<BridgeLag>)>,
    led_since: Option<Instant>,
    /// The last `Reconcile` trial that found nothing to do, if the last
    /// one did. Another trial on the same metadata before its `until_ms`
    /// would only learn the same.
    reconcile_idle: Option<ReconcileIdle>,
    /// When this leader last looked for data keys due for rotation.
    data_keys_checked: Option<Instant>,
}

/// A `Reconcile` trial's "nothing to do", and how long it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReconcileIdle {
    /// The applied log index the trial saw: any entry applied since may
    /// have changed the metadata.
    applied: Option<u64>,
    /// When (ms since the epoch) `Reconcile` next reads the clock
    /// differently on that metadata; `None`: never.
    until_ms: Option<u64>,
}

pub struct Node {
    pub id: NodeId,
    pub cfg: NodeConfig,
    pub raft: Raft,
    pub sm: StateMachine,
    /// The other control-plane nodes (forwarded proposals and heartbeats):
    /// their CA only. Identity providers are fetched apart (`upstream`).
    pub peers: reqwest::Client,
    pub liveness: Mutex<Liveness>,
    /// Upstream identity providers' documents fetched, by URL.
    pub documents: Mutex<upstream::Documents>,
}

impl Node {
    pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, CpError> {
        cfg.validate().map_err(CpError::BadRequest)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| CpError::Store(format!("{}: {e}", cfg.data_dir.display())))?;
        let db = store::open(&cfg.data_dir.join("raft")).map_err(|e| CpError::Store(e.to_string()))?;
        let log = LogStore::new(db.clone());
        let sm = StateMachine::open(db).map_err(|e| CpError::Store(e.to_string()))?;
        let raft_cfg = Config {
            cluster_name: "felix-controlplane".into(),
            heartbeat_interval: 100,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft_snapshot_entries),
            max_in_snapshot_log_to_keep: cfg.raft_snapshot_entries,
            max_payload_entries: APPEND_ENTRIES_MAX,
            ..Config::default()
        }
        .validate()
        .map_err(|e| CpError::BadRequest(e.to_string()))?;
        let peers = crate::https::peer_client(
            cfg.tls.as_ref().map(|t| t.ca.as_path()),
            Duration::from_millis(PEER_CONNECT_MS),
            &cfg.region,
        )
        .map_err(|e| CpError::Unavailable(e.to_string()))?;
        let network = Network::new(peers.clone(), cfg.peer_credential().to_owned(), cfg.scheme());
        let outvoted = network.outvoted.clone();
        let raft = Raft::new(cfg.id, Arc::new(raft_cfg), network, log, sm.clone())
            .await
            .map_err(|e| CpError::Store(e.to_string()))?;
        let me = cfg.advertise.clone().unwrap_or_else(|| cfg.listen.to_string());
        let members: BTreeMap<NodeId, BasicNode> = if cfg.peers.is_empty() {
            [(cfg.id, BasicNode { addr: me })].into()
        } else {
            cfg.peers
                .iter()
                .map(|p| (p.id, BasicNode { addr: p.addr.clone() }))
                .collect()
        };
        // Every node of a fresh cluster initializes with the same
        // membership; one that already has a log refuses, which is fine.
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "not initializing: the node has state");
        }
        let node = Arc::new(Node {
            id: cfg.id,
            cfg,
            raft,
            sm,
            peers,
            liveness: Mutex::new(Liveness::default()),
            documents: Mutex::new(upstream::Documents::default()),
        });
        tokio::spawn(monitor(Arc::downgrade(&node)));
        tokio::spawn(crate::raft::elections::restand_split_votes(
            node.raft.clone(),
            outvoted,
            node.cfg.election_timeout_max_ms,
        ));
        Ok(node)
    }

    /// Reads the applied metadata.
    pub fn read<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        f(&self.sm.shared.read().expect("machine lock").metadata)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The API address of the current leader, if one is known.
    pub fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node.addr))
    }

    /// Confirms this node still leads before a read that must not be stale;
    /// on a follower, a no-op (reads there are as of its applied state).
    pub async fn read_barrier(&self) {
        if self.is_leader() {
            let _ = self.raft.ensure_linearizable().await;
        }
    }

    /// Commits `command` through the leader and returns its outcome once
    /// this node has applied it too.
    pub async fn propose(&self, actor: &str, command: Command) -> Result<Applied, CpError> {
        let deadline = Instant::now() + Duration::from_millis(WRITE_TIMEOUT_MS);
        loop {
            let r = if self.is_leader() {
                self.propose_local(actor, command.clone()).await
            } else {
                match self.leader_addr() {
                    Some((id, addr)) if id != self.id => self.forward(&addr, actor, &command).await,
                    _ => Err(CpError::NoLeader),
                }
            };
            match r {
                Err(CpError::NoLeader | CpError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(applied) => {
                    self.wait_applied(applied.version, deadline).await;
                    return Ok(applied);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Proposes on this node, which must lead.
    pub async fn propose_local(&self, actor: &str, command: Command) -> Result<Applied, CpError> {
        let env = Envelope {
            actor: actor.to_owned(),
            now_ms: now_ms(),
            command,
        };
        // Refused here, before the log: an entry the followers' limit
        // could not take would stop replication for good.
        let bytes = serde_json::to_vec(&env).map_or(usize::MAX, |v| v.len());
        if bytes > ENTRY_BYTES_MAX {
            return Err(CpError::BadRequest(format!(
                "a change of {bytes} bytes is over the largest Raft entry ({ENTRY_BYTES_MAX})"
            )));
        }
        match self.raft.client_write(env).await {
            Ok(r) => Ok(r.data.0?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(CpError::NoLeader),
            Err(e) => Err(CpError::Unavailable(e.to_string())),
        }
    }

    async fn forward(&self, leader: &str, actor: &str, command: &Command) -> Result<Applied, CpError> {
        let r = self
            .peers
            .post(format!("{}://{leader}/raft/propose", self.cfg.scheme()))
            .header(SECRET_HEADER, self.cfg.peer_credential())
            .timeout(Duration::from_millis(WRITE_TIMEOUT_MS))
            .json(&Forwarded {
                actor: actor.to_owned(),
                command: command.clone(),
            })
            .send()
            .await
            .map_err(|e| CpError::Unavailable(format!("forwarding to the leader: {e}")))?;
        if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(CpError::NoLeader);
        }
        if !r.status().is_success() {
            return Err(CpError::Unavailable(format!(
                "leader answered HTTP {}",
                r.status()
            )));
        }
        let o: Outcome = r.json().await.map_err(|e| CpError::Unavailable(e.to_string()))?;
        Ok(o.0?)
    }

    async fn wait_applied(&self, version: u64, deadline: Instant) {
        let mut rx = self.sm.subscribe();
        let wait = rx.wait_for(|v| *v >= version);
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), wait).await;
    }

    /// A broker's heartbeat, on the leader: it is alive, and these are its
    /// active subscribers. A broker marked down comes back up.
    pub async fn heartbeat(
        &self,
        broker: u32,
        subscribers: BTreeMap<String, u32>,
        usage: BTreeMap<String, Usage>,
        bridges: Vec<BridgeLag>,
    ) -> Result<(), CpError> {
        let status = self.read(|m| m.brokers.get(&broker).map(|b| b.status));
        let Some(status) = status else {
            return Err(ApplyError::not_found(format!("broker {broker} is not registered")).into());
        };
        {
            let mut l = self.liveness.lock().expect("liveness lock");
            let now = Instant::now();
            l.seen.insert(broker, now);
            l.subscribers.insert(broker, subscribers);
            l.usage.insert(broker, usage);
            // A report without bridges replaces one with: the broker
            // carries none now.
            if bridges.is_empty() {
                l.bridge_lag.remove(&broker);
            } else {
                l.bridge_lag.insert(broker, (now, bridges));
            }
        }
        if status == BrokerStatus::Down {
            self.propose(
                &format!("broker:{broker}"),
                Command::SetBrokerStatus {
                    broker,
                    status: BrokerStatus::Active,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Active subscribers of `tenant/namespace/stream` the brokers last
    /// reported (leader only; zero elsewhere).
    pub fn subscribers_of(&self, key: &str) -> u32 {
        let l = self.liveness.lock().expect("liveness lock");
        l.subscribers.values().filter_map(|m| m.get(key)).sum()
    }

    /// The cluster's usage of every tenant (`acme`) and namespace
    /// (`acme/prod`) with a usage quota: the sum of what brokers heard
    /// from within the silence limit last reported (leader only; empty
    /// elsewhere). Brokers check their quotas against it.
    pub fn usage_totals(&self) -> BTreeMap<String, Usage> {
        let silent_after = Duration::from_millis(
            self.cfg.broker_heartbeat_interval_ms * u64::from(self.cfg.broker_heartbeats_missed_max),
        );
        let mut per_ns: BTreeMap<String, Usage> = BTreeMap::new();
        {
            let l = self.liveness.lock().expect("liveness lock");
            let now = Instant::now();
            for (broker, report) in &l.usage {
                if l.seen
                    .get(broker)
                    .is_none_or(|t| now.duration_since(*t) >= silent_after)
                {
                    continue;
                }
                for (scope, u) in report {
                    per_ns.entry(scope.clone()).or_default().add(u);
                }
            }
        }
        self.read(|m| {
            let mut out = BTreeMap::new();
            for (tn, t) in &m.tenants {
                let mut tenant_total = Usage::default();
                for (nn, n) in &t.namespaces {
                    let key = format!("{tn}/{nn}");
                    let u = per_ns.get(&key).copied().unwrap_or_default();
                    tenant_total.add(&u);
                    if n.spec.quotas.limits_usage() {
                        out.insert(key, u);
                    }
                }
                if t.spec.quotas.limits_usage() {
                    out.insert(tn.clone(), tenant_total);
                }
            }
            out
        })
    }

    /// How long a broker's bridge report is shown.
    fn bridge_lag_kept(&self) -> Duration {
        Duration::from_millis(
            self.cfg
                .broker_heartbeat_interval_ms
                .saturating_mul(u64::from(BRIDGE_LAG_REPORT_INTERVALS_MAX)),
        )
    }

    /// What the brokers last reported of bridge `bridge`, one row per
    /// source shard as `(broker, report)`, sorted by stream and shard
    /// (leader only; empty elsewhere). Reports older than
    /// [`BRIDGE_LAG_REPORT_INTERVALS_MAX`] heartbeat intervals, and those
    /// of brokers no longer registered, are left out. Two brokers naming
    /// one shard (its leadership just moved) count once: the one further
    /// on, since a shard's position only moves forward.
    pub fn bridge_lag(&self, bridge: &str) -> Vec<(u32, BridgeLag)> {
        let registered: std::collections::BTreeSet<u32> = self.read(|m| m.brokers.keys().copied().collect());
        let kept = self.bridge_lag_kept();
        let now = Instant::now();
        let mut rows: BTreeMap<(String, u32), (u32, BridgeLag)> = BTreeMap::new();
        let l = self.liveness.lock().expect("liveness lock");
        for (broker, (at, report)) in &l.bridge_lag {
            if !registered.contains(broker) || now.duration_since(*at) >= kept {
                continue;
            }
            for r in report.iter().filter(|r| r.bridge == bridge) {
                let key = (r.stream.clone(), r.shard);
                let further = rows
                    .get(&key)
                    .is_none_or(|(_, held)| (r.position, r.end) > (held.position, held.end));
                if further {
                    rows.insert(key, (*broker, r.clone()));
                }
            }
        }
        rows.into_values().collect()
    }

    /// Drops bridge reports that [`Node::bridge_lag`] would no longer
    /// show, so a broker that left keeps no memory.
    fn prune_bridge_lag(&self) {
        let registered: std::collections::BTreeSet<u32> = self.read(|m| m.brokers.keys().copied().collect());
        let kept = self.bridge_lag_kept();
        let now = Instant::now();
        self.liveness
            .lock()
            .expect("liveness lock")
            .bridge_lag
            .retain(|b, (at, _)| registered.contains(b) && now.duration_since(*at) < kept);
    }

    /// One pass of the leader's duties: brokers silent for too long are
    /// marked down; placement is reconciled when that would change
    /// anything; data keys due are rotated; stale bridge reports dropped.
    async fn tick(&self) {
        if !self.is_leader() {
            let mut l = self.liveness.lock().expect("liveness lock");
            l.led_since = None;
            l.data_keys_checked = None;
            // A leader again would hear fresh reports; these would only age.
            l.bridge_lag.clear();
            return;
        }
        self.prune_bridge_lag();
        self.rotate_due_data_keys().await;
        let silent_after = Duration::from_millis(
            self.cfg.broker_heartbeat_interval_ms * u64::from(self.cfg.broker_heartbeats_missed_max),
        );
        let brokers: Vec<(u32, BrokerStatus)> = self.read(|m| {
            m.brokers
                .values()
                .map(|b| (b.registration.id, b.status))
                .collect()
        });
        let silent: Vec<u32> = {
            let mut l = self.liveness.lock().expect("liveness lock");
            let now = Instant::now();
            // A new leader has heard nobody yet: it counts from now.
            let since = *l.led_since.get_or_insert(now);
            brokers
                .iter()
                .filter(|(_, s)| *s != BrokerStatus::Down)
                .filter(|(id, _)| {
                    now.duration_since(l.seen.get(id).copied().unwrap_or(since).max(since)) >= silent_after
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for broker in silent {
            tracing::warn!(broker, "broker missed its heartbeats; marking it down");
            if let Err(e) = self
                .propose_local(
                    "controlplane",
                    Command::SetBrokerStatus {
                        broker,
                        status: BrokerStatus::Down,
                    },
                )
                .await
            {
                tracing::warn!(broker, error = %e, "could not mark broker down");
            }
        }
        let reconcile = Command::Reconcile {
            grace_ms: self.cfg.replace_after_ms,
            moves_per_broker_max: self.cfg.moves_per_broker_max,
        };
        let now = now_ms();
        let idle = self.liveness.lock().expect("liveness lock").reconcile_idle;
        let (due, seen) = {
            let machine = self.sm.shared.read().expect("machine lock");
            let applied = machine.applied.map(|l| l.index);
            let m = &machine.metadata;
            match idle {
                Some(i) if i.applied == applied && i.until_ms.is_none_or(|u| now < u) => (false, i),
                _ => {
                    let seen = ReconcileIdle {
                        applied,
                        until_ms: m.reconcile_changes_at(now, self.cfg.replace_after_ms),
                    };
                    let due = m.reconcile_would_change(
                        now,
                        self.cfg.replace_after_ms,
                        self.cfg.moves_per_broker_max,
                    );
                    (due, seen)
                }
            }
        };
        self.liveness.lock().expect("liveness lock").reconcile_idle = (!due).then_some(seen);
        if due {
            match self.propose_local("controlplane", reconcile).await {
                Ok(a) => tracing::info!(moves = a.moves.len(), version = a.version, "reconciled placement"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        }
    }

    /// Every [`DATA_KEY_ROTATION_CHECK_MS`], proposes a new data key for
    /// each tenant (up to [`DATA_KEY_ROTATIONS_PER_CHECK_MAX`]) whose
    /// rotation period has passed since its newest one was made. Each is
    /// `due_only`: applied after another rotation, or to a tenant whose
    /// encryption changed meanwhile, it does nothing or is refused.
    async fn rotate_due_data_keys(&self) {
        {
            let mut l = self.liveness.lock().expect("liveness lock");
            let now = Instant::now();
            let every = Duration::from_millis(DATA_KEY_ROTATION_CHECK_MS);
            if l.data_keys_checked.is_some_and(|t| now.duration_since(t) < every) {
                return;
            }
            l.data_keys_checked = Some(now);
        }
        let now = now_ms();
        let (due, full): (Vec<String>, Vec<String>) = self.read(|m| {
            let mut due = Vec::new();
            let mut full = Vec::new();
            for (name, t) in m.tenants.iter().filter(|(_, t)| t.data_key_due(now)) {
                if t.data_keys.len() >= crate::model::DATA_KEYS_MAX {
                    full.push(name.clone());
                } else if due.len() < DATA_KEY_ROTATIONS_PER_CHECK_MAX {
                    due.push(name.clone());
                }
            }
            (due, full)
        });
        for tenant in full {
            tracing::warn!(
                tenant,
                max = crate::model::DATA_KEYS_MAX,
                "the tenant's data key is due for rotation but it has the most data keys it may have; new records stay sealed under its current one"
            );
        }
        for tenant in due {
            let cmd = Command::RotateDataKey {
                tenant: tenant.clone(),
                material: fresh_data_key_material(),
                due_only: true,
            };
            match self.propose_local(DATA_KEY_ROTATION_ACTOR, cmd).await {
                Ok(a) if a.changed => {
                    tracing::info!(tenant, version = a.version, "rotated a data key on schedule")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(tenant, error = %e, "scheduled data key rotation failed"),
            }
        }
    }

    /// The JWKS of an upstream issuer: inline, or fetched (directly or
    /// through its discovery document) under `upstream`'s rules. `refresh`
    /// asks for a newer one (a token names a key not seen yet), which is
    /// fetched only if the last fetch is old enough.
    pub async fn upstream_jwks(
        &self,
        issuer: &crate::model::IdpIssuer,
        refresh: bool,
    ) -> Result<serde_json::Value, CpError> {
        if let Some(j) = &issuer.jwks {
            return Ok(j.clone());
        }
        let url = match (&issuer.jwks_url, &issuer.discovery_url) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => {
                let doc = self.upstream_document(d, false).await?;
                match doc.get("jwks_uri").and_then(|u| u.as_str()) {
                    Some(u) => u.to_owned(),
                    None => {
                        tracing::warn!(issuer = %issuer.issuer, url = %d, "the discovery document has no jwks_uri");
                        return Err(CpError::Unavailable(upstream::FetchError::PUBLIC.into()));
                    }
                }
            }
            (None, None) => return Err(CpError::Unavailable("issuer has no key source".into())),
        };
        self.upstream_document(&url, refresh).await
    }

    async fn upstream_document(&self, url: &str, refresh: bool) -> Result<serde_json::Value, CpError> {
        let decision = self
            .documents
            .lock()
            .expect("documents lock")
            .decide(url, Instant::now(), refresh);
        let outcome = match decision {
            upstream::Decision::Use(doc) => return Ok(doc),
            upstream::Decision::Fail(e) => Err(e),
            upstream::Decision::Fetch => {
                let outcome = upstream::fetch(url, self.cfg.idp_fetch_insecure).await;
                let mut docs = self.documents.lock().expect("documents lock");
                docs.record(url, Instant::now(), &outcome);
                // A failed refetch may still leave a document to use.
                match (&outcome, docs.decide(url, Instant::now(), false)) {
                    (Err(_), upstream::Decision::Use(doc)) => {
                        tracing::warn!(url, error = %outcome.as_ref().unwrap_err(), "refetching an identity provider's document failed; using the one fetched before");
                        return Ok(doc);
                    }
                    _ => outcome,
                }
            }
        };
        outcome.map_err(|e| {
            tracing::warn!(url, error = %e, "an identity provider's document was not used");
            CpError::Unavailable(upstream::FetchError::PUBLIC.into())
        })
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("listen", &self.cfg.listen)
            .finish_non_exhaustive()
    }
}

/// A write forwarded by a follower to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub actor: String,
    pub command: Command,
}

async fn monitor(node: std::sync::Weak<Node>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Some(n) = node.upgrade() else { return };
        n.tick().await;
    }
}
