//! `felix-client`: the Felix wire protocol and, to come, the async client.
//!
//! Today this crate holds the sans-IO codec ([`wire`]) that clients and the
//! broker share. The QUIC transport and the client API (producer,
//! subscription, group consumer, cache) are not built yet.

pub mod wire;

#[doc(hidden)]
pub mod fuzzing;
pub mod transport;
pub mod server;
pub mod conn;
pub mod error;
pub use error::ClientError;
pub mod policy;
