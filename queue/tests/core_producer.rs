//! The producer core driven by hand and by a seeded simulated network: no sockets, no sleeps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_queue::core::producer::{
    AttemptId, BatchId, GroupSpec, NodeLastOutcome, NodeOutcome, ProduceError, Producer,
    ProducerConfig, ProducerEvent, SubmitError, Transmit,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const APPEND_TIMEOUT_MS: u64 = 5_000;
const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
const PROBE_INTERVAL_MS: u64 = 300;

fn cfg(groups: usize, max_in_flight_batches: usize) -> ProducerConfig {
    ProducerConfig {
        groups: (0..groups)
            .map(|g| GroupSpec {
                name: format!("g{g}"),
                nodes: std::array::from_fn(|n| format!("g{g}-n{n}")),
            })
            .collect(),
        append_timeout_ms: APPEND_TIMEOUT_MS,
        attempt_timeout_ms: ATTEMPT_TIMEOUT_MS,
        group_probe_interval_ms: PROBE_INTERVAL_MS,
        max_in_flight_batches,
    }
}

fn entries(tag: &str, n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

fn acked(first_offset: u64) -> NodeOutcome {
    NodeOutcome::Acked {
        first_offset,
        incarnation: [1; 16],
    }
}

fn failed(reason: &str) -> NodeOutcome {
    NodeOutcome::Failed {
        reason: reason.to_owned(),
    }
}

/// One attempt's 3 transmits, checked to be one per node of one group, all with the same entries.
#[derive(Debug)]
struct Sent {
    attempt: AttemptId,
    batch: BatchId,
    group: usize,
    entries: Arc<[Bytes]>,
}

fn drain(p: &mut Producer) -> (Vec<Sent>, Vec<(usize, usize)>) {
    let mut appends: BTreeMap<AttemptId, (Sent, Vec<usize>)> = BTreeMap::new();
    let mut probes = Vec::new();
    while let Some(t) = p.poll_transmit() {
        match t {
            Transmit::Append {
                attempt,
                batch,
                group,
                node,
                entries,
            } => {
                let (sent, nodes) = appends.entry(attempt).or_insert_with(|| {
                    let sent = Sent {
                        attempt,
                        batch,
                        group,
                        entries: entries.clone(),
                    };
                    (sent, Vec::new())
                });
                assert_eq!(
                    (sent.batch, sent.group),
                    (batch, group),
                    "an attempt is one batch on one group"
                );
                assert_eq!(&sent.entries[..], &entries[..]);
                nodes.push(node);
            }
            Transmit::Probe { group, node } => probes.push((group, node)),
        }
    }
    let sent = appends
        .into_values()
        .map(|(sent, nodes)| {
            assert_eq!(
                nodes,
                vec![0, 1, 2],
                "an attempt goes to the 3 nodes at once"
            );
            sent
        })
        .collect();
    (sent, probes)
}

fn events(p: &mut Producer) -> Vec<ProducerEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

#[test]
fn commits_at_the_second_ack_and_ignores_the_third() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(2, 8)).unwrap();
    let batch = p.submit(t0, entries("a", 3)).unwrap();
    let (sent, _) = drain(&mut p);
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].entries[..], &entries("a", 3)[..]);
    let a = sent[0].attempt;
    p.on_append_result(at(t0, 5), a, 2, acked(40));
    assert!(events(&mut p).is_empty(), "one ack is not a commit");
    assert_eq!(p.in_flight(), 1);
    p.on_append_result(at(t0, 6), a, 0, acked(7));
    assert_eq!(
        events(&mut p),
        vec![ProducerEvent::Committed {
            batch,
            group: sent[0].group,
            acks: vec![(2, 40), (0, 7)]
        }]
    );
    assert_eq!(p.in_flight(), 0);
    p.on_append_result(at(t0, 7), a, 1, acked(9));
    assert!(events(&mut p).is_empty());
    let g = &p.groups()[sent[0].group];
    assert!(g.healthy);
    assert_eq!(
        g.nodes[1].last,
        Some(NodeLastOutcome::Acked {
            first_offset: 9,
            incarnation: [1; 16]
        }),
        "a late 3rd ack still counts for node health"
    );
}

#[test]
fn one_node_down_still_commits_and_keeps_the_group_healthy() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(1, 8)).unwrap();
    let batch = p.submit(t0, entries("b", 1)).unwrap();
    let (sent, _) = drain(&mut p);
    let a = sent[0].attempt;
    p.on_append_result(t0, a, 1, failed("connection refused"));
    p.on_append_result(t0, a, 0, acked(0));
    assert!(events(&mut p).is_empty());
    p.on_append_result(t0, a, 2, acked(0));
    assert_eq!(
        events(&mut p),
        vec![ProducerEvent::Committed {
            batch,
            group: 0,
            acks: vec![(0, 0), (2, 0)]
        }]
    );
    let g = &p.groups()[0];
    assert!(g.healthy);
    assert!(matches!(
        g.nodes[1].last,
        Some(NodeLastOutcome::Failed { .. })
    ));
}

#[test]
fn two_failed_nodes_send_the_same_entries_to_another_group() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(3, 8)).unwrap();
    let batch = p.submit(t0, entries("c", 2)).unwrap();
    let (first, _) = drain(&mut p);
    let g_first = first[0].group;
    p.on_append_result(t0, first[0].attempt, 0, failed("disk full"));
    p.on_append_result(t0, first[0].attempt, 2, failed("connection reset"));
    let ev = events(&mut p);
    assert!(
        matches!(&ev[..], [ProducerEvent::GroupHealthChanged { group, healthy: false, reason }]
            if *group == g_first && reason.contains("disk full")),
        "{ev:?}"
    );
    let (second, _) = drain(&mut p);
    assert_eq!(second.len(), 1, "exactly one new attempt");
    assert_ne!(second[0].group, g_first);
    assert_eq!(second[0].batch, batch);
    assert_ne!(second[0].attempt, first[0].attempt);
    assert!(
        Arc::ptr_eq(&first[0].entries, &second[0].entries),
        "the very same entries (same ids) go to the other group"
    );
    // The late 3rd answer of the abandoned attempt cannot commit anything.
    p.on_append_result(t0, first[0].attempt, 1, acked(3));
    assert!(events(&mut p).is_empty());
    p.on_append_result(t0, second[0].attempt, 1, acked(10));
    p.on_append_result(t0, second[0].attempt, 2, acked(11));
    assert_eq!(
        events(&mut p),
        vec![ProducerEvent::Committed {
            batch,
            group: second[0].group,
            acks: vec![(1, 10), (2, 11)]
        }]
    );
    assert!(!p.groups()[g_first].healthy);
}

#[test]
fn attempt_timeout_fails_over_and_late_acks_of_the_old_attempt_are_ignored() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(2, 8)).unwrap();
    let batch = p.submit(t0, entries("d", 1)).unwrap();
    let (first, _) = drain(&mut p);
    p.on_append_result(at(t0, 10), first[0].attempt, 0, acked(0));
    let deadline = p
        .poll_timeout()
        .expect("an attempt in flight has a deadline");
    assert_eq!(deadline, at(t0, ATTEMPT_TIMEOUT_MS));
    p.on_timeout(at(t0, ATTEMPT_TIMEOUT_MS - 1));
    assert!(
        drain(&mut p).0.is_empty(),
        "nothing happens before the deadline"
    );
    p.on_timeout(deadline);
    let ev = events(&mut p);
    assert!(
        matches!(&ev[..], [ProducerEvent::GroupHealthChanged { healthy: false, reason, .. }]
            if reason.contains("timed out") && reason.contains("1 of 3 acks")),
        "{ev:?}"
    );
    let (second, _) = drain(&mut p);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].group, first[0].group);
    // The old attempt's 2nd ack arrives after it was abandoned: no commit from it.
    p.on_append_result(at(t0, 1_100), first[0].attempt, 1, acked(0));
    assert!(events(&mut p).is_empty());
    assert_eq!(p.in_flight(), 1);
    p.on_append_result(at(t0, 1_200), second[0].attempt, 0, acked(5));
    p.on_append_result(at(t0, 1_200), second[0].attempt, 1, acked(5));
    let ev = events(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(
        matches!(ev[0], ProducerEvent::Committed { batch: b, group, .. } if b == batch && group == second[0].group)
    );
}

#[test]
fn all_groups_down_fails_after_append_timeout_without_spinning() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(2, 8)).unwrap();
    let batch = p.submit(t0, entries("e", 1)).unwrap();
    let mut now = t0;
    let mut attempts = BTreeSet::new();
    let mut failed_at = None;
    for _ in 0..10_000 {
        let (sent, probes) = drain(&mut p);
        for s in sent {
            assert_eq!(s.batch, batch);
            attempts.insert(s.attempt);
            for node in 0..3 {
                p.on_append_result(now, s.attempt, node, failed("connection refused"));
            }
        }
        for (group, node) in probes {
            p.on_probe_result(now, group, node, false);
        }
        for ev in events(&mut p) {
            if let ProducerEvent::Failed { batch: b, error } = ev {
                assert_eq!(b, batch);
                assert!(failed_at.is_none(), "a batch fails once");
                failed_at = Some(now);
                match error {
                    ProduceError::Timeout {
                        append_timeout_ms,
                        groups_tried,
                        groups,
                        last_failure,
                        ..
                    } => {
                        assert_eq!(append_timeout_ms, APPEND_TIMEOUT_MS);
                        assert_eq!((groups_tried, groups), (2, 2));
                        assert!(
                            last_failure.contains("connection refused"),
                            "{last_failure}"
                        );
                    }
                    other => panic!("unexpected error {other}"),
                }
            }
        }
        if p.in_flight() == 0 && drain(&mut p).0.is_empty() {
            break;
        }
        now = p
            .poll_timeout()
            .expect("a batch in flight always has a deadline");
        p.on_timeout(now);
    }
    assert_eq!(failed_at, Some(at(t0, APPEND_TIMEOUT_MS)));
    // Both groups once, then one retry per probe interval (never a busy loop of attempts).
    let max_attempts = 2 + (APPEND_TIMEOUT_MS / PROBE_INTERVAL_MS) as usize;
    assert!(
        attempts.len() >= 3 && attempts.len() <= max_attempts,
        "{} attempts (expected 3..={max_attempts})",
        attempts.len()
    );
}

#[test]
fn a_probe_answered_by_two_nodes_brings_a_group_back() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(2, 8)).unwrap();
    p.submit(t0, entries("f", 1)).unwrap();
    let (sent, _) = drain(&mut p);
    assert_eq!(sent[0].group, 0, "round-robin starts at the first group");
    for node in 0..2 {
        p.on_append_result(t0, sent[0].attempt, node, failed("down"));
    }
    events(&mut p);
    let (moved, _) = drain(&mut p);
    assert_eq!(moved[0].group, 1);
    for node in 0..2 {
        p.on_append_result(t0, moved[0].attempt, node, acked(0));
    }
    events(&mut p);

    // While group 0 is unhealthy, new batches avoid it.
    for i in 0..3 {
        p.submit(t0, entries(&format!("g1-{i}"), 1)).unwrap();
        let (s, _) = drain(&mut p);
        assert_eq!(s[0].group, 1);
        for node in 0..2 {
            p.on_append_result(t0, s[0].attempt, node, acked(0));
        }
    }
    events(&mut p);

    // First probe round: only one node answers, the group stays unhealthy.
    let probe_at = at(t0, PROBE_INTERVAL_MS);
    assert_eq!(p.poll_timeout(), Some(probe_at));
    p.on_timeout(probe_at);
    let (_, probes) = drain(&mut p);
    assert_eq!(probes, vec![(0, 0), (0, 1), (0, 2)]);
    p.on_probe_result(probe_at, 0, 0, true);
    p.on_probe_result(probe_at, 0, 1, false);
    p.on_probe_result(probe_at, 0, 2, false);
    assert!(events(&mut p).is_empty());
    assert!(!p.groups()[0].healthy);

    // Second round: 2 of 3 answer.
    let probe_at = at(t0, 2 * PROBE_INTERVAL_MS);
    assert_eq!(p.poll_timeout(), Some(probe_at));
    p.on_timeout(probe_at);
    let (_, probes) = drain(&mut p);
    assert_eq!(probes.len(), 3);
    p.on_probe_result(probe_at, 0, 2, true);
    assert!(events(&mut p).is_empty());
    p.on_probe_result(probe_at, 0, 1, true);
    let ev = events(&mut p);
    assert!(
        matches!(
            &ev[..],
            [ProducerEvent::GroupHealthChanged {
                group: 0,
                healthy: true,
                ..
            }]
        ),
        "{ev:?}"
    );
    assert!(p.groups()[0].healthy);
    p.on_timeout(at(t0, 20 * PROBE_INTERVAL_MS));
    assert!(drain(&mut p).1.is_empty(), "a healthy group is not probed");
    let probe_at = at(t0, 20 * PROBE_INTERVAL_MS);

    // New batches use both groups again.
    let mut used = BTreeSet::new();
    for i in 0..4 {
        p.submit(probe_at, entries(&format!("rr-{i}"), 1)).unwrap();
        used.insert(drain(&mut p).0[0].group);
    }
    assert_eq!(used, BTreeSet::from([0, 1]));
}

#[test]
fn a_batch_waiting_for_a_healthy_group_goes_as_soon_as_a_probe_finds_one() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(1, 8)).unwrap();
    let batch = p.submit(t0, entries("w", 2)).unwrap();
    let (s, _) = drain(&mut p);
    for node in 0..2 {
        p.on_append_result(t0, s[0].attempt, node, failed("down"));
    }
    events(&mut p);
    assert!(
        drain(&mut p).0.is_empty(),
        "the only group just failed: wait instead of hammering it"
    );
    let probe_at = p.poll_timeout().unwrap();
    p.on_timeout(probe_at);
    let (retry, probes) = drain(&mut p);
    assert_eq!(probes.len(), 3);
    // The pause before retrying equals the probe interval, so the retry and the probe coincide.
    assert_eq!(retry.len(), 1);
    assert_eq!(&retry[0].entries[..], &entries("w", 2)[..]);
    p.on_append_result(probe_at, retry[0].attempt, 0, failed("still down"));
    p.on_append_result(probe_at, retry[0].attempt, 1, failed("still down"));
    events(&mut p);
    assert!(drain(&mut p).0.is_empty());
    p.on_probe_result(probe_at, 0, 0, true);
    p.on_probe_result(probe_at, 0, 2, true);
    let ev = events(&mut p);
    assert!(matches!(
        ev[..],
        [ProducerEvent::GroupHealthChanged { healthy: true, .. }]
    ));
    let (woken, _) = drain(&mut p);
    assert_eq!(woken.len(), 1, "the waiting batch goes at once");
    assert_eq!(woken[0].batch, batch);
    p.on_append_result(probe_at, woken[0].attempt, 0, acked(0));
    p.on_append_result(probe_at, woken[0].attempt, 2, acked(0));
    assert!(
        matches!(events(&mut p)[..], [ProducerEvent::Committed { batch: b, .. }] if b == batch)
    );
}

#[test]
fn with_no_healthy_group_new_batches_use_the_least_recently_failed_one() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(2, 8)).unwrap();
    // Group 0 fails at t=0, group 1 at t=10.
    p.submit(t0, entries("x", 1)).unwrap();
    let (s0, _) = drain(&mut p);
    assert_eq!(s0[0].group, 0);
    for node in 0..2 {
        p.on_append_result(t0, s0[0].attempt, node, failed("down"));
    }
    let (s1, _) = drain(&mut p);
    assert_eq!(s1[0].group, 1);
    for node in 0..2 {
        p.on_append_result(at(t0, 10), s1[0].attempt, node, failed("down"));
    }
    events(&mut p);
    assert!(p.groups().iter().all(|g| !g.healthy));
    p.submit(at(t0, 20), entries("y", 1)).unwrap();
    let (s, _) = drain(&mut p);
    assert_eq!(s.len(), 1, "better to try than to fail outright");
    assert_eq!(s[0].group, 0);
}

#[test]
fn backpressure_and_empty_batches_are_refused() {
    let t0 = Instant::now();
    let mut p = Producer::new(cfg(1, 2)).unwrap();
    assert_eq!(p.submit(t0, Vec::new()), Err(SubmitError::Empty));
    p.submit(t0, entries("1", 1)).unwrap();
    p.submit(t0, entries("2", 1)).unwrap();
    assert_eq!(
        p.submit(t0, entries("3", 1)),
        Err(SubmitError::Backpressure {
            in_flight: 2,
            max_in_flight_batches: 2
        })
    );
    assert_eq!(p.groups()[0].in_flight, 2);
    let (sent, _) = drain(&mut p);
    for node in 0..2 {
        p.on_append_result(t0, sent[0].attempt, node, acked(0));
    }
    assert_eq!(p.in_flight(), 1);
    assert!(p.submit(t0, entries("3", 1)).is_ok());
    let err = ProduceError::from(SubmitError::Empty);
    assert!(err.to_string().contains("at least one entry"));
}

// ---------------------------------------------------------------------------------------------
// Simulation.

/// Runs `f` for many seeds; a failure names its seed, and `HOMEPORT_SIM_SEED=n` reruns just it.
fn for_seeds(count: u64, mut f: impl FnMut(u64)) {
    let seeds: Vec<u64> = match std::env::var("HOMEPORT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HOMEPORT_SIM_SEED must be an integer")],
        Err(_) => (0..count).collect(),
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("simulation failed for seed {seed}; rerun it with HOMEPORT_SIM_SEED={seed}");
            resume_unwind(panic);
        }
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Append {
        attempt: AttemptId,
        node: usize,
        outcome: NodeOutcome,
    },
    Probe {
        group: usize,
        node: usize,
        ok: bool,
    },
}

struct SimNode {
    up: bool,
    /// Silent nodes swallow requests (a partition): the producer only learns by timeout.
    silent: bool,
    log: Vec<Bytes>,
}

struct Sim {
    rng: StdRng,
    t0: Instant,
    now_ms: u64,
    nodes: Vec<[SimNode; 3]>,
    /// (delivery time, sequence) → message; the sequence keeps same-time deliveries in a seeded order.
    net: BTreeMap<(u64, u64), Msg>,
    net_seq: u64,
    /// What each attempt was: (batch, group).
    attempts: HashMap<AttemptId, (BatchId, usize)>,
    /// Acks handed to the producer: (attempt, node) → first offset.
    acks_delivered: HashMap<(AttemptId, usize), u64>,
    submitted: BTreeMap<BatchId, (u64, Vec<Bytes>)>,
    ended: BTreeMap<BatchId, ProducerEvent>,
}

impl Sim {
    fn now(&self) -> Instant {
        at(self.t0, self.now_ms)
    }

    fn send(&mut self, delay_ms: u64, msg: Msg) {
        self.net_seq += 1;
        self.net.insert((self.now_ms + delay_ms, self.net_seq), msg);
    }

    fn delay(&mut self) -> u64 {
        // Mostly fast, sometimes later than the attempt timeout.
        if self.rng.random_bool(0.1) {
            self.rng
                .random_range(ATTEMPT_TIMEOUT_MS / 2..ATTEMPT_TIMEOUT_MS * 2)
        } else {
            self.rng.random_range(0..50)
        }
    }

    fn carry(&mut self, p: &mut Producer) {
        while let Some(t) = p.poll_transmit() {
            match t {
                Transmit::Append {
                    attempt,
                    batch,
                    group,
                    node,
                    entries,
                } => {
                    let want = &self.submitted[&batch].1;
                    assert_eq!(
                        &entries[..],
                        &want[..],
                        "an attempt carries its batch's entries"
                    );
                    let prev = self.attempts.insert(attempt, (batch, group));
                    assert!(prev.is_none() || prev == Some((batch, group)));
                    let n = &mut self.nodes[group][node];
                    if n.silent || self.rng.random_bool(0.03) {
                        continue; // lost on the way
                    }
                    let outcome = if n.up {
                        let first_offset = n.log.len() as u64;
                        n.log.extend(entries.iter().cloned());
                        acked(first_offset)
                    } else {
                        failed("connection refused")
                    };
                    let d = self.delay();
                    self.send(
                        d,
                        Msg::Append {
                            attempt,
                            node,
                            outcome: outcome.clone(),
                        },
                    );
                    if self.rng.random_bool(0.02) {
                        let d = self.delay();
                        self.send(
                            d,
                            Msg::Append {
                                attempt,
                                node,
                                outcome,
                            },
                        );
                    }
                }
                Transmit::Probe { group, node } => {
                    let n = &self.nodes[group][node];
                    if n.silent {
                        continue;
                    }
                    let ok = n.up;
                    let d = self.delay();
                    self.send(d, Msg::Probe { group, node, ok });
                }
            }
        }
        while let Some(ev) = p.poll_event() {
            self.check_event(&ev);
            match ev {
                ProducerEvent::Committed { batch, .. } | ProducerEvent::Failed { batch, .. } => {
                    assert!(
                        self.submitted.contains_key(&batch),
                        "unknown batch {batch:?}"
                    );
                    let prev = self.ended.insert(batch, ev.clone());
                    assert!(
                        prev.is_none(),
                        "batch {batch:?} ended twice: {prev:?} then {ev:?}"
                    );
                }
                ProducerEvent::GroupHealthChanged { .. } => {}
            }
        }
    }

    fn check_event(&self, ev: &ProducerEvent) {
        match ev {
            ProducerEvent::Committed { batch, group, acks } => {
                assert_eq!(acks.len(), 2, "commit at exactly the 2nd ack: {acks:?}");
                assert_ne!(acks[0].0, acks[1].0, "2 distinct nodes: {acks:?}");
                // Both acks were delivered for one and the same attempt of this batch on `group`.
                let attempt = self
                    .attempts
                    .iter()
                    .filter(|(_, (b, g))| b == batch && g == group)
                    .map(|(a, _)| *a)
                    .find(|a| {
                        acks.iter()
                            .all(|(node, off)| self.acks_delivered.get(&(*a, *node)) == Some(off))
                    });
                assert!(
                    attempt.is_some(),
                    "commit {ev:?} is not backed by 2 acks of one attempt"
                );
                let want = &self.submitted[batch].1;
                for (node, off) in acks {
                    let log = &self.nodes[*group][*node].log;
                    let at = *off as usize;
                    assert_eq!(&log[at..at + want.len()], &want[..], "durable where acked");
                }
            }
            ProducerEvent::Failed { batch, .. } => {
                let submitted_ms = self.submitted[batch].0;
                assert!(
                    self.now_ms >= submitted_ms + APPEND_TIMEOUT_MS,
                    "batch {batch:?} failed at {} ms, before its deadline",
                    self.now_ms
                );
            }
            ProducerEvent::GroupHealthChanged { .. } => {}
        }
    }
}

struct SimParams {
    groups: usize,
    batches: usize,
    /// Per node and per 100 ms: chance to flip between up and down.
    flap: f64,
    silent: f64,
}

fn simulate(seed: u64, params: &SimParams) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed);
    let max_in_flight = rng.random_range(1..6);
    let mut p = Producer::new(cfg(params.groups, max_in_flight)).unwrap();
    let nodes = (0..params.groups)
        .map(|_| {
            std::array::from_fn(|_| SimNode {
                up: true,
                silent: false,
                log: Vec::new(),
            })
        })
        .collect();
    let mut sim = Sim {
        rng,
        t0: Instant::now(),
        now_ms: 0,
        nodes,
        net: BTreeMap::new(),
        net_seq: 0,
        attempts: HashMap::new(),
        acks_delivered: HashMap::new(),
        submitted: BTreeMap::new(),
        ended: BTreeMap::new(),
    };
    let mut next_submit_ms = 0;
    let mut next_flap_ms = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "simulation does not terminate");
        // Faults change every 100 ms, and stop once all batches are submitted (so groups recover).
        if sim.now_ms >= next_flap_ms && sim.submitted.len() < params.batches {
            next_flap_ms = sim.now_ms + 100;
            for g in 0..params.groups {
                for n in 0..3 {
                    if sim.rng.random_bool(params.flap) {
                        sim.nodes[g][n].up = !sim.nodes[g][n].up;
                    }
                    sim.nodes[g][n].silent = sim.rng.random_bool(params.silent);
                }
            }
        } else if sim.submitted.len() >= params.batches {
            for node in sim.nodes.iter_mut().flatten() {
                node.up = true;
                node.silent = false;
            }
        }
        if sim.now_ms >= next_submit_ms && sim.submitted.len() < params.batches {
            let n = sim.rng.random_range(1..4);
            let id = sim.submitted.len();
            let batch_entries = entries(&format!("s{seed}-b{id}"), n);
            match p.submit(sim.now(), batch_entries.clone()) {
                Ok(b) => {
                    sim.submitted.insert(b, (sim.now_ms, batch_entries));
                }
                Err(SubmitError::Backpressure { in_flight, .. }) => {
                    assert_eq!(in_flight, max_in_flight);
                    assert_eq!(p.in_flight(), max_in_flight);
                }
                Err(e) => panic!("unexpected submit error {e}"),
            }
            next_submit_ms = sim.now_ms + sim.rng.random_range(0..200);
        }
        sim.carry(&mut p);
        if sim.submitted.len() >= params.batches && p.in_flight() == 0 {
            break;
        }
        if p.in_flight() > 0 {
            assert!(
                p.poll_timeout().is_some(),
                "a batch in flight must have a deadline"
            );
        }
        // Advance to the next thing that happens.
        let mut next = [
            p.poll_timeout()
                .map(|t| t.duration_since(sim.t0).as_millis() as u64),
            sim.net.keys().next().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        if sim.submitted.len() < params.batches {
            let wake = next_submit_ms.min(next_flap_ms);
            next = Some(next.map_or(wake, |n| n.min(wake)));
        }
        let next = next.expect("something is always pending while batches are in flight");
        sim.now_ms = sim.now_ms.max(next);
        let now = sim.now();
        while let Some(entry) = sim.net.first_entry() {
            if entry.key().0 > sim.now_ms {
                break;
            }
            match entry.remove() {
                Msg::Append {
                    attempt,
                    node,
                    outcome,
                } => {
                    if let NodeOutcome::Acked { first_offset, .. } = &outcome {
                        sim.acks_delivered.insert((attempt, node), *first_offset);
                    }
                    p.on_append_result(now, attempt, node, outcome);
                }
                Msg::Probe { group, node, ok } => p.on_probe_result(now, group, node, ok),
            }
            sim.carry(&mut p);
        }
        p.on_timeout(now);
    }
    // Every submitted batch ended exactly once.
    let submitted: Vec<_> = sim.submitted.keys().collect();
    let ended: Vec<_> = sim.ended.keys().collect();
    assert_eq!(
        submitted, ended,
        "every batch ends once, committed or failed"
    );
    sim
}

#[test]
fn simulation_every_batch_ends_exactly_once_and_commits_are_backed_by_two_acks() {
    let mut committed = 0;
    let mut failed = 0;
    for_seeds(150, |seed| {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let params = SimParams {
            groups: rng.random_range(1..4),
            batches: 60,
            flap: rng.random_range(0.0..0.3),
            silent: rng.random_range(0.0..0.1),
        };
        let sim = simulate(seed, &params);
        for ev in sim.ended.values() {
            match ev {
                ProducerEvent::Committed { .. } => committed += 1,
                _ => failed += 1,
            }
        }
    });
    // The fault rates leave most batches committable; a run with no commits means a broken harness.
    assert!(committed > failed, "committed {committed}, failed {failed}");
}

#[test]
fn simulation_without_faults_commits_everything_spread_over_all_groups() {
    for_seeds(30, |seed| {
        let sim = simulate(
            seed,
            &SimParams {
                groups: 3,
                batches: 40,
                flap: 0.0,
                silent: 0.0,
            },
        );
        let mut groups = BTreeSet::new();
        for ev in sim.ended.values() {
            match ev {
                ProducerEvent::Committed { group, .. } => {
                    groups.insert(*group);
                }
                other => panic!("seed {seed}: {other:?} without any fault"),
            }
        }
        assert_eq!(
            groups.len(),
            3,
            "seed {seed}: round-robin over healthy groups"
        );
    });
}
