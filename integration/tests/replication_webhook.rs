//! The webhook sink end to end: region hk hands other regions' changes to an external HTTP
//! service instead of its store. What an operator of that service relies on: the JSON body and
//! `Idempotency-Key` the sink documents, dead letters after `max_attempts` failures that do not
//! stop replay, listing and re-driving them (HTTP and `homeport dead-letters`), and at-least-once
//! delivery across a `kill -9` of the region process.

mod regions_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use homeport_config::{SinkConfig, WebhookSink};
use homeport_integration::Cluster;
use homeport_integration::wan::Wan;
use hyper::Method;
use regions_common::{
    Api, REGIONS, WAIT_MS, Want, bin, eventually, fast_setup, process, region_logs, restart_region,
    spec,
};
use serde_json::Value;

/// The region whose replay workers deliver to the webhook; sh and ca keep the store sink.
const SINK_REGION: &str = "hk";
/// Attempts per change before it is dead-lettered: small, so a failing service dead-letters fast.
const MAX_ATTEMPTS: u32 = 3;
const BACKOFF_BASE_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 50;
const SINK_TIMEOUT_MS: u64 = 1_000;
/// Path of the test service's endpoint.
const SERVICE_PATH: &str = "/changes";
/// Longest one `homeport-it dead-letters ...` command may take (a redrive retries with backoff).
const COMMAND_TIMEOUT_MS: u64 = 30_000;
/// Heartbeat lag of sh → hk once replay has moved past the dead letters: sh heartbeats every
/// 200 ms, so anything near this bound means replay is stuck, not slow.
const MAX_LAG_AFTER_DEAD_LETTERS_S: f64 = 5.0;

/// One POST the service received.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: Option<String>,
    version_header: Option<String>,
    content_type: Option<String>,
    /// `Value::Null` when the body is not JSON (then `raw` shows what it was).
    body: Value,
    raw: String,
    /// Whether the service answered 200 (true) or 500 (false).
    accepted: bool,
}

impl Received {
    /// (uid, key, version) of the change in a per-change body.
    fn change(&self) -> Option<(String, String, u64)> {
        Some((
            self.body["uid"].as_str()?.to_owned(),
            self.body["key"].as_str()?.to_owned(),
            self.body["version"].as_u64()?,
        ))
    }
}

#[derive(Default)]
struct ServiceState {
    /// While set, every request is answered 500 (and still recorded).
    failing: AtomicBool,
    received: Mutex<Vec<Received>>,
}

/// The external service: accepts (200) or fails (500) on command, and records every request.
struct Service {
    state: Arc<ServiceState>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let failing = state.failing.load(Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received = Received {
        idempotency_key: header("idempotency-key"),
        version_header: header("homeport-version"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: String::from_utf8_lossy(&body).into_owned(),
        accepted: !failing,
    };
    lock(&state.received).push(received);
    if failing {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the test service is failing on purpose",
        )
    } else {
        (StatusCode::OK, "ok")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    async fn start() -> Result<Self> {
        let state = Arc::new(ServiceState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}{SERVICE_PATH}", listener.local_addr()?);
        let app = Router::new()
            .route(SERVICE_PATH, post(receive))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the test webhook service stopped: {e}");
            }
        });
        Ok(Self { state, url, task })
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Requests whose body is the change (uid, key, version).
    fn requests_for(&self, uid: &str, key: &str, version: u64) -> Vec<Received> {
        let want = (uid.to_owned(), key.to_owned(), version);
        self.received()
            .into_iter()
            .filter(|r| r.change().as_ref() == Some(&want))
            .collect()
    }

    /// Waits until the service has accepted the change; returns every request carrying it.
    async fn wait_accepted(
        &self,
        cluster: &Cluster,
        uid: &str,
        key: &str,
        version: u64,
    ) -> Result<Vec<Received>> {
        let what = format!("the service to accept {uid}/{key} version {version}");
        let got = eventually(&what, WAIT_MS, || async {
            let reqs = self.requests_for(uid, key, version);
            if reqs.iter().any(|r| r.accepted) {
                Ok(reqs)
            } else {
                Err(format!("{} requests for it, none accepted", reqs.len()))
            }
        })
        .await;
        got.map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))
    }
}

/// A cluster whose region hk delivers to `service_url`; the WAN (zero delay) only exists so that
/// every region process reads a file of its own, of which hk's gets the sink.
struct WebhookCluster {
    cluster: Cluster,
    api: Api,
    /// The deployment file hk's process reads (and the CLI is pointed at).
    hk_config: PathBuf,
    _wan: Wan,
}

/// Adds the `[regions.sink]` table to region `region`'s block of a deployment file, before the
/// region's first queue group (a table after `[[regions.queue_groups]]` would belong to the group).
fn add_webhook_sink(text: &str, region: &str, service_url: &str) -> Result<String> {
    let marker = format!("[[regions]]\nname = \"{region}\"\n");
    let start = text
        .find(&marker)
        .with_context(|| format!("no `{marker}` in the deployment file:\n{text}"))?;
    let groups_at = start
        + text[start..]
            .find("[[regions.queue_groups]]")
            .with_context(|| format!("region {region} has no queue group:\n{text}"))?;
    let sink = format!(
        "[regions.sink]\nkind = \"webhook\"\nurl = \"{service_url}\"\nper_change = true\n\
         max_attempts = {MAX_ATTEMPTS}\nbackoff_base_ms = {BACKOFF_BASE_MS}\n\
         backoff_max_ms = {BACKOFF_MAX_MS}\ntimeout_ms = {SINK_TIMEOUT_MS}\n\n"
    );
    let mut out = text.to_owned();
    out.insert_str(groups_at, &sink);
    Ok(out)
}

async fn start_with_webhook(service_url: &str, wan_seed: u64) -> Result<WebhookCluster> {
    let cluster = Cluster::with_regions(bin(), &spec(1), &fast_setup())?;
    cluster.start_all()?;
    let endpoint = cluster.endpoint(homeport_config::OPERATOR_IDENTITY)?;
    cluster.wait_up(&endpoint, &cluster.node_ids()).await?;
    let wan = Wan::new(wan_seed);
    cluster.route_through(&wan).await?;

    let hk_config = cluster.region_config(SINK_REGION);
    ensure!(
        hk_config != cluster.config_path,
        "route_through must give hk a file of its own"
    );
    let text = std::fs::read_to_string(&hk_config)?;
    std::fs::write(
        &hk_config,
        add_webhook_sink(&text, SINK_REGION, service_url)?,
    )?;
    let loaded = homeport_config::load(&hk_config)
        .map_err(|e| anyhow::anyhow!("the edited config of hk does not validate: {e}"))?;
    let sink = loaded
        .region(SINK_REGION)
        .map(|r| r.sink.clone())
        .context("hk vanished from its config")?;
    let want = SinkConfig::Webhook(WebhookSink {
        url: service_url.to_owned(),
        per_change: true,
        max_attempts: MAX_ATTEMPTS,
        backoff_base_ms: BACKOFF_BASE_MS,
        backoff_max_ms: BACKOFF_MAX_MS,
        timeout_ms: SINK_TIMEOUT_MS,
    });
    ensure!(
        sink == want,
        "hk's sink parsed as {sink:?}, expected {want:?}"
    );
    for r in REGIONS.iter().filter(|r| **r != SINK_REGION) {
        let other = loaded.region(r).map(|r| r.sink.clone());
        ensure!(
            other == Some(SinkConfig::Store),
            "{r} must keep the store sink: {other:?}"
        );
    }

    for r in REGIONS {
        cluster.start_region(r)?;
    }
    let api = Api::new(&cluster)?;
    for r in REGIONS {
        api.wait_up(&cluster, r).await?;
    }
    Ok(WebhookCluster {
        cluster,
        api,
        hk_config,
        _wan: wan,
    })
}

/// Runs `homeport-it dead-letters <verb> --config <config> --region hk`; its stdout as JSON.
async fn dead_letters_cli(verb: &str, config: &Path) -> Result<Value> {
    let config = config.display().to_string();
    let args = [
        "dead-letters",
        verb,
        "--config",
        &config,
        "--region",
        SINK_REGION,
    ];
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env("HOMEPORT_LOG", "warn")
        .kill_on_drop(true);
    let out: Output = tokio::time::timeout(Duration::from_millis(COMMAND_TIMEOUT_MS), cmd.output())
        .await
        .with_context(|| {
            format!(
                "`homeport-it {}` did not finish in {COMMAND_TIMEOUT_MS} ms",
                args.join(" ")
            )
        })??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "`homeport-it {}` exited {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        args.join(" "),
        out.status
    );
    serde_json::from_str(&stdout)
        .with_context(|| format!("`homeport-it {}` printed no JSON: {stdout}", args.join(" ")))
}

/// `GET /v1/admin/dead-letters` of hk.
async fn dead_letters_http(api: &Api) -> Result<Value> {
    let url = format!("{}/v1/admin/dead-letters", api.url(SINK_REGION));
    let r = regions_common::http(Method::GET, &url, &[], Bytes::new()).await?;
    ensure!(r.status == StatusCode::OK, "GET {url}: {r:?}");
    r.json()
}

/// (uid, key, version) → entry id of each listed dead letter.
fn letters_of(listing: &Value) -> BTreeMap<(String, String, u64), String> {
    listing["letters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| {
            Some((
                (
                    l["uid"].as_str()?.to_owned(),
                    l["key"].as_str()?.to_owned(),
                    l["version"].as_u64()?,
                ),
                l["entry_id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Checks what the sink documents for a per-change request: a JSON object naming the change, its
/// value in standard base64, and `Idempotency-Key` = `entry_id` = `<origin>/<hex>/<sequence>`.
fn check_request(r: &Received, value_base64: &str, deleted: bool) -> Result<String> {
    let key = r
        .idempotency_key
        .clone()
        .with_context(|| format!("no Idempotency-Key: {r:?}"))?;
    ensure!(
        r.body["entry_id"].as_str() == Some(key.as_str()),
        "Idempotency-Key must be the body's entry_id: {r:?}"
    );
    let parts: Vec<&str> = key.split('/').collect();
    ensure!(
        parts.len() == 3
            && parts[0] == "sh"
            && !parts[1].is_empty()
            && parts[1].chars().all(|c| c.is_ascii_hexdigit())
            && parts[2].parse::<u64>().is_ok(),
        "an entry id is <origin>/<incarnation hex>/<sequence>: {key:?}"
    );
    ensure!(
        r.content_type.as_deref() == Some("application/json"),
        "content type: {r:?}"
    );
    ensure!(
        r.version_header
            .as_deref()
            .map(str::parse::<u64>)
            .and_then(Result::ok)
            == r.body["version"].as_u64(),
        "Homeport-Version must be the body's version: {r:?}"
    );
    ensure!(
        r.body["value"].as_str() == Some(value_base64)
            && r.body["deleted"].as_bool() == Some(deleted)
            && r.body["home_region"].as_str() == Some("sh")
            && r.body["commit_unix_ms"].as_u64().is_some_and(|t| t > 0),
        "body {} (raw {:?}) should carry value {value_base64:?}, deleted {deleted}",
        r.body,
        r.raw
    );
    Ok(key)
}

/// Every request carrying one change must use one Idempotency-Key (an entry id names a change
/// forever); returns it.
fn single_key(reqs: &[Received]) -> Result<String> {
    let keys: BTreeSet<&str> = reqs
        .iter()
        .filter_map(|r| r.idempotency_key.as_deref())
        .collect();
    ensure!(
        keys.len() == 1 && reqs.iter().all(|r| r.idempotency_key.is_some()),
        "one change, one Idempotency-Key; got {keys:?} over {} requests",
        reqs.len()
    );
    Ok(keys.into_iter().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_delivers_dead_letters_and_redrives() -> Result<()> {
    let service = Service::start().await?;
    let wc = start_with_webhook(&service.url, 0x3eb_400c).await?;
    let (cluster, api) = (&wc.cluster, &wc.api);

    // (1) A write at sh reaches hk's webhook, not hk's store; ca (store sink) applies it.
    let r = api.put("sh", "sh-1", "profile", "hello", &[]).await?;
    ensure!(
        r.status == StatusCode::CREATED && r.etag() == Some(1),
        "PUT: {r:?}"
    );
    let reqs = service.wait_accepted(cluster, "sh-1", "profile", 1).await?;
    for req in &reqs {
        check_request(req, "aGVsbG8=", false)?;
    }
    single_key(&reqs)?;
    api.wait_record(cluster, "ca", "sh-1", "profile", Want::Value(1, "hello"))
        .await?;
    let at_hk = api.get(SINK_REGION, "sh-1", "profile").await?;
    ensure!(
        at_hk.status == StatusCode::NOT_FOUND && at_hk.etag().is_none(),
        "with a webhook sink hk's store must not hold sh's record: {at_hk:?}"
    );
    // A delete reaches the service as `deleted` with an empty value.
    let r = api.delete("sh", "sh-1", "profile", &[]).await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "DELETE: {r:?}"
    );
    for req in &service.wait_accepted(cluster, "sh-1", "profile", 2).await? {
        check_request(req, "", true)?;
    }
    let empty = dead_letters_http(api).await?;
    ensure!(
        empty["count"] == 0 && letters_of(&empty).is_empty(),
        "nothing failed yet: {empty}"
    );

    // (2) The service fails: later changes are dead-lettered after MAX_ATTEMPTS, and replay goes on.
    service.set_failing(true);
    let failing_writes = [("sh-2", "a", "first"), ("sh-2", "b", "second")];
    for (uid, key, value) in failing_writes {
        let r = api.put("sh", uid, key, value, &[]).await?;
        ensure!(r.status == StatusCode::CREATED, "PUT {uid}/{key}: {r:?}");
    }
    let want: BTreeSet<(String, String, u64)> = failing_writes
        .iter()
        .map(|(u, k, _)| (u.to_string(), k.to_string(), 1))
        .collect();
    let listing = eventually("hk to dead-letter both changes", WAIT_MS, || async {
        let l = dead_letters_http(api).await.map_err(|e| format!("{e:#}"))?;
        let got: BTreeSet<_> = letters_of(&l).into_keys().collect();
        if got == want && l["count"] == want.len() as u64 {
            Ok(l)
        } else {
            Err(l.to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))?;
    let dead_lettered_at_ms = homeport_queue::entry::now_unix_ms();
    let letters = letters_of(&listing);
    for l in listing["letters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let (uid, key) = (
            l["uid"].as_str().unwrap_or_default(),
            l["key"].as_str().unwrap_or_default(),
        );
        let reqs = service.requests_for(uid, key, 1);
        let first_key = single_key(&reqs)?;
        ensure!(
            l["entry_id"].as_str() == Some(first_key.as_str()),
            "the dead letter keeps the change's entry id {first_key}: {l}"
        );
        // Every attempt is counted, and none got through.
        ensure!(
            reqs.iter().all(|r| !r.accepted)
                && l["attempts"].as_u64() == Some(reqs.len() as u64)
                && reqs.len() >= MAX_ATTEMPTS as usize,
            "{uid}/{key}: dead letter {l} after {} failed requests (max_attempts {MAX_ATTEMPTS})",
            reqs.len()
        );
        ensure!(
            l["deleted"] == false
                && l["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("500") && e.contains("failing on purpose")),
            "the dead letter says why: {l}"
        );
    }
    let cli_listing = dead_letters_cli("list", &wc.hk_config).await?;
    ensure!(
        letters_of(&cli_listing) == letters && cli_listing["count"] == letters.len() as u64,
        "`dead-letters list` must show what the API shows: {cli_listing} vs {listing}"
    );
    // Replay moved past the dead letters: hk takes in sh's heartbeats written after them, and
    // ca (store sink) is not held up either.
    let row = eventually(
        "hk to replay sh's heartbeats past the dead letters",
        WAIT_MS,
        || async {
            let row = api
                .lag(SINK_REGION, "sh")
                .await
                .map_err(|e| format!("{e:#}"))?;
            let heartbeat_ms = row["last_heartbeat_origin_unix_ms"].as_u64().unwrap_or(0);
            let lag_s = row["lag_seconds"].as_f64().unwrap_or(f64::INFINITY);
            if heartbeat_ms > dead_lettered_at_ms && lag_s <= MAX_LAG_AFTER_DEAD_LETTERS_S {
                Ok(row)
            } else {
                Err(row.to_string())
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))?;
    ensure!(row["has_heartbeat"] == true, "lag row: {row}");
    // Replay is past every change so far (one queue group: heartbeats and changes are in order),
    // and none of them went to hk's store: not the record, not its tombstone.
    let at_hk = api.get(SINK_REGION, "sh-1", "profile").await?;
    ensure!(
        at_hk.status == StatusCode::NOT_FOUND && at_hk.etag().is_none(),
        "hk's store must hold neither sh's record nor its tombstone: {at_hk:?}"
    );
    let digest = api.digest(SINK_REGION).await?;
    ensure!(digest["records"] == 0, "hk's store must be empty: {digest}");
    api.wait_record(cluster, "ca", "sh-2", "b", Want::Value(1, "second"))
        .await?;

    // (3) The service is fixed: new changes flow again, and a redrive delivers the dead letters
    // under the Idempotency-Key of their first attempts.
    service.set_failing(false);
    let r = api.put("sh", "sh-2", "c", "third", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "PUT sh-2/c: {r:?}");
    service.wait_accepted(cluster, "sh-2", "c", 1).await?;
    ensure!(
        dead_letters_http(api).await?["count"] == letters.len() as u64,
        "dead letters stay until re-driven"
    );
    let redriven = dead_letters_cli("redrive", &wc.hk_config).await?;
    ensure!(
        redriven["delivered"] == letters.len() as u64
            && redriven["still_failing"] == 0
            && redriven["remaining"] == 0,
        "redrive: {redriven}"
    );
    let values = BTreeMap::from([("a", "Zmlyc3Q="), ("b", "c2Vjb25k")]);
    for ((uid, key, version), entry_id) in &letters {
        let reqs = service.requests_for(uid, key, *version);
        let accepted: Vec<&Received> = reqs.iter().filter(|r| r.accepted).collect();
        ensure!(
            !accepted.is_empty(),
            "the redrive must have delivered {uid}/{key}: {reqs:?}"
        );
        for r in &accepted {
            let value = values.get(key.as_str()).copied().unwrap_or_default();
            let k = check_request(r, value, false)?;
            ensure!(
                &k == entry_id,
                "{uid}/{key} re-driven with Idempotency-Key {k}, first sent as {entry_id}"
            );
        }
    }
    let after = dead_letters_http(api).await?;
    ensure!(
        after["count"] == 0 && letters_of(&after).is_empty(),
        "re-driven letters leave the store: {after}"
    );
    let cli_after = dead_letters_cli("list", &wc.hk_config).await?;
    ensure!(
        cli_after["count"] == 0,
        "`dead-letters list` after redrive: {cli_after}"
    );
    Ok(())
}

/// Writes of the background stream in the crash test, and how many to wait for before the kill
/// and the restart.
const STREAM_WRITES: usize = 60;
const KILL_AFTER_DELIVERED: usize = 10;
const RESTART_AFTER_MORE_WRITES: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_delivers_every_change_at_least_once_across_a_crash() -> Result<()> {
    let service = Service::start().await?;
    let wc = start_with_webhook(&service.url, 0xc4a5_400c).await?;
    let (cluster, api) = (&wc.cluster, &wc.api);

    // sh writes a stream of changes; hk is killed while it delivers them and restarted later.
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (api, done) = (api.clone(), done.clone());
        tokio::spawn(async move {
            let mut written = BTreeSet::new();
            for i in 0..STREAM_WRITES {
                let (uid, key) = (format!("sh-{}", 10 + i % 5), format!("k{}", i / 5));
                let r = api.put("sh", &uid, &key, &format!("v{i}"), &[]).await?;
                let Some(version) = r.etag().filter(|_| r.status == StatusCode::CREATED) else {
                    bail!("write {i} ({uid}/{key}) failed: {r:?}");
                };
                written.insert((uid, key, version));
                done.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(written)
        })
    };
    let accepted_changes = || -> BTreeSet<(String, String, u64)> {
        service
            .received()
            .iter()
            .filter(|r| r.accepted)
            .filter_map(Received::change)
            .collect()
    };
    eventually("hk to deliver part of the stream", WAIT_MS, || async {
        let n = accepted_changes().len();
        if n >= KILL_AFTER_DELIVERED {
            Ok(())
        } else {
            Err(format!("{n} delivered"))
        }
    })
    .await?;
    cluster.kill_node(&process(SINK_REGION))?;
    let written_at_kill = done.load(Ordering::SeqCst);
    let restart_at = (written_at_kill + RESTART_AFTER_MORE_WRITES).min(STREAM_WRITES);
    eventually("sh to take writes while hk is down", WAIT_MS, || async {
        let d = done.load(Ordering::SeqCst);
        if d >= restart_at {
            Ok(())
        } else {
            Err(format!("{d} written"))
        }
    })
    .await?;
    restart_region(cluster, SINK_REGION).await?;
    let written = writer.await??;
    ensure!(written.len() == STREAM_WRITES, "{} writes", written.len());

    let missing = eventually("every change to reach the service", WAIT_MS, || async {
        let got = accepted_changes();
        let missing: Vec<_> = written.difference(&got).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} missing: {missing:?}", missing.len()))
        }
    })
    .await;
    missing.map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))?;

    // Deduplicated by Idempotency-Key, the service holds each change exactly once: one key per
    // change, one change per key (a duplicate after the restart is fine, a renamed one is not).
    let mut by_key: BTreeMap<String, BTreeSet<(String, String, u64)>> = BTreeMap::new();
    for r in service.received().iter().filter(|r| r.accepted) {
        let key = r
            .idempotency_key
            .clone()
            .with_context(|| format!("no Idempotency-Key: {r:?}"))?;
        ensure!(
            r.body["entry_id"].as_str() == Some(key.as_str()),
            "Idempotency-Key must be the body's entry_id: {r:?}"
        );
        let change = r.change().with_context(|| format!("not a change: {r:?}"))?;
        by_key.entry(key).or_default().insert(change);
    }
    ensure!(
        by_key.values().all(|c| c.len() == 1),
        "one Idempotency-Key named different changes: {by_key:?}"
    );
    let deduplicated: BTreeSet<_> = by_key.values().flatten().cloned().collect();
    ensure!(
        deduplicated == written && by_key.len() == written.len(),
        "{} keys for {} changes written; every change must have exactly one key",
        by_key.len(),
        written.len()
    );
    let deliveries = service.received().iter().filter(|r| r.accepted).count();
    eprintln!(
        "{} changes, {deliveries} accepted deliveries ({} duplicates after the crash)",
        written.len(),
        deliveries - written.len()
    );
    let dead = dead_letters_http(api).await?;
    ensure!(
        dead["count"] == 0,
        "a healthy service dead-letters nothing: {dead}"
    );
    let log = cluster.node_log(&process(SINK_REGION));
    ensure!(
        log.matches("replay worker started").count() >= 4,
        "hk's replay workers (2 sources) should have started twice:\n{log}"
    );
    Ok(())
}
