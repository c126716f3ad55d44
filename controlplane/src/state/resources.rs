//! Streams and caches: one create and one delete path for both (the
//! `Placed` resources), and where their shards' replicas go.

use super::*;

impl Metadata {
    pub(super) fn run_resources(
        &mut self,
        env: &Envelope,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        match &env.command {
            CreateStream {
                tenant,
                namespace,
                stream,
                spec,
            } => self.create_placed::<Stream>(tenant, namespace, stream, spec, moves),
            UpdateStream {
                tenant,
                namespace,
                stream,
                update,
            } => {
                let n = self.namespace_mut(tenant, namespace)?;
                let s = n.streams.get_mut(stream).ok_or_else(|| {
                    ApplyError::not_found(format!("no stream {tenant}/{namespace}/{stream}"))
                })?;
                let spec = update.apply_to(&s.spec).map_err(ApplyError::invalid)?;
                if spec == s.spec {
                    return Ok(vec![]);
                }
                s.spec = spec;
                Ok(vec![Change::Stream {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    stream: stream.clone(),
                    value: Some(s.clone()),
                }])
            }
            DeleteStream {
                tenant,
                namespace,
                stream,
            } => self.delete_placed::<Stream>(tenant, namespace, stream),
            CreateCache {
                tenant,
                namespace,
                cache,
                spec,
            } => self.create_placed::<Cache>(tenant, namespace, cache, spec, moves),
            DeleteCache {
                tenant,
                namespace,
                cache,
            } => self.delete_placed::<Cache>(tenant, namespace, cache),
            TransferLeader {
                tenant,
                namespace,
                name,
                shard,
                broker,
            } => {
                let n = self.namespace_mut(tenant, namespace)?;
                let path = format!("{tenant}/{namespace}/{name}");
                let placement = match (n.streams.get_mut(name), n.caches.get_mut(name)) {
                    (Some(s), _) => &mut s.placement,
                    (None, Some(c)) => &mut c.placement,
                    (None, None) => return Err(ApplyError::not_found(format!("no stream or cache {path}"))),
                };
                let shards = placement.len();
                let p = placement.get_mut(*shard as usize).ok_or_else(|| {
                    ApplyError::invalid(format!("{path} has {shards} shard(s); there is no shard {shard}"))
                })?;
                let Some(at) = p.replicas.iter().position(|b| b == broker) else {
                    return Err(ApplyError::invalid(format!(
                        "broker {broker} holds no replica of {path} shard {shard} (its replicas: {:?})",
                        p.replicas
                    )));
                };
                if at == 0 && p.leader_pinned {
                    return Ok(vec![]);
                }
                p.replicas.swap(0, at);
                p.leader_pinned = true;
                let value_stream = n.streams.get(name).cloned();
                let change = match value_stream {
                    Some(s) => Change::Stream {
                        tenant: tenant.clone(),
                        namespace: namespace.clone(),
                        stream: name.clone(),
                        value: Some(s),
                    },
                    None => Change::Cache {
                        tenant: tenant.clone(),
                        namespace: namespace.clone(),
                        cache: name.clone(),
                        value: n.caches.get(name).cloned(),
                    },
                };
                // A preferred leadership moved: counted again when next needed.
                self.load = Load::default();
                Ok(vec![change])
            }
            _ => unreachable!("run routes only stream and cache commands here"),
        }
    }

    /// Creates a stream or cache `name` placed on brokers; creating it
    /// again with the same spec changes nothing, with another is refused,
    /// and a name is a stream or a cache, never both.
    pub(super) fn create_placed<P: Placed>(
        &mut self,
        tenant: &str,
        namespace: &str,
        name: &str,
        spec: &P::Spec,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<Change>, ApplyError> {
        if let Some(why) = felix_model::names::stream_name_problem(name) {
            return Err(ApplyError::invalid(format!("{} {name:?}: {why}", P::KIND)));
        }
        P::validate(spec).map_err(ApplyError::invalid)?;
        let n = self.namespace(tenant, namespace)?;
        if P::other_holds(n, name) {
            return Err(ApplyError::conflict(format!(
                "{tenant}/{namespace}/{name} is a {}",
                P::OTHER
            )));
        }
        let (shards, asked_rf) = P::shape(spec);
        if let Some(x) = P::of(n).get(name) {
            // Asking again for the default matches what the default became.
            let rf = if asked_rf == 0 {
                P::shape(x.spec()).1
            } else {
                asked_rf
            };
            // A stored record without a routing routes by FNV-1a.
            let stored = P::routing(x.spec()).unwrap_or_default();
            let asked = P::routing(spec).unwrap_or(stored);
            let (_, stored_rf) = P::shape(x.spec());
            if P::settled(x.spec(), stored_rf, Some(stored)) == P::settled(spec, rf, Some(asked)) {
                return Ok(vec![]);
            }
            return Err(ApplyError::conflict(format!(
                "{} {tenant}/{namespace}/{name} exists with another spec{}",
                P::KIND,
                P::EXISTS_HINT
            )));
        }
        self.check_counts(tenant, namespace, shards)?;
        let rf = if asked_rf == 0 {
            default_rf(self.cluster().usable())
        } else {
            asked_rf
        };
        let placement = self.place(shards, rf, moves)?;
        let routing = P::routing(spec).unwrap_or(felix_model::KeyRouting::FOR_NEW);
        let value = P::placed(P::settled(spec, rf, Some(routing)), placement);
        // Nothing changes before this point: a refusal leaves no trace.
        let n = self.namespace_mut(tenant, namespace)?;
        P::of_mut(n).insert(name.to_owned(), value.clone());
        self.next_group += u64::from(shards);
        for p in P::placement(&value) {
            self.load.count(p, true);
        }
        Ok(vec![P::change(tenant, namespace, name, Some(value))])
    }

    /// Refuses a new stream or cache of `shards` shards that would pass
    /// the tenant's or the namespace's `streams_max` or `shards_max`. A
    /// quota lowered below what exists keeps what exists and refuses
    /// more, as Kubernetes' resource quotas do.
    fn check_counts(&self, tenant: &str, namespace: &str, shards: u32) -> Result<(), ApplyError> {
        let t = self.tenant(tenant)?;
        let n = self.namespace(tenant, namespace)?;
        let limited = |q: &Quotas| q.streams_max.is_some() || q.shards_max.is_some();
        if !limited(&t.spec.quotas) && !limited(&n.spec.quotas) {
            // Nothing to count against (the usual case): no walk over
            // every stream of the tenant per create.
            return Ok(());
        }
        // (streams and caches, their shards)
        let count = |n: &Namespace| {
            let shards: usize = n.streams.values().map(|s| s.placement.len()).sum::<usize>()
                + n.caches.values().map(|c| c.placement.len()).sum::<usize>();
            (n.streams.len() + n.caches.len(), shards)
        };
        let (t_streams, t_shards) = t
            .namespaces
            .values()
            .map(count)
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let (n_streams, n_shards) = count(n);
        let scopes = [
            (format!("tenant {tenant}"), &t.spec.quotas, t_streams, t_shards),
            (
                format!("namespace {tenant}/{namespace}"),
                &n.spec.quotas,
                n_streams,
                n_shards,
            ),
        ];
        for (whose, q, streams, used_shards) in scopes {
            if let Some(max) = q.streams_max {
                if streams as u64 >= u64::from(max) {
                    return Err(ApplyError::quota(format!(
                        "{whose} has {streams} streams and caches; its streams_max is {max}"
                    )));
                }
            }
            if let Some(max) = q.shards_max {
                if used_shards as u64 + u64::from(shards) > u64::from(max) {
                    return Err(ApplyError::quota(format!(
                        "{whose} has {used_shards} shards and {shards} more would pass its shards_max of {max}"
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn delete_placed<P: Placed>(
        &mut self,
        tenant: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, ApplyError> {
        let n = self.namespace_mut(tenant, namespace)?;
        let gone = P::of_mut(n)
            .remove(name)
            .ok_or_else(|| ApplyError::not_found(format!("no {} {tenant}/{namespace}/{name}", P::KIND)))?;
        for p in P::placement(&gone) {
            self.load.count(p, false);
        }
        Ok(vec![P::change(tenant, namespace, name, None)])
    }

    /// Where `shards` new shards' replicas go, with group ids from
    /// `next_group` on (the caller moves `next_group` past them once it
    /// keeps them). Changes nothing.
    pub(super) fn place(
        &mut self,
        shards: u32,
        rf: u32,
        moves: &mut Vec<Move>,
    ) -> Result<Vec<ShardPlacement>, ApplyError> {
        let mut cluster = self.cluster();
        let mut out = Vec::with_capacity(shards as usize);
        for group in (self.next_group..).take(shards as usize) {
            let replicas = cluster
                .place(rf)
                .map_err(|e| ApplyError::conflict(e.to_string()))?;
            moves.extend(replicas.iter().map(|to| Move {
                group,
                from: None,
                to: *to,
            }));
            let founders = replicas
                .iter()
                .filter_map(|b| Some(self.brokers.get(b)?.registration.node_id))
                .filter(|id| *id != 0)
                .collect();
            out.push(ShardPlacement {
                group,
                replicas,
                leaving: Vec::new(),
                leader_pinned: false,
                founders,
            });
        }
        Ok(out)
    }
}

/// The replication factor of a create that gave none: three copies where
/// there are three brokers to hold them, else one per broker (and at least
/// one, so a cluster with no broker refuses the create as too small).
pub(super) fn default_rf(usable_brokers: usize) -> u32 {
    u32::try_from(usable_brokers)
        .unwrap_or(u32::MAX)
        .clamp(1, REPLICATION_FACTOR_DEFAULT)
}
