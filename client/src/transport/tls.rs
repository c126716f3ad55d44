//! TLS material: certificates and keys from PEM files, the optional client
//! certificate check (mTLS), and the development CA `felix dev` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TransportError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        path: path.to_owned(),
        source,
    })
}

fn certs_pem(pem: &[u8], what: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Tls(format!("{}: {e}", what.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{}: no certificate in it",
            what.display()
        )));
    }
    Ok(certs)
}

fn key_pem(pem: &[u8], what: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TransportError::Tls(format!("{}: {e}", what.display())))
}

fn roots(certs: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>, TransportError> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store.add(c).map_err(tls_err)?;
    }
    Ok(Arc::new(store))
}

/// A server's certificate chain and key, and the CA its clients must
/// present certificates from when mTLS is on.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
    /// A DNS name every client certificate must carry besides chaining to
    /// `client_ca` (the replication listener's region name): checked in
    /// the handshake, so a peer without it never gets a stream.
    pub client_name: Option<String>,
}

impl ServerTls {
    /// From PEM files; `client_ca` turns mTLS on.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, TransportError> {
        Ok(ServerTls {
            chain: certs_pem(&read(cert)?, cert)?,
            key: Arc::new(key_pem(&read(key)?, key)?),
            client_ca: client_ca.map(|p| certs_pem(&read(p)?, p)).transpose()?,
            client_name: None,
        })
    }

    /// Requires every client certificate to carry DNS name `name` too.
    pub fn with_client_name(mut self, name: String) -> ServerTls {
        self.client_name = Some(name);
        self
    }

    pub(crate) fn rustls(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TransportError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(ca.clone())?,
                    provider(),
                )
                .build()
                .map_err(tls_err)?;
                match &self.client_name {
                    None => builder.with_client_cert_verifier(verifier),
                    Some(name) => builder.with_client_cert_verifier(Arc::new(NamedClients {
                        inner: verifier,
                        name: rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(|e| TransportError::Tls(format!("{name:?}: {e}")))?,
                    })),
                }
            }
        };
        let mut cfg = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }

    /// The same certificate (and client CA) for a TCP listener whose
    /// clients name no ALPN protocol (the Redis door: `redis-cli --tls`).
    pub fn rustls_tcp(&self) -> Result<rustls::ServerConfig, TransportError> {
        let mut cfg = self.rustls(b"")?;
        cfg.alpn_protocols.clear();
        Ok(cfg)
    }
}

/// Client certificates verified by `inner` (the chain) and then required
/// to carry DNS name `name`.
#[derive(Debug)]
struct NamedClients {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::server::danger::ClientCertVerifier for NamedClients {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The CA a client trusts and, for mTLS, its own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl ClientTls {
    /// Trusting the CA certificates in `pem` (no client certificate).
    pub fn from_ca_pem(pem: &[u8]) -> Result<ClientTls, TransportError> {
        Ok(ClientTls {
            ca: certs_pem(pem, Path::new("the CA PEM"))?,
            identity: None,
        })
    }

    /// From PEM files: the CA to trust, and optionally a certificate and key
    /// to present.
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TransportError> {
        let identity = match identity {
            None => None,
            Some((c, k)) => Some((certs_pem(&read(c)?, c)?, Arc::new(key_pem(&read(k)?, k)?))),
        };
        Ok(ClientTls {
            ca: certs_pem(&read(ca)?, ca)?,
            identity,
        })
    }

    pub(crate) fn rustls(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TransportError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots(self.ca.clone())?);
        let mut cfg = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(tls_err)?,
        };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

/// Where the development certificates are, under `DIR/tls/`.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    pub dir: PathBuf,
    /// The CA clients trust (`ca.pem`); its key (`ca.key`) signs the others.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate signed by the same CA, for trying mTLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevCertificates {
    pub fn server_tls(&self, mtls: bool) -> Result<ServerTls, TransportError> {
        ServerTls::from_pem_files(
            &self.server_cert,
            &self.server_key,
            mtls.then_some(self.ca.as_path()),
        )
    }

    pub fn client_tls(&self, with_identity: bool) -> Result<ClientTls, TransportError> {
        ClientTls::from_pem_files(
            &self.ca,
            with_identity.then_some((self.client_cert.as_path(), self.client_key.as_path())),
        )
    }
}

/// Creates (or reuses, when all files exist) a development CA under
/// `dir/tls/`, a server certificate for `localhost` and `127.0.0.1` plus
/// `extra_names`, and a client certificate. Reusing keeps a CA handed to
/// clients valid across restarts. Keys are written with mode 0600.
pub fn dev_certificates(dir: &Path, extra_names: &[String]) -> Result<DevCertificates, TransportError> {
    let tls = dir.join("tls");
    let d = DevCertificates {
        ca: tls.join("ca.pem"),
        server_cert: tls.join("server.pem"),
        server_key: tls.join("server.key"),
        client_cert: tls.join("client.pem"),
        client_key: tls.join("client.key"),
        dir: tls.clone(),
    };
    let all = [
        &d.ca,
        &d.server_cert,
        &d.server_key,
        &d.client_cert,
        &d.client_key,
    ];
    if all.iter().all(|p| p.exists()) {
        return Ok(d);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TransportError::File { path, source }
    };
    std::fs::create_dir_all(&tls).map_err(io(&tls))?;
    use rcgen::{CertificateParams, DnType, KeyPair};
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let ca = dev_ca_params()?.self_signed(&ca_key).map_err(tls_err)?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(extra_names.iter().cloned());
    let server_key = KeyPair::generate().map_err(tls_err)?;
    let mut sp = CertificateParams::new(names).map_err(tls_err)?;
    sp.distinguished_name
        .push(DnType::CommonName, "felix broker (dev)");
    let server = sp.signed_by(&server_key, &ca, &ca_key).map_err(tls_err)?;

    let client_key = KeyPair::generate().map_err(tls_err)?;
    let mut cp = CertificateParams::new(vec!["felix-dev-client".to_owned()]).map_err(tls_err)?;
    cp.distinguished_name.push(DnType::CommonName, "felix dev client");
    let client = cp.signed_by(&client_key, &ca, &ca_key).map_err(tls_err)?;

    write(&tls.join("ca.key"), ca_key.serialize_pem().as_bytes(), true)?;
    write(&d.server_key, server_key.serialize_pem().as_bytes(), true)?;
    write(&d.client_key, client_key.serialize_pem().as_bytes(), true)?;
    write(&d.server_cert, server.pem().as_bytes(), false)?;
    write(&d.client_cert, client.pem().as_bytes(), false)?;
    // The CA last: its presence with the rest marks a complete set.
    write(&d.ca, ca.pem().as_bytes(), false)?;
    Ok(d)
}

/// The development CA's certificate parameters. A child is matched to its
/// issuer by the issuer's name and verified with its key, so the CA
/// rebuilt from these and `ca.key` signs certificates that chain to the
/// `ca.pem` written once.
fn dev_ca_params() -> Result<rcgen::CertificateParams, TransportError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa};
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "Felix development CA");
    Ok(p)
}

/// A certificate and key issued by a CA, and that CA's certificate (never
/// its key). A broker's names the broker ([`super::identity`]) and is
/// presented both ways, to the peers it dials and to the peers that dial
/// it, with the peers' certificates required to chain to `ca`; a
/// control-plane node's names the hosts it is reached under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl IssuedCertificate {
    /// Serving peers: this broker's certificate, and peers' certificates
    /// required from `ca`.
    pub fn server_tls(&self) -> Result<ServerTls, TransportError> {
        ServerTls::from_pem_files(&self.cert, &self.key, Some(&self.ca))
    }

    /// Dialling peers: `ca` trusted, this broker's certificate presented.
    pub fn client_tls(&self) -> Result<ClientTls, TransportError> {
        ClientTls::from_pem_files(&self.ca, Some((&self.cert, &self.key)))
    }
}

impl DevCertificates {
    /// Issues broker `broker` of region `region` a replication
    /// certificate under `dir` (`broker.pem`, `broker.key` with mode
    /// 0600), signed by this CA, naming the broker, its region and
    /// `localhost`, so it also serves the broker's clients. Reuses one
    /// already there that names `broker` in `region`. The broker is given
    /// the certificate, its key and `ca.pem`, never `ca.key`.
    pub fn issue_broker(
        &self,
        broker: u64,
        region: &str,
        dir: &Path,
    ) -> Result<IssuedCertificate, TransportError> {
        let mut names = super::identity::broker_names(broker, region);
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]);
        // The region stays out of the certificate's common name: the
        // subject alternative name alone decides, so an operator's CA
        // states it one way.
        self.issue(
            dir,
            "broker",
            names,
            &format!("felix broker {broker} (dev)"),
            |chain| super::identity::names_broker_in(&chain[0], broker, region),
        )
    }

    /// Issues a control-plane node a serving certificate under `dir`
    /// (`controlplane.pem`, `controlplane.key` with mode 0600) for
    /// `localhost`, `127.0.0.1` and `::1` plus `names` (the hosts its
    /// peers and brokers reach it under). Reuses one already there.
    pub fn issue_controlplane(
        &self,
        dir: &Path,
        names: &[String],
    ) -> Result<IssuedCertificate, TransportError> {
        let mut all = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        all.extend(names.iter().cloned());
        let wanted = all.clone();
        self.issue(
            dir,
            "controlplane",
            all,
            "felix control plane (dev)",
            move |chain| wanted.iter().all(|n| super::identity::names(&chain[0], n)),
        )
    }

    /// Signs a certificate for `names` with this CA into `dir/{stem}.pem`
    /// and `dir/{stem}.key`, unless one there already passes `fits`.
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: Vec<String>,
        common_name: &str,
        fits: impl FnOnce(&[CertificateDer<'static>]) -> bool,
    ) -> Result<IssuedCertificate, TransportError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let out = IssuedCertificate {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            ca: self.ca.clone(),
        };
        if out.key.exists() && out.cert.exists() && fits(&certs_pem(&read(&out.cert)?, &out.cert)?) {
            return Ok(out);
        }
        std::fs::create_dir_all(dir).map_err(|source| TransportError::File {
            path: dir.to_owned(),
            source,
        })?;
        let ca_key_path = self.dir.join("ca.key");
        let ca_key_pem = String::from_utf8(read(&ca_key_path)?).map_err(tls_err)?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_err)?;
        let ca = dev_ca_params()?.self_signed(&ca_key).map_err(tls_err)?;
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut p = CertificateParams::new(names).map_err(tls_err)?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(tls_err)?;
        write(&out.key, key.serialize_pem().as_bytes(), true)?;
        write(&out.cert, cert.pem().as_bytes(), false)?;
        Ok(out)
    }
}

fn write(path: &Path, data: &[u8], secret: bool) -> Result<(), TransportError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TransportError::File {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
