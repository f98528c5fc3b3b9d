//! From TOML text to a [`Deployment`]: serde reads the file's shape into raw structs (strings where a
//! value still needs checking, so one bad address does not hide every other problem), then one pass
//! checks everything and collects every problem before anything is built.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    ConfigError, Deployment, FsyncMode, OPERATOR_IDENTITY, Problem, QueueGroup, QueueNode,
    QueueSettings, REGION_IDENTITY_PREFIX, Region, Tls,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    deployment: RawDeployment,
    tls: RawTls,
    #[serde(default)]
    queue: RawQueue,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    #[serde(default)]
    queue_groups: Vec<RawGroup>,
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
        let regions = self.check_regions(&raw.regions, &data_root, base_dir);
        Some(Deployment {
            name: raw.deployment.name,
            data_root,
            tls: Tls { ca_cert, cert_dir },
            queue: queue?,
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
            let place = format!("queue.{field}");
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

                    let addr = self.check_addr(&node_place, "addr", &node.addr, &mut addrs);
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
                        _ => {
                            self.check_addr(&node_place, "admin_addr", &node.admin_addr, &mut addrs)
                        }
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
            let built = groups.map(|queue_groups| Region {
                name: region.name.clone(),
                queue_groups,
            });
            push_all(&mut regions, built);
        }
        regions
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
                     where the node listens and where others connect — use the node's own IP"
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
