//! `homeport queue append|tail|status`: an operator's view of a region's queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use homeport_config::{Deployment, OPERATOR_IDENTITY};
use homeport_queue::client::{self, NodeClient};
use homeport_queue::consumer::{ConsumerOptions, RegionConsumer};
use homeport_queue::entry;
use homeport_queue::producer::Producer;
use homeport_wire::pb;
use serde::Serialize;

/// Status requests are small: a node that does not answer in this long is reported down.
const STATUS_TIMEOUT_MS: u64 = 2_000;
/// Most test entries one `queue append` writes.
const MAX_APPEND_COUNT: u32 = 1_000_000;

/// A non-error exit code (e.g. `status` found a group without quorum).
#[derive(Debug)]
pub struct ExitWith(pub u8);
impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for ExitWith {}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The deployment's TOML file.
    #[arg(long)]
    pub config: PathBuf,
    /// The region whose queue to use, e.g. `sh`.
    #[arg(long)]
    pub region: String,
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Append test entries; prints where each batch was committed (2 of 3 durable acks).
    Append {
        #[command(flatten)]
        target: Target,
        /// How many entries.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Entry payload (text). Default: "test entry <n>".
        #[arg(long, conflicts_with = "size_bytes")]
        payload: Option<String>,
        /// Instead of --payload, a payload of this many bytes.
        #[arg(long)]
        size_bytes: Option<usize>,
        /// Entries per append call.
        #[arg(long, default_value_t = 1)]
        batch: u32,
    },
    /// Follow a region's queue as a consumer sees it: every group, merged across its nodes.
    Tail {
        #[command(flatten)]
        target: Target,
        /// Keep following; otherwise stop once every reachable node has been read to its end.
        #[arg(long, short)]
        follow: bool,
        /// Stop after this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Per node: reachability, incarnation, offsets, segments, disk use. Exits 1 if a group lacks quorum.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: QueueCmd) -> Result<()> {
    match cmd {
        QueueCmd::Append {
            target,
            count,
            payload,
            size_bytes,
            batch,
        } => append(target, count, payload, size_bytes, batch).await,
        QueueCmd::Tail {
            target,
            follow,
            limit,
            json,
        } => tail(target, follow, limit, json).await,
        QueueCmd::Status { target, json } => status(target, json).await,
    }
}

fn open(target: &Target) -> Result<(Deployment, quinn::Endpoint)> {
    let d = crate::load_config(&target.config)?;
    if d.region(&target.region).is_none() {
        bail!(
            "region {:?} is not in {}; it has: {}",
            target.region,
            target.config.display(),
            d.region_names().join(", ")
        );
    }
    let endpoint = client::client_endpoint(&d, OPERATOR_IDENTITY).with_context(|| {
        format!(
            "loading the operator certificate; run `homeport certs --config {}` first",
            target.config.display()
        )
    })?;
    Ok((d, endpoint))
}

async fn append(
    target: Target,
    count: u32,
    payload: Option<String>,
    size_bytes: Option<usize>,
    batch: u32,
) -> Result<()> {
    if count == 0 || count > MAX_APPEND_COUNT {
        bail!("--count must be between 1 and {MAX_APPEND_COUNT}");
    }
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (d, endpoint) = open(&target)?;
    if let Some(n) = size_bytes
        && n > d.queue.max_entry_bytes as usize
    {
        bail!(
            "--size-bytes {n} exceeds this deployment's queue.max_entry_bytes ({})",
            d.queue.max_entry_bytes
        );
    }
    let producer =
        Producer::for_region(&d, &target.region, &endpoint).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut done = 0u32;
    while done < count {
        let n = batch.min(count - done);
        let entries: Vec<pb::Entry> = (done..done + n)
            .map(|i| {
                let body = match (&payload, size_bytes) {
                    (Some(p), _) => Bytes::from(p.clone()),
                    (None, Some(sz)) => Bytes::from(vec![b'x'; sz]),
                    (None, None) => Bytes::from(format!("test entry {i}")),
                };
                producer.new_entry(pb::EntryKind::Test, body)
            })
            .collect();
        let first = entries[0].id.clone().unwrap_or_default();
        let c = producer
            .append(&entries)
            .await
            .with_context(|| format!("appending entries {done}..{}", done + n))?;
        let acks: Vec<String> = c
            .acks
            .iter()
            .map(|(node, off)| format!("{node}@{off}"))
            .collect();
        println!(
            "committed {n} entr{} from {} in group {} (acked by {})",
            if n == 1 { "y" } else { "ies" },
            entry::display_id(&first),
            c.group,
            acks.join(", ")
        );
        done += n;
    }
    Ok(())
}

#[derive(Serialize)]
struct TailLine<'a> {
    group: &'a str,
    node: &'a str,
    offset: u64,
    id: String,
    kind: &'a str,
    origin_unix_ms: u64,
    age_ms: i64,
    payload_bytes: usize,
    payload: String,
}

async fn tail(target: Target, follow: bool, limit: Option<u64>, json: bool) -> Result<()> {
    let (d, endpoint) = open(&target)?;
    let mut opts = ConsumerOptions::from_settings(&d.queue);
    // Without --follow, a short long-poll lets us notice the end quickly.
    if !follow {
        opts.wait_ms = 200;
    }
    let idle_exit = Duration::from_millis(opts.wait_ms as u64 + 1_000);
    let mut consumer = RegionConsumer::start(&d, &target.region, &endpoint, HashMap::new(), opts);
    let mut seen = 0u64;
    loop {
        let batch = if follow {
            consumer.next_batch().await
        } else {
            match tokio::time::timeout(idle_exit, consumer.next_batch()).await {
                Ok(b) => b,
                Err(_) => {
                    if caught_up(&consumer) {
                        break;
                    }
                    continue;
                }
            }
        };
        let Some(batch) = batch else { break };
        for e in &batch.entries {
            let id = e
                .entry
                .id
                .as_ref()
                .map(entry::display_id)
                .unwrap_or_default();
            let kind = e.entry.kind().as_str_name();
            let age_ms = entry::now_unix_ms() as i64 - e.entry.origin_unix_ms as i64;
            let preview: String = String::from_utf8_lossy(&e.entry.payload)
                .chars()
                .take(60)
                .collect();
            if json {
                let line = TailLine {
                    group: &batch.group,
                    node: &e.node,
                    offset: e.offset,
                    id,
                    kind,
                    origin_unix_ms: e.entry.origin_unix_ms,
                    age_ms,
                    payload_bytes: e.entry.payload.len(),
                    payload: preview,
                };
                println!("{}", serde_json::to_string(&line)?);
            } else {
                println!(
                    "{:<6} {:<12} @{:<8} {:<28} {:<22} {:>6} B  age {age_ms} ms  {preview:?}",
                    batch.group,
                    e.node,
                    e.offset,
                    id,
                    kind,
                    e.entry.payload.len()
                );
            }
            seen += 1;
            if limit.is_some_and(|l| seen >= l) {
                return Ok(());
            }
        }
    }
    if !json {
        eprintln!("{seen} entries");
    }
    Ok(())
}

/// Every node is either unreachable or read to its durable head.
fn caught_up(c: &RegionConsumer) -> bool {
    c.node_states()
        .values()
        .flatten()
        .all(|n| !n.reachable || n.durable_head.is_some_and(|h| n.next_offset >= h))
}

#[derive(Serialize)]
struct NodeLine {
    group: String,
    node: String,
    campus: String,
    addr: String,
    up: bool,
    error: Option<String>,
    incarnation: Option<String>,
    start_offset: Option<u64>,
    durable_head: Option<u64>,
    segments: Option<u32>,
    disk_bytes: Option<u64>,
    corruption_detected: Option<bool>,
    fsync: Option<String>,
}

async fn status(target: Target, json: bool) -> Result<()> {
    let (d, endpoint) = open(&target)?;
    let region = d.region(&target.region).context("region checked in open")?;
    let mut lines = Vec::new();
    let mut groups_without_quorum = Vec::new();
    for g in &region.queue_groups {
        let clients = NodeClient::for_group(&endpoint, &region.name, g);
        let answers = futures_join(&clients).await;
        let up = answers.iter().filter(|a| a.is_ok()).count();
        if up < 2 {
            groups_without_quorum.push(g.name.clone());
        }
        for (node, answer) in g.nodes.iter().zip(answers) {
            let mut line = NodeLine {
                group: g.name.clone(),
                node: node.id.clone(),
                campus: node.campus.clone(),
                addr: node.addr.to_string(),
                up: answer.is_ok(),
                error: None,
                incarnation: None,
                start_offset: None,
                durable_head: None,
                segments: None,
                disk_bytes: None,
                corruption_detected: None,
                fsync: None,
            };
            match answer {
                Ok(s) => {
                    line.incarnation = Some(
                        s.incarnation
                            .iter()
                            .take(4)
                            .map(|b| format!("{b:02x}"))
                            .collect(),
                    );
                    line.start_offset = Some(s.start_offset);
                    line.durable_head = Some(s.durable_head);
                    line.segments = Some(s.segment_count);
                    line.disk_bytes = Some(s.disk_bytes);
                    line.corruption_detected = Some(s.corruption_detected);
                    line.fsync = Some(s.fsync_mode);
                }
                Err(e) => line.error = Some(e.to_string()),
            }
            lines.push(line);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        println!(
            "{:<6} {:<12} {:<6} {:<18} {:<5} {:<9} {:>10} {:>12} {:>5} {:>12}  note",
            "group",
            "node",
            "campus",
            "addr",
            "state",
            "incarn",
            "start",
            "head",
            "segs",
            "disk_bytes"
        );
        for l in &lines {
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            let note = match (&l.error, l.corruption_detected, l.fsync.as_deref()) {
                (Some(e), _, _) => e.clone(),
                (None, Some(true), _) => "CORRUPTION DETECTED".into(),
                (None, _, Some("never")) => "fsync=never: acks are NOT durable".into(),
                _ => String::new(),
            };
            println!(
                "{:<6} {:<12} {:<6} {:<18} {:<5} {:<9} {:>10} {:>12} {:>5} {:>12}  {note}",
                l.group,
                l.node,
                l.campus,
                l.addr,
                if l.up { "up" } else { "DOWN" },
                l.incarnation.as_deref().unwrap_or("-"),
                opt(l.start_offset),
                opt(l.durable_head),
                l.segments
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                opt(l.disk_bytes),
            );
        }
    }
    if !groups_without_quorum.is_empty() {
        eprintln!(
            "groups without quorum (fewer than 2 of 3 nodes up): {}",
            groups_without_quorum.join(", ")
        );
        return Err(ExitWith(1).into());
    }
    Ok(())
}

async fn futures_join(
    clients: &[Arc<NodeClient>; 3],
) -> Vec<Result<pb::StatusResponse, client::ClientError>> {
    let [a, b, c] = clients;
    let (ra, rb, rc) = tokio::join!(
        a.status(STATUS_TIMEOUT_MS),
        b.status(STATUS_TIMEOUT_MS),
        c.status(STATUS_TIMEOUT_MS)
    );
    vec![ra, rb, rc]
}
