//! What a tenant, namespace, stream or cache may be called: the one rule
//! the control plane's API, its RBAC grammar and the brokers'
//! `tenant/namespace/name` share. A bare `name` means the development
//! tenant's default namespace.

use std::fmt;

pub const DEV_TENANT: &str = "dev";
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest part of a name.
pub const NAME_PART_BYTES_MAX: usize = 64;
/// What a dead-letter stream's name adds to its stream's.
pub const DLQ_SUFFIX: &str = ".dlq";
/// Dead-letter suffixes a name may carry beyond [`NAME_PART_BYTES_MAX`]:
/// a stream with a name of the longest length still gets its dead-letter
/// stream, and that one its own, this many deep.
pub const DLQ_SUFFIXES_MAX: usize = 4;

/// The region a cluster and its brokers are in when none is configured.
pub const REGION_DEFAULT: &str = "local";
/// Longest region name: it is a DNS label in every broker's replication
/// certificate (`<region>.region.felix`), so it stays well under 63.
pub const REGION_BYTES_MAX: usize = 32;

/// Why `region` cannot name a region, if it cannot: 1 to
/// [`REGION_BYTES_MAX`] of `a-z 0-9 -`, not starting or ending with `-`.
/// Lower case only: certificates compare DNS names without case, and two
/// regions must never share a certificate name.
pub fn region_problem(region: &str) -> Option<&'static str> {
    let ok = !region.is_empty()
        && region.len() <= REGION_BYTES_MAX
        && !region.starts_with('-')
        && !region.ends_with('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (!ok).then_some("a region is 1 to 32 of a-z 0-9 - and does not start or end with -")
}

/// A name that breaks the rule, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// Why `part` cannot be a name, if it cannot: 1–64 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot (so no name reads as a hidden file or `..`).
pub fn name_problem(part: &str) -> Option<&'static str> {
    (!part_ok(part, part))
        .then_some("each name is 1 to 64 of A-Z a-z 0-9 . _ - and does not start with a dot")
}

/// [`name_problem`] for a stream's or cache's own name, which may carry up
/// to [`DLQ_SUFFIXES_MAX`] dead-letter suffixes beyond the length limit
/// (as [`StreamName::parse`] allows), so a dead-letter stream can be
/// defined where its stream is.
pub fn stream_name_problem(part: &str) -> Option<&'static str> {
    (!part_ok(part, without_dlq_suffixes(part))).then_some(
        "a stream's name is 1 to 64 of A-Z a-z 0-9 . _ - (not counting up to 4 trailing \".dlq\") and does not start with a dot",
    )
}

/// The rule, with the length checked on `stem` (a stream's name without
/// its dead-letter suffixes).
fn part_ok(part: &str, stem: &str) -> bool {
    !part.is_empty()
        && stem.len() <= NAME_PART_BYTES_MAX
        && !part.starts_with('.')
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A fully qualified stream (or cache) name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName {
    pub tenant: String,
    pub namespace: String,
    pub name: String,
}

impl StreamName {
    /// Parses `tenant/namespace/name` or a bare `name`. Parts are 1–64 of
    /// `[A-Za-z0-9._-]`, not starting with a dot; the name part may carry
    /// up to [`DLQ_SUFFIXES_MAX`] dead-letter suffixes beyond 64.
    pub fn parse(s: &str) -> Result<StreamName, NameError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (t, n, x) = match parts[..] {
            [x] => (DEV_TENANT, DEFAULT_NAMESPACE, x),
            [t, n, x] => (t, n, x),
            _ => {
                return Err(NameError(format!(
                    "{s:?}: expected tenant/namespace/name or a bare name"
                )))
            }
        };
        for (i, p) in [t, n, x].into_iter().enumerate() {
            let stem = if i == 2 { without_dlq_suffixes(p) } else { p };
            if !part_ok(p, stem) {
                return Err(NameError(format!(
                    "{s:?}: each part is 1 to {NAME_PART_BYTES_MAX} of A-Z a-z 0-9 . _ - (the name's, not counting up to {DLQ_SUFFIXES_MAX} trailing {DLQ_SUFFIX:?}) and does not start with a dot"
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
            name: format!("{}{DLQ_SUFFIX}", self.name),
            ..self.clone()
        }
    }
}

/// `name` without up to [`DLQ_SUFFIXES_MAX`] trailing [`DLQ_SUFFIX`]es.
fn without_dlq_suffixes(name: &str) -> &str {
    let mut stem = name;
    for _ in 0..DLQ_SUFFIXES_MAX {
        match stem.strip_suffix(DLQ_SUFFIX) {
            Some(s) if !s.is_empty() => stem = s,
            _ => break,
        }
    }
    stem
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
    fn regions_are_lower_case_dns_labels() {
        for good in ["eu", "us-east-1", REGION_DEFAULT, &"r".repeat(32)] {
            assert_eq!(region_problem(good), None, "{good}");
        }
        for bad in ["", "EU", "-eu", "eu-", "eu.west", "eu_west", &"r".repeat(33)] {
            assert!(region_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_stream_name_rule() {
        for good in ["a", "orders", "t-1.x_y", &"x".repeat(64)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ü", "*", &"x".repeat(65)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

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

    #[test]
    fn the_longest_name_still_has_dead_letter_streams_four_deep() {
        let mut n = StreamName::parse(&"x".repeat(NAME_PART_BYTES_MAX)).unwrap();
        for _ in 0..DLQ_SUFFIXES_MAX {
            n = StreamName::parse(&n.dlq().to_string()).expect("a dead-letter name parses");
        }
        assert_eq!(
            n.name.len(),
            NAME_PART_BYTES_MAX + DLQ_SUFFIXES_MAX * DLQ_SUFFIX.len()
        );
        assert!(
            StreamName::parse(&n.dlq().to_string()).is_err(),
            "five deep is too long"
        );
        // The suffixes are only allowed beyond the limit on the name part.
        let long_ns = format!("t/{}.dlq/n", "x".repeat(NAME_PART_BYTES_MAX));
        assert!(StreamName::parse(&long_ns).is_err());
        assert!(StreamName::parse(&format!("{}.dlq", "x".repeat(NAME_PART_BYTES_MAX + 1))).is_err());
        // The control plane's rule for a stream's own name agrees.
        assert_eq!(stream_name_problem(&n.name), None);
        assert!(stream_name_problem(&n.dlq().name).is_some());
        assert!(name_problem(&n.name).is_some(), "not as a tenant or namespace");
    }
}
