//! Paging through a shard's live keys: every live key once, in key order,
//! never a deleted or expired one, each page bounded in keys and in
//! entries looked at.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{log_config, Harness, SHARD};
use felix_index::ShardKind;
use felix_log::ShardId;

#[test]
fn pages_hold_every_live_key_once_in_order_and_no_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::open(dir.path(), ShardKind::Keyed, log_config());
    let now = 1_000_000;
    let mut live = BTreeSet::new();
    for i in 0..60u32 {
        let k = format!("k{i:03}");
        match i % 5 {
            // Deleted after being written.
            0 => {
                h.put(k.as_bytes(), b"v", None, now);
                h.delete(k.as_bytes(), now);
            }
            // Expired by the time of the scan.
            1 => {
                h.put(k.as_bytes(), b"v", Some(10), now);
            }
            // Expiring, but not yet.
            2 => {
                h.put(k.as_bytes(), b"v", Some(60_000), now);
                live.insert(Bytes::from(k));
            }
            _ => {
                h.put(k.as_bytes(), b"v", None, now);
                live.insert(Bytes::from(k));
            }
        }
    }
    let at = now + 1_000;
    // Small pages, fewer looked-at entries than keys asked for: a page may
    // end early (or hold nothing) and still says where to go on.
    let (mut got, mut after, mut pages) = (Vec::new(), None::<Bytes>, 0);
    loop {
        let (keys, next) = h.index.live_keys(SHARD, after.as_deref(), 7, 5, at).unwrap();
        assert!(keys.len() <= 5, "a page looks at 5 entries at most: {keys:?}");
        got.extend(keys);
        pages += 1;
        assert!(pages < 100, "paging did not end");
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let want: Vec<Bytes> = live.iter().cloned().collect();
    assert_eq!(got, want, "every live key once, in key order");
    assert_eq!(pages, 12, "60 entries, 5 looked at per page");

    // One big page: everything at once, and nothing after it.
    let (keys, next) = h.index.live_keys(SHARD, None, 1_000, 1_000, at).unwrap();
    assert_eq!(keys, want);
    assert_eq!(next, None);

    // From a key that is not there: the keys after it.
    let (keys, _) = h.index.live_keys(SHARD, Some(b"k0305"), 2, 100, at).unwrap();
    assert_eq!(keys, vec![Bytes::from("k032"), Bytes::from("k033")]);

    // Before the expiry, the expiring keys are live too.
    let (keys, _) = h.index.live_keys(SHARD, None, 1_000, 1_000, now).unwrap();
    assert_eq!(keys.len(), want.len() + 12, "12 keys had not yet expired");

    // Another shard's keys are not this one's.
    let (keys, next) = h.index.live_keys(ShardId(SHARD.0 + 1), None, 10, 10, at).unwrap();
    assert!(keys.is_empty() && next.is_none());
}
