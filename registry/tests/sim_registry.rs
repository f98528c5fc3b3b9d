//! Registry clients in the seeded network simulation: users claim and release a few contended
//! WeChat IDs from three regions while messages are lost, duplicated and reordered, acceptors
//! crash, writes fail and registry clients crash in the middle of ID changes. Afterwards (faults
//! healed, the sweeper run over every user) the registry must be consistent: no ID held by two
//! users, every holder's ID reserved for it, no ID lost, and every answer a user got agrees with
//! the final state.

mod common;

use std::collections::BTreeMap;

use common::{Faults, RegistryDone, Sim};
use homeport_registry::paxos::ProposerId;
use homeport_registry::paxos::proposer::ProposerConfig;
use homeport_registry::registry::{
    Answer, Operation, Registry, RegistryConfig, RegistryError, RequestId, WxidStatus,
};
use rand::Rng;

const IDS: [&str; 3] = ["alpha1", "bravo2", "charl3"];
const USERS: usize = 5;
const CLIENTS: usize = 3;

fn config() -> RegistryConfig {
    RegistryConfig {
        proposer: ProposerConfig {
            acceptors: 3,
            round_timeout_ms: 200,
            max_attempts: 6,
            backoff_base_ms: 10,
            backoff_max_ms: 200,
            piggyback: true,
            max_pending_ops: 1000,
            max_cached_keys: 100,
            fast_round: true,
        },
        max_steps_per_operation: 40,
    }
}

fn uid(u: usize) -> String {
    format!("sh-{u}")
}

/// What we know a user holds, from the answers it got.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    Holds(Option<String>),
    /// An operation of the user failed midway or its client crashed. Such an operation may still
    /// take effect at any later time (a value it got accepted by one acceptor can be picked up
    /// by a later round, even one of the user's next operation), so from then on only the
    /// registry-wide invariants are checked for this user.
    Unsure,
}

struct Users {
    known: Vec<Known>,
    /// The operation each user waits for: (client, incarnation, request, operation).
    waiting: Vec<Option<(usize, u64, RequestId, Operation)>>,
    seen: usize,
    outcomes: BTreeMap<&'static str, usize>,
}

impl Users {
    /// Checks each new answer against what the user is known to hold, and updates it.
    fn absorb(&mut self, sim: &Sim<Registry>, seed: u64) {
        for (client, inc, (request, result)) in &sim.done[self.seen..] {
            let Some(u) = self.waiting.iter().position(
                |w| matches!(w, Some((c, i, r, _)) if c == client && i == inc && r == request),
            ) else {
                continue;
            };
            let (_, _, _, op) = self.waiting[u].take().unwrap();
            let before = self.known[u].clone();
            if tracing(seed) {
                eprintln!(
                    "t={} user {u} {op:?} -> {result:?} (known {before:?})",
                    sim.now_ms
                );
            }
            let (kind, after) = match (&op, result) {
                (Operation::Claim { wxid, .. }, Ok(Answer::Claimed { released })) => {
                    if let Known::Holds(held) = &before {
                        assert_eq!(
                            released, held,
                            "seed {seed}: user {u} released what it did not hold"
                        );
                    }
                    ("claimed", holds_if_sure(&before, Some(wxid.to_string())))
                }
                (Operation::Claim { wxid, .. }, Ok(Answer::AlreadyHeld)) => {
                    if let Known::Holds(held) = &before {
                        assert_eq!(
                            held.as_deref(),
                            Some(wxid.as_str()),
                            "seed {seed}: user {u}"
                        );
                    }
                    (
                        "already held",
                        holds_if_sure(&before, Some(wxid.to_string())),
                    )
                }
                (Operation::Claim { .. }, Err(RegistryError::Taken { owner, .. })) => {
                    assert_ne!(owner, &uid(u), "seed {seed}: taken by the claimant itself");
                    ("taken", before)
                }
                (Operation::Release { wxid, .. }, Ok(Answer::Released)) => {
                    if let Known::Holds(held) = &before {
                        assert_eq!(
                            held.as_deref(),
                            Some(wxid.as_str()),
                            "seed {seed}: user {u}"
                        );
                    }
                    ("released", holds_if_sure(&before, None))
                }
                (Operation::Release { wxid, .. }, Ok(Answer::AlreadyFree)) => {
                    assert_ne!(
                        before,
                        Known::Holds(Some(wxid.to_string())),
                        "seed {seed}: user {u}"
                    );
                    ("already free", before)
                }
                (Operation::Release { wxid, .. }, Err(RegistryError::NotOwner { owner, .. })) => {
                    assert_ne!(owner, &uid(u), "seed {seed}");
                    assert_ne!(
                        before,
                        Known::Holds(Some(wxid.to_string())),
                        "seed {seed}: user {u}"
                    );
                    ("not owner", before)
                }
                (_, Err(RegistryError::Unavailable { .. } | RegistryError::Contended { .. })) => {
                    ("unavailable", Known::Unsure)
                }
                (op, other) => panic!("seed {seed}: user {u}: {op:?} answered {other:?}"),
            };
            *self.outcomes.entry(kind).or_default() += 1;
            self.known[u] = after;
        }
        self.seen = sim.done.len();
    }

    /// Users whose client crashed lose their answer.
    fn forget_crashed(&mut self, sim: &Sim<Registry>, seed: u64) {
        for u in 0..USERS {
            if let Some((c, inc, _, _)) = &self.waiting[u]
                && sim.clients[*c].incarnation != *inc
            {
                self.waiting[u] = None;
                self.known[u] = Known::Unsure;
                if tracing(seed) {
                    eprintln!("t={} user {u} client crashed", sim.now_ms);
                }
                *self.outcomes.entry("client crashed").or_default() += 1;
            }
        }
    }
}

/// `REGISTRY_SIM_TRACE=<seed>` prints that seed's operations and answers (add
/// `REGISTRY_SIM_TRACE_KEYS=wxid/alpha1,user/sh-1` for every accept of those keys).
fn tracing(seed: u64) -> bool {
    std::env::var("REGISTRY_SIM_TRACE").ok() == Some(seed.to_string())
}

fn holds_if_sure(before: &Known, held: Option<String>) -> Known {
    match before {
        Known::Holds(_) => Known::Holds(held),
        Known::Unsure => Known::Unsure,
    }
}

fn run_one(
    sim: &mut Sim<Registry>,
    client: usize,
    op: Operation,
    deadline_ms: u64,
) -> Result<Answer, RegistryError> {
    let request = sim.with_client(client, |r| r.submit(op)).unwrap();
    let inc = sim.clients[client].incarnation;
    let seen = sim.done.len();
    let found = |s: &Sim<Registry>| {
        s.done[seen..]
            .iter()
            .any(|(c, i, (r, _))| *c == client && *i == inc && *r == request)
    };
    assert!(
        sim.run_until(deadline_ms, found),
        "no answer by virtual time {deadline_ms}"
    );
    let (_, _, (_, result)) = sim.done[seen..]
        .iter()
        .find(|(c, i, (r, _))| *c == client && *i == inc && *r == request)
        .unwrap();
    result.clone()
}

fn faulty_run(seed: u64) -> BTreeMap<&'static str, usize> {
    let mut sim: Sim<Registry> =
        Sim::new(seed, 3, CLIENTS, Faults::harsh(), move |i, incarnation| {
            let id = ProposerId::new(i as u16, incarnation * 7919 + 1);
            Registry::new(config(), id, seed ^ (i as u64) << 16 ^ incarnation).unwrap()
        });
    let mut users = Users {
        known: vec![Known::Holds(None); USERS],
        waiting: vec![None; USERS],
        seen: 0,
        outcomes: BTreeMap::new(),
    };
    let fault_until_ms = 4_000;
    while sim.now_ms < fault_until_ms {
        users.forget_crashed(&sim, seed);
        for u in 0..USERS {
            if users.waiting[u].is_some() {
                continue;
            }
            let wxid = IDS[sim.rng.random_range(0..IDS.len())];
            let op = if sim.rng.random_range(0..10) < 7 {
                Operation::claim(wxid, &uid(u)).unwrap()
            } else {
                Operation::release(wxid, &uid(u)).unwrap()
            };
            let client = u % CLIENTS;
            let request = sim.with_client(client, |r| r.submit(op.clone())).unwrap();
            if tracing(seed) {
                eprintln!(
                    "t={} user {u} submits {op:?} to client {client}",
                    sim.now_ms
                );
            }
            users.waiting[u] = Some((client, sim.clients[client].incarnation, request, op));
        }
        let until = sim.now_ms + 50;
        sim.run_until(until, |_| false);
        users.absorb(&sim, seed);
    }
    sim.heal();
    let deadline = sim.now_ms + 1_000_000;
    sim.run_until(deadline, |s| {
        (0..USERS).all(|u| match &users.waiting[u] {
            None => true,
            Some((c, inc, r, _)) => {
                s.clients[*c].incarnation != *inc
                    || s.done
                        .iter()
                        .any(|(dc, di, (dr, _))| dc == c && di == inc && dr == r)
            }
        })
    });
    users.forget_crashed(&sim, seed);
    users.absorb(&sim, seed);
    assert!(
        users.waiting.iter().all(Option::is_none),
        "seed {seed}: answers missing after healing"
    );

    // The sweeper: finish every user's unfinished change.
    let deadline = sim.now_ms + 1_000_000;
    for u in 0..USERS {
        let r = run_one(
            &mut sim,
            0,
            Operation::roll_forward(&uid(u)).unwrap(),
            deadline,
        );
        assert!(r.is_ok(), "seed {seed}: roll forward of user {u}: {r:?}");
    }

    // Final state: what each user holds, and who holds each ID.
    let mut holder_of: BTreeMap<String, usize> = BTreeMap::new();
    for u in 0..USERS {
        let held = match run_one(
            &mut sim,
            1,
            Operation::user_wxid(&uid(u)).unwrap(),
            deadline,
        ) {
            Ok(Answer::UserWxid {
                held,
                changing: false,
            }) => held,
            other => panic!("seed {seed}: user {u}: {other:?}"),
        };
        if let Known::Holds(expected) = &users.known[u] {
            assert_eq!(
                &held, expected,
                "seed {seed}: user {u} holds what its last answer did not say"
            );
            *users
                .outcomes
                .entry("user checked against its answers")
                .or_default() += 1;
        }
        if let Some(id) = held {
            let previous = holder_of.insert(id.clone(), u);
            assert_eq!(
                previous, None,
                "seed {seed}: {id} held by users {previous:?} and {u}"
            );
        }
    }
    for id in IDS {
        let status = match run_one(&mut sim, 2, Operation::lookup(id).unwrap(), deadline) {
            Ok(Answer::Status(s)) => s,
            other => panic!("seed {seed}: {other:?}"),
        };
        match holder_of.get(id) {
            Some(u) => assert_eq!(
                status,
                WxidStatus::Held { uid: uid(*u) },
                "seed {seed}: {id}"
            ),
            None => {
                assert_eq!(status, WxidStatus::Free, "seed {seed}: {id}");
                // Not lost: a newcomer gets it at once (stale reservations are cleared).
                let r = run_one(
                    &mut sim,
                    2,
                    Operation::claim(id, &format!("new-{id}")).unwrap(),
                    deadline,
                );
                assert_eq!(
                    r,
                    Ok(Answer::Claimed { released: None }),
                    "seed {seed}: {id} is lost"
                );
            }
        }
    }
    users.outcomes
}

#[test]
fn ids_stay_unique_and_consistent_under_faults_and_crashes() {
    let mut totals: BTreeMap<&'static str, usize> = BTreeMap::new();
    for seed in common::seeds("REGISTRY_SIM_SEEDS", 0..24) {
        for (k, v) in faulty_run(seed) {
            *totals.entry(k).or_default() += v;
        }
    }
    eprintln!("outcomes over all seeds: {totals:?}");
    // The runs exercised every path that matters.
    for kind in [
        "claimed",
        "taken",
        "released",
        "not owner",
        "unavailable",
        "client crashed",
        "user checked against its answers",
    ] {
        assert!(
            totals.get(kind).copied().unwrap_or(0) > 0,
            "no {kind:?} in {totals:?}"
        );
    }
}

#[test]
fn without_faults_every_operation_answers_definitely() {
    let mut sim: Sim<Registry> = Sim::new(5, 3, CLIENTS, Faults::none(), |i, _| {
        Registry::new(config(), ProposerId::new(i as u16, 1), i as u64).unwrap()
    });
    // Concurrent claims of one ID from three regions: exactly one wins.
    let mut requests = Vec::new();
    for client in 0..CLIENTS {
        let op = Operation::claim("alpha1", &uid(client)).unwrap();
        requests.push(sim.with_client(client, |r| r.submit(op)).unwrap());
    }
    assert!(sim.run_until(1_000_000, |s| s.done.len() == CLIENTS));
    let wins: Vec<&RegistryDone> = sim
        .done
        .iter()
        .map(|(_, _, d)| d)
        .filter(|(_, r)| matches!(r, Ok(Answer::Claimed { .. })))
        .collect();
    assert_eq!(wins.len(), 1, "{:?}", sim.done);
    for (_, _, (_, r)) in &sim.done {
        assert!(
            matches!(
                r,
                Ok(Answer::Claimed { .. }) | Err(RegistryError::Taken { .. })
            ),
            "{r:?}"
        );
    }
}
