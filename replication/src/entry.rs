//! A Raft entry is one record batch in the segment log.
//!
//! Application entries (`EntryPayload::Normal`) are the batch the leader was
//! asked to write. Raft's own entries become control batches holding one
//! record whose value starts with an op byte at or above the index's
//! `OP_FOREIGN_MIN` (0x80), so the index skips them:
//!
//! | op   | entry      | rest of the value        |
//! |------|------------|--------------------------|
//! | 0x80 | blank      | nothing                  |
//! | 0x81 | membership | the membership as JSON   |
//!
//! Offsets: control batches take none, so Raft's entries never shift record
//! offsets, and every replica numbers records identically.

use bytes::Bytes;
use felix_log::{Batch, BatchBuilder, Compression, RecordInput};
use openraft::EntryPayload;

use crate::types::{Entry, LogId, Membership, Request};

/// Op byte of a blank (leader's no-op) entry.
pub const OP_RAFT_BLANK: u8 = 0x80;
/// Op byte of a membership entry.
pub const OP_RAFT_MEMBERSHIP: u8 = 0x81;
/// Membership JSON is small; this bounds what a corrupt entry can make us parse.
pub const MEMBERSHIP_BYTES_MAX: usize = 64 << 10;

const _: () = assert!(OP_RAFT_BLANK >= 0x80 && OP_RAFT_MEMBERSHIP >= 0x80);

/// The bytes to append for `entry`. `now_ms` timestamps Raft's own entries.
pub fn to_batch(entry: &Entry, now_ms: i64) -> Result<Bytes, String> {
    let control = |value: &[u8]| -> Result<Bytes, String> {
        let mut b = BatchBuilder::new(felix_log::batch::layout::BATCH_BYTES_MAX).control();
        b.push(RecordInput {
            value: Some(value),
            timestamp_ms: now_ms,
            ..RecordInput::default()
        })
        .map_err(|e| e.to_string())?;
        Ok(Bytes::from(
            b.build(Compression::None).map_err(|e| e.to_string())?,
        ))
    };
    match &entry.payload {
        EntryPayload::Normal(Request(b)) => Ok(b.clone()),
        EntryPayload::Blank => control(&[OP_RAFT_BLANK]),
        EntryPayload::Membership(m) => {
            let mut v = vec![OP_RAFT_MEMBERSHIP];
            serde_json::to_writer(&mut v, m).map_err(|e| e.to_string())?;
            control(&v)
        }
    }
}

/// The Raft entry a stored batch is.
pub fn from_batch(batch: &Batch) -> Result<Entry, String> {
    let h = batch.header();
    let log_id = LogId::new(openraft::CommittedLeaderId::new(h.raft_term.0, 0), h.raft_index.0);
    let payload = match raft_op(batch)? {
        Some((OP_RAFT_BLANK, _)) => EntryPayload::Blank,
        Some((OP_RAFT_MEMBERSHIP, v)) => {
            if v.len() > MEMBERSHIP_BYTES_MAX {
                return Err(format!("membership entry of {} bytes", v.len()));
            }
            let m: Membership =
                serde_json::from_slice(&v[1..]).map_err(|e| format!("membership entry: {e}"))?;
            EntryPayload::Membership(m)
        }
        _ => EntryPayload::Normal(Request(batch.bytes().clone())),
    };
    Ok(Entry { log_id, payload })
}

/// `(op, value)` when the batch is one of Raft's own entries.
fn raft_op(batch: &Batch) -> Result<Option<(u8, Bytes)>, String> {
    if !batch.header().flags.control() || batch.header().record_count != 1 {
        return Ok(None);
    }
    let mut records = batch.records().map_err(|e| e.to_string())?;
    let Some(r) = records.next() else { return Ok(None) };
    let r = r.map_err(|e| e.to_string())?;
    Ok(match r.value {
        Some(v) if matches!(v.first(), Some(&OP_RAFT_BLANK) | Some(&OP_RAFT_MEMBERSHIP)) => Some((v[0], v)),
        _ => None,
    })
}

/// The membership a batch carries, if it is a membership entry.
pub fn membership_of(batch: &Batch) -> Result<Option<Membership>, String> {
    match from_batch(batch)?.payload {
        EntryPayload::Membership(m) => Ok(Some(m)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::types::BrokerNode;

    fn stamped(b: Bytes, term: u64, index: u64) -> Batch {
        let mut v = b.to_vec();
        felix_log::batch::stamp(
            &mut v,
            felix_log::Offset(0),
            felix_log::RaftTerm(term),
            felix_log::RaftIndex(index),
        );
        Batch::new(Bytes::from(v)).unwrap()
    }

    #[test]
    fn raft_entries_round_trip_through_batches() {
        let nodes: BTreeMap<u64, BrokerNode> = (1..=3)
            .map(|i| {
                (
                    i,
                    BrokerNode {
                        raft_addr: format!("127.0.0.1:{i}"),
                        client_addr: String::new(),
                    },
                )
            })
            .collect();
        let m = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let data = {
            let mut b = BatchBuilder::new(1 << 20);
            b.push(RecordInput {
                value: Some(b"payload"),
                timestamp_ms: 5,
                ..RecordInput::default()
            })
            .unwrap();
            Bytes::from(b.build(Compression::None).unwrap())
        };
        let lid = |i| LogId::new(openraft::CommittedLeaderId::new(3, 0), i);
        for (i, payload) in [
            EntryPayload::Blank,
            EntryPayload::Membership(m.clone()),
            EntryPayload::Normal(Request(data.clone())),
        ]
        .into_iter()
        .enumerate()
        {
            let e = Entry {
                log_id: lid(i as u64),
                payload,
            };
            let back = from_batch(&stamped(to_batch(&e, 1).unwrap(), 3, i as u64)).unwrap();
            assert_eq!(back.log_id, e.log_id);
            match (&back.payload, &e.payload) {
                (EntryPayload::Blank, EntryPayload::Blank) => {}
                (EntryPayload::Membership(a), EntryPayload::Membership(b)) => assert_eq!(a, b),
                // The stored copy is the stamped batch; its records are the same.
                (EntryPayload::Normal(Request(a)), EntryPayload::Normal(Request(b))) => {
                    assert_eq!(a[88..], b[88..])
                }
                other => panic!("payload changed kind: {other:?}"),
            }
        }
    }
}
