//! Usage quotas (storage, cache bytes, subscriptions per tenant and
//! namespace): whether a write or a subscription still fits, from the
//! cluster's usage and this broker's own, with no clock and no I/O.
//!
//! A tenant's usage is spread over brokers, so no broker sees it all at
//! once. Each reports, in its heartbeat, what the shards it leads hold
//! and the subscriptions open on it, per namespace; the control plane
//! answers with the sums. A broker then counts the others' part from
//! that answer and its own part from its latest look at itself:
//! `cluster − reported + local`. Its own growth is seen within
//! [`LOCAL_REFRESH_MS`] and the others' within a heartbeat interval, so a
//! quota can be overshot by what the tenant writes in that time (as with
//! Pulsar's backlog quotas, which are checked periodically too); a
//! subscription is counted from the live figure as it opens.

use std::collections::{BTreeMap, HashMap};

use felix_controlplane::model::{Adding, Quotas, Usage};

/// How often a broker looks again at what it holds for scopes with a
/// usage quota.
pub const LOCAL_REFRESH_MS: u64 = 1_000;
/// Scopes (tenants plus namespaces) with a usage quota that are kept;
/// more are not enforced (and a warning is logged), rather than growing
/// memory without bound.
pub const SCOPES_MAX: usize = 100_000;

/// Why a write or subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRefusal {
    /// `tenant acme` or `namespace acme/prod`.
    pub whose: String,
    pub quota: &'static str,
    pub used: u64,
    pub limit: u64,
}

impl std::fmt::Display for UsageRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.quota.contains("bytes") {
            " bytes"
        } else {
            ""
        };
        write!(
            f,
            "{} uses {}{unit} of its {} of {}{unit}",
            self.whose, self.used, self.quota, self.limit
        )
    }
}

#[derive(Debug, Default)]
pub struct UsageTable {
    /// Quotas with a usage limit, by tenant and by `tenant/namespace`.
    quotas: HashMap<String, Quotas>,
    /// The cluster's usage per scope, as the control plane last answered.
    cluster: HashMap<String, Usage>,
    /// What this broker reported per `tenant/namespace` in the heartbeat
    /// that answer was for.
    reported: BTreeMap<String, Usage>,
    /// What this broker holds per `tenant/namespace`, as last looked at.
    local: BTreeMap<String, Usage>,
}

impl UsageTable {
    /// Sets (or with no usage limit, clears) a tenant's or a namespace's
    /// (`tenant/namespace`) quotas.
    pub fn set(&mut self, scope: &str, q: Option<Quotas>) {
        match q.filter(Quotas::limits_usage) {
            None => {
                self.quotas.remove(scope);
            }
            Some(q) => {
                if self.quotas.len() >= SCOPES_MAX && !self.quotas.contains_key(scope) {
                    tracing::warn!("{SCOPES_MAX} usage quotas already kept; a further one is not enforced");
                    return;
                }
                self.quotas.insert(scope.to_owned(), q);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    /// Whether this broker must look at and report what it holds of
    /// `tenant/namespace` (its tenant's or its own usage is limited).
    pub fn watches(&self, tenant: &str, namespace: &str) -> bool {
        !self.quotas.is_empty()
            && (self.quotas.contains_key(tenant)
                || self.quotas.contains_key(&format!("{tenant}/{namespace}")))
    }

    /// What this broker now holds, per watched `tenant/namespace`.
    pub fn set_local(&mut self, local: BTreeMap<String, Usage>) {
        self.local = local;
    }

    pub fn local(&self) -> &BTreeMap<String, Usage> {
        &self.local
    }

    /// A heartbeat carried `reported` and was answered with `cluster`.
    pub fn answered(&mut self, reported: BTreeMap<String, Usage>, cluster: HashMap<String, Usage>) {
        self.reported = reported;
        self.cluster = cluster;
    }

    /// Whether `adding` to `tenant/namespace` fits every quota of the
    /// tenant and the namespace. `live_subscriptions` (tenant, namespace)
    /// replaces the local subscription counts when given (they are
    /// counted as a subscription opens, not when last looked at).
    pub fn admit(
        &self,
        tenant: &str,
        namespace: &str,
        adding: Adding,
        live_subscriptions: Option<(u64, u64)>,
    ) -> Result<(), UsageRefusal> {
        if self.quotas.is_empty() {
            return Ok(());
        }
        let ns_key = format!("{tenant}/{namespace}");
        let prefix = format!("{tenant}/");
        let scopes = [
            (
                tenant,
                format!("tenant {tenant}"),
                live_subscriptions.map(|l| l.0),
            ),
            (
                ns_key.as_str(),
                format!("namespace {ns_key}"),
                live_subscriptions.map(|l| l.1),
            ),
        ];
        for (scope, whose, live) in scopes {
            let Some(q) = self.quotas.get(scope) else {
                continue;
            };
            // This broker's part of a tenant is the sum of its namespaces.
            let mine = |m: &BTreeMap<String, Usage>| -> Usage {
                let mut sum = Usage::default();
                if scope == tenant {
                    for (_, u) in m
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                    {
                        sum.add(u);
                    }
                } else if let Some(u) = m.get(scope) {
                    sum.add(u);
                }
                sum
            };
            let cluster = self.cluster.get(scope).copied().unwrap_or_default();
            let reported = mine(&self.reported);
            let mut local = mine(&self.local);
            if let Some(live) = live {
                local.subscriptions = live;
            }
            let others = |c: u64, r: u64, l: u64| c.saturating_sub(r).saturating_add(l);
            let used = Usage {
                storage_bytes: others(cluster.storage_bytes, reported.storage_bytes, local.storage_bytes),
                cache_bytes: others(cluster.cache_bytes, reported.cache_bytes, local.cache_bytes),
                subscriptions: others(cluster.subscriptions, reported.subscriptions, local.subscriptions),
            };
            if let Some((quota, used, limit)) = used.reached(q, adding) {
                return Err(UsageRefusal {
                    whose,
                    quota,
                    used,
                    limit,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(max: u64) -> Option<Quotas> {
        Some(Quotas {
            storage_bytes_max: Some(max),
            ..Quotas::default()
        })
    }

    fn bytes(storage_bytes: u64) -> Usage {
        Usage {
            storage_bytes,
            ..Usage::default()
        }
    }

    #[test]
    fn the_others_part_comes_from_the_cluster_and_this_brokers_from_its_latest_look() {
        let mut t = UsageTable::default();
        t.set("acme", storage(1000));
        assert!(t.watches("acme", "prod") && !t.watches("other", "prod"));
        // This broker reported 300 of a cluster total of 900.
        t.answered(
            [("acme/prod".to_string(), bytes(300))].into(),
            [("acme".to_string(), bytes(900))].into(),
        );
        t.set_local([("acme/prod".to_string(), bytes(300))].into());
        t.admit("acme", "prod", Adding::StreamBytes, None).unwrap();
        // It has since grown by 100: 600 elsewhere + 400 here reaches 1000.
        t.set_local([("acme/prod".to_string(), bytes(400))].into());
        let e = t.admit("acme", "dev", Adding::StreamBytes, None).unwrap_err();
        assert_eq!((e.quota, e.used, e.limit), ("storage_bytes_max", 1000, 1000));
        assert_eq!(
            e.to_string(),
            "tenant acme uses 1000 bytes of its storage_bytes_max of 1000 bytes"
        );
        // Subscriptions are not bytes.
        t.admit("acme", "prod", Adding::Subscription, Some((0, 0)))
            .unwrap();
        // Another tenant is not limited by acme's quota.
        t.admit("acmex", "prod", Adding::StreamBytes, None).unwrap();
    }

    #[test]
    fn a_namespace_and_its_tenant_are_each_held_to_their_own_quota() {
        let mut t = UsageTable::default();
        t.set(
            "acme/prod",
            Some(Quotas {
                subscribe_connections_max: Some(2),
                cache_memory_bytes_max: Some(10),
                ..Quotas::default()
            }),
        );
        t.answered(
            BTreeMap::new(),
            [(
                "acme/prod".to_string(),
                Usage {
                    subscriptions: 1,
                    cache_bytes: 10,
                    ..Usage::default()
                },
            )]
            .into(),
        );
        // One open elsewhere and one here: full.
        let e = t
            .admit("acme", "prod", Adding::Subscription, Some((1, 1)))
            .unwrap_err();
        assert_eq!(e.whose, "namespace acme/prod");
        t.admit("acme", "prod", Adding::Subscription, Some((0, 0)))
            .unwrap();
        // Cache bytes limit cache writes, not a stream's.
        assert_eq!(
            t.admit("acme", "prod", Adding::CacheBytes, None)
                .unwrap_err()
                .quota,
            "cache_memory_bytes_max"
        );
        t.admit("acme", "prod", Adding::StreamBytes, None).unwrap();
        t.admit("acme", "dev", Adding::CacheBytes, None).unwrap();
        // A quota cleared is no longer enforced.
        t.set("acme/prod", None);
        assert!(t.is_empty());
        t.admit("acme", "prod", Adding::CacheBytes, None).unwrap();
    }
}
