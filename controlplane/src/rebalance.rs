//! Which replicas move so that every broker carries an even share, sans-IO:
//! brokers and shards in, moves out. Deterministic (ties break on broker id
//! and shard order), because it runs inside the replicated state machine.
//!
//! A move replaces one replica of a shard on the most loaded broker by one
//! on the least loaded, and only while their counts differ by more than
//! one, so every move lowers the spread and planning ends. A move keeps the
//! shard's replicas on distinct brokers, never spreads it over fewer zones,
//! and never fills a broker past its `shards_max`. Shards already moving
//! are left alone, and no broker takes part in more than
//! `moves_per_broker_max` moves at once (every broker of a moving shard
//! takes part: the leader streams, the new replica catches up, the old one
//! serves until the move is done), which is the throttle: the rest wait for
//! the next round.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::placement::Candidate;

/// Moves one broker takes part in at once, by default.
pub const MOVES_PER_BROKER_DEFAULT: u32 = 2;
/// The most a configuration may allow.
pub const MOVES_PER_BROKER_MAX: u32 = 64;

/// How a rebalance chooses its moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each stream's replicas spread evenly over the brokers first, then
    /// the totals evened out without undoing that.
    #[default]
    Balanced,
    /// The totals only, with the fewest moves.
    MinimizeMovement,
}

/// A rebalance the operator asked for (or a broker's joining started):
/// the control plane moves replicas, a few at a time, until `plan` has
/// nothing left to do and no move in its scope is in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Goal {
    #[serde(default)]
    pub strategy: Strategy,
    /// Only this stream or cache (`tenant/namespace/name`); all if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// When it was asked for.
    #[serde(default)]
    pub since_ms: u64,
}

/// One shard as a rebalance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Which stream (or cache) it belongs to, as the caller numbers them.
    pub stream: usize,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<u32>,
    /// Brokers it is moving away from (non-empty: a move is in progress).
    pub leaving: Vec<u32>,
    /// Whether the rebalance may move it (the caller's scope).
    pub in_scope: bool,
}

/// One decided move: slot `slot`'s replica on `from` goes to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub slot: usize,
    pub from: u32,
    pub to: u32,
}

/// The moves to make now (see the module's rules).
pub fn plan(
    brokers: &[Candidate],
    slots: &[Slot],
    strategy: Strategy,
    moves_per_broker_max: u32,
) -> Vec<Shift> {
    let accepting: BTreeMap<u32, &Candidate> = brokers
        .iter()
        .filter(|c| c.accepting)
        .map(|c| (c.id, c))
        .collect();
    let zone = |id: u32| brokers.iter().find(|c| c.id == id).and_then(|c| c.zone.clone());
    let mut total: BTreeMap<u32, u32> = accepting.keys().map(|b| (*b, 0)).collect();
    let mut per_stream: BTreeMap<(usize, u32), u32> = BTreeMap::new();
    let mut busy: BTreeMap<u32, u32> = BTreeMap::new();
    for s in slots {
        for r in &s.replicas {
            if let Some(t) = total.get_mut(r) {
                *t += 1;
            }
            *per_stream.entry((s.stream, *r)).or_default() += 1;
        }
        if !s.leaving.is_empty() {
            for b in s.replicas.iter().chain(&s.leaving) {
                *busy.entry(*b).or_default() += 1;
            }
        }
    }
    // Each stream's slots, in slot order, so a stream's pass looks at its
    // own slots only.
    let mut of_stream: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in slots.iter().enumerate() {
        of_stream.entry(s.stream).or_default().push(i);
    }
    let all: Vec<usize> = (0..slots.len()).collect();
    let mut replicas: Vec<Vec<u32>> = slots.iter().map(|s| s.replicas.clone()).collect();
    let mut moved: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::new();
    let streams: BTreeSet<usize> = slots.iter().filter(|s| s.in_scope).map(|s| s.stream).collect();
    let passes: Vec<Option<usize>> = match strategy {
        Strategy::Balanced => streams.iter().copied().map(Some).chain([None]).collect(),
        Strategy::MinimizeMovement => vec![None],
    };
    for pass in passes {
        if let Some(st) = pass {
            // A pass moves a replica only from a broker holding at least
            // two more of the stream's than another: where none does (a
            // stream already spread, most of them), it would only look.
            let held = accepting
                .keys()
                .map(|b| per_stream.get(&(st, *b)).copied().unwrap_or(0));
            let (least, most) = held.fold((u32::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
            if most < least.saturating_add(2) {
                continue;
            }
        }
        let candidates = match pass {
            Some(st) => of_stream.get(&st).map_or(&[][..], Vec::as_slice),
            None => &all[..],
        };
        let mut exhausted: BTreeSet<u32> = BTreeSet::new();
        loop {
            let count =
                |per_stream: &BTreeMap<(usize, u32), u32>, total: &BTreeMap<u32, u32>, b: u32| match pass {
                    Some(st) => per_stream.get(&(st, b)).copied().unwrap_or(0),
                    None => total.get(&b).copied().unwrap_or(0),
                };
            // The most loaded broker with a move left to try (ties: the
            // one carrying more in all, then the lower id).
            let Some(hi) = accepting
                .keys()
                .copied()
                .filter(|b| !exhausted.contains(b))
                .max_by_key(|b| (count(&per_stream, &total, *b), total[b], std::cmp::Reverse(*b)))
            else {
                break;
            };
            let hi_count = count(&per_stream, &total, hi);
            let mut los: Vec<u32> = accepting
                .keys()
                .copied()
                .filter(|b| count(&per_stream, &total, *b) + 1 < hi_count)
                .collect();
            los.sort_by_key(|b| (count(&per_stream, &total, *b), total[b], *b));
            let free =
                |busy: &BTreeMap<u32, u32>, b: u32| busy.get(&b).copied().unwrap_or(0) < moves_per_broker_max;
            let mut found = None;
            if free(&busy, hi) {
                'los: for lo in los {
                    if !free(&busy, lo) || total[&lo] >= accepting[&lo].shards_max {
                        continue;
                    }
                    // A shard not led from `hi` first: moving a follower
                    // leaves the leadership where it is.
                    for prefer_follower in [true, false] {
                        for &i in candidates {
                            let (s, r) = (&slots[i], &replicas[i]);
                            let ok = s.in_scope
                                && s.leaving.is_empty()
                                && !moved.contains(&i)
                                && pass.is_none_or(|st| st == s.stream)
                                && r.contains(&hi)
                                && !r.contains(&lo)
                                && (!prefer_follower || r.first() != Some(&hi))
                                // Totals evened without undoing the streams' spread.
                                && (strategy == Strategy::MinimizeMovement
                                    || pass.is_some()
                                    || per_stream.get(&(s.stream, lo)).copied().unwrap_or(0)
                                        < per_stream.get(&(s.stream, hi)).copied().unwrap_or(0))
                                && zones_kept(r, hi, lo, &zone);
                            if ok {
                                found = Some((i, lo));
                                break 'los;
                            }
                        }
                    }
                }
            }
            let Some((i, lo)) = found else {
                exhausted.insert(hi);
                continue;
            };
            let at = replicas[i]
                .iter()
                .position(|b| *b == hi)
                .expect("hi is a replica");
            replicas[i][at] = lo;
            moved.insert(i);
            *total.get_mut(&hi).expect("accepting") -= 1;
            *total.get_mut(&lo).expect("accepting") += 1;
            let st = slots[i].stream;
            *per_stream.entry((st, hi)).or_default() -= 1;
            *per_stream.entry((st, lo)).or_default() += 1;
            for b in replicas[i].iter().chain([&hi]) {
                *busy.entry(*b).or_default() += 1;
            }
            out.push(Shift {
                slot: i,
                from: hi,
                to: lo,
            });
        }
    }
    out
}

/// Whether replacing `from` by `to` in `replicas` keeps as many zones.
fn zones_kept(replicas: &[u32], from: u32, to: u32, zone: &impl Fn(u32) -> Option<String>) -> bool {
    let zones = |ids: &mut dyn Iterator<Item = u32>| ids.map(zone).collect::<BTreeSet<_>>().len();
    let before = zones(&mut replicas.iter().copied());
    let after = zones(&mut replicas.iter().copied().map(|b| if b == from { to } else { b }));
    after >= before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: u32, zone: Option<&str>) -> Candidate {
        Candidate::idle(id, zone)
    }

    /// 10 shards of one stream at RF 3 placed evenly on brokers 1-5.
    fn ten_on_five() -> Vec<Slot> {
        (0..10u32)
            .map(|i| Slot {
                stream: 0,
                replicas: (0..3).map(|k| (i + k) % 5 + 1).collect(),
                leaving: Vec::new(),
                in_scope: true,
            })
            .collect()
    }

    fn apply(slots: &mut [Slot], shifts: &[Shift]) {
        for s in shifts {
            let r = &mut slots[s.slot].replicas;
            let at = r.iter().position(|b| *b == s.from).unwrap();
            r[at] = s.to;
        }
    }

    fn counts(slots: &[Slot]) -> BTreeMap<u32, u32> {
        let mut c = BTreeMap::new();
        for s in slots {
            for r in &s.replicas {
                *c.entry(*r).or_insert(0) += 1;
            }
        }
        c
    }

    #[test]
    fn a_new_empty_broker_takes_an_even_share_and_shards_stay_on_distinct_brokers() {
        let brokers: Vec<Candidate> = (1..=6).map(|b| broker(b, None)).collect();
        for strategy in [Strategy::Balanced, Strategy::MinimizeMovement] {
            let mut slots = ten_on_five();
            let shifts = plan(&brokers, &slots, strategy, 100);
            assert_eq!(
                shifts.len(),
                5,
                "{strategy:?}: 6 brokers × 5 from 5 × 6: {shifts:?}"
            );
            assert!(shifts.iter().all(|s| s.to == 6), "{shifts:?}");
            apply(&mut slots, &shifts);
            assert!(counts(&slots).values().all(|c| *c == 5), "{:?}", counts(&slots));
            for s in &slots {
                let d: BTreeSet<_> = s.replicas.iter().collect();
                assert_eq!(d.len(), 3, "{s:?}");
            }
            // Balanced now: nothing more to do.
            assert!(plan(&brokers, &slots, strategy, 100).is_empty());
        }
    }

    #[test]
    fn moves_are_throttled_per_broker_and_moving_shards_wait() {
        let brokers: Vec<Candidate> = (1..=6).map(|b| broker(b, None)).collect();
        let mut slots = ten_on_five();
        let first = plan(&brokers, &slots, Strategy::MinimizeMovement, 2);
        assert_eq!(
            first.len(),
            2,
            "broker 6 takes part in at most 2 moves: {first:?}"
        );
        // Those two are in progress: the next round adds none while they are.
        for s in &first {
            let slot = &mut slots[s.slot];
            let at = slot.replicas.iter().position(|b| *b == s.from).unwrap();
            slot.replicas[at] = s.to;
            slot.leaving = vec![s.from];
        }
        assert!(plan(&brokers, &slots, Strategy::MinimizeMovement, 2).is_empty());
        // Done: the rest follows.
        for s in &mut slots {
            s.leaving.clear();
        }
        let next = plan(&brokers, &slots, Strategy::MinimizeMovement, 2);
        assert_eq!(next.len(), 2, "{next:?}");
    }

    #[test]
    fn balanced_spreads_each_stream_and_zones_never_shrink() {
        // Two streams, each on brokers 1-3 only; broker 4 empty.
        let brokers: Vec<Candidate> = (1..=4).map(|b| broker(b, None)).collect();
        let mut slots: Vec<Slot> = (0..2)
            .flat_map(|st| {
                (0..3).map(move |_| Slot {
                    stream: st,
                    replicas: vec![1, 2, 3],
                    leaving: Vec::new(),
                    in_scope: true,
                })
            })
            .collect();
        let shifts = plan(&brokers, &slots, Strategy::Balanced, 100);
        apply(&mut slots, &shifts);
        for st in 0..2 {
            let mut c = BTreeMap::new();
            for s in slots.iter().filter(|s| s.stream == st) {
                for r in &s.replicas {
                    *c.entry(*r).or_insert(0u32) += 1;
                }
            }
            let (lo, hi) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(c.len() == 4 && hi - lo <= 1, "stream {st}: {c:?}");
        }
        // Zones: broker 2 (zone b) carries 3, the others (zone a) 1 each,
        // but moving any of its replicas would put a shard in zone a only.
        let zoned = [
            broker(1, Some("a")),
            broker(2, Some("b")),
            broker(3, Some("a")),
            broker(4, Some("a")),
        ];
        let slots: Vec<Slot> = [1, 3, 4]
            .into_iter()
            .map(|other| Slot {
                stream: 0,
                replicas: vec![other, 2],
                leaving: Vec::new(),
                in_scope: true,
            })
            .collect();
        assert!(plan(&zoned, &slots, Strategy::MinimizeMovement, 100).is_empty());
        // Out of scope: untouched.
        let mut quiet = ten_on_five();
        for s in &mut quiet {
            s.in_scope = false;
        }
        let six: Vec<Candidate> = (1..=6).map(|b| broker(b, None)).collect();
        assert!(plan(&six, &quiet, Strategy::Balanced, 100).is_empty());
    }
}
