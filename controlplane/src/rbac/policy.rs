//! One tenant's policies and groupings, and the decisions made from them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Action, Object, RbacError};

/// Levels of groups-in-groups followed; deeper nesting grants nothing more
/// (and a cycle ends here).
pub const GROUPING_DEPTH_MAX: usize = 8;
/// Longest subject or group name.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// `subject` may do `action` on `object`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub subject: String,
    pub object: Object,
    pub action: Action,
}

/// `member` (a principal or a group) is in `group`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grouping {
    pub member: String,
    pub group: String,
}

/// One permission a principal holds (and a token carries).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    pub action: Action,
    pub object: Object,
}

impl Grant {
    /// Whether any of `grants` allows `action` on `target`.
    pub fn allows(grants: &[Grant], action: Action, target: &Object) -> bool {
        grants
            .iter()
            .any(|g| g.action == action && g.object.covers(target))
    }
}

/// The RBAC rules of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub tenant: String,
    pub policies: BTreeSet<Policy>,
    pub groupings: BTreeSet<Grouping>,
}

fn check_subject(subject: &str) -> Result<(), RbacError> {
    let why = if subject.is_empty() {
        Some("empty")
    } else if subject.len() > SUBJECT_BYTES_MAX {
        Some("longer than 256 bytes")
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains white space or control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(RbacError::InvalidSubject {
            subject: subject.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

impl Rules {
    pub fn new(tenant: &str) -> Rules {
        Rules {
            tenant: tenant.to_owned(),
            ..Rules::default()
        }
    }

    /// Every subject whose policies apply to `principal`: itself, the
    /// groups its identity provider names, and the groups those are in
    /// through groupings, [`GROUPING_DEPTH_MAX`] levels deep.
    pub fn subjects_of(&self, principal: &str, idp_groups: &[String]) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = idp_groups.iter().cloned().collect();
        all.insert(principal.to_owned());
        let mut frontier = all.clone();
        for _ in 0..GROUPING_DEPTH_MAX {
            let next: BTreeSet<String> = self
                .groupings
                .iter()
                .filter(|g| frontier.contains(&g.member) && !all.contains(&g.group))
                .map(|g| g.group.clone())
                .collect();
            if next.is_empty() {
                break;
            }
            all.extend(next.iter().cloned());
            frontier = next;
        }
        all
    }

    /// What `principal` (in `idp_groups`) may do in this tenant.
    pub fn grants(&self, principal: &str, idp_groups: &[String]) -> Vec<Grant> {
        let subjects = self.subjects_of(principal, idp_groups);
        let set: BTreeSet<Grant> = self
            .policies
            .iter()
            .filter(|p| subjects.contains(&p.subject))
            .map(|p| Grant {
                action: p.action,
                object: p.object.clone(),
            })
            .collect();
        set.into_iter().collect()
    }

    /// Adds `policy` on behalf of a caller holding `caller`: its object must
    /// be in this tenant and inside an object on which the caller holds
    /// `rbac.policy.manage`.
    pub fn add_policy(&mut self, caller: &[Grant], policy: Policy) -> Result<bool, RbacError> {
        self.check_policy_write(caller, &policy)?;
        Ok(self.policies.insert(policy))
    }

    pub fn remove_policy(&mut self, caller: &[Grant], policy: &Policy) -> Result<bool, RbacError> {
        self.check_policy_write(caller, policy)?;
        Ok(self.policies.remove(policy))
    }

    fn check_policy_write(&self, caller: &[Grant], policy: &Policy) -> Result<(), RbacError> {
        check_subject(&policy.subject)?;
        let inside = policy.object.tenant() == self.tenant
            && Grant::allows(caller, Action::RbacPolicyManage, &policy.object);
        if !inside {
            return Err(RbacError::OutOfScope {
                action: Action::RbacPolicyManage,
                object: policy.object.to_string(),
            });
        }
        Ok(())
    }

    /// Adds `grouping` on behalf of a caller holding `caller`. Putting a
    /// member in a group hands it everything the group grants, so the
    /// caller needs `rbac.assignment.manage` over every object the group
    /// grants anything on (directly or through its own groups); a namespace
    /// admin cannot make someone a tenant admin.
    pub fn add_grouping(&mut self, caller: &[Grant], grouping: Grouping) -> Result<bool, RbacError> {
        self.check_grouping_write(caller, &grouping)?;
        Ok(self.groupings.insert(grouping))
    }

    pub fn remove_grouping(&mut self, caller: &[Grant], grouping: &Grouping) -> Result<bool, RbacError> {
        self.check_grouping_write(caller, grouping)?;
        Ok(self.groupings.remove(grouping))
    }

    fn check_grouping_write(&self, caller: &[Grant], grouping: &Grouping) -> Result<(), RbacError> {
        check_subject(&grouping.member)?;
        check_subject(&grouping.group)?;
        let tenant = Object::Tenant(self.tenant.clone());
        // Somewhere in this tenant the caller may assign at all.
        if !caller
            .iter()
            .any(|g| g.action == Action::RbacAssignmentManage && tenant.covers(&g.object))
        {
            return Err(RbacError::OutOfScope {
                action: Action::RbacAssignmentManage,
                object: tenant.to_string(),
            });
        }
        for granted in self.grants(&grouping.group, &[]) {
            if !Grant::allows(caller, Action::RbacAssignmentManage, &granted.object) {
                return Err(RbacError::GroupOutOfScope {
                    group: grouping.group.clone(),
                    action: granted.action,
                    object: granted.object.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The permissions a token exchange issues: `grants` narrowed to the
/// `requested` actions and to the `resources` (each grant meets each
/// resource at the narrower of the two), when those are given. Refuses
/// when nothing remains (the API answers 403).
pub fn for_token(
    grants: &[Grant],
    requested: Option<&[Action]>,
    resources: Option<&[Object]>,
) -> Result<Vec<Grant>, RbacError> {
    let mut out = BTreeSet::new();
    for g in grants {
        if requested.is_some_and(|r| !r.contains(&g.action)) {
            continue;
        }
        match resources {
            None => {
                out.insert(g.clone());
            }
            Some(rs) => out.extend(rs.iter().filter_map(|r| g.object.meet(r)).map(|object| Grant {
                action: g.action,
                object,
            })),
        }
    }
    // A grant another one covers adds nothing.
    let all: Vec<Grant> = out.iter().cloned().collect();
    out.retain(|g| {
        !all.iter()
            .any(|o| o != g && o.action == g.action && o.object.covers(&g.object))
    });
    if out.is_empty() {
        return Err(RbacError::NothingGranted);
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Object {
        s.parse().unwrap()
    }

    fn grant(a: Action, obj: &str) -> Grant {
        Grant {
            action: a,
            object: o(obj),
        }
    }

    fn policy(subject: &str, a: Action, obj: &str) -> Policy {
        Policy {
            subject: subject.into(),
            object: o(obj),
            action: a,
        }
    }

    /// Tenant t1: alice is a tenant admin; bob administers namespace
    /// payments; carol publishes through group `writers`.
    fn rules() -> Rules {
        let root = [
            grant(Action::RbacPolicyManage, "tenant:t1"),
            grant(Action::RbacAssignmentManage, "tenant:t1"),
        ];
        let mut r = Rules::new("t1");
        for (s, a, obj) in [
            ("g:admins", Action::RbacPolicyManage, "tenant:t1"),
            ("g:admins", Action::RbacAssignmentManage, "tenant:t1"),
            ("p:bob", Action::RbacPolicyManage, "namespace:t1/payments"),
            ("p:bob", Action::RbacAssignmentManage, "namespace:t1/payments"),
            ("g:writers", Action::StreamPublish, "stream:t1/payments/*"),
            ("g:readers", Action::StreamSubscribe, "namespace:t1/*"),
        ] {
            r.add_policy(&root, policy(s, a, obj)).unwrap();
        }
        for (m, g) in [
            ("p:alice", "g:admins"),
            ("p:carol", "g:writers"),
            ("g:writers", "g:readers"),
        ] {
            r.add_grouping(
                &root,
                Grouping {
                    member: m.into(),
                    group: g.into(),
                },
            )
            .unwrap();
        }
        r
    }

    #[test]
    fn a_principal_gets_its_groups_policies_transitively_and_nothing_else() {
        let r = rules();
        let carol = r.grants("p:carol", &[]);
        assert!(Grant::allows(
            &carol,
            Action::StreamPublish,
            &Object::stream("t1", "payments", "orders")
        ));
        assert!(Grant::allows(
            &carol,
            Action::StreamSubscribe,
            &Object::stream("t1", "audit", "log")
        ));
        assert!(!Grant::allows(
            &carol,
            Action::StreamPublish,
            &Object::stream("t1", "audit", "log")
        ));
        assert!(!Grant::allows(
            &carol,
            Action::CacheRead,
            &Object::cache("t1", "payments", "c")
        ));
        // Another tenant's objects are never covered.
        assert!(!Grant::allows(
            &carol,
            Action::StreamPublish,
            &Object::stream("t2", "payments", "orders")
        ));
        // Groups named by the identity provider count like groupings.
        let dave = r.grants("p:dave", &["g:readers".into()]);
        assert_eq!(dave, vec![grant(Action::StreamSubscribe, "namespace:t1/*")]);
        assert!(r.grants("p:nobody", &[]).is_empty());
    }

    #[test]
    fn a_grouping_cycle_ends() {
        let mut r = rules();
        r.groupings.insert(Grouping {
            member: "g:readers".into(),
            group: "g:writers".into(),
        });
        let s = r.subjects_of("p:carol", &[]);
        assert_eq!(s.len(), 3, "{s:?}");
    }

    #[test]
    fn admins_change_only_what_is_inside_their_scope() {
        let mut r = rules();
        let bob = r.grants("p:bob", &[]);
        // Inside payments: allowed.
        assert_eq!(
            r.add_policy(&bob, policy("p:erin", Action::CacheRead, "cache:t1/payments/*")),
            Ok(true)
        );
        // Another namespace, the whole tenant, another tenant: refused.
        for obj in [
            "stream:t1/audit/x",
            "tenant:t1",
            "namespace:t1/*",
            "stream:t2/payments/x",
        ] {
            let e = r
                .add_policy(&bob, policy("p:erin", Action::StreamPublish, obj))
                .unwrap_err();
            assert!(matches!(e, RbacError::OutOfScope { .. }), "{obj}: {e}");
        }
        // Bob may put erin in writers (publish on payments only) but not in
        // admins (tenant-wide) nor readers (every namespace).
        let into = |g: &str| Grouping {
            member: "p:erin".into(),
            group: g.into(),
        };
        assert_eq!(r.add_grouping(&bob, into("g:payments-team")), Ok(true));
        let e = r.add_grouping(&bob, into("g:admins")).unwrap_err();
        assert!(matches!(e, RbacError::GroupOutOfScope { .. }), "{e}");
        // writers is in readers, which reaches every namespace.
        let e = r.add_grouping(&bob, into("g:writers")).unwrap_err();
        assert!(e.to_string().contains("namespace:t1/*"), "{e}");
        // Carol administers nothing.
        let carol = r.grants("p:carol", &[]);
        assert!(r.add_grouping(&carol, into("g:payments-team")).is_err());
        // A subject with white space is a bad request, not a scope error.
        let e = r
            .add_policy(&bob, policy("p: erin", Action::CacheRead, "cache:t1/payments/x"))
            .unwrap_err();
        assert!(matches!(e, RbacError::InvalidSubject { .. }));
    }

    #[test]
    fn a_token_carries_the_grants_narrowed_to_what_was_asked() {
        let r = rules();
        let carol = r.grants("p:carol", &[]);
        // Nothing asked: everything.
        assert_eq!(for_token(&carol, None, None).unwrap(), carol);
        // Only publishing, on one stream.
        let t = for_token(
            &carol,
            Some(&[Action::StreamPublish]),
            Some(&[o("stream:t1/payments/orders")]),
        )
        .unwrap();
        assert_eq!(t, vec![grant(Action::StreamPublish, "stream:t1/payments/orders")]);
        // A resource wider than the grant keeps the grant.
        let t = for_token(&carol, Some(&[Action::StreamPublish]), Some(&[o("tenant:t1")])).unwrap();
        assert_eq!(t, vec![grant(Action::StreamPublish, "stream:t1/payments/*")]);
        // Nothing left: refused.
        assert_eq!(
            for_token(&carol, Some(&[Action::CacheWrite]), None),
            Err(RbacError::NothingGranted)
        );
        assert_eq!(
            for_token(&carol, None, Some(&[o("stream:t2/payments/orders")])),
            Err(RbacError::NothingGranted)
        );
    }

    #[test]
    fn unknown_fields_and_bad_objects_are_refused_when_decoding() {
        let ok: Policy =
            serde_json::from_str(r#"{"subject":"p:a","object":"stream:t/n/*","action":"stream.publish"}"#)
                .unwrap();
        assert_eq!(ok.object, o("stream:t/n/*"));
        for (bad, says) in [
            (
                r#"{"subject":"p:a","object":"tenant:*","action":"stream.publish"}"#,
                "a tenant cannot be a wildcard",
            ),
            (
                r#"{"subject":"p:a","object":"tenant:t","action":"stream.eat"}"#,
                "unknown action",
            ),
            (
                r#"{"subject":"p:a","object":"tenant:t","action":"stream.publish","x":1}"#,
                "unknown field",
            ),
        ] {
            let e = serde_json::from_str::<Policy>(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
