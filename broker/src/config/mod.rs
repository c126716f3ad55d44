//! The broker's configuration file (TOML). Every key has a default, so an
//! empty file is a valid single-node configuration; unknown keys are
//! refused with their name. `FELIX_*` environment variables override the
//! file (`env.rs`); `docs/configuration.md` is generated from these types
//! (`schema.rs`), so a key cannot go undocumented.

pub mod env;
pub mod schema;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// A broker's settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where shards, the index, metadata and development certificates live.
    pub data_dir: PathBuf,
    /// This broker's id in metadata replies.
    pub broker_id: u64,
    /// The region this broker is in (`docs/security.md`, "Regions"). The
    /// control plane refuses a broker of another region, and peers refuse
    /// a replication certificate that does not name this region
    /// (`<region>.region.felix`). 1 to 32 of a-z 0-9 -.
    pub region: String,
    /// QUIC address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address clients are told to use; defaults to the bound address.
    pub advertise: Option<String>,
    /// HTTP address of `/metrics`, `/live` and `/ready` (absent: not
    /// served; port 0 picks a free one).
    pub admin_listen: Option<SocketAddr>,
    /// The certificate clients are served.
    pub tls: TlsConfig,
    /// The Redis front door (RESP over TCP, `docs/redis.md`): served only
    /// when this table is given.
    pub redis: Option<RedisConfig>,
    /// The Kafka front door (Kafka's wire protocol over TCP,
    /// `docs/kafka.md`): served only when this table is given.
    pub kafka: Option<KafkaConfig>,
    /// Segment log settings of the shards this broker creates.
    pub log: LogSettings,
    /// RocksDB block cache shared by every shard's index.
    pub index_cache_bytes: usize,
    /// Bytes of cache values kept in memory for reads (the hot map).
    pub hot_cache_bytes_max: usize,
    /// How often retention, segment rolling and TTL sweeps run.
    pub maintenance_interval_ms: u64,
    /// Brokers that replicate each other's shards. Absent: a single node.
    pub cluster: Option<ClusterConfig>,
    /// The control plane this broker registers with, follows and takes
    /// its token keys and quotas from. Absent: streams are defined through
    /// the broker itself and connections are not asked for a token.
    pub controlplane: Option<ControlPlaneConfig>,
    /// Log levels, per module if wanted (`info,felix_broker::control=debug`).
    /// Absent: `$FELIX_LOG`, else `warn`. Reloaded on SIGHUP.
    pub log_level: Option<String>,
    /// What a stream created without settings gets. Reloaded on SIGHUP.
    pub defaults: StreamDefaults,
    /// Publish quotas of a tenant the control plane sets none for (every
    /// client, without a control plane). Reloaded on SIGHUP.
    pub quotas: QuotaDefaults,
    /// Encryption at rest (`docs/security.md`): the master key tenants'
    /// data keys are derived under. Absent: a tenant whose `encryption`
    /// is on cannot write here (refused, never stored in the clear).
    pub encryption: Option<EncryptionConfig>,
}

/// The `[encryption]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The master key file (`felix master-key new`): one line
    /// `felix-master-key <id> <key>`. Every broker of a cluster needs the
    /// same one; a broker whose data was encrypted under another refuses
    /// to start.
    pub master_key_file: PathBuf,
}

/// Settings given to streams created without them (as Kafka's
/// `log.retention.ms`); they apply when the stream is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StreamDefaults {
    /// Retention time of a new stream that names none. Absent: forever.
    pub retention_ms: Option<u64>,
    /// Retention bytes per shard of a new stream that names none. Absent:
    /// unbounded.
    pub retention_bytes: Option<u64>,
}

/// Per-tenant publish quotas, held per broker (as Kafka's client quotas).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaDefaults {
    /// Records a second one tenant may publish to this broker. Absent: no
    /// limit.
    pub publish_records_per_s_max: Option<u64>,
    /// Bytes a second one tenant may publish to this broker. Absent: no
    /// limit.
    pub publish_bytes_per_s_max: Option<u64>,
}

impl QuotaDefaults {
    pub fn quotas(&self) -> felix_controlplane::model::Quotas {
        felix_controlplane::model::Quotas {
            publish_records_per_s_max: self.publish_records_per_s_max,
            publish_bytes_per_s_max: self.publish_bytes_per_s_max,
            ..Default::default()
        }
    }
}

/// The settings SIGHUP may change while the broker runs; changing any
/// other key needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloadable {
    pub log_level: Option<String>,
    pub defaults: StreamDefaults,
    pub quotas: QuotaDefaults,
}

/// How a broker reaches the control plane.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Base URLs of the control-plane nodes (`https://host:port`, or
    /// `http://` for one that serves plain HTTP on loopback); any one
    /// answers, and the next is tried when one does not.
    pub urls: Vec<String>,
    /// PEM file of the CA that issued the control plane's certificate, for
    /// `https://` URLs: the only CA then trusted. Absent: the public roots.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// The brokers' credential: the control plane's `broker_secret`, which
    /// lets a broker register, heartbeat and follow the feed and nothing
    /// more. Its `cluster_secret` (the operator's) works too, and is needed
    /// only for brokers that create streams for clients without tokens
    /// (`require_tokens = false`).
    pub secret: String,
    /// This broker's zone, for spreading replicas.
    #[serde(default)]
    pub zone: Option<String>,
    /// Shard replicas this broker may host.
    #[serde(default = "shards_max_default")]
    pub shards_max: u32,
    /// How often the broker says it is alive.
    #[serde(default = "cp_heartbeat_default")]
    pub heartbeat_interval_ms: u64,
    /// Whether connections must present a Felix token. `false` trusts
    /// every client that passes TLS with everything, admin requests (made
    /// at the control plane as the operator) included.
    #[serde(default = "yes")]
    pub require_tokens: bool,
}

fn shards_max_default() -> u32 {
    10_000
}
fn cp_heartbeat_default() -> u64 {
    5_000
}
fn yes() -> bool {
    true
}

impl ControlPlaneConfig {
    fn check(&self, broker_id: u64) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("controlplane.urls lists no control-plane node".into());
        }
        for u in &self.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "controlplane.urls: {u:?} is not an http:// or https:// URL"
                ));
            }
        }
        if self.secret.len() < 16 {
            return Err(
                "controlplane.secret must be the control plane's cluster_secret (16 bytes or more)".into(),
            );
        }
        if broker_id == 0 || broker_id > u64::from(u32::MAX) {
            return Err(format!(
                "broker_id = {broker_id}: a broker registered with the control plane needs an id from 1 to {}",
                u32::MAX
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.shards_max == 0 {
            return Err(
                "controlplane.heartbeat_interval_ms and controlplane.shards_max must be above 0".into(),
            );
        }
        Ok(())
    }
}

/// This broker's part in a cluster: its replication listener and Raft
/// timing. The control plane (`[controlplane]`, required with this) names
/// the other brokers and places every shard's replicas.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address for replication traffic between brokers.
    pub raft_listen: SocketAddr,
    /// The replication address the other brokers are told (registered
    /// with the control plane), when they reach this broker at another
    /// address than `raft_listen` (a proxy, NAT); `raft_listen` if unset.
    #[serde(default)]
    pub advertise_raft: Option<String>,
    /// This broker's replication certificate (PEM). It must carry the DNS
    /// names `broker-<broker_id>.felix` and `broker.felix` (see
    /// `docs/security.md`): peers check that the broker an RPC claims to
    /// come from is the one the certificate names. With `tls.dev = true`
    /// clients are served this certificate too.
    pub cert: PathBuf,
    /// The replication certificate's private key (PEM; keep it 0600).
    pub key: PathBuf,
    /// The CA that signed every broker's replication certificate (PEM).
    /// Only its certificate: a broker never holds a CA's private key.
    pub ca: PathBuf,
    /// How often a shard's leader heartbeats its followers.
    #[serde(default = "heartbeat_default")]
    pub heartbeat_interval_ms: u64,
    /// Lower bound of a follower's randomised election timeout.
    #[serde(default = "election_min_default")]
    pub election_timeout_min_ms: u64,
    /// Upper bound of a follower's randomised election timeout.
    #[serde(default = "election_max_default")]
    pub election_timeout_max_ms: u64,
    /// How long a replicated write waits for its quorum before the client
    /// is told `Timeout` (the write may still land; idempotent producers
    /// retry safely).
    #[serde(default = "write_timeout_default")]
    pub write_timeout_ms: u64,
    /// How fast this broker sends a catching-up replica (a move's or a
    /// joining broker's new replica, still a learner) the log, in bytes a
    /// second over all of them. Voters are never held back by it.
    #[serde(default = "catchup_default")]
    pub catchup_bytes_per_s: u64,
}

fn heartbeat_default() -> u64 {
    felix_replication::GroupConfig::default().heartbeat_interval_ms
}
fn election_min_default() -> u64 {
    felix_replication::GroupConfig::default().election_timeout_min_ms
}
fn election_max_default() -> u64 {
    felix_replication::GroupConfig::default().election_timeout_max_ms
}
fn write_timeout_default() -> u64 {
    5_000
}
fn catchup_default() -> u64 {
    felix_replication::throttle::CATCHUP_BYTES_PER_S_DEFAULT
}

impl ClusterConfig {
    /// The replication address peers use.
    pub fn raft_address(&self) -> String {
        self.advertise_raft
            .clone()
            .unwrap_or_else(|| self.raft_listen.to_string())
    }

    /// This broker's replication certificate, key and the peers' CA.
    pub fn certificate(&self) -> felix_client::transport::IssuedCertificate {
        felix_client::transport::IssuedCertificate {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }

    pub fn group_config(&self) -> felix_replication::GroupConfig {
        felix_replication::GroupConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            ..felix_replication::GroupConfig::default()
        }
    }

    /// `controlplane`: one is configured (a cluster's brokers learn each
    /// other, and every stream, from it).
    fn check(&self, controlplane: bool) -> Result<(), String> {
        if !controlplane {
            return Err("[cluster] needs [controlplane]: its broker registry names the peers and its feed the streams (`felix dev --brokers N` runs one; `felix broker --controlplane-config FILE` runs a node in the broker's process)".into());
        }
        if let Some(a) = &self.advertise_raft {
            if !a.contains(':') {
                return Err(format!("cluster.advertise_raft {a:?} is not host:port"));
            }
        }
        if self.heartbeat_interval_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(
                "cluster.election_timeout_min_ms must exceed cluster.heartbeat_interval_ms (> 0)".into(),
            );
        }
        use felix_replication::throttle::{CATCHUP_BYTES_PER_S_MAX, CATCHUP_BYTES_PER_S_MIN};
        if !(CATCHUP_BYTES_PER_S_MIN..=CATCHUP_BYTES_PER_S_MAX).contains(&self.catchup_bytes_per_s) {
            return Err(format!(
                "cluster.catchup_bytes_per_s must be {CATCHUP_BYTES_PER_S_MIN} to {CATCHUP_BYTES_PER_S_MAX}"
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("cluster.election_timeout_max_ms must exceed cluster.election_timeout_min_ms".into());
        }
        if self.write_timeout_ms == 0 {
            return Err("cluster.write_timeout_ms must be above 0".into());
        }
        Ok(())
    }
}

/// Reads a control-plane node's file with the process's `FELIX_CP_*`
/// variables over it, and checks it.
pub fn load_controlplane(path: &Path) -> Result<felix_controlplane::config::NodeConfig, BrokerError> {
    let bad = |why: String| BrokerError::Config {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse_controlplane(&text, std::env::vars()).map_err(bad)
}

pub fn parse_controlplane(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<felix_controlplane::config::NodeConfig, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    env::apply(&mut doc, vars, env::Role::ControlPlane)?;
    let c = felix_controlplane::config::NodeConfig::deserialize(doc).map_err(|e| e.to_string())?;
    c.validate()?;
    if let Some(l) = &c.log_level {
        tracing_subscriber::EnvFilter::try_new(l).map_err(|e| format!("log_level = {l:?}: {e}"))?;
    }
    Ok(c)
}

/// The dotted keys whose values differ between `a` and `b`.
fn differing(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let path = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                differing(&format!("{path}."), x, y, out)
            }
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

/// One broker of a local cluster as `felix dev --brokers N` (and the
/// tests) run it.
#[derive(Debug, Clone)]
pub struct LocalMember {
    pub id: u64,
    pub client: SocketAddr,
    pub raft: SocketAddr,
    pub data_dir: PathBuf,
}

/// Writes `data` to `path` readable and writable by its owner only (0600),
/// also over an older file with a wider mode: for files holding a secret
/// (a broker's file names the control plane's secret; a profile, a token).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file made earlier keeps its mode through `open`.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}

/// The configuration file of `me` as a broker of its own (no cluster);
/// `extra` is appended.
pub fn local_broker_toml(me: &LocalMember, extra: &str) -> String {
    format!(
        "data_dir = {:?}\nbroker_id = {}\nlisten = \"{}\"\n{extra}\n",
        me.data_dir.display().to_string(),
        me.id,
        me.client,
    )
}

/// The configuration file of `me` in a local cluster, with the replication
/// certificate `cert` (issued to `me.id`); `extra` is appended (more settings,
/// among them the `[controlplane]` every broker of a cluster follows: its
/// registry names the peers). `advertise_raft`: where the others reach
/// this broker's replication, when not at `me.raft` (through a proxy).
pub fn local_cluster_toml(
    me: &LocalMember,
    advertise_raft: Option<SocketAddr>,
    cert: &felix_client::transport::IssuedCertificate,
    extra: &str,
) -> String {
    let mut t = format!(
        "data_dir = {:?}\nbroker_id = {}\nlisten = \"{}\"\n{extra}\n[cluster]\nraft_listen = \"{}\"\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        me.data_dir.display().to_string(),
        me.id,
        me.client,
        me.raft,
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        cert.ca.display().to_string(),
    );
    if let Some(a) = advertise_raft {
        t.push_str(&format!("advertise_raft = \"{a}\"\n"));
    }
    t
}

/// Certificates. With `dev = true` (the default) a development CA and
/// server certificate are generated under `data_dir/tls/` and reused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Generate (once) and use a development CA and certificate.
    pub dev: bool,
    /// The server certificate chain (PEM), with `tls.dev = false`.
    pub cert: Option<PathBuf>,
    /// The server certificate's private key (PEM), with `tls.dev = false`.
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The Redis front door: redis-cli and Redis client libraries reach the
/// broker's caches through it, with the same tokens and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// TCP address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The cache a new connection uses, named as clients name it (a bare
    /// name is in the token's tenant's `default` namespace); `FELIX.USE`
    /// picks another.
    #[serde(default = "RedisConfig::default_cache")]
    pub cache: String,
    /// Serve TLS with the broker's certificate (`redis-cli --tls`).
    #[serde(default)]
    pub tls: bool,
    /// Serve plain TCP on an address that is not loopback (tokens then
    /// cross the network in the clear). Off: such a listener needs `tls`.
    #[serde(default)]
    pub plain_tcp: bool,
    /// Connections served at once; past it a new one is told so and
    /// closed.
    #[serde(default = "RedisConfig::default_connections_max")]
    pub connections_max: usize,
    /// `host:port` cluster clients are told to reach this door at
    /// (`CLUSTER SLOTS`, `MOVED`; registered with the control plane so the
    /// other brokers' doors name it too), when it is not `listen` (a
    /// wildcard address, a proxy); `listen` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// In a cluster, answer a key whose shard another broker leads with
    /// `-MOVED <slot> <door>`, Redis Cluster's redirect, as cluster clients
    /// (`redis-cli -c`, redis-py's `RedisCluster`) expect. Off: the door
    /// asks the leader itself, so plain Redis clients work with any door.
    #[serde(default)]
    pub moved: bool,
    /// In a cluster, a key whose shard another broker leads is asked of
    /// that broker's client address through Felix's client, under the
    /// connection's token: this CA checks the other brokers'
    /// certificates. Unset: `cluster.ca` (right with `tls.dev`, where the
    /// brokers serve clients their replication certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_ca: Option<PathBuf>,
    /// The name the other brokers' certificates are checked against when
    /// forwarding (every replication certificate carries `broker.felix`).
    #[serde(default = "RedisConfig::default_forward_server_name")]
    pub forward_server_name: String,
}

impl RedisConfig {
    fn default_cache() -> String {
        "redis".into()
    }

    fn default_connections_max() -> usize {
        felix_resp::server::CONNECTIONS_MAX
    }

    fn default_forward_server_name() -> String {
        "broker.felix".into()
    }

    /// A listener on `listen` with every other key at its default.
    pub fn on(listen: SocketAddr) -> RedisConfig {
        RedisConfig {
            listen,
            cache: Self::default_cache(),
            tls: false,
            plain_tcp: false,
            connections_max: Self::default_connections_max(),
            advertise: None,
            moved: false,
            forward_ca: None,
            forward_server_name: Self::default_forward_server_name(),
        }
    }

    /// Refuses what would serve tokens in the clear or without limit.
    pub fn check(&self) -> Result<(), BrokerError> {
        if !self.tls && !self.plain_tcp && !self.listen.ip().is_loopback() {
            return Err(BrokerError::Invalid(format!(
                "redis.listen {} is not loopback: set redis.tls = true (or redis.plain_tcp = true to send tokens in the clear)",
                self.listen
            )));
        }
        if self.connections_max == 0 || self.connections_max > felix_resp::server::CONNECTIONS_MAX {
            return Err(BrokerError::Invalid(format!(
                "redis.connections_max is 1 to {}",
                felix_resp::server::CONNECTIONS_MAX
            )));
        }
        Ok(())
    }
}

/// The Kafka front door: Kafka clients reach the broker's streams through
/// it, with the same tokens (SASL PLAIN or OAUTHBEARER) and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// TCP address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The namespace, in the connection's tenant, whose streams are the
    /// door's topics: topic `orders` is `<tenant>/<namespace>/orders`.
    #[serde(default = "KafkaConfig::default_namespace")]
    pub namespace: String,
    /// Serve TLS with the broker's certificate (`security.protocol=SASL_SSL`).
    #[serde(default)]
    pub tls: bool,
    /// Serve plain TCP on an address that is not loopback (tokens then
    /// cross the network in the clear). Off: such a listener needs `tls`.
    #[serde(default)]
    pub plain_tcp: bool,
    /// Connections served at once; past it a new one is closed.
    #[serde(default = "KafkaConfig::default_connections_max")]
    pub connections_max: usize,
    /// `host:port` clients are told to reach this broker at (Metadata),
    /// when it is not `listen` (a wildcard address, a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Partitions of a topic a client's Metadata names that does not
    /// exist yet, created then (Kafka's `auto.create.topics.enable` with
    /// `num.partitions`); 0 never creates one.
    #[serde(default)]
    pub auto_create_partitions: u32,
}

impl KafkaConfig {
    fn default_namespace() -> String {
        felix_model::names::DEFAULT_NAMESPACE.into()
    }

    fn default_connections_max() -> usize {
        felix_kafka::server::CONNECTIONS_MAX
    }

    /// A listener on `listen` with every other key at its default.
    pub fn on(listen: SocketAddr) -> KafkaConfig {
        KafkaConfig {
            listen,
            namespace: Self::default_namespace(),
            tls: false,
            plain_tcp: false,
            connections_max: Self::default_connections_max(),
            advertise: None,
            auto_create_partitions: 0,
        }
    }

    /// Refuses what would serve tokens in the clear or without limit.
    pub fn check(&self) -> Result<(), BrokerError> {
        if !self.tls && !self.plain_tcp && !self.listen.ip().is_loopback() {
            return Err(BrokerError::Invalid(format!(
                "kafka.listen {} is not loopback: set kafka.tls = true (or kafka.plain_tcp = true to send tokens in the clear)",
                self.listen
            )));
        }
        if self.connections_max == 0 || self.connections_max > felix_kafka::server::CONNECTIONS_MAX {
            return Err(BrokerError::Invalid(format!(
                "kafka.connections_max is 1 to {}",
                felix_kafka::server::CONNECTIONS_MAX
            )));
        }
        if let Some(why) = felix_model::names::name_problem(&self.namespace) {
            return Err(BrokerError::Invalid(format!("kafka.namespace: {why}")));
        }
        if self.auto_create_partitions > crate::meta::SHARDS_PER_STREAM_MAX {
            return Err(BrokerError::Invalid(format!(
                "kafka.auto_create_partitions is at most {}",
                crate::meta::SHARDS_PER_STREAM_MAX
            )));
        }
        Ok(())
    }
}

/// Segment log settings applied to every shard this broker creates.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A segment is rolled at this size (its file is allocated in steps
    /// from 512 KiB up to it, so an idle shard holds one small step).
    pub segment_bytes: u64,
    /// A segment is rolled at this age, so retention can delete it.
    pub segment_ms: u64,
    /// The largest batch a publish may carry.
    pub batch_bytes_max: usize,
    /// Verify every batch of every segment when a shard opens, not only
    /// what the checkpoint does not vouch for: damage in a sealed segment
    /// (a flipped bit) then stops the start instead of being found when
    /// the bytes are read, or shipped to a follower that is catching up.
    /// Costs one read of all the data at start.
    pub verify_on_start: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./felix-data"),
            broker_id: 1,
            region: felix_model::names::REGION_DEFAULT.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise: None,
            admin_listen: None,
            tls: TlsConfig::default(),
            redis: None,
            kafka: None,
            log: LogSettings::default(),
            index_cache_bytes: 64 << 20,
            hot_cache_bytes_max: 64 << 20,
            maintenance_interval_ms: 1000,
            cluster: None,
            controlplane: None,
            log_level: None,
            defaults: StreamDefaults::default(),
            quotas: QuotaDefaults::default(),
            encryption: None,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            dev: true,
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            segment_bytes: 64 << 20,
            segment_ms: 24 * 3600 * 1000,
            batch_bytes_max: 1 << 20,
            verify_on_start: false,
        }
    }
}

impl BrokerConfig {
    /// Reads a configuration file, applies the process's `FELIX_*`
    /// variables over it and checks the result.
    pub fn load(path: &Path) -> Result<BrokerConfig, BrokerError> {
        let bad = |why: String| BrokerError::Config {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text, std::env::vars()).map_err(bad)
    }

    /// Parses a file's text with `vars` (the environment) over it.
    pub fn parse(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BrokerConfig, String> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        env::apply(&mut doc, vars, env::Role::Broker)?;
        let c: BrokerConfig = BrokerConfig::deserialize(doc).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    /// Which kind of file `text` is: a control-plane node's has a
    /// `cluster_secret`, which no broker key is called.
    pub fn is_controlplane_file(text: &str) -> bool {
        toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("cluster_secret"))
    }

    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            log_level: self.log_level.clone(),
            defaults: self.defaults.clone(),
            quotas: self.quotas.clone(),
        }
    }

    /// The keys whose change `next` makes that only a restart applies.
    pub fn restart_needed(&self, next: &BrokerConfig) -> Vec<String> {
        let (Ok(a), Ok(b)) = (toml::Table::try_from(self), toml::Table::try_from(next)) else {
            return vec!["(the configuration could not be compared)".into()];
        };
        let mut keys = Vec::new();
        differing("", &a, &b, &mut keys);
        keys.retain(|k| !(k == "log_level" || k.starts_with("defaults.") || k.starts_with("quotas.")));
        keys
    }

    /// Values serde cannot check.
    pub fn check(&self) -> Result<(), String> {
        if !self.tls.dev && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err("tls.cert and tls.key are both required when tls.dev = false".into());
        }
        if self.maintenance_interval_ms == 0 {
            return Err("maintenance_interval_ms must be above 0".into());
        }
        if let Some(why) = felix_model::names::region_problem(&self.region) {
            return Err(format!("region = {:?}: {why}", self.region));
        }
        if let Some(c) = &self.cluster {
            c.check(self.controlplane.is_some())?;
        }
        if let Some(c) = &self.controlplane {
            c.check(self.broker_id)?;
        }
        if let Some(l) = &self.log_level {
            tracing_subscriber::EnvFilter::try_new(l).map_err(|e| format!("log_level = {l:?}: {e}"))?;
        }
        if self.defaults.retention_ms == Some(0) || self.defaults.retention_bytes == Some(0) {
            return Err("defaults.retention_ms and defaults.retention_bytes: omit them for no limit (0 would delete everything)".into());
        }
        self.quotas
            .quotas()
            .validate()
            .map_err(|e| format!("quotas: {e}"))?;
        let clear_max =
            felix_log::batch::layout::BATCH_BYTES_MAX - felix_log::batch::layout::SEAL_OVERHEAD_BYTES;
        if self.log.batch_bytes_max > clear_max {
            return Err(format!(
                "log.batch_bytes_max {} is above {clear_max} (8 MiB less the 32 bytes sealing at rest adds)",
                self.log.batch_bytes_max
            ));
        }
        if self.log.segment_bytes < (self.log.batch_bytes_max as u64) * 2 {
            return Err(format!(
                "log.segment_bytes ({}) must be at least twice log.batch_bytes_max ({})",
                self.log.segment_bytes, self.log.batch_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults_and_unknown_keys_are_named() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.broker_id, 1);
        assert!(c.check().is_ok());
        let e = toml::from_str::<BrokerConfig>("listen = \"127.0.0.1:0\"\nsegmnet_bytes = 5").unwrap_err();
        assert!(e.to_string().contains("segmnet_bytes"), "{e}");
        let c: BrokerConfig = toml::from_str("[tls]\ndev = false\n").unwrap();
        assert!(c.check().unwrap_err().contains("tls.cert"));
    }

    #[test]
    fn local_cluster_files_parse_and_are_checked() {
        let all: Vec<LocalMember> = (1..=3)
            .map(|id| LocalMember {
                id,
                client: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
                raft: SocketAddr::from(([127, 0, 0, 1], 7100 + id as u16)),
                data_dir: PathBuf::from(format!("/tmp/b{id}")),
            })
            .collect();
        let cp = "[controlplane]\nurls = [\"http://127.0.0.1:1\"]\nsecret = \"0123456789abcdef\"\n";
        let cert = felix_client::transport::IssuedCertificate {
            cert: "/tmp/b.pem".into(),
            key: "/tmp/b.key".into(),
            ca: "/tmp/ca.pem".into(),
        };
        let t = local_cluster_toml(&all[1], Some(all[0].raft), &cert, cp);
        let c: BrokerConfig = toml::from_str(&t).unwrap();
        assert!(c.check().is_ok(), "{t}");
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(c.broker_id, 2);
        assert_eq!(
            cl.raft_address(),
            "127.0.0.1:7101",
            "peers are told the advertised address"
        );
        let c: BrokerConfig =
            toml::from_str(&t.replace("[cluster]", "[cluster]\nelection_timeout_max_ms = 100")).unwrap();
        assert!(c.check().unwrap_err().contains("election_timeout_max_ms"));
        // A cluster without a control plane has nobody to name its peers.
        let bare = t.replace(cp, "");
        let c: BrokerConfig = toml::from_str(&bare).unwrap();
        assert!(c.check().unwrap_err().contains("[cluster] needs [controlplane]"));
        // The static peer list is gone: a file that still has one is told.
        let listed = format!(
            "{t}\n[[cluster.peers]]\nid = 1\nraft = \"127.0.0.1:7101\"\nclient = \"127.0.0.1:7001\"\n"
        );
        assert!(toml::from_str::<BrokerConfig>(&listed).is_err());
    }
}
