//! Admin requests that arrive over the wire when a control plane holds the
//! stream definitions: passed on to it (as the client, whose token it
//! checks again), then awaited until the feed has brought the change to
//! this broker, so the client that created a stream can use it at once.

use std::time::{Duration, Instant};

use felix_client::wire::StreamConfig;

use super::ControlLink;
use crate::error::BrokerError;
use crate::meta::{StreamKind, StreamMeta};
use crate::names::StreamName;
use crate::node::Node;

/// How long a forwarded change may take to come back through the feed.
pub const FOLLOW_WAIT_MS_MAX: u64 = 10_000;
const FOLLOW_POLL_MS: u64 = 20;

pub async fn create(
    node: &Node,
    link: &ControlLink,
    c: &StreamConfig,
    token: Option<&str>,
) -> Result<(), BrokerError> {
    let name = StreamName::parse(&c.name)?;
    if node.stream_by_name(&name).is_ok() {
        return Err(BrokerError::StreamExists(name.to_string()));
    }
    crate::meta::MetaStore::check(c)?;
    link.create(c, token).await?;
    arrives(node, &name, |m| m.is_some()).await
}

pub async fn delete(
    node: &Node,
    link: &ControlLink,
    name: &str,
    force: bool,
    token: Option<&str>,
) -> Result<(), BrokerError> {
    let n = StreamName::parse(name)?;
    let h = node.stream_by_name(&n)?;
    let m = h.meta();
    if !m.managed() {
        // A dead-letter stream this broker made itself: not the control
        // plane's to delete.
        return node.delete_stream(name, force).await;
    }
    link.delete(&n, m.kind == StreamKind::Cache, force, token).await?;
    arrives(node, &n, |m| m.is_none()).await
}

pub async fn set_retention(
    node: &Node,
    link: &ControlLink,
    name: &str,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    token: Option<&str>,
) -> Result<(), BrokerError> {
    let n = StreamName::parse(name)?;
    let h = node.stream_by_name(&n)?;
    if !h.meta().managed() {
        return node.set_retention(name, retention_ms, retention_bytes).await;
    }
    link.set_retention(&n, retention_ms, retention_bytes, token)
        .await?;
    arrives(node, &n, |m| {
        m.is_some_and(|m| m.retention_ms == retention_ms && m.retention_bytes == retention_bytes)
    })
    .await
}

/// Waits until this broker's view of `name` satisfies `done`.
async fn arrives(
    node: &Node,
    name: &StreamName,
    done: impl Fn(Option<&StreamMeta>) -> bool,
) -> Result<(), BrokerError> {
    let deadline = Instant::now() + Duration::from_millis(FOLLOW_WAIT_MS_MAX);
    loop {
        let m = node.stream_by_name(name).ok().map(|h| h.meta());
        if done(m.as_ref()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BrokerError::Timeout(format!(
                "the control plane accepted the change to {name}, but it has not reached this broker within {FOLLOW_WAIT_MS_MAX} ms"
            )));
        }
        tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)).await;
    }
}
