//! The Felix wire protocol, version 1 (`docs/format/wire.md`): frames
//! ([`frame`]) carrying binary messages ([`message`]). Sans-IO: the codec
//! takes bytes and gives frames and messages; transports (QUIC streams) live
//! at the edges. The broker uses this same module.

pub mod error;
pub mod frame;
pub mod message;

use bytes::BytesMut;

pub use error::{ErrorReply, WireError};
pub use felix_model::{Durability, KeyRouting, StreamKind};
pub use frame::{Decoded, Frame, FrameDecoder, FrameHeader, FRAME_BODY_BYTES_MAX, HEADER_BYTES};
pub use message::{
    kind, AckLevel, BrokerInfo, CacheEntry, GroupRecord, Message, ShardInfo, ShardStats, Start, StreamConfig,
    StreamInfo,
};

/// A decoder for streams of this protocol's messages.
pub fn decoder() -> FrameDecoder {
    FrameDecoder::new(FRAME_BODY_BYTES_MAX, kind::known)
}

/// The message in a frame, or the error to answer its request id with.
pub fn decode(frame: Frame) -> Result<(u64, Message), (u64, WireError)> {
    let id = frame.header.request_id;
    Message::decode(frame.header.kind, frame.body)
        .map(|m| (id, m))
        .map_err(|e| (id, e))
}

/// The error frame answering a request that could not be decoded.
pub fn reject(request_id: u64, error: &WireError, out: &mut BytesMut) {
    Message::Error(ErrorReply::from(error.clone()))
        .encode(request_id, out)
        .expect("an error frame is always encodable: its message is cut to fit");
}
