//! Streams and caches: one list, create and get for both (`Placed`),
//! and what differs (a stream's patch, the deletes).

use super::*;

/// A stream or cache to create: its name and its spec, in one object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPlaced<Spec> {
    name: String,
    #[serde(flatten)]
    spec: Spec,
}

pub(super) async fn list_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    Query(p): Query<Page>,
) -> ApiResult {
    ns_caller(&n, &h, &t, &ns)?.require(Action::ResourceManage, &ns_object(&t, &ns))?;
    n.read_barrier().await;
    n.read(|m| {
        paginate(
            P::of(m.namespace(&t, &ns)?)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
            &p,
        )
    })
}

pub(super) async fn create_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let c = ns_caller(&n, &h, &t, &ns)?;
    let x: NewPlaced<P::Spec> = body(&b)?;
    check_stream_name(P::KIND, &x.name)?;
    match c {
        // A broker defines the dead-letter stream of a stream it serves
        // (`<name>.dlq`) and nothing else.
        Caller::Broker => {
            let source = x.name.strip_suffix(felix_model::names::DLQ_SUFFIX);
            let exists = P::KIND == "stream"
                && source.is_some_and(|s| {
                    n.read(|m| m.namespace(&t, &ns).is_ok_and(|x| x.streams.contains_key(s)))
                });
            if !exists {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the brokers' credential creates only a stream's dead-letter stream ({}), not {:?}",
                        felix_model::names::DLQ_SUFFIX,
                        x.name
                    ),
                ));
            }
        }
        _ => c.require(Action::ResourceManage, &P::object(&t, &ns, &x.name))?,
    }
    P::validate(&x.spec).map_err(bad)?;
    let cmd = P::create(t, ns, x.name, x.spec);
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn get_placed<P: Placed>(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
) -> ApiResult {
    check_stream_name(P::KIND, &s)?;
    caller(&n, &h, &t)?.require(Action::ResourceManage, &P::object(&t, &ns, &s))?;
    n.read_barrier().await;
    n.read(|m| {
        let x = P::of(m.namespace(&t, &ns)?)
            .get(&s)
            .ok_or_else(|| crate::state::ApplyError::not_found(format!("no {} {t}/{ns}/{s}", P::KIND)))?;
        let mut v = serde_json::to_value(x).unwrap_or_default();
        v["name"] = s.clone().into();
        Ok(Json(v))
    })
}

pub(super) async fn patch_stream(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
    b: Bytes,
) -> ApiResult {
    check_stream_name("stream", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::stream(&t, &ns, &s))?;
    let update: StreamUpdate = body(&b)?;
    let cmd = Command::UpdateStream {
        tenant: t,
        namespace: ns,
        stream: s,
        update,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Force {
    #[serde(default)]
    force: bool,
}

pub(super) async fn delete_stream(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
    Query(f): Query<Force>,
) -> ApiResult {
    check_stream_name("stream", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::stream(&t, &ns, &s))?;
    if !f.force {
        // Subscriber counts live on the leader (from heartbeats).
        if !n.is_leader() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "ask the leader (see /v1/cluster) to delete a stream".into(),
            ));
        }
        let active = n.subscribers_of(&format!("{t}/{ns}/{s}"));
        if active > 0 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("stream {t}/{ns}/{s} has {active} active subscribers; stop them or pass ?force=true"),
            ));
        }
    }
    let cmd = Command::DeleteStream {
        tenant: t,
        namespace: ns,
        stream: s,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}

pub(super) async fn delete_cache(
    State(n): S,
    h: HeaderMap,
    Path((t, ns, s)): Path<(String, String, String)>,
) -> ApiResult {
    check_stream_name("cache", &s)?;
    let c = caller(&n, &h, &t)?;
    c.require(Action::ResourceManage, &Object::cache(&t, &ns, &s))?;
    let cmd = Command::DeleteCache {
        tenant: t,
        namespace: ns,
        cache: s,
    };
    Ok(applied(n.propose(&c.actor(), cmd).await?))
}
