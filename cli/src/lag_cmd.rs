//! `homeport lag`: replication lag for every ordered pair of regions, once or live, as a table or
//! JSON, and as an alerting check (`--check --warn S --crit S` exits 0/1/2, 3 when unknown).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use homeport_config::{Deployment, OPERATOR_IDENTITY};
use homeport_queue::client::{self, NodeClient};
use homeport_replay::lag::{LagStatus, LagThresholds};
use homeport_wire::{Identity, Role, pb};

use crate::queue_cmd::ExitWith;

/// A region that does not answer its status request in this long is shown as unreachable.
const STATUS_TIMEOUT_MS: u64 = 2_000;
/// Refresh period of `--watch`.
const WATCH_INTERVAL_MS: u64 = 1_000;

#[derive(Args, Debug)]
pub struct LagArgs {
    /// The deployment's TOML file.
    #[arg(long)]
    config: PathBuf,
    /// Only pairs whose destination is this region (default: every region).
    #[arg(long)]
    region: Option<String>,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit 0 (ok), 1 (warn), 2 (crit) or 3 (unknown) by the worst pair, for alerting.
    #[arg(long)]
    check: bool,
    /// With --check: lag above this many seconds is a warning.
    #[arg(long, default_value_t = 5.0)]
    warn: f64,
    /// With --check: lag above this many seconds is critical.
    #[arg(long, default_value_t = 30.0)]
    crit: f64,
}

pub(crate) struct Row {
    destination: String,
    lag: Option<pb::PairLag>,
    error: Option<String>,
}

pub async fn run(args: LagArgs) -> Result<()> {
    let d = crate::load_config(&args.config)?;
    let thresholds =
        LagThresholds::new(args.warn, args.crit).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(r) = &args.region
        && d.region(r).is_none()
    {
        bail!(
            "region {r:?} is not in the config; it has: {}",
            d.region_names().join(", ")
        );
    }
    let endpoint = client::client_endpoint(&d, OPERATOR_IDENTITY)?;
    loop {
        let rows = collect(&d, &endpoint, args.region.as_deref()).await;
        let worst = print(&rows, &thresholds, args.json);
        if !args.watch {
            if args.check && worst != LagStatus::Ok {
                return Err(ExitWith(worst.exit_code() as u8).into());
            }
            return Ok(());
        }
        tokio::select! {
            _ = crate::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)) => {}
        }
    }
}

pub(crate) async fn collect(
    d: &Deployment,
    endpoint: &quinn::Endpoint,
    only: Option<&str>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for r in d
        .regions
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
    {
        let Some(p) = &r.process else {
            rows.push(Row {
                destination: r.name.clone(),
                lag: None,
                error: Some("no region process in the config (addr, api_addr, admin_addr)".into()),
            });
            continue;
        };
        let id = Identity {
            name: homeport_config::region_identity(&r.name),
            role: Role::Region,
            region: r.name.clone(),
        };
        let c = NodeClient::with_identity(endpoint.clone(), id, p.addr);
        let body = pb::request::Body::RegionStatus(pb::RegionStatusRequest {});
        match c.call(body, STATUS_TIMEOUT_MS).await.map(|r| r.body) {
            Ok(Some(pb::response::Body::RegionStatus(s))) => {
                for l in s.lags {
                    rows.push(Row {
                        destination: r.name.clone(),
                        lag: Some(l),
                        error: None,
                    });
                }
            }
            Ok(_) => rows.push(Row {
                destination: r.name.clone(),
                lag: None,
                error: Some("unexpected answer to a status request".into()),
            }),
            Err(e) => rows.push(Row {
                destination: r.name.clone(),
                lag: None,
                error: Some(e.to_string()),
            }),
        }
    }
    rows
}

/// Prints the rows; returns the worst status (an unreachable region counts as unknown).
pub(crate) fn print(rows: &[Row], t: &LagThresholds, json: bool) -> LagStatus {
    let mut worst = LagStatus::Ok;
    let mut out = Vec::new();
    if !json {
        println!(
            "{:<8} {:<8} {:>10} {:>10} {:>12} {:>8}  status",
            "source", "dest", "lag_s", "behind", "apply/s", "nodes"
        );
    }
    for row in rows {
        let status = row
            .lag
            .as_ref()
            .map_or(LagStatus::Unknown, |l| t.classify(l));
        if status.exit_code() > worst.exit_code() {
            worst = status;
        }
        match (&row.lag, json) {
            (Some(l), false) => println!(
                "{:<8} {:<8} {:>10} {:>10} {:>12.1} {:>8}  {}",
                l.source_region,
                l.destination_region,
                if l.has_heartbeat {
                    format!("{:.3}", l.lag_seconds)
                } else {
                    "-".into()
                },
                l.entries_behind,
                l.apply_rate_per_sec,
                format!("{}/{}", l.nodes_reachable, l.nodes_total),
                status
            ),
            (None, false) => println!(
                "{:<8} {:<8} {:>10} {:>10} {:>12} {:>8}  {status}: {}",
                "*",
                row.destination,
                "-",
                "-",
                "-",
                "-",
                row.error.as_deref().unwrap_or("")
            ),
            (Some(l), true) => out.push(serde_json::json!({
                "source": l.source_region,
                "destination": l.destination_region,
                "has_heartbeat": l.has_heartbeat,
                "lag_seconds": l.lag_seconds,
                "entries_behind": l.entries_behind,
                "apply_rate_per_sec": l.apply_rate_per_sec,
                "clock_offset_ms": l.clock_offset_ms,
                "applied_changes": l.applied_changes,
                "refused_changes": l.refused_changes,
                "nodes_reachable": l.nodes_reachable,
                "nodes_total": l.nodes_total,
                "status": status.as_str(),
            })),
            (None, true) => out.push(serde_json::json!({
                "destination": row.destination,
                "status": status.as_str(),
                "error": row.error,
            })),
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    worst
}
