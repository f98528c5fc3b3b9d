//! The data plane: a request goes to an upstream (a configured service, or the region process)
//! over pooled keep-alive connections, bodies streaming both ways (only a body of at most
//! `SMALL_BODY_BYTES` is read whole),
//! hop-by-hop headers removed as RFC 9110 §7.6.1 says, `Forwarded` and `X-Forwarded-For`
//! added. A connect failure answers 502, no response headers within the upstream timeout 504.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Body, problem};
use crate::h1;

/// How often idle pooled HTTP/1.1 connections are checked for expiry and for an upstream that
/// closed them.
pub(crate) const REAP_INTERVAL_MS: u64 = 5_000;

/// Idle pooled connections are closed after this long (upstreams usually close at 60-75 s).
const POOL_IDLE_TIMEOUT_MS: u64 = 55_000;

/// Request headers a client may not set: the gateway sets them after checking the ticket, and
/// upstreams trust them.
pub const USER_HEADER: &str = "homeport-user";

/// Fixed hop-by-hop fields (RFC 9110 §7.6.1, plus the `Proxy-*` family and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields: the fixed ones, every `Proxy-*` field, and the fields the
/// `Connection` header names (which are about this hop only).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends this hop to `X-Forwarded-For` and `Forwarded` (RFC 7239), keeping earlier hops.
/// Each value is written once into a buffer of its exact size, which the header then owns (one
/// allocation, no copy or regrowth): this runs on every proxied request.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, host: Option<&str>) {
    use std::io::Write as _;
    // "for=\"[" + an IPv6 address (at most 45 bytes) + "]\";proto=http" fits in 64.
    let mut this_hop = [0u8; 64];
    let ip_len = {
        let mut w = &mut this_hop[..];
        let _ = write!(w, "{}", client.ip());
        64 - w.len()
    };
    let ip = &this_hop[..ip_len];
    let previous = |headers: &HeaderMap, name: &HeaderName| -> Option<HeaderValue> {
        headers
            .get(name)
            .filter(|p| !p.is_empty() && p.to_str().is_ok())
            .cloned()
    };
    let joined = |previous: Option<HeaderValue>, parts: &[&[u8]]| -> Option<HeaderValue> {
        let len: usize = previous.as_ref().map_or(0, |p| p.len() + 2)
            + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        if let Some(p) = &previous {
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b", ");
        }
        for p in parts {
            out.extend_from_slice(p);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
    };
    if let Some(v) = joined(previous(headers, &X_FORWARDED_FOR), &[ip]) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let (open, close): (&[u8], &[u8]) = match client.ip() {
        std::net::IpAddr::V4(_) => (b"for=", b";proto=http"),
        std::net::IpAddr::V6(_) => (b"for=\"[", b"]\";proto=http"),
    };
    let host = host
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        .map(str::as_bytes);
    let forwarded = match host {
        Some(h) => joined(
            previous(headers, &header::FORWARDED),
            &[open, ip, close, b";host=\"", h, b"\""],
        ),
        None => joined(previous(headers, &header::FORWARDED), &[open, ip, close]),
    };
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
}

/// Pooled clients: HTTP/1.1 (the lean in-task client of `h1.rs`, and hyper's for streaming
/// request bodies), and HTTP/2 with prior knowledge (h2c).
pub(crate) struct Upstreams {
    h1: h1::Pool,
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
    timeout: Duration,
}

/// Where an upstream request goes: the authority, and its Host field made once (not per request).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub authority: Authority,
    host: Option<HeaderValue>,
}

impl Target {
    pub fn new(authority: Authority) -> Self {
        let host = HeaderValue::from_str(authority.as_str()).ok();
        Target { authority, host }
    }
}

/// Which client a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    H2c,
}

impl Upstreams {
    pub fn new(connect_timeout_ms: u64, timeout_ms: u64, max_idle_per_host: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstreams {
            h1: h1::Pool::new(
                max_idle_per_host,
                Duration::from_millis(POOL_IDLE_TIMEOUT_MS),
                connect_timeout_ms,
            ),
            http1,
            h2c,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// See [`h1::Pool::reap`]; call every [`REAP_INTERVAL_MS`].
    pub fn reap_idle(&self) {
        self.h1.reap();
    }

    /// Sends `req` (its URI in origin form) to `authority`, adapting headers for one more hop.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        target: &Target,
        protocol: Protocol,
        client: SocketAddr,
    ) -> Response<Body> {
        let authority = &target.authority;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // A HeaderValue clone shares its bytes; only an absolute-form target (no Host) copies.
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // HTTP/1.1 needs Host; for h2 the client derives :authority from the URI.
        headers.remove(header::HOST);
        if protocol == Protocol::Http1
            && let Some(h) = &target.host
        {
            headers.insert(header::HOST, h.clone());
        }
        let original_host = original_host.as_ref().and_then(|h| h.to_str().ok());
        add_forwarded(headers, client, original_host);

        if protocol == Protocol::Http1 {
            use http_body::Body as _;
            let body = req.body();
            let small = body.is_end_stream()
                || body
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= SMALL_BODY_BYTES);
            if small {
                return self.send_lean(req, &path, authority).await;
            }
        }
        // Boxed: hyper's client futures are large, and this is not the common path.
        Box::pin(self.send_hyper(req, path, authority, protocol)).await
    }

    /// h2c, and HTTP/1.1 with a large or streaming request body: hyper's clients, which send
    /// the body while the answer may already be coming back.
    async fn send_hyper(
        &self,
        mut req: Request<Body>,
        path: PathAndQuery,
        authority: &Authority,
        protocol: Protocol,
    ) -> Response<Body> {
        let uri = match Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad_request_target",
                    format!("the request target cannot be sent upstream: {e}"),
                );
            }
        };
        *req.uri_mut() = uri;
        *req.version_mut() = match protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            Protocol::H2c => http::Version::HTTP_2,
        };
        let client_for = match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::H2c => &self.h2c,
        };
        match tokio::time::timeout(self.timeout, client_for.request(req)).await {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = small_body(&parts.headers, body).await;
                Response::from_parts(parts, body)
            }
            Ok(Err(e)) => upstream_failed(authority, e.is_connect(), &chain(&e)),
            Err(_) => self.upstream_timeout(authority),
        }
    }

    /// HTTP/1.1 with a body that is empty or small: read whole first, then sent with the head
    /// in one write by the in-task client (`h1.rs`).
    async fn send_lean(
        &self,
        req: Request<Body>,
        path: &PathAndQuery,
        authority: &Authority,
    ) -> Response<Body> {
        use http_body::Body as _;
        let (mut parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            None
        } else {
            let limit = usize::try_from(SMALL_BODY_BYTES).unwrap_or(usize::MAX);
            match crate::body::collect_limited(body, limit).await {
                Ok(b) => Some(b),
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "body_read_failed",
                        format!("reading the request body failed: {e}"),
                    );
                }
            }
        };
        // The body goes with the head; the upstream need not ask for it.
        parts.headers.remove(header::EXPECT);
        let encode = |out: &mut Vec<u8>| {
            h1::encode_head(
                &parts.method,
                path.as_str(),
                &parts.headers,
                body.as_ref(),
                out,
            )
        };
        match tokio::time::timeout(self.timeout, self.h1.send(authority, &parts.method, encode))
            .await
        {
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                resp
            }
            Ok(Err(e)) => upstream_failed(authority, e.is_connect(), &e.to_string()),
            Err(_) => self.upstream_timeout(authority),
        }
    }

    fn upstream_timeout(&self, authority: &Authority) -> Response<Body> {
        metrics::counter!("homeport_gateway_upstream_errors_total", "kind" => "timeout")
            .increment(1);
        problem(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!(
                "the upstream at {authority} sent no response within {} ms",
                self.timeout.as_millis()
            ),
        )
    }
}

/// 502: `connect` tells a refused or timed-out connection from a failed exchange.
fn upstream_failed(authority: &Authority, connect: bool, detail: &str) -> Response<Body> {
    if connect {
        metrics::counter!("homeport_gateway_upstream_errors_total", "kind" => "unreachable")
            .increment(1);
        problem(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("could not connect to the upstream at {authority}: {detail}"),
        )
    } else {
        metrics::counter!("homeport_gateway_upstream_errors_total", "kind" => "failed")
            .increment(1);
        problem(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!("the upstream at {authority} failed the request: {detail}"),
        )
    }
}

/// A response body announced (Content-Length) at most this large is read whole before the answer
/// starts, so the client gets head and body in one write (measured: 2.4 writes per proxied
/// request without it). Anything larger, or of unknown length, streams.
pub(crate) const SMALL_BODY_BYTES: u64 = 16 * 1024;

async fn small_body(headers: &HeaderMap, body: hyper::body::Incoming) -> Body {
    use http_body::Body as _;
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= SMALL_BODY_BYTES);
    if !small || body.is_end_stream() {
        return crate::body::incoming(body);
    }
    // hyper delivers no more than Content-Length, so this holds at most SMALL_BODY_BYTES.
    let limit = usize::try_from(SMALL_BODY_BYTES).unwrap_or(usize::MAX);
    match crate::body::collect_limited(crate::body::incoming(body), limit).await {
        Ok(bytes) => crate::body::full(bytes),
        Err(e) => crate::body::failed(e),
    }
}

/// An error and its causes on one line (hyper's top-level messages say little alone).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("authorization", "Bearer t"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-kept"]);
    }

    #[test]
    fn forwarded_headers_append_this_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            "127.0.0.9:5000".parse().unwrap(),
            Some("gw.example:80"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(
            h[header::FORWARDED],
            "for=127.0.0.9;proto=http;host=\"gw.example:80\""
        );
        add_forwarded(&mut h, "[::1]:1".parse().unwrap(), None);
        assert_eq!(
            h[header::FORWARDED],
            "for=127.0.0.9;proto=http;host=\"gw.example:80\", for=\"[::1]\";proto=http"
        );
    }
}
