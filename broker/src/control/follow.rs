//! Following the control plane: register, heartbeat, and the metadata feed
//! (a snapshot at version V, then changes since V, long-polled). Streams
//! and caches reach the node as [`Node::follow`] calls tagged with the
//! feed version, quotas reach the [`QuotaTable`](super::quota::QuotaTable)
//! and token keys reach [`Keys`](super::access::Keys).
//!
//! Every broker follows the feed on its own and applies it in the feed's
//! order; the version tag makes a repeat harmless (a change older than one
//! already applied is skipped). The broker registry in the feed names the
//! peers a cluster's brokers replicate with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use felix_client::wire::StreamConfig;
use felix_controlplane::model::{
    Bridge, Broker, Cache, DataKey, EncryptionSpec, Quotas, ShardPlacement, Stream, Usage,
};
use felix_controlplane::state::{Change, Versioned};
use serde::Deserialize;
use serde_json::Value;

use super::usage::LOCAL_REFRESH_MS;
use super::{ControlLink, FEED_WAIT_MS, RETRY_BACKOFF_MS_MAX};
use crate::error::BrokerError;
use crate::meta::StreamKind;
use crate::names::StreamName;
use crate::node::{Followed, Node};

/// The durability of a cache's shards (the control plane's cache spec has
/// none: a cache put is acknowledged once durable, as a stream's default).
pub const CACHE_DURABILITY: felix_model::Durability = felix_model::Durability::Always;

/// What the broker registers as.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: u32,
    pub client_addr: String,
    pub raft_addr: String,
    /// Where its Redis door listens, when it has one.
    pub redis_addr: Option<String>,
    /// Where its Kafka door listens, when it has one.
    pub kafka_addr: Option<String>,
    /// Its Raft node id, in a cluster (0 alone).
    pub node_id: u64,
    /// The region it is in: the control plane refuses another region's.
    pub region: String,
}

/// Starts registering, heartbeating and following in the background; the
/// tasks end when the node is dropped.
pub fn start(link: Arc<ControlLink>, node: &Arc<Node>, me: Registration) {
    let weak = Arc::downgrade(node);
    crate::bridge::supervise::start(node, me.region.clone());
    tokio::spawn(heartbeats(link.clone(), weak.clone(), me));
    tokio::spawn(usage_looks(weak.clone()));
    tokio::spawn(feed(link, weak));
}

/// What this broker holds of the scopes with a usage quota, per
/// `tenant/namespace`.
fn local_usage(n: &Node) -> BTreeMap<String, Usage> {
    n.local_usage(|t, ns| n.quotas.lock().expect("quota lock").usage.watches(t, ns))
}

/// Looks at what this broker holds every [`LOCAL_REFRESH_MS`], while some
/// usage quota is set, so its own growth counts before the next heartbeat.
async fn usage_looks(node: Weak<Node>) {
    let every = Duration::from_millis(LOCAL_REFRESH_MS);
    loop {
        tokio::time::sleep(every).await;
        let Some(n) = node.upgrade() else { return };
        if n.quotas.lock().expect("quota lock").usage.is_empty() {
            continue;
        }
        let local = local_usage(&n);
        n.quotas.lock().expect("quota lock").usage.set_local(local);
    }
}

async fn heartbeats(link: Arc<ControlLink>, node: Weak<Node>, me: Registration) {
    let every = Duration::from_millis(link.config.heartbeat_interval_ms);
    let mut registered = false;
    let mut backoff = Backoff::default();
    loop {
        let Some(n) = node.upgrade() else { return };
        let step = if registered {
            let usage = local_usage(&n);
            let bridges = n.bridges.lags(super::HEARTBEAT_BRIDGES_MAX);
            match link
                .heartbeat(me.id, &n.subscriber_counts(), &usage, &bridges)
                .await
            {
                Ok(cluster) => {
                    let mut q = n.quotas.lock().expect("quota lock");
                    q.usage.set_local(usage.clone());
                    q.usage.answered(usage, cluster);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            link.register(&me).await
        };
        drop(n);
        match step {
            Ok(()) => {
                if !registered {
                    tracing::info!(broker = me.id, "registered with the control plane");
                }
                registered = true;
                backoff.reset();
                tokio::time::sleep(every).await;
            }
            Err(e) => {
                // A control plane that forgot us (restored, say) refuses
                // heartbeats: register again.
                if registered {
                    tracing::warn!(error = %e, "heartbeat failed");
                    registered = !e.to_string().contains("no broker");
                } else {
                    tracing::warn!(error = %e, "registering with the control plane failed; retrying");
                }
                tokio::time::sleep(backoff.next().min(every)).await;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Backoff(u64);

impl Backoff {
    fn next(&mut self) -> Duration {
        self.0 = (self.0 * 2).clamp(100, RETRY_BACKOFF_MS_MAX);
        Duration::from_millis(self.0)
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// The feed snapshot, as brokers read it.
#[derive(Debug, Deserialize)]
struct Snapshot {
    version: u64,
    #[serde(default)]
    brokers: Vec<Broker>,
    tenants: BTreeMap<String, TenantView>,
    #[serde(default)]
    bridges: BTreeMap<String, Bridge>,
}

#[derive(Debug, Deserialize)]
struct TenantView {
    quotas: Option<Quotas>,
    namespaces: BTreeMap<String, NamespaceView>,
    #[serde(default)]
    jwks: Value,
    #[serde(default)]
    encryption: Option<EncryptionSpec>,
    #[serde(default)]
    data_keys: Vec<DataKey>,
}

#[derive(Debug, Deserialize)]
struct NamespaceView {
    quotas: Option<Quotas>,
    #[serde(default)]
    streams: BTreeMap<String, Stream>,
    #[serde(default)]
    caches: BTreeMap<String, Cache>,
}

#[derive(Debug, Deserialize)]
struct Changes {
    version: u64,
    changes: Vec<Versioned>,
}

async fn feed(link: Arc<ControlLink>, node: Weak<Node>) {
    let mut at: Option<u64> = None;
    let mut backoff = Backoff::default();
    loop {
        if node.strong_count() == 0 {
            return;
        }
        let step = match at {
            None => snapshot(&link, &node).await.map(Some),
            Some(v) => changes(&link, &node, v).await,
        };
        match step {
            Ok(next) => {
                at = next;
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(error = %e, "following the control plane; serving what this broker has");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Takes the snapshot and makes the node match it; returns its version.
async fn snapshot(link: &ControlLink, node: &Weak<Node>) -> Result<u64, String> {
    let s = link
        .call(reqwest::Method::GET, "/v1/feed/snapshot", None, None, 0)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|r| format!("feed snapshot refused ({}): {}", r.status, r.message))?;
    let s: Snapshot = serde_json::from_value(s).map_err(|e| format!("feed snapshot: {e}"))?;
    let Some(n) = node.upgrade() else {
        return Ok(s.version);
    };
    let now = n.now_ms();
    if let Some(c) = n.cluster() {
        let all = s
            .brokers
            .iter()
            .map(|b| (u64::from(b.registration.id), peer(b)))
            .collect();
        c.peers.replace(c.broker, all);
        n.keep_peers().map_err(|e| e.to_string())?;
    }
    // Keys before streams: a shard opened below reads its tenant's.
    for (t, tv) in &s.tenants {
        n.keys
            .set_tenant(t, tv.encryption.clone(), tv.data_keys.clone())
            .map_err(|e| e.to_string())?;
    }
    n.keys
        .retain(&s.tenants.keys().cloned().collect())
        .map_err(|e| e.to_string())?;
    let mut wanted = BTreeSet::new();
    {
        let mut q = n.quotas.lock().expect("quota lock");
        for (t, tv) in &s.tenants {
            q.set_tenant(t, tv.quotas, now);
            link.keys.set(t, &tv.jwks, now);
            for (ns, nv) in &tv.namespaces {
                q.set_namespace(t, ns, nv.quotas, now);
            }
        }
    }
    for (t, tv) in &s.tenants {
        for (ns, nv) in &tv.namespaces {
            for (name, st) in &nv.streams {
                let c = stream_config(t, ns, name, st);
                let name = c.name.clone();
                apply(&n, s.version, &name, Some(followed(c, &st.placement)), false)?;
                wanted.insert(name);
            }
            for (name, ca) in &nv.caches {
                let c = cache_config(t, ns, name, ca);
                let name = c.name.clone();
                apply(&n, s.version, &name, Some(followed(c, &ca.placement)), false)?;
                wanted.insert(name);
            }
        }
    }
    // Streams the control plane made that it no longer has: deleted while
    // this broker was not following.
    for name in n.managed_streams() {
        if !wanted.contains(&name) {
            apply(&n, s.version, &name, None, false)?;
        }
    }
    n.bridges.replace(s.bridges);
    link.version.store(s.version, Ordering::Release);
    link.set_synced();
    Ok(s.version)
}

/// Applies the changes after `since`; `None` when the feed no longer
/// reaches back that far (a snapshot is next).
async fn changes(link: &ControlLink, node: &Weak<Node>, since: u64) -> Result<Option<u64>, String> {
    let path = format!("/v1/feed/changes?since={since}&wait_ms={FEED_WAIT_MS}");
    let r = link
        .call(reqwest::Method::GET, &path, None, None, FEED_WAIT_MS)
        .await
        .map_err(|e| e.to_string())?;
    let c: Changes = match r {
        Ok(v) => serde_json::from_value(v).map_err(|e| format!("feed changes: {e}"))?,
        Err(r) if r.status == 410 => {
            tracing::info!(
                since,
                "the feed no longer reaches back that far; taking a snapshot"
            );
            return Ok(None);
        }
        Err(r) => return Err(format!("feed changes refused ({}): {}", r.status, r.message)),
    };
    let Some(n) = node.upgrade() else {
        return Ok(Some(c.version));
    };
    for v in c.changes {
        let now = n.now_ms();
        match v.change {
            Change::Tenant { tenant, quotas } => {
                n.quotas
                    .lock()
                    .expect("quota lock")
                    .set_tenant(&tenant, quotas, now);
                if quotas.is_none() {
                    link.keys.remove(&tenant);
                    // Crypto-shredding, on this broker: a deleted tenant's
                    // data keys go, from memory and from disk.
                    n.keys.forget_tenant(&tenant).map_err(|e| e.to_string())?;
                }
            }
            Change::Namespace {
                tenant,
                namespace,
                quotas,
            } => n
                .quotas
                .lock()
                .expect("quota lock")
                .set_namespace(&tenant, &namespace, quotas, now),
            Change::Stream {
                tenant,
                namespace,
                stream,
                value,
            } => {
                let name = format!("{tenant}/{namespace}/{stream}");
                let c =
                    value.map(|s| followed(stream_config(&tenant, &namespace, &stream, &s), &s.placement));
                apply(&n, v.version, &name, c, true)?;
            }
            Change::Cache {
                tenant,
                namespace,
                cache,
                value,
            } => {
                let name = format!("{tenant}/{namespace}/{cache}");
                let c = value.map(|s| followed(cache_config(&tenant, &namespace, &cache, &s), &s.placement));
                apply(&n, v.version, &name, c, true)?;
            }
            Change::DataKeys {
                tenant,
                encryption,
                keys,
            } => n
                .keys
                .set_tenant(&tenant, encryption, keys)
                .map_err(|e| e.to_string())?,
            Change::Keys { tenant } => {
                if let Err(e) = link.fetch_keys(&tenant, now).await {
                    tracing::warn!(tenant, error = %e, "fetching rotated keys failed; tokens signed with the new key are refused until they are fetched");
                }
            }
            Change::Bridge { name, value } => n.bridges.set(&name, value),
            // Where a peer listens, and which incarnation of it is current;
            // placement reaches this broker with each stream.
            Change::Broker { broker, value } => {
                if let Some(c) = n.cluster() {
                    c.peers
                        .learn(c.broker, u64::from(broker), value.as_ref().map(peer));
                    n.keep_peers().map_err(|e| e.to_string())?;
                }
            }
        }
    }
    link.version.store(c.version, Ordering::Release);
    Ok(Some(c.version))
}

/// A registered broker as a peer.
fn peer(b: &Broker) -> crate::peers::Peer {
    crate::peers::Peer {
        node: felix_replication::BrokerNode {
            raft_addr: b.registration.raft_addr.clone(),
            client_addr: b.registration.client_addr.clone(),
        },
        node_id: (b.registration.node_id != 0).then_some(b.registration.node_id),
        redis_addr: b.registration.redis_addr.clone(),
        kafka_addr: b.registration.kafka_addr.clone(),
    }
}

/// One stream's state at `version`, made the node's (`fresh`: see
/// [`Node::follow`]). A change this broker can never apply (a name it
/// cannot hold) is logged and skipped; any other failure (a full disk,
/// say) is returned, and the feed is read again from the same version, so
/// no change is lost.
fn apply(n: &Node, version: u64, name: &str, want: Option<Followed>, fresh: bool) -> Result<(), String> {
    let parsed = match StreamName::parse(name) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(name, error = %e, "the control plane named a stream this broker cannot hold");
            return Ok(());
        }
    };
    match n.follow(version, &parsed, want, fresh) {
        Ok(()) => Ok(()),
        Err(e @ (BrokerError::Invalid(_) | BrokerError::InvalidName(_))) => {
            tracing::warn!(stream = name, version, error = %e, "a control-plane change this broker cannot apply");
            Ok(())
        }
        Err(e) => Err(format!("applying {name} at version {version}: {e}")),
    }
}

fn followed(config: StreamConfig, placement: &[ShardPlacement]) -> Followed {
    Followed {
        config,
        placement: placement.to_vec(),
    }
}

/// A control-plane stream as the broker creates it.
pub fn stream_config(tenant: &str, namespace: &str, name: &str, s: &Stream) -> StreamConfig {
    StreamConfig {
        name: format!("{tenant}/{namespace}/{name}"),
        kind: s.spec.kind,
        shards: s.spec.shards,
        durability: s.spec.durability,
        retention_ms: s.spec.retention_ms,
        retention_bytes: s.spec.retention_bytes,
        max_deliveries: s.spec.max_deliveries,
        default_ttl_ms: None,
        replication_factor: s.spec.replication_factor,
        key_routing: s.spec.key_routing.unwrap_or_default(),
    }
}

/// A control-plane cache as the broker creates it.
pub fn cache_config(tenant: &str, namespace: &str, name: &str, c: &Cache) -> StreamConfig {
    StreamConfig {
        name: format!("{tenant}/{namespace}/{name}"),
        kind: StreamKind::Cache,
        shards: c.spec.shards,
        durability: CACHE_DURABILITY,
        retention_ms: None,
        retention_bytes: None,
        max_deliveries: 0,
        default_ttl_ms: c.spec.default_ttl_ms,
        replication_factor: c.spec.replication_factor,
        key_routing: c.spec.key_routing.unwrap_or_default(),
    }
}
