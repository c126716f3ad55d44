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

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRpc {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

impl Peer {
    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, NetworkError> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(SECRET_HEADER, &self.secret)
            .timeout(timeout)
            .json(req)
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
        let req = SnapshotRpc {
            vote,
            meta: snapshot.meta.clone(),
            data: snapshot.snapshot.into_inner(),
        };
        let call = self.post::<_, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(
            "/raft/snapshot",
            &req,
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
