//! A harness for tests and benchmarks that run real homeport processes on 127.0.0.x.
//!
//! Each [`Cluster`] lives in its own temp dir, on its own randomly chosen loopback subnet
//! (127.X.Y.1-3, one IP per campus) with ports the kernel handed out, so tests run in parallel
//! without colliding. Every process it starts is killed when it is dropped.

pub mod bench_claims;
mod gateways;
mod regions;
pub mod registries;
pub mod wan;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use homeport_config::Deployment;
use homeport_queue::client::{self, NodeClient};

pub use gateways::{GatewaySetup, TEST_TICKET_KID, now_unix_secs};

/// How long a started node gets to answer its first status request.
pub const NODE_START_TIMEOUT_MS: u64 = 30_000;
/// Poll interval of [`wait_until`]: short enough to be quick, long enough not to spin.
const POLL_INTERVAL_MS: u64 = 25;

/// What to build: region names, groups per region, and extra `[queue]` TOML lines.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub regions: Vec<String>,
    pub groups_per_region: usize,
    /// Lines placed in the `[queue]` table, e.g. `"attempt_timeout_ms = 500"`.
    pub queue_settings: Vec<String>,
}

impl ClusterSpec {
    pub fn one_region(groups: usize) -> Self {
        Self {
            regions: vec!["sh".to_owned()],
            groups_per_region: groups,
            queue_settings: Vec::new(),
        }
    }

    pub fn with(mut self, setting: &str) -> Self {
        self.queue_settings.push(setting.to_owned());
        self
    }
}

/// A deployment of real processes in a temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub deployment: Deployment,
    bin: PathBuf,
    children: Mutex<HashMap<String, Child>>,
    /// The deployment file's text, for writing per-region variants (see [`Cluster::route_through`]).
    toml: String,
    /// Per region, the deployment file its region process reads (remote addresses may be relays).
    region_configs: Mutex<HashMap<String, PathBuf>>,
}

/// Region processes on top of the queue: extra TOML tables (e.g. `"[replay]\nread_wait_ms = 200"`).
#[derive(Debug, Clone, Default)]
pub struct RegionSetup {
    pub extra_toml: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for (_, mut c) in children.drain() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn random_subnet() -> (u8, u8) {
    (rand::random_range(16..=250), rand::random_range(1..=250))
}

/// Ports the kernel says are free on `ip`, for UDP (QUIC) and TCP (admin HTTP) each. The sockets
/// are held until all are chosen so one call never hands out a port twice; and since the
/// deployment file refuses one address for two listeners even across UDP and TCP, a port number
/// already handed out for the other protocol is skipped (the kernel numbers UDP and TCP apart).
fn free_ports(ip: IpAddr, n: usize) -> Result<Vec<(u16, u16)>> {
    let mut used = std::collections::HashSet::new();
    let mut held = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let u = distinct_port(&mut used, || UdpSocket::bind(SocketAddr::new(ip, 0)))
            .with_context(|| format!("binding UDP on {ip}"))?;
        let t = distinct_port(&mut used, || TcpListener::bind(SocketAddr::new(ip, 0)))
            .with_context(|| format!("binding TCP on {ip}"))?;
        out.push((u.0, t.0));
        held.push((u.1, t.1));
    }
    Ok(out)
}

/// Binds with `bind` until the kernel hands out a port number not in `used` (rare: two equal
/// numbers out of ~28k), and records it.
fn distinct_port<S: LocalPort>(
    used: &mut std::collections::HashSet<u16>,
    bind: impl Fn() -> std::io::Result<S>,
) -> Result<(u16, S)> {
    /// Draws before giving up.
    const MAX_DRAWS: usize = 64;
    for _ in 0..MAX_DRAWS {
        let socket = bind()?;
        let port = socket.port()?;
        if used.insert(port) {
            return Ok((port, socket));
        }
    }
    bail!("no port number free for both UDP and TCP after {MAX_DRAWS} draws")
}

trait LocalPort {
    fn port(&self) -> std::io::Result<u16>;
}

impl LocalPort for UdpSocket {
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

impl LocalPort for TcpListener {
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

impl Cluster {
    /// Writes the deployment file and certificates; starts nothing (see [`Cluster::start_all`]).
    pub fn new(bin: &Path, spec: &ClusterSpec) -> Result<Self> {
        Self::build(bin, spec, None, None)
    }

    /// As [`Cluster::new`], with a region process (`addr`, `api_addr`, `admin_addr`) per region.
    pub fn with_regions(bin: &Path, spec: &ClusterSpec, setup: &RegionSetup) -> Result<Self> {
        Self::build(bin, spec, Some(setup), None)
    }

    /// As [`Cluster::with_regions`], with a gateway (`[regions.gateway]`) per region and a ticket
    /// key (see [`GatewaySetup`]).
    pub fn with_gateways(
        bin: &Path,
        spec: &ClusterSpec,
        setup: &RegionSetup,
        gateways: &GatewaySetup,
    ) -> Result<Self> {
        Self::build(bin, spec, Some(setup), Some(gateways))
    }

    fn build(
        bin: &Path,
        spec: &ClusterSpec,
        setup: Option<&RegionSetup>,
        gateways: Option<&GatewaySetup>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("homeport-it-").tempdir()?;
        let (x, y) = random_subnet();
        let campus_ips: Vec<IpAddr> = (1..=3)
            .map(|c| IpAddr::V4(Ipv4Addr::new(127, x, y, c)))
            .collect();
        let nodes_per_campus = spec.regions.len() * spec.groups_per_region;
        // Region processes (QUIC + admin, and the HTTP API) live on campus a: take their ports in
        // the same call as the nodes', so no port is handed out twice.
        // Gateways (HTTP + QUIC, admin) take 2 more slots per region.
        let gateway_slots = if gateways.is_some() {
            2 * spec.regions.len()
        } else {
            0
        };
        let region_slots = gateway_slots
            + if setup.is_some() {
                2 * spec.regions.len()
            } else {
                0
            };
        let mut ports: Vec<Vec<(u16, u16)>> = Vec::new();
        for (i, ip) in campus_ips.iter().enumerate() {
            let extra = if i == 0 { region_slots } else { 0 };
            ports.push(free_ports(*ip, nodes_per_campus + extra)?);
        }
        let gateway_ports = gateways::take_ports(&mut ports[0], gateway_slots);
        let region_ports: Vec<(u16, u16, u16)> = ports[0]
            .split_off(nodes_per_campus)
            .chunks(2)
            .map(|c| (c[0].0, c[0].1, c[1].1))
            .collect();
        let mut toml = String::new();
        writeln!(toml, "[deployment]\nname = \"it\"\ndata_root = \"data\"\n")?;
        writeln!(
            toml,
            "[tls]\nca_cert = \"certs/ca.pem\"\ncert_dir = \"certs\"\n"
        )?;
        writeln!(toml, "[queue]")?;
        for s in &spec.queue_settings {
            writeln!(toml, "{s}")?;
        }
        if let Some(g) = gateways {
            g.write_deployment_toml(&mut toml)?;
        }
        for t in setup.map(|s| s.extra_toml.as_slice()).unwrap_or_default() {
            writeln!(toml, "\n{t}")?;
        }
        let mut slot = 0;
        for (ri, r) in spec.regions.iter().enumerate() {
            writeln!(toml, "\n[[regions]]\nname = \"{r}\"")?;
            if let Some((q, adm, api)) = region_ports.get(ri) {
                let ip = campus_ips[0];
                writeln!(
                    toml,
                    "addr = \"{ip}:{q}\"\napi_addr = \"{ip}:{api}\"\nadmin_addr = \"{ip}:{adm}\""
                )?;
            }
            if let (Some(g), Some(ports)) = (gateways, gateway_ports.get(ri)) {
                g.write_region_toml(&mut toml, r, campus_ips[0], *ports)?;
            }
            for g in 1..=spec.groups_per_region {
                writeln!(
                    toml,
                    "\n[[regions.queue_groups]]\nname = \"g{g}\"\nnodes = ["
                )?;
                for (c, campus) in ["a", "b", "c"].iter().enumerate() {
                    let (qp, ap) = ports[c][slot];
                    let ip = campus_ips[c];
                    writeln!(
                        toml,
                        "  {{ id = \"{r}-g{g}-{campus}\", addr = \"{ip}:{qp}\", admin_addr = \"{ip}:{ap}\", campus = \"{campus}\" }},"
                    )?;
                }
                writeln!(toml, "]")?;
                slot += 1;
            }
        }
        let config_path = dir.path().join("homeport.toml");
        std::fs::write(&config_path, &toml)?;
        let deployment =
            homeport_config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}\n{toml}"))?;
        homeport::write_certs(&deployment, &deployment.tls.cert_dir)?;
        homeport::ensure_dev_ticket_keys(&deployment)?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        Ok(Self {
            dir,
            config_path,
            deployment,
            bin: bin.to_owned(),
            children: Mutex::new(HashMap::new()),
            toml,
            region_configs: Mutex::new(HashMap::new()),
        })
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.deployment.nodes().map(|n| n.node.id.clone()).collect()
    }

    pub fn log_path(&self, node: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{node}.log"))
    }

    /// The node's log file contents, for assertions and for failure messages.
    pub fn node_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.deployment
            .node(node)
            .map(|n| n.node.data_dir.clone())
            .unwrap_or_default()
    }

    /// Starts the node's process (its log appends to `logs/<node>.log`).
    pub fn start_node(&self, node: &str) -> Result<()> {
        let config = self.config_path.display().to_string();
        self.spawn_process(node, &["queue-node", "--config", &config, "--node", node])
    }

    /// Spawns `homeport-it ARGS` as process `name` (log: `logs/<name>.log`).
    pub(crate) fn spawn_process(&self, name: &str, args: &[&str]) -> Result<()> {
        let mut children = self.children.lock().expect("children lock");
        if children.contains_key(name) {
            bail!("{name} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))?;
        let child = Command::new(&self.bin)
            .args(args)
            .env("HOMEPORT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        children.insert(name.to_owned(), child);
        Ok(())
    }

    pub fn start_all(&self) -> Result<()> {
        for id in self.node_ids() {
            self.start_node(&id)?;
        }
        Ok(())
    }

    /// `kill -9`: no shutdown path runs, as in a crash.
    pub fn kill_node(&self, node: &str) -> Result<()> {
        let child = self.children.lock().expect("children lock").remove(node);
        let Some(mut child) = child else {
            bail!("node {node} is not running");
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    pub fn is_running(&self, node: &str) -> bool {
        let mut children = self.children.lock().expect("children lock");
        match children.get_mut(node) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A QUIC client endpoint with the certificate of `identity` (a node id, `region-<r>`, `operator`).
    pub fn endpoint(&self, identity: &str) -> Result<quinn::Endpoint> {
        Ok(client::client_endpoint(&self.deployment, identity)?)
    }

    pub fn node_client(&self, endpoint: &quinn::Endpoint, node: &str) -> Result<NodeClient> {
        let n = self
            .deployment
            .node(node)
            .with_context(|| format!("no node {node}"))?;
        Ok(NodeClient::new(
            endpoint.clone(),
            &n.region.name,
            node,
            n.node.addr,
        ))
    }

    /// Waits until every listed node answers a status request.
    pub async fn wait_up(&self, endpoint: &quinn::Endpoint, nodes: &[String]) -> Result<()> {
        for id in nodes {
            let c = self.node_client(endpoint, id)?;
            let what = format!("node {id} to answer");
            let r = wait_until(&what, NODE_START_TIMEOUT_MS, || async {
                c.status(1_000).await.is_ok()
            })
            .await;
            if let Err(e) = r {
                bail!("{e}\n--- log of {id} ---\n{}", self.node_log(id));
            }
        }
        Ok(())
    }
}

/// Polls `cond` until it holds or `timeout_ms` passes. Tests wait for conditions, never for time.
pub async fn wait_until<F, Fut>(what: &str, timeout_ms: u64, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout_ms} ms waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// A benchmark's HTTP client: hyper-util's legacy client sending `Full<Bytes>` bodies.
pub type BenchHttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// Keep-alive HTTP/1.1 client with Nagle off; the pool opens another connection whenever all are
/// busy, so an open-loop generator gets as many concurrent connections as its requests need.
pub fn bench_http_client() -> BenchHttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// `main` of a benchmark program: a multi-thread runtime, `run` until done or Ctrl-C, exit code.
/// On Ctrl-C the `run` future is dropped, and with it every cluster it owns, whose Drop kills the
/// processes it started; a panic unwinds through the same drops.
pub fn bench_main<F>(name: &str, run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: could not start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => {
                Err(anyhow::anyhow!("interrupted; stopped every process this run started"))
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(BENCH_SHUTDOWN_TIMEOUT_SECS));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long a benchmark's runtime gets to wind down its tasks at exit.
const BENCH_SHUTDOWN_TIMEOUT_SECS: u64 = 1;
