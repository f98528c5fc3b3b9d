//! The CASPaxos proposer, as a sans-IO state machine.
//!
//! One operation changes one key by a [`Change`]: a pure function of the key's current value (a
//! read is the identity). The proposer runs rounds until a majority of acceptors accepted the
//! result, or the attempts run out:
//!
//! 1. **Prepare** a fresh ballot on every acceptor; a majority of grants reports, per acceptor,
//!    the last proposal it accepted. The highest of those is the current value.
//! 2. Apply the change to it and **accept** the result at the same ballot on every acceptor; a
//!    majority of accepts means the new value is chosen: the operation is done.
//!
//! Conflicts (an acceptor promised a higher ballot), failures and round timeouts end a round; the
//! proposer then waits a randomized exponential backoff (`backoff_base_ms` doubling up to
//! `backoff_max_ms`, jitter from an injected seed so runs replay) and starts over with a ballot
//! above every one it has seen, at most `max_attempts` times.
//!
//! **One round trip per change.** Every accept also asks each acceptor to promise the next
//! ballot of the same proposer (`ballot.next()`). When a majority accepted, the proposer holds a
//! majority of grants for that next ballot, made while those acceptors had the value it just
//! wrote: exactly what a prepare of `ballot.next()` would have told it. So its next change of the
//! key skips the prepare and sends accept at `ballot.next()` straight away. If another proposer
//! intervened in between, its higher prepare moved the acceptors' promise past `ballot.next()`;
//! they answer conflict and the proposer falls back to a full round (the cached grant is dropped
//! on any failure). Grants are never reused: the acceptor moves its promise on every grant.
//!
//! **Exactly once across retries.** A failed accept round may still have reached some
//! acceptors. If a later prepare finds this operation's own proposal as the highest accepted one,
//! the change is not applied again: that proposal is re-proposed as it is, and the operation
//! reports its original before/after values.
//!
//! **Reads (and other no-ops) in one round trip.** If the change leaves the current value as it
//! is and a majority of grants report that same proposal, it is already chosen, and the accept
//! round is skipped.
//!
//! **No prepare for a new key (the fast round).** An operation submitted with
//! [`Proposer::submit_fast`] (the caller expects the key to be new, e.g. a WeChat ID nobody has
//! claimed) first applies its change to no value and sends it as `FastAccept` to every acceptor
//! (see [`super`]): if *all* accept, it is chosen in one round trip, and each has promised this
//! proposer's ballot, so the next change of the key takes one round trip too. If any acceptor
//! refuses (the key is not new) or does not answer in time, the operation falls back at once to
//! a full round, whose prepare sorts out what round zero may have chosen.
//!
//! Operations on one key from one proposer run one at a time in submission order (two at once
//! would only preempt each other); operations on different keys run concurrently.
//!
//! Shell loop: after every call ([`Proposer::submit`], [`Proposer::on_reply`],
//! [`Proposer::on_timer`]) drain [`Proposer::poll_output`]: send the requests, set and cancel
//! timers, hand out the results.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::Bytes;

use super::{AcceptedValue, Ballot, MAX_KEY_BYTES, ProposerId, Register, Reply, Request, majority};
use crate::rng::SplitMix64;

/// A change of one key: the new value as a function of the current one (`None`: no value).
///
/// Must be deterministic and free of side effects: the proposer may call it again on another
/// current value after a lost round, and its result is only valid if chosen. Returning the
/// current value unchanged makes it a no-op (the version stays).
pub trait Change: Clone + fmt::Debug {
    fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ChangeRejected>;
}

/// A change that cannot be applied to the current value at all (e.g. it does not decode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{0}")]
pub struct ChangeRejected(pub String);

/// The identity change: a linearizable read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Read;

impl Change for Read {
    fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ChangeRejected> {
        Ok(current.cloned())
    }
}

/// What a proposer needs to know; units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProposerConfig {
    /// Number of acceptors (one per region). Acceptors are addressed by index `0..acceptors`.
    pub acceptors: usize,
    /// How long a round waits for a majority before it counts as failed.
    pub round_timeout_ms: u64,
    /// Rounds an operation may start before it fails (at least 1).
    pub max_attempts: u32,
    /// Backoff before the 2nd attempt; doubles each attempt, capped at `backoff_max_ms`; the
    /// wait is uniform in [half of that, all of it]. Set it to about one round trip between
    /// regions: proposers that back off for less keep preempting each other.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Ask acceptors to promise the next ballot on every accept, so a proposer that made the
    /// last change of a key skips the prepare round of its next one.
    pub piggyback: bool,
    /// Operations submitted and not yet done (running or queued behind their key).
    pub max_pending_ops: usize,
    /// Keys for which the proposer remembers a granted next ballot (the oldest is forgotten).
    pub max_cached_keys: usize,
    /// Let [`Proposer::submit_fast`] try the fast round (off: it is a plain submit).
    pub fast_round: bool,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        Self {
            acceptors: 3,
            round_timeout_ms: 2_000,
            max_attempts: 8,
            // About one round trip between regions: backing off for less than that does not
            // let a dueling proposer finish.
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            piggyback: true,
            max_pending_ops: 10_000,
            max_cached_keys: 100_000,
            fast_round: true,
        }
    }
}

/// Most acceptors one proposer addresses; a registry has one per region.
pub const MAX_ACCEPTORS: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposerConfigError {
    #[error(
        "the proposer has {0} acceptors; configure 1..={MAX_ACCEPTORS} (one per region, an odd \
         number such as 3 or 5 so that a majority survives the loss of a region)"
    )]
    Acceptors(usize),
    #[error("{setting} is 0; set it to a positive number")]
    Zero { setting: &'static str },
    #[error(
        "backoff_base_ms ({base_ms}) is above backoff_max_ms ({max_ms}); raise backoff_max_ms or \
         lower backoff_base_ms"
    )]
    Backoff { base_ms: u64, max_ms: u64 },
}

impl ProposerConfig {
    pub fn validate(&self) -> Result<(), ProposerConfigError> {
        if self.acceptors == 0 || self.acceptors > MAX_ACCEPTORS {
            return Err(ProposerConfigError::Acceptors(self.acceptors));
        }
        let zero = |setting| Err(ProposerConfigError::Zero { setting });
        if self.round_timeout_ms == 0 {
            return zero("round_timeout_ms");
        }
        if self.max_attempts == 0 {
            return zero("max_attempts");
        }
        if self.max_pending_ops == 0 {
            return zero("max_pending_ops");
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(ProposerConfigError::Backoff {
                base_ms: self.backoff_base_ms,
                max_ms: self.backoff_max_ms,
            });
        }
        Ok(())
    }
}

/// Names one submitted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// Names one timer. An operation has at most one armed at a time; a new `SetTimer` for the same
/// op comes with a `CancelTimer` for the old one, and a stale timer that fires anyway is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId {
    pub op: OpId,
    pub seq: u32,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// Send `request` to acceptor `to` and feed its reply to [`Proposer::on_reply`]. Losing it
    /// is allowed (the round times out).
    Send {
        to: usize,
        request: Request,
    },
    /// Call [`Proposer::on_timer`] with `timer` after `after_ms`.
    SetTimer {
        timer: TimerId,
        after_ms: u64,
    },
    CancelTimer {
        timer: TimerId,
    },
    /// The operation ended; every submitted operation ends exactly once.
    Done {
        op: OpId,
        key: String,
        result: Result<Committed, ProposeError>,
    },
}

/// A chosen change: the key's value went from `before` to `after` (equal for a no-op).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Committed {
    pub before: Register,
    pub after: Register,
    /// Round trips this operation took, retries included (1 with the piggybacked prepare or
    /// for a settled read, 2 for a full round): for metrics.
    pub round_trips: u32,
}

/// Why a round ended without a majority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RoundFailure {
    #[error(
        "acceptors promised a higher ballot ({highest}): another proposer is changing this key \
         at the same time"
    )]
    Conflict { highest: Ballot },
    #[error(
        "{agreed} of the {needed} acceptors needed agreed within round_timeout_ms = \
         {round_timeout_ms}; check that a majority of registry nodes runs and is reachable"
    )]
    Timeout {
        agreed: usize,
        needed: usize,
        round_timeout_ms: u64,
    },
    #[error("acceptors could not answer: {reason}")]
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProposeError {
    #[error(
        "key {key:?}: no majority of the {acceptors} registry acceptors agreed in {attempts} \
         attempts (max_attempts); last round: {last}; {}",
        effect(*maybe_applied)
    )]
    NoMajority {
        key: String,
        acceptors: usize,
        attempts: u32,
        last: RoundFailure,
        maybe_applied: bool,
    },
    #[error("key {key:?}: the change cannot apply to the current value: {reason}; {}", effect(*maybe_applied))]
    Rejected {
        key: String,
        reason: ChangeRejected,
        maybe_applied: bool,
    },
}

fn effect(maybe_applied: bool) -> &'static str {
    if maybe_applied {
        "an earlier round may have applied the change, so read the key to learn whether it did"
    } else {
        "the change did not take effect"
    }
}

impl ProposeError {
    /// Whether the change may have been chosen although the operation failed.
    pub fn maybe_applied(&self) -> bool {
        match self {
            ProposeError::NoMajority { maybe_applied, .. }
            | ProposeError::Rejected { maybe_applied, .. } => *maybe_applied,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("a registry key is 1..={MAX_KEY_BYTES} bytes, this one is {0} bytes")]
    KeyLength(usize),
    #[error(
        "{max_pending_ops} registry operations are already pending (max_pending_ops); wait for \
         some to finish, or raise the limit"
    )]
    Busy { max_pending_ops: usize },
}

/// A proposal this operation sent to accept: a later round that finds `ballot` as the highest
/// accepted proposal knows the change was already applied, to `before`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnProposal {
    ballot: Ballot,
    before: Register,
    after: Register,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Refusal {
    Conflict(Ballot),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Phase {
    /// Behind another operation of the same key.
    Queued,
    Preparing {
        ballot: Ballot,
        promises: BTreeMap<usize, Option<AcceptedValue>>,
        refused: BTreeMap<usize, Refusal>,
    },
    Accepting {
        ballot: Ballot,
        before: Register,
        after: Register,
        acks: BTreeSet<usize>,
        refused: BTreeMap<usize, Refusal>,
    },
    /// The fast round: `after` (the change applied to no value) sent to every acceptor at round
    /// zero, each asked to promise `ballot`. Chosen only if all accept.
    FastAccepting {
        ballot: Ballot,
        after: Register,
        acks: BTreeSet<usize>,
    },
    BackingOff,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Op<C> {
    key: String,
    change: C,
    attempts: u32,
    round_trips: u32,
    phase: Phase,
    timer: Option<TimerId>,
    timer_seq: u32,
    own: Vec<OwnProposal>,
    /// Try the fast round before the first full round.
    fast: bool,
}

/// A majority granted `ballot` while holding `register`: the next change may accept directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Granted {
    ballot: Ballot,
    register: Register,
    stamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposer<C> {
    config: ProposerConfig,
    id: ProposerId,
    /// The highest ballot counter used or seen; the next fresh ballot is above it.
    counter: u64,
    rng: SplitMix64,
    next_op: u64,
    ops: BTreeMap<OpId, Op<C>>,
    /// Per key, its operations in order; the front one runs.
    keys: BTreeMap<String, VecDeque<OpId>>,
    granted: BTreeMap<String, Granted>,
    granted_by_stamp: BTreeMap<u64, String>,
    next_stamp: u64,
    /// Keys known to hold a value (bounded by `max_cached_keys`, oldest forgotten first):
    /// [`Proposer::submit_fast`] does not try the fast round on them.
    used: BTreeSet<String>,
    used_order: VecDeque<String>,
    /// Acceptors that left a fast round unanswered and have not answered anything since: while
    /// any is, the fast round (which needs every acceptor) is not tried, so a region that is
    /// down or cut off costs new keys nothing but their prepare.
    suspect: BTreeSet<usize>,
    outputs: VecDeque<Output>,
}

impl<C: Change> Proposer<C> {
    /// `seed` drives the backoff jitter only; give each proposer its own (e.g. from the OS at
    /// start-up) and fix it in tests.
    pub fn new(
        config: ProposerConfig,
        id: ProposerId,
        seed: u64,
    ) -> Result<Self, ProposerConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            id,
            counter: 0,
            rng: SplitMix64::new(seed),
            next_op: 0,
            ops: BTreeMap::new(),
            keys: BTreeMap::new(),
            granted: BTreeMap::new(),
            granted_by_stamp: BTreeMap::new(),
            next_stamp: 0,
            used: BTreeSet::new(),
            used_order: VecDeque::new(),
            suspect: BTreeSet::new(),
            outputs: VecDeque::new(),
        })
    }

    pub fn id(&self) -> ProposerId {
        self.id
    }

    pub fn config(&self) -> &ProposerConfig {
        &self.config
    }

    /// Operations submitted and not yet done.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }

    /// Whether this proposer knows `key` to hold a value (a bounded memory of recent keys).
    pub fn knows_used(&self, key: &str) -> bool {
        self.used.contains(key) || self.granted.contains_key(key)
    }

    /// Whether the next change of `key` will skip its prepare round.
    pub fn holds_next_ballot(&self, key: &str) -> bool {
        self.granted.contains_key(key)
    }

    /// Starts changing `key` by `change`; it ends with one [`Output::Done`].
    pub fn submit(&mut self, key: impl Into<String>, change: C) -> Result<OpId, SubmitError> {
        self.submit_with(key.into(), change, false)
    }

    /// Like [`Proposer::submit`], for a key the caller expects to be new: tries the fast round
    /// first (one round trip, no prepare), unless this proposer already holds a granted ballot
    /// for the key or `fast_round` is off. On a key that is not new it costs one extra round
    /// trip, answered at once by every acceptor that has seen the key.
    pub fn submit_fast(&mut self, key: impl Into<String>, change: C) -> Result<OpId, SubmitError> {
        let key = key.into();
        let fast = self.fast_round_possible() && !self.knows_used(&key);
        self.submit_with(key, change, fast)
    }

    /// Whether [`Proposer::submit_fast`] may try the fast round now: it is on, and every
    /// acceptor answered since it last left a fast round unanswered.
    pub fn fast_round_possible(&self) -> bool {
        self.config.fast_round && self.suspect.is_empty()
    }

    /// Remembers that `key` holds a value, so the fast round is not tried on it again.
    fn mark_used(&mut self, key: &str) {
        if self.config.max_cached_keys == 0 || self.used.contains(key) {
            return;
        }
        while self.used.len() >= self.config.max_cached_keys {
            let Some(oldest) = self.used_order.pop_front() else {
                break;
            };
            self.used.remove(&oldest);
        }
        self.used.insert(key.to_owned());
        self.used_order.push_back(key.to_owned());
    }

    fn submit_with(&mut self, key: String, change: C, fast: bool) -> Result<OpId, SubmitError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(SubmitError::KeyLength(key.len()));
        }
        if self.ops.len() >= self.config.max_pending_ops {
            return Err(SubmitError::Busy {
                max_pending_ops: self.config.max_pending_ops,
            });
        }
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(
            id,
            Op {
                key: key.clone(),
                change,
                attempts: 0,
                round_trips: 0,
                phase: Phase::Queued,
                timer: None,
                timer_seq: 0,
                own: Vec::new(),
                fast,
            },
        );
        let queue = self.keys.entry(key).or_default();
        queue.push_back(id);
        if queue.len() == 1 {
            self.start_attempt(id);
        }
        Ok(id)
    }

    /// Feeds the reply of acceptor `from`. Late, duplicate and unknown replies are ignored.
    pub fn on_reply(&mut self, from: usize, reply: Reply) {
        if from >= self.config.acceptors {
            return;
        }
        self.suspect.remove(&from);
        if let Reply::Conflict { promised, .. } = &reply {
            // Whatever it answers, a higher ballot tells us where to start next time.
            self.counter = self.counter.max(promised.counter);
        }
        let Some(&id) = self.keys.get(reply.key()).and_then(|q| q.front()) else {
            return;
        };
        let acceptors = self.config.acceptors;
        let needed = majority(acceptors);
        let op = self.ops.get_mut(&id).expect("every queued op exists");
        // Only replies to the running round count.
        let (round, agreed) = match &op.phase {
            Phase::Preparing {
                ballot, promises, ..
            } => (*ballot, promises.contains_key(&from)),
            Phase::Accepting { ballot, acks, .. } | Phase::FastAccepting { ballot, acks, .. } => {
                (*ballot, acks.contains(&from))
            }
            Phase::Queued | Phase::BackingOff => return,
        };
        if reply.ballot() != round {
            return;
        }
        let step = match (&mut op.phase, reply) {
            (
                Phase::Preparing {
                    promises, refused, ..
                },
                Reply::Promised { accepted, .. },
            ) => {
                // A grant outweighs a refusal of a duplicate of the same prepare.
                refused.remove(&from);
                promises.insert(from, accepted);
                if promises.len() >= needed {
                    Step::Promised
                } else {
                    Step::Wait
                }
            }
            (Phase::Accepting { acks, refused, .. }, Reply::Accepted { .. }) => {
                refused.remove(&from);
                acks.insert(from);
                if acks.len() >= needed {
                    Step::Chosen
                } else {
                    Step::Wait
                }
            }
            (Phase::FastAccepting { acks, .. }, Reply::Accepted { .. }) => {
                acks.insert(from);
                if acks.len() == acceptors {
                    Step::FastChosen
                } else {
                    Step::Wait
                }
            }
            // One refusal is enough: the fast round needs every acceptor. A refusal of a
            // duplicate of a fast accept that was done does not count.
            (Phase::FastAccepting { .. }, Reply::Conflict { .. } | Reply::Failed { .. }) => {
                if agreed {
                    Step::Wait
                } else {
                    Step::FastLost
                }
            }
            (
                Phase::Preparing { refused, .. } | Phase::Accepting { refused, .. },
                Reply::Conflict { promised, .. },
            ) => refuse(
                agreed,
                refused,
                from,
                Refusal::Conflict(promised),
                acceptors,
            ),
            (
                Phase::Preparing { refused, .. } | Phase::Accepting { refused, .. },
                Reply::Failed { reason, .. },
            ) => refuse(agreed, refused, from, Refusal::Failed(reason), acceptors),
            // A promise while accepting or an accept while preparing cannot answer this ballot.
            _ => Step::Wait,
        };
        match step {
            Step::Wait => {}
            Step::Promised => self.after_promises(id),
            Step::Chosen => self.chosen(id),
            Step::FastChosen => self.fast_chosen(id),
            Step::FastLost => {
                let key = self.ops[&id].key.clone();
                self.mark_used(&key);
                self.start_attempt(id)
            }
            Step::Lost(failure) => self.fail_round(id, failure),
        }
    }

    /// A timer set by [`Output::SetTimer`] fired.
    pub fn on_timer(&mut self, timer: TimerId) {
        let Some(op) = self.ops.get_mut(&timer.op) else {
            return;
        };
        if op.timer != Some(timer) {
            return;
        }
        op.timer = None;
        let needed = majority(self.config.acceptors);
        let agreed = match &op.phase {
            Phase::Preparing { promises, .. } => promises.len(),
            Phase::Accepting { acks, .. } => acks.len(),
            Phase::FastAccepting { acks, .. } => {
                // Someone did not answer: no more fast rounds until it does, and sort this one
                // out with a full round at once.
                let silent: Vec<usize> = (0..self.config.acceptors)
                    .filter(|i| !acks.contains(i))
                    .collect();
                self.suspect.extend(silent);
                self.start_attempt(timer.op);
                return;
            }
            Phase::BackingOff => {
                self.start_attempt(timer.op);
                return;
            }
            Phase::Queued => unreachable!("a queued op has no timer"),
        };
        self.fail_round(
            timer.op,
            RoundFailure::Timeout {
                agreed,
                needed,
                round_timeout_ms: self.config.round_timeout_ms,
            },
        );
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn start_attempt(&mut self, id: OpId) {
        let piggyback = self.config.piggyback;
        let key = self.ops[&id].key.clone();
        let granted = if piggyback {
            self.take_granted(&key)
        } else {
            None
        };
        let op = self.ops.get_mut(&id).expect("op exists");
        op.round_trips += 1;
        if std::mem::take(&mut op.fast) && granted.is_none() {
            match plan(op, None) {
                Err(reason) => return self.reject(id, reason),
                // A change that writes nothing to a new key has nothing to accept fast.
                Ok((before, after)) if before == after => {}
                Ok((before, after)) => {
                    self.counter += 1;
                    let ballot = Ballot {
                        counter: self.counter,
                        proposer: self.id,
                    };
                    return self.send_fast_accept(id, ballot, before, after);
                }
            }
        }
        op.attempts += 1;
        if let Some(granted) = granted {
            // The one-round-trip path: a majority granted `granted.ballot` holding this value.
            self.counter = self.counter.max(granted.ballot.counter);
            let current = AcceptedValue {
                ballot: Ballot::ZERO,
                register: granted.register,
            };
            match plan(op, Some(&current)) {
                Ok((before, after)) => self.send_accept(id, granted.ballot, before, after),
                Err(reason) => self.reject(id, reason),
            }
            return;
        }
        self.counter += 1;
        let ballot = Ballot {
            counter: self.counter,
            proposer: self.id,
        };
        op.phase = Phase::Preparing {
            ballot,
            promises: BTreeMap::new(),
            refused: BTreeMap::new(),
        };
        self.send_to_all(Request::Prepare { key, ballot });
        self.arm_timer(id, self.config.round_timeout_ms);
    }

    /// Every round asks every acceptor (a majority answers, or all in the fast round).
    fn send_to_all(&mut self, request: Request) {
        for to in 0..self.config.acceptors {
            self.outputs.push_back(Output::Send {
                to,
                request: request.clone(),
            });
        }
    }

    fn after_promises(&mut self, id: OpId) {
        let needed = majority(self.config.acceptors);
        let op = &self.ops[&id];
        let Phase::Preparing {
            ballot, promises, ..
        } = &op.phase
        else {
            unreachable!("promises complete only while preparing");
        };
        let ballot = *ballot;
        let mut highest = promises
            .values()
            .flatten()
            .max_by_key(|a| a.ballot)
            .cloned();
        let mut settled = promises
            .values()
            .filter(|a| a.as_ref().map(|h| h.ballot) == highest.as_ref().map(|h| h.ballot))
            .count()
            >= needed;
        if highest.as_ref().is_some_and(|h| h.ballot == Ballot::ZERO) {
            // Round zero (the fast round): several values may have been accepted there. One
            // could have been chosen only if every grant reports it (see `super`); then it is
            // the current value, and truly chosen once every acceptor reports it. Otherwise
            // nothing was chosen and the key has no value.
            let unanimous = promises.values().all(|a| a.as_ref() == highest.as_ref());
            settled = unanimous && promises.len() == self.config.acceptors;
            if !unanimous {
                highest = None;
            }
        }
        let current = highest
            .as_ref()
            .map(|h| h.register.clone())
            .unwrap_or(Register::EMPTY);
        let op = self.ops.get_mut(&id).expect("op exists");
        match plan(op, highest.as_ref()) {
            Err(reason) => self.reject(id, reason),
            Ok((before, after)) if settled && after == current => {
                // Already chosen (a majority holds it), and this change keeps it.
                let round_trips = op.round_trips;
                self.finish(
                    id,
                    Ok(Committed {
                        before,
                        after,
                        round_trips,
                    }),
                );
            }
            Ok((before, after)) => {
                op.round_trips += 1;
                self.send_accept(id, ballot, before, after);
            }
        }
    }

    fn send_fast_accept(&mut self, id: OpId, ballot: Ballot, before: Register, after: Register) {
        debug_assert_eq!(
            before,
            Register::EMPTY,
            "the fast round writes new keys only"
        );
        let op = self.ops.get_mut(&id).expect("op exists");
        op.own.push(OwnProposal {
            ballot: Ballot::ZERO,
            before,
            after: after.clone(),
        });
        op.phase = Phase::FastAccepting {
            ballot,
            after: after.clone(),
            acks: BTreeSet::new(),
        };
        let request = Request::FastAccept {
            key: op.key.clone(),
            ballot,
            register: after,
        };
        self.send_to_all(request);
        self.arm_timer(id, self.config.round_timeout_ms);
    }

    /// Every acceptor accepted at round zero and promised `ballot`: chosen, and the next change
    /// may accept at `ballot` straight away.
    fn fast_chosen(&mut self, id: OpId) {
        let op = &self.ops[&id];
        let Phase::FastAccepting { ballot, after, .. } = &op.phase else {
            unreachable!("a fast round is chosen only while fast accepting");
        };
        let committed = Committed {
            before: Register::EMPTY,
            after: after.clone(),
            round_trips: op.round_trips,
        };
        if self.config.piggyback {
            let key = op.key.clone();
            self.put_granted(key, *ballot, after.clone());
        }
        self.finish(id, Ok(committed));
    }

    fn send_accept(&mut self, id: OpId, ballot: Ballot, before: Register, after: Register) {
        let promise_next = self.config.piggyback;
        if promise_next {
            // Our next fresh ballot must be above the promise this accept asks for, or a retry
            // would run into our own promise.
            self.counter = self.counter.max(ballot.next().counter);
        }
        let op = self.ops.get_mut(&id).expect("op exists");
        if !op.own.iter().any(|o| o.ballot == ballot) {
            op.own.push(OwnProposal {
                ballot,
                before: before.clone(),
                after: after.clone(),
            });
        }
        op.phase = Phase::Accepting {
            ballot,
            before,
            after: after.clone(),
            acks: BTreeSet::new(),
            refused: BTreeMap::new(),
        };
        let request = Request::Accept {
            key: op.key.clone(),
            ballot,
            register: after,
            promise_next,
        };
        self.send_to_all(request);
        self.arm_timer(id, self.config.round_timeout_ms);
    }

    fn chosen(&mut self, id: OpId) {
        let op = &self.ops[&id];
        let Phase::Accepting {
            ballot,
            before,
            after,
            ..
        } = &op.phase
        else {
            unreachable!("a change is chosen only while accepting");
        };
        let committed = Committed {
            before: before.clone(),
            after: after.clone(),
            round_trips: op.round_trips,
        };
        if self.config.piggyback {
            let key = op.key.clone();
            self.put_granted(key, ballot.next(), after.clone());
        }
        self.finish(id, Ok(committed));
    }

    fn reject(&mut self, id: OpId, reason: ChangeRejected) {
        let op = &self.ops[&id];
        let error = ProposeError::Rejected {
            key: op.key.clone(),
            reason,
            maybe_applied: !op.own.is_empty(),
        };
        self.finish(id, Err(error));
    }

    fn fail_round(&mut self, id: OpId, failure: RoundFailure) {
        let key = self.ops[&id].key.clone();
        self.take_granted(&key);
        let op = self.ops.get_mut(&id).expect("op exists");
        if op.attempts >= self.config.max_attempts {
            let error = ProposeError::NoMajority {
                key,
                acceptors: self.config.acceptors,
                attempts: op.attempts,
                last: failure,
                maybe_applied: !op.own.is_empty(),
            };
            self.finish(id, Err(error));
            return;
        }
        op.phase = Phase::BackingOff;
        let exponent = (op.attempts - 1).min(32);
        let full_ms = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.config.backoff_max_ms);
        let wait_ms = self.rng.between(full_ms / 2, full_ms);
        self.arm_timer(id, wait_ms);
    }

    fn finish(&mut self, id: OpId, result: Result<Committed, ProposeError>) {
        if let Ok(c) = &result
            && c.after.value.is_some()
        {
            let key = self.ops[&id].key.clone();
            self.mark_used(&key);
        }
        let op = self.ops.remove(&id).expect("op exists");
        if let Some(timer) = op.timer {
            self.outputs.push_back(Output::CancelTimer { timer });
        }
        let queue = self.keys.get_mut(&op.key).expect("an op's key is queued");
        assert_eq!(
            queue.pop_front(),
            Some(id),
            "only the front op of a key runs"
        );
        let next = queue.front().copied();
        if next.is_none() {
            self.keys.remove(&op.key);
        }
        self.outputs.push_back(Output::Done {
            op: id,
            key: op.key,
            result,
        });
        if let Some(next) = next {
            self.start_attempt(next);
        }
    }

    fn arm_timer(&mut self, id: OpId, after_ms: u64) {
        let op = self.ops.get_mut(&id).expect("op exists");
        if let Some(old) = op.timer.take() {
            self.outputs.push_back(Output::CancelTimer { timer: old });
        }
        op.timer_seq += 1;
        let timer = TimerId {
            op: id,
            seq: op.timer_seq,
        };
        op.timer = Some(timer);
        self.outputs.push_back(Output::SetTimer { timer, after_ms });
    }

    fn take_granted(&mut self, key: &str) -> Option<Granted> {
        let granted = self.granted.remove(key)?;
        self.granted_by_stamp.remove(&granted.stamp);
        Some(granted)
    }

    fn put_granted(&mut self, key: String, ballot: Ballot, register: Register) {
        self.take_granted(&key);
        if self.config.max_cached_keys == 0 {
            return;
        }
        while self.granted.len() >= self.config.max_cached_keys {
            let Some((_, oldest)) = self.granted_by_stamp.pop_first() else {
                break;
            };
            self.granted.remove(&oldest);
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.granted_by_stamp.insert(stamp, key.clone());
        self.granted.insert(
            key,
            Granted {
                ballot,
                register,
                stamp,
            },
        );
    }
}

enum Step {
    Wait,
    Promised,
    Chosen,
    FastChosen,
    FastLost,
    Lost(RoundFailure),
}

/// Records a refusal from `from` (unless it already agreed in this round: a duplicate request
/// refused) and says whether a majority is still possible.
fn refuse(
    already_agreed: bool,
    refused: &mut BTreeMap<usize, Refusal>,
    from: usize,
    refusal: Refusal,
    acceptors: usize,
) -> Step {
    if already_agreed {
        return Step::Wait;
    }
    // A conflict ends the round at once: a higher ballot is out there, so this round can win only
    // with every other acceptor, and when one is unreachable (a region cut off) waiting for it
    // would cost a whole `round_timeout_ms` per conflict. Abandoning a round is always safe.
    let conflict = matches!(refusal, Refusal::Conflict(_));
    refused.insert(from, refusal);
    if !conflict && acceptors - refused.len() >= majority(acceptors) {
        return Step::Wait;
    }
    let highest = refused
        .values()
        .filter_map(|r| match r {
            Refusal::Conflict(b) => Some(*b),
            Refusal::Failed(_) => None,
        })
        .max();
    Step::Lost(match highest {
        Some(highest) => RoundFailure::Conflict { highest },
        None => RoundFailure::Failed {
            reason: refused
                .values()
                .filter_map(|r| match r {
                    Refusal::Failed(reason) => Some(reason.as_str()),
                    Refusal::Conflict(_) => None,
                })
                .collect::<Vec<_>>()
                .join("; "),
        },
    })
}

/// The (before, after) values of this operation given the current highest accepted proposal.
fn plan<C: Change>(
    op: &Op<C>,
    highest: Option<&AcceptedValue>,
) -> Result<(Register, Register), ChangeRejected> {
    // Round zero holds many proposers' values: there, ours is the one with our register.
    if let Some(h) = highest
        && let Some(own) = op
            .own
            .iter()
            .find(|o| o.ballot == h.ballot && (h.ballot != Ballot::ZERO || o.after == h.register))
    {
        // Our own earlier proposal: the change is already in it; finish that, don't reapply.
        debug_assert_eq!(own.after, h.register, "one register per ballot");
        return Ok((own.before.clone(), own.after.clone()));
    }
    let before = highest
        .map(|h| h.register.clone())
        .unwrap_or(Register::EMPTY);
    let value = op.change.apply(before.value.as_ref())?;
    if value == before.value {
        return Ok((before.clone(), before));
    }
    let version = before.version.checked_add(1).ok_or_else(|| {
        ChangeRejected("the key's version is at its maximum and cannot grow".into())
    })?;
    Ok((before, Register { version, value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::acceptor::Acceptor;
    use crate::storage::MemStorage;

    /// Appends one byte; applying it twice would show.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Push(u8);

    impl Change for Push {
        fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ChangeRejected> {
            if self.0 == 0 {
                return Err(ChangeRejected("zero is not allowed".into()));
            }
            let mut v = current.map(|b| b.to_vec()).unwrap_or_default();
            v.push(self.0);
            Ok(Some(v.into()))
        }
    }

    fn config() -> ProposerConfig {
        ProposerConfig {
            acceptors: 3,
            round_timeout_ms: 100,
            max_attempts: 4,
            backoff_base_ms: 10,
            backoff_max_ms: 25,
            piggyback: true,
            max_pending_ops: 3,
            max_cached_keys: 2,
            fast_round: true,
        }
    }

    fn proposer() -> Proposer<Push> {
        Proposer::new(config(), ProposerId::new(1, 1), 42).unwrap()
    }

    fn acceptors() -> Vec<Acceptor<MemStorage>> {
        (0..3).map(|_| Acceptor::new(MemStorage::new())).collect()
    }

    fn drain(p: &mut Proposer<Push>) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    /// Delivers requests to the acceptors in `to` (others are lost) and the replies back, until
    /// quiet; returns the outputs other than sends.
    fn exchange(
        p: &mut Proposer<Push>,
        acceptors: &mut [Acceptor<MemStorage>],
        to: &[usize],
    ) -> Vec<Output> {
        let mut rest = Vec::new();
        loop {
            let outs = drain(p);
            if outs.iter().all(|o| !matches!(o, Output::Send { .. })) {
                rest.extend(outs);
                return rest;
            }
            let mut replies = Vec::new();
            for o in outs {
                match o {
                    Output::Send { to: i, request } if to.contains(&i) => {
                        replies.push((i, acceptors[i].handle(request)))
                    }
                    Output::Send { .. } => {}
                    other => rest.push(other),
                }
            }
            for (i, r) in replies {
                p.on_reply(i, r);
            }
        }
    }

    fn last_timer(outs: &[Output]) -> (TimerId, u64) {
        outs.iter()
            .rev()
            .find_map(|o| match o {
                Output::SetTimer { timer, after_ms } => Some((*timer, *after_ms)),
                _ => None,
            })
            .expect("a timer was set")
    }

    fn done(outs: &[Output]) -> Vec<Result<Committed, ProposeError>> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Done { result, .. } => Some(result.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_retry_finishes_its_own_partly_accepted_proposal_instead_of_applying_twice() {
        let mut acc = acceptors();
        let mut p = proposer();
        p.submit("k", Push(7)).unwrap();
        // The prepare reaches everyone; the accept only acceptor 0 (no majority).
        let outs = drain(&mut p);
        for o in outs {
            if let Output::Send { to, request } = o {
                let r = acc[to].handle(request);
                p.on_reply(to, r);
            }
        }
        let mut timer = None;
        for o in drain(&mut p) {
            match o {
                Output::Send { to: 0, request } => {
                    let r = acc[0].handle(request);
                    p.on_reply(0, r);
                }
                Output::SetTimer { timer: t, .. } => timer = Some(t),
                _ => {}
            }
        }
        // Round timeout, backoff, and a new round that reaches acceptors 0 and 1.
        p.on_timer(timer.unwrap());
        let outs = drain(&mut p);
        p.on_timer(last_timer(&outs).0);
        let outs = exchange(&mut p, &mut acc, &[0, 1]);
        let results = done(&outs);
        let c = results[0].as_ref().unwrap();
        assert_eq!(c.before, Register::EMPTY);
        assert_eq!(
            c.after,
            Register {
                version: 1,
                value: Some(Bytes::from_static(&[7]))
            },
            "applied once"
        );
        assert_eq!(c.round_trips, 4);
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap_and_attempts_are_bounded() {
        let mut p = proposer();
        p.submit("k", Push(1)).unwrap();
        let mut outs = drain(&mut p);
        let mut backoffs = Vec::new();
        let mut prepares = 0;
        loop {
            prepares += outs
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Output::Send {
                            request: Request::Prepare { .. },
                            ..
                        }
                    )
                })
                .count();
            if let Some(result) = done(&outs).pop() {
                match result {
                    Err(ProposeError::NoMajority {
                        attempts,
                        last,
                        maybe_applied,
                        ..
                    }) => {
                        assert_eq!(attempts, 4);
                        assert!(matches!(
                            last,
                            RoundFailure::Timeout {
                                agreed: 0,
                                needed: 2,
                                ..
                            }
                        ));
                        assert!(!maybe_applied);
                    }
                    other => panic!("{other:?}"),
                }
                break;
            }
            // Nobody answers: the round times out, then the backoff runs out.
            let (round, after_ms) = last_timer(&outs);
            assert_eq!(after_ms, 100);
            p.on_timer(round);
            outs = drain(&mut p);
            if done(&outs).is_empty() {
                let (backoff, after_ms) = last_timer(&outs);
                backoffs.push(after_ms);
                p.on_timer(backoff);
                outs = drain(&mut p);
            }
        }
        assert_eq!(prepares, 4 * 3);
        assert_eq!(backoffs.len(), 3);
        // Full waits 10, 20, 25 (capped); each waits between half and all of it.
        for (wait, full) in backoffs.iter().zip([10u64, 20, 25]) {
            assert!((full / 2..=full).contains(wait), "{backoffs:?}");
        }
        assert_eq!(p.pending_ops(), 0);
    }

    #[test]
    fn stale_duplicate_and_foreign_replies_change_nothing() {
        let mut acc = acceptors();
        let mut p = proposer();
        p.submit("k", Push(1)).unwrap();
        let outs = drain(&mut p);
        let Output::Send { request, .. } = &outs[0] else {
            panic!()
        };
        let reply = acc[0].handle(request.clone());
        p.on_reply(0, reply.clone());
        p.on_reply(0, reply.clone()); // duplicate
        p.on_reply(7, reply.clone()); // no such acceptor
        let other_key = Reply::Promised {
            key: "other".into(),
            ballot: reply.ballot(),
            accepted: None,
        };
        p.on_reply(1, other_key);
        let stale = Reply::Promised {
            key: "k".into(),
            ballot: Ballot::ZERO,
            accepted: None,
        };
        p.on_reply(1, stale);
        assert_eq!(drain(&mut p), vec![], "one promise is not a majority");
        // A duplicated prepare is refused by the acceptor that granted it; that refusal must not
        // count against the round.
        let dup = acc[0].handle(request.clone());
        assert!(matches!(dup, Reply::Conflict { .. }));
        p.on_reply(0, dup);
        let reply1 = acc[1].handle(request.clone());
        p.on_reply(1, reply1);
        let outs = drain(&mut p);
        assert!(
            outs.iter().any(|o| matches!(
                o,
                Output::Send {
                    request: Request::Accept { .. },
                    ..
                }
            )),
            "{outs:?}"
        );
    }

    #[test]
    fn operations_on_one_key_run_in_order_and_others_run_alongside() {
        let mut acc = acceptors();
        let mut p = proposer();
        let a = p.submit("k", Push(1)).unwrap();
        let b = p.submit("k", Push(2)).unwrap();
        let c = p.submit("j", Push(3)).unwrap();
        assert_eq!(
            p.submit("x", Push(4)),
            Err(SubmitError::Busy { max_pending_ops: 3 })
        );
        assert_eq!(p.submit("", Push(4)), Err(SubmitError::KeyLength(0)));
        // Only the first op of "k" and the op of "j" start.
        let outs = drain(&mut p);
        let keys: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Send { request, .. } => Some(request.key().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["k", "k", "k", "j", "j", "j"]);
        for o in outs {
            if let Output::Send { to, request } = o {
                let r = acc[to].handle(request);
                p.on_reply(to, r);
            }
        }
        let outs = exchange(&mut p, &mut acc, &[0, 1, 2]);
        let order: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Done { op, result, .. } => {
                    Some((*op, result.as_ref().unwrap().after.value.clone()))
                }
                _ => None,
            })
            .collect();
        let pos = |id| order.iter().position(|(op, _)| *op == id).unwrap();
        assert!(pos(a) < pos(b));
        assert_eq!(order[pos(b)].1.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(order[pos(c)].1.as_deref(), Some(&[3u8][..]));
        assert_eq!(p.pending_ops(), 0);
    }

    #[test]
    fn a_refused_change_ends_without_writing() {
        let mut acc = acceptors();
        let mut p = proposer();
        p.submit("k", Push(0)).unwrap();
        let outs = exchange(&mut p, &mut acc, &[0, 1, 2]);
        match &done(&outs)[..] {
            [
                Err(
                    e @ ProposeError::Rejected {
                        maybe_applied: false,
                        ..
                    },
                ),
            ] => {
                assert!(e.to_string().contains("zero is not allowed"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            acc.iter()
                .all(|a| a.storage().get("k").unwrap().accepted.is_none())
        );
    }

    #[test]
    fn granted_next_ballots_are_remembered_for_a_bounded_number_of_keys() {
        let mut acc = acceptors();
        let mut p = proposer();
        for key in ["a", "b", "c"] {
            p.submit(key, Push(1)).unwrap();
            exchange(&mut p, &mut acc, &[0, 1, 2]);
        }
        // max_cached_keys = 2: the oldest is forgotten.
        assert!(!p.holds_next_ballot("a"));
        assert!(p.holds_next_ballot("b"));
        assert!(p.holds_next_ballot("c"));
        // A write to "a" takes a full round again, one to "c" a single round trip.
        p.submit("a", Push(2)).unwrap();
        let outs = exchange(&mut p, &mut acc, &[0, 1, 2]);
        assert_eq!(done(&outs)[0].as_ref().unwrap().round_trips, 2);
        p.submit("c", Push(2)).unwrap();
        let outs = exchange(&mut p, &mut acc, &[0, 1, 2]);
        assert_eq!(done(&outs)[0].as_ref().unwrap().round_trips, 1);
    }

    #[test]
    fn config_errors_name_the_setting() {
        let bad = |f: fn(&mut ProposerConfig)| {
            let mut c = config();
            f(&mut c);
            Proposer::<Push>::new(c, ProposerId(1), 0)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(|c| c.acceptors = 0).contains("acceptors"));
        assert!(bad(|c| c.acceptors = 16).contains("1..=15"));
        assert!(bad(|c| c.round_timeout_ms = 0).contains("round_timeout_ms"));
        assert!(bad(|c| c.max_attempts = 0).contains("max_attempts"));
        assert!(bad(|c| c.max_pending_ops = 0).contains("max_pending_ops"));
        assert!(bad(|c| c.backoff_base_ms = 100).contains("backoff_max_ms"));
        assert!(ProposerConfig::default().validate().is_ok());
    }

    fn value(bytes: &[u8]) -> Register {
        Register {
            version: 1,
            value: Some(Bytes::copy_from_slice(bytes)),
        }
    }

    #[test]
    fn a_fast_change_of_a_new_key_takes_one_round_trip_and_so_does_the_next() {
        let mut p = proposer();
        let mut a = acceptors();
        p.submit_fast("k", Push(7)).unwrap();
        let outs = exchange(&mut p, &mut a, &[0, 1, 2]);
        let first = done(&outs).remove(0).unwrap();
        assert_eq!(first.before, Register::EMPTY);
        assert_eq!(first.after, value(&[7]));
        assert_eq!(first.round_trips, 1);
        // Every acceptor promised this proposer's ballot: the next change skips its prepare.
        assert!(p.holds_next_ballot("k"));
        p.submit("k", Push(8)).unwrap();
        let outs = exchange(&mut p, &mut a, &[0, 1, 2]);
        let second = done(&outs).remove(0).unwrap();
        assert_eq!(second.after.value.as_deref(), Some(&[7u8, 8][..]));
        assert_eq!(second.round_trips, 1);
    }

    #[test]
    fn a_fast_change_of_a_used_key_falls_back_to_a_full_round_and_applies_once() {
        let mut a = acceptors();
        let mut other = Proposer::new(config(), ProposerId::new(2, 9), 1).unwrap();
        other.submit("k", Push(1)).unwrap();
        exchange(&mut other, &mut a, &[0, 1, 2]);
        let mut p = proposer();
        p.submit_fast("k", Push(2)).unwrap();
        let outs = exchange(&mut p, &mut a, &[0, 1, 2]);
        let c = done(&outs).remove(0).unwrap();
        assert_eq!(c.before.value.as_deref(), Some(&[1u8][..]));
        assert_eq!(c.after.value.as_deref(), Some(&[1u8, 2][..]));
        // The refused fast round, then prepare and accept.
        assert_eq!(c.round_trips, 3);
    }

    #[test]
    fn a_fast_round_short_of_one_acceptor_is_sorted_out_by_a_full_round() {
        let mut a = acceptors();
        let mut p = proposer();
        p.submit_fast("k", Push(5)).unwrap();
        // Acceptor 2 never answers: the fast round cannot be chosen; it times out and the full
        // round finds our round-zero value on both grants and finishes it without applying the
        // change again.
        let outs = exchange(&mut p, &mut a, &[0, 1]);
        assert!(done(&outs).is_empty());
        let (timer, _) = last_timer(&outs);
        p.on_timer(timer);
        let outs = exchange(&mut p, &mut a, &[0, 1]);
        let c = done(&outs).remove(0).unwrap();
        assert_eq!(c.before, Register::EMPTY);
        assert_eq!(c.after, value(&[5]));
    }

    #[test]
    fn split_round_zero_votes_mean_nothing_was_chosen() {
        let mut a = acceptors();
        // Two fast rounds split the acceptors: neither value can have been chosen.
        for (i, byte) in [(0, 1u8), (1, 2)] {
            let reply = a[i].handle(Request::FastAccept {
                key: "k".into(),
                ballot: Ballot {
                    counter: 1,
                    proposer: ProposerId(100 + u64::from(byte)),
                },
                register: value(&[byte]),
            });
            assert!(matches!(reply, Reply::Accepted { .. }));
        }
        let mut p = proposer();
        p.submit("k", Push(3)).unwrap();
        let outs = exchange(&mut p, &mut a, &[0, 1]);
        let c = done(&outs).remove(0).unwrap();
        assert_eq!(
            c.before,
            Register::EMPTY,
            "split round zero: the key is empty"
        );
        assert_eq!(c.after, value(&[3]));
    }

    #[test]
    fn an_acceptor_that_left_a_fast_round_unanswered_stops_fast_rounds_until_it_answers() {
        let mut a = acceptors();
        let mut p = proposer();
        p.submit_fast("k1", Push(1)).unwrap();
        // Acceptor 2 is down: the fast round times out and a full round finishes the change.
        let outs = exchange(&mut p, &mut a, &[0, 1]);
        let (timer, _) = last_timer(&outs);
        p.on_timer(timer);
        assert!(!p.fast_round_possible());
        let outs = exchange(&mut p, &mut a, &[0, 1]);
        assert!(done(&outs).remove(0).is_ok());
        // While it stays silent, a new key goes straight to a prepare.
        p.submit_fast("k2", Push(2)).unwrap();
        let sent = drain(&mut p);
        assert!(
            sent.iter().any(|o| matches!(
                o,
                Output::Send {
                    request: Request::Prepare { .. },
                    ..
                }
            )),
            "{sent:?}"
        );
        for o in sent {
            if let Output::Send { to, request } = o {
                let reply = a[to].handle(request);
                p.on_reply(to, reply);
            }
        }
        // Acceptor 2 answered that prepare: fast rounds are back.
        assert!(p.fast_round_possible());
        exchange(&mut p, &mut a, &[0, 1, 2]);
        p.submit_fast("k3", Push(3)).unwrap();
        let outs = exchange(&mut p, &mut a, &[0, 1, 2]);
        assert_eq!(done(&outs).remove(0).unwrap().round_trips, 1);
    }
}
