//! The registry's operations, each a short sequence of CASPaxos proposals, as a sans-IO state
//! machine on top of a [`Proposer`].
//!
//! # Holding a WeChat ID: one at a time, crash-safe
//!
//! A user holds at most one WeChat ID. What the user holds is written in one place, the user's
//! record `user/<uid>` ([`UserIds::held`]); the ID's own register `wxid/<id>` carries a
//! [`Reservation`] naming the user and the *transition* that reserved it. Two invariants:
//!
//! - **I1** (held ⇒ reserved): if `user/u` holds `(x, t)`, then `wxid/x` is reserved by `(u, t)`.
//!   Since `wxid/x` is one register with one value, no two users hold `x`, ever.
//! - **I2** (reserved ⇒ backed, or stale for good): a reservation `(u, t)` of `x` is *backed* if
//!   `user/u` holds `(x, t)` or has transition `t` to `x` pending ([`UserIds::backs`]). A
//!   reservation that is not backed while the record is past `t` (`last_transition >= t`) can
//!   never become backed again (transition ids only grow, and a transition commits only while
//!   pending), so anyone may free it. Whoever checks a reservation reads the owner's record with
//!   a *fence* ([`RegistryChange::Fence`]), which first moves `last_transition` up to `t`: a
//!   reservation made ahead of its begin (below) is then either backed or stale for good.
//!
//! Claiming `y` (or releasing, `to = None`) is a *transition* of the user record, each step one
//! proposal and each step idempotent, so that any proposer can roll a half-done transition
//! forward:
//!
//! 1. **Begin** on `user/u`: record `pending = {t, from: held, to: y}` with a fresh `t`
//!    (refused while another transition is pending: that one is rolled forward first).
//! 2. **Reserve** `wxid/y` for `(u, t)` if free or already `u`'s. If another user `v` has it,
//!    read `user/v`: a backed reservation means `y` is taken (go to 2b); a stale one is freed
//!    with a release conditional on exactly `(v, t_v)`, and 2 is retried.
//!    2b. **Abort** on `user/u`: drop `pending` unless it committed meanwhile; answer "taken by v".
//! 3. **Commit** on `user/u`: `held = (y, t)` if `t` is still pending. This is the moment the
//!    user's ID changes; I1 holds because step 2 came first.
//! 4. **Release** `wxid/x` (the old ID) conditional on exactly `(u, t_x)`: after 3, so I1 holds.
//! 5. **Finish** on `user/u`: clear `pending`, remember `(t, committed)`.
//!
//! **A new user's claim speculates.** A node that knows nothing of the user (no value of
//! `user/u` in its memory) bets that this is the user's first transition, whose id is always
//! [`FIRST_TRANSITION`]: it sends the begin and a reserve of `y` for `(u, 1)` (only if `y` is
//! free, [`RegistryChange::ReserveIfFree`]) at the same time. If the begin got transition 1,
//! the reservation is its step 2, made early; if it got another id, the reservation is unbacked
//! and stale for good (the record is past 1), and is freed before the ordinary step 2. Before
//! the begin lands, a checker that finds `(u, 1)` fences the record at 1, so the begin gets
//! transition 2 and the early reservation stays stale.
//!
//! **A first ID is answered at step 2.** When the user holds no ID yet (`from` is none), the
//! claim answers as soon as its reservation is chosen: from then on the transition is backed
//! (I2), nothing aborts a backed transition (abort happens only when the reserve step finds the
//! ID taken), and lookups already report the ID as this user's (`Claiming`). So step 2 is the
//! claim's linearization point; the commit (step 3, which also finishes: there is no old ID to
//! release in step 4) runs behind the answer, and if it fails, whoever touches the user next
//! finishes it (a [`Operation::UserWxid`] rolls a pending transition forward before answering,
//! so it never trails an answered claim). With the fast round (`Proposer::submit_fast`) on the
//! new user record and the new ID and the speculation above, such a claim is answered after
//! one round trip (both fast rounds in the same batch to each acceptor) and no prepare. An ID *change* still answers after step 5, so the old ID is free when it answers.
//!
//! A crash anywhere leaves `pending` in the user record: the next operation on the user (Begin
//! finds it), a claim by someone else that runs into the reservation (step 2 rolls nothing of
//! another user forward, but its staleness check frees only dead reservations), or a sweeper
//! ([`Operation::RollForward`] over the `user/` keys with a pending transition) finishes it. No
//! ID is lost: an ID stays reserved only while backed (or until someone wants it and finds it
//! stale), and the old ID is released by step 4 of whoever finishes the transition.
//!
//! Races between two proposers rolling the same transition are settled by the user record: commit
//! and abort are both conditional on "pending is `t` and not committed", so exactly one wins, and
//! the loser learns which ([`Outcome::Gone`] carries the record, whose `last_finished` says). A
//! proposer that reserved `y` for a transition that turned out aborted frees it again (a
//! release conditional on `(u, t)`), and if it crashes first the reservation is stale (I2).
//!
//! Every step is idempotent, because CASPaxos may apply a change twice: a round whose accept
//! reached only some acceptors can be finished by another proposer's round, and the retry then
//! applies the change again on top. Reserve, the conditional release, commit, abort and finish
//! are idempotent by their conditions; a begin carries the operation's [`OpTag`], so a retried
//! begin finds its own transition (pending, or the last finished one) instead of mistaking it
//! for another operation's.
//!
//! An operation whose caller never got its answer (its node crashed, or it failed with
//! [`RegistryError::Unavailable`]) may still take effect later: a value it got accepted by one
//! acceptor can be picked up by any later round. That is linearizable (the operation never
//! ended), and the transition protocol keeps the invariants whatever the timing.
//!
//! Lookups read `wxid/x` and then the owner's record, and report the ID free if the reservation
//! is not backed. `Claiming` (a transition to the ID is pending) counts as taken for others.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::names::{NameError, WxId, WxidError, check_region, check_uid};
use crate::paxos::proposer::{
    Committed, OpId, Output, ProposeError, Proposer, ProposerConfig, ProposerConfigError,
    SubmitError, TimerId,
};
use crate::paxos::{ProposerId, Reply, Request};
use crate::storage::KeyState;
use crate::values::{
    Goal, HomeEntry, OpTag, Outcome, RegistryChange, Reservation, Transition, UserIds, decode_home,
    decode_reservation, decode_user, home_key, user_key, wxid_key,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub proposer: ProposerConfig,
    /// Proposals one operation may make before it gives up (a claim takes 5 without
    /// contention; every concurrent transition of the same user or stale reservation adds a few).
    pub max_steps_per_operation: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            proposer: ProposerConfig::default(),
            max_steps_per_operation: 32,
        }
    }
}

/// Names one submitted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What a caller can ask of the registry. Build them with the checking constructors
/// ([`Operation::claim`], ...) so every name is valid before anything is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Make `wxid` the user's WeChat ID (releasing the one held now). Idempotent.
    Claim {
        wxid: WxId,
        uid: String,
    },
    /// Stop holding `wxid`; only its holder may.
    Release {
        wxid: WxId,
        uid: String,
    },
    /// Who holds `wxid`.
    Lookup {
        wxid: WxId,
    },
    /// Which ID `uid` holds.
    UserWxid {
        uid: String,
    },
    /// Finish the user's pending transition, if any (for a sweeper).
    RollForward {
        uid: String,
    },
    GetHome {
        uid: String,
    },
    /// Set the user's home region if its epoch is `expected_epoch` (`None`: no entry yet).
    SetHome {
        uid: String,
        region: String,
        expected_epoch: Option<u64>,
    },
}

impl Operation {
    pub fn claim(wxid: &str, uid: &str) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        Ok(Operation::Claim {
            wxid: WxId::parse(wxid)?,
            uid: uid.to_owned(),
        })
    }

    pub fn release(wxid: &str, uid: &str) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        Ok(Operation::Release {
            wxid: WxId::parse(wxid)?,
            uid: uid.to_owned(),
        })
    }

    pub fn lookup(wxid: &str) -> Result<Operation, RegistryError> {
        Ok(Operation::Lookup {
            wxid: WxId::parse(wxid)?,
        })
    }

    pub fn user_wxid(uid: &str) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        Ok(Operation::UserWxid {
            uid: uid.to_owned(),
        })
    }

    pub fn roll_forward(uid: &str) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        Ok(Operation::RollForward {
            uid: uid.to_owned(),
        })
    }

    pub fn get_home(uid: &str) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        Ok(Operation::GetHome {
            uid: uid.to_owned(),
        })
    }

    pub fn set_home(
        uid: &str,
        region: &str,
        expected_epoch: Option<u64>,
    ) -> Result<Operation, RegistryError> {
        check_uid(uid)?;
        check_region(region)?;
        Ok(Operation::SetHome {
            uid: uid.to_owned(),
            region: region.to_owned(),
            expected_epoch,
        })
    }

    fn check(&self) -> Result<(), RegistryError> {
        match self {
            Operation::Claim { uid, .. }
            | Operation::Release { uid, .. }
            | Operation::UserWxid { uid }
            | Operation::RollForward { uid }
            | Operation::GetHome { uid } => check_uid(uid)?,
            Operation::SetHome { uid, region, .. } => {
                check_uid(uid)?;
                check_region(region)?;
            }
            Operation::Lookup { .. } => {}
        }
        Ok(())
    }
}

/// For a sweeper that pages through an acceptor's `user/` keys ([`RedbStorage::scan`]): the
/// operation to run if this acceptor's copy of the record shows a transition pending. Only a
/// hint (an acceptor may hold an old or unchosen copy); the [`Operation::RollForward`] itself
/// reads the chosen record and does nothing if no transition is pending. Run it for records
/// untouched for a while, so the sweeper does not race users' own operations.
///
/// [`RedbStorage::scan`]: crate::storage::RedbStorage::scan
pub fn sweep_candidate(key: &str, state: &KeyState) -> Option<Operation> {
    let uid = key.strip_prefix("user/")?;
    let accepted = state.accepted.as_ref()?;
    let user = decode_user(accepted.register.value.as_ref()).ok()?;
    user.pending?;
    check_uid(uid).ok()?;
    Some(Operation::RollForward {
        uid: uid.to_owned(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WxidStatus {
    Free,
    Held {
        uid: String,
    },
    /// A transition of `uid` to this ID is under way: taken, not yet held.
    Claiming {
        uid: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Answer {
    /// The user now holds the ID; `released` is the ID given up for it.
    Claimed {
        released: Option<String>,
    },
    /// The user already held the ID; nothing changed.
    AlreadyHeld,
    Released,
    /// Nobody held the ID; nothing changed.
    AlreadyFree,
    Status(WxidStatus),
    /// The ID the user holds, and whether a change of it is under way.
    UserWxid {
        held: Option<String>,
        changing: bool,
    },
    /// `transition`: the pending transition found and finished (`committed` says how).
    RolledForward {
        transition: Option<(u64, bool)>,
    },
    Home(Option<HomeEntry>),
    HomeSet(HomeEntry),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Wxid(#[from] WxidError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("WeChat ID {wxid:?} is taken by user {owner:?}; choose another ID")]
    Taken { wxid: String, owner: String },
    #[error(
        "WeChat ID {wxid:?} is held by user {owner:?}, not by {uid:?}; only its holder may release it"
    )]
    NotOwner {
        wxid: String,
        uid: String,
        owner: String,
    },
    #[error(
        "the home entry of {uid:?} is {current:?}, not the expected epoch; read it again and \
         retry with its epoch"
    )]
    HomeConflict {
        uid: String,
        current: Option<HomeEntry>,
    },
    #[error(
        "gave up after {steps} registry proposals (max_steps_per_operation) on {subject}: other \
         changes of the same user or ID kept interfering; retry later"
    )]
    Contended { subject: String, steps: u32 },
    #[error(
        "the registry could not complete this operation: {source}; a WeChat ID change left half \
         done is finished by the next operation on the user or by the sweeper, so retrying is safe"
    )]
    Unavailable { source: ProposeError },
    #[error("registry value at key {key:?} is damaged: {problem}")]
    Corrupt { key: String, problem: String },
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// What the shell must do (as [`Output`], plus the answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOutput {
    Send {
        to: usize,
        request: Request,
    },
    SetTimer {
        timer: TimerId,
        after_ms: u64,
    },
    CancelTimer {
        timer: TimerId,
    },
    /// Every submitted operation ends with exactly one `Done`.
    Done {
        request: RequestId,
        result: Result<Answer, RegistryError>,
    },
}

/// One proposal a machine wants made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Proposal {
    key: String,
    change: RegistryChange,
}

enum Step {
    Propose(Proposal),
    Done(Result<Answer, RegistryError>),
    /// Answer the caller now, and make this proposal to finish the operation's work in the
    /// background (its outcome is nobody's answer).
    AnswerThen(Result<Answer, RegistryError>, Proposal),
    /// Make both proposals at once (on different keys); their outcomes come one by one.
    ProposeBoth(Proposal, Proposal),
    /// Nothing to do until the other proposal in flight ends.
    Wait,
}

/// The sans-IO registry client: submit operations, feed acceptor replies and timers, drain
/// outputs. It owns a [`Proposer`]; acceptors are addressed by index.
#[derive(Debug, Clone)]
pub struct Registry {
    proposer: Proposer<RegistryChange>,
    max_steps: u32,
    next_request: u64,
    running: BTreeMap<RequestId, Running>,
    by_op: BTreeMap<OpId, (RequestId, Proposal)>,
    outputs: VecDeque<RegistryOutput>,
    /// Background work (after an early answer) that ended in an error.
    background_failures: u64,
    /// Background proposals held back until the next proposal or [`DEFER_BACKGROUND_MS`].
    deferred: Vec<(RequestId, Proposal)>,
    defer_timer: Option<TimerId>,
    defer_seq: u32,
}

#[derive(Debug, Clone)]
struct Running {
    machine: Machine,
    /// The caller has its answer; what runs now is background work.
    answered: bool,
    steps: u32,
    /// What the operation is about, for errors.
    subject: String,
}

impl Registry {
    pub fn new(
        config: RegistryConfig,
        id: ProposerId,
        seed: u64,
    ) -> Result<Self, ProposerConfigError> {
        if config.max_steps_per_operation == 0 {
            return Err(ProposerConfigError::Zero {
                setting: "max_steps_per_operation",
            });
        }
        Ok(Self {
            proposer: Proposer::new(config.proposer, id, seed)?,
            max_steps: config.max_steps_per_operation,
            next_request: 0,
            running: BTreeMap::new(),
            by_op: BTreeMap::new(),
            outputs: VecDeque::new(),
            background_failures: 0,
            deferred: Vec::new(),
            defer_timer: None,
            defer_seq: 0,
        })
    }

    pub fn proposer(&self) -> &Proposer<RegistryChange> {
        &self.proposer
    }

    /// Operations submitted and not yet done, background work of answered ones included.
    pub fn pending_operations(&self) -> usize {
        self.running.len()
    }

    /// Background work after an early answer that failed (its transition is finished later by
    /// the user's next operation or the sweeper); for metrics.
    pub fn background_failures(&self) -> u64 {
        self.background_failures
    }

    /// Starts `op`; its answer comes as [`RegistryOutput::Done`]. Invalid names are refused
    /// here, before anything is proposed.
    pub fn submit(&mut self, op: Operation) -> Result<RequestId, RegistryError> {
        op.check()?;
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let tag = OpTag {
            proposer: self.proposer.id().0,
            request: id.0,
            begin: 0,
        };
        // A claim for a user this node has not seen write anything may be the user's first:
        // then its begin and a speculative reserve go out together.
        let speculate = match &op {
            Operation::Claim { uid, .. } => {
                self.proposer.fast_round_possible() && !self.proposer.knows_used(&user_key(uid))
            }
            _ => false,
        };
        let (machine, first, subject) = Machine::start(op, tag, speculate);
        self.running.insert(
            id,
            Running {
                machine,
                answered: false,
                steps: 0,
                subject,
            },
        );
        self.advance(id, first);
        self.pump();
        Ok(id)
    }

    pub fn on_reply(&mut self, from: usize, reply: Reply) {
        self.proposer.on_reply(from, reply);
        self.pump();
    }

    pub fn on_timer(&mut self, timer: TimerId) {
        if timer.op == DEFER_TIMER_OP {
            if self.defer_timer == Some(timer) {
                self.defer_timer = None;
                self.flush_deferred();
            }
        } else {
            self.proposer.on_timer(timer);
        }
        self.pump();
    }

    /// Submits the background proposals held back (see [`DEFER_BACKGROUND_MS`]).
    fn flush_deferred(&mut self) {
        if let Some(timer) = self.defer_timer.take() {
            self.outputs
                .push_back(RegistryOutput::CancelTimer { timer });
        }
        for (request, p) in std::mem::take(&mut self.deferred) {
            // A held-back proposal's operation waits for it: it cannot have ended.
            debug_assert!(self.running.contains_key(&request));
            self.advance(request, Step::Propose(p));
        }
    }

    pub fn poll_output(&mut self) -> Option<RegistryOutput> {
        self.outputs.pop_front()
    }

    fn pump(&mut self) {
        while let Some(out) = self.proposer.poll_output() {
            match out {
                Output::Send { to, request } => {
                    self.outputs.push_back(RegistryOutput::Send { to, request })
                }
                Output::SetTimer { timer, after_ms } => self
                    .outputs
                    .push_back(RegistryOutput::SetTimer { timer, after_ms }),
                Output::CancelTimer { timer } => self
                    .outputs
                    .push_back(RegistryOutput::CancelTimer { timer }),
                Output::Done { op, result, .. } => {
                    let (request, proposal) = self
                        .by_op
                        .remove(&op)
                        .expect("every op was submitted by a request");
                    if !self.running.contains_key(&request) {
                        // The other of two proposals in flight ended the operation already.
                        continue;
                    }
                    let step = self.on_done(request, proposal, result);
                    self.advance(request, step);
                }
            }
        }
    }

    fn on_done(
        &mut self,
        request: RequestId,
        proposal: Proposal,
        result: Result<Committed, ProposeError>,
    ) -> Step {
        let committed = match result {
            Ok(c) => c,
            // Registry changes refuse only values they cannot decode (or a client bug).
            Err(ProposeError::Rejected { key, reason, .. }) => {
                return Step::Done(Err(RegistryError::Corrupt {
                    key,
                    problem: reason.0,
                }));
            }
            Err(source) => return Step::Done(Err(RegistryError::Unavailable { source })),
        };
        let outcome = match proposal.change.outcome(committed.before.value.as_ref()) {
            Ok(o) => o,
            Err(e) => {
                return Step::Done(Err(RegistryError::Corrupt {
                    key: proposal.key,
                    problem: e.0,
                }));
            }
        };
        let run = self
            .running
            .get_mut(&request)
            .expect("a proposal's request runs");
        run.machine.on_outcome(&proposal.key, outcome)
    }

    fn advance(&mut self, request: RequestId, step: Step) {
        let step = match step {
            Step::AnswerThen(answer, p) => {
                let run = self.running.get_mut(&request).expect("running");
                debug_assert!(!run.answered, "one answer per operation");
                run.answered = true;
                self.outputs.push_back(RegistryOutput::Done {
                    request,
                    result: answer,
                });
                // Held back to travel with the next proposal that goes out, so both share one
                // batch, and one fsync, at every acceptor.
                self.deferred.push((request, p));
                if self.deferred.len() >= MAX_DEFERRED {
                    self.flush_deferred();
                } else if self.defer_timer.is_none() {
                    self.defer_seq = self.defer_seq.wrapping_add(1);
                    let timer = TimerId {
                        op: DEFER_TIMER_OP,
                        seq: self.defer_seq,
                    };
                    self.defer_timer = Some(timer);
                    self.outputs.push_back(RegistryOutput::SetTimer {
                        timer,
                        after_ms: DEFER_BACKGROUND_MS,
                    });
                }
                return;
            }
            Step::ProposeBoth(a, b) => {
                self.advance(request, Step::Propose(a));
                if self.running.contains_key(&request) {
                    self.advance(request, Step::Propose(b));
                }
                return;
            }
            Step::Wait => return,
            other => other,
        };
        let result = match step {
            Step::AnswerThen(..) | Step::ProposeBoth(..) | Step::Wait => {
                unreachable!("handled above")
            }
            Step::Done(result) => result,
            Step::Propose(p) => {
                let run = self.running.get_mut(&request).expect("running");
                let run_answered = run.answered;
                run.steps += 1;
                if run.steps > self.max_steps {
                    Err(RegistryError::Contended {
                        subject: run.subject.clone(),
                        steps: self.max_steps,
                    })
                } else {
                    // A claim's first steps usually meet new keys (a new user, an ID nobody
                    // had): try them in the fast round, one round trip without a prepare.
                    let expect_new = matches!(
                        p.change,
                        RegistryChange::Begin {
                            goal: Goal::Claim(_),
                            ..
                        } | RegistryChange::Reserve { .. }
                            | RegistryChange::ReserveIfFree { .. }
                    );
                    let submitted = if expect_new {
                        self.proposer.submit_fast(p.key.clone(), p.change.clone())
                    } else {
                        self.proposer.submit(p.key.clone(), p.change.clone())
                    };
                    match submitted {
                        Ok(op) => {
                            self.by_op.insert(op, (request, p));
                            if !run_answered && !self.deferred.is_empty() {
                                self.flush_deferred();
                            }
                            return;
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            }
        };
        let run = self.running.remove(&request).expect("running");
        if run.answered {
            // Background work ended; if it failed, the transition it was finishing stays
            // pending for the next operation on the user or the sweeper.
            self.background_failures += u64::from(result.is_err());
            return;
        }
        self.outputs
            .push_back(RegistryOutput::Done { request, result });
    }
}

#[derive(Debug, Clone)]
enum Machine {
    Lookup(Lookup),
    Id(IdChange),
    /// Read the user record; a pending transition is rolled forward first (`rolled`), so the
    /// answer never trails a claim that was already answered.
    UserWxid {
        uid: String,
        tag: OpTag,
        rolled: bool,
    },
    /// The roll-forward of a [`Machine::UserWxid`].
    UserWxidRoll {
        roll: IdChange,
        uid: String,
    },
    GetHome,
    SetHome {
        uid: String,
    },
}

impl Machine {
    fn start(op: Operation, tag: OpTag, speculate: bool) -> (Machine, Step, String) {
        let (machine, first, subject) = match op {
            Operation::Claim { wxid, uid } if speculate => {
                let subject = format!("user {uid:?}");
                let (m, step) = IdChange::start_speculating(uid, wxid, tag);
                return (Machine::Id(m), step, subject);
            }
            other => Machine::start_one(other, tag),
        };
        (machine, Step::Propose(first), subject)
    }

    fn start_one(op: Operation, tag: OpTag) -> (Machine, Proposal, String) {
        match op {
            Operation::Lookup { wxid } => {
                let (m, p) = Lookup::start(wxid.as_str().to_owned());
                (Machine::Lookup(m), p, format!("WeChat ID {wxid}"))
            }
            Operation::Claim { wxid, uid } => {
                let subject = format!("user {uid:?}");
                let (m, p) = IdChange::start(uid, IdGoal::Claim(wxid), tag);
                (Machine::Id(m), p, subject)
            }
            Operation::Release { wxid, uid } => {
                let subject = format!("user {uid:?}");
                let (m, p) = IdChange::start(uid, IdGoal::Release(wxid), tag);
                (Machine::Id(m), p, subject)
            }
            Operation::RollForward { uid } => {
                let subject = format!("user {uid:?}");
                let (m, p) = IdChange::start(uid, IdGoal::RollForward, tag);
                (Machine::Id(m), p, subject)
            }
            Operation::UserWxid { uid } => {
                let subject = format!("user {uid:?}");
                let p = read(user_key(&uid));
                let m = Machine::UserWxid {
                    uid,
                    tag,
                    rolled: false,
                };
                (m, p, subject)
            }
            Operation::GetHome { uid } => {
                let subject = format!("the home of {uid:?}");
                (Machine::GetHome, read(home_key(&uid)), subject)
            }
            Operation::SetHome {
                uid,
                region,
                expected_epoch,
            } => {
                let p = Proposal {
                    key: home_key(&uid),
                    change: RegistryChange::SetHome {
                        region,
                        expected_epoch,
                    },
                };
                let subject = format!("the home of {uid:?}");
                (Machine::SetHome { uid }, p, subject)
            }
        }
    }

    fn on_outcome(&mut self, key: &str, outcome: Outcome) -> Step {
        match self {
            Machine::Lookup(m) => match m.on_outcome(key, outcome) {
                Ok(LookupStep::Propose(p)) => Step::Propose(p),
                Ok(LookupStep::Status(s)) => Step::Done(Ok(Answer::Status(s))),
                Err(e) => Step::Done(Err(e)),
            },
            Machine::Id(m) => m.on_outcome(key, outcome),
            Machine::UserWxid { uid, tag, rolled } => {
                let user = match read_value(key, outcome, decode_user) {
                    Ok(user) => user,
                    Err(e) => return Step::Done(Err(e)),
                };
                if user.pending.is_some() && !*rolled {
                    let uid = uid.clone();
                    let (roll, p) = IdChange::start(uid.clone(), IdGoal::RollForward, *tag);
                    *self = Machine::UserWxidRoll { roll, uid };
                    return Step::Propose(p);
                }
                Step::Done(Ok(Answer::UserWxid {
                    held: user.held.map(|h| h.wxid),
                    changing: user.pending.is_some(),
                }))
            }
            Machine::UserWxidRoll { roll, uid } => match roll.on_outcome(key, outcome) {
                Step::Done(Ok(_)) => {
                    let p = read(user_key(uid));
                    *self = Machine::UserWxid {
                        uid: uid.clone(),
                        tag: roll.tag,
                        rolled: true,
                    };
                    Step::Propose(p)
                }
                other => other,
            },
            Machine::GetHome => Step::Done(read_value(key, outcome, decode_home).map(Answer::Home)),
            Machine::SetHome { uid } => Step::Done(match outcome {
                Outcome::HomeSet(entry) => Ok(Answer::HomeSet(entry)),
                Outcome::HomeConflict(current) => Err(RegistryError::HomeConflict {
                    uid: uid.clone(),
                    current,
                }),
                other => Err(unexpected(key, &other)),
            }),
        }
    }
}

fn read(key: String) -> Proposal {
    Proposal {
        key,
        change: RegistryChange::Read,
    }
}

/// Reads the record of the user holding reservation `r`, making sure the transition `r` names
/// can no longer begin: if the record does not back `r` now, it never will (I2).
fn fence(r: &Reservation) -> Proposal {
    Proposal {
        key: user_key(&r.owner),
        change: RegistryChange::Fence {
            transition: r.transition,
        },
    }
}

fn fenced(key: &str, outcome: Outcome) -> Result<UserIds, RegistryError> {
    match outcome {
        Outcome::Fenced(user) => Ok(user),
        other => Err(unexpected(key, &other)),
    }
}

fn read_value<T>(
    key: &str,
    outcome: Outcome,
    decode: impl Fn(Option<&Bytes>) -> Result<T, crate::paxos::proposer::ChangeRejected>,
) -> Result<T, RegistryError> {
    match outcome {
        Outcome::Read(v) => decode(v.as_ref()).map_err(|e| RegistryError::Corrupt {
            key: key.to_owned(),
            problem: e.0,
        }),
        other => Err(unexpected(key, &other)),
    }
}

/// A proposal answered with an outcome its change cannot produce: a bug, reported not hidden.
fn unexpected(key: &str, outcome: &Outcome) -> RegistryError {
    RegistryError::Corrupt {
        key: key.to_owned(),
        problem: format!("unexpected outcome {outcome:?} (a bug in the registry client)"),
    }
}

/// How long background work (the commit behind an early answer) may wait for another proposal
/// to travel with: at one claim at a time, the next claim comes well within this, and the two
/// then share every acceptor's fsync instead of queueing behind each other.
const DEFER_BACKGROUND_MS: u64 = 2;
/// Most background proposals held back at once; more are sent at once.
const MAX_DEFERRED: usize = 1024;
/// The registry's own timer (the proposer numbers its operations from 0 upwards).
const DEFER_TIMER_OP: OpId = OpId(u64::MAX);

/// The id the first transition of a user gets (`last_transition` starts at 0).
const FIRST_TRANSITION: u64 = 1;

/// Who holds an ID: read `wxid/x`, then the owner's record to tell backed from stale.
#[derive(Debug, Clone)]
struct Lookup {
    wxid: String,
    reservation: Option<Reservation>,
}

enum LookupStep {
    Propose(Proposal),
    Status(WxidStatus),
}

impl Lookup {
    fn start(wxid: String) -> (Lookup, Proposal) {
        let p = read(wxid_key(&wxid));
        (
            Lookup {
                wxid,
                reservation: None,
            },
            p,
        )
    }

    fn on_outcome(&mut self, key: &str, outcome: Outcome) -> Result<LookupStep, RegistryError> {
        match self.reservation.take() {
            None => match read_value(key, outcome, decode_reservation)? {
                None => Ok(LookupStep::Status(WxidStatus::Free)),
                Some(r) => {
                    let p = fence(&r);
                    self.reservation = Some(r);
                    Ok(LookupStep::Propose(p))
                }
            },
            Some(r) => {
                let user = fenced(key, outcome)?;
                let uid = r.owner.clone();
                Ok(LookupStep::Status(if !user.backs(&self.wxid, &r) {
                    WxidStatus::Free
                } else if user.held.as_ref().is_some_and(|h| h.wxid == self.wxid) {
                    WxidStatus::Held { uid }
                } else {
                    WxidStatus::Claiming { uid }
                }))
            }
        }
    }
}

#[derive(Debug, Clone)]
enum IdGoal {
    Claim(WxId),
    Release(WxId),
    RollForward,
}

/// How a transition ended, as far as its roller can tell.
#[derive(Debug, Clone)]
enum RollResult {
    Committed,
    /// Aborted because `owner` holds the target (`None`: aborted by another roller).
    Aborted {
        owner: Option<String>,
    },
    /// Finished by others, and a later transition finished too: the record no longer says.
    Unknown,
}

/// Rolling transition `t` of the user; `mine` if this operation began it.
#[derive(Debug, Clone)]
struct Roll {
    t: Transition,
    mine: bool,
}

#[derive(Debug, Clone)]
enum Stage {
    ReadUser,
    Begin,
    Reserve(Roll),
    CheckHolder(Roll, Reservation),
    ReleaseStale(Roll),
    Abort(Roll, String),
    Commit(Roll),
    ReleaseOld(Roll),
    Finish(Roll),
    Compensate(Roll, RollResult),
    /// A release of an ID the user does not hold: who does?
    LookupOwner(Lookup),
    /// The caller has its answer; the commit of its first ID runs.
    BackgroundCommit,
    /// A new user's first claim: begin and the speculative reserve are both in flight.
    Speculating {
        begin: Option<Box<Outcome>>,
        reserve: Option<Box<Outcome>>,
    },
    /// The speculative reservation turned out unbacked: free it, then reserve for real.
    DropSpeculation(Roll),
}

/// Claim, release and roll-forward of a user's WeChat ID (the protocol in the module docs).
#[derive(Debug, Clone)]
struct IdChange {
    uid: String,
    goal: IdGoal,
    stage: Stage,
    /// Tags this operation's begins; `begin` grows with each.
    tag: OpTag,
}

impl IdChange {
    fn start(uid: String, goal: IdGoal, tag: OpTag) -> (IdChange, Proposal) {
        let mut m = IdChange {
            uid,
            goal,
            stage: Stage::Begin,
            tag,
        };
        let p = match m.goal {
            IdGoal::RollForward => {
                m.stage = Stage::ReadUser;
                read(user_key(&m.uid))
            }
            _ => m.begin_proposal(),
        };
        (m, p)
    }

    fn begin_proposal(&self) -> Proposal {
        let goal = match &self.goal {
            IdGoal::Claim(w) => Goal::Claim(w.as_str().to_owned()),
            IdGoal::Release(w) => Goal::Release(w.as_str().to_owned()),
            IdGoal::RollForward => unreachable!("a roll-forward begins nothing"),
        };
        Proposal {
            key: user_key(&self.uid),
            change: RegistryChange::Begin {
                goal,
                tag: self.tag,
            },
        }
    }

    /// Begins again, under a new tag (the transition of the old one, if any, has ended).
    fn begin_again(&mut self) -> Step {
        self.tag.begin += 1;
        let p = self.begin_proposal();
        self.go(Stage::Begin, p)
    }

    fn on_user(&self, change: RegistryChange) -> Proposal {
        Proposal {
            key: user_key(&self.uid),
            change,
        }
    }

    fn go(&mut self, stage: Stage, p: Proposal) -> Step {
        self.stage = stage;
        Step::Propose(p)
    }

    fn on_outcome(&mut self, key: &str, outcome: Outcome) -> Step {
        let stage = std::mem::replace(&mut self.stage, Stage::Begin);
        match (stage, outcome) {
            (Stage::ReadUser, outcome) => match read_value(key, outcome, decode_user) {
                Err(e) => Step::Done(Err(e)),
                Ok(user) => match user.pending.clone() {
                    Some(t) => self.roll(Roll { t, mine: false }, &user),
                    None => Step::Done(Ok(Answer::RolledForward { transition: None })),
                },
            },
            (Stage::Begin, Outcome::Began(t)) => {
                let user = UserIds {
                    held: t.from.clone(),
                    ..UserIds::default()
                };
                self.roll(Roll { t, mine: true }, &user)
            }
            (Stage::Begin, Outcome::Busy { user }) => {
                let t = user
                    .pending
                    .clone()
                    .expect("busy means a pending transition");
                self.roll(Roll { t, mine: false }, &user)
            }
            (
                Stage::Begin,
                Outcome::Ended {
                    transition,
                    committed,
                },
            ) => {
                // Our begin was chosen through another proposer and the transition finished.
                let result = if committed {
                    RollResult::Committed
                } else {
                    RollResult::Aborted { owner: None }
                };
                self.rolled(
                    Roll {
                        t: transition,
                        mine: true,
                    },
                    result,
                )
            }
            (Stage::Begin, Outcome::AlreadyHeld(_)) => Step::Done(Ok(Answer::AlreadyHeld)),
            (Stage::Begin, Outcome::NotHeld { .. }) => {
                let IdGoal::Release(wxid) = &self.goal else {
                    return Step::Done(Err(unexpected(key, &Outcome::NotHeld { held: None })));
                };
                let (lookup, p) = Lookup::start(wxid.as_str().to_owned());
                self.go(Stage::LookupOwner(lookup), p)
            }
            (Stage::LookupOwner(mut lookup), outcome) => match lookup.on_outcome(key, outcome) {
                Err(e) => Step::Done(Err(e)),
                Ok(LookupStep::Propose(p)) => self.go(Stage::LookupOwner(lookup), p),
                Ok(LookupStep::Status(WxidStatus::Free)) => Step::Done(Ok(Answer::AlreadyFree)),
                Ok(LookupStep::Status(WxidStatus::Held { uid } | WxidStatus::Claiming { uid })) => {
                    if uid == self.uid {
                        // The user came to hold it since our Begin: start over.
                        self.begin_again()
                    } else {
                        Step::Done(Err(RegistryError::NotOwner {
                            wxid: lookup.wxid,
                            uid: self.uid.clone(),
                            owner: uid,
                        }))
                    }
                }
            },
            (Stage::Reserve(roll), Outcome::Reserved) => self.reserved(roll),
            (Stage::BackgroundCommit, _) => Step::Done(Ok(Answer::Claimed { released: None })),
            (Stage::Reserve(roll), Outcome::Taken(holder)) => self.check_holder(roll, holder),
            (
                Stage::Speculating {
                    mut begin,
                    mut reserve,
                },
                outcome,
            ) => {
                if key == user_key(&self.uid) {
                    begin = Some(Box::new(outcome));
                } else {
                    reserve = Some(Box::new(outcome));
                }
                match (begin, reserve) {
                    (Some(b), Some(r)) => self.speculated(*b, *r),
                    (b, r) => {
                        self.stage = Stage::Speculating {
                            begin: b,
                            reserve: r,
                        };
                        Step::Wait
                    }
                }
            }
            (Stage::DropSpeculation(roll), Outcome::ReleasedIf { .. }) => self.reserve(roll),
            (Stage::CheckHolder(roll, holder), outcome) => {
                let holder_user = match fenced(key, outcome) {
                    Ok(u) => u,
                    Err(e) => return Step::Done(Err(e)),
                };
                let target = roll.t.to.clone().expect("only a claim reserves");
                if holder_user.backs(&target, &holder) {
                    let p = self.on_user(RegistryChange::Abort {
                        transition: roll.t.id,
                    });
                    self.go(Stage::Abort(roll, holder.owner), p)
                } else {
                    // Stale for good (I2): free exactly that reservation, then try again.
                    let p = Proposal {
                        key: wxid_key(&target),
                        change: RegistryChange::ReleaseIf {
                            uid: holder.owner,
                            transition: holder.transition,
                        },
                    };
                    self.go(Stage::ReleaseStale(roll), p)
                }
            }
            (Stage::ReleaseStale(roll), Outcome::ReleasedIf { .. }) => self.reserve(roll),
            (Stage::Abort(roll, owner), Outcome::Aborted) => {
                self.rolled(roll, RollResult::Aborted { owner: Some(owner) })
            }
            // A commit with nothing to release finished the transition too.
            (Stage::Commit(roll), Outcome::Committed { .. }) if roll.t.from.is_none() => {
                self.rolled(roll, RollResult::Committed)
            }
            (Stage::Abort(roll, _) | Stage::Commit(roll), Outcome::Committed { .. }) => {
                self.release_old(roll)
            }
            (
                Stage::Abort(roll, _) | Stage::Commit(roll) | Stage::Finish(roll),
                Outcome::Gone { user },
            ) => self.gone(roll, &user),
            (Stage::ReleaseOld(roll), Outcome::ReleasedIf { .. }) => {
                let p = self.on_user(RegistryChange::Finish {
                    transition: roll.t.id,
                });
                self.go(Stage::Finish(roll), p)
            }
            (Stage::Finish(roll), Outcome::Finished) => self.rolled(roll, RollResult::Committed),
            (Stage::Compensate(roll, result), Outcome::ReleasedIf { .. }) => {
                self.rolled(roll, result)
            }
            (_, other) => Step::Done(Err(unexpected(key, &other))),
        }
    }

    /// `roll.t`'s target is reserved for it: commit.
    fn reserved(&mut self, roll: Roll) -> Step {
        let p = self.on_user(RegistryChange::Commit {
            transition: roll.t.id,
        });
        let first_id = roll.t.from.is_none() && matches!(self.goal, IdGoal::Claim(_));
        if roll.mine && first_id {
            // Reserved and backed by our pending transition: nothing can abort it any more,
            // and everyone already sees the ID as this user's (see the module docs). Answer
            // now; the commit (which also finishes) runs behind.
            self.stage = Stage::BackgroundCommit;
            return Step::AnswerThen(Ok(Answer::Claimed { released: None }), p);
        }
        self.go(Stage::Commit(roll), p)
    }

    /// Someone else's reservation is in the way: is it backed (the ID is taken) or stale?
    fn check_holder(&mut self, roll: Roll, holder: Reservation) -> Step {
        let p = fence(&holder);
        self.go(Stage::CheckHolder(roll, holder), p)
    }

    /// Starts a claim for a user this node knows nothing of, betting that it is the user's
    /// first: the begin and a reserve for the transition id such a begin gets
    /// ([`FIRST_TRANSITION`]) go out together, both in the fast round.
    fn start_speculating(uid: String, wxid: WxId, tag: OpTag) -> (IdChange, Step) {
        let m = IdChange {
            uid,
            goal: IdGoal::Claim(wxid),
            stage: Stage::Speculating {
                begin: None,
                reserve: None,
            },
            tag,
        };
        let begin = m.begin_proposal();
        let IdGoal::Claim(wxid) = &m.goal else {
            unreachable!("set above")
        };
        let reserve = Proposal {
            key: wxid_key(wxid.as_str()),
            change: RegistryChange::ReserveIfFree {
                uid: m.uid.clone(),
                transition: FIRST_TRANSITION,
            },
        };
        (m, Step::ProposeBoth(begin, reserve))
    }

    /// Both halves of the speculation ended: go on from what they found.
    fn speculated(&mut self, begin: Outcome, reserve: Outcome) -> Step {
        match begin {
            Outcome::Began(t) if t.id == FIRST_TRANSITION && t.from.is_none() => {
                // The bet came off: the reservation is for this very transition.
                let roll = Roll { t, mine: true };
                match reserve {
                    Outcome::Reserved => self.reserved(roll),
                    Outcome::Taken(holder) => self.check_holder(roll, holder),
                    other => Step::Done(Err(unexpected("speculative reserve", &other))),
                }
            }
            Outcome::Began(t) => {
                // The user had transitions before: a reservation for transition 1 is not ours
                // (and never backed: the user's record is past it). Free it if we made it.
                let roll = Roll { t, mine: true };
                match reserve {
                    Outcome::Reserved => {
                        let target = roll
                            .t
                            .to
                            .clone()
                            .expect("a claim's transition has a target");
                        let p = Proposal {
                            key: wxid_key(&target),
                            change: RegistryChange::ReleaseIf {
                                uid: self.uid.clone(),
                                transition: FIRST_TRANSITION,
                            },
                        };
                        self.go(Stage::DropSpeculation(roll), p)
                    }
                    _ => self.reserve(roll),
                }
            }
            // Not a fresh begin (another transition pending, the ID already held, ...): carry
            // on as a claim that did not speculate. A reservation the speculation made is left
            // to staleness checks: when unbacked, it is stale for good, since the record is
            // past transition 1.
            other => {
                self.stage = Stage::Begin;
                let key = user_key(&self.uid);
                self.on_outcome(&key, other)
            }
        }
    }

    /// Rolls `roll.t` forward from where `user` (a recent record) shows it.
    fn roll(&mut self, roll: Roll, user: &UserIds) -> Step {
        if user.committed(&roll.t) {
            return self.release_old(roll);
        }
        if roll.t.to.is_some() {
            return self.reserve(roll);
        }
        let p = self.on_user(RegistryChange::Commit {
            transition: roll.t.id,
        });
        self.go(Stage::Commit(roll), p)
    }

    fn reserve(&mut self, roll: Roll) -> Step {
        let target = roll.t.to.as_deref().expect("only a claim reserves");
        let p = Proposal {
            key: wxid_key(target),
            change: RegistryChange::Reserve {
                uid: self.uid.clone(),
                transition: roll.t.id,
            },
        };
        self.go(Stage::Reserve(roll), p)
    }

    fn release_old(&mut self, roll: Roll) -> Step {
        match roll.t.from.clone() {
            Some(from) => {
                let p = Proposal {
                    key: wxid_key(&from.wxid),
                    change: RegistryChange::ReleaseIf {
                        uid: self.uid.clone(),
                        transition: from.transition,
                    },
                };
                self.go(Stage::ReleaseOld(roll), p)
            }
            None => {
                let p = self.on_user(RegistryChange::Finish {
                    transition: roll.t.id,
                });
                self.go(Stage::Finish(roll), p)
            }
        }
    }

    /// `roll.t` is no longer pending: someone else finished it. `user` is the record then.
    fn gone(&mut self, roll: Roll, user: &UserIds) -> Step {
        let result = match &user.last_finished {
            Some((t, true)) if t.id == roll.t.id => RollResult::Committed,
            Some((t, false)) if t.id == roll.t.id => RollResult::Aborted { owner: None },
            _ => RollResult::Unknown,
        };
        match roll.t.to.clone() {
            // We may have reserved the target after the transition ended: such a reservation
            // is not backed, so free it rather than leave it to a staleness check.
            Some(target) if user.held != roll.t.target() => {
                let p = Proposal {
                    key: wxid_key(&target),
                    change: RegistryChange::ReleaseIf {
                        uid: self.uid.clone(),
                        transition: roll.t.id,
                    },
                };
                self.go(Stage::Compensate(roll, result), p)
            }
            _ => self.rolled(roll, result),
        }
    }

    /// `roll.t` is over; answer, or carry on with our own goal.
    fn rolled(&mut self, roll: Roll, result: RollResult) -> Step {
        if let IdGoal::RollForward = self.goal {
            let committed = matches!(result, RollResult::Committed);
            return Step::Done(Ok(Answer::RolledForward {
                transition: Some((roll.t.id, committed)),
            }));
        }
        match (roll.mine, &self.goal, result) {
            (true, IdGoal::Claim(_), RollResult::Committed) => Step::Done(Ok(Answer::Claimed {
                released: roll.t.from.map(|h| h.wxid),
            })),
            (true, IdGoal::Release(_), RollResult::Committed) => Step::Done(Ok(Answer::Released)),
            (true, IdGoal::Claim(wxid), RollResult::Aborted { owner: Some(owner) }) => {
                Step::Done(Err(RegistryError::Taken {
                    wxid: wxid.as_str().to_owned(),
                    owner,
                }))
            }
            // Someone else's transition is out of the way, or ours ended in a way we cannot
            // read: begin (again); the user record tells where things stand.
            _ => self.begin_again(),
        }
    }
}
