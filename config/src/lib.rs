//! One TOML file describes a whole homeport deployment: every region, queue group, node, address,
//! certificate and limit. Every process of the deployment reads the same file and picks its own part,
//! so the file is validated as a whole and every problem is reported at once: an operator fixing a
//! deployment should not have to run the loader once per typo.
//!
//! Relative paths in the file resolve against the directory of the file, not the working directory,
//! so the same file works from wherever a process is started.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod gateway;
mod registry;
mod validate;

pub use gateway::{
    GatewaySettings, RegionGateway, RoutePolicy, RouteRule, TicketKey, TicketKeySource,
    TicketSettings, Upstream, UpstreamProtocol, gateway_identity,
};
pub use registry::{RegionRegistry, RegistrySettings, registry_identity};

/// Certificate name of the operator's client identity (admin verbs, `homeport lag`).
pub const OPERATOR_IDENTITY: &str = "operator";

/// Prefix of a region's certificate name; node ids may not start with it so that no node can hold
/// a certificate that names a region.
const REGION_IDENTITY_PREFIX: &str = "region-";

/// The certificate name a region's processes (gateway, replay, registry) present to other regions.
/// A region's identity is the name in its certificate, so this is what peers check.
pub fn region_identity(region: &str) -> String {
    format!("{REGION_IDENTITY_PREFIX}{region}")
}

/// Reads and validates the deployment file at `path`. Relative paths inside it resolve against the
/// file's directory, made absolute so that a process which changes directory still finds them.
pub fn load(path: &Path) -> Result<Deployment, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let base_dir = std::path::absolute(parent).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    validate::parse_named(&text, &base_dir, &path.display().to_string())
}

/// Parses and validates deployment TOML held in memory; relative paths resolve against `base_dir`
/// as given (it is not made absolute). Errors name the source `<text>`.
pub fn parse(text: &str, base_dir: &Path) -> Result<Deployment, ConfigError> {
    validate::parse_named(text, base_dir, "<text>")
}

/// Why a deployment file could not be used. Each variant says where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source} — check that the path exists and is readable", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or TOML that does not fit the deployment shape (unknown or missing field, wrong
    /// type). `message` is toml's own, which carries the line and column.
    #[error("config {path}: {message}")]
    Syntax { path: String, message: String },
    /// Well-formed but inconsistent; every problem found, in file order.
    #[error("{}", invalid_display(path, problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn invalid_display(path: &str, problems: &[Problem]) -> String {
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut out = format!("config {path} has {count} {noun}:");
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// One thing wrong with a deployment file: `place` locates it (e.g.
/// `regions[0] "sh", queue_groups[1] "g2"`), `message` says what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// A validated deployment: names are unique and well-formed, every group has 3 nodes in 3 campuses,
/// no two listeners share an address, and the queue, store and replay limits are consistent with
/// each other (a maximal record change fits in a queue entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub data_root: PathBuf,
    pub tls: Tls,
    pub queue: QueueSettings,
    pub store: StoreSettings,
    pub replay: ReplaySettings,
    pub homes: HomeRule,
    /// Limits and route policies of every gateway (`[gateway]`).
    pub gateway: GatewaySettings,
    /// How gateways check tickets (`[tickets]`).
    pub tickets: TicketSettings,
    /// Settings of every registry node (`[registry]`).
    pub registry: RegistrySettings,
    pub regions: Vec<Region>,
}

/// Where to find a node, with the region and group it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef<'a> {
    pub region: &'a Region,
    pub group: &'a QueueGroup,
    pub node: &'a QueueNode,
}

impl Deployment {
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|region| region.name == name)
    }

    /// Node ids are unique across the deployment, so one id finds at most one node.
    pub fn node(&self, id: &str) -> Option<NodeRef<'_>> {
        self.nodes().find(|found| found.node.id == id)
    }

    /// Every queue node, in file order (region, then group, then node).
    pub fn nodes(&self) -> impl Iterator<Item = NodeRef<'_>> {
        self.regions.iter().flat_map(|region| {
            region.queue_groups.iter().flat_map(move |group| {
                group.nodes.iter().map(move |node| NodeRef {
                    region,
                    group,
                    node,
                })
            })
        })
    }

    pub fn region_names(&self) -> Vec<&str> {
        self.regions
            .iter()
            .map(|region| region.name.as_str())
            .collect()
    }

    /// Every certificate name the deployment needs, one per identity: each node id, each region's
    /// [`region_identity`], and [`OPERATOR_IDENTITY`]. Validation guarantees they are distinct.
    pub fn identities(&self) -> Vec<String> {
        let mut names: Vec<String> = self.nodes().map(|found| found.node.id.clone()).collect();
        names.extend(
            self.regions
                .iter()
                .map(|region| region_identity(&region.name)),
        );
        names.extend(
            self.regions
                .iter()
                .filter(|region| region.gateway.is_some())
                .map(|region| gateway_identity(&region.name)),
        );
        names.extend(
            self.regions
                .iter()
                .filter(|region| region.registry.is_some())
                .map(|region| registry_identity(&region.name)),
        );
        names.push(OPERATOR_IDENTITY.to_string());
        names
    }
}

/// Every certificate of the deployment is signed by one CA; each identity's certificate and key
/// live side by side in `cert_dir` under the identity's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca_cert: PathBuf,
    pub cert_dir: PathBuf,
}

impl Tls {
    /// `<cert_dir>/<name>.pem`
    pub fn cert_path(&self, name: &str) -> PathBuf {
        debug_assert!(
            is_file_name(name),
            "identity {name:?} is not a plain file name"
        );
        self.cert_dir.join(format!("{name}.pem"))
    }

    /// `<cert_dir>/<name>.key`
    pub fn key_path(&self, name: &str) -> PathBuf {
        debug_assert!(
            is_file_name(name),
            "identity {name:?} is not a plain file name"
        );
        self.cert_dir.join(format!("{name}.key"))
    }
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Limits and timings of the quorum queue, shared by nodes, producers and consumers so that what a
/// producer may send is always what a node accepts and a consumer can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// A node rolls to a new segment file past this size; retention deletes whole segments.
    pub segment_size_bytes: u64,
    pub max_entry_bytes: u32,
    /// One batch is one network message and one fsync on each node.
    pub max_batch_entries: u32,
    pub max_batch_bytes: u32,
    /// Most bytes one read returns; at least one maximal entry must fit.
    pub read_max_bytes: u32,
    /// Overall deadline for a batch to commit in some group, failovers included.
    pub append_timeout_ms: u64,
    /// How long one group gets before the producer tries another.
    pub attempt_timeout_ms: u64,
    /// How often a producer probes a group it considers unhealthy.
    pub group_probe_interval_ms: u64,
    /// Batches a producer has waiting for their commit at once. Small on purpose: while they
    /// wait, new appends accumulate and leave together as the next batch (one message and one
    /// fsync per node). With a large value every append travels alone and throughput collapses
    /// under per-request overhead (measured: 0.36x vs 1.4x JetStream at 256 appends in flight).
    pub max_in_flight_batches: u32,
    pub fsync: FsyncMode,
    /// Segments older than this are deleted even if some region has not consumed them.
    pub retention_max_age_secs: u64,
    /// Each region commits a heartbeat entry this often, so lag is measurable without user writes.
    pub heartbeat_interval_ms: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            segment_size_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            max_batch_entries: 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            read_max_bytes: 1024 * 1024,
            append_timeout_ms: 5_000,
            attempt_timeout_ms: 1_500,
            group_probe_interval_ms: 1_000,
            max_in_flight_batches: 8,
            fsync: FsyncMode::Always,
            retention_max_age_secs: 7 * 24 * 60 * 60,
            heartbeat_interval_ms: 1_000,
        }
    }
}

/// Whether a node fsyncs before it acks. An ack means durable only with `Always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsyncMode {
    Always,
    /// UNSAFE, for benchmarks only: acks then do not mean durable, and a power loss can lose
    /// committed entries.
    Never,
}

impl FsyncMode {
    fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Never => "never",
        }
    }
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub queue_groups: Vec<QueueGroup>,
    /// The region process (store, producer, replay workers); `None` in a queue-only deployment.
    pub process: Option<RegionProcess>,
    /// Where this region's replay workers deliver other regions' changes.
    pub sink: SinkConfig,
    /// The region's gateway listeners (`[regions.gateway]`); `None`: no gateway.
    /// The region's registry node (an acceptor and a proposer service), if the deployment runs the registry.
    pub registry: Option<RegionRegistry>,
    pub gateway: Option<RegionGateway>,
    /// HTTP services behind the region's gateways, by path prefix.
    pub upstreams: Vec<Upstream>,
}

/// Where a region's process listens and keeps its data. The three listeners are required together:
/// a region process without any one of them cannot serve its part (other regions, clients, or
/// monitoring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionProcess {
    /// QUIC: region status (clock offset, lag) and record requests from other regions.
    pub addr: SocketAddr,
    /// HTTP record API.
    pub api_addr: SocketAddr,
    /// HTTP `/metrics` and `/healthz`.
    pub admin_addr: SocketAddr,
    /// The record store and sink state; `<data_root>/region-<name>` unless overridden.
    pub data_dir: PathBuf,
}

/// File name of a webhook sink's dead-letter store inside the region's data directory.
const DEAD_LETTERS_FILE: &str = "dead-letters.redb";

impl RegionProcess {
    /// `<data_dir>/dead-letters.redb`: changes a webhook sink gave up on, kept for redrive.
    pub fn dead_letters_path(&self) -> PathBuf {
        self.data_dir.join(DEAD_LETTERS_FILE)
    }
}

/// Where replay applies other regions' changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SinkConfig {
    /// The region's own record store (apply-if-newer).
    #[default]
    Store,
    /// An external HTTP service; the entry id is the idempotency key, so redelivery is harmless.
    Webhook(WebhookSink),
}

/// Delivery to an external service by HTTP POST, retried with backoff, then dead-lettered to
/// [`RegionProcess::dead_letters_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSink {
    /// `http://host[:port]/path`; https is not spoken (put a TLS-terminating proxy on localhost).
    pub url: String,
    /// One POST per change instead of one per replayed batch.
    pub per_change: bool,
    /// Attempts per request, the first included, before its changes are dead-lettered.
    pub max_attempts: u32,
    /// Backoff after the first failure; doubles per failure up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Per attempt: connect, send, and read the answer.
    pub timeout_ms: u64,
}

impl WebhookSink {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
    pub const DEFAULT_BACKOFF_BASE_MS: u64 = 100;
    pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
}

/// Limits of the region's record store. They bound what a client may write, so that every write the
/// store accepts also fits, as a change, in one queue entry (checked against `[queue]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub max_uid_bytes: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Requests committed in one store transaction (one fsync).
    pub max_batch_requests: usize,
    /// How long a write's idempotency key is remembered, so a retried request is answered, not
    /// applied twice.
    pub idempotency_ttl_secs: u64,
    /// How long a deleted record's tombstone is kept, so an older change arriving late cannot
    /// bring the record back.
    pub tombstone_retention_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_uid_bytes: 128,
            max_key_bytes: 256,
            max_value_bytes: 256 * 1024,
            max_batch_requests: 1024,
            idempotency_ttl_secs: 24 * 60 * 60,
            tombstone_retention_secs: 24 * 60 * 60,
        }
    }
}

/// Timings of the replay workers, the outbox shipper and status sampling of a region process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySettings {
    /// Changes applied in one store transaction.
    pub batch_max_entries: usize,
    /// Long-poll wait of a read at the end of a node's log.
    pub read_wait_ms: u32,
    pub retry_backoff_ms: u64,
    pub max_retry_backoff_ms: u64,
    /// How often applied positions are reported to the source's queue nodes, which trim below them.
    pub checkpoint_report_interval_ms: u64,
    /// How often other regions are sampled for clock offset and lag.
    pub status_interval_ms: u64,
    /// How often the outbox is scanned for changes a crash left unshipped.
    pub outbox_scan_interval_ms: u64,
    /// An outbox entry younger than this is presumably still being appended by its writer, so
    /// the shipper leaves it alone. Default above `append_timeout_ms`: a shorter age only costs
    /// duplicate shipments (same entry id), never loss.
    pub outbox_min_age_ms: u64,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            batch_max_entries: 1024,
            read_wait_ms: 1_000,
            retry_backoff_ms: 100,
            max_retry_backoff_ms: 5_000,
            checkpoint_report_interval_ms: 5_000,
            status_interval_ms: 1_000,
            outbox_scan_interval_ms: 1_000,
            outbox_min_age_ms: 6_000,
        }
    }
}

/// How a user's home region follows from the uid. Every region must compute the same answer, so
/// the rule is deployment-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HomeRule {
    /// uid `<region>-<rest>` is homed in `<region>`.
    #[default]
    UidPrefix,
}

impl HomeRule {
    /// Every rule, as written in the file.
    const ALL: [HomeRule; 1] = [HomeRule::UidPrefix];

    fn as_str(self) -> &'static str {
        match self {
            HomeRule::UidPrefix => "uid-prefix",
        }
    }
}

impl fmt::Display for HomeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exactly 3 nodes in 3 different campuses: an entry is committed on 2 of them, and any 2 nodes
/// share every committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGroup {
    pub name: String,
    pub nodes: Vec<QueueNode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNode {
    /// Unique across the deployment; also the node's certificate name.
    pub id: String,
    /// Where the node listens and where producers and consumers connect (QUIC).
    pub addr: SocketAddr,
    /// Metrics and health endpoint.
    pub admin_addr: SocketAddr,
    pub campus: String,
    /// The node's segment log; `<data_root>/<id>` unless overridden.
    pub data_dir: PathBuf,
}
