//! What brokers call: registration, heartbeats, drain and moves, and
//! the feed they follow (a snapshot, then long-polled changes).

use super::*;

pub(super) async fn list_brokers(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    n.read_barrier().await;
    Ok(Json(n.read(|m| {
        // Each with the replicas placed on it (leaving ones included): a
        // decommission's progress.
        let mut held: BTreeMap<u32, usize> = BTreeMap::new();
        for p in m.placements() {
            for b in p.replicas.iter().chain(&p.leaving) {
                *held.entry(*b).or_default() += 1;
            }
        }
        let items: Vec<Value> = m
            .brokers
            .values()
            .map(|b| {
                let mut v = json!(b);
                v["replicas"] = json!(held.get(&b.registration.id).copied().unwrap_or(0));
                v
            })
            .collect();
        json!({ "items": items, "retired": m.retired_brokers })
    })))
}

pub(super) async fn register_broker(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    broker_or_operator(&n, &h)?;
    let registration: BrokerRegistration = body(&b)?;
    registration.validate().map_err(bad)?;
    // Sovereignty: a broker of another region would be placed replicas of
    // this region's streams. Refused before anything is proposed.
    if registration.region != n.cfg.region {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "broker {} is in region {:?}; this control plane's region is {:?}",
                registration.id, registration.region, n.cfg.region
            ),
        ));
    }
    let actor = format!("broker:{}", registration.id);
    Ok(applied(
        n.propose(&actor, Command::RegisterBroker { registration })
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Heartbeat {
    #[serde(default)]
    subscribers: BTreeMap<String, u32>,
    /// Per `tenant/namespace` with a usage quota: what the shards this
    /// broker leads hold and the subscriptions open on it.
    #[serde(default)]
    usage: BTreeMap<String, Usage>,
    /// Per source shard of each bridge this broker carries (the shards
    /// it leads): how far it has carried it.
    #[serde(default)]
    bridges: Vec<BridgeLag>,
}

/// Entries one heartbeat may carry in each of its maps and lists: a
/// broker reports a stream only while it has subscribers, a namespace only
/// while it has a usage quota and a bridge's shard only while it leads it,
/// so this is far above what a broker sends.
pub const HEARTBEAT_ENTRIES_MAX: usize = 100_000;

pub(super) async fn heartbeat(
    State(n): S,
    h: HeaderMap,
    Path(id): Path<u32>,
    b: Bytes,
) -> Result<Response, ApiError> {
    broker_or_operator(&n, &h)?;
    let hb: Heartbeat = if b.is_empty() {
        Heartbeat::default()
    } else {
        body(&b)?
    };
    if hb.subscribers.len() > HEARTBEAT_ENTRIES_MAX
        || hb.usage.len() > HEARTBEAT_ENTRIES_MAX
        || hb.bridges.len() > HEARTBEAT_ENTRIES_MAX
    {
        return Err(bad(format!(
            "a heartbeat carries at most {HEARTBEAT_ENTRIES_MAX} streams, namespaces and bridge shards"
        )));
    }
    if !n.is_leader() {
        // Liveness is the leader's to judge: pass it on.
        let Some((_, leader)) = n.leader_addr() else {
            return Err(CpError::NoLeader.into());
        };
        let r = n
            .peers
            .post(format!("{}://{leader}/v1/brokers/{id}/heartbeat", n.cfg.scheme()))
            .header("authorization", format!("Bearer {}", n.cfg.cluster_secret))
            .timeout(Duration::from_secs(2))
            .json(&json!({ "subscribers": hb.subscribers, "usage": hb.usage, "bridges": hb.bridges }))
            .send()
            .await
            .map_err(|e| CpError::Unavailable(e.to_string()))?;
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let v: Value = r.json().await.unwrap_or(Value::Null);
        return Ok((status, Json(v)).into_response());
    }
    n.heartbeat(id, hb.subscribers, hb.usage, hb.bridges).await?;
    Ok(Json(json!({
        "interval_ms": n.cfg.broker_heartbeat_interval_ms,
        "usage": n.usage_totals(),
    }))
    .into_response())
}

pub(super) async fn set_status(n: &Node, h: &HeaderMap, broker: u32, status: BrokerStatus) -> ApiResult {
    let c = operator(n, h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::SetBrokerStatus { broker, status })
            .await?,
    ))
}

pub(super) async fn drain(State(n): S, h: HeaderMap, Path(id): Path<u32>) -> ApiResult {
    set_status(&n, &h, id, BrokerStatus::Draining).await
}

pub(super) async fn undrain(State(n): S, h: HeaderMap, Path(id): Path<u32>) -> ApiResult {
    set_status(&n, &h, id, BrokerStatus::Active).await
}

pub(super) async fn decommission(State(n): S, h: HeaderMap, Path(id): Path<u32>) -> ApiResult {
    let c = operator(&n, &h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::Decommission { broker: id })
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Transfer {
    broker: u32,
}

/// The reference API's TransferShardLeadership: the placement's preferred
/// leader becomes `broker`, whose replica the group's leader then hands
/// leadership to (`broker/src/control/moves.rs`).
pub(super) async fn transfer_leader(
    State(n): S,
    h: HeaderMap,
    Path((tenant, namespace, name, shard)): Path<(String, String, String, u32)>,
    b: Bytes,
) -> ApiResult {
    let c = operator(&n, &h)?;
    let t: Transfer = body(&b)?;
    let cmd = Command::TransferLeader {
        tenant,
        namespace,
        name,
        shard,
        broker: t.broker,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn move_done(
    State(n): S,
    h: HeaderMap,
    Path((broker, group)): Path<(u32, u64)>,
) -> ApiResult {
    let c = broker_or_operator(&n, &h)?;
    Ok(applied(
        n.propose(&c.actor(), Command::MoveDone { group, broker }).await?,
    ))
}

/// `POST /v1/rebalance`: leaders evened out now; with a body (`{}` for
/// the defaults), replicas too, moved by the following reconciliations.
pub(super) async fn rebalance(State(n): S, h: HeaderMap, b: Bytes) -> ApiResult {
    let c = operator(&n, &h)?;
    let goal: Option<crate::rebalance::Goal> = if b.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(body(&b)?)
    };
    Ok(applied(n.propose(&c.actor(), Command::Rebalance { goal }).await?))
}

/// `GET /v1/rebalance`: the rebalance in progress, if any, and every move
/// in progress (a shard with a replica leaving).
pub(super) async fn rebalance_status(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    Ok(Json(n.read(|m| {
        let moving: Vec<Value> = m
            .placements()
            .filter(|p| !p.leaving.is_empty())
            .map(|p| json!({"group": p.group, "replicas": p.replicas, "leaving": p.leaving}))
            .collect();
        json!({"rebalance": m.rebalance, "moves_in_progress": moving})
    })))
}

/// What brokers see: no issuers, rules or signing keys. Each tenant's
/// encryption and data keys, materials included: a broker derives the keys
/// it seals with from them and its master key, which the control plane
/// never holds. Every bridge whole, its target's token included: the
/// brokers leading its streams' shards dial the target with it.
pub(super) fn broker_view(m: &crate::state::Metadata) -> Value {
    let tenants: BTreeMap<&String, Value> = m
        .tenants
        .iter()
        .map(|(name, t)| {
            let namespaces: BTreeMap<&String, Value> = t
                .namespaces
                .iter()
                .map(|(nn, ns)| {
                    (
                        nn,
                        json!({"quotas": ns.spec.quotas, "streams": ns.streams, "caches": ns.caches}),
                    )
                })
                .collect();
            (
                name,
                json!({
                    "quotas": t.spec.quotas,
                    "namespaces": namespaces,
                    "jwks": m.jwks(name).unwrap_or_default(),
                    "encryption": t.spec.encryption,
                    "data_keys": t.data_keys,
                }),
            )
        })
        .collect();
    json!({
        "version": m.version,
        "brokers": m.brokers.values().collect::<Vec<_>>(),
        "tenants": tenants,
        "bridges": m.bridges,
    })
}

pub(super) async fn feed_snapshot(State(n): S, h: HeaderMap) -> ApiResult {
    broker_or_operator(&n, &h)?;
    Ok(Json(n.read(broker_view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Since {
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

pub(super) async fn feed_changes(State(n): S, h: HeaderMap, Query(q): Query<Since>) -> ApiResult {
    broker_or_operator(&n, &h)?;
    let wait = Duration::from_millis(q.wait_ms.min(FEED_WAIT_MS_MAX));
    let mut rx = n.sm.subscribe();
    // Served by any node from its applied state: brokers keep following a
    // minority partition's stale view rather than nothing.
    let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > q.since)).await;
    n.read(|m| match m.changes_since(q.since) {
        Some(changes) => Ok(Json(json!({"version": m.version, "changes": changes}))),
        None => Err(ApiError(
            StatusCode::GONE,
            format!(
                "version {} is older than the feed keeps; take /v1/feed/snapshot",
                q.since
            ),
        )),
    })
}
