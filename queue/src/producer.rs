//! The producer's tokio shell: batches concurrent appends, drives [`crate::core::producer`], and
//! carries its transmits to the nodes. All decisions (commit at 2 of 3, failover, health) are the
//! core's; this file only moves bytes and time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use homeport_config::{Deployment, QueueSettings};
use homeport_wire::pb;
use tokio::sync::{mpsc, oneshot};

use crate::client::NodeClient;
use crate::core::producer::{self as core, BatchId, NodeOutcome, ProducerEvent, Transmit};
use crate::entry::{self, EntryIdGen};

pub use crate::core::producer::{GroupStatus, ProduceError};

/// Appends accepted but not yet batched before `append` waits (back-pressure).
const MAX_QUEUED_APPENDS: usize = 65_536;

/// Limits of one producer. Units are in the names.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    pub append_timeout_ms: u64,
    pub attempt_timeout_ms: u64,
    pub group_probe_interval_ms: u64,
    /// Batches waiting for their commit at once; further appends queue and are batched together.
    pub max_in_flight_batches: usize,
    pub max_batch_entries: usize,
    pub max_batch_bytes: usize,
    /// Appends accepted but not yet batched; past this, `append` waits (back-pressure).
    pub max_queued_appends: usize,
}

impl ProducerOptions {
    pub fn from_settings(s: &QueueSettings) -> Self {
        Self {
            append_timeout_ms: s.append_timeout_ms,
            attempt_timeout_ms: s.attempt_timeout_ms,
            group_probe_interval_ms: s.group_probe_interval_ms,
            max_in_flight_batches: s.max_in_flight_batches as usize,
            max_batch_entries: s.max_batch_entries as usize,
            max_batch_bytes: s.max_batch_bytes as usize,
            max_queued_appends: MAX_QUEUED_APPENDS,
        }
    }
}

/// Where an append was committed: its group and, per acking node, the offset of its first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub group: String,
    pub acks: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum AppendError {
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("append of {size_bytes} bytes exceeds max_batch_bytes {max_bytes}; split it")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("append with no entries")]
    Empty,
    #[error("the producer has stopped")]
    Closed,
}

struct AppendCmd {
    entries: Vec<Bytes>,
    size_bytes: usize,
    reply: oneshot::Sender<Result<Committed, AppendError>>,
}

type Waiters = Vec<(oneshot::Sender<Result<Committed, AppendError>>, u64)>;

/// A handle to a running producer; cheap to share behind an `Arc`.
pub struct Producer {
    tx: mpsc::Sender<AppendCmd>,
    ids: Mutex<EntryIdGen>,
    groups: Arc<Mutex<Vec<GroupStatus>>>,
    max_batch_bytes: usize,
}

enum NetResult {
    Append {
        attempt: core::AttemptId,
        node: usize,
        outcome: NodeOutcome,
    },
    Probe {
        group: usize,
        node: usize,
        ok: bool,
    },
}

impl Producer {
    /// A producer for `region`'s queue groups as the config lists them.
    pub fn for_region(
        deployment: &Deployment,
        region: &str,
        endpoint: &quinn::Endpoint,
    ) -> Result<Self, core::ProducerConfigError> {
        let groups = deployment
            .region(region)
            .map(|r| {
                r.queue_groups
                    .iter()
                    .map(|g| (g.name.clone(), NodeClient::for_group(endpoint, region, g)))
                    .collect()
            })
            .unwrap_or_default();
        Self::start(
            region,
            groups,
            ProducerOptions::from_settings(&deployment.queue),
        )
    }

    pub fn start(
        origin_region: &str,
        groups: Vec<(String, [Arc<NodeClient>; 3])>,
        opts: ProducerOptions,
    ) -> Result<Self, core::ProducerConfigError> {
        let cfg = core::ProducerConfig {
            groups: groups
                .iter()
                .map(|(name, nodes)| core::GroupSpec {
                    name: name.clone(),
                    nodes: std::array::from_fn(|i| nodes[i].id.clone()),
                })
                .collect(),
            append_timeout_ms: opts.append_timeout_ms,
            attempt_timeout_ms: opts.attempt_timeout_ms,
            group_probe_interval_ms: opts.group_probe_interval_ms,
            max_in_flight_batches: opts.max_in_flight_batches,
        };
        let core = core::Producer::new(cfg)?;
        let (tx, rx) = mpsc::channel(opts.max_queued_appends);
        let status = Arc::new(Mutex::new(core.groups()));
        let driver = Driver {
            core,
            groups,
            opts: opts.clone(),
            waiters: HashMap::new(),
            status: status.clone(),
            status_refreshed: Instant::now(),
        };
        tokio::spawn(driver.run(rx));
        Ok(Self {
            tx,
            ids: Mutex::new(EntryIdGen::new(origin_region)),
            groups: status,
            max_batch_bytes: opts.max_batch_bytes,
        })
    }

    /// The next entry id of this producer, for entries built elsewhere (e.g. in a store transaction).
    pub fn next_id(&self) -> pb::EntryId {
        self.ids
            .lock()
            .expect("id generator lock poisoned")
            .next_id()
    }

    /// A new entry with the next id of this producer.
    pub fn new_entry(&self, kind: pb::EntryKind, payload: Bytes) -> pb::Entry {
        self.ids
            .lock()
            .expect("id generator lock poisoned")
            .entry(kind, payload)
    }

    /// Appends entries; resolves once they are committed (2 of 3 nodes of one group acked durable).
    pub async fn append(&self, entries: &[pb::Entry]) -> Result<Committed, AppendError> {
        self.append_encoded(entries.iter().map(entry::encode).collect())
            .await
    }

    /// As [`Producer::append`], for entries already encoded (e.g. re-shipped from an outbox with their
    /// original ids).
    pub async fn append_encoded(&self, entries: Vec<Bytes>) -> Result<Committed, AppendError> {
        if entries.is_empty() {
            return Err(AppendError::Empty);
        }
        let size_bytes: usize = entries.iter().map(Bytes::len).sum();
        if size_bytes > self.max_batch_bytes {
            return Err(AppendError::TooLarge {
                size_bytes,
                max_bytes: self.max_batch_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendCmd {
                entries,
                size_bytes,
                reply,
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Health of every group as this producer sees it (no coordinator: each producer decides).
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.groups.lock().expect("status lock poisoned").clone()
    }
}

struct Driver {
    core: core::Producer,
    groups: Vec<(String, [Arc<NodeClient>; 3])>,
    opts: ProducerOptions,
    waiters: HashMap<BatchId, Waiters>,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    status_refreshed: Instant,
}

/// How stale [`Producer::groups`] may be, apart from health changes (those show at once).
const STATUS_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<AppendCmd>) {
        let (net_tx, mut net_rx) = mpsc::unbounded_channel::<NetResult>();
        let mut open = true;
        let mut pending: Option<AppendCmd> = None;
        loop {
            self.flush(&net_tx);
            if !open && self.waiters.is_empty() {
                return;
            }
            let deadline = self.core.poll_timeout();
            let can_submit = self.core.in_flight() < self.opts.max_in_flight_batches;
            tokio::select! {
                biased;
                Some(r) = net_rx.recv() => self.on_net(r),
                cmd = rx.recv(), if open && can_submit => match cmd {
                    Some(cmd) => self.submit(cmd, &mut rx, &mut pending),
                    None => open = false,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.core.on_timeout(Instant::now());
                }
            }
        }
    }

    /// Batches `first` with whatever else is already queued, within the batch limits.
    fn submit(
        &mut self,
        first: AppendCmd,
        rx: &mut mpsc::Receiver<AppendCmd>,
        pending: &mut Option<AppendCmd>,
    ) {
        let mut cmds = Vec::new();
        if let Some(p) = pending.take() {
            cmds.push(p);
        }
        cmds.push(first);
        let mut n: usize = cmds.iter().map(|c| c.entries.len()).sum();
        let mut size: usize = cmds.iter().map(|c| c.size_bytes).sum();
        while n < self.opts.max_batch_entries {
            match rx.try_recv() {
                Ok(c) => {
                    if n + c.entries.len() > self.opts.max_batch_entries
                        || size + c.size_bytes > self.opts.max_batch_bytes
                    {
                        *pending = Some(c);
                        break;
                    }
                    n += c.entries.len();
                    size += c.size_bytes;
                    cmds.push(c);
                }
                Err(_) => break,
            }
        }
        let mut entries = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(cmds.len());
        for c in cmds {
            waiters.push((c.reply, entries.len() as u64));
            entries.extend(c.entries);
        }
        match self.core.submit(Instant::now(), entries) {
            Ok(batch) => {
                self.waiters.insert(batch, waiters);
            }
            Err(e) => {
                let err = AppendError::Produce(ProduceError::from(e));
                for (w, _) in waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    fn on_net(&mut self, r: NetResult) {
        let now = Instant::now();
        match r {
            NetResult::Append {
                attempt,
                node,
                outcome,
            } => self.core.on_append_result(now, attempt, node, outcome),
            NetResult::Probe { group, node, ok } => self.core.on_probe_result(now, group, node, ok),
        }
    }

    /// Starts every transmit the core asks for and hands its events to the waiting callers.
    fn flush(&mut self, net_tx: &mpsc::UnboundedSender<NetResult>) {
        while let Some(t) = self.core.poll_transmit() {
            let tx = net_tx.clone();
            match t {
                Transmit::Append {
                    attempt,
                    group,
                    node,
                    entries,
                    ..
                } => {
                    let client = self.groups[group].1[node].clone();
                    let timeout_ms = self.opts.attempt_timeout_ms;
                    tokio::spawn(async move {
                        let outcome = match client.append(&entries, timeout_ms).await {
                            Ok(a) => match <[u8; 16]>::try_from(&a.incarnation[..]) {
                                Ok(incarnation) => NodeOutcome::Acked {
                                    first_offset: a.first_offset,
                                    incarnation,
                                },
                                Err(_) => NodeOutcome::Failed {
                                    reason: format!(
                                        "node {} answered an incarnation of {} bytes",
                                        client.id,
                                        a.incarnation.len()
                                    ),
                                },
                            },
                            Err(e) => NodeOutcome::Failed {
                                reason: e.to_string(),
                            },
                        };
                        let _ = tx.send(NetResult::Append {
                            attempt,
                            node,
                            outcome,
                        });
                    });
                }
                Transmit::Probe { group, node } => {
                    let client = self.groups[group].1[node].clone();
                    let timeout_ms = self.opts.attempt_timeout_ms;
                    tokio::spawn(async move {
                        let ok = client.status(timeout_ms).await.is_ok();
                        let _ = tx.send(NetResult::Probe { group, node, ok });
                    });
                }
            }
        }
        let mut health_changed = false;
        while let Some(ev) = self.core.poll_event() {
            match ev {
                ProducerEvent::Committed { batch, group, acks } => {
                    metrics::counter!("homeport_producer_committed_batches_total").increment(1);
                    let name = self.groups[group].0.clone();
                    for (w, start) in self.waiters.remove(&batch).unwrap_or_default() {
                        let acks = acks
                            .iter()
                            .map(|(node, first)| {
                                (self.groups[group].1[*node].id.clone(), first + start)
                            })
                            .collect();
                        let _ = w.send(Ok(Committed {
                            group: name.clone(),
                            acks,
                        }));
                    }
                }
                ProducerEvent::Failed { batch, error } => {
                    metrics::counter!("homeport_producer_failed_batches_total").increment(1);
                    tracing::warn!(%error, "batch not committed");
                    for (w, _) in self.waiters.remove(&batch).unwrap_or_default() {
                        let _ = w.send(Err(AppendError::Produce(error.clone())));
                    }
                }
                ProducerEvent::GroupHealthChanged {
                    group,
                    healthy,
                    reason,
                } => {
                    health_changed = true;
                    let name = &self.groups[group].0;
                    if healthy {
                        tracing::info!(group = %name, %reason, "queue group healthy again");
                    } else {
                        metrics::counter!("homeport_producer_group_unhealthy_total").increment(1);
                        tracing::warn!(group = %name, %reason, "queue group marked unhealthy; failing over");
                    }
                }
            }
        }
        // `groups()` allocates; refresh the shared copy on health changes or now and then, not on
        // every append.
        if health_changed || self.status_refreshed.elapsed() >= STATUS_REFRESH_INTERVAL {
            *self.status.lock().expect("status lock poisoned") = self.core.groups();
            self.status_refreshed = Instant::now();
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none (the select branch is disabled then).
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
