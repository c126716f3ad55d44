//! `felix-broker`: hosts shards (segment log + index) and serves them over
//! the wire protocol. The `felix` binary (`src/main.rs`) is its front end.
//!
//! Built so far: names, the node's stream metadata file, and the hosted
//! shard (publish with durability and producer dedup, reads bounded by the
//! high watermark). The request handler, `felix dev` and the admin and data
//! commands come next (README, status).

pub mod error;
pub mod meta;
pub mod names;
pub mod shard;

pub use error::BrokerError;
