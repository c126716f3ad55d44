//! One broker node: the streams it hosts (each a set of shards), the shared
//! index, the metadata file, the hot cache, and the upkeep that runs in the
//! background (retention, segment rolling, TTL sweeps and compaction).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use felix_client::wire::StreamConfig;
use felix_controlplane::model::ShardPlacement;
use felix_index::{CompactionConfig, Index, IndexConfig, Maintenance, ShardKind};
use felix_log::{LogConfig, ShardId};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::{BrokerConfig, LogSettings};
use crate::control::ControlLink;
use crate::error::BrokerError;
use crate::hot::HotCache;
use crate::meta::{MetaStore, StreamKind, StreamMeta};
use crate::names::StreamName;
use crate::shard::HostedShard;

pub use crate::clock::{skewed_clock, system_clock, Clock};

mod describe;
mod follow;
mod forward;
mod groups;
mod hosting;
mod streams;
mod upkeep;

/// A stream as the control plane has it: its settings, and where each
/// shard's replicas belong.
#[derive(Debug, Clone)]
pub struct Followed {
    pub config: StreamConfig,
    pub placement: Vec<ShardPlacement>,
}

/// A stream this node knows: every broker knows every stream, and holds
/// the replicas of the shards placed on it.
#[derive(Debug)]
pub struct StreamHandle {
    pub name: StreamName,
    /// Fixed at creation, so read without the lock on every keyed request.
    key_routing: felix_model::KeyRouting,
    meta: Mutex<StreamMeta>,
    /// By shard number: the replica held here, or `None` for a shard
    /// placed on other brokers only.
    shards: Vec<Option<Arc<HostedShard>>>,
    /// By shard number, for a shard not held here: a broker placed on it
    /// (id, client address), which a request is sent on to.
    elsewhere: Vec<Option<(u64, String)>>,
    /// Wakes the stream's subscriptions (shared by its replicas here).
    signal: Arc<watch::Sender<u64>>,
    /// Live subscriptions (a delete refuses while any is open, unless forced).
    pub subscribers: Arc<AtomicUsize>,
}

impl StreamHandle {
    pub fn meta(&self) -> StreamMeta {
        self.meta.lock().expect("stream meta lock").clone()
    }

    /// Runs `f` on the stream's metadata without copying it.
    pub fn with_meta<R>(&self, f: impl FnOnce(&StreamMeta) -> R) -> R {
        f(&self.meta.lock().expect("stream meta lock"))
    }

    pub fn kind(&self) -> crate::meta::StreamKind {
        self.meta.lock().expect("stream meta lock").kind
    }

    /// The shard number `key` belongs to.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        self.key_routing.shard(key, self.count())
    }

    /// How many shards the stream has (held here or not).
    pub fn count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The replicas held here, with their shard numbers.
    pub fn hosted(&self) -> impl Iterator<Item = (u32, &Arc<HostedShard>)> {
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }

    /// Shard `n`'s replica here, if this broker holds one.
    pub fn held(&self, n: u32) -> Option<&Arc<HostedShard>> {
        self.shards.get(n as usize)?.as_ref()
    }

    /// Shard number `n`, or a clear error: `NotLeader` naming a broker
    /// that holds it when this one does not.
    pub fn shard(&self, n: u32) -> Result<&Arc<HostedShard>, BrokerError> {
        match self.shards.get(n as usize) {
            Some(Some(s)) => Ok(s),
            Some(None) => Err(BrokerError::NotLeader {
                leader: self.elsewhere.get(n as usize).cloned().flatten(),
            }),
            None => Err(BrokerError::Invalid(format!(
                "stream {} has {} shards; there is no shard {n}",
                self.name,
                self.shards.len()
            ))),
        }
    }
}

/// Leaderships a stopping broker hands over at once. Each hand-over is an
/// election; a broker leading a thousand groups that handed them all over
/// at once saturated the CPU, RPCs outwaited their timeouts and the
/// elections began again. Each waits out its followers' lease (about a
/// second) doing nothing, so 64 at a time took 20 s for a thousand.
pub const STEP_DOWNS_PARALLEL_MAX: usize = 256;
/// Longest a stopping broker spends handing leaderships over (within a
/// usual termination grace period of 30 s).
pub const STEP_DOWNS_MS_MAX: u64 = 20_000;

/// A broker node.
pub struct Node {
    broker_id: u64,
    address: Mutex<String>,
    data_dir: PathBuf,
    log: LogSettings,
    meta: Mutex<MetaStore>,
    index: Arc<Index>,
    streams: RwLock<HashMap<String, Arc<StreamHandle>>>,
    pub(crate) hot: HotCache,
    maintenance: Maintenance,
    clock: Clock,
    /// Round robin for publishes without a shard or key.
    pub(crate) spread: AtomicU64,
    /// Whether shards are replicated (a `[cluster]` is configured).
    replicated: bool,
    cluster: OnceLock<Arc<Cluster>>,
    control: OnceLock<Arc<ControlLink>>,
    /// Publish quotas: the control plane's per tenant and namespace, and
    /// the file's `[quotas]` for the rest.
    pub(crate) quotas: Mutex<crate::control::quota::QuotaTable>,
    /// The file's `[defaults]` (replaced on SIGHUP).
    defaults: RwLock<crate::config::StreamDefaults>,
    /// The tenants' data keys (encryption at rest).
    pub(crate) keys: Arc<crate::at_rest::Tenants>,
    /// The bridges this broker knows, and its carriers' positions.
    pub bridges: crate::bridge::Bridges,
    /// This process's hold on the data directory, shared by every shard's
    /// log under it (`DirLock::Parent`: no lock file per log, so a replica
    /// costs one open file, its active segment); the last of them lets go.
    dir_lock: Arc<felix_log::DirGuard>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("broker_id", &self.broker_id)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Node {
    /// Opens the node's data directory: metadata, index and every shard
    /// (recovering logs and bringing the index in line with them).
    pub fn open(config: &BrokerConfig, clock: Clock) -> Result<Arc<Node>, BrokerError> {
        let dir = &config.data_dir;
        let dir_lock = felix_log::lock_dir(dir)?;
        std::fs::create_dir_all(dir.join(crate::identity::SHARDS_DIR))?;
        let (index, reset) = Index::open_or_reset(
            dir.join("index"),
            IndexConfig {
                block_cache_bytes: config.index_cache_bytes,
                ..IndexConfig::default()
            },
            clock(),
        )?;
        if reset {
            tracing::warn!("the index was unreadable and is being rebuilt from the segments");
        }
        let index = Arc::new(index);
        let c = clock.clone();
        let maintenance = Maintenance::start(
            index.clone(),
            Duration::from_millis(config.maintenance_interval_ms),
            move || c(),
        )?;
        let meta = MetaStore::open(dir)?;
        let master: Option<Arc<dyn crate::at_rest::MasterKey>> = match &config.encryption {
            Some(e) => Some(Arc::new(crate::at_rest::FileMasterKey::load(&e.master_key_file)?)),
            None => None,
        };
        let keys = crate::at_rest::Tenants::open(dir, master, clock.clone())?;
        let node = Node {
            keys,
            bridges: crate::bridge::Bridges::default(),
            dir_lock: Arc::new(dir_lock),
            broker_id: config.broker_id,
            address: Mutex::new(config.listen.to_string()),
            data_dir: dir.clone(),
            log: config.log.clone(),
            meta: Mutex::new(meta),
            index,
            streams: RwLock::new(HashMap::new()),
            hot: HotCache::new(config.hot_cache_bytes_max),
            maintenance,
            clock,
            spread: AtomicU64::new(0),
            replicated: config.cluster.is_some(),
            cluster: OnceLock::new(),
            control: OnceLock::new(),
            quotas: Mutex::new(crate::control::quota::QuotaTable::default()),
            defaults: RwLock::new(config.defaults.clone()),
        };
        node.apply_reloadable(&config.reloadable());
        let all: Vec<(StreamName, StreamMeta)> = node
            .meta
            .lock()
            .expect("meta lock")
            .streams()
            .map(|(n, m)| (n, m.clone()))
            .collect();
        let began = std::time::Instant::now();
        for (name, m) in all {
            node.rehost(&name, m, false)?;
        }
        let shards: usize = node.streams().iter().map(|h| h.hosted().count()).sum();
        tracing::info!(
            shards,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "shards opened"
        );
        Ok(Arc::new(node))
    }

    /// Applies the settings SIGHUP may change (`log_level` is the
    /// process's, not the node's).
    pub fn apply_reloadable(&self, r: &crate::config::Reloadable) {
        self.quotas
            .lock()
            .expect("quota lock")
            .set_fallback(Some(r.quotas.quotas()));
        *self.defaults.write().expect("defaults lock") = r.defaults.clone();
    }

    /// `c` with the file's defaults for what it leaves unset.
    pub fn with_defaults(&self, mut c: StreamConfig) -> StreamConfig {
        let d = self.defaults.read().expect("defaults lock");
        c.retention_ms = c.retention_ms.or(d.retention_ms);
        c.retention_bytes = c.retention_bytes.or(d.retention_bytes);
        c
    }

    pub fn broker_id(&self) -> u64 {
        self.broker_id
    }

    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// The tenants' data keys (encryption at rest).
    pub fn at_rest(&self) -> &Arc<crate::at_rest::Tenants> {
        &self.keys
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The address clients are told to use.
    pub fn set_address(&self, a: String) {
        *self.address.lock().expect("address lock") = a;
    }

    fn shard_dir(&self, id: ShardId) -> PathBuf {
        self.data_dir
            .join(crate::identity::SHARDS_DIR)
            .join(id.0.to_string())
    }

    /// Opens (recovers) shard `id` of a stream like `m` from its directory.
    fn open_shard(
        &self,
        id: ShardId,
        m: &StreamMeta,
        signal: &Arc<watch::Sender<u64>>,
        tenant: &str,
    ) -> Result<Arc<HostedShard>, BrokerError> {
        let kind = if m.kind.keyed() {
            ShardKind::Keyed
        } else {
            ShardKind::Stream
        };
        let cfg = LogConfig {
            segment_bytes: self.log.segment_bytes,
            segment_ms: self.log.segment_ms,
            batch_bytes_max: self.log.batch_bytes_max,
            durability: m.durability,
            verify: if self.log.verify_on_start {
                felix_log::Verify::Full
            } else {
                felix_log::Verify::FromCheckpoint
            },
            dir_lock: felix_log::DirLock::Parent(self.dir_lock.clone()),
            keys: Some(self.keys.ring(tenant, id.0)),
            ..LogConfig::default()
        };
        let dir = self.shard_dir(id);
        let s = if self.replicated {
            HostedShard::open_replicated(&dir, id, kind, cfg, self.index.clone())?
        } else {
            HostedShard::open(&dir, id, kind, cfg, self.index.clone())?
        }
        .with_signal(signal.clone());
        if kind == ShardKind::Keyed {
            self.maintenance
                .register(id, s.log().clone(), compaction_config(m.kind));
        }
        Ok(Arc::new(s))
    }

    /// The stream called `name` (either form), or `UnknownStream`.
    pub fn stream(&self, name: &str) -> Result<Arc<StreamHandle>, BrokerError> {
        let n = StreamName::parse(name)?;
        self.stream_by_name(&n)
    }

    /// [`Node::stream`], except that an unknown name is looked up again
    /// after catching up with the control plane's feed: a stream created
    /// through another broker a moment ago is found.
    pub async fn find_stream(&self, name: &str) -> Result<Arc<StreamHandle>, BrokerError> {
        match (self.stream(name), self.control()) {
            (Err(BrokerError::UnknownStream(_)), Some(link)) => {
                link.caught_up(true).await?;
                self.stream(name)
            }
            (r, _) => r,
        }
    }

    pub fn stream_by_name(&self, n: &StreamName) -> Result<Arc<StreamHandle>, BrokerError> {
        self.streams
            .read()
            .expect("streams lock")
            .get(&n.to_string())
            .cloned()
            .ok_or_else(|| BrokerError::UnknownStream(n.to_string()))
    }

    /// What background maintenance (TTL sweeps, compaction) has done.
    pub fn maintenance_stats(&self) -> felix_index::MaintenanceStats {
        self.maintenance.stats()
    }

    /// Hands every leadership this broker holds to another replica,
    /// [`STEP_DOWNS_PARALLEL_MAX`] at a time, each within `wait`
    /// (`Replica::step_down`), all within [`STEP_DOWNS_MS_MAX`]; groups not
    /// reached by then are left to their followers' elections. Returns
    /// (groups led, groups handed over).
    pub async fn step_down_all(&self, wait: Duration) -> (usize, usize) {
        use futures_util::StreamExt;
        if self.cluster().is_none() {
            return (0, 0);
        }
        let led: Vec<felix_replication::Replica> = self
            .streams()
            .iter()
            .flat_map(|h| {
                h.hosted()
                    .filter_map(|(_, s)| s.replica().cloned())
                    .collect::<Vec<_>>()
            })
            .filter(felix_replication::Replica::is_leader)
            .collect();
        let n = led.len();
        let mut steps = futures_util::stream::iter(led)
            .map(|r| async move { r.step_down(wait).await })
            .buffer_unordered(STEP_DOWNS_PARALLEL_MAX);
        let mut moved = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(STEP_DOWNS_MS_MAX);
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, steps.next()).await {
            moved += usize::from(done);
        }
        (n, moved)
    }

    /// Waits until no publish is in flight on any shard (their acks are
    /// being sent), at most `wait`. Returns whether none is.
    pub async fn drain_in_flight(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let busy = self
                .streams()
                .iter()
                .any(|h| h.hosted().any(|(_, s)| s.in_flight_bytes() > 0));
            if !busy {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn streams(&self) -> Vec<Arc<StreamHandle>> {
        let mut v: Vec<_> = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The control plane this broker follows, if it has one.
    pub fn control(&self) -> Option<&Arc<ControlLink>> {
        self.control.get()
    }

    pub(crate) fn set_control(&self, link: Arc<ControlLink>) {
        let _ = self.control.set(link);
    }

    /// Live subscriptions per stream with any, for heartbeats (the control
    /// plane refuses to delete a stream that has some unless forced).
    pub fn subscriber_counts(&self) -> std::collections::BTreeMap<String, u32> {
        self.streams()
            .into_iter()
            .filter_map(|h| {
                let n = h.subscribers.load(Ordering::Acquire);
                (n > 0).then(|| (h.name.to_string(), u32::try_from(n).unwrap_or(u32::MAX)))
            })
            .collect()
    }

    /// What this broker holds per `tenant/namespace` that `watched` names:
    /// the log bytes of the shards it leads (so each shard is counted
    /// once in the cluster), of caches apart too, and its live
    /// subscriptions.
    pub fn local_usage(
        &self,
        watched: impl Fn(&str, &str) -> bool,
    ) -> std::collections::BTreeMap<String, felix_controlplane::model::Usage> {
        let mut out: std::collections::BTreeMap<String, felix_controlplane::model::Usage> =
            Default::default();
        let handles: Vec<Arc<StreamHandle>> = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .cloned()
            .collect();
        for h in handles {
            if !watched(&h.name.tenant, &h.name.namespace) {
                continue;
            }
            let is_cache = h.kind() == StreamKind::Cache;
            let u = out
                .entry(format!("{}/{}", h.name.tenant, h.name.namespace))
                .or_default();
            u.subscriptions += h.subscribers.load(Ordering::Acquire) as u64;
            for (_, s) in h.hosted() {
                if s.is_closed() || !s.replica().is_none_or(|r| r.is_leader()) {
                    continue;
                }
                let bytes = s.log().with(|l| l.size_bytes());
                u.storage_bytes += bytes;
                if is_cache {
                    u.cache_bytes += bytes;
                }
            }
        }
        out
    }

    /// Live subscriptions on this broker to streams of `tenant`, and of
    /// `tenant/namespace`.
    pub fn live_subscriptions(&self, tenant: &str, namespace: &str) -> (u64, u64) {
        let streams = self.streams.read().expect("streams lock");
        let mut n = (0, 0);
        for h in streams.values().filter(|h| h.name.tenant == tenant) {
            let subs = h.subscribers.load(Ordering::Acquire) as u64;
            n.0 += subs;
            if h.name.namespace == namespace {
                n.1 += subs;
            }
        }
        n
    }

    /// The cluster this broker is part of, once started.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }
}

fn compaction_config(kind: StreamKind) -> CompactionConfig {
    match kind {
        // A cache keeps no history worth reading: compact as soon as half is dead.
        StreamKind::Cache => CompactionConfig {
            delete_retention_ms: 60_000,
            ..CompactionConfig::default()
        },
        _ => CompactionConfig::default(),
    }
}
