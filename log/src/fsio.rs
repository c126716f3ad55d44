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
