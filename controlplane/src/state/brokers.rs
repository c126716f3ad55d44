//! Brokers: registration, status, liveness, and the placement changes
//! they cause (replicas replaced, moves done, leaders balanced).

use super::*;

impl Metadata {
    pub(super) fn run_brokers(
        &mut self,
        env: &Envelope,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        let now = env.now_ms;
        match &env.command {
            RegisterBroker { registration } => {
                registration.validate().map_err(ApplyError::invalid)?;
                let id = registration.id;
                if self.retired_brokers.contains(&id) {
                    return Err(ApplyError::invalid(format!(
                        "broker id {id} was decommissioned; a broker id is never used twice"
                    )));
                }
                let value = match self.brokers.get(&id) {
                    Some(b) if b.registration == *registration && b.status == BrokerStatus::Active => {
                        return Ok(vec![]);
                    }
                    // A registration brings a down broker back; a draining
                    // one stays draining until told otherwise.
                    Some(b) => Broker {
                        registration: registration.clone(),
                        status: match b.status {
                            BrokerStatus::Draining => BrokerStatus::Draining,
                            _ => BrokerStatus::Active,
                        },
                        since_ms: if b.status == BrokerStatus::Down {
                            now
                        } else {
                            b.since_ms
                        },
                        decommissioning: b.decommissioning,
                    },
                    None if self.brokers.len() >= crate::model::BROKERS_MAX => {
                        return Err(ApplyError::invalid(format!(
                            "the registry holds {} brokers already (BROKERS_MAX); decommission one first",
                            crate::model::BROKERS_MAX
                        )));
                    }
                    None => {
                        // A new broker takes its share of what exists.
                        self.rebalance.get_or_insert(crate::rebalance::Goal {
                            strategy: crate::rebalance::Strategy::Balanced,
                            stream: None,
                            since_ms: now,
                        });
                        Broker {
                            registration: registration.clone(),
                            status: BrokerStatus::Active,
                            since_ms: now,
                            decommissioning: false,
                        }
                    }
                };
                if self.brokers.get(&id) == Some(&value) {
                    return Ok(vec![]);
                }
                self.brokers.insert(id, value.clone());
                Ok(vec![Change::Broker {
                    broker: id,
                    value: Some(value),
                }])
            }
            SetBrokerStatus { broker, status } => {
                let b = self
                    .brokers
                    .get_mut(broker)
                    .ok_or_else(|| ApplyError::not_found(format!("no broker {broker}")))?;
                // A decommissioning broker back from down resumes draining;
                // one told to take shards again (undrain) is kept after all.
                let status = match (*status, b.status) {
                    (BrokerStatus::Active, BrokerStatus::Down) if b.decommissioning => BrokerStatus::Draining,
                    (s, _) => s,
                };
                let kept = status == BrokerStatus::Active && b.decommissioning;
                if b.status == status && !kept {
                    return Ok(vec![]);
                }
                b.decommissioning &= !kept;
                b.status = status;
                b.since_ms = now;
                let value = b.clone();
                let mut changes = vec![Change::Broker {
                    broker: *broker,
                    value: Some(value),
                }];
                if status == BrokerStatus::Draining {
                    // Leaderships move at once; replicas move in Reconcile.
                    changes.extend(self.balance_leaders());
                }
                Ok(changes)
            }
            Decommission { broker } => {
                let b = self
                    .brokers
                    .get_mut(broker)
                    .ok_or_else(|| ApplyError::not_found(format!("no broker {broker}")))?;
                if b.decommissioning {
                    return Ok(vec![]);
                }
                b.decommissioning = true;
                if b.status != BrokerStatus::Down {
                    b.status = BrokerStatus::Draining;
                }
                b.since_ms = now;
                let value = b.clone();
                let mut changes = vec![Change::Broker {
                    broker: *broker,
                    value: Some(value),
                }];
                changes.extend(self.balance_leaders());
                changes.extend(self.retire_decommissioned());
                Ok(changes)
            }
            MoveDone { group, broker } => Ok(self.for_each_placement(|p| {
                let before = p.leaving.len();
                if p.group == *group {
                    p.leaving.retain(|b| b != broker);
                }
                p.leaving.len() != before
            })),
            Reconcile {
                grace_ms,
                moves_per_broker_max,
            } => {
                let mut changes = self.replace_replicas(now, *grace_ms, moves);
                let most = match *moves_per_broker_max {
                    0 => crate::rebalance::MOVES_PER_BROKER_DEFAULT,
                    n => n,
                };
                changes.extend(self.rebalance_replicas(most, moves));
                for t in self.tenants.values_mut() {
                    let before = t.keys.len();
                    t.keys.retain(|k| k.retire_at_ms.is_none_or(|r| r > now));
                    if t.keys.len() != before {
                        changes.push(Change::Keys {
                            tenant: t.rules.tenant.clone(),
                        });
                    }
                }
                changes.extend(self.balance_leaders());
                changes.extend(self.retire_decommissioned());
                Ok(changes)
            }
            Rebalance { goal } => {
                if let Some(g) = goal {
                    if let Some(s) = &g.stream {
                        if !self.holds_resource(s) {
                            return Err(ApplyError::not_found(format!("no stream or cache {s}")));
                        }
                    }
                    self.rebalance = Some(crate::rebalance::Goal {
                        since_ms: now,
                        ..g.clone()
                    });
                }
                Ok(self.balance_leaders())
            }
            _ => unreachable!("run routes only broker commands here"),
        }
    }

    /// Every stream and cache whose placement `f` changed, as changes.
    pub(super) fn for_each_placement(
        &mut self,
        mut f: impl FnMut(&mut ShardPlacement) -> bool,
    ) -> Vec<Change> {
        // `f` may move any replica: counted again when next needed.
        self.load = Load::default();
        let mut out = Vec::new();
        for (tn, t) in self.tenants.iter_mut() {
            for (nn, n) in t.namespaces.iter_mut() {
                for (sn, s) in n.streams.iter_mut() {
                    let mut any = false;
                    for p in s.placement.iter_mut() {
                        any |= f(p);
                    }
                    if any {
                        out.push(Change::Stream {
                            tenant: tn.clone(),
                            namespace: nn.clone(),
                            stream: sn.clone(),
                            value: Some(s.clone()),
                        });
                    }
                }
                for (cn, c) in n.caches.iter_mut() {
                    let mut any = false;
                    for p in c.placement.iter_mut() {
                        any |= f(p);
                    }
                    if any {
                        out.push(Change::Cache {
                            tenant: tn.clone(),
                            namespace: nn.clone(),
                            cache: cn.clone(),
                            value: Some(c.clone()),
                        });
                    }
                }
            }
        }
        out
    }

    pub(super) fn balance_leaders(&mut self) -> Vec<Change> {
        let mut cluster = self.cluster();
        self.for_each_placement(|p| {
            // An operator's choice stays, unless its broker is leaving.
            let chosen = p.leader_pinned
                && p.replicas
                    .first()
                    .is_some_and(|b| cluster.get(*b).is_some_and(|c| c.accepting));
            !chosen && cluster.balance_leader(&mut p.replicas)
        })
    }

    /// Replicas on brokers down past the grace period, or draining, get a
    /// replacement; the old replica is listed as leaving until the shard's
    /// leader reports the move done.
    pub(super) fn replace_replicas(&mut self, now: u64, grace_ms: u64, moves: &mut Vec<Move>) -> Vec<Change> {
        let evicted: Vec<u32> = self
            .brokers
            .values()
            .filter(|b| match b.status {
                BrokerStatus::Draining => true,
                BrokerStatus::Down => now.saturating_sub(b.since_ms) >= grace_ms,
                BrokerStatus::Active => false,
            })
            .map(|b| b.registration.id)
            .collect();
        if evicted.is_empty() {
            return Vec::new();
        }
        let mut cluster = self.cluster();
        self.for_each_placement(|p| {
            let mut any = false;
            for gone in evicted.iter().copied() {
                let Some(i) = p.replicas.iter().position(|r| *r == gone) else {
                    continue;
                };
                let Some(new) = cluster.replace(&p.replicas, gone) else {
                    continue;
                };
                move_replica(p, i, new, moves);
                any = true;
            }
            any
        })
    }

    /// Decommissioning brokers no replica is left on (none placed, none
    /// leaving) leave the registry, their ids retired for good.
    pub(super) fn retire_decommissioned(&mut self) -> Vec<Change> {
        let gone: Vec<u32> = self
            .brokers
            .values()
            .filter(|b| b.decommissioning)
            .map(|b| b.registration.id)
            .filter(|id| {
                !self
                    .placements()
                    .any(|p| p.replicas.contains(id) || p.leaving.contains(id))
            })
            .collect();
        gone.into_iter()
            .map(|id| {
                self.brokers.remove(&id);
                self.retired_brokers.insert(id);
                Change::Broker {
                    broker: id,
                    value: None,
                }
            })
            .collect()
    }

    /// Whether `tenant/namespace/name` is a stream or cache.
    fn holds_resource(&self, path: &str) -> bool {
        let mut parts = path.splitn(3, '/');
        let (Some(t), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        self.tenants
            .get(t)
            .and_then(|t| t.namespaces.get(ns))
            .is_some_and(|n| n.streams.contains_key(name) || n.caches.contains_key(name))
    }

    /// The next replica moves of the rebalance in progress (see
    /// `rebalance::plan`), each listed as leaving until its shard's leader
    /// reports it done; the rebalance ends once nothing is left to move
    /// and no move it made is in progress.
    pub(super) fn rebalance_replicas(
        &mut self,
        moves_per_broker_max: u32,
        moves: &mut Vec<Move>,
    ) -> Vec<Change> {
        use crate::rebalance::{plan, Slot};
        let Some(goal) = self.rebalance.clone() else {
            return Vec::new();
        };
        // In `for_each_placement`'s order, so a slot's index finds it there.
        let mut slots = Vec::new();
        let mut stream = 0;
        for (tn, t) in &self.tenants {
            for (nn, n) in &t.namespaces {
                let resources = n
                    .streams
                    .iter()
                    .map(|(sn, s)| (sn, &s.placement))
                    .chain(n.caches.iter().map(|(cn, c)| (cn, &c.placement)));
                for (name, placement) in resources {
                    let in_scope = goal
                        .stream
                        .as_ref()
                        .is_none_or(|s| *s == format!("{tn}/{nn}/{name}"));
                    slots.extend(placement.iter().map(|p| Slot {
                        stream,
                        replicas: p.replicas.clone(),
                        leaving: p.leaving.clone(),
                        in_scope,
                    }));
                    stream += 1;
                }
            }
        }
        let shifts = plan(
            &self.cluster().candidates(),
            &slots,
            goal.strategy,
            moves_per_broker_max,
        );
        if shifts.is_empty() {
            if !slots.iter().any(|s| s.in_scope && !s.leaving.is_empty()) {
                self.rebalance = None;
            }
            return Vec::new();
        }
        let by_slot: BTreeMap<usize, (u32, u32)> = shifts.iter().map(|s| (s.slot, (s.from, s.to))).collect();
        let mut at = 0;
        self.for_each_placement(|p| {
            let shift = by_slot.get(&at).copied();
            at += 1;
            let Some((from, to)) = shift else {
                return false;
            };
            let Some(i) = p.replicas.iter().position(|r| *r == from) else {
                return false;
            };
            move_replica(p, i, to, moves);
            true
        })
    }

    /// The first instant after `now_ms` at which `Reconcile` could decide
    /// otherwise on this same metadata: a down broker's grace ending or a
    /// signing key's retirement (nothing else it decides reads the
    /// clock). `None`: no such instant.
    pub fn reconcile_changes_at(&self, now_ms: u64, grace_ms: u64) -> Option<u64> {
        let graces = self
            .brokers
            .values()
            .filter(|b| b.status == BrokerStatus::Down)
            .map(|b| b.since_ms.saturating_add(grace_ms));
        let retirements = self
            .tenants
            .values()
            .flat_map(|t| t.keys.iter().filter_map(|k| k.retire_at_ms));
        graces.chain(retirements).filter(|at| *at > now_ms).min()
    }

    /// Brokers down or draining that still hold replicas, and shards with
    /// fewer live replicas than their replication factor: what `cluster
    /// status` reports.
    pub fn under_replicated(&self) -> Vec<u64> {
        let live = |b: &u32| {
            self.brokers
                .get(b)
                .is_some_and(|x| x.status != BrokerStatus::Down)
        };
        self.placements()
            .filter(|p| p.replicas.iter().any(|r| !live(r)) || !p.leaving.is_empty())
            .map(|p| p.group)
            .collect()
    }
}

/// Starts moving `p`'s replica `i` to broker `to`: the old one is listed as
/// leaving until the shard's leader reports the move done.
fn move_replica(p: &mut ShardPlacement, i: usize, to: u32, moves: &mut Vec<Move>) {
    let from = std::mem::replace(&mut p.replicas[i], to);
    // A pinned leader that leaves takes its pin with it.
    p.leader_pinned &= i != 0;
    if !p.leaving.contains(&from) {
        p.leaving.push(from);
    }
    moves.push(Move {
        group: p.group,
        from: Some(from),
        to,
    });
}
