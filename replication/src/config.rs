//! A group's timing and the limits openraft is configured with: the leaf
//! every other module reads.

use openraft::{Config, SnapshotPolicy};

use crate::error::ReplicationError;
use crate::types::GroupId;

/// Entries one AppendEntries carries at most (bounds an RPC's bytes, with
/// the log's batch limit).
pub const PAYLOAD_ENTRIES_MAX: u64 = 32;
/// Raft timing for every group on a broker.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    pub heartbeat_interval_ms: u64,
    /// The shortest election timeout: how long a pre-vote waits for
    /// answers, and (less a heartbeat) a leader's read lease.
    pub election_timeout_min_ms: u64,
    /// The leader lease: followers refuse votes (and pre-votes) this long
    /// after they last heard a leader, and a follower that heard none for
    /// this long, plus a jitter, stands.
    pub election_timeout_max_ms: u64,
    /// How long a leader sees its group settled before it quiesces
    /// (`quiesce`; `u64::MAX`: never, every group heartbeats).
    pub quiesce_after_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        // Failover takes about the leader lease (openraft makes it
        // `election_timeout_max`: followers refuse votes that long after
        // the last heartbeat) plus a jitter of up to two heartbeats and a
        // pre-vote round: about 1.1 s on loopback and LAN. Heartbeats stay
        // rare enough that hundreds of idle groups are cheap.
        GroupConfig {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 800,
            quiesce_after_ms: crate::quiesce::QUIESCE_AFTER_MS,
        }
    }
}

impl GroupConfig {
    /// How long after a confirmation round began a leader answers reads
    /// without another (see `Replica::confirm_for_read`).
    pub fn read_lease_ms(&self) -> u64 {
        self.election_timeout_min_ms
            .saturating_sub(self.heartbeat_interval_ms)
            .min(self.election_timeout_max_ms / 2)
    }

    pub(crate) fn raft(&self, group: GroupId) -> Result<Config, ReplicationError> {
        let c = Config {
            cluster_name: format!("felix-{group}"),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: PAYLOAD_ENTRIES_MAX,
            // Snapshots are built when retention needs one (and when a
            // follower does), never on a schedule.
            snapshot_policy: SnapshotPolicy::Never,
            // Openraft must never purge on its own: the log is the data.
            max_in_snapshot_log_to_keep: u64::MAX,
            install_snapshot_timeout: 60_000,
            ..Config::default()
        };
        c.validate().map_err(|e| ReplicationError::Raft(e.to_string()))
    }
}
