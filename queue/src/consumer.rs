//! The consumer's tokio shell: one driver task per queue group runs [`crate::core::consumer`] and
//! carries its reads to the nodes; [`RegionConsumer`] merges the groups of a region.
//!
//! Deliveries come in batches, each with the group's cursor *after* it: a replica that stores the
//! batch's effects and that cursor in one transaction never skips an entry and at worst sees one
//! again after a crash (at-least-once; apply-if-newer makes it exactly once in effect).
//!
//! The core asks for one read per node at a time. The shell answers those reads from a *feed* per
//! node: a subscription (`SubscribeRequest`) that the node keeps answering as entries become
//! durable, read ahead by a task. So the next batch is already on its way while the core handles
//! this one, and across a WAN a new entry arrives one one-way delay after it is durable, instead
//! of waiting up to a round trip for the next read request to get there. When the core asks for a
//! read the feed is not positioned at (a new incarnation, a regressed head), the feed is replaced.
//! A node too old to know subscriptions is followed with one read request per batch instead.

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
/// Frames a node's feed reads ahead of the core. Two keep the network busy while the core takes
/// one; each is at most `read_max_bytes`, so a group holds at most 3 x 2 of them.
const FEED_AHEAD_FRAMES: usize = 2;

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
                feeds: [None, None, None],
                awaiting: [None; 3],
            };
            tasks.push(tokio::spawn(driver.run(tx.clone())));
        }
        Self { rx, tasks, states }
    }

    /// The next batch from any group; `None` only if every driver stopped.
    pub async fn next_batch(&mut self) -> Option<ConsumedBatch> {
        self.rx.recv().await
    }

    /// A batch that is already waiting, without waiting for one.
    pub fn try_next_batch(&mut self) -> Option<ConsumedBatch> {
        self.rx.try_recv().ok()
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
    feeds: [Option<Feed>; 3],
    /// Per node: the core's read in flight (its largest batch), answered by the node's feed.
    awaiting: [Option<u32>; 3],
}

/// One frame of a feed: the offset it was read from, and the node's answer.
type FeedFrame = (u64, Result<ReadBatch, ReadFailure>);

/// A node's log followed ahead of the core (see the module docs).
struct Feed {
    rx: mpsc::Receiver<FeedFrame>,
    task: tokio::task::JoinHandle<()>,
    /// Where the next frame from `rx` starts.
    next_from: u64,
    /// The rest of a frame the core took only part of (it asked for fewer entries).
    leftover: Option<ReadBatch>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    fn start(client: Arc<NodeClient>, opts: &ConsumerOptions, from_offset: u64) -> Self {
        let (tx, rx) = mpsc::channel(FEED_AHEAD_FRAMES);
        let req = pb::SubscribeRequest {
            from_offset,
            max_bytes: opts.read_max_bytes,
            max_entries: opts.read_max_entries,
            idle_ms: opts.wait_ms,
        };
        Feed {
            rx,
            task: tokio::spawn(follow(client, req, tx)),
            next_from: from_offset,
            leftover: None,
        }
    }

    /// Where this feed's next answer starts.
    fn position(&self) -> u64 {
        match &self.leftover {
            Some(rest) => rest.entries.first().map_or(rest.next_offset, |(o, _)| *o),
            None => self.next_from,
        }
    }

    /// Up to `max_entries` of the leftover, keeping the rest.
    fn take_leftover(&mut self, max_entries: u32) -> Option<ReadBatch> {
        let rest = self.leftover.take()?;
        let (now, later) = split_batch(rest, max_entries);
        self.leftover = later;
        Some(now)
    }
}

/// The first `max_entries` entries of `batch` as a batch of their own (its `next_offset` is the
/// first remaining entry's), and the remaining ones, if any.
fn split_batch(mut batch: ReadBatch, max_entries: u32) -> (ReadBatch, Option<ReadBatch>) {
    let max_entries = (max_entries as usize).max(1);
    if batch.entries.len() <= max_entries {
        return (batch, None);
    }
    let later_entries = batch.entries.split_off(max_entries);
    let later = ReadBatch {
        entries: later_entries,
        ..batch.clone()
    };
    batch.next_offset = later.entries[0].0;
    (batch, Some(later))
}

/// Feeds `tx` with the node's answers from `req.from_offset` on, until the first failure (sent,
/// then the task ends) or until the feed is dropped.
async fn follow(client: Arc<NodeClient>, req: pb::SubscribeRequest, tx: mpsc::Sender<FeedFrame>) {
    let timeout_ms = u64::from(req.idle_ms) + READ_RPC_SLACK_MS;
    let mut from = req.from_offset;
    let mut sub = match client.subscribe(req, timeout_ms).await {
        Ok(sub) => Some(sub),
        Err(e) => {
            let _ = tx.send((from, to_read_result(Err(e), from))).await;
            return;
        }
    };
    loop {
        let answer = match sub.as_mut() {
            Some(s) => match client.next_read(s, timeout_ms).await {
                // A node from before subscriptions: follow it one read request at a time.
                Err(ClientError::Refused {
                    code: pb::ErrorCode::BadRequest,
                    ..
                }) => {
                    tracing::info!(node = %client.id, "node does not know subscriptions (older version); reading it request by request");
                    sub = None;
                    continue;
                }
                answer => answer,
            },
            None => {
                let read = pb::ReadRequest {
                    from_offset: from,
                    max_bytes: req.max_bytes,
                    max_entries: req.max_entries,
                    wait_ms: req.idle_ms,
                };
                client.read(read, timeout_ms).await
            }
        };
        let next = answer.as_ref().ok().map(|r| r.next_offset);
        if tx.send((from, to_read_result(answer, from))).await.is_err() {
            return;
        }
        match next {
            Some(next) => from = next,
            None => return,
        }
    }
}

enum Wake {
    Feed(usize, Option<FeedFrame>),
    Timeout,
}

/// The next frame of `feed` while the core waits for one; otherwise never.
async fn next_frame(feed: &mut Option<Feed>, awaiting: bool) -> Option<FeedFrame> {
    match feed {
        Some(f) if awaiting => f.rx.recv().await,
        _ => std::future::pending().await,
    }
}

impl GroupDriver {
    async fn run(mut self, tx: mpsc::Sender<ConsumedBatch>) {
        loop {
            let now = Instant::now();
            while let Some(r) = self.core.poll_read(now) {
                self.start_read(r);
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
            let wake = {
                let [f0, f1, f2] = &mut self.feeds;
                let [a0, a1, a2] = self.awaiting.map(|a| a.is_some());
                tokio::select! {
                    frame = next_frame(f0, a0) => Wake::Feed(0, frame),
                    frame = next_frame(f1, a1) => Wake::Feed(1, frame),
                    frame = next_frame(f2, a2) => Wake::Feed(2, frame),
                    _ = sleep_until(deadline), if deadline.is_some() => Wake::Timeout,
                }
            };
            match wake {
                Wake::Feed(node, frame) => self.on_frame(node, frame),
                Wake::Timeout => self.core.on_timeout(Instant::now()),
            }
        }
    }

    /// Answers the core's read from the node's feed: at once from a leftover, else when the
    /// feed's next frame arrives. A feed positioned elsewhere is replaced.
    fn start_read(&mut self, r: core::ReadRequestOut) {
        debug_assert!(self.awaiting[r.node].is_none(), "one read per node");
        let feed = &mut self.feeds[r.node];
        if feed.as_ref().is_none_or(|f| f.position() != r.from_offset) {
            *feed = Some(Feed::start(
                self.clients[r.node].clone(),
                &self.opts,
                r.from_offset,
            ));
        }
        let Some(f) = feed.as_mut() else {
            return;
        };
        match f.take_leftover(r.max_entries) {
            Some(batch) => self.core.on_read_result(Instant::now(), r.node, Ok(batch)),
            None => self.awaiting[r.node] = Some(r.max_entries),
        }
    }

    fn on_frame(&mut self, node: usize, frame: Option<FeedFrame>) {
        let Some(max_entries) = self.awaiting[node].take() else {
            debug_assert!(false, "a feed frame for node {node} nobody waited for");
            return;
        };
        let result = match frame {
            Some((_, Ok(batch))) => {
                let (now, later) = split_batch(batch, max_entries);
                if let Some(f) = self.feeds[node].as_mut() {
                    f.next_from = later.as_ref().map_or(now.next_offset, |l| l.next_offset);
                    f.leftover = later;
                }
                Ok(now)
            }
            Some((_, Err(failure))) => {
                self.feeds[node] = None;
                Err(failure)
            }
            None => {
                self.feeds[node] = None;
                Err(ReadFailure::Unreachable(
                    "the node's feed ended without an answer".to_string(),
                ))
            }
        };
        self.core.on_read_result(Instant::now(), node, result);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(offsets: std::ops::Range<u64>, next_offset: u64) -> ReadBatch {
        ReadBatch {
            incarnation: [3; 16],
            start_offset: 0,
            durable_head: 100,
            next_offset,
            entries: offsets.map(|o| (o, Bytes::from(vec![o as u8]))).collect(),
        }
    }

    #[test]
    fn a_split_batch_hands_out_a_prefix_and_resumes_at_the_rest() {
        let (now, later) = split_batch(batch(10..20, 25), 4);
        assert_eq!(
            now.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert_eq!(
            now.next_offset, 14,
            "the next read starts at the first entry kept back"
        );
        let later = later.expect("6 entries kept back");
        assert_eq!(later.entries.first().map(|e| e.0), Some(14));
        assert_eq!(
            later.next_offset, 25,
            "the rest ends where the node's answer ended"
        );
        assert_eq!((later.durable_head, later.incarnation), (100, [3; 16]));

        let (whole, none) = split_batch(batch(10..20, 25), 10);
        assert_eq!((whole.entries.len(), whole.next_offset), (10, 25));
        assert!(none.is_none());
        let (empty, none) = split_batch(batch(0..0, 7), 3);
        assert_eq!((empty.entries.len(), empty.next_offset), (0, 7));
        assert!(none.is_none());
    }
}
