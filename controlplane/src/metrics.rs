//! The process's Prometheus recorder (one per process: `felix dev` runs a
//! broker and a control plane side by side, and both report through it),
//! and what a control-plane node reports: API calls by route and status
//! with their latency, and, read when scraped, its Raft role and term,
//! the metadata version, brokers by status and under-replicated groups.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::model::BrokerStatus;
use crate::node::Node;

pub const API_REQUESTS_TOTAL: &str = "felix_cp_api_requests_total";
pub const API_REQUEST_SECONDS: &str = "felix_cp_api_request_duration_seconds";

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use (`None` if some other
/// recorder was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let h = PrometheusBuilder::new()
                .set_buckets(&BUCKETS_S)
                .ok()?
                .install_recorder()
                .ok()?;
            // Histograms' buckets are drained only by upkeep.
            let u = h.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    u.run_upkeep();
                })
                .ok()?;
            Some(h)
        })
        .as_ref()
}

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
