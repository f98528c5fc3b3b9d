//! `critical` reads: a replica answers once it has applied at least `min_version`, waiting (up to
//! `critical_read_max_wait_ms`) for replication across a slow WAN; past the bound the client is
//! sent home.

mod gateway_common;
mod regions_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use gateway_common::{call, code, logs, metric, start};
use homeport_gateway::HOME_REGION_HEADER;
use homeport_integration::GatewaySetup;
use homeport_integration::wan::LinkConditions;
use hyper::header::LOCATION;
use hyper::{Method, StatusCode};

const REGIONS: [&str; 2] = ["sh", "hk"];
/// One-way WAN delay: replication to hk takes at least this long after the write commits.
const WAN_DELAY_MS: u64 = 150;
/// Far above the WAN delay, so a critical read never gives up on a change that is on its way.
const CRITICAL_WAIT_MS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_reads_wait_for_replication_then_go_home() -> Result<()> {
    let wan = regions_common::uniform_wan(
        0xc417,
        LinkConditions {
            delay_ms: WAN_DELAY_MS,
            jitter_ms: 5,
            ..LinkConditions::default()
        },
    );
    let setup = GatewaySetup {
        settings: vec![format!("critical_read_max_wait_ms = {CRITICAL_WAIT_MS}")],
        region_toml: Vec::new(),
    };
    let cluster = start(&REGIONS, &setup, Some(&wan)).await?;
    let logs = || logs(&cluster, &REGIONS);
    let sh = cluster.gateway_url("sh")?;
    let hk = cluster.gateway_url("hk")?;
    let writer = cluster.ticket("sh-1")?;
    let reader = cluster.ticket("hk-1")?;
    let path = "/v1/users/sh-1/records/status";

    for version in 1..=3u64 {
        let value = format!("v{version}");
        let r = call(
            Method::PUT,
            &format!("{sh}{path}"),
            Some(&writer),
            &[],
            &value,
        )
        .await?;
        ensure!(
            r.etag() == Some(version) && r.status.is_success(),
            "write {version}: {r:?}{}",
            logs()
        );
        // At once, at the replica: the answer must be this version or newer, served locally.
        let url = format!("{hk}{path}?consistency=critical&min_version={version}");
        let r = call(Method::GET, &url, Some(&reader), &[], "").await?;
        ensure!(
            r.status == StatusCode::OK && r.etag() == Some(version) && r.text() == value,
            "critical read of version {version} at hk: {r:?}{}",
            logs()
        );
        ensure!(r.header(HOME_REGION_HEADER) == Some("sh"), "{r:?}");
    }
    ensure!(
        metric(&cluster, "hk", "homeport_gateway_critical_reads_total").await? >= 3.0,
        "critical reads are counted"
    );

    // A version that does not exist: the replica waits its bound, then sends the client home.
    let started = Instant::now();
    let url = format!("{hk}{path}?consistency=critical&min_version=99");
    let r = call(Method::GET, &url, Some(&reader), &[], "").await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT
            && r.header(LOCATION.as_str())
                == Some(&format!("{sh}{path}?consistency=critical&min_version=99")),
        "past the bound: {r:?}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(CRITICAL_WAIT_MS),
        "the replica waited its whole bound first ({:?})",
        started.elapsed()
    );

    // min_version is required.
    let r = call(
        Method::GET,
        &format!("{hk}{path}?consistency=critical"),
        Some(&reader),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::BAD_REQUEST && code(&r) == "min_version_required",
        "{r:?}"
    );
    Ok(())
}
