//! Commands that go to the control plane's operator API rather than to a
//! broker: `felix cluster rebalance`, and the moves `cluster status` shows
//! (`felix bridge`, in `bridge.rs`, calls through [`Operator`] too).
//! The API's address is the profile's `controlplane`; the operator secret
//! is read from `$FELIX_CONTROLPLANE_SECRET_FILE`, else from
//! `controlplane/secret` beside the profile (where `felix dev` keeps it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use felix_broker::server::ClientProfile;
use serde_json::{json, Value};

use crate::profile::{profile_path, Common, Output};

/// How long one API call may take.
const CALL_TIMEOUT_MS: u64 = 10_000;

/// The control plane's API address and the operator secret.
pub struct Operator {
    url: String,
    secret: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Operator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// From the profile (see the module's doc); an error says what is missing.
    pub fn from_profile(c: &Common) -> anyhow::Result<Operator> {
        let (path, _) = profile_path(c);
        let p = ClientProfile::load(&path).map_err(|e| anyhow!("cannot read the client profile: {e}"))?;
        let url = p.controlplane.ok_or_else(|| {
            anyhow!(
                "the profile {} names no control plane (its `controlplane` key)",
                path.display()
            )
        })?;
        let file = std::env::var_os("FELIX_CONTROLPLANE_SECRET_FILE").map_or_else(
            || {
                path.parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("controlplane/secret")
            },
            PathBuf::from,
        );
        let secret = std::fs::read_to_string(&file)
            .with_context(|| {
                format!(
                    "the operator secret: cannot read {} (set FELIX_CONTROLPLANE_SECRET_FILE)",
                    file.display()
                )
            })?
            .trim()
            .to_owned();
        // The control plane's own CA when the profile names one, else the
        // brokers' (`felix dev` issues both from one).
        let ca = p.controlplane_ca.as_ref().unwrap_or(&p.ca);
        let http = felix_broker::control::http_client(url.starts_with("https://").then_some(ca.as_path()))?
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .build()?;
        Ok(Operator { url, secret, http })
    }

    /// One API call; an answer other than 2xx is an error carrying the
    /// control plane's message.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r
            .send()
            .await
            .with_context(|| format!("the control plane at {}", self.url))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "the control plane answered {status}: {}",
                v["error"].as_str().unwrap_or(&v.to_string())
            );
        }
        Ok(v)
    }

    /// The rebalance in progress and the moves in progress.
    pub async fn moves(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/v1/rebalance", None).await
    }

    /// The control plane's own view: its region, leader and members.
    pub async fn cluster(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/v1/cluster", None).await
    }

    /// The registered brokers (with each one's region and zone).
    pub async fn brokers(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/v1/brokers", None).await
    }
}

/// `felix shard transfer`: makes `broker` shard `shard`'s preferred (and
/// pinned) leader; its group's leader hands over to it.
pub async fn transfer(c: &Common, stream: &str, shard: u32, broker: u32) -> anyhow::Result<()> {
    let parts: Vec<&str> = stream.split('/').collect();
    let [tenant, namespace, name] = parts[..] else {
        bail!("give the stream or cache as tenant/namespace/name, not {stream:?}");
    };
    let op = Operator::from_profile(c)?;
    let path = format!("/v1/tenants/{tenant}/namespaces/{namespace}/shards/{name}/{shard}/leader");
    op.call(reqwest::Method::POST, &path, Some(json!({ "broker": broker })))
        .await?;
    if c.output == Output::Json {
        println!(
            "{}",
            json!({"stream": stream, "shard": shard, "preferred_leader": broker})
        );
    } else {
        println!("{stream} shard {shard}: broker {broker} is the preferred leader; the group's leader hands over to it");
    }
    Ok(())
}

/// `felix cluster decommission`: moves everything off `broker`; with
/// `wait`, reports the replicas left on it until the registry drops it.
pub async fn decommission(c: &Common, broker: u32, wait: bool) -> anyhow::Result<()> {
    let op = Operator::from_profile(c)?;
    op.call(
        reqwest::Method::POST,
        &format!("/v1/brokers/{broker}/decommission"),
        Some(json!({})),
    )
    .await?;
    loop {
        let v = op.call(reqwest::Method::GET, "/v1/brokers", None).await?;
        let entry = v["items"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["registration"]["id"] == json!(broker)))
            .cloned();
        match entry {
            None => {
                if c.output == Output::Json {
                    println!("{}", json!({"broker": broker, "decommissioned": true}));
                } else {
                    println!("broker {broker} holds nothing and left the registry: stop it now (its id is retired)");
                }
                return Ok(());
            }
            Some(b) => {
                if c.output == Output::Json {
                    println!(
                        "{}",
                        json!({"broker": broker, "decommissioned": false, "replicas": b["replicas"]})
                    );
                } else {
                    println!("broker {broker}: {} replica(s) still to move", b["replicas"]);
                }
            }
        }
        if !wait {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `felix cluster rebalance`: starts a replica rebalance (and evens out
/// leaders now); with `wait`, reports progress until it is over.
pub async fn rebalance(c: &Common, strategy: &str, stream: Option<String>, wait: bool) -> anyhow::Result<()> {
    let op = Operator::from_profile(c)?;
    let mut goal = json!({ "strategy": strategy });
    if let Some(s) = stream {
        goal["stream"] = json!(s);
    }
    op.call(reqwest::Method::POST, "/v1/rebalance", Some(goal))
        .await?;
    let said = |v: &Value| {
        let n = v["moves_in_progress"].as_array().map_or(0, Vec::len);
        if c.output == Output::Json {
            println!("{v}");
        } else if v["rebalance"].is_null() {
            println!("balanced: no rebalance in progress, {n} move(s) in progress");
        } else {
            println!(
                "rebalancing ({}): {n} move(s) in progress",
                v["rebalance"]["strategy"]
            );
        }
    };
    loop {
        let v = op.moves().await?;
        said(&v);
        if !wait || v["rebalance"].is_null() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
