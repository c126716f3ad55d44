//! Bridges: the one way a stream's records leave this cluster's region.
//! A bridge (a control-plane resource) names a target cluster and the
//! streams of one tenant it carries; the leader of each source shard
//! carries that shard's committed records to the same shard of the target
//! stream (`carry`), and one task per broker decides which carriers run
//! here (`supervise`).
//!
//! Exactly once into the target, through a crash, a failover or a target
//! outage:
//! - every batch a carrier sends is an idempotent producer's, with the
//!   producer id derived from (region, bridge, stream, shard) ([`producer_id`]) and
//!   the sequence the source offset of its first record, so the target
//!   answers a batch sent again with where the first attempt landed;
//! - the source position (the next source offset to carry) is a cursor
//!   commit in the source shard's own log, named [`cursor_name`], written
//!   after each acknowledged batch and before the next is sent. So a new
//!   leader resumes at most one batch behind the last one sent, and that
//!   batch is answered as a duplicate;
//! - the target's answer says how many records the first attempt held
//!   ([`advance`]), so a batch sent again with other boundaries neither
//!   skips nor repeats a record.
//!
//! This module decides (pure); `carry` and `supervise` do the IO.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use felix_controlplane::model::{Bridge, BridgeLag};

pub mod carry;
pub mod supervise;

/// Cursor names with this prefix are the bridges'; a client may not
/// commit one (it would move a bridge's source position).
pub const BRIDGE_CURSOR_PREFIX: &str = "bridge/";
/// The header a carried record gets: its offset in the source shard
/// (decimal ASCII), so a reader of the target can trace it back.
pub const SOURCE_OFFSET_HEADER: &str = "felix-source-offset";
/// The header naming the source region.
pub const SOURCE_REGION_HEADER: &str = "felix-source-region";
/// Carriers one broker runs at once (bridged shards it leads).
pub const CARRIERS_MAX: usize = 4096;
/// Records in one carried batch.
pub const CARRY_RECORDS_MAX: usize = 2048;
/// Encoded bytes of one carried batch (the target's limit is 8 MiB).
pub const CARRY_BATCH_BYTES_MAX: usize = 1 << 20;

/// The cursor holding bridge `bridge`'s source position in a shard.
pub fn cursor_name(bridge: &str) -> String {
    format!("{BRIDGE_CURSOR_PREFIX}{bridge}")
}

/// The idempotent producer id bridge `bridge` of region `region` writes
/// shard `shard` of `stream` with in the target: the same on every source
/// broker, so a new leader's batches are recognised as the old leader's
/// retries, and different for a same-named bridge of another region into
/// the same target stream (whose batches would otherwise be taken for
/// this one's). Positive and never 0 (0 means "not idempotent").
pub fn producer_id(region: &str, bridge: &str, stream: &str, shard: u32) -> u64 {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        b"felix bridge v1".as_slice(),
        region.as_bytes(),
        bridge.as_bytes(),
        stream.as_bytes(),
    ] {
        d.update(&(part.len() as u64).to_le_bytes());
        d.update(part);
    }
    d.update(&shard.to_le_bytes());
    let digest = d.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_le_bytes(first) >> 1).max(1)
}

/// The source position after a batch of records at `offsets` (ascending)
/// was answered with `count` records written from its first one: the
/// offset after the `count`-th, or, when the first attempt held more
/// records than this one (`count > offsets.len()`), the offset after the
/// last plus how many records past it are in the target already.
pub fn advance(offsets: &[u64], count: u32) -> Advance {
    let count = count as usize;
    match offsets.get(count) {
        Some(o) => Advance { next: *o, skip: 0 },
        None => Advance {
            next: offsets.last().map_or(0, |o| o + 1),
            skip: (count - offsets.len().min(count)) as u64,
        },
    }
}

/// Where a carrier goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The next source offset to look at.
    pub next: u64,
    /// Records from `next` on that are in the target already.
    pub skip: u64,
}

/// One carrier: a bridge carrying one shard of one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CarrierKey {
    pub bridge: String,
    pub stream: String,
    pub shard: u32,
}

/// A shard this broker holds, as the plan sees it.
#[derive(Debug, Clone)]
pub struct HeldShard {
    /// `tenant/namespace/stream`
    pub stream: String,
    pub shard: u32,
    /// Whether this replica leads (an unreplicated shard always does).
    pub leads: bool,
    /// Caches are not carried: a bridge carries streams.
    pub carried_kind: bool,
}

/// The carriers that should run here: one per running bridge, per shard of
/// a stream it names that this broker leads; at most [`CARRIERS_MAX`].
pub fn plan<'a>(
    bridges: impl IntoIterator<Item = &'a Bridge>,
    held: &[HeldShard],
) -> BTreeMap<CarrierKey, Bridge> {
    let mut out = BTreeMap::new();
    for b in bridges {
        if b.paused {
            continue;
        }
        for h in held.iter().filter(|h| h.leads && h.carried_kind) {
            let mut parts = h.stream.splitn(3, '/');
            let (Some(t), Some(ns), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if t != b.spec.tenant
                || !b
                    .spec
                    .streams
                    .iter()
                    .any(|p| felix_controlplane::model::bridge_pattern_matches(p, ns, s))
            {
                continue;
            }
            if out.len() >= CARRIERS_MAX {
                return out;
            }
            out.insert(
                CarrierKey {
                    bridge: b.name.clone(),
                    stream: h.stream.clone(),
                    shard: h.shard,
                },
                b.clone(),
            );
        }
    }
    out
}

/// What a carrier last reported.
#[derive(Debug, Clone, Default)]
pub struct CarrierStatus {
    pub position: u64,
    pub end: u64,
    pub error: Option<String>,
}

/// The bridges this broker knows (from the control plane's feed) and what
/// its carriers report.
#[derive(Debug, Default)]
pub struct Bridges {
    known: Mutex<BTreeMap<String, Bridge>>,
    status: Mutex<BTreeMap<CarrierKey, Arc<Mutex<CarrierStatus>>>>,
    /// For tests of the exactly-once path: every this many acknowledged
    /// batches (0: never), a carrier stops without committing its
    /// position, as one whose broker was killed between the target's
    /// answer and the commit; its successor sends the batch again.
    crash_before_commit_every: AtomicU64,
    /// One client of each bridge's target per broker, shared by its
    /// carriers (one QUIC endpoint, not one per carried shard), with the
    /// bridge's `updated_ms` it was made for.
    clients: Mutex<BTreeMap<String, (u64, felix_client::Client)>>,
    batches_acknowledged: AtomicU64,
    crashes: AtomicU64,
}

impl Bridges {
    /// The feed's full list (a snapshot).
    pub fn replace(&self, all: BTreeMap<String, Bridge>) {
        *self.known.lock().expect("bridges lock") = all;
    }

    /// One bridge made, changed (`Some`) or deleted (`None`).
    pub fn set(&self, name: &str, value: Option<Bridge>) {
        let mut k = self.known.lock().expect("bridges lock");
        match value {
            Some(b) => {
                k.insert(name.to_owned(), b);
            }
            None => {
                k.remove(name);
            }
        }
    }

    pub fn known(&self) -> Vec<Bridge> {
        self.known
            .lock()
            .expect("bridges lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.known.lock().expect("bridges lock").is_empty()
    }

    /// The shared client of `bridge`'s target, connecting it if there is
    /// none for this version of the bridge.
    pub(crate) async fn client(&self, bridge: &Bridge) -> Result<felix_client::Client, String> {
        if let Some((v, c)) = self
            .clients
            .lock()
            .expect("bridge clients lock")
            .get(&bridge.name)
        {
            if *v == bridge.updated_ms {
                return Ok(c.clone());
            }
        }
        // Connected outside the lock: two carriers racing both connect and
        // the second keeps the first's client.
        let c = carry::connect(bridge).await?;
        let mut all = self.clients.lock().expect("bridge clients lock");
        let kept = all
            .entry(bridge.name.clone())
            .and_modify(|e| {
                if e.0 != bridge.updated_ms {
                    *e = (bridge.updated_ms, c.clone());
                }
            })
            .or_insert((bridge.updated_ms, c));
        Ok(kept.1.clone())
    }

    /// Drops `bridge`'s shared client (its target refused it outright).
    pub(crate) fn forget_client(&self, bridge: &Bridge) {
        let mut all = self.clients.lock().expect("bridge clients lock");
        if all
            .get(&bridge.name)
            .is_some_and(|(v, _)| *v == bridge.updated_ms)
        {
            all.remove(&bridge.name);
        }
    }

    /// Drops the clients of bridges no longer known or changed.
    pub(crate) fn retain_clients(&self) {
        let known = self.known.lock().expect("bridges lock");
        self.clients
            .lock()
            .expect("bridge clients lock")
            .retain(|name, (v, _)| known.get(name).is_some_and(|b| b.updated_ms == *v));
    }

    /// Sets the test fault: see `crash_before_commit_every`.
    pub fn crash_before_commit_every(&self, batches: u64) {
        self.crash_before_commit_every.store(batches, Ordering::Relaxed);
    }

    /// Times a carrier stopped by the test fault.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Counts an acknowledged batch; whether the test fault stops the
    /// carrier before it commits.
    pub(crate) fn crash_due(&self) -> bool {
        let n = self.batches_acknowledged.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.crash_before_commit_every.load(Ordering::Relaxed);
        let due = every > 0 && n % every == 0;
        if due {
            self.crashes.fetch_add(1, Ordering::Relaxed);
        }
        due
    }

    /// The status cell a carrier reports into.
    pub(crate) fn status_of(&self, key: &CarrierKey) -> Arc<Mutex<CarrierStatus>> {
        self.status
            .lock()
            .expect("bridge status lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Keeps the statuses of the carriers in `running` only.
    pub(crate) fn retain_status(&self, running: &dyn Fn(&CarrierKey) -> bool) {
        self.status
            .lock()
            .expect("bridge status lock")
            .retain(|k, _| running(k));
    }

    /// The carriers' positions, for the heartbeat and the metrics, at most
    /// `max`.
    pub fn lags(&self, max: usize) -> Vec<BridgeLag> {
        self.status
            .lock()
            .expect("bridge status lock")
            .iter()
            .take(max)
            .map(|(k, s)| {
                let s = s.lock().expect("carrier status lock");
                BridgeLag {
                    bridge: k.bridge.clone(),
                    stream: k.stream.clone(),
                    shard: k.shard,
                    position: s.position,
                    end: s.end,
                    error: s.error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use felix_controlplane::model::{BridgeSpec, BridgeTarget};

    fn bridge(name: &str, tenant: &str, streams: &[&str], paused: bool) -> Bridge {
        Bridge {
            name: name.into(),
            spec: BridgeSpec {
                tenant: tenant.into(),
                streams: streams.iter().map(|s| s.to_string()).collect(),
                target: BridgeTarget {
                    region: "us".into(),
                    brokers: vec!["127.0.0.1:1".into()],
                    server_name: "localhost".into(),
                    ca_pem: String::new(),
                    token: String::new(),
                },
            },
            paused,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    fn held(stream: &str, shard: u32, leads: bool) -> HeldShard {
        HeldShard {
            stream: stream.into(),
            shard,
            leads,
            carried_kind: true,
        }
    }

    #[test]
    fn a_bridge_runs_where_its_tenants_matching_shards_are_led() {
        let b = [
            bridge("eu-us", "acme", &["prod/*"], false),
            bridge("quiet", "acme", &["*/*"], true),
        ];
        let h = [
            held("acme/prod/orders", 0, true),
            held("acme/prod/orders", 1, false),
            held("acme/dev/orders", 0, true),
            held("other/prod/orders", 0, true),
            HeldShard {
                carried_kind: false,
                ..held("acme/prod/sessions", 0, true)
            },
        ];
        let p = plan(&b, &h);
        let keys: Vec<_> = p
            .keys()
            .map(|k| (k.bridge.as_str(), k.stream.as_str(), k.shard))
            .collect();
        assert_eq!(keys, vec![("eu-us", "acme/prod/orders", 0)]);
    }

    #[test]
    fn the_answer_count_moves_the_position_past_exactly_what_the_target_holds() {
        let offsets = [10, 11, 15, 16];
        assert_eq!(advance(&offsets, 4), Advance { next: 17, skip: 0 });
        // A first attempt held fewer records: send the rest again.
        assert_eq!(advance(&offsets, 2), Advance { next: 15, skip: 0 });
        // ...or more: step over those past this batch too.
        assert_eq!(advance(&offsets, 6), Advance { next: 17, skip: 2 });
    }

    #[test]
    fn producer_ids_differ_per_region_bridge_stream_and_shard_and_are_never_zero() {
        let a = producer_id("eu", "b", "t/n/s", 0);
        assert_eq!(a, producer_id("eu", "b", "t/n/s", 0));
        assert_ne!(a, producer_id("eu", "b", "t/n/s", 1));
        assert_ne!(a, producer_id("eu", "c", "t/n/s", 0));
        assert_ne!(a, producer_id("ap", "b", "t/n/s", 0));
        assert_ne!(
            producer_id("eu", "b/", "t/n/s", 0),
            producer_id("eu", "b", "/t/n/s", 0)
        );
        assert!(a > 0 && a < 1 << 63);
    }
}
