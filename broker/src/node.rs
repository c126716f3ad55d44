//! One broker node: the streams it hosts (each a set of shards), the shared
//! index, the metadata file, the hot cache, and the upkeep that runs in the
//! background (retention, segment rolling, TTL sweeps and compaction).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use felix_client::wire::{BrokerInfo, ShardInfo, ShardStats, StreamConfig, StreamInfo};
use felix_controlplane::model::ShardPlacement;
use felix_index::{CompactionConfig, Index, IndexConfig, Maintenance, ShardKind};
use felix_log::{LogConfig, Retention, ShardId};
use tokio::sync::watch;

use crate::cluster::{Cluster, MetaOp, StreamSpec};
use crate::config::{BrokerConfig, LogSettings};
use crate::control::ControlLink;
use crate::error::BrokerError;
use crate::hot::HotCache;
use crate::meta::{MetaStore, StreamKind, StreamMeta};
use crate::metagroup::{MetaApplier, MetaOwner};
use crate::names::StreamName;
use crate::shard::HostedShard;

/// The clock a node reads; tests inject one to move TTLs and leases.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock, in ms since the epoch.
pub fn system_clock() -> Clock {
    Arc::new(felix_log::now_ms)
}

/// How often a skewed clock re-reads its offset file.
const SKEW_POLL_MS: u64 = 50;

/// The wall clock plus an offset (ms, may be negative) read from `path`
/// and re-read every [`SKEW_POLL_MS`]: the fault-injection suite moves a
/// live broker's clock this way (`FELIX_CLOCK_SKEW_FILE`). A missing or
/// unreadable file means no offset, so the clock never stops.
pub fn skewed_clock(path: std::path::PathBuf) -> Clock {
    use std::sync::atomic::{AtomicI64, Ordering};
    let offset = Arc::new(AtomicI64::new(0));
    let read = |path: &Path| -> i64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    offset.store(read(&path), Ordering::Release);
    let o = offset.clone();
    std::thread::Builder::new()
        .name("clock-skew".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(SKEW_POLL_MS));
            o.store(read(&path), Ordering::Release);
        })
        .expect("spawn the clock-skew thread");
    Arc::new(move || felix_log::now_ms() + offset.load(Ordering::Acquire))
}

/// A stream as the control plane has it: its settings, and where each
/// shard's replicas belong.
#[derive(Debug, Clone)]
pub struct Followed {
    pub config: StreamConfig,
    pub placement: Vec<ShardPlacement>,
}

/// A stream this node hosts.
#[derive(Debug)]
pub struct StreamHandle {
    pub name: StreamName,
    meta: Mutex<StreamMeta>,
    pub shards: Vec<Arc<HostedShard>>,
    /// Live subscriptions (a delete refuses while any is open, unless forced).
    pub subscribers: Arc<AtomicUsize>,
}

impl StreamHandle {
    pub fn meta(&self) -> StreamMeta {
        self.meta.lock().expect("stream meta lock").clone()
    }

    /// Shard number `n`, or a clear error.
    pub fn shard(&self, n: u32) -> Result<&Arc<HostedShard>, BrokerError> {
        self.shards.get(n as usize).ok_or_else(|| {
            BrokerError::Invalid(format!(
                "stream {} has {} shards; there is no shard {n}",
                self.name,
                self.shards.len()
            ))
        })
    }
}

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
        std::fs::create_dir_all(dir.join("shards"))?;
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
        let node = Node {
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
        for (name, m) in all {
            let h = node.open_stream(&name, m)?;
            node.streams
                .write()
                .expect("streams lock")
                .insert(name.to_string(), Arc::new(h));
        }
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
        self.data_dir.join("shards").join(id.0.to_string())
    }

    fn open_stream(&self, name: &StreamName, m: StreamMeta) -> Result<StreamHandle, BrokerError> {
        let kind = if m.kind.keyed() {
            ShardKind::Keyed
        } else {
            ShardKind::Stream
        };
        let cfg = LogConfig {
            segment_bytes: self.log.segment_bytes,
            segment_ms: self.log.segment_ms,
            batch_bytes_max: self.log.batch_bytes_max,
            durability: m.durability(),
            verify: if self.log.verify_on_start {
                felix_log::Verify::Full
            } else {
                felix_log::Verify::FromCheckpoint
            },
            ..LogConfig::default()
        };
        let signal = Arc::new(watch::channel(0u64).0);
        let mut shards = Vec::with_capacity(m.shards.len());
        for id in &m.shards {
            let id = ShardId(*id);
            let dir = self.shard_dir(id);
            let s = if self.replicated {
                HostedShard::open_replicated(&dir, id, kind, cfg.clone(), self.index.clone())?
            } else {
                HostedShard::open(&dir, id, kind, cfg.clone(), self.index.clone())?
            }
            .with_signal(signal.clone());
            if kind == ShardKind::Keyed {
                self.maintenance
                    .register(id, s.log().clone(), compaction_config(m.kind));
            }
            shards.push(Arc::new(s));
        }
        Ok(StreamHandle {
            name: name.clone(),
            meta: Mutex::new(m),
            shards,
            subscribers: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The stream called `name` (either form), or `UnknownStream`.
    pub fn stream(&self, name: &str) -> Result<Arc<StreamHandle>, BrokerError> {
        let n = StreamName::parse(name)?;
        self.stream_by_name(&n)
    }

    /// [`Node::stream`], except that in a cluster an unknown name is
    /// looked up again after catching up with the metadata group: a
    /// stream created through another broker a moment ago is found.
    pub async fn find_stream(&self, name: &str) -> Result<Arc<StreamHandle>, BrokerError> {
        match (self.stream(name), self.cluster()) {
            (Err(BrokerError::UnknownStream(_)), Some(c)) => {
                c.meta_barrier().await?;
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

    /// Every stream, by name.
    /// What background maintenance (TTL sweeps, compaction) has done.
    pub fn maintenance_stats(&self) -> felix_index::MaintenanceStats {
        self.maintenance.stats()
    }

    /// Hands every leadership this broker holds (shards and cluster
    /// metadata) to another replica, all at once, each within `wait`
    /// (`Replica::step_down`). Returns (groups led, groups handed over).
    pub async fn step_down_all(&self, wait: Duration) -> (usize, usize) {
        let Some(c) = self.cluster() else {
            return (0, 0);
        };
        let mut led: Vec<felix_replication::Replica> = self
            .streams()
            .iter()
            .flat_map(|h| h.shards.iter().filter_map(|s| s.replica().cloned()))
            .chain(c.meta_replica())
            .filter(felix_replication::Replica::is_leader)
            .collect();
        let n = led.len();
        let mut steps = tokio::task::JoinSet::new();
        for r in led.drain(..) {
            steps.spawn(async move { r.step_down(wait).await });
        }
        let mut moved = 0;
        while let Some(r) = steps.join_next().await {
            moved += usize::from(r.unwrap_or(false));
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
                .any(|h| h.shards.iter().any(|s| s.in_flight_bytes() > 0));
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

    /// Creates a stream (or cache) and opens its shards; in a cluster,
    /// on every broker through the metadata group.
    pub async fn create_stream(&self, c: &StreamConfig) -> Result<Arc<StreamHandle>, BrokerError> {
        let Some(cluster) = self.cluster() else {
            return self.create_local(c, None, Vec::new(), Vec::new());
        };
        // Refuse what is plainly wrong before it reaches the log.
        MetaStore::check(c)?;
        let name = StreamName::parse(&c.name)?;
        cluster
            .write_meta(
                &MetaOp::Create {
                    stream: StreamSpec::from(c),
                    replicas: cluster.meta_voters()?,
                },
                self.now_ms(),
            )
            .await?;
        self.stream_by_name(&name)
    }

    fn create_local(
        &self,
        c: &StreamConfig,
        raft_index: Option<u64>,
        replicas: Vec<u64>,
        placement: Vec<ShardPlacement>,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        // One creation at a time: the metadata file and the shard map change together.
        let mut meta = self.meta.lock().expect("meta lock");
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        let (name, m) = meta.create(c, replicas, placement)?;
        let h = match self.open_stream(&name, m) {
            Ok(h) => Arc::new(h),
            // A replicated stream stays defined (every broker recorded it);
            // this broker serves it once it can open it.
            Err(e) if raft_index.is_some() => return Err(e),
            Err(e) => {
                let _ = meta.delete(&name);
                return Err(e);
            }
        };
        self.streams
            .write()
            .expect("streams lock")
            .insert(name.to_string(), h.clone());
        tracing::info!(stream = %name, shards = c.shards, "stream created");
        Ok(h)
    }

    /// Creates `name` as a one-shard stream like `like` if it does not exist
    /// (dead-letter streams).
    pub async fn ensure_stream(
        &self,
        name: &StreamName,
        like: &StreamMeta,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        if let Ok(h) = self.stream_by_name(name) {
            return Ok(h);
        }
        let c = StreamConfig {
            name: name.to_string(),
            kind: StreamKind::Stream.code(),
            shards: 1,
            durability: like.durability.clone(),
            retention_ms: like.retention_ms,
            retention_bytes: like.retention_bytes,
            max_deliveries: like.max_deliveries,
            default_ttl_ms: None,
        };
        match self.create_stream(&c).await {
            Err(BrokerError::StreamExists(_)) => self.stream_by_name(name),
            r => r,
        }
    }

    /// Deletes a stream: its shards stop, their files and index entries go.
    pub async fn delete_stream(&self, name: &str, force: bool) -> Result<(), BrokerError> {
        let n = StreamName::parse(name)?;
        let h = self.stream_by_name(&n)?;
        let subs = h.subscribers.load(Ordering::Acquire);
        if subs > 0 && !force {
            return Err(BrokerError::Invalid(format!(
                "stream {n} has {subs} active subscription(s); delete with force to end them"
            )));
        }
        match self.cluster() {
            Some(c) => {
                c.write_meta(&MetaOp::Delete { name: n.to_string() }, self.now_ms())
                    .await
            }
            None => self.delete_local(&n, None),
        }
    }

    fn delete_local(&self, n: &StreamName, raft_index: Option<u64>) -> Result<(), BrokerError> {
        let mut meta = self.meta.lock().expect("meta lock");
        let h = self.stream_by_name(n)?;
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        meta.delete(n)?;
        self.streams.write().expect("streams lock").remove(&n.to_string());
        for s in &h.shards {
            s.close();
            self.maintenance.unregister(s.id);
            self.hot.forget_shard(s.id);
            self.index.clear_shard(s.id)?;
            if let (Some(r), Some(c)) = (s.replica().cloned(), self.cluster().cloned()) {
                tokio::spawn(async move { r.shutdown(&c.router).await });
            }
            let dir = self.shard_dir(s.id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted shard's files");
            }
        }
        tracing::info!(stream = %n, "stream deleted");
        Ok(())
    }

    /// Changes a stream's retention; the next upkeep round applies it.
    pub async fn set_retention(
        &self,
        name: &str,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<(), BrokerError> {
        let n = StreamName::parse(name)?;
        self.stream_by_name(&n)?;
        match self.cluster() {
            Some(c) => {
                let op = MetaOp::SetRetention {
                    name: n.to_string(),
                    retention_ms,
                    retention_bytes,
                };
                c.write_meta(&op, self.now_ms()).await
            }
            None => self.set_retention_local(&n, retention_ms, retention_bytes, None),
        }
    }

    fn set_retention_local(
        &self,
        n: &StreamName,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        raft_index: Option<u64>,
    ) -> Result<(), BrokerError> {
        let h = self.stream_by_name(n)?;
        let mut meta = self.meta.lock().expect("meta lock");
        if let Some(i) = raft_index {
            meta.set_raft_applied(i);
        }
        let m = meta.set_retention(n, retention_ms, retention_bytes)?;
        *h.meta.lock().expect("stream meta lock") = m;
        Ok(())
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

    /// The streams created by following the control plane.
    pub fn managed_streams(&self) -> Vec<String> {
        self.meta
            .lock()
            .expect("meta lock")
            .streams()
            .filter(|(_, m)| m.managed())
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// Makes stream `name` match the control plane's view of it at feed
    /// version `version` (`want` absent: deleted); in a cluster, through
    /// the metadata group. Nothing is written when it matches already.
    pub async fn follow(
        &self,
        version: u64,
        name: &StreamName,
        want: Option<Followed>,
    ) -> Result<(), BrokerError> {
        if !self.follow_changes(version, name, want.as_ref()) {
            return Ok(());
        }
        match self.cluster() {
            Some(c) => {
                let op = MetaOp::Follow {
                    version,
                    name: name.to_string(),
                    stream: want.as_ref().map(|w| StreamSpec::from(&w.config)),
                    replicas: c.meta_voters()?,
                    placement: want.map(|w| w.placement).unwrap_or_default(),
                };
                c.write_meta(&op, self.now_ms()).await
            }
            None => self.apply_follow(version, name, want, None, Vec::new(), true),
        }
    }

    /// Whether following `want` at `version` would change anything here.
    fn follow_changes(&self, version: u64, name: &StreamName, want: Option<&Followed>) -> bool {
        let meta = self.meta.lock().expect("meta lock");
        if version < meta.cp_version() {
            return false;
        }
        match (meta.get(name), want) {
            (None, None) => false,
            (Some(m), Some(w)) => {
                !same_shape(m, &w.config) || !same_settings(m, &w.config) || m.placement != w.placement
            }
            _ => true,
        }
    }

    /// Applies a followed change (metadata entry `raft_index` in a
    /// cluster). A stream of another shape than wanted was deleted and
    /// made again while this broker did not follow: it is replaced.
    fn apply_follow(
        &self,
        version: u64,
        name: &StreamName,
        want: Option<Followed>,
        raft_index: Option<u64>,
        replicas: Vec<u64>,
        fresh: bool,
    ) -> Result<(), BrokerError> {
        let current = {
            let mut meta = self.meta.lock().expect("meta lock");
            if !meta.note_follow(version, raft_index)? {
                return Ok(());
            }
            meta.get(name).cloned()
        };
        match (current, want) {
            (None, None) => Ok(()),
            (Some(_), None) => self.delete_local(name, raft_index),
            (Some(m), Some(Followed { config: c, placement })) if same_shape(&m, &c) => {
                let h = self.stream_by_name(name)?;
                let m = self.meta.lock().expect("meta lock").update(name, |m| {
                    m.placement = placement;
                    m.retention_ms = c.retention_ms;
                    m.retention_bytes = c.retention_bytes;
                    m.default_ttl_ms = c.default_ttl_ms;
                    if c.max_deliveries > 0 {
                        m.max_deliveries = c.max_deliveries;
                    }
                })?;
                *h.meta.lock().expect("stream meta lock") = m;
                Ok(())
            }
            (current, Some(Followed { config: c, placement })) => {
                if current.is_some() {
                    tracing::warn!(stream = %name, "replacing a stream the control plane deleted and made again with another shape");
                    self.delete_local(name, raft_index)?;
                }
                let h = self.create_local(&c, raft_index, replicas, placement)?;
                self.start_groups(&h, fresh);
                Ok(())
            }
        }
    }

    /// The cluster this broker is part of, once started.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Joins the cluster: starts the replication transport, the metadata
    /// group and a group for every shard this broker hosts.
    pub async fn start_cluster(
        self: &Arc<Self>,
        c: &crate::config::ClusterConfig,
    ) -> Result<(), BrokerError> {
        let applied = self.meta.lock().expect("meta lock").raft_applied();
        let identity = crate::identity::Identity::load_or_create(&self.data_dir, self.broker_id)?;
        let cluster = Arc::new(Cluster::open(&identity, c, &self.data_dir, applied)?);
        let _ = self.cluster.set(cluster.clone());
        for h in self.streams() {
            let m = h.meta();
            for (i, s) in h.shards.iter().enumerate() {
                let dir = HostedShard::raft_dir(&self.shard_dir(s.id));
                cluster
                    .start_shard(s, dir, false, &m.replicas, m.preferred_leader(i))
                    .await?;
            }
        }
        let owner: Arc<dyn MetaOwner> = self.clone();
        let applier = Arc::new(MetaApplier {
            node: Arc::downgrade(&owner),
        });
        cluster.start_meta(applier, &self.data_dir).await
    }

    /// Applies metadata entry `index` (cluster only). `fresh`: written just
    /// now, so new shard groups need not wait for an existing leader.
    pub(crate) fn apply_meta(&self, op: &MetaOp, index: u64, fresh: bool) -> Result<(), BrokerError> {
        match op {
            MetaOp::Create { stream, replicas } => {
                let h = self.create_local(
                    &StreamConfig::from(stream.clone()),
                    Some(index),
                    replicas.clone(),
                    Vec::new(),
                )?;
                self.start_groups(&h, fresh);
                Ok(())
            }
            MetaOp::Follow {
                version,
                name,
                stream,
                replicas,
                placement,
            } => self.apply_follow(
                *version,
                &StreamName::parse(name)?,
                stream.clone().map(|s| Followed {
                    config: StreamConfig::from(s),
                    placement: placement.clone(),
                }),
                Some(index),
                replicas.clone(),
                fresh,
            ),
            MetaOp::Delete { name } => self.delete_local(&StreamName::parse(name)?, Some(index)),
            MetaOp::SetRetention {
                name,
                retention_ms,
                retention_bytes,
            } => self.set_retention_local(
                &StreamName::parse(name)?,
                *retention_ms,
                *retention_bytes,
                Some(index),
            ),
        }
    }

    /// Starts the shard groups of a stream just opened, in the background.
    fn start_groups(&self, h: &Arc<StreamHandle>, fresh: bool) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let m = h.meta();
        let replicas = Arc::new(m.replicas.clone());
        for (i, s) in h.shards.iter().enumerate() {
            let (s, c, dir, replicas, preferred) = (
                s.clone(),
                cluster.clone(),
                HostedShard::raft_dir(&self.shard_dir(s.id)),
                replicas.clone(),
                m.preferred_leader(i),
            );
            tokio::spawn(async move {
                if let Err(e) = c.start_shard(&s, dir, fresh, &replicas, preferred).await {
                    tracing::error!(shard = s.id.0, error = %e, "starting the shard's group failed");
                }
            });
        }
    }

    /// The metadata group's state, for its snapshot.
    pub(crate) fn meta_snapshot(&self) -> Result<Vec<u8>, BrokerError> {
        self.meta.lock().expect("meta lock").to_bytes()
    }

    /// Replaces the stream definitions with a metadata snapshot's: streams
    /// it lacks are closed and removed, new ones opened.
    pub(crate) fn install_meta(&self, state: &[u8], index: u64) -> Result<(), BrokerError> {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.replace(state)?;
        meta.set_raft_applied(index);
        let wanted: HashMap<String, StreamMeta> =
            meta.streams().map(|(n, m)| (n.to_string(), m.clone())).collect();
        drop(meta);
        for h in self.streams() {
            if !wanted.contains_key(&h.name.to_string()) {
                self.streams
                    .write()
                    .expect("streams lock")
                    .remove(&h.name.to_string());
                for s in &h.shards {
                    s.close();
                    self.maintenance.unregister(s.id);
                    self.hot.forget_shard(s.id);
                }
            }
        }
        for (name, m) in wanted {
            if self.stream(&name).is_ok() {
                continue;
            }
            let n = StreamName::parse(&name)?;
            let h = Arc::new(self.open_stream(&n, m)?);
            self.streams
                .write()
                .expect("streams lock")
                .insert(name, h.clone());
            self.start_groups(&h, false);
        }
        Ok(())
    }

    /// A stream's settings and per-shard figures.
    pub fn describe(&self, name: &str) -> Result<(StreamConfig, Vec<ShardStats>), BrokerError> {
        let h = self.stream(name)?;
        let stats = h
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.log().with(|l| ShardStats {
                    shard: i as u32,
                    earliest: l.earliest_offset().0,
                    next: s.high_watermark(),
                    bytes: l.size_bytes(),
                    segments: l.segments().len() as u32,
                })
            })
            .collect();
        Ok((h.meta().config(&h.name), stats))
    }

    /// Brokers and streams for a metadata reply (`names` empty: every stream).
    pub async fn metadata(
        &self,
        names: &[String],
    ) -> Result<(Vec<BrokerInfo>, Vec<StreamInfo>), BrokerError> {
        // Requested streams are named as asked (a bare `orders` stays
        // `orders`), so a client finds them under the name it uses.
        let handles: Vec<(String, Arc<StreamHandle>)> = if names.is_empty() {
            self.streams()
                .into_iter()
                .map(|h| (h.name.to_string(), h))
                .collect()
        } else {
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                v.push((n.clone(), self.find_stream(n).await?));
            }
            v
        };
        let me = self.broker_id;
        let cluster = self.cluster();
        let streams = handles
            .iter()
            .map(|(name, h)| StreamInfo {
                name: name.clone(),
                kind: h.meta().kind.code(),
                shards: h
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(shard, s)| ShardInfo {
                        shard: shard as u32,
                        leader: match s.replica() {
                            Some(r) => r.leader().map(|(id, _)| felix_replication::broker_of(id)),
                            None if s.is_replicated() => None,
                            None => Some(me),
                        },
                        replicas: match (s.replica(), cluster) {
                            (Some(r), Some(c)) => c.live_replicas(r),
                            _ if s.is_replicated() => Vec::new(),
                            _ => vec![me],
                        },
                    })
                    .collect(),
            })
            .collect();
        let brokers = match cluster {
            Some(c) => c
                .peers
                .iter()
                .map(|(id, n)| BrokerInfo {
                    id: *id,
                    address: n.client_addr.clone(),
                })
                .collect(),
            None => vec![BrokerInfo {
                id: me,
                address: self.address.lock().expect("address lock").clone(),
            }],
        };
        Ok((brokers, streams))
    }

    /// One round of upkeep: retention and segment rolling on every shard.
    /// (TTL sweeps and compaction run on the index's maintenance thread.)
    /// Returns the replicated shards whose retention must go through their
    /// group, with the last entry each may release.
    pub fn upkeep(&self, now_ms: i64) -> Vec<(Arc<HostedShard>, felix_log::RaftIndex)> {
        let mut release = Vec::new();
        for h in self.streams() {
            let m = h.meta();
            let r = Retention {
                retention_ms: m.retention_ms,
                retention_bytes: m.retention_bytes,
            };
            for s in &h.shards {
                // Read before the log lock: applying takes the shard's
                // applied-index lock and then the log's, so taking them the
                // other way round here deadlocked a broker under load.
                let applied = s.applied_through();
                let res = s.log().with(|l| -> Result<(), BrokerError> {
                    l.roll_if_due(now_ms)?;
                    if s.is_replicated() {
                        // Only applied entries may go: a follower's sealed
                        // segment can end in entries not committed yet.
                        if let Some(i) = l.retention_through(now_ms, r).map(|i| i.min(applied)) {
                            if applied.0 > 0 {
                                release.push((s.clone(), i));
                            }
                        }
                        return Ok(());
                    }
                    let out = l.apply_retention(now_ms, r)?;
                    if out.segments_deleted > 0 {
                        self.index.on_retention(s.id, l)?;
                        tracing::debug!(shard = s.id.0, segments = out.segments_deleted, "retention");
                    }
                    Ok(())
                });
                if let Err(e) = res {
                    tracing::warn!(shard = s.id.0, error = %e, "upkeep failed");
                }
            }
        }
        release
    }

    /// Retention of a replicated shard: its group snapshots what goes,
    /// then purges it; the index then forgets it.
    async fn release(&self, s: &HostedShard, through: felix_log::RaftIndex) {
        let Some(r) = s.replica() else { return };
        if let Err(e) = r.release_through(through).await {
            tracing::warn!(shard = s.id.0, error = %e, "retention through the group failed");
            return;
        }
        if let Err(e) = s.log().with(|l| self.index.on_retention(s.id, l)) {
            tracing::warn!(shard = s.id.0, error = %e, "index retention failed");
        }
    }

    /// Runs [`Node::upkeep`] every `every` until the node is dropped.
    pub fn start_upkeep(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let now = node.now_ms();
                let n = node.clone();
                let release = tokio::task::spawn_blocking(move || n.upkeep(now))
                    .await
                    .unwrap_or_default();
                for (s, through) in release {
                    node.release(&s, through).await;
                }
            }
        })
    }
}

/// Whether a stream is the one `c` describes (kind and shard count; what
/// cannot change in place).
fn same_shape(m: &StreamMeta, c: &StreamConfig) -> bool {
    m.kind.code() == c.kind && m.shards.len() == c.shards as usize
}

/// Whether what may change in place already matches.
fn same_settings(m: &StreamMeta, c: &StreamConfig) -> bool {
    m.managed()
        && m.retention_ms == c.retention_ms
        && m.retention_bytes == c.retention_bytes
        && m.default_ttl_ms == c.default_ttl_ms
        && (c.max_deliveries == 0 || m.max_deliveries == c.max_deliveries)
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

impl MetaOwner for Node {
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        Node::cluster(self)
    }

    fn now_ms(&self) -> i64 {
        Node::now_ms(self)
    }

    fn apply_meta(&self, op: &MetaOp, index: u64, fresh: bool) -> Result<(), BrokerError> {
        Node::apply_meta(self, op, index, fresh)
    }

    fn install_meta(&self, state: &[u8], index: u64) -> Result<(), BrokerError> {
        Node::install_meta(self, state, index)
    }

    fn meta_snapshot(&self) -> Result<Vec<u8>, BrokerError> {
        Node::meta_snapshot(self)
    }
}
