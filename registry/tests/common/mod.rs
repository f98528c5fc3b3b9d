//! A deterministic network simulation for the sans-IO cores: real acceptors on `MemStorage`,
//! clients (proposers or registry clients) with virtual timers, and a seeded scheduler that
//! delays (so reorders), drops and duplicates messages and crashes acceptors and clients. A seed
//! reproduces a run exactly.
//!
//! Every accept an acceptor makes is logged; the log asserts, as it grows, that a ballot never
//! carries two registers and that a key never has two different chosen registers at one version
//! (chosen = accepted at one ballot by a majority).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use homeport_registry::paxos::acceptor::Acceptor;
use homeport_registry::paxos::proposer::{
    Change, Committed, OpId, Output, ProposeError, Proposer, TimerId,
};
use homeport_registry::paxos::{Ballot, Register, Reply, Request, majority};
use homeport_registry::registry::{Answer, Registry, RegistryError, RegistryOutput, RequestId};
use homeport_registry::storage::MemStorage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seeds to run: `default`, or what the environment variable `var` says (`7` replays one
/// seed, `0..500` runs many).
pub fn seeds(var: &str, default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => (a.parse().expect("a seed")..b.parse().expect("a seed")).collect(),
            None => vec![s.parse().expect("a seed")],
        },
        Err(_) => default.collect(),
    }
}

pub enum ClientOut<D> {
    Send { to: usize, request: Request },
    SetTimer { timer: TimerId, after_ms: u64 },
    CancelTimer { timer: TimerId },
    Done(D),
}

/// What the simulation needs of a client core.
pub trait Client {
    type Done: Clone + std::fmt::Debug;
    fn on_reply(&mut self, from: usize, reply: Reply);
    fn on_timer(&mut self, timer: TimerId);
    fn poll(&mut self) -> Option<ClientOut<Self::Done>>;
}

pub type ProposerDone = (OpId, String, Result<Committed, ProposeError>);

impl<C: Change> Client for Proposer<C> {
    type Done = ProposerDone;
    fn on_reply(&mut self, from: usize, reply: Reply) {
        Proposer::on_reply(self, from, reply)
    }
    fn on_timer(&mut self, timer: TimerId) {
        Proposer::on_timer(self, timer)
    }
    fn poll(&mut self) -> Option<ClientOut<Self::Done>> {
        Some(match self.poll_output()? {
            Output::Send { to, request } => ClientOut::Send { to, request },
            Output::SetTimer { timer, after_ms } => ClientOut::SetTimer { timer, after_ms },
            Output::CancelTimer { timer } => ClientOut::CancelTimer { timer },
            Output::Done { op, key, result } => ClientOut::Done((op, key, result)),
        })
    }
}

pub type RegistryDone = (RequestId, Result<Answer, RegistryError>);

impl Client for Registry {
    type Done = RegistryDone;
    fn on_reply(&mut self, from: usize, reply: Reply) {
        Registry::on_reply(self, from, reply)
    }
    fn on_timer(&mut self, timer: TimerId) {
        Registry::on_timer(self, timer)
    }
    fn poll(&mut self) -> Option<ClientOut<Self::Done>> {
        Some(match self.poll_output()? {
            RegistryOutput::Send { to, request } => ClientOut::Send { to, request },
            RegistryOutput::SetTimer { timer, after_ms } => ClientOut::SetTimer { timer, after_ms },
            RegistryOutput::CancelTimer { timer } => ClientOut::CancelTimer { timer },
            RegistryOutput::Done { request, result } => ClientOut::Done((request, result)),
        })
    }
}

/// Fault rates per message or per event, in per-mille.
#[derive(Debug, Clone)]
pub struct Faults {
    pub drop_per_mille: u32,
    pub dup_per_mille: u32,
    pub max_delay_ms: u64,
    /// Per delivered message: an acceptor goes down for a while.
    pub acceptor_crash_per_mille: u32,
    /// Per acceptor request: its storage write fails.
    pub write_fail_per_mille: u32,
    /// Per delivered message: a client crashes and restarts empty, with a new incarnation.
    pub client_crash_per_mille: u32,
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            drop_per_mille: 0,
            dup_per_mille: 0,
            max_delay_ms: 20,
            acceptor_crash_per_mille: 0,
            write_fail_per_mille: 0,
            client_crash_per_mille: 0,
        }
    }

    pub fn harsh() -> Faults {
        Faults {
            drop_per_mille: 150,
            dup_per_mille: 100,
            max_delay_ms: 60,
            acceptor_crash_per_mille: 5,
            write_fail_per_mille: 30,
            client_crash_per_mille: 2,
        }
    }
}

/// Every accept made, and what became chosen.
#[derive(Debug, Default)]
pub struct AcceptLog {
    acceptors: usize,
    by_ballot: BTreeMap<(String, Ballot), (Register, BTreeSet<usize>)>,
    fast: BTreeMap<(String, Register), BTreeSet<usize>>,
    chosen: BTreeMap<(String, u64), Register>,
    pub accepts: u64,
}

impl AcceptLog {
    fn record(&mut self, acceptor: usize, key: &str, ballot: Ballot, register: &Register) {
        self.accepts += 1;
        let voters = if ballot == Ballot::ZERO {
            // Round zero (the fast round) may carry several registers, and chooses one only
            // when every acceptor accepted it.
            let voters = self
                .fast
                .entry((key.to_owned(), register.clone()))
                .or_default();
            voters.insert(acceptor);
            if voters.len() < self.acceptors {
                return;
            }
            voters.len()
        } else {
            let entry = self
                .by_ballot
                .entry((key.to_owned(), ballot))
                .or_insert_with(|| (register.clone(), BTreeSet::new()));
            assert_eq!(
                &entry.0, register,
                "key {key}: two registers accepted at ballot {ballot}"
            );
            entry.1.insert(acceptor);
            entry.1.len()
        };
        if voters >= majority(self.acceptors) {
            match self.chosen.get(&(key.to_owned(), register.version)) {
                Some(earlier) => assert_eq!(
                    earlier, register,
                    "key {key}: two different registers chosen at version {}",
                    register.version
                ),
                None => {
                    self.chosen
                        .insert((key.to_owned(), register.version), register.clone());
                }
            }
        }
    }

    pub fn is_chosen(&self, key: &str, register: &Register) -> bool {
        if register.version == 0 {
            return register.value.is_none();
        }
        self.chosen.get(&(key.to_owned(), register.version)) == Some(register)
    }
}

pub struct AcceptorSlot {
    pub acceptor: Acceptor<MemStorage>,
    pub down_until: Option<u64>,
}

pub struct ClientSlot<C> {
    pub client: C,
    pub incarnation: u64,
    timers: BTreeMap<TimerId, u64>,
}

enum Event {
    ToAcceptor {
        client: usize,
        to: usize,
        request: Request,
    },
    ToClient {
        client: usize,
        from: usize,
        reply: Reply,
    },
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub prepares_sent: u64,
    pub accepts_sent: u64,
    pub fast_accepts_sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub acceptor_crashes: u64,
    pub client_crashes: u64,
    pub write_failures: u64,
}

pub struct Sim<C: Client> {
    pub rng: StdRng,
    pub now_ms: u64,
    seq: u64,
    pub acceptors: Vec<AcceptorSlot>,
    pub clients: Vec<ClientSlot<C>>,
    queue: BTreeMap<(u64, u64), Event>,
    pub faults: Faults,
    pub log: AcceptLog,
    /// (client, incarnation, result), in completion order.
    pub done: Vec<(usize, u64, C::Done)>,
    pub stats: Stats,
    make_client: Box<dyn FnMut(usize, u64) -> C>,
}

impl<C: Client> Sim<C> {
    /// `make_client(index, incarnation)` builds a client, at start (incarnation 0) and after
    /// every crash of it.
    pub fn new(
        seed: u64,
        acceptors: usize,
        clients: usize,
        faults: Faults,
        mut make_client: impl FnMut(usize, u64) -> C + 'static,
    ) -> Self {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            now_ms: 0,
            seq: 0,
            acceptors: (0..acceptors)
                .map(|_| AcceptorSlot {
                    acceptor: Acceptor::new(MemStorage::new()),
                    down_until: None,
                })
                .collect(),
            clients: (0..clients)
                .map(|i| ClientSlot {
                    client: make_client(i, 0),
                    incarnation: 0,
                    timers: BTreeMap::new(),
                })
                .collect(),
            queue: BTreeMap::new(),
            faults,
            log: AcceptLog {
                acceptors,
                ..AcceptLog::default()
            },
            done: Vec::new(),
            stats: Stats::default(),
            make_client: Box::new(make_client),
        }
    }

    /// Runs `f` on client `i`, then handles what it asked for.
    pub fn with_client<R>(&mut self, i: usize, f: impl FnOnce(&mut C) -> R) -> R {
        let r = f(&mut self.clients[i].client);
        self.drain(i);
        r
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.clients[i].client.poll() {
            match out {
                ClientOut::Send { to, request } => {
                    match &request {
                        Request::Prepare { .. } => self.stats.prepares_sent += 1,
                        Request::Accept { .. } => self.stats.accepts_sent += 1,
                        Request::FastAccept { .. } => self.stats.fast_accepts_sent += 1,
                    }
                    self.send(Event::ToAcceptor {
                        client: i,
                        to,
                        request,
                    });
                }
                ClientOut::SetTimer { timer, after_ms } => {
                    self.clients[i].timers.insert(timer, self.now_ms + after_ms);
                }
                ClientOut::CancelTimer { timer } => {
                    self.clients[i].timers.remove(&timer);
                }
                ClientOut::Done(d) => self.done.push((i, self.clients[i].incarnation, d)),
            }
        }
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
    }

    fn send(&mut self, event: Event) {
        if self.chance(self.faults.drop_per_mille) {
            self.stats.dropped += 1;
            return;
        }
        if self.chance(self.faults.dup_per_mille) {
            self.stats.duplicated += 1;
            let copy = clone_event(&event);
            self.enqueue(copy);
        }
        self.enqueue(event);
    }

    fn enqueue(&mut self, event: Event) {
        let delay = self.rng.random_range(1..=self.faults.max_delay_ms.max(1));
        self.seq += 1;
        self.queue.insert((self.now_ms + delay, self.seq), event);
    }

    fn next_timer(&self) -> Option<(u64, usize, TimerId)> {
        self.clients
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.timers.iter().map(move |(t, at)| (*at, i, *t)))
            .min()
    }

    /// Processes the next event; false if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let next_msg = self.queue.keys().next().map(|(at, _)| *at);
        let next_timer = self.next_timer();
        match (next_msg, next_timer) {
            (None, None) => false,
            (Some(at), timer) if timer.is_none_or(|(t_at, _, _)| at <= t_at) => {
                let (_, event) = self.queue.pop_first().expect("peeked");
                self.now_ms = self.now_ms.max(at);
                self.deliver(event);
                self.maybe_crash();
                true
            }
            (_, Some((at, i, timer))) => {
                self.now_ms = self.now_ms.max(at);
                self.clients[i].timers.remove(&timer);
                self.clients[i].client.on_timer(timer);
                self.drain(i);
                true
            }
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::ToAcceptor {
                client,
                to,
                request,
            } => {
                let slot = &mut self.acceptors[to];
                if let Some(until) = slot.down_until {
                    if self.now_ms < until {
                        return;
                    }
                    // Restart: a fresh acceptor on the same (durable) storage.
                    let storage =
                        std::mem::replace(&mut slot.acceptor, Acceptor::new(MemStorage::new()))
                            .into_storage();
                    slot.acceptor = Acceptor::new(storage);
                    slot.down_until = None;
                }
                if self.chance(self.faults.write_fail_per_mille) {
                    self.stats.write_failures += 1;
                    self.acceptors[to]
                        .acceptor
                        .storage_mut()
                        .fail_next_writes(1);
                }
                let reply = self.acceptors[to].acceptor.handle(request.clone());
                self.acceptors[to]
                    .acceptor
                    .storage_mut()
                    .fail_next_writes(0);
                let accepted = match (&request, &reply) {
                    (
                        Request::Accept {
                            key,
                            ballot,
                            register,
                            ..
                        },
                        Reply::Accepted { .. },
                    ) => Some((key, *ballot, register)),
                    (Request::FastAccept { key, register, .. }, Reply::Accepted { .. }) => {
                        Some((key, Ballot::ZERO, register))
                    }
                    _ => None,
                };
                if let Some((key, ballot, register)) = accepted {
                    if std::env::var("REGISTRY_SIM_TRACE_KEYS")
                        .is_ok_and(|k| k.split(',').any(|k| k == key))
                    {
                        let v = register.value.as_ref();
                        let shown = if key.starts_with("user/") {
                            format!("{:?}", homeport_registry::values::decode_user(v))
                        } else {
                            format!("{:?}", homeport_registry::values::decode_reservation(v))
                        };
                        eprintln!(
                            "t={} acceptor {to} accepted {key} at {ballot} from client {client}: v{} {shown}",
                            self.now_ms, register.version
                        );
                    }
                    self.log.record(to, key, ballot, register);
                }
                self.send(Event::ToClient {
                    client,
                    from: to,
                    reply,
                });
            }
            Event::ToClient {
                client,
                from,
                reply,
            } => {
                self.clients[client].client.on_reply(from, reply);
                self.drain(client);
            }
        }
    }

    fn maybe_crash(&mut self) {
        if self.chance(self.faults.acceptor_crash_per_mille) {
            let i = self.rng.random_range(0..self.acceptors.len());
            let down_ms = self.rng.random_range(50..500);
            self.acceptors[i].down_until = Some(self.now_ms + down_ms);
            self.stats.acceptor_crashes += 1;
        }
        if self.chance(self.faults.client_crash_per_mille) {
            let i = self.rng.random_range(0..self.clients.len());
            self.crash_client(i);
        }
    }

    /// Client `i` loses everything (its pending operations never end) and restarts with a new
    /// incarnation.
    pub fn crash_client(&mut self, i: usize) {
        let incarnation = self.clients[i].incarnation + 1;
        self.clients[i] = ClientSlot {
            client: (self.make_client)(i, incarnation),
            incarnation,
            timers: BTreeMap::new(),
        };
        self.stats.client_crashes += 1;
    }

    /// Steps until `stop` holds (true) or virtual time passes `deadline_ms` or nothing is left
    /// to happen (false).
    pub fn run_until(&mut self, deadline_ms: u64, mut stop: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if stop(self) {
                return true;
            }
            if self.now_ms > deadline_ms || !self.step() {
                return stop(self);
            }
        }
    }

    /// Heals: no more faults, every acceptor up.
    pub fn heal(&mut self) {
        self.faults = Faults {
            max_delay_ms: self.faults.max_delay_ms,
            ..Faults::none()
        };
        for slot in &mut self.acceptors {
            slot.down_until = None;
        }
    }
}

fn clone_event(e: &Event) -> Event {
    match e {
        Event::ToAcceptor {
            client,
            to,
            request,
        } => Event::ToAcceptor {
            client: *client,
            to: *to,
            request: request.clone(),
        },
        Event::ToClient {
            client,
            from,
            reply,
        } => Event::ToClient {
            client: *client,
            from: *from,
            reply: reply.clone(),
        },
    }
}
