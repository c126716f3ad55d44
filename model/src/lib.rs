//! `felix-model`: one model of a stream and a cache, below every other
//! Felix crate, so that the log, the wire, the broker and the control plane
//! cannot disagree on it.
//!
//! - [`names`]: the one name rule (`tenant/namespace/name`, each part
//!   1–64 of `A-Z a-z 0-9 . _ -`) and the dead-letter suffix;
//! - [`durability`]: what an acknowledgement promises about the disk;
//! - [`spec`]: what kind of log a stream is ([`StreamKind`]);
//! - [`routing`]: which shard a key belongs to ([`KeyRouting`]);
//! - [`limits`]: the bounds two layers check and must agree on.
//!
//! Pure data and rules: no I/O, no clock.

pub mod durability;
pub mod limits;
pub mod names;
pub mod routing;
pub mod spec;

pub use durability::Durability;
pub use names::{NameError, StreamName};
pub use routing::KeyRouting;
pub use spec::{SpecError, StreamKind};
