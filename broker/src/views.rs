//! What this broker learns about shard groups it holds no replica of, so
//! that its metadata answers name the real leader and voters whichever
//! broker a client asks: it asks a broker placed on each such group (the
//! preferred replica first, then the others) with one replication RPC per
//! broker (`Transport::groups`), and keeps the answers briefly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use felix_replication::{BrokerNode, GroupId, GroupView, Transport, GROUPS_ASKED_MAX};

/// How long a learned view is used before it is asked for again.
pub const GROUP_VIEW_TTL_MS: u64 = 1_000;
/// How long one broker is given to answer.
pub const GROUP_VIEW_ASK_MS: u64 = 500;
/// Views kept at most (all are dropped when more would be).
pub const GROUP_VIEWS_MAX: usize = 65_536;

/// Learned views, by group, with when each was learned.
#[derive(Debug, Default)]
pub struct GroupViews {
    known: Mutex<HashMap<GroupId, (GroupView, Instant)>>,
}

impl GroupViews {
    /// The view of each group of `wanted` (group, brokers placed on it,
    /// preferred first) that a placed broker other than `me` (asked at its
    /// address in `peers`) could give within [`GROUP_VIEW_ASK_MS`] per
    /// round; a group none answered for is left out.
    pub async fn learn(
        &self,
        transport: &std::sync::Arc<Transport>,
        me: u64,
        peers: &BTreeMap<u64, BrokerNode>,
        wanted: &[(GroupId, Vec<u64>)],
    ) -> HashMap<GroupId, GroupView> {
        let ttl = Duration::from_millis(GROUP_VIEW_TTL_MS);
        let mut out = HashMap::new();
        {
            let known = self.known.lock().expect("views lock");
            for (g, _) in wanted {
                if let Some((v, at)) = known.get(g) {
                    if at.elapsed() < ttl {
                        out.insert(*g, v.clone());
                    }
                }
            }
        }
        let rounds = wanted.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        for rank in 0..rounds {
            // The rank-th placed broker (other than this one) of each group
            // still unknown, asked for all of them at once.
            let mut asks: BTreeMap<u64, Vec<GroupId>> = BTreeMap::new();
            for (g, placed) in wanted {
                if out.contains_key(g) {
                    continue;
                }
                let mut others = placed.iter().filter(|b| **b != me);
                if let Some(b) = others.nth(rank) {
                    asks.entry(*b).or_default().push(*g);
                }
            }
            if asks.is_empty() {
                break;
            }
            let calls = asks.into_iter().filter_map(|(b, groups)| {
                let addr = peers.get(&b)?.raft_addr.clone();
                let t = transport.clone();
                Some(async move {
                    let mut got = Vec::new();
                    for chunk in groups.chunks(GROUPS_ASKED_MAX) {
                        let wait = Duration::from_millis(GROUP_VIEW_ASK_MS);
                        match tokio::time::timeout(wait, t.groups(&addr, chunk)).await {
                            Ok(Ok(v)) => got.extend(v),
                            Ok(Err(e)) => tracing::debug!(broker = b, error = %e, "asking for group views"),
                            Err(_) => tracing::debug!(broker = b, "no answer for group views in time"),
                        }
                    }
                    got
                })
            });
            let answers = futures_util::future::join_all(calls).await;
            let now = Instant::now();
            let mut known = self.known.lock().expect("views lock");
            if known.len() + wanted.len() > GROUP_VIEWS_MAX {
                known.clear();
            }
            for v in answers.into_iter().flatten() {
                known.insert(v.group, (v.clone(), now));
                out.insert(v.group, v);
            }
        }
        out
    }
}
