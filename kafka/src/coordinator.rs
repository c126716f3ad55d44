//! A door's group coordinator at run time: the [`crate::group`] state
//! machine behind a lock, the requests waiting on it (a JoinGroup until
//! the rebalance completes, a follower's SyncGroup until the leader's),
//! and the one task that sweeps it at its deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::group::{Answer, Groups, Ticket};

/// Beyond a request's own bound, how long an answer may be late before
/// the request is answered REBALANCE_IN_PROGRESS (the sweep is due well
/// before; this only bounds a wait that something broke).
const ANSWER_SLACK_MS: u64 = 5_000;

/// One door's groups, with the requests waiting on them.
pub(crate) struct Coordinator {
    inner: Mutex<Inner>,
    /// Wakes the sweeper when deadlines may have moved.
    wake: Notify,
    /// Sweeps done so far: the sweeper must sleep between deadlines, and
    /// a test holds it to that.
    sweeps: AtomicU64,
}

struct Inner {
    groups: Groups,
    waiters: HashMap<Ticket, oneshot::Sender<Answer>>,
}

impl Coordinator {
    pub(crate) fn new(incarnation: u64) -> Coordinator {
        Coordinator {
            inner: Mutex::new(Inner {
                groups: Groups::new(incarnation),
                waiters: HashMap::new(),
            }),
            wake: Notify::new(),
            sweeps: AtomicU64::new(0),
        }
    }

    /// Runs `op` on the groups and sends every answer it made ready; the
    /// answer for `op`'s own ticket comes back through the receiver.
    pub(crate) fn run<T>(
        &self,
        op: impl FnOnce(&mut Groups) -> Result<Ticket, T>,
    ) -> Result<oneshot::Receiver<Answer>, T> {
        let mut inner = self.inner.lock().expect("groups lock");
        let ticket = op(&mut inner.groups);
        let (tx, rx) = oneshot::channel();
        if let Ok(t) = &ticket {
            inner.waiters.insert(*t, tx);
        }
        inner.deliver();
        drop(inner);
        self.wake.notify_one();
        ticket.map(|_| rx)
    }

    pub(crate) fn with<T>(&self, op: impl FnOnce(&mut Groups) -> T) -> T {
        let mut inner = self.inner.lock().expect("groups lock");
        let r = op(&mut inner.groups);
        inner.deliver();
        drop(inner);
        self.wake.notify_one();
        r
    }

    /// Sweeps the groups at each deadline until `stopped`.
    pub(crate) async fn sweep_until(
        self: Arc<Self>,
        clock: Arc<dyn Fn() -> i64 + Send + Sync>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let next = self.inner.lock().expect("groups lock").groups.next_deadline_ms();
            // Without a deadline, sleep until woken (a second at most, so
            // a clock step cannot strand a group).
            let wait_ms = next.map_or(1_000, |at| (at - clock()).clamp(0, 1_000) as u64);
            tokio::select! {
                _ = stopped.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
            let now = clock();
            // Not through `with`: its wake-up would be the sweeper's own
            // and it would spin.
            let mut inner = self.inner.lock().expect("groups lock");
            inner.groups.sweep(now);
            inner.deliver();
            drop(inner);
            self.sweeps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Inner {
    fn deliver(&mut self) {
        for (t, a) in self.groups.take_ready() {
            if let Some(tx) = self.waiters.remove(&t) {
                // A client that went away meanwhile is not waiting.
                let _ = tx.send(a);
            }
        }
    }
}

/// The answer for a waiting request, or `None` if it did not come in
/// `within_ms` (and the slack).
pub(crate) async fn answer(rx: oneshot::Receiver<Answer>, within_ms: u64) -> Option<Answer> {
    tokio::time::timeout(Duration::from_millis(within_ms + ANSWER_SLACK_MS), rx)
        .await
        .ok()
        .and_then(Result::ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{self, GroupKey};
    use bytes::Bytes;

    #[test]
    fn a_waiting_join_is_answered_when_the_last_member_rejoins() {
        let c = Coordinator::new(1);
        let key: GroupKey = ("t".into(), "g".into());
        let join = |id: &str| group::Join {
            member_id: id.into(),
            client_id: "c".into(),
            client_host: "/h".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            id_required: false,
            instance_id: None,
        };
        let rx = c.run(|g| g.join(0, &key, join(""))).unwrap();
        let Ok(Answer::Join(a)) = rx.blocking_recv() else {
            panic!("a lone member's join is answered at once");
        };
        let rb = c.run(|g| g.join(1, &key, join(""))).unwrap();
        let ra = c.run(|g| g.join(2, &key, join(&a.member_id))).unwrap();
        for rx in [ra, rb] {
            let Ok(Answer::Join(j)) = rx.blocking_recv() else {
                panic!("both joins are answered");
            };
            assert_eq!(j.generation, 2);
        }
    }

    #[test]
    fn the_sweeper_sleeps_between_deadlines() {
        // A sweeper that wakes itself never yields, and a paused runtime
        // then never returns: the runtime runs on a thread of its own and a
        // hang is reported instead of waited on.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            done.send(rt.block_on(sweeps_in_ten_idle_seconds())).unwrap();
        });
        let sweeps = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the sweeper gave the runtime back");
        // One per idle second, plus the one the request woke.
        assert!((5..=15).contains(&sweeps), "{sweeps} sweeps in 10 idle seconds");
    }

    async fn sweeps_in_ten_idle_seconds() -> u64 {
        let c = Arc::new(Coordinator::new(1));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let start = tokio::time::Instant::now();
        let clock: Arc<dyn Fn() -> i64 + Send + Sync> = Arc::new(move || start.elapsed().as_millis() as i64);
        let sweeper = tokio::spawn(c.clone().sweep_until(clock, stopped));
        let key: GroupKey = ("t".into(), "g".into());
        c.with(|g| g.leave(0, &key, &["nobody".to_owned()]));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stop.send(true).unwrap();
        sweeper.await.unwrap();
        c.sweeps.load(Ordering::Relaxed)
    }
}
