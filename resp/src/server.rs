//! The listener: TCP (and TLS, with the broker's certificate), one task
//! per connection, commands answered in order with a pipeline's replies
//! written together. Every request goes through the broker's
//! [`Handler`], the one the QUIC door uses, so tokens, RBAC, quotas,
//! metrics and the cache's durability are the same on both doors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use felix_client::server::{Handler, HelloRequest, Peer, Reply as HandlerReply};
use felix_client::wire::{CacheEntry, ErrorReply, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::cluster::SlotTable;
use crate::codec::{next_command, Protocol, Reply};
use crate::command::{self, Cluster, Command, SPECS};
use crate::exec::{exec, Store, Written};
use crate::forward::Forwarder;
use crate::keys::{self, Cursors};
use felix_model::routing::key_slot;
use felix_model::KeyRouting;

/// Connections one listener serves at once (Redis's `maxclients`
/// default); past it a new one is told so and closed.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Bytes an unauthenticated connection may buffer: enough for `AUTH` or
/// `HELLO`, not for a value.
pub const PRE_AUTH_BYTES_MAX: usize = 64 << 10;
/// Replies buffered before they are written mid-pipeline.
pub const REPLY_BYTES_BUFFERED_MAX: usize = 1 << 20;
/// Longest a TLS handshake may take.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 5_000;
/// Commands of one pipeline run at once: a run of commands that each
/// touch one key, no two the same, is sent to the broker together, so
/// that `always` writes share fsyncs as Redis's pipeline shares one
/// `appendfsync always` write. Writes to one key keep their order; writes
/// to distinct keys may become visible to other connections in any order
/// (as across a Redis Cluster's nodes).
pub const PIPELINE_AT_ONCE_MAX: usize = 64;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 64 << 10;
/// The Redis version this door reports (`INFO`, `HELLO`): clients and
/// tools choose features by it, and the commands here follow Redis 7.2.
pub const REDIS_VERSION: &str = "7.2.0";
/// Bytes of a cache name `FELIX.USE` accepts.
pub const CACHE_NAME_BYTES_MAX: usize = 255;

/// How a listener serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cache a new connection uses (`FELIX.USE` picks another).
    pub cache: String,
    /// Serve TLS with this configuration; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub connections_max: usize,
    /// `host:port` cluster clients are told to reach this door at
    /// (`CLUSTER SLOTS`); `None`: the listener's own address.
    pub advertise: Option<String>,
    /// Asks a key of its shard's leader when this broker does not lead
    /// it; `None` (one broker): answer `TRYAGAIN` naming the leader.
    pub forward: Option<Arc<Forwarder>>,
    /// The other brokers' doors, by broker id (`None`: one broker).
    pub doors: Option<Doors>,
    /// Answer a key another broker's door should serve with `-MOVED`
    /// rather than forwarding it.
    pub redirect: bool,
}

/// Where broker `id`'s door listens (`host:port`), if it has one.
#[derive(Clone)]
pub struct Doors(pub Arc<dyn Fn(u64) -> Option<String> + Send + Sync>);

impl std::fmt::Debug for Doors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doors(..)")
    }
}

/// A running listener.
#[derive(Debug)]
pub struct RespServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RespServer {
    /// Stops accepting and closes every connection (a command in progress
    /// finishes first).
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The broker's clock (ms since the epoch), for TTLs.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Serves `listener` until closed.
pub fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: Settings,
    clock: Clock,
) -> std::io::Result<RespServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, handler, settings, clock, stopped));
    Ok(RespServer { addr, stop, task })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: Settings,
    clock: Clock,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.connections_max));
    let ids = Arc::new(AtomicU64::new(1));
    let cursors = Arc::new(Cursors::default());
    let mut settings = settings;
    if settings.advertise.is_none() {
        settings.advertise = listener.local_addr().ok().map(|a| a.to_string());
    }
    let settings = Arc::new(settings);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "redis listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut tcp = tcp;
                let _ = tcp.write_all(b"-ERR max number of clients reached\r\n").await;
            });
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            handler: handler.clone(),
            settings: settings.clone(),
            clock: clock.clone(),
            peer: Peer {
                address: peer,
                has_certificate: false,
            },
            id: ids.fetch_add(1, Ordering::Relaxed),
            proto: Protocol::Resp2,
            name: None,
            cache: settings.cache.clone(),
            routing: OnceLock::new(),
            session: None,
            token: Bytes::new(),
            port: listener.local_addr().map_or(0, |a| a.port()),
            cursors: cursors.clone(),
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
    handler: Arc<H>,
    settings: Arc<Settings>,
    clock: Clock,
    peer: Peer,
    id: u64,
    proto: Protocol,
    name: Option<Bytes>,
    cache: String,
    /// The cache's key routing, once a redirect needed it.
    routing: OnceLock<KeyRouting>,
    /// The broker's session once authenticated (or at once when tokens
    /// are not required).
    session: Option<Arc<H::Session>>,
    /// The token the session was opened with, for forwarding.
    token: Bytes,
    port: u16,
    /// The listener's `SCAN` positions (shared by its connections, as a
    /// client's pool may go on with a walk on another connection).
    cursors: Arc<Cursors>,
}

/// After a reply: go on, or close the connection.
enum Then {
    Go,
    Close,
}

impl<H: Handler> Conn<H> {
    async fn run(mut self, tcp: tokio::net::TcpStream) {
        match self.settings.tls.clone() {
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
                        tracing::debug!(peer = %self.peer.address, error = %e, "redis: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer.address, "redis: TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(&mut self, mut io: IO) {
        // Without tokens (no control plane) the connection is in at once.
        if let Ok(session) = self.hello(Bytes::new()).await {
            self.session = Some(Arc::new(session));
        }
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let mut out = BytesMut::new();
        let mut run: Vec<Command> = Vec::with_capacity(PIPELINE_AT_ONCE_MAX);
        loop {
            buf.reserve(READ_BYTES);
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            loop {
                let args = match next_command(&mut buf) {
                    Ok(Some(a)) => a,
                    Ok(None) => break,
                    Err(e) => {
                        self.run_at_once(&mut run, &mut out).await;
                        Reply::err(format!("ERR {e}")).encode(self.proto, &mut out);
                        let _ = io.write_all(&out).await;
                        linger(&mut io).await;
                        return;
                    }
                };
                if args.is_empty() {
                    continue;
                }
                let parsed = command::parse(&args);
                if let Ok(c) = &parsed {
                    if let (Some(key), Some(_)) = (c.only_key(), &self.session) {
                        let repeated = run.iter().any(|r| r.only_key() == Some(key));
                        if repeated || run.len() == PIPELINE_AT_ONCE_MAX {
                            self.run_at_once(&mut run, &mut out).await;
                            if out.len() >= REPLY_BYTES_BUFFERED_MAX {
                                if io.write_all(&out).await.is_err() {
                                    return;
                                }
                                out.clear();
                            }
                        }
                        run.extend(parsed.ok());
                        continue;
                    }
                }
                self.run_at_once(&mut run, &mut out).await;
                let then = self.command(parsed, &mut out).await;
                if matches!(then, Then::Close) {
                    let _ = io.write_all(&out).await;
                    return;
                }
                if out.len() >= REPLY_BYTES_BUFFERED_MAX {
                    if io.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
            self.run_at_once(&mut run, &mut out).await;
            if self.session.is_none() && buf.len() > PRE_AUTH_BYTES_MAX {
                Reply::err(format!(
                    "NOAUTH Authentication required (at most {PRE_AUTH_BYTES_MAX} bytes before AUTH)"
                ))
                .encode(self.proto, &mut out);
                let _ = io.write_all(&out).await;
                linger(&mut io).await;
                return;
            }
            if !out.is_empty() {
                if io.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    }

    async fn hello(&self, token: Bytes) -> Result<H::Session, ErrorReply> {
        let hello = HelloRequest {
            version: u16::from(felix_client::wire::frame::VERSION),
            capabilities: 0,
            token,
        };
        self.handler.hello(&self.peer, hello).await.map(|(s, _)| s)
    }

    /// Authenticates with `token`; the reply on failure.
    async fn auth(&mut self, token: Bytes) -> Result<(), Reply> {
        if self.session.is_some() && self.hello(Bytes::new()).await.is_ok() {
            return Err(Reply::err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ));
        }
        match self.hello(token.clone()).await {
            Ok(s) => {
                self.session = Some(Arc::new(s));
                self.token = token;
                Ok(())
            }
            Err(ErrorReply::Unauthorized(_) | ErrorReply::Forbidden(_)) => Err(Reply::err(
                "WRONGPASS invalid username-password pair or user is disabled.",
            )),
            Err(e) => Err(error_reply(e)),
        }
    }

    async fn command(&mut self, parsed: Result<Command, Reply>, out: &mut BytesMut) -> Then {
        let (reply, then) = match parsed {
            Err(r) => (r, Then::Go),
            Ok(c) => self.run_command(c).await,
        };
        reply.encode(self.proto, out);
        then
    }

    /// Runs `run` (single-key commands on distinct keys, see
    /// [`PIPELINE_AT_ONCE_MAX`]) at once and writes their replies in order.
    async fn run_at_once(&mut self, run: &mut Vec<Command>, out: &mut BytesMut) {
        if run.len() < 2 {
            if let Some(c) = run.pop() {
                let (reply, _) = self.run_command(c).await;
                reply.encode(self.proto, out);
            }
            return;
        }
        let Some(session) = self.session.clone() else {
            unreachable!("a run is gathered only once authenticated")
        };
        let store = self.store(&session);
        let now = (self.clock)();
        let replies = futures_util::future::join_all(run.drain(..).map(|c| exec(&store, c, now))).await;
        for reply in replies {
            reply
                .unwrap_or_else(|| Reply::err("ERR this command is not supported here"))
                .encode(self.proto, out);
        }
    }

    /// The connection's cache, as `session` may use it.
    fn store<'a>(&'a self, session: &'a H::Session) -> HandlerStore<'a, H> {
        HandlerStore {
            handler: &*self.handler,
            session,
            cache: &self.cache,
            forward: self.settings.forward.as_deref(),
            token: &self.token,
            redirect: if self.settings.redirect {
                self.settings.doors.as_ref()
            } else {
                None
            },
            routing: &self.routing,
        }
    }

    async fn run_command(&mut self, c: Command) -> (Reply, Then) {
        let go = |r: Reply| (r, Then::Go);
        match c {
            Command::Quit => return (Reply::ok(), Then::Close),
            Command::Auth { token, .. } => {
                return go(self.auth(token).await.map_or_else(|r| r, |()| Reply::ok()));
            }
            Command::Hello { proto, auth, name } => {
                let next = match proto {
                    None => self.proto,
                    Some(2) => Protocol::Resp2,
                    Some(3) => Protocol::Resp3,
                    Some(_) => return go(Reply::err("NOPROTO unsupported protocol version")),
                };
                if let Some((_, token)) = auth {
                    if let Err(r) = self.auth(token).await {
                        return go(r);
                    }
                }
                if self.session.is_none() {
                    return go(noauth());
                }
                if name.is_some() {
                    self.name = name;
                }
                self.proto = next;
                return go(self.hello_reply());
            }
            _ if self.session.is_none() => return go(noauth()),
            _ => {}
        }
        let reply = match c {
            Command::Ping(None) => Reply::Status("PONG"),
            Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
            Command::Select(0) => Reply::ok(),
            Command::Select(_) => {
                Reply::err("ERR DB index is out of range (Felix has database 0; FELIX.USE picks a cache)")
            }
            Command::ClientSetName(n) => {
                self.name = (!n.is_empty()).then_some(n);
                Reply::ok()
            }
            Command::ClientGetName => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            Command::ClientId => Reply::Int(self.id as i64),
            Command::ClientSetInfo => Reply::ok(),
            Command::Info(_) => Reply::Bulk(Bytes::from(self.info())),
            Command::CommandCount => Reply::Int(SPECS.len() as i64),
            Command::CommandList => Reply::Array(
                SPECS
                    .iter()
                    .map(|s| {
                        let flags = if s.flag.is_empty() {
                            Vec::new()
                        } else {
                            vec![Reply::Status(s.flag)]
                        };
                        Reply::Array(vec![
                            Reply::text(s.name),
                            Reply::Int(s.arity),
                            Reply::Array(flags),
                            Reply::Int(s.first_key),
                            Reply::Int(s.last_key),
                            Reply::Int(s.step),
                        ])
                    })
                    .collect(),
            ),
            Command::Cluster(c) => self.cluster(c).await,
            Command::ReadMode => Reply::ok(),
            Command::CommandDocs => Reply::Map(Vec::new()),
            Command::ConfigGet(patterns) => config_get(&patterns),
            Command::Use(name) => match std::str::from_utf8(&name) {
                Ok(n) if !n.is_empty() && n.len() <= CACHE_NAME_BYTES_MAX => {
                    self.cache = n.to_owned();
                    self.routing = OnceLock::new();
                    Reply::ok()
                }
                _ => Reply::err(format!(
                    "ERR a cache name is 1 to {CACHE_NAME_BYTES_MAX} bytes of UTF-8"
                )),
            },
            data => {
                let session = self.session.clone().expect("checked above");
                let store = self.store(&session);
                // A cursor is the walk's of one token: another cannot go on
                // with it (nor learn where it stands).
                let owner = felix_model::routing::fnv1a64(&self.token);
                match data {
                    Command::Scan {
                        cursor,
                        pattern,
                        count,
                        kind,
                    } => {
                        keys::scan(
                            &store,
                            &self.cursors,
                            &self.cache,
                            owner,
                            cursor,
                            pattern.as_deref(),
                            count,
                            kind.as_deref(),
                        )
                        .await
                    }
                    Command::Keys(p) => keys::keys(&store, &p).await,
                    Command::DbSize => keys::dbsize(&store).await,
                    Command::FlushDb => keys::flushdb(&store).await,
                    data => {
                        let now = (self.clock)();
                        exec(&store, data, now)
                            .await
                            .unwrap_or_else(|| Reply::err("ERR this command is not supported here"))
                    }
                }
            }
        };
        go(reply)
    }

    /// The cluster as cluster clients see it (`crate::cluster`): for a
    /// cache routed by slots, each range at its shard leader's door.
    async fn cluster(&self, c: Cluster) -> Reply {
        let me = self.settings.advertise.clone().unwrap_or_default();
        match c {
            Cluster::KeySlot(k) => Reply::Int(i64::from(key_slot(&k))),
            Cluster::MyId => Reply::text(&crate::cluster::node_id(&me)),
            Cluster::Slots => self.slot_table(&me).await.slots(),
            Cluster::Shards => self.slot_table(&me).await.shards(),
            Cluster::Nodes => self.slot_table(&me).await.nodes(),
            Cluster::Info => self.slot_table(&me).await.info(),
        }
    }

    /// The connection's cache's slot table; the door alone holding every
    /// slot when the cache or its leaders cannot be told (it forwards).
    async fn slot_table(&self, me: &str) -> SlotTable {
        let (Some(doors), Some(session)) = (&self.settings.doors, &self.session) else {
            return SlotTable::single(me);
        };
        let Some(info) = describe(&*self.handler, session, &self.cache).await else {
            return SlotTable::single(me);
        };
        let mut leaders = vec![None; info.shards.len()];
        for s in &info.shards {
            if let (Some(slot), Some(b)) = (leaders.get_mut(s.shard as usize), s.leader) {
                *slot = (doors.0)(b);
            }
        }
        SlotTable::of_cache(me, info.key_routing, &leaders)
    }

    fn hello_reply(&self) -> Reply {
        let text = Reply::text;
        Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (
                text("proto"),
                Reply::Int(if self.proto == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (text("id"), Reply::Int(self.id as i64)),
            (text("mode"), text("standalone")),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn info(&self) -> String {
        format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nfelix_version:{}\r\nos:{}\r\narch_bits:{}\r\ntcp_port:{}\r\n\r\n# Clients\r\n\r\n# Persistence\r\nloading:0\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Keyspace\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            usize::BITS,
            self.port,
        )
    }
}

/// Bytes and time a connection closed for bad input is read on, so the
/// client reads its error: a socket closed with bytes unread sends a
/// reset, which may destroy the error before the client reads it.
const LINGER_BYTES_MAX: usize = 1 << 20;
const LINGER_MS_MAX: u64 = 1_000;

async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let _ = io.shutdown().await;
    let mut sink = vec![0u8; 16 << 10];
    let mut left = LINGER_BYTES_MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(LINGER_MS_MAX);
    while left > 0 {
        match tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// What the broker says of `cache` (its routing, its shards' leaders), as
/// the session may see it.
async fn describe<H: Handler>(
    handler: &H,
    session: &H::Session,
    cache: &str,
) -> Option<felix_client::wire::StreamInfo> {
    let m = Message::Metadata {
        streams: vec![cache.to_owned()],
    };
    match handler.request(session, m).await {
        HandlerReply::Message(Message::MetadataReply { streams, .. }) => streams
            .into_iter()
            .find(|s| s.name == cache && !s.shards.is_empty()),
        _ => None,
    }
}

fn noauth() -> Reply {
    Reply::err("NOAUTH Authentication required.")
}

/// `CONFIG GET`: what tools ask of a server, with `*` and `?` patterns.
fn config_get(patterns: &[Bytes]) -> Reply {
    const KNOWN: [(&str, &str); 6] = [
        ("save", ""),
        ("appendonly", "no"),
        ("databases", "1"),
        ("maxmemory", "0"),
        ("timeout", "0"),
        ("maxclients", "10000"),
    ];
    let mut out = Vec::new();
    for (k, v) in KNOWN {
        if patterns.iter().any(|p| glob(p, k.as_bytes())) {
            out.push((Reply::text(k), Reply::text(v)));
        }
    }
    Reply::Map(out)
}

/// Redis's glob with `*` and `?`, without regard to case.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Redis's error codes for Felix's refusals.
pub fn error_reply(e: ErrorReply) -> Reply {
    match e {
        ErrorReply::Unauthorized(m) => Reply::err(format!("NOAUTH {m}")),
        ErrorReply::Forbidden(m) => Reply::err(format!("NOPERM {m}")),
        ErrorReply::UnknownStream(s) => Reply::err(format!(
            "ERR unknown cache '{s}' (create it with `felix cache create`, or pick another with FELIX.USE)"
        )),
        ErrorReply::NotLeader { leader } => Reply::err(match leader {
            Some((id, addr)) => {
                format!("TRYAGAIN this broker does not lead the key's shard; broker {id} at {addr} does")
            }
            None => "TRYAGAIN the key's shard has no leader yet".into(),
        }),
        ErrorReply::Overloaded { retry_after_ms } => {
            Reply::err(format!("TRYAGAIN overloaded; retry after {retry_after_ms} ms"))
        }
        ErrorReply::Timeout(m) => Reply::err(format!("TRYAGAIN timed out: {m}")),
        ErrorReply::QuotaExceeded(m) => Reply::err(format!("OOM quota exceeded: {m}")),
        e => Reply::err(format!("ERR {e}")),
    }
}

/// The connection's cache through the broker's handler.
struct HandlerStore<'a, H: Handler> {
    handler: &'a H,
    session: &'a H::Session,
    cache: &'a str,
    forward: Option<&'a Forwarder>,
    token: &'a Bytes,
    /// Set when keys led elsewhere are answered `MOVED` to these doors.
    redirect: Option<&'a Doors>,
    routing: &'a OnceLock<KeyRouting>,
}

impl<H: Handler> HandlerStore<'_, H> {
    async fn ask(&self, m: Message) -> Result<Message, Reply> {
        let local = self.handler.request(self.session, m.clone()).await;
        if let HandlerReply::Message(Message::Error(ErrorReply::NotLeader {
            leader: Some((broker, _)),
        })) = &local
        {
            if let Some(moved) = self.moved(&m, *broker).await {
                return Err(moved);
            }
        }
        if let (
            HandlerReply::Message(Message::Error(ErrorReply::NotLeader {
                leader: Some((_, leader)),
            })),
            Some(f),
        ) = (&local, self.forward)
        {
            return f.ask(self.token, leader, &m).await.map_err(error_reply);
        }
        match local {
            HandlerReply::Message(Message::Error(e)) => Err(error_reply(e)),
            HandlerReply::Message(m) => Ok(m),
            other => Err(Reply::err(format!(
                "ERR unexpected answer from the broker: {other:?}"
            ))),
        }
    }

    /// `-MOVED <slot> <door>` for a key `broker` leads, when redirects are
    /// on, the cache routes by slot (else the slot would not name the
    /// shard) and that broker has a door.
    async fn moved(&self, m: &Message, broker: u64) -> Option<Reply> {
        let doors = self.redirect?;
        let key = match m {
            Message::CacheGet { key, .. }
            | Message::CachePut { key, .. }
            | Message::CacheDelete { key, .. } => key,
            _ => return None,
        };
        let routing = match self.routing.get() {
            Some(r) => *r,
            None => {
                let info = describe(self.handler, self.session, self.cache).await?;
                *self.routing.get_or_init(|| info.key_routing)
            }
        };
        if routing != KeyRouting::Slots {
            return None;
        }
        let door = (doors.0)(broker)?;
        Some(Reply::err(format!("MOVED {} {door}", key_slot(key))))
    }

    fn written(m: Message) -> Result<Written, Reply> {
        match m {
            Message::CacheWritten { version } => Ok(Written::Done(version)),
            Message::CacheValue { entry } => Ok(Written::Conflict(entry)),
            other => Err(Reply::err(format!(
                "ERR unexpected answer from the broker: {other:?}"
            ))),
        }
    }
}

/// The longest wait between two tries of a contended compare-and-set.
const BACKOFF_US_MAX: u64 = 20_000;

impl<H: Handler> Store for HandlerStore<'_, H> {
    async fn backoff(&self, attempt: usize) {
        // Full jitter over a window that doubles with each lost try.
        let window = (100u64 << attempt.min(16)).min(BACKOFF_US_MAX);
        let wait = rand::random::<u64>() % window.max(1);
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }

    async fn get(&self, key: Bytes) -> Result<Option<CacheEntry>, Reply> {
        match self
            .ask(Message::CacheGet {
                cache: self.cache.to_owned(),
                key,
            })
            .await?
        {
            Message::CacheValue { entry } => Ok(entry),
            other => Err(Reply::err(format!(
                "ERR unexpected answer from the broker: {other:?}"
            ))),
        }
    }

    async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
    ) -> Result<Written, Reply> {
        Self::written(
            self.ask(Message::CachePut {
                cache: self.cache.to_owned(),
                key,
                value,
                ttl_ms,
                if_version,
                writer: 0,
                sequence: 0,
            })
            .await?,
        )
    }

    async fn shards(&self) -> Result<u32, Reply> {
        let m = self
            .ask(Message::Metadata {
                streams: vec![self.cache.to_owned()],
            })
            .await?;
        match m {
            Message::MetadataReply { streams, .. } => streams
                .into_iter()
                .find(|s| s.name == self.cache)
                .map(|s| s.shards.len() as u32)
                .filter(|n| *n > 0)
                .ok_or_else(|| error_reply(ErrorReply::UnknownStream(self.cache.to_owned()))),
            other => Err(Reply::err(format!(
                "ERR unexpected answer from the broker: {other:?}"
            ))),
        }
    }

    async fn scan(
        &self,
        shard: u32,
        after: Option<Bytes>,
        count: usize,
    ) -> Result<(Vec<Bytes>, Option<Bytes>), Reply> {
        let m = self
            .ask(Message::CacheScan {
                cache: self.cache.to_owned(),
                shard,
                after,
                count: count.clamp(1, felix_client::wire::message::SCAN_KEYS_MAX) as u32,
            })
            .await?;
        match m {
            Message::CacheKeys { keys, next } => Ok((keys, next)),
            other => Err(Reply::err(format!(
                "ERR unexpected answer from the broker: {other:?}"
            ))),
        }
    }

    async fn delete(&self, key: Bytes, if_version: Option<u64>) -> Result<Written, Reply> {
        Self::written(
            self.ask(Message::CacheDelete {
                cache: self.cache.to_owned(),
                key,
                if_version,
                writer: 0,
                sequence: 0,
            })
            .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_get_matches_as_redis_globs() {
        let r = config_get(&[Bytes::from_static(b"APPEND*"), Bytes::from_static(b"sav?")]);
        assert_eq!(
            r,
            Reply::Map(vec![
                (Reply::text("save"), Reply::text("")),
                (Reply::text("appendonly"), Reply::text("no")),
            ])
        );
        assert_eq!(
            config_get(&[Bytes::from_static(b"nothing")]),
            Reply::Map(Vec::new())
        );
        assert!(glob(b"*", b"anything"));
        assert!(!glob(b"a?c", b"ac"));
    }
}
