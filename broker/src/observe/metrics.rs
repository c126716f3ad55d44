//! What a broker reports to Prometheus: the series' names, and the recorder.
//! Request counters and latencies are recorded where requests are
//! answered; everything that is a state is read from the node when scraped
//! (`gauges.rs`). A leaf: every layer of the broker may name a series.
//!
//! Names end in their unit (`_seconds`, `_bytes`, `_total` for counters).

use metrics_exporter_prometheus::PrometheusHandle;

pub const REQUESTS_TOTAL: &str = "felix_requests_total";
pub const REQUEST_SECONDS: &str = "felix_request_duration_seconds";
pub const PUBLISH_RECORDS_TOTAL: &str = "felix_publish_records_total";
pub const PUBLISH_BYTES_TOTAL: &str = "felix_publish_bytes_total";
pub const PUSH_BYTES_TOTAL: &str = "felix_push_bytes_total";
pub const OVERLOADED_TOTAL: &str = "felix_overloaded_total";
pub const QUOTA_REFUSALS_TOTAL: &str = "felix_quota_refusals_total";
pub const CONNECTIONS: &str = "felix_connections";
pub const CONTROLPLANE_SECONDS: &str = "felix_controlplane_request_duration_seconds";
pub const FEED_VERSION: &str = "felix_controlplane_feed_version";
/// Group-commit fsyncs of segment logs (a histogram, seconds).
pub const FSYNC_SECONDS: &str = "felix_fsync_duration_seconds";
/// Fetches whose dead letters could not be written (the records stay
/// unacked and are tried again at the next fetch).
pub const DEAD_LETTER_FAILURES_TOTAL: &str = "felix_dead_letter_failures_total";
/// SIGHUP reloads, by `outcome` (`applied`, `refused`).
pub const CONFIG_RELOADS_TOTAL: &str = "felix_config_reloads_total";
/// Named subscriptions and groups per shard whose lag is reported (their
/// names become labels: bounded, so a client cannot grow the scrape
/// without limit).
pub const POSITIONS_PER_SHARD_MAX: usize = 100;

/// The process's recorder (installed by the control-plane crate, which
/// `felix dev` also runs in this process: one recorder serves both).
pub fn handle() -> Option<&'static PrometheusHandle> {
    felix_controlplane::recorder::handle()
}

/// Routes the segment logs' fsync timings into [`FSYNC_SECONDS`].
pub fn observe_log_syncs() {
    felix_log::observe_syncs(|took| metrics::histogram!(FSYNC_SECONDS).record(took.as_secs_f64()));
}

/// The request kinds a label may name (a fixed set: labels never carry
/// client-chosen strings).
pub fn op_name(m: &felix_client::wire::Message) -> &'static str {
    use felix_client::wire::Message as M;
    match m {
        M::Publish { .. } => "publish",
        M::Subscribe { .. } => "subscribe",
        M::CommitCursor { .. } => "commit_cursor",
        M::GroupFetch { .. } => "group_fetch",
        M::GroupAck { .. } => "group_ack",
        M::GroupNack { .. } => "group_nack",
        M::GroupExtend { .. } => "group_extend",
        M::CacheGet { .. } => "cache_get",
        M::CachePut { .. } => "cache_put",
        M::CacheDelete { .. } => "cache_delete",
        M::CacheScan { .. } => "cache_scan",
        M::Metadata { .. } => "metadata",
        M::StreamCreate(_)
        | M::StreamDelete { .. }
        | M::StreamSetRetention { .. }
        | M::StreamDescribe { .. } => "admin",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    /// Every `felix_*` metric the shipped alert rules and dashboard use is
    /// one a broker or a control plane exports, so a rename cannot leave
    /// them watching nothing.
    #[test]
    fn the_alerts_and_the_dashboard_use_only_exported_metrics() {
        let exported = [
            include_str!("metrics.rs"),
            include_str!("gauges.rs"),
            include_str!("../../../controlplane/src/metrics.rs"),
        ]
        .concat();
        for (file, text) in [
            (
                "deploy/prometheus/alerts.yml",
                include_str!("../../../deploy/prometheus/alerts.yml"),
            ),
            (
                "deploy/grafana/felix.json",
                include_str!("../../../deploy/grafana/felix.json"),
            ),
        ] {
            let mut names = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.find("felix_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(tail.len());
                names.push(&tail[..end]);
                rest = &tail[end..];
            }
            assert!(names.len() >= 10, "{file}: {names:?}");
            for n in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n);
                assert!(
                    exported.contains(&format!("\"{base}\"")),
                    "{file} uses {n}, which nothing exports"
                );
            }
        }
    }
}
