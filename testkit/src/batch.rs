//! Record batches built as a producer builds them:
//! `Batch::of(&["a", "b"]).ts(1).producer(7, 0).bytes()`.

use bytes::Bytes;
use felix_log::{BatchBuilder, Compression, ProducerId, RecordInput};

/// Key and value of one record (`None` value: a tombstone).
type Rec = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A batch under construction: its records, and how to stamp, attribute
/// and compress them.
#[derive(Debug, Clone)]
pub struct Batch {
    records: Vec<Rec>,
    timestamp_ms: Option<i64>,
    /// Each record stamped this much later than the one before.
    ts_step_ms: i64,
    ttl_ms: Option<u64>,
    producer: Option<(u64, u64)>,
    compression: Compression,
}

impl Batch {
    fn new(records: Vec<Rec>) -> Batch {
        Batch {
            records,
            timestamp_ms: None,
            ts_step_ms: 0,
            ttl_ms: None,
            producer: None,
            compression: Compression::None,
        }
    }

    /// One unkeyed record per value, stamped now.
    pub fn of<V: AsRef<[u8]>>(values: &[V]) -> Batch {
        Batch::new(values.iter().map(|v| (None, Some(v.as_ref().to_vec()))).collect())
    }

    /// One record per (key, value); a `None` value is a tombstone.
    pub fn keyed<K: AsRef<[u8]>, V: AsRef<[u8]>>(records: &[(K, Option<V>)]) -> Batch {
        Batch::new(
            records
                .iter()
                .map(|(k, v)| (Some(k.as_ref().to_vec()), v.as_ref().map(|v| v.as_ref().to_vec())))
                .collect(),
        )
    }

    /// Every record stamped `ms` (default: now).
    pub fn ts(mut self, ms: i64) -> Batch {
        self.timestamp_ms = Some(ms);
        self
    }

    /// Each record stamped `ms` after the one before it.
    pub fn ts_step(mut self, ms: i64) -> Batch {
        self.ts_step_ms = ms;
        self
    }

    /// Records keyed `k0`, `k1`, … by their position.
    pub fn keyed_by_position(mut self) -> Batch {
        for (i, r) in self.records.iter_mut().enumerate() {
            r.0 = Some(format!("k{i}").into_bytes());
        }
        self
    }

    /// Every record under `key`.
    pub fn key(mut self, key: &[u8]) -> Batch {
        for r in &mut self.records {
            r.0 = Some(key.to_vec());
        }
        self
    }

    /// Every record expiring `ms` after its timestamp.
    pub fn ttl(mut self, ms: Option<u64>) -> Batch {
        self.ttl_ms = ms;
        self
    }

    /// Attributed to `producer` from `sequence`, as an idempotent producer
    /// stamps its batches.
    pub fn producer(mut self, producer: u64, sequence: u64) -> Batch {
        self.producer = Some((producer, sequence));
        self
    }

    pub fn compression(mut self, c: Compression) -> Batch {
        self.compression = c;
        self
    }

    /// The encoded batch. Panics if it cannot be built: then the test's
    /// input is wrong, not the code under test.
    pub fn build(&self) -> Vec<u8> {
        let mut b = BatchBuilder::new(usize::MAX);
        if let Some((p, s)) = self.producer {
            b = b.producer(ProducerId(p), s);
        }
        let ts = self.timestamp_ms.unwrap_or_else(felix_log::now_ms);
        for (i, (key, value)) in self.records.iter().enumerate() {
            b.push(RecordInput {
                key: key.as_deref(),
                value: value.as_deref(),
                timestamp_ms: ts + i as i64 * self.ts_step_ms,
                ttl_ms: self.ttl_ms,
                ..RecordInput::default()
            })
            .expect("a test record fits");
        }
        b.build(self.compression).expect("a test batch has records")
    }

    /// The encoded batch as `Bytes`, as the wire and the log take it.
    pub fn bytes(&self) -> Bytes {
        Bytes::from(self.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_its_records_as_built() {
        let bytes = Batch::of(&["a", "bb"])
            .ts(7)
            .ts_step(2)
            .keyed_by_position()
            .producer(3, 4)
            .bytes();
        let b = felix_log::Batch::new(bytes).unwrap();
        assert_eq!(b.header().producer_id, ProducerId(3));
        assert_eq!(b.header().producer_seq, 4);
        let records: Vec<_> = b.records().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].value.as_deref(), Some(&b"bb"[..]));
        assert_eq!((records[0].timestamp_ms, records[1].timestamp_ms), (7, 9));
    }

    #[test]
    fn tombstones_and_ttls_are_kept() {
        let bytes = Batch::keyed(&[("k", None::<&str>)]).ttl(Some(5)).ts(1).bytes();
        let b = felix_log::Batch::new(bytes).unwrap();
        let r = b.records().unwrap().next().unwrap().unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert!(r.value.is_none());
        assert_eq!(r.ttl_ms, Some(5));
    }
}
