//! The search: Wing–Gong with Lowe's just-in-time linearization and a cache of visited
//! configurations, per key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::SequentialSpec;
use crate::history::{History, Operation, Outcome};

/// Search steps one key may take before [`check`] gives up on it. A linearizable key of n
/// operations usually takes a few n steps; each step may add one cache entry (a bitset of the
/// key's operations and a model state), so this also bounds memory: ~100 MB at the default for
/// keys of a few hundred operations.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 2_000_000;
/// Operations listed per section of a [`Violation`]'s explanation.
pub const DEFAULT_MAX_OPS_SHOWN: usize = 12;
/// Distinct model states listed in a [`Violation`]'s explanation.
pub const DEFAULT_MAX_STATES_SHOWN: usize = 8;

/// Limits of one [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// See [`DEFAULT_MAX_STEPS_PER_KEY`].
    pub max_steps_per_key: u64,
    /// See [`DEFAULT_MAX_OPS_SHOWN`].
    pub max_ops_shown: usize,
    /// See [`DEFAULT_MAX_STATES_SHOWN`].
    pub max_states_shown: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: DEFAULT_MAX_STEPS_PER_KEY,
            max_ops_shown: DEFAULT_MAX_OPS_SHOWN,
            max_states_shown: DEFAULT_MAX_STATES_SHOWN,
        }
    }
}

/// What a check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub keys: usize,
    pub ops: usize,
    /// Operations with an unknown outcome among `ops`.
    pub unknown_ops: usize,
    /// Search steps over all keys.
    pub steps: u64,
}

/// The answer of [`check`].
pub enum Verdict<K, S: SequentialSpec> {
    /// Some order of the operations, one per key, explains every answer.
    Linearizable(Summary),
    /// No order does for at least one key; the first such key (in key order) is explained.
    NotLinearizable(Box<Violation<K, S>>),
    /// No violation found, but the search of some keys hit its step limit: undecided.
    GaveUp(GaveUp<K>),
}

impl<K, S: SequentialSpec> Verdict<K, S> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable(_))
    }

    pub fn violation(&self) -> Option<&Violation<K, S>> {
        match self {
            Verdict::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl<K: fmt::Debug, S: SequentialSpec> fmt::Debug for Verdict<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable(s) => f.debug_tuple("Linearizable").field(s).finish(),
            Verdict::NotLinearizable(v) => write!(f, "NotLinearizable(\n{v})"),
            Verdict::GaveUp(g) => f.debug_tuple("GaveUp").field(g).finish(),
        }
    }
}

impl<K: fmt::Debug, S: SequentialSpec> fmt::Display for Verdict<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable(s) => write!(
                f,
                "linearizable: {} operations ({} of unknown outcome) over {} keys, {} search steps",
                s.ops, s.unknown_ops, s.keys, s.steps
            ),
            Verdict::NotLinearizable(v) => v.fmt(f),
            Verdict::GaveUp(g) => g.fmt(f),
        }
    }
}

/// Keys the search could not decide within [`CheckOptions::max_steps_per_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<K> {
    /// Each undecided key with its number of operations.
    pub keys: Vec<(K, usize)>,
    pub max_steps_per_key: u64,
    /// Everything checked, decided keys and undecided ones.
    pub summary: Summary,
}

impl<K: fmt::Debug> fmt::Display for GaveUp<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "undecided: gave up after {} steps on each of {} key(s) (no violation found on the other {} keys): ",
            self.max_steps_per_key,
            self.keys.len(),
            self.summary.keys - self.keys.len()
        )?;
        for (i, (key, ops)) in self.keys.iter().take(DEFAULT_MAX_OPS_SHOWN).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{key:?} ({ops} operations)")?;
        }
        write!(
            f,
            "; raise CheckOptions::max_steps_per_key, or record fewer concurrent or unknown-outcome operations per key"
        )
    }
}

/// Why one key's history is not linearizable, told from the furthest point any order reached.
pub struct Violation<K, S: SequentialSpec> {
    pub key: K,
    /// The operation no order could place before its return, at the furthest point reached.
    pub failed: Operation<K, S::Op, S::Ret>,
    /// The model states `failed` was tried in (distinct, at most
    /// [`CheckOptions::max_states_shown`]), each with what it would have answered there. Empty
    /// when it was never tried: the operations it must follow could not be placed.
    pub tried: Vec<(S::State, S::Ret)>,
    /// Operations of the key whose time overlaps `failed`'s (at most
    /// [`CheckOptions::max_ops_shown`], earliest first).
    pub concurrent: Vec<Operation<K, S::Op, S::Ret>>,
    /// How many operations overlap `failed`, listed or not.
    pub concurrent_total: usize,
    /// The last operations of the key that returned before `failed` was invoked (at most
    /// [`CheckOptions::max_ops_shown`], latest last): they fix the state it must see.
    pub preceding: Vec<Operation<K, S::Op, S::Ret>>,
    /// Operations of this key in the history.
    pub ops_of_key: usize,
    /// Keys that are not linearizable (this one first), at most [`CheckOptions::max_ops_shown`].
    pub violating_keys: Vec<K>,
    pub summary: Summary,
}

impl<K: fmt::Debug, S: SequentialSpec> fmt::Debug for Violation<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<K: fmt::Debug, S: SequentialSpec> fmt::Display for Violation<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable: key {:?} ({} operations; {} key(s) violate: {:?})",
            self.key,
            self.ops_of_key,
            self.violating_keys.len(),
            self.violating_keys
        )?;
        writeln!(f, "  no order can place: {}", self.failed)?;
        if self.tried.is_empty() {
            writeln!(
                f,
                "  it was never tried: the operations that must come before it could not be placed"
            )?;
        } else {
            writeln!(
                f,
                "  the states it was tried in, and what it would have answered:"
            )?;
            for (state, ret) in &self.tried {
                writeln!(f, "    {state:?} -> {ret:?}")?;
            }
        }
        writeln!(
            f,
            "  concurrent with it ({} of {}):",
            self.concurrent.len(),
            self.concurrent_total
        )?;
        for op in &self.concurrent {
            writeln!(f, "    {op}")?;
        }
        writeln!(
            f,
            "  the last operations that returned before it was invoked:"
        )?;
        if self.preceding.is_empty() {
            writeln!(f, "    (none)")?;
        }
        for op in &self.preceding {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// An operation of a history checked against `S`.
type SpecOp<K, S> = Operation<K, <S as SequentialSpec>::Op, <S as SequentialSpec>::Ret>;

/// Decides whether `history` is linearizable with respect to `spec` applied per key.
pub fn check<K, S>(
    spec: &S,
    history: &History<K, S::Op, S::Ret>,
    options: &CheckOptions,
) -> Verdict<K, S>
where
    K: Clone + Ord,
    S: SequentialSpec,
{
    let mut by_key: BTreeMap<&K, Vec<&SpecOp<K, S>>> = BTreeMap::new();
    for op in history.ops() {
        let ops = by_key.entry(&op.key).or_default();
        // A read that may or may not have happened constrains nothing.
        if !(op.outcome == Outcome::Unknown && spec.is_read_only(&op.op)) {
            ops.push(op);
        }
    }
    let mut summary = Summary {
        keys: by_key.len(),
        ops: history.len(),
        unknown_ops: history
            .ops()
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count(),
        steps: 0,
    };
    let mut first_failure = None;
    let mut violating_keys = Vec::new();
    let mut gave_up = Vec::new();
    for (key, ops) in &by_key {
        let result = search(spec, ops, options);
        summary.steps += result.steps;
        match result.end {
            End::Linearizable => {}
            End::GaveUp => gave_up.push(((*key).clone(), ops.len())),
            End::Failed { op, tried } => {
                if violating_keys.len() < options.max_ops_shown {
                    violating_keys.push((*key).clone());
                }
                if first_failure.is_none() {
                    first_failure = Some((*key, ops, op, tried));
                }
            }
        }
    }
    if let Some((key, ops, failed, tried)) = first_failure {
        return Verdict::NotLinearizable(Box::new(explain(
            key,
            ops,
            failed,
            tried,
            violating_keys,
            summary,
            options,
        )));
    }
    if !gave_up.is_empty() {
        return Verdict::GaveUp(GaveUp {
            keys: gave_up,
            max_steps_per_key: options.max_steps_per_key,
            summary,
        });
    }
    Verdict::Linearizable(summary)
}

fn explain<K: Clone, S: SequentialSpec>(
    key: &K,
    ops: &[&Operation<K, S::Op, S::Ret>],
    failed: usize,
    tried: Vec<(S::State, S::Ret)>,
    violating_keys: Vec<K>,
    summary: Summary,
    options: &CheckOptions,
) -> Violation<K, S> {
    let f = ops[failed];
    let f_end = f.returned_ns.unwrap_or(u64::MAX);
    let mut concurrent: Vec<_> = ops
        .iter()
        .filter(|o| o.id != f.id)
        .filter(|o| o.invoked_ns <= f_end && o.returned_ns.is_none_or(|r| r >= f.invoked_ns))
        .collect();
    concurrent.sort_by_key(|o| o.invoked_ns);
    let concurrent_total = concurrent.len();
    let mut preceding: Vec<_> = ops
        .iter()
        .filter(|o| o.returned_ns.is_some_and(|r| r < f.invoked_ns))
        .collect();
    preceding.sort_by_key(|o| o.returned_ns);
    let skip = preceding.len().saturating_sub(options.max_ops_shown);
    Violation {
        key: key.clone(),
        failed: f.clone(),
        tried,
        concurrent: concurrent
            .into_iter()
            .take(options.max_ops_shown)
            .map(|o| (*o).clone())
            .collect(),
        concurrent_total,
        preceding: preceding
            .into_iter()
            .skip(skip)
            .map(|o| (*o).clone())
            .collect(),
        ops_of_key: ops.len(),
        violating_keys,
        summary,
    }
}

struct KeyResult<S: SequentialSpec> {
    steps: u64,
    end: End<S>,
}

enum End<S: SequentialSpec> {
    Linearizable,
    GaveUp,
    /// `op` indexes the key's operations.
    Failed {
        op: usize,
        tried: Vec<(S::State, S::Ret)>,
    },
}

/// One event of a key's history, in time order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// The other entry of the same operation.
    pair: usize,
}

/// The entries of one key as a doubly linked list (index `n` is the sentinel), so an operation's
/// two entries can be lifted out when it is linearized and put back, in reverse order, when the
/// search backtracks.
struct EntryList {
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EntryList {
    fn new<K, Op, Ret>(ops: &[&Operation<K, Op, Ret>]) -> EntryList {
        // (time, returns after calls at equal times, op, is_call)
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoked_ns, 0, i, true));
            // An unknown outcome is a return after everything else: the operation may take
            // effect at any moment after its invocation. Checked at that return: or never.
            order.push((op.returned_ns.unwrap_or(u64::MAX), 1, i, false));
        }
        order.sort_unstable();
        let mut at = vec![[0usize; 2]; ops.len()];
        for (pos, &(_, _, op, is_call)) in order.iter().enumerate() {
            at[op][usize::from(!is_call)] = pos;
        }
        let entries = order
            .iter()
            .map(|&(_, _, op, is_call)| Entry {
                op,
                is_call,
                pair: at[op][usize::from(is_call)],
            })
            .collect::<Vec<_>>();
        let n = entries.len();
        let next = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        EntryList {
            entries,
            next,
            prev,
        }
    }

    fn sentinel(&self) -> usize {
        self.entries.len()
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.entries[call].pair);
    }

    /// Undoes the latest [`EntryList::lift`], which must have been of `call`.
    fn unlift(&mut self, call: usize) {
        self.relink(self.entries[call].pair);
        self.relink(call);
    }
}

/// Which of the key's operations are linearized so far.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn search<K, S: SequentialSpec>(
    spec: &S,
    ops: &[&Operation<K, S::Op, S::Ret>],
    options: &CheckOptions,
) -> KeyResult<S> {
    let mut list = EntryList::new(ops);
    let head = list.sentinel();
    let mut state = spec.init();
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, S::State)> = HashSet::new();
    // (call entry lifted, state before it, whether it is a read placed as soon as it fit and
    // so has no alternative to try in its place)
    let mut stack: Vec<(usize, S::State, bool)> = Vec::new();
    let mut tried: Vec<Vec<(S::State, S::Ret)>> = vec![Vec::new(); ops.len()];
    // The return entry furthest in time at which the search had to backtrack.
    let mut furthest: Option<usize> = None;
    let mut steps = 0u64;
    let mut entry = list.next[head];
    loop {
        if steps >= options.max_steps_per_key {
            return KeyResult {
                steps,
                end: End::GaveUp,
            };
        }
        steps += 1;
        if entry == head {
            // Every operation is linearized.
            return KeyResult {
                steps,
                end: End::Linearizable,
            };
        }
        let e = list.entries[entry];
        let op = ops[e.op];
        let backtrack = if e.is_call {
            let (after, ret) = spec.step(&state, &op.op);
            let fits = match &op.outcome {
                Outcome::Unknown => true,
                Outcome::Returned(r) => *r == ret,
            };
            let read = spec.is_read_only(&op.op);
            if fits {
                linearized.set(e.op);
                if cache.insert((linearized.clone(), after.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, after), read));
                    list.lift(entry);
                    entry = list.next[head];
                    continue;
                }
                linearized.clear(e.op);
            } else {
                let seen = &mut tried[e.op];
                if seen.len() < options.max_states_shown && !seen.iter().any(|(s, _)| *s == state) {
                    seen.push((state.clone(), ret));
                }
            }
            // A read that fits here but leads only to explored dead ends: so does every other
            // choice from here, since the read could move here from any of them.
            fits && read
        } else {
            if op.outcome == Outcome::Unknown {
                // Unknown returns sort after every known one, so only operations that may
                // never have taken effect are left.
                return KeyResult {
                    steps,
                    end: End::Linearizable,
                };
            }
            if furthest.is_none_or(|f| entry > f) {
                furthest = Some(entry);
            }
            true
        };
        if !backtrack {
            entry = list.next[entry];
            continue;
        }
        // Undo the latest choice that had alternatives: reads placed as soon as they fit had
        // none, so undo those and go on undoing.
        loop {
            let Some((call, before, read)) = stack.pop() else {
                let failed = list.entries[furthest.unwrap_or(entry)].op;
                return KeyResult {
                    steps,
                    end: End::Failed {
                        op: failed,
                        tried: std::mem::take(&mut tried[failed]),
                    },
                };
            };
            state = before;
            linearized.clear(list.entries[call].op);
            list.unlift(call);
            if !read {
                entry = list.next[call];
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{CasOp, CasRegister, CasRet};

    fn reg() -> CasRegister<u8> {
        CasRegister::new()
    }

    #[test]
    fn entry_list_orders_calls_before_returns_at_equal_times() {
        let mut h: History<&str, CasOp<u8>, CasRet<u8>> = History::new();
        h.push_returned("k", CasOp::Write(1), CasRet::Written, 1, 5)
            .unwrap();
        h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 5, 6)
            .unwrap();
        let ops: Vec<_> = h.ops().iter().collect();
        let list = EntryList::new(&ops);
        let kinds: Vec<_> = list.entries.iter().map(|e| (e.op, e.is_call)).collect();
        assert_eq!(kinds, [(0, true), (1, true), (0, false), (1, false)]);
        for (i, e) in list.entries.iter().enumerate() {
            assert_eq!(list.entries[e.pair].pair, i);
        }
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        let mut h: History<&str, CasOp<u8>, CasRet<u8>> = History::new();
        for i in 0..4u64 {
            h.push_returned("k", CasOp::Read, CasRet::Read(None), i, 10 + i)
                .unwrap();
        }
        let ops: Vec<_> = h.ops().iter().collect();
        let mut list = EntryList::new(&ops);
        let (next, prev) = (list.next.clone(), list.prev.clone());
        list.lift(1);
        list.lift(0);
        list.lift(3);
        assert_eq!(list.next[list.sentinel()], 2);
        list.unlift(3);
        list.unlift(0);
        list.unlift(1);
        assert_eq!((list.next, list.prev), (next, prev));
    }

    #[test]
    fn step_limit_gives_up() {
        // Many concurrent unknown writes of distinct values and a read of a value nobody wrote:
        // not linearizable, but the search has 2^n subsets to rule out.
        let mut h: History<&str, CasOp<u8>, CasRet<u8>> = History::new();
        for v in 0..40u8 {
            h.push_unknown("k", CasOp::Write(v), u64::from(v));
        }
        h.push_returned("k", CasOp::Read, CasRet::Read(Some(200)), 100, 101)
            .unwrap();
        let options = CheckOptions {
            max_steps_per_key: 10_000,
            ..CheckOptions::default()
        };
        match check(&reg(), &h, &options) {
            Verdict::GaveUp(g) => {
                assert_eq!(g.keys, vec![("k", 41)]);
                assert_eq!(g.summary.steps, 10_000);
                assert!(g.to_string().contains("gave up after 10000 steps"), "{g}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }
}
