//! The consumer's tokio shell: one driver task per queue group runs [`crate::core::consumer`] and
//! carries its reads to the nodes; [`RegionConsumer`] merges the groups of a region.
//!
//! Deliveries come in batches, each with the group's cursor *after* it: a replica that stores the
//! batch's effects and that cursor in one transaction never skips an entry and at worst sees one
//! again after a crash (at-least-once; apply-if-newer makes it exactly once in effect).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use homeport_config::{Deployment, QueueSettings};
use homeport_wire::pb;
use tokio::sync::mpsc;

use crate::client::{ClientError, NodeClient};
use crate::core::consumer::{self as core, ConsumerEvent, ReadBatch, ReadFailure};
use crate::entry;
use crate::producer::sleep_until;

pub use crate::core::consumer::{Cursor, NodeCursor, NodeState};

/// Slack on top of a read's long-poll wait before the read counts as failed.
const READ_RPC_SLACK_MS: u64 = 5_000;

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub read_max_bytes: u32,
    pub read_max_entries: u32,
    /// Long-poll wait of a read at the end of a node's log.
    pub wait_ms: u32,
    pub retry_backoff_ms: u64,
    pub max_retry_backoff_ms: u64,
    pub dedup_window_entries: usize,
    pub max_buffered_entries: usize,
    /// Entries per delivered batch.
    pub batch_max_entries: usize,
    /// Delivered batches waiting for the application before the drivers stop reading.
    pub channel_batches: usize,
}

impl ConsumerOptions {
    pub fn from_settings(s: &QueueSettings) -> Self {
        Self {
            read_max_bytes: s.read_max_bytes,
            read_max_entries: 4_096,
            wait_ms: 1_000,
            retry_backoff_ms: 100,
            max_retry_backoff_ms: 5_000,
            dedup_window_entries: 262_144,
            max_buffered_entries: 65_536,
            batch_max_entries: 1_024,
            channel_batches: 16,
        }
    }
}

/// One entry as the consumer received it, with where it was read.
#[derive(Debug, Clone)]
pub struct ConsumedEntry {
    pub node: String,
    pub offset: u64,
    pub entry: pb::Entry,
}

/// Entries of one group, in delivery order, and the group's cursor covering exactly them.
#[derive(Debug, Clone)]
pub struct ConsumedBatch {
    pub group: String,
    pub entries: Vec<ConsumedEntry>,
    pub cursor: Cursor,
}

/// Reads every group of one source region and hands out merged batches.
pub struct RegionConsumer {
    rx: mpsc::Receiver<ConsumedBatch>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    states: Arc<Mutex<HashMap<String, Vec<NodeState>>>>,
}

impl Drop for RegionConsumer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RegionConsumer {
    /// Starts a driver per group of `region`; `cursors` (by group name) resume where a checkpoint left.
    pub fn start(
        deployment: &Deployment,
        region: &str,
        endpoint: &quinn::Endpoint,
        mut cursors: HashMap<String, Cursor>,
        opts: ConsumerOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel(opts.channel_batches);
        let states = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = Vec::new();
        for g in deployment
            .region(region)
            .map(|r| r.queue_groups.as_slice())
            .unwrap_or_default()
        {
            let clients = NodeClient::for_group(endpoint, region, g);
            let cfg = core::ConsumerConfig {
                nodes: std::array::from_fn(|i| clients[i].id.clone()),
                read_max_bytes: opts.read_max_bytes,
                read_max_entries: opts.read_max_entries,
                wait_ms: opts.wait_ms,
                retry_backoff_ms: opts.retry_backoff_ms,
                max_retry_backoff_ms: opts.max_retry_backoff_ms,
                dedup_window_entries: opts.dedup_window_entries,
                max_buffered_entries: opts.max_buffered_entries,
            };
            let core = core::Consumer::new(cfg, cursors.remove(&g.name), entry::id_key);
            let driver = GroupDriver {
                group: g.name.clone(),
                clients,
                core,
                opts: opts.clone(),
                states: states.clone(),
            };
            tasks.push(tokio::spawn(driver.run(tx.clone())));
        }
        Self { rx, tasks, states }
    }

    /// The next batch from any group; `None` only if every driver stopped.
    pub async fn next_batch(&mut self) -> Option<ConsumedBatch> {
        self.rx.recv().await
    }

    /// Per group, per node: reachability, incarnation, offsets (entries behind = head - next).
    pub fn node_states(&self) -> HashMap<String, Vec<NodeState>> {
        self.states.lock().expect("state lock poisoned").clone()
    }
}

struct GroupDriver {
    group: String,
    clients: [Arc<NodeClient>; 3],
    core: core::Consumer,
    opts: ConsumerOptions,
    states: Arc<Mutex<HashMap<String, Vec<NodeState>>>>,
}

impl GroupDriver {
    async fn run(mut self, tx: mpsc::Sender<ConsumedBatch>) {
        let (res_tx, mut res_rx) = mpsc::unbounded_channel();
        loop {
            let now = Instant::now();
            while let Some(r) = self.core.poll_read(now) {
                let client = self.clients[r.node].clone();
                let res_tx = res_tx.clone();
                let req = pb::ReadRequest {
                    from_offset: r.from_offset,
                    max_bytes: r.max_bytes,
                    max_entries: r.max_entries,
                    wait_ms: r.wait_ms,
                };
                let timeout_ms = r.wait_ms as u64 + READ_RPC_SLACK_MS;
                tokio::spawn(async move {
                    let result = to_read_result(client.read(req, timeout_ms).await, r.from_offset);
                    let _ = res_tx.send((r.node, result));
                });
            }
            self.log_events();
            let batch = self.take_batch();
            self.states
                .lock()
                .expect("state lock poisoned")
                .insert(self.group.clone(), self.core.node_states());
            if let Some(batch) = batch {
                if tx.send(batch).await.is_err() {
                    return;
                }
                continue;
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                Some((node, result)) = res_rx.recv() => {
                    self.core.on_read_result(Instant::now(), node, result);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.core.on_timeout(Instant::now());
                }
            }
        }
    }

    fn take_batch(&mut self) -> Option<ConsumedBatch> {
        let mut entries = Vec::new();
        while entries.len() < self.opts.batch_max_entries {
            let Some(d) = self.core.poll_delivery() else {
                break;
            };
            match entry::decode(&d.entry) {
                Ok(e) => entries.push(ConsumedEntry {
                    node: self.clients[d.node].id.clone(),
                    offset: d.offset,
                    entry: e,
                }),
                // The core only delivers entries whose id decoded, so this is a bug, not input.
                Err(e) => debug_assert!(false, "core delivered an undecodable entry: {e}"),
            }
        }
        (!entries.is_empty()).then(|| ConsumedBatch {
            group: self.group.clone(),
            entries,
            cursor: self.core.cursor(),
        })
    }

    fn log_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            let node = |i: usize| self.clients[i].id.as_str();
            match ev {
                ConsumerEvent::IncarnationChanged { node: n, .. } => {
                    tracing::warn!(group = %self.group, node = node(n), "node has a new incarnation (its log was lost or cut); reading it from its start");
                }
                ConsumerEvent::SkippedTrimmed { node: n, from, to } => {
                    metrics::counter!("homeport_consumer_skipped_trimmed_total")
                        .increment(to - from);
                    tracing::error!(group = %self.group, node = node(n), from, to, "entries were deleted by retention before this consumer read them");
                }
                ConsumerEvent::Undecodable { node: n, offset } => {
                    metrics::counter!("homeport_consumer_undecodable_total").increment(1);
                    tracing::error!(group = %self.group, node = node(n), offset, "entry is not a valid protobuf Entry; skipped");
                }
                ConsumerEvent::NodeDown { node: n, reason } => {
                    tracing::warn!(group = %self.group, node = node(n), %reason, "queue node unreachable; reading the others");
                }
                ConsumerEvent::HeadRegressed {
                    node: n,
                    read_offset,
                    durable_head,
                } => {
                    metrics::counter!("homeport_consumer_head_regressed_total").increment(1);
                    tracing::error!(group = %self.group, node = node(n), read_offset, durable_head, "node lost acked entries under the same incarnation (fsync=never?); re-reading it from its head");
                }
                ConsumerEvent::NodeUp { node: n } => {
                    tracing::info!(group = %self.group, node = node(n), "queue node reachable again");
                }
            }
        }
    }
}

fn to_read_result(
    r: Result<pb::ReadResponse, ClientError>,
    from_offset: u64,
) -> Result<ReadBatch, ReadFailure> {
    match r {
        Ok(resp) => {
            let incarnation = <[u8; 16]>::try_from(&resp.incarnation[..]).map_err(|_| {
                ReadFailure::Other(format!(
                    "node answered an incarnation of {} bytes",
                    resp.incarnation.len()
                ))
            })?;
            if from_offset < resp.start_offset && resp.entries.is_empty() {
                return Err(ReadFailure::Trimmed {
                    start_offset: resp.start_offset,
                });
            }
            Ok(ReadBatch {
                incarnation,
                start_offset: resp.start_offset,
                durable_head: resp.durable_head,
                next_offset: resp.next_offset,
                entries: resp
                    .entries
                    .into_iter()
                    .map(|e| (e.offset, e.entry))
                    .collect::<Vec<(u64, Bytes)>>(),
            })
        }
        Err(ClientError::Refused {
            code: pb::ErrorCode::Corrupt,
            message,
            ..
        }) => Err(ReadFailure::Corrupt(message)),
        Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
            Err(ReadFailure::Unreachable(e.to_string()))
        }
        Err(e) => Err(ReadFailure::Other(e.to_string())),
    }
}

/// A cursor as stored in checkpoints (protobuf, so old and new versions read each other's).
pub fn cursor_to_pb(c: &Cursor) -> pb::ConsumerCursor {
    pb::ConsumerCursor {
        nodes: c
            .nodes
            .iter()
            .map(|n| pb::NodeCursor {
                node_id: n.node_id.clone(),
                incarnation: n
                    .incarnation
                    .map(|i| Bytes::copy_from_slice(&i))
                    .unwrap_or_default(),
                next_offset: n.next_offset,
            })
            .collect(),
    }
}

/// Reads a stored cursor; a node entry with a malformed incarnation is read as "unknown", which makes
/// the consumer start that node from its beginning: re-delivery, never loss.
pub fn cursor_from_pb(c: &pb::ConsumerCursor) -> Cursor {
    Cursor {
        nodes: c
            .nodes
            .iter()
            .map(|n| {
                let incarnation = <[u8; 16]>::try_from(&n.incarnation[..]).ok();
                NodeCursor {
                    node_id: n.node_id.clone(),
                    incarnation,
                    next_offset: if incarnation.is_some() {
                        n.next_offset
                    } else {
                        0
                    },
                }
            })
            .collect(),
    }
}
