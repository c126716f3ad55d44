//! End-to-end value encryption: the client seals a record's value under a
//! key the brokers never hold, so brokers store, replicate and serve
//! opaque bytes. Sans-IO: bytes and keys in, bytes out (the nonce comes
//! from the system's random source). Envelope and key file:
//! `docs/format/sealed.md`.
//!
//! The value is bound to its stream and its record key (the AEAD's
//! associated data), so a sealed value copied to another stream or key
//! fails to open rather than reading as the wrong record.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// First byte of every sealed value: no Felix value sealed by this module
/// starts otherwise, so an unsealed value is told apart before any
/// decryption is tried.
pub const SEALED_MARKER: u8 = 0xFE;
/// The envelope's version.
pub const SEALED_VERSION: u8 = 1;
const KEY_ID_OFFSET: usize = 2;
const NONCE_OFFSET: usize = KEY_ID_OFFSET + 4;
/// Where the ciphertext starts.
pub const SEALED_HEAD_BYTES: usize = NONCE_OFFSET + NONCE_LEN;
const TAG_BYTES: usize = 16;
/// What sealing adds to a value.
pub const SEALED_OVERHEAD_BYTES: usize = SEALED_HEAD_BYTES + TAG_BYTES;
const _: () = assert!(SEALED_HEAD_BYTES == 18 && SEALED_OVERHEAD_BYTES == 34);
/// Bytes of an AES-256 key.
pub const VALUE_KEY_BYTES: usize = 32;
/// Keys one key file may hold (the current one and those it replaced,
/// kept to open older values).
pub const VALUE_KEYS_MAX: usize = 64;
/// Bytes of a key file read at most.
pub const KEY_FILE_BYTES_MAX: usize = 16 << 10;
/// First word of every key line.
const KEY_LINE_TAG: &str = "felix-value-key";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the value is not sealed (it does not start with the sealed-value marker)")]
    NotSealed,
    #[error("sealed-value version {0} is not known (this client reads version {SEALED_VERSION})")]
    UnknownVersion(u8),
    #[error("the value is sealed under key {0}, which the key file does not hold")]
    UnknownKey(u32),
    #[error(
        "the sealed value does not authenticate: wrong key, another stream or record key, or altered bytes"
    )]
    Forged,
    #[error("key file: {0}")]
    KeyFile(String),
    #[error("the system's random source failed")]
    Random,
}

/// A key file's keys: the last one seals, every one opens.
pub struct ValueKeys {
    keys: Vec<(u32, LessSafeKey)>,
}

impl fmt::Debug for ValueKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes.
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("ValueKeys").field("ids", &ids).finish()
    }
}

/// One key line: `felix-value-key 1 <id> <32 bytes, base64url>`.
fn key_line(id: u32, key: &[u8; VALUE_KEY_BYTES]) -> String {
    format!(
        "{KEY_LINE_TAG} {SEALED_VERSION} {id} {}\n",
        URL_SAFE_NO_PAD.encode(key)
    )
}

impl ValueKeys {
    /// Parses a key file's text: one key per line, ids ascending.
    pub fn parse(text: &str) -> Result<ValueKeys, SealError> {
        let bad = |n: usize, why: &str| SealError::KeyFile(format!("line {n}: {why}"));
        let mut keys: Vec<(u32, LessSafeKey)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_ascii_whitespace().collect();
            let [tag, version, id, key] = parts[..] else {
                return Err(bad(n, "expected `felix-value-key 1 <id> <key>`"));
            };
            if tag != KEY_LINE_TAG {
                return Err(bad(n, "not a felix-value-key line"));
            }
            if version != "1" {
                return Err(bad(n, "only version 1 keys are known"));
            }
            let id: u32 = id.parse().map_err(|_| bad(n, "the key id is not a number"))?;
            if keys.last().is_some_and(|(last, _)| *last >= id) {
                return Err(bad(n, "key ids must ascend (the last key seals)"));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(key)
                .map_err(|_| bad(n, "the key is not base64url"))?;
            if raw.len() != VALUE_KEY_BYTES {
                return Err(bad(n, "a key is 32 bytes"));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad(n, "not an AES-256 key"))?;
            keys.push((id, LessSafeKey::new(unbound)));
            if keys.len() > VALUE_KEYS_MAX {
                return Err(SealError::KeyFile(format!("more than {VALUE_KEYS_MAX} keys")));
            }
        }
        if keys.is_empty() {
            return Err(SealError::KeyFile("it holds no key".into()));
        }
        Ok(ValueKeys { keys })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<ValueKeys, SealError> {
        let err = |e: String| SealError::KeyFile(format!("{}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > KEY_FILE_BYTES_MAX as u64 {
            return Err(err(format!("larger than {KEY_FILE_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        ValueKeys::parse(&text).map_err(|e| err(e.to_string()))
    }

    /// A key file's text with one more, fresh key after `existing` (a
    /// key file's text, or empty): the new key seals from now on, the
    /// older ones still open what they sealed.
    pub fn rotate(existing: &str) -> Result<String, SealError> {
        let next = match existing.trim().is_empty() {
            true => 1,
            false => {
                let keys = ValueKeys::parse(existing)?;
                if keys.keys.len() >= VALUE_KEYS_MAX {
                    return Err(SealError::KeyFile(format!(
                        "it already holds {VALUE_KEYS_MAX} keys; start a new file"
                    )));
                }
                keys.sealing_id()
                    .checked_add(1)
                    .ok_or(SealError::KeyFile("key ids are exhausted".into()))?
            }
        };
        let mut key = [0u8; VALUE_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random)?;
        let mut text = existing.to_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&key_line(next, &key));
        Ok(text)
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> u32 {
        self.keys.last().expect("a key file holds a key").0
    }

    /// Seals `value` of record key `key` on `stream` under the last key.
    pub fn seal(&self, stream: &str, key: Option<&[u8]>, value: &[u8]) -> Result<Bytes, SealError> {
        let (id, k) = self.keys.last().expect("a key file holds a key");
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = BytesMut::with_capacity(value.len() + SEALED_OVERHEAD_BYTES);
        out.put_u8(SEALED_MARKER);
        out.put_u8(SEALED_VERSION);
        out.put_u32_le(*id);
        out.put_slice(&nonce);
        // Encrypted where it will be sent: one copy of the value, not two.
        out.put_slice(value);
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(stream, key)),
                &mut out[SEALED_HEAD_BYTES..],
            )
            .map_err(|_| SealError::Forged)?;
        out.put_slice(tag.as_ref());
        Ok(out.freeze())
    }

    /// Opens a value [`ValueKeys::seal`] sealed for `stream` and `key`.
    pub fn open(&self, stream: &str, key: Option<&[u8]>, sealed: &[u8]) -> Result<Bytes, SealError> {
        if sealed.first() != Some(&SEALED_MARKER) {
            return Err(SealError::NotSealed);
        }
        if sealed.len() < SEALED_OVERHEAD_BYTES {
            return Err(SealError::Forged);
        }
        if sealed[1] != SEALED_VERSION {
            return Err(SealError::UnknownVersion(sealed[1]));
        }
        let id = u32::from_le_bytes(sealed[KEY_ID_OFFSET..NONCE_OFFSET].try_into().expect("4 bytes"));
        let k = self
            .keys
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, k)| k)
            .ok_or(SealError::UnknownKey(id))?;
        let nonce: [u8; NONCE_LEN] = sealed[NONCE_OFFSET..SEALED_HEAD_BYTES]
            .try_into()
            .expect("12 bytes");
        let mut body = sealed[SEALED_HEAD_BYTES..].to_vec();
        let plain = k
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(stream, key)),
                &mut body,
            )
            .map_err(|_| SealError::Forged)?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// What a sealed value is bound to: its stream's full name (a bare name
/// and its `dev/default/…` spelling are one stream) and its record key
/// (absent and empty told apart).
fn associated(stream: &str, key: Option<&[u8]>) -> Vec<u8> {
    let full = felix_model::names::StreamName::parse(stream).map(|n| n.to_string());
    let stream = full.as_deref().unwrap_or(stream);
    let mut aad = Vec::with_capacity(stream.len() + 6 + key.map_or(0, <[u8]>::len));
    aad.extend_from_slice(&(stream.len() as u32).to_le_bytes());
    aad.extend_from_slice(stream.as_bytes());
    match key {
        None => aad.push(0),
        Some(k) => {
            aad.push(1);
            aad.extend_from_slice(k);
        }
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> ValueKeys {
        ValueKeys::parse(text).unwrap()
    }

    #[test]
    fn a_value_opens_only_for_its_stream_and_key_and_unaltered() {
        let k = keys(&ValueKeys::rotate("").unwrap());
        let s = k.seal("t/n/orders", Some(b"k1"), b"secret value").unwrap();
        assert_eq!(s.len(), 12 + SEALED_OVERHEAD_BYTES);
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            k.open("t/n/orders", Some(b"k1"), &s).unwrap(),
            &b"secret value"[..]
        );
        assert_eq!(k.open("t/n/other", Some(b"k1"), &s), Err(SealError::Forged));
        assert_eq!(k.open("t/n/orders", Some(b"k2"), &s), Err(SealError::Forged));
        assert_eq!(k.open("t/n/orders", None, &s), Err(SealError::Forged));
        for i in 0..s.len() {
            let mut bad = s.to_vec();
            bad[i] ^= 0x01;
            assert!(
                k.open("t/n/orders", Some(b"k1"), &bad).is_err(),
                "byte {i} flipped"
            );
        }
        assert_eq!(k.open("t/n/orders", None, b"plain"), Err(SealError::NotSealed));
        // A bare name is the development tenant's stream of that name.
        let bare = k.seal("orders", None, b"v").unwrap();
        assert_eq!(k.open("dev/default/orders", None, &bare).unwrap(), &b"v"[..]);
        assert_eq!(k.open("t/n/orders", None, &s[..20]), Err(SealError::Forged));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(s, k.seal("t/n/orders", Some(b"k1"), b"secret value").unwrap());
    }

    #[test]
    fn a_rotated_file_seals_with_the_new_key_and_still_opens_the_old() {
        let one = ValueKeys::rotate("").unwrap();
        let two = ValueKeys::rotate(&one).unwrap();
        let (k1, k2) = (keys(&one), keys(&two));
        assert_eq!((k1.sealing_id(), k2.sealing_id()), (1, 2));
        let old = k1.seal("s", None, b"v").unwrap();
        let new = k2.seal("s", None, b"v").unwrap();
        assert_eq!(k2.open("s", None, &old).unwrap(), &b"v"[..]);
        assert_eq!(k1.open("s", None, &new), Err(SealError::UnknownKey(2)));
        // Another file's key of the same id does not open it.
        let other = keys(&ValueKeys::rotate("").unwrap());
        assert_eq!(other.open("s", None, &old), Err(SealError::Forged));
    }

    #[test]
    fn a_bad_key_file_is_refused_with_its_line() {
        let good = ValueKeys::rotate("").unwrap();
        let key = good.split_whitespace().last().unwrap();
        for (text, want) in [
            ("", "no key"),
            ("felix-value-key 2 1 AAAA\n", "version 1"),
            ("other 1 1 AAAA\n", "not a felix-value-key"),
            (&format!("felix-value-key 1 x {key}\n"), "not a number"),
            ("felix-value-key 1 1 AAAA\n", "32 bytes"),
            ("felix-value-key 1 1 !!\n", "base64url"),
            (
                &format!("felix-value-key 1 2 {key}\nfelix-value-key 1 1 {key}\n"),
                "ascend",
            ),
        ] {
            let e = ValueKeys::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
        assert!(!format!("{:?}", keys(&good)).contains(key), "Debug shows the key");
    }
}
