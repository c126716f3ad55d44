//! The Felix control plane: tenants, namespaces, streams and caches, shard
//! placement, brokers, tokens and RBAC.
//!
//! Built so far: the RBAC core ([`rbac`]), sans-IO — the object grammar,
//! policies and groupings, what a principal may do, the scope an admin
//! may change, and the permission set a token exchange issues. The
//! replicated store, the HTTP API, token signing and placement are not
//! built yet (issue 7); nothing in the broker uses this crate yet.

pub mod api;
pub mod auth;
pub mod metrics;
pub mod model;
pub mod names;
pub mod node;
pub mod placement;
pub mod raft;
pub mod rbac;
pub mod server;
pub mod state;
