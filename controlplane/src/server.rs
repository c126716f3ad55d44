//! Starting and stopping a control-plane node: its Raft member plus the
//! HTTP(S) listeners (the API, and the bootstrap endpoint when configured).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api;
use crate::https;
use crate::node::{CpError, Node, NodeConfig};

/// A running node. Dropping it does not stop it; call [`Handle::shutdown`].
#[derive(Debug)]
pub struct Handle {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub bootstrap_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
}

/// Binds the listeners first (so a port-0 address is known), then starts
/// Raft with that address as the advertised one when none is configured.
pub async fn start(mut cfg: NodeConfig) -> Result<Handle, CpError> {
    // Before any request, so the first ones are counted too.
    crate::metrics::handle();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CpError::Unavailable(format!("binding {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CpError::Unavailable(e.to_string()))?;
    cfg.listen = addr;
    let boot = match cfg.bootstrap_listen {
        Some(b) => Some(
            tokio::net::TcpListener::bind(b)
                .await
                .map_err(|e| CpError::Unavailable(format!("binding bootstrap {b}: {e}")))?,
        ),
        None => None,
    };
    let bootstrap_addr = boot.as_ref().and_then(|l| l.local_addr().ok());
    // Before Raft starts: a certificate that cannot be read stops the node
    // here, not after it has joined its peers.
    let tls = cfg
        .tls
        .as_ref()
        .map(https::server_config)
        .transpose()
        .map_err(|e| CpError::Unavailable(e.to_string()))?;
    let node = Node::start(cfg).await?;
    let (stop, rx) = watch::channel(false);
    https::spawn(listener, api::router(node.clone()), tls.clone(), rx.clone());
    if let Some(l) = boot {
        https::spawn(l, api::bootstrap_router(node.clone()), tls, rx);
    }
    tracing::info!(%addr, ?bootstrap_addr, id = node.id, scheme = node.cfg.scheme(), "control plane listening");
    Ok(Handle {
        node,
        addr,
        bootstrap_addr,
        stop,
    })
}

impl Handle {
    /// The API's base URL (`https://` when the node serves TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.node.cfg.scheme(), self.addr)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.node.raft.shutdown().await;
    }
}
