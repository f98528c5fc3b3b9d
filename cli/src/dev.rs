//! `homeport dev`: a whole local three-region deployment from embedded defaults, no set-up.
//!
//! Writes the deployment file, certificates and a dev ticket key under `--dir`, runs every queue
//! node, every region process and every region's gateway as a child process (real processes, so `kill -9` of one behaves as in
//! production), and prints the replication lag table every few seconds (heartbeats flow between
//! regions even while nobody writes). For a config without region processes, it instead has each
//! region append a test entry every heartbeat interval while every other region consumes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use homeport_config::Deployment;
use homeport_queue::client::{self, NodeClient};
use homeport_queue::consumer::{ConsumerOptions, RegionConsumer};
use homeport_queue::entry;
use homeport_queue::producer::Producer;
use homeport_wire::pb;
use tokio::process::{Child, Command};

/// The embedded deployment: the repository's three-region example, with paths under `--dir`.
const EMBEDDED_CONFIG: &str = include_str!("../../examples/three-regions.toml");
/// How long nodes get to answer after start before `dev` gives up and points at their logs.
const NODE_START_TIMEOUT_MS: u64 = 30_000;
const STATUS_TIMEOUT_MS: u64 = 1_000;
const REPORT_INTERVAL_MS: u64 = 5_000;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Working directory for the deployment file, data, certificates and logs.
    #[arg(long, default_value = ".homeport-dev")]
    dir: PathBuf,
    /// Use this deployment file instead of the embedded three-region one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep the queue data of an earlier run (default: start from empty logs, so the printed
    /// delays are about this run only).
    #[arg(long)]
    keep_data: bool,
    /// Only run the nodes; no demo traffic.
    #[arg(long)]
    no_traffic: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration_secs: Option<u64>,
}

fn embedded_config_text() -> String {
    EMBEDDED_CONFIG
        .replace("../data/three-regions", "data")
        .replace("../certs/three-regions", "certs")
}

pub async fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let config_path = match &args.config {
        Some(p) => p.clone(),
        None => {
            let p = args.dir.join("homeport.toml");
            std::fs::write(&p, embedded_config_text())
                .with_context(|| format!("writing {}", p.display()))?;
            p
        }
    };
    let d = crate::load_config(&config_path)?;
    if !args.keep_data && d.data_root.exists() {
        std::fs::remove_dir_all(&d.data_root)
            .with_context(|| format!("removing {}", d.data_root.display()))?;
    }
    crate::write_certs(&d, &d.tls.cert_dir)?;
    let ticket_keys = crate::ensure_dev_ticket_keys(&d)?;
    let logs = args.dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    let exe = std::env::current_exe().context("finding the homeport executable")?;
    let mut children = Vec::new();
    for n in d.nodes() {
        let args = [
            "queue-node",
            "--config",
            &config_path.display().to_string(),
            "--node",
            &n.node.id,
        ];
        children.push((
            n.node.id.clone(),
            spawn(&exe, &args, &logs.join(format!("{}.log", n.node.id)))?,
        ));
    }
    let endpoint = client::client_endpoint(&d, homeport_config::OPERATOR_IDENTITY)?;
    wait_for_nodes(&d, &endpoint, &mut children, &logs).await?;
    let regions: Vec<String> = d
        .regions
        .iter()
        .filter(|r| r.process.is_some())
        .map(|r| r.name.clone())
        .collect();
    for r in &regions {
        let name = homeport_config::region_identity(r);
        let args = [
            "region",
            "--config",
            &config_path.display().to_string(),
            "--region",
            r,
        ];
        children.push((
            name.clone(),
            spawn(&exe, &args, &logs.join(format!("{name}.log")))?,
        ));
    }

    // One registry node per region (before the gateways, which call it).
    for r in d.regions.iter().filter(|r| r.registry.is_some()) {
        let name = homeport_config::registry_identity(&r.name);
        let args = [
            "registry",
            "--config",
            &config_path.display().to_string(),
            "--region",
            &r.name,
        ];
        children.push((
            name.clone(),
            spawn(&exe, &args, &logs.join(format!("{name}.log")))?,
        ));
    }

    let gateways: Vec<(String, String)> = d
        .regions
        .iter()
        .filter(|r| r.process.is_some())
        .filter_map(|r| {
            r.gateway
                .as_ref()
                .map(|g| (r.name.clone(), g.public_url.clone()))
        })
        .collect();
    for (r, _) in &gateways {
        let name = homeport_config::gateway_identity(r);
        let args = [
            "gateway",
            "--config",
            &config_path.display().to_string(),
            "--region",
            r,
        ];
        children.push((
            name.clone(),
            spawn(&exe, &args, &logs.join(format!("{name}.log")))?,
        ));
    }

    let cfg = config_path.display();
    println!(
        "homeport dev: {} queue nodes, {} region processes and {} gateways in regions {}",
        d.nodes().count(),
        regions.len(),
        gateways.len(),
        d.region_names().join(", ")
    );
    println!("  config: {cfg}    logs: {}", logs.display());
    println!("  try:    homeport lag          --config {cfg} --watch");
    println!("          homeport queue status --config {cfg} --region sh");
    println!("          homeport queue tail   --config {cfg} --region hk --follow");
    if let (Some((first, url)), Some(key)) = (gateways.first(), ticket_keys.first()) {
        println!("  gateways:");
        for (r, url) in &gateways {
            println!("          {r}: {url}");
        }
        println!("  a ticket for user {first}-1001, then a write and a roaming redirect:");
        println!(
            "          T=$({} ticket issue --uid {first}-1001 --key {})",
            exe.display(),
            key.display()
        );
        println!(
            "          curl -i -X PUT -H \"Authorization: Bearer $T\" --data hello {url}/v1/users/{first}-1001/records/greeting"
        );
        if let Some((_, other)) = gateways.get(1) {
            println!(
                "          curl -i -H \"Authorization: Bearer $T\" {other}/v1/users/{first}-1001/records/greeting"
            );
        }
    }

    // Queue-only deployments get test entries; with region processes, heartbeats already flow.
    let traffic = if args.no_traffic || !regions.is_empty() {
        None
    } else {
        Some(start_traffic(&d)?)
    };
    let thresholds =
        homeport_replay::lag::LagThresholds::new(5.0, 30.0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = async {
        match args.duration_secs {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => crate::shutdown_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut report = tokio::time::interval(Duration::from_millis(REPORT_INTERVAL_MS));
    report.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = report.tick() => {
                if let Some(t) = &traffic { t.print(); }
                if !regions.is_empty() {
                    let rows = crate::lag_cmd::collect(&d, &endpoint, None).await;
                    crate::lag_cmd::print(&rows, &thresholds, false);
                }
                for (id, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!("{id} exited ({status}); see {}", logs.join(format!("{id}.log")).display());
                    }
                }
            }
        }
    }
    if let Some(t) = &traffic {
        t.print();
    }
    println!("stopping {} processes", children.len());
    for (_, mut c) in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}

fn spawn(exe: &Path, args: &[&str], log_path: &Path) -> Result<Child> {
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    Command::new(exe)
        .args(args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `homeport {}`", args.join(" ")))
}

async fn wait_for_nodes(
    d: &Deployment,
    endpoint: &quinn::Endpoint,
    children: &mut [(String, Child)],
    logs: &Path,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    for n in d.nodes() {
        let c = NodeClient::new(endpoint.clone(), &n.region.name, &n.node.id, n.node.addr);
        loop {
            if c.status(STATUS_TIMEOUT_MS).await.is_ok() {
                break;
            }
            let child = children.iter_mut().find(|(id, _)| id == &n.node.id);
            if let Some((_, child)) = child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "queue node {} exited at start ({status}); see {}",
                    n.node.id,
                    logs.join(format!("{}.log", n.node.id)).display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "queue node {} did not answer within {NODE_START_TIMEOUT_MS} ms; see {}",
                    n.node.id,
                    logs.join(format!("{}.log", n.node.id)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[derive(Default, Clone)]
struct PairStats {
    entries: u64,
    last_delay_ms: i64,
    max_delay_ms: i64,
}

struct Traffic {
    produced: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    pairs: Arc<Mutex<HashMap<(String, String), PairStats>>>,
}

impl Traffic {
    fn print(&self) {
        let produced = self.produced.lock().expect("lock").clone();
        let pairs = self.pairs.lock().expect("lock").clone();
        let mut regions: Vec<_> = produced.keys().cloned().collect();
        regions.sort();
        for r in &regions {
            let (ok, failed) = produced[r];
            println!("  {r}: {ok} entries committed, {failed} failed");
        }
        let mut keys: Vec<_> = pairs.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let s = &pairs[&k];
            println!(
                "    {} -> {}: {} consumed, last delay {} ms, max {} ms",
                k.0, k.1, s.entries, s.last_delay_ms, s.max_delay_ms
            );
        }
    }
}

/// Each region appends a test entry every heartbeat interval; every other region consumes them.
fn start_traffic(d: &Deployment) -> Result<Traffic> {
    let produced = Arc::new(Mutex::new(HashMap::new()));
    let pairs = Arc::new(Mutex::new(HashMap::new()));
    let interval = Duration::from_millis(d.queue.heartbeat_interval_ms);
    for r in &d.regions {
        let endpoint = client::client_endpoint(d, &homeport_config::region_identity(&r.name))?;
        let producer =
            Producer::for_region(d, &r.name, &endpoint).map_err(|e| anyhow::anyhow!("{e}"))?;
        let produced = produced.clone();
        let name = r.name.clone();
        produced.lock().expect("lock").insert(name.clone(), (0, 0));
        tokio::spawn(async move {
            let _endpoint = endpoint;
            let mut tick = tokio::time::interval(interval);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let e = producer.new_entry(
                    pb::EntryKind::Test,
                    Bytes::from(format!("hello from {name} #{n}")),
                );
                n += 1;
                let ok = producer.append(&[e]).await.is_ok();
                let mut p = produced.lock().expect("lock");
                let slot = p.entry(name.clone()).or_insert((0, 0));
                if ok { slot.0 += 1 } else { slot.1 += 1 }
            }
        });
        for dst in d.regions.iter().filter(|x| x.name != r.name) {
            let endpoint =
                client::client_endpoint(d, &homeport_config::region_identity(&dst.name))?;
            let mut consumer = RegionConsumer::start(
                d,
                &r.name,
                &endpoint,
                HashMap::new(),
                ConsumerOptions::from_settings(&d.queue),
            );
            let key = (r.name.clone(), dst.name.clone());
            let pairs = pairs.clone();
            tokio::spawn(async move {
                let _endpoint = endpoint;
                while let Some(batch) = consumer.next_batch().await {
                    let now = entry::now_unix_ms() as i64;
                    let mut p = pairs.lock().expect("lock");
                    let s: &mut PairStats = p.entry(key.clone()).or_default();
                    for e in &batch.entries {
                        let delay = now - e.entry.origin_unix_ms as i64;
                        s.entries += 1;
                        s.last_delay_ms = delay;
                        s.max_delay_ms = s.max_delay_ms.max(delay);
                    }
                }
            });
        }
    }
    Ok(Traffic { produced, pairs })
}
