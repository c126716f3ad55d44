//! Felix's Kafka front door: a Kafka wire-protocol listener that Kafka
//! clients (librdkafka, kcat, the Java client) use unchanged, over Felix
//! streams. A topic is a stream of the door's namespace, a partition a
//! shard, and a Kafka offset the Felix offset.
//!
//! - [`frame`]: size-prefixed requests in, responses out, sizes checked
//!   first (sans-IO).
//! - [`walk`]: every declared length of a request checked against its
//!   bytes before `kafka-protocol` decodes it (sans-IO).
//! - [`apis`]: the APIs and versions served, and decoding.
//! - [`records`]: RecordBatch v2 to and from Felix batches (sans-IO).
//! - [`names`]: topics and stream names.
//! - [`sasl`]: the token in a PLAIN or OAUTHBEARER exchange (sans-IO).
//! - [`exec`]: Metadata, Produce, Fetch and ListOffsets over the broker's
//!   `felix_client::server::Handler`.
//! - [`group`]: the classic consumer-group protocol's state machine
//!   (sans-IO).
//! - [`offsets`]: committed offsets as entries of an offsets cache
//!   (sans-IO).
//! - `coordinator`: the group state machine at run time (waiting
//!   requests, the sweeper).
//! - `group_apis`: FindCoordinator, the group APIs and committed offsets.
//! - [`idem`]: idempotent produce onto Felix's producer windows.
//! - [`admin`]: CreateTopics, DeleteTopics and DescribeConfigs.
//! - [`server`]: the TCP/TLS listener.
//!
//! What is served, the limits and what is not: `docs/kafka.md`.

pub mod admin;
pub mod apis;
mod coordinator;
pub mod exec;
pub mod frame;
pub mod group;
mod group_apis;
pub mod idem;
pub mod names;
pub mod offsets;
pub mod records;
pub mod sasl;
pub mod server;
pub mod walk;

pub use exec::Settings;
pub use server::{serve, KafkaServer};
