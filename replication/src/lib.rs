//! Replication: one openraft group per shard, over the shard's own segment
//! log (design §5).
//!
//! - [`store`]: the segment log *is* the Raft log (`RaftLogStorage`): a Raft
//!   entry is one record batch, stamped with its term and index; the vote is
//!   a small file beside the segments ([`vote`]), overwritten in place.
//! - [`machine`]: the state machine. Entries are already in the log when they
//!   commit, so applying one means telling the owner (an [`Applier`]: the
//!   broker's shard, or its metadata) how far it may index and serve.
//! - [`snapshot`]: what a follower behind the leader's first entry receives.
//! - [`network`]: Raft RPCs between brokers over QUIC (ALPN `felix-raft/4`,
//!   mutual TLS), one connection per peer shared by every group.
//!   [`lanes`]: the few long-lived streams per peer that carry the small
//!   RPCs of every group.
//! - [`disk`]: how many groups wait on an fsync at once.
//! - [`throttle`]: how fast catch-up traffic to a learner may go.
//! - [`quiesce`]: when an idle group stops ticking and heartbeating, and
//!   the beat between two brokers that stands in for its heartbeats;
//!   `driver` is the broker's one timer that applies it and runs every
//!   group's elections.
//! - [`prevote`]: whether a replica would vote for a candidate, asked
//!   before the candidate raises its term.
//! - `runtime`: tokio for openraft, with a quiet group's tick task asleep.
//! - [`group`]: starting a group with Felix's timing defaults, and
//!   membership: admitting a replica, replacing a lost incarnation.

// Openraft's trait methods fix `StorageError` (about 200 bytes) as the error
// type; the helpers that feed them return it too rather than boxing and
// unboxing on every call.
#![allow(clippy::result_large_err)]

mod clock;
pub mod config;
pub mod disk;
mod driver;
pub mod elections;
pub mod entry;
pub mod error;
mod frame;
pub mod group;
pub mod lanes;
pub mod machine;
pub mod membership;
pub mod network;
pub mod prevote;
pub mod quiesce;
mod runtime;
pub mod snapshot;
pub mod store;
pub mod throttle;
pub mod types;
pub mod vote;

pub use error::ReplicationError;
pub use group::{Admission, GroupConfig, Replica, WriteError, HANDOVER_MS_MAX};
pub use machine::{Applier, Forwarded};
pub use network::{CatchupStats, GroupView, Router, Traffic, Transport, GROUPS_ASKED_MAX};
pub use types::{broker_of, node_id, BrokerNode, GroupId, NodeId, Request, Response, TypeConfig};
