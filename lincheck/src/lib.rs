//! A linearizability checker for histories recorded by concurrent clients of a real system
//! (the registry, etcd, anything with per-key registers).
//!
//! Clients record what they did with a [`Recorder`]: [`Recorder::invoke`] before sending a
//! request, [`Invocation::ok`] with the answer, or nothing at all (drop the handle, or call
//! [`Invocation::unknown`]) when the outcome is unknown: a timeout, a killed node, a cut link.
//! [`check`] then decides whether some total order of the operations, consistent with real time
//! and with a sequential specification ([`SequentialSpec`]), explains every answer.
//!
//! # Why not stateright's `LinearizabilityTester`
//! DESIGN.md names stateright for this. Its tester is made for model-checked histories of a few
//! operations: it searches every interleaving with no memoization (exponential in the length of
//! a real history), has no step limit, allows one operation in flight per thread and only at the
//! end of that thread's history (a client that timed out and went on with its next request
//! cannot be expressed, except by inventing a thread per lost request), and cannot split a
//! history per key. This crate is the Wing–Gong search with Lowe's improvements and a cache of
//! visited configurations, as in Knossos and Porcupine:
//!
//! - **P-compositionality**: a map of independent registers is linearizable iff each key's
//!   sub-history is, so each key is checked on its own (10k operations over 100 keys is 100
//!   searches of ~100 operations, not one of 10k).
//! - **Memoization**: a configuration (set of operations linearized so far, model state) is
//!   explored once.
//! - **Unknown outcomes**: an operation without an answer may take effect at any moment after its
//!   invocation, or never; it is placed as if it returned after everything else, and the search
//!   succeeds once only such operations remain.
//! - **Reads placed at once**: an operation the spec marks read-only
//!   ([`SequentialSpec::is_read_only`]) is linearized as soon as it fits, with no alternative
//!   tried in its place, and reads of unknown outcome are dropped.
//! - **Bounded**: at most [`CheckOptions::max_steps_per_key`] search steps per key, then
//!   [`Verdict::GaveUp`] says so instead of hanging.
//!
//! # Cost
//! Linear-ish in the number of operations, exponential in how many overlap on ONE key. Release
//! build, `examples/check_time.rs`: 10k operations over 100 keys by 16 clients (5% unknown)
//! check in ~2 ms; 10k on ONE key take ~0.1 s with 8 overlapping clients, ~1.5 s with 12, and
//! give up (2M steps) with 16. Record histories with many keys, or few clients per key.
//!
//! A violation is explained by the furthest point any order reached: the operation that could
//! not take effect there, what the model would have answered in each state it was tried in, the
//! operations concurrent with it and the last ones before it ([`Violation`], readable with
//! `Display`).
//!
//! ```
//! use homeport_lincheck::models::{Registry, RegistryOp, RegistryRet};
//! use homeport_lincheck::{CheckOptions, Recorder, Verdict, check};
//!
//! let rec: Recorder<String, RegistryOp<String>, RegistryRet<String>> = Recorder::new();
//! // In each client task: invoke before the request leaves, settle after the answer.
//! let claim = rec.invoke("wxid/szdy01".into(), RegistryOp::Claim("sh-1".into()));
//! claim.ok(RegistryRet::Claimed);
//! let lost = rec.invoke("wxid/szdy01".into(), RegistryOp::Claim("hk-2".into()));
//! drop(lost); // timed out: unknown outcome
//! let verdict = check(&Registry::new(), &rec.history(), &CheckOptions::default());
//! assert!(verdict.is_linearizable(), "{verdict}");
//! ```

mod check;
mod history;
pub mod models;

pub use check::{CheckOptions, GaveUp, Summary, Verdict, Violation, check};
pub use history::{History, HistoryError, Invocation, Operation, Outcome, Recorder};

use std::fmt::Debug;
use std::hash::Hash;

/// The sequential behaviour of ONE object (one key): what each operation returns and how it
/// changes the state when operations happen one at a time. [`check`] applies it per key.
///
/// `step` must be deterministic: the same state and operation always give the same answer and
/// next state (the search relies on it to cache configurations).
pub trait SequentialSpec {
    /// The object's state; hashed in the search's cache, so keep it small.
    type State: Clone + Eq + Hash + Debug;
    type Op: Clone + Debug;
    type Ret: Clone + Debug + PartialEq;

    /// The state of a key nobody has touched yet.
    fn init(&self) -> Self::State;

    /// What `op` answers in `state`, and the state after it.
    fn step(&self, state: &Self::State, op: &Self::Op) -> (Self::State, Self::Ret);

    /// Whether `op` leaves EVERY state as it was (a read). Optional, and only a speed-up: the
    /// search then places a read as soon as it fits instead of trying it later too (sound: a
    /// read that fits now can move here from any later place in an order), and ignores reads of
    /// unknown outcome (they constrain nothing). Answer `false` when unsure; a wrong `true`
    /// makes the checker wrong.
    fn is_read_only(&self, op: &Self::Op) -> bool {
        let _ = op;
        false
    }
}
