//! What a control-plane node reports: API calls by route and status
//! with their latency, and, read when scraped, its Raft role and term,
//! the metadata version, brokers by status, bridges and under-replicated
//! groups.

use crate::model::{BrokerStatus, Quotas, Usage};
use crate::node::Node;

pub use crate::recorder::handle;

pub const API_REQUESTS_TOTAL: &str = "felix_cp_api_requests_total";
pub const API_REQUEST_SECONDS: &str = "felix_cp_api_request_duration_seconds";

/// Sets the gauges that describe the node now.
pub fn observe_node(n: &Node) {
    let m = n.raft.metrics().borrow().clone();
    metrics::gauge!("felix_cp_raft_term").set(m.current_term as f64);
    metrics::gauge!("felix_cp_leader").set(if n.is_leader() { 1.0 } else { 0.0 });
    metrics::gauge!("felix_cp_has_leader").set(if m.current_leader.is_some() { 1.0 } else { 0.0 });
    n.read(|md| {
        metrics::gauge!("felix_cp_metadata_version").set(md.version as f64);
        metrics::gauge!("felix_cp_tenants").set(md.tenants.len() as f64);
        metrics::gauge!("felix_cp_bridges").set(md.bridges.len() as f64);
        for (status, label) in [
            (BrokerStatus::Active, "active"),
            (BrokerStatus::Draining, "draining"),
            (BrokerStatus::Down, "down"),
        ] {
            let count = md.brokers.values().filter(|b| b.status == status).count();
            metrics::gauge!("felix_cp_brokers", "status" => label).set(count as f64);
        }
        metrics::gauge!("felix_cp_under_replicated_groups").set(md.under_replicated().len() as f64);
    });
    observe_quotas(n);
}

/// `felix_cp_quota_limit` and `felix_cp_quota_used` per tenant (`acme`)
/// or namespace (`acme/prod`) and quota, for every quota set. Counts are
/// from the metadata (any node); usage from brokers' reports (the leader).
fn observe_quotas(n: &Node) {
    let usage = if n.is_leader() {
        n.usage_totals()
    } else {
        Default::default()
    };
    n.read(|md| {
        for (tn, t) in &md.tenants {
            let mut tenant_counts = (0u64, 0u64);
            for (nn, ns) in &t.namespaces {
                let counts = (
                    (ns.streams.len() + ns.caches.len()) as u64,
                    (ns.streams.values().map(|s| s.placement.len()).sum::<usize>()
                        + ns.caches.values().map(|c| c.placement.len()).sum::<usize>())
                        as u64,
                );
                tenant_counts = (tenant_counts.0 + counts.0, tenant_counts.1 + counts.1);
                let scope = format!("{tn}/{nn}");
                observe_scope(&scope, &ns.spec.quotas, counts, usage.get(&scope));
            }
            observe_scope(tn, &t.spec.quotas, tenant_counts, usage.get(tn));
        }
    });
}

fn observe_scope(scope: &str, q: &Quotas, (streams, shards): (u64, u64), usage: Option<&Usage>) {
    let u = usage.copied().unwrap_or_default();
    let rows = [
        ("streams_max", q.streams_max.map(u64::from), Some(streams)),
        ("shards_max", q.shards_max.map(u64::from), Some(shards)),
        (
            "storage_bytes_max",
            q.storage_bytes_max,
            usage.map(|_| u.storage_bytes),
        ),
        (
            "cache_memory_bytes_max",
            q.cache_memory_bytes_max,
            usage.map(|_| u.cache_bytes),
        ),
        (
            "subscribe_connections_max",
            q.subscribe_connections_max.map(u64::from),
            usage.map(|_| u.subscriptions),
        ),
    ];
    for (quota, limit, used) in rows {
        let Some(limit) = limit else { continue };
        let labels = [("scope", scope.to_owned()), ("quota", quota.to_owned())];
        metrics::gauge!("felix_cp_quota_limit", &labels).set(limit as f64);
        if let Some(used) = used {
            metrics::gauge!("felix_cp_quota_used", &labels).set(used as f64);
        }
    }
}
