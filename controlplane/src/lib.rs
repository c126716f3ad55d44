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
//!   (listeners), [`metrics`] (the process's Prometheus recorder).

pub mod api;
pub mod auth;
pub mod metrics;
pub mod model;
pub mod node;
pub mod placement;
pub mod raft;
pub mod rbac;
pub mod server;
pub mod state;
