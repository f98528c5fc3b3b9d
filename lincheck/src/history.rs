//! Histories: what each client asked, when, and what it heard back (if anything).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a client heard back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<R> {
    /// An answer: the operation took effect exactly once, between invocation and return.
    Returned(R),
    /// No answer (timeout, killed node, cut link): the operation may have taken effect at any
    /// moment after its invocation, or never.
    Unknown,
}

/// One operation on one key.
///
/// Times are nanoseconds on one monotonic clock, strictly increasing over every event of a
/// recorded history, so "A returned before B was invoked" is `A.returned_ns < B.invoked_ns`.
/// Equal times (possible in hand-built histories) count as concurrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<K, Op, Ret> {
    /// Position in the history (the order of [`History::ops`]).
    pub id: usize,
    pub key: K,
    pub op: Op,
    pub outcome: Outcome<Ret>,
    pub invoked_ns: u64,
    /// `None` exactly when the outcome is unknown.
    pub returned_ns: Option<u64>,
}

impl<K: fmt::Debug, Op: fmt::Debug, Ret: fmt::Debug> fmt::Display for Operation<K, Op, Ret> {
    /// `#7 claim("a") -> Claimed  [1.250 ms .. 3.100 ms]`; times since the recorder started.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        match (&self.outcome, self.returned_ns) {
            (Outcome::Returned(r), Some(ret)) => write!(
                f,
                "#{} {:?} -> {:?}  [{:.3} ms .. {:.3} ms]",
                self.id,
                self.op,
                r,
                ms(self.invoked_ns),
                ms(ret)
            ),
            _ => write!(
                f,
                "#{} {:?} -> unknown  [{:.3} ms .. never answered]",
                self.id,
                self.op,
                ms(self.invoked_ns)
            ),
        }
    }
}

/// Why an operation cannot be part of a history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "operation #{id} returns at {returned_ns} ns, not after its invocation at {invoked_ns} ns; take the return time after the answer arrived, on the same monotonic clock"
    )]
    ReturnNotAfterInvoke {
        id: usize,
        invoked_ns: u64,
        returned_ns: u64,
    },
}

/// A finished list of operations, recorded by a [`Recorder`] or built by hand (tests, imports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History<K, Op, Ret> {
    ops: Vec<Operation<K, Op, Ret>>,
}

impl<K, Op, Ret> Default for History<K, Op, Ret> {
    fn default() -> Self {
        History { ops: Vec::new() }
    }
}

impl<K, Op, Ret> History<K, Op, Ret> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operation that was answered with `ret`; returns its id.
    pub fn push_returned(
        &mut self,
        key: K,
        op: Op,
        ret: Ret,
        invoked_ns: u64,
        returned_ns: u64,
    ) -> Result<usize, HistoryError> {
        let id = self.ops.len();
        if returned_ns <= invoked_ns {
            return Err(HistoryError::ReturnNotAfterInvoke {
                id,
                invoked_ns,
                returned_ns,
            });
        }
        self.ops.push(Operation {
            id,
            key,
            op,
            outcome: Outcome::Returned(ret),
            invoked_ns,
            returned_ns: Some(returned_ns),
        });
        Ok(id)
    }

    /// Adds an operation whose outcome is unknown; returns its id.
    pub fn push_unknown(&mut self, key: K, op: Op, invoked_ns: u64) -> usize {
        let id = self.ops.len();
        self.ops.push(Operation {
            id,
            key,
            op,
            outcome: Outcome::Unknown,
            invoked_ns,
            returned_ns: None,
        });
        id
    }

    pub fn ops(&self) -> &[Operation<K, Op, Ret>] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Records a history from any number of threads or tokio tasks. Cheap to clone; clones record
/// into the same history.
///
/// Each event takes its time under one lock, from one monotonic clock, made strictly
/// increasing: an answer recorded before another operation's invocation is recorded really did
/// arrive before that request was sent, which is all linearizability needs from time.
pub struct Recorder<K, Op, Ret> {
    inner: Arc<Mutex<RecorderState<K, Op, Ret>>>,
}

impl<K, Op, Ret> Clone for Recorder<K, Op, Ret> {
    fn clone(&self) -> Self {
        Recorder {
            inner: self.inner.clone(),
        }
    }
}

struct RecorderState<K, Op, Ret> {
    start: Instant,
    last_ns: u64,
    history: History<K, Op, Ret>,
}

impl<K, Op, Ret> RecorderState<K, Op, Ret> {
    /// Nanoseconds since the start, strictly above every time handed out before.
    fn tick(&mut self) -> u64 {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_ns = now.max(self.last_ns + 1);
        self.last_ns
    }
}

impl<K, Op, Ret> Default for Recorder<K, Op, Ret> {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(RecorderState {
                start: Instant::now(),
                last_ns: 0,
                history: History::new(),
            })),
        }
    }
}

impl<K: Clone, Op: Clone, Ret: Clone> Recorder<K, Op, Ret> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `op` on `key` is about to be sent. Call it BEFORE the request leaves, and
    /// settle the returned handle once the answer is in; a handle dropped unsettled leaves the
    /// operation unknown.
    pub fn invoke(&self, key: K, op: Op) -> Invocation<K, Op, Ret> {
        let mut state = lock(&self.inner);
        let invoked_ns = state.tick();
        let id = state.history.push_unknown(key, op, invoked_ns);
        Invocation {
            recorder: self.clone(),
            id,
        }
    }

    /// A copy of everything recorded so far; operations still in flight are unknown in it.
    pub fn history(&self) -> History<K, Op, Ret> {
        lock(&self.inner).history.clone()
    }
}

/// An operation in flight. Settle it with [`Invocation::ok`]; dropping it (or
/// [`Invocation::unknown`]) leaves its outcome unknown, which is right whenever the client cannot
/// tell whether the request took effect.
#[must_use = "call .ok(answer) once the answer arrives; dropping the handle records an unknown outcome"]
pub struct Invocation<K, Op, Ret> {
    recorder: Recorder<K, Op, Ret>,
    id: usize,
}

impl<K, Op, Ret> Invocation<K, Op, Ret> {
    /// The operation's id in the history.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Records the answer. Call it AFTER the answer arrived.
    pub fn ok(self, ret: Ret) {
        let mut state = lock(&self.recorder.inner);
        let returned_ns = state.tick();
        let op = &mut state.history.ops[self.id];
        op.outcome = Outcome::Returned(ret);
        op.returned_ns = Some(returned_ns);
    }

    /// Records that the outcome is unknown (the same as dropping the handle; says so in code).
    pub fn unknown(self) {}
}

/// The recorder's data stays consistent if a holder panicked (each critical section is a push
/// or two assignments), so one panicking client task does not lose the history.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
