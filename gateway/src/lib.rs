//! The gateway (`homeport gateway`): the region-aware HTTP front that clients and services see.
//!
//! One process per instance (a region may run several behind a load balancer). It listens for
//! HTTP/1.1 and h2c on `http_addr`, for other regions' gateways on `quic_addr` (mutual TLS), and
//! for `/metrics` and `/healthz` on `admin_addr`. Every request passes FastReject admission
//! (`admission.rs`), then a ticket check (`ticket.rs`), then home resolution (`homes.rs`) — or, for WeChat IDs,
//! the registry (`wechat_ids.rs`); it is
//! then served here — by the region process's internal record API or a configured upstream
//! (`proxy.rs`) — or sent home by redirect or over QUIC (`forward.rs`). `service.rs` holds the
//! decisions, `routes.rs` the route table the OpenAPI document is checked against.

mod admission;
mod body;
mod forward;
mod h1;
pub mod homes;
mod proxy;
pub mod routes;
mod server;
mod service;
pub mod ticket;
pub mod wechat_ids;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use homeport_config::{Deployment, HomeRule, TicketKeySource};
use homeport_wire::{self as wire, Identity};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

pub use proxy::USER_HEADER;
pub use service::{FORWARDED_FROM_HEADER, HOME_REGION_HEADER};

use crate::service::Gateway;

/// How long shutdown waits for in-flight requests to finish.
const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF_MS: u64 = 50;
/// Connections the kernel queues per listener before the gateway accepts them.
const LISTEN_BACKLOG: i32 = 4096;
/// Tickets whose signature is remembered (see `ticket::CachingVerifier`); about 250 bytes each.
const VERIFIED_TICKET_CACHE_ENTRIES: usize = 65_536;
/// Idle HTTP/1.1 keep-alive connections from clients are closed after this long without a
/// request header.
pub(crate) const HEADER_READ_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("region {0:?} is not in the config; it has: {1}")]
    UnknownRegion(String, String),
    #[error(
        "region {0} has no [regions.gateway] in the config — add http_addr, quic_addr and admin_addr for it"
    )]
    NoGateway(String),
    #[error("region {0} has no region process (api_addr) for the gateway to serve records from")]
    NoRegionProcess(String),
    #[error("ticket key {kid:?}: {message}")]
    TicketKey { kid: String, message: String },
    #[error("gateway of region {region}: {message}")]
    Other { region: String, message: String },
}

/// Per-instance overrides, for running several gateways of one region on one host.
#[derive(Clone, Default)]
pub struct GatewayOptions {
    pub http_addr: Option<SocketAddr>,
    pub quic_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// Where homes come from; the deployment's `[homes]` rule when `None`. The registry's home
    /// directory plugs in here.
    pub resolver: Option<Arc<dyn homes::HomeResolver>>,
    /// Where WeChat IDs are claimed (`/v1/wechat-ids/{id}`); without it those routes answer 503
    /// `registry_not_configured`. The registry's network client plugs in here.
    pub wechat_ids: Option<Arc<dyn wechat_ids::WechatIds>>,
}

/// A running gateway.
pub struct RunningGateway {
    gateway: Arc<Gateway>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    /// One per HTTP worker thread, resolved when it has drained and stopped.
    http_workers: Vec<tokio::sync::oneshot::Receiver<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http_addr: SocketAddr,
    quic_addr: SocketAddr,
}

impl RunningGateway {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Stops accepting, lets in-flight requests finish (bounded), then closes everything.
    pub async fn shutdown(self) {
        self.gateway.shutting_down.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let drained = futures::future::join_all(self.http_workers);
        if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS + 1_000), drained)
            .await
            .is_err()
        {
            tracing::warn!(region = %self.gateway.region, "gateway shutdown drain timed out");
        }
        self.endpoint.close(0u32.into(), b"gateway shutting down");
        for t in self.tasks {
            t.abort();
        }
    }
}

fn load_verifier(d: &Deployment) -> Result<ticket::Verifier, GatewayError> {
    let mut keys = Vec::new();
    for k in &d.tickets.keys {
        let key = match &k.public_key {
            TicketKeySource::Inline(bytes) => ed25519_dalek::VerifyingKey::from_bytes(bytes)
                .map_err(|e| GatewayError::TicketKey {
                    kid: k.kid.clone(),
                    message: format!(
                        "public_key is not an Ed25519 public key ({e}); paste the value from the \
                         .pub file `homeport ticket keygen` wrote"
                    ),
                })?,
            TicketKeySource::File(path) => {
                let (kid, key) =
                    ticket::load_public_key(path).map_err(|e| GatewayError::TicketKey {
                        kid: k.kid.clone(),
                        message: e.to_string(),
                    })?;
                if kid != k.kid {
                    return Err(GatewayError::TicketKey {
                        kid: k.kid.clone(),
                        message: format!(
                            "{} holds key {kid:?}, not {:?} — point public_key_file at the right \
                             file or fix the kid",
                            path.display(),
                            k.kid
                        ),
                    });
                }
                key
            }
        };
        keys.push((k.kid.clone(), key));
    }
    Ok(ticket::Verifier::new(
        keys,
        d.tickets.max_ttl_secs,
        d.tickets.clock_skew_secs,
    ))
}

/// Starts every listener of region `region`'s gateway and returns once it is serving.
pub async fn start(
    deployment: Arc<Deployment>,
    region: &str,
    options: GatewayOptions,
) -> Result<RunningGateway, GatewayError> {
    let cfg_region = deployment.region(region).ok_or_else(|| {
        GatewayError::UnknownRegion(region.to_owned(), deployment.region_names().join(", "))
    })?;
    let gw = cfg_region
        .gateway
        .clone()
        .ok_or_else(|| GatewayError::NoGateway(region.to_owned()))?;
    let process = cfg_region
        .process
        .as_ref()
        .ok_or_else(|| GatewayError::NoRegionProcess(region.to_owned()))?;
    let other = |message: String| GatewayError::Other {
        region: region.to_owned(),
        message,
    };
    let http_addr = options.http_addr.unwrap_or(gw.http_addr);
    let quic_addr = options.quic_addr.unwrap_or(gw.quic_addr);
    let admin_addr = options.admin_addr.unwrap_or(gw.admin_addr);
    let settings = &deployment.gateway;

    // Before any metric handle is registered: handles made earlier would count nowhere.
    homeport_queue::admin::metrics_handle().map_err(|e| other(e.to_string()))?;
    let verifier = load_verifier(&deployment)?;
    let resolver: Arc<dyn homes::HomeResolver> = match options.resolver {
        Some(r) => r,
        None => match deployment.homes {
            HomeRule::UidPrefix => Arc::new(homes::PrefixRule::new(
                deployment
                    .region_names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )),
        },
    };
    let region_api = process
        .api_addr
        .to_string()
        .parse()
        .map_err(|e| other(format!("api_addr is not an authority: {e}")))?;

    let tls = wire::TlsFiles::for_identity(
        &deployment.tls.ca_cert,
        &deployment.tls.cert_dir,
        &homeport_config::gateway_identity(region),
    );
    let endpoint = wire::server_endpoint(quic_addr, &tls, &wire::EndpointLimits::default())
        .map_err(|e| other(format!("QUIC endpoint on {quic_addr}: {e}")))?;
    let quic_addr = endpoint.local_addr().unwrap_or(quic_addr);
    // A forwarded message carries at most the body limit plus headers.
    let max_frame_bytes = wire::MAX_FRAME_BYTES;
    let prefixes = routes::all_prefixes(deployment.regions.iter().flat_map(|r| r.upstreams.iter()));
    let gateway = Arc::new(Gateway {
        region: region.to_owned(),
        verifier: ticket::CachingVerifier::new(verifier, VERIFIED_TICKET_CACHE_ENTRIES),
        homes: homes::CachedHomes::new(resolver, settings.home_cache_entries),
        admission: admission::Admission::new(
            settings.max_concurrency,
            settings.max_queued_requests,
            settings.queue_deadline_ms,
        ),
        upstreams: proxy::Upstreams::new(
            settings.upstream_connect_timeout_ms,
            settings.upstream_timeout_ms,
            settings.upstream_max_idle_per_host,
        ),
        forwarder: forward::Forwarder::new(endpoint.clone(), &deployment, max_frame_bytes),
        region_api: proxy::Target::new(region_api),
        prefixes,
        shutting_down: Default::default(),
        responses: service::ResponseCounters::new(),
        deployment: deployment.clone(),
        wechat_ids: options.wechat_ids,
        local_upstreams: service::LocalUpstream::of_region(&deployment, region),
    });

    let mut tasks = Vec::new();
    let serving = gateway.clone();
    tasks.push(tokio::spawn(wire::serve(
        endpoint.clone(),
        max_frame_bytes,
        move |peer: Arc<Identity>, req| {
            let gw = serving.clone();
            async move { gw.serve_forwarded(&peer, req).await }
        },
    )));

    let reaped = gateway.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(proxy::REAP_INTERVAL_MS));
        loop {
            every.tick().await;
            reaped.upstreams.reap_idle();
        }
    }));

    let health_gw = gateway.clone();
    let health: homeport_queue::admin::HealthFn = Arc::new(move || {
        if health_gw.shutting_down.load(Ordering::Acquire) {
            Err("shutting down\n".to_owned())
        } else {
            Ok(format!(
                "gateway {} ok: {} in flight, {} queued\n",
                health_gw.region,
                health_gw.admission.in_flight(),
                health_gw.admission.queued()
            ))
        }
    });
    tasks.push(
        homeport_queue::admin::serve_admin(admin_addr, health)
            .await
            .map_err(|e| other(e.to_string()))?,
    );

    let bind_error = |e: std::io::Error| {
        other(format!(
            "could not listen for HTTP on {http_addr}: {e}; pick a free http_addr"
        ))
    };
    let first = reuseport_listener(http_addr).map_err(bind_error)?;
    let http_addr = first.local_addr().map_err(bind_error)?;
    let mut listeners = vec![first];
    for _ in 1..http_worker_threads() {
        listeners.push(reuseport_listener(http_addr).map_err(bind_error)?);
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut http_workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (done, done_rx) = tokio::sync::oneshot::channel();
        let (gw, stop_rx) = (gateway.clone(), stop_rx.clone());
        std::thread::Builder::new()
            .name(format!("gateway-http-{i}"))
            .spawn(move || run_http_worker(i, listener, gw, stop_rx, done))
            .map_err(|e| other(format!("starting HTTP worker thread {i}: {e}")))?;
        http_workers.push(done_rx);
    }
    tracing::info!(region, %http_addr, %quic_addr, %admin_addr, "gateway serving");
    Ok(RunningGateway {
        gateway,
        endpoint,
        stop,
        http_workers,
        tasks,
        http_addr,
        quic_addr,
    })
}

/// HTTP worker threads: one per core. Each runs a single-threaded runtime with its own listener
/// on the shared port (SO_REUSEPORT: the kernel spreads connections) and its own upstream
/// connection pool, as nginx runs one worker process per core: a request is read, proxied and
/// answered on one thread, with no cross-thread wake-ups. With one multi-threaded runtime, task
/// hand-offs between threads (futex wake-ups, context switches) took most of the gateway's CPU
/// once tickets were cached.
fn http_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

thread_local! {
    /// This thread's HTTP worker number; `None` on every other thread.
    static WORKER_INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Shards of the caches every request reads (verified tickets, homes): one per HTTP worker, so
/// a worker's lock and entries stay in its own core's cache (one shared lock bounced between
/// the cores on every request), plus one for every other thread.
pub(crate) fn cache_shards() -> usize {
    http_worker_threads() + 1
}

/// The shard of `shards` this thread uses.
pub(crate) fn cache_shard(shards: usize) -> usize {
    let last = shards.saturating_sub(1);
    WORKER_INDEX
        .with(|w| w.get())
        .filter(|i| *i < last)
        .unwrap_or(last)
}

/// A lock padded to its own cache lines, so neighbouring shards do not share one.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub std::sync::Mutex<T>);

impl<T> Padded<T> {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        // A panic while holding the lock leaves a cache behind; keep serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A listening socket that other workers (and other gateway instances of the same user) may
/// share.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn run_http_worker(
    index: usize,
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    stop: watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    WORKER_INDEX.with(|w| w.set(Some(index)));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "an HTTP worker could not start its runtime");
            let _ = done.send(());
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "an HTTP worker could not use its listener");
                return;
            }
        };
        let settings = &gateway.deployment.gateway;
        let upstreams = proxy::Upstreams::new(
            settings.upstream_connect_timeout_ms,
            settings.upstream_timeout_ms,
            settings.upstream_max_idle_per_host,
        );
        let worker = Arc::new(Worker { gateway, upstreams });
        // Ends with the runtime when the worker stops.
        let reaped = worker.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(proxy::REAP_INTERVAL_MS));
            loop {
                every.tick().await;
                reaped.upstreams.reap_idle();
            }
        });
        serve_http(listener, worker, stop).await;
    });
    let _ = done.send(());
}

/// What one HTTP worker thread's requests share. Each request clones this `Arc`, whose count
/// only this thread touches, rather than the gateway's, whose count both threads would bounce
/// between their caches on every request.
pub(crate) struct Worker {
    pub gateway: Arc<Gateway>,
    pub upstreams: proxy::Upstreams,
}

/// The accept loop: HTTP/1.1 and h2c on the same port (`server.rs`), each connection tracked
/// so shutdown can let in-flight requests finish.
async fn serve_http(
    listener: tokio::net::TcpListener,
    worker: Arc<Worker>,
    mut stop: watch::Receiver<bool>,
) {
    // For what the gateway's own loop hands over (h2c, streaming request bodies, HTTP/1.0).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
    let builder = Arc::new(builder);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(server::serve(
            stream,
            client,
            worker.clone(),
            stop.clone(),
            builder.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still busy when the drain time ran out");
    }
}
