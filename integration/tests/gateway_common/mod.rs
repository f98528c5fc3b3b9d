//! Helpers of the gateway tests (`gateway_*.rs`): clusters with a gateway per region, an HTTP
//! client that sends tickets, and a scriptable upstream service (HTTP/1.1 and h2c).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use homeport_integration::wan::Wan;
use homeport_integration::{Cluster, ClusterSpec, GatewaySetup};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::regions_common::{Resp, WAIT_MS, bin, eventually, fast_setup, http};

/// Lines of each process's log shown in a failure message.
const LOG_TAIL_LINES: usize = 30;

/// `regions` with one queue group each, quick failover and heartbeats.
pub fn spec(regions: &[&str]) -> ClusterSpec {
    ClusterSpec {
        regions: regions.iter().map(|r| r.to_string()).collect(),
        groups_per_region: 1,
        queue_settings: Vec::new(),
    }
    .with("attempt_timeout_ms = 500")
    .with("append_timeout_ms = 5000")
    .with("group_probe_interval_ms = 200")
    .with("heartbeat_interval_ms = 200")
}

/// Builds the cluster, starts queue nodes, routes through `wan` if given, starts every region
/// process and gateway, and waits until each gateway answers.
pub async fn start(regions: &[&str], gw: &GatewaySetup, wan: Option<&Wan>) -> Result<Cluster> {
    let cluster = Cluster::with_gateways(bin(), &spec(regions), &fast_setup(), gw)?;
    cluster.start_all()?;
    let endpoint = cluster.endpoint(homeport_config::OPERATOR_IDENTITY)?;
    cluster.wait_up(&endpoint, &cluster.node_ids()).await?;
    if let Some(wan) = wan {
        cluster.route_through(wan).await?;
    }
    for r in regions {
        cluster.start_region(r)?;
        cluster.start_gateway(r)?;
    }
    for r in regions {
        let status = format!("{}/v1/status", cluster.api_url(r)?);
        let up = eventually(&format!("region {r} to answer"), WAIT_MS, || async {
            match http(Method::GET, &status, &[], Bytes::new()).await {
                Ok(resp) if resp.status == StatusCode::OK => Ok(()),
                Ok(resp) => Err(format!("{resp:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await;
        up.map_err(|e| anyhow::anyhow!("{e}{}", logs(&cluster, regions)))?;
        let metrics = cluster.gateway_metrics_url(r)?;
        let up = eventually(&format!("gateway {r} to answer"), WAIT_MS, || async {
            match http(Method::GET, &metrics, &[], Bytes::new()).await {
                Ok(resp) if resp.status == StatusCode::OK => Ok(()),
                Ok(resp) => Err(format!("{resp:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await;
        up.map_err(|e| anyhow::anyhow!("{e}{}", logs(&cluster, regions)))?;
    }
    Ok(cluster)
}

/// The last lines of every region process's and gateway's log, for failure messages.
pub fn logs(cluster: &Cluster, regions: &[&str]) -> String {
    let mut out = String::new();
    for r in regions {
        for name in [
            homeport_config::region_identity(r),
            homeport_config::gateway_identity(r),
        ] {
            let log = cluster.node_log(&name);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!("\n--- last {} lines of {name} ---\n", tail.len()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// One request with `Authorization: Bearer <ticket>` (if given) and extra headers.
pub async fn call(
    method: Method,
    url: &str,
    ticket: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp> {
    let auth = ticket.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("authorization", a.as_str()));
    }
    http(method, url, &all, Bytes::from(body.to_owned())).await
}

/// The `error` code of a gateway's JSON answer.
pub fn code(r: &Resp) -> String {
    r.json()
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A value of the gateway's Prometheus text, summed over label sets (0 when absent).
pub async fn metric(cluster: &Cluster, region: &str, name: &str) -> Result<f64> {
    let url = cluster.gateway_metrics_url(region)?;
    let r = http(Method::GET, &url, &[], Bytes::new()).await?;
    if r.status != StatusCode::OK {
        bail!("GET {url}: {r:?}");
    }
    Ok(r.text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A scriptable upstream service on 127.0.0.1, HTTP/1.1 and h2c on one port, by the last path
/// segment (so every prefix reaches it):
/// - `.../headers`: the request's method, version and headers as JSON;
/// - `.../sink`: reads the whole body, answers `{"bytes": n}`;
/// - `.../source?bytes=N`: streams N bytes (64 KiB chunks);
/// - `.../slow?ms=N`: answers "ok" after N ms;
/// - `.../hang`: never answers.
pub struct Backend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const CHUNK_BYTES: usize = 64 * 1024;

fn param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

async fn serve(req: Request<Incoming>, requests: Arc<AtomicU64>) -> Response<BoxBody> {
    requests.fetch_add(1, Ordering::Relaxed);
    let full = |b: String| Full::new(Bytes::from(b)).boxed();
    let query = req.uri().query().map(str::to_owned);
    // Only the last segment counts, so any upstream prefix reaches the same behaviours.
    let last = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    match last.as_str() {
        "headers" => {
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                headers.insert(
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                );
            }
            let v = serde_json::json!({
                "method": req.method().as_str(),
                "version": format!("{:?}", req.version()),
                "query": query,
                "headers": headers,
            });
            Response::new(full(v.to_string()))
        }
        "sink" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                        }
                    }
                    Err(e) => {
                        let mut r = Response::new(full(format!("body error: {e}")));
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        return r;
                    }
                }
            }
            Response::new(full(format!("{{\"bytes\":{n}}}")))
        }
        "source" => {
            let total = param(query.as_deref(), "bytes").unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; CHUNK_BYTES]);
            Response::new(SourceBody { left: total, chunk }.boxed())
        }
        "slow" => {
            let ms = param(query.as_deref(), "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("ok".into()))
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            Response::new(full("late".into()))
        }
        _ => {
            let mut r = Response::new(full("no such path".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// `left` bytes in `chunk`-sized frames, produced as they are polled (never all in memory).
pub struct SourceBody {
    pub left: u64,
    pub chunk: Bytes,
}

impl hyper::body::Body for SourceBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        let piece = self
            .chunk
            .slice(..usize::try_from(n).unwrap_or(self.chunk.len()));
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(piece))))
    }
}

impl Backend {
    pub async fn start() -> Result<Backend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counter = counter.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let counter = counter.clone();
                    async move { Ok::<_, Infallible>(serve(req, counter).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(Backend {
            addr,
            requests,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The gateway's resident-set high-water mark in KiB (`VmHWM`), from `/proc`.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM line")
}
