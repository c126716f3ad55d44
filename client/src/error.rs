//! The client's typed errors.

use thiserror::Error;

use crate::transport::TransportError;
use crate::wire::{ErrorReply, WireError};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker answered with an error.
    #[error("broker: {0}")]
    Broker(#[from] ErrorReply),
    #[error("connecting to {address}: {why}")]
    Connect { address: String, why: String },
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// Too many recent failures talking to this broker; not trying it until
    /// the breaker half-opens.
    #[error("circuit open for broker {0}: too many recent failures")]
    CircuitOpen(String),
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<ClientError> },
    #[error("unexpected reply {0}")]
    UnexpectedReply(String),
    #[error("encoding request: {0}")]
    Encode(#[from] WireError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("stream {0} is not known to the cluster")]
    UnknownStream(String),
    #[error("invalid record: {0}")]
    Record(#[from] felix_log::batch::BatchError),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The producer or subscription was closed.
    #[error("closed")]
    Closed,
    /// A value could not be sealed or opened (end-to-end encryption).
    #[error("sealed value: {0}")]
    Sealed(#[from] crate::sealed::SealError),
}

impl ClientError {
    /// A reply of a type the request does not expect.
    pub(crate) fn unexpected(m: &crate::wire::Message) -> ClientError {
        ClientError::UnexpectedReply(format!("{m:?}"))
    }

    /// Whether trying again (after a backoff) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Broker(e) => e.retryable(),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost(_)
            | ClientError::Timeout(_)
            | ClientError::CircuitOpen(_) => true,
            _ => false,
        }
    }
}
