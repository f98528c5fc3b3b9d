//! The consumer's merge of a group's 3 nodes, as a sans-IO state machine.
//!
//! Every reachable node is read to its end, each from its own offset (nodes never coordinate, so
//! their offsets are unrelated). Entries are merged by id: a copy of an entry delivered within the
//! last `dedup_window_entries` deliveries is skipped.
//!
//! Why nothing committed is missed: a committed entry is on 2 of the 3 nodes, and every node is read
//! to its end, so while at most one node loses its log (a new incarnation, which this consumer then
//! reads from its start) the entry is still read from the other copy.
//!
//! At least once, by design: the dedup window is bounded (a copy read more than
//! `dedup_window_entries` deliveries after the first is delivered again), it is not part of the
//! cursor (after a restart, copies on the other nodes are delivered again), and an entry that
//! reached a single node in a failed append is delivered too. The entry id (idempotency key) and
//! apply-if-newer make this exactly once in effect.
//!
//! Usage by a shell: send every [`Consumer::poll_read`]; feed answers to
//! [`Consumer::on_read_result`]; hand [`Consumer::poll_delivery`] to the application and store
//! [`Consumer::cursor`] with the effects of the deliveries handed out before it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dedup::DedupWindow;
use super::{NODE_INCARNATION_BYTES, NODES_PER_GROUP};

/// An entry's identity, for merging copies read from different nodes (the shell encodes origin
/// region, producer incarnation and sequence into it).
pub type IdKey = Bytes;

/// Extracts the id of an encoded entry; `None` when the bytes are not a valid entry.
pub type IdOf = fn(&[u8]) -> Option<IdKey>;

type Incarnation = [u8; NODE_INCARNATION_BYTES];

/// Limits of one consumer; units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub nodes: [String; NODES_PER_GROUP],
    pub read_max_bytes: u32,
    pub read_max_entries: u32,
    /// Long-poll wait of a read at the end of a node's log.
    pub wait_ms: u32,
    /// First pause after a failed read of a node; doubles per consecutive failure.
    pub retry_backoff_ms: u64,
    pub max_retry_backoff_ms: u64,
    /// Deliveries remembered for dedup; 0 disables dedup (every copy is delivered).
    pub dedup_window_entries: usize,
    /// Per node: read entries not yet handed out. No read of a node is issued while it has this
    /// many, so memory stays below 3 times this (plus one read's `read_max_bytes` per node).
    pub max_buffered_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerConfigError {
    #[error("{setting} is 0; set it to at least 1")]
    Zero { setting: &'static str },
    #[error(
        "max_retry_backoff_ms ({max_retry_backoff_ms}) is below retry_backoff_ms \
         ({retry_backoff_ms}); raise it"
    )]
    BackoffCapBelowStart {
        retry_backoff_ms: u64,
        max_retry_backoff_ms: u64,
    },
    #[error("group lists node {0:?} more than once; its 3 nodes must be distinct")]
    DuplicateNode(String),
}

impl ConsumerConfig {
    /// Checks limits that would stall the consumer or spin it. [`Consumer::new`] does not refuse a
    /// bad config (it raises zero limits to 1); shells should call this first and report errors.
    pub fn validate(&self) -> Result<(), ConsumerConfigError> {
        for (setting, zero) in [
            ("read_max_bytes", self.read_max_bytes == 0),
            ("read_max_entries", self.read_max_entries == 0),
            ("retry_backoff_ms", self.retry_backoff_ms == 0),
            ("max_buffered_entries", self.max_buffered_entries == 0),
        ] {
            if zero {
                return Err(ConsumerConfigError::Zero { setting });
            }
        }
        if self.max_retry_backoff_ms < self.retry_backoff_ms {
            return Err(ConsumerConfigError::BackoffCapBelowStart {
                retry_backoff_ms: self.retry_backoff_ms,
                max_retry_backoff_ms: self.max_retry_backoff_ms,
            });
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if self.nodes[..i].contains(n) {
                return Err(ConsumerConfigError::DuplicateNode(n.clone()));
            }
        }
        Ok(())
    }
}

/// Where to resume one node: its log's incarnation and the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCursor {
    pub node_id: String,
    /// `None` until the node answered once; the node is then read from its start.
    pub incarnation: Option<Incarnation>,
    pub next_offset: u64,
}

/// A consumer's position in one group, as stored in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub nodes: Vec<NodeCursor>,
}

/// A read the shell must send to node `node`, then report with [`Consumer::on_read_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequestOut {
    pub node: usize,
    pub from_offset: u64,
    pub max_bytes: u32,
    pub max_entries: u32,
    pub wait_ms: u32,
}

/// A node's answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    pub incarnation: Incarnation,
    /// The node's first retained offset.
    pub start_offset: u64,
    /// One past the node's last durable entry.
    pub durable_head: u64,
    /// Where the next read should start.
    pub next_offset: u64,
    /// (offset, encoded entry), in increasing offset order.
    pub entries: Vec<(u64, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    #[error("node unreachable: {0}")]
    Unreachable(String),
    #[error("node reports corrupt data: {0}")]
    Corrupt(String),
    /// Retention deleted the requested offset; the node's log now starts at `start_offset`.
    #[error("requested offset was trimmed; the node's log starts at {start_offset}")]
    Trimmed { start_offset: u64 },
    #[error("read failed: {0}")]
    Other(String),
}

/// An entry to hand to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub node: usize,
    pub offset: u64,
    pub entry: Bytes,
}

/// Things a shell should log or count. None needs an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// The node lost its log (or was replaced); it is read from the start of its new log, and
    /// what was buffered from the old one is dropped (every committed entry has another copy).
    IncarnationChanged {
        node: usize,
        old: Incarnation,
        new: Incarnation,
    },
    /// Offsets `from..to` of the node were deleted by retention before this consumer read them.
    SkippedTrimmed {
        node: usize,
        from: u64,
        to: u64,
    },
    /// The entry at this offset is not a valid entry; it is skipped, never delivered.
    Undecodable {
        node: usize,
        offset: u64,
    },
    NodeDown {
        node: usize,
        reason: String,
    },
    NodeUp {
        node: usize,
    },
    /// The node's durable head went below offsets this consumer already read, under the same
    /// incarnation: it lost acknowledged entries without saying so (fsync disabled, or a bug).
    /// The node is read again from `durable_head`; entries buffered from it are dropped.
    HeadRegressed {
        node: usize,
        read_offset: u64,
        durable_head: u64,
    },
}

/// One node as this consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub node_id: String,
    /// The last read answered (false before the first answer and after a failure).
    pub reachable: bool,
    pub incarnation: Option<Incarnation>,
    /// The cursor's offset: entries before it were handed out (or skipped as duplicates).
    pub next_offset: u64,
    /// Where the next read starts (ahead of `next_offset` by the buffered entries).
    pub read_offset: u64,
    /// The node's durable head at its last answer.
    pub durable_head: Option<u64>,
    pub buffered_entries: usize,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub undecodable_entries: u64,
}

impl NodeState {
    /// Entries on the node not yet handed out (as of its last answer).
    pub fn entries_behind(&self) -> Option<u64> {
        self.durable_head
            .map(|head| head.saturating_sub(self.next_offset))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Unknown,
    Up,
    Down,
}

#[derive(Debug)]
struct Buffered {
    offset: u64,
    id: IdKey,
    entry: Bytes,
    /// Delivery moves on to the next node after the last entry of a read (fairness per batch).
    last_of_read: bool,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    from_offset: u64,
    max_entries: u32,
}

#[derive(Debug)]
struct NodeRead {
    node_id: String,
    incarnation: Option<Incarnation>,
    read_offset: u64,
    outstanding: Option<Outstanding>,
    retry_at: Option<Instant>,
    consecutive_failures: u32,
    reach: Reach,
    last_error: Option<String>,
    durable_head: Option<u64>,
    buffer: VecDeque<Buffered>,
    undecodable_entries: u64,
}

impl NodeRead {
    /// The offset a checkpoint may resume from: the first entry read but not handed out.
    fn cursor_offset(&self) -> u64 {
        self.buffer.front().map_or(self.read_offset, |b| b.offset)
    }
}

/// The consumer's state machine; see the module docs.
#[derive(Debug)]
pub struct Consumer {
    cfg: ConsumerConfig,
    id_of: IdOf,
    nodes: [NodeRead; NODES_PER_GROUP],
    dedup: DedupWindow,
    events: VecDeque<ConsumerEvent>,
    next_read_node: usize,
    next_delivery_node: usize,
}

impl Consumer {
    /// Resumes from `cursor` (entries for node ids not in `cfg.nodes` are ignored; nodes missing
    /// from it are read from their start). `id_of` decodes an entry's id.
    pub fn new(cfg: ConsumerConfig, cursor: Option<Cursor>, id_of: IdOf) -> Self {
        let mut cfg = cfg;
        // See `ConsumerConfig::validate`: a zero here would stall reads or spin retries.
        cfg.read_max_entries = cfg.read_max_entries.max(1);
        cfg.read_max_bytes = cfg.read_max_bytes.max(1);
        cfg.max_buffered_entries = cfg.max_buffered_entries.max(1);
        cfg.retry_backoff_ms = cfg.retry_backoff_ms.max(1);
        cfg.max_retry_backoff_ms = cfg.max_retry_backoff_ms.max(cfg.retry_backoff_ms);
        let cursor = cursor.unwrap_or_default();
        let nodes = std::array::from_fn(|i| {
            let node_id = cfg.nodes[i].clone();
            let saved = cursor.nodes.iter().find(|c| c.node_id == node_id);
            NodeRead {
                incarnation: saved.and_then(|c| c.incarnation),
                read_offset: saved.map_or(0, |c| c.next_offset),
                node_id,
                outstanding: None,
                retry_at: None,
                consecutive_failures: 0,
                reach: Reach::Unknown,
                last_error: None,
                durable_head: None,
                buffer: VecDeque::new(),
                undecodable_entries: 0,
            }
        });
        Self {
            dedup: DedupWindow::new(cfg.dedup_window_entries),
            cfg,
            id_of,
            nodes,
            events: VecDeque::new(),
            next_read_node: 0,
            next_delivery_node: 0,
        }
    }

    /// The next read to send. At most one read per node is outstanding; a node in backoff, or
    /// with `max_buffered_entries` undelivered entries, is not read.
    pub fn poll_read(&mut self, now: Instant) -> Option<ReadRequestOut> {
        for k in 0..NODES_PER_GROUP {
            let node = (self.next_read_node + k) % NODES_PER_GROUP;
            let n = &mut self.nodes[node];
            if n.outstanding.is_some()
                || n.retry_at.is_some_and(|at| at > now)
                || n.buffer.len() >= self.cfg.max_buffered_entries
            {
                continue;
            }
            let room = self.cfg.max_buffered_entries - n.buffer.len();
            let max_entries = self
                .cfg
                .read_max_entries
                .min(u32::try_from(room).unwrap_or(u32::MAX));
            n.retry_at = None;
            n.outstanding = Some(Outstanding {
                from_offset: n.read_offset,
                max_entries,
            });
            self.next_read_node = (node + 1) % NODES_PER_GROUP;
            return Some(ReadRequestOut {
                node,
                from_offset: n.read_offset,
                max_bytes: self.cfg.read_max_bytes,
                max_entries,
                wait_ms: self.cfg.wait_ms,
            });
        }
        None
    }

    /// The answer to the outstanding read of `node`.
    pub fn on_read_result(
        &mut self,
        now: Instant,
        node: usize,
        result: Result<ReadBatch, ReadFailure>,
    ) {
        debug_assert!(node < NODES_PER_GROUP, "node index {node} out of range");
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(out) = n.outstanding.take() else {
            debug_assert!(
                false,
                "read result for node {node} without a read in flight"
            );
            return;
        };
        debug_assert_eq!(out.from_offset, n.read_offset);
        match result {
            Ok(batch) => match check_batch(&batch, out, n.incarnation == Some(batch.incarnation)) {
                Ok(()) => self.on_batch(node, out, batch),
                Err(problem) => {
                    self.on_failure(now, node, format!("malformed read answer: {problem}"))
                }
            },
            Err(ReadFailure::Trimmed { start_offset }) if start_offset > out.from_offset => {
                self.mark_up(node);
                self.nodes[node].read_offset = start_offset;
                self.events.push_back(ConsumerEvent::SkippedTrimmed {
                    node,
                    from: out.from_offset,
                    to: start_offset,
                });
            }
            Err(ReadFailure::Trimmed { start_offset }) => self.on_failure(
                now,
                node,
                format!(
                    "node says offset {} is trimmed but its log starts at {start_offset}",
                    out.from_offset
                ),
            ),
            Err(failure) => self.on_failure(now, node, failure.to_string()),
        }
    }

    /// The next entry for the application, alternating between nodes after each read's entries.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        loop {
            let node = (0..NODES_PER_GROUP)
                .map(|k| (self.next_delivery_node + k) % NODES_PER_GROUP)
                .find(|&i| !self.nodes[i].buffer.is_empty())?;
            let n = &mut self.nodes[node];
            let b = n.buffer.pop_front()?;
            self.next_delivery_node = if b.last_of_read || n.buffer.is_empty() {
                (node + 1) % NODES_PER_GROUP
            } else {
                node
            };
            // A copy of an entry already handed out (read from another node meanwhile): skipped,
            // and the cursor passes it.
            if !self.dedup.insert(b.id) && self.cfg.dedup_window_entries > 0 {
                continue;
            }
            return Some(Delivery {
                node,
                offset: b.offset,
                entry: b.entry,
            });
        }
    }

    pub fn poll_event(&mut self) -> Option<ConsumerEvent> {
        self.events.pop_front()
    }

    /// When a node's backoff ends (then [`Consumer::poll_read`] has a read to send).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter(|n| n.outstanding.is_none())
            .filter_map(|n| n.retry_at)
            .min()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        for n in &mut self.nodes {
            if n.retry_at.is_some_and(|at| at <= now) {
                n.retry_at = None;
            }
        }
    }

    /// Covers exactly the deliveries handed out so far (and the duplicates skipped): resuming from
    /// it after their effects are stored skips nothing and repeats at most the copies of those
    /// entries on other nodes.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeCursor {
                    node_id: n.node_id.clone(),
                    incarnation: n.incarnation,
                    next_offset: n.cursor_offset(),
                })
                .collect(),
        }
    }

    pub fn node_states(&self) -> Vec<NodeState> {
        self.nodes
            .iter()
            .map(|n| NodeState {
                node_id: n.node_id.clone(),
                reachable: n.reach == Reach::Up,
                incarnation: n.incarnation,
                next_offset: n.cursor_offset(),
                read_offset: n.read_offset,
                durable_head: n.durable_head,
                buffered_entries: n.buffer.len(),
                consecutive_failures: n.consecutive_failures,
                last_error: n.last_error.clone(),
                undecodable_entries: n.undecodable_entries,
            })
            .collect()
    }

    fn on_batch(&mut self, node: usize, out: Outstanding, batch: ReadBatch) {
        self.mark_up(node);
        let from = out.from_offset;
        let n = &mut self.nodes[node];
        n.durable_head = Some(batch.durable_head);
        let same_log = n.incarnation == Some(batch.incarnation);
        if !same_log {
            if let Some(old) = n.incarnation {
                self.events.push_back(ConsumerEvent::IncarnationChanged {
                    node,
                    old,
                    new: batch.incarnation,
                });
            }
            // What was read from the old log is gone with it; committed entries have a copy on
            // another node, which is read to its end.
            n.buffer.clear();
            n.incarnation = Some(batch.incarnation);
            if from > batch.start_offset {
                // Read from an offset of the old log: entries before it in the new log would be
                // skipped. Re-read from the new log's start.
                n.read_offset = batch.start_offset;
                return;
            }
        } else if batch.durable_head < from {
            self.events.push_back(ConsumerEvent::HeadRegressed {
                node,
                read_offset: from,
                durable_head: batch.durable_head,
            });
            n.buffer.clear();
            n.read_offset = batch.durable_head.max(batch.start_offset);
            return;
        } else if from < batch.start_offset {
            self.events.push_back(ConsumerEvent::SkippedTrimmed {
                node,
                from,
                to: batch.start_offset,
            });
        }
        let mut last_buffered = None;
        for (offset, entry) in batch.entries {
            let Some(id) = (self.id_of)(&entry) else {
                n.undecodable_entries += 1;
                self.events
                    .push_back(ConsumerEvent::Undecodable { node, offset });
                continue;
            };
            // Already handed out from another node: pass it without buffering.
            if self.dedup.contains(&id) {
                continue;
            }
            n.buffer.push_back(Buffered {
                offset,
                id,
                entry,
                last_of_read: false,
            });
            last_buffered = Some(n.buffer.len() - 1);
        }
        if let Some(i) = last_buffered {
            n.buffer[i].last_of_read = true;
        }
        debug_assert!(batch.next_offset >= n.read_offset || !same_log);
        n.read_offset = batch.next_offset;
    }

    fn on_failure(&mut self, now: Instant, node: usize, reason: String) {
        let n = &mut self.nodes[node];
        n.consecutive_failures = n.consecutive_failures.saturating_add(1);
        let doublings = (n.consecutive_failures - 1).min(32);
        let backoff_ms = self
            .cfg
            .retry_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cfg.max_retry_backoff_ms);
        n.retry_at = Some(now + Duration::from_millis(backoff_ms));
        n.last_error = Some(reason.clone());
        if n.reach != Reach::Down {
            n.reach = Reach::Down;
            self.events
                .push_back(ConsumerEvent::NodeDown { node, reason });
        }
    }

    fn mark_up(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.consecutive_failures = 0;
        n.retry_at = None;
        if n.reach == Reach::Down {
            self.events.push_back(ConsumerEvent::NodeUp { node });
        }
        n.reach = Reach::Up;
    }
}

/// Checks an answer that came over the network before any of it is used.
fn check_batch(batch: &ReadBatch, out: Outstanding, same_log: bool) -> Result<(), String> {
    if batch.entries.len() > out.max_entries as usize {
        return Err(format!(
            "{} entries for a read of at most {}",
            batch.entries.len(),
            out.max_entries
        ));
    }
    // Entries come from the requested offset on, and never from below the log's start.
    let lowest = out.from_offset.max(batch.start_offset);
    let mut prev: Option<u64> = None;
    for (offset, _) in &batch.entries {
        if let Some(p) = prev.filter(|p| offset <= p) {
            return Err(format!("entry offset {offset} after entry offset {p}"));
        }
        if *offset < lowest {
            return Err(format!(
                "entry offset {offset} below the requested offset {} or the log start {}",
                out.from_offset, batch.start_offset
            ));
        }
        if *offset >= batch.next_offset {
            return Err(format!(
                "entry offset {offset} at or after next_offset {}",
                batch.next_offset
            ));
        }
        prev = Some(*offset);
    }
    if same_log && batch.durable_head >= out.from_offset && batch.next_offset < out.from_offset {
        return Err(format!(
            "next_offset {} goes back from the requested offset {}",
            batch.next_offset, out.from_offset
        ));
    }
    Ok(())
}
