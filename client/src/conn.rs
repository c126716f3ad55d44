//! One client connection to one broker: the handshake, requests multiplexed
//! by request id over a few bidirectional streams, and subscription streams
//! the broker opens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::transport::framed::{encode, FrameReader, Incoming};
use crate::wire::{frame::VERSION, Message};

/// Most request streams one connection opens.
pub const REQUEST_STREAMS_MAX: usize = 64;

/// What answers a request.
#[derive(Debug)]
pub(crate) enum Answer {
    Message(Message),
    /// `Subscribed` arrived as the first frame of a push stream.
    Subscription {
        subscription: u64,
        pushes: FrameReader,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// An open, authenticated connection.
#[derive(Debug)]
pub struct Connection {
    quic: quinn::Connection,
    streams: Vec<tokio::sync::Mutex<quinn::SendStream>>,
    next_stream: AtomicUsize,
    next_id: AtomicU64,
    pending: Pending,
    broken: Arc<AtomicBool>,
    broker_id: u64,
}

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub server_name: String,
    pub token: Bytes,
    /// Request streams to open (1..=[`REQUEST_STREAMS_MAX`]).
    pub streams: usize,
    pub timeout_ms: u64,
}

impl Connection {
    /// Connects, says Hello, and opens the request streams.
    pub async fn open(
        endpoint: &quinn::Endpoint,
        address: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let what = |why: String| ClientError::Connect {
            address: address.to_string(),
            why,
        };
        let deadline = Duration::from_millis(opts.timeout_ms);
        let fut = async {
            let connecting = endpoint
                .connect(address, &opts.server_name)
                .map_err(|e| what(e.to_string()))?;
            let quic = connecting.await.map_err(|e| what(e.to_string()))?;
            let (mut send, recv) = quic.open_bi().await.map_err(|e| what(e.to_string()))?;
            let hello = Message::Hello {
                version: u16::from(VERSION),
                capabilities: 0,
                token: opts.token.clone(),
            };
            send.write_chunk(encode(0, &hello)?)
                .await
                .map_err(|e| what(e.to_string()))?;
            let mut reader = FrameReader::new(recv);
            let broker_id = match reader.next().await {
                Ok(Some(Incoming::Message(_, Message::Welcome { broker_id, .. }))) => broker_id,
                Ok(Some(Incoming::Message(_, Message::Error(e)))) => return Err(ClientError::Broker(e)),
                Ok(Some(other)) => return Err(ClientError::UnexpectedReply(format!("{other:?}"))),
                Ok(None) => return Err(what("closed during the handshake".into())),
                Err(e) => return Err(what(e.to_string())),
            };
            Ok::<_, ClientError>((quic, send, reader, broker_id))
        };
        let (quic, send, reader, broker_id) = tokio::time::timeout(deadline, fut)
            .await
            .map_err(|_| ClientError::Timeout(opts.timeout_ms))??;

        let pending: Pending = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let mut streams = vec![tokio::sync::Mutex::new(send)];
        tokio::spawn(read_answers(reader, pending.clone(), broken.clone()));
        for _ in 1..opts.streams.clamp(1, REQUEST_STREAMS_MAX) {
            let (s, r) = quic.open_bi().await.map_err(|e| what(e.to_string()))?;
            streams.push(tokio::sync::Mutex::new(s));
            tokio::spawn(read_answers(FrameReader::new(r), pending.clone(), broken.clone()));
        }
        tokio::spawn(accept_pushes(quic.clone(), pending.clone(), broken.clone()));
        Ok(Connection {
            quic,
            streams,
            next_stream: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            pending,
            broken,
            broker_id,
        })
    }

    /// The id the broker gave in `Welcome`.
    pub fn broker_id(&self) -> u64 {
        self.broker_id
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.quic.remote_address()
    }

    /// Whether the connection has failed (a new one is needed).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.quic.close_reason().is_some()
    }

    async fn send(&self, id: u64, m: &Message) -> Result<(), ClientError> {
        let frame = encode(id, m)?;
        let i = self.next_stream.fetch_add(1, Ordering::Relaxed) % self.streams.len();
        self.streams[i]
            .lock()
            .await
            .write_chunk(frame)
            .await
            .map_err(|e| ClientError::ConnectionLost(e.to_string()))
    }

    pub(crate) async fn call(&self, m: &Message, timeout_ms: u64) -> Result<Answer, ClientError> {
        if self.is_broken() {
            return Err(ClientError::ConnectionLost("connection closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let result = async {
            self.send(id, m).await?;
            match tokio::time::timeout(Duration::from_millis(timeout_ms), rx).await {
                Err(_) => Err(ClientError::Timeout(timeout_ms)),
                Ok(Err(_)) => Err(ClientError::ConnectionLost(
                    self.quic
                        .close_reason()
                        .map_or_else(|| "stream ended".to_owned(), |r| r.to_string()),
                )),
                Ok(Ok(a)) => Ok(a),
            }
        }
        .await;
        if result.is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
        }
        result
    }

    /// Sends a request and waits for its answer; an `Error` frame becomes
    /// [`ClientError::Broker`].
    pub async fn request(&self, m: &Message, timeout_ms: u64) -> Result<Message, ClientError> {
        match self.call(m, timeout_ms).await? {
            Answer::Message(Message::Error(e)) => Err(ClientError::Broker(e)),
            Answer::Message(m) => Ok(m),
            Answer::Subscription { .. } => Err(ClientError::UnexpectedReply("a subscription stream".into())),
        }
    }

    /// Sends a `Subscribe` and returns the subscription id and its push
    /// stream, without the decoding and resumption of
    /// [`crate::Subscription`] (for tools and benchmarks).
    pub async fn subscribe_raw(
        &self,
        m: &Message,
        timeout_ms: u64,
    ) -> Result<(u64, FrameReader), ClientError> {
        match self.call(m, timeout_ms).await? {
            Answer::Subscription { subscription, pushes } => Ok((subscription, pushes)),
            Answer::Message(Message::Error(e)) => Err(ClientError::Broker(e)),
            Answer::Message(m) => Err(ClientError::unexpected(&m)),
        }
    }

    /// Sends a message that is not answered (`Credit`).
    pub async fn notify(&self, m: &Message) -> Result<(), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, m).await
    }

    pub fn close(&self) {
        self.quic.close(0u32.into(), b"client closing");
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn fail_all(pending: &Pending, broken: &AtomicBool) {
    broken.store(true, Ordering::Release);
    // Dropping the senders wakes every waiter with "connection lost".
    pending.lock().expect("pending lock").clear();
}

async fn read_answers(mut reader: FrameReader, pending: Pending, broken: Arc<AtomicBool>) {
    loop {
        let (id, m) = match reader.next().await {
            Ok(Some(Incoming::Message(id, m))) => (id, m),
            Ok(Some(Incoming::Refused(id, e))) => {
                tracing::warn!(request_id = id, error = %e, "undecodable answer from broker");
                (
                    id,
                    Message::Error(crate::wire::ErrorReply::Internal(format!(
                        "undecodable answer: {e}"
                    ))),
                )
            }
            Ok(None) | Err(_) => break,
        };
        if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
            let _ = tx.send(Answer::Message(m));
        }
    }
    fail_all(&pending, &broken);
}

async fn accept_pushes(quic: quinn::Connection, pending: Pending, broken: Arc<AtomicBool>) {
    while let Ok(recv) = quic.accept_uni().await {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::new(recv);
            // The first frame names the request the stream answers.
            if let Ok(Some(Incoming::Message(id, Message::Subscribed { subscription }))) = reader.next().await
            {
                if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                    let _ = tx.send(Answer::Subscription {
                        subscription,
                        pushes: reader,
                    });
                }
            }
        });
    }
    fail_all(&pending, &broken);
}
