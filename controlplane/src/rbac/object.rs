//! The RBAC object grammar:
//!
//! ```text
//! tenant:{tenant}
//! namespace:{tenant}/{namespace}        namespace:{tenant}/*
//! stream:{tenant}/{namespace}/{stream}  stream:{tenant}/{namespace}/*
//! cache:{tenant}/{namespace}/{cache}    cache:{tenant}/{namespace}/*
//! ```
//!
//! A wildcard may only stand last, so every object lies inside one tenant:
//! `tenant:*`, `stream:*/*` and `stream:t/*/orders` are refused. Names are
//! those of streams: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
//! Objects form a tree (tenant ⊃ namespace ⊃ stream or cache), so two
//! objects either nest or do not meet.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RbacError;

use felix_model::names::name_problem;

/// The last part of an object: one name, or every name (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    All,
    Named(String),
}

impl Scope {
    fn covers(&self, name: &Scope) -> bool {
        match (self, name) {
            (Scope::All, _) => true,
            (Scope::Named(a), Scope::Named(b)) => a == b,
            (Scope::Named(_), Scope::All) => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Named(n) => f.write_str(n),
        }
    }
}

/// Something a policy grants an action on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Object {
    Tenant(String),
    Namespace {
        tenant: String,
        namespace: Scope,
    },
    Stream {
        tenant: String,
        namespace: String,
        stream: Scope,
    },
    Cache {
        tenant: String,
        namespace: String,
        cache: Scope,
    },
}

impl Object {
    pub fn tenant(&self) -> &str {
        match self {
            Object::Tenant(t)
            | Object::Namespace { tenant: t, .. }
            | Object::Stream { tenant: t, .. }
            | Object::Cache { tenant: t, .. } => t,
        }
    }

    /// Whether every object `other` stands for is inside this one.
    pub fn covers(&self, other: &Object) -> bool {
        if self.tenant() != other.tenant() {
            return false;
        }
        match (self, other) {
            (Object::Tenant(_), _) => true,
            (Object::Namespace { namespace: a, .. }, Object::Namespace { namespace: b, .. }) => a.covers(b),
            (
                Object::Namespace { namespace: a, .. },
                Object::Stream { namespace: b, .. } | Object::Cache { namespace: b, .. },
            ) => a.covers(&Scope::Named(b.clone())),
            (
                Object::Stream {
                    namespace: an,
                    stream: a,
                    ..
                },
                Object::Stream {
                    namespace: bn,
                    stream: b,
                    ..
                },
            )
            | (
                Object::Cache {
                    namespace: an,
                    cache: a,
                    ..
                },
                Object::Cache {
                    namespace: bn,
                    cache: b,
                    ..
                },
            ) => an == bn && a.covers(b),
            _ => false,
        }
    }

    /// What both stand for: the narrower when one covers the other.
    pub fn meet(&self, other: &Object) -> Option<Object> {
        if self.covers(other) {
            Some(other.clone())
        } else if other.covers(self) {
            Some(self.clone())
        } else {
            None
        }
    }

    /// The object a concrete stream or cache name stands for.
    pub fn stream(tenant: &str, namespace: &str, stream: &str) -> Object {
        Object::Stream {
            tenant: tenant.into(),
            namespace: namespace.into(),
            stream: Scope::Named(stream.into()),
        }
    }

    pub fn cache(tenant: &str, namespace: &str, cache: &str) -> Object {
        Object::Cache {
            tenant: tenant.into(),
            namespace: namespace.into(),
            cache: Scope::Named(cache.into()),
        }
    }
}

fn check_name<'a>(object: &str, part: &'a str, what: &'static str) -> Result<&'a str, RbacError> {
    let bad = |why| RbacError::InvalidObject {
        object: object.to_owned(),
        why,
    };
    if part == "*" {
        return Err(bad(match what {
            "tenant" => "a tenant cannot be a wildcard: every object lies inside one tenant",
            _ => "a wildcard may only stand last",
        }));
    }
    match name_problem(part) {
        Some(why) => Err(bad(why)),
        None => Ok(part),
    }
}

fn scope(object: &str, part: &str, what: &'static str) -> Result<Scope, RbacError> {
    match part {
        "*" => Ok(Scope::All),
        _ => Ok(Scope::Named(check_name(object, part, what)?.to_owned())),
    }
}

impl FromStr for Object {
    type Err = RbacError;

    fn from_str(s: &str) -> Result<Object, RbacError> {
        let bad = |why| RbacError::InvalidObject {
            object: s.to_owned(),
            why,
        };
        let (kind, rest) = s.split_once(':').ok_or(bad(
            "expected kind:path, the kind one of tenant, namespace, stream, cache",
        ))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let tenant = |p: &str| check_name(s, p, "tenant").map(str::to_owned);
        Ok(match (kind, parts.as_slice()) {
            ("tenant", [t]) => Object::Tenant(tenant(t)?),
            ("namespace", [t, n]) => Object::Namespace {
                tenant: tenant(t)?,
                namespace: scope(s, n, "namespace")?,
            },
            ("stream", [t, n, x]) => Object::Stream {
                tenant: tenant(t)?,
                namespace: check_name(s, n, "namespace")?.to_owned(),
                stream: scope(s, x, "stream")?,
            },
            ("cache", [t, n, x]) => Object::Cache {
                tenant: tenant(t)?,
                namespace: check_name(s, n, "namespace")?.to_owned(),
                cache: scope(s, x, "cache")?,
            },
            ("tenant", _) => return Err(bad("expected tenant:{tenant}")),
            ("namespace", _) => {
                return Err(bad(
                    "expected namespace:{tenant}/{namespace} or namespace:{tenant}/*",
                ))
            }
            ("stream", _) => {
                return Err(bad(
                    "expected stream:{tenant}/{namespace}/{stream} or stream:{tenant}/{namespace}/*",
                ))
            }
            ("cache", _) => {
                return Err(bad(
                    "expected cache:{tenant}/{namespace}/{cache} or cache:{tenant}/{namespace}/*",
                ))
            }
            _ => return Err(bad("unknown kind; expected tenant, namespace, stream or cache")),
        })
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Tenant(t) => write!(f, "tenant:{t}"),
            Object::Namespace { tenant, namespace } => write!(f, "namespace:{tenant}/{namespace}"),
            Object::Stream {
                tenant,
                namespace,
                stream,
            } => write!(f, "stream:{tenant}/{namespace}/{stream}"),
            Object::Cache {
                tenant,
                namespace,
                cache,
            } => write!(f, "cache:{tenant}/{namespace}/{cache}"),
        }
    }
}

impl TryFrom<String> for Object {
    type Error = RbacError;
    fn try_from(s: String) -> Result<Object, RbacError> {
        s.parse()
    }
}

impl From<Object> for String {
    fn from(o: Object) -> String {
        o.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn o(s: &str) -> Object {
        s.parse().unwrap()
    }

    #[test]
    fn the_grammar_accepts_what_the_reference_lists_and_refuses_wildcard_tenants() {
        for ok in [
            "tenant:t1",
            "namespace:t1/payments",
            "namespace:t1/*",
            "stream:t1/payments/orders",
            "stream:t1/payments/*",
            "cache:t1/payments/sessions",
            "cache:t1/payments/*",
        ] {
            assert_eq!(o(ok).to_string(), ok);
        }
        for (bad, says) in [
            ("tenant:*", "a tenant cannot be a wildcard"),
            ("stream:*/*", "expected stream:"),
            ("stream:*/payments/*", "a tenant cannot be a wildcard"),
            ("stream:t1/*/orders", "a wildcard may only stand last"),
            ("cache:t1/*/*", "a wildcard may only stand last"),
            ("topic:t1/a/b", "unknown kind"),
            ("stream:t1/payments", "expected stream:"),
            ("stream:t1/pay ments/x", "each name is"),
            ("namespace:t1/.hidden", "each name is"),
            ("t1", "expected kind:path"),
        ] {
            let e = bad.parse::<Object>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn containment_follows_the_tree() {
        let cases = [
            ("tenant:t", "stream:t/a/x", true),
            ("tenant:t", "stream:u/a/x", false),
            ("namespace:t/*", "cache:t/a/x", true),
            ("namespace:t/a", "stream:t/a/*", true),
            ("namespace:t/a", "stream:t/b/x", false),
            ("stream:t/a/*", "stream:t/a/x", true),
            ("stream:t/a/x", "stream:t/a/*", false),
            ("stream:t/a/*", "cache:t/a/x", false),
            ("stream:t/a/x", "namespace:t/a", false),
            ("namespace:t/a", "namespace:t/*", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(o(a).covers(&o(b)), want, "{a} covers {b}");
        }
        assert_eq!(
            o("namespace:t/a").meet(&o("stream:t/a/*")),
            Some(o("stream:t/a/*"))
        );
        assert_eq!(
            o("stream:t/a/x").meet(&o("namespace:t/*")),
            Some(o("stream:t/a/x"))
        );
        assert_eq!(o("stream:t/a/x").meet(&o("stream:t/a/y")), None);
    }

    fn object() -> impl Strategy<Value = Object> {
        let name = prop_oneof![Just("a".to_string()), Just("b".to_string())];
        let scope = prop_oneof![Just(Scope::All), name.clone().prop_map(Scope::Named)];
        let t = prop_oneof![Just("t".to_string()), Just("u".to_string())];
        prop_oneof![
            t.clone().prop_map(Object::Tenant),
            (t.clone(), scope.clone())
                .prop_map(|(tenant, namespace)| Object::Namespace { tenant, namespace }),
            (t.clone(), name.clone(), scope.clone()).prop_map(|(tenant, namespace, stream)| Object::Stream {
                tenant,
                namespace,
                stream
            }),
            (t, name, scope).prop_map(|(tenant, namespace, cache)| Object::Cache {
                tenant,
                namespace,
                cache
            }),
        ]
    }

    proptest! {
        #[test]
        fn objects_round_trip_and_containment_is_a_partial_order(a in object(), b in object(), c in object()) {
            prop_assert_eq!(a.to_string().parse::<Object>().unwrap(), a.clone());
            prop_assert!(a.covers(&a));
            if a.covers(&b) && b.covers(&a) {
                prop_assert_eq!(&a, &b);
            }
            if a.covers(&b) && b.covers(&c) {
                prop_assert!(a.covers(&c));
            }
            // Tree: two objects that meet nest.
            if let Some(m) = a.meet(&b) {
                prop_assert!(a.covers(&m) && b.covers(&m));
            }
        }
    }
}
