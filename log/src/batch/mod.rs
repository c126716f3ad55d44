//! The record batch: the unit a producer builds, the broker stamps, the log
//! appends and Raft replicates. The byte layout is specified in
//! `docs/format/batch.md`; the constants in [`layout`] are that document in code.

mod builder;
mod compact;
pub mod layout;
mod merge;
mod record;
pub mod seal;
pub(crate) mod view;

pub use builder::{BatchBuilder, Compression, RecordInput};
pub use compact::compact;
pub use merge::BatchMerger;
pub use record::{Record, RecordIter};
pub use view::{
    data_batches, stamp, stamp_producer, Batch, BatchFlags, BatchHeader, DataBatches, ProducerRun,
};

use thiserror::Error;

/// Why bytes are not a valid record batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("unsupported batch format version {0}")]
    Version(u8),
    #[error("unknown batch flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("batch header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("batch records checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    RecordsCrc { stored: u32, computed: u32 },
    #[error("{what} is {value}, above the limit of {max}")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("inconsistent batch header: {0}")]
    Inconsistent(&'static str),
    #[error("record {index}: {reason}")]
    Record { index: u32, reason: &'static str },
    #[error("zstd: {0}")]
    Compression(String),
    #[error("the batch is sealed under data key {0}: open it with its key first")]
    Sealed(u32),
    #[error("the batch is sealed under data key {0}, which this process does not hold (a wrong or missing master key, or a deleted tenant)")]
    KeyUnknown(u32),
    #[error("the batch sealed under data key {0} does not open: wrong key, or bytes changed")]
    Unseal(u32),
}
