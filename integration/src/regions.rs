//! Region processes in a [`Cluster`], optionally behind the WAN emulator.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{Cluster, wan};

impl Cluster {
    /// Puts the WAN emulator between regions: for every region R, writes `homeport-R.toml` in
    /// which every other region's QUIC addresses (queue nodes and region process) are relays of
    /// `wan` from R. Region processes started afterwards read their own file; queue nodes keep
    /// the real addresses (they never dial out).
    pub async fn route_through(&self, wan: &wan::Wan) -> Result<()> {
        let relay_ip = match self.deployment.nodes().next().map(|n| n.node.addr.ip()) {
            Some(IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, 10))
            }
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        for r in &self.deployment.regions {
            let mut text = self.toml.clone();
            for other in self.deployment.regions.iter().filter(|o| o.name != r.name) {
                let mut targets: Vec<SocketAddr> = other
                    .queue_groups
                    .iter()
                    .flat_map(|g| g.nodes.iter().map(|n| n.addr))
                    .collect();
                if let Some(p) = &other.process {
                    targets.push(p.addr);
                }
                // Gateways forward to each other over QUIC too (the `forward` policy).
                let gateway_quic = other.gateway.as_ref().map(|g| g.quic_addr);
                targets.extend(gateway_quic);
                for t in targets {
                    let relay = wan.relay(&r.name, &other.name, t, relay_ip).await?;
                    // Only QUIC `addr` keys: a TCP admin or API port may share the number.
                    text = text
                        .replace(
                            &format!(", addr = \"{t}\""),
                            &format!(", addr = \"{relay}\""),
                        )
                        .replace(
                            &format!("\naddr = \"{t}\""),
                            &format!("\naddr = \"{relay}\""),
                        )
                        .replace(
                            &format!("\nquic_addr = \"{t}\""),
                            &format!("\nquic_addr = \"{relay}\""),
                        );
                }
            }
            let path = self.dir.path().join(format!("homeport-{}.toml", r.name));
            std::fs::write(&path, text)?;
            homeport_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            self.region_configs
                .lock()
                .expect("region configs lock")
                .insert(r.name.clone(), path);
        }
        Ok(())
    }

    /// The deployment file region `region`'s process reads.
    pub fn region_config(&self, region: &str) -> PathBuf {
        self.region_configs
            .lock()
            .expect("region configs lock")
            .get(region)
            .cloned()
            .unwrap_or_else(|| self.config_path.clone())
    }

    /// Starts region `region`'s process (`homeport region`), logging to `logs/region-<r>.log`.
    pub fn start_region(&self, region: &str) -> Result<()> {
        let config = self.region_config(region);
        self.spawn_process(
            &homeport_config::region_identity(region),
            &[
                "region",
                "--config",
                &config.display().to_string(),
                "--region",
                region,
            ],
        )
    }

    /// The HTTP API base URL of a region process, e.g. `http://127.9.9.1:41234`.
    pub fn api_url(&self, region: &str) -> Result<String> {
        let p = self
            .deployment
            .region(region)
            .and_then(|r| r.process.as_ref())
            .with_context(|| format!("region {region} has no process in this cluster"))?;
        Ok(format!("http://{}", p.api_addr))
    }
}
