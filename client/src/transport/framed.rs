//! Frames over one QUIC stream: reading with the sans-IO decoder, writing
//! encoded messages.

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
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            decoder: wire::decoder(),
        }
    }

    /// The next message or refusal; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            match self.decoder.next_frame().map_err(ReadError::Wire)? {
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
                Some(chunk) => self.decoder.feed(&chunk.bytes),
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

/// Encodes `m` as one frame.
pub fn encode(request_id: u64, m: &Message) -> Result<bytes::Bytes, WireError> {
    let mut out = BytesMut::new();
    m.encode(request_id, &mut out)?;
    Ok(out.freeze())
}
