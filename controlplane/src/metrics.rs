//! What a control-plane node reports: API calls by route and status
//! with their latency, and, read when scraped, its Raft role and term,
//! the metadata version, brokers by status and under-replicated groups.

use crate::model::BrokerStatus;
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
}
