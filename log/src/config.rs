//! What a log is told when it is opened.

use crate::batch::layout::{BATCH_BYTES_MAX, SEAL_OVERHEAD_BYTES};
use crate::batch::seal::Keyring;
use crate::error::LogError;
use crate::segment::format::SEGMENT_HEADER_BYTES;

// The durability modes and their spelling are the model's, shared with the
// wire, the broker and the control plane.
pub use felix_model::Durability;

/// How much of the log recovery verifies on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Trust what the checkpoint says was sealed and fsynced; verify the rest.
    #[default]
    FromCheckpoint,
    /// Verify every batch of every segment.
    Full,
}

/// What keeps a second writer off a log's directory while it is open.
#[derive(Debug, Clone, Default)]
pub enum DirLock {
    /// A `lock` file in the directory, held with `flock`: one open file
    /// per log, and safe against any other process. Refused under a
    /// directory locked with [`crate::lock_dir`].
    #[default]
    File,
    /// The lock on a directory above the log (a broker's data directory,
    /// [`crate::lock_dir`]), which keeps other processes off and lives as
    /// long as the last log under it; a second open in this process is
    /// refused through a process-wide table of open log directories. No
    /// file per log.
    Parent(std::sync::Arc<crate::DirGuard>),
}

/// Configuration of one log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment's capacity (its file is allocated in growing steps up to
    /// it); it is sealed when the next batch would not fit.
    pub segment_bytes: u64,
    /// A segment whose first append is older than this is sealed at the next
    /// append or `roll_if_due`.
    pub segment_ms: u64,
    /// Largest batch in the clear this log accepts (at most
    /// [`BATCH_BYTES_MAX`] less [`SEAL_OVERHEAD_BYTES`]); a sealed batch
    /// may be larger by the seal.
    pub batch_bytes_max: usize,
    pub durability: Durability,
    pub verify: Verify,
    /// On interior corruption, quarantine the damaged range and keep the rest
    /// instead of refusing to open.
    pub repair: bool,
    /// Bytes between sparse in-memory index entries.
    pub index_interval_bytes: u32,
    pub dir_lock: DirLock,
    /// Opens batches sealed at rest (see [`crate::Log::clear`]); `None`
    /// for a log of a tenant that never had encryption on.
    pub keys: Option<std::sync::Arc<dyn Keyring>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            batch_bytes_max: 1 << 20,
            durability: Durability::Always,
            verify: Verify::FromCheckpoint,
            repair: false,
            index_interval_bytes: 4096,
            dir_lock: DirLock::File,
            keys: None,
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), LogError> {
        // A batch sealed at rest grows by the seal and must still fit.
        let clear_max = BATCH_BYTES_MAX - SEAL_OVERHEAD_BYTES;
        if self.batch_bytes_max == 0 || self.batch_bytes_max > clear_max {
            return Err(LogError::Config(format!(
                "batch_bytes_max {} must be in 1..={clear_max}",
                self.batch_bytes_max
            )));
        }
        let min = (SEGMENT_HEADER_BYTES + self.batch_bytes_max + SEAL_OVERHEAD_BYTES) as u64;
        if self.segment_bytes < min || self.segment_bytes > u32::MAX as u64 {
            return Err(LogError::Config(format!(
                "segment_bytes {} must hold the segment header and one largest batch ({min}) and fit in 32 bits",
                self.segment_bytes
            )));
        }
        if self.segment_ms == 0 {
            return Err(LogError::Config("segment_ms must be positive".into()));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::Config("index_interval_bytes must be positive".into()));
        }
        Ok(())
    }
}
