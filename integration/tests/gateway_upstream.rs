//! The upstream proxy: HTTP/1.1 and h2c on both sides, bodies far larger than the gateway may
//! hold streamed both ways, hop-by-hop headers removed, Forwarded / X-Forwarded-For added, the
//! checked user passed on (and not spoofable), 502 for an unreachable upstream, 504 for a slow one.

mod gateway_common;
mod regions_common;

use anyhow::{Result, ensure};
use bytes::Bytes;
use gateway_common::{Backend, SourceBody, call, code, logs, peak_rss_kib, start};
use homeport_integration::GatewaySetup;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Streamed each way; the gateway's peak memory may grow by far less (see `MAX_GROWTH_KIB`).
const STREAM_BYTES: u64 = 192 * 1024 * 1024;
/// How much the gateway's resident-set high-water mark may grow while streaming.
const MAX_GROWTH_KIB: u64 = 48 * 1024;
const UPSTREAM_TIMEOUT_MS: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_streams_adapts_headers_and_names_its_failures() -> Result<()> {
    let backend = Backend::start().await?;
    let setup = GatewaySetup {
        settings: vec![format!("upstream_timeout_ms = {UPSTREAM_TIMEOUT_MS}")],
        region_toml: vec![(
            "sh".into(),
            format!(
                "[[regions.upstreams]]\nprefix = \"/svc/\"\nurl = \"{url}\"\n\
                 [[regions.upstreams]]\nprefix = \"/h2/\"\nurl = \"{url}\"\nprotocol = \"h2c\"\n\
                 [[regions.upstreams]]\nprefix = \"/dead/\"\nurl = \"http://127.0.0.1:1\"",
                url = backend.url()
            ),
        )],
    };
    let cluster = start(&["sh"], &setup, None).await?;
    let logs = || logs(&cluster, &["sh"]);
    let gw = cluster.gateway_url("sh")?;
    let t = cluster.ticket("sh-1")?;
    let auth = format!("Bearer {t}");

    // Headers over HTTP/1.1.
    let r = call(
        Method::GET,
        &format!("{gw}/svc/headers"),
        Some(&t),
        &[
            ("connection", "x-drop"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("homeport-user", "sh-999"),
            ("x-kept", "yes"),
        ],
        "",
    )
    .await?;
    ensure!(r.status == StatusCode::OK, "headers: {r:?}{}", logs());
    let seen = r.json()?;
    let h = &seen["headers"];
    ensure!(seen["version"] == "HTTP/1.1", "{seen}");
    for gone in ["x-drop", "keep-alive", "proxy-authorization", "connection"] {
        ensure!(
            h.get(gone).is_none(),
            "{gone} must not reach the upstream: {seen}"
        );
    }
    ensure!(h["x-kept"] == "yes", "{seen}");
    ensure!(
        h["homeport-user"] == "sh-1",
        "the checked user, not the client's: {seen}"
    );
    ensure!(h["x-forwarded-for"] == "127.0.0.1", "{seen}");
    ensure!(
        h["forwarded"]
            .as_str()
            .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http;host=")),
        "{seen}"
    );

    // h2c from the client to the gateway, and from the gateway to an h2c upstream.
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("{gw}/h2/headers"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::new()))?;
    let resp = h2.request(req).await?;
    ensure!(resp.version() == hyper::Version::HTTP_2, "client side h2c");
    let body = resp.into_body().collect().await?.to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(seen["version"] == "HTTP/2.0", "upstream side h2c: {seen}");

    // Bodies far larger than the gateway may hold, both ways.
    let pid = cluster
        .pid(&homeport_config::gateway_identity("sh"))
        .ok_or_else(|| anyhow::anyhow!("gateway not running"))?;
    let before = peak_rss_kib(pid)?;
    let streaming: Client<_, SourceBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::put(format!("{gw}/svc/sink"))
        .header("authorization", &auth)
        .body(SourceBody {
            left: STREAM_BYTES,
            chunk: Bytes::from(vec![b'u'; 256 * 1024]),
        })?;
    let resp = streaming.request(req).await?;
    ensure!(resp.status() == StatusCode::OK, "upload: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    let got: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(
        got["bytes"] == STREAM_BYTES,
        "the upstream got every byte: {got}"
    );
    let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("{gw}/svc/source?bytes={STREAM_BYTES}"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::new()))?;
    let resp = plain.request(req).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "download: {}",
        resp.status()
    );
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            received += d.len() as u64;
        }
    }
    ensure!(received == STREAM_BYTES, "downloaded {received} bytes");
    let after = peak_rss_kib(pid)?;
    ensure!(
        after < before + MAX_GROWTH_KIB,
        "the gateway's peak memory grew from {before} KiB to {after} KiB while streaming \
         {STREAM_BYTES} bytes each way: it buffered bodies"
    );

    // Failures, named.
    let r = call(Method::GET, &format!("{gw}/dead/x"), Some(&t), &[], "").await?;
    ensure!(
        r.status == StatusCode::BAD_GATEWAY && code(&r) == "upstream_unreachable",
        "unreachable: {r:?}"
    );
    let r = call(Method::GET, &format!("{gw}/svc/hang"), Some(&t), &[], "").await?;
    ensure!(
        r.status == StatusCode::GATEWAY_TIMEOUT && code(&r) == "upstream_timeout",
        "slow upstream: {r:?}"
    );
    let r = call(Method::GET, &format!("{gw}/svc/headers"), None, &[], "").await?;
    ensure!(
        r.status == StatusCode::UNAUTHORIZED,
        "upstreams need tickets: {r:?}"
    );
    Ok(())
}
