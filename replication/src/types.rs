//! The openraft type configuration shared by every Felix group.

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A replica's identity in every Raft group: the broker id in the high 32
/// bits and the incarnation of its data directory in the low 32 (see
/// [`node_id`]). Never reused: a broker that lost its disk has lost its vote
/// and the entries it acknowledged, so it comes back as a new node
/// (`docs/format/identity.md`).
pub type NodeId = u64;

/// The Raft node id of `broker`'s data directory incarnation `incarnation`.
pub const fn node_id(broker: u32, incarnation: u32) -> NodeId {
    ((broker as u64) << 32) | incarnation as u64
}

/// The broker a Raft node id belongs to.
pub const fn broker_of(id: NodeId) -> u64 {
    id >> 32
}

/// Which Raft group a message is for: a shard id, or [`GroupId::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    /// No shard's group (shard ids start at 1): the header of an RPC about
    /// the receiving broker rather than one group.
    pub const NONE: GroupId = GroupId(0);
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// How to reach a broker: its replication address and its client address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerNode {
    pub raft_addr: String,
    pub client_addr: String,
}

impl fmt::Display for BrokerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (raft {})", self.client_addr, self.raft_addr)
    }
}

/// What a client write proposes: one record batch (data or control), as the
/// producer built it. The log stamps offset, term and index when it lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Bytes);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.0.len())
    }
}

/// Where a committed batch landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub base_offset: u64,
    /// Offsets the batch took (0 for control batches).
    pub count: u32,
    pub raft_index: u64,
}

/// A snapshot on disk (`snapshot.rs` writes and reads it); what openraft
/// passes around as the snapshot data.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

openraft::declare_raft_types!(
    /// Felix's Raft types: entries are record batches in the segment log.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BrokerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = crate::runtime::FelixRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, BrokerNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BrokerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BrokerNode>;
