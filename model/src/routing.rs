//! Which shard a key belongs to. A stream (or cache) routes keys one of two
//! ways, fixed when it is created (`docs/format/wire.md`, "Key routing"):
//!
//! - [`KeyRouting::Slots`], every stream created since the Redis door could
//!   redirect: Redis Cluster's hash slot of the key (CRC16/XMODEM of the key,
//!   or of its first non-empty `{hash tag}`, modulo 16,384), and each shard
//!   holds one contiguous range of slots. A Redis cluster client can then
//!   route by slot to the shard's leader itself.
//! - [`KeyRouting::Fnv1a`], streams created before: 64-bit FNV-1a of the whole
//!   key modulo the shard count. Kept so their keys stay where they are.

use serde::{Deserialize, Serialize};

/// How a stream's keys map to its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRouting {
    /// What a stream recorded without a routing routes by (made before
    /// routings had a name).
    #[default]
    Fnv1a,
    Slots,
}

/// A routing code that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key routing {0}: expected 0 (fnv1a) or 1 (slots)")]
pub struct UnknownRouting(pub u8);

impl KeyRouting {
    /// What a stream created now routes by, when its creator names none.
    pub const FOR_NEW: KeyRouting = KeyRouting::Slots;

    /// Its code on the wire.
    pub fn code(self) -> u8 {
        match self {
            KeyRouting::Fnv1a => 0,
            KeyRouting::Slots => 1,
        }
    }

    pub fn from_code(c: u8) -> Result<KeyRouting, UnknownRouting> {
        match c {
            0 => Ok(KeyRouting::Fnv1a),
            1 => Ok(KeyRouting::Slots),
            _ => Err(UnknownRouting(c)),
        }
    }

    /// The shard of `key` among `shards` (at least one).
    pub fn shard(self, key: &[u8], shards: u32) -> u32 {
        assert!(shards > 0, "a stream has at least one shard");
        match self {
            KeyRouting::Fnv1a => (fnv1a64(key) % u64::from(shards)) as u32,
            KeyRouting::Slots => slot_shard(key_slot(key), shards),
        }
    }
}

/// The shard that holds `slot` among `shards`: `slot * shards / SLOTS`, so
/// each shard holds one contiguous range ([`shard_slots`]).
pub fn slot_shard(slot: u16, shards: u32) -> u32 {
    debug_assert!(slot < SLOTS && shards > 0);
    (u64::from(slot) * u64::from(shards) / u64::from(SLOTS)) as u32
}

/// The first and last slot shard `shard` of `shards` holds, or `None` when
/// it holds none (only with more shards than slots).
pub fn shard_slots(shard: u32, shards: u32) -> Option<(u16, u16)> {
    let n = u64::from(shards);
    // The least slot s with s * n / SLOTS >= shard.
    let first = |k: u64| (k * u64::from(SLOTS)).div_ceil(n);
    let (a, b) = (first(u64::from(shard)), first(u64::from(shard) + 1));
    (a < b && a < u64::from(SLOTS)).then(|| (a as u16, (b.min(u64::from(SLOTS)) - 1) as u16))
}

/// FNV-1a, 64-bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16_384;

/// CRC16 with polynomial 0x1021, initial value 0, no reflection (XMODEM),
/// the variant Redis Cluster specifies.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        // The catalogue's check value for CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn hash_tags_pick_the_hashed_part_as_redis_does() {
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key; only the first tag counts.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert!(key_slot(b"anything") < SLOTS);
        // The examples of Redis's `CLUSTER KEYSLOT` documentation.
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
    }

    #[test]
    fn fnv_matches_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(
            KeyRouting::Fnv1a.shard(b"foobar", 7),
            (0x85944171f73967e8u64 % 7) as u32
        );
    }

    #[test]
    fn each_shard_holds_one_range_and_the_ranges_cover_every_slot_once() {
        for shards in [1u32, 2, 3, 4, 7, 100, 1024, 16_384, 20_000] {
            let mut next = 0u32;
            for shard in 0..shards {
                let Some((a, b)) = shard_slots(shard, shards) else {
                    assert!(shards > u32::from(SLOTS), "{shard}/{shards} holds no slot");
                    continue;
                };
                assert_eq!(u32::from(a), next, "{shard}/{shards} starts where the last ended");
                assert!(a <= b);
                for s in [a, b, a + (b - a) / 2] {
                    assert_eq!(slot_shard(s, shards), shard, "slot {s} of {shards}");
                }
                next = u32::from(b) + 1;
            }
            assert_eq!(next, u32::from(SLOTS), "{shards} shards cover every slot");
        }
        assert_eq!(shard_slots(0, 1), Some((0, 16_383)));
        assert_eq!(shard_slots(1, 2), Some((8_192, 16_383)));
        // A key's shard under slots is its slot's, hash tags included.
        assert_eq!(
            KeyRouting::Slots.shard(b"{user1000}.a", 4),
            KeyRouting::Slots.shard(b"{user1000}.b", 4)
        );
        assert_eq!(KeyRouting::Slots.shard(b"somekey", 4), slot_shard(11058, 4));
        assert_eq!(slot_shard(11058, 4), 2);
    }

    #[test]
    fn routings_round_trip_through_codes_and_names() {
        for r in [KeyRouting::Fnv1a, KeyRouting::Slots] {
            assert_eq!(KeyRouting::from_code(r.code()), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<KeyRouting>(&json).unwrap(), r);
        }
        assert_eq!(serde_json::to_string(&KeyRouting::Slots).unwrap(), "\"slots\"");
        assert_eq!(KeyRouting::from_code(2), Err(UnknownRouting(2)));
    }
}
