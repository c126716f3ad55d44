//! Whose a client's producer, cache-writer and group-consumer ids are.
//! Clients choose these ids, and anyone who reads a stream sees the
//! producer ids in its batches. Were they taken as given, a client allowed
//! to publish could claim another's next `(producer, sequence)` so that
//! the victim's write is answered as a duplicate and dropped, or nack
//! another consumer's leases. So a broker that checks tokens binds each id
//! to the principal that sent it: the id stored, deduplicated and leased
//! by is derived from the tenant, the principal, the kind of id and the
//! client's id. The same principal gets the same id from any connection
//! (a retry after a reconnect is still recognised); another principal
//! cannot reach it without a SHA-256 second preimage of 63 bits.
//!
//! Without tokens (`require_tokens = false`) every client is trusted with
//! everything and ids are taken as given.

use bytes::{Bytes, BytesMut};
use felix_log::ProducerId;

use crate::control::access::Principal;
use crate::error::BrokerError;

/// Which id is bound: the kinds never share a derived id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Producer,
    Writer,
    Consumer,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Producer => b"producer",
            Kind::Writer => b"writer",
            Kind::Consumer => b"consumer",
        }
    }
}

/// The id the broker uses for a client's `id`: `id` itself without a
/// principal, or for 0 (no id), else one derived from the principal. A
/// derived id is positive and never 0, like a client's.
pub fn bind(principal: Option<&Principal>, kind: Kind, id: u64) -> u64 {
    let Some(p) = principal else { return id };
    if id == 0 {
        return 0;
    }
    derive(&p.claims.tid, &p.claims.sub, kind, id)
}

fn derive(tenant: &str, subject: &str, kind: Kind, id: u64) -> u64 {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    // Lengths first, so no two (tenant, subject) pairs share a byte string.
    for part in [tenant.as_bytes(), subject.as_bytes(), kind.tag()] {
        d.update(&(part.len() as u64).to_le_bytes());
        d.update(part);
    }
    d.update(&id.to_le_bytes());
    let digest = d.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_le_bytes(first) >> 1) | 1
}

/// A publish's batch with its header's producer id rewritten from the
/// client's `client_id` to `bound`; a batch whose header names another
/// producer is left as it is, for the shard to refuse.
pub fn rebind_batch(batch: Bytes, client_id: u64, bound: u64) -> Result<Bytes, BrokerError> {
    if bound == client_id {
        return Ok(batch);
    }
    let header = felix_log::batch::BatchHeader::decode(&batch)?;
    if header.producer_id.0 != client_id {
        return Ok(batch);
    }
    // Usually the only reference (the frame it arrived in): no copy.
    let mut b = batch
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    felix_log::batch::stamp_producer(&mut b, ProducerId(bound));
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_bound_to_its_tenant_principal_and_kind() {
        let a = derive("acme", "p:alice", Kind::Producer, 7);
        assert_eq!(a, derive("acme", "p:alice", Kind::Producer, 7), "stable");
        for other in [
            derive("acme", "p:bob", Kind::Producer, 7),
            derive("beta", "p:alice", Kind::Producer, 7),
            derive("acme", "p:alice", Kind::Writer, 7),
            derive("acme", "p:alice", Kind::Producer, 8),
            // The length prefix keeps a shifted split apart.
            derive("acmep", ":alice", Kind::Producer, 7),
        ] {
            assert_ne!(a, other);
        }
        assert!(a != 0 && a < 1 << 63);
        assert_eq!(bind(None, Kind::Producer, 7), 7, "no tokens: as given");
    }
}
