//! Stream and cache names: `tenant/namespace/name`; a bare `name` means the
//! development tenant's default namespace.

use std::fmt;

use crate::error::BrokerError;

pub const DEV_TENANT: &str = "dev";
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest part of a name.
pub const NAME_PART_BYTES_MAX: usize = 64;

/// A fully qualified stream (or cache) name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName {
    pub tenant: String,
    pub namespace: String,
    pub name: String,
}

impl StreamName {
    /// Parses `tenant/namespace/name` or a bare `name`. Parts are 1–64 of
    /// `[A-Za-z0-9._-]`, not starting with a dot.
    pub fn parse(s: &str) -> Result<StreamName, BrokerError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (t, n, x) = match parts[..] {
            [x] => (DEV_TENANT, DEFAULT_NAMESPACE, x),
            [t, n, x] => (t, n, x),
            _ => {
                return Err(BrokerError::InvalidName(format!(
                    "{s:?}: expected tenant/namespace/name or a bare name"
                )))
            }
        };
        for p in [t, n, x] {
            let ok = !p.is_empty()
                && p.len() <= NAME_PART_BYTES_MAX
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(BrokerError::InvalidName(format!(
                    "{s:?}: each part is 1 to {NAME_PART_BYTES_MAX} of A-Z a-z 0-9 . _ - and does not start with a dot"
                )));
            }
        }
        Ok(StreamName {
            tenant: t.into(),
            namespace: n.into(),
            name: x.into(),
        })
    }

    /// The dead-letter stream of this stream.
    pub fn dlq(&self) -> StreamName {
        StreamName {
            name: format!("{}.dlq", self.name),
            ..self.clone()
        }
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_the_dev_default_namespace() {
        assert_eq!(
            StreamName::parse("orders").unwrap().to_string(),
            "dev/default/orders"
        );
        assert_eq!(
            StreamName::parse("acme/prod/orders").unwrap().to_string(),
            "acme/prod/orders"
        );
        assert_eq!(
            StreamName::parse("orders").unwrap().dlq().to_string(),
            "dev/default/orders.dlq"
        );
        for bad in ["", "a/b", "a/b/c/d", "a//c", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(StreamName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
