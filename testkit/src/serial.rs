//! Tests that start a cluster of broker processes take this lock, so two
//! clusters never share the machine's cores (an election timing out
//! because another test's cluster was busy would be a false failure).

use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the machine for one test; a test that panicked while holding it
/// does not poison the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
