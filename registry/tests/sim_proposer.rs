//! Proposers and acceptors in the seeded network simulation: safety under loss, duplication,
//! reordering, acceptor crashes, failing writes and proposer crashes; progress once faults stop;
//! the one-round-trip path; the retry bound.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Faults, ProposerDone, Sim};
use homeport_registry::paxos::ProposerId;
use homeport_registry::paxos::proposer::{
    Change, ChangeRejected, OpId, ProposeError, Proposer, ProposerConfig,
};
use rand::Rng;

/// Appends a token to a list unless it is there already, or reads. Changes must be idempotent:
/// a round that fails after its accept reached some acceptors may have its value chosen by
/// another proposer's round, and the retry then applies the change again on top.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ListOp {
    Append(u64),
    Read,
}

impl Change for ListOp {
    fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ChangeRejected> {
        match self {
            ListOp::Read => Ok(current.cloned()),
            ListOp::Append(token) if tokens(current).contains(token) => Ok(current.cloned()),
            ListOp::Append(token) => {
                let mut b = BytesMut::new();
                if let Some(c) = current {
                    b.extend_from_slice(c);
                }
                b.put_u64(*token);
                Ok(Some(b.freeze()))
            }
        }
    }
}

fn tokens(v: Option<&Bytes>) -> Vec<u64> {
    v.map(|b| {
        b.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte tokens")))
            .collect()
    })
    .unwrap_or_default()
}

fn config(piggyback: bool) -> ProposerConfig {
    ProposerConfig {
        acceptors: 3,
        round_timeout_ms: 200,
        max_attempts: 6,
        backoff_base_ms: 10,
        backoff_max_ms: 200,
        piggyback,
        max_pending_ops: 1000,
        max_cached_keys: 100,
        fast_round: true,
    }
}

fn sim(seed: u64, clients: usize, faults: Faults, piggyback: bool) -> Sim<Proposer<ListOp>> {
    sim_with(seed, clients, faults, config(piggyback))
}

fn sim_with(
    seed: u64,
    clients: usize,
    faults: Faults,
    config: ProposerConfig,
) -> Sim<Proposer<ListOp>> {
    Sim::new(seed, 3, clients, faults, move |i, incarnation| {
        let id = ProposerId::new(i as u16, incarnation.wrapping_mul(0x9e37_79b9) + 1);
        Proposer::new(config.clone(), id, seed ^ (i as u64) << 8 ^ incarnation).unwrap()
    })
}

/// (client, incarnation, op) → (key, op).
type Submitted = BTreeMap<(usize, u64, OpId), (String, ListOp)>;

fn submit(
    sim: &mut Sim<Proposer<ListOp>>,
    submitted: &mut Submitted,
    client: usize,
    key: &str,
    op: ListOp,
) {
    submit_with(sim, submitted, client, key, op, false)
}

/// `fast`: try the fast round first (the key may well not be new: then it falls back).
fn submit_with(
    sim: &mut Sim<Proposer<ListOp>>,
    submitted: &mut Submitted,
    client: usize,
    key: &str,
    op: ListOp,
    fast: bool,
) {
    let id = sim
        .with_client(client, |p| {
            if fast {
                p.submit_fast(key, op.clone())
            } else {
                p.submit(key, op.clone())
            }
        })
        .unwrap();
    let inc = sim.clients[client].incarnation;
    submitted.insert((client, inc, id), (key.to_owned(), op));
}

fn all_done(sim: &Sim<Proposer<ListOp>>, submitted: &Submitted) -> bool {
    let done: BTreeSet<_> = sim
        .done
        .iter()
        .map(|(c, inc, (op, _, _))| (*c, *inc, *op))
        .collect();
    submitted
        .keys()
        .filter(|(c, inc, _)| sim.clients[*c].incarnation == *inc)
        .all(|k| done.contains(k))
}

fn results<'a>(
    sim: &'a Sim<Proposer<ListOp>>,
    submitted: &'a Submitted,
) -> impl Iterator<Item = (&'a String, &'a ListOp, &'a ProposerDone)> + 'a {
    sim.done.iter().map(move |(c, inc, done)| {
        let (key, op) = &submitted[&(*c, *inc, done.0)];
        (key, op, done)
    })
}

/// One seeded run: random appends from 3 proposers on 3 keys under `Faults::harsh` (half of
/// them trying the fast round first, which races on a new key and falls back on a used one),
/// then heal, then check everything any proposer reported against the final chosen values.
fn faulty_run(seed: u64, piggyback: bool) -> common::Stats {
    let mut sim = sim(seed, 3, Faults::harsh(), piggyback);
    let mut submitted = Submitted::new();
    let keys = ["k0", "k1", "k2"];
    let mut next_token = 1u64;
    for _ in 0..8 {
        for client in 0..3 {
            let key = keys[sim.rng.random_range(0..keys.len())];
            let fast = sim.rng.random_range(0..2) == 0;
            submit_with(
                &mut sim,
                &mut submitted,
                client,
                key,
                ListOp::Append(next_token),
                fast,
            );
            next_token += 1;
        }
        let until = sim.now_ms + 150;
        sim.run_until(until, |_| false);
    }
    sim.heal();
    // Progress: once faults stop, every operation of a live proposer ends (some may have failed
    // with NoMajority during the faults: the retry bound).
    let deadline = sim.now_ms + 600_000;
    assert!(
        sim.run_until(deadline, |s| all_done(s, &submitted)),
        "seed {seed}: operations still pending after healing"
    );
    // ... and new ones succeed (one at a time: concurrent ones may duel, see
    // `contending_proposers_all_get_through`).
    for client in 0..3 {
        for key in keys {
            submit(
                &mut sim,
                &mut submitted,
                client,
                key,
                ListOp::Append(next_token),
            );
            next_token += 1;
            let deadline = sim.now_ms + 600_000;
            assert!(
                sim.run_until(deadline, |s| all_done(s, &submitted)),
                "seed {seed}"
            );
            let (_, _, (_, _, result)) = sim.done.last().unwrap();
            assert!(
                result.is_ok(),
                "seed {seed}: {key}: {result:?} after healing"
            );
        }
    }
    // The final value of each key, read through a proposer.
    let mut finals = BTreeMap::new();
    for key in keys {
        submit(&mut sim, &mut submitted, 0, key, ListOp::Read);
        let deadline = sim.now_ms + 600_000;
        assert!(
            sim.run_until(deadline, |s| all_done(s, &submitted)),
            "seed {seed}"
        );
        let (_, _, (_, _, result)) = sim.done.last().unwrap();
        let read = result.as_ref().expect("read after healing");
        assert_eq!(read.before, read.after);
        finals.insert(key.to_owned(), read.after.clone());
    }

    for (key, fin) in &finals {
        let list = tokens(fin.value.as_ref());
        assert_eq!(
            fin.version as usize,
            list.len(),
            "seed {seed}: one version per append"
        );
        let unique: BTreeSet<_> = list.iter().collect();
        assert_eq!(
            unique.len(),
            list.len(),
            "seed {seed}: {key}: an append applied twice: {list:?}"
        );
    }
    for (key, op, (_, _, result)) in results(&sim, &submitted) {
        let list = tokens(finals[key].value.as_ref());
        match (op, result) {
            (ListOp::Append(token), Ok(c)) => {
                assert!(
                    sim.log.is_chosen(key, &c.after),
                    "seed {seed}: {key}: reported but not chosen"
                );
                let mut expected = tokens(c.before.value.as_ref());
                if expected.contains(token) {
                    // An earlier round of this operation got chosen through another proposer.
                    assert_eq!(c.after, c.before, "seed {seed}");
                } else {
                    expected.push(*token);
                    assert_eq!(c.after.version, c.before.version + 1, "seed {seed}");
                }
                assert_eq!(tokens(c.after.value.as_ref()), expected, "seed {seed}");
                assert!(
                    list.contains(token),
                    "seed {seed}: {key}: acknowledged append {token} lost"
                );
                // One history per key: every reported value is a prefix of the final one.
                assert_eq!(
                    &list[..expected.len()],
                    &expected[..],
                    "seed {seed}: {key}: history forked"
                );
            }
            (ListOp::Append(token), Err(e)) if !e.maybe_applied() => {
                assert!(
                    !list.contains(token),
                    "seed {seed}: {key}: failed append {token} took effect: {e}"
                );
            }
            (ListOp::Read, Ok(c)) => {
                assert!(
                    sim.log.is_chosen(key, &c.after),
                    "seed {seed}: read of an unchosen value"
                );
                assert_eq!(
                    &list[..c.after.version as usize],
                    &tokens(c.after.value.as_ref())[..]
                );
            }
            (_, Err(e)) => assert!(
                matches!(e, ProposeError::NoMajority { .. }),
                "seed {seed}: {e}"
            ),
        }
    }
    sim.stats.clone()
}

#[test]
fn safety_and_progress_under_faults_with_piggyback() {
    let mut totals = common::Stats::default();
    for seed in common::seeds("PROPOSER_SIM_SEEDS", 0..100) {
        let s = faulty_run(seed, true);
        totals.dropped += s.dropped;
        totals.duplicated += s.duplicated;
        totals.acceptor_crashes += s.acceptor_crashes;
        totals.client_crashes += s.client_crashes;
        totals.write_failures += s.write_failures;
    }
    // The faults really happened (the test would prove little otherwise).
    assert!(
        totals.dropped > 100 && totals.duplicated > 100,
        "{totals:?}"
    );
    assert!(
        totals.acceptor_crashes > 5 && totals.client_crashes > 2,
        "{totals:?}"
    );
    assert!(totals.write_failures > 20, "{totals:?}");
}

#[test]
fn safety_and_progress_under_faults_without_piggyback() {
    for seed in common::seeds("PROPOSER_SIM_SEEDS", 100..120) {
        faulty_run(seed, false);
    }
}

#[test]
fn contending_proposers_all_get_through() {
    // Three proposers change one key at the same moment, over and over: conflicts, randomized
    // backoff, and each gets through within its attempts (no faults here). The backoff starts
    // at about one round trip (here up to 2 x 20 ms), as it should in a deployment.
    let config = ProposerConfig {
        backoff_base_ms: 40,
        backoff_max_ms: 1_000,
        max_attempts: 8,
        ..config(true)
    };
    let mut attempts_needed = Vec::new();
    for seed in common::seeds("PROPOSER_SIM_SEEDS", 200..260) {
        let mut sim = sim_with(seed, 3, Faults::none(), config.clone());
        let mut submitted = Submitted::new();
        let mut token = 0;
        for _ in 0..4 {
            for client in 0..3 {
                token += 1;
                submit(&mut sim, &mut submitted, client, "k", ListOp::Append(token));
            }
            assert!(
                sim.run_until(u64::MAX, |s| all_done(s, &submitted)),
                "seed {seed}"
            );
        }
        for (_, op, (_, _, result)) in results(&sim, &submitted) {
            let c = result
                .as_ref()
                .unwrap_or_else(|e| panic!("seed {seed}: {op:?}: {e}"));
            attempts_needed.push(c.round_trips);
        }
    }
    let most = attempts_needed.iter().max().unwrap();
    assert!(
        *most > 2,
        "the proposers never conflicted, so this proved nothing"
    );
}

#[test]
fn a_steady_writer_pays_one_round_trip_per_change() {
    let mut sim = sim(1, 2, Faults::none(), true);
    let mut submitted = Submitted::new();
    let mut trips = Vec::new();
    for token in 1..=5 {
        submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(token));
        assert!(sim.run_until(10_000, |s| all_done(s, &submitted)));
        let (_, _, (_, _, result)) = sim.done.last().unwrap();
        trips.push(result.as_ref().unwrap().round_trips);
    }
    assert_eq!(trips, [2, 1, 1, 1, 1]);
    assert_eq!(
        sim.stats.prepares_sent, 3,
        "one prepare round for five changes"
    );
    assert!(sim.clients[0].client.holds_next_ballot("k"));

    // Another proposer changes the key: the steady writer's next accept meets its higher
    // promise, falls back to a full round, and builds on the other change.
    submit(&mut sim, &mut submitted, 1, "k", ListOp::Append(100));
    assert!(sim.run_until(10_000, |s| all_done(s, &submitted)));
    submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(6));
    assert!(sim.run_until(10_000, |s| all_done(s, &submitted)));
    let (_, _, (_, _, result)) = sim.done.last().unwrap();
    let c = result.as_ref().unwrap();
    assert!(
        c.round_trips >= 3,
        "piggyback accept refused, then a full round: {c:?}"
    );
    assert_eq!(tokens(c.after.value.as_ref()), [1, 2, 3, 4, 5, 100, 6]);
    assert_eq!(c.after.version, 7);
}

#[test]
fn a_read_of_a_settled_value_takes_one_round_trip_and_no_accept() {
    // Without piggybacking: a piggybacked promise (of the writer's next ballot) would make this
    // reader's first prepare conflict, costing it a round (see the next test).
    let mut sim = sim(2, 2, Faults::none(), false);
    let mut submitted = Submitted::new();
    submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(7));
    assert!(sim.run_until(10_000, |s| all_done(s, &submitted)));
    // Let the third accept land too, so every acceptor holds the value.
    sim.run_until(10_000, |_| false);
    let accepts = sim.stats.accepts_sent;
    submit(&mut sim, &mut submitted, 1, "k", ListOp::Read);
    assert!(sim.run_until(20_000, |s| all_done(s, &submitted)));
    let (_, _, (_, _, result)) = sim.done.last().unwrap();
    let c = result.as_ref().unwrap();
    assert_eq!(c.round_trips, 1);
    assert_eq!(tokens(c.after.value.as_ref()), [7]);
    assert_eq!(
        sim.stats.accepts_sent, accepts,
        "no accept round for a settled read"
    );
}

#[test]
fn another_proposer_after_a_steady_writer_pays_one_conflict_then_takes_over() {
    let mut sim = sim(2, 2, Faults::none(), true);
    let mut submitted = Submitted::new();
    submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(7));
    assert!(sim.run_until(10_000, |s| all_done(s, &submitted)));
    sim.run_until(10_000, |_| false);
    submit(&mut sim, &mut submitted, 1, "k", ListOp::Read);
    assert!(sim.run_until(20_000, |s| all_done(s, &submitted)));
    let (_, _, (_, _, result)) = sim.done.last().unwrap();
    let c = result.as_ref().unwrap();
    // Prepare refused (the writer holds its next ballot), prepare again above it: settled.
    assert_eq!(c.round_trips, 2, "{c:?}");
    assert_eq!(tokens(c.after.value.as_ref()), [7]);
    // The reader's higher prepare took the key over: the writer's next change needs a full
    // round after its piggybacked accept is refused.
    submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(8));
    assert!(sim.run_until(40_000, |s| all_done(s, &submitted)));
    let (_, _, (_, _, result)) = sim.done.last().unwrap();
    let c = result.as_ref().unwrap();
    assert_eq!(c.round_trips, 3, "{c:?}");
    assert_eq!(tokens(c.after.value.as_ref()), [7, 8]);
}

#[test]
fn retries_stop_at_max_attempts_when_no_majority_answers() {
    let mut sim = sim(3, 1, Faults::none(), true);
    for slot in &mut sim.acceptors[1..] {
        slot.down_until = Some(u64::MAX);
    }
    let mut submitted = Submitted::new();
    submit(&mut sim, &mut submitted, 0, "k", ListOp::Append(1));
    assert!(sim.run_until(1_000_000, |s| all_done(s, &submitted)));
    let (_, _, (_, _, result)) = sim.done.last().unwrap();
    match result {
        Err(ProposeError::NoMajority {
            attempts,
            maybe_applied,
            ..
        }) => {
            assert_eq!(*attempts, 6);
            assert!(!maybe_applied, "no round got to accept");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.stats.prepares_sent, 6 * 3);
    assert_eq!(sim.stats.accepts_sent, 0);
    assert!(
        result
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("max_attempts")
    );
}
