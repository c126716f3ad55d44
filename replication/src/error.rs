use thiserror::Error;

/// Errors of the replication layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplicationError {
    #[error(transparent)]
    Log(#[from] felix_log::LogError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("applying committed entries: {0}")]
    Apply(String),
}
