//! Helpers shared by the multi-process tests: a fast-failover spec, a ledger of what the producer
//! acknowledged, a consumer that runs until it has seen a set of entries, and a reader of one node.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use homeport_integration::{Cluster, ClusterSpec};
use homeport_queue::client::NodeClient;
use homeport_queue::consumer::{ConsumerOptions, Cursor, RegionConsumer};
use homeport_queue::entry;
use homeport_queue::producer::{AppendError, Committed, Producer};
use homeport_wire::pb;

/// The region every single-region test uses.
pub const REGION: &str = "sh";
/// Deadline for waiting on anything that involves a process starting, failing over or catching up.
pub const WAIT_MS: u64 = 30_000;
/// Deadline for one status or read request to a node that is up.
pub const RPC_TIMEOUT_MS: u64 = 10_000;
/// Lines of each node's log shown in a failure message.
const LOG_TAIL_LINES: usize = 40;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_homeport-it"))
}

/// Small segments (so a few hundred entries span several files) and quick failover.
pub fn fast_spec(groups: usize) -> ClusterSpec {
    ClusterSpec::one_region(groups)
        .with("attempt_timeout_ms = 500")
        .with("append_timeout_ms = 10000")
        .with("group_probe_interval_ms = 200")
        .with("segment_size_bytes = 65536")
        .with("max_batch_bytes = 65536")
        .with("max_entry_bytes = 16384")
        .with("read_max_bytes = 65536")
}

/// The node ids of group `g<n>` of [`REGION`], in config order (campus a, b, c).
pub fn group_nodes(cluster: &Cluster, group: &str) -> Vec<String> {
    cluster
        .deployment
        .region(REGION)
        .and_then(|r| r.queue_groups.iter().find(|g| g.name == group))
        .map(|g| g.nodes.iter().map(|n| n.id.clone()).collect())
        .unwrap_or_default()
}

/// A cluster with every node started and answering, and a client endpoint of the region's identity.
pub async fn start(spec: &ClusterSpec) -> Result<(Cluster, quinn::Endpoint)> {
    start_some(spec, |c| c.node_ids()).await
}

/// As [`start`], starting only the nodes `pick` chooses.
pub async fn start_some(
    spec: &ClusterSpec,
    pick: impl Fn(&Cluster) -> Vec<String>,
) -> Result<(Cluster, quinn::Endpoint)> {
    let cluster = Cluster::new(bin(), spec)?;
    let endpoint = cluster.endpoint(&homeport_config::region_identity(REGION))?;
    let nodes = pick(&cluster);
    for n in &nodes {
        cluster.start_node(n)?;
    }
    cluster.wait_up(&endpoint, &nodes).await?;
    Ok((cluster, endpoint))
}

/// Restarts a node that was killed and waits until it answers.
pub async fn restart(cluster: &Cluster, endpoint: &quinn::Endpoint, node: &str) -> Result<()> {
    cluster.start_node(node)?;
    cluster.wait_up(endpoint, &[node.to_owned()]).await
}

/// The last lines of every node's log, for failure messages.
pub fn logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    for id in cluster.node_ids() {
        let log = cluster.node_log(&id);
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        out.push_str(&format!("\n--- last {} lines of {id} ---\n", tail.len()));
        for l in tail {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// An entry id as one comparable value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub origin: String,
    pub incarnation: Vec<u8>,
    pub sequence: u64,
}

pub fn key(e: &pb::Entry) -> Key {
    let id = e.id.clone().unwrap_or_default();
    Key {
        origin: id.origin_region,
        incarnation: id.producer_incarnation.to_vec(),
        sequence: id.sequence,
    }
}

/// What the producer acknowledged: entry id → (payload, where it was committed).
#[derive(Default, Clone)]
pub struct Ledger {
    inner: Arc<Mutex<HashMap<Key, (Bytes, Committed)>>>,
}

impl Ledger {
    pub fn len(&self) -> usize {
        self.inner.lock().expect("ledger lock").len()
    }

    pub fn keys(&self) -> HashSet<Key> {
        self.inner
            .lock()
            .expect("ledger lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn snapshot(&self) -> HashMap<Key, (Bytes, Committed)> {
        self.inner.lock().expect("ledger lock").clone()
    }

    pub fn payload(&self, k: &Key) -> Option<Bytes> {
        self.inner
            .lock()
            .expect("ledger lock")
            .get(k)
            .map(|(p, _)| p.clone())
    }

    fn record(&self, k: Key, payload: Bytes, c: Committed) {
        let old = self
            .inner
            .lock()
            .expect("ledger lock")
            .insert(k, (payload, c));
        assert!(old.is_none(), "the producer handed out one entry id twice");
    }

    /// Appends one entry with a payload of `size_bytes` that names it; records it once committed.
    pub async fn append_one(
        &self,
        producer: &Producer,
        tag: &str,
        size_bytes: usize,
    ) -> Result<Committed, AppendError> {
        let e = producer.new_entry(pb::EntryKind::Test, Bytes::new());
        let k = key(&e);
        let payload = payload_for(tag, k.sequence, size_bytes);
        let e = pb::Entry {
            payload: payload.clone(),
            ..e
        };
        let c = producer.append(std::slice::from_ref(&e)).await?;
        self.record(k, payload, c.clone());
        Ok(c)
    }

    /// `n` appends, one after the other; fails on the first error.
    pub async fn append_n(
        &self,
        producer: &Producer,
        tag: &str,
        n: usize,
    ) -> Result<Vec<Committed>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let c = self
                .append_one(producer, tag, 64 + (i * 37) % 900)
                .await
                .with_context(|| format!("append {i} of {n} ({tag})"))?;
            out.push(c);
        }
        Ok(out)
    }
}

/// A payload that is different for every entry and recognisably this test's.
pub fn payload_for(tag: &str, sequence: u64, size_bytes: usize) -> Bytes {
    let mut p = format!("{tag}/{sequence}/").into_bytes();
    let mut x = sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while p.len() < size_bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b'a' + (x % 26) as u8);
    }
    Bytes::from(p)
}

pub fn producer(cluster: &Cluster, endpoint: &quinn::Endpoint) -> Result<Producer> {
    Producer::for_region(&cluster.deployment, REGION, endpoint).map_err(|e| anyhow::anyhow!("{e}"))
}

/// What a consumer delivered: each entry once (the first delivery), and the last cursor per group.
pub struct Consumed {
    pub entries: HashMap<Key, pb::Entry>,
    pub cursors: HashMap<String, Cursor>,
    pub deliveries: usize,
}

/// Runs a [`RegionConsumer`] from `cursors` until it has delivered every entry of `expected`.
/// Every delivered entry whose id the ledger knows must carry the payload that was appended.
/// A fresh consumer (empty cursors) until it has seen every id the ledger acked.
pub async fn consume_all_from_start(
    cluster: &Cluster,
    endpoint: &quinn::Endpoint,
    ledger: &Ledger,
) -> Result<Consumed> {
    consume_until(
        cluster,
        endpoint,
        HashMap::new(),
        &ledger.keys(),
        ledger,
        WAIT_MS,
    )
    .await
}

pub async fn consume_until(
    cluster: &Cluster,
    endpoint: &quinn::Endpoint,
    cursors: HashMap<String, Cursor>,
    expected: &HashSet<Key>,
    ledger: &Ledger,
    timeout_ms: u64,
) -> Result<Consumed> {
    let opts = ConsumerOptions::from_settings(&cluster.deployment.queue);
    let mut consumer = RegionConsumer::start(&cluster.deployment, REGION, endpoint, cursors, opts);
    let mut out = Consumed {
        entries: HashMap::new(),
        cursors: HashMap::new(),
        deliveries: 0,
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut missing = expected.len();
    while missing > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = match tokio::time::timeout(left, consumer.next_batch()).await {
            Ok(Some(b)) => b,
            Ok(None) => bail!("the consumer stopped{}", logs(cluster)),
            Err(_) => {
                let mut absent: Vec<&Key> = expected
                    .iter()
                    .filter(|k| !out.entries.contains_key(*k))
                    .collect();
                absent.sort();
                bail!(
                    "after {timeout_ms} ms the consumer has delivered {} of {} expected entries; \
                     missing e.g. {:?}; node states {:?}{}",
                    expected.len() - absent.len(),
                    expected.len(),
                    &absent[..absent.len().min(5)],
                    consumer.node_states(),
                    logs(cluster)
                );
            }
        };
        for ce in batch.entries {
            out.deliveries += 1;
            let k = key(&ce.entry);
            if let Some(p) = ledger.payload(&k) {
                assert_eq!(
                    p, ce.entry.payload,
                    "entry {k:?} read from {} @{} has another payload than was appended",
                    ce.node, ce.offset
                );
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = out.entries.entry(k) {
                if expected.contains(slot.key()) {
                    missing -= 1;
                }
                slot.insert(ce.entry);
            }
        }
        out.cursors.insert(batch.group.clone(), batch.cursor);
    }
    Ok(out)
}

/// Every entry a node holds from its start offset to its durable head, read on its own.
/// Checks what a reader of one node relies on: offsets are contiguous and `next_offset` follows the
/// last entry. Entries are returned raw so callers can check they decode.
pub async fn read_node_all(client: &NodeClient) -> Result<Vec<(u64, Bytes)>> {
    let st = client.status(RPC_TIMEOUT_MS).await?;
    let mut from = st.start_offset;
    let mut out = Vec::new();
    while from < st.durable_head {
        let req = pb::ReadRequest {
            from_offset: from,
            max_bytes: 0,
            max_entries: 0,
            wait_ms: 0,
        };
        let r = client.read(req, RPC_TIMEOUT_MS).await?;
        if r.entries.is_empty() {
            bail!(
                "node {} returned no entries at {from} although its durable head was {}",
                client.id,
                st.durable_head
            );
        }
        for e in r.entries {
            if e.offset != from {
                bail!(
                    "node {} returned offset {} where {from} was next",
                    client.id,
                    e.offset
                );
            }
            from += 1;
            out.push((e.offset, e.entry));
        }
        if r.next_offset != from {
            bail!(
                "node {} said the next offset is {} after returning entries up to {}",
                client.id,
                r.next_offset,
                from - 1
            );
        }
    }
    Ok(out)
}

/// Checks that every entry decodes and carries the payload the ledger recorded for its id.
/// Returns the ids found.
pub fn check_entries(node: &str, entries: &[(u64, Bytes)], ledger: &Ledger) -> HashSet<Key> {
    let mut ids = HashSet::new();
    for (offset, bytes) in entries {
        let e = match entry::decode(bytes) {
            Ok(e) => e,
            Err(err) => {
                panic!("node {node} served an entry at {offset} that does not decode: {err}")
            }
        };
        let k = key(&e);
        if let Some(p) = ledger.payload(&k) {
            assert_eq!(
                p, e.payload,
                "node {node} served {k:?} at {offset} with another payload"
            );
        }
        ids.insert(k);
    }
    ids
}

pub async fn incarnation(client: &NodeClient) -> Result<Bytes> {
    Ok(client.status(RPC_TIMEOUT_MS).await?.incarnation)
}

/// Segment files of a node's log, sorted by name.
pub fn segment_files(cluster: &Cluster, node: &str) -> Result<Vec<PathBuf>> {
    let dir = cluster.data_dir(node);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    Ok(segs)
}

/// Overwrites `len` bytes in the middle of `path` with their complement (so they surely change).
pub fn flip_middle(path: &Path, len: usize) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = f.metadata()?.len();
    if size < 2 * len as u64 {
        bail!("{} is only {size} bytes", path.display());
    }
    let pos = size / 2;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, pos)?;
    for b in &mut buf {
        *b = !*b;
    }
    f.write_all_at(&buf, pos)?;
    f.sync_all()?;
    Ok(pos)
}
