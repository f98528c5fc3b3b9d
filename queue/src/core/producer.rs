//! The producer's commit rule, failover and group health, as a sans-IO state machine.
//!
//! A batch of entries goes to the 3 nodes of one group at once (an *attempt*). It is committed at
//! the 2nd ack of that attempt. If 2 nodes of the attempt fail, or the attempt times out, the group
//! is marked unhealthy and the *same* entries (same bytes, hence same ids) go to another group, until
//! one commits them or `append_timeout_ms` has passed since the batch was submitted.
//!
//! Each producer judges group health by itself (no coordinator): a failed attempt marks the group
//! unhealthy, a probe answered by 2 of its 3 nodes (or a committed attempt) marks it healthy again.
//!
//! At least once, by design: an abandoned attempt may still reach 2 nodes after the batch moved on,
//! so the same entries can end up committed in two groups. They carry the same ids, and consumers
//! apply by id and version, so the duplicate is harmless. Waiting for the abandoned attempt instead
//! would tie the batch to the slow group that made us abandon it.
//!
//! Usage by a shell: [`Producer::submit`] batches; after every input drain
//! [`Producer::poll_transmit`] (send them) and [`Producer::poll_event`] (answer callers); sleep
//! until [`Producer::poll_timeout`] or the next result, whichever comes first; call
//! [`Producer::on_timeout`] when the deadline passes.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ACKS_TO_COMMIT, NODE_INCARNATION_BYTES, NODES_PER_GROUP};

/// What the producer needs to know; units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    pub groups: Vec<GroupSpec>,
    /// From submit to the batch's `Failed`: the time a caller waits at most.
    pub append_timeout_ms: u64,
    /// From an attempt's start to giving up on its group (unless 2 nodes acked by then).
    pub attempt_timeout_ms: u64,
    /// Probe period of unhealthy groups, and the pause before a batch that has tried every group
    /// (none healthy) tries them again.
    pub group_probe_interval_ms: u64,
    pub max_in_flight_batches: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    /// Node ids, one per campus. Indexes into this array are the `node` of transmits and results.
    pub nodes: [String; NODES_PER_GROUP],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// A request the shell must send, then report with [`Producer::on_append_result`] or
/// [`Producer::on_probe_result`]. A shell that loses a request may stay silent: the attempt
/// times out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Append {
        attempt: AttemptId,
        batch: BatchId,
        group: usize,
        node: usize,
        entries: Arc<[Bytes]>,
    },
    /// A cheap Status request, to learn whether an unhealthy group answers again.
    Probe { group: usize, node: usize },
}

/// How one node answered one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutcome {
    /// The entries are durable on the node at `first_offset..first_offset + entries.len()`.
    Acked {
        first_offset: u64,
        incarnation: [u8; NODE_INCARNATION_BYTES],
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerEvent {
    /// The batch is durable on 2 nodes of `group`; `acks` are (node, first offset) in arrival order.
    Committed {
        batch: BatchId,
        group: usize,
        acks: Vec<(usize, u64)>,
    },
    /// No group committed the batch within `append_timeout_ms`. Every batch ends with exactly one
    /// `Committed` or one `Failed`.
    Failed { batch: BatchId, error: ProduceError },
    GroupHealthChanged {
        group: usize,
        healthy: bool,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerConfigError {
    #[error("the producer has no queue groups; configure at least one group of 3 nodes")]
    NoGroups,
    #[error("{setting} is 0; set it to a positive number of milliseconds")]
    ZeroDuration { setting: &'static str },
    #[error("max_in_flight_batches is 0, so nothing could ever be appended; set it to at least 1")]
    ZeroInFlight,
    #[error(
        "queue group {group:?} lists node {node:?} more than once; its 3 nodes must be distinct \
         (one per campus), else one node's ack would count twice"
    )]
    DuplicateNode { group: String, node: String },
    #[error("queue group name {0:?} is used twice; give every group a distinct name")]
    DuplicateGroup(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "{in_flight} batches are already waiting for their commit (max_in_flight_batches = \
         {max_in_flight_batches}); wait for one to end, or raise the limit"
    )]
    Backpressure {
        in_flight: usize,
        max_in_flight_batches: usize,
    },
    #[error("a batch needs at least one entry")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(
        "no queue group committed the batch within append_timeout_ms = {append_timeout_ms} \
         ({attempts} attempts on {groups_tried} of {groups} groups; last failure: {last_failure}); \
         check that 2 nodes of some group are running and reachable from this producer"
    )]
    Timeout {
        append_timeout_ms: u64,
        attempts: u32,
        groups_tried: usize,
        groups: usize,
        last_failure: String,
    },
}

/// The last thing a node told this producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLastOutcome {
    Acked {
        first_offset: u64,
        incarnation: [u8; NODE_INCARNATION_BYTES],
    },
    Failed {
        reason: String,
    },
    ProbeOk,
    ProbeFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    pub last: Option<NodeLastOutcome>,
    pub last_at: Option<Instant>,
}

/// One group as this producer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub name: String,
    pub healthy: bool,
    /// Why the group was last marked unhealthy (kept after it recovers, for operators).
    pub last_unhealthy_reason: Option<String>,
    pub nodes: [NodeStatus; NODES_PER_GROUP],
    /// Attempts on this group still waiting for their verdict.
    pub in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pending,
    Committed,
    Abandoned,
}

#[derive(Debug)]
struct Attempt {
    batch: BatchId,
    group: usize,
    deadline: Instant,
    /// Per node: `Some(true)` acked, `Some(false)` failed; the first result per node counts.
    results: [Option<bool>; NODES_PER_GROUP],
    acks: Vec<(usize, u64)>,
    failures: Vec<(usize, String)>,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    Attempting(AttemptId),
    /// Every group was tried and none is healthy: wait for a probe to find one, or `retry_at`.
    Waiting {
        retry_at: Instant,
    },
}

#[derive(Debug)]
struct Batch {
    entries: Arc<[Bytes]>,
    deadline: Instant,
    /// Attempts per group, to prefer groups this batch has not tried yet.
    tries: Vec<u32>,
    attempts: u32,
    state: BatchState,
    last_failure: Option<String>,
}

#[derive(Debug)]
struct GroupState {
    spec: GroupSpec,
    healthy: bool,
    last_unhealthy_reason: Option<String>,
    /// Last time an attempt on this group failed; the least recent is the best bet when no group
    /// is healthy.
    last_marked_unhealthy: Option<Instant>,
    next_probe: Option<Instant>,
    /// Answers to the current probe round.
    probe_ok: [Option<bool>; NODES_PER_GROUP],
    nodes: [NodeStatus; NODES_PER_GROUP],
    in_flight_attempts: usize,
}

/// Timers, ordered so that at one instant a batch's deadline fires before its attempt's timeout
/// (no pointless failover of a batch that is about to fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    BatchDeadline(BatchId),
    Attempt(AttemptId),
    BatchRetry(BatchId),
    Probe(usize),
}

/// The producer's state machine; see the module docs.
#[derive(Debug)]
pub struct Producer {
    cfg: ProducerConfig,
    groups: Vec<GroupState>,
    batches: BTreeMap<BatchId, Batch>,
    attempts: BTreeMap<AttemptId, Attempt>,
    timers: BTreeSet<(Instant, Timer)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ProducerEvent>,
    next_batch: u64,
    next_attempt: u64,
    /// Round-robin position among healthy groups for new batches.
    next_group: usize,
}

impl Producer {
    pub fn new(cfg: ProducerConfig) -> Result<Self, ProducerConfigError> {
        if cfg.groups.is_empty() {
            return Err(ProducerConfigError::NoGroups);
        }
        for (setting, value) in [
            ("append_timeout_ms", cfg.append_timeout_ms),
            ("attempt_timeout_ms", cfg.attempt_timeout_ms),
            ("group_probe_interval_ms", cfg.group_probe_interval_ms),
        ] {
            if value == 0 {
                return Err(ProducerConfigError::ZeroDuration { setting });
            }
        }
        if cfg.max_in_flight_batches == 0 {
            return Err(ProducerConfigError::ZeroInFlight);
        }
        let mut names = HashSet::new();
        for g in &cfg.groups {
            if !names.insert(g.name.as_str()) {
                return Err(ProducerConfigError::DuplicateGroup(g.name.clone()));
            }
            for (i, n) in g.nodes.iter().enumerate() {
                if g.nodes[..i].contains(n) {
                    return Err(ProducerConfigError::DuplicateNode {
                        group: g.name.clone(),
                        node: n.clone(),
                    });
                }
            }
        }
        let groups = cfg
            .groups
            .iter()
            .map(|spec| GroupState {
                spec: spec.clone(),
                healthy: true,
                last_unhealthy_reason: None,
                last_marked_unhealthy: None,
                next_probe: None,
                probe_ok: [None; NODES_PER_GROUP],
                nodes: std::array::from_fn(|i| NodeStatus {
                    node_id: spec.nodes[i].clone(),
                    last: None,
                    last_at: None,
                }),
                in_flight_attempts: 0,
            })
            .collect();
        Ok(Self {
            cfg,
            groups,
            batches: BTreeMap::new(),
            attempts: BTreeMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_batch: 0,
            next_attempt: 0,
            next_group: 0,
        })
    }

    /// Starts committing `entries` (each an encoded entry, opaque here) as one batch.
    pub fn submit(&mut self, now: Instant, entries: Vec<Bytes>) -> Result<BatchId, SubmitError> {
        if entries.is_empty() {
            return Err(SubmitError::Empty);
        }
        if self.batches.len() >= self.cfg.max_in_flight_batches {
            return Err(SubmitError::Backpressure {
                in_flight: self.batches.len(),
                max_in_flight_batches: self.cfg.max_in_flight_batches,
            });
        }
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        let deadline = now + ms(self.cfg.append_timeout_ms);
        self.timers.insert((deadline, Timer::BatchDeadline(id)));
        let batch = Batch {
            entries: entries.into(),
            deadline,
            tries: vec![0; self.groups.len()],
            attempts: 0,
            // Replaced at once by the first attempt.
            state: BatchState::Waiting { retry_at: now },
            last_failure: None,
        };
        let (group, _) = self.pick_group(&batch.tries);
        self.batches.insert(id, batch);
        self.start_attempt(now, id, group);
        Ok(id)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ProducerEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Producer::on_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Batches submitted and not yet ended (neither `Committed` nor `Failed`).
    pub fn in_flight(&self) -> usize {
        self.batches.len()
    }

    pub fn groups(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|g| GroupStatus {
                name: g.spec.name.clone(),
                healthy: g.healthy,
                last_unhealthy_reason: g.last_unhealthy_reason.clone(),
                nodes: g.nodes.clone(),
                in_flight: g.in_flight_attempts,
            })
            .collect()
    }

    /// A node's answer to a [`Transmit::Append`]. Results of unknown or expired attempts, and a
    /// second result for the same (attempt, node), are ignored.
    pub fn on_append_result(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        node: usize,
        outcome: NodeOutcome,
    ) {
        debug_assert!(node < NODES_PER_GROUP, "node index {node} out of range");
        let Some(a) = self.attempts.get_mut(&attempt) else {
            return;
        };
        if node >= NODES_PER_GROUP || a.results[node].is_some() {
            return;
        }
        let group = a.group;
        let last = match outcome {
            NodeOutcome::Acked {
                first_offset,
                incarnation,
            } => {
                a.results[node] = Some(true);
                a.acks.push((node, first_offset));
                NodeLastOutcome::Acked {
                    first_offset,
                    incarnation,
                }
            }
            NodeOutcome::Failed { reason } => {
                a.results[node] = Some(false);
                a.failures.push((node, reason.clone()));
                NodeLastOutcome::Failed { reason }
            }
        };
        debug_assert_eq!(
            a.acks.len() + a.failures.len(),
            a.results.iter().flatten().count(),
            "each node's result is counted once per attempt"
        );
        let all_answered = a.results.iter().all(Option::is_some);
        let status = &mut self.groups[group].nodes[node];
        status.last = Some(last);
        status.last_at = Some(now);

        if a.verdict == Verdict::Pending {
            if a.acks.len() >= ACKS_TO_COMMIT {
                self.commit(now, attempt);
            } else if a.failures.len() > NODES_PER_GROUP - ACKS_TO_COMMIT {
                let reason = failure_summary(&self.groups[group].spec, attempt, a);
                self.abandon(now, attempt, reason);
            }
        }
        // Kept until every node answered or the attempt's deadline, only to record node health.
        let judged = self
            .attempts
            .get(&attempt)
            .filter(|a| all_answered && a.verdict != Verdict::Pending)
            .map(|a| a.deadline);
        if let Some(deadline) = judged {
            self.timers.remove(&(deadline, Timer::Attempt(attempt)));
            self.attempts.remove(&attempt);
        }
    }

    /// A node's answer to a [`Transmit::Probe`] (`ok`: it answered at all).
    pub fn on_probe_result(&mut self, now: Instant, group: usize, node: usize, ok: bool) {
        debug_assert!(group < self.groups.len() && node < NODES_PER_GROUP);
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if node >= NODES_PER_GROUP {
            return;
        }
        g.nodes[node].last = Some(if ok {
            NodeLastOutcome::ProbeOk
        } else {
            NodeLastOutcome::ProbeFailed
        });
        g.nodes[node].last_at = Some(now);
        if g.healthy {
            return;
        }
        g.probe_ok[node] = Some(ok);
        let oks = g.probe_ok.iter().filter(|r| **r == Some(true)).count();
        if oks >= ACKS_TO_COMMIT {
            self.mark_healthy(
                now,
                group,
                format!("{oks} of {NODES_PER_GROUP} nodes answered a probe"),
            );
        }
    }

    /// Runs everything due at `now`: attempt timeouts, batch deadlines and retries, probes.
    pub fn on_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::BatchDeadline(batch) => self.fail_batch(batch),
                Timer::Attempt(attempt) => {
                    let Some(a) = self.attempts.get(&attempt) else {
                        continue;
                    };
                    if a.verdict == Verdict::Pending {
                        let reason = format!(
                            "attempt {} on group {:?} timed out after attempt_timeout_ms = {} with \
                             {} of {NODES_PER_GROUP} acks",
                            attempt.0,
                            self.groups[a.group].spec.name,
                            self.cfg.attempt_timeout_ms,
                            a.acks.len()
                        );
                        self.abandon(now, attempt, reason);
                    }
                    self.attempts.remove(&attempt);
                }
                Timer::BatchRetry(batch) => {
                    let Some(b) = self.batches.get(&batch) else {
                        continue;
                    };
                    debug_assert!(matches!(b.state, BatchState::Waiting { .. }));
                    let tries = b.tries.clone();
                    let (group, _) = self.pick_group(&tries);
                    self.start_attempt(now, batch, group);
                }
                Timer::Probe(group) => {
                    let g = &mut self.groups[group];
                    g.next_probe = None;
                    if g.healthy {
                        continue;
                    }
                    g.probe_ok = [None; NODES_PER_GROUP];
                    let next = now + ms(self.cfg.group_probe_interval_ms);
                    g.next_probe = Some(next);
                    self.timers.insert((next, Timer::Probe(group)));
                    for node in 0..NODES_PER_GROUP {
                        self.transmits.push_back(Transmit::Probe { group, node });
                    }
                }
            }
        }
    }

    /// The group for the next attempt of a batch that tried groups `tries` times each, and whether
    /// the batch should pause first (no group is healthy and it has tried them all).
    ///
    /// Preference: healthy groups the batch tried least (round-robin among equals, which spreads
    /// new batches), then unhealthy groups it tried least, the least recently failed first.
    fn pick_group(&mut self, tries: &[u32]) -> (usize, bool) {
        let n = self.groups.len();
        let healthy_pick = (0..n)
            .map(|k| (self.next_group + k) % n)
            .filter(|&g| self.groups[g].healthy)
            .min_by_key(|&g| tries[g]);
        if let Some(g) = healthy_pick {
            self.next_group = (g + 1) % n;
            return (g, false);
        }
        let g = (0..n)
            .min_by_key(|&g| (tries[g], self.groups[g].last_marked_unhealthy))
            .unwrap_or(0);
        (g, tries[g] > 0)
    }

    fn start_attempt(&mut self, now: Instant, batch_id: BatchId, group: usize) {
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            debug_assert!(false, "attempt for unknown batch {batch_id:?}");
            return;
        };
        if let BatchState::Waiting { retry_at } = batch.state {
            self.timers.remove(&(retry_at, Timer::BatchRetry(batch_id)));
        }
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        batch.tries[group] += 1;
        batch.attempts += 1;
        batch.state = BatchState::Attempting(attempt);
        let deadline = now + ms(self.cfg.attempt_timeout_ms);
        self.timers.insert((deadline, Timer::Attempt(attempt)));
        self.attempts.insert(
            attempt,
            Attempt {
                batch: batch_id,
                group,
                deadline,
                results: [None; NODES_PER_GROUP],
                acks: Vec::with_capacity(NODES_PER_GROUP),
                failures: Vec::new(),
                verdict: Verdict::Pending,
            },
        );
        self.groups[group].in_flight_attempts += 1;
        for node in 0..NODES_PER_GROUP {
            self.transmits.push_back(Transmit::Append {
                attempt,
                batch: batch_id,
                group,
                node,
                entries: batch.entries.clone(),
            });
        }
    }

    fn commit(&mut self, now: Instant, attempt_id: AttemptId) {
        let Some(a) = self.attempts.get_mut(&attempt_id) else {
            return;
        };
        debug_assert_eq!(a.verdict, Verdict::Pending);
        a.verdict = Verdict::Committed;
        let (group, batch_id, acks) = (a.group, a.batch, a.acks.clone());
        debug_assert_eq!(acks.len(), ACKS_TO_COMMIT);
        debug_assert!(
            acks[0].0 != acks[1].0,
            "a commit needs 2 distinct nodes: {acks:?}"
        );
        self.groups[group].in_flight_attempts -= 1;
        // 2 acks say more about a group than a probe does.
        self.mark_healthy(
            now,
            group,
            format!("attempt {} was committed", attempt_id.0),
        );
        // A pending attempt is always its batch's current one, unless the batch already failed at
        // its deadline; then the late commit is ignored (the caller was told `Failed`; the entries
        // are committed anyway, which at-least-once allows).
        let Some(batch) = self.batches.get(&batch_id) else {
            return;
        };
        assert_eq!(
            batch.state,
            BatchState::Attempting(attempt_id),
            "a pending attempt must be its batch's current attempt"
        );
        self.end_batch(batch_id);
        self.events.push_back(ProducerEvent::Committed {
            batch: batch_id,
            group,
            acks,
        });
    }

    fn abandon(&mut self, now: Instant, attempt_id: AttemptId, reason: String) {
        let Some(a) = self.attempts.get_mut(&attempt_id) else {
            return;
        };
        debug_assert_eq!(a.verdict, Verdict::Pending);
        a.verdict = Verdict::Abandoned;
        let (group, batch_id) = (a.group, a.batch);
        self.groups[group].in_flight_attempts -= 1;
        self.mark_unhealthy(now, group, reason.clone());
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return;
        };
        assert_eq!(
            batch.state,
            BatchState::Attempting(attempt_id),
            "a pending attempt must be its batch's current attempt"
        );
        batch.last_failure = Some(reason);
        if now >= batch.deadline {
            self.fail_batch(batch_id);
            return;
        }
        let tries = batch.tries.clone();
        let (group, pause) = self.pick_group(&tries);
        if pause {
            let retry_at = now + ms(self.cfg.group_probe_interval_ms);
            if let Some(batch) = self.batches.get_mut(&batch_id) {
                batch.state = BatchState::Waiting { retry_at };
            }
            self.timers.insert((retry_at, Timer::BatchRetry(batch_id)));
        } else {
            self.start_attempt(now, batch_id, group);
        }
    }

    fn fail_batch(&mut self, batch_id: BatchId) {
        let Some(batch) = self.batches.get(&batch_id) else {
            return;
        };
        let error = ProduceError::Timeout {
            append_timeout_ms: self.cfg.append_timeout_ms,
            attempts: batch.attempts,
            groups_tried: batch.tries.iter().filter(|t| **t > 0).count(),
            groups: self.groups.len(),
            last_failure: batch
                .last_failure
                .clone()
                .unwrap_or_else(|| "the last attempt had no verdict yet".to_owned()),
        };
        self.end_batch(batch_id);
        self.events.push_back(ProducerEvent::Failed {
            batch: batch_id,
            error,
        });
    }

    /// Forgets a batch and its timers. Its current attempt (if any) lives on until its own verdict
    /// or deadline, so the group's health is still judged.
    fn end_batch(&mut self, batch_id: BatchId) {
        let Some(batch) = self.batches.remove(&batch_id) else {
            return;
        };
        self.timers
            .remove(&(batch.deadline, Timer::BatchDeadline(batch_id)));
        if let BatchState::Waiting { retry_at } = batch.state {
            self.timers.remove(&(retry_at, Timer::BatchRetry(batch_id)));
        }
    }

    fn mark_unhealthy(&mut self, now: Instant, group: usize, reason: String) {
        let g = &mut self.groups[group];
        g.last_marked_unhealthy = Some(now);
        g.last_unhealthy_reason = Some(reason.clone());
        if !g.healthy {
            return;
        }
        g.healthy = false;
        g.probe_ok = [None; NODES_PER_GROUP];
        let next = now + ms(self.cfg.group_probe_interval_ms);
        g.next_probe = Some(next);
        self.timers.insert((next, Timer::Probe(group)));
        self.events.push_back(ProducerEvent::GroupHealthChanged {
            group,
            healthy: false,
            reason,
        });
    }

    /// Marks `group` healthy and sends batches that were waiting for a healthy group to it at once.
    fn mark_healthy(&mut self, now: Instant, group: usize, reason: String) {
        let g = &mut self.groups[group];
        if g.healthy {
            return;
        }
        g.healthy = true;
        g.probe_ok = [None; NODES_PER_GROUP];
        if let Some(at) = g.next_probe.take() {
            self.timers.remove(&(at, Timer::Probe(group)));
        }
        self.events.push_back(ProducerEvent::GroupHealthChanged {
            group,
            healthy: true,
            reason,
        });
        let waiting: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(_, b)| matches!(b.state, BatchState::Waiting { .. }))
            .map(|(id, _)| *id)
            .collect();
        for batch in waiting {
            let Some(b) = self.batches.get(&batch) else {
                continue;
            };
            let tries = b.tries.clone();
            let (group, _) = self.pick_group(&tries);
            self.start_attempt(now, batch, group);
        }
    }
}

fn failure_summary(spec: &GroupSpec, attempt: AttemptId, a: &Attempt) -> String {
    let failures: Vec<String> = a
        .failures
        .iter()
        .map(|(node, reason)| format!("{}: {reason}", spec.nodes[*node]))
        .collect();
    format!(
        "attempt {} on group {:?}: {} of {NODES_PER_GROUP} nodes failed ({})",
        attempt.0,
        spec.name,
        a.failures.len(),
        failures.join("; ")
    )
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(groups: usize) -> ProducerConfig {
        ProducerConfig {
            groups: (0..groups)
                .map(|g| GroupSpec {
                    name: format!("g{g}"),
                    nodes: std::array::from_fn(|n| format!("g{g}n{n}")),
                })
                .collect(),
            append_timeout_ms: 5_000,
            attempt_timeout_ms: 1_000,
            group_probe_interval_ms: 500,
            max_in_flight_batches: 4,
        }
    }

    fn acked(first_offset: u64) -> NodeOutcome {
        NodeOutcome::Acked {
            first_offset,
            incarnation: [7; 16],
        }
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            Producer::new(cfg(0)).err(),
            Some(ProducerConfigError::NoGroups)
        );
        let mut c = cfg(1);
        c.attempt_timeout_ms = 0;
        assert!(matches!(
            Producer::new(c).err(),
            Some(ProducerConfigError::ZeroDuration {
                setting: "attempt_timeout_ms"
            })
        ));
        let mut c = cfg(1);
        c.groups[0].nodes[2] = c.groups[0].nodes[0].clone();
        assert!(matches!(
            Producer::new(c).err(),
            Some(ProducerConfigError::DuplicateNode { .. })
        ));
        let mut c = cfg(2);
        c.groups[1].name = "g0".into();
        assert!(matches!(
            Producer::new(c).err(),
            Some(ProducerConfigError::DuplicateGroup(_))
        ));
        let mut c = cfg(1);
        c.max_in_flight_batches = 0;
        assert_eq!(
            Producer::new(c).err(),
            Some(ProducerConfigError::ZeroInFlight)
        );
    }

    #[test]
    fn duplicate_and_out_of_order_results_count_once() {
        let now = Instant::now();
        let mut p = Producer::new(cfg(1)).unwrap();
        let b = p.submit(now, vec![Bytes::from_static(b"e")]).unwrap();
        let ts: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
        assert_eq!(ts.len(), 3);
        let Transmit::Append { attempt, .. } = ts[0] else {
            panic!("expected appends, got {ts:?}");
        };
        p.on_append_result(now, attempt, 1, acked(10));
        p.on_append_result(now, attempt, 1, acked(10));
        assert_eq!(p.poll_event(), None, "one node acking twice is one ack");
        p.on_append_result(now, attempt, 2, acked(20));
        assert_eq!(
            p.poll_event(),
            Some(ProducerEvent::Committed {
                batch: b,
                group: 0,
                acks: vec![(1, 10), (2, 20)]
            })
        );
        p.on_append_result(now, attempt, 0, acked(0));
        assert_eq!(p.poll_event(), None, "a 3rd ack does not commit again");
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.groups()[0].in_flight, 0);
        assert!(
            p.attempts.is_empty(),
            "a fully answered attempt is forgotten"
        );
    }

    #[test]
    fn timers_are_cleaned_up_when_batches_end() {
        let now = Instant::now();
        let mut p = Producer::new(cfg(2)).unwrap();
        p.submit(now, vec![Bytes::from_static(b"e")]).unwrap();
        let ts: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
        let Transmit::Append { attempt, .. } = ts[0] else {
            panic!("expected appends, got {ts:?}");
        };
        for node in 0..3 {
            p.on_append_result(now, attempt, node, acked(1));
        }
        assert_eq!(p.poll_timeout(), None, "nothing left to wake up for");
    }
}
