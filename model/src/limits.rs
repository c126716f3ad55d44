//! Bounds that more than one layer checks: a value accepted by one and
//! refused by the next would be a bug, so there is one copy of each.

use crate::names::{DLQ_SUFFIX, DLQ_SUFFIXES_MAX, NAME_PART_BYTES_MAX};

/// Longest full name on the wire and in the index (its length is one byte
/// there).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest Felix token a client may present (an EdDSA JWT with its
/// permissions); the wire refuses longer before the broker parses it.
pub const TOKEN_BYTES_MAX: usize = 16 << 10;
/// Most replicas one shard may have: what a create may ask for (the wire
/// carries it in a byte) and the control plane places.
pub const REPLICATION_FACTOR_MAX: u32 = 7;
/// The replication factor of a stream or cache created without one is
/// `min(REPLICATION_FACTOR_DEFAULT, brokers)`: three copies survive one
/// broker lost while another is down for maintenance, as Kafka's and
/// Redpanda's usual production default.
pub const REPLICATION_FACTOR_DEFAULT: u32 = 3;

// A full name with the longest parts and every dead-letter suffix still
// fits the wire's and the index's name field.
const _: () = assert!(3 * NAME_PART_BYTES_MAX + DLQ_SUFFIXES_MAX * DLQ_SUFFIX.len() + 2 <= NAME_BYTES_MAX);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(REPLICATION_FACTOR_DEFAULT <= REPLICATION_FACTOR_MAX);
const _: () = assert!(REPLICATION_FACTOR_MAX <= u8::MAX as u32);
