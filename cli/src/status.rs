//! `felix cluster status` and the per-leader view `felix stream describe`
//! prints: every broker is asked directly, so a broker that is down shows
//! as down and each shard's figures come from its leader, not from
//! whichever broker answered first (a stale or trimmed copy).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use felix_client::wire::{BrokerInfo, Message, ShardStats, StreamConfig, StreamInfo};
use felix_client::Client;
use serde_json::json;

use crate::profile::{self, Common, Output};

/// How long one broker may take to answer before it is reported down.
const BROKER_ANSWER_MAX: Duration = Duration::from_secs(3);
/// Streams whose shards `cluster status` lists at most (one describe per
/// stream per broker).
pub const STATUS_STREAMS_MAX: usize = 1_000;

/// What one broker said about the streams it was asked for.
type View = Result<BTreeMap<String, (StreamConfig, Vec<ShardStats>)>, String>;

async fn metadata(
    client: &Client,
    streams: Vec<String>,
) -> anyhow::Result<(Vec<BrokerInfo>, Vec<StreamInfo>)> {
    match client
        .call(felix_client::Route::Any, &Message::Metadata { streams })
        .await?
    {
        Message::MetadataReply { brokers, streams } => Ok((brokers, streams)),
        Message::Error(e) => Err(e.into()),
        m => bail!("unexpected reply to a metadata request: {m:?}"),
    }
}

/// Asks the broker at `address` to describe each of `streams`.
async fn view_of(client: &Client, address: &str, streams: &[String]) -> View {
    let ask = async {
        let conn = client.connection(address).await.map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for s in streams {
            let m = Message::StreamDescribe { name: s.clone() };
            match conn.request(&m, BROKER_ANSWER_MAX.as_millis() as u64).await {
                Ok(Message::StreamDescription { config, shards }) => {
                    out.insert(s.clone(), (config, shards));
                }
                // Not hosted there (placement on a subset): no view.
                Ok(_) | Err(felix_client::ClientError::Broker(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    };
    match tokio::time::timeout(BROKER_ANSWER_MAX * 2, ask).await {
        Ok(v) => v,
        Err(_) => Err(format!("no answer within {:?}", BROKER_ANSWER_MAX * 2)),
    }
}

async fn views(client: &Client, brokers: &[BrokerInfo], streams: &[String]) -> BTreeMap<u64, View> {
    let mut out = BTreeMap::new();
    for b in brokers {
        out.insert(b.id, view_of(client, &b.address, streams).await);
    }
    out
}

/// A stream's settings, and each shard's figures as its leader has them
/// (the answering broker's when the leader is unknown or unreachable).
pub async fn describe_from_leaders(
    client: &Client,
    name: &str,
) -> anyhow::Result<(StreamConfig, Vec<ShardStats>)> {
    let any = match client
        .call(
            felix_client::Route::Any,
            &Message::StreamDescribe { name: name.into() },
        )
        .await?
    {
        Message::StreamDescription { config, shards } => (config, shards),
        Message::Error(e) => return Err(e.into()),
        m => bail!("unexpected reply to a describe request: {m:?}"),
    };
    let Ok((brokers, streams)) = metadata(client, vec![name.into()]).await else {
        return Ok(any);
    };
    let Some(info) = streams.into_iter().next() else {
        return Ok(any);
    };
    let leaders: Vec<u64> = info.shards.iter().filter_map(|s| s.leader).collect();
    let asked: Vec<BrokerInfo> = brokers.into_iter().filter(|b| leaders.contains(&b.id)).collect();
    if asked.is_empty() {
        return Ok(any);
    }
    let v = views(client, &asked, &[name.to_string()]).await;
    // A broker reports the shards it holds a replica of, each under its
    // number: the leader's figures win, the answering broker's fill in.
    let (config, answered) = any;
    let mut shards: BTreeMap<u32, ShardStats> = answered.into_iter().map(|st| (st.shard, st)).collect();
    for s in &info.shards {
        let from_leader = s
            .leader
            .and_then(|l| v.get(&l)?.as_ref().ok()?.get(name))
            .and_then(|(_, st)| st.iter().find(|x| x.shard == s.shard).cloned());
        if let Some(st) = from_leader {
            shards.insert(s.shard, st);
        }
    }
    Ok((config, shards.into_values().collect()))
}

/// One shard's health as the brokers report it.
struct ShardHealth {
    stream: String,
    shard: u32,
    leader: Option<u64>,
    replicas: Vec<u64>,
    /// The leader's next offset.
    end: Option<u64>,
    /// Records each replica is behind the leader (`None`: no answer).
    lag: Vec<(u64, Option<u64>)>,
    under_replicated: bool,
}

pub async fn cluster_status(c: &Common, lag_max: u64) -> anyhow::Result<()> {
    let client = profile::connect(c).await?;
    let (brokers, streams) = metadata(&client, Vec::new()).await?;
    let names: Vec<String> = streams
        .iter()
        .take(STATUS_STREAMS_MAX)
        .map(|s| s.name.clone())
        .collect();
    let v = views(&client, &brokers, &names).await;
    let mut shards = Vec::new();
    for s in streams.iter().take(STATUS_STREAMS_MAX) {
        for sh in &s.shards {
            let next_on = |b: u64| -> Option<u64> {
                let (_, st) = v.get(&b)?.as_ref().ok()?.get(&s.name)?;
                Some(st.iter().find(|x| x.shard == sh.shard)?.next)
            };
            let end = sh.leader.and_then(next_on);
            let lag: Vec<(u64, Option<u64>)> = sh
                .replicas
                .iter()
                .map(|r| (*r, end.zip(next_on(*r)).map(|(e, n)| e.saturating_sub(n))))
                .collect();
            let under_replicated = sh.leader.is_none()
                || brokers.len() > 1 && sh.replicas.len() < 2
                || lag.iter().any(|(_, l)| l.is_none_or(|l| l > lag_max));
            shards.push(ShardHealth {
                stream: s.name.clone(),
                shard: sh.shard,
                leader: sh.leader,
                replicas: sh.replicas.clone(),
                end,
                lag,
                under_replicated,
            });
        }
    }
    let leaderless = shards.iter().filter(|s| s.leader.is_none()).count();
    let under = shards.iter().filter(|s| s.under_replicated).count();
    // Moves in progress, when the profile reaches the control plane.
    let (moves, region, registered) = match crate::operator::Operator::from_profile(c) {
        Ok(op) => (
            op.moves().await.ok(),
            op.cluster().await.ok().map(|v| v["region"].clone()),
            op.brokers().await.ok(),
        ),
        Err(_) => (None, None, None),
    };
    // Each broker's region as it registered (what the control plane
    // admitted), when the profile reaches the control plane.
    let region_of = |id: u64| -> Option<String> {
        registered.as_ref()?["items"]
            .as_array()?
            .iter()
            .find(|b| b["registration"]["id"].as_u64() == Some(id))
            .and_then(|b| b["registration"]["region"].as_str())
            .map(String::from)
    };
    if c.output == Output::Json {
        println!(
            "{}",
            json!({
                "region": region,
                "brokers": brokers.iter().map(|b| json!({
                    "id": b.id, "address": b.address, "region": region_of(b.id),
                    "up": v.get(&b.id).is_some_and(|r| r.is_ok()),
                    "error": v.get(&b.id).and_then(|r| r.as_ref().err()),
                    "leads": shards.iter().filter(|s| s.leader == Some(b.id)).count(),
                })).collect::<Vec<_>>(),
                "shards": shards.iter().map(|s| json!({
                    "stream": s.stream, "shard": s.shard, "leader": s.leader, "replicas": s.replicas,
                    "end": s.end, "under_replicated": s.under_replicated,
                    "lag": s.lag.iter().map(|(b, l)| json!({"broker": b, "records": l})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "shards_total": shards.len(), "without_leader": leaderless, "under_replicated": under,
                "streams_listed": names.len(), "streams_total": streams.len(),
                "rebalance": moves.as_ref().map(|m| &m["rebalance"]),
                "moves_in_progress": moves.as_ref().map(|m| &m["moves_in_progress"]),
            })
        );
    } else {
        if let Some(r) = region.as_ref().and_then(|r| r.as_str()) {
            println!("region {r}");
        }
        println!("brokers");
        println!(
            "  {:>4}  {:<22}  {:<8}  {:<6}  leads",
            "id", "address", "region", "status"
        );
        for b in &brokers {
            let status = match v.get(&b.id) {
                Some(Ok(_)) => "up".to_string(),
                Some(Err(e)) => format!("down ({e})"),
                None => "unknown".into(),
            };
            let leads = shards.iter().filter(|s| s.leader == Some(b.id)).count();
            let region = region_of(b.id).unwrap_or_else(|| "?".into());
            println!(
                "  {:>4}  {:<22}  {:<8}  {:<6}  {leads}",
                b.id, b.address, region, status
            );
        }
        println!("shards");
        println!(
            "  {:<32}  {:>5}  {:>6}  {:<10}  {:>10}  lag by replica (records)",
            "stream", "shard", "leader", "replicas", "end"
        );
        for s in &shards {
            let lag: Vec<String> = s
                .lag
                .iter()
                .map(|(b, l)| format!("{b}:{}", l.map_or("?".into(), |l| l.to_string())))
                .collect();
            let replicas: Vec<String> = s.replicas.iter().map(u64::to_string).collect();
            println!(
                "  {:<32}  {:>5}  {:>6}  {:<10}  {:>10}  {}{}",
                s.stream,
                s.shard,
                s.leader.map_or("none".into(), |l| l.to_string()),
                replicas.join(","),
                s.end.map_or("?".into(), |e| e.to_string()),
                lag.join(" "),
                if s.under_replicated {
                    "  UNDER-REPLICATED"
                } else {
                    ""
                }
            );
        }
        println!(
            "{} shard(s): {leaderless} without a leader, {under} under-replicated (a replica down, missing, or more than {lag_max} records behind)",
            shards.len()
        );
        if let Some(m) = &moves {
            let list = m["moves_in_progress"].as_array().cloned().unwrap_or_default();
            if !m["rebalance"].is_null() {
                println!("rebalancing ({})", m["rebalance"]["strategy"]);
            }
            println!("{} move(s) in progress", list.len());
            for mv in list {
                println!(
                    "  group {}: replicas {} leaving {}",
                    mv["group"], mv["replicas"], mv["leaving"]
                );
            }
        }
        if streams.len() > names.len() {
            println!(
                "(only the first {} of {} streams are listed)",
                names.len(),
                streams.len()
            );
        }
        if leaderless > 0 {
            println!("hint: a shard without a leader has lost a majority of its replicas; start the brokers marked down");
        }
    }
    client.close().await;
    Ok(())
}
