use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;
use crate::types::{Offset, RaftIndex, RaftTerm, SegmentId};

/// Errors of the segment log.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("batch of {len} bytes is above this log's batch_bytes_max of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("no space left on the device for a new segment at {path}")]
    DiskFull { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "corrupt log: {path} at byte {position}: {reason}; \
         the damaged range ends at byte {end}. Open with repair to quarantine it and keep the rest"
    )]
    Corrupt {
        path: PathBuf,
        position: u64,
        end: u64,
        reason: String,
    },
    #[error("offset {requested} is out of range: the log holds [{earliest}, {latest})")]
    OffsetOutOfRange {
        requested: Offset,
        earliest: Offset,
        latest: Offset,
    },
    #[error("raft index {got} does not follow the log's last index (expected {expected})")]
    RaftIndexGap { expected: RaftIndex, got: RaftIndex },
    #[error("raft term {got} is lower than the log's last term {last}")]
    RaftTermRegressed { last: RaftTerm, got: RaftTerm },
    #[error("log directory {path} is in use (by another process, or already open in this one)")]
    Locked { path: PathBuf },
    #[error("segment {segment} is not a sealed segment of this log")]
    NotSealed { segment: SegmentId },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("the log failed an fsync earlier and must be reopened (recovery decides what survived)")]
    Poisoned,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
