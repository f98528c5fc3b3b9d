//! The region process: a region's record store, its producer (with the outbox shipper and the
//! heartbeat), and its replay workers, which pull every other region's queue and apply changes.
//!
//! Tasks (each a thin tokio shell; decisions live in `homeport_replay` and `homeport_queue::core`):
//! - HTTP record API (`http.rs`) → write path (`writes.rs`): store transaction, then the queue;
//! - outbox remover and shipper (`outbox.rs`): re-ship what a crash or a slow queue left behind;
//! - heartbeat: one entry per `heartbeat_interval_ms`, so lag is measurable without writes;
//! - replay workers (`replay.rs`): one `RegionConsumer` per other region (one driver per group);
//! - clock and lag (`lag.rs`): status round trips to other regions, the lag table, retention reports;
//! - the region's QUIC endpoint answers `RegionStatus` (used by `homeport lag` and other regions).

mod http;
mod janitor;
pub mod lag;
mod outbox;
mod replay;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use homeport_config::Deployment;
use homeport_queue::admin;
use homeport_queue::producer::Producer;
use homeport_replay::plan::{HomeResolver, PrefixHomeRule};
use homeport_store::Store;
use homeport_wire::{self as wire, Identity, pb};
use prost::Message;
use tokio::sync::{mpsc, watch};

pub use http::HOME_REGION_HEADER;

/// Outbox slots whose entries committed, waiting to be removed in batches.
const OUTBOX_DONE_QUEUE: usize = 65_536;
/// Store requests that may wait for the writer, in whole batches; past it writes answer 503.
const STORE_QUEUED_BATCHES: usize = 16;
/// How long shutdown waits for in-flight work before giving up.
const SHUTDOWN_DRAIN_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region {0:?} is not in the config; it has: {1}")]
    UnknownRegion(String, String),
    #[error(
        "region {0} has no `addr`, `api_addr` and `admin_addr` in the config; a region process needs all three"
    )]
    NoProcess(String),
    #[error("region {region}: opening the store at {path}: {source}")]
    Store {
        region: String,
        path: String,
        source: homeport_store::StoreError,
    },
    #[error("region {region}: {source}")]
    Wire {
        region: String,
        source: wire::WireError,
    },
    #[error("region {region}: {message}")]
    Other { region: String, message: String },
}

/// State every task of the region shares.
pub(crate) struct Shared {
    pub region: String,
    pub deployment: Arc<Deployment>,
    pub store: Store,
    pub producer: Arc<Producer>,
    pub homes: Arc<dyn HomeResolver>,
    pub outbox_done: mpsc::Sender<u64>,
    pub recently_shipped: writes::RecentlyShipped,
    pub lag: lag::LagBook,
    /// Where other regions' changes go when the config names a webhook instead of the store.
    pub webhook: Option<homeport_replay::webhook::WebhookSink>,
    shutting_down: AtomicBool,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn lag_table(&self) -> Vec<pb::PairLag> {
        self.lag.table(homeport_queue::entry::now_unix_ms())
    }
}

/// A running region process.
pub struct RunningRegion {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api_addr: SocketAddr,
}

impl RunningRegion {
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Stops taking writes, lets in-flight work finish (bounded), then stops every task.
    pub async fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let drain = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), drain)
            .await
            .is_err()
        {
            tracing::warn!(region = %self.shared.region, "shutdown drain timed out");
        }
        self.endpoint.close(0u32.into(), b"region shutting down");
    }
}

/// Opens the store, starts every task of the region, and returns once it is serving.
pub async fn start(
    deployment: Arc<Deployment>,
    region: &str,
) -> Result<RunningRegion, RegionError> {
    let cfg_region = deployment.region(region).ok_or_else(|| {
        RegionError::UnknownRegion(region.to_owned(), deployment.region_names().join(", "))
    })?;
    let process = cfg_region
        .process
        .clone()
        .ok_or_else(|| RegionError::NoProcess(region.to_owned()))?;
    let wire_err = |source| RegionError::Wire {
        region: region.to_owned(),
        source,
    };

    let store_path = process.data_dir.join("store.redb");
    std::fs::create_dir_all(&process.data_dir).map_err(|e| RegionError::Other {
        region: region.to_owned(),
        message: format!("creating {}: {e}", process.data_dir.display()),
    })?;
    let settings = &deployment.store;
    let store_cfg = homeport_store::StoreConfig {
        path: store_path.clone(),
        region: region.to_owned(),
        max_uid_bytes: settings.max_uid_bytes,
        max_key_bytes: settings.max_key_bytes,
        max_value_bytes: settings.max_value_bytes,
        max_batch_requests: settings.max_batch_requests,
        max_queued_requests: settings.max_batch_requests * STORE_QUEUED_BATCHES,
    };
    let store = tokio::task::spawn_blocking(move || homeport_store::open(store_cfg))
        .await
        .expect("store open task panicked")
        .map_err(|source| RegionError::Store {
            region: region.to_owned(),
            path: store_path.display().to_string(),
            source,
        })?;

    // One QUIC endpoint for everything: it serves region requests and dials queue nodes and
    // other regions with the region's certificate.
    let tls = wire::TlsFiles::for_identity(
        &deployment.tls.ca_cert,
        &deployment.tls.cert_dir,
        &homeport_config::region_identity(region),
    );
    let endpoint = wire::server_endpoint(process.addr, &tls, &wire::EndpointLimits::default())
        .map_err(wire_err)?;
    let producer =
        Producer::for_region(&deployment, region, &endpoint).map_err(|e| RegionError::Other {
            region: region.to_owned(),
            message: e.to_string(),
        })?;

    let homes: Arc<dyn HomeResolver> = Arc::new(PrefixHomeRule::new(
        deployment
            .region_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ));
    let webhook = match &cfg_region.sink {
        homeport_config::SinkConfig::Store => None,
        homeport_config::SinkConfig::Webhook(w) => {
            let cfg = homeport_replay::webhook::WebhookConfig {
                url: w.url.clone(),
                per_change: w.per_change,
                max_attempts: w.max_attempts,
                backoff_base_ms: w.backoff_base_ms,
                backoff_max_ms: w.backoff_max_ms,
                timeout_ms: w.timeout_ms,
                ..homeport_replay::webhook::WebhookConfig::new(
                    w.url.clone(),
                    process.dead_letters_path(),
                )
            };
            Some(
                homeport_replay::webhook::WebhookSink::new(cfg).map_err(|e| {
                    RegionError::Other {
                        region: region.to_owned(),
                        message: e.to_string(),
                    }
                })?,
            )
        }
    };
    let (outbox_done, outbox_done_rx) = mpsc::channel(OUTBOX_DONE_QUEUE);
    let shared = Arc::new(Shared {
        region: region.to_owned(),
        deployment: deployment.clone(),
        store,
        producer: Arc::new(producer),
        homes,
        outbox_done,
        recently_shipped: writes::RecentlyShipped::new(OUTBOX_DONE_QUEUE),
        lag: lag::LagBook::new(region, &deployment),
        webhook,
        shutting_down: AtomicBool::new(false),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Region QUIC endpoint: status for `homeport lag` and other regions' clock sampling.
    let serve_shared = shared.clone();
    tasks.push(tokio::spawn(wire::serve(
        endpoint.clone(),
        wire::MAX_FRAME_BYTES,
        move |_peer: Arc<Identity>, req: pb::Request| {
            let shared = serve_shared.clone();
            async move { handle_region_request(&shared, req) }
        },
    )));

    let health_shared = shared.clone();
    let health: admin::HealthFn = Arc::new(move || {
        if health_shared.is_shutting_down() {
            Err("shutting down\n".to_owned())
        } else {
            Ok(format!("region {} ok\n", health_shared.region))
        }
    });
    tasks.push(
        admin::serve_admin(process.admin_addr, health)
            .await
            .map_err(|e| RegionError::Other {
                region: region.to_owned(),
                message: e.to_string(),
            })?,
    );

    let listener = tokio::net::TcpListener::bind(process.api_addr)
        .await
        .map_err(|e| RegionError::Other {
            region: region.to_owned(),
            message: format!(
                "could not listen for the HTTP API on {}: {e}; pick a free `api_addr`",
                process.api_addr
            ),
        })?;
    let api_addr = listener.local_addr().unwrap_or(process.api_addr);
    let app = http::router(shared.clone());
    let mut http_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let graceful = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    }));

    tasks.push(tokio::spawn(outbox::remover(
        shared.clone(),
        outbox_done_rx,
    )));
    tasks.push(tokio::spawn(outbox::shipper(
        shared.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(heartbeat(shared.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(janitor::run(shared.clone(), stop_rx.clone())));
    for source in deployment.regions.iter().filter(|r| r.name != region) {
        tasks.push(tokio::spawn(replay::run_source(
            shared.clone(),
            source.name.clone(),
            endpoint.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(lag::sampler(
        shared.clone(),
        endpoint.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(lag::retention_reporter(
        shared.clone(),
        endpoint.clone(),
        stop_rx.clone(),
    )));
    tracing::info!(region, %api_addr, quic = %process.addr, "region serving");
    Ok(RunningRegion {
        shared,
        endpoint,
        stop,
        tasks,
        api_addr,
    })
}

fn handle_region_request(shared: &Shared, req: pb::Request) -> pb::Response {
    match req.body {
        Some(pb::request::Body::RegionStatus(_)) => pb::Response {
            body: Some(pb::response::Body::RegionStatus(pb::RegionStatusResponse {
                region: shared.region.clone(),
                unix_ms: homeport_queue::entry::now_unix_ms(),
                lags: shared.lag_table(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        },
        _ => wire::error_response(
            pb::ErrorCode::BadRequest,
            format!(
                "region {} answers region requests only (region_status); queue requests go to queue nodes",
                shared.region
            ),
        ),
    }
}

/// One heartbeat entry per interval, carrying the origin's clock.
async fn heartbeat(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.deployment.queue.heartbeat_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let hb = pb::Heartbeat {
            region: shared.region.clone(),
            sequence,
            unix_ms: homeport_queue::entry::now_unix_ms(),
        };
        sequence += 1;
        let entry = shared
            .producer
            .new_entry(pb::EntryKind::Heartbeat, Bytes::from(hb.encode_to_vec()));
        if let Err(e) = shared.producer.append(&[entry]).await {
            metrics::counter!("homeport_region_heartbeat_failures_total").increment(1);
            tracing::warn!(error = %e, "heartbeat not committed");
        }
    }
}
