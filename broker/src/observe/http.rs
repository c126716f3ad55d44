//! The admin HTTP address: Prometheus `/metrics`, `/live` (the process
//! answers) and `/ready` (it has its metadata, and every shard group it
//! votes in has a leader), for orchestrators and load balancers.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::BrokerError;
use crate::node::Node;

/// Serves the admin endpoints of `node` on `listen` until the node is
/// dropped; returns the bound address.
pub async fn serve(listen: SocketAddr, node: &Arc<Node>) -> Result<SocketAddr, BrokerError> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let addr = l.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(Arc::downgrade(node));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });
    Ok(addr)
}

type S = State<Weak<Node>>;

async fn metrics(State(node): S) -> Response {
    let Some(n) = node.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let Some(h) = super::metrics::handle() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no metrics recorder").into_response();
    };
    super::gauges::observe_node(&n);
    ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response()
}

/// Why the node is not ready, if it is not.
pub fn not_ready(n: &Node) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(link) = n.control() {
        if !link.synced() {
            why.push("the control plane's metadata has not been read yet".to_owned());
        }
    }
    for h in n.streams() {
        for (i, s) in h.hosted() {
            if let Some(r) = s.replica() {
                if r.is_voter() && r.leader().is_none() {
                    why.push(format!("{} shard {i} has no leader", h.name));
                }
            }
        }
    }
    why
}

async fn ready(State(node): S) -> Response {
    let Some(n) = node.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let why = not_ready(&n);
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", why.join("\n")),
        )
            .into_response()
    }
}
