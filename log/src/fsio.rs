//! The few file-system calls std does not offer. Every `unsafe` block here is
//! a plain libc call on a file descriptor we own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{LogError, Result};

/// Makes a directory's entries (creates, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io("fsync directory", dir))
}

/// Reserves blocks for `[0, len)` so that writes through a mapping can never
/// fault for lack of space. `posix_fallocate` falls back to writing zeros on
/// file systems without `fallocate`.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: fd is valid for the lifetime of `file`; the call has no memory effects.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Makes `[from, to)` read as zeros while keeping the blocks allocated.
/// Used to destroy a torn tail so no stale bytes can resurface later.
pub fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let fd = file.as_raw_fd();
    let (off, len) = (from as libc::off_t, (to - from) as libc::off_t);
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, off, len) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let punched = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    } == 0;
    if punched {
        return preallocate(file, to);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// An exclusive advisory lock on the log directory, held while the log is
/// open, so two processes never append to the same files.
pub fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Bytes written between two waits for writeback in [`write_paced`]: small
/// enough that an appender's fdatasync queued behind one chunk waits
/// well under a millisecond.
pub const PACED_CHUNK_BYTES: usize = 128 << 10;

/// Writes `data` to a new file at `path` and makes it durable, a chunk at a
/// time: each chunk is pushed to the disk and waited for
/// (`sync_file_range`) before the next is written. A background rewrite
/// (compaction) then never leaves a large amount of dirty data for one
/// final fsync — which on ext4 would be flushed inside a journal commit
/// that every appender's fdatasync has to wait for.
///
/// With `bytes_per_s_max`, sleeps between chunks to stay under that rate.
pub fn write_paced(path: &Path, data: &[u8], bytes_per_s_max: Option<u64>) -> Result<()> {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut f = File::create(path).map_err(LogError::io("create", path))?;
    let mut at = 0usize;
    for chunk in data.chunks(PACED_CHUNK_BYTES) {
        f.write_all(chunk).map_err(LogError::io("write", path))?;
        // SAFETY: sync_file_range on an open descriptor with a range inside
        // the file has no memory-safety preconditions.
        let r = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                at as i64,
                chunk.len() as i64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if r != 0 {
            return Err(LogError::Io {
                op: "sync_file_range",
                path: path.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        at += chunk.len();
        if let Some(rate) = bytes_per_s_max.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(at as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    f.sync_all().map_err(LogError::io("fsync", path))
}
