//! QUIC endpoints for Felix: quinn + rustls (TLS 1.3 only, ring provider),
//! ALPN `felix/1`. This module builds endpoints; [`crate::server`] and
//! [`crate::conn`] run the protocol over them.

pub mod framed;
pub mod identity;
pub mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{EndpointConfig, IdleTimeout, TokioRuntime, VarInt};
use thiserror::Error;

pub use tls::{dev_certificates, ClientTls, DevCertificates, IssuedCertificate, ServerTls};

/// ALPN protocol id of client↔broker connections, protocol version 1.
pub const ALPN: &[u8] = b"felix/1";

/// What the UDP socket asks the kernel for. Linux caps it at
/// `net.core.{r,w}mem_max`; the default 208 KiB drops packets under load.
pub const UDP_BUFFER_BYTES_DEFAULT: usize = 8 << 20;

/// Most bidirectional streams a client may open at once on one connection
/// (the default of `TransportConfig::bidi_streams_max`).
pub const BIDI_STREAMS_MAX: u32 = 256;
/// Most unidirectional streams (one per subscription) open at once.
pub const UNI_STREAMS_MAX: u32 = 1024;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("reading {path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid transport setting {key}: {why}")]
    Config { key: &'static str, why: String },
}

/// QUIC tuning shared by servers and clients.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Ping interval that keeps an idle connection open; `None` sends none.
    pub keep_alive_ms: Option<u64>,
    /// Flow-control window of one stream (bytes the peer may send unread).
    pub stream_window_bytes: u64,
    /// Flow-control window of a whole connection.
    pub connection_window_bytes: u64,
    /// Bytes this side may have sent and not yet acknowledged.
    pub send_window_bytes: u64,
    /// Requested SO_RCVBUF / SO_SNDBUF.
    pub udp_buffer_bytes: usize,
    /// Bidirectional streams the peer may open at once on one connection.
    pub bidi_streams_max: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            // A broker that died (or restarted) cannot say so over QUIC:
            // its connections are known dead only when this runs out, so
            // it bounds how long a failover takes a client to notice
            // (the target is 2 s; an election takes 0.9–1.9 s, and at
            // 1.5 s this timeout, not the election, was the gap in most
            // rounds). Clients ping four times per timeout so that a lost
            // ping does not close a live connection.
            idle_timeout_ms: 1_000,
            keep_alive_ms: Some(250),
            // Enough for a 16 MiB push frame in flight on loopback.
            stream_window_bytes: 16 << 20,
            connection_window_bytes: 64 << 20,
            send_window_bytes: 64 << 20,
            udp_buffer_bytes: UDP_BUFFER_BYTES_DEFAULT,
            bidi_streams_max: BIDI_STREAMS_MAX,
        }
    }
}

impl TransportConfig {
    pub(crate) fn quinn(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        let idle = IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms)).map_err(|e| {
            TransportError::Config {
                key: "idle_timeout_ms",
                why: e.to_string(),
            }
        })?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(self.keep_alive_ms.map(Duration::from_millis));
        t.stream_receive_window(varint("stream_window_bytes", self.stream_window_bytes)?);
        t.receive_window(varint("connection_window_bytes", self.connection_window_bytes)?);
        t.send_window(self.send_window_bytes);
        t.max_concurrent_bidi_streams(self.bidi_streams_max.into());
        t.max_concurrent_uni_streams(UNI_STREAMS_MAX.into());
        Ok(t)
    }
}

fn varint(key: &'static str, v: u64) -> Result<VarInt, TransportError> {
    VarInt::from_u64(v).map_err(|e| TransportError::Config {
        key,
        why: e.to_string(),
    })
}

/// A UDP socket with the requested buffers. Returns the socket and the
/// buffer sizes the kernel granted (receive, send).
pub fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> Result<(UdpSocket, usize, usize), TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| TransportError::Socket { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Failing to grow a buffer is not fatal: the kernel keeps its default.
    let _ = s.set_recv_buffer_size(buffer_bytes);
    let _ = s.set_send_buffer_size(buffer_bytes);
    s.bind(&addr.into()).map_err(err)?;
    let rcv = s.recv_buffer_size().map_err(err)?;
    let snd = s.send_buffer_size().map_err(err)?;
    // Linux reports double what it grants (the doubling covers bookkeeping).
    if rcv < buffer_bytes {
        tracing::warn!(
            requested = buffer_bytes,
            granted = rcv,
            "UDP receive buffer smaller than requested; raise net.core.rmem_max"
        );
    }
    Ok((s.into(), rcv, snd))
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    cfg: &TransportConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let (socket, _, _) = udp_socket(addr, cfg.udp_buffer_bytes)?;
    quinn::Endpoint::new(EndpointConfig::default(), server, socket, Arc::new(TokioRuntime))
        .map_err(|source| TransportError::Socket { addr, source })
}

/// A server endpoint bound to `addr` (port 0 picks one) speaking `alpn`.
/// Must be called inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: &ServerTls,
    alpn: &[u8],
    cfg: &TransportConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let crypto = tls.rustls(alpn)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::new(cfg.quinn()?));
    endpoint(addr, Some(sc), cfg)
}

/// A client endpoint on an ephemeral local port whose connections use `tls`
/// and `alpn` by default.
pub fn client_endpoint(
    tls: &ClientTls,
    alpn: &[u8],
    cfg: &TransportConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let mut ep = endpoint(SocketAddr::from(([0, 0, 0, 0], 0)), None, cfg)?;
    ep.set_default_client_config(client_config(tls, alpn, cfg)?);
    Ok(ep)
}

/// Outgoing-connection settings (for an endpoint that also serves, such as
/// the brokers' replication endpoint).
pub fn client_config(
    tls: &ClientTls,
    alpn: &[u8],
    cfg: &TransportConfig,
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = tls.rustls(alpn)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(Arc::new(cfg.quinn()?));
    Ok(cc)
}
