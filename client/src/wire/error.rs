//! Two kinds of error: [`WireError`], why bytes are not a valid frame or
//! message (a codec result), and [`ErrorReply`], the typed error a broker
//! sends back in an `Error` frame (a protocol message).

use thiserror::Error;

/// Why bytes are not a valid frame or message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("not a Felix frame: magic {0:02x?}")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("reserved frame header bits are set")]
    Reserved,
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    #[error("frame body of {len} bytes is above the limit of {max}")]
    BodyTooLarge { len: u32, max: u32 },
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("{what} is {value}, above the limit of {max}")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{0}: count larger than the bytes that follow could hold")]
    CountExceedsBody(&'static str),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// The error codes of an `Error` frame; see `docs/format/wire.md`.
pub mod code {
    pub const NOT_LEADER: u16 = 1;
    pub const UNKNOWN_STREAM: u16 = 2;
    pub const UNAUTHORIZED: u16 = 3;
    pub const FORBIDDEN: u16 = 4;
    pub const OVERLOADED: u16 = 5;
    pub const INVALID_REQUEST: u16 = 6;
    pub const OFFSET_OUT_OF_RANGE: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const INTERNAL: u16 = 9;
    pub const QUOTA_EXCEEDED: u16 = 10;
}

/// Longest error message carried in an `Error` frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// What went wrong with a request, as the broker tells the client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorReply {
    #[error("not the leader of that shard; leader: {leader:?}")]
    NotLeader {
        /// The leader's broker id and address, if known.
        leader: Option<(u64, String)>,
    },
    #[error("unknown stream: {0}")]
    UnknownStream(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("overloaded; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u32 },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("offset out of range: the shard holds [{earliest}, {latest})")]
    OffsetOutOfRange { earliest: u64, latest: u64 },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A tenant's or namespace's quota on what it holds (storage, cache
    /// bytes, subscriptions, streams, shards) is reached: retrying does not
    /// help until something is freed or the operator raises it.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
}

impl ErrorReply {
    pub fn code(&self) -> u16 {
        match self {
            ErrorReply::NotLeader { .. } => code::NOT_LEADER,
            ErrorReply::UnknownStream(_) => code::UNKNOWN_STREAM,
            ErrorReply::Unauthorized(_) => code::UNAUTHORIZED,
            ErrorReply::Forbidden(_) => code::FORBIDDEN,
            ErrorReply::Overloaded { .. } => code::OVERLOADED,
            ErrorReply::InvalidRequest(_) => code::INVALID_REQUEST,
            ErrorReply::OffsetOutOfRange { .. } => code::OFFSET_OUT_OF_RANGE,
            ErrorReply::Timeout(_) => code::TIMEOUT,
            ErrorReply::Internal(_) => code::INTERNAL,
            ErrorReply::QuotaExceeded(_) => code::QUOTA_EXCEEDED,
        }
    }

    /// Whether the same request may succeed if sent again (after the hinted
    /// delay, or to the hinted leader).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ErrorReply::NotLeader { .. } | ErrorReply::Overloaded { .. } | ErrorReply::Timeout(_)
        )
    }
}

impl From<WireError> for ErrorReply {
    fn from(e: WireError) -> ErrorReply {
        ErrorReply::InvalidRequest(e.to_string())
    }
}
