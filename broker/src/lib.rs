//! `felix-broker`: hosts shards (segment log + index) and serves them over
//! the wire protocol. The `felix` binary (the `felix` crate in `cli/`) is
//! its front end.
//!
//! - [`node::Node`]: the streams one node hosts, upkeep, metadata;
//! - [`handler::NodeHandler`]: the wire protocol's meaning;
//! - [`shard::HostedShard`]: one shard's log, index entries and limits;
//! - [`subscribe`], [`queue`], [`cache`]: the three uses of the log;
//! - [`server`]: TLS, QUIC and the serving loop that `felix dev` and
//!   `felix broker` run.

pub mod at_rest;
pub mod bridge;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod control;
pub mod error;
pub mod handler;
pub mod hot;
pub mod identity;
pub mod meta;
pub mod names;
pub mod node;
pub mod observe;
pub mod owned_ids;
pub mod peers;
pub mod queue;
pub mod server;
pub mod shard;
pub mod subscribe;
pub mod views;
pub mod windows;

pub use error::BrokerError;
