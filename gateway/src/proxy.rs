//! The data plane: a request goes to an upstream (a configured service, or the region process)
//! over pooled keep-alive connections, bodies streaming both ways (only a body of at most
//! `SMALL_BODY_BYTES` is read whole),
//! hop-by-hop headers removed as RFC 9110 §7.6.1 says, `Forwarded` and `X-Forwarded-For`
//! added. A connect failure answers 502, no response headers within the upstream timeout 504.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Body, problem};
use crate::h1::{self, push_content_length, push_field};

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

/// Whether a field never crosses this proxy whatever `Connection` says: the fixed hop-by-hop
/// fields and the `Proxy-*` family. `name` in any case.
fn fixed_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Whether one of the `Connection` values names `name` (such a field is about this hop only).
fn named_by_connection<'a>(name: &[u8], connection: impl Iterator<Item = &'a [u8]>) -> bool {
    connection
        .flat_map(|v| v.split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

/// Whether a field of `fields` must not be passed on by this proxy (RFC 9110 §7.6.1).
fn hop_by_hop_in<'a, I>(name: &[u8], fields: &impl Fn() -> I) -> bool
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    fixed_hop_by_hop(name)
        || named_by_connection(
            name,
            fields()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                .map(|(_, v)| v),
        )
}

/// Removes hop-by-hop fields: the fixed ones, every `Proxy-*` field, and the fields the
/// `Connection` header names (which are about this hop only).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            fixed_hop_by_hop(k.as_str().as_bytes())
                || named_by_connection(
                    k.as_str().as_bytes(),
                    headers
                        .get_all(header::CONNECTION)
                        .iter()
                        .map(HeaderValue::as_bytes),
                )
        })
        .cloned()
        .collect();
    for name in gone {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether an earlier hop's `X-Forwarded-For` / `Forwarded` value is kept: visible ASCII only
/// (what a header value's `to_str` accepts), and not empty.
fn usable_hop(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
}

/// The client's address as text, for the short path to keep per connection.
pub(crate) fn client_ip_text(client: SocketAddr) -> Vec<u8> {
    let mut buf = [0u8; 64];
    ip_text(client, &mut buf).to_vec()
}

/// The client's address as text, on the stack (an IPv6 address is at most 45 bytes).
fn ip_text(client: SocketAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write as _;
    let len = {
        let mut w = &mut buf[..];
        let _ = write!(w, "{}", client.ip());
        64 - w.len()
    };
    &buf[..len]
}

/// This hop's `X-Forwarded-For` value: the earlier hops' values, then the client.
fn write_x_forwarded_for<'a>(
    previous: impl Iterator<Item = &'a [u8]>,
    ip: &[u8],
    out: &mut Vec<u8>,
) {
    for p in previous.filter(|p| usable_hop(p)) {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip);
}

/// This hop's `Forwarded` value (RFC 7239): the earlier hops' elements, then this one.
fn write_forwarded<'a>(
    previous: impl Iterator<Item = &'a [u8]>,
    client: SocketAddr,
    ip: &[u8],
    host: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    for p in previous.filter(|p| usable_hop(p)) {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    let (open, close): (&[u8], &[u8]) = match client.ip() {
        std::net::IpAddr::V4(_) => (b"for=", b";proto=http"),
        std::net::IpAddr::V6(_) => (b"for=\"[", b"]\";proto=http"),
    };
    out.extend_from_slice(open);
    out.extend_from_slice(ip);
    out.extend_from_slice(close);
    // Only a host that makes a valid quoted-string as it is (no quote, no backslash).
    let quotable = |h: &&[u8]| {
        h.iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
    };
    if let Some(h) = host.filter(quotable) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\"");
    }
}

/// Appends this hop to `X-Forwarded-For` and `Forwarded` (RFC 7239), keeping earlier hops.
/// Each value is written once into a buffer that the header then owns.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, host: Option<&str>) {
    let mut ip_buf = [0u8; 64];
    let ip = ip_text(client, &mut ip_buf);
    let mut xff = Vec::with_capacity(64);
    write_x_forwarded_for(
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes),
        ip,
        &mut xff,
    );
    let mut fwd = Vec::with_capacity(96);
    write_forwarded(
        headers
            .get_all(header::FORWARDED)
            .iter()
            .map(HeaderValue::as_bytes),
        client,
        ip,
        host.map(str::as_bytes),
        &mut fwd,
    );
    for (name, value) in [(X_FORWARDED_FOR, xff), (header::FORWARDED, fwd)] {
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(name, v);
        }
    }
}

/// Adapts a request's fields for one more hop: hop-by-hop fields out, `Host` for the upstream
/// (HTTP/1.1; for h2 the client derives `:authority` from the URI), this hop in
/// `X-Forwarded-For` and `Forwarded` with the client's original host, and the checked user
/// (`user`) in `Homeport-User`: set last, so a client can neither send its own value nor
/// make the hop-by-hop rules remove the gateway's (`Connection: homeport-user`).
fn adapt_headers(
    headers: &mut HeaderMap,
    uri_authority: Option<&Authority>,
    target: &Target,
    protocol: Protocol,
    client: SocketAddr,
    user: Option<&HeaderValue>,
) {
    // A HeaderValue clone shares its bytes; only an absolute-form target (no Host) copies.
    let original_host = headers
        .get(header::HOST)
        .cloned()
        .or_else(|| uri_authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    if protocol == Protocol::Http1
        && let Some(h) = &target.host
    {
        headers.insert(header::HOST, h.clone());
    }
    let original_host = original_host.as_ref().and_then(|h| h.to_str().ok());
    add_forwarded(headers, client, original_host);
    headers.remove(USER_HEADER);
    if let Some(u) = user {
        headers.insert(USER, u.clone());
    }
}

/// [`USER_HEADER`] as a name made at compile time (inserting by `&str` copies the name).
const USER: HeaderName = HeaderName::from_static(USER_HEADER);

/// The upstream request of the proxy's short path, written straight from the client's fields
/// read in place: what [`Upstreams::send`] does to a header map (hop-by-hop fields and
/// `Expect` out, `Host` for the upstream, the checked user, this hop in `X-Forwarded-For` and
/// `Forwarded`, the body's length), without building one.
#[allow(clippy::too_many_arguments)]
fn encode_short_request<'a, I>(
    method: &Method,
    target: &[u8],
    fields: &impl Fn() -> I,
    upstream: &Target,
    user: Option<&HeaderValue>,
    client: SocketAddr,
    ip: &[u8],
    body: &[u8],
    out: &mut Vec<u8>,
) where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    const REPLACED: [&[u8]; 6] = [
        b"host",
        b"expect",
        b"content-length",
        USER_HEADER.as_bytes(),
        b"x-forwarded-for",
        b"forwarded",
    ];
    let named =
        |n: &'static [u8]| move |(name, _): &(&'a [u8], &'a [u8])| name.eq_ignore_ascii_case(n);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields() {
        if REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r)) || hop_by_hop_in(name, fields) {
            continue;
        }
        push_field(out, name, value);
    }
    if let Some(h) = &upstream.host {
        push_field(out, b"host", h.as_bytes());
    }
    if let Some(u) = user {
        push_field(out, USER_HEADER.as_bytes(), u.as_bytes());
    }
    // Earlier hops' values, unless `Connection` names the field (the full path strips those
    // before it appends this hop).
    let kept = |n: &'static [u8]| {
        fields()
            .filter(named(n))
            .filter(|(name, _)| !hop_by_hop_in(name, fields))
            .map(|(_, v)| v)
    };
    out.extend_from_slice(b"x-forwarded-for: ");
    write_x_forwarded_for(kept(b"x-forwarded-for"), ip, out);
    out.extend_from_slice(b"\r\nforwarded: ");
    let original_host = fields().find(named(b"host")).map(|(_, v)| v);
    write_forwarded(kept(b"forwarded"), client, ip, original_host, out);
    out.extend_from_slice(b"\r\n");
    // The body's length; also 0 when the client said so (the full path passes its field on).
    if !body.is_empty() || kept(b"content-length").next().is_some() {
        push_content_length(out, body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The client's answer head of the proxy's short path, from the upstream's fields read in
/// place: hop-by-hop fields out, the rest as the upstream sent them (its Content-Length too:
/// the body passes unchanged), then what this hop adds (see `server.rs`).
///
/// The upstream's Content-Length fields are replaced by one `length` (the framing the
/// answer was read with, or for HEAD and 304 the length it announced): a field list with a
/// sign, repeats or a `Connection` naming it never reaches the client.
fn encode_short_answer_head(
    view: &h1::HeadView<'_, '_>,
    length: Option<u64>,
    close: bool,
    out: &mut Vec<u8>,
) {
    crate::server::start_head(view.status, out);
    let fields = || view.fields();
    let mut has_date = false;
    for (name, value) in fields() {
        if name.eq_ignore_ascii_case(b"content-length") || hop_by_hop_in(name, &fields) {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        push_field(out, name, value);
    }
    if let Some(n) = length {
        push_content_length(out, n);
    }
    crate::server::end_head(has_date, close, out);
}

/// A request for the proxy's short path: the client's head read in place, its body read whole.
pub(crate) struct ShortRequest<'a, F> {
    pub method: &'a Method,
    pub target: &'a [u8],
    /// Makes a fresh iterator over the client's fields.
    pub fields: F,
    pub body: &'a [u8],
    pub client: SocketAddr,
    /// The client's address as text ([`client_ip_text`]), made once per connection.
    pub client_ip: &'a [u8],
    /// The client asked to close the connection after this answer.
    pub close: bool,
    /// Set when the gateway starts shutting down: the connection then closes too. Read when
    /// the answer head is written, not before the request goes out (it may take a while).
    pub shutting_down: &'a std::sync::atomic::AtomicBool,
}

/// What the proxy's short path did.
pub(crate) enum ShortAnswer {
    /// The whole answer is in `out`, ready to write.
    Written(StatusCode),
    /// An answer to write the long way (a streaming body, or a failure).
    Respond(Response<Body>),
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
        user: Option<&HeaderValue>,
    ) -> Response<Body> {
        let authority = &target.authority;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri_authority = req.uri().authority().cloned();
        adapt_headers(
            req.headers_mut(),
            uri_authority.as_ref(),
            target,
            protocol,
            client,
            user,
        );

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

    /// The proxy's short path (see `server.rs`): a request for an HTTP/1.1 upstream whose body
    /// is read whole already. The answer goes into `out` when it is small; otherwise (it
    /// streams, or the exchange failed) it comes back as a response.
    pub async fn send_short<'a, F, I>(
        &self,
        upstream: &Target,
        user: Option<&HeaderValue>,
        req: ShortRequest<'a, F>,
        out: &mut Vec<u8>,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> ShortAnswer
    where
        F: Fn() -> I,
        I: Iterator<Item = (&'a [u8], &'a [u8])>,
    {
        let authority = &upstream.authority;
        let encode = |buf: &mut Vec<u8>| {
            encode_short_request(
                req.method,
                req.target,
                &req.fields,
                upstream,
                user,
                req.client,
                req.client_ip,
                req.body,
                buf,
            )
        };
        let write_head = |view: &h1::HeadView<'_, '_>, length: Option<u64>, out: &mut Vec<u8>| {
            let close = req.close || req.shutting_down.load(std::sync::atomic::Ordering::Acquire);
            encode_short_answer_head(view, length, close, out)
        };
        let sent = self
            .h1
            .send_small(authority, req.method, encode, out, write_head);
        // The caller's timer, moved later for every request: that is an atomic store, where a
        // new timeout is a timer-wheel insert and removal per request.
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.timeout);
        let answer = tokio::select! {
            biased;
            answer = sent => answer,
            _ = timer => return ShortAnswer::Respond(self.upstream_timeout(authority)),
        };
        match answer {
            Ok(h1::Small::Written(status)) => ShortAnswer::Written(status),
            Ok(h1::Small::Streams(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                ShortAnswer::Respond(resp)
            }
            Err(e) => {
                ShortAnswer::Respond(upstream_failed(authority, e.is_connect(), &e.to_string()))
            }
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

    /// A request's line, fields (lowercased names, sorted) and body, as an upstream reads them.
    fn as_upstream_sees(bytes: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut storage);
        let httparse::Status::Complete(len) = req.parse(bytes).unwrap() else {
            panic!("incomplete: {}", String::from_utf8_lossy(bytes));
        };
        let line = format!("{} {}", req.method.unwrap(), req.path.unwrap());
        let mut fields: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|f| {
                (
                    f.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(f.value).into_owned(),
                )
            })
            .collect();
        fields.sort();
        (line, fields, bytes[len..].to_vec())
    }

    /// One request through the short path's encoder and through the full path's header-map
    /// steps; both must read the same to the upstream. Returns what it reads.
    fn both_paths(
        fields: &[(&[u8], &[u8])],
        body: &'static [u8],
        client: SocketAddr,
    ) -> (String, Vec<(String, String)>, Vec<u8>) {
        let target = Target::new("up.example:8080".parse().unwrap());
        let user = HeaderValue::from_static("sh-1");
        let mut short = Vec::new();
        encode_short_request(
            &Method::PUT,
            b"/svc/x?a=1",
            &|| fields.iter().copied(),
            &target,
            Some(&user),
            client,
            &client_ip_text(client),
            body,
            &mut short,
        );
        // The full path: a header map through `send` (Expect dropped as `send_lean` does,
        // the body's length written by `encode_head` when there is a body).
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        adapt_headers(&mut h, None, &target, Protocol::Http1, client, Some(&user));
        h.remove(header::EXPECT);
        let mut full = Vec::new();
        let body = (!body.is_empty()).then(|| bytes::Bytes::from_static(body));
        h1::encode_head(&Method::PUT, "/svc/x?a=1", &h, body.as_ref(), &mut full);
        let seen = as_upstream_sees(&short);
        assert_eq!(seen, as_upstream_sees(&full), "short path vs full path");
        seen
    }

    #[test]
    fn the_short_path_adapts_a_request_as_the_full_path_does() {
        let fields: &[(&[u8], &[u8])] = &[
            (b"Host", b"gw.example:80"),
            (b"Connection", b"x-drop, keep-alive"),
            (b"X-Drop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Authorization", b"Basic eA=="),
            (b"Homeport-User", b"sh-999"),
            (b"X-Kept", b"yes"),
            (b"x-kept", b"again"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"Forwarded", b"for=10.0.0.1"),
            (b"Expect", b"100-continue"),
            (b"Content-Length", b"5"),
        ];
        for client in ["127.0.0.9:5000", "[::1]:7"] {
            let client: SocketAddr = client.parse().unwrap();
            let (line, seen, body) = both_paths(fields, b"hello", client);
            assert_eq!(line, "PUT /svc/x?a=1");
            assert_eq!(body, b"hello");
            let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "content-length",
                    "forwarded",
                    "homeport-user",
                    "host",
                    "x-forwarded-for",
                    "x-kept",
                    "x-kept"
                ]
            );
            assert!(seen.contains(&("homeport-user".into(), "sh-1".into())));
            assert!(seen.contains(&("host".into(), "up.example:8080".into())));
        }
        // A client naming the gateway's own fields in Connection: the checked user still
        // arrives, earlier hops named there are dropped, and an empty body keeps its length.
        let named: &[(&[u8], &[u8])] = &[
            (b"Host", b"gw\\"),
            (b"Connection", b"homeport-user, x-forwarded-for, forwarded"),
            (b"Homeport-User", b"sh-999"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"Content-Length", b"0"),
        ];
        let (_, seen, body) = both_paths(named, b"", "127.0.0.9:1".parse().unwrap());
        assert!(body.is_empty());
        assert_eq!(
            seen,
            [
                ("content-length".to_string(), "0".to_string()),
                // The host is left out: a backslash cannot stand in a quoted-string as is.
                ("forwarded".into(), "for=127.0.0.9;proto=http".into()),
                ("homeport-user".into(), "sh-1".into()),
                ("host".into(), "up.example:8080".into()),
                ("x-forwarded-for".into(), "127.0.0.9".into()),
            ]
        );
    }

    #[test]
    fn the_short_answer_head_drops_hop_by_hop_fields_and_keeps_the_rest() {
        let text = b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                     Proxy-Authenticate: Basic\r\nContent-Length: 2\r\nX-Kept: yes\r\n\
                     Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nok";
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(len) = resp.parse(text).unwrap() else {
            panic!("incomplete");
        };
        let view = h1::HeadView {
            status: StatusCode::OK,
            minor_version: 1,
            fields: resp.headers,
            len,
        };
        let mut out = Vec::new();
        encode_short_answer_head(&view, Some(2), true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Kept: yes\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n"
        );
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
