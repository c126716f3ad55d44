//! The control plane `felix dev` runs in its own process: one node with
//! its data under the broker's data directory, a development tenant
//! (`dev`, namespace `default`, where bare stream names live) whose
//! administrator is `p:dev`, and a token for it, so the walkthrough needs
//! no identity provider.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use felix_controlplane::config::ApiTls;
use felix_controlplane::model::{NamespaceSpec, TenantSpec};
use felix_controlplane::node::{fresh_key, NodeConfig};
use felix_controlplane::server::Handle;
use felix_controlplane::state::Command;

use felix_broker::config::ControlPlaneConfig;
use felix_broker::error::BrokerError;
use felix_broker::names::{DEFAULT_NAMESPACE, DEV_TENANT};

/// Where under the data directory the embedded control plane lives.
pub const DIR: &str = "controlplane";
/// The development principal `felix dev` issues its token to.
pub const DEV_PRINCIPAL: &str = "p:dev";
/// How long the development token lasts (a development convenience; a
/// real deployment keeps the control plane's short default).
pub const DEV_TOKEN_TTL_S: u64 = 30 * 24 * 3600;
/// How long the embedded node may take to elect itself.
const READY_WAIT_MS: u64 = 15_000;

/// A running embedded control plane and what a broker needs to follow it.
#[derive(Debug)]
pub struct Embedded {
    pub handle: Handle,
    /// What the brokers follow it with (their credential, not the
    /// operator's).
    pub link: ControlPlaneConfig,
    /// The operator's credential (`cluster_secret`), for what only the
    /// operator may do.
    pub operator_secret: String,
    /// A token of the development tenant's administrator.
    pub dev_token: String,
}

/// Starts (or restarts, on the same data) the embedded control plane and
/// makes sure the development tenant exists. It serves HTTPS with a
/// certificate from the development CA under `ca_dir` (made there if
/// missing: the one the brokers' certificates come from).
pub async fn start(data_dir: &Path, listen: SocketAddr, ca_dir: &Path) -> Result<Embedded, BrokerError> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let issued = felix_client::transport::dev_certificates(ca_dir, &[])
        .and_then(|ca| ca.issue_controlplane(&dir.join("tls"), &[]))
        .map_err(|e| BrokerError::ControlPlane(format!("issuing the control plane's certificate: {e}")))?;
    let secret = secret(&dir.join("secret"))?;
    // The brokers get a credential of their own, which can neither mint
    // tokens nor change metadata; the operator's stays in `secret`.
    let broker_secret = self::secret(&dir.join("broker-secret"))?;
    let mut cfg = NodeConfig::single(dir.join("raft"), listen, secret.clone());
    cfg.broker_secret = Some(broker_secret.clone());
    cfg.token_ttl_s = DEV_TOKEN_TTL_S;
    cfg.tls = Some(ApiTls {
        cert: issued.cert,
        key: issued.key,
        ca: issued.ca.clone(),
    });
    let handle = felix_controlplane::server::start(cfg)
        .await
        .map_err(|e| BrokerError::ControlPlane(format!("starting the embedded control plane: {e}")))?;
    let node = handle.node.clone();
    let deadline = Instant::now() + Duration::from_millis(READY_WAIT_MS);
    let exists = |n: &felix_controlplane::node::Node| {
        n.read(|m| {
            m.tenants
                .get(DEV_TENANT)
                .is_some_and(|t| t.namespaces.contains_key(DEFAULT_NAMESPACE))
        })
    };
    while !exists(&node) {
        let has_tenant = node.read(|m| m.tenants.contains_key(DEV_TENANT));
        let cmd = if has_tenant {
            Command::PutNamespace {
                tenant: DEV_TENANT.into(),
                namespace: DEFAULT_NAMESPACE.into(),
                spec: NamespaceSpec::default(),
                keep_quotas: false,
            }
        } else {
            Command::Bootstrap {
                tenant: DEV_TENANT.into(),
                spec: TenantSpec {
                    display_name: "development".into(),
                    ..TenantSpec::default()
                },
                issuers: Vec::new(),
                admins: vec![DEV_PRINCIPAL.into()],
                key: fresh_key(),
            }
        };
        if let Err(e) = node.propose("felix-dev", cmd).await {
            if Instant::now() > deadline {
                return Err(BrokerError::ControlPlane(format!(
                    "the embedded control plane did not become ready: {e}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let url = handle.url();
    let link = ControlPlaneConfig {
        urls: vec![url.clone()],
        ca: Some(issued.ca),
        secret: broker_secret,
        zone: None,
        shards_max: 10_000,
        heartbeat_interval_ms: 5_000,
        require_tokens: true,
    };
    let dev_token = issue(&url, link.ca.as_deref(), &secret).await?;
    Ok(Embedded {
        handle,
        link,
        operator_secret: secret,
        dev_token,
    })
}

impl Embedded {
    /// A client of its API that trusts its certificate.
    pub fn api_client(&self) -> Result<reqwest::Client, BrokerError> {
        felix_broker::control::http_client(self.link.ca.as_deref())?
            .build()
            .map_err(|e| BrokerError::ControlPlane(e.to_string()))
    }
}

/// The operator secret, made on first start and kept (mode 0600).
fn secret(path: &Path) -> Result<String, BrokerError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if s.len() >= 16 {
            return Ok(s);
        }
    }
    use base64::Engine;
    let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(felix_controlplane::node::random32());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(path)?, s.as_bytes())?;
    Ok(s)
}

/// A token for the development administrator, through the API as any
/// operator would get one.
async fn issue(url: &str, ca: Option<&Path>, secret: &str) -> Result<String, BrokerError> {
    let http = felix_broker::control::http_client(ca)?
        .build()
        .map_err(|e| BrokerError::ControlPlane(e.to_string()))?;
    let r = http
        .post(format!("{url}/v1/tenants/{DEV_TENANT}/token/issue"))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "principal": DEV_PRINCIPAL }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| BrokerError::ControlPlane(format!("issuing the development token: {e}")))?;
    let status = r.status();
    let v: serde_json::Value = r
        .json()
        .await
        .map_err(|e| BrokerError::ControlPlane(format!("issuing the development token: {e}")))?;
    match v.get("access_token").and_then(|t| t.as_str()) {
        Some(t) if status.is_success() => Ok(t.to_owned()),
        _ => Err(BrokerError::ControlPlane(format!(
            "issuing the development token: {status}: {v}"
        ))),
    }
}
