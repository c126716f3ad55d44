//! Role-based access control, sans-IO: rules in, decisions out.
//!
//! A *policy* grants a subject (a principal such as `p:alice`, or a group
//! or role name) one [`Action`] on an [`Object`]; a *grouping* puts a
//! principal (or a group) in a group. What a principal may do is the union
//! of the policies of the principal, of the groups its identity provider
//! says it is in, and of every group reachable through groupings.

mod action;
mod object;
mod policy;

pub use action::Action;
pub use object::{Object, Scope};
pub use policy::{for_token, Grant, Grouping, Policy, Rules, GROUPING_DEPTH_MAX, SUBJECT_BYTES_MAX};

use thiserror::Error;

/// Why an RBAC request is refused; each names what is wrong.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RbacError {
    #[error("invalid object {object:?}: {why}")]
    InvalidObject { object: String, why: &'static str },
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("invalid subject {subject:?}: {why}")]
    InvalidSubject { subject: String, why: &'static str },
    #[error("{action} on {object} is outside the caller's scope")]
    OutOfScope { action: Action, object: String },
    #[error("group {group:?} grants {action} on {object}, outside the caller's scope")]
    GroupOutOfScope {
        group: String,
        action: Action,
        object: String,
    },
    #[error("no permission remains after filtering by the requested actions and resources")]
    NothingGranted,
}
