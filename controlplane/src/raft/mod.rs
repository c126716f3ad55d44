//! The control plane's own Raft group: log and state machine in RocksDB
//! ([`store`]), RPCs over HTTP ([`network`]), and standing again after a
//! split vote ([`elections`]).

pub mod elections;
pub mod network;
pub mod store;
pub mod types;

pub use types::{NodeId, Outcome, Raft, TypeConfig};
