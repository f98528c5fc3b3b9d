//! Registry-style claims against a 3-member etcd cluster: the peer the registry (issue 4) is
//! measured against.
//!
//! A claim is etcd's put-if-absent: one transaction `if create_revision(key) == 0 then put`, for
//! a key nobody used before (so every claim succeeds and writes). For each level of concurrency
//! `c`, `c` tasks each await one claim at a time (a closed loop) for `--duration-secs`, after a
//! warm-up; reported are claims/s and the p50/p99 latency of a claim.
//!
//! Scenarios, each on a fresh cluster started by `scripts/etcd-cluster.sh` (fsync on):
//! - loopback: the members talk directly;
//! - WAN: members a, b, c stand for regions A, B, C, and every byte between two members crosses
//!   a TCP relay of the WAN emulator with `--one-way-delay-ms` each way (a relay in front of each
//!   member's peer port, advertised to the others as that member's peer URL). The client is in
//!   region A and talks to member a (its region's member, no delay); the leader is moved to a
//!   (`--wan-leader a`: a claim costs one round trip to a follower) or to b (`b`: a to b, b to a
//!   follower and back, b to a: two round trips), as a real 3-region deployment would see.
//!
//! The client uses etcd's JSON gateway (`/v3/kv/txn`, HTTP/1.1 keep-alive, one connection per
//! task), not gRPC: the `etcd-client` crate needs `protoc` at build time, which this workspace
//! avoids (protox). The gateway runs inside each member and forwards to its local gRPC server;
//! that costs some CPU per request, noted with the numbers.
//!
//! After the throughput runs of each scenario, `--lincheck-secs` of contended registry traffic
//! (claims, releases and lookups by many tasks on a few keys) is recorded and checked for
//! linearizability with `homeport-lincheck`: a check of etcd, and of the checker on a real
//! system's histories. Requests that fail are recorded with an unknown outcome.
//!
//! Run it with `scripts/etcd-cluster.sh bench` (installs etcd, builds in release); numbers are
//! printed, nothing is asserted.

use homeport_integration::bench_claims::load_average;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use homeport_integration::wan::{LinkConditions, Wan};
use homeport_lincheck::models::{Registry, RegistryOp, RegistryRet};
use homeport_lincheck::{CheckOptions, Recorder, Verdict, check};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// Largest latency the histograms hold; slower claims are clamped (and would have timed out).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long one HTTP request to etcd may take before it counts as failed.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long a leader transfer may take to show in every member's status.
const LEADER_MOVE_TIMEOUT_MS: u64 = 30_000;
/// Pause after a failed claim, so a dead cluster is not hammered in a tight loop.
const ERROR_BACKOFF_MS: u64 = 10;
/// The region every member's relay carries traffic from: all other members. With the same
/// delay on every pair this is exact; a per-pair fault schedule would need relays per pair.
const PEERS: &str = "peers";
const DEFAULT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/etcd-cluster.sh");

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Member {
    /// The member in the client's region.
    A,
    B,
    C,
}

impl Member {
    const ALL: [Member; 3] = [Member::A, Member::B, Member::C];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        ["a", "b", "c"][self.index()]
    }
}

/// Put-if-absent claims/s and p50/p99 against a 3-member etcd, on loopback and behind a WAN.
#[derive(Debug, Parser)]
#[command(name = "bench-etcd")]
struct Args {
    /// Measure an already running cluster through this client URL (e.g. one started with
    /// `scripts/etcd-cluster.sh start DIR`) instead of starting clusters: loopback only.
    #[arg(long)]
    endpoint: Option<String>,
    /// Claims in flight: that many tasks, each awaiting one claim at a time.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Length of one measured run, per scenario and concurrency level.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up before each measured run (not measured; its keys are distinct too).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// One-way delay between regions in the WAN scenarios; 0 skips them.
    #[arg(long, default_value_t = 30)]
    one_way_delay_ms: u64,
    /// Where the leader sits in the WAN scenarios (a is the client's region); one set of runs
    /// per entry.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b")]
    wan_leader: Vec<Member>,
    /// Skip the loopback scenario.
    #[arg(long)]
    skip_loopback: bool,
    /// First three octets of the members' IPs (`<prefix>.1` .. `.3`).
    #[arg(long, default_value = "127.0.77")]
    ip_prefix: String,
    /// Where the members keep their data (a fresh temporary directory inside it per cluster).
    /// Compare systems on the same filesystem: fsync costs differ between disks.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Size of each claim's value (the owner, e.g. a uid), in bytes.
    #[arg(long, default_value_t = 32)]
    value_bytes: usize,
    /// Seconds of contended claims/releases/lookups recorded and checked for linearizability
    /// after each scenario's runs; 0 skips it.
    #[arg(long, default_value_t = 5)]
    lincheck_secs: u64,
    /// The cluster script (start/stop).
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    script: PathBuf,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        ensure!(
            !self.concurrency.is_empty(),
            "--concurrency needs at least one level, e.g. 1,16,64"
        );
        for &c in &self.concurrency {
            ensure!(
                (1..=4096).contains(&c),
                "--concurrency {c} is outside 1..=4096"
            );
        }
        ensure!(
            (1..=1024 * 1024).contains(&self.value_bytes),
            "--value-bytes {} is outside 1..=1048576 (etcd's default request limit is 1.5 MiB)",
            self.value_bytes
        );
        ensure!(
            self.one_way_delay_ms <= 10_000,
            "--one-way-delay-ms {} is above 10000; etcd's election timeout (1 s) would never hold",
            self.one_way_delay_ms
        );
        if self.endpoint.is_none() {
            ensure!(
                self.script.is_file(),
                "the cluster script {} does not exist; pass --script scripts/etcd-cluster.sh, or --endpoint URL for a running cluster",
                self.script.display()
            );
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("bench-etcd: {e:#}");
        return ExitCode::from(2);
    }
    homeport_integration::bench_main("bench-etcd", run(args))
}

async fn run(args: Args) -> Result<()> {
    let load_before = load_average();
    let mut rows = Vec::new();
    let client = http_client();
    if let Some(endpoint) = &args.endpoint {
        let label = "given cluster".to_owned();
        measure_levels(&args, &client, endpoint, &label, "?", &mut rows).await?;
    } else {
        if !args.skip_loopback {
            let cluster = EtcdCluster::start(&args, None).await?;
            let leader = cluster.leader(&client).await?;
            let label = "loopback".to_owned();
            measure_levels(
                &args,
                &client,
                cluster.url(Member::A),
                &label,
                leader.name(),
                &mut rows,
            )
            .await?;
        }
        if args.one_way_delay_ms > 0 {
            // Declared before the cluster, so the cluster is stopped before its relays go.
            let wan = Wan::new(0);
            let mut advertised = Vec::new();
            for m in Member::ALL {
                wan.set_both(
                    PEERS,
                    m.name(),
                    LinkConditions::delay(args.one_way_delay_ms),
                );
                let ip = member_ip(&args.ip_prefix, m)?;
                let relay = wan
                    .relay_tcp(
                        PEERS,
                        m.name(),
                        std::net::SocketAddr::new(ip, PEER_PORT),
                        ip,
                    )
                    .await?;
                advertised.push(format!("http://{relay}"));
            }
            let cluster = EtcdCluster::start(&args, Some(&advertised)).await?;
            for &leader in &args.wan_leader {
                cluster.move_leader(&client, leader).await?;
                let label = format!("WAN {} ms one-way", args.one_way_delay_ms);
                measure_levels(
                    &args,
                    &client,
                    cluster.url(Member::A),
                    &label,
                    leader.name(),
                    &mut rows,
                )
                .await?;
            }
            drop(cluster);
            drop(wan);
        }
    }
    let load_after = load_average();
    print_report(&args, &rows, &load_before, &load_after);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The cluster

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

fn member_ip(prefix: &str, m: Member) -> Result<std::net::IpAddr> {
    format!("{prefix}.{}", m.index() + 1)
        .parse()
        .with_context(|| {
            format!("--ip-prefix {prefix} does not make IPv4 addresses like {prefix}.1")
        })
}

/// Three members started by the cluster script; stopped (by the script, by pid) when dropped,
/// also on Ctrl-C or a panic.
struct EtcdCluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    urls: [String; 3],
}

impl EtcdCluster {
    async fn start(args: &Args, advertise_peers: Option<&[String]>) -> Result<EtcdCluster> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("bench-etcd-");
        let dir = match &args.data_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("creating a data directory for etcd (see --data-dir)")?;
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&args.script)
            .arg("start")
            .arg(dir.path())
            .args(["--ip-prefix", &args.ip_prefix])
            .args(["--client-port", &CLIENT_PORT.to_string()])
            .args(["--peer-port", &PEER_PORT.to_string()]);
        if let Some(urls) = advertise_peers {
            cmd.args(["--advertise-peers", &urls.join(",")]);
        }
        // Constructed before the script runs, so a half-started cluster is stopped too.
        let urls = Member::ALL
            .map(|m| format!("http://{}.{}:{CLIENT_PORT}", args.ip_prefix, m.index() + 1));
        let cluster = EtcdCluster {
            script: args.script.clone(),
            dir,
            urls,
        };
        eprintln!(
            "bench-etcd: starting etcd in {}",
            cluster.dir.path().display()
        );
        let out = cmd
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {} start", args.script.display()))?;
        ensure!(
            out.status.success(),
            "{} start failed ({}): {}",
            args.script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(cluster)
    }

    fn url(&self, m: Member) -> &str {
        &self.urls[m.index()]
    }

    /// Each member's id and the leader it sees.
    async fn status(&self, client: &HttpClient, m: Member) -> Result<(String, String)> {
        let url = format!("{}/v3/maintenance/status", self.url(m));
        let v = post_json(client, &url, &json!({})).await?;
        let id = v["header"]["member_id"]
            .as_str()
            .ok_or_else(|| anyhow!("{url}: no header.member_id in {v}"))?;
        let leader = v["leader"]
            .as_str()
            .ok_or_else(|| anyhow!("{url}: no leader in {v}"))?;
        Ok((id.to_owned(), leader.to_owned()))
    }

    async fn leader(&self, client: &HttpClient) -> Result<Member> {
        let (_, leader) = self.status(client, Member::A).await?;
        for m in Member::ALL {
            if self.status(client, m).await?.0 == leader {
                return Ok(m);
            }
        }
        bail!("the leader {leader} member a reports is none of a, b, c")
    }

    /// Moves the leadership to `to` and waits until every member agrees.
    async fn move_leader(&self, client: &HttpClient, to: Member) -> Result<()> {
        let mut ids = Vec::new();
        for m in Member::ALL {
            ids.push(self.status(client, m).await?.0);
        }
        let deadline = Instant::now() + Duration::from_millis(LEADER_MOVE_TIMEOUT_MS);
        loop {
            let mut leaders = Vec::new();
            for m in Member::ALL {
                leaders.push(self.status(client, m).await?.1);
            }
            if leaders.iter().all(|l| *l == ids[to.index()]) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "member {} did not become the leader within {LEADER_MOVE_TIMEOUT_MS} ms (members see {leaders:?}; ids {ids:?})",
                to.name()
            );
            if let Some(current) = Member::ALL
                .into_iter()
                .find(|m| ids[m.index()] == leaders[0])
            {
                let url = format!("{}/v3/maintenance/transfer-leadership", self.url(current));
                // Sent to the leader; a failure (e.g. an election under way) is retried.
                if let Err(e) =
                    post_json(client, &url, &json!({ "targetID": ids[to.index()] })).await
                {
                    eprintln!(
                        "bench-etcd: moving the leader to {}: {e:#}; retrying",
                        to.name()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let stopped = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "bench-etcd: stopping the cluster in {} failed ({stopped:?}); its pids are in that directory",
                self.dir.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Claims

use homeport_integration::{BenchHttpClient as HttpClient, bench_http_client as http_client};

async fn post_json(client: &HttpClient, url: &str, body: &Value) -> Result<Value> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .with_context(|| format!("building a request to {url}"))?;
    let work = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        anyhow::Ok(serde_json::from_slice::<Value>(&body)?)
    };
    match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), work).await {
        Ok(r) => r.with_context(|| url.to_owned()),
        Err(_) => bail!("{url}: no answer within {REQUEST_TIMEOUT_MS} ms"),
    }
}

/// One claim: put-if-absent of `key`. `Ok(false)` if the key already existed.
async fn claim(client: &HttpClient, url: &str, key: &str, value: &[u8]) -> Result<bool> {
    let key = BASE64.encode(key);
    let body = json!({
        "compare": [{ "key": key, "target": "CREATE", "create_revision": 0 }],
        "success": [{ "request_put": { "key": key, "value": BASE64.encode(value) } }],
    });
    let v = post_json(client, url, &body).await?;
    // The gateway leaves out false booleans.
    Ok(v["succeeded"].as_bool().unwrap_or(false))
}

struct Row {
    scenario: String,
    leader: String,
    concurrency: usize,
    claims: u64,
    errors: u64,
    secs: f64,
    latency_us: Histogram<u64>,
    /// The linearizability check after the scenario's last level.
    lincheck: Option<String>,
}

async fn measure_levels(
    args: &Args,
    client: &HttpClient,
    endpoint: &str,
    scenario: &str,
    leader: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let url = format!("{endpoint}/v3/kv/txn");
    // Distinct keys across runs of this program, too (a given cluster may be reused).
    let run_id = format!("{:08x}", rand::random::<u32>());
    for &c in &args.concurrency {
        eprintln!("bench-etcd: {scenario}, leader {leader}, concurrency {c}");
        let prefix = format!("bench/{run_id}/{}/{c}", rows.len());
        if args.warmup_secs > 0 {
            let warm = format!("{prefix}/warm");
            closed_loop(args, client, &url, &warm, c, args.warmup_secs).await?;
        }
        let (claims, errors, secs, latency_us) =
            closed_loop(args, client, &url, &prefix, c, args.duration_secs).await?;
        rows.push(Row {
            scenario: scenario.to_owned(),
            leader: leader.to_owned(),
            concurrency: c,
            claims,
            errors,
            secs,
            latency_us,
            lincheck: None,
        });
    }
    if args.lincheck_secs > 0 {
        eprintln!("bench-etcd: {scenario}, leader {leader}: recording a contended history");
        let verdict = contended_history(client, endpoint, &run_id, args.lincheck_secs).await?;
        if let Some(last) = rows.last_mut() {
            last.lincheck = Some(verdict);
        }
    }
    Ok(())
}

/// Tasks of the contended history, keys they share, and distinct owners among the tasks (so
/// claims are sometimes idempotent and releases sometimes by the owner).
const LINCHECK_TASKS: usize = 16;
const LINCHECK_KEYS: usize = 4;
const LINCHECK_UIDS: usize = 4;

type RegistryRecorder = Recorder<String, RegistryOp<String>, RegistryRet<String>>;

/// Records `secs` of claims (40%), releases (30%) and lookups (30%) by [`LINCHECK_TASKS`] tasks
/// on [`LINCHECK_KEYS`] keys and checks the history; a violation is an error.
async fn contended_history(
    client: &HttpClient,
    endpoint: &str,
    run_id: &str,
    secs: u64,
) -> Result<String> {
    let recorder = RegistryRecorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..LINCHECK_TASKS {
        let (client, endpoint, stop, recorder) = (
            client.clone(),
            endpoint.to_owned(),
            stop.clone(),
            recorder.clone(),
        );
        let keys: Vec<String> = (0..LINCHECK_KEYS)
            .map(|k| format!("lincheck/{run_id}/{k}"))
            .collect();
        let uid = format!("u{}", t % LINCHECK_UIDS);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(t as u64);
            while !stop.load(Ordering::Relaxed) {
                let key = keys[rng.random_range(0..keys.len())].clone();
                let op = match rng.random_range(0..10) {
                    0..4 => RegistryOp::Claim(uid.clone()),
                    4..7 => RegistryOp::Release(uid.clone()),
                    _ => RegistryOp::Lookup,
                };
                let invocation = recorder.invoke(key.clone(), op.clone());
                match registry_op(&client, &endpoint, &key, &op).await {
                    Ok(ret) => invocation.ok(ret),
                    Err(e) => {
                        // It may or may not have taken effect.
                        invocation.unknown();
                        eprintln!("bench-etcd: {op:?} on {key}: {e:#} (recorded as unknown)");
                        tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let history = recorder.history();
    let start = Instant::now();
    let verdict = check(&Registry::new(), &history, &CheckOptions::default());
    let took_ms = start.elapsed().as_secs_f64() * 1e3;
    match verdict {
        Verdict::Linearizable(s) => Ok(format!(
            "linearizable: {} ops ({} unknown) on {} keys, checked in {took_ms:.1} ms",
            s.ops, s.unknown_ops, s.keys
        )),
        Verdict::GaveUp(g) => Ok(format!("undecided in {took_ms:.1} ms: {g}")),
        Verdict::NotLinearizable(v) => bail!("etcd's history is NOT linearizable:\n{v}"),
    }
}

/// One registry operation as etcd transactions: a claim is put-if-absent, else read the owner;
/// a release deletes if the value is the caller's uid, else reads; a lookup is a (linearizable)
/// range read.
async fn registry_op(
    client: &HttpClient,
    endpoint: &str,
    key: &str,
    op: &RegistryOp<String>,
) -> Result<RegistryRet<String>> {
    let k = BASE64.encode(key);
    let read = json!([{ "request_range": { "key": k } }]);
    let (url, body) = match op {
        RegistryOp::Claim(uid) => (
            "kv/txn",
            json!({
                "compare": [{ "key": k, "target": "CREATE", "create_revision": 0 }],
                "success": [{ "request_put": { "key": k, "value": BASE64.encode(uid) } }],
                "failure": read,
            }),
        ),
        RegistryOp::Release(uid) => (
            "kv/txn",
            json!({
                "compare": [{ "key": k, "target": "VALUE", "value": BASE64.encode(uid) }],
                "success": [{ "request_delete_range": { "key": k } }],
                "failure": read,
            }),
        ),
        RegistryOp::Lookup => ("kv/range", json!({ "key": k })),
    };
    let v = post_json(client, &format!("{endpoint}/v3/{url}"), &body).await?;
    let owner = |kvs: &Value| -> Result<Option<String>> {
        let Some(value) = kvs.get(0).and_then(|kv| kv["value"].as_str()) else {
            return Ok(None);
        };
        let bytes = BASE64
            .decode(value)
            .with_context(|| format!("etcd sent a value that is not base64: {value}"))?;
        Ok(Some(
            String::from_utf8(bytes).context("etcd sent an owner that is not UTF-8")?,
        ))
    };
    let succeeded = v["succeeded"].as_bool().unwrap_or(false);
    let failure_kvs = &v["responses"][0]["response_range"]["kvs"];
    Ok(match op {
        RegistryOp::Claim(_) if succeeded => RegistryRet::Claimed,
        RegistryOp::Claim(uid) => match owner(failure_kvs)? {
            Some(o) if o == *uid => RegistryRet::Claimed,
            Some(o) => RegistryRet::Owned(o),
            None => bail!(
                "claim of {key}: the key exists yet reads as absent in the same transaction: {v}"
            ),
        },
        RegistryOp::Release(_) if succeeded => RegistryRet::Released,
        RegistryOp::Release(_) => match owner(failure_kvs)? {
            Some(_) => RegistryRet::NotOwner,
            None => RegistryRet::NotHeld,
        },
        RegistryOp::Lookup => RegistryRet::Found(owner(&v["kvs"])?),
    })
}

/// `c` tasks claim distinct keys one at a time for `secs`; (claims, errors, elapsed, latency).
async fn closed_loop(
    args: &Args,
    client: &HttpClient,
    url: &str,
    prefix: &str,
    c: usize,
    secs: u64,
) -> Result<(u64, u64, f64, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let value: Arc<[u8]> = vec![b'u'; args.value_bytes].into();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for t in 0..c {
        let (client, url, stop, errors, value) = (
            client.clone(),
            url.to_owned(),
            stop.clone(),
            errors.clone(),
            value.clone(),
        );
        let prefix = format!("{prefix}/{t}");
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?;
            let mut n = 0u64;
            let mut last_error = None;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{prefix}/{n}");
                n += 1;
                let t0 = Instant::now();
                match claim(&client, &url, &key, &value).await {
                    Ok(true) => hist.saturating_record(t0.elapsed().as_micros() as u64),
                    Ok(false) => bail!("{key} already existed: keys of a run must be fresh"),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        last_error = Some(e);
                        tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                    }
                }
            }
            if let Some(e) = last_error {
                eprintln!("bench-etcd: a claim failed: {e:#}");
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?;
    for t in tasks {
        total.add(t.await??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((total.len(), errors.load(Ordering::Relaxed), elapsed, total))
}

// ---------------------------------------------------------------------------------------------
// Report

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "etcd (version unknown)".to_owned())
}

fn print_report(args: &Args, rows: &[Row], load_before: &str, load_after: &str) {
    println!("# bench-etcd: put-if-absent claims (txn: create_revision(key) == 0 -> put)");
    match &args.endpoint {
        Some(endpoint) => println!(
            "# {} (local binary), a given cluster; client talking to {endpoint} over the JSON gateway",
            etcd_version()
        ),
        None => println!(
            "# {}, 3 members, fsync on; client in region A talking to member a over the JSON gateway",
            etcd_version()
        ),
    }
    println!(
        "# {} s per run after {} s warm-up; value {} bytes; data under {}",
        args.duration_secs,
        args.warmup_secs,
        args.value_bytes,
        args.data_dir
            .as_deref()
            .unwrap_or_else(|| Path::new("the system temp dir"))
            .display()
    );
    println!(
        "# cores {}; load average (1/5/15 min) before {load_before}, after {load_after}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>6} {:>5} {:>10} {:>9} {:>9} {:>7}",
        "scenario", "leader", "conc", "claims/s", "p50 ms", "p99 ms", "errors"
    );
    for r in rows {
        let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<22} {:>6} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            r.scenario,
            r.leader,
            r.concurrency,
            r.claims as f64 / r.secs,
            ms(0.5),
            ms(0.99),
            r.errors
        );
    }
    for r in rows {
        if let Some(verdict) = &r.lincheck {
            println!("# lincheck, {} leader {}: {verdict}", r.scenario, r.leader);
        }
    }
}
