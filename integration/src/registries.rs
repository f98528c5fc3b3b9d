//! Registry nodes as real processes: [`RegistryCluster`] writes a deployment with one registry
//! node per region (plus the one queue group per region the config requires, never started),
//! starts, kills (`-9`) and restarts nodes, and hands out [`RegistryClient`]s. With
//! [`RegistryCluster::route_through`], node-to-node traffic crosses the WAN emulator.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use homeport_config::Deployment;
use homeport_registry::client::RegistryClient;

use crate::{free_ports, random_subnet, wait_until, wan};

/// How long a started registry node gets to answer its first operation.
pub const REGISTRY_START_TIMEOUT_MS: u64 = 30_000;

/// One registry node per region, as processes of the `homeport-it` binary in a temp dir.
pub struct RegistryCluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub deployment: Deployment,
    bin: PathBuf,
    toml: String,
    children: Mutex<HashMap<String, Child>>,
    /// Per region, the file its node reads (other nodes' addresses may be WAN relays).
    configs: Mutex<HashMap<String, PathBuf>>,
    /// Environment variables every node started afterwards gets (see [`RegistryCluster::set_node_env`]).
    node_env: Mutex<Vec<(String, String)>>,
}

impl Drop for RegistryCluster {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for (_, mut c) in children.drain() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl RegistryCluster {
    /// Writes the deployment file (regions `regions`, each with a registry node on its own
    /// loopback IP) and certificates; starts nothing. `registry_settings` are lines of the
    /// `[registry]` table, e.g. `"round_timeout_ms = 500"`.
    pub fn new(bin: &Path, regions: &[&str], registry_settings: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("homeport-registry-it-")
            .tempdir()?;
        let (x, y) = random_subnet();
        let mut toml = String::new();
        writeln!(
            toml,
            "[deployment]\nname = \"it\"\ndata_root = \"data\"\n\n[tls]\nca_cert = \"certs/ca.pem\"\ncert_dir = \"certs\"\n\n[registry]"
        )?;
        for s in registry_settings {
            writeln!(toml, "{s}")?;
        }
        for (i, r) in regions.iter().enumerate() {
            let ip = IpAddr::V4(Ipv4Addr::new(127, x, y, 1 + u8::try_from(i)?));
            // Registry (QUIC + admin), and 3 never-started queue nodes the config requires.
            let ports = free_ports(ip, 4)?;
            writeln!(
                toml,
                "\n[[regions]]\nname = \"{r}\"\n[regions.registry]\naddr = \"{ip}:{}\"\nadmin_addr = \"{ip}:{}\"",
                ports[0].0, ports[0].1
            )?;
            writeln!(toml, "\n[[regions.queue_groups]]\nname = \"g1\"\nnodes = [")?;
            for (c, campus) in ["a", "b", "c"].iter().enumerate() {
                let (q, a) = ports[c + 1];
                writeln!(
                    toml,
                    "  {{ id = \"{r}-g1-{campus}\", addr = \"{ip}:{q}\", admin_addr = \"{ip}:{a}\", campus = \"{campus}\" }},"
                )?;
            }
            writeln!(toml, "]")?;
        }
        let config_path = dir.path().join("homeport.toml");
        std::fs::write(&config_path, &toml)?;
        let deployment =
            homeport_config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}\n{toml}"))?;
        homeport::write_certs(&deployment, &deployment.tls.cert_dir)?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        Ok(RegistryCluster {
            dir,
            config_path,
            deployment,
            bin: bin.to_owned(),
            toml,
            children: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            node_env: Mutex::new(Vec::new()),
        })
    }

    pub fn regions(&self) -> Vec<String> {
        self.deployment
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// Process name and log file stem of a region's node: `registry-<region>`.
    pub fn process_name(region: &str) -> String {
        homeport_config::registry_identity(region)
    }

    pub fn log(&self, region: &str) -> String {
        std::fs::read_to_string(self.log_path(region)).unwrap_or_default()
    }

    fn log_path(&self, region: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{}.log", Self::process_name(region)))
    }

    /// Starts region `region`'s node (`homeport registry`); its log appends to
    /// `logs/registry-<region>.log`, so a restart keeps the earlier run's lines.
    pub fn start(&self, region: &str) -> Result<()> {
        let mut children = self.children.lock().expect("children lock");
        if children.contains_key(region) {
            bail!("the registry node of {region} is already running");
        }
        let config = self
            .configs
            .lock()
            .expect("configs lock")
            .get(region)
            .cloned()
            .unwrap_or_else(|| self.config_path.clone());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(region))?;
        let child = Command::new(&self.bin)
            .args([
                "registry",
                "--config",
                &config.display().to_string(),
                "--region",
                region,
            ])
            .env("HOMEPORT_LOG", "info")
            .envs(self.node_env.lock().expect("node_env lock").clone())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        children.insert(region.to_owned(), child);
        Ok(())
    }

    /// Sets `key=value` in the environment of every node started afterwards (e.g.
    /// `homeport_registry::node::UNSAFE_FAULT_ENV`), without touching the test process's own.
    pub fn set_node_env(&self, key: &str, value: &str) {
        let mut env = self.node_env.lock().expect("node_env lock");
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    pub fn start_all(&self) -> Result<()> {
        for r in self.regions() {
            self.start(&r)?;
        }
        Ok(())
    }

    /// `kill -9`: no shutdown path runs, as in a crash.
    pub fn kill(&self, region: &str) -> Result<()> {
        let child = self.children.lock().expect("children lock").remove(region);
        let Some(mut child) = child else {
            bail!("the registry node of {region} is not running");
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit (graceful shutdown).
    pub fn stop(&self, region: &str) -> Result<std::process::ExitStatus> {
        let child = self.children.lock().expect("children lock").remove(region);
        let Some(mut child) = child else {
            bail!("the registry node of {region} is not running");
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed for the registry node of {region}");
        }
        Ok(child.wait()?)
    }

    /// A client endpoint with the certificate of `identity` (`operator`, `registry-<r>`, ...).
    pub fn endpoint(&self, identity: &str) -> Result<quinn::Endpoint> {
        Ok(homeport_queue::client::client_endpoint(
            &self.deployment,
            identity,
        )?)
    }

    /// A [`RegistryClient`] that asks `local_region`'s node first, as operator.
    pub fn client(&self, local_region: &str) -> Result<RegistryClient> {
        let endpoint = self.endpoint(homeport_config::OPERATOR_IDENTITY)?;
        Ok(RegistryClient::new(
            endpoint,
            &self.deployment,
            local_region,
        )?)
    }

    /// Waits until `region`'s node answers an operation itself (a lookup, which needs a
    /// majority of nodes up: start at least two first).
    pub async fn wait_up(&self, region: &str) -> Result<()> {
        let endpoint = self.endpoint(homeport_config::OPERATOR_IDENTITY)?;
        // A deployment in which only `region` has a node, so the client never falls back.
        let mut only = self.deployment.clone();
        for r in &mut only.regions {
            if r.name != region {
                r.registry = None;
            }
        }
        only.registry.operation_timeout_ms = 2_000;
        only.registry.connect_timeout_ms = 1_000;
        let client = RegistryClient::new(endpoint, &only, region)?;
        let r = wait_until(
            &format!("registry node {region} to answer"),
            REGISTRY_START_TIMEOUT_MS,
            || async { client.lookup("probe01").await.is_ok() },
        )
        .await;
        if let Err(e) = r {
            bail!(
                "{e}\n--- log of registry-{region} ---\n{}",
                self.log(region)
            );
        }
        Ok(())
    }

    /// Puts the WAN emulator between registry nodes: for every region R, writes
    /// `homeport-registry-R.toml` in which the other regions' registry addresses are relays of
    /// `wan` from R. Nodes started afterwards read their own file; clients built with
    /// [`RegistryCluster::client`] still use the real addresses (they are in region R).
    pub async fn route_through(&self, wan: &wan::Wan) -> Result<()> {
        for r in &self.deployment.regions {
            let Some(own) = &r.registry else { continue };
            let relay_ip = match own.addr.ip() {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    IpAddr::V4(Ipv4Addr::new(a, b, c, 10))
                }
                ip => ip,
            };
            let mut text = self.toml.clone();
            for other in self.deployment.regions.iter().filter(|o| o.name != r.name) {
                let Some(target) = other.registry.as_ref().map(|g| g.addr) else {
                    continue;
                };
                let relay: SocketAddr = wan.relay(&r.name, &other.name, target, relay_ip).await?;
                text = text.replace(
                    &format!("\naddr = \"{target}\""),
                    &format!("\naddr = \"{relay}\""),
                );
            }
            let path = self
                .dir
                .path()
                .join(format!("homeport-registry-{}.toml", r.name));
            std::fs::write(&path, text)?;
            homeport_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            self.configs
                .lock()
                .expect("configs lock")
                .insert(r.name.clone(), path);
        }
        Ok(())
    }
}
