//! `homeport gateway` (run a region's gateway) and `homeport ticket keygen|issue`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use homeport_config::{Deployment, TicketKeySource};
use homeport_gateway::ticket;

/// Default lifetime of `homeport ticket issue`.
const DEFAULT_TICKET_TTL_SECS: u64 = 3_600;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[arg(long)]
    config: PathBuf,
    /// The region's name as the config names it, e.g. `sh`.
    #[arg(long)]
    region: String,
    /// Listen here for HTTP instead of the config's `http_addr` (another instance of the
    /// region's gateway on the same host, behind a load balancer).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Listen here for QUIC instead of the config's `quic_addr`.
    #[arg(long)]
    quic_addr: Option<SocketAddr>,
    /// Listen here for /metrics and /healthz instead of the config's `admin_addr`.
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum TicketCmd {
    /// Make a new Ed25519 ticket key pair: DIR/K.key (signing, keep it secret) and DIR/K.pub
    /// (for `[[tickets.keys]] kid = "K", public_key_file = ".../K.pub"`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// The key id tickets will name (1 to 32 lowercase letters, digits or '-').
        #[arg(long)]
        kid: String,
    },
    /// Mint a ticket for a user and print it (use as `Authorization: Bearer <ticket>`).
    Issue {
        #[arg(long)]
        uid: String,
        /// A `.key` file written by `homeport ticket keygen`.
        #[arg(long)]
        key: PathBuf,
        /// How long the ticket is valid.
        #[arg(long, default_value_t = DEFAULT_TICKET_TTL_SECS)]
        ttl_secs: u64,
    },
}

pub async fn run_gateway(args: GatewayArgs) -> Result<()> {
    let d = Arc::new(crate::load_config(&args.config)?);
    let wechat_ids = registry_client(&d, &args.region)?;
    let options = homeport_gateway::GatewayOptions {
        http_addr: args.http_addr,
        quic_addr: args.quic_addr,
        admin_addr: args.admin_addr,
        resolver: None,
        wechat_ids,
    };
    let running = homeport_gateway::start(d, &args.region, options)
        .await
        .with_context(|| format!("starting the gateway of region {}", args.region))?;
    crate::shutdown_signal().await;
    tracing::info!(region = %args.region, "shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// The registry behind `/v1/wechat-ids`, when the deployment runs one: a client endpoint with the
/// gateway's own certificate, asking the region's registry node first. Without a registry the
/// routes answer 503 `registry_not_configured`.
fn registry_client(
    d: &homeport_config::Deployment,
    region: &str,
) -> Result<Option<Arc<dyn homeport_gateway::wechat_ids::WechatIds>>> {
    if d.region(region).and_then(|r| r.registry.as_ref()).is_none() {
        return Ok(None);
    }
    let tls = homeport_wire::TlsFiles::for_identity(
        &d.tls.ca_cert,
        &d.tls.cert_dir,
        &homeport_config::gateway_identity(region),
    );
    let bind = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let endpoint =
        homeport_wire::client_endpoint(bind, &tls, &homeport_wire::EndpointLimits::default())
            .context("the gateway's QUIC endpoint for the registry")?;
    let client = homeport_registry::client::RegistryClient::new(endpoint, d, region)
        .with_context(|| format!("the registry client of region {region}"))?;
    Ok(Some(Arc::new(client)))
}

fn check_kid(kid: &str) -> Result<()> {
    let ok = !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !kid.starts_with('-');
    if !ok {
        bail!(
            "key id {kid:?} must be 1 to 32 lowercase letters, digits or '-' (not starting with '-')"
        );
    }
    Ok(())
}

pub fn run_ticket(cmd: TicketCmd) -> Result<()> {
    match cmd {
        TicketCmd::Keygen { out, kid } => {
            check_kid(&kid)?;
            let (secret, public) = ticket::generate_key_files(&out, &kid)?;
            println!("signing key:      {}", secret.display());
            println!("verification key: {}", public.display());
            println!(
                "add to the config:\n  [[tickets.keys]]\n  kid = \"{kid}\"\n  public_key_file = \"{}\"",
                public.display()
            );
            Ok(())
        }
        TicketCmd::Issue { uid, key, ttl_secs } => {
            if uid.is_empty() {
                bail!("--uid is empty; name the user the ticket is for, e.g. sh-1001");
            }
            if ttl_secs == 0 {
                bail!("--ttl-secs must be at least 1");
            }
            let (kid, signing) = ticket::load_signing_key(&key)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the system clock is before 1970")?
                .as_secs();
            let claims = ticket::Claims {
                uid,
                iat: now,
                exp: now.saturating_add(ttl_secs),
            };
            println!("{}", ticket::issue(&kid, &signing, &claims));
            Ok(())
        }
    }
}

/// Creates the key pair of every `public_key_file` the deployment names that does not exist yet
/// (file `<dir>/<kid>.pub`, signing key beside it), as `homeport dev` and test harnesses need
/// with no set-up. Returns the signing key files, existing or new.
pub fn ensure_dev_ticket_keys(d: &Deployment) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for k in &d.tickets.keys {
        let TicketKeySource::File(public) = &k.public_key else {
            continue;
        };
        let dir = public.parent().unwrap_or(Path::new("."));
        let secret = dir.join(format!("{}.key", k.kid));
        if !public.exists() {
            let expected = dir.join(format!("{}.pub", k.kid));
            if &expected != public {
                bail!(
                    "ticket key {:?}: {} does not exist and is not named <kid>.pub, so no dev key \
                     is generated for it — run `homeport ticket keygen --out DIR --kid {}`",
                    k.kid,
                    public.display(),
                    k.kid
                );
            }
            ticket::generate_key_files(dir, &k.kid)?;
        }
        out.push(secret);
    }
    Ok(out)
}
