//! Frames over one QUIC stream: reading with the sans-IO decoder, writing
//! encoded messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use crate::wire::{self, Decoded, FrameDecoder, Message, WireError};

/// Largest chunk taken from a stream per read.
const READ_CHUNK_BYTES_MAX: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes are not frames of this protocol version; the stream is
    /// unusable.
    #[error("{0}")]
    Wire(WireError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
    /// The connection's unfinished frames hold more than its budget.
    #[error("frames still arriving on this connection hold more than {max} bytes")]
    Overloaded { max: usize },
}

/// Bytes of unfinished frames buffered across all streams of one
/// connection, and how many it may hold: the memory a peer can pin by
/// starting frames and not finishing them. Decoded requests are counted
/// apart (the server's in-flight limit).
#[derive(Debug)]
pub struct PartialBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl PartialBudget {
    pub fn new(max: usize) -> PartialBudget {
        PartialBudget {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` more bytes, unless that would pass the budget.
    fn take(&self, n: usize) -> Result<(), usize> {
        let max = self.max.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= max)
            })
            .map(|_| ())
            .map_err(|_| max)
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What the next read produced.
#[derive(Debug)]
pub enum Incoming {
    Message(u64, Message),
    /// A frame or message refused; answer its request id with the error.
    Refused(u64, WireError),
}

/// Reads frames from a receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// The connection's budget, and what this stream holds of it.
    budget: Option<(Arc<PartialBudget>, usize)>,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            decoder: wire::decoder(),
            budget: None,
        }
    }

    /// A reader whose unfinished frames count against `budget`, taking
    /// bodies of at most `body_max` bytes until [`FrameReader::set_body_max`].
    pub fn bounded(recv: quinn::RecvStream, budget: Arc<PartialBudget>, body_max: usize) -> FrameReader {
        let mut decoder = wire::decoder();
        decoder.set_body_max(body_max);
        FrameReader {
            recv,
            decoder,
            budget: Some((budget, 0)),
        }
    }

    pub fn set_body_max(&mut self, body_max: usize) {
        self.decoder.set_body_max(body_max);
    }

    /// Charges (or refunds) the budget for what the decoder holds now.
    fn settle(&mut self) -> Result<(), ReadError> {
        let Some((budget, held)) = &mut self.budget else {
            return Ok(());
        };
        let now = self.decoder.buffered();
        if now > *held {
            budget
                .take(now - *held)
                .map_err(|max| ReadError::Overloaded { max })?;
        } else {
            budget.give(*held - now);
        }
        *held = now;
        Ok(())
    }

    /// The next message or refusal; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let next = self.decoder.next_frame().map_err(ReadError::Wire)?;
            self.settle()?;
            match next {
                Some(Decoded::Frame(f)) => {
                    return Ok(Some(match wire::decode(f) {
                        Ok((id, m)) => Incoming::Message(id, m),
                        Err((id, e)) => Incoming::Refused(id, e),
                    }))
                }
                Some(Decoded::Rejected { request_id, error }) => {
                    return Ok(Some(Incoming::Refused(request_id, error)))
                }
                None => {}
            }
            match self.recv.read_chunk(READ_CHUNK_BYTES_MAX, true).await? {
                Some(chunk) => {
                    self.decoder.feed(&chunk.bytes);
                    self.settle()?;
                }
                None => {
                    return match self.decoder.finish() {
                        Ok(()) => Ok(None),
                        Err(_) => Err(ReadError::Truncated),
                    }
                }
            }
        }
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        if let Some((budget, held)) = &self.budget {
            budget.give(*held);
        }
    }
}

/// Encodes `m` as one frame.
pub fn encode(request_id: u64, m: &Message) -> Result<bytes::Bytes, WireError> {
    let mut out = BytesMut::new();
    m.encode(request_id, &mut out)?;
    Ok(out.freeze())
}
