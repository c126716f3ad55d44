//! The server half of the protocol over QUIC, shared by the broker and by
//! tests: handshake, request dispatch, error frames for malformed input,
//! subscriptions pushed on their own unidirectional streams under credit,
//! and the limits that keep one connection from taking the process down.
//!
//! What requests *mean* is the [`Handler`]'s business; this module owns only
//! the transport rules (`docs/format/wire.md`, "Streams").

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::transport::framed::{encode, FrameReader, Incoming, PartialBudget, ReadError};
use crate::wire::{ErrorReply, Message, WireError, FRAME_BODY_BYTES_MAX};

/// Connections one server accepts at once; more are refused.
pub const CONNECTIONS_MAX: usize = 4096;
/// Requests of one connection being handled at once.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Request bytes of one connection being handled at once. Above it a
/// request is answered `Overloaded` at once rather than queued.
pub const CONNECTION_IN_FLIGHT_BYTES_MAX: usize = 64 << 20;
/// Subscriptions open at once on one connection.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;
/// Credit a subscription may accumulate.
pub const CREDIT_BYTES_MAX: u64 = 256 << 20;
/// Largest frame body taken before the connection's `Hello` succeeded:
/// a Hello with the largest token, and room to spare. A bigger frame is
/// refused and its bytes skipped, never buffered.
pub const HELLO_BODY_BYTES_MAX: usize = felix_model::limits::TOKEN_BYTES_MAX + (4 << 10);
/// Bytes of unfinished frames one connection may have buffered over all
/// its streams before `Hello` succeeded ...
pub const PRE_HELLO_PARTIAL_BYTES_MAX: usize = 256 << 10;
/// ... and after: two of the largest frames. A stream whose bytes would
/// pass it is answered `Overloaded` and stopped. With the in-flight limit
/// and QUIC's connection window this bounds what one connection holds:
/// 64 MiB of decoded requests, 32 MiB of partial frames, 64 MiB unread.
pub const CONNECTION_PARTIAL_BYTES_MAX: usize = 2 * FRAME_BODY_BYTES_MAX;
/// A connection that has not sent `Hello` by then is closed.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long [`Server::close`] waits for connections to wind down.
pub const CLOSE_WAIT_MS: u64 = 5_000;
/// How long a refused handshake's connection stays open so the client can
/// read why.
const REFUSED_CLOSE_DELAY_MS: u64 = 2_000;
/// What an overloaded connection tells the client to wait.
pub const OVERLOADED_RETRY_AFTER_MS: u32 = 50;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// Whether the client authenticated with a certificate (mTLS).
    pub has_certificate: bool,
}

/// The handshake a client sent.
#[derive(Debug, Clone)]
pub struct HelloRequest {
    pub version: u16,
    pub capabilities: u64,
    pub token: Bytes,
}

/// What the broker pushes on a subscription: whole batches of one shard.
#[derive(Debug, Clone)]
pub struct PushData {
    pub shard: u32,
    pub next_offset: u64,
    pub batches: Bytes,
}

/// The future a [`PushSource`] returns.
pub type PushFuture<'a> = Pin<Box<dyn Future<Output = Option<Result<PushData, ErrorReply>>> + Send + 'a>>;

/// Where a subscription's pushes come from. The transport asks for the next
/// push only while the client has credit, passing how much: a source should
/// return at most that many bytes of batches, except that a single batch
/// larger than the credit may be sent alone (else it could never be).
pub trait PushSource: Send + 'static {
    /// The next push, waiting for data if there is none; `None` ends the
    /// subscription, an error ends it with that error.
    fn next_push(&mut self, credit_bytes: u64) -> PushFuture<'_>;
}

/// The answer to one request.
#[non_exhaustive]
pub enum Reply {
    Message(Message),
    /// No answer (`Publish` with `AckLevel::None`).
    Nothing,
    /// The request opened a subscription: the transport numbers it, opens
    /// its stream and pushes what `source` gives under the client's credit.
    Subscription(Box<dyn PushSource>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Message(m) => f.debug_tuple("Message").field(m).finish(),
            Reply::Nothing => f.write_str("Nothing"),
            Reply::Subscription(_) => f.write_str("Subscription"),
        }
    }
}

impl From<ErrorReply> for Reply {
    fn from(e: ErrorReply) -> Reply {
        Reply::Message(Message::Error(e))
    }
}

/// What requests mean. The transport calls [`Handler::hello`] once per
/// connection, then [`Handler::request`] for every other request except
/// `Credit` and `Unsubscribe`, which it handles itself.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state (the authenticated principal, say).
    type Session: Send + Sync + 'static;

    /// Checks the handshake; `Err` is sent back and the connection closed.
    fn hello(
        &self,
        peer: &Peer,
        hello: HelloRequest,
    ) -> impl Future<Output = Result<(Self::Session, u64), ErrorReply>> + Send;

    /// Handles one request.
    fn request(&self, session: &Self::Session, request: Message) -> impl Future<Output = Reply> + Send;

    /// The tenant a session's token is for; `None` when tokens are not
    /// required (a front door then serves the development tenant).
    fn tenant(&self, _session: &Self::Session) -> Option<String> {
        None
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    accept: JoinHandle<()>,
    live: Arc<Semaphore>,
}

impl Server {
    /// Serves `handler` on `endpoint` until [`Server::close`].
    pub fn start<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>) -> Server {
        let ep = endpoint.clone();
        let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let live = slots.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve_connection(conn, handler).await;
                    }
                    drop(slot);
                });
            }
        });
        Server {
            endpoint,
            accept,
            live,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Closes every connection, stops accepting, and waits (up to
    /// [`CLOSE_WAIT_MS`]) for connection tasks to end.
    pub async fn close(self) {
        self.endpoint.close(0u32.into(), b"server closing");
        self.accept.abort();
        self.endpoint.wait_idle().await;
        let all = CONNECTIONS_MAX as u32;
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), self.live.acquire_many(all)).await;
    }
}

/// One subscription's push task and credit.
struct Sub {
    credit: Arc<Credit>,
    task: JoinHandle<()>,
}

struct Credit {
    bytes: AtomicU64,
    more: Notify,
}

struct Conn<H: Handler> {
    handler: Arc<H>,
    quic: quinn::Connection,
    peer: Peer,
    session: tokio::sync::OnceCell<Arc<H::Session>>,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// Unfinished frames of every stream ([`PRE_HELLO_PARTIAL_BYTES_MAX`],
    /// then [`CONNECTION_PARTIAL_BYTES_MAX`]).
    partial: Arc<PartialBudget>,
    subs: Mutex<HashMap<u64, Sub>>,
    next_sub: AtomicU64,
}

/// The send half of a request stream, shared by the tasks answering its
/// requests. The stream is finished when the last of them lets go.
struct StreamWriter(tokio::sync::Mutex<quinn::SendStream>);

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let _ = self.0.get_mut().finish();
    }
}

type Writer = Arc<StreamWriter>;

async fn serve_connection<H: Handler>(quic: quinn::Connection, handler: Arc<H>) {
    let peer = Peer {
        address: quic.remote_address(),
        has_certificate: quic.peer_identity().is_some(),
    };
    let c = Arc::new(Conn {
        handler,
        quic: quic.clone(),
        peer,
        session: tokio::sync::OnceCell::new(),
        requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        bytes: Arc::new(Semaphore::new(CONNECTION_IN_FLIGHT_BYTES_MAX)),
        partial: Arc::new(PartialBudget::new(PRE_HELLO_PARTIAL_BYTES_MAX)),
        subs: Mutex::new(HashMap::new()),
        next_sub: AtomicU64::new(1),
    });
    let watchdog = {
        let c = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(HELLO_TIMEOUT_MS)).await;
            if c.session.get().is_none() {
                c.quic.close(1u32.into(), b"no Hello in time");
            }
        })
    };
    while let Ok((send, recv)) = quic.accept_bi().await {
        let c = c.clone();
        tokio::spawn(serve_stream(c, send, recv));
    }
    watchdog.abort();
    for (_, s) in c.subs.lock().expect("subs lock").drain() {
        s.task.abort();
    }
}

/// The frame of `m`, or, if `m` cannot be encoded (a handler's bug), of
/// the `Internal` error saying so: the requester always gets an answer.
fn frame_or_error(id: u64, m: &Message) -> bytes::Bytes {
    encode(id, m).unwrap_or_else(|e| {
        let e = ErrorReply::Internal(format!("answer not encodable: {e}"));
        encode(id, &Message::Error(e)).expect("an error frame is always encodable")
    })
}

async fn write(w: &Writer, id: u64, m: &Message) {
    let frame = frame_or_error(id, m);
    // A failed write means the client went away; its reader sees that.
    let _ = w.0.lock().await.write_chunk(frame).await;
}

async fn serve_stream<H: Handler>(c: Arc<Conn<H>>, send: quinn::SendStream, recv: quinn::RecvStream) {
    let w: Writer = Arc::new(StreamWriter(tokio::sync::Mutex::new(send)));
    let mut reader = FrameReader::bounded(recv, c.partial.clone(), HELLO_BODY_BYTES_MAX);
    let mut authenticated = false;
    loop {
        if !authenticated && c.session.get().is_some() {
            reader.set_body_max(FRAME_BODY_BYTES_MAX);
            authenticated = true;
        }
        match reader.next().await {
            Ok(Some(Incoming::Message(id, m))) => c.clone().dispatch(&w, id, m).await,
            Ok(Some(Incoming::Refused(id, e))) => write(&w, id, &Message::Error(e.into())).await,
            Ok(None) => break,
            Err(ReadError::Truncated) => {
                let e = WireError::Truncated("frame at the end of the stream");
                write(&w, 0, &Message::Error(e.into())).await;
                break;
            }
            Err(ReadError::Wire(e)) => {
                // Framing is lost on this stream; say why and stop reading it.
                write(&w, 0, &Message::Error(e.into())).await;
                reader.stop();
                break;
            }
            Err(ReadError::Overloaded { max }) => {
                tracing::debug!(peer = %c.peer.address, max, "partial frames over the connection's budget");
                let e = ErrorReply::Overloaded {
                    retry_after_ms: OVERLOADED_RETRY_AFTER_MS,
                };
                write(&w, 0, &Message::Error(e)).await;
                reader.stop();
                break;
            }
            Err(ReadError::Stream(_)) => return,
        }
    }
}

impl<H: Handler> Conn<H> {
    async fn dispatch(self: Arc<Self>, w: &Writer, id: u64, m: Message) {
        match m {
            Message::Hello {
                version,
                capabilities,
                token,
            } => {
                let reply = self.hello(HelloRequest {
                    version,
                    capabilities,
                    token,
                });
                let reply = reply.await;
                write(w, id, &reply).await;
                if matches!(reply, Message::Error(_)) && self.session.get().is_none() {
                    let quic = self.quic.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(REFUSED_CLOSE_DELAY_MS)).await;
                        quic.close(2u32.into(), b"handshake refused");
                    });
                }
            }
            Message::Credit { subscription, bytes } => {
                // Credit is not answered, so the client can send it freely.
                if let Some(s) = self.subs.lock().expect("subs lock").get(&subscription) {
                    let now = s.credit.bytes.load(Ordering::Acquire);
                    s.credit
                        .bytes
                        .store((now + u64::from(bytes)).min(CREDIT_BYTES_MAX), Ordering::Release);
                    s.credit.more.notify_one();
                }
            }
            Message::Unsubscribe { subscription } => {
                let sub = self.subs.lock().expect("subs lock").remove(&subscription);
                let reply = match sub {
                    Some(s) => {
                        s.task.abort();
                        Message::Done
                    }
                    None => Message::Error(ErrorReply::InvalidRequest(format!(
                        "no subscription {subscription} on this connection"
                    ))),
                };
                write(w, id, &reply).await;
            }
            m => {
                let Some(session) = self.session.get().cloned() else {
                    let e = ErrorReply::Unauthorized("send Hello before any request".into());
                    return write(w, id, &Message::Error(e)).await;
                };
                let size = request_bytes(&m);
                let credit = match &m {
                    Message::Subscribe { credit_bytes, .. } => u64::from(*credit_bytes),
                    _ => 0,
                };
                let (Ok(rp), Ok(bp)) = (
                    self.requests.clone().try_acquire_owned(),
                    self.bytes.clone().try_acquire_many_owned(size),
                ) else {
                    let e = ErrorReply::Overloaded {
                        retry_after_ms: OVERLOADED_RETRY_AFTER_MS,
                    };
                    return write(w, id, &Message::Error(e)).await;
                };
                let w = w.clone();
                tokio::spawn(async move {
                    let reply = self.handler.request(&session, m).await;
                    drop((rp, bp));
                    match reply {
                        Reply::Message(m) => write(&w, id, &m).await,
                        Reply::Nothing => {}
                        Reply::Subscription(source) => self.subscribe(&w, id, credit, source).await,
                    }
                });
            }
        }
    }

    async fn hello(&self, h: HelloRequest) -> Message {
        if self.session.get().is_some() {
            return Message::Error(ErrorReply::InvalidRequest("Hello sent twice".into()));
        }
        if h.version != u16::from(crate::wire::frame::VERSION) {
            return Message::Error(ErrorReply::InvalidRequest(format!(
                "protocol version {} is not supported; this broker speaks {}",
                h.version,
                crate::wire::frame::VERSION
            )));
        }
        match self.handler.hello(&self.peer, h).await {
            Ok((session, broker_id)) => {
                // Two racing Hellos: the loser is told so.
                if self.session.set(Arc::new(session)).is_err() {
                    return Message::Error(ErrorReply::InvalidRequest("Hello sent twice".into()));
                }
                self.partial.set_max(CONNECTION_PARTIAL_BYTES_MAX);
                Message::Welcome {
                    version: u16::from(crate::wire::frame::VERSION),
                    capabilities: 0,
                    broker_id,
                }
            }
            Err(e) => Message::Error(e),
        }
    }

    async fn subscribe(self: Arc<Self>, w: &Writer, id: u64, credit: u64, mut source: Box<dyn PushSource>) {
        let sub = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let credit = Arc::new(Credit {
            bytes: AtomicU64::new(credit.min(CREDIT_BYTES_MAX)),
            more: Notify::new(),
        });
        if self.subs.lock().expect("subs lock").len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
            let e = ErrorReply::Overloaded { retry_after_ms: 1000 };
            return write(w, id, &Message::Error(e)).await;
        }
        let mut uni = match self.quic.open_uni().await {
            Ok(s) => s,
            Err(_) => return,
        };
        // The stream's first frame answers the Subscribe request.
        let first = encode(id, &Message::Subscribed { subscription: sub }).expect("small frame");
        if uni.write_chunk(first).await.is_err() {
            return;
        }
        let c = credit.clone();
        let conn = self.clone();
        // Spawned under the lock so that the task's own removal at its end
        // cannot run before its insertion.
        let mut subs = self.subs.lock().expect("subs lock");
        // A client that drops its subscription stops the stream; the push
        // ends then, not at its next write, which may never come on a quiet
        // stream (and would hold the subscription's place in the quotas
        // and the counts meanwhile).
        let stopped = uni.stopped();
        let task = tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                let credit_and_push = async {
                    let have = loop {
                        let notified = c.more.notified();
                        let n = c.bytes.load(Ordering::Acquire);
                        if n > 0 {
                            break n;
                        }
                        notified.await;
                    };
                    source.next_push(have).await
                };
                let next = tokio::select! {
                    next = credit_and_push => next,
                    _ = &mut stopped => break,
                };
                let (m, end) = match next {
                    None => break,
                    Some(Ok(p)) => {
                        let n = p.batches.len() as u64;
                        c.bytes
                            .fetch_sub(n.min(c.bytes.load(Ordering::Acquire)), Ordering::AcqRel);
                        let m = Message::Push {
                            subscription: sub,
                            shard: p.shard,
                            next_offset: p.next_offset,
                            batches: p.batches,
                        };
                        (m, false)
                    }
                    Some(Err(e)) => (Message::Error(e), true),
                };
                if uni.write_chunk(frame_or_error(id, &m)).await.is_err() || end {
                    break;
                }
            }
            let _ = uni.finish();
            conn.subs.lock().expect("subs lock").remove(&sub);
        });
        subs.insert(sub, Sub { credit, task });
    }
}

/// Bytes a request holds while handled: its payload, at least 1.
fn request_bytes(m: &Message) -> u32 {
    let n = match m {
        Message::Publish { batch, .. } => batch.len(),
        Message::CachePut { value, key, .. } => value.len() + key.len(),
        _ => 0,
    };
    n.clamp(1, CONNECTION_IN_FLIGHT_BYTES_MAX) as u32
}
