//! The Felix control plane: tenants, namespaces, streams and caches, shard
//! placement, brokers, tokens and RBAC. Brokers follow it; it never calls
//! them, and it is never on the data path.
//!
//! - [`state`]: the sans-IO core, `Metadata` and its one `apply`;
//!   [`model`] the specs and their validation (names, kinds and
//!   durability are `felix-model`'s); [`placement`] decides replicas;
//! - [`auth`]: Felix tokens (EdDSA JWTs) and upstream IdP tokens;
//!   [`rbac`]: objects, policies, what a principal may do;
//! - the edges: [`raft`] (openraft over RocksDB, RPCs over HTTP, split-vote
//!   re-standing), [`node`] (a running node: forwarding, broker liveness),
//!   [`api`] (the HTTP routes and their OpenAPI document), [`server`]
//!   (starting a node), [`https`] (listeners, TLS, connection limits),
//!   [`upstream`] (fetching identity providers' keys as hostile input), [`metrics`] (what a node reports).
//!
//! The edges are the `server` feature (on by default). Without it the crate
//! is its model alone: what a resource is ([`model`], [`state`]), who may
//! do what ([`auth`], [`rbac`]), a node's settings ([`config`]) and the
//! process's metrics recorder ([`recorder`]), which is what a broker
//! follows and checks, without linking axum, openraft or RocksDB.

pub mod auth;
pub mod config;
pub mod model;
pub mod placement;
pub mod rbac;
pub mod rebalance;
pub mod recorder;
pub mod state;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod https;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod node;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod upstream;
