//! Byte layout of a record batch (format version 1). Every field's position is
//! derived from the one before it, so inserting a field cannot silently leave
//! two fields overlapping; the `const` assertions at the bottom pin the result
//! to the diagram in `docs/format/batch.md`. All integers are little-endian.

/// The batch format version of a plaintext batch.
pub const VERSION: u8 = 1;
/// The batch format version of a sealed batch (encrypted at rest): a
/// version 1 batch whose records section is wrapped in an AEAD envelope
/// (see `SEAL_*` below). Version 2 always has [`FLAG_SEALED`] and version 1
/// never does, so a reader that only knows version 1 refuses a sealed batch
/// instead of parsing ciphertext as records.
pub const VERSION_SEALED: u8 = 2;

pub const LEN_AT: usize = 0; // u32: bytes of the whole batch, this field included
pub const HEADER_CRC_AT: usize = LEN_AT + 4; // u32: CRC-32 of [HEADER_CRC_FROM, HEADER_BYTES)
pub const VERSION_AT: usize = HEADER_CRC_AT + 4; // u8
pub const FLAGS_AT: usize = VERSION_AT + 1; // u8
pub const PRODUCER_COUNT_AT: usize = FLAGS_AT + 1; // u16: runs in the producer table (0: none)
pub const RECORD_COUNT_AT: usize = PRODUCER_COUNT_AT + 2; // u32
pub const BASE_OFFSET_AT: usize = RECORD_COUNT_AT + 4; // u64, stamped by the log
pub const RAFT_TERM_AT: usize = BASE_OFFSET_AT + 8; // u64, stamped by the log
pub const RAFT_INDEX_AT: usize = RAFT_TERM_AT + 8; // u64, stamped by the log
pub const FIRST_TIMESTAMP_AT: usize = RAFT_INDEX_AT + 8; // i64 ms since the Unix epoch
pub const MAX_TIMESTAMP_AT: usize = FIRST_TIMESTAMP_AT + 8; // i64
pub const PRODUCER_ID_AT: usize = MAX_TIMESTAMP_AT + 8; // u64, 0 = none (or a producer table)
pub const PRODUCER_SEQ_AT: usize = PRODUCER_ID_AT + 8; // u64, sequence of the first record
pub const OFFSET_COUNT_AT: usize = PRODUCER_SEQ_AT + 8; // u32, offsets the batch occupies
pub const RECORDS_LEN_AT: usize = OFFSET_COUNT_AT + 4; // u32, stored (maybe compressed) bytes
pub const RECORDS_RAW_LEN_AT: usize = RECORDS_LEN_AT + 4; // u32, uncompressed bytes
pub const RECORDS_CRC_AT: usize = RECORDS_RAW_LEN_AT + 4; // u32, CRC-32 of the stored records
/// Size of the fixed header; the producer table (if any), then the records
/// follow immediately.
pub const HEADER_BYTES: usize = RECORDS_CRC_AT + 4;
/// The header checksum starts after itself and covers the rest of the header,
/// including the records checksum, so one CRC over 80 bytes protects
/// everything the log stamps and transitively the records.
pub const HEADER_CRC_FROM: usize = HEADER_CRC_AT + 4;

/// Flag: the records section is one zstd frame.
pub const FLAG_ZSTD: u8 = 0b01;
/// Flag: a control batch (cursor commit, group ack, Raft membership…): it
/// occupies no offsets and is never delivered to subscribers.
pub const FLAG_CONTROL: u8 = 0b10;
/// Flag: the records section is sealed (AES-256-GCM); only with
/// [`VERSION_SEALED`].
pub const FLAG_SEALED: u8 = 0b100;
pub const FLAGS_KNOWN: u8 = FLAG_ZSTD | FLAG_CONTROL | FLAG_SEALED;

// --- the seal (a sealed batch's records section) ---
//
// key_id, nonce, then the ciphertext of what the records section of the
// plaintext batch was (its producer table stays outside, in the clear, as
// deduplication needs it without keys), then the tag. `records_crc` covers
// the sealed section, so checksums, recovery and replication work without
// any key.

pub const SEAL_KEY_ID_AT: usize = 0; // u32: the data key, never 0
pub const SEAL_NONCE_AT: usize = SEAL_KEY_ID_AT + 4; // 12 bytes, random per batch
pub const SEAL_NONCE_BYTES: usize = 12;
/// Bytes before the ciphertext.
pub const SEAL_PREFIX_BYTES: usize = SEAL_NONCE_AT + SEAL_NONCE_BYTES;
/// The AEAD tag after the ciphertext.
pub const SEAL_TAG_BYTES: usize = 16;
/// What sealing adds to a batch.
pub const SEAL_OVERHEAD_BYTES: usize = SEAL_PREFIX_BYTES + SEAL_TAG_BYTES;
/// Bytes of a data key (AES-256).
pub const SEAL_KEY_BYTES: usize = 32;

// --- producer table (a merged batch: several producers' batches in one) ---
//
// `PRODUCER_COUNT_AT` runs of `PRODUCER_RUN_BYTES` right after the header,
// each naming the producer of a range of the batch's offsets. Covered by
// `records_crc` together with the records.

pub const RUN_PRODUCER_ID_AT: usize = 0; // u64, never 0
pub const RUN_FIRST_SEQ_AT: usize = RUN_PRODUCER_ID_AT + 8; // u64: sequence of the run's first record
pub const RUN_OFFSET_DELTA_AT: usize = RUN_FIRST_SEQ_AT + 8; // u32: first offset - base_offset
pub const RUN_OFFSET_COUNT_AT: usize = RUN_OFFSET_DELTA_AT + 4; // u32: offsets of the run, at least 1
pub const PRODUCER_RUN_BYTES: usize = RUN_OFFSET_COUNT_AT + 4;
/// Runs in one producer table (the field is a u16; the limit is lower so a
/// table stays a small fraction of a batch).
pub const PRODUCER_RUNS_MAX: usize = 1024;

/// Hard ceiling on a whole batch; configurations may only lower it.
pub const BATCH_BYTES_MAX: usize = 8 << 20;
/// Ceiling on the records section once decompressed, so a small zstd frame
/// cannot make us allocate without bound.
pub const RECORDS_RAW_BYTES_MAX: usize = 2 * BATCH_BYTES_MAX;
/// Records in one batch.
pub const RECORD_COUNT_MAX: u32 = 1 << 16;
/// Bytes of a record key.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Headers on one record.
pub const RECORD_HEADERS_MAX: usize = 64;
/// Bytes of one header name.
pub const HEADER_NAME_BYTES_MAX: usize = 256;

// --- records (inside the records section, after decompression) ---

pub const REC_LEN_AT: usize = 0; // u32: bytes after this field
pub const REC_ATTRS_AT: usize = REC_LEN_AT + 4; // u8
pub const REC_OFFSET_DELTA_AT: usize = REC_ATTRS_AT + 1; // u32: offset - base_offset
pub const REC_TIMESTAMP_DELTA_AT: usize = REC_OFFSET_DELTA_AT + 4; // i32 ms from first_timestamp
/// Fixed part of a record; then optional key, value, ttl, and the headers.
pub const REC_FIXED_BYTES: usize = REC_TIMESTAMP_DELTA_AT + 4;
/// Smallest encodable record: fixed part plus a zero header count.
pub const REC_MIN_BYTES: usize = REC_FIXED_BYTES + 2;

pub const REC_HAS_KEY: u8 = 0b001;
/// Absent value = tombstone (used by caches and compacted streams).
pub const REC_HAS_VALUE: u8 = 0b010;
/// A `u64` time-to-live in ms, counted from the record's timestamp.
pub const REC_HAS_TTL: u8 = 0b100;
pub const REC_ATTRS_KNOWN: u8 = REC_HAS_KEY | REC_HAS_VALUE | REC_HAS_TTL;

const _: () = assert!(HEADER_BYTES == 88);
const _: () = assert!(HEADER_CRC_FROM == VERSION_AT);
const _: () = assert!(REC_FIXED_BYTES == 13);
const _: () = assert!(PRODUCER_RUN_BYTES == 24);
const _: () = assert!(PRODUCER_RUNS_MAX <= u16::MAX as usize);
// A full table leaves most of the smallest batch ceiling for records.
const _: () = assert!(PRODUCER_RUNS_MAX * PRODUCER_RUN_BYTES <= BATCH_BYTES_MAX / 64);
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(RECORDS_RAW_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FLAG_ZSTD & FLAG_CONTROL == 0);
const _: () = assert!(FLAG_SEALED & (FLAG_ZSTD | FLAG_CONTROL) == 0);
const _: () = assert!(SEAL_PREFIX_BYTES == 16);
const _: () = assert!(SEAL_OVERHEAD_BYTES == 32);
// The largest count fits in the smallest possible raw section, so a count
// check can be done against bytes present before any per-record work.
const _: () = assert!((RECORD_COUNT_MAX as usize) * REC_MIN_BYTES <= RECORDS_RAW_BYTES_MAX);

/// Little-endian readers over a slice the caller has already bounds-checked.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn i64_at(b: &[u8], at: usize) -> i64 {
        u64_at(b, at) as i64
    }
    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}
