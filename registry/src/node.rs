//! A registry node (`homeport registry --region NAME`): the region's CASPaxos acceptor and a
//! proposer service, behind one QUIC endpoint (mutual TLS).
//!
//! - **Acceptor**: a dedicated thread owns `Acceptor<RedbStorage>`; requests that arrive together
//!   (from the local proposer and from other nodes) are answered with one fsync'd commit
//!   (group commit). A reply exists only once its batch is durable.
//! - **Proposer service**: one task owns the sans-IO [`Registry`]; operations from clients go in,
//!   acceptor requests go out (to the local thread by channel, to the other nodes over QUIC,
//!   grouped per destination), timers run on a sorted map.
//! - **Sweeper**: every `registry.sweep_interval_ms`, pages through the local acceptor's `user/`
//!   keys and rolls forward WeChat ID changes a dead node left half-done.
//!
//! Authorization: acceptor requests only from registry identities; operations from gateway,
//! region, operator and registry identities of any region.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use homeport_config::{Deployment, registry_identity};
use homeport_wire::{self as wire, Identity, Role, pb};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::client::MAX_REGISTRY_FRAME_BYTES;
use crate::messages::{
    answer_to_pb, operation_from_pb, overloaded, reply_from_pb, reply_to_pb, request_from_pb,
    request_to_pb,
};
use crate::paxos::acceptor::{Acceptor, MAX_BATCH_REQUESTS};
use crate::paxos::proposer::{ProposerConfig, TimerId};
use crate::paxos::{ProposerId, Reply, Request};
use crate::registry::{
    Answer, Operation, Registry, RegistryConfig, RegistryError, RegistryOutput, sweep_candidate,
};
use crate::storage::{AcceptorStorage, KeyState, RedbStorage, StorageError};

/// Keys the sweeper reads from the acceptor per page.
const SWEEP_PAGE_KEYS: usize = 256;
/// Inputs the proposer task takes before it sends what they produced, so requests to the same
/// acceptor travel (and are committed) together.
const MAX_INPUTS_PER_PASS: usize = 256;
/// Name of the acceptor's database file inside the node's data directory.
const ACCEPTOR_DB_FILE: &str = "acceptor.redb";
/// Environment variable that breaks the acceptor ON PURPOSE, so that tests can prove their
/// checkers catch an unsafe registry (`integration/tests/registry_linearizable.rs`). Unset in
/// every real deployment; a node with it set logs an error at start. The one value,
/// [`FORGET_PROMISES`], makes the acceptor read every key as never written: each prepare is
/// granted and reports no accepted value, each accept is done whatever the promise, so two
/// proposers each see their own register and two users can hold one WeChat ID.
pub const UNSAFE_FAULT_ENV: &str = "HOMEPORT_REGISTRY_UNSAFE_FAULT";
/// See [`UNSAFE_FAULT_ENV`].
pub const FORGET_PROMISES: &str = "forget-promises";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "region {0:?} has no [regions.registry] in the config; add one to every region to run the registry"
    )]
    NoRegistry(String),
    #[error("cannot create the registry data directory {path}: {source}; check permissions")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("registry settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Admin(#[from] homeport_queue::admin::AdminError),
    #[error("cannot start the acceptor thread: {0}")]
    Thread(std::io::Error),
}

/// The acceptor's storage, honest unless [`UNSAFE_FAULT_ENV`] asks for a fault.
struct NodeStorage {
    redb: RedbStorage,
    /// [`FORGET_PROMISES`]: every load answers "never written" (writes still go to disk).
    forget_promises: bool,
}

impl AcceptorStorage for NodeStorage {
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError> {
        if self.forget_promises {
            return Ok(None);
        }
        self.redb.load(key)
    }

    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError> {
        self.redb.store(writes)
    }
}

/// Reads [`UNSAFE_FAULT_ENV`]: `Ok(true)` for [`FORGET_PROMISES`], `Ok(false)` when unset.
fn forget_promises_from_env() -> Result<bool, NodeError> {
    match std::env::var(UNSAFE_FAULT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(v) if v == FORGET_PROMISES => Ok(true),
        Ok(v) if v.is_empty() => Ok(false),
        Ok(v) => Err(NodeError::Settings(format!(
            "{UNSAFE_FAULT_ENV}={v:?} is not a known fault; unset it (its only value, \
             {FORGET_PROMISES:?}, breaks the registry on purpose and exists for tests only)"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(NodeError::Settings(format!(
            "{UNSAFE_FAULT_ENV} is not valid UTF-8; unset it (it exists for tests only)"
        ))),
    }
}

/// Work for the acceptor thread.
enum Job {
    Batch {
        requests: Vec<Request>,
        reply: oneshot::Sender<Vec<Reply>>,
    },
    Scan {
        start_after: Option<String>,
        reply: oneshot::Sender<Result<Vec<(String, KeyState)>, StorageError>>,
    },
}

type AcceptorTx = std::sync::mpsc::Sender<Job>;

/// Inputs of the proposer task.
enum Input {
    Submit {
        op: Operation,
        answer: oneshot::Sender<Result<Answer, RegistryError>>,
    },
    Replies {
        from: usize,
        replies: Vec<Reply>,
    },
}

/// A running node; [`RunningRegistry::shutdown`] stops it.
pub struct RunningRegistry {
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl RunningRegistry {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, ends the tasks, and waits for the acceptor thread to finish its last
    /// commit (an answered request is durable; an unanswered one may or may not be).
    pub async fn shutdown(mut self) {
        self.endpoint
            .close(0u32.into(), b"registry node shutting down");
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.endpoint.wait_idle().await;
        if let Some(thread) = self.acceptor.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Opens the acceptor's storage and starts serving. Returns once the node listens.
pub async fn start(deployment: &Deployment, region: &str) -> Result<RunningRegistry, NodeError> {
    let me = deployment
        .region(region)
        .and_then(|r| r.registry.as_ref())
        .ok_or_else(|| NodeError::NoRegistry(region.to_owned()))?;
    let regions: Vec<(String, SocketAddr)> = deployment
        .regions
        .iter()
        .filter_map(|r| Some((r.name.clone(), r.registry.as_ref()?.addr)))
        .collect();
    let my_index = regions
        .iter()
        .position(|(name, _)| name == region)
        .ok_or_else(|| NodeError::NoRegistry(region.to_owned()))?;
    let s = &deployment.registry;
    let config = RegistryConfig {
        proposer: ProposerConfig {
            acceptors: regions.len(),
            round_timeout_ms: s.round_timeout_ms,
            max_attempts: s.max_attempts,
            backoff_base_ms: s.backoff_base_ms,
            backoff_max_ms: s.backoff_max_ms,
            max_pending_ops: s.max_pending_ops,
            ..ProposerConfig::default()
        },
        max_steps_per_operation: s.max_steps_per_operation,
    };
    // A fresh random incarnation on every start: a restarted proposer must never reuse the
    // ballots of its previous run.
    let incarnation: u64 = rand::random::<u64>() & ((1u64 << ProposerId::INCARNATION_BITS) - 1);
    let id = ProposerId::new(
        u16::try_from(my_index).map_err(|_| NodeError::Settings("too many regions".into()))?,
        incarnation,
    );
    let core = Registry::new(config, id, rand::random())
        .map_err(|e| NodeError::Settings(e.to_string()))?;

    std::fs::create_dir_all(&me.data_dir).map_err(|source| NodeError::DataDir {
        path: me.data_dir.clone(),
        source,
    })?;
    let forget_promises = forget_promises_from_env()?;
    if forget_promises {
        error!(
            region,
            "{UNSAFE_FAULT_ENV}={FORGET_PROMISES}: this acceptor forgets its promises and accepted \
             values ON PURPOSE and the registry is NOT SAFE (two users can hold one WeChat ID); it \
             exists only to prove the tests' checkers; unset it"
        );
    }
    let storage = NodeStorage {
        redb: RedbStorage::open(me.data_dir.join(ACCEPTOR_DB_FILE))?,
        forget_promises,
    };
    let (acceptor_tx, acceptor_rx) = std::sync::mpsc::channel::<Job>();
    let acceptor_alive = Arc::new(AtomicBool::new(true));
    let alive = acceptor_alive.clone();
    let acceptor = std::thread::Builder::new()
        .name(format!("registry-acceptor-{region}"))
        .spawn(move || {
            run_acceptor(Acceptor::new(storage), acceptor_rx);
            alive.store(false, Ordering::SeqCst);
        })
        .map_err(NodeError::Thread)?;

    let tls = wire::TlsFiles::for_identity(
        &deployment.tls.ca_cert,
        &deployment.tls.cert_dir,
        &registry_identity(region),
    );
    let endpoint = wire::server_endpoint(me.addr, &tls, &wire::EndpointLimits::default())?;

    let health_alive = acceptor_alive.clone();
    let admin = homeport_queue::admin::serve_admin(
        me.admin_addr,
        Arc::new(move || {
            if health_alive.load(Ordering::SeqCst) {
                Ok("ok".to_string())
            } else {
                Err("the acceptor thread stopped; restart the registry node".to_string())
            }
        }),
    )
    .await?;

    let (input_tx, input_rx) = mpsc::unbounded_channel::<Input>();
    let peers: Vec<Option<Arc<Peer>>> = regions
        .iter()
        .enumerate()
        .map(|(i, (name, addr))| {
            (i != my_index).then(|| {
                Arc::new(Peer {
                    addr: *addr,
                    identity: Identity {
                        name: registry_identity(name),
                        role: Role::Registry,
                        region: name.clone(),
                    },
                    conn: tokio::sync::Mutex::new(None),
                })
            })
        })
        .collect();
    let proposer = tokio::spawn(
        ProposerTask {
            core,
            my_index,
            endpoint: endpoint.clone(),
            peers,
            acceptor: acceptor_tx.clone(),
            input_tx: input_tx.clone(),
            round_timeout_ms: s.round_timeout_ms,
            connect_timeout_ms: s.connect_timeout_ms,
            timers: BTreeMap::new(),
            timer_at: HashMap::new(),
            waiting: HashMap::new(),
        }
        .run(input_rx),
    );
    let sweeper = tokio::spawn(sweep(
        acceptor_tx.clone(),
        input_tx.clone(),
        s.sweep_interval_ms,
    ));

    let shared = Arc::new(Shared {
        acceptor: acceptor_tx,
        input: input_tx,
        region: region.to_owned(),
    });
    let server = tokio::spawn(wire::serve(
        endpoint.clone(),
        MAX_REGISTRY_FRAME_BYTES,
        move |peer: Arc<Identity>, req: pb::Request| {
            let shared = shared.clone();
            async move { shared.handle(&peer, req).await }
        },
    ));
    info!(region, addr = %me.addr, admin_addr = %me.admin_addr, proposer = id.0, "registry node serving");
    Ok(RunningRegistry {
        endpoint,
        tasks: vec![server, proposer, sweeper, admin],
        acceptor: Some(acceptor),
    })
}

/// Takes everything queued, answers it with one commit per [`MAX_BATCH_REQUESTS`], repeats.
/// Returns when every sender is gone.
fn run_acceptor(mut acceptor: Acceptor<NodeStorage>, rx: std::sync::mpsc::Receiver<Job>) {
    let mut next = rx.recv().ok();
    while let Some(first) = next.take() {
        let mut batches: Vec<(Vec<Request>, oneshot::Sender<Vec<Reply>>)> = Vec::new();
        let mut total = 0usize;
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                Job::Batch { requests, reply } => {
                    if total > 0 && total + requests.len() > MAX_BATCH_REQUESTS {
                        next = Some(Job::Batch { requests, reply });
                        break;
                    }
                    total += requests.len();
                    batches.push((requests, reply));
                }
                Job::Scan { start_after, reply } => {
                    let page = acceptor.storage().redb.scan(
                        "user/",
                        start_after.as_deref(),
                        SWEEP_PAGE_KEYS,
                    );
                    let _ = reply.send(page);
                }
            }
            if total < MAX_BATCH_REQUESTS {
                job = rx.try_recv().ok();
            }
        }
        if !batches.is_empty() {
            let mut all = Vec::with_capacity(total);
            let mut counts = Vec::with_capacity(batches.len());
            let mut senders = Vec::with_capacity(batches.len());
            for (requests, reply) in batches {
                counts.push(requests.len());
                all.extend(requests);
                senders.push(reply);
            }
            let started = Instant::now();
            let mut replies = acceptor.handle_batch(all).into_iter();
            metrics::histogram!("registry_acceptor_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("registry_acceptor_batch_requests").record(total as f64);
            for (count, reply) in counts.into_iter().zip(senders) {
                let part: Vec<Reply> = replies.by_ref().take(count).collect();
                let _ = reply.send(part);
            }
        }
        if next.is_none() {
            next = rx.recv().ok();
        }
    }
    debug!("acceptor thread ends: no more senders");
}

async fn accept_locally(acceptor: &AcceptorTx, requests: Vec<Request>) -> Option<Vec<Reply>> {
    let (reply, rx) = oneshot::channel();
    acceptor.send(Job::Batch { requests, reply }).ok()?;
    rx.await.ok()
}

struct Shared {
    acceptor: AcceptorTx,
    input: mpsc::UnboundedSender<Input>,
    region: String,
}

impl Shared {
    async fn handle(&self, peer: &Identity, req: pb::Request) -> pb::Response {
        match req.body {
            Some(pb::request::Body::RegistryAcceptor(batch)) => {
                if peer.role != Role::Registry {
                    return forbidden(peer, "acceptor requests come from registry nodes only");
                }
                self.acceptor_batch(batch).await
            }
            Some(pb::request::Body::RegistryOperation(op)) => {
                if !matches!(
                    peer.role,
                    Role::Gateway | Role::Region | Role::Operator | Role::Registry
                ) {
                    return forbidden(
                        peer,
                        "registry operations come from gateways, regions, operators and registry nodes",
                    );
                }
                self.operation(op).await
            }
            _ => wire::error_response(
                pb::ErrorCode::BadRequest,
                format!(
                    "registry node {} answers registry requests only (registry_acceptor, registry_operation)",
                    self.region
                ),
            ),
        }
    }

    async fn acceptor_batch(&self, batch: pb::AcceptorBatchRequest) -> pb::Response {
        if batch.requests.len() > MAX_BATCH_REQUESTS {
            return wire::error_response(
                pb::ErrorCode::TooLarge,
                format!(
                    "{} acceptor requests in one batch; send at most {MAX_BATCH_REQUESTS}",
                    batch.requests.len()
                ),
            );
        }
        let mut requests = Vec::with_capacity(batch.requests.len());
        for r in batch.requests {
            match request_from_pb(r) {
                Ok(r) => requests.push(r),
                Err(e) => return wire::error_response(pb::ErrorCode::BadRequest, e),
            }
        }
        match accept_locally(&self.acceptor, requests).await {
            Some(replies) => pb::Response {
                body: Some(pb::response::Body::RegistryAcceptor(
                    pb::AcceptorBatchResponse {
                        replies: replies.iter().map(reply_to_pb).collect(),
                    },
                )),
            },
            None => wire::error_response(
                pb::ErrorCode::Unavailable,
                "the acceptor thread stopped; the node is shutting down or must be restarted",
            ),
        }
    }

    async fn operation(&self, req: pb::RegistryOperationRequest) -> pb::Response {
        let body = match operation_from_pb(&req) {
            Err(e) => answer_to_pb(&Err(e)),
            Ok(op) => {
                let (answer, rx) = oneshot::channel();
                if self.input.send(Input::Submit { op, answer }).is_err() {
                    overloaded(
                        "the registry node is shutting down; use another region's node".into(),
                    )
                } else {
                    match rx.await {
                        Ok(result) => answer_to_pb(&result),
                        Err(_) => overloaded(
                            "the registry node stopped before answering; use another region's node"
                                .into(),
                        ),
                    }
                }
            }
        };
        pb::Response {
            body: Some(pb::response::Body::RegistryOperation(body)),
        }
    }
}

fn forbidden(peer: &Identity, why: &str) -> pb::Response {
    wire::error_response(
        pb::ErrorCode::Forbidden,
        format!("{peer} may not send this request: {why}"),
    )
}

/// Another region's registry node, with a cached connection.
struct Peer {
    addr: SocketAddr,
    identity: Identity,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl Peer {
    /// One batch to the peer's acceptor. `None`: no answer (the proposer's round times out).
    async fn send(
        &self,
        endpoint: &quinn::Endpoint,
        requests: Vec<Request>,
        timeout_ms: u64,
        connect_timeout_ms: u64,
    ) -> Option<Vec<Reply>> {
        let conn = {
            let mut cached = self.conn.lock().await;
            match cached.as_ref() {
                Some(c) if c.close_reason().is_none() => c.clone(),
                _ => {
                    let c = wire::connect(endpoint, self.addr, &self.identity, connect_timeout_ms)
                        .await
                        .map_err(|e| debug!(peer = %self.identity.name, error = %e, "registry peer unreachable"))
                        .ok()?;
                    *cached = Some(c.clone());
                    c
                }
            }
        };
        let req = wire::request(pb::request::Body::RegistryAcceptor(
            pb::AcceptorBatchRequest {
                requests: requests.iter().map(request_to_pb).collect(),
            },
        ));
        let response = wire::call(&conn, &req, timeout_ms, MAX_REGISTRY_FRAME_BYTES)
            .await
            .map_err(|e| debug!(peer = %self.identity.name, error = %e, "acceptor batch failed"))
            .ok()?;
        match response.body {
            Some(pb::response::Body::RegistryAcceptor(r)) => {
                let mut out = Vec::with_capacity(r.replies.len());
                for reply in r.replies {
                    match reply_from_pb(reply) {
                        Ok(reply) => out.push(reply),
                        Err(e) => {
                            warn!(peer = %self.identity.name, error = %e, "malformed acceptor reply dropped");
                        }
                    }
                }
                Some(out)
            }
            other => {
                warn!(peer = %self.identity.name, answer = ?other, "acceptor batch refused");
                None
            }
        }
    }
}

/// An operation in flight: who to answer, when it started, its kind (for metrics).
type Waiting = (
    oneshot::Sender<Result<Answer, RegistryError>>,
    Instant,
    &'static str,
);

struct ProposerTask {
    core: Registry,
    my_index: usize,
    endpoint: quinn::Endpoint,
    peers: Vec<Option<Arc<Peer>>>,
    acceptor: AcceptorTx,
    input_tx: mpsc::UnboundedSender<Input>,
    round_timeout_ms: u64,
    connect_timeout_ms: u64,
    timers: BTreeMap<(tokio::time::Instant, TimerId), ()>,
    timer_at: HashMap<TimerId, tokio::time::Instant>,
    /// Operations in flight: who to answer, when it started, its kind (for metrics).
    waiting: HashMap<crate::registry::RequestId, Waiting>,
}

fn op_kind(op: &Operation) -> &'static str {
    match op {
        Operation::Claim { .. } => "claim",
        Operation::Release { .. } => "release",
        Operation::Lookup { .. } => "lookup",
        Operation::UserWxid { .. } => "user_wxid",
        Operation::RollForward { .. } => "roll_forward",
        Operation::GetHome { .. } => "get_home",
        Operation::SetHome { .. } => "set_home",
    }
}

impl ProposerTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            let deadline = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    self.take(input);
                    for _ in 1..MAX_INPUTS_PER_PASS {
                        match rx.try_recv() {
                            Ok(input) => self.take(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let now = tokio::time::Instant::now();
                    while let Some((&(at, timer), _)) = self.timers.iter().next() {
                        if at > now {
                            break;
                        }
                        self.timers.remove(&(at, timer));
                        self.timer_at.remove(&timer);
                        self.core.on_timer(timer);
                    }
                }
            }
            self.drain();
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Submit { op, answer } => {
                let kind = op_kind(&op);
                match self.core.submit(op) {
                    Ok(id) => {
                        self.waiting.insert(id, (answer, Instant::now(), kind));
                    }
                    Err(e) => {
                        metrics::counter!("registry_operations_total", "kind" => kind, "outcome" => "refused_at_submit").increment(1);
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Input::Replies { from, replies } => {
                for reply in replies {
                    if matches!(reply, Reply::Conflict { .. }) {
                        metrics::counter!("registry_conflicts_total").increment(1);
                    }
                    self.core.on_reply(from, reply);
                }
            }
        }
    }

    fn drain(&mut self) {
        let mut sends: BTreeMap<usize, Vec<Request>> = BTreeMap::new();
        while let Some(out) = self.core.poll_output() {
            match out {
                RegistryOutput::Send { to, request } => {
                    if to == self.my_index {
                        // One per round: every round asks every acceptor, this one included.
                        let phase = match request {
                            Request::Prepare { .. } => "prepare",
                            Request::Accept { .. } => "accept",
                            Request::FastAccept { .. } => "fast_accept",
                        };
                        metrics::counter!("registry_rounds_total", "phase" => phase).increment(1);
                    }
                    sends.entry(to).or_default().push(request);
                }
                RegistryOutput::SetTimer { timer, after_ms } => {
                    let at = tokio::time::Instant::now() + Duration::from_millis(after_ms);
                    if let Some(old) = self.timer_at.insert(timer, at) {
                        self.timers.remove(&(old, timer));
                    }
                    self.timers.insert((at, timer), ());
                }
                RegistryOutput::CancelTimer { timer } => {
                    if let Some(at) = self.timer_at.remove(&timer) {
                        self.timers.remove(&(at, timer));
                    }
                }
                RegistryOutput::Done { request, result } => {
                    if let Some((answer, started, kind)) = self.waiting.remove(&request) {
                        let outcome = match &result {
                            Ok(_) => "ok",
                            Err(
                                RegistryError::Unavailable { .. } | RegistryError::Contended { .. },
                            ) => "unknown",
                            Err(_) => "refused",
                        };
                        metrics::counter!("registry_operations_total", "kind" => kind, "outcome" => outcome).increment(1);
                        metrics::histogram!("registry_operation_seconds", "kind" => kind)
                            .record(started.elapsed().as_secs_f64());
                        let _ = answer.send(result);
                    }
                }
            }
        }
        // Commits that ran behind an early answer and failed (the sweeper finishes them).
        metrics::counter!("registry_background_failures_total")
            .absolute(self.core.background_failures());
        for (to, requests) in sends {
            for chunk in requests.chunks(MAX_BATCH_REQUESTS) {
                self.dispatch(to, chunk.to_vec());
            }
        }
    }

    /// Sends a batch without waiting; the replies come back as an input. A lost batch is fine:
    /// the round times out.
    fn dispatch(&self, to: usize, requests: Vec<Request>) {
        let input = self.input_tx.clone();
        if to == self.my_index {
            let acceptor = self.acceptor.clone();
            tokio::spawn(async move {
                if let Some(replies) = accept_locally(&acceptor, requests).await {
                    let _ = input.send(Input::Replies { from: to, replies });
                }
            });
            return;
        }
        let Some(Some(peer)) = self.peers.get(to).cloned() else {
            warn!(
                to,
                "proposer addressed an acceptor this node does not know; dropped"
            );
            return;
        };
        let endpoint = self.endpoint.clone();
        let timeout_ms = self.round_timeout_ms;
        let connect_timeout_ms = self.connect_timeout_ms.min(timeout_ms);
        tokio::spawn(async move {
            if let Some(replies) = peer
                .send(&endpoint, requests, timeout_ms, connect_timeout_ms)
                .await
            {
                let _ = input.send(Input::Replies { from: to, replies });
            }
        });
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Rolls forward WeChat ID changes whose node died half-way, one page of `user/` keys at a time.
async fn sweep(acceptor: AcceptorTx, input: mpsc::UnboundedSender<Input>, interval_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut start_after: Option<String> = None;
        loop {
            let (reply, rx) = oneshot::channel();
            if acceptor
                .send(Job::Scan {
                    start_after: start_after.clone(),
                    reply,
                })
                .is_err()
            {
                return;
            }
            let page = match rx.await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    warn!(error = %e, "sweeper could not scan the acceptor; retrying next interval");
                    break;
                }
                Err(_) => return,
            };
            let Some((last, _)) = page.last() else { break };
            start_after = Some(last.clone());
            for (key, state) in &page {
                let Some(op) = sweep_candidate(key, state) else {
                    continue;
                };
                let (answer, rx) = oneshot::channel();
                if input.send(Input::Submit { op, answer }).is_err() {
                    return;
                }
                match rx.await {
                    Ok(Ok(Answer::RolledForward {
                        transition: Some(_),
                    })) => {
                        metrics::counter!("registry_sweep_rolled_forward_total").increment(1);
                        info!(key, "sweeper finished a pending WeChat ID change");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        debug!(key, error = %e, "sweeper could not roll forward; next interval")
                    }
                    Err(_) => return,
                }
            }
            if page.len() < SWEEP_PAGE_KEYS {
                break;
            }
        }
    }
}
