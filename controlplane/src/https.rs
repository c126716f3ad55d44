//! The control plane's HTTP(S) edge: its listeners (the API with the Raft
//! routes, and the bootstrap endpoint) with TLS when configured, and the
//! client its nodes dial each other with. Every connection is bounded
//! before a byte of it is authenticated: a cap on connections, a deadline
//! on the TLS handshake and on reading a request's head.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{watch, Semaphore};

use crate::config::ApiTls;

/// TLS material that cannot be used, or a client that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpsError(String);

/// Connections one listener serves at once; the next waits in the
/// kernel's backlog until one closes (the brokers' feed long-polls and
/// heartbeats hold one each, operators a few).
pub const CONNECTIONS_MAX: usize = 1_024;
/// How long a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 5_000;
/// How long a client has to send a request's head once it starts one.
pub const REQUEST_HEAD_MS_MAX: u64 = 10_000;
/// Bytes of a request's head (request line and headers) read at most.
pub const REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, HttpsError> {
    std::fs::read(path).map_err(|e| HttpsError(format!("reading {}: {e}", path.display())))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(HttpsError(format!("{}: no certificate in it", path.display())));
    }
    Ok(certs)
}

/// The rustls configuration a TLS listener serves with.
pub fn server_config(tls: &ApiTls) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    let chain = certificates(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| HttpsError(format!("{}: {e}", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| HttpsError(format!("{}: {e}", tls.cert.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client for the other nodes: with `ca`, that CA and no other is
/// trusted (a certificate from a public CA naming the peer's host is not
/// enough).
///
/// Every request names `region`, this node's, in
/// [`crate::raft::network::REGION_HEADER`]: a peer of another region
/// refuses it, so two control planes of different regions never merge.
pub fn peer_client(
    ca: Option<&Path>,
    connect_timeout: Duration,
    region: &str,
) -> Result<reqwest::Client, HttpsError> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        crate::raft::network::REGION_HEADER,
        reqwest::header::HeaderValue::from_str(region)
            .map_err(|e| HttpsError(format!("region {region:?}: {e}")))?,
    );
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        // A peer never redirects; following one could carry the secret
        // elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        b = b.tls_built_in_root_certs(false);
        for c in certificates(ca)? {
            let c = reqwest::Certificate::from_der(&c)
                .map_err(|e| HttpsError(format!("{}: {e}", ca.display())))?;
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| HttpsError(e.to_string()))
}

/// Serves `router` on `listener` until `stop` turns true: over TLS with
/// `tls`, plain HTTP/1.1 otherwise.
pub fn spawn(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // Wait for room before accepting: a flood stays in the backlog
            // instead of in this process's memory.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = stopped(&mut stop) => break,
            };
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, say: back off, do not spin.
                        tracing::warn!(error = %e, "control-plane accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => break,
            };
            while connections.try_join_next().is_some() {}
            let router = router.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tls {
                    None => serve_connection(tcp, router).await,
                    Some(acceptor) => {
                        let handshake = Duration::from_millis(TLS_HANDSHAKE_MS_MAX);
                        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => serve_connection(stream, router).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "control-plane TLS handshake refused"),
                            Err(_) => tracing::debug!("control-plane TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        // Stopping ends the connections too (a feed long-poll would
        // otherwise hold the process for its whole wait).
        connections.shutdown().await;
    });
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_connection<S>(stream: S, router: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let r = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(REQUEST_HEAD_MS_MAX))
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "control-plane connection ended with an error");
    }
}
