//! `homeport registry --config FILE --region NAME`: the region's registry node (CASPaxos
//! acceptor + proposer service, see `homeport_registry::node`). SIGTERM stops it after the
//! acceptor's current commit.

use std::path::PathBuf;

use anyhow::{Context, Result};
use homeport_wire::{DevCertSpec, Identity, Role};

#[derive(clap::Args, Debug)]
pub(crate) struct RegistryArgs {
    #[arg(long)]
    config: PathBuf,
    /// The region whose registry node to run, e.g. `sh`.
    #[arg(long)]
    region: String,
}

pub(crate) async fn run(args: RegistryArgs) -> Result<()> {
    let d = crate::load_config(&args.config)?;
    let running = homeport_registry::node::start(&d, &args.region)
        .await
        .with_context(|| format!("starting the registry node of region {}", args.region))?;
    tracing::info!(region = %args.region, addr = ?running.local_addr()?, "registry node ready");
    crate::shutdown_signal().await;
    tracing::info!(region = %args.region, "registry node shutting down");
    running.shutdown().await;
    Ok(())
}

/// Certificates of the registry nodes (`registry-<region>`), for `cert_specs`.
pub(crate) fn cert_specs(d: &homeport_config::Deployment) -> Vec<DevCertSpec> {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    d.regions
        .iter()
        .filter_map(|r| r.registry.as_ref().map(|g| (r, g)))
        .map(|(r, g)| {
            let mut ips = vec![g.addr.ip(), loopback];
            ips.dedup();
            DevCertSpec {
                identity: Identity {
                    name: homeport_config::registry_identity(&r.name),
                    role: Role::Registry,
                    region: r.name.clone(),
                },
                ips,
            }
        })
        .collect()
}
