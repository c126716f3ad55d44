//! Which replicas this broker holds: exactly the shards the placement puts
//! on it (`StreamMeta::hosts`). A shard newly placed here is opened and its
//! group joined (it catches up as a learner); one placed away is retired
//! (its group shut down, its files and index entries deleted) only once
//! the placement no longer lists it at all, which the control plane does
//! after the leader reported the move done on a committed membership
//! (`control/moves.rs`). A move that fails halfway leaves the old replica
//! serving.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Node, StreamHandle};
use crate::error::BrokerError;
use crate::meta::StreamMeta;
use crate::names::StreamName;
use crate::shard::HostedShard;

/// Threads a broker opens a stream's replicas on at once.
pub const SHARD_OPENS_PARALLEL_MAX: usize = 8;

impl Node {
    /// Makes the replicas held of stream `name` those `m` places here, and
    /// installs its handle: newly placed shards are opened (and, in a
    /// running cluster, their groups founded or joined; `fresh`: the
    /// stream was just created), shards placed away are retired.
    pub(super) fn rehost(
        &self,
        name: &StreamName,
        m: StreamMeta,
        fresh: bool,
    ) -> Result<Arc<StreamHandle>, BrokerError> {
        let old = self.stream_by_name(name).ok();
        let me = self.broker_id;
        let mut shards = Vec::with_capacity(m.shards.len());
        let mut opened = Vec::new();
        let signal = old
            .as_ref()
            .map_or_else(|| Arc::new(watch::channel(0u64).0), |h| h.signal.clone());
        let held = |i: usize, id: felix_log::ShardId| {
            old.as_ref()
                .and_then(|h| h.held(i as u32))
                .filter(|s| s.id == id)
                .cloned()
        };
        let to_open: Vec<(usize, felix_log::ShardId)> = m
            .shards
            .iter()
            .enumerate()
            .map(|(i, id)| (i, felix_log::ShardId(*id)))
            .filter(|(i, id)| m.hosts(*i, me) && held(*i, *id).is_none())
            .collect();
        let mut ready = self.open_shards(&to_open, &m, &signal, &name.tenant);
        for (i, id) in m.shards.iter().enumerate() {
            let id = felix_log::ShardId(*id);
            let have = held(i, id);
            match (m.hosts(i, me), have) {
                (true, Some(s)) => shards.push(Some(s)),
                (true, None) => {
                    let s = ready.remove(&i).expect("opened above")?;
                    opened.push(i);
                    shards.push(Some(s));
                }
                (false, Some(s)) => {
                    tracing::info!(stream = %name, shard = i, "the placement moved this replica away: retiring it");
                    self.retire(&s, true)?;
                    shards.push(None);
                }
                (false, None) => {
                    // Left by a retirement a crash interrupted.
                    let dir = self.shard_dir(id);
                    if dir.exists() {
                        remove_shard_dir(&dir);
                    }
                    shards.push(None);
                }
            }
        }
        // A stream made again under the same name has other shard ids.
        for (_, s) in old.iter().flat_map(|h| h.hosted()) {
            if !m.shards.contains(&s.id.0) {
                self.retire(s, false)?;
            }
        }
        let elsewhere = (0..m.shards.len())
            .map(|i| self.placed_elsewhere(&m, i))
            .collect();
        let h = Arc::new(StreamHandle {
            name: name.clone(),
            key_routing: m.key_routing,
            meta: Mutex::new(m),
            shards,
            elsewhere,
            signal,
            subscribers: old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |h| h.subscribers.clone()),
        });
        self.streams
            .write()
            .expect("streams lock")
            .insert(name.to_string(), h.clone());
        for i in opened {
            self.start_group(&h, i, fresh);
        }
        Ok(h)
    }

    /// Records a clean checkpoint in every hosted replica's log, on up to
    /// [`SHARD_OPENS_PARALLEL_MAX`] threads, so that the next start trusts
    /// them instead of verifying, zeroing and fsyncing each one's active
    /// segment (a stopping broker's last step; a write after it is still
    /// safe). Returns how many could not be (each logged).
    pub fn checkpoint_logs(&self) -> usize {
        let shards: Vec<Arc<HostedShard>> = self
            .streams()
            .iter()
            .flat_map(|h| h.hosted().map(|(_, s)| s.clone()).collect::<Vec<_>>())
            .collect();
        on_threads(&shards, |s| match s.log().checkpoint_clean() {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(shard = s.id.0, error = %e, "no clean checkpoint: the next start verifies this log");
                true
            }
        })
        .into_iter()
        .filter(|failed| *failed)
        .count()
    }

    /// Opens the replicas `to_open` (shard number, id) of `m`, on up to
    /// [`SHARD_OPENS_PARALLEL_MAX`] threads: a broker restarting with
    /// thousands of replicas recovers their logs side by side.
    fn open_shards(
        &self,
        to_open: &[(usize, felix_log::ShardId)],
        m: &StreamMeta,
        signal: &Arc<watch::Sender<u64>>,
        tenant: &str,
    ) -> std::collections::HashMap<usize, Result<Arc<HostedShard>, BrokerError>> {
        on_threads(to_open, |(i, id)| (*i, self.open_shard(*id, m, signal, tenant)))
            .into_iter()
            .collect()
    }

    /// A broker other than this one placed on shard `shard` of `m` (the
    /// preferred first), with its client address.
    fn placed_elsewhere(&self, m: &StreamMeta, shard: usize) -> Option<(u64, String)> {
        let c = self.cluster()?;
        m.placed(shard)
            .filter(|b| *b != self.broker_id)
            .find_map(|b| Some((b, c.peers.get(b)?.client_addr)))
    }

    /// Stops serving replica `s` and deletes it: its readers end, its
    /// index entries go, and its files are removed once its group (if
    /// any) has shut down, so no RPC writes into a deleted directory.
    pub(super) fn retire(&self, s: &Arc<HostedShard>, moved: bool) -> Result<(), BrokerError> {
        s.close(moved);
        self.maintenance.unregister(s.id);
        self.hot.forget_shard(s.id);
        self.index.clear_shard(s.id)?;
        let dir = self.shard_dir(s.id);
        match (s.replica().cloned(), self.cluster().cloned()) {
            (Some(r), Some(c)) => {
                tokio::spawn(async move {
                    r.shutdown(&c.router).await;
                    remove_shard_dir(&dir);
                });
            }
            _ => remove_shard_dir(&dir),
        }
        Ok(())
    }

    /// Starts the group of stream `h`'s shard `shard` in the background:
    /// founded by the brokers that founded it, joined by any other.
    pub(super) fn start_group(&self, h: &Arc<StreamHandle>, shard: usize, fresh: bool) {
        let (Some(cluster), Some(s)) = (self.cluster().cloned(), h.held(shard as u32).cloned()) else {
            return;
        };
        let m = h.meta();
        let founders = m.founders_of(shard).to_vec();
        let preferred = m.preferred_leader(shard);
        let dir = HostedShard::raft_dir(&self.shard_dir(s.id));
        tokio::spawn(async move {
            if let Err(e) = cluster.start_shard(&s, dir, fresh, &founders, preferred).await {
                tracing::error!(shard = s.id.0, error = %e, "starting the shard's group failed");
            }
        });
    }
}

fn remove_shard_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "a retired replica's files were removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a retired replica's files")
        }
    }
}

/// `f` over `items` on up to [`SHARD_OPENS_PARALLEL_MAX`] threads (mostly
/// waiting on the disk, one replica after another on each), results in
/// `items`' order; on the caller's thread when there is one item or none.
fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(SHARD_OPENS_PARALLEL_MAX);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a replica's open or checkpoint panicked"))
            .collect()
    })
}
