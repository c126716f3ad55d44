//! `felix-index`: the RocksDB indexes derived from felix segment logs.
//!
//! One database per broker, one column family per purpose (`offsets`,
//! `time`, `keys`, `expiry`, `cursors`, `groups`, `meta`), every shard's
//! entries under its id. Everything here is derived from the logs: an index
//! can be dropped and rebuilt from the segments ([`Index::recover_shard`]).
//! Key encodings: `docs/format/index.md`.
//!
//! - [`Index::apply`] indexes log entries, one `WriteBatch` per call;
//! - reads: [`Index::locate`], [`Index::offset_for_time`], [`Index::latest`],
//!   [`Index::cursor`], [`Index::group`];
//! - upkeep: [`Index::compact_shard`] (keyed logs), [`Index::sweep_expired`]
//!   (TTL), [`Index::on_retention`]; [`Maintenance`] runs the first two in
//!   the background.
//!
//! This crate knows nothing of QUIC or Raft; cursor and group changes reach
//! it as control records in the log ([`control`]).

mod compact;
pub mod control;
mod db;
pub mod encoding;
mod error;
pub mod group;
mod maintenance;
mod meta;
mod recover;
mod ttl;

pub use compact::{CompactionConfig, CompactionReport};
pub use db::{ApplyOutcome, Index, IndexConfig, Positions, COLUMN_FAMILIES};
pub use encoding::{KeyEntry, Location};
pub use error::{IndexError, Result};
pub use maintenance::{Maintenance, MaintenanceStats, SWEEPS_PER_ROUND_MAX};
pub use meta::{ShardKind, ShardState};
pub use recover::{in_clear, keyed_in_clear, RecoverReport, REINDEX_ENTRIES_PER_BATCH_MAX};
pub use ttl::{SweepOutcome, SWEEP_KEYS_MAX};
