//! Bridges: a tenant's streams carried to another region's cluster.
//! Made, paused, resumed and deleted here; brokers learn each one whole,
//! its target's token included, from the feed. Whether the target is in
//! another region is the API's check: the node knows its region, the
//! state does not.

use super::*;

impl Metadata {
    /// Each command checks everything before it changes anything, so it
    /// may run in place (`Command::refuses_before_it_changes`).
    pub(super) fn run_bridges(&mut self, env: &Envelope) -> Result<Vec<Change>, ApplyError> {
        let now = env.now_ms;
        match &env.command {
            Command::PutBridge { name, spec } => {
                check_names(&[("bridge", name)])?;
                spec.validate().map_err(ApplyError::invalid)?;
                self.tenant(&spec.tenant)?;
                if let Some(b) = self.bridges.get(name) {
                    if b.spec == *spec {
                        // A retried create (its answer lost) is the same one.
                        return Ok(vec![]);
                    }
                    return Err(ApplyError::conflict(format!(
                        "bridge {name:?} exists with another spec; a bridge is not changed in place: \
                         delete it and create it again"
                    )));
                }
                if self.bridges.len() >= BRIDGES_MAX {
                    return Err(ApplyError::conflict(format!(
                        "the cluster has {BRIDGES_MAX} bridges (BRIDGES_MAX), the most it may have; \
                         delete one first"
                    )));
                }
                let b = Bridge {
                    name: name.clone(),
                    spec: spec.clone(),
                    paused: false,
                    created_ms: now,
                    updated_ms: now,
                };
                self.bridges.insert(name.clone(), b.clone());
                Ok(vec![bridge_change(name, Some(b))])
            }
            Command::SetBridgePaused { name, paused } => {
                let b = self.bridges.get_mut(name).ok_or_else(|| no_bridge(name))?;
                if b.paused == *paused {
                    return Ok(vec![]);
                }
                b.paused = *paused;
                b.updated_ms = now;
                let b = b.clone();
                Ok(vec![bridge_change(name, Some(b))])
            }
            Command::DeleteBridge { name } => {
                self.bridges.remove(name).ok_or_else(|| no_bridge(name))?;
                Ok(vec![bridge_change(name, None)])
            }
            _ => unreachable!("run routes only bridge commands here"),
        }
    }

    /// Deletes every bridge of `tenant`, being deleted: a bridge never
    /// outlives the streams it may carry. One change per bridge.
    pub(super) fn drop_tenant_bridges(&mut self, tenant: &str) -> Vec<Change> {
        let names: Vec<String> = self
            .bridges
            .values()
            .filter(|b| b.spec.tenant == tenant)
            .map(|b| b.name.clone())
            .collect();
        names
            .into_iter()
            .map(|name| {
                self.bridges.remove(&name);
                bridge_change(&name, None)
            })
            .collect()
    }

    /// Empties the token out of the feed's earlier changes of bridge
    /// `name`, just deleted: the target's credential must not outlive the
    /// bridge in the replicated state. A broker replaying them sees the
    /// deletion after them in the same answer.
    pub(super) fn forget_bridge_token(&mut self, name: &str) {
        for v in &mut self.changes {
            if let Change::Bridge {
                name: n,
                value: Some(b),
            } = &mut v.change
            {
                if n == name {
                    b.spec.target.token.clear();
                }
            }
        }
    }

    /// The tenant whose own audit log also keeps `command`'s entry: the
    /// command's, or for a bridge named alone, the bridge's (looked up
    /// before the command runs).
    pub(super) fn audited_tenant(&self, command: &Command) -> Option<String> {
        match command {
            Command::SetBridgePaused { name, .. } | Command::DeleteBridge { name } => {
                self.bridges.get(name).map(|b| b.spec.tenant.clone())
            }
            c => c.tenant().map(str::to_owned),
        }
    }
}

impl Command {
    /// The audit log's line for a bridge command (`bridge.create NAME
    /// tenant=T -> REGION`), without its spec: the target's token must
    /// never reach the audit log.
    pub(super) fn bridge_summary(&self) -> Option<String> {
        Some(match self {
            Command::PutBridge { name, spec } => format!(
                "bridge.create {name} tenant={:?} streams={:?} to region {:?}",
                spec.tenant, spec.streams, spec.target.region
            ),
            Command::SetBridgePaused { name, paused: true } => format!("bridge.pause {name}"),
            Command::SetBridgePaused { name, paused: false } => format!("bridge.resume {name}"),
            Command::DeleteBridge { name } => format!("bridge.delete {name}"),
            _ => return None,
        })
    }
}

fn no_bridge(name: &str) -> ApplyError {
    ApplyError::not_found(format!("no bridge {name:?}"))
}

fn bridge_change(name: &str, value: Option<Bridge>) -> Change {
    Change::Bridge {
        name: name.to_owned(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::new_signing_key;

    const TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.secret-target-token.sig";

    fn env(now_ms: u64, command: Command) -> Envelope {
        Envelope {
            actor: "op".into(),
            now_ms,
            command,
        }
    }

    fn put_tenant(tenant: &str) -> Command {
        Command::PutTenant {
            tenant: tenant.into(),
            spec: TenantSpec::default(),
            key: Some(new_signing_key("k1", [1; 32])),
            keep_quotas: false,
            data_key: None,
        }
    }

    /// Tenants `acme` and `other`.
    fn tenants() -> Metadata {
        let mut m = Metadata::new();
        for t in ["acme", "other"] {
            m.apply(&env(0, put_tenant(t))).unwrap();
        }
        m
    }

    fn spec(tenant: &str) -> BridgeSpec {
        BridgeSpec {
            tenant: tenant.into(),
            streams: vec!["pay/*".into()],
            target: BridgeTarget {
                region: "us".into(),
                brokers: vec!["us1.example:7070".into()],
                server_name: "localhost".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                token: TOKEN.into(),
            },
        }
    }

    fn create(m: &mut Metadata, now: u64, name: &str, spec: BridgeSpec) -> Result<Applied, ApplyError> {
        m.apply(&env(
            now,
            Command::PutBridge {
                name: name.into(),
                spec,
            },
        ))
    }

    fn paused(m: &mut Metadata, now: u64, name: &str, paused: bool) -> Result<Applied, ApplyError> {
        m.apply(&env(
            now,
            Command::SetBridgePaused {
                name: name.into(),
                paused,
            },
        ))
    }

    fn bridge_changes(m: &Metadata, since: u64) -> Vec<(String, Option<Bridge>)> {
        m.changes_since(since)
            .unwrap()
            .into_iter()
            .filter_map(|v| match v.change {
                Change::Bridge { name, value } => Some((name, value)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_bridge_is_created_once_and_reaches_the_feed_whole() {
        let mut m = tenants();
        let v0 = m.version;
        let a = create(&mut m, 5, "acme-eu-us", spec("acme")).unwrap();
        assert!(a.changed && a.version == v0 + 1);
        let b = &m.bridges["acme-eu-us"];
        assert_eq!(
            (b.name.as_str(), b.paused, b.created_ms, b.updated_ms),
            ("acme-eu-us", false, 5, 5)
        );
        // The feed carries it with its token: brokers dial with it.
        let feed = bridge_changes(&m, v0);
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].0, "acme-eu-us");
        assert_eq!(feed[0].1.as_ref().unwrap().spec.target.token, TOKEN);
        // The same create again (a retry whose answer was lost) changes
        // nothing; another spec under the name is a conflict.
        let again = create(&mut m, 9, "acme-eu-us", spec("acme")).unwrap();
        assert!(!again.changed);
        assert_eq!(m.bridges["acme-eu-us"].created_ms, 5);
        let mut other = spec("acme");
        other.streams = vec!["pay/orders".into()];
        let e = create(&mut m, 9, "acme-eu-us", other).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.message.contains("exists with another spec"), "{e}");
        assert_eq!(m.bridges["acme-eu-us"].spec, spec("acme"));
        assert_eq!(bridge_changes(&m, v0).len(), 1, "no change for either");
    }

    #[test]
    fn a_bridge_of_an_unknown_tenant_a_bad_name_or_spec_or_past_the_cap_is_refused() {
        let mut m = tenants();
        let e = create(&mut m, 0, "b", spec("ghost")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("no tenant \"ghost\""), "{e}");
        for bad in ["", ".hidden", "a/b", "a b"] {
            let e = create(&mut m, 0, bad, spec("acme")).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{bad:?}: {e}");
            assert!(e.message.starts_with("bridge "), "{e}");
        }
        let mut bad = spec("acme");
        bad.target.ca_pem = "nope".into();
        let e = create(&mut m, 0, "b", bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("ca_pem"), "{e}");
        assert!(m.bridges.is_empty());
        for i in 0..BRIDGES_MAX {
            create(&mut m, 0, &format!("b{i}"), spec("acme")).unwrap();
        }
        let e = create(&mut m, 0, "one-more", spec("acme")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.message.contains("BRIDGES_MAX"), "{e}");
        assert_eq!(m.bridges.len(), BRIDGES_MAX);
        // Re-asking for one that exists is not one more.
        assert!(!create(&mut m, 0, "b0", spec("acme")).unwrap().changed);
        m.apply(&env(0, Command::DeleteBridge { name: "b0".into() }))
            .unwrap();
        create(&mut m, 0, "one-more", spec("acme")).unwrap();
    }

    #[test]
    fn pausing_and_resuming_change_only_the_flag_and_a_repeat_changes_nothing() {
        let mut m = tenants();
        create(&mut m, 1, "b", spec("acme")).unwrap();
        let v = m.version;
        assert!(paused(&mut m, 7, "b", true).unwrap().changed);
        let b = &m.bridges["b"];
        assert!(b.paused);
        assert_eq!((b.created_ms, b.updated_ms), (1, 7));
        assert_eq!(b.spec, spec("acme"));
        assert!(!paused(&mut m, 8, "b", true).unwrap().changed);
        assert_eq!(m.bridges["b"].updated_ms, 7);
        assert!(paused(&mut m, 9, "b", false).unwrap().changed);
        assert!(!m.bridges["b"].paused);
        let feed = bridge_changes(&m, v);
        let flags: Vec<bool> = feed.iter().map(|(_, b)| b.as_ref().unwrap().paused).collect();
        assert_eq!(flags, vec![true, false]);
        let e = paused(&mut m, 9, "nope", true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn a_deleted_bridge_leaves_the_feed_a_deletion_and_no_token() {
        let mut m = tenants();
        create(&mut m, 1, "b", spec("acme")).unwrap();
        paused(&mut m, 2, "b", true).unwrap();
        create(&mut m, 3, "kept", spec("other")).unwrap();
        assert!(serde_json::to_string(&m).unwrap().contains(TOKEN));
        m.apply(&env(4, Command::DeleteBridge { name: "b".into() }))
            .unwrap();
        assert!(!m.bridges.contains_key("b"));
        let feed = bridge_changes(&m, 0);
        assert_eq!(feed.last().unwrap(), &("b".to_owned(), None));
        // The earlier changes of `b` keep their order, without the token;
        // `kept`'s keeps its own.
        for (name, value) in &feed {
            if let Some(v) = value {
                let want = if name == "kept" { TOKEN } else { "" };
                assert_eq!(v.spec.target.token, want, "{name}");
            }
        }
        let e = m
            .apply(&env(5, Command::DeleteBridge { name: "b".into() }))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn deleting_a_tenant_deletes_its_bridges_first_and_no_other() {
        let mut m = tenants();
        create(&mut m, 1, "a1", spec("acme")).unwrap();
        create(&mut m, 1, "a2", spec("acme")).unwrap();
        create(&mut m, 1, "o1", spec("other")).unwrap();
        let v = m.version;
        m.apply(&env(
            2,
            Command::DeleteTenant {
                tenant: "acme".into(),
            },
        ))
        .unwrap();
        assert_eq!(m.bridges.keys().collect::<Vec<_>>(), vec!["o1"]);
        let changes: Vec<Change> = m
            .changes_since(v)
            .unwrap()
            .into_iter()
            .map(|c| c.change)
            .collect();
        assert_eq!(
            changes,
            vec![
                bridge_change("a1", None),
                bridge_change("a2", None),
                Change::Tenant {
                    tenant: "acme".into(),
                    quotas: None
                },
            ]
        );
        // Only `o1`'s create still carries the token in the feed.
        let json = serde_json::to_string(&m.changes).unwrap();
        assert_eq!(json.matches(TOKEN).count(), 1, "{json}");
    }

    #[test]
    fn every_bridge_command_is_audited_without_the_token_in_the_tenants_log_too() {
        let mut m = tenants();
        create(&mut m, 1, "acme-eu-us", spec("acme")).unwrap();
        paused(&mut m, 2, "acme-eu-us", true).unwrap();
        paused(&mut m, 3, "acme-eu-us", false).unwrap();
        create(&mut m, 4, "refused", spec("ghost")).unwrap_err();
        m.apply(&env(
            5,
            Command::DeleteBridge {
                name: "acme-eu-us".into(),
            },
        ))
        .unwrap();
        let ops: Vec<(&str, &str)> = m
            .audit
            .iter()
            .skip(2)
            .map(|a| (a.operation.as_str(), a.outcome.as_str()))
            .collect();
        assert_eq!(ops.len(), 5, "{ops:?}");
        assert!(
            ops[0].0.starts_with("bridge.create acme-eu-us tenant=\"acme\""),
            "{ops:?}"
        );
        assert!(ops[0].0.contains("\"us\""), "{ops:?}");
        assert_eq!(ops[1], ("bridge.pause acme-eu-us", "ok"));
        assert_eq!(ops[2], ("bridge.resume acme-eu-us", "ok"));
        assert!(ops[3].0.starts_with("bridge.create refused"));
        assert!(ops[3].1.contains("no tenant"), "{ops:?}");
        assert_eq!(ops[4], ("bridge.delete acme-eu-us", "ok"));
        assert!(m.audit.iter().all(|a| a.actor == "op"));
        let audit = serde_json::to_string(&(&m.audit, &m.tenant_audit)).unwrap();
        assert!(!audit.contains(TOKEN), "{audit}");
        // The tenant's own log has its bridge's whole story.
        let acme: Vec<&str> = m.tenant_audit["acme"]
            .iter()
            .map(|a| a.operation.as_str())
            .filter(|o| o.starts_with("bridge."))
            .collect();
        assert_eq!(acme.len(), 4, "{acme:?}");
        assert!(!m.tenant_audit["other"]
            .iter()
            .any(|a| a.operation.starts_with("bridge.")));
    }

    #[test]
    fn a_state_from_before_bridges_still_loads_and_round_trips() {
        let mut m = tenants();
        create(&mut m, 1, "b", spec("acme")).unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let back: Metadata = serde_json::from_str(&text).unwrap();
        assert!(back == m, "a round trip keeps the bridges");
        let mut old = serde_json::to_value(tenants()).unwrap();
        old.as_object_mut().unwrap().remove("bridges").unwrap();
        let back: Metadata = serde_json::from_value(old).unwrap();
        assert!(back.bridges.is_empty());
        // A bridge stored before `paused` existed is running.
        let mut b = serde_json::to_value(&m.bridges["b"]).unwrap();
        b.as_object_mut().unwrap().remove("paused");
        assert!(!serde_json::from_value::<Bridge>(b).unwrap().paused);
    }
}
