//! Felix's Redis front door: a RESP listener that redis-cli, redis-benchmark
//! and Redis client libraries use unchanged, over a Felix cache.
//!
//! - [`codec`]: RESP2/RESP3 requests in, replies out, every declared length
//!   bounded before it is buffered (sans-IO).
//! - [`command`]: what a command's arguments mean, with Redis's error texts.
//! - [`exec`]: Redis's semantics of the data commands over a [`exec::Store`]
//!   (read, then compare-and-set), with time as an argument (sans-IO).
//! - [`keys`]: `SCAN`, `KEYS`, `DBSIZE`, `FLUSHDB` as walks over pages of
//!   one shard at a time, and the door's table of parked cursors.
//! - [`cluster`]: the slot table cluster clients are given: per hash-slot
//!   range, the door of the shard's leader (sans-IO).
//! - [`forward`]: a key another broker leads, asked of it through Felix's
//!   client under the connection's token.
//! - [`server`]: the TCP/TLS listener over the broker's
//!   `felix_client::server::Handler`, the same one the QUIC door uses.
//!
//! What is supported, the limits and the mapping to caches:
//! `docs/redis.md`.

pub mod cluster;
pub mod codec;
pub mod command;
pub mod exec;
pub mod forward;
pub mod keys;
pub mod server;

pub use forward::Forwarder;
pub use server::{serve, RespServer, Settings};
