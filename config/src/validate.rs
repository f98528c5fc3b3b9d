//! From TOML text to a [`Deployment`]: serde reads the file's shape into raw structs (strings where a
//! value still needs checking, so one bad address does not hide every other problem), then one pass
//! checks everything and collects every problem before anything is built.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod gateway;
mod registry;

use crate::{
    ConfigError, Deployment, FsyncMode, HomeRule, OPERATOR_IDENTITY, Problem, QueueGroup,
    QueueNode, QueueSettings, REGION_IDENTITY_PREFIX, Region, RegionProcess, ReplaySettings,
    SinkConfig, StoreSettings, Tls, WebhookSink, region_identity,
};

/// Names end up in certificate names (`region-<name>`) and file names, so they are kept short and
/// to characters that are safe everywhere.
const MAX_NAME_CHARS: usize = 32;

/// Data goes here when the file does not say otherwise, next to the config file.
const DEFAULT_DATA_ROOT: &str = "data";

/// Every group has this many nodes: commit needs 2 acks, and any 2 of 3 share each committed entry.
const NODES_PER_GROUP: usize = 3;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const DAY_SECS: u64 = 24 * 60 * 60;

/// Room a record change needs in a queue entry beyond its uid, key and value (ids, versions,
/// times, protobuf tags and lengths), with a wide margin so a later field does not break old files.
const CHANGE_ENVELOPE_BYTES: u64 = 1024;

/// Queue nodes cap the long-poll wait of one read at this (`queue::node::MAX_READ_WAIT_MS`; config
/// does not depend on the queue crate, so the number is repeated here).
const NODE_MAX_READ_WAIT_MS: u64 = 30_000;

/// A webhook sink gives up after this many attempts at most: beyond it a dead service stalls
/// replay for hours instead of dead-lettering.
const MAX_WEBHOOK_ATTEMPTS: u64 = 100;

const SINK_KIND_STORE: &str = "store";
const SINK_KIND_WEBHOOK: &str = "webhook";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    deployment: RawDeployment,
    tls: RawTls,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    replay: RawReplay,
    #[serde(default)]
    homes: RawHomes,
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default)]
    tickets: gateway::RawTickets,
    #[serde(default)]
    registry: registry::RawRegistry,
    /// Missing is reported as a problem ("no regions") rather than a serde error, to keep one message.
    #[serde(default)]
    regions: Vec<RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: String,
    #[serde(default = "default_data_root")]
    data_root: PathBuf,
}

fn default_data_root() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_ROOT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    cert_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    segment_size_bytes: u64,
    max_entry_bytes: u32,
    max_batch_entries: u32,
    max_batch_bytes: u32,
    read_max_bytes: u32,
    append_timeout_ms: u64,
    attempt_timeout_ms: u64,
    group_probe_interval_ms: u64,
    max_in_flight_batches: u32,
    /// A string so that an unknown mode is one problem among the others, with the valid modes.
    fsync: String,
    retention_max_age_secs: u64,
    heartbeat_interval_ms: u64,
}

impl Default for RawQueue {
    fn default() -> Self {
        let defaults = QueueSettings::default();
        RawQueue {
            segment_size_bytes: defaults.segment_size_bytes,
            max_entry_bytes: defaults.max_entry_bytes,
            max_batch_entries: defaults.max_batch_entries,
            max_batch_bytes: defaults.max_batch_bytes,
            read_max_bytes: defaults.read_max_bytes,
            append_timeout_ms: defaults.append_timeout_ms,
            attempt_timeout_ms: defaults.attempt_timeout_ms,
            group_probe_interval_ms: defaults.group_probe_interval_ms,
            max_in_flight_batches: defaults.max_in_flight_batches,
            fsync: defaults.fsync.to_string(),
            retention_max_age_secs: defaults.retention_max_age_secs,
            heartbeat_interval_ms: defaults.heartbeat_interval_ms,
        }
    }
}

/// Sizes are read as u64 whatever their final type, so that one range check covers them all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    max_uid_bytes: u64,
    max_key_bytes: u64,
    max_value_bytes: u64,
    max_batch_requests: u64,
    idempotency_ttl_secs: u64,
    tombstone_retention_secs: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        let defaults = StoreSettings::default();
        RawStore {
            max_uid_bytes: to_u64(defaults.max_uid_bytes),
            max_key_bytes: to_u64(defaults.max_key_bytes),
            max_value_bytes: to_u64(defaults.max_value_bytes),
            max_batch_requests: to_u64(defaults.max_batch_requests),
            idempotency_ttl_secs: defaults.idempotency_ttl_secs,
            tombstone_retention_secs: defaults.tombstone_retention_secs,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReplay {
    batch_max_entries: u64,
    read_wait_ms: u64,
    retry_backoff_ms: u64,
    max_retry_backoff_ms: u64,
    checkpoint_report_interval_ms: u64,
    status_interval_ms: u64,
    outbox_scan_interval_ms: u64,
    outbox_min_age_ms: u64,
}

impl Default for RawReplay {
    fn default() -> Self {
        let defaults = ReplaySettings::default();
        RawReplay {
            batch_max_entries: to_u64(defaults.batch_max_entries),
            read_wait_ms: defaults.read_wait_ms.into(),
            retry_backoff_ms: defaults.retry_backoff_ms,
            max_retry_backoff_ms: defaults.max_retry_backoff_ms,
            checkpoint_report_interval_ms: defaults.checkpoint_report_interval_ms,
            status_interval_ms: defaults.status_interval_ms,
            outbox_scan_interval_ms: defaults.outbox_scan_interval_ms,
            outbox_min_age_ms: defaults.outbox_min_age_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHomes {
    /// A string so that an unknown rule is reported with the rules there are.
    rule: String,
}

impl Default for RawHomes {
    fn default() -> Self {
        RawHomes {
            rule: HomeRule::default().to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    /// The region process's listeners: all or none, which validation checks (not serde) so that a
    /// missing one is reported by name together with the others.
    addr: Option<String>,
    api_addr: Option<String>,
    admin_addr: Option<String>,
    data_dir: Option<PathBuf>,
    sink: Option<RawSink>,
    gateway: Option<gateway::RawRegionGateway>,
    registry: Option<registry::RawRegionRegistry>,
    #[serde(default)]
    upstreams: Vec<gateway::RawUpstream>,
    #[serde(default)]
    queue_groups: Vec<RawGroup>,
}

/// Webhook fields are options so that one given with `kind = "store"` is reported, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(default = "default_sink_kind")]
    kind: String,
    url: Option<String>,
    per_change: Option<bool>,
    max_attempts: Option<u64>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

fn default_sink_kind() -> String {
    SINK_KIND_STORE.to_string()
}

impl RawSink {
    /// The webhook-only fields that are set, by name.
    fn webhook_fields_given(&self) -> Vec<&'static str> {
        [
            ("url", self.url.is_some()),
            ("per_change", self.per_change.is_some()),
            ("max_attempts", self.max_attempts.is_some()),
            ("backoff_base_ms", self.backoff_base_ms.is_some()),
            ("backoff_max_ms", self.backoff_max_ms.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    nodes: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    /// Strings so that each bad address is reported with its place and an example of the format.
    addr: String,
    admin_addr: String,
    campus: String,
    data_dir: Option<PathBuf>,
}

pub(crate) fn parse_named(
    text: &str,
    base_dir: &Path,
    source_name: &str,
) -> Result<Deployment, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: source_name.to_string(),
        message: error.to_string().trim_end().to_string(),
    })?;
    let mut checker = Checker::default();
    let deployment = checker.check(raw, base_dir);
    match deployment {
        Some(deployment) if checker.problems.is_empty() => Ok(deployment),
        _ => {
            // A missing part of the result always comes with the problem that explains it.
            assert!(
                !checker.problems.is_empty(),
                "validation failed to build a deployment without reporting why"
            );
            Err(ConfigError::Invalid {
                path: source_name.to_string(),
                problems: checker.problems,
            })
        }
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

/// Where a listener address was first seen, for duplicate reports.
struct AddrUse {
    place: String,
    field: &'static str,
}

impl Checker {
    fn report(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            place: place.into(),
            message: message.into(),
        });
    }

    /// Returns `None` only when it reported at least one problem.
    fn check(&mut self, raw: RawFile, base_dir: &Path) -> Option<Deployment> {
        self.check_name("deployment.name", "deployment name", &raw.deployment.name);
        let data_root = self.resolve_path(
            "deployment.data_root",
            &raw.deployment.data_root,
            base_dir,
            "set it to the directory under which each node keeps its data (default \"data\")",
        );
        let ca_cert = self.resolve_path(
            "tls.ca_cert",
            &raw.tls.ca_cert,
            base_dir,
            "set it to the PEM file of the CA that signs every certificate of the deployment",
        );
        let cert_dir = self.resolve_path(
            "tls.cert_dir",
            &raw.tls.cert_dir,
            base_dir,
            "set it to the directory holding <name>.pem and <name>.key for each identity",
        );
        let queue = self.check_queue(&raw.queue);
        // In file order: [store] and [replay] come before [homes] in the shipped examples.
        let store = self.check_store(
            &raw.store,
            &raw.queue,
            home_rule(&raw.homes.rule),
            &raw.regions,
        );
        let replay = self.check_replay(&raw.replay);
        let homes = self.check_homes(&raw.homes);
        let gateway = self.check_gateway(&raw.gateway);
        let any_gateway = raw.regions.iter().any(|r| r.gateway.is_some());
        let tickets = self.check_tickets(&raw.tickets, base_dir, any_gateway);
        let registry = self.check_registry(&raw.registry);
        self.check_registry_coverage(&raw.regions);
        let regions = self.check_regions(&raw.regions, &data_root, base_dir);
        Some(Deployment {
            name: raw.deployment.name,
            data_root,
            tls: Tls { ca_cert, cert_dir },
            queue: queue?,
            store,
            replay,
            homes: homes?,
            gateway: gateway?,
            tickets: tickets?,
            registry: registry?,
            regions: regions?,
        })
    }

    fn resolve_path(&mut self, place: &str, path: &Path, base_dir: &Path, fix: &str) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.report(place, format!("is empty — {fix}"));
        }
        base_dir.join(path)
    }

    /// Region, group and node names and campuses share one syntax because they all end up in
    /// certificate names, file names or metric labels.
    fn check_name(&mut self, place: &str, what: &str, name: &str) {
        let rule = format!(
            "names appear in certificate and file names, so a name is 1 to {MAX_NAME_CHARS} \
             lowercase letters, digits or '-'"
        );
        if name.is_empty() {
            self.report(place, format!("{what} is empty; {rule} — give it a name"));
            return;
        }
        let chars = name.chars().count();
        if chars > MAX_NAME_CHARS {
            self.report(
                place,
                format!("{what} {name:?} is {chars} characters long; {rule} — shorten it"),
            );
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            self.report(
                place,
                format!("{what} {name:?} contains {bad:?}; {rule} — rename it"),
            );
        } else if name.starts_with('-') {
            self.report(
                place,
                format!(
                    "{what} {name:?} starts with '-', which command lines take for an option — \
                     start it with a letter or digit"
                ),
            );
        }
    }

    fn check_queue(&mut self, raw: &RawQueue) -> Option<QueueSettings> {
        let defaults = QueueSettings::default();
        let fsync = match raw.fsync.as_str() {
            "always" => Some(FsyncMode::Always),
            "never" => Some(FsyncMode::Never),
            other => {
                self.report(
                    "queue.fsync",
                    format!(
                        "{other:?} is not an fsync mode — use \"always\" (acks mean durable) or \
                         \"never\" (UNSAFE, benchmarks only: acks do not mean durable)"
                    ),
                );
                None
            }
        };

        let mut range = |field: &str, value: u64, default: u64, min: u64, max: u64, why: &str| {
            self.check_range(&format!("queue.{field}"), value, default, min, max, why);
        };
        range(
            "segment_size_bytes",
            raw.segment_size_bytes,
            defaults.segment_size_bytes,
            1,
            GIB,
            "retention deletes whole segments, so a bigger segment keeps that much expired data on disk",
        );
        range(
            "max_entry_bytes",
            raw.max_entry_bytes.into(),
            defaults.max_entry_bytes.into(),
            1,
            16 * MIB,
            "every entry is held in memory by 3 nodes and every consumer; store large values elsewhere and queue a reference",
        );
        range(
            "max_batch_entries",
            raw.max_batch_entries.into(),
            defaults.max_batch_entries.into(),
            1,
            64 * KIB,
            "a node indexes a whole batch in memory before its fsync",
        );
        range(
            "max_batch_bytes",
            raw.max_batch_bytes.into(),
            defaults.max_batch_bytes.into(),
            1,
            64 * MIB,
            "a batch is one network message, held whole in memory by the producer and 3 nodes",
        );
        range(
            "read_max_bytes",
            raw.read_max_bytes.into(),
            defaults.read_max_bytes.into(),
            1,
            64 * MIB,
            "a read response is one network message, held whole in memory by node and consumer",
        );
        range(
            "append_timeout_ms",
            raw.append_timeout_ms,
            defaults.append_timeout_ms,
            1,
            60_000,
            "the writer's request waits that long, and clients give up well before a minute",
        );
        range(
            "attempt_timeout_ms",
            raw.attempt_timeout_ms,
            defaults.attempt_timeout_ms,
            1,
            60_000,
            "a stuck group holds a batch that long before failover",
        );
        range(
            "group_probe_interval_ms",
            raw.group_probe_interval_ms,
            defaults.group_probe_interval_ms,
            1,
            60_000,
            "a recovered group stays out of rotation for up to that long",
        );
        range(
            "max_in_flight_batches",
            raw.max_in_flight_batches.into(),
            defaults.max_in_flight_batches.into(),
            1,
            64 * KIB,
            "each in-flight batch is held in memory until it commits",
        );
        range(
            "retention_max_age_secs",
            raw.retention_max_age_secs,
            defaults.retention_max_age_secs,
            1,
            365 * 24 * 60 * 60,
            "data older than a year is not replication backlog but an archive, and belongs elsewhere",
        );
        range(
            "heartbeat_interval_ms",
            raw.heartbeat_interval_ms,
            defaults.heartbeat_interval_ms,
            10,
            60_000,
            "lag is measured from heartbeats and is only as fresh as this interval",
        );

        if raw.attempt_timeout_ms > raw.append_timeout_ms {
            self.report(
                "queue.attempt_timeout_ms",
                format!(
                    "is {}, more than append_timeout_ms ({}); one group's attempt must fit in the \
                     overall deadline or no other group is ever tried — lower attempt_timeout_ms \
                     or raise append_timeout_ms",
                    raw.attempt_timeout_ms, raw.append_timeout_ms
                ),
            );
        }
        if raw.max_entry_bytes > raw.max_batch_bytes {
            self.report(
                "queue.max_entry_bytes",
                format!(
                    "is {}, more than max_batch_bytes ({}); a maximal entry must fit in one batch \
                     — lower max_entry_bytes or raise max_batch_bytes",
                    raw.max_entry_bytes, raw.max_batch_bytes
                ),
            );
        }
        if u64::from(raw.max_batch_bytes) > raw.segment_size_bytes {
            self.report(
                "queue.max_batch_bytes",
                format!(
                    "is {}, more than segment_size_bytes ({}); a batch is written into one segment \
                     — lower max_batch_bytes or raise segment_size_bytes",
                    raw.max_batch_bytes, raw.segment_size_bytes
                ),
            );
        }
        if raw.read_max_bytes < raw.max_entry_bytes {
            self.report(
                "queue.read_max_bytes",
                format!(
                    "is {}, less than max_entry_bytes ({}); a read must be able to return the \
                     largest entry or consumers stall on it — raise read_max_bytes or lower \
                     max_entry_bytes",
                    raw.read_max_bytes, raw.max_entry_bytes
                ),
            );
        }

        Some(QueueSettings {
            segment_size_bytes: raw.segment_size_bytes,
            max_entry_bytes: raw.max_entry_bytes,
            max_batch_entries: raw.max_batch_entries,
            max_batch_bytes: raw.max_batch_bytes,
            read_max_bytes: raw.read_max_bytes,
            append_timeout_ms: raw.append_timeout_ms,
            attempt_timeout_ms: raw.attempt_timeout_ms,
            group_probe_interval_ms: raw.group_probe_interval_ms,
            max_in_flight_batches: raw.max_in_flight_batches,
            fsync: fsync?,
            retention_max_age_secs: raw.retention_max_age_secs,
            heartbeat_interval_ms: raw.heartbeat_interval_ms,
        })
    }

    /// Reports `value` outside `min..=max`, with the default as a hint and `why` the maximum exists.
    fn check_range(
        &mut self,
        place: &str,
        value: u64,
        default: u64,
        min: u64,
        max: u64,
        why: &str,
    ) {
        debug_assert!(
            min <= default && default <= max,
            "{place}: default out of its own range"
        );
        if value < min {
            let fix = if min == 1 {
                "set a positive value".to_string()
            } else {
                format!("raise it to at least {min}")
            };
            self.report(
                place,
                format!("is {value}, below the minimum of {min} — {fix} (default {default})"),
            );
        } else if value > max {
            self.report(
                place,
                format!(
                    "is {value}, above the limit of {max} because {why} — lower it to at most \
                     {max} (default {default})"
                ),
            );
        }
    }

    fn check_homes(&mut self, raw: &RawHomes) -> Option<HomeRule> {
        let found = home_rule(&raw.rule);
        if found.is_none() {
            let allowed: Vec<String> = HomeRule::ALL
                .iter()
                .map(|rule| format!("{:?}", rule.as_str()))
                .collect();
            self.report(
                "homes.rule",
                format!(
                    "{:?} is not a home rule — use one of: {} (\"uid-prefix\": uid \
                     <region>-<rest> is homed in <region>)",
                    raw.rule,
                    allowed.join(", ")
                ),
            );
        }
        found
    }

    /// Always builds the settings (every value is a plain number), so a problem here never hides
    /// the rest of the deployment. The rules that tie the limits to the queue and the region names
    /// apply only when some region runs a process, since only a region process writes records.
    fn check_store(
        &mut self,
        raw: &RawStore,
        queue: &RawQueue,
        homes: Option<HomeRule>,
        regions: &[RawRegion],
    ) -> StoreSettings {
        let defaults = StoreSettings::default();
        let mut range = |field: &str, value: u64, default: usize, min: u64, max: u64, why: &str| {
            let default = to_u64(default);
            self.check_range(&format!("store.{field}"), value, default, min, max, why);
        };
        range(
            "max_uid_bytes",
            raw.max_uid_bytes,
            defaults.max_uid_bytes,
            1,
            KIB,
            "a uid is stored with every record, outbox entry and change, and begins every key the store indexes",
        );
        range(
            "max_key_bytes",
            raw.max_key_bytes,
            defaults.max_key_bytes,
            1,
            4 * KIB,
            "a key is stored in every index entry and sent with every change; data belongs in the value",
        );
        range(
            "max_value_bytes",
            raw.max_value_bytes,
            defaults.max_value_bytes,
            1,
            16 * MIB,
            "a value travels whole in one queue entry, and queue entries are at most 16 MiB",
        );
        range(
            "max_batch_requests",
            raw.max_batch_requests,
            defaults.max_batch_requests,
            1,
            64 * KIB,
            "one store transaction holds its whole batch in memory and every request in it waits for the slowest",
        );
        let mut range = |field: &str, value: u64, default: u64, min: u64, max: u64, why: &str| {
            self.check_range(&format!("store.{field}"), value, default, min, max, why);
        };
        range(
            "idempotency_ttl_secs",
            raw.idempotency_ttl_secs,
            defaults.idempotency_ttl_secs,
            1,
            30 * DAY_SECS,
            "the store keeps a record per write for that long, and clients retry within minutes, not months",
        );
        range(
            "tombstone_retention_secs",
            raw.tombstone_retention_secs,
            defaults.tombstone_retention_secs,
            1,
            365 * DAY_SECS,
            "every deleted record keeps its tombstone on disk for that long",
        );

        let change_bytes = raw
            .max_value_bytes
            .saturating_add(raw.max_key_bytes)
            .saturating_add(raw.max_uid_bytes)
            .saturating_add(CHANGE_ENVELOPE_BYTES);
        // Only a region process writes records; a queue-only deployment (benchmarks, queue
        // tests) may shrink its entries below what the unused store limits would need.
        let any_process = regions.iter().any(|region| {
            region.addr.is_some() || region.api_addr.is_some() || region.admin_addr.is_some()
        });
        if any_process && change_bytes > u64::from(queue.max_entry_bytes) {
            self.report(
                "store.max_value_bytes",
                format!(
                    "is {}; with max_key_bytes ({}), max_uid_bytes ({}) and {CHANGE_ENVELOPE_BYTES} \
                     bytes of change envelope a maximal change is {change_bytes} bytes, more than \
                     queue.max_entry_bytes ({}), so an accepted write could never be shipped — \
                     lower max_value_bytes (or the key and uid limits) or raise \
                     queue.max_entry_bytes",
                    raw.max_value_bytes, raw.max_key_bytes, raw.max_uid_bytes, queue.max_entry_bytes
                ),
            );
        }

        if any_process && homes == Some(HomeRule::UidPrefix) && raw.max_uid_bytes >= 1 {
            // The shortest uid homed in region r is "r-" and one more byte.
            let longest = regions.iter().max_by_key(|region| region.name.len());
            if let Some(region) = longest {
                let shortest_uid = to_u64(region.name.len()) + 2;
                if raw.max_uid_bytes < shortest_uid {
                    self.report(
                        "store.max_uid_bytes",
                        format!(
                            "is {}, too short for any user of region {:?}: under home rule \
                             \"uid-prefix\" a uid is <region>-<rest>, at least {shortest_uid} \
                             bytes there — raise it to at least {shortest_uid}",
                            raw.max_uid_bytes, region.name
                        ),
                    );
                }
            }
        }

        StoreSettings {
            max_uid_bytes: to_usize(raw.max_uid_bytes),
            max_key_bytes: to_usize(raw.max_key_bytes),
            max_value_bytes: to_usize(raw.max_value_bytes),
            max_batch_requests: to_usize(raw.max_batch_requests),
            idempotency_ttl_secs: raw.idempotency_ttl_secs,
            tombstone_retention_secs: raw.tombstone_retention_secs,
        }
    }

    fn check_replay(&mut self, raw: &RawReplay) -> ReplaySettings {
        let defaults = ReplaySettings::default();
        let mut range = |field: &str, value: u64, default: u64, min: u64, max: u64, why: &str| {
            self.check_range(&format!("replay.{field}"), value, default, min, max, why);
        };
        range(
            "batch_max_entries",
            raw.batch_max_entries,
            to_u64(defaults.batch_max_entries),
            1,
            64 * KIB,
            "a batch is applied in one store transaction, held whole in memory",
        );
        range(
            "read_wait_ms",
            raw.read_wait_ms,
            defaults.read_wait_ms.into(),
            1,
            NODE_MAX_READ_WAIT_MS,
            "queue nodes cap the wait of one read there",
        );
        range(
            "retry_backoff_ms",
            raw.retry_backoff_ms,
            defaults.retry_backoff_ms,
            1,
            60_000,
            "a worker waits that long after its first failure before it tries again",
        );
        range(
            "max_retry_backoff_ms",
            raw.max_retry_backoff_ms,
            defaults.max_retry_backoff_ms,
            1,
            300_000,
            "a queue node or region that came back is retried only after up to that long",
        );
        range(
            "checkpoint_report_interval_ms",
            raw.checkpoint_report_interval_ms,
            defaults.checkpoint_report_interval_ms,
            100,
            600_000,
            "queue nodes delete only what was reported, so consumed segments stay on disk that much longer",
        );
        range(
            "status_interval_ms",
            raw.status_interval_ms,
            defaults.status_interval_ms,
            10,
            60_000,
            "lag and clock offset are only as fresh as this interval",
        );
        range(
            "outbox_scan_interval_ms",
            raw.outbox_scan_interval_ms,
            defaults.outbox_scan_interval_ms,
            10,
            60_000,
            "a change a crash left in the outbox waits up to that long to be shipped",
        );
        range(
            "outbox_min_age_ms",
            raw.outbox_min_age_ms,
            defaults.outbox_min_age_ms,
            1,
            600_000,
            "a change a crash left in the outbox waits at least that long to be shipped",
        );
        if raw.retry_backoff_ms > raw.max_retry_backoff_ms {
            self.report(
                "replay.retry_backoff_ms",
                format!(
                    "is {}, more than max_retry_backoff_ms ({}); the backoff starts at \
                     retry_backoff_ms and grows up to max_retry_backoff_ms — lower \
                     retry_backoff_ms or raise max_retry_backoff_ms",
                    raw.retry_backoff_ms, raw.max_retry_backoff_ms
                ),
            );
        }

        ReplaySettings {
            batch_max_entries: to_usize(raw.batch_max_entries),
            // Checked against NODE_MAX_READ_WAIT_MS above; saturate rather than wrap if it was not.
            read_wait_ms: u32::try_from(raw.read_wait_ms).unwrap_or(u32::MAX),
            retry_backoff_ms: raw.retry_backoff_ms,
            max_retry_backoff_ms: raw.max_retry_backoff_ms,
            checkpoint_report_interval_ms: raw.checkpoint_report_interval_ms,
            status_interval_ms: raw.status_interval_ms,
            outbox_scan_interval_ms: raw.outbox_scan_interval_ms,
            outbox_min_age_ms: raw.outbox_min_age_ms,
        }
    }

    fn check_regions(
        &mut self,
        raw: &[RawRegion],
        data_root: &Path,
        base_dir: &Path,
    ) -> Option<Vec<Region>> {
        if raw.is_empty() {
            self.report(
                "regions",
                "no regions are defined — add at least one [[regions]] with a name and a \
                 [[regions.queue_groups]] of 3 nodes",
            );
        }
        let mut region_names: HashMap<&str, usize> = HashMap::new();
        let mut node_ids: HashMap<&str, String> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, AddrUse> = HashMap::new();
        let mut data_dirs: HashMap<PathBuf, String> = HashMap::new();
        let mut regions = Some(Vec::with_capacity(raw.len()));

        for (region_index, region) in raw.iter().enumerate() {
            let region_place = format!("regions[{region_index}] {:?}", region.name);
            self.check_name(
                &format!("{region_place}, name"),
                "region name",
                &region.name,
            );
            if let Some(first) = region_names.get(region.name.as_str()) {
                self.report(
                    format!("{region_place}, name"),
                    format!(
                        "region name {:?} is also used by regions[{first}]; region names must be \
                         unique — rename one of them",
                        region.name
                    ),
                );
            } else {
                region_names.insert(&region.name, region_index);
            }
            let duplicate_name = region_names
                .get(region.name.as_str())
                .is_some_and(|first| *first != region_index);
            let process = self.check_region_process(
                &region_place,
                region,
                duplicate_name,
                data_root,
                base_dir,
                &mut addrs,
                &mut data_dirs,
            );
            let sink = self.check_sink(&region_place, region);
            let region_gateway = self.check_region_gateway(&region_place, region, &mut addrs);
            let upstreams = self.check_upstreams(&region_place, region);
            let region_registry =
                self.check_region_registry(&region_place, region, data_root, base_dir, &mut addrs);
            if region.queue_groups.is_empty() {
                self.report(
                    region_place.clone(),
                    "has no queue groups, so its writes have nowhere to go — add at least one \
                     [[regions.queue_groups]] with 3 nodes",
                );
            }

            let mut group_names: HashMap<&str, usize> = HashMap::new();
            let mut groups = Some(Vec::with_capacity(region.queue_groups.len()));
            for (group_index, group) in region.queue_groups.iter().enumerate() {
                let group_place = format!(
                    "{region_place}, queue_groups[{group_index}] {:?}",
                    group.name
                );
                self.check_name(&format!("{group_place}, name"), "group name", &group.name);
                if let Some(first) = group_names.get(group.name.as_str()) {
                    self.report(
                        format!("{group_place}, name"),
                        format!(
                            "group name {:?} is also used by queue_groups[{first}] of this region; \
                             group names must be unique within a region — rename one of them",
                            group.name
                        ),
                    );
                } else {
                    group_names.insert(&group.name, group_index);
                }
                let count = group.nodes.len();
                if count != NODES_PER_GROUP {
                    let fix = if count < NODES_PER_GROUP {
                        plural(NODES_PER_GROUP - count, "add a node", "add", "nodes")
                    } else {
                        plural(count - NODES_PER_GROUP, "remove a node", "remove", "nodes")
                    };
                    self.report(
                        group_place.clone(),
                        format!(
                            "has {count} {}; a group needs exactly {NODES_PER_GROUP} nodes, one per \
                             campus — {fix}",
                            if count == 1 { "node" } else { "nodes" }
                        ),
                    );
                }

                let mut campuses: HashMap<&str, usize> = HashMap::new();
                let mut nodes = Some(Vec::with_capacity(count));
                for (node_index, node) in group.nodes.iter().enumerate() {
                    let node_place = format!("{group_place}, nodes[{node_index}] {:?}", node.id);
                    self.check_node_id(&format!("{node_place}, id"), &node.id);
                    let duplicate_id = node_ids.contains_key(node.id.as_str());
                    if let Some(first) = node_ids.get(node.id.as_str()) {
                        self.report(
                            format!("{node_place}, id"),
                            format!(
                                "node id {:?} is also used by {first}; node ids name certificates \
                                 and data directories, so they must be unique across the \
                                 deployment — rename one of them",
                                node.id
                            ),
                        );
                    } else {
                        node_ids.insert(&node.id, node_place.clone());
                    }

                    let campus_place = format!("{node_place}, campus");
                    self.check_name(&campus_place, "campus", &node.campus);
                    if let Some(first) = campuses.get(node.campus.as_str()) {
                        self.report(
                            campus_place,
                            format!(
                                "campus {:?} is also the campus of nodes[{first}] {:?}; a group's \
                                 3 nodes must be in 3 different campuses so that losing a campus \
                                 loses at most one copy — move this node to another campus",
                                node.campus, group.nodes[*first].id
                            ),
                        );
                    } else {
                        campuses.insert(&node.campus, node_index);
                    }

                    let addr = self.check_addr(&node_place, "node", "addr", &node.addr, &mut addrs);
                    let admin_addr = match addr {
                        Some(addr) if node.admin_addr.parse::<SocketAddr>().ok() == Some(addr) => {
                            // Reported as itself, not as a clash with another node.
                            self.report(
                                format!("{node_place}, admin_addr"),
                                format!(
                                    "is the same as addr ({addr}); the admin listener (metrics, \
                                     health) needs its own port — pick a different port"
                                ),
                            );
                            None
                        }
                        _ => self.check_addr(
                            &node_place,
                            "node",
                            "admin_addr",
                            &node.admin_addr,
                            &mut addrs,
                        ),
                    };

                    let data_dir = match &node.data_dir {
                        Some(dir) => self.resolve_path(
                            &format!("{node_place}, data_dir"),
                            dir,
                            base_dir,
                            "set it to the node's own directory, or leave it out to use \
                             <data_root>/<id>",
                        ),
                        None => data_root.join(&node.id),
                    };
                    // A default data_dir shared because of a duplicate id is already explained.
                    let derived_from_duplicate_id = duplicate_id && node.data_dir.is_none();
                    let first_use = data_dirs
                        .get(&data_dir)
                        .filter(|_| !derived_from_duplicate_id);
                    if let Some(first) = first_use {
                        self.report(
                            format!("{node_place}, data_dir"),
                            format!(
                                "{} is also the data directory of {first}; two nodes in one \
                                 directory would corrupt each other's log — give each node its \
                                 own data_dir",
                                data_dir.display()
                            ),
                        );
                    } else {
                        data_dirs.insert(data_dir.clone(), node_place.clone());
                    }

                    let built = match (addr, admin_addr) {
                        (Some(addr), Some(admin_addr)) => Some(QueueNode {
                            id: node.id.clone(),
                            addr,
                            admin_addr,
                            campus: node.campus.clone(),
                            data_dir,
                        }),
                        _ => None,
                    };
                    push_all(&mut nodes, built);
                }
                let built = nodes.map(|nodes| QueueGroup {
                    name: group.name.clone(),
                    nodes,
                });
                push_all(&mut groups, built);
            }
            let built = match (groups, process, sink, region_gateway, upstreams) {
                (Some(queue_groups), Ok(process), Some(sink), Ok(gateway), Some(upstreams)) => {
                    region_registry.ok().map(|registry| Region {
                        name: region.name.clone(),
                        queue_groups,
                        process,
                        sink,
                        gateway,
                        registry,
                        upstreams,
                    })
                }
                _ => None,
            };
            push_all(&mut regions, built);
        }
        regions
    }

    /// `Ok(None)` for a region without a process (queue only); `Err(())` once a problem is
    /// reported. The three listeners come together: a process missing one could not serve other
    /// regions, clients or monitoring, and silently running without it would be worse.
    #[allow(clippy::too_many_arguments)]
    fn check_region_process(
        &mut self,
        region_place: &str,
        region: &RawRegion,
        duplicate_name: bool,
        data_root: &Path,
        base_dir: &Path,
        addrs: &mut HashMap<SocketAddr, AddrUse>,
        data_dirs: &mut HashMap<PathBuf, String>,
    ) -> Result<Option<RegionProcess>, ()> {
        let fields = [
            ("addr", &region.addr),
            ("api_addr", &region.api_addr),
            ("admin_addr", &region.admin_addr),
        ];
        let missing: Vec<&str> = fields
            .iter()
            .filter(|(_, text)| text.is_none())
            .map(|(field, _)| *field)
            .collect();
        if missing.len() == fields.len() {
            if region.data_dir.is_some() {
                self.report(
                    format!("{region_place}, data_dir"),
                    "is set, but the region has no process to use it (no addr, api_addr, \
                     admin_addr) — add the three addresses to run a region process, or remove \
                     data_dir",
                );
                return Err(());
            }
            return Ok(None);
        }

        let mut parsed = Vec::with_capacity(fields.len());
        for (field, text) in fields {
            if let Some(text) = text {
                parsed.push(self.check_addr(region_place, "region process", field, text, addrs));
            }
        }
        if !missing.is_empty() {
            let given: Vec<&str> = fields
                .iter()
                .filter(|(_, text)| text.is_some())
                .map(|(field, _)| *field)
                .collect();
            self.report(
                region_place,
                format!(
                    "sets {} but not {}; a region process needs all three of addr (QUIC: status \
                     and record requests from other regions), api_addr (HTTP record API) and \
                     admin_addr (/metrics, /healthz) — add {}, or remove {} for a queue-only \
                     region",
                    given.join(", "),
                    missing.join(", "),
                    missing.join(", "),
                    given.join(", ")
                ),
            );
            return Err(());
        }

        let data_dir = match &region.data_dir {
            Some(dir) => self.resolve_path(
                &format!("{region_place}, data_dir"),
                dir,
                base_dir,
                "set it to the region process's own directory, or leave it out to use \
                 <data_root>/region-<name>",
            ),
            None => data_root.join(region_identity(&region.name)),
        };
        // A default data_dir shared because of a duplicate region name is already explained.
        let derived_from_duplicate_name = duplicate_name && region.data_dir.is_none();
        let first_use = data_dirs
            .get(&data_dir)
            .filter(|_| !derived_from_duplicate_name);
        if let Some(first) = first_use {
            self.report(
                format!("{region_place}, data_dir"),
                format!(
                    "{} is also the data directory of {first}; two processes in one directory \
                     would corrupt each other's data — give the region process its own data_dir",
                    data_dir.display()
                ),
            );
            return Err(());
        }
        data_dirs.insert(data_dir.clone(), region_place.to_string());

        match parsed.as_slice() {
            [Some(addr), Some(api_addr), Some(admin_addr)] => Ok(Some(RegionProcess {
                addr: *addr,
                api_addr: *api_addr,
                admin_addr: *admin_addr,
                data_dir,
            })),
            _ => Err(()),
        }
    }

    /// `None` once a problem is reported. Webhook fields given with `kind = "store"` are
    /// problems, not ignored: an operator who wrote a URL expects changes to go there.
    fn check_sink(&mut self, region_place: &str, region: &RawRegion) -> Option<SinkConfig> {
        // Any listener given counts: a partial process is reported on its own.
        let has_process =
            region.addr.is_some() || region.api_addr.is_some() || region.admin_addr.is_some();
        let Some(raw) = &region.sink else {
            return Some(SinkConfig::Store);
        };
        let place = |field: &str| format!("{region_place}, sink.{field}");
        match raw.kind.as_str() {
            SINK_KIND_STORE => {
                let stray = raw.webhook_fields_given();
                for field in &stray {
                    self.report(
                        place(field),
                        format!(
                            "is only used by kind = \"webhook\", but this sink is kind = \
                             \"store\" — remove {field}, or set kind = \"webhook\""
                        ),
                    );
                }
                stray.is_empty().then_some(SinkConfig::Store)
            }
            SINK_KIND_WEBHOOK => {
                let before = self.problems.len();
                if !has_process {
                    self.report(
                        format!("{region_place}, sink"),
                        "is a webhook, but the region has no process to run it — add addr, \
                         api_addr and admin_addr to the region, or remove [regions.sink]",
                    );
                }
                let url = match &raw.url {
                    Some(url) => {
                        if let Err(message) = check_webhook_url(url) {
                            self.report(place("url"), message);
                        }
                        url.clone()
                    }
                    None => {
                        self.report(
                            place("url"),
                            "is missing; a webhook sink needs the address to POST changes to — \
                             add url = \"http://host:port/path\"",
                        );
                        String::new()
                    }
                };
                let max_attempts = raw
                    .max_attempts
                    .unwrap_or(WebhookSink::DEFAULT_MAX_ATTEMPTS.into());
                let backoff_base_ms = raw
                    .backoff_base_ms
                    .unwrap_or(WebhookSink::DEFAULT_BACKOFF_BASE_MS);
                let backoff_max_ms = raw
                    .backoff_max_ms
                    .unwrap_or(WebhookSink::DEFAULT_BACKOFF_MAX_MS);
                let timeout_ms = raw.timeout_ms.unwrap_or(WebhookSink::DEFAULT_TIMEOUT_MS);
                self.check_range(
                    &place("max_attempts"),
                    max_attempts,
                    WebhookSink::DEFAULT_MAX_ATTEMPTS.into(),
                    1,
                    MAX_WEBHOOK_ATTEMPTS,
                    "replay of the region's changes stops while one request is retried, and a \
                     dead service should be dead-lettered within minutes, not hours",
                );
                self.check_range(
                    &place("backoff_base_ms"),
                    backoff_base_ms,
                    WebhookSink::DEFAULT_BACKOFF_BASE_MS,
                    1,
                    60_000,
                    "replay of the region's changes stops while a request waits to be retried",
                );
                self.check_range(
                    &place("backoff_max_ms"),
                    backoff_max_ms,
                    WebhookSink::DEFAULT_BACKOFF_MAX_MS,
                    1,
                    600_000,
                    "replay of the region's changes stops while a request waits to be retried",
                );
                self.check_range(
                    &place("timeout_ms"),
                    timeout_ms,
                    WebhookSink::DEFAULT_TIMEOUT_MS,
                    1,
                    300_000,
                    "replay of the region's changes stops while an attempt hangs",
                );
                if backoff_base_ms > backoff_max_ms {
                    self.report(
                        place("backoff_base_ms"),
                        format!(
                            "is {backoff_base_ms}, more than backoff_max_ms ({backoff_max_ms}); \
                             the backoff starts at backoff_base_ms and doubles up to \
                             backoff_max_ms — lower backoff_base_ms or raise backoff_max_ms"
                        ),
                    );
                }
                if self.problems.len() > before {
                    return None;
                }
                Some(SinkConfig::Webhook(WebhookSink {
                    url,
                    per_change: raw.per_change.unwrap_or(false),
                    max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
                    backoff_base_ms,
                    backoff_max_ms,
                    timeout_ms,
                }))
            }
            other => {
                self.report(
                    place("kind"),
                    format!(
                        "{other:?} is not a sink kind — use \"store\" (apply to the region's \
                         record store, the default) or \"webhook\" (POST to an external service)"
                    ),
                );
                None
            }
        }
    }

    /// Node ids share one certificate directory with region and operator identities, so they may
    /// not take those names.
    fn check_node_id(&mut self, place: &str, id: &str) {
        self.check_name(place, "node id", id);
        if id == OPERATOR_IDENTITY {
            self.report(
                place,
                format!(
                    "node id {id:?} is the operator's certificate name — rename the node \
                     (e.g. after its region, group and campus)"
                ),
            );
        } else if id.starts_with(crate::registry::REGISTRY_IDENTITY_PREFIX) {
            self.report(
                place,
                format!(
                    "node id {id:?} starts with {:?}, which is reserved for registry certificate \
                     names — rename the node (e.g. after its region, group and campus)",
                    crate::registry::REGISTRY_IDENTITY_PREFIX
                ),
            );
        } else if id.starts_with(crate::gateway::GATEWAY_IDENTITY_PREFIX) {
            self.report(
                place,
                format!(
                    "node id {id:?} starts with {:?}, which is reserved for gateway certificate \
                     names — rename the node (e.g. after its region, group and campus)",
                    crate::gateway::GATEWAY_IDENTITY_PREFIX
                ),
            );
        } else if id.starts_with(REGION_IDENTITY_PREFIX) {
            self.report(
                place,
                format!(
                    "node id {id:?} starts with {REGION_IDENTITY_PREFIX:?}, which is reserved for \
                     region certificate names — rename the node (e.g. after its region, group and \
                     campus)"
                ),
            );
        }
    }

    /// Hostnames are not accepted: the address is also what the node binds, and resolving names
    /// at start-up would make the deployment depend on DNS.
    fn check_addr(
        &mut self,
        node_place: &str,
        owner: &str,
        field: &'static str,
        text: &str,
        seen: &mut HashMap<SocketAddr, AddrUse>,
    ) -> Option<SocketAddr> {
        let place = format!("{node_place}, {field}");
        let addr: SocketAddr = match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.report(
                    place,
                    format!(
                        "{text:?} is not an IP:port address — write it like \"127.0.0.1:7101\" \
                         or \"[::1]:7101\" (hostnames are not resolved)"
                    ),
                );
                return None;
            }
        };
        if addr.port() == 0 {
            self.report(
                place.clone(),
                format!(
                    "{addr} has port 0, which lets the OS pick a port no other process can know \
                     — choose a fixed port"
                ),
            );
        }
        if addr.ip().is_unspecified() {
            self.report(
                place.clone(),
                format!(
                    "{addr} is not an address other processes can connect to; {field} is both \
                     where the {owner} listens and where others connect — use the {owner}'s own \
                     IP"
                ),
            );
        }
        if let Some(first) = seen.get(&addr) {
            self.report(
                place,
                format!(
                    "{addr} is also the {} of {}; two listeners cannot share an address — pick a \
                     free IP or port",
                    first.field, first.place
                ),
            );
        } else {
            seen.insert(
                addr,
                AddrUse {
                    place: node_place.to_string(),
                    field,
                },
            );
        }
        Some(addr)
    }
}

/// Checks the form `http://host[:port][/path]`: the sink speaks plain HTTP/1.1 and needs a host
/// it can connect to. Returns the message of the first thing wrong.
fn check_webhook_url(url: &str) -> Result<(), String> {
    const FORM: &str = "write it as http://host:port/path";
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?} uses https, which the webhook sink does not speak — point it at a \
             TLS-terminating proxy on localhost over http://"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} does not start with http:// — {FORM}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{url:?} carries user information before '@', which would end up in logs — remove it \
             and authenticate the service another way"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(format!("{url:?} has an unclosed '[' in its host — {FORM}"));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "{url:?} has {ip:?} in brackets, which is not an IPv6 address — {FORM}"
            ));
        }
        match after {
            "" => (ip, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => {
                    return Err(format!(
                        "{url:?} has {after:?} after its IPv6 host — {FORM}"
                    ));
                }
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host — {FORM}"));
    }
    if !authority.starts_with('[')
        && let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "{url:?} has {bad:?} in its host; a host is a name or an IP address of letters, \
             digits, '-' and '.' — {FORM}"
        ));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(0) => {
                return Err(format!(
                    "{url:?} has port 0, which no service listens on — {FORM}"
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "{url:?} has port {port:?}, not a number from 1 to 65535 — {FORM}"
                ));
            }
        }
    }
    if path.contains('#') {
        return Err(format!(
            "{url:?} has a '#' fragment, which is never sent to the service — remove it"
        ));
    }
    // RFC 3986 unreserved and reserved characters, and '%' for escapes.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c);
    if let Some(bad) = path.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "{url:?} has {bad:?} in its path, which must be percent-encoded (e.g. a space as %20)"
        ));
    }
    Ok(())
}

fn home_rule(text: &str) -> Option<HomeRule> {
    HomeRule::ALL.into_iter().find(|rule| rule.as_str() == text)
}

fn to_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Only called on values already checked against a range far below `usize::MAX` (or on a
/// deployment that is rejected anyway), so saturation never changes a value that is used.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Keeps `all` only while every part was built; a part that failed has reported its problem.
fn push_all<T>(all: &mut Option<Vec<T>>, part: Option<T>) {
    match (all.as_mut(), part) {
        (Some(parts), Some(part)) => parts.push(part),
        _ => *all = None,
    }
}

fn plural(count: usize, one: &str, verb: &str, noun: &str) -> String {
    if count == 1 {
        one.to_string()
    } else {
        format!("{verb} {count} {noun}")
    }
}
