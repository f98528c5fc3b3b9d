//! FastReject at 10x capacity: admitted requests keep their latency, the rest get 503 with
//! Retry-After quickly, and no work is done for a refused request.

mod gateway_common;
mod regions_common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use gateway_common::{Backend, call, code, logs, metric, start};
use homeport_integration::GatewaySetup;
use hyper::{Method, StatusCode};

const MAX_CONCURRENCY: usize = 4;
const MAX_QUEUED: usize = 4;
const QUEUE_DEADLINE_MS: u64 = 300;
/// What each request costs at the upstream.
const SERVICE_MS: u64 = 500;
/// Ten times what the gateway holds at once (slots + queue).
const OFFERED: usize = 10 * (MAX_CONCURRENCY + MAX_QUEUED);
/// Bounds with wide margins for a busy machine; without FastReject the last of the 80 requests
/// would wait 80 / 4 * 500 ms = 10 s.
const ADMITTED_MAX_MS: u64 = 4_000;
const REJECTED_MAX_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_ten_times_capacity_admitted_requests_keep_their_latency() -> Result<()> {
    let backend = Backend::start().await?;
    let setup = GatewaySetup {
        settings: vec![
            format!("max_concurrency = {MAX_CONCURRENCY}"),
            format!("max_queued_requests = {MAX_QUEUED}"),
            format!("queue_deadline_ms = {QUEUE_DEADLINE_MS}"),
            "retry_after_secs = 2".into(),
        ],
        region_toml: vec![(
            "sh".into(),
            format!(
                "[[regions.upstreams]]\nprefix = \"/svc/\"\nurl = \"{}\"",
                backend.url()
            ),
        )],
    };
    let cluster = start(&["sh"], &setup, None).await?;
    let gw = cluster.gateway_url("sh")?;
    let t = cluster.ticket("sh-1")?;
    let url = format!("{gw}/svc/slow?ms={SERVICE_MS}");

    let mut tasks = Vec::new();
    for _ in 0..OFFERED {
        let (url, t) = (url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = call(Method::GET, &url, Some(&t), &[], "").await;
            (r, started.elapsed())
        }));
    }
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for task in tasks {
        let (r, took) = task.await?;
        let r = r?;
        match r.status {
            StatusCode::OK => ok.push(took),
            StatusCode::SERVICE_UNAVAILABLE => {
                ensure!(
                    code(&r) == "overloaded" && r.header("retry-after") == Some("2"),
                    "a refusal names itself and says when to retry: {r:?}"
                );
                rejected.push(took);
            }
            other => anyhow::bail!("unexpected {other}: {r:?}{}", logs(&cluster, &["sh"])),
        }
    }
    ensure!(
        ok.len() >= MAX_CONCURRENCY,
        "at least one round was admitted: {} ok, {} rejected",
        ok.len(),
        rejected.len()
    );
    ensure!(
        rejected.len() >= OFFERED / 2,
        "most of 10x capacity is refused: {} ok, {} rejected",
        ok.len(),
        rejected.len()
    );
    let slowest_ok = ok.iter().max().copied().unwrap_or_default();
    ensure!(
        slowest_ok < Duration::from_millis(ADMITTED_MAX_MS),
        "admitted requests kept their latency: slowest {slowest_ok:?}"
    );
    let slowest_refusal = rejected.iter().max().copied().unwrap_or_default();
    ensure!(
        slowest_refusal < Duration::from_millis(REJECTED_MAX_MS),
        "refusals are fast: slowest {slowest_refusal:?}"
    );
    // Refused requests never reached the upstream.
    let served = backend.requests.load(Ordering::Relaxed);
    ensure!(
        served == ok.len() as u64,
        "the upstream saw {served} requests for {} admitted",
        ok.len()
    );
    let admitted = metric(&cluster, "sh", "homeport_gateway_admitted_total").await?;
    let refused = metric(&cluster, "sh", "homeport_gateway_rejected_total").await?;
    ensure!(
        admitted >= ok.len() as f64 && refused >= rejected.len() as f64,
        "metrics: admitted {admitted}, rejected {refused}"
    );
    ensure!(
        metric(&cluster, "sh", "homeport_gateway_queue_seconds_count").await? >= 1.0,
        "queue time is measured"
    );
    Ok(())
}
