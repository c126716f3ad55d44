//! Starting a broker: TLS material, the QUIC endpoint, the node and its
//! upkeep; and the client profile (`client.toml`) that tells the CLI and
//! applications where the broker is and which CA to trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use felix_client::server::Server;
use felix_client::transport::{self, ServerTls, TransportConfig, ALPN};
use serde::{Deserialize, Serialize};

use crate::config::BrokerConfig;
use crate::control::follow::{self, Registration};
use crate::control::ControlLink;
use crate::error::BrokerError;
use crate::handler::NodeHandler;
use crate::node::{Clock, Node};

/// What a client needs to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// `host:port` of one or more brokers.
    pub brokers: Vec<String>,
    /// The name the brokers' certificate is checked against.
    pub server_name: String,
    /// PEM file of the CA that signed the brokers' certificate.
    pub ca: PathBuf,
    /// Client certificate and key for mTLS, if the brokers require it.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The Felix token sent at the handshake, if the brokers require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The control plane's API, for `felix` commands that talk to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane: Option<String>,
    /// PEM file of the CA that issued the control plane's certificate
    /// (`https://`); absent: `ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_ca: Option<PathBuf>,
    /// The brokers' admin HTTP addresses (`/metrics`, `/live`, `/ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<String>,
    /// `host:port` of a broker's Redis door, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// `host:port` of a broker's Kafka door, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<String>,
}

impl ClientProfile {
    pub fn load(path: &Path) -> Result<ClientProfile, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), BrokerError> {
        let text = toml::to_string(self).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        // It may carry a token (`felix dev`'s lasts 30 days and may do
        // anything in the development tenant): only its owner reads it.
        crate::config::write_private(path, text.as_bytes())?;
        Ok(())
    }
}

/// Longest a stopping broker waits for its leaderships to move.
pub const STEP_DOWN_WAIT: Duration = Duration::from_millis(felix_replication::HANDOVER_MS_MAX);
/// Longest a stopping broker waits for publishes in flight to be answered.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

/// A running broker.
#[derive(Debug)]
pub struct Running {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    /// The CA clients should trust (development certificates only).
    pub dev_ca: Option<PathBuf>,
    /// Where `/metrics`, `/live` and `/ready` are served, if they are.
    pub admin_addr: Option<SocketAddr>,
    /// Where the Redis front door listens, if it does.
    pub redis_addr: Option<SocketAddr>,
    redis: Option<felix_resp::RespServer>,
    /// Where the Kafka front door listens, if it does.
    pub kafka_addr: Option<SocketAddr>,
    kafka: Option<felix_kafka::KafkaServer>,
    server: Server,
    upkeep: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops gracefully: hands this broker's leaderships to other
    /// replicas (writes meanwhile are answered `NotLeader`, so clients move
    /// to the new leaders), lets publishes in flight be acknowledged, then
    /// closes every connection (subscribers are told the broker is going
    /// and resume elsewhere) and the node's logs.
    pub async fn stop(self) {
        if self.node.cluster().is_some() {
            let started = std::time::Instant::now();
            let (led, moved) = self.node.step_down_all(STEP_DOWN_WAIT).await;
            let drained = self.node.drain_in_flight(IN_FLIGHT_WAIT).await;
            tracing::info!(
                led,
                moved,
                drained,
                ms = started.elapsed().as_millis() as u64,
                "leaderships handed over"
            );
        }
        if let Some(r) = self.redis {
            r.close().await;
        }
        if let Some(k) = self.kafka {
            k.close().await;
        }
        self.server.close().await;
        self.upkeep.abort();
        if let Some(c) = self.node.cluster() {
            c.shutdown().await;
        }
        let started = std::time::Instant::now();
        let node = self.node.clone();
        let failed = tokio::task::spawn_blocking(move || {
            // The applied marks first: a replica restarted behind its own
            // mark would be woken for an AppendEntries.
            let marks = node.cluster().map_or(0, |c| c.router.save_applied_marks());
            marks + node.checkpoint_logs()
        })
        .await
        .expect("checkpoints do not panic");
        tracing::info!(
            failed,
            ms = started.elapsed().as_millis() as u64,
            "logs checkpointed clean"
        );
    }
}

/// Opens the node and serves it. Must run inside a tokio runtime.
pub async fn start(config: &BrokerConfig, clock: Clock) -> Result<Running, BrokerError> {
    let (tls, dev_ca) = if let (true, Some(c)) = (config.tls.dev, &config.cluster) {
        // A cluster's broker has no CA key to make certificates with:
        // clients get its replication certificate, which its CA signed.
        let cert = c.certificate();
        (
            ServerTls::from_pem_files(&cert.cert, &cert.key, None)?,
            Some(cert.ca),
        )
    } else if config.tls.dev {
        let d = transport::dev_certificates(&config.data_dir, &[])?;
        (d.server_tls(false)?, Some(d.ca))
    } else {
        let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
            return Err(BrokerError::Invalid("tls.cert and tls.key are required".into()));
        };
        (
            ServerTls::from_pem_files(cert, key, config.tls.client_ca.as_deref())?,
            None,
        )
    };
    let node = tokio::task::block_in_place(|| Node::open(config, clock))?;
    // Clients keep their connections alive; a broker pinging every one
    // of thousands would spend its time on it.
    let quic = TransportConfig {
        keep_alive_ms: None,
        ..TransportConfig::default()
    };
    let endpoint = transport::server_endpoint(config.listen, &tls, ALPN, &quic)?;
    let addr = endpoint.local_addr()?;
    node.set_address(config.advertise.clone().unwrap_or_else(|| addr.to_string()));
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    // Bound before registering, so the registration names the door's
    // address (other brokers' doors send cluster clients to it).
    let redis_listener = match &config.redis {
        Some(r) => {
            r.check()?;
            let l = tokio::net::TcpListener::bind(r.listen).await?;
            let at = r.advertise.clone().unwrap_or(l.local_addr()?.to_string());
            Some((l, at))
        }
        None => None,
    };
    let kafka_listener = match &config.kafka {
        Some(k) => {
            k.check()?;
            let l = tokio::net::TcpListener::bind(k.listen).await?;
            let at = k.advertise.clone().unwrap_or(l.local_addr()?.to_string());
            Some((l, at))
        }
        None => None,
    };
    if let Some(c) = &config.cluster {
        node.start_cluster(c, &config.region, advertise.clone()).await?;
    }
    if let Some(cp) = &config.controlplane {
        let link = Arc::new(ControlLink::new(cp.clone())?);
        node.set_control(link.clone());
        let id = u32::try_from(config.broker_id)
            .map_err(|_| BrokerError::Invalid("broker_id must fit in 32 bits with a control plane".into()))?;
        let raft_addr = config
            .cluster
            .as_ref()
            .map_or_else(|| advertise.clone(), |c| c.raft_address());
        if config.cluster.is_some() {
            crate::control::moves::start(link.clone(), &node);
        }
        follow::start(
            link,
            &node,
            Registration {
                id,
                client_addr: advertise.clone(),
                raft_addr,
                redis_addr: redis_listener.as_ref().map(|(_, at)| at.clone()),
                kafka_addr: kafka_listener.as_ref().map(|(_, at)| at.clone()),
                node_id: node.cluster().map_or(0, |c| c.me),
                region: config.region.clone(),
            },
        );
    }
    let admin_addr = match config.admin_listen {
        Some(a) => {
            crate::observe::metrics::handle();
            crate::observe::metrics::observe_log_syncs();
            Some(crate::observe::http::serve(a, &node).await?)
        }
        None => None,
    };
    let handler = Arc::new(NodeHandler { node: node.clone() });
    let redis = match (&config.redis, redis_listener) {
        (Some(r), Some((listener, at))) => {
            let doors = node.cluster().map(|c| {
                let peers = c.peers.clone();
                felix_resp::server::Doors(Arc::new(move |broker| peers.redis_addr(broker)))
            });
            let settings = felix_resp::Settings {
                cache: r.cache.clone(),
                tls: if r.tls {
                    Some(Arc::new(tls.rustls_tcp()?))
                } else {
                    None
                },
                connections_max: r.connections_max,
                advertise: Some(at),
                doors,
                redirect: r.moved,
                forward: match &config.cluster {
                    Some(c) => {
                        let ca = r.forward_ca.clone().unwrap_or_else(|| c.ca.clone());
                        // The broker's own certificate, for brokers that
                        // require one of their clients (`tls.client_ca`).
                        let tls = transport::ClientTls::from_pem_files(&ca, Some((&c.cert, &c.key)))?;
                        let mut cfg = felix_client::ClientConfig::new(advertise.clone(), tls);
                        cfg.server_name = r.forward_server_name.clone();
                        // The Redis client retries on TRYAGAIN: fail fast.
                        cfg.connect_timeout_ms = 1_000;
                        cfg.retry.attempts_max = 1;
                        Some(Arc::new(felix_resp::Forwarder::new(cfg)))
                    }
                    None => None,
                },
            };
            let n = node.clone();
            Some(felix_resp::serve(
                listener,
                handler.clone(),
                settings,
                Arc::new(move || n.now_ms()),
            )?)
        }
        _ => None,
    };
    let kafka = match (&config.kafka, kafka_listener) {
        (Some(k), Some((listener, at))) => {
            let settings = felix_kafka::Settings {
                namespace: k.namespace.clone(),
                tls: if k.tls {
                    Some(Arc::new(tls.rustls_tcp()?))
                } else {
                    None
                },
                connections_max: k.connections_max,
                advertise: Some(at),
                doors: node.cluster().map(|c| {
                    let peers = c.peers.clone();
                    felix_kafka::exec::Doors(Arc::new(move |broker| peers.kafka_addr(broker)))
                }),
                broker_id: i32::try_from(config.broker_id).map_err(|_| {
                    BrokerError::Invalid("broker_id must fit in 31 bits with a Kafka door".into())
                })?,
                auto_create_partitions: k.auto_create_partitions,
            };
            let n = node.clone();
            Some(felix_kafka::serve(
                listener,
                handler.clone(),
                settings,
                Arc::new(move || n.now_ms()),
            )?)
        }
        _ => None,
    };
    let server = Server::start(endpoint, handler);
    let upkeep = node.start_upkeep(Duration::from_millis(config.maintenance_interval_ms));
    Ok(Running {
        node,
        addr,
        dev_ca,
        admin_addr,
        redis_addr: redis.as_ref().map(|r| r.addr),
        redis,
        kafka_addr: kafka.as_ref().map(|k| k.addr),
        kafka,
        server,
        upkeep,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Issue 26: the profile carries a token and was written readable by
    /// every user of the machine.
    #[test]
    fn a_saved_profile_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        // A profile written before, world-readable, is narrowed too.
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = ClientProfile {
            brokers: vec!["127.0.0.1:7070".into()],
            server_name: "localhost".into(),
            ca: "ca.pem".into(),
            cert: None,
            key: None,
            token: Some("secret-token".into()),
            controlplane: None,
            controlplane_ca: None,
            admin: Vec::new(),
            redis: None,
            kafka: None,
        };
        p.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(ClientProfile::load(&path).unwrap(), p);
    }
}
