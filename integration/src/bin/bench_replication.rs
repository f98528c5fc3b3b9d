//! Replication benchmark: end-to-end lag at fixed write rates, and catch-up after a backlog.
//!
//! Three regions (`sh`, `hk`, `ca`) of real processes (queue nodes and region processes) on
//! loopback, with the userspace WAN emulator between regions (`--delay-ms` one way, both
//! directions, every pair). Every write is homed in `sh`; lag is what `hk` and `ca` see.
//!
//! - **Lag at a fixed rate**: an open-loop load generator issues `PUT`s at `sh` at exactly the
//!   target rate (each request starts at its scheduled time whatever the earlier ones do, over as
//!   many HTTP/1.1 keep-alive connections as that takes), so a slow server shows up as latency
//!   and a missed rate, not as a politely slower client. Each level runs on a fresh deployment so
//!   a level's replica metrics hold that level alone. Replication lag is the replicas' own
//!   `homeport_replay_apply_delay_seconds` (applied time minus home's write time, every change),
//!   cross-checked by probes: a few writes per second are read back at each replica until visible.
//! - **Highest sustainable rate**: the highest rate at which the achieved rate is at least 95% of
//!   the target and the replicas' backlog does not grow (see [`judge`]).
//! - **Catch-up**: stop `region-hk`, write `--backlog` changes at `sh` as fast as it takes them,
//!   start `region-hk` again, and time until it has applied all of them.
//!
//! Every process is killed at the end, on error, on Ctrl-C and on panic (the clusters' `Drop`),
//! and their temp dirs are removed. Run it with `scripts/bench-replication.sh`. The report goes
//! to stdout (markdown), progress to stderr.

use homeport_integration::bench_claims::scrape_metrics;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use homeport_integration::wan::{LinkConditions, Wan};
use homeport_integration::{Cluster, ClusterSpec, RegionSetup};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The regions; every write is homed in the first, lag is measured at the others.
const HOME: &str = "sh";
const REPLICAS: [&str; 2] = ["hk", "ca"];
/// The replica stopped for the catch-up measurement.
const CATCHUP_REGION: &str = "hk";
/// Users the writes are spread over (`sh-0` .. `sh-9999`); each write gets a record of its own
/// (key `k<n>`), so every replicated change is applied (never skipped as older) and a replica's
/// `applied_changes` counts exactly the writes it has.
const USERS: u64 = 10_000;
/// Largest latency the histograms hold (microseconds); anything slower is clamped.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Deadline of one HTTP request: a write waits up to `append_timeout_ms` (5 s) for the queue.
const HTTP_TIMEOUT_MS: u64 = 15_000;
/// How long processes get to start and replication to connect before a level is abandoned.
const START_TIMEOUT_MS: u64 = 60_000;
/// Interval of the `/v1/status` polls that follow the replicas' backlog during a level.
const STATUS_POLL_MS: u64 = 1_000;
/// Interval of the status polls while waiting for a drain or a catch-up.
const PROGRESS_POLL_MS: u64 = 100;
/// A probe reads its record back every this often for its first [`PROBE_FAST_FOR_MS`] ...
const PROBE_FAST_POLL_MS: u64 = 2;
const PROBE_FAST_FOR_MS: u64 = 300;
/// ... and then every this often (a lagging replica must not be flooded with reads).
const PROBE_SLOW_POLL_MS: u64 = 25;
/// A probe that has not seen its write after this long gives up (counted as timed out).
const PROBE_TIMEOUT_MS: u64 = 60_000;
/// A level is sustainable only if the achieved rate is at least this share of the target.
const MIN_ACHIEVED_SHARE: f64 = 0.95;
/// ... and the replicas' backlog grows by at most this share of the target rate per second
/// (least-squares slope over the measured window; a replica applying 98% of the writes falls
/// behind without bound) ...
const MAX_BACKLOG_GROWTH_SHARE: f64 = 0.02;
/// ... or, whatever the slope, ends the window at most this many seconds of writes behind.
const MAX_END_BACKLOG_SECS: f64 = 0.5;
/// The rate search multiplies by this while levels are sustainable ...
const SEARCH_STEP_UP: f64 = 1.5;
/// ... then bisects until the bracket is this narrow (ratio of its ends) or has had this many
/// extra levels.
const SEARCH_BRACKET_RATIO: f64 = 1.2;
const SEARCH_MAX_BISECTIONS: usize = 2;
/// Rates the search tries are rounded to this many writes/s.
const SEARCH_ROUND_TO: u64 = 250;
/// Progress of the backlog writer and the catch-up is printed this often.
const PROGRESS_PRINT_SECS: u64 = 5;

/// End-to-end replication lag at fixed write rates, and catch-up after a backlog (3 regions).
#[derive(Debug, Parser)]
#[command(name = "bench-replication")]
struct Args {
    /// Target write rates (writes/s at `sh`), each measured on a fresh deployment.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u64>,
    /// Do not search for the highest sustainable rate beyond `--rates`.
    #[arg(long)]
    no_search: bool,
    /// Highest rate the search tries.
    #[arg(long, default_value_t = 60_000)]
    max_rate: u64,
    /// Measured window of each level (the replicas' summaries cover about 40 s: keep
    /// warm-up + duration + drain under that, or the lag quantiles cover only the end).
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Load at the target rate before the measured window (its writes are in the replicas' lag
    /// summaries too, but not in the rate and HTTP latency figures).
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Runs of each level; the report gives medians.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// One-way emulated delay between every pair of regions, both directions.
    #[arg(long, default_value_t = 30)]
    delay_ms: u64,
    /// Queue groups per region.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Size of each written value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Requests the load generator keeps in flight at most; a request due while this many are
    /// outstanding is not sent (counted as unsent: the rate is missed).
    #[arg(long, default_value_t = 4_096)]
    max_in_flight: usize,
    /// Writes per second read back at each replica until visible (a cross-check of the
    /// replicas' own lag metric). 0 turns probes off.
    #[arg(long, default_value_t = 5)]
    probes_per_sec: u64,
    /// After the load stops, how long the replicas get to apply everything.
    #[arg(long, default_value_t = 120)]
    drain_timeout_secs: u64,
    /// Changes written at `sh` while `region-hk` is stopped, for the catch-up measurement.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Requests in flight while writing the backlog (a closed loop: as fast as `sh` takes them).
    #[arg(long, default_value_t = 256)]
    backlog_concurrency: usize,
    /// How long `region-hk` gets to catch up before the measurement gives up.
    #[arg(long, default_value_t = 1_800)]
    catchup_timeout_secs: u64,
    /// Skip the catch-up measurement.
    #[arg(long)]
    skip_catchup: bool,
    /// Skip the lag measurements (catch-up only).
    #[arg(long)]
    skip_lag: bool,
    /// Extra `[queue]` line (repeatable), e.g. `max_in_flight_batches=4`: for finding where time goes.
    #[arg(long = "queue-setting", value_name = "KEY=VALUE")]
    queue_settings: Vec<String>,
    /// Extra `[replay]` line (repeatable), e.g. `batch_max_entries=4096`.
    #[arg(long = "replay-setting", value_name = "KEY=VALUE")]
    replay_settings: Vec<String>,
    /// Extra `[store]` line (repeatable), e.g. `max_batch_requests=4096`.
    #[arg(long = "store-setting", value_name = "KEY=VALUE")]
    store_settings: Vec<String>,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        ensure!(self.repeats > 0, "--repeats must be at least 1");
        ensure!(
            self.rates.iter().all(|&r| r > 0),
            "--rates must be positive writes/s, e.g. 1000,5000"
        );
        ensure!(
            !self.rates.is_empty() || !self.no_search || self.skip_lag,
            "--rates is empty and --no-search is set: nothing to measure"
        );
        ensure!(
            self.delay_ms <= 10_000,
            "--delay-ms {} is beyond any real WAN; use at most 10000",
            self.delay_ms
        );
        ensure!((1..=16).contains(&self.groups), "--groups must be 1..=16");
        ensure!(
            (1..=65_536).contains(&self.value_bytes),
            "--value-bytes must be 1..=65536"
        );
        ensure!(
            (1..=16_384).contains(&self.max_in_flight),
            "--max-in-flight must be 1..=16384 (each is a connection when all are busy; mind `ulimit -n`)"
        );
        ensure!(
            (1..=4_096).contains(&self.backlog_concurrency),
            "--backlog-concurrency must be 1..=4096"
        );
        ensure!(
            self.skip_catchup || self.backlog > 0,
            "--backlog must be at least 1 (or pass --skip-catchup)"
        );
        for s in self
            .queue_settings
            .iter()
            .chain(&self.replay_settings)
            .chain(&self.store_settings)
        {
            ensure!(
                s.contains('=') && !s.contains('\n'),
                "setting {s:?} is not one `key = value` TOML line, e.g. max_in_flight_batches=4"
            );
        }
        Ok(())
    }

    fn spec(&self) -> ClusterSpec {
        let mut spec = ClusterSpec {
            regions: std::iter::once(HOME)
                .chain(REPLICAS)
                .map(str::to_owned)
                .collect(),
            groups_per_region: self.groups,
            queue_settings: Vec::new(),
        };
        for q in &self.queue_settings {
            spec = spec.with(q);
        }
        spec
    }

    fn setup(&self) -> RegionSetup {
        let mut extra_toml = Vec::new();
        if !self.replay_settings.is_empty() {
            extra_toml.push(format!("[replay]\n{}", self.replay_settings.join("\n")));
        }
        if !self.store_settings.is_empty() {
            extra_toml.push(format!("[store]\n{}", self.store_settings.join("\n")));
        }
        RegionSetup { extra_toml }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("bench-replication: {e:#}");
        return ExitCode::from(2);
    }
    homeport_integration::bench_main("bench-replication", run(args))
}

// ---------------------------------------------------------------------------------------------
// The deployment under test

use homeport_integration::{BenchHttpClient as HttpClient, bench_http_client as http_client};

/// One answer, body read to the end.
struct Resp {
    status: StatusCode,
    etag: Option<u64>,
    body: Bytes,
}

async fn request(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
    timeout_ms: u64,
) -> Result<Resp> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .with_context(|| format!("building a request to {url}"))?;
    let work = async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let etag = parts
            .headers
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().trim_matches('"').parse().ok());
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Resp {
            status: parts.status,
            etag,
            body,
        })
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
        Ok(r) => r.with_context(|| url.to_owned()),
        Err(_) => bail!("{url}: no answer within {timeout_ms} ms"),
    }
}

/// The `sh` row of a replica's `GET /v1/status`.
#[derive(Debug, Clone, Copy, Default)]
struct LagRow {
    applied_changes: u64,
    entries_behind: u64,
    lag_seconds: f64,
    apply_rate_per_sec: f64,
    clock_offset_ms: f64,
    has_heartbeat: bool,
}

/// Three regions behind the WAN emulator, every process running.
struct Bed {
    /// Its drop kills every process of the deployment and removes the temp dir.
    cluster: Cluster,
    wan: Wan,
    /// The WAN relays run here, on a thread of their own, not among the load generator's
    /// thousands of request tasks: a relay that waits behind them would add delay the report
    /// would blame on replication.
    wan_runtime: Option<tokio::runtime::Runtime>,
    api: HashMap<String, String>,
    admin: HashMap<String, SocketAddr>,
    home_node_admin: Vec<SocketAddr>,
    /// Used by the status polls and the probes; the load generator has its own pool.
    client: HttpClient,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // A runtime may not be dropped (which blocks) inside another one; this does not block.
        if let Some(rt) = self.wan_runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Bed {
    async fn start(args: &Args) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("homeport-it");
        ensure!(
            bin.exists(),
            "{} not found: build it next to this program with `cargo build --release -p homeport-integration --bins`",
            bin.display()
        );
        let cluster = Cluster::with_regions(&bin, &args.spec(), &args.setup())?;
        cluster.start_all()?;
        let endpoint = cluster.endpoint(homeport_config::OPERATOR_IDENTITY)?;
        cluster.wait_up(&endpoint, &cluster.node_ids()).await?;
        drop(endpoint);
        let wan = Wan::new(0x5eed);
        let regions: Vec<&str> = std::iter::once(HOME).chain(REPLICAS).collect();
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                wan.set_both(a, b, LinkConditions::delay(args.delay_ms));
            }
        }
        let wan_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wan")
            .enable_all()
            .build()
            .context("starting the WAN emulator's runtime")?;
        // The relays are spawned on the runtime that creates them.
        tokio::task::block_in_place(|| wan_runtime.block_on(cluster.route_through(&wan)))?;
        let mut api = HashMap::new();
        let mut admin = HashMap::new();
        for r in &regions {
            api.insert(r.to_string(), cluster.api_url(r)?);
            let p = cluster
                .deployment
                .region(r)
                .and_then(|x| x.process.as_ref())
                .with_context(|| format!("region {r} has no process"))?;
            admin.insert(r.to_string(), p.admin_addr);
        }
        let home_node_admin = cluster
            .deployment
            .nodes()
            .filter(|n| n.region.name == HOME)
            .map(|n| n.node.admin_addr)
            .collect();
        let bed = Bed {
            cluster,
            wan,
            wan_runtime: Some(wan_runtime),
            api,
            admin,
            home_node_admin,
            client: http_client(),
        };
        for r in &regions {
            bed.cluster.start_region(r)?;
        }
        for r in REPLICAS {
            bed.wait_replicating(r).await?;
        }
        Ok(bed)
    }

    fn api(&self, region: &str) -> &str {
        self.api.get(region).map(String::as_str).unwrap_or_default()
    }

    /// Waits until `region` answers and has a heartbeat from home: its replay of `sh` runs.
    async fn wait_replicating(&self, region: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.lag_row(region).await {
                Ok(row) if row.has_heartbeat => return Ok(()),
                Ok(row) => last = format!("{row:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(PROGRESS_POLL_MS)).await;
        }
        let log = self
            .cluster
            .node_log(&homeport_config::region_identity(region));
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "region {region} did not start replicating {HOME} within {START_TIMEOUT_MS} ms; last: {last}\n--- end of its log ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// The `sh` row of `region`'s lag table. A fresh connection each time, so a restarted region
    /// process never meets a pooled connection to its dead predecessor.
    async fn lag_row(&self, region: &str) -> Result<LagRow> {
        let url = format!("{}/v1/status", self.api(region));
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let r = request(&client, Method::GET, &url, Bytes::new(), 5_000).await?;
        ensure!(r.status == StatusCode::OK, "GET {url}: {}", r.status);
        let v: Value = serde_json::from_slice(&r.body).with_context(|| format!("GET {url}"))?;
        let row = v["lags"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["source"] == HOME))
            .with_context(|| format!("GET {url}: no lag row for source {HOME} in {v}"))?;
        Ok(LagRow {
            applied_changes: row["applied_changes"].as_u64().unwrap_or(0),
            entries_behind: row["entries_behind"].as_u64().unwrap_or(0),
            lag_seconds: row["lag_seconds"].as_f64().unwrap_or(f64::NAN),
            apply_rate_per_sec: row["apply_rate_per_sec"].as_f64().unwrap_or(0.0),
            clock_offset_ms: row["clock_offset_ms"].as_f64().unwrap_or(0.0),
            has_heartbeat: row["has_heartbeat"].as_bool().unwrap_or(false),
        })
    }

    /// Waits until every replica has applied `target` changes (or the deadline passes); returns
    /// how long that took, or `None` on timeout.
    async fn drain(&self, target: u64, timeout_secs: u64) -> Option<Duration> {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(timeout_secs);
        let mut done = [false; REPLICAS.len()];
        while Instant::now() < deadline {
            for (i, r) in REPLICAS.iter().enumerate() {
                if !done[i] {
                    done[i] =
                        matches!(self.lag_row(r).await, Ok(row) if row.applied_changes >= target);
                }
            }
            if done.iter().all(|d| *d) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(PROGRESS_POLL_MS)).await;
        }
        None
    }
}

fn record_url(api: &str, seq: u64, key_prefix: &str) -> String {
    format!(
        "{api}/v1/users/{HOME}-{}/records/{key_prefix}{}",
        seq % USERS,
        seq / USERS
    )
}

fn value_of(bytes: usize) -> Bytes {
    Bytes::from(
        (0..bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

fn record_us(h: &Mutex<Histogram<u64>>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    if let Ok(mut h) = h.lock() {
        h.saturating_record(us);
    }
}

// ---------------------------------------------------------------------------------------------
// Open-loop load at a fixed rate

/// What the load generator's request tasks share.
struct Load {
    client: HttpClient,
    api: String,
    value: Bytes,
    max_in_flight: usize,
    window_start: Instant,
    window_end: Instant,
    in_flight: AtomicUsize,
    /// Most requests in flight at once: about the number of keep-alive connections the pool
    /// needed (HTTP/1.1 carries one request at a time per connection).
    max_in_flight_seen: AtomicUsize,
    /// 2xx answers that arrived inside the measured window.
    ok_in_window: AtomicU64,
    /// Changes durable at home (2xx, or 503 with an ETag: the outbox ships it later), any time.
    durable: AtomicU64,
    /// Requests scheduled in the window that failed, and that were never sent (cap reached).
    failed_in_window: AtomicU64,
    unsent_in_window: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// From each request's scheduled start to its answer (scheduled in the window, 2xx only).
    http_latency: Mutex<Histogram<u64>>,
    /// Probes: from the write's send to the moment a read at the replica shows it.
    probe_lag: Vec<(String, String, Mutex<Histogram<u64>>)>,
    probes_timed_out: AtomicU64,
    probe_client: HttpClient,
}

impl Load {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }

    fn note_error(&self, e: String) {
        if let Ok(mut f) = self.first_error.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }
}

async fn one_write(load: Arc<Load>, seq: u64, scheduled: Instant, probe: bool) {
    let url = record_url(&load.api, seq, "k");
    let sent = Instant::now();
    let r = request(
        &load.client,
        Method::PUT,
        &url,
        load.value.clone(),
        HTTP_TIMEOUT_MS,
    )
    .await;
    let done = Instant::now();
    load.in_flight.fetch_sub(1, Ordering::AcqRel);
    let counted = load.in_window(scheduled);
    match r {
        Ok(resp) if resp.status.is_success() => {
            load.durable.fetch_add(1, Ordering::AcqRel);
            if load.in_window(done) {
                load.ok_in_window.fetch_add(1, Ordering::Relaxed);
            }
            if counted {
                record_us(&load.http_latency, done - scheduled);
            }
            if probe
                && counted
                && let Some(version) = resp.etag
            {
                for i in 0..load.probe_lag.len() {
                    let load = load.clone();
                    let url = url.clone();
                    tokio::spawn(async move { run_probe(load, i, url, version, sent).await });
                }
            }
        }
        Ok(resp) => {
            if resp.status == StatusCode::SERVICE_UNAVAILABLE && resp.etag.is_some() {
                load.durable.fetch_add(1, Ordering::AcqRel);
            }
            if counted {
                load.failed_in_window.fetch_add(1, Ordering::Relaxed);
            }
            load.note_error(format!(
                "PUT {url}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        Err(e) => {
            if counted {
                load.failed_in_window.fetch_add(1, Ordering::Relaxed);
            }
            load.note_error(format!("{e:#}"));
        }
    }
}

/// Reads the written record at replica `i` until its version shows, and records how long after
/// the write was sent that was.
async fn run_probe(load: Arc<Load>, i: usize, write_url: String, version: u64, sent: Instant) {
    let (_, replica_api, hist) = &load.probe_lag[i];
    let Some(path) = write_url.strip_prefix(load.api.as_str()) else {
        return;
    };
    let url = format!("{replica_api}{path}");
    loop {
        let seen = matches!(
            request(&load.probe_client, Method::GET, &url, Bytes::new(), 5_000).await,
            Ok(r) if r.status == StatusCode::OK && r.etag.is_some_and(|v| v >= version)
        );
        let waited = sent.elapsed();
        if seen {
            record_us(hist, waited);
            return;
        }
        if waited > Duration::from_millis(PROBE_TIMEOUT_MS) {
            load.probes_timed_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pause = if waited < Duration::from_millis(PROBE_FAST_FOR_MS) {
            PROBE_FAST_POLL_MS
        } else {
            PROBE_SLOW_POLL_MS
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Issues writes at `rate`/s from now until `load.window_end`, each at its scheduled time.
async fn generate(load: Arc<Load>, rate: u64, probes_per_sec: u64) {
    let start = Instant::now();
    let probe_every = rate
        .checked_div(probes_per_sec)
        .map_or(u64::MAX, |every| every.max(1));
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= load.window_end {
            return;
        }
        let due = ((now - start).as_secs_f64() * rate as f64) as u64;
        while seq < due {
            let scheduled = start + Duration::from_secs_f64(seq as f64 / rate as f64);
            if load.in_flight.load(Ordering::Acquire) >= load.max_in_flight {
                if load.in_window(scheduled) {
                    load.unsent_in_window.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let now_in_flight = load.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                load.max_in_flight_seen
                    .fetch_max(now_in_flight, Ordering::Relaxed);
                tokio::spawn(one_write(
                    load.clone(),
                    seq,
                    scheduled,
                    seq.is_multiple_of(probe_every),
                ));
            }
            seq += 1;
        }
        // Wakes about every millisecond; whatever came due meanwhile is sent at once, so the
        // schedule holds on average even if a wake-up is late.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What the replicas' status showed during the measured window, once per second.
#[derive(Debug, Default)]
struct Followed {
    /// (seconds into the window, per replica: durable writes minus applied changes).
    backlog: Vec<(f64, [f64; REPLICAS.len()])>,
    /// Per replica, the largest `lag_seconds` (heartbeat-based, what `homeport lag` shows) and
    /// `entries_behind` (from the queue heads the consumer saw) it reported.
    max_lag_seconds: [f64; REPLICAS.len()],
    max_entries_behind: [u64; REPLICAS.len()],
}

/// Follows the replicas' status once per second until `stop`.
async fn follow_backlog(bed: &Bed, load: &Load, stop: &AtomicBool) -> Followed {
    let mut f = Followed::default();
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let durable = load.durable.load(Ordering::Acquire) as f64;
        let t = Instant::now();
        let mut row = [f64::NAN; REPLICAS.len()];
        let in_window = load.in_window(t);
        for (i, r) in REPLICAS.iter().enumerate() {
            if let Ok(l) = bed.lag_row(r).await {
                row[i] = (durable - l.applied_changes as f64).max(0.0);
                if in_window {
                    f.max_lag_seconds[i] = f.max_lag_seconds[i].max(l.lag_seconds);
                    f.max_entries_behind[i] = f.max_entries_behind[i].max(l.entries_behind);
                }
            }
        }
        if in_window {
            f.backlog.push(((t - load.window_start).as_secs_f64(), row));
        }
    }
    f
}

/// Least-squares slope of `y` over `x`, or `None` with fewer than 3 points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<&(f64, f64)> = points.iter().filter(|(_, y)| y.is_finite()).collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

// ---------------------------------------------------------------------------------------------
// Metrics and CPU

/// The sum of the samples of metric `name` whose labels include all of `labels`, or `None` if
/// there is none.
fn prom(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer name that merely starts with `name`
        };
        let has_all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !has_all {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Counters of one scrape that the profile needs (cumulative; deltas give per-window figures).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    store_commits: f64,
    store_commit_secs: f64,
    store_batch_requests: f64,
    producer_batches: f64,
    writes_committed: f64,
    node_group_commits: f64,
    node_entries: f64,
    node_fsyncs: f64,
    node_fsync_secs: f64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            store_commits: self.store_commits - o.store_commits,
            store_commit_secs: self.store_commit_secs - o.store_commit_secs,
            store_batch_requests: self.store_batch_requests - o.store_batch_requests,
            producer_batches: self.producer_batches - o.producer_batches,
            writes_committed: self.writes_committed - o.writes_committed,
            node_group_commits: self.node_group_commits - o.node_group_commits,
            node_entries: self.node_entries - o.node_entries,
            node_fsyncs: self.node_fsyncs - o.node_fsyncs,
            node_fsync_secs: self.node_fsync_secs - o.node_fsync_secs,
        }
    }
}

/// A region process's store and producer counters (absent metrics read as 0).
async fn region_counters(admin: SocketAddr) -> Counters {
    let Some(t) = scrape_metrics(admin).await else {
        return Counters::default();
    };
    let v = |name: &str| prom(&t, name, &[]).unwrap_or(0.0);
    Counters {
        store_commits: v("homeport_store_commit_seconds_count"),
        store_commit_secs: v("homeport_store_commit_seconds_sum"),
        store_batch_requests: v("homeport_store_batch_requests_sum"),
        producer_batches: v("homeport_producer_committed_batches_total"),
        writes_committed: v("homeport_region_writes_committed_total"),
        ..Counters::default()
    }
}

/// The home queue nodes' group-commit and fsync counters, summed over the nodes.
async fn node_counters(nodes: &[SocketAddr]) -> Counters {
    let mut c = Counters::default();
    for n in nodes {
        let Some(t) = scrape_metrics(*n).await else {
            continue;
        };
        let v = |name: &str| prom(&t, name, &[]).unwrap_or(0.0);
        c.node_group_commits += v("homeport_queue_group_commit_entries_count");
        c.node_entries += v("homeport_queue_group_commit_entries_sum");
        c.node_fsyncs += v("homeport_queue_fsync_seconds_count");
        c.node_fsync_secs += v("homeport_queue_fsync_seconds_sum");
    }
    c
}

/// A replica's view of commit-to-applied delay, from its own summary.
#[derive(Debug, Clone, Copy, Default)]
struct ApplyDelay {
    count: f64,
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

async fn apply_delay(admin: SocketAddr) -> Option<ApplyDelay> {
    let t = scrape_metrics(admin).await?;
    let name = "homeport_replay_apply_delay_seconds";
    let q = |quantile: &str| {
        prom(&t, name, &[("source", HOME), ("quantile", quantile)]).map(|s| s * 1_000.0)
    };
    let count = prom(&t, &format!("{name}_count"), &[("source", HOME)])?;
    let sum = prom(&t, &format!("{name}_sum"), &[("source", HOME)])?;
    Some(ApplyDelay {
        count,
        mean_ms: if count > 0.0 {
            sum * 1_000.0 / count
        } else {
            f64::NAN
        },
        p50_ms: q("0.5")?,
        p90_ms: q("0.9")?,
        p99_ms: q("0.99")?,
        p999_ms: q("0.999")?,
        max_ms: q("1")?,
    })
}

/// Busy and total jiffies of all cores, and the number of cores, from /proc/stat.
fn machine_jiffies() -> Option<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4] + v[7];
    Some((total - idle, total, cores.max(1)))
}

/// utime + stime of a process, in jiffies.
fn process_jiffies(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields after the name start at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU groups of a deployment: each region process, the home queue nodes, the other queue
/// nodes, and this program (load generator, probes and the WAN emulator).
const CPU_GROUPS: [&str; 6] = [
    "region sh",
    "region hk",
    "region ca",
    "queue nodes sh (3)",
    "queue nodes hk+ca",
    "bench (load+WAN)",
];

/// Bytes a process has caused to be sent to storage (`write_bytes` of /proc/PID/io): what its
/// fsyncs really cost the disk, whatever the size of the data it meant to write.
fn process_write_bytes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Per CPU group now: jiffies and storage write bytes, finding the deployment's processes by
/// their config path.
fn cpu_groups(dir: &Path) -> ([u64; CPU_GROUPS.len()], [u64; CPU_GROUPS.len()]) {
    let mut out = [0u64; CPU_GROUPS.len()];
    let mut io = [0u64; CPU_GROUPS.len()];
    let needle = dir.display().to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{name}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a.contains(&needle)) {
                continue;
            }
            let after = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            let group = match (after("--region"), after("--node")) {
                (Some(r), _) if r == "sh" => 0,
                (Some(r), _) if r == "hk" => 1,
                (Some(r), _) if r == "ca" => 2,
                (_, Some(n)) if n.starts_with("sh-") => 3,
                (_, Some(_)) => 4,
                _ => continue,
            };
            out[group] += process_jiffies(&name).unwrap_or(0);
            io[group] += process_write_bytes(&name).unwrap_or(0);
        }
    }
    out[5] = process_jiffies("self").unwrap_or(0);
    (out, io)
}

/// A CPU snapshot: machine busy/total jiffies, cores, and per-group jiffies.
#[derive(Debug, Clone, Copy)]
struct CpuSnap {
    machine: Option<(u64, u64, usize)>,
    groups: [u64; CPU_GROUPS.len()],
    write_bytes: [u64; CPU_GROUPS.len()],
}

impl CpuSnap {
    fn take(dir: &Path) -> Self {
        let (groups, write_bytes) = cpu_groups(dir);
        Self {
            machine: machine_jiffies(),
            groups,
            write_bytes,
        }
    }
}

/// CPU use between two snapshots: machine busy % (all cores), and each group in % of one core.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    busy_pct: f64,
    group_core_pct: [f64; CPU_GROUPS.len()],
    /// Storage write bytes per group between the snapshots (a process restarted in between
    /// counts from its start).
    group_write_bytes: [f64; CPU_GROUPS.len()],
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> Option<CpuUse> {
    let ((b0, t0, cores), (b1, t1, _)) = (a.machine?, b.machine?);
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)? as f64;
    let per_core = dt / cores as f64;
    let mut group_core_pct = [0.0; CPU_GROUPS.len()];
    let mut group_write_bytes = [0.0; CPU_GROUPS.len()];
    for i in 0..CPU_GROUPS.len() {
        group_core_pct[i] = 100.0 * b.groups[i].saturating_sub(a.groups[i]) as f64 / per_core;
        group_write_bytes[i] = b.write_bytes[i].saturating_sub(a.write_bytes[i]) as f64;
    }
    Some(CpuUse {
        busy_pct: 100.0 * b1.saturating_sub(b0) as f64 / dt,
        group_core_pct,
        group_write_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// One level: a fixed rate on a fresh deployment

/// Whether a level counts as sustainable, and why not.
#[derive(Debug, Clone)]
enum Verdict {
    Sustainable,
    Unsustainable(String),
}

impl Verdict {
    fn ok(&self) -> bool {
        matches!(self, Verdict::Sustainable)
    }
}

#[derive(Debug, Clone)]
struct LevelResult {
    target: u64,
    achieved: f64,
    failed: u64,
    unsent: u64,
    max_in_flight: usize,
    first_error: Option<String>,
    http_p50_ms: f64,
    http_p99_ms: f64,
    /// Per replica, the replica's own apply-delay summary.
    delay: [Option<ApplyDelay>; REPLICAS.len()],
    /// Per replica, probe p50 / p99 (ms) and how many probes.
    probe: [(f64, f64, u64); REPLICAS.len()],
    probes_timed_out: u64,
    /// Per replica, least-squares growth of the backlog over the window (entries/s), and the
    /// backlog at the last sample.
    backlog_growth: [f64; REPLICAS.len()],
    backlog_end: [f64; REPLICAS.len()],
    status_max_lag_seconds: [f64; REPLICAS.len()],
    status_max_entries_behind: [u64; REPLICAS.len()],
    drain: Option<Duration>,
    clock_offset_ms: [f64; REPLICAS.len()],
    cpu: Option<CpuUse>,
    home: Counters,
    replicas: [Counters; REPLICAS.len()],
    nodes: Counters,
    window_secs: f64,
    verdict: Verdict,
}

fn ms_quantile(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

async fn measure_level(args: &Args, rate: u64) -> Result<LevelResult> {
    eprintln!("== {rate} writes/s: starting a fresh deployment");
    let bed = Bed::start(args).await?;
    let now = Instant::now();
    let window_start = now + Duration::from_secs(args.warmup_secs);
    let window_end = window_start + Duration::from_secs(args.duration_secs);
    let load = Arc::new(Load {
        client: http_client(),
        api: bed.api(HOME).to_owned(),
        value: value_of(args.value_bytes),
        max_in_flight: args.max_in_flight,
        window_start,
        window_end,
        in_flight: AtomicUsize::new(0),
        max_in_flight_seen: AtomicUsize::new(0),
        ok_in_window: AtomicU64::new(0),
        durable: AtomicU64::new(0),
        failed_in_window: AtomicU64::new(0),
        unsent_in_window: AtomicU64::new(0),
        first_error: Mutex::new(None),
        http_latency: Mutex::new(new_histogram()),
        probe_lag: REPLICAS
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    bed.api(r).to_owned(),
                    Mutex::new(new_histogram()),
                )
            })
            .collect(),
        probes_timed_out: AtomicU64::new(0),
        probe_client: bed.client.clone(),
    });
    eprintln!(
        "   load {rate}/s: {} s warm-up, {} s measured",
        args.warmup_secs, args.duration_secs
    );
    let stop_following = AtomicBool::new(false);
    let generator = tokio::spawn(generate(load.clone(), rate, args.probes_per_sec));
    let window = async {
        tokio::time::sleep_until(window_start.into()).await;
        let cpu0 = CpuSnap::take(bed.cluster.dir.path());
        let home0 = region_counters(bed.admin[HOME]).await;
        let nodes0 = node_counters(&bed.home_node_admin).await;
        let mut rep0 = [Counters::default(); REPLICAS.len()];
        for (i, r) in REPLICAS.iter().enumerate() {
            rep0[i] = region_counters(bed.admin[*r]).await;
        }
        tokio::time::sleep_until(window_end.into()).await;
        let cpu1 = CpuSnap::take(bed.cluster.dir.path());
        let home1 = region_counters(bed.admin[HOME]).await;
        let nodes1 = node_counters(&bed.home_node_admin).await;
        let mut rep = [Counters::default(); REPLICAS.len()];
        for (i, r) in REPLICAS.iter().enumerate() {
            rep[i] = region_counters(bed.admin[*r]).await - rep0[i];
        }
        stop_following.store(true, Ordering::Release);
        (cpu_use(&cpu0, &cpu1), home1 - home0, nodes1 - nodes0, rep)
    };
    let (followed, (cpu, home, nodes, replicas)) =
        tokio::join!(follow_backlog(&bed, &load, &stop_following), window);
    generator
        .await
        .map_err(|e| anyhow!("load generator task failed: {e}"))?;
    // Let every request in flight finish before counting what must be applied.
    let deadline = Instant::now() + Duration::from_millis(HTTP_TIMEOUT_MS + 1_000);
    while load.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let durable = load.durable.load(Ordering::Acquire);
    eprintln!("   load done: {durable} writes durable at {HOME}; waiting for the replicas");
    let drain = bed.drain(durable, args.drain_timeout_secs).await;
    // Probes of the last writes may still be reading.
    let deadline = Instant::now() + Duration::from_millis(PROBE_TIMEOUT_MS);
    while Arc::strong_count(&load) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut delay = [None; REPLICAS.len()];
    let mut clock_offset_ms = [0.0; REPLICAS.len()];
    for (i, r) in REPLICAS.iter().enumerate() {
        delay[i] = apply_delay(bed.admin[*r]).await;
        if let Ok(row) = bed.lag_row(r).await {
            clock_offset_ms[i] = row.clock_offset_ms;
        }
    }

    let window_secs = args.duration_secs as f64;
    let achieved = load.ok_in_window.load(Ordering::Acquire) as f64 / window_secs;
    let http = load
        .http_latency
        .lock()
        .map_err(|_| anyhow!("latency histogram lock poisoned"))?
        .clone();
    let mut probe = [(f64::NAN, f64::NAN, 0u64); REPLICAS.len()];
    for (i, (_, _, h)) in load.probe_lag.iter().enumerate() {
        if let Ok(h) = h.lock() {
            probe[i] = (ms_quantile(&h, 0.5), ms_quantile(&h, 0.99), h.len());
        }
    }
    let mut backlog_growth = [f64::NAN; REPLICAS.len()];
    let mut backlog_end = [f64::NAN; REPLICAS.len()];
    for i in 0..REPLICAS.len() {
        let pts: Vec<(f64, f64)> = followed
            .backlog
            .iter()
            .map(|(t, row)| (*t, row[i]))
            .collect();
        backlog_growth[i] = slope(&pts).unwrap_or(f64::NAN);
        backlog_end[i] = pts
            .iter()
            .rev()
            .find(|p| p.1.is_finite())
            .map_or(f64::NAN, |p| p.1);
    }
    let verdict = judge(
        rate,
        achieved,
        &backlog_growth,
        &backlog_end,
        drain.is_some(),
    );
    let first_error = load.first_error.lock().ok().and_then(|e| e.clone());
    let result = LevelResult {
        target: rate,
        achieved,
        failed: load.failed_in_window.load(Ordering::Acquire),
        unsent: load.unsent_in_window.load(Ordering::Acquire),
        max_in_flight: load.max_in_flight_seen.load(Ordering::Acquire),
        first_error,
        http_p50_ms: ms_quantile(&http, 0.5),
        http_p99_ms: ms_quantile(&http, 0.99),
        delay,
        probe,
        probes_timed_out: load.probes_timed_out.load(Ordering::Acquire),
        backlog_growth,
        backlog_end,
        status_max_lag_seconds: followed.max_lag_seconds,
        status_max_entries_behind: followed.max_entries_behind,
        drain,
        clock_offset_ms,
        cpu,
        home,
        replicas,
        nodes,
        window_secs,
        verdict,
    };
    eprintln!("   {}", level_line(&result));
    drop(bed);
    Ok(result)
}

fn judge(
    rate: u64,
    achieved: f64,
    growth: &[f64; REPLICAS.len()],
    end: &[f64; REPLICAS.len()],
    drained: bool,
) -> Verdict {
    let mut why = Vec::new();
    if achieved < MIN_ACHIEVED_SHARE * rate as f64 {
        why.push(format!(
            "achieved {:.0}/s < {:.0}% of target",
            achieved,
            MIN_ACHIEVED_SHARE * 100.0
        ));
    }
    for (i, r) in REPLICAS.iter().enumerate() {
        let growing = growth[i] > MAX_BACKLOG_GROWTH_SHARE * rate as f64;
        let far_behind = end[i] > MAX_END_BACKLOG_SECS * rate as f64;
        if growing && far_behind {
            why.push(format!(
                "{r} backlog grows {:.0} entries/s, {:.0} behind at the end",
                growth[i], end[i]
            ));
        } else if !growth[i].is_finite() {
            why.push(format!("{r} backlog not measured"));
        }
    }
    if !drained {
        why.push("replicas did not drain in time".to_owned());
    }
    if why.is_empty() {
        Verdict::Sustainable
    } else {
        Verdict::Unsustainable(why.join("; "))
    }
}

fn level_line(r: &LevelResult) -> String {
    let d = |i: usize| {
        r.delay[i].map_or("n/a".to_owned(), |d| {
            format!("{:.0}/{:.0} ms", d.p50_ms, d.p99_ms)
        })
    };
    format!(
        "target {} achieved {:.0}/s, HTTP p50/p99 {:.1}/{:.1} ms, lag hk {} ca {}, {}",
        r.target,
        r.achieved,
        r.http_p50_ms,
        r.http_p99_ms,
        d(0),
        d(1),
        match &r.verdict {
            Verdict::Sustainable => "sustainable".to_owned(),
            Verdict::Unsustainable(w) => format!("NOT sustainable: {w}"),
        }
    )
}

/// Runs a level `repeats` times (each on a fresh deployment) and folds the runs into medians.
async fn level(args: &Args, rate: u64) -> Result<LevelResult> {
    let mut runs = Vec::new();
    for i in 0..args.repeats {
        if args.repeats > 1 {
            eprintln!("-- repeat {}/{}", i + 1, args.repeats);
        }
        runs.push(measure_level(args, rate).await?);
    }
    Ok(median_level(runs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of every figure over the runs; the verdict is the majority's (ties: unsustainable).
/// Profile columns are taken from the run whose achieved rate is the median.
fn median_level(mut runs: Vec<LevelResult>) -> LevelResult {
    assert!(!runs.is_empty(), "a level has at least one run");
    if runs.len() == 1 {
        return runs.remove(0);
    }
    runs.sort_by(|a, b| a.achieved.total_cmp(&b.achieved));
    let mid = runs.len() / 2;
    let mut out = runs[mid].clone();
    let m = |f: &dyn Fn(&LevelResult) -> f64| median(runs.iter().map(f).collect());
    out.achieved = m(&|r| r.achieved);
    out.http_p50_ms = m(&|r| r.http_p50_ms);
    out.http_p99_ms = m(&|r| r.http_p99_ms);
    for i in 0..REPLICAS.len() {
        let dm = |f: &dyn Fn(&ApplyDelay) -> f64| {
            median(
                runs.iter()
                    .map(|r| r.delay[i].as_ref().map_or(f64::NAN, f))
                    .collect(),
            )
        };
        if let Some(d) = out.delay[i].as_mut() {
            d.mean_ms = dm(&|d| d.mean_ms);
            d.p50_ms = dm(&|d| d.p50_ms);
            d.p90_ms = dm(&|d| d.p90_ms);
            d.p99_ms = dm(&|d| d.p99_ms);
            d.p999_ms = dm(&|d| d.p999_ms);
            d.max_ms = dm(&|d| d.max_ms);
        }
        out.probe[i].0 = m(&|r| r.probe[i].0);
        out.probe[i].1 = m(&|r| r.probe[i].1);
        out.backlog_growth[i] = m(&|r| r.backlog_growth[i]);
        out.backlog_end[i] = m(&|r| r.backlog_end[i]);
    }
    let ok = runs.iter().filter(|r| r.verdict.ok()).count();
    out.verdict = if 2 * ok > runs.len() {
        Verdict::Sustainable
    } else {
        let reasons: Vec<String> = runs
            .iter()
            .filter_map(|r| match &r.verdict {
                Verdict::Unsustainable(w) => Some(w.clone()),
                Verdict::Sustainable => None,
            })
            .collect();
        Verdict::Unsustainable(format!(
            "{} of {} runs: {}",
            runs.len() - ok,
            runs.len(),
            reasons.join(" | ")
        ))
    };
    out
}

fn round_rate(r: f64) -> u64 {
    ((r / SEARCH_ROUND_TO as f64).round() as u64).max(1) * SEARCH_ROUND_TO
}

/// The listed rates, then (unless `--no-search`) up in steps of [`SEARCH_STEP_UP`] from the
/// highest sustainable one until a level is not, then bisection of the bracket.
async fn lag_levels(args: &Args) -> Result<Vec<LevelResult>> {
    let mut results: Vec<LevelResult> = Vec::new();
    let mut rates = args.rates.clone();
    rates.sort_unstable();
    rates.dedup();
    for r in rates {
        results.push(level(args, r).await?);
    }
    if args.no_search {
        return Ok(results);
    }
    let bracket = |results: &[LevelResult]| {
        let lo = results
            .iter()
            .filter(|r| r.verdict.ok())
            .map(|r| r.target)
            .max();
        let hi = results
            .iter()
            .filter(|r| !r.verdict.ok() && lo.is_none_or(|lo| r.target > lo))
            .map(|r| r.target)
            .min();
        (lo, hi)
    };
    // Up until a level fails (or down until one holds).
    loop {
        let (lo, hi) = bracket(&results);
        let next = match (lo, hi) {
            (Some(_), Some(_)) => break,
            (Some(lo), None) => round_rate(lo as f64 * SEARCH_STEP_UP),
            (None, Some(hi)) if hi > SEARCH_ROUND_TO => round_rate(hi as f64 / 2.0).min(hi / 2),
            _ => break,
        };
        if next > args.max_rate || results.iter().any(|r| r.target == next) {
            break;
        }
        results.push(level(args, next).await?);
    }
    for _ in 0..SEARCH_MAX_BISECTIONS {
        let (Some(lo), Some(hi)) = bracket(&results) else {
            break;
        };
        if (hi as f64) / (lo as f64) <= SEARCH_BRACKET_RATIO {
            break;
        }
        let mid = round_rate((lo + hi) as f64 / 2.0);
        if mid <= lo || mid >= hi {
            break;
        }
        results.push(level(args, mid).await?);
    }
    results.sort_by_key(|r| r.target);
    Ok(results)
}

// ---------------------------------------------------------------------------------------------
// Catch-up after a backlog

#[derive(Debug, Clone)]
struct CatchupResult {
    backlog: u64,
    durable: u64,
    failed: u64,
    write_secs: f64,
    /// From `start_region` to the first applied change, and to the last.
    first_apply_secs: Option<f64>,
    caught_up_secs: Option<f64>,
    /// Applied changes when the measurement ended (all of them unless it timed out).
    applied: u64,
    /// Most changes per second seen in one progress poll interval, for the shape of the curve.
    peak_rate: f64,
    cpu: Option<CpuUse>,
    replica: Counters,
    /// Bytes the WAN carried from sh to hk during the catch-up.
    wan_bytes: u64,
    write_cpu: Option<CpuUse>,
    write_home: Counters,
    write_nodes: Counters,
}

async fn catchup(args: &Args) -> Result<CatchupResult> {
    eprintln!(
        "== catch-up: fresh deployment, {} changes written while region-{CATCHUP_REGION} is stopped",
        args.backlog
    );
    let bed = Bed::start(args).await?;
    bed.cluster
        .kill_node(&homeport_config::region_identity(CATCHUP_REGION))?;

    // Write the backlog: a closed loop of `backlog_concurrency` writers.
    let client = http_client();
    let api = bed.api(HOME).to_owned();
    let value = value_of(args.value_bytes);
    let next = Arc::new(AtomicU64::new(0));
    let durable = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let cpu0 = CpuSnap::take(bed.cluster.dir.path());
    let home0 = region_counters(bed.admin[HOME]).await;
    let nodes0 = node_counters(&bed.home_node_admin).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..args.backlog_concurrency {
        let (client, api, value) = (client.clone(), api.clone(), value.clone());
        let (next, durable, failed, first_error) = (
            next.clone(),
            durable.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let backlog = args.backlog;
        writers.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::AcqRel);
                if seq >= backlog {
                    return;
                }
                let url = record_url(&api, seq, "c");
                match request(&client, Method::PUT, &url, value.clone(), HTTP_TIMEOUT_MS).await {
                    Ok(r)
                        if r.status.is_success()
                            || (r.status == StatusCode::SERVICE_UNAVAILABLE
                                && r.etag.is_some()) =>
                    {
                        durable.fetch_add(1, Ordering::AcqRel);
                        if !r.status.is_success() {
                            failed.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    other => {
                        failed.fetch_add(1, Ordering::AcqRel);
                        let msg = match other {
                            Ok(r) => format!(
                                "PUT {url}: {} {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ),
                            Err(e) => format!("{e:#}"),
                        };
                        if let Ok(mut f) = first_error.lock()
                            && f.is_none()
                        {
                            *f = Some(msg);
                        }
                        // Not durable: this change does not exist, the backlog is one smaller.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    let progress = async {
        loop {
            tokio::time::sleep(Duration::from_secs(PROGRESS_PRINT_SECS)).await;
            let d = durable.load(Ordering::Acquire);
            eprintln!(
                "   backlog: {d} written in {:.0} s ({:.0}/s), {} failed",
                started.elapsed().as_secs_f64(),
                d as f64 / started.elapsed().as_secs_f64(),
                failed.load(Ordering::Acquire)
            );
        }
    };
    tokio::select! {
        _ = join_writers(writers) => {}
        _ = progress => {}
    }
    let write_secs = started.elapsed().as_secs_f64();
    let write_cpu = cpu_use(&cpu0, &CpuSnap::take(bed.cluster.dir.path()));
    let write_home = region_counters(bed.admin[HOME]).await - home0;
    let write_nodes = node_counters(&bed.home_node_admin).await - nodes0;
    let durable = durable.load(Ordering::Acquire);
    let failed = failed.load(Ordering::Acquire);
    if let Some(e) = first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("   first write error: {e}");
    }
    eprintln!(
        "   backlog written: {durable} durable changes in {write_secs:.1} s ({:.0}/s); starting region-{CATCHUP_REGION}",
        durable as f64 / write_secs
    );

    let wan0 = bed.wan.stats(HOME, CATCHUP_REGION).bytes_forwarded;
    let cpu0 = CpuSnap::take(bed.cluster.dir.path());
    let t0 = Instant::now();
    bed.cluster.start_region(CATCHUP_REGION)?;
    let deadline = t0 + Duration::from_secs(args.catchup_timeout_secs);
    let mut first_apply_secs = None;
    let mut caught_up_secs = None;
    let mut applied = 0u64;
    let mut peak_rate: f64 = 0.0;
    let mut last = (t0, 0u64);
    let mut last_print = t0;
    while Instant::now() < deadline {
        if let Ok(row) = bed.lag_row(CATCHUP_REGION).await {
            let now = Instant::now();
            applied = row.applied_changes;
            if applied > 0 && first_apply_secs.is_none() {
                first_apply_secs = Some((now - t0).as_secs_f64());
            }
            let dt = (now - last.0).as_secs_f64();
            if dt > 0.0 && last.1 > 0 {
                peak_rate = peak_rate.max(applied.saturating_sub(last.1) as f64 / dt);
            }
            last = (now, applied);
            if applied >= durable {
                caught_up_secs = Some((now - t0).as_secs_f64());
                break;
            }
            if now - last_print > Duration::from_secs(PROGRESS_PRINT_SECS) {
                last_print = now;
                eprintln!(
                    "   catch-up: {applied}/{durable} applied after {:.0} s (apply rate {:.0}/s)",
                    (now - t0).as_secs_f64(),
                    row.apply_rate_per_sec
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(PROGRESS_POLL_MS)).await;
    }
    let cpu = cpu_use(&cpu0, &CpuSnap::take(bed.cluster.dir.path()));
    let replica = region_counters(bed.admin[CATCHUP_REGION]).await;
    let wan_bytes = bed
        .wan
        .stats(HOME, CATCHUP_REGION)
        .bytes_forwarded
        .saturating_sub(wan0);
    let r = CatchupResult {
        backlog: args.backlog,
        durable,
        failed,
        write_secs,
        first_apply_secs,
        caught_up_secs,
        applied,
        peak_rate,
        cpu,
        replica,
        wan_bytes,
        write_cpu,
        write_home,
        write_nodes,
    };
    match r.caught_up_secs {
        Some(s) => eprintln!(
            "   caught up: {durable} changes in {s:.1} s ({:.0}/s from start)",
            durable as f64 / s
        ),
        None => eprintln!(
            "   NOT caught up within {} s: {applied}/{durable}",
            args.catchup_timeout_secs
        ),
    }
    drop(bed);
    Ok(r)
}

/// Awaits every task (their panics are reported, not propagated: the backlog count says what
/// was written).
async fn join_writers(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("   a backlog writer failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "n/a".to_owned()
    }
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "n/a".to_owned()
    }
}

fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn report(args: &Args, levels: &[LevelResult], catch: Option<&CatchupResult>) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = render(&mut o, args, levels, catch);
    o
}

fn render(
    o: &mut String,
    args: &Args,
    levels: &[LevelResult],
    catch: Option<&CatchupResult>,
) -> std::fmt::Result {
    writeln!(
        o,
        "Setup: 3 regions (sh, hk, ca), {} queue group(s) of 3 nodes each, one region process each; \
         {} ms one-way emulated delay between every pair; writes of {} B homed in sh; \
         {} s warm-up + {} s measured per level, {} run(s) per level (medians).",
        args.groups,
        args.delay_ms,
        args.value_bytes,
        args.warmup_secs,
        args.duration_secs,
        args.repeats
    )?;
    for (name, list) in [
        ("[queue]", &args.queue_settings),
        ("[replay]", &args.replay_settings),
        ("[store]", &args.store_settings),
    ] {
        if !list.is_empty() {
            writeln!(o, "Settings {name}: {}", list.join(", "))?;
        }
    }
    if !levels.is_empty() {
        writeln!(o)?;
        writeln!(
            o,
            "| target writes/s | achieved writes/s | HTTP p50 / p99 (ms) | lag hk p50 / p99 / p99.9 (ms) | lag ca p50 / p99 / p99.9 (ms) | probe hk / ca p50, p99 (ms) | backlog growth hk / ca (entries/s) | drain (s) | sustainable |"
        )?;
        writeln!(
            o,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        )?;
        for r in levels {
            let d = |i: usize| {
                r.delay[i].map_or("n/a".to_owned(), |d| {
                    format!("{} / {} / {}", f0(d.p50_ms), f0(d.p99_ms), f0(d.p999_ms))
                })
            };
            writeln!(
                o,
                "| {} | {} | {} / {} | {} | {} | {} / {}, {} / {} | {} / {} | {} | {} |",
                r.target,
                f0(r.achieved),
                f1(r.http_p50_ms),
                f1(r.http_p99_ms),
                d(0),
                d(1),
                f0(r.probe[0].0),
                f0(r.probe[1].0),
                f0(r.probe[0].1),
                f0(r.probe[1].1),
                f0(r.backlog_growth[0]),
                f0(r.backlog_growth[1]),
                r.drain
                    .map_or("timeout".to_owned(), |d| f1(d.as_secs_f64())),
                match &r.verdict {
                    Verdict::Sustainable => "yes".to_owned(),
                    Verdict::Unsustainable(w) => format!("no: {w}"),
                }
            )?;
        }
        writeln!(o)?;
        writeln!(
            o,
            "| target writes/s | CPU busy | CPU % of one core: region sh / hk / ca, nodes sh / others, bench | sh store commits/s | requests per commit | mean commit (ms) | producer batches/s | writes per batch | sh node group commits/s | entries per group commit | mean fsync (ms) | hk apply commits/s, mean (ms) | disk bytes written per write: region sh / hk, nodes sh |"
        )?;
        writeln!(
            o,
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for r in levels {
            let w = r.window_secs;
            let nodes = 3.0 * args.groups as f64;
            let cpu = r.cpu.map_or("n/a".to_owned(), |c| {
                let g = c.group_core_pct;
                format!(
                    "{} / {} / {}, {} / {}, {}",
                    f0(g[0]),
                    f0(g[1]),
                    f0(g[2]),
                    f0(g[3]),
                    f0(g[4]),
                    f0(g[5])
                )
            });
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}, {} | {} |",
                r.target,
                r.cpu
                    .map_or("n/a".to_owned(), |c| format!("{}%", f0(c.busy_pct))),
                cpu,
                f0(r.home.store_commits / w),
                f1(per(r.home.store_batch_requests, r.home.store_commits)),
                f1(1e3 * per(r.home.store_commit_secs, r.home.store_commits)),
                f0(r.home.producer_batches / w),
                f1(per(r.home.writes_committed, r.home.producer_batches)),
                f0(r.nodes.node_group_commits / nodes / w),
                f1(per(r.nodes.node_entries, r.nodes.node_group_commits)),
                f1(1e3 * per(r.nodes.node_fsync_secs, r.nodes.node_fsyncs)),
                f0(r.replicas[0].store_commits / w),
                f1(1e3 * per(r.replicas[0].store_commit_secs, r.replicas[0].store_commits)),
                r.cpu.map_or("n/a".to_owned(), |c| {
                    let writes = r.achieved * w;
                    let b = c.group_write_bytes;
                    format!(
                        "{} / {}, {}",
                        f0(per(b[0], writes)),
                        f0(per(b[1], writes)),
                        f0(per(b[3], writes))
                    )
                }),
            )?;
        }
        writeln!(o)?;
        for r in levels {
            let mut notes = vec![format!(
                "at most {} requests (connections) in flight",
                r.max_in_flight
            )];
            if r.failed + r.unsent > 0 {
                notes.push(format!(
                    "{} failed, {} unsent (in-flight cap)",
                    r.failed, r.unsent
                ));
            }
            if let Some(e) = &r.first_error {
                notes.push(format!("first error: {e}"));
            }
            if r.probes_timed_out > 0 {
                notes.push(format!("{} probes timed out", r.probes_timed_out));
            }
            for (i, rep) in REPLICAS.iter().enumerate() {
                if let Some(d) = r.delay[i] {
                    notes.push(format!(
                        "{rep}: {} changes in the summary, mean {} ms, p90 {} ms, max {} ms, clock offset {} ms, backlog at end {}, status max lag_seconds {} / entries_behind {}",
                        d.count,
                        f1(d.mean_ms),
                        f0(d.p90_ms),
                        f0(d.max_ms),
                        f0(r.clock_offset_ms[i]),
                        f0(r.backlog_end[i]),
                        f1(r.status_max_lag_seconds[i]),
                        r.status_max_entries_behind[i]
                    ));
                }
            }
            writeln!(o, "- {} writes/s: {}", r.target, notes.join("; "))?;
        }
        let best = levels
            .iter()
            .filter(|r| r.verdict.ok())
            .max_by_key(|r| r.target);
        writeln!(o)?;
        match best {
            Some(b) => writeln!(
                o,
                "Highest sustainable rate measured: **{} writes/s** (achieved {}/s).",
                b.target,
                f0(b.achieved)
            )?,
            None => writeln!(o, "No level was sustainable.")?,
        }
        let bound = args.delay_ms as f64 + 25.0;
        if let Some(r5) = levels.iter().find(|r| r.target == 5_000) {
            let p99: Vec<f64> = r5
                .delay
                .iter()
                .map(|d| d.map_or(f64::NAN, |d| d.p99_ms))
                .collect();
            let met = p99.iter().all(|p| p.is_finite() && *p <= bound);
            writeln!(
                o,
                "Target lag p99 ≤ {bound:.0} ms at 5000 writes/s: **{}** (hk {} ms, ca {} ms).",
                if met { "met" } else { "missed" },
                f0(p99[0]),
                f0(p99[1])
            )?;
        }
    }
    if let Some(c) = catch {
        writeln!(o)?;
        let steady = match (c.first_apply_secs, c.caught_up_secs) {
            (Some(a), Some(b)) if b > a => c.durable as f64 / (b - a),
            _ => f64::NAN,
        };
        let overall = c.caught_up_secs.map_or(f64::NAN, |s| c.durable as f64 / s);
        writeln!(
            o,
            "| backlog (changes) | written at sh in (s) | sh write rate (closed loop, {} in flight) | hk start → first apply (s) | hk start → caught up (s) | entries/s from start | entries/s from first apply | peak entries/s (per {} ms) | hk apply commits, changes per commit, mean commit (ms) | WAN sh→hk bytes per change | hk disk bytes written per change | CPU busy; region hk, nodes sh, bench (% of one core) |",
            args.backlog_concurrency, PROGRESS_POLL_MS
        )?;
        writeln!(
            o,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        )?;
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}, {}, {} | {} | {} | {} |",
            c.durable,
            f1(c.write_secs),
            f0(c.durable as f64 / c.write_secs),
            c.first_apply_secs.map_or("n/a".to_owned(), f1),
            c.caught_up_secs.map_or(
                format!("not within the timeout ({} applied)", c.applied),
                f1
            ),
            f0(overall),
            f0(steady),
            f0(c.peak_rate),
            f0(c.replica.store_commits),
            f0(per(c.applied as f64, c.replica.store_commits)),
            f1(1e3 * per(c.replica.store_commit_secs, c.replica.store_commits)),
            f0(per(c.wan_bytes as f64, c.applied as f64)),
            c.cpu.map_or("n/a".to_owned(), |u| f0(per(
                u.group_write_bytes[1],
                c.applied as f64
            ))),
            c.cpu.map_or("n/a".to_owned(), |u| format!(
                "{}%; {}, {}, {}",
                f0(u.busy_pct),
                f0(u.group_core_pct[1]),
                f0(u.group_core_pct[3]),
                f0(u.group_core_pct[5])
            )),
        )?;
        writeln!(o)?;
        writeln!(
            o,
            "- writing the backlog: {} of {} requested writes durable, {} failed; sh store {} commits, {} requests per commit, mean {} ms; producer {} writes per batch; sh nodes {} entries per group commit, mean fsync {} ms; disk bytes written per write: region sh {}, nodes sh {}; CPU busy {}",
            c.durable,
            c.backlog,
            c.failed,
            f0(c.write_home.store_commits),
            f1(per(c.write_home.store_batch_requests, c.write_home.store_commits)),
            f1(1e3 * per(c.write_home.store_commit_secs, c.write_home.store_commits)),
            f1(per(c.write_home.writes_committed, c.write_home.producer_batches)),
            f1(per(c.write_nodes.node_entries, c.write_nodes.node_group_commits)),
            f1(1e3 * per(c.write_nodes.node_fsync_secs, c.write_nodes.node_fsyncs)),
            c.write_cpu.map_or("n/a".to_owned(), |u| f0(per(
                u.group_write_bytes[0],
                c.durable as f64
            ))),
            c.write_cpu.map_or("n/a".to_owned(), |u| f0(per(
                u.group_write_bytes[3],
                c.durable as f64
            ))),
            c.write_cpu.map_or("n/a".to_owned(), |u| {
                let g = u.group_core_pct;
                format!(
                    "{}% (region sh {}, hk {}, ca {}, nodes sh {}, others {}, bench {} % of one core)",
                    f0(u.busy_pct),
                    f0(g[0]),
                    f0(g[1]),
                    f0(g[2]),
                    f0(g[3]),
                    f0(g[4]),
                    f0(g[5])
                )
            }),
        )?;
        let rate = if steady.is_finite() { steady } else { overall };
        writeln!(
            o,
            "Target catch-up ≥ 50000 entries/s: **{}** ({} entries/s from first apply).",
            if rate >= 50_000.0 { "met" } else { "missed" },
            f0(rate)
        )?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let levels = if args.skip_lag {
        Vec::new()
    } else {
        lag_levels(&args).await?
    };
    let catch = if args.skip_catchup {
        None
    } else {
        Some(catchup(&args).await?)
    };
    print!("{}", report(&args, &levels, catch.as_ref()));
    Ok(())
}
