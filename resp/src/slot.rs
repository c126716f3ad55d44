//! Redis Cluster's hash slots: CRC16 (XMODEM) of the key, or of its first
//! non-empty `{hash tag}`, modulo 16,384. Felix does not route by slot (a
//! key's shard is FNV-1a of the whole key, `docs/format/wire.md`), so a
//! slot says nothing about where a key lives; `CLUSTER KEYSLOT` answers
//! it for tools, and the slot table gives every slot to the broker asked.

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
}
