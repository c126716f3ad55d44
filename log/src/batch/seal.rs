//! Sealing a batch's records at rest (format version 2, see
//! `docs/format/batch.md`): the records section is encrypted with
//! AES-256-GCM under a tenant's data key. Everything the log, Raft and
//! deduplication read stays in the clear (the header and the producer
//! table), so checksums, recovery, replication and retention work on
//! sealed bytes without any key; what a reader of records needs is
//! [`open`] with a [`Keyring`] first.
//!
//! Sans-IO: the caller brings the key and the nonce, so sealing is
//! deterministic under test; the randomness lives with the keyring at the
//! broker's edge.

use std::sync::Arc;

use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::layout::{self as l, le};
use super::{Batch, BatchError, BatchHeader};

/// One data key, ready to seal and open. Cheap to clone.
#[derive(Clone)]
pub struct SealKey(Arc<LessSafeKey>);

impl SealKey {
    pub fn new(bytes: &[u8; l::SEAL_KEY_BYTES]) -> SealKey {
        let k = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes 32-byte keys");
        SealKey(Arc::new(LessSafeKey::new(k)))
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Where keys come from. The log crate never holds key material of its
/// own: the broker's keyring derives keys from its master key and hands
/// them out per shard (a shard belongs to one tenant).
pub trait Keyring: Send + Sync + std::fmt::Debug {
    /// The data key `key_id`, if this process holds it.
    fn key(&self, key_id: u32) -> Option<SealKey>;
    /// The id of the key new batches are sealed with, or `None` to write
    /// them in the clear.
    fn current(&self) -> Option<u32>;
    /// A fresh random nonce. Random 96-bit nonces stay safe for about 2^32
    /// batches per key; key rotation keeps each key well below that.
    fn nonce(&self) -> [u8; l::SEAL_NONCE_BYTES];
}

/// `plain` sealed under the keyring's current key; `None` when the
/// keyring writes in the clear.
pub fn seal_current(plain: &[u8], keys: &dyn Keyring) -> Result<Option<Vec<u8>>, BatchError> {
    let Some(id) = keys.current() else {
        return Ok(None);
    };
    let key = keys.key(id).ok_or(BatchError::KeyUnknown(id))?;
    seal(plain, id, &key, keys.nonce()).map(Some)
}

/// A keyring without keys: a chunk in the clear passes, a sealed batch
/// is refused with [`BatchError::KeyUnknown`].
#[derive(Debug)]
pub struct NoKeys;

impl Keyring for NoKeys {
    fn key(&self, _: u32) -> Option<SealKey> {
        None
    }
    fn current(&self) -> Option<u32> {
        None
    }
    fn nonce(&self) -> [u8; l::SEAL_NONCE_BYTES] {
        [0; l::SEAL_NONCE_BYTES]
    }
}

/// The data key a sealed batch names; 0 for a batch in the clear.
pub fn key_id(b: &Batch) -> u32 {
    let h = b.header();
    if !h.flags.sealed() {
        return 0;
    }
    le::u32_at(b.bytes(), h.records_at() + l::SEAL_KEY_ID_AT)
}

/// What the tag binds besides the records: the header fields that say
/// what the records are and that nothing but sealing or compaction (which
/// seals again) changes. The stamped offset, term and index are left
/// out, as the log writes them after sealing; the producer fields too,
/// as the broker binds a producer to its principal in place.
const AAD_BYTES: usize = 1 + 1 + 4 + 4 + 4 + 8 + 8 + 4;

fn aad(b: &[u8], key_id: u32) -> [u8; AAD_BYTES] {
    let mut a = [0u8; AAD_BYTES];
    let mut at = 0;
    let mut put = |v: &[u8]| {
        a[at..at + v.len()].copy_from_slice(v);
        at += v.len();
    };
    put(&[b[l::VERSION_AT], b[l::FLAGS_AT]]);
    put(&b[l::RECORD_COUNT_AT..l::RECORD_COUNT_AT + 4]);
    put(&b[l::OFFSET_COUNT_AT..l::OFFSET_COUNT_AT + 4]);
    put(&b[l::RECORDS_RAW_LEN_AT..l::RECORDS_RAW_LEN_AT + 4]);
    put(&b[l::FIRST_TIMESTAMP_AT..l::FIRST_TIMESTAMP_AT + 8]);
    put(&b[l::MAX_TIMESTAMP_AT..l::MAX_TIMESTAMP_AT + 8]);
    put(&key_id.to_le_bytes());
    a
}

/// Seals a checked batch in the clear under data key `key_id`. Control
/// batches and emptied batches are refused (they hold no records to
/// hide); so is a batch with no room left for the seal's
/// [`l::SEAL_OVERHEAD_BYTES`] under [`l::BATCH_BYTES_MAX`].
pub fn seal(
    plain: &[u8],
    key_id: u32,
    key: &SealKey,
    nonce: [u8; l::SEAL_NONCE_BYTES],
) -> Result<Vec<u8>, BatchError> {
    let h = BatchHeader::decode(plain)?;
    if h.flags.sealed() || h.flags.control() || h.record_count == 0 || key_id == 0 {
        return Err(BatchError::Inconsistent(
            "only a data batch in the clear with records is sealed, under a key id other than 0",
        ));
    }
    if plain.len() != h.batch_len as usize {
        return Err(BatchError::Inconsistent("bytes after the end of the batch"));
    }
    let sealed_len = plain.len() + l::SEAL_OVERHEAD_BYTES;
    if sealed_len > l::BATCH_BYTES_MAX {
        return Err(BatchError::TooLarge {
            what: "sealed batch length",
            value: sealed_len as u64,
            max: l::BATCH_BYTES_MAX as u64,
        });
    }
    let at = h.records_at();
    let mut out = Vec::with_capacity(sealed_len);
    out.extend_from_slice(&plain[..at]);
    out[l::VERSION_AT] = l::VERSION_SEALED;
    out[l::FLAGS_AT] |= l::FLAG_SEALED;
    le::put_u32(&mut out, l::LEN_AT, sealed_len as u32);
    le::put_u32(
        &mut out,
        l::RECORDS_LEN_AT,
        h.records_len + l::SEAL_OVERHEAD_BYTES as u32,
    );
    out.extend_from_slice(&key_id.to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plain[at..]);
    let aad = aad(&out, key_id);
    let tag = key
        .0
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[at + l::SEAL_PREFIX_BYTES..],
        )
        .map_err(|_| BatchError::Unseal(key_id))?;
    out.extend_from_slice(tag.as_ref());
    reseal_checksums(&mut out);
    Ok(out)
}

/// The batch in the clear: itself when it is not sealed, else its records
/// decrypted into a version 1 batch with the same header (offset, term,
/// index, producer, timestamps) and checksums of its own.
pub fn open(b: &Batch, keys: &dyn Keyring) -> Result<Batch, BatchError> {
    if !b.header().flags.sealed() {
        return Ok(b.clone());
    }
    let mut out = Vec::with_capacity(b.bytes().len() - l::SEAL_OVERHEAD_BYTES);
    let h = open_into(b, keys, &mut out)?;
    Ok(Batch::trusted(h, Bytes::from(out)))
}

/// Appends sealed batch `b` in the clear to `out` (decrypted in place
/// there: one copy of the records), and returns its header.
fn open_into(b: &Batch, keys: &dyn Keyring, out: &mut Vec<u8>) -> Result<BatchHeader, BatchError> {
    let h = *b.header();
    let id = key_id(b);
    let key = keys.key(id).ok_or(BatchError::KeyUnknown(id))?;
    let bytes = b.bytes();
    let at = h.records_at();
    let end = h.batch_len as usize;
    let nonce: [u8; l::SEAL_NONCE_BYTES] = bytes[at + l::SEAL_NONCE_AT..at + l::SEAL_PREFIX_BYTES]
        .try_into()
        .expect("nonce bytes");
    let aad = aad(bytes, id);
    let start = out.len();
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(&bytes[at + l::SEAL_PREFIX_BYTES..end]);
    let clear_len = match key.0.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out[start + at..],
    ) {
        Ok(clear) => clear.len(),
        Err(_) => {
            out.truncate(start);
            return Err(BatchError::Unseal(id));
        }
    };
    out.truncate(start + at + clear_len);
    let mine = &mut out[start..];
    mine[l::VERSION_AT] = l::VERSION;
    mine[l::FLAGS_AT] &= !l::FLAG_SEALED;
    let len = mine.len() as u32;
    le::put_u32(mine, l::LEN_AT, len);
    le::put_u32(
        mine,
        l::RECORDS_LEN_AT,
        h.records_len - l::SEAL_OVERHEAD_BYTES as u32,
    );
    reseal_checksums(mine);
    BatchHeader::decode(mine)
}

/// Batches back to back (a read chunk) with every sealed one opened; the
/// same bytes, not copied, when none is sealed.
pub fn open_chunk(chunk: Bytes, keys: &dyn Keyring) -> Result<Bytes, BatchError> {
    let mut at = 0;
    let mut out: Option<Vec<u8>> = None;
    while at < chunk.len() {
        let h = BatchHeader::decode(&chunk[at..])?;
        let end = at + h.batch_len as usize;
        if end > chunk.len() {
            return Err(BatchError::Truncated {
                need: end,
                have: chunk.len(),
            });
        }
        if h.flags.sealed() {
            let o = out.get_or_insert_with(|| {
                let mut v = Vec::with_capacity(chunk.len());
                v.extend_from_slice(&chunk[..at]);
                v
            });
            let b = Batch::new(chunk.slice(at..end))?;
            open_into(&b, keys, o)?;
        } else if let Some(o) = out.as_mut() {
            o.extend_from_slice(&chunk[at..end]);
        }
        at = end;
    }
    Ok(out.map_or(chunk, Bytes::from))
}

fn reseal_checksums(out: &mut [u8]) {
    let body = crc32fast::hash(&out[l::HEADER_BYTES..]);
    le::put_u32(out, l::RECORDS_CRC_AT, body);
    let crc = crc32fast::hash(&out[l::HEADER_CRC_FROM..l::HEADER_BYTES]);
    le::put_u32(out, l::HEADER_CRC_AT, crc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{stamp, BatchBuilder, Compression, RecordInput};
    use crate::types::{Offset, RaftIndex, RaftTerm};

    #[derive(Debug)]
    struct Ring(Vec<(u32, SealKey)>);
    impl Keyring for Ring {
        fn key(&self, id: u32) -> Option<SealKey> {
            self.0.iter().find(|(i, _)| *i == id).map(|(_, k)| k.clone())
        }
        fn current(&self) -> Option<u32> {
            self.0.last().map(|(i, _)| *i)
        }
        fn nonce(&self) -> [u8; 12] {
            [7; 12]
        }
    }

    const SECRET: &[u8] = b"the secret value nobody may read on disk";

    fn plain(compression: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new(1 << 20);
        let headers: &[(&[u8], &[u8])] = &[(b"h", b"header-secret")];
        for i in 0..20u32 {
            let key = format!("key-{i}");
            b.push(RecordInput {
                key: Some(key.as_bytes()),
                value: Some(SECRET),
                timestamp_ms: 1_000 + i64::from(i),
                ttl_ms: None,
                headers,
            })
            .unwrap();
        }
        b.build(compression).unwrap()
    }

    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_sealed_batch_hides_its_records_and_opens_to_the_same_records() {
        let ring = Ring(vec![(5, SealKey::new(&[1; 32]))]);
        for c in [Compression::None, Compression::Zstd(1)] {
            let p = plain(c);
            let mut s = seal(&p, 5, &ring.key(5).unwrap(), [9; 12]).unwrap();
            assert!(!find(&s, SECRET) && !find(&s, b"header-secret") && !find(&s, b"key-1"));
            // The log stamps sealed batches like any other.
            stamp(&mut s, Offset(100), RaftTerm(3), RaftIndex(8));
            let sealed = Batch::new(Bytes::from(s)).unwrap();
            assert!(sealed.header().flags.sealed());
            assert_eq!(key_id(&sealed), 5);
            assert_eq!(sealed.records().unwrap_err(), BatchError::Sealed(5));
            sealed.validate().unwrap();
            let opened = open(&sealed, &ring).unwrap();
            let h = opened.header();
            assert!(!h.flags.sealed());
            assert_eq!(
                (h.base_offset, h.raft_term, h.raft_index),
                (Offset(100), RaftTerm(3), RaftIndex(8))
            );
            opened.validate().unwrap();
            let want = Batch::new(Bytes::from(p)).unwrap();
            let got: Vec<_> = opened.records().unwrap().map(|r| r.unwrap().value).collect();
            let exp: Vec<_> = want.records().unwrap().map(|r| r.unwrap().value).collect();
            assert_eq!(got, exp);
            assert_eq!(got.len(), 20);
        }
    }

    #[test]
    fn a_wrong_missing_or_tampered_key_or_byte_refuses_to_open() {
        let right = Ring(vec![(5, SealKey::new(&[1; 32]))]);
        let wrong = Ring(vec![(5, SealKey::new(&[2; 32]))]);
        let s = seal(&plain(Compression::None), 5, &right.key(5).unwrap(), [9; 12]).unwrap();
        let sealed = Batch::new(Bytes::from(s.clone())).unwrap();
        assert_eq!(open(&sealed, &wrong).unwrap_err(), BatchError::Unseal(5));
        assert_eq!(
            open(&sealed, &Ring(vec![])).unwrap_err(),
            BatchError::KeyUnknown(5)
        );
        // A bit flipped in the ciphertext whose checksums were recomputed
        // (a forger, not a disk) is still refused: the tag binds it.
        let at = BatchHeader::decode(&s).unwrap().records_at() + l::SEAL_PREFIX_BYTES + 3;
        let mut forged = s.clone();
        forged[at] ^= 1;
        reseal_checksums(&mut forged);
        let forged = Batch::new(Bytes::from(forged)).unwrap();
        assert_eq!(open(&forged, &right).unwrap_err(), BatchError::Unseal(5));
        // So is a header field the tag binds, e.g. the record count.
        let mut recount = s;
        le::put_u32(&mut recount, l::MAX_TIMESTAMP_AT, 9_999_999);
        reseal_checksums(&mut recount);
        let recount = Batch::new(Bytes::from(recount)).unwrap();
        assert_eq!(open(&recount, &right).unwrap_err(), BatchError::Unseal(5));
    }

    #[test]
    fn a_chunk_opens_only_its_sealed_batches() {
        let ring = Ring(vec![(5, SealKey::new(&[1; 32]))]);
        let p = plain(Compression::None);
        let s = seal(&p, 5, &ring.key(5).unwrap(), [9; 12]).unwrap();
        let clear = Bytes::from([p.clone(), p.clone()].concat());
        let same = open_chunk(clear.clone(), &ring).unwrap();
        assert_eq!(
            same.as_ptr(),
            clear.as_ptr(),
            "a chunk in the clear is not copied"
        );
        let mixed = Bytes::from([p.clone(), s, p.clone()].concat());
        let opened = open_chunk(mixed, &ring).unwrap();
        assert_eq!(opened.len(), 3 * p.len());
        assert_eq!(&opened[..], &[p.clone(), p.clone(), p].concat()[..]);
    }

    #[test]
    fn control_emptied_and_oversized_batches_are_not_sealed() {
        let k = SealKey::new(&[1; 32]);
        let p = plain(Compression::None);
        assert!(seal(&p, 0, &k, [0; 12]).is_err(), "key id 0 means none");
        let s = seal(&p, 1, &k, [0; 12]).unwrap();
        assert!(seal(&s, 1, &k, [0; 12]).is_err(), "sealed twice");
        // A version 1 batch with the sealed flag, and a version 2 one
        // without it, are refused on decode.
        let mut v1 = p.clone();
        v1[l::FLAGS_AT] |= l::FLAG_SEALED;
        reseal_checksums(&mut v1);
        assert!(BatchHeader::decode(&v1).is_err());
        let mut v2 = p;
        v2[l::VERSION_AT] = l::VERSION_SEALED;
        reseal_checksums(&mut v2);
        assert!(BatchHeader::decode(&v2).is_err());
    }
}
