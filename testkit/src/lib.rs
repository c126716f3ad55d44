//! `felix-testkit`: what the test binaries of every crate share, so each
//! helper is written once.
//!
//! - [`batch`]: record batches as a producer builds them (values, keys,
//!   timestamps, a producer id and sequence);
//! - [`wait`]: polling a condition with a generous deadline, never a fixed
//!   sleep standing in for "it happened by now";
//! - [`scrape`]: reading a `/metrics` scrape (one series, a family's sum);
//! - [`serial`]: one lock for tests that start process clusters and must
//!   not share the machine's cores with each other;
//! - [`net`]: UDP proxies in front of brokers' replication ports, to cut,
//!   lose or delay Raft traffic between them.

pub mod batch;
pub mod net;
pub mod scrape;
pub mod serial;
pub mod wait;

pub use batch::Batch;
