//! What a permission allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RbacError;

/// One thing a policy can allow. Spelled as in the API (`stream.publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Action {
    StreamPublish,
    StreamSubscribe,
    /// Consume through a consumer group (fetch, ack, nack).
    StreamConsume,
    CacheRead,
    CacheWrite,
    /// Create, change and delete streams and caches.
    ResourceManage,
    TenantManage,
    RbacView,
    RbacPolicyManage,
    RbacAssignmentManage,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::StreamPublish,
        Action::StreamSubscribe,
        Action::StreamConsume,
        Action::CacheRead,
        Action::CacheWrite,
        Action::ResourceManage,
        Action::TenantManage,
        Action::RbacView,
        Action::RbacPolicyManage,
        Action::RbacAssignmentManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::StreamPublish => "stream.publish",
            Action::StreamSubscribe => "stream.subscribe",
            Action::StreamConsume => "stream.consume",
            Action::CacheRead => "cache.read",
            Action::CacheWrite => "cache.write",
            Action::ResourceManage => "resource.manage",
            Action::TenantManage => "tenant.manage",
            Action::RbacView => "rbac.view",
            Action::RbacPolicyManage => "rbac.policy.manage",
            Action::RbacAssignmentManage => "rbac.assignment.manage",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = RbacError;
    fn from_str(s: &str) -> Result<Action, RbacError> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| RbacError::UnknownAction(s.to_owned()))
    }
}

impl TryFrom<String> for Action {
    type Error = RbacError;
    fn try_from(s: String) -> Result<Action, RbacError> {
        s.parse()
    }
}

impl From<Action> for String {
    fn from(a: Action) -> String {
        a.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_and_unknown_ones_are_named() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
        }
        assert_eq!(
            "stream.delete".parse::<Action>(),
            Err(RbacError::UnknownAction("stream.delete".into()))
        );
    }
}
