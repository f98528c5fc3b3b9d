//! Every validation rule, seen as a user sees it: TOML text in, a problem with its place and fix out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use homeport_config::{
    ConfigError, FsyncMode, HomeRule, OPERATOR_IDENTITY, Problem, QueueSettings, RegionProcess,
    ReplaySettings, SinkConfig, StoreSettings, WebhookSink, parse, region_identity,
};

/// Two regions with one group each, no [queue] section: valid as written.
const VALID: &str = r#"
[deployment]
name = "test"
data_root = "data"

[tls]
ca_cert = "certs/ca.pem"
cert_dir = "certs"

[[regions]]
name = "sh"

[[regions.queue_groups]]
name = "g1"
nodes = [
  { id = "sh-g1-a", addr = "127.0.1.1:7101", admin_addr = "127.0.1.1:9101", campus = "a" },
  { id = "sh-g1-b", addr = "127.0.1.2:7101", admin_addr = "127.0.1.2:9101", campus = "b" },
  { id = "sh-g1-c", addr = "127.0.1.3:7101", admin_addr = "127.0.1.3:9101", campus = "c" },
]

[[regions]]
name = "hk"

[[regions.queue_groups]]
name = "g1"
nodes = [
  { id = "hk-g1-a", addr = "127.0.2.1:7101", admin_addr = "127.0.2.1:9101", campus = "a" },
  { id = "hk-g1-b", addr = "127.0.2.2:7101", admin_addr = "127.0.2.2:9101", campus = "b" },
  { id = "hk-g1-c", addr = "127.0.2.3:7101", admin_addr = "127.0.2.3:9101", campus = "c" },
]
"#;

const SH_G1: &str = r#"regions[0] "sh", queue_groups[0] "g1""#;
const HK_G1: &str = r#"regions[1] "hk", queue_groups[0] "g1""#;

fn base() -> &'static Path {
    Path::new("/srv/homeport")
}

/// Replaces the first `from` with `to`, failing if `from` is absent so a test cannot silently
/// check the unedited text.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test text does not contain {from:?}");
    text.replacen(from, to, 1)
}

fn with_queue(lines: &str) -> String {
    with_section("queue", lines)
}

/// VALID with a top-level `[section]` holding `lines`, placed before the regions.
fn with_section(section: &str, lines: &str) -> String {
    edit(
        VALID,
        "[[regions]]",
        &format!("[{section}]\n{lines}\n\n[[regions]]"),
    )
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, base()) {
        Err(ConfigError::Invalid { path, problems }) => {
            assert_eq!(path, "<text>");
            problems
        }
        other => panic!("expected validation problems, got {other:?}"),
    }
}

/// The text has exactly one problem, at `place`, whose message contains every fragment.
fn only_problem(text: &str, place: &str, fragments: &[&str]) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    assert_problem(&found[0], place, fragments);
}

/// Some problem of the text is at `place` and contains every fragment.
fn has_problem(text: &str, place: &str, fragments: &[&str]) {
    let found = problems(text);
    let problem = found
        .iter()
        .find(|problem| problem.place == place)
        .unwrap_or_else(|| panic!("no problem at {place:?} in {found:#?}"));
    assert_problem(problem, place, fragments);
}

fn assert_problem(problem: &Problem, place: &str, fragments: &[&str]) {
    assert_eq!(problem.place, place, "{problem:#?}");
    for fragment in fragments {
        assert!(
            problem.message.contains(fragment),
            "message {:?} lacks {fragment:?}",
            problem.message
        );
    }
}

fn syntax_message(text: &str) -> String {
    match parse(text, base()) {
        Err(ConfigError::Syntax { path, message }) => {
            assert_eq!(path, "<text>");
            message
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn valid_text_builds_the_deployment() {
    let deployment = parse(VALID, base()).expect("valid");
    assert_eq!(deployment.name, "test");
    assert_eq!(deployment.region_names(), vec!["sh", "hk"]);
    let hk = deployment.region("hk").expect("hk");
    assert_eq!(hk.queue_groups.len(), 1);
    assert_eq!(hk.queue_groups[0].nodes.len(), 3);
    assert!(deployment.region("ca").is_none());

    let found = deployment.node("hk-g1-b").expect("node");
    assert_eq!(found.region.name, "hk");
    assert_eq!(found.group.name, "g1");
    assert_eq!(found.node.addr, "127.0.2.2:7101".parse().expect("addr"));
    assert_eq!(
        found.node.admin_addr,
        "127.0.2.2:9101".parse().expect("addr")
    );
    assert_eq!(found.node.campus, "b");
    assert!(deployment.node("hk-g1-d").is_none());

    let ids: Vec<&str> = deployment.nodes().map(|n| n.node.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "sh-g1-a", "sh-g1-b", "sh-g1-c", "hk-g1-a", "hk-g1-b", "hk-g1-c"
        ]
    );
}

#[test]
fn missing_queue_section_means_defaults() {
    let deployment = parse(VALID, base()).expect("valid");
    assert_eq!(deployment.queue, QueueSettings::default());
    let defaults = QueueSettings::default();
    assert_eq!(defaults.segment_size_bytes, 67_108_864);
    assert_eq!(defaults.max_entry_bytes, 1_048_576);
    assert_eq!(defaults.max_batch_entries, 1024);
    assert_eq!(defaults.max_batch_bytes, 4_194_304);
    assert_eq!(defaults.read_max_bytes, 1_048_576);
    assert_eq!(defaults.append_timeout_ms, 5000);
    assert_eq!(defaults.attempt_timeout_ms, 1500);
    assert_eq!(defaults.group_probe_interval_ms, 1000);
    assert_eq!(defaults.max_in_flight_batches, 8);
    assert_eq!(defaults.fsync, FsyncMode::Always);
    assert_eq!(defaults.retention_max_age_secs, 604_800);
    assert_eq!(defaults.heartbeat_interval_ms, 1000);
}

#[test]
fn queue_keys_given_override_only_themselves() {
    let text = with_queue("max_batch_entries = 7\nfsync = \"never\"\nheartbeat_interval_ms = 50");
    let queue = parse(&text, base()).expect("valid").queue;
    assert_eq!(
        queue,
        QueueSettings {
            max_batch_entries: 7,
            fsync: FsyncMode::Never,
            heartbeat_interval_ms: 50,
            ..QueueSettings::default()
        }
    );
}

#[test]
fn fsync_mode_displays_as_written_in_the_file() {
    assert_eq!(FsyncMode::Always.to_string(), "always");
    assert_eq!(FsyncMode::Never.to_string(), "never");
}

#[test]
fn relative_paths_resolve_against_the_base_dir() {
    let deployment = parse(VALID, base()).expect("valid");
    assert_eq!(deployment.data_root, PathBuf::from("/srv/homeport/data"));
    assert_eq!(
        deployment.tls.ca_cert,
        PathBuf::from("/srv/homeport/certs/ca.pem")
    );
    assert_eq!(
        deployment.tls.cert_dir,
        PathBuf::from("/srv/homeport/certs")
    );
    assert_eq!(
        deployment.node("sh-g1-a").expect("node").node.data_dir,
        PathBuf::from("/srv/homeport/data/sh-g1-a")
    );
}

#[test]
fn absolute_paths_are_kept() {
    let text = edit(
        VALID,
        r#"data_root = "data""#,
        r#"data_root = "/var/lib/homeport""#,
    );
    let text = edit(
        &text,
        r#"cert_dir = "certs""#,
        r#"cert_dir = "/etc/homeport""#,
    );
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(deployment.data_root, PathBuf::from("/var/lib/homeport"));
    assert_eq!(deployment.tls.cert_dir, PathBuf::from("/etc/homeport"));
    assert_eq!(
        deployment.node("hk-g1-c").expect("node").node.data_dir,
        PathBuf::from("/var/lib/homeport/hk-g1-c")
    );
}

#[test]
fn data_root_defaults_to_data_next_to_the_file() {
    let text = edit(VALID, "data_root = \"data\"\n", "");
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(deployment.data_root, PathBuf::from("/srv/homeport/data"));
}

#[test]
fn node_data_dir_override_resolves_against_the_base_dir_not_data_root() {
    let text = edit(
        VALID,
        r#"campus = "a" },"#,
        r#"campus = "a", data_dir = "disks/ssd1/a" },"#,
    );
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(
        deployment.node("sh-g1-a").expect("node").node.data_dir,
        PathBuf::from("/srv/homeport/disks/ssd1/a")
    );
    assert_eq!(
        deployment.node("sh-g1-b").expect("node").node.data_dir,
        PathBuf::from("/srv/homeport/data/sh-g1-b")
    );
}

#[test]
fn certificate_paths_follow_the_identity_name() {
    let deployment = parse(VALID, base()).expect("valid");
    let tls = &deployment.tls;
    assert_eq!(
        tls.cert_path("sh-g1-a"),
        PathBuf::from("/srv/homeport/certs/sh-g1-a.pem")
    );
    assert_eq!(
        tls.key_path(&region_identity("hk")),
        PathBuf::from("/srv/homeport/certs/region-hk.key")
    );
    assert_eq!(
        tls.cert_path(OPERATOR_IDENTITY),
        PathBuf::from("/srv/homeport/certs/operator.pem")
    );
}

#[test]
fn identities_name_every_certificate_once() {
    let deployment = parse(VALID, base()).expect("valid");
    let identities = deployment.identities();
    assert_eq!(
        identities,
        [
            "sh-g1-a",
            "sh-g1-b",
            "sh-g1-c",
            "hk-g1-a",
            "hk-g1-b",
            "hk-g1-c",
            "region-sh",
            "region-hk",
            "operator"
        ]
    );
}

#[test]
fn toml_syntax_error_keeps_line_and_column() {
    let text = edit(VALID, r#"name = "sh""#, r#"name = "sh"#);
    let message = syntax_message(&text);
    assert!(message.contains("line 11, column 11"), "{message}");
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let cases = [
        (
            edit(
                VALID,
                r#"name = "test""#,
                "name = \"test\"\ndata_rot = \"x\"",
            ),
            "data_rot",
        ),
        (
            edit(
                VALID,
                r#"cert_dir = "certs""#,
                "cert_dir = \"certs\"\nca_key = \"x\"",
            ),
            "ca_key",
        ),
        (with_queue("segment_size = 1"), "segment_size"),
        (
            edit(
                VALID,
                r#"campus = "a" },"#,
                r#"campus = "a", camp = "b" },"#,
            ),
            "camp",
        ),
        (
            edit(VALID, r#"name = "g1""#, "name = \"g1\"\nreplicas = 3"),
            "replicas",
        ),
        (
            edit(VALID, r#"name = "sh""#, "name = \"sh\"\ngatway = 1"),
            "gatway",
        ),
        (format!("{VALID}\n[tsl]\nca_cert = \"x\"\n"), "tsl"),
        (with_section("store", "max_value = 1"), "max_value"),
        (with_section("replay", "batch_entries = 1"), "batch_entries"),
        (with_section("homes", "rules = \"uid-prefix\""), "rules"),
        (
            edit(VALID, r#"name = "sh""#, "name = \"sh\"\nquic_addr = \"x\""),
            "quic_addr",
        ),
        (
            with_sh_sink("kind = \"webhook\"\nurl = \"http://h/\"\nretries = 3"),
            "retries",
        ),
    ];
    for (text, field) in cases {
        let message = syntax_message(&text);
        assert!(
            message.contains(&format!("unknown field `{field}`")),
            "{field}: {message}"
        );
        assert!(message.contains("line"), "{message}");
    }
}

#[test]
fn wrong_value_types_name_the_field() {
    let message = syntax_message(&with_queue("max_entry_bytes = -1"));
    assert!(message.contains("max_entry_bytes"), "{message}");
    let message = syntax_message(&with_queue("append_timeout_ms = \"5s\""));
    assert!(message.contains("append_timeout_ms"), "{message}");
}

#[test]
fn missing_required_fields_are_named() {
    let message = syntax_message(&edit(VALID, "ca_cert = \"certs/ca.pem\"\n", ""));
    assert!(message.contains("missing field `ca_cert`"), "{message}");
    let message = syntax_message(&edit(VALID, r#"campus = "a" },"#, "},"));
    assert!(message.contains("missing field `campus`"), "{message}");
}

#[test]
fn no_regions() {
    let without = VALID.split("[[regions]]").next().expect("head");
    only_problem(
        without,
        "regions",
        &["no regions", "add at least one [[regions]]"],
    );
    only_problem(
        &format!("regions = []\n{without}"),
        "regions",
        &["no regions"],
    );
}

#[test]
fn duplicate_region_names() {
    let text = edit(VALID, r#"name = "hk""#, r#"name = "sh""#);
    only_problem(
        &text,
        r#"regions[1] "sh", name"#,
        &["also used by regions[0]", "rename one"],
    );
}

#[test]
fn name_syntax_for_every_kind_of_name() {
    has_problem(
        &edit(VALID, r#"name = "sh""#, r#"name = "SH""#),
        r#"regions[0] "SH", name"#,
        &[
            "region name \"SH\" contains 'S'",
            "lowercase letters",
            "rename it",
        ],
    );
    has_problem(
        &edit(VALID, r#"name = "g1""#, r#"name = "g_1""#),
        r#"regions[0] "sh", queue_groups[0] "g_1", name"#,
        &["group name \"g_1\" contains '_'"],
    );
    let long = "a".repeat(33);
    has_problem(
        &edit(VALID, r#"id = "sh-g1-a""#, &format!(r#"id = "{long}""#)),
        &format!(r#"{SH_G1}, nodes[0] "{long}", id"#),
        &["is 33 characters long", "1 to 32", "shorten it"],
    );
    let max = "a".repeat(32);
    parse(
        &edit(VALID, r#"id = "sh-g1-a""#, &format!(r#"id = "{max}""#)),
        base(),
    )
    .expect("32 characters is allowed");
    has_problem(
        &edit(VALID, r#"campus = "b""#, r#"campus = """#),
        &format!(r#"{SH_G1}, nodes[1] "sh-g1-b", campus"#),
        &["campus is empty", "give it a name"],
    );
    only_problem(
        &edit(VALID, r#"name = "test""#, r#"name = "-test""#),
        "deployment.name",
        &["starts with '-'", "start it with a letter or digit"],
    );
    only_problem(
        &edit(VALID, r#"name = "test""#, r#"name = "test/1""#),
        "deployment.name",
        &["contains '/'"],
    );
}

#[test]
fn node_ids_may_not_take_region_or_operator_certificate_names() {
    only_problem(
        &edit(VALID, r#"id = "sh-g1-a""#, r#"id = "operator""#),
        &format!(r#"{SH_G1}, nodes[0] "operator", id"#),
        &["operator's certificate name", "rename the node"],
    );
    only_problem(
        &edit(VALID, r#"id = "sh-g1-a""#, r#"id = "region-sh""#),
        &format!(r#"{SH_G1}, nodes[0] "region-sh", id"#),
        &["reserved for region certificate names", "rename the node"],
    );
}

#[test]
fn region_without_queue_groups() {
    let start = VALID.find("[[regions]]\nname = \"hk\"").expect("hk");
    let text = format!("{}[[regions]]\nname = \"hk\"\n", &VALID[..start]);
    only_problem(
        &text,
        r#"regions[1] "hk""#,
        &[
            "has no queue groups",
            "add at least one [[regions.queue_groups]]",
        ],
    );
}

#[test]
fn group_needs_exactly_three_nodes() {
    let two = edit(
        VALID,
        r#"  { id = "sh-g1-c", addr = "127.0.1.3:7101", admin_addr = "127.0.1.3:9101", campus = "c" },
"#,
        "",
    );
    only_problem(
        &two,
        SH_G1,
        &["has 2 nodes; a group needs exactly 3 nodes, one per campus — add a node"],
    );

    let four = edit(
        VALID,
        r#"campus = "c" },
]"#,
        r#"campus = "c" },
  { id = "sh-g1-d", addr = "127.0.1.4:7101", admin_addr = "127.0.1.4:9101", campus = "d" },
]"#,
    );
    only_problem(&four, SH_G1, &["has 4 nodes", "remove a node"]);

    let start = VALID.find("nodes = [").expect("nodes");
    let end = VALID[start..].find(']').expect("end") + start + 1;
    let none = format!("{}nodes = []{}", &VALID[..start], &VALID[end..]);
    only_problem(&none, SH_G1, &["has 0 nodes", "add 3 nodes"]);
}

#[test]
fn two_nodes_of_a_group_in_one_campus() {
    only_problem(
        &edit(VALID, r#"campus = "c""#, r#"campus = "a""#),
        &format!(r#"{SH_G1}, nodes[2] "sh-g1-c", campus"#),
        &[
            "campus \"a\" is also the campus of nodes[0] \"sh-g1-a\"",
            "3 different campuses",
            "move this node to another campus",
        ],
    );
}

#[test]
fn duplicate_group_names_within_a_region() {
    let second_group = r#"
[[regions.queue_groups]]
name = "g1"
nodes = [
  { id = "sh-g2-a", addr = "127.0.1.1:7102", admin_addr = "127.0.1.1:9102", campus = "a" },
  { id = "sh-g2-b", addr = "127.0.1.2:7102", admin_addr = "127.0.1.2:9102", campus = "b" },
  { id = "sh-g2-c", addr = "127.0.1.3:7102", admin_addr = "127.0.1.3:9102", campus = "c" },
]

[[regions]]
name = "hk""#;
    let text = edit(VALID, "\n[[regions]]\nname = \"hk\"", second_group);
    only_problem(
        &text,
        r#"regions[0] "sh", queue_groups[1] "g1", name"#,
        &["also used by queue_groups[0] of this region", "rename one"],
    );
}

#[test]
fn duplicate_node_ids_across_the_deployment() {
    only_problem(
        &edit(VALID, r#"id = "hk-g1-a""#, r#"id = "sh-g1-a""#),
        &format!(r#"{HK_G1}, nodes[0] "sh-g1-a", id"#),
        &[
            &format!(r#"also used by {SH_G1}, nodes[0] "sh-g1-a""#),
            "unique across the deployment",
        ],
    );
}

#[test]
fn duplicate_addresses_across_nodes_and_fields() {
    only_problem(
        &edit(VALID, "127.0.2.1:7101", "127.0.1.1:7101"),
        &format!(r#"{HK_G1}, nodes[0] "hk-g1-a", addr"#),
        &[
            &format!(r#"127.0.1.1:7101 is also the addr of {SH_G1}, nodes[0] "sh-g1-a""#),
            "pick a free IP or port",
        ],
    );
    // An admin listener may not take another node's QUIC address either.
    only_problem(
        &edit(VALID, "127.0.2.3:9101", "127.0.1.2:7101"),
        &format!(r#"{HK_G1}, nodes[2] "hk-g1-c", admin_addr"#),
        &[&format!(
            r#"127.0.1.2:7101 is also the addr of {SH_G1}, nodes[1] "sh-g1-b""#
        )],
    );
}

#[test]
fn admin_addr_equal_to_addr() {
    only_problem(
        &edit(VALID, "127.0.1.2:9101", "127.0.1.2:7101"),
        &format!(r#"{SH_G1}, nodes[1] "sh-g1-b", admin_addr"#),
        &[
            "is the same as addr (127.0.1.2:7101)",
            "pick a different port",
        ],
    );
}

#[test]
fn addresses_must_be_fixed_dialable_ip_and_port() {
    only_problem(
        &edit(VALID, "127.0.1.1:7101", "localhost:7101"),
        &format!(r#"{SH_G1}, nodes[0] "sh-g1-a", addr"#),
        &[
            "\"localhost:7101\" is not an IP:port address",
            "write it like \"127.0.0.1:7101\"",
        ],
    );
    only_problem(
        &edit(VALID, "127.0.1.1:9101", "127.0.1.1:0"),
        &format!(r#"{SH_G1}, nodes[0] "sh-g1-a", admin_addr"#),
        &["port 0", "choose a fixed port"],
    );
    only_problem(
        &edit(VALID, "127.0.1.1:7101", "0.0.0.0:7101"),
        &format!(r#"{SH_G1}, nodes[0] "sh-g1-a", addr"#),
        &["0.0.0.0:7101 is not an address other processes can connect to"],
    );
    parse(&edit(VALID, "127.0.1.1:7101", "[::1]:7101"), base()).expect("IPv6 is fine");
}

#[test]
fn two_nodes_sharing_a_data_dir() {
    let text = edit(
        VALID,
        r#"campus = "a" },"#,
        r#"campus = "a", data_dir = "data/hk-g1-a" },"#,
    );
    only_problem(
        &text,
        &format!(r#"{HK_G1}, nodes[0] "hk-g1-a", data_dir"#),
        &[
            &format!(
                r#"/srv/homeport/data/hk-g1-a is also the data directory of {SH_G1}, nodes[0] "sh-g1-a""#
            ),
            "give each node its own data_dir",
        ],
    );
}

#[test]
fn empty_paths() {
    only_problem(
        &edit(VALID, r#"ca_cert = "certs/ca.pem""#, r#"ca_cert = """#),
        "tls.ca_cert",
        &["is empty", "CA that signs every certificate"],
    );
    only_problem(
        &edit(VALID, r#"data_root = "data""#, r#"data_root = """#),
        "deployment.data_root",
        &["is empty"],
    );
}

#[test]
fn unknown_fsync_mode() {
    only_problem(
        &with_queue(r#"fsync = "sometimes""#),
        "queue.fsync",
        &[
            "\"sometimes\" is not an fsync mode",
            "\"always\"",
            "\"never\" (UNSAFE",
        ],
    );
}

#[test]
fn every_queue_limit_rejects_zero() {
    for field in [
        "segment_size_bytes",
        "max_entry_bytes",
        "max_batch_entries",
        "max_batch_bytes",
        "read_max_bytes",
        "append_timeout_ms",
        "attempt_timeout_ms",
        "group_probe_interval_ms",
        "max_in_flight_batches",
        "retention_max_age_secs",
        "heartbeat_interval_ms",
    ] {
        has_problem(
            &with_queue(&format!("{field} = 0")),
            &format!("queue.{field}"),
            &["is 0, below the minimum of", "(default "],
        );
    }
}

#[test]
fn every_queue_limit_has_an_upper_bound_with_a_reason() {
    // Each value is just above its bound, with related limits raised so only the bound trips.
    let cases = [
        (
            "segment_size_bytes = 1073741825",
            "segment_size_bytes",
            "1073741824",
            "retention deletes whole segments",
        ),
        (
            "max_entry_bytes = 16777217\nmax_batch_bytes = 33554432\nread_max_bytes = 33554432",
            "max_entry_bytes",
            "16777216",
            "held in memory",
        ),
        (
            "max_batch_entries = 65537",
            "max_batch_entries",
            "65536",
            "indexes a whole batch",
        ),
        (
            "max_batch_bytes = 67108865\nsegment_size_bytes = 134217728",
            "max_batch_bytes",
            "67108864",
            "one network message",
        ),
        (
            "read_max_bytes = 67108865",
            "read_max_bytes",
            "67108864",
            "one network message",
        ),
        (
            "append_timeout_ms = 60001",
            "append_timeout_ms",
            "60000",
            "clients give up",
        ),
        (
            "attempt_timeout_ms = 60001\nappend_timeout_ms = 60000",
            "attempt_timeout_ms",
            "60000",
            "before failover",
        ),
        (
            "group_probe_interval_ms = 60001",
            "group_probe_interval_ms",
            "60000",
            "out of rotation",
        ),
        (
            "max_in_flight_batches = 65537",
            "max_in_flight_batches",
            "65536",
            "held in memory",
        ),
        (
            "retention_max_age_secs = 31536001",
            "retention_max_age_secs",
            "31536000",
            "archive",
        ),
        (
            "heartbeat_interval_ms = 60001",
            "heartbeat_interval_ms",
            "60000",
            "lag is measured from heartbeats",
        ),
    ];
    for (lines, field, max, why) in cases {
        let text = with_queue(lines);
        let found = problems(&text);
        let place = format!("queue.{field}");
        assert!(
            found.iter().any(|p| p.place == place),
            "{field}: {found:#?}"
        );
        has_problem(
            &text,
            &place,
            &[
                &format!("above the limit of {max} because"),
                why,
                &format!("lower it to at most {max}"),
            ],
        );
    }
}

#[test]
fn heartbeat_interval_has_a_minimum() {
    only_problem(
        &with_queue("heartbeat_interval_ms = 9"),
        "queue.heartbeat_interval_ms",
        &["is 9, below the minimum of 10", "raise it to at least 10"],
    );
    parse(&with_queue("heartbeat_interval_ms = 10"), base()).expect("10 ms is the minimum");
}

#[test]
fn attempt_timeout_must_fit_in_append_timeout() {
    only_problem(
        &with_queue("attempt_timeout_ms = 6000\nappend_timeout_ms = 5000"),
        "queue.attempt_timeout_ms",
        &[
            "is 6000, more than append_timeout_ms (5000)",
            "lower attempt_timeout_ms or raise append_timeout_ms",
        ],
    );
    parse(&with_queue("attempt_timeout_ms = 5000"), base()).expect("equal is allowed");
}

#[test]
fn entry_must_fit_in_a_batch() {
    // The store limits shrink with the entry so that only the batch rule trips.
    only_problem(
        &with_queue(
            "max_entry_bytes = 2000\nmax_batch_bytes = 1000\nread_max_bytes = 2000\n\n\
             [store]\nmax_value_bytes = 100\nmax_key_bytes = 100\nmax_uid_bytes = 100",
        ),
        "queue.max_entry_bytes",
        &[
            "is 2000, more than max_batch_bytes (1000)",
            "lower max_entry_bytes or raise max_batch_bytes",
        ],
    );
}

#[test]
fn batch_must_fit_in_a_segment() {
    only_problem(
        &with_queue("segment_size_bytes = 4194303"),
        "queue.max_batch_bytes",
        &[
            "is 4194304, more than segment_size_bytes (4194303)",
            "raise segment_size_bytes",
        ],
    );
}

#[test]
fn read_must_fit_the_largest_entry() {
    only_problem(
        &with_queue("read_max_bytes = 1048575"),
        "queue.read_max_bytes",
        &[
            "is 1048575, less than max_entry_bytes (1048576)",
            "consumers stall",
            "raise read_max_bytes",
        ],
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = edit(VALID, r#"name = "hk""#, r#"name = "sh""#);
    let text = edit(&text, r#"campus = "c""#, r#"campus = "b""#);
    let text = edit(&text, "127.0.2.3:9101", "nowhere");
    let text = edit(
        &text,
        "[[regions]]",
        "[queue]\nfsync = \"maybe\"\nread_max_bytes = 1\n\n[[regions]]",
    );
    let found = problems(&text);
    let places: Vec<&str> = found.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(
        places,
        [
            "queue.fsync",
            "queue.read_max_bytes",
            r#"regions[0] "sh", queue_groups[0] "g1", nodes[2] "sh-g1-c", campus"#,
            r#"regions[1] "sh", name"#,
            r#"regions[1] "sh", queue_groups[0] "g1", nodes[2] "hk-g1-c", admin_addr"#,
        ]
    );

    let shown = ConfigError::Invalid {
        path: "<text>".to_string(),
        problems: found.clone(),
    }
    .to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines[0], "config <text> has 5 problems:");
    assert_eq!(lines.len(), 6);
    for (line, problem) in lines[1..].iter().zip(&found) {
        assert_eq!(
            line.trim(),
            format!("{}: {}", problem.place, problem.message)
        );
    }
}

#[test]
fn one_problem_is_announced_in_the_singular() {
    let error = parse(&with_queue("max_batch_entries = 0"), base()).expect_err("invalid");
    assert!(
        error
            .to_string()
            .starts_with("config <text> has 1 problem:\n  queue.max_batch_entries: is 0"),
        "{error}"
    );
}

const SH: &str = r#"regions[0] "sh""#;
const HK: &str = r#"regions[1] "hk""#;

/// The three listeners of sh's region process, on campus a's IP.
const SH_PROCESS: &str = r#"addr = "127.0.1.1:7000"
api_addr = "127.0.1.1:8000"
admin_addr = "127.0.1.1:9000""#;

/// VALID with `lines` among region sh's keys (before its tables).
fn with_sh(lines: &str) -> String {
    edit(
        VALID,
        "name = \"sh\"\n",
        &format!("name = \"sh\"\n{lines}\n"),
    )
}

/// VALID with `lines` among region hk's keys (before its tables).
fn with_hk(lines: &str) -> String {
    edit(
        VALID,
        "name = \"hk\"\n",
        &format!("name = \"hk\"\n{lines}\n"),
    )
}

/// VALID where sh runs a region process with a `[regions.sink]` of `lines`.
fn with_sh_sink(lines: &str) -> String {
    with_sh(&format!("{SH_PROCESS}\n\n[regions.sink]\n{lines}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn store_replay_homes_and_region_processes_are_optional() {
    let deployment = parse(VALID, base()).expect("valid");
    assert_eq!(deployment.store, StoreSettings::default());
    assert_eq!(deployment.replay, ReplaySettings::default());
    assert_eq!(deployment.homes, HomeRule::UidPrefix);
    for region in &deployment.regions {
        assert_eq!(region.process, None, "{}", region.name);
        assert_eq!(region.sink, SinkConfig::Store, "{}", region.name);
    }

    let store = StoreSettings::default();
    assert_eq!(store.max_uid_bytes, 128);
    assert_eq!(store.max_key_bytes, 256);
    assert_eq!(store.max_value_bytes, 262_144);
    assert_eq!(store.max_batch_requests, 1024);
    assert_eq!(store.idempotency_ttl_secs, 86_400);
    assert_eq!(store.tombstone_retention_secs, 86_400);
    let replay = ReplaySettings::default();
    assert_eq!(replay.batch_max_entries, 1024);
    assert_eq!(replay.read_wait_ms, 1000);
    assert_eq!(replay.retry_backoff_ms, 100);
    assert_eq!(replay.max_retry_backoff_ms, 5000);
    assert_eq!(replay.checkpoint_report_interval_ms, 5000);
    assert_eq!(replay.status_interval_ms, 1000);
    assert_eq!(replay.outbox_scan_interval_ms, 1000);
    assert_eq!(replay.outbox_min_age_ms, 6000);
    assert_eq!(HomeRule::UidPrefix.to_string(), "uid-prefix");
}

#[test]
fn store_replay_and_homes_keys_given_override_only_themselves() {
    let text = with_section(
        "store",
        "max_key_bytes = 64\ntombstone_retention_secs = 3600\n\n[replay]\nread_wait_ms = 250\n\
         outbox_min_age_ms = 10000\n\n[homes]\nrule = \"uid-prefix\"",
    );
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(
        deployment.store,
        StoreSettings {
            max_key_bytes: 64,
            tombstone_retention_secs: 3600,
            ..StoreSettings::default()
        }
    );
    assert_eq!(
        deployment.replay,
        ReplaySettings {
            read_wait_ms: 250,
            outbox_min_age_ms: 10_000,
            ..ReplaySettings::default()
        }
    );
    assert_eq!(deployment.homes, HomeRule::UidPrefix);
}

#[test]
fn region_process_listeners_and_default_data_dir() {
    let deployment = parse(&with_sh(SH_PROCESS), base()).expect("valid");
    let process = deployment
        .region("sh")
        .and_then(|region| region.process.clone())
        .expect("sh runs a region process");
    assert_eq!(
        process,
        RegionProcess {
            addr: addr("127.0.1.1:7000"),
            api_addr: addr("127.0.1.1:8000"),
            admin_addr: addr("127.0.1.1:9000"),
            data_dir: PathBuf::from("/srv/homeport/data/region-sh"),
        }
    );
    assert_eq!(
        process.dead_letters_path(),
        PathBuf::from("/srv/homeport/data/region-sh/dead-letters.redb")
    );
    assert_eq!(deployment.region("hk").expect("hk").process, None);
}

#[test]
fn region_process_data_dir_override_resolves_against_the_base_dir() {
    let text = with_sh(&format!("{SH_PROCESS}\ndata_dir = \"state/sh\""));
    let deployment = parse(&text, base()).expect("valid");
    let process = deployment
        .region("sh")
        .and_then(|region| region.process.clone())
        .expect("process");
    assert_eq!(process.data_dir, PathBuf::from("/srv/homeport/state/sh"));
}

#[test]
fn region_process_needs_all_three_listeners() {
    only_problem(
        &with_sh(r#"addr = "127.0.1.1:7000""#),
        SH,
        &[
            "sets addr but not api_addr, admin_addr",
            "a region process needs all three",
            "add api_addr, admin_addr, or remove addr for a queue-only region",
        ],
    );
    only_problem(
        &with_sh("api_addr = \"127.0.1.1:8000\"\nadmin_addr = \"127.0.1.1:9000\""),
        SH,
        &["sets api_addr, admin_addr but not addr", "add addr"],
    );
}

#[test]
fn region_data_dir_without_a_process() {
    only_problem(
        &with_sh(r#"data_dir = "state/sh""#),
        &format!("{SH}, data_dir"),
        &["the region has no process to use it", "or remove data_dir"],
    );
}

#[test]
fn region_process_addresses_join_the_duplicate_check() {
    // Within one process.
    only_problem(
        &with_sh(&SH_PROCESS.replace("127.0.1.1:8000", "127.0.1.1:7000")),
        &format!("{SH}, api_addr"),
        &[
            &format!("127.0.1.1:7000 is also the addr of {SH}"),
            "pick a free IP or port",
        ],
    );
    // A node after the process may not take its address.
    only_problem(
        &with_sh(&SH_PROCESS.replace("127.0.1.1:9000", "127.0.1.1:9101")),
        &format!(r#"{SH_G1}, nodes[0] "sh-g1-a", admin_addr"#),
        &[&format!("127.0.1.1:9101 is also the admin_addr of {SH}")],
    );
    // Nor may a process take a node's address.
    only_problem(
        &with_hk(
            "addr = \"127.0.1.2:7101\"\napi_addr = \"127.0.2.1:8000\"\nadmin_addr = \"127.0.2.1:9000\"",
        ),
        &format!("{HK}, addr"),
        &[&format!(
            r#"127.0.1.2:7101 is also the addr of {SH_G1}, nodes[1] "sh-g1-b""#
        )],
    );
}

#[test]
fn region_process_addresses_must_be_fixed_dialable_ip_and_port() {
    only_problem(
        &with_sh(&SH_PROCESS.replace("127.0.1.1:8000", "localhost:8000")),
        &format!("{SH}, api_addr"),
        &["\"localhost:8000\" is not an IP:port address"],
    );
    only_problem(
        &with_sh(&SH_PROCESS.replace("127.0.1.1:7000", "0.0.0.0:7000")),
        &format!("{SH}, addr"),
        &[
            "0.0.0.0:7000 is not an address other processes can connect to",
            "where the region process listens",
        ],
    );
    only_problem(
        &with_sh(&SH_PROCESS.replace("127.0.1.1:9000", "127.0.1.1:0")),
        &format!("{SH}, admin_addr"),
        &["port 0"],
    );
}

#[test]
fn region_process_may_not_share_a_data_dir() {
    let text = with_hk(
        "addr = \"127.0.2.1:7000\"\napi_addr = \"127.0.2.1:8000\"\nadmin_addr = \
         \"127.0.2.1:9000\"\ndata_dir = \"data/sh-g1-a\"",
    );
    only_problem(
        &text,
        &format!("{HK}, data_dir"),
        &[
            &format!(
                r#"/srv/homeport/data/sh-g1-a is also the data directory of {SH_G1}, nodes[0] "sh-g1-a""#
            ),
            "give the region process its own data_dir",
        ],
    );
    // Duplicate region names are reported once, not again as a shared default data_dir.
    let text = edit(VALID, r#"name = "hk""#, r#"name = "sh""#);
    let text = edit(
        &text,
        "name = \"sh\"\n",
        &format!("name = \"sh\"\n{SH_PROCESS}\n"),
    );
    let text = edit(
        &text,
        "name = \"sh\"\n\n",
        "name = \"sh\"\naddr = \"127.0.2.1:7000\"\napi_addr = \"127.0.2.1:8000\"\n\
         admin_addr = \"127.0.2.1:9000\"\n\n",
    );
    only_problem(
        &text,
        r#"regions[1] "sh", name"#,
        &["also used by regions[0]"],
    );
}

#[test]
fn store_sink_is_the_default_and_may_be_written_out() {
    for lines in ["", "kind = \"store\""] {
        let deployment = parse(&with_sh_sink(lines), base()).expect("valid");
        assert_eq!(deployment.region("sh").expect("sh").sink, SinkConfig::Store);
    }
}

#[test]
fn webhook_sink_defaults() {
    let text = with_sh_sink("kind = \"webhook\"\nurl = \"http://127.0.0.1:8080/changes\"");
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(
        deployment.region("sh").expect("sh").sink,
        SinkConfig::Webhook(WebhookSink {
            url: "http://127.0.0.1:8080/changes".to_string(),
            per_change: false,
            max_attempts: 8,
            backoff_base_ms: 100,
            backoff_max_ms: 10_000,
            timeout_ms: 5000,
        })
    );
}

#[test]
fn webhook_sink_keys_override_the_defaults() {
    let text = with_sh_sink(
        "kind = \"webhook\"\nurl = \"http://hooks.example:80/in\"\nper_change = true\n\
         max_attempts = 3\nbackoff_base_ms = 50\nbackoff_max_ms = 400\ntimeout_ms = 900",
    );
    let deployment = parse(&text, base()).expect("valid");
    assert_eq!(
        deployment.region("sh").expect("sh").sink,
        SinkConfig::Webhook(WebhookSink {
            url: "http://hooks.example:80/in".to_string(),
            per_change: true,
            max_attempts: 3,
            backoff_base_ms: 50,
            backoff_max_ms: 400,
            timeout_ms: 900,
        })
    );
}

#[test]
fn unknown_sink_kind() {
    only_problem(
        &with_sh_sink("kind = \"kafka\""),
        &format!("{SH}, sink.kind"),
        &["\"kafka\" is not a sink kind", "\"store\"", "\"webhook\""],
    );
}

#[test]
fn webhook_fields_on_a_store_sink_are_problems() {
    let found = problems(&with_sh_sink("url = \"http://h:1/\"\nper_change = true"));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_problem(
        &found[0],
        &format!("{SH}, sink.url"),
        &[
            "only used by kind = \"webhook\"",
            "remove url, or set kind = \"webhook\"",
        ],
    );
    assert_problem(
        &found[1],
        &format!("{SH}, sink.per_change"),
        &["remove per_change"],
    );
}

#[test]
fn webhook_sink_needs_a_url() {
    only_problem(
        &with_sh_sink("kind = \"webhook\""),
        &format!("{SH}, sink.url"),
        &["is missing", "add url = \"http://host:port/path\""],
    );
}

#[test]
fn webhook_sink_needs_a_region_process() {
    only_problem(
        &with_sh("[regions.sink]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:8080/\""),
        &format!("{SH}, sink"),
        &[
            "the region has no process to run it",
            "add addr, api_addr and admin_addr",
        ],
    );
}

#[test]
fn webhook_url_must_be_http_host_port_path() {
    let refused = [
        ("https://h:443/x", "uses https"),
        ("ftp://h/x", "does not start with http://"),
        ("127.0.0.1:8080/x", "does not start with http://"),
        ("http:///x", "names no host"),
        ("http://:8080/x", "names no host"),
        ("http://h:0/x", "has port 0"),
        (
            "http://h:70000/x",
            "has port \"70000\", not a number from 1 to 65535",
        ),
        ("http://h:/x", "has port \"\""),
        ("http://user:pw@h:1/x", "user information"),
        ("http://h_1:1/x", "has '_' in its host"),
        ("http://[::1/x", "unclosed '['"),
        ("http://[nope]:1/x", "not an IPv6 address"),
        ("http://[::1]x/y", "after its IPv6 host"),
        ("http://h:1/x#top", "'#' fragment"),
        ("http://h:1/a b", "' ' in its path"),
    ];
    for (url, fragment) in refused {
        only_problem(
            &with_sh_sink(&format!("kind = \"webhook\"\nurl = \"{url}\"")),
            &format!("{SH}, sink.url"),
            &[fragment],
        );
    }
    for url in [
        "http://127.0.0.1:8080/changes",
        "http://hooks.example/in?source=homeport&v=1",
        "http://[::1]:8080/x",
        "http://[::1]",
        "http://h:1",
        "http://h:1/a%20b",
    ] {
        parse(
            &with_sh_sink(&format!("kind = \"webhook\"\nurl = \"{url}\"")),
            base(),
        )
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    }
}

#[test]
fn webhook_limits() {
    let webhook = |lines: &str| {
        with_sh_sink(&format!(
            "kind = \"webhook\"\nurl = \"http://h:1/\"\n{lines}"
        ))
    };
    let cases = [
        ("max_attempts = 0", "max_attempts", "below the minimum of 1"),
        (
            "max_attempts = 101",
            "max_attempts",
            "above the limit of 100 because replay",
        ),
        (
            "backoff_base_ms = 0",
            "backoff_base_ms",
            "below the minimum of 1",
        ),
        (
            "backoff_max_ms = 600001",
            "backoff_max_ms",
            "above the limit of 600000",
        ),
        ("timeout_ms = 0", "timeout_ms", "below the minimum of 1"),
        (
            "timeout_ms = 300001",
            "timeout_ms",
            "above the limit of 300000",
        ),
        (
            "backoff_base_ms = 20000",
            "backoff_base_ms",
            "is 20000, more than backoff_max_ms (10000)",
        ),
    ];
    for (lines, field, fragment) in cases {
        only_problem(&webhook(lines), &format!("{SH}, sink.{field}"), &[fragment]);
    }
    parse(
        &webhook("backoff_base_ms = 10000\nmax_attempts = 100"),
        base(),
    )
    .expect("base equal to max and 100 attempts are allowed");
}

#[test]
fn every_store_and_replay_limit_rejects_zero() {
    for (section, field) in [
        ("store", "max_uid_bytes"),
        ("store", "max_key_bytes"),
        ("store", "max_value_bytes"),
        ("store", "max_batch_requests"),
        ("store", "idempotency_ttl_secs"),
        ("store", "tombstone_retention_secs"),
        ("replay", "batch_max_entries"),
        ("replay", "read_wait_ms"),
        ("replay", "retry_backoff_ms"),
        ("replay", "max_retry_backoff_ms"),
        ("replay", "checkpoint_report_interval_ms"),
        ("replay", "status_interval_ms"),
        ("replay", "outbox_scan_interval_ms"),
        ("replay", "outbox_min_age_ms"),
    ] {
        has_problem(
            &with_section(section, &format!("{field} = 0")),
            &format!("{section}.{field}"),
            &["is 0, below the minimum of", "(default "],
        );
    }
}

#[test]
fn store_and_replay_intervals_have_minimums() {
    for (field, min) in [
        ("checkpoint_report_interval_ms", 100),
        ("status_interval_ms", 10),
        ("outbox_scan_interval_ms", 10),
    ] {
        only_problem(
            &with_section("replay", &format!("{field} = {}", min - 1)),
            &format!("replay.{field}"),
            &[&format!(
                "below the minimum of {min} — raise it to at least {min}"
            )],
        );
        parse(&with_section("replay", &format!("{field} = {min}")), base())
            .unwrap_or_else(|error| panic!("{field} = {min}: {error}"));
    }
}

#[test]
fn every_store_and_replay_limit_has_an_upper_bound_with_a_reason() {
    let cases = [
        (
            "store",
            "max_uid_bytes = 1025",
            "max_uid_bytes",
            "1024",
            "every record",
        ),
        (
            "store",
            "max_key_bytes = 4097",
            "max_key_bytes",
            "4096",
            "data belongs in the value",
        ),
        (
            "store",
            "max_value_bytes = 16777217",
            "max_value_bytes",
            "16777216",
            "one queue entry",
        ),
        (
            "store",
            "max_batch_requests = 65537",
            "max_batch_requests",
            "65536",
            "one store transaction",
        ),
        (
            "store",
            "idempotency_ttl_secs = 2592001",
            "idempotency_ttl_secs",
            "2592000",
            "clients retry within minutes",
        ),
        (
            "store",
            "tombstone_retention_secs = 31536001",
            "tombstone_retention_secs",
            "31536000",
            "tombstone on disk",
        ),
        (
            "replay",
            "batch_max_entries = 65537",
            "batch_max_entries",
            "65536",
            "one store transaction",
        ),
        (
            "replay",
            "read_wait_ms = 30001",
            "read_wait_ms",
            "30000",
            "queue nodes cap the wait",
        ),
        (
            "replay",
            "retry_backoff_ms = 60001\nmax_retry_backoff_ms = 300000",
            "retry_backoff_ms",
            "60000",
            "first failure",
        ),
        (
            "replay",
            "max_retry_backoff_ms = 300001",
            "max_retry_backoff_ms",
            "300000",
            "came back",
        ),
        (
            "replay",
            "checkpoint_report_interval_ms = 600001",
            "checkpoint_report_interval_ms",
            "600000",
            "consumed segments stay on disk",
        ),
        (
            "replay",
            "status_interval_ms = 60001",
            "status_interval_ms",
            "60000",
            "lag and clock offset",
        ),
        (
            "replay",
            "outbox_scan_interval_ms = 60001",
            "outbox_scan_interval_ms",
            "60000",
            "left in the outbox",
        ),
        (
            "replay",
            "outbox_min_age_ms = 600001",
            "outbox_min_age_ms",
            "600000",
            "left in the outbox",
        ),
    ];
    for (section, lines, field, max, why) in cases {
        has_problem(
            &with_section(section, lines),
            &format!("{section}.{field}"),
            &[
                &format!("above the limit of {max} because"),
                why,
                &format!("lower it to at most {max}"),
            ],
        );
    }
}

/// As [`with_section`], with a region process in sh (the store rules apply only then).
fn with_section_and_process(section: &str, lines: &str) -> String {
    edit(
        &with_section(section, lines),
        "name = \"sh\"\n",
        &format!("name = \"sh\"\n{SH_PROCESS}\n"),
    )
}

#[test]
fn a_maximal_change_must_fit_in_a_queue_entry() {
    // 1048576 (max_entry_bytes) - 1024 (envelope) - 256 (key) - 128 (uid)
    parse(
        &with_section_and_process("store", "max_value_bytes = 1047168"),
        base(),
    )
    .expect("fits exactly");
    only_problem(
        &with_section_and_process("store", "max_value_bytes = 1047169"),
        "store.max_value_bytes",
        &[
            "is 1047169; with max_key_bytes (256), max_uid_bytes (128) and 1024 bytes of change \
             envelope a maximal change is 1048577 bytes, more than queue.max_entry_bytes (1048576)",
            "could never be shipped",
            "lower max_value_bytes",
            "raise queue.max_entry_bytes",
        ],
    );
    only_problem(
        &with_section_and_process("queue", "max_entry_bytes = 200000"),
        "store.max_value_bytes",
        &["more than queue.max_entry_bytes (200000)"],
    );
    // Without a region process nothing writes records, so small entries are fine.
    parse(&with_queue("max_entry_bytes = 200000"), base()).expect("queue-only deployment");
}

#[test]
fn uid_limit_must_fit_a_uid_of_every_region() {
    let queue_only = edit(VALID, r#"name = "hk""#, r#"name = "hkg""#);
    let text = edit(
        &queue_only,
        "name = \"sh\"\n",
        &format!("name = \"sh\"\n{SH_PROCESS}\n"),
    );
    only_problem(
        &format!("{text}\n[store]\nmax_uid_bytes = 4\n"),
        "store.max_uid_bytes",
        &[
            "is 4, too short for any user of region \"hkg\"",
            "<region>-<rest>",
            "raise it to at least 5",
        ],
    );
    parse(
        &with_section_and_process("store", "max_uid_bytes = 4"),
        base(),
    )
    .expect("\"sh-1\" fits");
    parse(
        &format!("{queue_only}\n[store]\nmax_uid_bytes = 4\n"),
        base(),
    )
    .expect("without a region process no uid is ever stored");
}

#[test]
fn replay_backoff_must_start_below_its_maximum() {
    only_problem(
        &with_section("replay", "retry_backoff_ms = 6000"),
        "replay.retry_backoff_ms",
        &[
            "is 6000, more than max_retry_backoff_ms (5000)",
            "lower retry_backoff_ms or raise max_retry_backoff_ms",
        ],
    );
    parse(&with_section("replay", "retry_backoff_ms = 5000"), base()).expect("equal is allowed");
}

#[test]
fn unknown_home_rule() {
    only_problem(
        &with_section("homes", "rule = \"hash\""),
        "homes.rule",
        &["\"hash\" is not a home rule", "use one of: \"uid-prefix\""],
    );
}

#[test]
fn new_sections_report_in_file_order() {
    let text = with_section(
        "store",
        "max_batch_requests = 0\n\n[replay]\nbatch_max_entries = 0\n\n[homes]\nrule = \"x\"",
    );
    let text = edit(
        &text,
        "name = \"sh\"\n",
        "name = \"sh\"\naddr = \"127.0.1.1:7000\"\n",
    );
    let text = edit(&text, "127.0.1.2:9101", "bad");
    let found = problems(&text);
    let places: Vec<&str> = found.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(
        places,
        [
            "store.max_batch_requests",
            "replay.batch_max_entries",
            "homes.rule",
            SH,
            r#"regions[0] "sh", queue_groups[0] "g1", nodes[1] "sh-g1-b", admin_addr"#,
        ]
    );
}
