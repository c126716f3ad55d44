//! How far an active segment's file is allocated: in steps that start
//! small and double, so an idle shard holds [`ALLOCATION_BYTES_FIRST`] and
//! a busy one grows its file a handful of times per segment (one
//! `fallocate` each), never past the segment's capacity.

/// What a new segment file is allocated to (its header included).
pub const ALLOCATION_BYTES_FIRST: u64 = 512 << 10;

/// The allocation after `allocated` that holds `needed` bytes: the first
/// step, then doubling, and at least `needed`, at most `capacity` (but
/// never below `needed`, which the caller checked fits).
pub fn next(allocated: u64, needed: u64, capacity: u64) -> u64 {
    let mut to = allocated.max(ALLOCATION_BYTES_FIRST.min(capacity));
    while to < needed {
        to = to.saturating_mul(2);
    }
    to.min(capacity).max(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_new_segment_starts_at_the_first_step_and_grows_by_doubling() {
        assert_eq!(next(0, 64, 64 * MIB), ALLOCATION_BYTES_FIRST);
        assert_eq!(
            next(ALLOCATION_BYTES_FIRST, ALLOCATION_BYTES_FIRST + 1, 64 * MIB),
            MIB
        );
        assert_eq!(next(MIB, MIB + 1, 64 * MIB), 2 * MIB);
        // A batch larger than the next step takes as many doublings as it needs.
        assert_eq!(next(MIB, 5 * MIB, 64 * MIB), 8 * MIB);
    }

    #[test]
    fn never_past_the_capacity_nor_short_of_what_is_needed() {
        assert_eq!(next(32 * MIB, 40 * MIB, 48 * MIB), 48 * MIB);
        assert_eq!(
            next(0, 64, 100 << 10),
            100 << 10,
            "a segment smaller than the first step"
        );
        for capacity in [4096, 300 << 10, 3 * MIB, 64 * MIB] {
            let mut allocated = 0;
            let mut steps = 0;
            let mut needed = 64;
            while needed <= capacity {
                if needed > allocated {
                    let to = next(allocated, needed, capacity);
                    assert!(to >= needed && to <= capacity && to > allocated);
                    allocated = to;
                    steps += 1;
                }
                needed += 4096;
            }
            // Doubling: a handful of fallocate calls per segment.
            assert!(
                steps <= 2 + capacity.ilog2() as usize,
                "{steps} steps to {capacity}"
            );
        }
    }
}
