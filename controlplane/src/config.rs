//! A control-plane node's settings (its configuration file), apart from
//! the running node so that whoever reads the file (the `felix` command,
//! the broker's schema documentation) does not link the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: its key in `peers`.
    pub id: u64,
    /// Where the API (and Raft RPCs) listen.
    pub listen: SocketAddr,
    /// The address peers and brokers use; `listen` when absent.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The region this control plane's cluster is in: brokers that
    /// declare another are refused at registration, so no replica is ever
    /// placed outside it. Every node of one control plane names the same
    /// region. 1 to 32 of a-z 0-9 -.
    #[serde(default = "default_region")]
    pub region: String,
    /// Where the node's Raft log, metadata and snapshots live.
    pub data_dir: PathBuf,
    /// Every node of the first membership (this one included). Empty: a
    /// single node.
    #[serde(default)]
    pub peers: Vec<PeerAddr>,
    /// The operator's bearer token: every operation of the API. Also the
    /// brokers' and the control-plane peers' credential where
    /// `broker_secret` or `peer_secret` is not set.
    pub cluster_secret: String,
    /// The brokers' bearer token (16 bytes or more): register, heartbeat,
    /// report a move done and read the feed, nothing else. A stolen one
    /// cannot mint tokens or change metadata. Brokers configured with it
    /// cannot create streams for clients that bring no token
    /// (`require_tokens = false`).
    #[serde(default)]
    pub broker_secret: Option<String>,
    /// The control-plane nodes' bearer token among themselves (Raft RPCs,
    /// forwarded proposals; 16 bytes or more). When set, `cluster_secret`
    /// no longer opens those routes.
    #[serde(default)]
    pub peer_secret: Option<String>,
    /// The day-0 bootstrap endpoint: off unless both are set.
    #[serde(default)]
    pub bootstrap_listen: Option<SocketAddr>,
    /// The bearer token of the bootstrap endpoint (16 bytes or more).
    #[serde(default)]
    pub bootstrap_secret: Option<String>,
    /// How often brokers are told to heartbeat.
    #[serde(default = "default_heartbeat")]
    pub broker_heartbeat_interval_ms: u64,
    /// Heartbeats a broker may miss before it is marked down.
    #[serde(default = "default_missed")]
    pub broker_heartbeats_missed_max: u32,
    /// How long a broker stays down before its replicas are re-placed.
    #[serde(default = "default_replace")]
    pub replace_after_ms: u64,
    /// Replica moves (re-placements and rebalancing) one broker takes part
    /// in at once: the throttle that keeps catch-up traffic from crowding
    /// out clients.
    #[serde(default = "default_moves_per_broker")]
    pub moves_per_broker_max: u32,
    /// Lifetime of a token the control plane issues.
    #[serde(default = "default_ttl")]
    pub token_ttl_s: u64,
    /// Raft election timeout range of the control plane's own group.
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    /// (The range's upper end.)
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    /// Raft entries between two snapshots of the metadata; also how many
    /// are kept after one, for a follower briefly behind (one further
    /// behind is sent the snapshot).
    #[serde(default = "default_snapshot_entries")]
    pub raft_snapshot_entries: u64,
    /// TLS for the API, the bootstrap endpoint and Raft among the nodes:
    /// this node's certificate and key, and the CA the other nodes'
    /// certificates chain to (peers are dialled over HTTPS under the host
    /// of their `addr`, so their certificates must name it). Absent: plain
    /// HTTP, which a node serves only on loopback addresses unless
    /// `plain_http` says otherwise.
    #[serde(default)]
    pub tls: Option<ApiTls>,
    /// Serve plain HTTP on an address that is not loopback (behind a
    /// TLS-terminating proxy, say). Every bearer secret then crosses that
    /// network in the clear.
    #[serde(default)]
    pub plain_http: bool,
    /// Development only: let the token exchange fetch identity providers'
    /// documents over `http://` and from loopback, private and link-local
    /// addresses (an IdP on the same machine). Off, a tenant administrator
    /// cannot point the control plane at its own networks.
    #[serde(default)]
    pub idp_fetch_insecure: bool,
    /// Log levels, per module if wanted (`info,felix_controlplane=debug`).
    /// Absent: `$FELIX_LOG`, else `warn`. Reloaded on SIGHUP.
    #[serde(default)]
    pub log_level: Option<String>,
}

/// A control-plane node's TLS material (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// This node's certificate chain: it names every host the node is
    /// reached under (its peers' `addr`, the brokers' `urls`).
    pub cert: PathBuf,
    /// Its private key (keep it mode 0600).
    pub key: PathBuf,
    /// The CA the other nodes' certificates chain to: the only one trusted
    /// when dialling them.
    pub ca: PathBuf,
}

/// A control-plane node and the address its API listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerAddr {
    /// The node's `id`.
    pub id: u64,
    /// Its API address (`host:port`) as the other nodes reach it.
    pub addr: String,
}

fn default_region() -> String {
    felix_model::names::REGION_DEFAULT.to_owned()
}
fn default_heartbeat() -> u64 {
    5_000
}
fn default_missed() -> u32 {
    3
}
fn default_moves_per_broker() -> u32 {
    crate::rebalance::MOVES_PER_BROKER_DEFAULT
}

fn default_replace() -> u64 {
    60_000
}
fn default_ttl() -> u64 {
    crate::auth::TOKEN_TTL_S_DEFAULT
}
fn default_snapshot_entries() -> u64 {
    1_000
}
fn default_election_min() -> u64 {
    500
}
fn default_election_max() -> u64 {
    1_000
}

impl NodeConfig {
    /// What control-plane nodes present to each other.
    pub fn peer_credential(&self) -> &str {
        self.peer_secret.as_deref().unwrap_or(&self.cluster_secret)
    }

    /// A single node with the defaults, for `felix dev` and tests.
    pub fn single(data_dir: PathBuf, listen: SocketAddr, cluster_secret: String) -> NodeConfig {
        NodeConfig {
            id: 1,
            listen,
            advertise: None,
            region: default_region(),
            data_dir,
            peers: Vec::new(),
            cluster_secret,
            broker_secret: None,
            peer_secret: None,
            bootstrap_listen: None,
            bootstrap_secret: None,
            broker_heartbeat_interval_ms: default_heartbeat(),
            broker_heartbeats_missed_max: default_missed(),
            replace_after_ms: default_replace(),
            moves_per_broker_max: default_moves_per_broker(),
            token_ttl_s: default_ttl(),
            election_timeout_min_ms: default_election_min(),
            election_timeout_max_ms: default_election_max(),
            raft_snapshot_entries: default_snapshot_entries(),
            tls: None,
            plain_http: false,
            idp_fetch_insecure: false,
            log_level: None,
        }
    }

    /// The scheme of this node's API and of its peers' (they share one
    /// configuration of TLS).
    pub fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = felix_model::names::region_problem(&self.region) {
            return Err(format!("region = {:?}: {why}", self.region));
        }
        if self.tls.is_none() && !self.plain_http {
            let open = [Some(self.listen), self.bootstrap_listen]
                .into_iter()
                .flatten()
                .find(|a| !a.ip().is_loopback());
            if let Some(a) = open {
                return Err(format!(
                    "{a} is not a loopback address and the node has no `tls`: configure [tls] \
                     (cert, key, ca), or set `plain_http = true` to send its secrets in the clear"
                ));
            }
        }
        if self.cluster_secret.len() < 16 {
            return Err("cluster_secret must be at least 16 bytes".into());
        }
        for (key, s) in [
            ("broker_secret", &self.broker_secret),
            ("peer_secret", &self.peer_secret),
        ] {
            match s {
                Some(s) if s.len() < 16 => return Err(format!("{key} must be at least 16 bytes")),
                Some(s) if *s == self.cluster_secret => {
                    return Err(format!("{key} must differ from cluster_secret"))
                }
                _ => {}
            }
        }
        if self.broker_secret.is_some() && self.broker_secret == self.peer_secret {
            return Err("broker_secret and peer_secret must differ".into());
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.id == self.id) {
            return Err(format!("peers does not list this node's id {}", self.id));
        }
        if self.bootstrap_listen.is_some() != self.bootstrap_secret.is_some() {
            return Err("bootstrap_listen and bootstrap_secret go together".into());
        }
        if self.bootstrap_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err("bootstrap_secret must be at least 16 bytes".into());
        }
        if !(10..=1_000_000).contains(&self.raft_snapshot_entries) {
            return Err("raft_snapshot_entries must be 10 to 1000000".into());
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err("election_timeout_min_ms must be below election_timeout_max_ms".into());
        }
        if !(1..=crate::rebalance::MOVES_PER_BROKER_MAX).contains(&self.moves_per_broker_max) {
            return Err(format!(
                "moves_per_broker_max must be 1 to {}",
                crate::rebalance::MOVES_PER_BROKER_MAX
            ));
        }
        if self.broker_heartbeat_interval_ms == 0 || self.broker_heartbeats_missed_max == 0 {
            return Err("broker heartbeat interval and missed count must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_unless_asked_for() {
        let on = |addr: &str| NodeConfig::single("d".into(), addr.parse().unwrap(), "s".repeat(16));
        assert_eq!(on("127.0.0.1:9090").validate(), Ok(()));
        assert_eq!(on("[::1]:9090").validate(), Ok(()));
        let open = on("0.0.0.0:9090");
        let e = open.validate().unwrap_err();
        assert!(e.contains("tls") && e.contains("0.0.0.0:9090"), "{e}");
        let mut bootstrap = on("127.0.0.1:9090");
        bootstrap.bootstrap_listen = Some("10.0.0.1:9099".parse().unwrap());
        bootstrap.bootstrap_secret = Some("b".repeat(16));
        assert!(bootstrap.validate().unwrap_err().contains("10.0.0.1:9099"));
        let mut asked = on("0.0.0.0:9090");
        asked.plain_http = true;
        assert_eq!(asked.validate(), Ok(()));
        let mut tls = on("0.0.0.0:9090");
        tls.tls = Some(ApiTls {
            cert: "c.pem".into(),
            key: "c.key".into(),
            ca: "ca.pem".into(),
        });
        assert_eq!(tls.validate(), Ok(()));
        assert_eq!(tls.scheme(), "https");
        assert_eq!(asked.scheme(), "http");
    }
}
