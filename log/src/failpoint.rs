//! Crash points for tests: `FELIX_FAILPOINT=<name>` makes the process SIGKILL
//! itself when it reaches the point of that name, so tests can crash a child
//! between two steps of a multi-step update (compaction's write, fsync,
//! rename, index update) and check what recovery makes of it.
//!
//! Reading the variable once and comparing a string is all it costs when
//! unset.

use std::sync::OnceLock;

/// Environment variable naming the point to crash at.
pub const FAILPOINT_ENV: &str = "FELIX_FAILPOINT";

/// Crashes the process (SIGKILL, no unwinding, nothing flushed) if the
/// failpoint `name` is armed.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(FAILPOINT_ENV).ok());
    if armed.as_deref() == Some(name) {
        tracing::warn!(failpoint = name, "failpoint hit: killing the process");
        // SAFETY: kill(2) on our own pid with a valid signal number has no
        // memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL to self is delivered before kill returns on Linux; if it
        // somehow is not, do not carry on past a point meant to be fatal.
        std::process::abort();
    }
}
