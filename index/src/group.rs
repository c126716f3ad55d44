//! A consumer group's shared cursor as a pure state machine: ops and `now` in,
//! new state and a verdict out. The index loads the part of a group that can
//! change (its window `[floor, next)`), applies ops to it and writes back
//! what changed.
//!
//! - `floor`: every offset below it is finished (acked, dead-lettered, or
//!   never delivered because it held no record).
//! - `next`: the lowest offset never leased.
//! - Between them, an offset with an entry is leased, waiting for redelivery,
//!   or acked; one without an entry was skipped (the broker leases in offset
//!   order and steps over offsets that hold no record).

use std::collections::BTreeMap;

use felix_log::Offset;

/// Offsets a lease may lie beyond the group's lowest open offset (leased,
/// or waiting for redelivery); a lease further is refused, which is the
/// broker's cue to stop handing out more while old ones stay unacked. It
/// bounds the entries a group holds. Offsets that hold no record (gaps
/// left by compaction or retention) count only while something below them
/// is open: with nothing open, a lease starts a new window wherever it is.
pub const GROUP_WINDOW_MAX: u64 = 1 << 20;

/// A consumer of a group, numbered by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConsumerId(pub u64);

/// Where one delivered offset stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Leased {
        consumer: ConsumerId,
        until_ms: i64,
    },
    /// Given back (nack) or lease expired: deliverable again from `at_ms`.
    Ready {
        at_ms: i64,
    },
    Acked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Times the offset has been leased.
    pub deliveries: u32,
    pub status: Status,
}

/// Why an op left an offset alone. Deterministic, so every replica agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Below the floor: already finished.
    Finished,
    /// Never leased.
    NotDelivered,
    AlreadyAcked,
    /// Leased to another consumer whose lease has not expired.
    LeasedToOther,
    /// Not leased to this consumer (extend, nack).
    NotHolder,
    /// Beyond [`GROUP_WINDOW_MAX`] from the lowest open offset.
    WindowFull,
}

/// The changeable part of a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupState {
    pub floor: Offset,
    pub next: Offset,
    pub entries: BTreeMap<Offset, Delivery>,
}

impl GroupState {
    /// A new group starting at `start`.
    pub fn starting_at(start: Offset) -> GroupState {
        GroupState {
            floor: start,
            next: start,
            entries: BTreeMap::new(),
        }
    }

    /// Whether `offset` may be leased at `now_ms` by `consumer`.
    pub fn can_lease(&self, offset: Offset, consumer: ConsumerId, now_ms: i64) -> Result<(), Refusal> {
        if offset < self.floor {
            return Err(Refusal::Finished);
        }
        let base = self.window_base().unwrap_or(offset);
        if offset.0.saturating_sub(base.0) >= GROUP_WINDOW_MAX {
            return Err(Refusal::WindowFull);
        }
        match self.entries.get(&offset) {
            Some(d) => match d.status {
                Status::Acked => Err(Refusal::AlreadyAcked),
                Status::Leased {
                    consumer: c,
                    until_ms,
                } if c != consumer && until_ms > now_ms => Err(Refusal::LeasedToOther),
                _ => Ok(()),
            },
            None if offset < self.next => Err(Refusal::Finished),
            None => Ok(()),
        }
    }

    pub fn lease(
        &mut self,
        offset: Offset,
        consumer: ConsumerId,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        self.can_lease(offset, consumer, now_ms)?;
        let d = self.entries.entry(offset).or_insert(Delivery {
            deliveries: 0,
            status: Status::Ready { at_ms: now_ms },
        });
        d.deliveries = d.deliveries.saturating_add(1);
        d.status = Status::Leased { consumer, until_ms };
        if offset >= self.next {
            self.next = offset.add(1);
        }
        Ok(())
    }

    /// Acks from anyone are taken, even after the lease expired: the record
    /// was processed, and not redelivering it is what matters.
    pub fn ack(&mut self, offset: Offset) -> Result<(), Refusal> {
        if offset < self.floor {
            return Err(Refusal::Finished);
        }
        match self.entries.get_mut(&offset) {
            Some(d) if d.status == Status::Acked => Err(Refusal::AlreadyAcked),
            Some(d) => {
                d.status = Status::Acked;
                Ok(())
            }
            None => Err(Refusal::NotDelivered),
        }
    }

    fn holder_entry(&mut self, offset: Offset, consumer: ConsumerId) -> Result<&mut Delivery, Refusal> {
        if offset < self.floor {
            return Err(Refusal::Finished);
        }
        match self.entries.get_mut(&offset) {
            Some(d) => match d.status {
                Status::Leased { consumer: c, .. } if c == consumer => Ok(d),
                Status::Acked => Err(Refusal::AlreadyAcked),
                _ => Err(Refusal::NotHolder),
            },
            None => Err(Refusal::NotDelivered),
        }
    }

    pub fn nack(
        &mut self,
        offset: Offset,
        consumer: ConsumerId,
        redeliver_at_ms: i64,
    ) -> Result<(), Refusal> {
        let d = self.holder_entry(offset, consumer)?;
        d.status = Status::Ready {
            at_ms: redeliver_at_ms,
        };
        Ok(())
    }

    pub fn extend(&mut self, offset: Offset, consumer: ConsumerId, until_ms: i64) -> Result<(), Refusal> {
        let d = self.holder_entry(offset, consumer)?;
        d.status = Status::Leased { consumer, until_ms };
        Ok(())
    }

    /// The lowest open offset (leased, or waiting for redelivery), from
    /// which [`GROUP_WINDOW_MAX`] counts; `None` when nothing is open.
    pub fn window_base(&self) -> Option<Offset> {
        self.entries
            .iter()
            .find(|(_, d)| d.status != Status::Acked)
            .map(|(o, _)| *o)
    }

    /// Moves the floor over finished offsets (acked or skipped) to the
    /// lowest open one, or to `next` when none is open: in one step
    /// whatever the gap, so offsets that never held a record cost nothing.
    /// Returns the old floor.
    pub fn advance_floor(&mut self) -> Offset {
        let old = self.floor;
        while let Some((&o, d)) = self.entries.first_key_value() {
            if d.status != Status::Acked {
                break;
            }
            self.entries.remove(&o);
        }
        self.floor = match self.entries.first_key_value() {
            Some((&open, _)) => open.min(self.next),
            None => self.next,
        }
        .max(old);
        old
    }

    /// Offsets deliverable again at `now_ms` (expired leases, nacks whose
    /// delay passed), oldest first, at most `max`.
    pub fn redeliverable(&self, now_ms: i64, max: usize) -> Vec<(Offset, Delivery)> {
        self.entries
            .iter()
            .filter(|(_, d)| match d.status {
                Status::Leased { until_ms, .. } => until_ms <= now_ms,
                Status::Ready { at_ms } => at_ms <= now_ms,
                Status::Acked => false,
            })
            .take(max)
            .map(|(o, d)| (*o, *d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConsumerId = ConsumerId(1);
    const B: ConsumerId = ConsumerId(2);

    #[test]
    fn lease_ack_and_floor() {
        let mut g = GroupState::starting_at(Offset(10));
        for o in 10..14 {
            g.lease(Offset(o), A, 100, 0).unwrap();
        }
        assert_eq!(g.next, Offset(14));
        assert_eq!(g.lease(Offset(11), B, 100, 50), Err(Refusal::LeasedToOther));
        g.ack(Offset(11)).unwrap();
        g.advance_floor();
        assert_eq!(g.floor, Offset(10), "10 is still leased");
        g.ack(Offset(10)).unwrap();
        g.advance_floor();
        assert_eq!(g.floor, Offset(12));
        assert_eq!(g.ack(Offset(11)), Err(Refusal::Finished));
        assert_eq!(g.ack(Offset(20)), Err(Refusal::NotDelivered));
    }

    #[test]
    fn expired_and_nacked_offsets_are_redelivered_with_counts() {
        let mut g = GroupState::starting_at(Offset(0));
        g.lease(Offset(0), A, 100, 0).unwrap();
        g.lease(Offset(1), A, 100, 0).unwrap();
        assert!(g.redeliverable(99, 10).is_empty());
        assert_eq!(g.nack(Offset(1), B, 0), Err(Refusal::NotHolder));
        g.nack(Offset(1), A, 150).unwrap();
        let r = g.redeliverable(100, 10);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![Offset(0)]);
        g.lease(Offset(0), B, 300, 100).unwrap();
        assert_eq!(g.entries[&Offset(0)].deliveries, 2);
        assert_eq!(g.redeliverable(150, 10)[0].0, Offset(1));
        assert_eq!(g.extend(Offset(0), A, 999), Err(Refusal::NotHolder));
        g.extend(Offset(0), B, 999).unwrap();
        assert!(g.redeliverable(500, 10).iter().all(|x| x.0 != Offset(0)));
    }

    #[test]
    fn a_gap_wider_than_the_window_neither_stalls_the_group_nor_costs_a_step_per_offset() {
        let c = ConsumerId(1);
        let mut g = GroupState::starting_at(Offset(0));
        g.lease(Offset(0), c, 10, 0).unwrap();
        // Offset 0 open: a lease past the window from it is refused.
        assert_eq!(
            g.lease(Offset(GROUP_WINDOW_MAX), c, 10, 0),
            Err(Refusal::WindowFull)
        );
        g.ack(Offset(0)).unwrap();
        g.advance_floor();
        // Nothing open: the next record, however far past (retention took
        // the offsets between, or they never held a record), is leased.
        let far = Offset(1 << 40);
        g.lease(far, c, 10, 0).unwrap();
        assert_eq!(g.window_base(), Some(far));
        // And the window counts from it now.
        assert_eq!(
            g.lease(far.add(GROUP_WINDOW_MAX), c, 10, 0),
            Err(Refusal::WindowFull)
        );
        g.lease(far.add(GROUP_WINDOW_MAX - 1), c, 10, 0).unwrap();
        g.ack(far).unwrap();
        // One step, not 2^40: the floor goes to the lowest open offset.
        g.advance_floor();
        assert_eq!(g.floor, far.add(GROUP_WINDOW_MAX - 1));
        g.ack(far.add(GROUP_WINDOW_MAX - 1)).unwrap();
        g.advance_floor();
        assert_eq!(g.floor, g.next);
        assert!(g.entries.is_empty());
    }

    #[test]
    fn skipped_offsets_do_not_hold_the_floor() {
        let mut g = GroupState::starting_at(Offset(0));
        g.lease(Offset(0), A, 10, 0).unwrap();
        g.lease(Offset(5), A, 10, 0).unwrap(); // 1..5 held no records
        assert_eq!(g.lease(Offset(3), A, 10, 0), Err(Refusal::Finished));
        g.ack(Offset(0)).unwrap();
        g.advance_floor();
        assert_eq!(g.floor, Offset(5));
        g.ack(Offset(5)).unwrap();
        g.advance_floor();
        assert_eq!(g.floor, Offset(6));
        assert!(g.entries.is_empty());
    }

    #[test]
    fn the_window_is_bounded_from_the_lowest_open_offset() {
        let mut g = GroupState::starting_at(Offset(0));
        g.lease(Offset(7), A, 10, 0).unwrap();
        assert_eq!(
            g.lease(Offset(7 + GROUP_WINDOW_MAX), A, 10, 0),
            Err(Refusal::WindowFull)
        );
        g.lease(Offset(6 + GROUP_WINDOW_MAX), A, 10, 0).unwrap();
        // An expired lease is still open: it holds the window.
        assert_eq!(g.window_base(), Some(Offset(7)));
        assert_eq!(
            g.lease(Offset(8 + GROUP_WINDOW_MAX), B, 10, 20),
            Err(Refusal::WindowFull)
        );
    }
}
