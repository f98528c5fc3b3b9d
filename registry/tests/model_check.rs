//! Model checking of the registry's CASPaxos with stateright: the real `Acceptor` and `Proposer`
//! cores (and the real registry changes) run inside stateright actors, one actor per region
//! (its acceptor, and a proposer running a short script of registry changes on one key).
//!
//! Properties (always):
//! - "one value per version": a key never has two different chosen registers at one version
//!   (chosen = accepted by a majority at one ballot), and a ballot never carries two registers;
//! - "results are chosen": every change a proposer reports done is chosen, and the value it was
//!   applied to is the one chosen at its version, if any;
//! - "no two owners": two users never both get a WeChat ID reserved (in scripts without a
//!   release), and the chosen history never hands an ID from one owner straight to another.
//!
//! plus "sometimes" properties (every operation ends, a claim succeeds, a change takes one round
//! trip) so that a model that explores nothing cannot pass.
//!
//! Scenarios, each small enough for a debug build on 2 cores: 3 regions, 2 or 3 proposers,
//! exhaustive BFS (completely, or to a depth bound) under reordering, plus duplication, explicit
//! loss with retries, a crash and restart (acceptor state from durable storage, the proposer
//! with a new incarnation id), the piggybacked one-round-trip path, and seeded random walks with
//! every fault at once. With an unordered network any message may stay in flight forever, which
//! for these properties (they read only actor state) covers its loss in every scenario.
//!
//! A deliberately broken acceptor (its storage forgets promises, so it accepts below them) must
//! make the checker find a counterexample, which shows the properties have teeth.
//!
//! `REGISTRY_MODEL_EXTRA_DEPTH=n` deepens the bounded scenarios for a longer run.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use homeport_registry::paxos::acceptor::Acceptor;
use homeport_registry::paxos::proposer::{Output, Proposer, ProposerConfig, TimerId};
use homeport_registry::paxos::{Ballot, ProposerId, Register, Reply, Request, majority};
use homeport_registry::storage::{AcceptorStorage, KeyState, StorageError};
use homeport_registry::values::{Outcome, RegistryChange, decode_reservation};
use stateright::actor::{Actor, ActorModel, Id, LossyNetwork, Network, Out, model_timeout};
use stateright::{Checker, Expectation, HasDiscoveries, Model};

const ACCEPTORS: usize = 3;
const KEY: &str = "wxid/szdy01";
/// The timer that starts a delayed region's script (no proposer op has this id).
const START: TimerId = TimerId {
    op: homeport_registry::paxos::proposer::OpId(u64::MAX),
    seq: 0,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    Req(Request),
    Rep(Reply),
}

/// An acceptor's storage as the model needs it: durable state that survives crashes.
trait ModelStorage: AcceptorStorage + Clone + std::fmt::Debug + Eq + std::hash::Hash + Default {}

/// Like `MemStorage`, minus its write counter, which would make otherwise equal states differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Durable(BTreeMap<String, KeyState>);

impl AcceptorStorage for Durable {
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError> {
        Ok(self.0.get(key).cloned())
    }
    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError> {
        for (key, state) in writes {
            self.0.insert(key.clone(), state.clone());
        }
        Ok(())
    }
}
impl ModelStorage for Durable {}

/// The bug: a storage that loses promises (it keeps only what was accepted), so the acceptor
/// grants ballots again and accepts below what it promised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct ForgetsPromises(Durable);

impl AcceptorStorage for ForgetsPromises {
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError> {
        Ok(self.0.load(key)?.map(|s| KeyState {
            promised: s
                .accepted
                .as_ref()
                .map(|a| a.ballot)
                .unwrap_or(Ballot::ZERO),
            accepted: s.accepted,
        }))
    }
    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError> {
        self.0.store(writes)
    }
}
impl ModelStorage for ForgetsPromises {}

#[derive(Clone, Debug)]
struct Cfg {
    /// Check that at most one user ever gets the ID reserved (scripts without a release).
    single_claim: bool,
    /// The scenario must reach a change made in one round trip (the piggybacked prepare).
    expect_one_round_trip: bool,
    expect_progress: bool,
}

/// One region: its acceptor, and a proposer running `script` (empty: no proposer). The
/// proposer reaches its own region's acceptor by a local call in the same step (as a registry
/// node does), and the other regions' acceptors over the network. This halves the messages of a
/// round, which is what makes the exhaustive search affordable.
#[derive(Clone, Debug)]
struct Region<S> {
    index: usize,
    script: Vec<RegistryChange>,
    /// Claims (reserves) try the fast round first.
    fast: bool,
    /// The script starts on a timer, so other regions' messages can come first.
    delayed: bool,
    config: ProposerConfig,
    storage: std::marker::PhantomData<S>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Done {
    change: RegistryChange,
    before: Register,
    after: Register,
    round_trips: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProposerState {
    proposer: Proposer<RegistryChange>,
    /// Whether the script has started (a delayed region starts on a timer).
    started: bool,
    incarnation: u64,
    /// The next scripted operation to submit.
    next: usize,
    /// The scripted operation in flight (one at a time, like a client waiting for answers).
    running: Option<usize>,
    /// What the proposer's callers heard (a ghost for the properties: it survives crashes).
    done: Vec<Done>,
    failed: usize,
    /// Operations in flight when the proposer crashed: their callers never heard back.
    abandoned: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RegionState<S> {
    acceptor: Acceptor<S>,
    /// Ghost: every proposal this acceptor ever accepted (for the properties; survives crashes).
    accepted: BTreeSet<(Ballot, Register)>,
    proposer: Option<ProposerState>,
}

/// What survives a crash: the acceptor's durable state (plus the ghost), and where the
/// proposer is in its script, so after a restart it goes on with the next operation under a
/// new incarnation id (the operation in flight is abandoned).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RegionStorage<S> {
    acceptor: S,
    accepted: BTreeSet<(Ballot, Register)>,
    incarnation: u64,
    next: usize,
    done: Vec<Done>,
    failed: usize,
    abandoned: usize,
}

enum Input {
    Request(Id, Request),
    Reply(Id, Reply),
    Timer(TimerId),
}

impl<S: ModelStorage> Region<S> {
    fn storage_of(st: &RegionState<S>) -> RegionStorage<S> {
        let p = st.proposer.as_ref();
        RegionStorage {
            acceptor: st.acceptor.storage().clone(),
            accepted: st.accepted.clone(),
            incarnation: p.map_or(0, |p| p.incarnation),
            next: p.map_or(0, |p| p.next),
            done: p.map(|p| p.done.clone()).unwrap_or_default(),
            failed: p.map_or(0, |p| p.failed),
            abandoned: p.map_or(0, |p| p.abandoned),
        }
    }

    fn accept_locally(st: &mut RegionState<S>, request: Request) -> Reply {
        let reply = st.acceptor.handle(request.clone());
        match (&request, &reply) {
            (
                Request::Accept {
                    ballot, register, ..
                },
                Reply::Accepted { .. },
            ) => {
                st.accepted.insert((*ballot, register.clone()));
            }
            (Request::FastAccept { register, .. }, Reply::Accepted { .. }) => {
                st.accepted.insert((Ballot::ZERO, register.clone()));
            }
            _ => {}
        }
        reply
    }

    fn step(&self, st: &mut RegionState<S>, input: Input, o: &mut Out<Self>) {
        match input {
            Input::Request(src, request) => {
                let reply = Self::accept_locally(st, request);
                o.send(src, Msg::Rep(reply));
            }
            Input::Reply(src, reply) => {
                if let Some(p) = &mut st.proposer {
                    p.proposer.on_reply(usize::from(src), reply);
                }
            }
            Input::Timer(timer) => {
                if let Some(p) = &mut st.proposer {
                    p.proposer.on_timer(timer);
                }
            }
        }
        self.pump(st, o);
    }

    /// Hands the proposer's outputs on (requests to this region's acceptor are answered at
    /// once), and starts the next scripted operation when one is done.
    fn pump(&self, st: &mut RegionState<S>, o: &mut Out<Self>) {
        let Some(mut p) = st.proposer.take() else {
            return;
        };
        self.submit_next(&mut p);
        while let Some(out) = p.proposer.poll_output() {
            match out {
                Output::Send { to, request } if to == self.index => {
                    let reply = Self::accept_locally(st, request);
                    p.proposer.on_reply(to, reply);
                }
                Output::Send { to, request } => o.send(Id::from(to), Msg::Req(request)),
                Output::SetTimer { timer, .. } => o.set_timer(timer, model_timeout()),
                Output::CancelTimer { timer } => o.cancel_timer(timer),
                Output::Done { result, .. } => {
                    let index = p.running.take().expect("an operation was running");
                    match result {
                        Ok(c) => p.done.push(Done {
                            change: self.script[index].clone(),
                            before: c.before,
                            after: c.after,
                            round_trips: c.round_trips,
                        }),
                        Err(_) => p.failed += 1,
                    }
                    self.submit_next(&mut p);
                }
            }
        }
        st.proposer = Some(p);
    }

    fn submit_next(&self, p: &mut ProposerState) {
        if p.started && p.running.is_none() && p.next < self.script.len() {
            let change = self.script[p.next].clone();
            if self.fast && matches!(change, RegistryChange::Reserve { .. }) {
                p.proposer.submit_fast(KEY, change)
            } else {
                p.proposer.submit(KEY, change)
            }
            .expect("within limits");
            p.running = Some(p.next);
            p.next += 1;
        }
    }

    /// Runs `input` on a copy of the state; keeps the copy (and saves what must survive a
    /// crash) only if something changed, so no-op deliveries add no states.
    fn handle(&self, state: &mut Cow<RegionState<S>>, input: Input, o: &mut Out<Self>) {
        let mut next = (**state).clone();
        self.step(&mut next, input, o);
        if next != **state {
            let storage = Self::storage_of(&next);
            if storage != Self::storage_of(state) {
                o.save(storage);
            }
            *state.to_mut() = next;
        }
    }
}

impl<S: ModelStorage> Actor for Region<S> {
    type Msg = Msg;
    type Timer = TimerId;
    type State = RegionState<S>;
    type Storage = RegionStorage<S>;
    type Random = ();

    fn on_start(&self, _id: Id, storage: &Option<Self::Storage>, o: &mut Out<Self>) -> Self::State {
        let restarted = storage.is_some();
        let saved = storage.clone().unwrap_or_else(|| RegionStorage {
            acceptor: S::default(),
            accepted: BTreeSet::new(),
            incarnation: 0,
            next: 0,
            done: Vec::new(),
            failed: 0,
            abandoned: 0,
        });
        let incarnation = if restarted { saved.incarnation + 1 } else { 0 };
        // Every operation started and not ended was in flight when the proposer crashed.
        let abandoned = saved.next - saved.done.len() - saved.failed;
        let proposer = (!self.script.is_empty()).then(|| ProposerState {
            // A new id per incarnation: a restarted proposer must not take its crashed
            // predecessor's late replies for its own.
            proposer: Proposer::new(
                self.config.clone(),
                ProposerId::new(self.index as u16, incarnation),
                0,
            )
            .expect("valid config"),
            incarnation,
            next: saved.next,
            running: None,
            // After a restart the script goes on at once.
            started: restarted || !self.delayed,
            done: saved.done,
            failed: saved.failed,
            abandoned,
        });
        if !restarted && self.delayed && !self.script.is_empty() {
            o.set_timer(START, model_timeout());
        }
        let (acceptor, accepted) = (saved.acceptor, saved.accepted);
        let mut st = RegionState {
            acceptor: Acceptor::new(acceptor),
            accepted,
            proposer,
        };
        self.pump(&mut st, o);
        o.save(Self::storage_of(&st));
        st
    }

    fn on_msg(
        &self,
        _id: Id,
        state: &mut Cow<Self::State>,
        src: Id,
        msg: Self::Msg,
        o: &mut Out<Self>,
    ) {
        let input = match msg {
            Msg::Req(r) => Input::Request(src, r),
            Msg::Rep(r) => Input::Reply(src, r),
        };
        self.handle(state, input, o);
    }

    fn on_timeout(
        &self,
        _id: Id,
        state: &mut Cow<Self::State>,
        timer: &TimerId,
        o: &mut Out<Self>,
    ) {
        if *timer == START {
            let mut next = (**state).clone();
            if let Some(p) = &mut next.proposer {
                p.started = true;
            }
            self.pump(&mut next, o);
            *state.to_mut() = next;
            return;
        }
        self.handle(state, Input::Timer(*timer), o);
    }
}

type RegModel<S> = ActorModel<Region<S>, Cfg, ()>;
type RegState<S> = stateright::actor::ActorModelState<Region<S>, ()>;

/// Registers accepted by a majority at one ballot (by every acceptor at round zero, the fast
/// round), by version.
fn chosen<S: ModelStorage>(state: &RegState<S>) -> BTreeMap<u64, BTreeSet<Register>> {
    let mut count: BTreeMap<&(Ballot, Register), usize> = BTreeMap::new();
    for region in &state.actor_states {
        for a in &region.accepted {
            *count.entry(a).or_default() += 1;
        }
    }
    let mut chosen: BTreeMap<u64, BTreeSet<Register>> = BTreeMap::new();
    for ((ballot, register), n) in count {
        let quorum = if *ballot == Ballot::ZERO {
            ACCEPTORS
        } else {
            majority(ACCEPTORS)
        };
        if n >= quorum {
            chosen
                .entry(register.version)
                .or_default()
                .insert(register.clone());
        }
    }
    chosen
}

fn results<S: ModelStorage>(state: &RegState<S>) -> impl Iterator<Item = &Done> {
    state
        .actor_states
        .iter()
        .filter_map(|r| r.proposer.as_ref())
        .flat_map(|p| &p.done)
}

fn owner(r: &Register) -> Option<String> {
    decode_reservation(r.value.as_ref())
        .ok()
        .flatten()
        .map(|r| r.owner)
}

fn one_value_per_version<S: ModelStorage>(_: &RegModel<S>, state: &RegState<S>) -> bool {
    let mut by_ballot: BTreeMap<Ballot, &Register> = BTreeMap::new();
    // Round zero (the fast round) may carry several registers; every other ballot one.
    let prepared = state
        .actor_states
        .iter()
        .flat_map(|r| &r.accepted)
        .filter(|(ballot, _)| *ballot != Ballot::ZERO);
    for (ballot, register) in prepared {
        if *by_ballot.entry(*ballot).or_insert(register) != register {
            return false;
        }
    }
    chosen(state).values().all(|s| s.len() <= 1)
}

fn results_are_chosen<S: ModelStorage>(_: &RegModel<S>, state: &RegState<S>) -> bool {
    let chosen = chosen(state);
    let is_chosen = |r: &Register| {
        (r.version == 0 && r.value.is_none())
            || chosen.get(&r.version).is_some_and(|s| s.contains(r))
    };
    results(state).all(|d| {
        is_chosen(&d.after)
            && chosen
                .get(&d.before.version)
                .is_none_or(|s| s.contains(&d.before))
    })
}

fn no_two_owners<S: ModelStorage>(model: &RegModel<S>, state: &RegState<S>) -> bool {
    if model.cfg.single_claim {
        let reserved: BTreeSet<_> = results(state)
            .filter(|d| {
                matches!(
                    d.change.outcome(d.before.value.as_ref()),
                    Ok(Outcome::Reserved)
                )
            })
            .filter_map(|d| match &d.change {
                RegistryChange::Reserve { uid, .. } => Some(uid.clone()),
                _ => None,
            })
            .collect();
        if reserved.len() > 1 {
            return false;
        }
    }
    // Consecutive chosen versions never hand the ID from one owner straight to another.
    let chosen = chosen(state);
    chosen.iter().all(|(v, regs)| {
        let Some(next) = chosen.get(&(v + 1)) else {
            return true;
        };
        regs.iter().all(|a| {
            next.iter().all(|b| match (owner(a), owner(b)) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            })
        })
    })
}

fn all_operations_ended<S: ModelStorage>(model: &RegModel<S>, state: &RegState<S>) -> bool {
    !model.cfg.expect_progress || every_operation_ended(model, state)
}

fn every_operation_ended<S: ModelStorage>(model: &RegModel<S>, state: &RegState<S>) -> bool {
    let scripts: usize = model.actors.iter().map(|a| a.script.len()).sum();
    let ended: usize = state
        .actor_states
        .iter()
        .filter_map(|r| r.proposer.as_ref())
        .map(|p| p.done.len() + p.failed + p.abandoned)
        .sum();
    ended == scripts
}

fn a_change_took_one_round_trip<S: ModelStorage>(model: &RegModel<S>, state: &RegState<S>) -> bool {
    !model.cfg.expect_one_round_trip
        || results(state).any(|d| d.round_trips == 1 && d.before != d.after)
}

fn a_claim_succeeded<S: ModelStorage>(model: &RegModel<S>, state: &RegState<S>) -> bool {
    !model.cfg.expect_progress
        || results(state).any(|d| {
            matches!(
                d.change.outcome(d.before.value.as_ref()),
                Ok(Outcome::Reserved)
            )
        })
}

fn reserve(uid: &str) -> RegistryChange {
    RegistryChange::Reserve {
        uid: uid.into(),
        transition: 1,
    }
}

fn release(uid: &str) -> RegistryChange {
    RegistryChange::ReleaseIf {
        uid: uid.into(),
        transition: 1,
    }
}

#[derive(Clone)]
struct Scenario {
    name: &'static str,
    /// One script per region (3 regions, 3 acceptors); an empty script: no proposer there.
    scripts: [Vec<RegistryChange>; ACCEPTORS],
    single_claim: bool,
    expect_one_round_trip: bool,
    piggyback: bool,
    /// Per region: its claims try the fast round first.
    fast: [bool; ACCEPTORS],
    /// Per region: its script starts on a timer instead of at once.
    delayed: [bool; ACCEPTORS],
    /// Expect every operation to end and a claim to succeed in some state (off for scenarios
    /// bounded too shallow to get there; random walks check progress).
    expect_progress: bool,
    max_attempts: u32,
    duplicating: bool,
    lossy: bool,
    max_crashes: usize,
    /// BFS depth bound; `None`: explore everything (finite when retries are off).
    max_depth: Option<usize>,
}

/// Two regions race to claim one ID (one attempt each), the third region only accepts. The
/// network is unordered, so any message may also stay in flight forever: for our safety
/// properties, which read only actor state, that covers its loss (a scenario below drops
/// messages explicitly too).
fn two_claims() -> Scenario {
    Scenario {
        name: "two claims, reordering",
        scripts: [vec![reserve("alice")], vec![reserve("bob")], vec![]],
        single_claim: true,
        expect_one_round_trip: false,
        piggyback: true,
        fast: [false; ACCEPTORS],
        delayed: [false; ACCEPTORS],
        expect_progress: true,
        max_attempts: 1,
        duplicating: false,
        lossy: false,
        max_crashes: 0,
        max_depth: None,
    }
}

fn model<S: ModelStorage>(sc: &Scenario) -> RegModel<S> {
    let config = ProposerConfig {
        acceptors: ACCEPTORS,
        round_timeout_ms: 100,
        max_attempts: sc.max_attempts,
        backoff_base_ms: 1,
        backoff_max_ms: 1,
        piggyback: sc.piggyback,
        max_pending_ops: 4,
        max_cached_keys: 4,
        fast_round: true,
    };
    ActorModel::new(
        Cfg {
            single_claim: sc.single_claim,
            expect_one_round_trip: sc.expect_one_round_trip,
            expect_progress: sc.expect_progress,
        },
        (),
    )
    .actors(sc.scripts.iter().enumerate().map(|(index, script)| Region {
        index,
        script: script.clone(),
        fast: sc.fast[index],
        delayed: sc.delayed[index],
        config: config.clone(),
        storage: std::marker::PhantomData,
    }))
    .init_network(if sc.duplicating {
        Network::new_unordered_duplicating([])
    } else {
        Network::new_unordered_nonduplicating([])
    })
    .lossy_network(if sc.lossy {
        LossyNetwork::Yes
    } else {
        LossyNetwork::No
    })
    .max_crashes(sc.max_crashes)
    .property(
        Expectation::Always,
        "one value per version",
        one_value_per_version,
    )
    .property(
        Expectation::Always,
        "results are chosen",
        results_are_chosen,
    )
    .property(Expectation::Always, "no two owners", no_two_owners)
    .property(
        Expectation::Sometimes,
        "all operations ended",
        all_operations_ended,
    )
    .property(
        Expectation::Sometimes,
        "a claim succeeded",
        a_claim_succeeded,
    )
    .property(
        Expectation::Sometimes,
        "a change took one round trip",
        a_change_took_one_round_trip,
    )
}

/// Explores the scenario breadth first on 2 threads, reports its size, and checks every
/// property (no safety violation; both "sometimes" properties reached, so the model is not
/// vacuous). `REGISTRY_MODEL_EXTRA_DEPTH` deepens the bounded scenarios for a longer run.
fn check<S: ModelStorage + Send + Sync + 'static>(sc: &Scenario) -> usize {
    let started = Instant::now();
    let extra: usize = std::env::var("REGISTRY_MODEL_EXTRA_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let mut builder = model::<S>(sc).checker().threads(2);
    if let Some(depth) = sc.max_depth {
        builder = builder.target_max_depth(depth + extra);
    }
    let checker = builder.spawn_bfs().join();
    eprintln!(
        "model {}: {} states, {} unique, depth {}, {:.1?}",
        sc.name,
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker.assert_properties();
    checker.unique_state_count()
}

#[test]
fn two_claims_race_under_reordering_explored_completely() {
    let states = check::<Durable>(&two_claims());
    assert!(
        states > 1_000,
        "the model explored too little to mean anything: {states}"
    );
}

#[test]
fn two_claims_race_with_a_crash_and_restart() {
    check::<Durable>(&Scenario {
        name: "two claims, a crash",
        max_crashes: 1,
        max_depth: Some(11),
        ..two_claims()
    });
}

#[test]
fn two_claims_race_with_duplicated_messages() {
    check::<Durable>(&Scenario {
        name: "two claims, duplication",
        duplicating: true,
        max_depth: Some(9),
        ..two_claims()
    });
}

#[test]
fn two_claims_race_with_message_loss_and_retries() {
    check::<Durable>(&Scenario {
        name: "two claims, loss and retries",
        lossy: true,
        max_attempts: 2,
        max_depth: Some(9),
        ..two_claims()
    });
}

#[test]
fn a_piggybacked_change_races_a_claim() {
    // The first region's second operation skips its prepare (it holds the next ballot) while
    // the second region claims.
    check::<Durable>(&Scenario {
        name: "piggybacked release vs claim",
        scripts: [
            vec![reserve("alice"), release("alice")],
            vec![reserve("bob")],
            vec![],
        ],
        single_claim: false,
        max_depth: Some(11),
        ..two_claims()
    });
}

#[test]
fn three_proposers_race() {
    check::<Durable>(&Scenario {
        name: "three claims",
        scripts: [
            vec![reserve("alice")],
            vec![reserve("bob")],
            vec![reserve("carol")],
        ],
        max_depth: Some(9),
        ..two_claims()
    });
}

/// The fast round against a full round: alice's claim tries round zero (no prepare) on every
/// acceptor while bob's claim prepares; whoever loses falls back or retries.
fn fast_vs_full_claim() -> Scenario {
    Scenario {
        name: "fast claim vs full claim, reordering",
        fast: [true, false, false],
        delayed: [false, true, false],
        expect_one_round_trip: true,
        max_depth: Some(10),
        ..two_claims()
    }
}

#[test]
fn a_fast_claim_races_a_full_claim() {
    let states = check::<Durable>(&fast_vs_full_claim());
    assert!(
        states > 1_000,
        "the model explored too little to mean anything: {states}"
    );
}

#[test]
fn a_fast_claim_races_a_full_claim_with_a_crash_and_restart() {
    check::<Durable>(&Scenario {
        name: "fast claim vs full claim, a crash",
        max_crashes: 1,
        max_depth: Some(9),
        ..fast_vs_full_claim()
    });
}

#[test]
fn a_fast_claim_races_a_full_claim_with_duplicated_messages() {
    check::<Durable>(&Scenario {
        name: "fast claim vs full claim, duplication",
        duplicating: true,
        max_depth: Some(8),
        ..fast_vs_full_claim()
    });
}

#[test]
fn a_fast_claim_then_a_piggybacked_release_race_a_full_claim() {
    check::<Durable>(&Scenario {
        name: "fast claim + piggybacked release vs full claim",
        scripts: [
            vec![reserve("alice"), release("alice")],
            vec![reserve("bob")],
            vec![],
        ],
        single_claim: false,
        max_depth: Some(10),
        ..fast_vs_full_claim()
    });
}

#[test]
fn two_fast_claims_race_then_fall_back() {
    // Each region's own acceptor votes for its own claim at once, so neither fast round can
    // win: both fall back to full rounds, whose prepares must sort out round zero.
    check::<Durable>(&Scenario {
        name: "two fast claims",
        fast: [true, true, false],
        max_attempts: 2,
        max_depth: Some(8),
        expect_progress: false,
        ..two_claims()
    });
}

#[test]
fn random_deep_walks_with_every_fault_and_the_fast_round() {
    let sc = Scenario {
        name: "random walks, every fault, fast round",
        fast: [true, true, false],
        ..every_fault()
    };
    let (steps, ended) =
        random_walks(&model::<Durable>(&sc), 13, 1000, 300).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("model {}: {steps} steps, {ended} walks ended", sc.name);
    assert!(ended > 100, "walks rarely got anywhere: {ended} of 1000");
}

#[test]
fn random_deep_walks_with_every_fault_at_once() {
    // Loss, duplication, a crash, retries, piggybacking and three proposers together are too
    // many for an exhaustive search; random walks to the end (seeded) reach deep states.
    let sc = every_fault();
    let started = Instant::now();
    let walks = 1000;
    let (steps, ended) =
        random_walks(&model::<Durable>(&sc), 11, walks, 300).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "model {}: {walks} walks, {steps} steps, {ended} ran every operation to its end, {:.1?}",
        sc.name,
        started.elapsed()
    );
    assert!(
        ended > walks / 10,
        "walks rarely got anywhere: {ended} of {walks}"
    );
}

fn every_fault() -> Scenario {
    Scenario {
        name: "random walks, every fault",
        scripts: [
            vec![reserve("alice"), release("alice")],
            vec![reserve("bob"), RegistryChange::Read],
            vec![reserve("carol")],
        ],
        single_claim: false,
        expect_one_round_trip: true,
        piggyback: true,
        fast: [false; ACCEPTORS],
        delayed: [false; ACCEPTORS],
        expect_progress: true,
        max_attempts: 3,
        duplicating: true,
        lossy: true,
        max_crashes: 1,
        max_depth: None,
    }
}

/// Seeded random walks through `model`, checking every "always" property at every state; the
/// first violation is returned with the walk that led to it. (stateright's own simulation
/// checker cannot rebuild paths through ignored actions, such as deliveries to a crashed actor.)
/// On success: (steps taken, walks that ended every scripted operation).
fn random_walks<S: ModelStorage>(
    model: &RegModel<S>,
    seed: u64,
    walks: usize,
    max_steps: usize,
) -> Result<(usize, usize), String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let properties = model.properties();
    let (mut steps, mut ended) = (0, 0);
    for _ in 0..walks {
        let mut state = model.init_states().remove(0);
        let mut trace = Vec::new();
        for _ in 0..max_steps {
            for p in properties
                .iter()
                .filter(|p| matches!(p.expectation, Expectation::Always))
            {
                if !(p.condition)(model, &state) {
                    return Err(format!("{:?} violated after {trace:#?}", p.name));
                }
            }
            let mut actions = Vec::new();
            model.actions(&state, &mut actions);
            let next = loop {
                if actions.is_empty() {
                    break None;
                }
                let action = actions.swap_remove(rng.random_range(0..actions.len()));
                if let Some(next) = model.next_state(&state, action.clone()) {
                    trace.push(action);
                    break Some(next);
                }
            };
            match next {
                Some(next) => state = next,
                None => break,
            }
            steps += 1;
        }
        if every_operation_ended(model, &state) {
            ended += 1;
        }
    }
    Ok((steps, ended))
}

#[test]
fn a_broken_acceptor_is_caught() {
    // Same race, but the acceptors' storage forgets promises: they accept below what they
    // promised, and two values get chosen.
    let sc = Scenario {
        name: "broken acceptor",
        ..two_claims()
    };
    let started = Instant::now();
    let checker = model::<ForgetsPromises>(&sc)
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    let found: Vec<_> = [
        "one value per version",
        "results are chosen",
        "no two owners",
    ]
    .into_iter()
    .filter_map(|p| {
        checker
            .discovery(p)
            .map(|path| (p, path.into_actions().len()))
    })
    .collect();
    eprintln!(
        "model {}: counterexamples {found:?} after {} states, {:.1?}",
        sc.name,
        checker.unique_state_count(),
        started.elapsed()
    );
    assert!(!found.is_empty(), "the checker missed a broken acceptor");

    // The random walks with every fault catch it too, with and without the fast round.
    let walked = random_walks(&model::<ForgetsPromises>(&every_fault()), 11, 1000, 300);
    assert!(walked.is_err(), "the random walks missed a broken acceptor");
    let fast = Scenario {
        fast: [true, true, false],
        ..every_fault()
    };
    let walked = random_walks(&model::<ForgetsPromises>(&fast), 11, 1000, 300);
    assert!(
        walked.is_err(),
        "the random walks missed a broken acceptor with the fast round"
    );
}
