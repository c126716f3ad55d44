//! A shard's producer windows: for every producer, the sequence of its
//! last batch and where it landed, so a retry is answered with the first
//! attempt's offsets instead of being written twice. Rebuilt from the
//! log's batches (their producer runs), carried in snapshots, bounded.
//! Pure: batches in, verdicts out.

use std::collections::HashMap;

use felix_log::{Batch, RaftIndex};
use serde::{Deserialize, Serialize};

/// Producers whose last batch a shard remembers for deduplication.
pub const PRODUCERS_PER_SHARD_MAX: usize = 100_000;
/// When the windows are full, one in this many (the oldest) is forgotten.
pub const PRODUCERS_FORGOTTEN_SHARE: usize = 16;
/// Entries at the end of the log scanned at start-up to rebuild producer
/// windows: a retry of a batch older than this many entries is written again.
pub const PRODUCER_SCAN_ENTRIES_MAX: u64 = 100_000;

/// Where a publish landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub base_offset: u64,
    pub count: u32,
}

/// A sequence the producer is already past.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("producer {producer_id}: sequence {sequence} is behind {last}, already written")]
pub struct Behind {
    pub producer_id: u64,
    pub sequence: u64,
    pub last: u64,
}

/// The windows of one shard.
#[derive(Debug, Default)]
pub struct ProducerWindows {
    /// Producer id → (sequence of its last batch, where that landed).
    last: HashMap<u64, (u64, Appended)>,
}

impl ProducerWindows {
    /// The windows as of the last entries before `unapplied` (start-up).
    pub fn scan(l: &felix_log::Log, unapplied: RaftIndex) -> ProducerWindows {
        let mut w = ProducerWindows::default();
        let from = RaftIndex(unapplied.0.saturating_sub(PRODUCER_SCAN_ENTRIES_MAX));
        for e in l.positioned_from_raft_index(from) {
            if e.batch.header().raft_index >= unapplied {
                break;
            }
            w.note(&e.batch);
        }
        w
    }

    /// Where `(producer_id, sequence)` landed if it is the producer's last
    /// batch; `Behind` if the producer is past it; `None` if it is new.
    pub fn verdict(&self, producer_id: u64, sequence: u64) -> Result<Option<Appended>, Behind> {
        match self.last.get(&producer_id) {
            Some((seq, at)) if *seq == sequence => Ok(Some(*at)),
            Some((seq, _)) if sequence < *seq => Err(Behind {
                producer_id,
                sequence,
                last: *seq,
            }),
            _ => Ok(None),
        }
    }

    /// Records the producer and sequence of every batch a data batch
    /// carries (one, or a merged entry's several).
    pub fn note(&mut self, batch: &Batch) {
        // The log checked the table when it stored the batch.
        let runs = batch.producer_runs().unwrap_or_default();
        let base = batch.header().base_offset.0;
        for run in runs {
            let id = run.producer_id.0;
            if self.last.len() >= PRODUCERS_PER_SHARD_MAX && !self.last.contains_key(&id) {
                self.forget_oldest();
            }
            let at = Appended {
                base_offset: base + u64::from(run.offset_delta),
                count: run.offset_count,
            };
            let e = self.last.entry(id).or_insert((run.first_seq, at));
            if run.first_seq >= e.0 {
                *e = (run.first_seq, at);
            }
        }
    }

    /// As a snapshot carries them: (producer, sequence, where).
    pub fn to_state(&self) -> Vec<(u64, u64, Appended)> {
        self.last.iter().map(|(id, (seq, at))| (*id, *seq, *at)).collect()
    }

    pub fn from_state(state: Vec<(u64, u64, Appended)>) -> ProducerWindows {
        ProducerWindows {
            last: state.into_iter().map(|(id, seq, at)| (id, (seq, at))).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Forgets the producers whose last batch is oldest in the log,
    /// 1/[`PRODUCERS_FORGOTTEN_SHARE`] of the windows at once, so that a shard
    /// taking many new producers (a dead letter is one each) scans the windows
    /// once per many of them. A forgotten producer loses only its dedup
    /// window, as Kafka expires idle producer ids. The windows are full when
    /// this runs, so the producer written last is never among the forgotten,
    /// and a retry right after its write is still answered.
    fn forget_oldest(&mut self) {
        let mut at: Vec<u64> = self.last.values().map(|(_, a)| a.base_offset).collect();
        if at.is_empty() {
            return;
        }
        let n = (at.len() / PRODUCERS_FORGOTTEN_SHARE).max(1);
        let (_, cut, _) = at.select_nth_unstable(n - 1);
        let cut = *cut;
        self.last.retain(|_, (_, a)| a.base_offset > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use felix_log::{BatchBuilder, Compression, ProducerId, RecordInput};

    fn landed(producer: u64, sequence: u64, base_offset: u64) -> Batch {
        let mut b = BatchBuilder::new(1 << 20).producer(ProducerId(producer), sequence);
        b.push(RecordInput {
            value: Some(b"v"),
            timestamp_ms: 1,
            ..RecordInput::default()
        })
        .unwrap();
        let mut bytes = b.build(Compression::None).unwrap();
        // Stamped where the log would have put it.
        felix_log::batch::stamp(
            &mut bytes,
            felix_log::Offset(base_offset),
            felix_log::RaftTerm(1),
            RaftIndex(base_offset + 1),
        );
        Batch::new(bytes::Bytes::from(bytes)).unwrap()
    }

    /// One record landed at `base_offset`.
    fn one_at(base_offset: u64) -> Result<Option<Appended>, Behind> {
        Ok(Some(Appended {
            base_offset,
            count: 1,
        }))
    }

    #[test]
    fn a_retry_is_answered_where_it_landed_and_an_old_sequence_is_refused() {
        let mut w = ProducerWindows::default();
        assert_eq!(w.verdict(7, 0), Ok(None), "new");
        w.note(&landed(7, 0, 10));
        assert_eq!(w.verdict(7, 0), one_at(10));
        w.note(&landed(7, 1, 11));
        assert_eq!(w.verdict(7, 2), Ok(None), "the next one is new");
        let behind = Behind {
            producer_id: 7,
            sequence: 0,
            last: 1,
        };
        assert_eq!(w.verdict(7, 0), Err(behind));
        // A late note of an older batch does not move the window back.
        w.note(&landed(7, 0, 10));
        assert_eq!(w.verdict(7, 1), one_at(11));
        // Snapshots carry the windows unchanged.
        let back = ProducerWindows::from_state(w.to_state());
        assert_eq!(back.verdict(7, 1), w.verdict(7, 1));
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn full_windows_forget_the_producers_written_longest_ago() {
        let window = |i: u64| {
            (
                7,
                Appended {
                    base_offset: i * 3,
                    count: 1,
                },
            )
        };
        // Inserted in no particular order of age.
        let mut w = ProducerWindows {
            last: (0..1600u64).rev().map(|i| (1000 + i, window(i))).collect(),
        };
        w.forget_oldest();
        assert_eq!(w.len(), 1600 - 1600 / PRODUCERS_FORGOTTEN_SHARE);
        assert!(
            (0..100u64).all(|i| !w.last.contains_key(&(1000 + i))),
            "the oldest go"
        );
        assert!(
            (100..1600u64).all(|i| w.last.contains_key(&(1000 + i))),
            "the rest stay"
        );
    }
}
