//! Gateways in a [`Cluster`]: one `[regions.gateway]` per region, a ticket key, and helpers to
//! start gateway processes and mint tickets.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use homeport_gateway::ticket;

use crate::Cluster;

/// Key id of the ticket key every gateway cluster gets (`certs/tickets/test.{key,pub}`).
pub const TEST_TICKET_KID: &str = "test";

/// What to add for gateways: `[gateway]` lines and per-region TOML after `[regions.gateway]`.
#[derive(Debug, Clone, Default)]
pub struct GatewaySetup {
    /// Lines placed in the `[gateway]` table (e.g. `"max_concurrency = 4"`); may end with
    /// `[[gateway.routes]]` tables.
    pub settings: Vec<String>,
    /// `(region, toml)`: placed after that region's `[regions.gateway]`, e.g. `[[regions.upstreams]]`.
    pub region_toml: Vec<(String, String)>,
}

/// Takes the last `slots` ports of campus a for gateways: per region `(quic, http, admin)`.
pub(crate) fn take_ports(ports: &mut Vec<(u16, u16)>, slots: usize) -> Vec<(u16, u16, u16)> {
    if slots == 0 {
        return Vec::new();
    }
    let at = ports.len().saturating_sub(slots);
    ports
        .split_off(at)
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].0, c[0].1, c[1].1))
        .collect()
}

impl GatewaySetup {
    pub(crate) fn write_deployment_toml(&self, toml: &mut String) -> Result<()> {
        writeln!(
            toml,
            "\n[tickets]\n[[tickets.keys]]\nkid = \"{TEST_TICKET_KID}\"\npublic_key_file = \"certs/tickets/{TEST_TICKET_KID}.pub\""
        )?;
        writeln!(toml, "\n[gateway]")?;
        for s in &self.settings {
            writeln!(toml, "{s}")?;
        }
        Ok(())
    }

    pub(crate) fn write_region_toml(
        &self,
        toml: &mut String,
        region: &str,
        ip: IpAddr,
        (quic, http, admin): (u16, u16, u16),
    ) -> Result<()> {
        writeln!(
            toml,
            "\n[regions.gateway]\nhttp_addr = \"{ip}:{http}\"\nquic_addr = \"{ip}:{quic}\"\nadmin_addr = \"{ip}:{admin}\""
        )?;
        for (r, t) in &self.region_toml {
            if r == region {
                writeln!(toml, "{t}")?;
            }
        }
        Ok(())
    }
}

/// Unix seconds now.
pub fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cluster {
    /// Starts region `region`'s gateway (`homeport gateway`), logging to `logs/gateway-<r>.log`.
    pub fn start_gateway(&self, region: &str) -> Result<()> {
        let config = self.region_config(region);
        self.spawn_process(
            &homeport_config::gateway_identity(region),
            &[
                "gateway",
                "--config",
                &config.display().to_string(),
                "--region",
                region,
            ],
        )
    }

    /// Where clients reach region `region`'s gateway, e.g. `http://127.9.9.1:41234`.
    pub fn gateway_url(&self, region: &str) -> Result<String> {
        self.deployment
            .region(region)
            .and_then(|r| r.gateway.as_ref())
            .map(|g| g.public_url.clone())
            .with_context(|| format!("region {region} has no gateway in this cluster"))
    }

    /// `/metrics` of region `region`'s gateway.
    pub fn gateway_metrics_url(&self, region: &str) -> Result<String> {
        self.deployment
            .region(region)
            .and_then(|r| r.gateway.as_ref())
            .map(|g| format!("http://{}/metrics", g.admin_addr))
            .with_context(|| format!("region {region} has no gateway in this cluster"))
    }

    /// The OS process id of a running process of the cluster (e.g. `gateway-sh`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .lock()
            .ok()
            .and_then(|c| c.get(name).map(|child| child.id()))
    }

    /// The signing key of the cluster's ticket key.
    pub fn ticket_key_path(&self) -> PathBuf {
        self.deployment
            .tls
            .cert_dir
            .join("tickets")
            .join(format!("{TEST_TICKET_KID}.key"))
    }

    /// A ticket with these claims, signed by the cluster's key.
    pub fn ticket_with(&self, claims: &ticket::Claims) -> Result<String> {
        let (kid, key) = ticket::load_signing_key(&self.ticket_key_path())?;
        Ok(ticket::issue(&kid, &key, claims))
    }

    /// A ticket for `uid`, valid for an hour from now.
    pub fn ticket(&self, uid: &str) -> Result<String> {
        let now = now_unix_secs();
        self.ticket_with(&ticket::Claims {
            uid: uid.to_owned(),
            iat: now,
            exp: now + 3_600,
        })
    }
}
