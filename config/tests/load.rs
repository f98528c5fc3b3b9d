//! Loading from disk: the shipped example files, path resolution against the file's directory, and
//! errors that name the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use homeport_config::{
    ConfigError, Deployment, FsyncMode, HomeRule, ReplaySettings, SinkConfig, StoreSettings, load,
};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
}

/// What every shipped example promises: 2 groups of 3 nodes per region, campuses a/b/c, a region
/// process per region on campus a's IP, every listener on its own address inside the region's
/// loopback /24, data and certificates under the repository's gitignored `data/` and `certs/`.
fn check_example(deployment: &Deployment, name: &str, regions: &[(&str, u8)]) {
    let examples = examples_dir();
    assert_eq!(deployment.name, name);
    assert_eq!(
        deployment.region_names(),
        regions.iter().map(|(r, _)| *r).collect::<Vec<_>>()
    );
    assert_eq!(deployment.data_root, examples.join("../data").join(name));
    assert_eq!(
        deployment.tls.cert_dir,
        examples.join("../certs").join(name)
    );
    assert_eq!(
        deployment.tls.ca_cert,
        examples.join("../certs").join(name).join("ca.pem")
    );
    assert_eq!(deployment.queue.fsync, FsyncMode::Always);
    // The examples write out the defaults, so they document them.
    assert_eq!(deployment.store, StoreSettings::default());
    assert_eq!(deployment.replay, ReplaySettings::default());
    assert_eq!(deployment.homes, HomeRule::UidPrefix);

    let mut listeners = HashSet::new();
    for (region_name, octet) in regions {
        let region = deployment.region(region_name).expect("region");
        assert_eq!(region.queue_groups.len(), 2, "{region_name}");
        assert_eq!(region.sink, SinkConfig::Store);
        let process = region
            .process
            .as_ref()
            .expect("every example region runs a process");
        assert_eq!(
            process.data_dir,
            deployment.data_root.join(format!("region-{region_name}"))
        );
        for addr in [process.addr, process.api_addr, process.admin_addr] {
            match addr.ip() {
                std::net::IpAddr::V4(ip) => assert_eq!(ip.octets(), [127, 0, *octet, 1]),
                other => panic!("{other} is not a loopback IPv4 address"),
            }
            assert!(listeners.insert(addr), "{addr} used twice");
        }
        for group in &region.queue_groups {
            let campuses: Vec<&str> = group.nodes.iter().map(|n| n.campus.as_str()).collect();
            assert_eq!(campuses, ["a", "b", "c"]);
            for node in &group.nodes {
                assert!(
                    node.id
                        .starts_with(&format!("{region_name}-{}-", group.name))
                );
                for addr in [node.addr, node.admin_addr] {
                    match addr.ip() {
                        std::net::IpAddr::V4(ip) => assert_eq!(ip.octets()[..3], [127, 0, *octet]),
                        other => panic!("{other} is not a loopback IPv4 address"),
                    }
                    assert!(listeners.insert(addr), "{addr} used twice");
                }
                assert_eq!(node.data_dir, deployment.data_root.join(&node.id));
            }
        }
    }
    assert_eq!(listeners.len(), regions.len() * (2 * 3 * 2 + 3));
}

#[test]
fn one_region_example_loads() {
    let deployment = load(&examples_dir().join("one-region.toml")).expect("valid example");
    check_example(&deployment, "one-region", &[("sh", 1)]);
}

#[test]
fn three_regions_example_loads() {
    let deployment = load(&examples_dir().join("three-regions.toml")).expect("valid example");
    check_example(
        &deployment,
        "three-regions",
        &[("sh", 1), ("hk", 2), ("ca", 3)],
    );
    // Queue nodes, region processes, gateways, registry nodes, the operator.
    assert_eq!(deployment.identities().len(), 3 * 6 + 3 + 3 + 3 + 1);
    assert!(deployment.regions.iter().all(|r| r.registry.is_some()));
}

#[test]
fn load_resolves_against_the_file_directory_made_absolute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("conf");
    std::fs::create_dir(&nested).expect("mkdir");
    let text = std::fs::read_to_string(examples_dir().join("one-region.toml")).expect("example");
    let file = nested.join("deployment.toml");
    std::fs::write(&file, text).expect("write");

    let deployment = load(&file).expect("valid");
    assert!(deployment.data_root.is_absolute());
    assert_eq!(deployment.data_root, nested.join("../data/one-region"));
    assert_eq!(
        deployment.tls.cert_path("sh-g1-a"),
        nested.join("../certs/one-region/sh-g1-a.pem")
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.toml");
    let error = load(&missing).expect_err("missing");
    assert!(matches!(&error, ConfigError::Io { path, .. } if path == &missing));
    let shown = error.to_string();
    assert!(shown.contains(&missing.display().to_string()), "{shown}");
    assert!(shown.contains("check that the path exists"), "{shown}");
}

#[test]
fn errors_from_a_file_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[deployment]\nname = \n").expect("write");
    match load(&file) {
        Err(ConfigError::Syntax { path, message }) => {
            assert_eq!(path, file.display().to_string());
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }

    let text = std::fs::read_to_string(examples_dir().join("one-region.toml"))
        .expect("example")
        .replace("heartbeat_interval_ms = 1000", "heartbeat_interval_ms = 0");
    std::fs::write(&file, text).expect("write");
    let error = load(&file).expect_err("invalid");
    assert!(
        error
            .to_string()
            .starts_with(&format!("config {} has 1 problem:", file.display())),
        "{error}"
    );
}
