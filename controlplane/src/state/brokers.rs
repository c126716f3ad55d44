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
                    },
                    None => Broker {
                        registration: registration.clone(),
                        status: BrokerStatus::Active,
                        since_ms: now,
                    },
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
                if b.status == *status {
                    return Ok(vec![]);
                }
                b.status = *status;
                b.since_ms = now;
                let value = b.clone();
                let mut changes = vec![Change::Broker {
                    broker: *broker,
                    value: Some(value),
                }];
                if *status == BrokerStatus::Draining {
                    // Leaderships move at once; replicas move in Reconcile.
                    changes.extend(self.balance_leaders());
                }
                Ok(changes)
            }
            MoveDone { group, broker } => Ok(self.for_each_placement(|p| {
                let before = p.leaving.len();
                if p.group == *group {
                    p.leaving.retain(|b| b != broker);
                }
                p.leaving.len() != before
            })),
            Reconcile { grace_ms } => {
                let mut changes = self.replace_replicas(now, *grace_ms, moves);
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
                Ok(changes)
            }
            Rebalance => Ok(self.balance_leaders()),
            _ => unreachable!("run routes only broker commands here"),
        }
    }

    /// Every stream and cache whose placement `f` changed, as changes.
    pub(super) fn for_each_placement(
        &mut self,
        mut f: impl FnMut(&mut ShardPlacement) -> bool,
    ) -> Vec<Change> {
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
        self.for_each_placement(|p| cluster.balance_leader(&mut p.replicas))
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
                p.replicas[i] = new;
                if !p.leaving.contains(&gone) {
                    p.leaving.push(gone);
                }
                moves.push(Move {
                    group: p.group,
                    from: Some(gone),
                    to: new,
                });
                any = true;
            }
            any
        })
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
