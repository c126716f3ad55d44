//! Where shard replicas go, sans-IO: brokers and their load in, replica
//! lists out. Deterministic (ties break on broker id), because it runs
//! inside the replicated state machine and every node must decide alike.
//!
//! Rules, in order: a shard's replicas are on distinct brokers; spread over
//! as many zones as there are (a zone with fewer of the shard's replicas
//! wins); a broker with fewer replicas wins; a broker never takes more than
//! its `shards_max`. The preferred leader (`replicas[0]`) is the replica
//! with the fewest preferred leaderships, so leaders spread too.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("replication factor {rf} needs {rf} active brokers with room; {usable} have room")]
    NotEnoughBrokers { rf: u32, usable: usize },
}

/// One broker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub zone: Option<String>,
    /// Whether it may take new replicas (active, not draining or down).
    pub accepting: bool,
    pub shards_max: u32,
    /// Replicas it hosts now.
    pub replicas: u32,
    /// Shards it is the preferred leader of now.
    pub leaders: u32,
}

impl Candidate {
    /// An active broker with room and nothing on it yet (tests).
    #[cfg(test)]
    pub(crate) fn idle(id: u32, zone: Option<&str>) -> Candidate {
        Candidate {
            id,
            zone: zone.map(String::from),
            accepting: true,
            shards_max: 100,
            replicas: 0,
            leaders: 0,
        }
    }
}

/// The brokers, updated as placement decides so later shards see earlier
/// ones' choices.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    brokers: BTreeMap<u32, Candidate>,
}

impl Cluster {
    pub fn new(brokers: impl IntoIterator<Item = Candidate>) -> Cluster {
        Cluster {
            brokers: brokers.into_iter().map(|c| (c.id, c)).collect(),
        }
    }

    /// Every broker, by id.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.brokers.values().cloned().collect()
    }

    pub fn get(&self, id: u32) -> Option<&Candidate> {
        self.brokers.get(&id)
    }

    fn zone_of(&self, id: u32) -> Option<&str> {
        self.brokers.get(&id).and_then(|c| c.zone.as_deref())
    }

    /// The best broker to add to a shard that has `current` replicas.
    fn pick(&self, current: &[u32]) -> Option<u32> {
        self.brokers
            .values()
            .filter(|c| c.accepting && c.replicas < c.shards_max && !current.contains(&c.id))
            .min_by_key(|c| {
                let same_zone = current
                    .iter()
                    .filter(|r| c.zone.is_some() && self.zone_of(**r) == c.zone.as_deref())
                    .count();
                (same_zone, c.replicas, c.id)
            })
            .map(|c| c.id)
    }

    /// Brokers that may take a new replica (active, with room).
    pub fn usable(&self) -> usize {
        self.brokers
            .values()
            .filter(|c| c.accepting && c.replicas < c.shards_max)
            .count()
    }

    fn add(&mut self, id: u32, leader: bool) {
        if let Some(c) = self.brokers.get_mut(&id) {
            c.replicas += 1;
            c.leaders += u32::from(leader);
        }
    }

    fn remove(&mut self, id: u32, leader: bool) {
        if let Some(c) = self.brokers.get_mut(&id) {
            c.replicas = c.replicas.saturating_sub(1);
            if leader {
                c.leaders = c.leaders.saturating_sub(1);
            }
        }
    }

    /// Replicas for a new shard, preferred leader first.
    pub fn place(&mut self, rf: u32) -> Result<Vec<u32>, PlacementError> {
        let usable = self.usable();
        if usable < rf as usize {
            return Err(PlacementError::NotEnoughBrokers { rf, usable });
        }
        let mut chosen = Vec::with_capacity(rf as usize);
        for _ in 0..rf {
            let id = self
                .pick(&chosen)
                .ok_or(PlacementError::NotEnoughBrokers { rf, usable })?;
            chosen.push(id);
        }
        self.lead_with_least_loaded(&mut chosen);
        for (i, id) in chosen.iter().enumerate() {
            self.add(*id, i == 0);
        }
        Ok(chosen)
    }

    /// Puts the replica with the fewest preferred leaderships first.
    fn lead_with_least_loaded(&self, replicas: &mut [u32]) {
        if let Some(best) = (0..replicas.len()).min_by_key(|i| {
            let id = replicas[*i];
            (self.brokers.get(&id).map_or(u32::MAX, |c| c.leaders), id)
        }) {
            replicas.swap(0, best);
        }
    }

    /// A replacement for `gone` in a shard whose replicas are `replicas`:
    /// the new broker, or `None` when no broker has room.
    pub fn replace(&mut self, replicas: &[u32], gone: u32) -> Option<u32> {
        let staying: Vec<u32> = replicas.iter().copied().filter(|r| *r != gone).collect();
        let mut all = staying.clone();
        all.push(gone);
        let new = self.pick(&all)?;
        self.add(new, false);
        Some(new)
    }

    /// Forget `id`'s replica of a shard (once it has left).
    pub fn release(&mut self, id: u32, leader: bool) {
        self.remove(id, leader);
    }

    /// Moves the preferred leadership of a shard to the replica with the
    /// fewest, if that evens things out by more than one. Returns whether
    /// it moved.
    pub fn balance_leader(&mut self, replicas: &mut [u32]) -> bool {
        let Some(&current) = replicas.first() else {
            return false;
        };
        let leads = |c: &Cluster, id: u32| c.brokers.get(&id).filter(|b| b.accepting).map(|b| b.leaders);
        let Some((best_i, best_leads)) = replicas
            .iter()
            .enumerate()
            .filter_map(|(i, id)| leads(self, *id).map(|l| (i, l)))
            .min_by_key(|(i, l)| (*l, replicas[*i]))
        else {
            return false;
        };
        let current_leads = leads(self, current);
        let moves = match current_leads {
            // A leader on a broker not accepting (draining) always moves.
            None => best_i != 0,
            Some(cl) => best_i != 0 && cl > best_leads + 1,
        };
        if moves {
            self.remove(current, true);
            self.remove(replicas[best_i], false);
            replicas.swap(0, best_i);
            self.add(replicas[0], true);
            self.add(current, false);
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Candidate as C;

    fn broker(id: u32, zone: Option<&str>) -> Candidate {
        C::idle(id, zone)
    }

    #[test]
    fn replicas_are_on_distinct_brokers_and_leaders_spread() {
        let mut c = Cluster::new((1..=3).map(|i| broker(i, None)));
        let mut leaders = BTreeMap::new();
        for _ in 0..6 {
            let r = c.place(3).unwrap();
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "distinct brokers: {r:?}");
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn zones_are_spread_before_load() {
        // Two brokers in zone a, one in b: every RF=2 shard has one in each.
        let mut c = Cluster::new([broker(1, Some("a")), broker(2, Some("a")), broker(3, Some("b"))]);
        for _ in 0..4 {
            let r = c.place(2).unwrap();
            assert!(r.contains(&3), "zone b is in every shard: {r:?}");
        }
        // Three zones for RF=3: one replica per zone.
        let mut c = Cluster::new([
            broker(1, Some("a")),
            broker(2, Some("a")),
            broker(3, Some("b")),
            broker(4, Some("c")),
        ]);
        for _ in 0..5 {
            let r = c.place(3).unwrap();
            let zones: std::collections::BTreeSet<_> = r.iter().map(|id| c.zone_of(*id).unwrap()).collect();
            assert_eq!(zones.len(), 3, "{r:?}");
        }
    }

    #[test]
    fn too_few_brokers_and_full_brokers_are_refused() {
        let mut c = Cluster::new([broker(1, None), broker(2, None)]);
        assert_eq!(
            c.place(3),
            Err(PlacementError::NotEnoughBrokers { rf: 3, usable: 2 })
        );
        let mut small = broker(3, None);
        small.shards_max = 1;
        let mut c = Cluster::new([broker(1, None), small]);
        c.place(2).unwrap();
        assert!(c.place(2).is_err(), "broker 3 is full");
        assert_eq!(c.place(1).unwrap(), vec![1]);
    }

    #[test]
    fn a_replacement_avoids_the_shards_brokers_and_draining_ones() {
        let mut draining = broker(4, None);
        draining.accepting = false;
        let mut c = Cluster::new([broker(1, None), broker(2, None), broker(3, None), draining]);
        let r = c.place(2).unwrap();
        let gone = r[0];
        let new = c.replace(&r, gone).unwrap();
        assert!(!r.contains(&new) && new != 4, "{r:?} → {new}");
        assert_eq!(c.replace(&[1, 2, 3], 1), None, "no broker left with room");
    }

    #[test]
    fn leadership_moves_off_a_draining_broker_and_evens_out() {
        let mut c = Cluster::new([broker(1, None), broker(2, None)]);
        let mut shards: Vec<Vec<u32>> = (0..4).map(|_| c.place(2).unwrap()).collect();
        c.brokers.get_mut(&1).unwrap().accepting = false;
        for r in &mut shards {
            c.balance_leader(r);
        }
        assert!(shards.iter().all(|r| r[0] == 2), "{shards:?}");
        c.brokers.get_mut(&1).unwrap().accepting = true;
        let moved = shards
            .iter_mut()
            .map(|r| c.balance_leader(r))
            .filter(|m| *m)
            .count();
        assert_eq!(moved, 2, "4 vs 0 evens out to 2 vs 2");
        assert_eq!(shards.iter().filter(|r| r[0] == 1).count(), 2);
        let again = shards
            .iter_mut()
            .map(|r| c.balance_leader(r))
            .filter(|m| *m)
            .count();
        assert_eq!(again, 0, "balanced leaders stay put");
    }
}
