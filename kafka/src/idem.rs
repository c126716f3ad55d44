//! Idempotent produce (`docs/kafka.md`, "Idempotent produce"): Kafka's
//! producer ids, epochs and per-partition sequences onto Felix's producer
//! windows, which answer a retried batch with where its first attempt
//! landed instead of writing it twice. Sans-IO but for the lock.
//!
//! A Kafka producer (id, epoch) is the Felix producer `id << 16 | epoch`
//! and a batch's base sequence its Felix sequence. The windows remember
//! each producer's last batch per shard, carried by the shard's log and
//! snapshots, so a retry after a leader's failover is still recognised.
//! What they do not check, this module does as far as one door can: that
//! a producer's batches to a partition come without a gap (a batch whose
//! predecessor failed is refused OUT_OF_ORDER_SEQUENCE_NUMBER rather than
//! written ahead of it).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::records::{ProducedBatch, RecordsError};

/// (producer, stream, shard) whose next sequence a door remembers; past
/// it, the map starts again (a forgotten producer's next batch is taken
/// whatever its sequence, as after a failover).
pub const PRODUCER_SEQUENCES_MAX: usize = 100_000;
/// Bits of a Kafka producer id this door hands out: the Felix producer id
/// is the Kafka one shifted past the 16-bit epoch, within 63 bits.
pub const PRODUCER_ID_BITS: u32 = 47;
const _: () = assert!(PRODUCER_ID_BITS + 16 <= 63);

pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub const UNKNOWN_PRODUCER_ID: i16 = 59;

/// A new Kafka producer id: random, so that doors of different brokers
/// and lives do not hand out the same one.
pub fn new_producer_id() -> i64 {
    let r: u64 = rand::random();
    ((r >> (64 - PRODUCER_ID_BITS)) | 1) as i64
}

/// The Felix producer of a Kafka (producer id, epoch), `None` for a
/// producer that is not idempotent (id -1).
pub fn felix_producer(producer_id: i64, epoch: i16) -> Result<Option<u64>, RecordsError> {
    if producer_id < 0 {
        return Ok(None);
    }
    if producer_id >= 1 << PRODUCER_ID_BITS || epoch < 0 {
        return Err(RecordsError::Invalid(format!(
            "producer id {producer_id} epoch {epoch} was not handed out by this cluster"
        )));
    }
    Ok(Some(((producer_id as u64) << 16) | u64::from(epoch as u16)))
}

/// The idempotence of one partition's batches: (Felix producer, base
/// sequence, records), or `None`. Every batch must be the same
/// producer's, with sequences that follow on.
pub fn of(batches: &[ProducedBatch]) -> Result<Option<(u64, i32, i32)>, RecordsError> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let Some(producer) = felix_producer(first.producer_id, first.producer_epoch)? else {
        return Ok(None);
    };
    let mut next = first.base_sequence;
    for b in batches {
        if (b.producer_id, b.producer_epoch) != (first.producer_id, first.producer_epoch)
            || b.base_sequence != next
        {
            return Err(RecordsError::Invalid(
                "one partition's batches in a produce are of one producer, in sequence".into(),
            ));
        }
        next = seq_add(next, b.records.len() as i64);
    }
    let count = batches.iter().map(|b| b.records.len() as i32).sum();
    Ok(Some((producer, first.base_sequence, count)))
}

/// Kafka's sequences run 0..=i32::MAX and wrap to 0.
pub fn seq_add(seq: i32, n: i64) -> i32 {
    ((i64::from(seq) + n) & i64::from(i32::MAX)) as i32
}

/// Whether `a` comes after `b` on the ring of sequences (the nearer way
/// round).
fn after(a: i32, b: i32) -> bool {
    let d = (i64::from(a) - i64::from(b)) & i64::from(i32::MAX);
    d != 0 && d < 1 << 30
}

/// The next sequence each (producer, stream, shard) is due, as this door
/// saw its batches written.
#[derive(Debug, Default)]
pub struct Sequences {
    next: Mutex<HashMap<(u64, String, u32), i32>>,
}

impl Sequences {
    /// Whether a batch at `base` may be written: NONE, or
    /// OUT_OF_ORDER_SEQUENCE_NUMBER when it would leave a gap after the
    /// last batch this door wrote for the producer. A batch at or before
    /// the due sequence is a retry, for the shard's windows to answer.
    pub fn check(&self, producer: u64, stream: &str, shard: u32, base: i32) -> i16 {
        let next = self.next.lock().expect("sequences lock");
        match next.get(&(producer, stream.to_owned(), shard)) {
            Some(&due) if after(base, due) => OUT_OF_ORDER_SEQUENCE_NUMBER,
            _ => 0,
        }
    }

    /// Whether `base` is exactly the sequence this door expects next.
    pub fn is_due(&self, producer: u64, stream: &str, shard: u32, base: i32) -> bool {
        let next = self.next.lock().expect("sequences lock");
        next.get(&(producer, stream.to_owned(), shard)) == Some(&base)
    }

    /// Notes that a batch ending before `next` was written.
    pub fn written(&self, producer: u64, stream: &str, shard: u32, next_seq: i32) {
        let mut m = self.next.lock().expect("sequences lock");
        if m.len() >= PRODUCER_SEQUENCES_MAX {
            m.clear();
        }
        let due = m.entry((producer, stream.to_owned(), shard)).or_insert(next_seq);
        if after(next_seq, *due) {
            *due = next_seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::KafkaRecord;

    fn batch(pid: i64, epoch: i16, seq: i32, n: usize) -> ProducedBatch {
        ProducedBatch {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            compressed: false,
            records: vec![
                KafkaRecord {
                    timestamp_ms: 0,
                    key: None,
                    value: None,
                    headers: vec![],
                };
                n
            ],
        }
    }

    #[test]
    fn a_kafka_producer_and_epoch_are_one_felix_producer() {
        assert_eq!(felix_producer(-1, -1).unwrap(), None);
        assert_eq!(felix_producer(5, 2).unwrap(), Some(5 << 16 | 2));
        assert_ne!(felix_producer(5, 2).unwrap(), felix_producer(5, 3).unwrap());
        assert!(felix_producer(1 << 47, 0).is_err());
        for _ in 0..100 {
            let id = new_producer_id();
            assert!(id > 0 && id < 1 << PRODUCER_ID_BITS);
        }
        assert_eq!(
            of(&[batch(5, 0, 10, 3), batch(5, 0, 13, 2)]).unwrap(),
            Some((5 << 16, 10, 5))
        );
        assert!(of(&[batch(5, 0, 10, 3), batch(5, 0, 14, 2)]).is_err());
        assert_eq!(of(&[batch(-1, -1, -1, 3)]).unwrap(), None);
    }

    #[test]
    fn a_batch_after_a_gap_is_refused_and_a_retry_is_left_to_the_windows() {
        let s = Sequences::default();
        assert_eq!(s.check(1, "t/n/s", 0, 40), 0, "an unknown producer is taken");
        s.written(1, "t/n/s", 0, 10);
        assert_eq!(s.check(1, "t/n/s", 0, 10), 0, "the next batch");
        assert_eq!(s.check(1, "t/n/s", 0, 0), 0, "a retry");
        assert_eq!(s.check(1, "t/n/s", 0, 20), OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(s.check(1, "t/n/s", 1, 20), 0, "another shard");
        // A late answer of an earlier batch does not move the due sequence back.
        s.written(1, "t/n/s", 0, 5);
        assert_eq!(s.check(1, "t/n/s", 0, 10), 0);
        // Across the wrap.
        s.written(2, "t/n/s", 0, i32::MAX - 1);
        s.written(2, "t/n/s", 0, seq_add(i32::MAX - 1, 5));
        assert_eq!(seq_add(i32::MAX - 1, 5), 3);
        assert_eq!(s.check(2, "t/n/s", 0, 3), 0);
        assert_eq!(s.check(2, "t/n/s", 0, 4), OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            s.check(2, "t/n/s", 0, i32::MAX),
            0,
            "a retry from before the wrap"
        );
    }
}
