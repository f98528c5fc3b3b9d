//! Quorum-queue append throughput and latency, side by side with NATS JetStream R3.
//!
//! Both systems run as 3 real processes on loopback, in one program run, so they see the same
//! machine, the same disk and the same noise. For each level of concurrency `c`, `c` tasks each
//! await one append of one entry at a time (a closed loop); every level gets a warm-up per system,
//! then `--repeats` measured runs that alternate which system goes first, so slow drift of the
//! machine hurts both alike. Reported are medians over the repeats.
//!
//! What an ack means differs, and the table says so: homeport acks once 2 of 3 nodes have fsynced
//! the entry; JetStream acks once a quorum of replicas has the message in its file store, which it
//! fsyncs only periodically (2.9 has no knob to fsync every write: `sync_interval` came in 2.10).
//!
//! Run it with `scripts/bench-queue.sh` (installs nats-server, builds in release).

use homeport_integration::bench_claims::scrape_metrics;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use homeport_integration::{Cluster, ClusterSpec};
use homeport_queue::producer::Producer;
use homeport_wire::pb;

/// Largest latency the histograms hold; anything slower is clamped (and would be a failure anyway,
/// far past both systems' append timeouts).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long the NATS cluster gets to elect a meta leader and place an R3 stream.
const NATS_READY_TIMEOUT_MS: u64 = 60_000;
/// Pause after a failed append, so a dead system is not hammered in a tight loop.
const ERROR_BACKOFF_MS: u64 = 10;
/// Samples of the raw disk baseline (write one payload + fdatasync).
const FDATASYNC_BASELINE_SAMPLES: usize = 200;
/// The region the benchmark's one queue group lives in.
const REGION: &str = "sh";
/// JetStream stream and subject of the benchmark.
const NATS_STREAM: &str = "BENCH";
const NATS_SUBJECT: &str = "bench.queue";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FsyncArg {
    /// Nodes fsync before they ack: an ack means durable (the default, and the only safe mode).
    Always,
    /// UNSAFE: nodes ack without fsync, so acks do not mean durable. Shows what fsync costs.
    Never,
}

/// Quorum-queue append throughput and latency (p50/p99), side by side with NATS JetStream R3.
#[derive(Debug, Parser)]
#[command(name = "bench-queue")]
struct Args {
    /// Length of one measured run, per system, per concurrency level, per repeat.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up before the measured runs of each concurrency level, per system (not measured).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Measured runs per system and level; the report gives their medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Appends in flight: that many tasks, each awaiting one append of one entry at a time.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Size of each entry's payload (the same random bytes for both systems).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Measure homeport alone (e.g. where nats-server is not installed).
    #[arg(long)]
    skip_nats: bool,
    /// homeport nodes' fsync mode; `never` is UNSAFE and labelled so in the report.
    #[arg(long, value_enum, default_value_t = FsyncArg::Always)]
    fsync: FsyncArg,
    /// Extra `[queue]` setting for the homeport deployment, as a TOML line (repeatable), e.g.
    /// `--queue-setting max_in_flight_batches=4`: for finding where time goes. The report lists them.
    #[arg(long = "queue-setting", value_name = "KEY=VALUE")]
    queue_settings: Vec<String>,
    /// The nats-server program (Debian: `apt-get install -y nats-server`).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        ensure!(self.repeats > 0, "--repeats must be at least 1");
        ensure!(
            !self.concurrency.is_empty(),
            "--concurrency needs at least one level, e.g. 1,16,256"
        );
        for &c in &self.concurrency {
            ensure!(
                (1..=65_536).contains(&c),
                "--concurrency {c} is outside 1..=65536"
            );
        }
        ensure!(
            (1..=1024 * 1024).contains(&self.payload_bytes),
            "--payload-bytes {} is outside 1..=1048576 (JetStream's default max_payload is 1 MiB)",
            self.payload_bytes
        );
        for q in &self.queue_settings {
            ensure!(
                q.contains('=') && !q.contains('\n'),
                "--queue-setting {q:?} is not one `key = value` TOML line, e.g. max_in_flight_batches=4"
            );
            ensure!(
                !q.trim_start().starts_with("fsync"),
                "set fsync with --fsync, so the report labels an unsafe mode"
            );
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("bench-queue: {e:#}");
        return ExitCode::from(2);
    }
    homeport_integration::bench_main("bench-queue", run(args))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Homeport,
    Nats,
}

/// One system under load: what a worker task calls once per append.
#[derive(Clone)]
enum Appender {
    Homeport(Arc<Producer>),
    Nats(Arc<async_nats::jetstream::Context>),
}

impl Appender {
    async fn append(&self, payload: &Bytes) -> Result<()> {
        match self {
            Appender::Homeport(p) => {
                let entry = p.new_entry(pb::EntryKind::Test, payload.clone());
                p.append(std::slice::from_ref(&entry)).await?;
            }
            Appender::Nats(js) => {
                let ack = js
                    .publish(
                        async_nats::Subject::from_static(NATS_SUBJECT),
                        payload.clone(),
                    )
                    .await?;
                ack.await?;
            }
        }
        Ok(())
    }
}

/// What one measured (or warm-up) run saw.
struct RunResult {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    latency_us: Histogram<u64>,
    /// Share of all cores' time spent busy during the run (every process, not only the system
    /// under test): near 100% means the run was CPU-bound.
    cpu_busy_pct: Option<f64>,
    /// homeport only: counter deltas summed over the 3 nodes, and the producer's batches.
    nodes: Option<NodeCounters>,
    producer_batches: Option<f64>,
}

impl RunResult {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// `concurrency` closed-loop workers for `duration`; only appends that complete inside the window
/// count, so in-flight work at the end is neither counted nor waited for in the rate.
async fn drive(
    appender: &Appender,
    payload: &Bytes,
    concurrency: usize,
    duration: Duration,
) -> Result<RunResult> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let appender = appender.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut ops = 0u64;
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = appender.append(&payload).await;
                let t1 = Instant::now();
                match r {
                    Ok(()) if t1 <= deadline => {
                        ops += 1;
                        let us = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(us.max(1));
                    }
                    Ok(()) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                    }
                }
            }
            (hist, ops, errors, first_error)
        }));
    }
    let mut result = RunResult {
        ops: 0,
        errors: 0,
        first_error: None,
        secs: duration.as_secs_f64(),
        latency_us: new_histogram(),
        cpu_busy_pct: None,
        nodes: None,
        producer_batches: None,
    };
    for t in tasks {
        let (hist, ops, errors, first_error) =
            t.await.context("a benchmark worker task panicked")?;
        result
            .latency_us
            .add(&hist)
            .context("merging latency histograms")?;
        result.ops += ops;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Kills and reaps its children when dropped: on success, on error, on Ctrl-C and on panic.
#[derive(Default)]
struct ChildGuard {
    children: Vec<(String, Child)>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ChildGuard {
    /// The first child that has already exited, with its status (a crashed server would otherwise
    /// only show up as timeouts).
    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                _ => None,
            })
    }
}

/// Ports free on 127.0.0.1 right now. The listeners are held until all are chosen so no port is
/// handed out twice; a process started later could still take one (then nats-server fails to
/// start and says so in its log).
fn free_tcp_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("binding a free port on 127.0.0.1")?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A 3-node nats-server cluster with JetStream on 127.0.0.1, each node its own store dir.
struct NatsCluster {
    guard: ChildGuard,
    dir: tempfile::TempDir,
    /// (server name, client URL)
    servers: Vec<(String, String)>,
    version: String,
}

impl NatsCluster {
    fn start(program: &Path) -> Result<Self> {
        let version = Command::new(program)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "running {} --version; install it (`apt-get install -y nats-server`) or pass --skip-nats",
                    program.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let dir = tempfile::Builder::new().prefix("bench-nats-").tempdir()?;
        let ports = free_tcp_ports(6)?;
        let (client_ports, route_ports) = ports.split_at(3);
        let mut guard = ChildGuard::default();
        let mut servers = Vec::new();
        for i in 0..3 {
            let name = format!("bench-n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store)?;
            let routes: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("\"nats-route://127.0.0.1:{}\"", route_ports[j]))
                .collect();
            let conf = format!(
                "server_name: \"{name}\"\nlisten: \"127.0.0.1:{client}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: \"bench\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                client = client_ports[i],
                store = store.display(),
                route = route_ports[i],
                routes = routes.join(", "),
            );
            let conf_path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)?;
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
            let child = Command::new(program)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?;
            guard.children.push((name.clone(), child));
            servers.push((name, format!("nats://127.0.0.1:{}", client_ports[i])));
        }
        Ok(Self {
            guard,
            dir,
            servers,
            version,
        })
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.servers {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let _ = writeln!(out, "--- last lines of {name}.log ---");
            for l in tail.into_iter().rev() {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// Creates the R3 file-storage stream once the cluster can place it, waits until its leader
    /// and both followers are current, and returns a JetStream context on a connection to the
    /// stream leader's server: the publisher's best case, with no extra route hop, as homeport's
    /// producer also talks to its nodes directly.
    async fn ready_stream(&mut self) -> Result<async_nats::jetstream::Context> {
        let deadline = Instant::now() + Duration::from_millis(NATS_READY_TIMEOUT_MS);
        let config = async_nats::jetstream::stream::Config {
            name: NATS_STREAM.to_owned(),
            subjects: vec![NATS_SUBJECT.to_owned()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: 3,
            ..Default::default()
        };
        let mut last_error = String::from("nothing tried yet");
        let leader = loop {
            if let Some(exited) = self.guard.exited() {
                bail!("nats-server {exited}\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "the NATS cluster did not place an R3 stream within {NATS_READY_TIMEOUT_MS} ms; last error: {last_error}\n{}",
                    self.logs()
                );
            }
            match try_stream_leader(&self.servers[0].1, &config).await {
                Ok(Some(leader)) => break leader,
                Ok(None) => {
                    last_error = "stream has no leader with 2 current followers yet".to_owned()
                }
                Err(e) => last_error = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let url = self
            .servers
            .iter()
            .find(|(name, _)| *name == leader)
            .map(|(_, url)| url.clone())
            .with_context(|| {
                format!("the stream leader {leader:?} is none of this cluster's servers")
            })?;
        let client = async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("connecting to the stream leader at {url}"))?;
        Ok(async_nats::jetstream::new(client))
    }
}

/// Connects to `url`, creates (or finds) the stream, and returns its leader once both followers
/// are current; `None` while the stream is still settling.
async fn try_stream_leader(
    url: &str,
    config: &async_nats::jetstream::stream::Config,
) -> Result<Option<String>> {
    let client = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url))
        .await
        .context("connect timed out")??;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_or_create_stream(config.clone()).await?;
    let info = stream.get_info().await?;
    let Some(cluster) = info.cluster else {
        bail!("stream info has no cluster section: is clustering on?");
    };
    let current = cluster
        .replicas
        .iter()
        .filter(|r| r.current && !r.offline)
        .count();
    Ok(match cluster.leader {
        Some(leader) if current == 2 => Some(leader),
        _ => None,
    })
}

/// One homeport queue group of 3 real `homeport-it queue-node` processes, and a producer.
struct HomeportCluster {
    cluster: Cluster,
    producer: Arc<Producer>,
    _endpoint: quinn::Endpoint,
}

impl HomeportCluster {
    async fn start(fsync: FsyncArg, queue_settings: &[String]) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("homeport-it");
        ensure!(
            bin.exists(),
            "{} not found: build it next to this program with `cargo build --release -p homeport-integration --bins`",
            bin.display()
        );
        let mut spec = ClusterSpec::one_region(1);
        if fsync == FsyncArg::Never {
            spec = spec.with("fsync = \"never\"");
        }
        for q in queue_settings {
            spec = spec.with(q);
        }
        let cluster = Cluster::new(&bin, &spec)?;
        cluster.start_all()?;
        let endpoint = cluster.endpoint(&homeport_config::region_identity(REGION))?;
        cluster.wait_up(&endpoint, &cluster.node_ids()).await?;
        let producer = Producer::for_region(&cluster.deployment, REGION, &endpoint)
            .map_err(|e| anyhow!("starting the producer: {e}"))?;
        Ok(Self {
            cluster,
            producer: Arc::new(producer),
            _endpoint: endpoint,
        })
    }

    /// Sums the nodes' group-commit and fsync counters (absent metrics read as `None`).
    async fn node_counters(&self) -> Option<NodeCounters> {
        let mut total = NodeCounters::default();
        for n in self.cluster.deployment.nodes() {
            let text = scrape_metrics(n.node.admin_addr).await?;
            total.group_commits += prom_value(&text, "homeport_queue_group_commit_entries_count")?;
            total.entries += prom_value(&text, "homeport_queue_group_commit_entries_sum")?;
            total.fsyncs += prom_value(&text, "homeport_queue_fsync_seconds_count").unwrap_or(0.0);
            total.fsync_secs +=
                prom_value(&text, "homeport_queue_fsync_seconds_sum").unwrap_or(0.0);
        }
        Some(total)
    }
}

/// Counters of the 3 nodes, summed.
#[derive(Debug, Clone, Copy, Default)]
struct NodeCounters {
    group_commits: f64,
    entries: f64,
    fsyncs: f64,
    fsync_secs: f64,
}

impl std::ops::Sub for NodeCounters {
    type Output = NodeCounters;
    fn sub(self, o: NodeCounters) -> NodeCounters {
        NodeCounters {
            group_commits: self.group_commits - o.group_commits,
            entries: self.entries - o.entries,
            fsyncs: self.fsyncs - o.fsyncs,
            fsync_secs: self.fsync_secs - o.fsync_secs,
        }
    }
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text, or `None` if the
/// text has no such sample.
fn prom_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // a longer name that merely starts with `name`
        };
        if let Some(v) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Busy and total jiffies of all cores, from /proc/stat (Linux only; `None` elsewhere).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4] + v[7];
    Some((total - idle, total))
}

fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let dt = t1.checked_sub(t0)?;
    (dt > 0).then(|| 100.0 * b1.saturating_sub(b0) as f64 / dt as f64)
}

/// The producer's committed batches so far, from this process's own metrics recorder (`render`).
fn producer_batches(render: &Option<impl Fn() -> String>) -> Option<f64> {
    render
        .as_ref()
        .and_then(|r| prom_value(&r(), "homeport_producer_committed_batches_total"))
}

/// Latency of the disk itself: write one payload and fdatasync, as a node's group commit does.
/// Where this is ~1 ms, no fsync-per-batch design beats ~1000 group commits/s per node.
fn fdatasync_baseline(dir: &Path, payload_bytes: usize) -> Result<Histogram<u64>> {
    let path = dir.join("fdatasync-baseline");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0xa5u8; payload_bytes];
    let mut hist = new_histogram();
    for i in 0..FDATASYNC_BASELINE_SAMPLES {
        let t0 = Instant::now();
        file.write_all_at(&buf, (i * payload_bytes) as u64)?;
        file.sync_data()?;
        hist.saturating_record(
            u64::try_from(t0.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }
    std::fs::remove_file(&path)?;
    Ok(hist)
}

// ---------------------------------------------------------------------------------------------
// The run

struct Level {
    concurrency: usize,
    homeport: Vec<RunResult>,
    nats: Vec<RunResult>,
}

async fn run(args: Args) -> Result<()> {
    let payload = Bytes::from(
        (0..args.payload_bytes)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>(),
    );
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    // The producer runs in this process: its counters land in this recorder.
    let metrics = homeport_queue::admin::metrics_handle()
        .ok()
        .map(|h| move || h.render());

    let scratch = tempfile::Builder::new().prefix("bench-queue-").tempdir()?;
    let disk = {
        let dir = scratch.path().to_owned();
        let payload_bytes = args.payload_bytes;
        tokio::task::spawn_blocking(move || fdatasync_baseline(&dir, payload_bytes)).await??
    };
    eprintln!(
        "disk baseline ({}): write {} B + fdatasync p50 {} us, p99 {} us",
        scratch.path().display(),
        args.payload_bytes,
        disk.value_at_quantile(0.5),
        disk.value_at_quantile(0.99)
    );

    eprintln!(
        "starting 3 homeport queue nodes (fsync {:?})...",
        args.fsync
    );
    let homeport = HomeportCluster::start(args.fsync, &args.queue_settings).await?;
    let mut nats = if args.skip_nats {
        None
    } else {
        eprintln!("starting 3 nats-server nodes with JetStream...");
        let mut cluster = NatsCluster::start(&args.nats_server)?;
        let js = cluster.ready_stream().await?;
        eprintln!("{}: R3 stream {NATS_STREAM} ready", cluster.version);
        Some((cluster, js))
    };

    let h_appender = Appender::Homeport(homeport.producer.clone());
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        let mut level = Level {
            concurrency: c,
            homeport: Vec::new(),
            nats: Vec::new(),
        };
        eprintln!("== {c} in flight: warm-up {warmup:?} per system");
        drive(&h_appender, &payload, c, warmup).await?;
        if let Some((_, js)) = &nats {
            drive(&Appender::Nats(Arc::new(js.clone())), &payload, c, warmup).await?;
        }
        for rep in 0..args.repeats {
            // Alternate who goes first, so drift of a noisy machine hurts both alike.
            let order = if rep % 2 == 0 {
                [System::Homeport, System::Nats]
            } else {
                [System::Nats, System::Homeport]
            };
            for system in order {
                let r = match (system, &mut nats) {
                    (System::Homeport, _) => {
                        let n0 = homeport.node_counters().await;
                        let b0 = producer_batches(&metrics);
                        let cpu0 = cpu_jiffies();
                        let mut r = drive(&h_appender, &payload, c, duration).await?;
                        r.cpu_busy_pct = busy_pct(cpu0, cpu_jiffies());
                        let n1 = homeport.node_counters().await;
                        r.nodes = n0.zip(n1).map(|(a, b)| b - a);
                        r.producer_batches = b0.zip(producer_batches(&metrics)).map(|(a, b)| b - a);
                        level.homeport.push(r);
                        level.homeport.last()
                    }
                    (System::Nats, Some((cluster, js))) => {
                        if let Some(exited) = cluster.guard.exited() {
                            bail!("nats-server {exited}\n{}", cluster.logs());
                        }
                        let cpu0 = cpu_jiffies();
                        let mut r =
                            drive(&Appender::Nats(Arc::new(js.clone())), &payload, c, duration)
                                .await?;
                        r.cpu_busy_pct = busy_pct(cpu0, cpu_jiffies());
                        level.nats.push(r);
                        level.nats.last()
                    }
                    (System::Nats, None) => None,
                };
                if let Some(r) = r {
                    eprintln!(
                        "   rep {} {:<8} {:>9.0} appends/s  p50 {:>7} us  p99 {:>7} us  errors {}{}",
                        rep + 1,
                        match system {
                            System::Homeport => "homeport",
                            System::Nats => "nats",
                        },
                        r.throughput(),
                        r.latency_us.value_at_quantile(0.5),
                        r.latency_us.value_at_quantile(0.99),
                        r.errors,
                        r.first_error
                            .as_deref()
                            .map(|e| format!(" (first: {e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        levels.push(level);
    }

    let report = Report {
        args: &args,
        disk: &disk,
        nats_version: nats.as_ref().map(|(c, _)| c.version.clone()),
        levels: &levels,
    };
    print!("{}", report.render());
    // Explicit, so the order is clear: NATS servers, then homeport nodes, then the scratch dir.
    drop(nats.take());
    drop(homeport);
    drop(scratch);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians over the repeats of one system at one level.
struct Summary {
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_busy_pct: Option<f64>,
    errors: u64,
}

fn summarize(runs: &[RunResult]) -> Option<Summary> {
    Some(Summary {
        throughput: median(runs.iter().map(RunResult::throughput).collect())?,
        p50_us: median(
            runs.iter()
                .map(|r| r.latency_us.value_at_quantile(0.5) as f64)
                .collect(),
        )?,
        p99_us: median(
            runs.iter()
                .map(|r| r.latency_us.value_at_quantile(0.99) as f64)
                .collect(),
        )?,
        cpu_busy_pct: median(runs.iter().filter_map(|r| r.cpu_busy_pct).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
    })
}

struct Report<'a> {
    args: &'a Args,
    disk: &'a Histogram<u64>,
    nats_version: Option<String>,
    levels: &'a [Level],
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut o = String::new();
        self.render_into(&mut o)
            .expect("writing to a String cannot fail");
        o
    }

    fn render_into(&self, o: &mut String) -> std::fmt::Result {
        let a = self.args;
        let homeport_label = match a.fsync {
            FsyncArg::Always => "homeport",
            FsyncArg::Never => "homeport (fsync NEVER, UNSAFE)",
        };
        writeln!(o, "\n### Results\n")?;
        writeln!(
            o,
            "{} cores, {} B payloads, one entry per append, {} s per run, {} s warm-up per level, \
             median of {} runs per cell (systems alternating).",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            a.payload_bytes,
            a.duration_secs,
            a.warmup_secs,
            a.repeats
        )?;
        writeln!(
            o,
            "Disk: write {} B + fdatasync takes p50 {} us, p99 {} us on its own.",
            a.payload_bytes,
            self.disk.value_at_quantile(0.5),
            self.disk.value_at_quantile(0.99)
        )?;
        if !a.queue_settings.is_empty() {
            writeln!(
                o,
                "homeport `[queue]` settings changed from the defaults: `{}`.",
                a.queue_settings.join("`, `")
            )?;
        }
        writeln!(o)?;
        match a.fsync {
            FsyncArg::Always => writeln!(
                o,
                "- {homeport_label} ack: the entry is fsynced (fdatasync) on 2 of 3 nodes (`fsync = \"always\"`)."
            )?,
            FsyncArg::Never => writeln!(
                o,
                "- {homeport_label} ack: the entry is in the page cache of 2 of 3 nodes, NOT fsynced: \
                 a power loss of 2 nodes can lose acked entries. For comparison only."
            )?,
        }
        match &self.nats_version {
            Some(v) => writeln!(
                o,
                "- JetStream R3 ack ({v}): the message is stored by a quorum (2 of 3) of replicas, which \
                 fsync only periodically (by default every 2 min); 2.9 has no setting to fsync every write \
                 (`sync_interval` came in 2.10), so no fsync-always variant of JetStream is measured."
            )?,
            None => writeln!(o, "- JetStream: skipped (--skip-nats).")?,
        }
        writeln!(o)?;
        writeln!(
            o,
            "| in flight | {homeport_label} appends/s | JetStream R3 appends/s | ratio | {homeport_label} p50 / p99 (us) | JetStream p50 / p99 (us) | p99 ratio |"
        )?;
        writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        for l in self.levels {
            let h = summarize(&l.homeport);
            let n = summarize(&l.nats);
            let cell_tp = |s: &Option<Summary>| {
                s.as_ref()
                    .map_or("n/a".to_owned(), |s| format!("{:.0}", s.throughput))
            };
            let cell_lat = |s: &Option<Summary>| {
                s.as_ref().map_or("n/a".to_owned(), |s| {
                    format!("{:.0} / {:.0}", s.p50_us, s.p99_us)
                })
            };
            let (ratio, p99_ratio) = match (&h, &n) {
                (Some(h), Some(n)) if n.throughput > 0.0 && n.p99_us > 0.0 => (
                    format!("{:.2}x", h.throughput / n.throughput),
                    format!("{:.2}x", h.p99_us / n.p99_us),
                ),
                _ => ("n/a".to_owned(), "n/a".to_owned()),
            };
            writeln!(
                o,
                "| {} | {} | {} | {ratio} | {} | {} | {p99_ratio} |",
                l.concurrency,
                cell_tp(&h),
                cell_tp(&n),
                cell_lat(&h),
                cell_lat(&n)
            )?;
        }
        writeln!(
            o,
            "\nratio = homeport / JetStream throughput (above 1: homeport faster); p99 ratio = homeport p99 / JetStream p99 (below 1: homeport lower)."
        )?;

        writeln!(
            o,
            "\n#### Where homeport's time goes (sums over the measured runs)\n"
        )?;
        writeln!(
            o,
            "| in flight | producer batches/s | entries per producer batch | group commits/s per node | entries per group commit | fsyncs/s per node | mean fsync (us) | fsync busy per node | CPU busy homeport / JetStream runs | errors homeport / JetStream |"
        )?;
        writeln!(
            o,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for l in self.levels {
            let secs: f64 = l.homeport.iter().map(|r| r.secs).sum();
            let ops: f64 = l.homeport.iter().map(|r| r.ops as f64).sum();
            let batches: Option<f64> = l.homeport.iter().map(|r| r.producer_batches).sum();
            let nodes: Option<NodeCounters> =
                l.homeport
                    .iter()
                    .try_fold(NodeCounters::default(), |acc, r| {
                        r.nodes.map(|n| NodeCounters {
                            group_commits: acc.group_commits + n.group_commits,
                            entries: acc.entries + n.entries,
                            fsyncs: acc.fsyncs + n.fsyncs,
                            fsync_secs: acc.fsync_secs + n.fsync_secs,
                        })
                    });
            let f = |v: Option<f64>, digits: usize| {
                v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
            };
            let per_node = |v: f64| v / 3.0 / secs;
            let hs = summarize(&l.homeport);
            let ns = summarize(&l.nats);
            let cpu = |s: &Option<Summary>| f(s.as_ref().and_then(|s| s.cpu_busy_pct), 0);
            let errs = |s: &Option<Summary>| {
                s.as_ref()
                    .map_or("n/a".to_owned(), |s| s.errors.to_string())
            };
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {}% | {}% / {}% | {} / {} |",
                l.concurrency,
                f(batches.map(|b| b / secs), 0),
                f(batches.filter(|b| *b > 0.0).map(|b| ops / b), 1),
                f(nodes.map(|n| per_node(n.group_commits)), 0),
                f(
                    nodes
                        .filter(|n| n.group_commits > 0.0)
                        .map(|n| n.entries / n.group_commits),
                    1
                ),
                f(nodes.map(|n| per_node(n.fsyncs)), 0),
                f(
                    nodes
                        .filter(|n| n.fsyncs > 0.0)
                        .map(|n| 1e6 * n.fsync_secs / n.fsyncs),
                    0
                ),
                f(nodes.map(|n| 100.0 * per_node(n.fsync_secs)), 0),
                cpu(&hs),
                cpu(&ns),
                errs(&hs),
                errs(&ns),
            )?;
        }

        writeln!(o, "\n#### Every run\n")?;
        writeln!(
            o,
            "| in flight | run | system | appends/s | p50 (us) | p99 (us) | max (us) | errors |"
        )?;
        writeln!(
            o,
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for l in self.levels {
            for (name, runs) in [(homeport_label, &l.homeport), ("JetStream R3", &l.nats)] {
                for (i, r) in runs.iter().enumerate() {
                    writeln!(
                        o,
                        "| {} | {} | {name} | {:.0} | {} | {} | {} | {} |",
                        l.concurrency,
                        i + 1,
                        r.throughput(),
                        r.latency_us.value_at_quantile(0.5),
                        r.latency_us.value_at_quantile(0.99),
                        r.latency_us.max(),
                        r.errors
                    )?;
                }
            }
        }
        Ok(())
    }
}
