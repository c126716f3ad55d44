//! A per-key linearizability checker for the cache (Wing & Gong's search
//! with Lowe's memoisation of (linearized set, state)).
//!
//! The model is one register holding an entry `(value, version)` or
//! nothing. Versions come from the broker (a write's position in its
//! shard), so the model does not predict them: a write must return one
//! above the current version, and a read must return exactly the current
//! entry.
//!
//! Operations whose outcome is unknown (a timeout, a lost connection) may
//! take effect at any point after their invocation, or never. A write of
//! unknown outcome takes the version some read saw its (unique) value
//! with; one whose value nobody saw is left out, which only removes
//! constraints: a register write that no read observed cannot be what
//! makes a history linearizable.

use std::collections::{HashMap, HashSet};

/// A cache entry as the model holds it: (value, version).
pub type Entry = Option<(String, u64)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get,
    Put(String),
    /// Write `value` only if the current version is `expected` (0: only if
    /// absent).
    Cas {
        expected: u64,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// A get's answer, or a refused compare-and-set's current entry.
    Read(Entry),
    /// A write took effect with this version.
    Written(u64),
    /// Outcome unknown.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub process: u64,
    pub call: Call,
    pub ret: Ret,
    pub invoke_us: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub done_us: u64,
}

/// How a state search ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains the results; the operations of
    /// the longest prefix order found, and the first that could not follow.
    NotLinearizable(String),
    /// The search space exceeded the budget.
    Unknown,
}

/// States explored at most per key before giving up (memoised states
/// hold one bit per operation of their piece, and pieces are short).
pub const SEARCH_STATES_MAX: usize = 2_000_000;

/// Applies `op` to `state`: the next state if its result is consistent.
fn step(state: &Entry, op: &Op, resolved: Option<u64>) -> Option<Entry> {
    let version = state.as_ref().map_or(0, |(_, v)| *v);
    match (&op.call, &op.ret) {
        (Call::Get, Ret::Read(e)) => (e == state).then(|| state.clone()),
        (Call::Get, _) => None,
        (Call::Put(v), Ret::Written(w)) => (*w > version).then(|| Some((v.clone(), *w))),
        (Call::Cas { expected, value }, Ret::Written(w)) => {
            (*expected == version && *w > version).then(|| Some((value.clone(), *w)))
        }
        (Call::Cas { expected, .. }, Ret::Read(e)) => {
            (*expected != version && e == state).then(|| state.clone())
        }
        (Call::Put(v), Ret::Unknown) => {
            let w = resolved?;
            (w > version).then(|| Some((v.clone(), w)))
        }
        (Call::Cas { expected, value }, Ret::Unknown) => {
            let w = resolved?;
            (*expected == version && w > version).then(|| Some((value.clone(), w)))
        }
        (Call::Put(_), Ret::Read(_)) => None,
    }
}

/// Checks one key's history.
///
/// An unknown write that some read saw must have taken effect before the
/// first such read completed, so that completion is its deadline. With
/// every operation bounded so, the history splits wherever nothing is
/// pending (every operation before the cut completed before any after it
/// began), and each piece is searched from the states the previous one
/// could end in: long histories stay cheap.
pub fn check(history: &[Op]) -> Verdict {
    // Versions that reads saw each value with, and when the first such
    // read completed.
    let mut seen: HashMap<&str, (u64, u64)> = HashMap::new();
    for op in history {
        if let Ret::Read(Some((v, w))) = &op.ret {
            let e = seen.entry(v.as_str()).or_insert((*w, op.done_us));
            e.1 = e.1.min(op.done_us);
        }
    }
    let mut ops: Vec<(Op, Option<u64>)> = history
        .iter()
        .filter_map(|op| match (&op.call, &op.ret) {
            (Call::Get, Ret::Unknown) => None,
            (Call::Put(v) | Call::Cas { value: v, .. }, Ret::Unknown) => {
                seen.get(v.as_str()).map(|(w, by)| {
                    let mut bounded = op.clone();
                    bounded.done_us = *by;
                    (bounded, Some(*w))
                })
            }
            _ => Some((op.clone(), None)),
        })
        .collect();
    ops.sort_by_key(|(o, _)| o.invoke_us);
    let mut states: HashSet<Entry> = HashSet::from([None]);
    let mut budget = SEARCH_STATES_MAX;
    let mut at = 0;
    while at < ops.len() {
        // The piece: up to the first operation invoked after everything
        // before it completed.
        let mut end = at + 1;
        let mut horizon = ops[at].0.done_us;
        while end < ops.len() && ops[end].0.invoke_us <= horizon {
            horizon = horizon.max(ops[end].0.done_us);
            end += 1;
        }
        let piece = &ops[at..end];
        let mut finals = HashSet::new();
        let mut why = String::new();
        for start in &states {
            match search(piece, start, &mut finals, &mut budget) {
                Ok(()) => {}
                Err(None) => return Verdict::Unknown,
                Err(Some(w)) => why = w,
            }
        }
        if finals.is_empty() {
            return Verdict::NotLinearizable(format!(
                "operations {at}..{end} (from states {states:?}): {why}"
            ));
        }
        states = finals;
        at = end;
    }
    Verdict::Linearizable
}

/// Every state `piece` can end in, from `start`, added to `finals`.
/// `Err(Some(why))` when there is none, `Err(None)` when the budget ran out.
fn search(
    ops: &[(Op, Option<u64>)],
    start: &Entry,
    finals: &mut HashSet<Entry>,
    budget: &mut usize,
) -> Result<(), Option<String>> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
    let mut memo: HashSet<(Vec<u64>, Entry)> = HashSet::new();
    // The depth-first search: (linearized set, state, next candidate to
    // try at this level).
    let mut stack: Vec<(Vec<u64>, Entry, usize)> = vec![(vec![0u64; words], start.clone(), 0)];
    let mut deepest = (0usize, String::new());
    let before = finals.len();
    while let Some((d, state, from)) = stack.pop() {
        let count = d.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        if count == n {
            finals.insert(state);
            continue;
        }
        if *budget == 0 {
            return Err(None);
        }
        // An op may go next if it was invoked before every pending
        // operation's completion.
        let horizon = (0..n)
            .filter(|&i| !is_done(&d, i))
            .map(|i| ops[i].0.done_us)
            .min()
            .unwrap_or(u64::MAX);
        let mut i = from;
        while i < n && ops[i].0.invoke_us <= horizon {
            if !is_done(&d, i) {
                if let Some(next) = step(&state, &ops[i].0, ops[i].1) {
                    let mut nd = d.clone();
                    nd[i / 64] |= 1 << (i % 64);
                    if memo.insert((nd.clone(), next.clone())) {
                        *budget = budget.saturating_sub(1);
                        // Resume this level after `i` once the child is done.
                        stack.push((d.clone(), state.clone(), i + 1));
                        stack.push((nd, next, 0));
                        break;
                    }
                }
            }
            i += 1;
        }
        if count >= deepest.0 && (i >= n || ops[i].0.invoke_us > horizon) {
            let blocked = (0..n)
                .find(|&j| !is_done(&d, j))
                .map(|j| format!("process {}'s {:?}", ops[j].0.process, ops[j].0))
                .unwrap_or_default();
            deepest = (
                count,
                format!("state {state:?} after {count} operations; cannot place {blocked}"),
            );
        }
    }
    if finals.len() > before {
        Ok(())
    } else {
        Err(Some(deepest.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(p: u64, call: Call, ret: Ret, i: u64, d: u64) -> Op {
        Op {
            process: p,
            call,
            ret,
            invoke_us: i,
            done_us: d,
        }
    }
    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }
    fn read(v: &str, w: u64) -> Ret {
        Ret::Read(Some((v.into(), w)))
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        let h = vec![
            op(1, put("a"), Ret::Written(5), 0, 1),
            op(2, Call::Get, read("a", 5), 2, 3),
            op(
                1,
                Call::Cas {
                    expected: 5,
                    value: "b".into(),
                },
                Ret::Written(9),
                4,
                5,
            ),
            op(
                2,
                Call::Cas {
                    expected: 5,
                    value: "c".into(),
                },
                read("b", 9),
                6,
                7,
            ),
            op(2, Call::Get, read("b", 9), 8, 9),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let h = vec![
            op(1, put("a"), Ret::Written(5), 0, 1),
            op(1, put("b"), Ret::Written(6), 2, 3),
            op(2, Call::Get, read("a", 5), 4, 5),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn concurrent_writes_may_be_read_in_their_version_order_only() {
        let ok = vec![
            op(1, put("a"), Ret::Written(5), 0, 10),
            op(2, put("b"), Ret::Written(6), 0, 10),
            op(3, Call::Get, read("a", 5), 1, 2),
            op(3, Call::Get, read("b", 6), 3, 4),
        ];
        assert_eq!(check(&ok), Verdict::Linearizable);
        let bad = vec![
            op(1, put("a"), Ret::Written(5), 0, 10),
            op(2, put("b"), Ret::Written(6), 0, 10),
            op(3, Call::Get, read("b", 6), 1, 2),
            op(3, Call::Get, read("a", 5), 3, 4),
        ];
        assert!(matches!(check(&bad), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never() {
        let late = vec![
            op(1, put("a"), Ret::Unknown, 0, u64::MAX),
            op(2, Call::Get, Ret::Read(None), 1, 2),
            op(2, Call::Get, read("a", 3), 10, 11),
        ];
        assert_eq!(check(&late), Verdict::Linearizable);
        let never = vec![
            op(1, put("a"), Ret::Unknown, 0, u64::MAX),
            op(2, Call::Get, Ret::Read(None), 1, 2),
        ];
        assert_eq!(check(&never), Verdict::Linearizable);
        // But a value read before its write was invoked is not.
        let early = vec![
            op(2, Call::Get, read("a", 3), 0, 1),
            op(1, put("a"), Ret::Unknown, 2, u64::MAX),
        ];
        assert!(matches!(check(&early), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn long_histories_are_checked_piece_by_piece() {
        // 20,000 operations, pairs of overlapping writes and reads: the
        // search never sees more than a piece at once.
        let mut h = Vec::new();
        for k in 0..10_000u64 {
            let t = k * 10;
            h.push(op(1, Call::Put(format!("v{k}")), Ret::Written(k + 1), t, t + 5));
            h.push(op(2, Call::Get, read(&format!("v{k}"), k + 1), t + 4, t + 8));
        }
        assert_eq!(check(&h), Verdict::Linearizable);
        // One stale read late in the history is still found.
        h[19_999] = op(2, Call::Get, read("v9000", 9001), 99_994, 99_998);
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn a_compare_and_set_that_won_against_a_changed_version_is_not() {
        let h = vec![
            op(1, put("a"), Ret::Written(5), 0, 1),
            op(1, put("b"), Ret::Written(7), 2, 3),
            op(
                2,
                Call::Cas {
                    expected: 5,
                    value: "c".into(),
                },
                Ret::Written(9),
                4,
                5,
            ),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }
}
