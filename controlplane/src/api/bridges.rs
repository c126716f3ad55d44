//! Bridges: the operator's routes. A bridge moves a tenant's records out
//! of the region, so only the operator makes, pauses or deletes one, and
//! its target's token is never shown (only the brokers' feed carries it).

use super::*;

/// Set on a describe a follower passes on to the leader, so a leader that
/// just lost its leadership answers itself instead of passing it on again.
const FORWARDED_HEADER: &str = "x-felix-forwarded";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewBridge {
    name: String,
    spec: BridgeSpec,
}

/// A bridge as the API shows it: the target's token replaced by whether
/// there is one. Built field by field, so a secret added to the model
/// later is not shown by default.
fn redacted(b: &Bridge) -> Value {
    let t = &b.spec.target;
    json!({
        "name": b.name,
        "spec": {
            "tenant": b.spec.tenant,
            "streams": b.spec.streams,
            "target": {
                "region": t.region,
                "brokers": t.brokers,
                "server_name": t.server_name,
                "ca_pem": t.ca_pem,
                "token_set": !t.token.is_empty(),
            },
        },
        "paused": b.paused,
        "created_ms": b.created_ms,
        "updated_ms": b.updated_ms,
    })
}

fn shown(n: &Node, name: &str) -> ApiResult<Value> {
    n.read(|m| m.bridges.get(name).map(redacted))
        .ok_or_else(|| crate::state::ApplyError::not_found(format!("no bridge {name:?}")).into())
}

/// `POST /v1/bridges`: 201 with the bridge; 200 when the same bridge
/// already existed (a retried create).
pub(super) async fn create_bridge(State(n): S, h: HeaderMap, b: Bytes) -> Result<Response, ApiError> {
    let c = operator(&n, &h)?;
    let nb: NewBridge = body(&b)?;
    check_name("bridge", &nb.name)?;
    nb.spec.validate().map_err(bad)?;
    // Checked here, not in the state: the node knows its region, the
    // replicated metadata does not. A bridge into its own region would
    // carry records to where they already are, or loop.
    if nb.spec.target.region == n.cfg.region {
        return Err(bad(format!(
            "the target's region {:?} is this control plane's own: a bridge carries streams to another region",
            nb.spec.target.region
        )));
    }
    let name = nb.name.clone();
    let a = n
        .propose(
            &c.actor(),
            Command::PutBridge {
                name: nb.name,
                spec: nb.spec,
            },
        )
        .await?;
    let status = if a.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(shown(&n, &name)?)).into_response())
}

/// `GET /v1/bridges`: every bridge, redacted, by name.
pub(super) async fn list_bridges(State(n): S, h: HeaderMap) -> ApiResult {
    operator(&n, &h)?;
    n.read_barrier().await;
    Ok(Json(n.read(
        |m| json!({ "bridges": m.bridges.values().map(redacted).collect::<Vec<_>>() }),
    )))
}

/// `GET /v1/bridges/{name}`: the bridge, redacted, with its lag as the
/// brokers last reported it. Those reports are the leader's (in memory),
/// so a follower passes the request on to the leader; with no leader to
/// ask it answers itself with `lag` and `lag_total` null (unknown).
pub(super) async fn get_bridge(
    State(n): S,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    operator(&n, &h)?;
    check_name("bridge", &name)?;
    if !n.is_leader() && !h.contains_key(FORWARDED_HEADER) {
        if let Some((_, leader)) = n.leader_addr() {
            match forward_describe(&n, &leader, &name).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(bridge = name, error = %e, "the leader did not answer a bridge describe; answering without lag")
                }
            }
        }
    }
    n.read_barrier().await;
    let mut v = shown(&n, &name)?;
    if n.is_leader() {
        let rows = n.bridge_lag(&name);
        let total = rows.iter().fold(0u64, |t, (_, r)| t.saturating_add(r.lag()));
        v["lag"] = rows
            .into_iter()
            .map(|(broker, r)| {
                json!({
                    "stream": r.stream,
                    "shard": r.shard,
                    "position": r.position,
                    "end": r.end,
                    "lag": r.lag(),
                    "error": r.error,
                    "broker": broker,
                })
            })
            .collect();
        v["lag_total"] = json!(total);
    } else {
        v["lag"] = Value::Null;
        v["lag_total"] = Value::Null;
    }
    Ok(Json(v).into_response())
}

async fn forward_describe(n: &Node, leader: &str, name: &str) -> Result<Response, reqwest::Error> {
    let r = n
        .peers
        .get(format!("{}://{leader}/v1/bridges/{name}", n.cfg.scheme()))
        .header("authorization", format!("Bearer {}", n.cfg.cluster_secret))
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await?;
    Ok((status, Json(v)).into_response())
}

async fn set_paused(n: &Node, h: &HeaderMap, name: String, paused: bool) -> ApiResult {
    let c = operator(n, h)?;
    check_name("bridge", &name)?;
    n.propose(
        &c.actor(),
        Command::SetBridgePaused {
            name: name.clone(),
            paused,
        },
    )
    .await?;
    Ok(Json(shown(n, &name)?))
}

/// `POST /v1/bridges/{name}/pause`: the bridge, now paused.
pub(super) async fn pause_bridge(State(n): S, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    set_paused(&n, &h, name, true).await
}

/// `POST /v1/bridges/{name}/resume`: the bridge, running again.
pub(super) async fn resume_bridge(State(n): S, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    set_paused(&n, &h, name, false).await
}

/// `DELETE /v1/bridges/{name}`: what was applied, as other deletes.
pub(super) async fn delete_bridge(State(n): S, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let c = operator(&n, &h)?;
    check_name("bridge", &name)?;
    Ok(applied(
        n.propose(&c.actor(), Command::DeleteBridge { name }).await?,
    ))
}
