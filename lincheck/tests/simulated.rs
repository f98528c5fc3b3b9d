//! Random histories from a simulated system: a correct atomic store is always accepted, one with
//! an injected bug (a replica serving stale reads, acked writes that are lost, claims decided on a
//! stale replica) is rejected; and the search agrees with brute force on tiny histories.
//!
//! Every history comes from a fixed seed, so a failure reproduces (the seed is in the message).

use std::collections::HashMap;

use homeport_lincheck::models::{CasOp, CasRegister, CasRet, Registry, RegistryOp, RegistryRet};
use homeport_lincheck::{CheckOptions, History, Operation, Outcome, SequentialSpec, check};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How far behind the stale replica is, in ticks; an operation lasts 2..=20 ticks.
const REPLICA_LAG_TICKS: u64 = 60;

/// One simulated operation: invoked, takes effect at `effect`, answered at `returned`.
struct Planned<Op> {
    key: u8,
    op: Op,
    invoked: u64,
    effect: u64,
    returned: u64,
    /// The client never hears back; the operation took effect only if `applied`.
    unknown: bool,
    applied: bool,
}

struct Shape {
    clients: usize,
    ops_per_client: usize,
    keys: u8,
    unknown_rate: f64,
}

/// Each client issues one operation at a time with random durations and pauses; after an
/// unknown outcome it goes on with its next operation, as a client that timed out does.
fn plan<Op>(
    rng: &mut StdRng,
    shape: &Shape,
    mut gen_op: impl FnMut(&mut StdRng) -> Op,
) -> Vec<Planned<Op>> {
    let mut planned = Vec::new();
    for _ in 0..shape.clients {
        let mut t = rng.random_range(0..10u64);
        for _ in 0..shape.ops_per_client {
            let invoked = t;
            let effect = invoked + rng.random_range(1..=10);
            let returned = effect + rng.random_range(1..=10);
            let unknown = rng.random_bool(shape.unknown_rate);
            planned.push(Planned {
                key: rng.random_range(0..shape.keys),
                op: gen_op(rng),
                invoked,
                effect,
                returned,
                unknown,
                applied: !unknown || rng.random_bool(0.5),
            });
            t = returned + rng.random_range(0..=5);
        }
    }
    planned
}

/// The true state of every key, and its past, so a replica can answer from a moment ago.
struct World<S: SequentialSpec> {
    spec: S,
    past: HashMap<u8, Vec<(u64, S::State)>>,
}

impl<S: SequentialSpec> World<S> {
    fn new(spec: S) -> Self {
        World {
            spec,
            past: HashMap::new(),
        }
    }

    fn now(&self, key: u8) -> S::State {
        self.at(key, u64::MAX)
    }

    fn at(&self, key: u8, t: u64) -> S::State {
        self.past
            .get(&key)
            .and_then(|v| v.iter().rev().find(|(at, _)| *at <= t))
            .map_or_else(|| self.spec.init(), |(_, s)| s.clone())
    }

    fn set(&mut self, key: u8, t: u64, state: S::State) {
        self.past.entry(key).or_default().push((t, state));
    }

    /// A correct, atomic execution of `op` at `t`.
    fn apply(&mut self, key: u8, t: u64, op: &S::Op) -> S::Ret {
        let (next, ret) = self.spec.step(&self.now(key), op);
        self.set(key, t, next);
        ret
    }
}

/// Runs the plan in effect order through `execute` and records the history clients saw.
fn run<S: SequentialSpec>(
    spec: S,
    mut planned: Vec<Planned<S::Op>>,
    rng: &mut StdRng,
    mut execute: impl FnMut(&mut World<S>, &mut StdRng, &Planned<S::Op>) -> S::Ret,
) -> History<u8, S::Op, S::Ret> {
    planned.sort_by_key(|p| (p.effect, p.invoked));
    let mut world = World::new(spec);
    let mut rets = Vec::with_capacity(planned.len());
    for p in &planned {
        rets.push(if p.applied {
            Some(execute(&mut world, rng, p))
        } else {
            None
        });
    }
    let mut h = History::new();
    for (p, ret) in planned.into_iter().zip(rets) {
        match ret {
            Some(ret) if !p.unknown => {
                h.push_returned(p.key, p.op, ret, p.invoked, p.returned)
                    .unwrap();
            }
            _ => {
                h.push_unknown(p.key, p.op, p.invoked);
            }
        }
    }
    h
}

fn cas_op(rng: &mut StdRng) -> CasOp<u8> {
    match rng.random_range(0..10) {
        0..4 => CasOp::Read,
        4..7 => CasOp::Write(rng.random_range(0..5)),
        _ => CasOp::Cas {
            expected: rng.random_bool(0.7).then(|| rng.random_range(0..5)),
            new: rng.random_range(0..5),
        },
    }
}

fn registry_op(rng: &mut StdRng) -> RegistryOp<u8> {
    let uid = rng.random_range(0..4);
    match rng.random_range(0..10) {
        0..4 => RegistryOp::Claim(uid),
        4..6 => RegistryOp::Release(uid),
        _ => RegistryOp::Lookup,
    }
}

const BUSY: Shape = Shape {
    clients: 8,
    ops_per_client: 150,
    keys: 3,
    unknown_rate: 0.0,
};

const BUSY_WITH_UNKNOWNS: Shape = Shape {
    unknown_rate: 0.1,
    ..BUSY
};

fn cas_history(
    seed: u64,
    shape: &Shape,
    execute: impl FnMut(&mut World<CasRegister<u8>>, &mut StdRng, &Planned<CasOp<u8>>) -> CasRet<u8>,
) -> History<u8, CasOp<u8>, CasRet<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let planned = plan(&mut rng, shape, cas_op);
    run(CasRegister::new(), planned, &mut rng, execute)
}

fn correct_cas(
    w: &mut World<CasRegister<u8>>,
    _: &mut StdRng,
    p: &Planned<CasOp<u8>>,
) -> CasRet<u8> {
    w.apply(p.key, p.effect, &p.op)
}

#[test]
fn atomic_register_histories_are_accepted() {
    for seed in 0..40 {
        for shape in [&BUSY, &BUSY_WITH_UNKNOWNS] {
            let h = cas_history(seed, shape, correct_cas);
            let v = check(&CasRegister::new(), &h, &CheckOptions::default());
            assert!(v.is_linearizable(), "seed {seed}: {v}");
        }
    }
}

#[test]
fn atomic_registry_histories_are_accepted() {
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let planned = plan(&mut rng, &BUSY_WITH_UNKNOWNS, registry_op);
        let h = run(Registry::new(), planned, &mut rng, |w, _, p| {
            w.apply(p.key, p.effect, &p.op)
        });
        let v = check(&Registry::new(), &h, &CheckOptions::default());
        assert!(v.is_linearizable(), "seed {seed}: {v}");
    }
}

#[test]
fn stale_replica_reads_are_rejected() {
    for seed in 0..20 {
        for shape in [&BUSY, &BUSY_WITH_UNKNOWNS] {
            let h = cas_history(seed, shape, |w, _, p| match p.op {
                // Reads go to a replica that is REPLICA_LAG_TICKS behind.
                CasOp::Read => {
                    CasRet::Read(w.at(p.key, p.effect.saturating_sub(REPLICA_LAG_TICKS)))
                }
                _ => w.apply(p.key, p.effect, &p.op),
            });
            let v = check(&CasRegister::new(), &h, &CheckOptions::default());
            let violation = v
                .violation()
                .unwrap_or_else(|| panic!("seed {seed}: stale reads accepted: {v}"));
            // The explained operation is one whose answer the client heard.
            assert!(
                matches!(violation.failed.outcome, Outcome::Returned(_)),
                "seed {seed}: explained an operation of unknown outcome: {violation}"
            );
        }
    }
}

#[test]
fn lost_writes_are_rejected() {
    for seed in 0..20 {
        let h = cas_history(seed, &BUSY, |w, rng, p| match p.op {
            // One acked write in ten never reaches the store.
            CasOp::Write(_) if rng.random_bool(0.1) => CasRet::Written,
            _ => w.apply(p.key, p.effect, &p.op),
        });
        let v = check(&CasRegister::new(), &h, &CheckOptions::default());
        assert!(
            v.violation().is_some(),
            "seed {seed}: lost writes accepted: {v}"
        );
    }
}

#[test]
fn claims_decided_on_a_stale_replica_are_rejected() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let planned = plan(&mut rng, &BUSY_WITH_UNKNOWNS, registry_op);
        let h = run(Registry::new(), planned, &mut rng, |w, _, p| match p.op {
            // Split brain: the claim checks a stale copy, then overwrites the owner.
            RegistryOp::Claim(uid) => {
                let seen = w.at(p.key, p.effect.saturating_sub(REPLICA_LAG_TICKS));
                match seen {
                    Some(owner) if owner != uid => RegistryRet::Owned(owner),
                    _ => {
                        w.set(p.key, p.effect, Some(uid));
                        RegistryRet::Claimed
                    }
                }
            }
            _ => w.apply(p.key, p.effect, &p.op),
        });
        let v = check(&Registry::new(), &h, &CheckOptions::default());
        assert!(
            v.violation().is_some(),
            "seed {seed}: split brain accepted: {v}"
        );
    }
}

/// Whether some subset of the unknown operations and some order of those and all answered ones
/// respects real time and explains every answer: the definition, searched exhaustively.
fn brute_force<S: SequentialSpec>(spec: &S, ops: &[Operation<u8, S::Op, S::Ret>]) -> bool {
    fn go<S: SequentialSpec>(
        spec: &S,
        ops: &[Operation<u8, S::Op, S::Ret>],
        left: &mut Vec<usize>,
        state: &S::State,
    ) -> bool {
        if left.iter().all(|&i| ops[i].outcome == Outcome::Unknown) {
            return true;
        }
        for pos in 0..left.len() {
            let x = &ops[left[pos]];
            // Something still unplaced returned before x was invoked: x cannot go next.
            let blocked = left
                .iter()
                .any(|&y| ops[y].returned_ns.is_some_and(|r| r < x.invoked_ns));
            if blocked {
                continue;
            }
            let (next, ret) = spec.step(state, &x.op);
            if let Outcome::Returned(r) = &x.outcome
                && *r != ret
            {
                continue;
            }
            let i = left.remove(pos);
            let ok = go(spec, ops, left, &next);
            left.insert(pos, i);
            if ok {
                return true;
            }
        }
        // Unknown operations may also never happen: drop one and go on.
        for pos in 0..left.len() {
            if ops[left[pos]].outcome == Outcome::Unknown {
                let i = left.remove(pos);
                let ok = go(spec, ops, left, state);
                left.insert(pos, i);
                if ok {
                    return true;
                }
            }
        }
        false
    }
    let mut left: Vec<usize> = (0..ops.len()).collect();
    go(spec, ops, &mut left, &spec.init())
}

/// Random one-key histories of 1..=6 operations (a quarter of unknown outcome) from
/// `random_op`, checked both ways; both answers must be well represented.
fn agrees_with_brute_force<S: SequentialSpec>(
    spec: &S,
    mut random_op: impl FnMut(&mut StdRng) -> (S::Op, S::Ret),
) where
    S::Op: std::fmt::Debug,
{
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..3_000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = History::new();
        for _ in 0..rng.random_range(1..=6) {
            let (op, ret) = random_op(&mut rng);
            let invoked = rng.random_range(0..12);
            if rng.random_bool(0.25) {
                h.push_unknown(0u8, op, invoked);
            } else {
                let returned = invoked + rng.random_range(1..8);
                h.push_returned(0u8, op, ret, invoked, returned).unwrap();
            }
        }
        let expected = brute_force(spec, h.ops());
        let v = check(spec, &h, &CheckOptions::default());
        assert_eq!(v.is_linearizable(), expected, "seed {seed}: {v}\n{h:#?}");
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    // Both answers must be well represented, or the comparison says little.
    assert!(
        accepted > 300 && rejected > 300,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn search_agrees_with_brute_force_on_tiny_histories() {
    agrees_with_brute_force(&CasRegister::<u8>::new(), |rng| {
        let op = match rng.random_range(0..3) {
            0 => CasOp::Read,
            1 => CasOp::Write(rng.random_range(0..2)),
            _ => CasOp::Cas {
                expected: rng.random_bool(0.5).then(|| rng.random_range(0..2)),
                new: rng.random_range(0..2),
            },
        };
        let ret = match op {
            CasOp::Read => CasRet::Read(rng.random_bool(0.7).then(|| rng.random_range(0..2))),
            CasOp::Write(_) => CasRet::Written,
            CasOp::Cas { .. } => CasRet::Cas(rng.random_bool(0.5)),
        };
        (op, ret)
    });
}

#[test]
fn search_agrees_with_brute_force_on_tiny_registry_histories() {
    agrees_with_brute_force(&Registry::<u8>::new(), |rng| {
        let uid = rng.random_range(0..2);
        match rng.random_range(0..3) {
            0 => (
                RegistryOp::Claim(uid),
                if rng.random_bool(0.6) {
                    RegistryRet::Claimed
                } else {
                    RegistryRet::Owned(1 - uid)
                },
            ),
            1 => (
                RegistryOp::Release(uid),
                [
                    RegistryRet::Released,
                    RegistryRet::NotOwner,
                    RegistryRet::NotHeld,
                ][rng.random_range(0..3)]
                .clone(),
            ),
            _ => (
                RegistryOp::Lookup,
                RegistryRet::Found(rng.random_bool(0.7).then(|| rng.random_range(0..2))),
            ),
        }
    });
}
