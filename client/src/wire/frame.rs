//! Frames: a fixed 20-byte header and a body, specified in
//! `docs/format/wire.md`. Little-endian. The decoder is sans-IO: bytes in,
//! frames (or per-frame rejections) out.
//!
//! A frame whose header is well formed but whose type, flags or length the
//! decoder refuses is *rejected*: its body is skipped (without buffering an
//! oversized one) and the caller answers its request id with an error frame,
//! so one bad request does not cost the connection. Only a header that
//! breaks framing itself (bad magic, another protocol version) is fatal.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::WireError;

pub const MAGIC: [u8; 2] = *b"FX";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

pub const MAGIC_AT: usize = 0; // [u8; 2]
pub const VERSION_AT: usize = MAGIC_AT + 2; // u8
pub const KIND_AT: usize = VERSION_AT + 1; // u8: message type
pub const FLAGS_AT: usize = KIND_AT + 1; // u16
pub const RESERVED_AT: usize = FLAGS_AT + 2; // u16 = 0
pub const REQUEST_ID_AT: usize = RESERVED_AT + 2; // u64
pub const BODY_LEN_AT: usize = REQUEST_ID_AT + 8; // u32
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = BODY_LEN_AT + 4;

/// No flag is defined in version 1; any set bit is refused.
pub const FLAGS_KNOWN: u16 = 0;

/// Largest body: a push of up to 16 MiB of batches plus its fields. A
/// publish carries one batch (at most `BATCH_BYTES_MAX`, 8 MiB).
pub const FRAME_BODY_BYTES_MAX: usize = (16 << 20) + (64 << 10);

const _: () = assert!(HEADER_BYTES == 20);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BODY_BYTES_MAX > felix_log::batch::layout::BATCH_BYTES_MAX + (64 << 10));

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub flags: u16,
    pub request_id: u64,
    pub body_len: u32,
}

impl FrameHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.kind);
        out.put_u16_le(self.flags);
        out.put_u16_le(0);
        out.put_u64_le(self.request_id);
        out.put_u32_le(self.body_len);
    }

    /// Decodes a header from exactly [`HEADER_BYTES`]. Errors here are fatal
    /// for the stream: the bytes are not Felix frames of this version.
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Result<FrameHeader, WireError> {
        if b[MAGIC_AT..MAGIC_AT + 2] != MAGIC {
            return Err(WireError::BadMagic([b[0], b[1]]));
        }
        if b[VERSION_AT] != VERSION {
            return Err(WireError::UnsupportedVersion(b[VERSION_AT]));
        }
        let mut r = &b[KIND_AT..];
        let kind = r.get_u8();
        let flags = r.get_u16_le();
        let reserved = r.get_u16_le();
        let request_id = r.get_u64_le();
        let body_len = r.get_u32_le();
        if reserved != 0 {
            return Err(WireError::Reserved);
        }
        Ok(FrameHeader {
            kind,
            flags,
            request_id,
            body_len,
        })
    }
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub body: Bytes,
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A frame refused without reading its body: answer `request_id` with an
    /// error; the stream carries on after it.
    Rejected {
        request_id: u64,
        error: WireError,
    },
}

/// Splits a byte stream into frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Body bytes of a rejected frame still to skip.
    skip: u64,
    body_max: usize,
    known: fn(u8) -> bool,
}

impl FrameDecoder {
    /// A decoder accepting bodies up to `body_max` (capped at
    /// [`FRAME_BODY_BYTES_MAX`]) and the message types `known` admits.
    pub fn new(body_max: usize, known: fn(u8) -> bool) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            skip: 0,
            body_max: body_max.min(FRAME_BODY_BYTES_MAX),
            known,
        }
    }

    /// Changes the largest body accepted from the next frame on (capped at
    /// [`FRAME_BODY_BYTES_MAX`]): a server takes small frames until the
    /// peer has authenticated.
    pub fn set_body_max(&mut self, body_max: usize) {
        self.body_max = body_max.min(FRAME_BODY_BYTES_MAX);
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.skip > 0 {
            let n = (self.skip as usize).min(data.len());
            self.skip -= n as u64;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned (bounded by one header plus one
    /// accepted body, plus what the caller fed past it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame or rejection, `None` if more bytes are needed. An
    /// error means the stream is not a Felix stream of this version and must
    /// be closed.
    pub fn next_frame(&mut self) -> Result<Option<Decoded>, WireError> {
        if self.skip > 0 || self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let hb: [u8; HEADER_BYTES] = self.buf[..HEADER_BYTES].try_into().expect("length checked");
        let h = FrameHeader::decode(&hb)?;
        let refusal = if h.body_len as usize > self.body_max {
            Some(WireError::BodyTooLarge {
                len: h.body_len,
                max: self.body_max as u32,
            })
        } else if !(self.known)(h.kind) {
            Some(WireError::UnknownType(h.kind))
        } else if h.flags & !FLAGS_KNOWN != 0 {
            Some(WireError::UnknownFlags(h.flags))
        } else {
            None
        };
        if let Some(error) = refusal {
            self.buf.advance(HEADER_BYTES);
            let here = (h.body_len as usize).min(self.buf.len());
            self.buf.advance(here);
            self.skip = u64::from(h.body_len) - here as u64;
            return Ok(Some(Decoded::Rejected {
                request_id: h.request_id,
                error,
            }));
        }
        let total = HEADER_BYTES + h.body_len as usize;
        if self.buf.len() < total {
            // Nothing is reserved on the header's word: 24 bytes declaring
            // a 16 MiB body would otherwise cost 16 MiB per stream before
            // the body exists. The buffer grows with the bytes that came.
            return Ok(None);
        }
        self.buf.advance(HEADER_BYTES);
        let body = self.buf.split_to(h.body_len as usize).freeze();
        Ok(Some(Decoded::Frame(Frame { header: h, body })))
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() && self.skip == 0 {
            Ok(())
        } else {
            Err(WireError::Truncated("frame at the end of the stream"))
        }
    }
}
