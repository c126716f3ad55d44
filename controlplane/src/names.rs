//! What a tenant, namespace, stream or cache may be called: the one rule
//! the API, the RBAC grammar and the brokers' `tenant/namespace/name`
//! share.

/// Longest name part.
pub const NAME_PART_BYTES_MAX: usize = 64;

/// Why `part` cannot be a name, if it cannot: 1–64 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot (so no name reads as a hidden file or `..`).
pub fn name_problem(part: &str) -> Option<&'static str> {
    let ok = !part.is_empty()
        && part.len() <= NAME_PART_BYTES_MAX
        && !part.starts_with('.')
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (!ok).then_some("each name is 1 to 64 of A-Z a-z 0-9 . _ - and does not start with a dot")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_stream_name_rule() {
        for good in ["a", "orders", "t-1.x_y", &"x".repeat(64)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ü", "*", &"x".repeat(65)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
