//! Forwarding: a key whose shard another broker leads is asked of that
//! broker through Felix's own client, under the connection's token, so any
//! broker's door answers any key and a client needs no routing of its own.
//! The leader checks the token itself: forwarding adds no trust.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use felix_client::wire::{ErrorReply, Message};
use felix_client::{Client, ClientConfig, ClientError, Route};

/// Felix clients kept, one per token: past it the oldest is closed.
pub const FORWARD_CLIENTS_MAX: usize = 256;
/// Brokers a request is passed along to at most: a leadership that moves
/// again meanwhile is answered `TRYAGAIN`, as Redis Cluster answers a
/// slot in migration.
pub const FORWARD_HOPS_MAX: usize = 2;

/// Clients of the other brokers, one per token.
pub struct Forwarder {
    /// TLS, server name and timeouts; brokers and token are set per use.
    template: ClientConfig,
    clients: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    by_token: HashMap<Bytes, (u64, Client)>,
    next_age: u64,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("server_name", &self.template.server_name)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// `template` says how the other brokers are reached (their CA, the
    /// name their certificates carry, timeouts).
    pub fn new(template: ClientConfig) -> Forwarder {
        Forwarder {
            template,
            clients: Mutex::new(Pool::default()),
        }
    }

    /// Asks `m` of the broker at `leader` (its client address), following
    /// at most [`FORWARD_HOPS_MAX`] leader hints; the broker's own answer,
    /// errors included.
    pub async fn ask(&self, token: &Bytes, leader: &str, m: &Message) -> Result<Message, ErrorReply> {
        let client = self.client(token, leader).await?;
        let mut at = leader.to_owned();
        for _ in 0..FORWARD_HOPS_MAX {
            match client.call(Route::Broker(&at), m).await {
                Ok(Message::Error(ErrorReply::NotLeader {
                    leader: Some((_, next)),
                }))
                | Err(ClientError::Broker(ErrorReply::NotLeader {
                    leader: Some((_, next)),
                })) if next != at => {
                    at = next;
                }
                Ok(Message::Error(e)) | Err(ClientError::Broker(e)) => return Err(e),
                Ok(answer) => return Ok(answer),
                Err(e) => return Err(unreachable(&at, &e)),
            }
        }
        Err(ErrorReply::NotLeader { leader: None })
    }

    async fn client(&self, token: &Bytes, bootstrap: &str) -> Result<Client, ErrorReply> {
        {
            let mut pool = self.clients.lock().expect("forward pool lock");
            let age = pool.next_age;
            if let Some((used, c)) = pool.by_token.get_mut(token) {
                *used = age;
                let c = c.clone();
                pool.next_age += 1;
                return Ok(c);
            }
        }
        let mut cfg = self.template.clone();
        cfg.brokers = vec![bootstrap.to_owned()];
        cfg.token = token.clone();
        let client = Client::connect(cfg)
            .await
            .map_err(|e| unreachable(bootstrap, &e))?;
        let evicted = {
            let mut pool = self.clients.lock().expect("forward pool lock");
            let evicted = if pool.by_token.len() >= FORWARD_CLIENTS_MAX {
                let oldest = pool
                    .by_token
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(t, _)| t.clone());
                oldest.and_then(|t| pool.by_token.remove(&t)).map(|(_, c)| c)
            } else {
                None
            };
            let age = pool.next_age;
            pool.next_age += 1;
            // Two connections of one token racing here both keep working;
            // the pool keeps the later.
            pool.by_token.insert(token.clone(), (age, client.clone()));
            evicted
        };
        if let Some(old) = evicted {
            old.close().await;
        }
        Ok(client)
    }
}

/// A broker that could not be asked: the client should try again, as it
/// would during a failover.
fn unreachable(at: &str, e: &ClientError) -> ErrorReply {
    ErrorReply::Timeout(format!(
        "the key's shard leader at {at} could not be reached: {e}"
    ))
}
