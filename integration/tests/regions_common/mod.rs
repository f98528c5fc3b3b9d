//! Helpers shared by the multi-region tests (`replication_*.rs`): a three-region cluster of real
//! queue nodes and region processes, an HTTP client of the region API, and waits for replication.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use homeport_integration::wan::{LinkConditions, Wan};
use homeport_integration::{Cluster, ClusterSpec, RegionSetup};
use http_body_util::{BodyExt, Full};
use hyper::header::{ETAG, HeaderMap};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The regions of every multi-region test; uids are homed by prefix (`sh-1001` lives in `sh`).
pub const REGIONS: [&str; 3] = ["sh", "hk", "ca"];
/// Deadline for anything involving processes starting, replication, or catching up. Generous:
/// the machine is shared and slow; only a real failure should hit it.
pub const WAIT_MS: u64 = 30_000;
/// Deadline of one HTTP request (a write waits up to `append_timeout_ms` for the queue).
pub const HTTP_TIMEOUT_MS: u64 = 15_000;
/// Poll interval of [`eventually`].
const POLL_INTERVAL_MS: u64 = 50;
/// The header in which a region names a user's home region.
pub const HOME_HEADER: &str = "homeport-home-region";
/// Lines of each region process's log shown in a failure message.
const LOG_TAIL_LINES: usize = 40;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_homeport-it"))
}

/// Three regions with `groups` queue groups each, quick failover and frequent heartbeats (so lag
/// is measurable within a test's time).
pub fn spec(groups: usize) -> ClusterSpec {
    ClusterSpec {
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        groups_per_region: groups,
        queue_settings: Vec::new(),
    }
    .with("attempt_timeout_ms = 500")
    .with("append_timeout_ms = 5000")
    .with("group_probe_interval_ms = 200")
    .with("heartbeat_interval_ms = 200")
}

/// Replay tuned for tests: short long-polls, short backoffs, an eager outbox shipper.
pub fn fast_setup() -> RegionSetup {
    RegionSetup {
        extra_toml: vec![
            "[replay]\nread_wait_ms = 200\nretry_backoff_ms = 50\nmax_retry_backoff_ms = 500\n\
             outbox_scan_interval_ms = 200\noutbox_min_age_ms = 500\n\
             checkpoint_report_interval_ms = 500\nstatus_interval_ms = 200"
                .to_owned(),
        ],
    }
}

/// A WAN with the same conditions in both directions between every pair of [`REGIONS`].
pub fn uniform_wan(seed: u64, conditions: LinkConditions) -> Wan {
    let wan = Wan::new(seed);
    for (i, a) in REGIONS.iter().enumerate() {
        for b in &REGIONS[i + 1..] {
            wan.set_both(a, b, conditions);
        }
    }
    wan
}

/// Builds the cluster, starts every queue node, routes regions through `wan` if given, starts
/// every region process and waits until each answers its HTTP API.
pub async fn start(spec: &ClusterSpec, setup: &RegionSetup, wan: Option<&Wan>) -> Result<Cluster> {
    let cluster = Cluster::with_regions(bin(), spec, setup)?;
    cluster.start_all()?;
    let endpoint = cluster.endpoint(homeport_config::OPERATOR_IDENTITY)?;
    cluster.wait_up(&endpoint, &cluster.node_ids()).await?;
    if let Some(wan) = wan {
        cluster.route_through(wan).await?;
    }
    for r in REGIONS {
        cluster.start_region(r)?;
    }
    let api = Api::new(&cluster)?;
    for r in REGIONS {
        api.wait_up(&cluster, r).await?;
    }
    Ok(cluster)
}

/// The process name of region `r` in the harness (`region-<r>`).
pub fn process(r: &str) -> String {
    homeport_config::region_identity(r)
}

/// Starts a region process that was killed and waits until its API answers.
pub async fn restart_region(cluster: &Cluster, r: &str) -> Result<()> {
    cluster.start_region(r)?;
    Api::new(cluster)?.wait_up(cluster, r).await
}

/// The last lines of every region process's log, for failure messages.
pub fn region_logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    for r in REGIONS {
        let name = process(r);
        let log = cluster.node_log(&name);
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        out.push_str(&format!("\n--- last {} lines of {name} ---\n", tail.len()));
        for l in tail {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Polls `f` until it returns `Ok`, or fails after `timeout_ms` with `f`'s last complaint.
/// Tests wait for conditions, never for time.
pub async fn eventually<T, F, Fut>(what: &str, timeout_ms: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_millis(timeout_ms);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() > deadline => {
                bail!("timed out after {timeout_ms} ms waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await,
        }
    }
}

/// One HTTP answer.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The record version in `ETag: "<version>"`.
    pub fn etag(&self) -> Option<u64> {
        self.header(ETAG.as_str())?
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the answer is not JSON: {self:?}"))
    }
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} etag={:?} home={:?} body={:?}",
            self.status,
            self.etag(),
            self.header(HOME_HEADER),
            self.text()
        )
    }
}

/// One HTTP request with a deadline. A fresh client (and connection) per request, so a region
/// process killed and restarted on the same port never meets a stale pooled connection.
pub async fn http(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method.clone()).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body))?;
    let deadline = Duration::from_millis(HTTP_TIMEOUT_MS);
    let work = async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r.with_context(|| format!("{method} {url}")),
        Err(_) => bail!("{method} {url} got no answer within {HTTP_TIMEOUT_MS} ms"),
    }
}

/// What a record must look like in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want<'a> {
    /// `200` with this body and `ETag: "<version>"`.
    Value(u64, &'a str),
    /// `404` with the tombstone's `ETag: "<version>"`.
    Deleted(u64),
}

/// The region HTTP APIs of one cluster.
#[derive(Clone)]
pub struct Api {
    urls: HashMap<String, String>,
}

impl Api {
    pub fn new(cluster: &Cluster) -> Result<Self> {
        let mut urls = HashMap::new();
        for r in REGIONS {
            urls.insert(r.to_owned(), cluster.api_url(r)?);
        }
        Ok(Self { urls })
    }

    pub fn url(&self, region: &str) -> &str {
        self.urls
            .get(region)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn record_url(&self, region: &str, uid: &str, key: &str) -> String {
        format!("{}/v1/users/{uid}/records/{key}", self.url(region))
    }

    pub async fn put(
        &self,
        region: &str,
        uid: &str,
        key: &str,
        value: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp> {
        let url = self.record_url(region, uid, key);
        http(Method::PUT, &url, headers, Bytes::from(value.to_owned())).await
    }

    pub async fn delete(
        &self,
        region: &str,
        uid: &str,
        key: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp> {
        let url = self.record_url(region, uid, key);
        http(Method::DELETE, &url, headers, Bytes::new()).await
    }

    pub async fn get(&self, region: &str, uid: &str, key: &str) -> Result<Resp> {
        let url = self.record_url(region, uid, key);
        http(Method::GET, &url, &[], Bytes::new()).await
    }

    /// `GET /v1/digest`: `{region, total, records, per_user}`.
    pub async fn digest(&self, region: &str) -> Result<Value> {
        let url = format!("{}/v1/digest", self.url(region));
        let r = http(Method::GET, &url, &[], Bytes::new()).await?;
        if r.status != StatusCode::OK {
            bail!("GET {url}: {r:?}");
        }
        r.json()
    }

    /// The `/v1/status` lag row of `source` → `region`.
    pub async fn lag(&self, region: &str, source: &str) -> Result<Value> {
        let url = format!("{}/v1/status", self.url(region));
        let r = http(Method::GET, &url, &[], Bytes::new()).await?;
        if r.status != StatusCode::OK {
            bail!("GET {url}: {r:?}");
        }
        let status = r.json()?;
        status["lags"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["source"] == source))
            .cloned()
            .with_context(|| format!("no lag row for source {source} in {status}"))
    }

    /// Waits until region `r` answers `GET /v1/status`.
    pub async fn wait_up(&self, cluster: &Cluster, r: &str) -> Result<()> {
        let url = format!("{}/v1/status", self.url(r));
        let up = eventually(&format!("region {r} to answer {url}"), WAIT_MS, || async {
            match http(Method::GET, &url, &[], Bytes::new()).await {
                Ok(resp) if resp.status == StatusCode::OK => Ok(()),
                Ok(resp) => Err(format!("{resp:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await;
        up.map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))
    }

    /// Waits until `uid/key` reads as `want` in `region`.
    pub async fn wait_record(
        &self,
        cluster: &Cluster,
        region: &str,
        uid: &str,
        key: &str,
        want: Want<'_>,
    ) -> Result<()> {
        let what = format!("{uid}/{key} to read as {want:?} in {region}");
        let got = eventually(&what, WAIT_MS, || async {
            let r = self
                .get(region, uid, key)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let ok = match want {
                Want::Value(v, body) => {
                    r.status == StatusCode::OK && r.etag() == Some(v) && r.body == body.as_bytes()
                }
                Want::Deleted(v) => r.status == StatusCode::NOT_FOUND && r.etag() == Some(v),
            };
            if ok { Ok(()) } else { Err(format!("{r:?}")) }
        })
        .await;
        got.map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))
    }

    /// Waits until every region shows the same digest; returns it.
    pub async fn wait_converged(&self, cluster: &Cluster, timeout_ms: u64) -> Result<Value> {
        let got = eventually(
            "the digests of all regions to be equal",
            timeout_ms,
            || async {
                let mut digests = Vec::new();
                for r in REGIONS {
                    digests.push(self.digest(r).await.map_err(|e| format!("{e:#}"))?);
                }
                let totals: Vec<&Value> = digests.iter().map(|d| &d["total"]).collect();
                if totals.iter().all(|t| *t == totals[0]) {
                    Ok(digests.swap_remove(0))
                } else {
                    let summary: Vec<String> = digests
                        .iter()
                        .map(|d| {
                            format!(
                                "{}: total {} over {} records",
                                d["region"], d["total"], d["records"]
                            )
                        })
                        .collect();
                    Err(summary.join("; "))
                }
            },
        )
        .await;
        got.map_err(|e| anyhow::anyhow!("{e}{}", region_logs(cluster)))
    }
}
