//! Kafka's framing, sans-IO: a request is `size INT32 | header | body`,
//! a response `size INT32 | correlation_id INT32 [| tags] | body`
//! (`docs/kafka.md`, "Wire"). Sizes are checked before anything is
//! buffered for them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Encodable;

/// Largest request: two of Felix's largest batches, so one produce may
/// fill a batch on each of two partitions. Kafka's own default
/// (`socket.request.max.bytes`) is 100 MiB.
pub const REQUEST_BYTES_MAX: usize = 2 * felix_log::batch::layout::BATCH_BYTES_MAX;
/// Largest request before the connection has authenticated: enough for
/// ApiVersions, Metadata and the SASL exchange with a token.
pub const PRE_AUTH_REQUEST_BYTES_MAX: usize = 64 << 10;
/// api_key, api_version, correlation_id.
const FIXED_HEAD_BYTES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a request of {size} bytes is over this connection's limit of {max}")]
    TooLarge { size: i64, max: usize },
    #[error("a request of {size} bytes cannot hold a request header")]
    TooSmall { size: i64 },
    #[error("the request header is cut short")]
    ShortHeader,
}

/// A request's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `Err(raw)` for a key this crate does not know.
    pub key: Result<ApiKey, i16>,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// Takes one whole request off the front of `buf`; `Ok(None)` until all
/// of it is there. A size over `max` is refused before its bytes arrive.
pub fn next_request(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i64::from(i32::from_be_bytes(buf[..4].try_into().expect("4 bytes")));
    if size > max as i64 {
        return Err(FrameError::TooLarge { size, max });
    }
    if size < FIXED_HEAD_BYTES as i64 {
        return Err(FrameError::TooSmall { size });
    }
    let size = size as usize;
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Takes one bare size-prefixed frame (a SASL token after a v0
/// handshake, which carries no Kafka header).
pub fn next_bare(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i64::from(i32::from_be_bytes(buf[..4].try_into().expect("4 bytes")));
    if size > max as i64 || size < 0 {
        return Err(FrameError::TooLarge { size, max });
    }
    let size = size as usize;
    if buf.len() < 4 + size {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Splits a request into its header and body.
pub fn split(mut frame: Bytes) -> Result<(Head, Bytes), FrameError> {
    if frame.len() < FIXED_HEAD_BYTES {
        return Err(FrameError::ShortHeader);
    }
    let raw = frame.get_i16();
    let version = frame.get_i16();
    let correlation_id = frame.get_i32();
    let key = ApiKey::try_from(raw).map_err(|_| raw);
    let mut head = Head {
        key,
        version,
        correlation_id,
        client_id: None,
    };
    // An unknown key's header version is unknown too: its body is not read.
    let Ok(k) = key else {
        return Ok((head, Bytes::new()));
    };
    // An ApiVersions this door does not serve is answered from the fixed
    // part alone (KIP-511): the rest of a newer header may not parse.
    if k == ApiKey::ApiVersions && !crate::apis::serves(k, version) {
        return Ok((head, Bytes::new()));
    }
    let header_version = k.request_header_version(version);
    if header_version >= 1 {
        if frame.len() < 2 {
            return Err(FrameError::ShortHeader);
        }
        let n = frame.get_i16();
        if n >= 0 {
            let n = n as usize;
            if frame.len() < n {
                return Err(FrameError::ShortHeader);
            }
            head.client_id = Some(String::from_utf8_lossy(&frame.split_to(n)).into_owned());
        }
    }
    if header_version >= 2 {
        skip_tags(&mut frame)?;
    }
    Ok((head, frame))
}

fn uvarint(b: &mut Bytes) -> Result<u64, FrameError> {
    let mut v = 0u64;
    for shift in (0..35).step_by(7) {
        if b.is_empty() {
            return Err(FrameError::ShortHeader);
        }
        let x = b.get_u8();
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FrameError::ShortHeader)
}

fn skip_tags(b: &mut Bytes) -> Result<(), FrameError> {
    let n = uvarint(b)?;
    for _ in 0..n {
        uvarint(b)?;
        let size = uvarint(b)?;
        if (b.len() as u64) < size {
            return Err(FrameError::ShortHeader);
        }
        b.advance(size as usize);
    }
    Ok(())
}

/// Appends one response to `out`: its size, the header `key` at `version`
/// calls for, and `body` encoded at `version`.
pub fn respond<T: Encodable>(
    out: &mut BytesMut,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<(), String> {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(correlation_id);
    if key.response_header_version(version) >= 1 {
        // No tagged fields.
        out.put_u8(0);
    }
    body.encode(out, version).map_err(|e| e.to_string())?;
    let size = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_over_the_limit_is_refused_before_its_bytes_come() {
        let mut b = BytesMut::from(&((REQUEST_BYTES_MAX + 1) as i32).to_be_bytes()[..]);
        assert!(matches!(
            next_request(&mut b, REQUEST_BYTES_MAX),
            Err(FrameError::TooLarge { .. })
        ));
        let mut b = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert!(matches!(
            next_request(&mut b, 100),
            Err(FrameError::TooSmall { .. })
        ));
    }

    #[test]
    fn a_request_is_taken_whole_and_split_into_header_and_body() {
        let mut b = BytesMut::new();
        let body = b"body";
        let client = b"kcat";
        b.put_i32((8 + 2 + client.len() + body.len()) as i32);
        b.put_i16(3); // Metadata
        b.put_i16(1);
        b.put_i32(42);
        b.put_i16(client.len() as i16);
        b.put_slice(client);
        let whole = b.clone();
        b.put_slice(&body[..2]);
        assert_eq!(next_request(&mut b, 1 << 20), Ok(None));
        b.put_slice(&body[2..]);
        let frame = next_request(&mut b, 1 << 20).unwrap().unwrap();
        assert!(b.is_empty());
        assert_eq!(frame.len() + 4, whole.len() + body.len());
        let (head, rest) = split(frame).unwrap();
        assert_eq!(head.key, Ok(ApiKey::Metadata));
        assert_eq!((head.version, head.correlation_id), (1, 42));
        assert_eq!(head.client_id.as_deref(), Some("kcat"));
        assert_eq!(&rest[..], body);
    }

    #[test]
    fn an_unknown_key_is_named_and_a_cut_header_refused() {
        let mut f = BytesMut::new();
        f.put_i16(9_999);
        f.put_i16(0);
        f.put_i32(7);
        let (head, _) = split(f.freeze()).unwrap();
        assert_eq!(head.key, Err(9_999));
        assert_eq!(head.correlation_id, 7);
        let mut f = BytesMut::new();
        f.put_i16(3);
        f.put_i16(1);
        f.put_i32(7);
        f.put_i16(10);
        f.put_slice(b"abc");
        assert_eq!(split(f.freeze()), Err(FrameError::ShortHeader));
    }
}
