//! The broker's side of the control plane: registering and heartbeating,
//! following the metadata feed (streams, caches, quotas, token keys), and
//! passing admin requests on. Everything here is off the data path: a
//! publish, subscribe or cache operation reads only what the feed already
//! brought ([`access::Keys`], [`quota::QuotaTable`], the node's streams),
//! so with the control plane unreachable a broker keeps serving what it
//! hosts with what it last heard.

pub mod access;
pub mod admin;
pub mod follow;
pub mod moves;
pub mod quota;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use felix_client::wire::StreamConfig;
use felix_controlplane::model::Usage;
use serde_json::{json, Value};

use crate::config::ControlPlaneConfig;
use crate::error::BrokerError;
use crate::meta::StreamKind;
use crate::names::StreamName;

/// How long one control-plane request may take (a feed long-poll adds its
/// wait to this).
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How long a feed long-poll asks the control plane to wait.
pub const FEED_WAIT_MS: u64 = 20_000;
/// Longest pause between attempts when the control plane does not answer.
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Bridge carriers a heartbeat reports the positions of (the control
/// plane takes at most its `HEARTBEAT_ENTRIES_MAX` entries per field).
pub const HEARTBEAT_BRIDGES_MAX: usize = 1024;

/// A broker's connection to the control plane, and what it has learnt.
#[derive(Debug)]
pub struct ControlLink {
    pub config: ControlPlaneConfig,
    http: reqwest::Client,
    /// The URL that answered last (tried first next time).
    preferred: AtomicUsize,
    pub keys: access::Keys,
    /// The feed version this broker has applied through.
    pub version: AtomicU64,
    /// Whether a feed snapshot has been applied since start.
    synced: std::sync::atomic::AtomicBool,
    /// The control plane's version as last asked, and when: lookups of
    /// unknown streams share one answer for [`VERSION_ASKED_MS`].
    asked: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long one answer to "which version is the control plane at" serves
/// every lookup of an unknown stream (so unknown names cannot turn client
/// requests into as many control-plane requests).
pub const VERSION_ASKED_MS: u64 = 100;

/// A client for the control plane's API: with `ca`, that CA and no other
/// is trusted; redirects are not followed (they would carry the bearer
/// secret to wherever they point). Also what `felix` commands and the
/// benchmarks call the API with.
pub fn http_client(ca: Option<&std::path::Path>) -> Result<reqwest::ClientBuilder, BrokerError> {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| BrokerError::Config {
            path: ca.to_owned(),
            why: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| BrokerError::Config {
            path: ca.to_owned(),
            why: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(BrokerError::Config {
                path: ca.to_owned(),
                why: "no certificate in it".into(),
            });
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// A control-plane answer that was not a success.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl ControlLink {
    pub fn new(config: ControlPlaneConfig) -> Result<ControlLink, BrokerError> {
        let http = http_client(config.ca.as_deref())?
            .connect_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| BrokerError::ControlPlane(e.to_string()))?;
        Ok(ControlLink {
            config,
            http,
            preferred: AtomicUsize::new(0),
            keys: access::Keys::default(),
            version: AtomicU64::new(0),
            synced: std::sync::atomic::AtomicBool::new(false),
            asked: std::sync::Mutex::new(None),
        })
    }

    /// Whether the broker has read the control plane's metadata since it
    /// started.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Waits until this broker has applied the feed through the control
    /// plane's current version: a stream created a moment ago (through
    /// another broker, or by this one just now) is then known here, and
    /// one still unknown does not exist. `shared`: an answer up to
    /// [`VERSION_ASKED_MS`] old will do (lookups of unknown names);
    /// otherwise the control plane is asked now (after a change of ours).
    pub async fn caught_up(&self, shared: bool) -> Result<(), BrokerError> {
        const POLL_MS: u64 = 20;
        let latest = self.latest_version(shared).await?;
        let deadline = std::time::Instant::now() + Duration::from_millis(admin::FOLLOW_WAIT_MS_MAX);
        while self.version.load(Ordering::Acquire) < latest {
            if std::time::Instant::now() > deadline {
                return Err(BrokerError::Timeout(format!(
                    "this broker has not caught up with the control plane's version {latest} within {} ms",
                    admin::FOLLOW_WAIT_MS_MAX
                )));
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        Ok(())
    }

    /// The control plane's current metadata version (`shared`: as asked at
    /// most [`VERSION_ASKED_MS`] ago).
    async fn latest_version(&self, shared: bool) -> Result<u64, BrokerError> {
        let fresh = Duration::from_millis(VERSION_ASKED_MS);
        if let Some((at, v)) = *self.asked.lock().expect("asked lock") {
            if shared && at.elapsed() < fresh {
                return Ok(v);
            }
        }
        let since = self.version.load(Ordering::Acquire);
        let path = format!("/v1/feed/changes?since={since}&wait_ms=0");
        let v = match self.call(reqwest::Method::GET, &path, None, None, 0).await? {
            Ok(v) => v["version"].as_u64().unwrap_or(since),
            // Further behind than the feed keeps: the follow loop's next
            // snapshot brings everything; the client asks again.
            Err(r) if r.status == 410 => {
                return Err(BrokerError::Timeout(
                    "this broker is catching up with the control plane (taking its snapshot)".into(),
                ))
            }
            Err(r) => {
                return Err(BrokerError::ControlPlane(format!(
                    "asking the control plane's version ({}): {}",
                    r.status, r.message
                )))
            }
        };
        *self.asked.lock().expect("asked lock") = Some((std::time::Instant::now(), v));
        Ok(v)
    }

    pub fn requires_tokens(&self) -> bool {
        self.config.require_tokens
    }

    /// One request to whichever control-plane node answers, starting with
    /// the one that answered last. `bearer`: the credential (the operator
    /// secret by default). Returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        wait_ms: u64,
    ) -> Result<Result<Value, Refused>, BrokerError> {
        let started = std::time::Instant::now();
        let _timer = scopeguard(move || {
            metrics::histogram!(crate::observe::metrics::CONTROLPLANE_SECONDS)
                .record(started.elapsed().as_secs_f64());
        });
        let urls = &self.config.urls;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for i in 0..urls.len() {
            let at = (first + i) % urls.len();
            let mut r = self
                .http
                .request(
                    method.clone(),
                    format!("{}{path}", urls[at].trim_end_matches('/')),
                )
                .bearer_auth(bearer.unwrap_or(&self.config.secret))
                .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS + wait_ms));
            if let Some(b) = body {
                r = r.json(b);
            }
            match r.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // A node without a leader cannot answer writes; another may.
                    if status == 503 && i + 1 < urls.len() {
                        last_err = format!("{}: no leader", urls[at]);
                        continue;
                    }
                    self.preferred.store(at, Ordering::Relaxed);
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    if (200..300).contains(&status) {
                        return Ok(Ok(v));
                    }
                    let message = v
                        .get("error")
                        .and_then(|e| e.as_str())
                        .map_or_else(|| v.to_string(), str::to_owned);
                    return Ok(Err(Refused { status, message }));
                }
                Err(e) => last_err = format!("{}: {e}", urls[at]),
            }
        }
        Err(BrokerError::ControlPlane(last_err))
    }

    /// A tenant's keys, fetched now (a token named a key not seen yet).
    pub async fn fetch_keys(&self, tenant: &str, now_ms: i64) -> Result<(), BrokerError> {
        self.keys.note_fetch(tenant, now_ms);
        let path = format!("/v1/tenants/{tenant}/.well-known/jwks.json");
        match self.call(reqwest::Method::GET, &path, None, None, 0).await? {
            Ok(jwks) => {
                self.keys.set(tenant, &jwks, now_ms);
                Ok(())
            }
            Err(r) if r.status == 404 => {
                self.keys.remove(tenant);
                Ok(())
            }
            Err(r) => Err(BrokerError::ControlPlane(format!(
                "jwks of {tenant}: {}",
                r.message
            ))),
        }
    }

    /// Passes a stream or cache creation on to the control plane, as the
    /// client (its token) or, without tokens, as the operator. A
    /// replication factor of 0 is the control plane's default.
    pub async fn create(&self, c: &StreamConfig, token: Option<&str>) -> Result<(), BrokerError> {
        let n = StreamName::parse(&c.name)?;
        let (path, body) = if c.kind == StreamKind::Cache {
            (
                format!("/v1/tenants/{}/namespaces/{}/caches", n.tenant, n.namespace),
                json!({"name": n.name, "shards": c.shards, "replication_factor": c.replication_factor,
                       "default_ttl_ms": c.default_ttl_ms, "key_routing": c.key_routing}),
            )
        } else {
            (
                format!("/v1/tenants/{}/namespaces/{}/streams", n.tenant, n.namespace),
                json!({"name": n.name, "shards": c.shards, "replication_factor": c.replication_factor,
                       "durability": c.durability, "retention_ms": c.retention_ms,
                       "retention_bytes": c.retention_bytes, "max_deliveries": c.max_deliveries,
                       "kind": c.kind, "key_routing": c.key_routing}),
            )
        };
        let r = self
            .call(reqwest::Method::POST, &path, Some(&body), token, 0)
            .await?;
        refused_to_error(r, &n).map(|_| ())
    }

    /// Passes a deletion on to the control plane.
    pub async fn delete(
        &self,
        name: &StreamName,
        cache: bool,
        force: bool,
        token: Option<&str>,
    ) -> Result<(), BrokerError> {
        let kind = if cache { "caches" } else { "streams" };
        let path = format!(
            "/v1/tenants/{}/namespaces/{}/{kind}/{}{}",
            name.tenant,
            name.namespace,
            name.name,
            if force { "?force=true" } else { "" }
        );
        let r = self.call(reqwest::Method::DELETE, &path, None, token, 0).await?;
        refused_to_error(r, name).map(|_| ())
    }

    /// Passes a retention change on to the control plane.
    pub async fn set_retention(
        &self,
        name: &StreamName,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        token: Option<&str>,
    ) -> Result<(), BrokerError> {
        let path = format!(
            "/v1/tenants/{}/namespaces/{}/streams/{}",
            name.tenant, name.namespace, name.name
        );
        let body = json!({"retention_ms": retention_ms, "retention_bytes": retention_bytes});
        let r = self
            .call(reqwest::Method::PATCH, &path, Some(&body), token, 0)
            .await?;
        refused_to_error(r, name).map(|_| ())
    }

    /// Registers this broker (again, after a restart: the registration
    /// may have changed addresses).
    pub async fn register(&self, me: &follow::Registration) -> Result<(), BrokerError> {
        let id = me.id;
        let body = json!({"id": id, "client_addr": me.client_addr, "raft_addr": me.raft_addr,
                          "zone": self.config.zone, "shards_max": self.config.shards_max,
                          "node_id": me.node_id, "redis_addr": me.redis_addr, "kafka_addr": me.kafka_addr,
                          "region": me.region});
        match self
            .call(reqwest::Method::POST, "/v1/brokers", Some(&body), None, 0)
            .await?
        {
            Ok(_) => Ok(()),
            Err(r) => {
                let e = format!(
                    "registering broker {id} was refused ({}): {}",
                    r.status, r.message
                );
                if r.status == 403 {
                    // Not a passing state (another region, a wrong
                    // secret): an operator has to act, so say it loudly.
                    tracing::error!("{e}; this broker serves no replicated shard until it is admitted");
                }
                Err(BrokerError::ControlPlane(e))
            }
        }
    }

    /// Reports that `broker` has left group `group` (a move is over).
    pub async fn move_done(&self, broker: u32, group: u64) -> Result<(), BrokerError> {
        let path = format!("/v1/brokers/{broker}/moves/{group}/done");
        match self.call(reqwest::Method::POST, &path, None, None, 0).await? {
            Ok(_) => Ok(()),
            Err(r) => Err(BrokerError::ControlPlane(format!(
                "move done refused ({}): {}",
                r.status, r.message
            ))),
        }
    }

    /// Says this broker is alive, with its streams' live subscriptions and
    /// what it holds of scopes with a usage quota; answers the cluster's
    /// usage of those scopes.
    pub async fn heartbeat(
        &self,
        id: u32,
        subscribers: &BTreeMap<String, u32>,
        usage: &BTreeMap<String, Usage>,
        bridges: &[felix_controlplane::model::BridgeLag],
    ) -> Result<HashMap<String, Usage>, BrokerError> {
        let body = match bridges.is_empty() {
            true => json!({ "subscribers": subscribers, "usage": usage }),
            false => json!({ "subscribers": subscribers, "usage": usage, "bridges": bridges }),
        };
        let path = format!("/v1/brokers/{id}/heartbeat");
        match self
            .call(reqwest::Method::POST, &path, Some(&body), None, 0)
            .await?
        {
            // An older control plane answers no usage: nothing is known
            // of other brokers then.
            Ok(v) => Ok(v
                .get("usage")
                .cloned()
                .and_then(|u| serde_json::from_value(u).ok())
                .unwrap_or_default()),
            Err(r) => Err(BrokerError::ControlPlane(format!(
                "heartbeat refused ({}): {}",
                r.status, r.message
            ))),
        }
    }
}

/// Runs `f` when dropped (however the call ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The error a client is told for a control-plane refusal.
fn refused_to_error(r: Result<Value, Refused>, name: &StreamName) -> Result<Value, BrokerError> {
    match r {
        Ok(v) => Ok(v),
        Err(Refused { status, message }) => Err(match status {
            401 => BrokerError::Unauthorized(message),
            403 => match message.strip_prefix("quota exceeded: ") {
                Some(why) => BrokerError::QuotaExceeded(why.to_owned()),
                None => BrokerError::Forbidden(message),
            },
            404 if message.contains("no stream") || message.contains("no cache") => {
                BrokerError::UnknownStream(name.to_string())
            }
            409 if message.contains("exists") => BrokerError::StreamExists(name.to_string()),
            400 | 404 | 409 => BrokerError::Invalid(format!("the control plane refused: {message}")),
            s => BrokerError::ControlPlane(format!("{s}: {message}")),
        }),
    }
}
