//! `felix-log`: the append-only segment log under every Felix shard replica,
//! and that replica's Raft log.
//!
//! - [`batch`]: the record batch format (built by producers, stamped by the log).
//! - [`Log`]: segments, append, reads, recovery, truncation, retention.
//! - [`SharedLog`]: a thread-safe log with group commit per [`Durability`].
//!
//! This crate knows nothing of RocksDB, Raft libraries, QUIC or async
//! runtimes: bytes and `now` go in, results come out.

pub mod batch;
mod checkpoint;
mod commit;
mod config;
mod error;
pub mod failpoint;
mod fsio;
#[doc(hidden)]
pub mod fuzzing;
mod log;
mod recovery;
pub mod scan;
mod segment;
mod types;

pub use crate::batch::{
    Batch, BatchBuilder, BatchError, BatchHeader, BatchMerger, Compression, ProducerRun, Record, RecordInput,
};
pub use crate::commit::{observe_syncs, Durable, SharedLog, SyncDuty};
pub use crate::config::{DirLock, Durability, LogConfig, Verify};
pub use crate::error::{LogError, Result};
pub use crate::log::{
    lock_dir, AppendOutcome, Batches, CompactOutcome, DirGuard, Log, OpenReport, Positioned,
    PositionedBatches, Quarantined, ReadChunk, ReadHint, Retention, RetentionOutcome, SealedSegment,
    SegmentInfo, StagedCompaction,
};
pub use crate::segment::allocation::ALLOCATION_BYTES_FIRST;
pub use crate::segment::format::SEGMENT_HEADER_BYTES;
pub use crate::types::{Offset, ProducerId, RaftIndex, RaftTerm, SegmentId, ShardId};

/// Milliseconds since the Unix epoch from the system clock, for callers that
/// have no clock of their own.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
