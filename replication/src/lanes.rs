//! Lanes: a few long-lived streams per peer connection that carry the
//! small Raft RPCs of every group (kind 13, `docs/format/raft-rpc.md`).
//!
//! With one stream per RPC, a broker awake in thousands of groups opens and
//! finishes thousands of streams a second to each peer, and its peer
//! accepts each, spawns a task for it and grants stream credit back. On a
//! lane an RPC is one frame each way, tagged with an id so replies may
//! come back in any order: a slow forwarded write does not hold up the
//! heartbeats behind it.
//!
//! What stays on streams of its own: snapshots (their file follows the
//! body), bodies above [`LANE_BODY_MAX`] (a catch-up batch would hold a
//! lane's heartbeats behind its bytes), calls beyond
//! [`LANE_PENDING_MAX`] awaiting replies on a lane, and every RPC to a
//! peer that answers the lane request with an error (an older broker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::heard_now;
use crate::error::ReplicationError;

/// Lanes per peer connection. A lost packet stalls one lane until it is
/// sent again, so more than one; each costs one task per side.
pub const LANES_PER_PEER: usize = 4;
/// The largest body an RPC sends on a lane.
pub const LANE_BODY_MAX: usize = 64 << 10;
/// RPCs sent on one lane and not answered yet, abandoned ones included
/// (the peer still serves them). All lanes together may take half of the
/// `RPC_STREAMS_MAX` the peer serves at once over the connection, so
/// streams (snapshots, large bodies) always find some.
pub const LANE_PENDING_MAX: usize = crate::frame::RPC_STREAMS_MAX / (2 * LANES_PER_PEER);

/// A request frame: the RPC's id, then the request head of a stream RPC.
pub(crate) const REQUEST_HEAD_BYTES: usize = 8 + crate::frame::HEAD_BYTES;
/// A reply frame: the id, then the response head of a stream RPC.
pub(crate) const REPLY_HEAD_BYTES: usize = 8 + 5;
const _: () = assert!(LANE_BODY_MAX < crate::frame::RPC_BYTES_MAX);
const _: () = assert!(2 * LANE_PENDING_MAX * LANES_PER_PEER <= crate::frame::RPC_STREAMS_MAX);

type Reply = Result<Vec<u8>, String>;

/// One broker's lanes to one peer connection (client side).
pub(crate) struct Lanes {
    conn: quinn::Connection,
    /// When a reply last came over the connection.
    replied: Arc<AtomicU64>,
    open_timeout: Duration,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Lane>>>>,
    next: AtomicUsize,
    /// The peer answered a lane request with an error: every RPC to it
    /// takes a stream of its own.
    refused: AtomicBool,
}

struct Lane {
    /// Callers write their frames themselves, one at a time: a writer task
    /// would cost a hand-off per RPC.
    send: tokio::sync::Mutex<quinn::SendStream>,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Waiting {
    /// No call is added: a frame was cut short or a write failed. The
    /// calls already sent still get their replies.
    closed: bool,
    /// The replies stopped coming: every call still waiting failed.
    dead: bool,
    /// Calls sent and not answered yet; `None` for one whose caller gave
    /// up, which still counts against [`LANE_PENDING_MAX`] because the
    /// peer still serves it.
    replies: HashMap<u64, Option<oneshot::Sender<Reply>>>,
}

impl Lane {
    /// Takes no more calls.
    fn close(&self) {
        self.waiting.lock().expect("lane lock").closed = true;
    }

    /// Fails every call awaiting a reply, and any added later.
    fn kill(&self) {
        let mut w = self.waiting.lock().expect("lane lock");
        w.closed = true;
        w.dead = true;
        // Dropping the senders fails the receivers.
        w.replies.clear();
    }

    fn is_closed(&self) -> bool {
        self.waiting.lock().expect("lane lock").closed
    }
}

/// A frame being written. Dropped (the caller's deadline) after part of
/// the frame went out, it leaves the lane unreadable for the peer: the
/// lane's send side is reset and it takes no more calls; the calls
/// already sent still get their replies. Dropped before any byte went
/// out, it costs nothing.
struct Writing<'a> {
    send: tokio::sync::MutexGuard<'a, quinn::SendStream>,
    lane: &'a Lane,
    written: usize,
    done: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.done && self.written > 0 {
            let _ = self.send.reset(0u32.into());
            self.lane.close();
        }
    }
}

/// A call's reply slot, when its caller gives up (its deadline) before
/// the reply came: removed if its frame never went out whole, kept empty
/// until the reply comes otherwise.
struct Unregister<'a> {
    lane: &'a Lane,
    id: u64,
    sent: bool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut w = self.lane.waiting.lock().expect("lane lock");
        if self.sent {
            if let Some(slot) = w.replies.get_mut(&self.id) {
                *slot = None;
            }
        } else {
            w.replies.remove(&self.id);
        }
    }
}

fn terr(e: impl ToString) -> ReplicationError {
    ReplicationError::Transport(e.to_string())
}

impl Lanes {
    pub(crate) fn new(conn: quinn::Connection, replied: Arc<AtomicU64>, open_timeout: Duration) -> Lanes {
        Lanes {
            conn,
            replied,
            open_timeout,
            slots: (0..LANES_PER_PEER)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            refused: AtomicBool::new(false),
        }
    }

    /// Sends the RPC `head` + `body` on a lane and awaits its reply; `None`
    /// when it must take a stream of its own instead (see the module).
    /// `lane_head` is the request that opens a lane, should one be needed.
    pub(crate) async fn call(
        &self,
        lane_head: &[u8],
        head: &[u8],
        body: &[u8],
        opened: &AtomicU64,
    ) -> Option<Result<Reply, ReplicationError>> {
        if body.len() > LANE_BODY_MAX || self.refused.load(Ordering::Acquire) {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % LANES_PER_PEER;
        let lane = {
            let mut s = self.slots[slot].lock().await;
            match s.as_ref() {
                Some(l) if !l.is_closed() => l.clone(),
                _ => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let r =
                        tokio::time::timeout(self.open_timeout, open(&self.conn, &self.replied, lane_head))
                            .await;
                    match r {
                        // The RPC tries a stream of its own instead.
                        Err(_) | Ok(Err(_)) => return None,
                        Ok(Ok(None)) => {
                            self.refused.store(true, Ordering::Release);
                            return None;
                        }
                        Ok(Ok(Some(l))) => {
                            *s = Some(l.clone());
                            l
                        }
                    }
                }
            }
        };
        let id = lane.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lane.waiting.lock().expect("lane lock");
            if w.closed || w.replies.len() >= LANE_PENDING_MAX {
                return None;
            }
            w.replies.insert(id, Some(tx));
        }
        let mut unregister = Unregister {
            lane: &lane,
            id,
            sent: false,
        };
        let mut frame = Vec::with_capacity(REQUEST_HEAD_BYTES + body.len());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(head);
        frame.extend_from_slice(body);
        let mut writing = Writing {
            send: lane.send.lock().await,
            lane: &lane,
            written: 0,
            done: false,
        };
        while writing.written < frame.len() {
            let at = writing.written;
            match writing.send.write(&frame[at..]).await {
                Ok(n) => writing.written += n,
                Err(e) => {
                    // The stream is gone; its replies end too, and the
                    // reader fails what waits.
                    writing.done = true;
                    drop(writing);
                    lane.close();
                    return Some(Err(terr(format!("the lane failed: {e}"))));
                }
            }
        }
        writing.done = true;
        drop(writing);
        unregister.sent = true;
        Some(
            rx.await
                .map_err(|_| terr("the lane closed before the reply came")),
        )
    }
}

/// Opens a lane: `None` if the peer does not serve them.
async fn open(
    conn: &quinn::Connection,
    replied: &Arc<AtomicU64>,
    lane_head: &[u8],
) -> Result<Option<Arc<Lane>>, ReplicationError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(terr)?;
    send.write_all(lane_head).await.map_err(terr)?;
    let mut h = [0u8; 5];
    recv.read_exact(&mut h).await.map_err(terr)?;
    let len = u32::from_le_bytes(h[1..5].try_into().expect("4 bytes")) as usize;
    if h[0] != 0 {
        // An older broker: an error (it hosts no group 0), then the end
        // of its stream.
        let mut text = vec![0u8; len.min(4096)];
        let _ = recv.read_exact(&mut text).await;
        tracing::debug!(
            refusal = %String::from_utf8_lossy(&text),
            "a peer serves no lanes; its RPCs take a stream each"
        );
        let _ = send.finish();
        return Ok(None);
    }
    if len != 0 {
        return Err(terr(format!("a lane's opening reply carried {len} bytes")));
    }
    let lane = Arc::new(Lane {
        send: tokio::sync::Mutex::new(send),
        waiting: Mutex::new(Waiting::default()),
        next_id: AtomicU64::new(0),
    });
    tokio::spawn(read_replies(recv, lane.clone(), replied.clone()));
    Ok(Some(lane))
}

/// Hands each reply to the call awaiting it, until the stream fails.
async fn read_replies(mut recv: quinn::RecvStream, lane: Arc<Lane>, replied: Arc<AtomicU64>) {
    let r: Result<(), ReplicationError> = async {
        loop {
            let mut h = [0u8; REPLY_HEAD_BYTES];
            recv.read_exact(&mut h).await.map_err(terr)?;
            let id = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(h[9..13].try_into().expect("4 bytes")) as usize;
            if len > crate::frame::RPC_BYTES_MAX {
                return Err(terr(format!("a lane reply of {len} bytes")));
            }
            let mut b = vec![0u8; len];
            recv.read_exact(&mut b).await.map_err(terr)?;
            replied.store(heard_now(), Ordering::Release);
            let waiter = lane.waiting.lock().expect("lane lock").replies.remove(&id);
            if let Some(Some(tx)) = waiter {
                let _ = tx.send(match h[8] {
                    0 => Ok(b),
                    _ => Err(String::from_utf8_lossy(&b).into_owned()),
                });
            }
        }
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "a lane closed");
    }
    lane.kill();
}

/// One request read from a lane (server side).
pub(crate) struct Framed {
    pub id: u64,
    pub head: [u8; crate::frame::HEAD_BYTES],
    pub body: Vec<u8>,
}

/// Reads the next request of a lane; `Ok(None)` when the peer finished it.
pub(crate) async fn read_request(recv: &mut quinn::RecvStream) -> Result<Option<Framed>, ReplicationError> {
    let mut h = [0u8; REQUEST_HEAD_BYTES];
    match recv.read_exact(&mut h).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(terr(e)),
    }
    let id = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
    let head: [u8; crate::frame::HEAD_BYTES] = h[8..].try_into().expect("head bytes");
    let len = crate::frame::Head::parse(&head).len;
    // A lane's body is small by the sender's rule; a larger one is a
    // broken or hostile peer, and the lane ends.
    if len > LANE_BODY_MAX {
        return Err(terr(format!(
            "a lane request of {len} bytes (at most {LANE_BODY_MAX})"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(terr)?;
    Ok(Some(Framed { id, head, body }))
}

/// A reply frame for request `id`.
pub(crate) fn reply_frame(id: u64, out: Reply) -> Vec<u8> {
    let (status, body) = match out {
        Ok(b) => (0u8, b),
        Err(e) => (1u8, e.into_bytes()),
    };
    let mut f = Vec::with_capacity(REPLY_HEAD_BYTES + body.len());
    f.extend_from_slice(&id.to_le_bytes());
    f.push(status);
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&body);
    f
}
