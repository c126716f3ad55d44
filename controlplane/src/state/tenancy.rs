//! Tenants and namespaces: creating, changing and deleting them.

use super::access::rotate;
use super::encryption::{data_keys_change, settle_data_keys};
use super::*;

impl Metadata {
    pub(super) fn run_tenancy(&mut self, env: &Envelope) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        let now = env.now_ms;
        match &env.command {
            PutTenant {
                tenant,
                spec,
                key,
                keep_quotas,
                data_key,
            } => {
                check_names(&[("tenant", tenant)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                let mut spec = spec.clone();
                if *keep_quotas {
                    spec.quotas = self
                        .tenants
                        .get(tenant)
                        .map(|t| t.spec.quotas)
                        .unwrap_or_default();
                }
                let spec = &spec;
                let data_key = data_key.as_deref();
                if let Some(t) = self.tenants.get_mut(tenant) {
                    // Applied to a copy: a refusal below leaves nothing.
                    let before = std::mem::replace(&mut t.spec, spec.clone());
                    let keyed = settle_data_keys(t, &mut self.next_data_key_id, data_key, now)?;
                    let mut changes = Vec::new();
                    if before != *spec {
                        changes.push(Change::Tenant {
                            tenant: tenant.clone(),
                            quotas: Some(spec.quotas),
                        });
                    }
                    // Turned off, the keys stay (sealed records need them);
                    // brokers stop sealing.
                    if keyed || before.encryption != spec.encryption {
                        changes.push(data_keys_change(tenant, t));
                    }
                    return Ok(changes);
                }
                let key = key
                    .as_ref()
                    .ok_or_else(|| ApplyError::invalid("a new tenant needs its first signing key"))?;
                let mut t = Tenant {
                    spec: spec.clone(),
                    rules: Rules::new(tenant),
                    ..Tenant::default()
                };
                settle_data_keys(&mut t, &mut self.next_data_key_id, data_key, now)?;
                self.found_tenant(tenant, t, key, now)
            }
            DeleteTenant { tenant } => {
                let t = self.tenant(tenant)?;
                if let Some(n) = t.namespaces.keys().next() {
                    return Err(ApplyError::conflict(format!(
                        "tenant {tenant:?} still has namespaces ({n:?} …); delete them first"
                    )));
                }
                self.tenants.remove(tenant);
                // Its bridges go first: brokers stop carrying before they
                // forget the tenant.
                let mut changes = self.drop_tenant_bridges(tenant);
                changes.push(Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: None,
                });
                Ok(changes)
            }
            PutNamespace {
                tenant,
                namespace,
                spec,
                keep_quotas,
            } => {
                check_names(&[("namespace", namespace)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                let t = self.tenant_mut(tenant)?;
                let mut spec = spec.clone();
                if *keep_quotas {
                    spec.quotas = t
                        .namespaces
                        .get(namespace)
                        .map(|n| n.spec.quotas)
                        .unwrap_or_default();
                }
                let spec = &spec;
                match t.namespaces.get_mut(namespace) {
                    Some(n) if n.spec == *spec => return Ok(vec![]),
                    Some(n) => n.spec = spec.clone(),
                    None => {
                        t.namespaces.insert(
                            namespace.clone(),
                            Namespace {
                                spec: spec.clone(),
                                ..Namespace::default()
                            },
                        );
                    }
                }
                Ok(vec![Change::Namespace {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    quotas: Some(spec.quotas),
                }])
            }
            DeleteNamespace { tenant, namespace } => {
                let n = self.namespace(tenant, namespace)?;
                if let Some(s) = n.streams.keys().chain(n.caches.keys()).next() {
                    return Err(ApplyError::conflict(format!(
                        "namespace {tenant}/{namespace} still has streams or caches ({s:?} …); delete them first"
                    )));
                }
                self.tenant_mut(tenant)?.namespaces.remove(namespace);
                Ok(vec![Change::Namespace {
                    tenant: tenant.clone(),
                    namespace: namespace.clone(),
                    quotas: None,
                }])
            }
            _ => unreachable!("run routes only tenant and namespace commands here"),
        }
    }

    /// Records a new tenant `t` with its first signing key (and its data
    /// keys, when it has encryption).
    pub(super) fn found_tenant(
        &mut self,
        tenant: &str,
        mut t: Tenant,
        key: &SigningKey,
        now: u64,
    ) -> Result<Vec<Change>, ApplyError> {
        rotate(&mut t, key, now, 0)?;
        let mut changes = vec![
            Change::Tenant {
                tenant: tenant.to_owned(),
                quotas: Some(t.spec.quotas),
            },
            Change::Keys {
                tenant: tenant.to_owned(),
            },
        ];
        if t.spec.encryption.is_some() || !t.data_keys.is_empty() {
            changes.push(data_keys_change(tenant, &t));
        }
        self.tenants.insert(tenant.to_owned(), t);
        Ok(changes)
    }
}
