//! Every decoder of bytes the index reads back (its own values, and control
//! records taken from the log) refuses garbage with an error, never a panic,
//! and never allocates from an unchecked count.

use bytes::Bytes;
use felix_index::control::ControlOp;
use felix_index::encoding as enc;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(b in prop::collection::vec(any::<u8>(), 0..96)) {
        let _ = ControlOp::decode(&Bytes::from(b.clone()));
        let _ = enc::decode_offsets_key(&b);
        let _ = enc::decode_offsets_value(&b);
        let _ = enc::decode_time_key(&b);
        let _ = enc::decode_time_value(&b);
        let _ = enc::decode_keys_value(&b);
        let _ = enc::decode_expiry_key(&b);
        let _ = enc::decode_cursor_value(&b);
        let _ = enc::decode_group_rec_offset(&b);
        let _ = enc::decode_segment_meta(&b, &b);
    }

    #[test]
    fn a_control_op_with_a_huge_count_is_refused_before_allocating(name in prop::collection::vec(any::<u8>(), 0..8), count in 4097u16..) {
        let mut b = vec![felix_index::control::OP_GROUP_ACK, name.len() as u8];
        b.extend_from_slice(&name);
        b.extend_from_slice(&count.to_be_bytes());
        prop_assert!(ControlOp::decode(&Bytes::from(b)).is_err());
    }

    #[test]
    fn encoded_values_round_trip(offset in any::<u64>(), expiry in prop::option::of(any::<i64>().prop_filter("MAX means none", |e| *e != i64::MAX)), ts in any::<i64>(), tombstone in any::<bool>()) {
        let e = enc::KeyEntry { offset: felix_log::Offset(offset), expiry_ms: expiry, timestamp_ms: ts, tombstone };
        prop_assert_eq!(enc::decode_keys_value(&enc::keys_value(&e)).unwrap(), e);
        let (_, t) = enc::decode_time_key(&enc::time_key(felix_log::ShardId(1), ts)).unwrap();
        prop_assert_eq!(t, ts);
    }

    #[test]
    fn time_keys_sort_like_timestamps(a in any::<i64>(), b in any::<i64>()) {
        let (ka, kb) = (enc::time_key(felix_log::ShardId(3), a), enc::time_key(felix_log::ShardId(3), b));
        prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
    }
}
