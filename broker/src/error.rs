//! The broker's typed errors, and how each is told to a client.

use felix_client::wire::ErrorReply;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("invalid name {0}")]
    InvalidName(String),
    #[error("no stream {0}")]
    UnknownStream(String),
    #[error("stream {0} exists")]
    StreamExists(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("overloaded; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u32 },
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("offset {requested} is outside [{earliest}, {latest}]")]
    OffsetOutOfRange {
        requested: u64,
        earliest: u64,
        latest: u64,
    },
    #[error("batch: {0}")]
    Batch(#[from] felix_log::BatchError),
    #[error("log: {0}")]
    Log(#[from] felix_log::LogError),
    #[error("index: {0}")]
    Index(#[from] felix_index::IndexError),
    #[error("configuration {path}: {why}")]
    Config { path: std::path::PathBuf, why: String },
    #[error("metadata file {path}: {why}")]
    Metadata { path: std::path::PathBuf, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] felix_client::transport::TransportError),
    #[error("not the leader; leader: {leader:?}")]
    NotLeader { leader: Option<(u64, String)> },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("replication: {0}")]
    Replication(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The control plane could not be asked (an admin request forwarded
    /// to it); retryable.
    #[error("control plane unavailable: {0}")]
    ControlPlane(String),
    /// Encryption at rest: a master key or data key missing or wrong.
    #[error("encryption at rest: {0}")]
    Keys(String),
}

impl From<felix_replication::ReplicationError> for BrokerError {
    fn from(e: felix_replication::ReplicationError) -> BrokerError {
        BrokerError::Replication(e.to_string())
    }
}

impl From<BrokerError> for ErrorReply {
    fn from(e: BrokerError) -> ErrorReply {
        match e {
            BrokerError::UnknownStream(s) => ErrorReply::UnknownStream(s),
            BrokerError::NotLeader { leader } => ErrorReply::NotLeader { leader },
            BrokerError::Timeout(why) => ErrorReply::Timeout(why),
            BrokerError::Unauthorized(why) => ErrorReply::Unauthorized(why),
            BrokerError::Forbidden(why) => ErrorReply::Forbidden(why),
            e @ BrokerError::ControlPlane(_) => ErrorReply::Timeout(e.to_string()),
            BrokerError::Overloaded { retry_after_ms } => ErrorReply::Overloaded { retry_after_ms },
            BrokerError::QuotaExceeded(why) => ErrorReply::QuotaExceeded(why),
            BrokerError::OffsetOutOfRange { earliest, latest, .. } => {
                ErrorReply::OffsetOutOfRange { earliest, latest }
            }
            BrokerError::Log(felix_log::LogError::OffsetOutOfRange { earliest, latest, .. }) => {
                ErrorReply::OffsetOutOfRange {
                    earliest: earliest.0,
                    latest: latest.0,
                }
            }
            BrokerError::Log(felix_log::LogError::Batch(
                b @ (felix_log::BatchError::KeyUnknown(_)
                | felix_log::BatchError::Unseal(_)
                | felix_log::BatchError::Sealed(_)),
            ))
            | BrokerError::Batch(
                b @ (felix_log::BatchError::KeyUnknown(_)
                | felix_log::BatchError::Unseal(_)
                | felix_log::BatchError::Sealed(_)),
            ) => ErrorReply::Internal(format!("encryption at rest: {b}")),
            BrokerError::Log(felix_log::LogError::Batch(b)) | BrokerError::Batch(b) => {
                ErrorReply::InvalidRequest(format!("batch: {b}"))
            }
            e @ (BrokerError::InvalidName(_) | BrokerError::StreamExists(_) | BrokerError::Invalid(_)) => {
                ErrorReply::InvalidRequest(e.to_string())
            }
            e => ErrorReply::Internal(e.to_string()),
        }
    }
}

impl From<felix_model::NameError> for BrokerError {
    fn from(e: felix_model::NameError) -> BrokerError {
        BrokerError::InvalidName(e.0)
    }
}
