use std::path::PathBuf;

use felix_log::{BatchError, LogError, ShardId};
use thiserror::Error;

/// Errors of the index.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("corrupt index entry in column family {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("batch: {0}")]
    Batch(#[from] BatchError),
    #[error("invalid control record: {0}")]
    Control(String),
    #[error("shard {shard} was indexed as {was} and is now opened as {now}")]
    KindMismatch {
        shard: ShardId,
        was: &'static str,
        now: &'static str,
    },
    #[error("name of {len} bytes is longer than the {max}-byte limit")]
    NameTooLong { len: usize, max: usize },
    #[error(
        "compaction of shard {shard} needs {keys} live keys in memory, above compaction_keys_max of {max}"
    )]
    CompactionTooLarge { shard: ShardId, keys: u64, max: u64 },
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
