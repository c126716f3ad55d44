//! What a broker reports to Prometheus. Request counters and latencies are
//! recorded where requests are answered; everything that is a state
//! (offsets, segments, roles, in-flight bytes, connections) is read from the
//! node when scraped, so there is no second copy of it to drift.
//!
//! Names end in their unit (`_seconds`, `_bytes`, `_total` for counters).

use metrics_exporter_prometheus::PrometheusHandle;

use crate::node::Node;

pub const REQUESTS_TOTAL: &str = "felix_requests_total";
pub const REQUEST_SECONDS: &str = "felix_request_duration_seconds";
pub const PUBLISH_RECORDS_TOTAL: &str = "felix_publish_records_total";
pub const PUBLISH_BYTES_TOTAL: &str = "felix_publish_bytes_total";
pub const PUSH_BYTES_TOTAL: &str = "felix_push_bytes_total";
pub const OVERLOADED_TOTAL: &str = "felix_overloaded_total";
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
    felix_controlplane::metrics::handle()
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
        M::Metadata { .. } => "metadata",
        M::StreamCreate(_)
        | M::StreamDelete { .. }
        | M::StreamSetRetention { .. }
        | M::StreamDescribe { .. } => "admin",
        _ => "other",
    }
}

/// Sets the gauges that describe the node now, per hosted shard: the log's
/// end, the high watermark (committed and readable), the applied Raft
/// index, segments and bytes, in-flight publish bytes, and its role.
pub fn observe_node(node: &Node) {
    for h in node.streams() {
        let stream = h.name.to_string();
        for (i, s) in h.shards.iter().enumerate() {
            let labels = [("stream", stream.clone()), ("shard", i.to_string())];
            let (end, segments, bytes) = s
                .log()
                .with(|l| (l.next_offset().0, l.segments().len(), l.size_bytes()));
            metrics::gauge!("felix_shard_log_end_offset", &labels).set(end as f64);
            metrics::gauge!("felix_shard_high_watermark_offset", &labels).set(s.high_watermark() as f64);
            metrics::gauge!("felix_shard_earliest_offset", &labels).set(s.earliest() as f64);
            metrics::gauge!("felix_shard_segments", &labels).set(segments as f64);
            metrics::gauge!("felix_shard_bytes", &labels).set(bytes as f64);
            metrics::gauge!("felix_shard_in_flight_bytes", &labels).set(s.in_flight_bytes() as f64);
            metrics::gauge!("felix_shard_applied_index", &labels).set(s.applied_through().0 as f64);
            if h.meta().kind.keyed() {
                if let Ok(r) = node.index().dirty_ratio(s.id) {
                    metrics::gauge!("felix_shard_compaction_dirty_ratio", &labels).set(r);
                }
            }
            // Consumer lag: committed records not yet consumed, per named
            // subscription and per group (up to POSITIONS_PER_SHARD_MAX each).
            let hwm = s.high_watermark();
            match node.index().positions(s.id, POSITIONS_PER_SHARD_MAX) {
                Ok(p) => {
                    for (kind, list) in [("subscription", &p.cursors), ("group", &p.groups)] {
                        for (name, at) in list {
                            let mut l = labels.to_vec();
                            l.push((kind, String::from_utf8_lossy(name).into_owned()));
                            metrics::gauge!("felix_consumer_lag_records", &l)
                                .set(hwm.saturating_sub(at.0) as f64);
                        }
                    }
                }
                Err(e) => tracing::warn!(shard = s.id.0, error = %e, "reading consumer positions"),
            }
            if let Some(r) = s.replica() {
                let m = r.raft.metrics().borrow().clone();
                metrics::gauge!("felix_shard_raft_term", &labels).set(m.current_term as f64);
                metrics::gauge!("felix_shard_leader", &labels).set(if r.is_leader() { 1.0 } else { 0.0 });
                metrics::gauge!("felix_shard_has_leader", &labels).set(if m.current_leader.is_some() {
                    1.0
                } else {
                    0.0
                });
                let last = m.last_log_index.unwrap_or(0);
                // On the leader: how many entries each follower lacks.
                for (peer, matched) in m.replication.iter().flatten() {
                    if *peer == r.id {
                        continue;
                    }
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    let mut l = labels.to_vec();
                    l.push(("peer", format!("{}", felix_replication::broker_of(*peer))));
                    metrics::gauge!("felix_shard_replication_lag_entries", &l).set(lag as f64);
                }
            }
        }
    }
    metrics::gauge!("felix_streams").set(node.streams().len() as f64);
    // Compaction of keyed shards (compacted streams and caches): passes and
    // what they removed since start; per shard, the dirty ratio still to
    // compact is set above.
    let m = node.maintenance_stats();
    metrics::counter!("felix_compaction_passes_total").absolute(m.compactions);
    metrics::counter!("felix_compaction_segments_rewritten_total").absolute(m.segments_rewritten);
    metrics::counter!("felix_compaction_records_dropped_total").absolute(m.records_dropped);
    metrics::counter!("felix_maintenance_errors_total").absolute(m.errors);
    metrics::counter!("felix_ttl_keys_swept_total").absolute(m.keys_swept);
    if let Some(link) = node.control() {
        metrics::gauge!(FEED_VERSION).set(link.version.load(std::sync::atomic::Ordering::Acquire) as f64);
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
