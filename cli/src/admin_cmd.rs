//! `homeport dead-letters list|redrive`: the webhook sink's dead letters, through the region
//! process that owns them (its dead-letter file is open there, so the CLI asks over HTTP).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};

/// One admin request, connection and answer included.
const ADMIN_HTTP_TIMEOUT_MS: u64 = 60_000;

#[derive(Subcommand, Debug)]
pub enum DeadLettersCmd {
    /// List the oldest dead letters (changes the webhook sink gave up on).
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        region: String,
    },
    /// Send the oldest dead letters again; those delivered are removed.
    Redrive {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        region: String,
    },
}

pub async fn run(cmd: DeadLettersCmd) -> Result<()> {
    let (config, region, method, path) = match cmd {
        DeadLettersCmd::List { config, region } => {
            (config, region, "GET", "/v1/admin/dead-letters")
        }
        DeadLettersCmd::Redrive { config, region } => {
            (config, region, "POST", "/v1/admin/dead-letters/redrive")
        }
    };
    let d = crate::load_config(&config)?;
    let Some(r) = d.region(&region) else {
        bail!(
            "region {region:?} is not in the config; it has: {}",
            d.region_names().join(", ")
        );
    };
    let Some(p) = &r.process else {
        bail!("region {region} has no region process (addr, api_addr, admin_addr) in the config");
    };
    let url = format!("http://{}{path}", p.api_addr);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(&url)
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    let answer = tokio::time::timeout(Duration::from_millis(ADMIN_HTTP_TIMEOUT_MS), async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("{url} did not answer within {ADMIN_HTTP_TIMEOUT_MS} ms"))?
    .with_context(|| format!("asking {url}; is region {region} running?"))?;
    let (status, body) = answer;
    let text = String::from_utf8_lossy(&body);
    let pretty = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    if !status.is_success() {
        bail!("{url} answered {status}: {pretty}");
    }
    println!("{pretty}");
    Ok(())
}
