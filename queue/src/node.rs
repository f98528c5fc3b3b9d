//! A queue node: one segment log served over QUIC with mutual TLS. Nodes never talk to each other.
//!
//! Authorization (the certificate names region and role): appends and trims only from processes of
//! the node's own region (role `region`) or an operator; reads and status from any authenticated peer,
//! since every other region's replay workers read here.

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
/// The most entries one read answers, whatever the client asks.
pub const MAX_READ_ENTRIES: u32 = 10_000;
/// Appends in flight to the log writer before callers wait.
const MAX_PENDING_APPENDS: usize = 4_096;
/// Entries one fsync may cover.
const MAX_GROUP_ENTRIES: usize = 65_536;
/// How often segments past `retention_max_age_secs` are looked for.
const RETENTION_SWEEP_INTERVAL_MS: u64 = 60_000;

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

    let state = Arc::new(NodeState {
        log: log.clone(),
        node_id: node_id.to_owned(),
        region: region.name.clone(),
        campus: node.campus.clone(),
        max_entry_bytes: settings.max_entry_bytes,
        read_max_bytes: settings.read_max_bytes,
    });
    let serve_state = state.clone();
    let server = tokio::spawn(wire::serve(
        endpoint.clone(),
        wire::MAX_FRAME_BYTES,
        move |peer: Arc<Identity>, req: pb::Request| {
            let st = serve_state.clone();
            async move { handle(&st, &peer, req).await }
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

async fn handle(st: &NodeState, peer: &Identity, req: pb::Request) -> pb::Response {
    if req.protocol_version == 0 || req.protocol_version > wire::PROTOCOL_VERSION {
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
        Some(pb::request::Body::RegionStatus(_)) => error(
            pb::ErrorCode::BadRequest,
            format!(
                "region_status is a region request; node {} is a queue node: send it to a region process",
                st.node_id
            ),
        ),
        Some(pb::request::Body::CheckpointReport(_)) => error(
            pb::ErrorCode::BadRequest,
            "checkpoint reports are not handled by this node version",
        ),
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
