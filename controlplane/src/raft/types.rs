//! The control plane's openraft type configuration.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Applied, ApplyError, Envelope};

/// A control-plane node's id (its place in the configured peer list).
pub type NodeId = u64;

/// What applying an entry gave: the state machine's verdict travels back
/// to the proposer as the write's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome(pub Result<Applied, ApplyError>);

openraft::declare_raft_types!(
    /// Entries are metadata commands; nodes are reached over HTTP.
    pub TypeConfig:
        D = Envelope,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
