//! Who may do what: signing keys and their rotation, upstream issuers,
//! RBAC policies and groupings, and a tenant's one-time bootstrap.

use super::*;

impl Metadata {
    /// Refuses an RBAC edit its caller's grants do not cover, against the
    /// current state and without proposing it: a token without the right
    /// must not be able to fill the capped audit log with its refusals.
    /// `apply` checks again (the rules may change in between).
    pub fn refuses(&self, command: &Command) -> Result<(), ApplyError> {
        use Command::*;
        let tenant = match command {
            AddPolicy { tenant, .. }
            | RemovePolicy { tenant, .. }
            | AddGrouping { tenant, .. }
            | RemoveGrouping { tenant, .. } => tenant,
            _ => return Ok(()),
        };
        let mut rules = self.tenant(tenant)?.rules.clone();
        let checked = match command {
            AddPolicy { caller, policy, .. } => {
                check_in_tenant(tenant, &policy.object)?;
                rules.add_policy(caller, policy.clone())
            }
            RemovePolicy { caller, policy, .. } => rules.remove_policy(caller, policy),
            AddGrouping { caller, grouping, .. } => rules.add_grouping(caller, grouping.clone()),
            RemoveGrouping { caller, grouping, .. } => rules.remove_grouping(caller, grouping),
            _ => return Ok(()),
        };
        match checked.map_err(ApplyError::from) {
            // Bad input is refused by apply, and audited.
            Err(e) if e.kind == ErrorKind::Forbidden => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) fn run_access(&mut self, env: &Envelope) -> Result<Vec<Change>, ApplyError> {
        use Command::*;
        let now = env.now_ms;
        match &env.command {
            PutIdpIssuer { tenant, issuer } => {
                issuer.validate().map_err(ApplyError::invalid)?;
                let t = self.tenant_mut(tenant)?;
                if t.idp_issuers.get(&issuer.issuer) == Some(issuer) {
                    return Ok(vec![]);
                }
                t.idp_issuers.insert(issuer.issuer.clone(), issuer.clone());
                // Issuers are not in the brokers' view; the version still
                // moves so the change is ordered and audited.
                Ok(vec![Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: Some(t.spec.quotas),
                }])
            }
            DeleteIdpIssuer { tenant, issuer } => {
                let t = self.tenant_mut(tenant)?;
                t.idp_issuers.remove(issuer).ok_or_else(|| {
                    ApplyError::not_found(format!("tenant {tenant:?} has no issuer {issuer:?}"))
                })?;
                Ok(vec![Change::Tenant {
                    tenant: tenant.clone(),
                    quotas: Some(t.spec.quotas),
                }])
            }
            RotateKey {
                tenant,
                key,
                overlap_ms,
            } => {
                let t = self.tenant_mut(tenant)?;
                rotate(t, key, now, *overlap_ms)?;
                Ok(vec![Change::Keys {
                    tenant: tenant.clone(),
                }])
            }
            AddPolicy {
                tenant,
                caller,
                policy,
            } => {
                let t = self.tenant_mut(tenant)?;
                check_in_tenant(tenant, &policy.object)?;
                let added = t.rules.add_policy(caller, policy.clone())?;
                Ok(rbac_change(tenant, added))
            }
            RemovePolicy {
                tenant,
                caller,
                policy,
            } => {
                let t = self.tenant_mut(tenant)?;
                let removed = t.rules.remove_policy(caller, policy)?;
                if !removed {
                    return Err(ApplyError::not_found("no such policy"));
                }
                Ok(rbac_change(tenant, true))
            }
            AddGrouping {
                tenant,
                caller,
                grouping,
            } => {
                let t = self.tenant_mut(tenant)?;
                let added = t.rules.add_grouping(caller, grouping.clone())?;
                Ok(rbac_change(tenant, added))
            }
            RemoveGrouping {
                tenant,
                caller,
                grouping,
            } => {
                let t = self.tenant_mut(tenant)?;
                let removed = t.rules.remove_grouping(caller, grouping)?;
                if !removed {
                    return Err(ApplyError::not_found("no such grouping"));
                }
                Ok(rbac_change(tenant, true))
            }
            Bootstrap {
                tenant,
                spec,
                issuers,
                admins,
                key,
            } => {
                check_names(&[("tenant", tenant)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                if spec.encryption.is_some() {
                    // Its command carries no data key: turned on after.
                    return Err(ApplyError::invalid(format!(
                        "bootstrap does not turn encryption on; set it with PUT /v1/tenants/{tenant} once the tenant exists"
                    )));
                }
                if self.tenants.contains_key(tenant) {
                    return Err(ApplyError::conflict(format!(
                        "tenant {tenant:?} exists; bootstrap runs once per tenant"
                    )));
                }
                if admins.is_empty() {
                    return Err(ApplyError::invalid(
                        "initial_admin_principals must name at least one principal",
                    ));
                }
                let mut t = Tenant {
                    spec: spec.clone(),
                    rules: Rules::new(tenant),
                    ..Tenant::default()
                };
                for i in issuers {
                    i.validate().map_err(ApplyError::invalid)?;
                    t.idp_issuers.insert(i.issuer.clone(), i.clone());
                }
                let all = tenant_admin_grants(tenant);
                for admin in admins {
                    for g in &all {
                        t.rules.add_policy(
                            &all,
                            Policy {
                                subject: admin.clone(),
                                object: g.object.clone(),
                                action: g.action,
                            },
                        )?;
                    }
                }
                self.found_tenant(tenant, t, key, now)
            }
            _ => unreachable!("run routes only access commands here"),
        }
    }

    /// The public keys a tenant's tokens verify with, as a JWKS document.
    pub fn jwks(&self, tenant: &str) -> Result<serde_json::Value, ApplyError> {
        let t = self.tenant(tenant)?;
        let keys: Vec<serde_json::Value> = t
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.kid, "x": k.public,
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }
}

fn rbac_change(tenant: &str, changed: bool) -> Vec<Change> {
    if !changed {
        return vec![];
    }
    // Rules are not in the brokers' view (tokens carry permissions); the
    // version moves so the change is ordered and audited.
    vec![Change::Keys {
        tenant: tenant.to_owned(),
    }]
}

fn check_in_tenant(tenant: &str, object: &Object) -> Result<(), ApplyError> {
    if object.tenant() != tenant {
        return Err(ApplyError {
            kind: ErrorKind::Forbidden,
            message: format!("{object} is not inside tenant {tenant:?}"),
        });
    }
    Ok(())
}

pub(super) fn rotate(t: &mut Tenant, key: &SigningKey, now: u64, overlap_ms: u64) -> Result<(), ApplyError> {
    if key.kid.is_empty() || t.keys.iter().any(|k| k.kid == key.kid) {
        return Err(ApplyError::conflict(format!(
            "key id {:?} is empty or taken",
            key.kid
        )));
    }
    if t.keys.len() >= KEYS_PER_TENANT_MAX {
        return Err(ApplyError::conflict(format!(
            "the tenant has {KEYS_PER_TENANT_MAX} keys; wait for the oldest to retire"
        )));
    }
    if let Some(signer) = t.keys.last_mut() {
        signer.retire_at_ms.get_or_insert(now + overlap_ms);
    }
    t.keys.push(SigningKey {
        created_ms: now,
        retire_at_ms: None,
        ..key.clone()
    });
    Ok(())
}
