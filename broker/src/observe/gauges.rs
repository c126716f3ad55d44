//! The gauges read from the node when `/metrics` is scraped: offsets,
//! segments, roles, in-flight bytes, compaction. Read, not recorded, so
//! there is no second copy of the node's state to drift.

use crate::node::Node;
use crate::observe::metrics::{FEED_VERSION, POSITIONS_PER_SHARD_MAX};

/// Sets the gauges that describe the node now, per hosted shard: the log's
/// end, the high watermark (committed and readable), the applied Raft
/// index, segments and bytes, in-flight publish bytes, and its role.
pub fn observe_node(node: &Node) {
    // Records committed in a bridged shard and not yet in the target.
    for l in node.bridges.lags(crate::control::HEARTBEAT_BRIDGES_MAX) {
        let labels = [
            ("bridge", l.bridge),
            ("stream", l.stream),
            ("shard", l.shard.to_string()),
        ];
        metrics::gauge!("felix_bridge_lag_records", &labels).set(l.end.saturating_sub(l.position) as f64);
        metrics::gauge!("felix_bridge_failing", &labels).set(if l.error.is_some() { 1.0 } else { 0.0 });
    }
    for h in node.streams() {
        let stream = h.name.to_string();
        for (i, s) in h.hosted() {
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
                metrics::gauge!("felix_shard_quiet", &labels).set(if r.is_quiet() { 1.0 } else { 0.0 });
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
    if let Some(c) = node.cluster() {
        // Messages that keep groups alive: beats per peer broker, and
        // openraft heartbeats of the groups that are awake.
        let t = c.transport.traffic();
        metrics::counter!("felix_replication_beats_sent_total").absolute(t.beats);
        metrics::counter!("felix_replication_heartbeats_sent_total").absolute(t.heartbeats);
    }
    if let Some(link) = node.control() {
        metrics::gauge!(FEED_VERSION).set(link.version.load(std::sync::atomic::Ordering::Acquire) as f64);
    }
}
