//! Raft RPCs between control-plane nodes: JSON over HTTP(S) to the peer's
//! API address (`/raft/append`, `/raft/vote`, `/raft/snapshot`), each
//! carrying the peers' secret; over TLS, only the configured CA is
//! trusted. The server side is in `api`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::*;

/// The header every internal request carries.
pub const SECRET_HEADER: &str = "x-felix-cluster-secret";
/// The sending node's region, which every internal request carries too:
/// nodes of different regions are never one control plane.
pub const REGION_HEADER: &str = "x-felix-region";

#[derive(Debug, Clone)]
pub struct Network {
    http: reqwest::Client,
    secret: String,
    /// `http` or `https`: the peers share this node's TLS setting.
    scheme: &'static str,
    /// When (`elections::mono_ms`) a peer last refused this node's vote
    /// for having a longer log: this node cannot win and must not re-stand.
    pub outvoted: Arc<AtomicU64>,
}

impl Network {
    pub fn new(http: reqwest::Client, secret: String, scheme: &'static str) -> Network {
        Network {
            http,
            secret,
            scheme,
            outvoted: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            http: self.http.clone(),
            secret: self.secret.clone(),
            target,
            base: format!("{}://{}", self.scheme, node.addr),
            outvoted: self.outvoted.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Peer {
    http: reqwest::Client,
    secret: String,
    target: NodeId,
    base: String,
    outvoted: Arc<AtomicU64>,
}

/// One Raft entry's envelope, as JSON, at most: a proposal past it is
/// refused before it enters the log, so an AppendEntries of
/// `APPEND_ENTRIES_MAX` entries always fits `APPEND_BYTES_MAX`.
pub const ENTRY_BYTES_MAX: usize = 2 << 20;
/// Entries one AppendEntries carries at most (openraft's
/// `max_payload_entries`).
pub const APPEND_ENTRIES_MAX: u64 = 16;
/// Room in an AppendEntries body for everything but the entries.
const APPEND_OVERHEAD_BYTES_MAX: usize = 64 * 1024;
/// An AppendEntries body at most (the route's limit).
pub const APPEND_BYTES_MAX: usize = APPEND_ENTRIES_MAX as usize * ENTRY_BYTES_MAX + APPEND_OVERHEAD_BYTES_MAX;
/// A snapshot's body at most: the whole metadata, as bytes.
pub const SNAPSHOT_BYTES_MAX: usize = 256 << 20;
/// A snapshot's head (vote and meta, JSON) at most.
pub const SNAPSHOT_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Votes and forwarded proposals: one envelope and a little more.
pub const SMALL_RPC_BYTES_MAX: usize = ENTRY_BYTES_MAX + APPEND_OVERHEAD_BYTES_MAX;

const _: () = assert!(APPEND_BYTES_MAX < SNAPSHOT_BYTES_MAX);
const _: () = assert!(SNAPSHOT_HEAD_BYTES_MAX <= u32::MAX as usize);

/// What a snapshot's body starts with, before the snapshot's own bytes
/// (`docs/format/controlplane-raft.md`).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHead {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// A snapshot RPC's body: the head's length (u32, big-endian), the head
/// as JSON, then the snapshot's bytes as they are.
pub fn encode_snapshot(head: &SnapshotHead, data: &[u8]) -> Result<Vec<u8>, String> {
    let h = serde_json::to_vec(head).map_err(|e| e.to_string())?;
    if h.len() > SNAPSHOT_HEAD_BYTES_MAX {
        return Err(format!("a snapshot head of {} bytes", h.len()));
    }
    if 4 + h.len() + data.len() > SNAPSHOT_BYTES_MAX {
        return Err(format!(
            "a snapshot of {} bytes is over SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX})",
            data.len()
        ));
    }
    let mut body = Vec::with_capacity(4 + h.len() + data.len());
    body.extend_from_slice(&(h.len() as u32).to_be_bytes());
    body.extend_from_slice(&h);
    body.extend_from_slice(data);
    Ok(body)
}

/// The head and the snapshot's bytes of a body [`encode_snapshot`] made.
pub fn decode_snapshot(body: &[u8]) -> Result<(SnapshotHead, &[u8]), String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("a snapshot body shorter than its head's length")?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > SNAPSHOT_HEAD_BYTES_MAX || len > rest.len() {
        return Err(format!(
            "a snapshot head of {len} bytes in a body of {}",
            body.len()
        ));
    }
    let (head, data) = rest.split_at(len);
    let head = serde_json::from_slice(head).map_err(|e| format!("the snapshot head: {e}"))?;
    Ok((head, data))
}

impl Peer {
    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, NetworkError> {
        self.send(
            path,
            self.http.post(format!("{}{path}", self.base)).json(req),
            timeout,
        )
        .await
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Resp, NetworkError> {
        let r = request
            .header(SECRET_HEADER, &self.secret)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| NetworkError::new(&e))?;
        if !r.status().is_success() {
            let why = format!("{path}: HTTP {}", r.status());
            return Err(NetworkError::new(&std::io::Error::other(why)));
        }
        r.json().await.map_err(|e| NetworkError::new(&e))
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let r: Result<Resp, RaftError<NodeId, E>> = self
            .post(path, req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let resp: VoteResponse<NodeId> = self.rpc("/raft/vote", &rpc, &option).await?;
        if !resp.vote_granted && resp.last_log_id > rpc.last_log_id {
            self.outvoted
                .store(super::elections::mono_ms(), Ordering::Release);
        }
        Ok(resp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::storage::Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let head = SnapshotHead {
            vote,
            meta: snapshot.meta.clone(),
        };
        let body = encode_snapshot(&head, &snapshot.snapshot.into_inner()).map_err(|e| {
            tracing::error!(error = %e, "a snapshot cannot be sent");
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
        })?;
        let call = self.send::<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(
            "/raft/snapshot",
            self.http
                .post(format!("{}/raft/snapshot", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
            option.hard_ttl(),
        );
        let r = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = call => r,
        };
        r.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?
            .map_err(|f| StreamingError::Network(NetworkError::new(&f)))
    }
}
