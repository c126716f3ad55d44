//! Publish quotas per tenant and per namespace, as token buckets: counts
//! and `now` in, a verdict out (no clock, no I/O).
//!
//! Like Kafka's client quotas, a quota holds per broker: a tenant allowed
//! 1000 records/s may publish 1000 records/s to each broker leading its
//! shards. A bucket holds one second's worth and may go into debt by one
//! batch, so a batch larger than a second's worth is still accepted once
//! the bucket is full, and the debt is then paid off before the next.

use std::collections::HashMap;

use felix_controlplane::model::Quotas;

/// Tenants (and namespaces) whose buckets are kept; more are refused a
/// bucket and so not limited, rather than growing memory without bound.
pub const BUCKETS_MAX: usize = 100_000;
/// Longest wait a refusal asks for.
pub const RETRY_AFTER_MS_MAX: u32 = 1_000;

/// One rate: `rate_per_s` units a second, up to one second's worth saved.
#[derive(Debug, Clone)]
struct Bucket {
    rate_per_s: u64,
    /// Units available, in thousandths (so refills by the millisecond are
    /// exact); negative is debt.
    milli: i128,
    last_ms: i64,
}

impl Bucket {
    fn new(rate_per_s: u64, now_ms: i64) -> Bucket {
        Bucket {
            rate_per_s,
            milli: i128::from(rate_per_s) * 1000,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = i128::from((now_ms - self.last_ms).max(0));
        let cap = i128::from(self.rate_per_s) * 1000;
        self.milli = (self.milli + elapsed * i128::from(self.rate_per_s)).min(cap);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// How long until the bucket is out of debt (0: it may take now).
    fn wait_ms(&self) -> u32 {
        if self.milli > 0 {
            return 0;
        }
        let rate = i128::from(self.rate_per_s.max(1));
        let ms = (-self.milli + rate) / rate; // at least 1 ms
        u32::try_from(ms).unwrap_or(u32::MAX).min(RETRY_AFTER_MS_MAX)
    }

    fn take(&mut self, units: u64) {
        self.milli -= i128::from(units) * 1000;
    }
}

/// A tenant's or namespace's two buckets, with the quotas they follow.
#[derive(Debug, Clone)]
struct Limit {
    quotas: Quotas,
    records: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Limit {
    fn new(quotas: Quotas, now_ms: i64) -> Limit {
        Limit {
            quotas,
            records: quotas.publish_records_per_s_max.map(|r| Bucket::new(r, now_ms)),
            bytes: quotas.publish_bytes_per_s_max.map(|r| Bucket::new(r, now_ms)),
        }
    }

    fn buckets(&mut self) -> impl Iterator<Item = (&mut Bucket, bool)> {
        let r = self.records.as_mut().map(|b| (b, true));
        let b = self.bytes.as_mut().map(|b| (b, false));
        r.into_iter().chain(b)
    }
}

/// Every quota this broker enforces.
#[derive(Debug, Default)]
pub struct QuotaTable {
    tenants: HashMap<String, Limit>,
    namespaces: HashMap<(String, String), Limit>,
    /// The broker file's `[quotas]`: for a tenant with no quota of its own.
    fallback: Option<Quotas>,
    /// The fallback's buckets, one per tenant, made on first publish.
    fallback_buckets: HashMap<String, Limit>,
    /// The quotas on what is held rather than on a rate.
    pub usage: super::usage::UsageTable,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    /// `tenant acme` or `namespace acme/prod`.
    pub whose: String,
    /// `records` or `bytes`.
    pub what: &'static str,
    pub retry_after_ms: u32,
}

impl QuotaTable {
    /// Sets (or with no limits, clears) a tenant's quotas. Unchanged quotas
    /// keep their buckets, so a repeated feed snapshot does not refill them.
    pub fn set_tenant(&mut self, tenant: &str, q: Option<Quotas>, now_ms: i64) {
        self.usage.set(tenant, q);
        set(&mut self.tenants, tenant.to_owned(), q, now_ms);
    }

    pub fn set_namespace(&mut self, tenant: &str, namespace: &str, q: Option<Quotas>, now_ms: i64) {
        self.usage.set(&format!("{tenant}/{namespace}"), q);
        set(
            &mut self.namespaces,
            (tenant.to_owned(), namespace.to_owned()),
            q,
            now_ms,
        );
    }

    /// Whether no publish rate is limited (the common case, checked first).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.namespaces.is_empty() && self.fallback.is_none()
    }

    /// Sets the quotas of tenants the control plane gives none (`None`:
    /// those are not limited). A change starts their buckets afresh.
    pub fn set_fallback(&mut self, q: Option<Quotas>) {
        let q = q.filter(Quotas::limits_rate);
        if q != self.fallback {
            self.fallback = q;
            self.fallback_buckets.clear();
        }
    }

    /// Admits a publish of `records` records and `bytes` bytes, or says
    /// which quota it is over and when to retry. A refused publish takes
    /// nothing from any bucket.
    pub fn admit(
        &mut self,
        tenant: &str,
        namespace: &str,
        records: u64,
        bytes: u64,
        now_ms: i64,
    ) -> Result<(), OverQuota> {
        if !self.tenants.contains_key(tenant) && !self.fallback_buckets.contains_key(tenant) {
            if let Some(f) = self.fallback {
                if self.fallback_buckets.len() < BUCKETS_MAX {
                    self.fallback_buckets
                        .insert(tenant.to_owned(), Limit::new(f, now_ms));
                }
            }
        }
        let t = match self.tenants.get_mut(tenant) {
            Some(t) => Some(t),
            None => self.fallback_buckets.get_mut(tenant),
        };
        let n = self
            .namespaces
            .get_mut(&(tenant.to_owned(), namespace.to_owned()));
        let mut limits: Vec<(String, &mut Limit)> = Vec::with_capacity(2);
        if let Some(l) = t {
            limits.push((format!("tenant {tenant}"), l));
        }
        if let Some(l) = n {
            limits.push((format!("namespace {tenant}/{namespace}"), l));
        }
        for (whose, l) in &mut limits {
            for (b, is_records) in l.buckets() {
                b.refill(now_ms);
                let wait = b.wait_ms();
                if wait > 0 {
                    return Err(OverQuota {
                        whose: whose.clone(),
                        what: if is_records { "records" } else { "bytes" },
                        retry_after_ms: wait,
                    });
                }
            }
        }
        for (_, l) in limits {
            for (b, is_records) in l.buckets() {
                b.take(if is_records { records } else { bytes });
            }
        }
        Ok(())
    }
}

fn set<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Limit>, key: K, q: Option<Quotas>, now_ms: i64) {
    let q = q.filter(Quotas::limits_rate);
    match q {
        None => {
            map.remove(&key);
        }
        Some(q) => {
            if map.get(&key).is_some_and(|l| l.quotas == q) {
                return;
            }
            if map.len() >= BUCKETS_MAX && !map.contains_key(&key) {
                tracing::warn!("{BUCKETS_MAX} quota buckets already kept; a further quota is not enforced");
                return;
            }
            map.insert(key, Limit::new(q, now_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(records: Option<u64>, bytes: Option<u64>) -> Option<Quotas> {
        Some(Quotas {
            publish_records_per_s_max: records,
            publish_bytes_per_s_max: bytes,
            ..Quotas::default()
        })
    }

    #[test]
    fn a_tenant_gets_its_rate_and_is_told_when_to_come_back() {
        let mut t = QuotaTable::default();
        t.set_tenant("acme", q(Some(100), None), 0);
        // One second's worth at once, then the bucket is empty.
        for _ in 0..10 {
            t.admit("acme", "prod", 10, 0, 0).unwrap();
        }
        let e = t.admit("acme", "prod", 10, 0, 0).unwrap_err();
        assert_eq!(e.whose, "tenant acme");
        assert_eq!(e.what, "records");
        assert!(e.retry_after_ms >= 1 && e.retry_after_ms <= 20, "{e:?}");
        // 100 ms later, 10 records' worth has come back.
        t.admit("acme", "prod", 10, 0, 100).unwrap();
        assert!(t.admit("acme", "prod", 10, 0, 100).is_err());
        // Other tenants are not limited.
        t.admit("other", "prod", 1_000_000, 0, 100).unwrap();
    }

    #[test]
    fn over_a_second_the_admitted_rate_is_the_quota() {
        let mut t = QuotaTable::default();
        t.set_namespace("acme", "prod", q(None, Some(10_000)), 0);
        let mut admitted = 0u64;
        for ms in 0..5_000 {
            while t.admit("acme", "prod", 1, 100, ms).is_ok() {
                admitted += 100;
            }
        }
        // 5 s at 10 kB/s, plus the first second's burst.
        assert!((50_000..=60_100).contains(&admitted), "{admitted}");
        // A namespace quota does not touch the tenant's other namespaces.
        t.admit("acme", "dev", 1, 1 << 30, 5_000).unwrap();
    }

    #[test]
    fn a_batch_over_a_seconds_worth_passes_once_then_pays_its_debt() {
        let mut t = QuotaTable::default();
        t.set_tenant("acme", q(None, Some(1_000)), 0);
        t.admit("acme", "ns", 1, 5_000, 0).unwrap();
        let e = t.admit("acme", "ns", 1, 1, 1).unwrap_err();
        assert_eq!(e.retry_after_ms, RETRY_AFTER_MS_MAX);
        assert!(t.admit("acme", "ns", 1, 1, 3_000).is_err());
        t.admit("acme", "ns", 1, 1, 4_100).unwrap();
    }

    #[test]
    fn a_refusal_takes_nothing_and_a_repeated_quota_keeps_its_bucket() {
        let mut t = QuotaTable::default();
        t.set_tenant("acme", q(Some(10), None), 0);
        t.set_namespace("acme", "prod", q(Some(5), None), 0);
        t.admit("acme", "prod", 5, 0, 0).unwrap();
        // The namespace refuses; the tenant bucket keeps its 5.
        assert_eq!(
            t.admit("acme", "prod", 1, 0, 0).unwrap_err().whose,
            "namespace acme/prod"
        );
        t.admit("acme", "other", 5, 0, 0).unwrap();
        assert!(t.admit("acme", "other", 1, 0, 0).is_err());
        // The same quota again (a feed snapshot) does not refill.
        t.set_tenant("acme", q(Some(10), None), 0);
        assert!(t.admit("acme", "other", 1, 0, 0).is_err());
        // Lifting it does.
        t.set_tenant("acme", None, 0);
        t.admit("acme", "other", 1_000, 0, 0).unwrap();
    }

    #[test]
    fn the_fallback_limits_each_tenant_without_a_quota_of_its_own() {
        let mut t = QuotaTable::default();
        t.set_fallback(q(Some(10), None));
        t.set_tenant("big", q(Some(1_000), None), 0);
        t.admit("a", "ns", 10, 0, 0).unwrap();
        assert_eq!(t.admit("a", "ns", 1, 0, 0).unwrap_err().whose, "tenant a");
        // Each tenant has its own bucket; a tenant's own quota wins.
        t.admit("b", "ns", 10, 0, 0).unwrap();
        t.admit("big", "ns", 500, 0, 0).unwrap();
        // A new fallback starts afresh; none lifts the limit.
        t.set_fallback(q(Some(20), None));
        t.admit("a", "ns", 20, 0, 0).unwrap();
        assert!(t.admit("a", "ns", 1, 0, 0).is_err());
        t.set_fallback(None);
        t.admit("a", "ns", 1_000_000, 0, 0).unwrap();
    }
}
