//! `homeport`: the one binary. Runs any role, a whole local deployment (`dev`), and admin verbs.
//!
//! Everything lives in this library so the `integration` crate can build the same program as its
//! own binary target (cargo then builds it before the tests that spawn it).

mod admin_cmd;
mod dev;
mod gateway_cmd;
mod lag_cmd;
mod queue_cmd;
mod registry_cmd;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use homeport_config::Deployment;
use homeport_wire::{DevCertSpec, Identity, Role};

pub use gateway_cmd::ensure_dev_ticket_keys;

#[derive(Parser, Debug)]
#[command(
    name = "homeport",
    version,
    about = "A PNUTS-style multi-region replication gateway",
    long_about = "homeport keeps every user in one home region, ships each change through a \
                  2-of-3 quorum queue to the other regions, and shows replication lag.\n\n\
                  Start with `homeport dev` for a whole local three-region deployment."
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "HOMEPORT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole local deployment (every queue node of three regions, plus demo traffic) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Generate a development CA and a certificate for every process of a deployment.
    Certs {
        /// The deployment's TOML file.
        #[arg(long)]
        config: PathBuf,
        /// Where to write them (default: the config's `tls.cert_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one queue node.
    QueueNode {
        #[arg(long)]
        config: PathBuf,
        /// The node's id as the config names it, e.g. `sh-g1-a`.
        #[arg(long)]
        node: String,
    },
    /// Run a region process: the region's record store, its producer (outbox shipper, heartbeats)
    /// and replay workers for every other region. SIGTERM drains in-flight work.
    Region {
        #[arg(long)]
        config: PathBuf,
        /// The region's name as the config names it, e.g. `sh`.
        #[arg(long)]
        region: String,
    },
    /// Run a region's gateway: the HTTP front (tickets, home routing, record API, upstream
    /// proxy, overload protection). SIGTERM drains in-flight requests.
    Gateway(gateway_cmd::GatewayArgs),
    /// Ticket keys and tickets: `keygen` makes a key pair, `issue` mints a ticket for a user.
    #[command(subcommand)]
    Ticket(gateway_cmd::TicketCmd),
    /// Replication lag for every ordered pair of regions (seconds from heartbeats, entries behind,
    /// apply rate); `--watch` refreshes, `--check --warn S --crit S` exits 0/1/2 for alerting.
    Lag(lag_cmd::LagArgs),
    /// The webhook sink's dead letters: list them, or send them again.
    #[command(subcommand)]
    DeadLetters(admin_cmd::DeadLettersCmd),
    /// Operate a region's queue: append test entries, follow it, see its nodes.
    #[command(subcommand)]
    Queue(queue_cmd::QueueCmd),
    /// Run a region's registry node (WeChat IDs, home directory): a CASPaxos acceptor and a
    /// proposer service. SIGTERM stops it.
    Registry(registry_cmd::RegistryArgs),
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HOMEPORT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub(crate) fn load_config(path: &std::path::Path) -> Result<Deployment> {
    homeport_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every identity a deployment's processes present, with the addresses they serve on.
pub fn cert_specs(d: &Deployment) -> Vec<DevCertSpec> {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut specs = Vec::new();
    for n in d.nodes() {
        let mut ips = vec![n.node.addr.ip(), n.node.admin_addr.ip(), loopback];
        ips.dedup();
        specs.push(DevCertSpec {
            identity: Identity {
                name: n.node.id.clone(),
                role: Role::QueueNode,
                region: n.region.name.clone(),
            },
            ips,
        });
    }
    for r in &d.regions {
        specs.push(DevCertSpec {
            identity: Identity {
                name: homeport_config::region_identity(&r.name),
                role: Role::Region,
                region: r.name.clone(),
            },
            ips: vec![loopback],
        });
    }
    for (r, g) in d
        .regions
        .iter()
        .filter_map(|r| r.gateway.as_ref().map(|g| (r, g)))
    {
        let mut ips = vec![g.quic_addr.ip(), loopback];
        ips.dedup();
        specs.push(DevCertSpec {
            identity: Identity {
                name: homeport_config::gateway_identity(&r.name),
                role: Role::Gateway,
                region: r.name.clone(),
            },
            ips,
        });
    }
    specs.extend(registry_cmd::cert_specs(d));
    specs.push(DevCertSpec {
        identity: Identity {
            name: homeport_config::OPERATOR_IDENTITY.to_owned(),
            role: Role::Operator,
            region: "all".to_owned(),
        },
        ips: vec![loopback],
    });
    specs
}

pub fn write_certs(d: &Deployment, out: &std::path::Path) -> Result<Vec<PathBuf>> {
    homeport_wire::generate_dev_certs(out, &cert_specs(d))
        .with_context(|| format!("generating certificates into {}", out.display()))
}

async fn run_region(config: PathBuf, region: String) -> Result<()> {
    let d = std::sync::Arc::new(load_config(&config)?);
    let running = homeport_region::start(d, &region)
        .await
        .with_context(|| format!("starting region {region}"))?;
    shutdown_signal().await;
    tracing::info!(region = %region, "shutting down: draining in-flight work");
    running.shutdown().await;
    Ok(())
}

async fn run_queue_node(config: PathBuf, node: String) -> Result<()> {
    let d = load_config(&config)?;
    let running = homeport_queue::node::start(&d, &node)
        .await
        .with_context(|| format!("starting queue node {node}"))?;
    tracing::info!(node = %node, addr = ?running.local_addr()?, "queue node serving");
    shutdown_signal().await;
    tracing::info!(node = %node, "shutting down");
    running.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Linux");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// The whole program: parses the command line, runs the command, maps errors to exit codes.
pub fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    rt.block_on(async_main())
}

async fn async_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Certs { config, out } => (|| {
            let d = load_config(&config)?;
            let out = out.unwrap_or_else(|| d.tls.cert_dir.clone());
            let files = write_certs(&d, &out)?;
            println!("wrote {} files into {}", files.len(), out.display());
            Ok(())
        })(),
        Command::QueueNode { config, node } => run_queue_node(config, node).await,
        Command::Region { config, region } => run_region(config, region).await,
        Command::Gateway(args) => gateway_cmd::run_gateway(args).await,
        Command::Ticket(cmd) => gateway_cmd::run_ticket(cmd),
        Command::Lag(args) => lag_cmd::run(args).await,
        Command::DeadLetters(cmd) => admin_cmd::run(cmd).await,
        Command::Queue(cmd) => queue_cmd::run(cmd).await,
        Command::Registry(args) => registry_cmd::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(code) = e.downcast_ref::<queue_cmd::ExitWith>() {
                return std::process::ExitCode::from(code.0);
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
