//! Tenants' encryption at rest: their data keys, made when encryption is
//! turned on or moves to another master key, and rotated (on request, or
//! by the leader on schedule). The material comes in the command (the
//! proposer draws it); apply only records it.

use super::*;

impl Metadata {
    pub(super) fn run_encryption(&mut self, env: &Envelope) -> Result<Vec<Change>, ApplyError> {
        let Command::RotateDataKey {
            tenant,
            material,
            due_only,
        } = &env.command
        else {
            unreachable!("run routes only data key commands here")
        };
        let now = env.now_ms;
        let t = self
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| ApplyError::not_found(format!("no tenant {tenant:?}")))?;
        let Some(e) = &t.spec.encryption else {
            return Err(ApplyError::conflict(format!(
                "tenant {tenant:?} has no encryption, so no data key to rotate; \
                 turn it on with its spec's \"encryption\": {{\"key_id\": ...}}"
            )));
        };
        if *due_only && !t.data_key_due(now) {
            return Ok(vec![]);
        }
        let master = e.key_id.clone();
        add_data_key(t, &mut self.next_data_key_id, &master, material, now)?;
        Ok(vec![data_keys_change(tenant, t)])
    }

    /// Empties the data keys out of the feed's earlier changes of
    /// `tenant`, just deleted: its materials must not outlive it in the
    /// replicated state (crypto-shredding). A broker replaying them sees
    /// the deletion after them in the same answer.
    pub(super) fn forget_data_keys(&mut self, tenant: &str) {
        for v in &mut self.changes {
            if let Change::DataKeys { tenant: t, keys, .. } = &mut v.change {
                if t == tenant {
                    keys.clear();
                }
            }
        }
    }
}

/// Gives `t` a data key of `material` when its encryption is on and it has
/// no data key under the spec's master key as its newest (encryption just
/// turned on, or moved to another master key); whether it did. Refused
/// when one is needed and `material` is `None`.
pub(super) fn settle_data_keys(
    t: &mut Tenant,
    next_id: &mut u32,
    material: Option<&str>,
    now: u64,
) -> Result<bool, ApplyError> {
    let Some(e) = &t.spec.encryption else {
        return Ok(false);
    };
    if t.data_key().is_some_and(|k| k.master_key_id == e.key_id) {
        return Ok(false);
    }
    let master = e.key_id.clone();
    let material = material.ok_or_else(|| {
        ApplyError::invalid(format!(
            "encryption under master key {master:?} needs a new data key, and the command carries none"
        ))
    })?;
    add_data_key(t, next_id, &master, material, now)?;
    Ok(true)
}

/// Appends a data key of `material` under `master_key_id`, which becomes
/// the current one, with the next id of the cluster.
pub(super) fn add_data_key(
    t: &mut Tenant,
    next_id: &mut u32,
    master_key_id: &str,
    material: &str,
    now: u64,
) -> Result<(), ApplyError> {
    if let Some(why) = DataKey::material_problem(material) {
        return Err(ApplyError::invalid(why));
    }
    if t.data_keys.len() >= DATA_KEYS_MAX {
        return Err(ApplyError::conflict(format!(
            "the tenant has {DATA_KEYS_MAX} data keys (DATA_KEYS_MAX), the most it may have: none is \
             dropped while the tenant lives (records sealed under it may remain), so no new one is \
             made and new records stay sealed under the current one"
        )));
    }
    // A state from before data keys counts from 0: ids start at 1.
    let id = (*next_id).max(1);
    let next = id
        .checked_add(1)
        .ok_or_else(|| ApplyError::conflict("the cluster has used every data key id"))?;
    t.data_keys.push(DataKey {
        id,
        master_key_id: master_key_id.to_owned(),
        material: material.to_owned(),
        created_ms: now,
    });
    *next_id = next;
    Ok(())
}

/// The feed's change for `t`'s encryption and data keys.
pub(super) fn data_keys_change(tenant: &str, t: &Tenant) -> Change {
    Change::DataKeys {
        tenant: tenant.to_owned(),
        encryption: t.spec.encryption.clone(),
        keys: t.data_keys.clone(),
    }
}
