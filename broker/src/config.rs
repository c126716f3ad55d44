//! The broker's configuration file (TOML). Every key has a default, so an
//! empty file is a valid single-node configuration; unknown keys are
//! refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::BrokerError;

/// A broker's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where shards, the index, metadata and development certificates live.
    pub data_dir: PathBuf,
    /// This broker's id in metadata replies.
    pub broker_id: u64,
    /// QUIC address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address clients are told to use; defaults to the bound address.
    pub advertise: Option<String>,
    /// HTTP address of `/metrics`, `/live` and `/ready` (absent: not
    /// served; port 0 picks a free one).
    pub admin_listen: Option<SocketAddr>,
    pub tls: TlsConfig,
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
}

/// How a broker reaches the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Base URLs of the control-plane nodes (`http://host:port`); any one
    /// answers, and the next is tried when one does not.
    pub urls: Vec<String>,
    /// The control plane's operator credential (its `cluster_secret`).
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

/// A static cluster: every listed broker replicates every shard (placement
/// on a subset arrives with the control plane), stream definitions travel
/// through a metadata group that all of them run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address for replication traffic between brokers.
    pub raft_listen: SocketAddr,
    /// Every broker of the cluster, this one included.
    pub peers: Vec<PeerConfig>,
    /// A directory of development certificates shared by every broker
    /// (one CA): created if missing. Replication requires mutual TLS, and
    /// clients are served with the same certificate.
    pub tls_dir: PathBuf,
    /// Raft heartbeat and election timing, in ms.
    #[serde(default = "heartbeat_default")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "election_min_default")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "election_max_default")]
    pub election_timeout_max_ms: u64,
    /// How long a replicated write waits for its quorum before the client
    /// is told `Timeout` (the write may still land; idempotent producers
    /// retry safely).
    #[serde(default = "write_timeout_default")]
    pub write_timeout_ms: u64,
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

/// One broker of a cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// Its `cluster.raft_listen` as the others reach it.
    pub raft: String,
    /// The address clients are sent to.
    pub client: String,
}

impl ClusterConfig {
    pub fn group_config(&self) -> felix_replication::GroupConfig {
        felix_replication::GroupConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
        }
    }

    fn check(&self, me: u64) -> Result<(), String> {
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() {
            return Err("cluster.peers: two peers share an id".into());
        }
        if !ids.contains(&me) {
            return Err(format!("cluster.peers must list this broker (broker_id = {me})"));
        }
        if self.peers.len() > CLUSTER_PEERS_MAX {
            return Err(format!("cluster.peers: at most {CLUSTER_PEERS_MAX} brokers"));
        }
        if self.heartbeat_interval_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(
                "cluster.election_timeout_min_ms must exceed cluster.heartbeat_interval_ms (> 0)".into(),
            );
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

/// One broker of a local cluster as `felix dev --brokers N` (and the
/// tests) run it.
#[derive(Debug, Clone)]
pub struct LocalMember {
    pub id: u64,
    pub client: SocketAddr,
    pub raft: SocketAddr,
    pub data_dir: PathBuf,
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

/// The configuration file of `me` in a local cluster of `all`, sharing the
/// development CA under `tls_dir`; `extra` is appended (more settings).
pub fn local_cluster_toml(me: &LocalMember, all: &[LocalMember], tls_dir: &Path, extra: &str) -> String {
    let mut t = format!(
        "data_dir = {:?}\nbroker_id = {}\nlisten = \"{}\"\n{extra}\n[cluster]\nraft_listen = \"{}\"\ntls_dir = {:?}\n",
        me.data_dir.display().to_string(),
        me.id,
        me.client,
        me.raft,
        tls_dir.display().to_string()
    );
    for p in all {
        t.push_str(&format!(
            "\n[[cluster.peers]]\nid = {}\nraft = \"{}\"\nclient = \"{}\"\n",
            p.id, p.raft, p.client
        ));
    }
    t
}

/// Brokers one static cluster lists at most (each replicates every shard).
pub const CLUSTER_PEERS_MAX: usize = 7;

/// Certificates. With `dev = true` (the default) a development CA and
/// server certificate are generated under `data_dir/tls/` and reused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub dev: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Segment log settings applied to every shard this broker creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub batch_bytes_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./felix-data"),
            broker_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise: None,
            admin_listen: None,
            tls: TlsConfig::default(),
            log: LogSettings::default(),
            index_cache_bytes: 64 << 20,
            hot_cache_bytes_max: 64 << 20,
            maintenance_interval_ms: 1000,
            cluster: None,
            controlplane: None,
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
        }
    }
}

impl BrokerConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<BrokerConfig, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let c: BrokerConfig = toml::from_str(&text).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        c.check().map_err(|why| BrokerError::Config {
            path: path.to_path_buf(),
            why,
        })?;
        Ok(c)
    }

    /// Values serde cannot check.
    pub fn check(&self) -> Result<(), String> {
        if !self.tls.dev && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err("tls.cert and tls.key are both required when tls.dev = false".into());
        }
        if self.maintenance_interval_ms == 0 {
            return Err("maintenance_interval_ms must be above 0".into());
        }
        if let Some(c) = &self.cluster {
            c.check(self.broker_id)?;
        }
        if let Some(c) = &self.controlplane {
            c.check(self.broker_id)?;
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
        let t = local_cluster_toml(&all[1], &all, Path::new("/tmp/ca"), "");
        let c: BrokerConfig = toml::from_str(&t).unwrap();
        assert!(c.check().is_ok());
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(c.broker_id, 2);
        assert_eq!(cl.peers.len(), 3);
        assert_eq!(cl.peers[2].client, "127.0.0.1:7003");
        // A broker missing from its own peer list is refused.
        let c: BrokerConfig = toml::from_str(&t.replace("broker_id = 2", "broker_id = 9")).unwrap();
        assert!(c.check().unwrap_err().contains("broker_id = 9"));
        let c: BrokerConfig =
            toml::from_str(&t.replace("[cluster]", "[cluster]\nelection_timeout_max_ms = 100")).unwrap();
        assert!(c.check().unwrap_err().contains("election_timeout_max_ms"));
    }
}
