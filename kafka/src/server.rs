//! The listener: TCP (and TLS, with the broker's certificate), one task
//! per connection, requests answered one at a time in order, as Kafka
//! does (a connection's next request is not read before the last one's
//! response is written, so a client's pipeline waits in its socket, not
//! in this process). Every request becomes the broker's own requests on
//! its [`Handler`], so tokens, RBAC, quotas and durability are the QUIC
//! door's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use felix_client::server::{Handler, HelloRequest, Peer};
use felix_client::wire::ErrorReply;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::apis::{self, Request};
use crate::exec::{Clock, Door, Settings};
use crate::frame::{self, Head, PRE_AUTH_REQUEST_BYTES_MAX, REQUEST_BYTES_MAX};
use crate::{sasl, walk};

/// Connections one listener serves at once; past it a new one is closed.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Longest a TLS handshake may take.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 5_000;
/// A connection that has not authenticated by then is closed.
pub const AUTH_MS_MAX: u64 = 30_000;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 64 << 10;
/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;
/// UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// A running listener.
#[derive(Debug)]
pub struct KafkaServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl KafkaServer {
    /// Stops accepting and closes every connection.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves `listener` until closed.
pub fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut settings: Settings,
    clock: Clock,
) -> std::io::Result<KafkaServer> {
    let addr = listener.local_addr()?;
    if settings.advertise.is_none() {
        settings.advertise = Some(addr.to_string());
    }
    // Member ids of this listener's life start with the time it began,
    // unlike any an earlier life handed out.
    let incarnation = clock() as u64;
    let coordinator = Arc::new(crate::coordinator::Coordinator::new(incarnation));
    let door = Arc::new(Door {
        handler,
        settings,
        clock: clock.clone(),
        coordinator: coordinator.clone(),
        sequences: crate::idem::Sequences::default(),
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(coordinator.sweep_until(clock, stopped.clone()));
    let task = tokio::spawn(accept_loop(listener, door, stopped));
    Ok(KafkaServer { addr, stop, task })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    door: Arc<Door<H>>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(door.settings.connections_max));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "kafka listener: connection limit reached; closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            door: door.clone(),
            peer: Peer {
                address: peer,
                has_certificate: false,
            },
            session: None,
            tenant: String::new(),
            mechanism: None,
            bare_sasl: false,
        };
        let mut stop = stopped.clone();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = stop.changed() => {}
                _ = conn.run(tcp) => {}
            }
        });
    }
    tasks.shutdown().await;
}

/// One connection's state.
struct Conn<H: Handler> {
    door: Arc<Door<H>>,
    peer: Peer,
    /// The broker's session once authenticated (at once when tokens are
    /// not required).
    session: Option<Arc<H::Session>>,
    tenant: String,
    /// The mechanism SaslHandshake picked.
    mechanism: Option<&'static str>,
    /// A v0 handshake picked it: the next frame is the bare token.
    bare_sasl: bool,
}

/// After a request: go on, or close the connection.
enum Then {
    Go,
    Close,
}

impl<H: Handler> Conn<H> {
    async fn run(mut self, tcp: tokio::net::TcpStream) {
        match self.door.settings.tls.clone() {
            None => self.serve(tcp).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let handshake =
                    tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_MS_MAX), acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(s)) => {
                        self.peer.has_certificate = s.get_ref().1.peer_certificates().is_some();
                        self.serve(s).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer.address, error = %e, "kafka: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer.address, "kafka: TLS handshake timed out"),
                }
            }
        }
    }

    async fn hello(&self, token: Bytes) -> Result<(H::Session, String), ErrorReply> {
        let hello = HelloRequest {
            version: u16::from(felix_client::wire::frame::VERSION),
            capabilities: 0,
            token,
        };
        let (s, _) = self.door.handler.hello(&self.peer, hello).await?;
        let tenant = self
            .door
            .handler
            .tenant(&s)
            .unwrap_or_else(|| felix_model::names::DEV_TENANT.to_owned());
        Ok((s, tenant))
    }

    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(&mut self, mut io: IO) {
        // Without tokens (no control plane) the connection is in at once.
        if let Ok((s, tenant)) = self.hello(Bytes::new()).await {
            self.session = Some(Arc::new(s));
            self.tenant = tenant;
        }
        let auth_by = tokio::time::Instant::now() + Duration::from_millis(AUTH_MS_MAX);
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let mut out = BytesMut::new();
        loop {
            let max = if self.session.is_some() {
                REQUEST_BYTES_MAX
            } else {
                PRE_AUTH_REQUEST_BYTES_MAX
            };
            let next = if self.bare_sasl {
                frame::next_bare(&mut buf, PRE_AUTH_REQUEST_BYTES_MAX)
            } else {
                frame::next_request(&mut buf, max)
            };
            let req = match next {
                Ok(Some(r)) => r,
                Ok(None) => {
                    buf.reserve(READ_BYTES);
                    let read = io.read_buf(&mut buf);
                    let r = if self.session.is_none() {
                        match tokio::time::timeout_at(auth_by, read).await {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::info!(peer = %self.peer.address, "kafka: closing a connection that did not authenticate in time");
                                return;
                            }
                        }
                    } else {
                        read.await
                    };
                    match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer.address, error = %e, "kafka: closing the connection");
                    return;
                }
            };
            let then = if self.bare_sasl {
                self.bare_sasl = false;
                self.bare_token(req, &mut out).await
            } else {
                self.request(req, &mut out).await
            };
            if !out.is_empty() {
                if io.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            if let Then::Close = then {
                let _ = io.flush().await;
                return;
            }
        }
    }

    async fn request(&mut self, req: Bytes, out: &mut BytesMut) -> Then {
        let (head, body) = match frame::split(req) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer = %self.peer.address, error = %e, "kafka: closing the connection");
                return Then::Close;
            }
        };
        let Head {
            key,
            version,
            correlation_id,
            client_id,
        } = head;
        let key = match key {
            Ok(k) => k,
            Err(raw) => {
                // Kafka has no response for a key it does not know: it
                // closes the connection, and so does this door.
                tracing::warn!(peer = %self.peer.address, api_key = raw, "kafka: unknown API key; closing the connection");
                return Then::Close;
            }
        };
        if key == ApiKey::ApiVersions && !apis::serves(key, version) {
            // KIP-511: answer v0 with the error and what is served, so the
            // client can retry with a version both know.
            let mut r = api_versions();
            r.error_code = UNSUPPORTED_VERSION;
            return self.respond(out, key, 0, correlation_id, &r);
        }
        if let Err(e) = walk::check(key, version, &body) {
            tracing::warn!(peer = %self.peer.address, api = ?key, version, error = %e, "kafka: refused request; closing the connection");
            return Then::Close;
        }
        let request = match apis::decode(key, version, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %self.peer.address, api = ?key, version, error = %e, "kafka: undecodable request; closing the connection");
                return Then::Close;
            }
        };
        match request {
            Request::ApiVersions(_) => self.respond(out, key, version, correlation_id, &api_versions()),
            Request::SaslHandshake(r) => {
                let mut resp = SaslHandshakeResponse::default();
                resp.mechanisms = sasl::MECHANISMS
                    .iter()
                    .map(|m| StrBytes::from_static_str(m))
                    .collect();
                match sasl::MECHANISMS.iter().find(|&&m| m == r.mechanism.as_str()) {
                    Some(&m) => {
                        self.mechanism = Some(m);
                        self.bare_sasl = version == 0;
                    }
                    None => resp.error_code = UNSUPPORTED_SASL_MECHANISM,
                }
                self.respond(out, key, version, correlation_id, &resp)
            }
            Request::SaslAuthenticate(r) => {
                let mut resp = SaslAuthenticateResponse::default();
                let Some(m) = self.mechanism else {
                    resp.error_code = ILLEGAL_SASL_STATE;
                    resp.error_message =
                        Some(StrBytes::from_static_str("SaslAuthenticate before SaslHandshake"));
                    self.respond(out, key, version, correlation_id, &resp);
                    return Then::Close;
                };
                let token = match sasl::token_of(m, &r.auth_bytes) {
                    Ok(t) => t,
                    Err(why) => {
                        resp.error_code = SASL_AUTHENTICATION_FAILED;
                        resp.error_message = Some(StrBytes::from_static_str(why));
                        self.respond(out, key, version, correlation_id, &resp);
                        return Then::Close;
                    }
                };
                match self.hello(token).await {
                    Ok((s, tenant)) => {
                        self.session = Some(Arc::new(s));
                        self.tenant = tenant;
                        self.respond(out, key, version, correlation_id, &resp)
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer.address, error = %e, "kafka: SASL authentication failed");
                        resp.error_code = SASL_AUTHENTICATION_FAILED;
                        resp.error_message = Some(StrBytes::from_string(e.to_string()));
                        self.respond(out, key, version, correlation_id, &resp);
                        Then::Close
                    }
                }
            }
            other => {
                let Some(session) = self.session.clone() else {
                    // As Kafka does with a request before SASL completes.
                    tracing::warn!(peer = %self.peer.address, api = ?key, "kafka: request before SASL authentication; closing the connection");
                    return Then::Close;
                };
                let cx = crate::exec::Cx {
                    session: &session,
                    tenant: &self.tenant,
                    version,
                    client_id: client_id.as_deref().unwrap_or(""),
                    peer: self.peer.address,
                };
                match self.door.exec(&cx, other).await {
                    Ok(Some(resp)) => {
                        let r = resp.encode_into(out, key, version, correlation_id);
                        if let Err(e) = r {
                            tracing::error!(api = ?key, version, error = %e, "kafka: a response could not be encoded");
                            return Then::Close;
                        }
                        Then::Go
                    }
                    // acks=0: Kafka sends nothing back.
                    Ok(None) => Then::Go,
                    Err(e) => {
                        tracing::warn!(peer = %self.peer.address, api = ?key, error = %e, "kafka: closing the connection");
                        Then::Close
                    }
                }
            }
        }
    }

    /// The token of a v0 handshake, as a bare frame: an empty frame back
    /// on success, the connection closed on failure (Kafka's way).
    async fn bare_token(&mut self, auth: Bytes, out: &mut BytesMut) -> Then {
        let m = self.mechanism.expect("a handshake picked the mechanism");
        let token = match sasl::token_of(m, &auth) {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(peer = %self.peer.address, why, "kafka: SASL authentication failed");
                return Then::Close;
            }
        };
        match self.hello(token).await {
            Ok((s, tenant)) => {
                self.session = Some(Arc::new(s));
                self.tenant = tenant;
                out.extend_from_slice(&0i32.to_be_bytes());
                Then::Go
            }
            Err(e) => {
                tracing::info!(peer = %self.peer.address, error = %e, "kafka: SASL authentication failed");
                Then::Close
            }
        }
    }

    fn respond<T: kafka_protocol::protocol::Encodable>(
        &self,
        out: &mut BytesMut,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &T,
    ) -> Then {
        match frame::respond(out, key, version, correlation_id, body) {
            Ok(()) => Then::Go,
            Err(e) => {
                tracing::error!(api = ?key, version, error = %e, "kafka: a response could not be encoded");
                Then::Close
            }
        }
    }
}

/// What ApiVersions answers: [`apis::SERVED`].
fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = apis::SERVED
        .iter()
        .map(|&(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = lo;
            v.max_version = hi;
            v
        })
        .collect();
    r
}
