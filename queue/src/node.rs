//! A queue node: one segment log served over QUIC with mutual TLS. Nodes never talk to each other.
//!
//! Authorization (the certificate names region and role): appends and trims only from processes of
//! the node's own region (role `region`) or an operator; reads and status from any authenticated peer,
//! since every other region's replay workers read here; a checkpoint report only from the region it
//! speaks for (or an operator).
//!
//! Retention: every other region of the deployment consumes this node's log and reports how far it
//! has durably applied it. The node deletes the segments below the lowest report, so a region that
//! never reported holds everything (besides `retention_max_age_secs`, which wins regardless).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use homeport_config::{Deployment, FsyncMode as ConfigFsync, NodeRef};
use homeport_seglog::{self as seglog, Log, LogError};
use homeport_wire::{self as wire, Identity, Role, pb};

use crate::admin;
use crate::entry;

/// The longest a read may wait for new entries (long poll).
pub const MAX_READ_WAIT_MS: u32 = 30_000;
/// A subscription's frame interval without new entries, when the consumer does not say.
const DEFAULT_SUBSCRIBE_IDLE_MS: u32 = 1_000;
/// The most entries one read answers, whatever the client asks.
pub const MAX_READ_ENTRIES: u32 = 10_000;
/// Appends in flight to the log writer before callers wait.
const MAX_PENDING_APPENDS: usize = 4_096;
/// Entries one fsync may cover.
const MAX_GROUP_ENTRIES: usize = 65_536;
/// How often segments past `retention_max_age_secs` are looked for.
const RETENTION_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Consuming regions' reported positions, in the node's data directory next to the segments.
const REPORTS_FILE: &str = "consumer-reports";
/// Written first, then renamed over [`REPORTS_FILE`]. The log removes leftover `*.tmp` files of
/// its directory when it opens, so an interrupted write leaves nothing behind.
const REPORTS_TEMP_FILE: &str = "consumer-reports.tmp";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node {0:?} is not in the config; `homeport queue status` lists the node ids of a region"
    )]
    UnknownNode(String),
    #[error("could not open the log of node {node} in {dir}: {source}")]
    Log {
        node: String,
        dir: String,
        source: LogError,
    },
    #[error("node {node}: {source}")]
    Wire {
        node: String,
        source: wire::WireError,
    },
    #[error("node {node}: {source}")]
    Admin {
        node: String,
        source: admin::AdminError,
    },
}

struct NodeState {
    log: Log,
    node_id: String,
    region: String,
    campus: String,
    max_entry_bytes: u32,
    read_max_bytes: u32,
    data_dir: PathBuf,
    /// Held across persisting and trimming, so reports are applied (and written) one at a time
    /// and the file never goes back to an older state.
    reports: tokio::sync::Mutex<ReportBook>,
}

/// A running node; dropping it does not stop it, call [`RunningNode::shutdown`].
pub struct RunningNode {
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub report: seglog::RecoveryReport,
    log: Log,
}

impl RunningNode {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Stops accepting, closes connections, waits for the server task to end.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
        for t in self.tasks {
            t.abort();
        }
        self.endpoint.wait_idle().await;
    }
}

/// Opens the node's log (recovering it) and starts serving. Returns once the node is listening.
pub async fn start(deployment: &Deployment, node_id: &str) -> Result<RunningNode, NodeError> {
    let NodeRef {
        region,
        group: _,
        node,
    } = deployment
        .node(node_id)
        .ok_or_else(|| NodeError::UnknownNode(node_id.to_owned()))?;
    let settings = &deployment.queue;
    let cfg = seglog::LogConfig {
        dir: node.data_dir.clone(),
        segment_size_bytes: settings.segment_size_bytes,
        max_entry_bytes: settings.max_entry_bytes,
        fsync: match settings.fsync {
            ConfigFsync::Always => seglog::FsyncMode::Always,
            ConfigFsync::Never => seglog::FsyncMode::Never,
        },
        max_pending_appends: MAX_PENDING_APPENDS,
        max_group_entries: MAX_GROUP_ENTRIES,
    };
    let dir = node.data_dir.display().to_string();
    let (log, report) = tokio::task::spawn_blocking(move || seglog::open(cfg))
        .await
        .expect("log open task panicked")
        .map_err(|source| NodeError::Log {
            node: node_id.to_owned(),
            dir: dir.clone(),
            source,
        })?;
    tracing::info!(node = node_id, ?report, "log recovered");

    let tls =
        wire::TlsFiles::for_identity(&deployment.tls.ca_cert, &deployment.tls.cert_dir, node_id);
    let wire_err = |source| NodeError::Wire {
        node: node_id.to_owned(),
        source,
    };
    let endpoint = wire::server_endpoint(node.addr, &tls, &wire::EndpointLimits::default())
        .map_err(wire_err)?;

    let health_log = log.clone();
    let health: admin::HealthFn = Arc::new(move || {
        let st = health_log.status();
        let body = format!(
            "start_offset={} durable_head={} segments={} disk_bytes={} corruption_detected={}\n",
            st.start_offset,
            st.durable_head,
            st.segment_count,
            st.disk_bytes,
            st.corruption_detected
        );
        if st.corruption_detected {
            Err(body)
        } else {
            Ok(body)
        }
    });
    let admin_task = admin::serve_admin(node.admin_addr, health)
        .await
        .map_err(|source| NodeError::Admin {
            node: node_id.to_owned(),
            source,
        })?;

    let consumers: Vec<String> = deployment
        .regions
        .iter()
        .filter(|other| other.name != region.name)
        .map(|other| other.name.clone())
        .collect();
    let book = load_reports(&node.data_dir, log.incarnation(), consumers, node_id).await;
    if let Some(point) = book.trim_point() {
        // A crash between persisting a report and trimming leaves the trim to do now.
        match log.trim_below(point).await {
            Ok(t) => tracing::info!(
                node = node_id,
                below_offset = point,
                start_offset = t.start_offset,
                deleted = t.segments_deleted,
                "trimmed below what every consuming region reported"
            ),
            Err(e) => tracing::warn!(node = node_id, error = %e, "trim at start-up failed"),
        }
    }

    let state = Arc::new(NodeState {
        log: log.clone(),
        node_id: node_id.to_owned(),
        region: region.name.clone(),
        campus: node.campus.clone(),
        max_entry_bytes: settings.max_entry_bytes,
        read_max_bytes: settings.read_max_bytes,
        data_dir: node.data_dir.clone(),
        reports: tokio::sync::Mutex::new(book),
    });
    let serve_state = state.clone();
    let server = tokio::spawn(wire::serve(
        endpoint.clone(),
        wire::MAX_FRAME_BYTES,
        move |peer: Arc<Identity>, req: pb::Request| {
            let st = serve_state.clone();
            async move {
                match req.body {
                    Some(pb::request::Body::Subscribe(s)) if supported(&req) => subscribe(st, s),
                    _ => handle(&st, &peer, req).await.into(),
                }
            }
        },
    ));

    let retention_log = log.clone();
    let max_age = Duration::from_secs(settings.retention_max_age_secs);
    let retention = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(RETENTION_SWEEP_INTERVAL_MS));
        loop {
            tick.tick().await;
            match retention_log.trim_older_than(max_age).await {
                Ok(t) if t.segments_deleted > 0 => {
                    tracing::info!(
                        deleted = t.segments_deleted,
                        start_offset = t.start_offset,
                        "retention removed old segments"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
    });

    Ok(RunningNode {
        endpoint,
        tasks: vec![server, retention, admin_task],
        report,
        log,
    })
}

fn error(code: pb::ErrorCode, message: impl Into<String>) -> pb::Response {
    pb::Response {
        body: Some(pb::response::Body::Error(pb::ErrorResponse {
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn ok(body: pb::response::Body) -> pb::Response {
    pb::Response { body: Some(body) }
}

fn may_write(st: &NodeState, peer: &Identity) -> bool {
    match peer.role {
        Role::Operator => true,
        Role::Region => peer.region == st.region,
        _ => false,
    }
}

fn supported(req: &pb::Request) -> bool {
    (1..=wire::PROTOCOL_VERSION).contains(&req.protocol_version)
}

async fn handle(st: &NodeState, peer: &Identity, req: pb::Request) -> pb::Response {
    if !supported(&req) {
        return error(
            pb::ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported by node {} (it speaks up to {}); upgrade the node",
                req.protocol_version,
                st.node_id,
                wire::PROTOCOL_VERSION
            ),
        );
    }
    match req.body {
        None => error(
            pb::ErrorCode::BadRequest,
            "unknown or empty request; the client may be newer than this node",
        ),
        Some(pb::request::Body::Append(a)) => {
            if !may_write(st, peer) {
                return error(
                    pb::ErrorCode::Forbidden,
                    format!(
                        "{} may not append to node {} of region {}: only that region's processes or an operator may",
                        peer.dns_name(),
                        st.node_id,
                        st.region
                    ),
                );
            }
            append(st, a.entries).await
        }
        Some(pb::request::Body::Read(r)) => read(st, r).await,
        Some(pb::request::Body::Subscribe(_)) => {
            debug_assert!(false, "subscriptions are answered before `handle`");
            error(
                pb::ErrorCode::BadRequest,
                "a subscription must be the only request of its stream",
            )
        }
        Some(pb::request::Body::RegionStatus(_)) => error(
            pb::ErrorCode::BadRequest,
            format!(
                "region_status is a region request; node {} is a queue node: send it to a region process",
                st.node_id
            ),
        ),
        Some(pb::request::Body::CheckpointReport(r)) => checkpoint_report(st, peer, r).await,
        Some(pb::request::Body::GatewayForward(_)) => error(
            pb::ErrorCode::BadRequest,
            format!(
                "gateway_forward is a gateway request; node {} is a queue node: send it to the home region's gateway",
                st.node_id
            ),
        ),
        Some(pb::request::Body::RegistryAcceptor(_) | pb::request::Body::RegistryOperation(_)) => {
            error(
                pb::ErrorCode::BadRequest,
                format!(
                    "registry requests go to a registry node (`homeport registry`); node {} is a queue node",
                    st.node_id
                ),
            )
        }
        Some(pb::request::Body::Status(_)) => ok(pb::response::Body::Status(status(st))),
        Some(pb::request::Body::Trim(t)) => {
            if !may_write(st, peer) {
                return error(
                    pb::ErrorCode::Forbidden,
                    format!("{} may not trim node {}", peer.dns_name(), st.node_id),
                );
            }
            match st.log.trim_below(t.below_offset).await {
                Ok(o) => ok(pb::response::Body::Trim(pb::TrimResponse {
                    start_offset: o.start_offset,
                    segments_deleted: o.segments_deleted,
                })),
                Err(e) => log_error(st, e),
            }
        }
    }
}

async fn append(st: &NodeState, entries: Vec<Bytes>) -> pb::Response {
    if entries.is_empty() {
        return error(pb::ErrorCode::BadRequest, "append with no entries");
    }
    for (i, e) in entries.iter().enumerate() {
        if e.len() > st.max_entry_bytes as usize {
            return error(
                pb::ErrorCode::TooLarge,
                format!(
                    "entry {i} is {} bytes; this deployment's max_entry_bytes is {}",
                    e.len(),
                    st.max_entry_bytes
                ),
            );
        }
        match entry::decode(e) {
            Ok(decoded) => {
                let origin = decoded.id.map(|id| id.origin_region).unwrap_or_default();
                if origin != st.region {
                    return error(
                        pb::ErrorCode::BadRequest,
                        format!(
                            "entry {i} originates in region {origin:?}; node {} only holds region {}'s entries",
                            st.node_id, st.region
                        ),
                    );
                }
            }
            Err(e) => return error(pb::ErrorCode::BadRequest, format!("entry {i}: {e}")),
        }
    }
    match st.log.append(entries).await {
        Ok(o) => ok(pb::response::Body::Append(pb::AppendResponse {
            incarnation: Bytes::copy_from_slice(&st.log.incarnation()),
            first_offset: o.first_offset,
            next_offset: o.next_offset,
        })),
        Err(e) => log_error(st, e),
    }
}

async fn read(st: &NodeState, r: pb::ReadRequest) -> pb::Response {
    let max_bytes = if r.max_bytes == 0 {
        st.read_max_bytes
    } else {
        r.max_bytes.min(st.read_max_bytes)
    };
    let max_entries = if r.max_entries == 0 {
        MAX_READ_ENTRIES
    } else {
        r.max_entries.min(MAX_READ_ENTRIES)
    };
    let wait_ms = r.wait_ms.min(MAX_READ_WAIT_MS);
    if wait_ms > 0 && st.log.status().durable_head <= r.from_offset {
        let mut head = st.log.subscribe();
        let from = r.from_offset;
        // Wake when something at or past `from` is durable, or give up at the deadline.
        let _ = tokio::time::timeout(
            Duration::from_millis(wait_ms as u64),
            head.wait_for(|h| *h > from),
        )
        .await;
    }
    let status = st.log.status();
    if r.from_offset > status.durable_head {
        // The node's log is shorter than what this reader already saw under the same incarnation
        // (only possible with fsync = "never" and a crash). Answer the head, with no entries, so the
        // consumer notices the regression and re-reads from there instead of retrying forever.
        return ok(pb::response::Body::Read(pb::ReadResponse {
            incarnation: Bytes::copy_from_slice(&status.incarnation),
            entries: Vec::new(),
            start_offset: status.start_offset,
            durable_head: status.durable_head,
            next_offset: status.durable_head,
        }));
    }
    if r.from_offset < status.start_offset {
        // Retention deleted what was asked for: say where the log starts now, with no entries,
        // so the consumer can jump ahead (and report what it skipped) instead of failing forever.
        return ok(pb::response::Body::Read(pb::ReadResponse {
            incarnation: Bytes::copy_from_slice(&status.incarnation),
            entries: Vec::new(),
            start_offset: status.start_offset,
            durable_head: status.durable_head,
            next_offset: status.start_offset,
        }));
    }
    match st
        .log
        .read(r.from_offset, max_bytes as usize, max_entries as usize)
    {
        Ok(o) => ok(pb::response::Body::Read(pb::ReadResponse {
            incarnation: Bytes::copy_from_slice(&st.log.incarnation()),
            entries: o
                .entries
                .into_iter()
                .map(|(offset, entry)| pb::StoredEntry { offset, entry })
                .collect(),
            start_offset: o.start_offset,
            durable_head: o.durable_head,
            next_offset: o.next_offset,
        })),
        Err(e) => log_error(st, e),
    }
}

/// Follows the log for one consumer: one read after another from where the previous ended, each
/// waiting up to `idle_ms` for new entries, written as frames of one streaming reply. The next read
/// starts as soon as QUIC took the previous frame, so a new entry leaves for the consumer the
/// moment it is durable, instead of when the consumer's next request arrives a WAN delay later.
/// An error frame (the log failed) ends the stream; the consumer retries with backoff.
fn subscribe(st: Arc<NodeState>, s: pb::SubscribeRequest) -> wire::Reply {
    let idle_ms = if s.idle_ms == 0 {
        DEFAULT_SUBSCRIBE_IDLE_MS
    } else {
        s.idle_ms.min(MAX_READ_WAIT_MS)
    };
    let frames = futures::stream::unfold(Some(s.from_offset), move |from| {
        let st = st.clone();
        async move {
            let from_offset = from?;
            let req = pb::ReadRequest {
                from_offset,
                max_bytes: s.max_bytes,
                max_entries: s.max_entries,
                wait_ms: idle_ms,
            };
            let response = read(&st, req).await;
            let next = match &response.body {
                Some(pb::response::Body::Read(r)) => Some(r.next_offset),
                _ => None,
            };
            Some((response, next))
        }
    });
    wire::Reply::Stream(Box::pin(frames))
}

fn status(st: &NodeState) -> pb::StatusResponse {
    let s = st.log.status();
    pb::StatusResponse {
        node_id: st.node_id.clone(),
        incarnation: Bytes::copy_from_slice(&s.incarnation),
        start_offset: s.start_offset,
        durable_head: s.durable_head,
        segment_count: s.segment_count as u32,
        disk_bytes: s.disk_bytes,
        region: st.region.clone(),
        campus: st.campus.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        corruption_detected: s.corruption_detected,
        fsync_mode: s.fsync.to_string(),
    }
}

fn log_error(st: &NodeState, e: LogError) -> pb::Response {
    let code = match &e {
        LogError::Corrupt { .. } => {
            tracing::error!(node = %st.node_id, error = %e, "corrupt bytes in the log; not serving them");
            pb::ErrorCode::Corrupt
        }
        LogError::Trimmed { .. } => pb::ErrorCode::BadRequest,
        LogError::EntryTooLarge { .. } => pb::ErrorCode::TooLarge,
        LogError::Busy { .. } => pb::ErrorCode::Overloaded,
        _ => {
            tracing::error!(node = %st.node_id, error = %e, "log error");
            pb::ErrorCode::Unavailable
        }
    };
    error(code, e.to_string())
}

/// A consuming region says it has durably applied everything below `next_offset` of this node's
/// log; once every consuming region has, the segments below are deleted.
async fn checkpoint_report(
    st: &NodeState,
    peer: &Identity,
    r: pb::CheckpointReport,
) -> pb::Response {
    let may_report = match peer.role {
        Role::Operator => true,
        Role::Region => peer.region == r.consumer_region,
        _ => false,
    };
    if !may_report {
        return error(
            pb::ErrorCode::Forbidden,
            format!(
                "{} may not report a checkpoint for region {:?} to node {}: only that region's \
                 processes or an operator may",
                peer.dns_name(),
                r.consumer_region,
                st.node_id
            ),
        );
    }
    let Ok(incarnation) = <[u8; 16]>::try_from(r.incarnation.as_ref()) else {
        return error(
            pb::ErrorCode::BadRequest,
            format!(
                "checkpoint report incarnation is {} bytes; a node incarnation is 16 (send the \
                 one this node's read answers carried)",
                r.incarnation.len()
            ),
        );
    };

    let mut book = st.reports.lock().await;
    if !book.consumers.contains(&r.consumer_region) {
        let consumers = book.consumers.join(", ");
        let message = if r.consumer_region == st.region {
            format!(
                "region {} does not consume its own queue; node {} counts reports only from the \
                 other regions ({consumers})",
                st.region, st.node_id
            )
        } else {
            format!(
                "region {:?} is not a consuming region of node {} (those are: {consumers}); is \
                 the node's deployment file current?",
                r.consumer_region, st.node_id
            )
        };
        return error(pb::ErrorCode::BadRequest, message);
    }
    let status = st.log.status();
    if incarnation != status.incarnation {
        // Offsets of a history this node no longer has say nothing about the current one; the
        // consumer learns the new incarnation from its next read.
        return ok(pb::response::Body::CheckpointReport(
            pb::CheckpointReportResponse {
                start_offset: status.start_offset,
            },
        ));
    }
    if r.next_offset > status.durable_head {
        return error(
            pb::ErrorCode::BadRequest,
            format!(
                "region {} reports next_offset {}, past node {}'s durable head {}; a consumer \
                 can only have applied what it read here",
                r.consumer_region, r.next_offset, st.node_id, status.durable_head
            ),
        );
    }

    let mut updated = book.clone();
    if updated.record(&r.consumer_region, r.next_offset) {
        let bytes = updated.encode();
        let dir = st.data_dir.clone();
        let written = tokio::task::spawn_blocking(move || write_reports_file(&dir, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("write task failed: {e}"))));
        if let Err(e) = written {
            tracing::error!(node = %st.node_id, error = %e, "could not persist a checkpoint report");
            return error(
                pb::ErrorCode::Unavailable,
                format!(
                    "node {} could not persist the report in {}: {e}; report again later",
                    st.node_id,
                    st.data_dir.display()
                ),
            );
        }
        *book = updated;
        metrics::gauge!(
            "homeport_node_consumer_reported_offset",
            "consumer_region" => r.consumer_region.clone()
        )
        .set(r.next_offset as f64);
    }

    let mut start_offset = status.start_offset;
    if let Some(point) = book.trim_point()
        && point > start_offset
    {
        match st.log.trim_below(point).await {
            Ok(t) => {
                if t.segments_deleted > 0 {
                    tracing::info!(
                        node = %st.node_id,
                        below_offset = point,
                        start_offset = t.start_offset,
                        deleted = t.segments_deleted,
                        "every consuming region applied these segments; deleted them"
                    );
                }
                start_offset = t.start_offset;
            }
            Err(e) => return log_error(st, e),
        }
    }
    ok(pb::response::Body::CheckpointReport(
        pb::CheckpointReportResponse { start_offset },
    ))
}

/// What the consuming regions reported for one incarnation of the log. Pure bookkeeping; the
/// node persists it ([`ReportBook::encode`]) and trims below [`ReportBook::trim_point`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportBook {
    incarnation: [u8; 16],
    /// Every region whose report counts: all regions of the deployment but the node's own.
    consumers: Vec<String>,
    /// Highest `next_offset` reported per consuming region.
    reported: BTreeMap<String, u64>,
}

/// Why the reports file cannot be used; the node then starts as if nobody had reported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum ReportsFileError {
    #[error("is {0} bytes, too short for a reports file")]
    Short(usize),
    #[error("does not start with the reports file magic")]
    Magic,
    #[error("has format version {0}; this node reads version {REPORTS_FORMAT_VERSION}")]
    Version(u8),
    #[error("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("is truncated inside report {0}")]
    Truncated(u32),
    #[error("report {0} names a region that is not UTF-8")]
    RegionName(u32),
    #[error("has {0} bytes after its last report")]
    Trailing(usize),
}

const REPORTS_MAGIC: [u8; 4] = *b"HPCR";
const REPORTS_FORMAT_VERSION: u8 = 1;
/// magic, version, incarnation, report count.
const REPORTS_HEADER_BYTES: usize = 4 + 1 + 16 + 4;
const REPORTS_CRC_BYTES: usize = 4;

impl ReportBook {
    fn new(incarnation: [u8; 16], consumers: Vec<String>) -> Self {
        Self {
            incarnation,
            consumers,
            reported: BTreeMap::new(),
        }
    }

    /// Takes `next_offset` for `region` if it is higher than what the region reported before
    /// (a lower one is a late or replayed report: positions never go back). Returns whether the
    /// book changed.
    fn record(&mut self, region: &str, next_offset: u64) -> bool {
        debug_assert!(
            self.consumers.iter().any(|c| c == region),
            "report from {region:?}, which is not a consuming region"
        );
        match self.reported.get(region) {
            Some(&known) if known >= next_offset => false,
            _ => {
                self.reported.insert(region.to_owned(), next_offset);
                true
            }
        }
    }

    /// The offset below which every consuming region has applied everything; `None` while some
    /// consuming region has not reported, or when no region consumes this log at all.
    fn trim_point(&self) -> Option<u64> {
        if self.consumers.is_empty() {
            return None;
        }
        self.consumers
            .iter()
            .map(|region| self.reported.get(region).copied())
            .try_fold(u64::MAX, |lowest, reported| Some(lowest.min(reported?)))
    }

    /// `HPCR | version u8 | incarnation [16] | count u32 | count x (name_len u8 | name |
    /// next_offset u64) | crc32c u32` (little-endian), the CRC covering everything before it.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORTS_HEADER_BYTES + REPORTS_CRC_BYTES + 64);
        out.extend_from_slice(&REPORTS_MAGIC);
        out.push(REPORTS_FORMAT_VERSION);
        out.extend_from_slice(&self.incarnation);
        let count = u32::try_from(self.reported.len()).expect("regions in a deployment fit a u32");
        out.extend_from_slice(&count.to_le_bytes());
        for (region, next_offset) in &self.reported {
            // Config limits region names to 32 characters.
            let len = u8::try_from(region.len()).expect("region names are at most 32 bytes");
            out.push(len);
            out.extend_from_slice(region.as_bytes());
            out.extend_from_slice(&next_offset.to_le_bytes());
        }
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The incarnation and reports a file holds, checked byte by byte.
    fn decode(bytes: &[u8]) -> Result<([u8; 16], BTreeMap<String, u64>), ReportsFileError> {
        if bytes.len() < REPORTS_HEADER_BYTES + REPORTS_CRC_BYTES {
            return Err(ReportsFileError::Short(bytes.len()));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - REPORTS_CRC_BYTES);
        if body[..4] != REPORTS_MAGIC {
            return Err(ReportsFileError::Magic);
        }
        let stored = u32::from_le_bytes(take_array(crc_bytes));
        let computed = crc32c(body);
        if stored != computed {
            return Err(ReportsFileError::Crc { stored, computed });
        }
        if body[4] != REPORTS_FORMAT_VERSION {
            return Err(ReportsFileError::Version(body[4]));
        }
        let incarnation: [u8; 16] = take_array(&body[5..21]);
        let count = u32::from_le_bytes(take_array(&body[21..25]));
        let mut rest = &body[REPORTS_HEADER_BYTES..];
        let mut reported = BTreeMap::new();
        for i in 0..count {
            let (&len, after) = rest.split_first().ok_or(ReportsFileError::Truncated(i))?;
            let len = usize::from(len);
            if after.len() < len + 8 {
                return Err(ReportsFileError::Truncated(i));
            }
            let name =
                std::str::from_utf8(&after[..len]).map_err(|_| ReportsFileError::RegionName(i))?;
            let next_offset = u64::from_le_bytes(take_array(&after[len..len + 8]));
            reported.insert(name.to_owned(), next_offset);
            rest = &after[len + 8..];
        }
        if !rest.is_empty() {
            return Err(ReportsFileError::Trailing(rest.len()));
        }
        Ok((incarnation, reported))
    }
}

/// Copies an exactly sized slice; callers slice it to `N` bytes after checking the length.
fn take_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// CRC-32C (Castagnoli), bit by bit: the reports file is a few hundred bytes written every few
/// seconds, so a table or a dependency buys nothing.
fn crc32c(bytes: &[u8]) -> u32 {
    const POLY_REVERSED: u32 = 0x82F6_3B78;
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = 0u32.wrapping_sub(crc & 1);
            crc = (crc >> 1) ^ (POLY_REVERSED & mask);
        }
    }
    !crc
}

/// The reports kept for the log's current incarnation, for regions that still consume it. A
/// missing, unreadable or damaged file, or one from another incarnation, means "nobody has
/// reported yet": that only delays trimming, never loses data a region still needs.
async fn load_reports(
    dir: &Path,
    incarnation: [u8; 16],
    consumers: Vec<String>,
    node_id: &str,
) -> ReportBook {
    let mut book = ReportBook::new(incarnation, consumers);
    let path = dir.join(REPORTS_FILE);
    let read_path = path.clone();
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(read_path)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return book,
        Ok(Err(e)) => {
            tracing::warn!(node = node_id, path = %path.display(), error = %e,
                "cannot read the checkpoint reports; trimming waits for new reports");
            return book;
        }
        Err(e) => {
            tracing::warn!(node = node_id, error = %e, "reading the checkpoint reports failed");
            return book;
        }
    };
    match ReportBook::decode(&bytes) {
        Ok((stored, _)) if stored != incarnation => {
            tracing::info!(
                node = node_id,
                "checkpoint reports are of a previous incarnation of the log; dropped"
            );
        }
        Ok((_, reported)) => {
            for (region, next_offset) in reported {
                if book.consumers.contains(&region) {
                    book.record(&region, next_offset);
                } else {
                    tracing::info!(node = node_id, region = %region,
                        "dropped the checkpoint report of a region that no longer consumes this log");
                }
            }
        }
        Err(e) => {
            tracing::warn!(node = node_id, path = %path.display(), error = %e,
                "checkpoint reports file is damaged; trimming waits for new reports");
        }
    }
    book
}

/// Replaces the reports file atomically and durably: a crash leaves the old file or the new one,
/// never a mix.
fn write_reports_file(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(REPORTS_TEMP_FILE);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(REPORTS_FILE))?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod report_tests {
    use super::*;

    const INC: [u8; 16] = [7; 16];

    fn book() -> ReportBook {
        ReportBook::new(INC, vec!["hk".to_owned(), "ca".to_owned()])
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn nothing_is_trimmed_until_every_consuming_region_reported() {
        let mut b = book();
        assert_eq!(b.trim_point(), None);
        assert!(b.record("hk", 500));
        assert_eq!(
            b.trim_point(),
            None,
            "ca has not reported, so it holds everything"
        );
        assert!(b.record("ca", 300));
        assert_eq!(b.trim_point(), Some(300));
        assert!(b.record("ca", 900));
        assert_eq!(b.trim_point(), Some(500));
    }

    #[test]
    fn reports_never_go_back() {
        let mut b = book();
        assert!(b.record("hk", 500));
        assert!(!b.record("hk", 400));
        assert!(!b.record("hk", 500));
        assert_eq!(b.reported.get("hk"), Some(&500));
    }

    #[test]
    fn a_log_nobody_consumes_is_never_trimmed_by_reports() {
        assert_eq!(ReportBook::new(INC, Vec::new()).trim_point(), None);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut b = book();
        b.record("hk", 12);
        b.record("ca", u64::MAX);
        let (incarnation, reported) = ReportBook::decode(&b.encode()).expect("decodes");
        assert_eq!(incarnation, INC);
        assert_eq!(reported, b.reported);
        let empty = ReportBook::decode(&book().encode()).expect("decodes");
        assert!(empty.1.is_empty());
    }

    #[test]
    fn every_damaged_file_is_refused_without_panicking() {
        let mut b = book();
        b.record("hk", 12);
        b.record("ca", 34);
        let good = b.encode();
        // Every single flipped byte and every truncation is caught.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(ReportBook::decode(&bad).is_err(), "flip at {i}");
        }
        for len in 0..good.len() {
            assert!(ReportBook::decode(&good[..len]).is_err(), "cut at {len}");
        }
        assert_eq!(ReportBook::decode(b"HPCR"), Err(ReportsFileError::Short(4)));
        // A count that promises more than the file holds, with a matching CRC.
        let mut lying = good[..good.len() - REPORTS_CRC_BYTES].to_vec();
        lying[21..25].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32c(&lying);
        lying.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            ReportBook::decode(&lying),
            Err(ReportsFileError::Truncated(2))
        );
    }

    #[tokio::test]
    async fn reports_survive_a_reload_of_the_same_incarnation_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = book();
        b.record("hk", 40);
        b.record("ca", 50);
        write_reports_file(dir.path(), &b.encode()).expect("write");
        let consumers = vec!["hk".to_owned(), "ca".to_owned()];

        let same = load_reports(dir.path(), INC, consumers.clone(), "n").await;
        assert_eq!(same, b);
        let other = load_reports(dir.path(), [8; 16], consumers.clone(), "n").await;
        assert_eq!(other.trim_point(), None);
        // A region removed from the deployment no longer counts.
        let fewer = load_reports(dir.path(), INC, vec!["hk".to_owned()], "n").await;
        assert_eq!(fewer.trim_point(), Some(40));
        assert!(!fewer.reported.contains_key("ca"));

        std::fs::write(dir.path().join(REPORTS_FILE), b"garbage").expect("damage");
        let damaged = load_reports(dir.path(), INC, consumers, "n").await;
        assert_eq!(damaged.trim_point(), None);
    }
}
