//! The admin HTTP listener every homeport process runs: `/metrics` (Prometheus) and `/healthz`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often histograms are folded for rendering; the exporter needs this upkeep.
const METRICS_UPKEEP_INTERVAL_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("could not install the Prometheus metrics recorder: {0}")]
    Recorder(String),
    #[error(
        "could not listen for admin HTTP on {addr}: {source}; pick a free `admin_addr` in the config"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder once and returns its handle (idempotent).
pub fn metrics_handle() -> Result<PrometheusHandle, AdminError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| AdminError::Recorder(e.to_string()))?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(METRICS_UPKEEP_INTERVAL_MS));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What `/healthz` reports: `Ok(body)` answers 200, `Err(body)` answers 503.
pub type HealthFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Binds `addr` now (so a taken port fails start-up with a clear error) and serves in the background.
pub async fn serve_admin(
    addr: SocketAddr,
    health: HealthFn,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let handle = metrics_handle()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route(
            "/healthz",
            get(move || async move {
                match health() {
                    Ok(body) => (StatusCode::OK, body),
                    Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
                }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, error = %e, "admin HTTP server stopped");
        }
    }))
}
