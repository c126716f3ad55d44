//! Which broker a replication certificate speaks for.
//!
//! A broker's replication certificate carries two DNS names: its own,
//! `broker-<id>.felix`, and the one every broker of a cluster shares,
//! `broker.felix`. A broker dials a peer under the shared name (it knows
//! the address, not always the broker behind it) and then checks the
//! peer's own name wherever the broker matters: against the sender a
//! Raft RPC claims, and against the node an RPC is addressed to. The
//! names live in the certificate's subject alternative names, so an
//! operator's own CA can issue them with any tool.
//!
//! A third name, `<region>.region.felix`, puts the broker in a region.
//! Peers are dialled under it and a dialling peer's certificate must carry
//! it, so the TLS handshake itself refuses a broker of another region even
//! when one CA signed both.

pub use felix_model::names::{region_problem, REGION_DEFAULT};
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;

/// The name every broker's replication certificate carries; peers are
/// dialled under it.
pub const BROKER_NAME_SHARED: &str = "broker.felix";

/// Broker `broker`'s own name in its certificate.
pub fn broker_name(broker: u64) -> String {
    format!("broker-{broker}.felix")
}

/// The name every broker of region `region` carries in its replication
/// certificate; peers are dialled under it.
pub fn region_name(region: &str) -> String {
    format!("{region}.region.felix")
}

/// The names a certificate for `broker` in `region` must carry.
pub fn broker_names(broker: u64, region: &str) -> Vec<String> {
    vec![
        broker_name(broker),
        BROKER_NAME_SHARED.to_owned(),
        region_name(region),
    ]
}

/// Whether `cert` names `broker` in `region`: every name of
/// [`broker_names`].
pub fn names_broker_in(cert: &CertificateDer<'_>, broker: u64, region: &str) -> bool {
    broker_names(broker, region).iter().all(|n| names(cert, n))
}

/// Whether the end-entity certificate `cert` names `broker`. Checks the
/// name only: the chain was verified by the TLS handshake.
pub fn names_broker(cert: &CertificateDer<'_>, broker: u64) -> bool {
    names(cert, &broker_name(broker))
}

/// Whether `cert` carries DNS name `name`.
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &server_name).is_ok()
}

/// The first certificate of a PEM file's bytes.
pub fn first_certificate(pem: &[u8]) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).next()?.ok()
}

/// The certificates a QUIC peer presented, end entity first (empty when
/// it presented none).
pub fn peer_certificates(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_certificate_names_its_broker_and_the_shared_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::transport::dev_certificates(dir.path(), &[]).unwrap();
        let b2 = dev.issue_broker(2, "eu", &dir.path().join("b2")).unwrap();
        let cert = first_certificate(&std::fs::read(&b2.cert).unwrap()).unwrap();
        assert!(names_broker(&cert, 2));
        assert!(names(&cert, BROKER_NAME_SHARED));
        assert!(names_broker_in(&cert, 2, "eu"));
        assert!(!names_broker_in(&cert, 2, "us"));
        assert!(!names(&cert, &region_name("local")));
        assert!(!names_broker(&cert, 3));
        assert!(!names_broker(&cert, 22));
        // The generic development server certificate speaks for no broker.
        let generic = first_certificate(&std::fs::read(&dev.server_cert).unwrap()).unwrap();
        assert!(!names_broker(&generic, 2));
        assert!(!names(&generic, BROKER_NAME_SHARED));
    }

    #[test]
    fn a_reissue_keeps_a_certificate_that_names_the_broker_and_replaces_one_that_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::transport::dev_certificates(dir.path(), &[]).unwrap();
        let out = dir.path().join("b");
        let first = dev.issue_broker(4, "eu", &out).unwrap();
        let before = std::fs::read(&first.cert).unwrap();
        dev.issue_broker(4, "eu", &out).unwrap();
        assert_eq!(std::fs::read(&first.cert).unwrap(), before);
        dev.issue_broker(5, "eu", &out).unwrap();
        let cert = first_certificate(&std::fs::read(&first.cert).unwrap()).unwrap();
        assert!(names_broker(&cert, 5) && !names_broker(&cert, 4));
        // A broker moved to another region gets a certificate for it.
        dev.issue_broker(5, "us", &out).unwrap();
        let cert = first_certificate(&std::fs::read(&first.cert).unwrap()).unwrap();
        assert!(names_broker_in(&cert, 5, "us") && !names_broker_in(&cert, 5, "eu"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
