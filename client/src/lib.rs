//! `felix-client`: the Felix wire protocol and the async client.
//!
//! - [`wire`]: the sans-IO codec clients and brokers share.
//! - [`transport`]: QUIC endpoints (quinn, rustls), TLS material, the
//!   development CA.
//! - [`server`]: the server half of the protocol, which the broker drives
//!   with its own [`server::Handler`].
//! - [`Client`] and what hangs off it: [`Producer`], [`Subscription`],
//!   [`GroupConsumer`], [`Cache`]; retry, circuit-breaker and key-routing
//!   rules in [`policy`].

pub mod client;
pub mod conn;
pub mod error;
pub mod ops;
pub mod policy;
pub mod producer;
pub mod sealed;
pub mod server;
pub mod subscription;
pub mod transport;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use client::{Client, ClientConfig, Route};
pub use error::ClientError;
pub use ops::{Cache, CasOutcome, GroupConsumer, Leased};
pub use producer::{PendingAck, Producer, ProducerConfig, ProducerRecord, RecordAck};
pub use sealed::{SealError, ValueKeys};
pub use subscription::{Delivery, SubscribeOptions, Subscription};
