//! The async runtime every group's openraft runs on: tokio's, except that a
//! quiet group's tick task sleeps until the group wakes.
//!
//! Openraft 0.9 gives each group a tick task that wakes every 1.5
//! heartbeat intervals, even while the group's tick is switched off (it
//! checks the switch after each sleep). At thousands of quiet groups those
//! wake-ups, with their timer-wheel entries, were about a third of an idle
//! broker's CPU. Openraft calls `sleep_until` only from that loop (0.9.25:
//! `core/tick.rs`; everything else uses `sleep` or `timeout`), so it is the
//! one place to hold a quiet group's tick back. The group is known through
//! a task-local set around `Raft::new` ([`with_gate`]) and carried into
//! every task openraft spawns from there.
//!
//! A test (`a_quiet_group_s_tick_task_sleeps`) counts the tick task's
//! wake-ups, so an openraft upgrade that moves its tick off `sleep_until`
//! fails it rather than silently costing CPU again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::{AsyncRuntime, TokioInstant};
use tokio::sync::Notify;

/// Whether a group is quiet on this replica, and what its tick task waits
/// on while it is.
#[derive(Debug, Default)]
pub(crate) struct TickGate {
    quiet: AtomicBool,
    woken: Notify,
    /// Times the tick task's sleep ended (for tests and the benchmark).
    ticks: AtomicU64,
}

impl TickGate {
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// Marks the group quiet; returns whether it was awake.
    pub(crate) fn quiet(&self) -> bool {
        !self.quiet.swap(true, Ordering::AcqRel)
    }

    /// Marks the group awake and lets its tick task run; returns whether it
    /// was quiet.
    pub(crate) fn wake(&self) -> bool {
        let was = self.quiet.swap(false, Ordering::AcqRel);
        if was {
            self.woken.notify_waiters();
        }
        was
    }

    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Until `deadline`, and for as long after it as the group is quiet.
    async fn tick_sleep(self: Arc<Self>, deadline: TokioInstant) {
        loop {
            // Registered before the check, so a wake between the two is
            // not missed.
            let woken = self.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.is_quiet() {
                break;
            }
            woken.await;
        }
        tokio::time::sleep_until(deadline).await;
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static GATE: Arc<TickGate>;
}

/// Runs `f` (a group's `Raft::new`) so that the tasks openraft spawns from
/// it know the group's gate.
pub(crate) async fn with_gate<F: Future>(gate: Arc<TickGate>, f: F) -> F::Output {
    GATE.scope(gate, f).await
}

/// Tokio, with a quiet group's tick held back (see the module's comment).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FelixRuntime;

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

impl AsyncRuntime for FelixRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: Send + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = tokio::time::Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type OneshotSender<T: Send> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: Send> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        match GATE.try_with(Arc::clone) {
            Ok(gate) => tokio::spawn(GATE.scope(gate, future)),
            Err(_) => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Box::pin(tokio::time::sleep(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        match GATE.try_with(Arc::clone) {
            Ok(gate) => Box::pin(gate.tick_sleep(deadline)),
            Err(_) => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn timeout<R, F: Future<Output = R> + Send>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::thread_rng()
    }

    fn oneshot<T: Send>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}
