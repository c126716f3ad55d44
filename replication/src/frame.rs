//! The framing every replication RPC shares, on a stream of its own or on
//! a lane (`docs/format/raft-rpc.md`): the request head and the limits on
//! what one RPC carries.

use crate::types::{GroupId, NodeId};

/// A request head: kind u8 | group u64 | target u64 | from u64 | length u32.
pub(crate) const HEAD_BYTES: usize = 1 + 8 + 8 + 8 + 4;
/// Largest RPC body: an AppendEntries of `config::PAYLOAD_ENTRIES_MAX`
/// batches at the log's hard batch limit, plus framing.
pub const RPC_BYTES_MAX: usize =
    crate::config::PAYLOAD_ENTRIES_MAX as usize * felix_log::batch::layout::BATCH_BYTES_MAX + (1 << 20);
/// RPCs one peer connection serves at once, on streams and lanes.
pub const RPC_STREAMS_MAX: usize = 1024;
const _: () = assert!(RPC_BYTES_MAX <= u32::MAX as usize);

/// The head of a request (see the module).
pub(crate) fn head_bytes(
    kind: u8,
    group: GroupId,
    target: NodeId,
    from: NodeId,
    len: usize,
) -> [u8; HEAD_BYTES] {
    let mut h = [0u8; HEAD_BYTES];
    h[0] = kind;
    h[1..9].copy_from_slice(&group.0.to_le_bytes());
    h[9..17].copy_from_slice(&target.to_le_bytes());
    h[17..25].copy_from_slice(&from.to_le_bytes());
    h[25..29].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// A request head, read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) kind: u8,
    pub(crate) group: GroupId,
    pub(crate) target: NodeId,
    pub(crate) from: NodeId,
    pub(crate) len: usize,
}

impl Head {
    pub(crate) fn parse(h: &[u8; HEAD_BYTES]) -> Head {
        Head {
            kind: h[0],
            group: GroupId(u64::from_le_bytes(h[1..9].try_into().expect("8 bytes"))),
            target: u64::from_le_bytes(h[9..17].try_into().expect("8 bytes")),
            from: u64::from_le_bytes(h[17..25].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(h[25..29].try_into().expect("4 bytes")) as usize,
        }
    }
}
