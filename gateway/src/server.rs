//! The client side of HTTP/1.1: the gateway's own keep-alive connection loop.
//!
//! Why not hyper's server for everything: for a proxied request it was the largest user-space
//! cost after the upstream client (a dispatcher polled several times per request, two timers
//! armed per request, a buffered writer that copies), while nginx, the benchmark's yardstick,
//! does nothing of the kind. Here one task per connection reads a request head with httparse,
//! reads a small body whole, runs the request through [`Gateway::handle`] like every other,
//! and writes the answer: head and a small body in one write.
//!
//! What this loop does not do itself it hands to hyper for the rest of the connection, with
//! the bytes it has read put back in front ([`Rewind`]): h2c (prior knowledge), HTTP/1.0,
//! request bodies that are chunked or larger than `SMALL_BODY_BYTES` (they stream, full duplex),
//! `Expect`, upgrades and `CONNECT`. So every protocol feature hyper had stays, and the common
//! request (no body or a small one) stays in this loop. A plain request for a local upstream
//! goes further: the proxy's short path (`short_path` here, `Upstreams::send_short`) carries it
//! without building request or response objects at all.
//!
//! The protocol decisions (head parsing, how a request is framed, the response head) are pure
//! functions, unit-tested without sockets.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{self, Body, problem};
use crate::h1::{self, Span};
use crate::proxy::{SMALL_BODY_BYTES, ShortAnswer, ShortRequest};
use crate::service::Via;
use crate::{HEADER_READ_TIMEOUT_MS, Worker};

/// Most header fields a request may have (hyper's default is 100 too).
const MAX_REQUEST_HEADERS: usize = 100;
/// Largest request head (request line and fields), in bytes; larger answers 431.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// The read buffer grows by at least this much before a read.
const READ_RESERVE_BYTES: usize = 8 * 1024;
/// An idle connection's buffers are dropped when larger than this (a large head grew them).
const MAX_IDLE_BUFFER_BYTES: usize = 64 * 1024;
/// Response body bytes gathered behind the head into one write; larger frames go on their own.
const MAX_GATHERED_BODY_BYTES: usize = 64 * 1024;
/// How an HTTP/2 client with prior knowledge starts (RFC 9113 §3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// A request this loop cannot take; answered, then the connection is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RequestError {
    #[error("the request is not valid HTTP/1.1: {0}")]
    Malformed(String),
    #[error(
        "the request head is larger than {MAX_REQUEST_HEAD_BYTES} bytes (or has more than {MAX_REQUEST_HEADERS} fields)"
    )]
    HeadTooLarge,
    #[error("{0}")]
    BadLength(String),
}

impl RequestError {
    fn answer(&self) -> Response<Body> {
        match self {
            RequestError::HeadTooLarge => problem(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
                format!("{self}; send fewer or shorter header fields"),
            ),
            RequestError::Malformed(_) | RequestError::BadLength(_) => {
                problem(StatusCode::BAD_REQUEST, "bad_request", self.to_string())
            }
        }
    }
}

/// A complete request head at the front of the read buffer, by offsets into it.
#[derive(Debug, PartialEq, Eq)]
struct ParsedHead {
    /// Bytes of the head, up to and including the empty line.
    len: usize,
    method: Span,
    target: Span,
    minor_version: u8,
}

/// Parses a request head at the front of `buf`; `Ok(None)` until it is complete. The fields'
/// offsets go into `fields` (reused from request to request: no allocation per request).
fn parse_request(
    buf: &[u8],
    fields: &mut Vec<(Span, Span)>,
) -> Result<Option<ParsedHead>, RequestError> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut parsed);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_REQUEST_HEAD_BYTES {
                return Err(RequestError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    if len > MAX_REQUEST_HEAD_BYTES {
        return Err(RequestError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(RequestError::Malformed("an incomplete request line".into()));
    };
    fields.clear();
    fields.extend(
        req.headers
            .iter()
            .map(|f| (Span::of(buf, f.name.as_bytes()), Span::of(buf, f.value))),
    );
    Ok(Some(ParsedHead {
        len,
        method: Span::of(buf, method.as_bytes()),
        target: Span::of(buf, target.as_bytes()),
        minor_version,
    }))
}

/// What to do with a parsed request.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Served by this loop; the body (`body_bytes`, maybe 0) follows the head.
    Here { body_bytes: usize, close: bool },
    /// Handed to hyper with the rest of the connection, for the reason given.
    Hyper(&'static str),
}

/// How a request is framed (RFC 9112 §6) and whether this loop serves it. `fields` makes a
/// fresh iterator over the request's fields each time it is called.
fn plan<'a, I>(
    method: &[u8],
    minor_version: u8,
    fields: impl Fn() -> I,
) -> Result<Plan, RequestError>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    if minor_version != 1 {
        return Ok(Plan::Hyper("HTTP/1.0"));
    }
    if method == b"CONNECT" {
        return Ok(Plan::Hyper("CONNECT"));
    }
    for (name, _) in fields() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Ok(Plan::Hyper("a transfer-coded request body"));
        } else if name.eq_ignore_ascii_case(b"expect") {
            return Ok(Plan::Hyper("Expect"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            return Ok(Plan::Hyper("an upgrade"));
        }
    }
    // The same persistence rule as for answers (RFC 9112 §9.3).
    let close = !h1::keep_alive_of(minor_version, fields());
    let length = h1::content_length(
        fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, v)| v),
    )
    .map_err(|e| RequestError::BadLength(format!("the request's {e}")))?
    .unwrap_or(0);
    if length > SMALL_BODY_BYTES {
        return Ok(Plan::Hyper("a large request body"));
    }
    Ok(Plan::Here {
        // At most SMALL_BODY_BYTES.
        body_bytes: length as usize,
        close,
    })
}

/// The request as the gateway's handlers take it. Field values and the target share `head`'s
/// bytes (no copy).
fn to_request(
    head: &Bytes,
    parsed: &ParsedHead,
    fields: &[(Span, Span)],
    body: Bytes,
) -> Result<Request<Body>, RequestError> {
    let method = Method::from_bytes(&head[parsed.method.range()])
        .map_err(|_| RequestError::Malformed("the method is not a token".into()))?;
    let uri = Uri::from_maybe_shared(head.slice(parsed.target.range())).map_err(|e| {
        RequestError::Malformed(format!("the request target is not a valid URI: {e}"))
    })?;
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    for (name, value) in fields {
        let name = HeaderName::from_bytes(&head[name.range()])
            .map_err(|_| RequestError::Malformed("a field name is not a token".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range()))
            .map_err(|_| RequestError::Malformed(format!("the value of {name} is not valid")))?;
        headers.append(name, value);
    }
    let mut req = Request::new(body::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// How a response body is sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304); fields that describe the body are the handler's.
    NoBody,
    Length(u64),
    Chunked,
}

fn response_framing(status: StatusCode, head_request: bool, body: &Body) -> Framing {
    if head_request || h1::bodiless(status) {
        return Framing::NoBody;
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Fields this hop sets itself; the handler's values of them are not sent.
/// A handler's Content-Length is kept only where this hop sends no framing of its own (HEAD,
/// 304: it announces a length), never on 1xx or 204 (RFC 9110 §8.6).
fn hop_field(name: &HeaderName, framing: Framing, status: StatusCode) -> bool {
    let announces_length = status == StatusCode::NOT_MODIFIED || !h1::bodiless(status);
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == "keep-alive"
        || (name == header::CONTENT_LENGTH && (framing != Framing::NoBody || !announces_length))
}

/// The response head: status line, the handler's fields, this hop's framing, then
/// [`end_head`].
fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    start_head(status, out);
    for (name, value) in headers {
        if hop_field(name, framing, status) {
            continue;
        }
        h1::push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::NoBody => {}
        Framing::Length(n) => h1::push_content_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    end_head(headers.contains_key(header::DATE), close, out);
}

/// An answer's status line (the canonical reason phrase, as hyper sends).
pub(crate) fn start_head(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What this hop adds at the end of every answer head: Date when there is none (an origin
/// with a clock must send one, a proxy must add one, RFC 9110 §6.6.1), `Connection: close`
/// when the connection ends after it, and the empty line.
pub(crate) fn end_head(has_date: bool, close: bool, out: &mut Vec<u8>) {
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_BYTES: usize = 29;

thread_local! {
    /// The Date value of the current second, formatted once per second per thread.
    static DATE: std::cell::RefCell<(u64, [u8; DATE_BYTES])> =
        const { std::cell::RefCell::new((u64::MAX, [0; DATE_BYTES])) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let mut text = [0u8; DATE_BYTES];
            let mut w = &mut text[..];
            if write!(w, "{}", httpdate::HttpDate::from(now)).is_ok() && w.is_empty() {
                *d = (secs, text);
            }
        }
        out.extend_from_slice(&d.1);
    });
}

/// Why waiting for request bytes ended without any.
enum Ended {
    /// The client closed (or the socket failed).
    Closed,
    /// No complete head within `HEADER_READ_TIMEOUT_MS`.
    TimedOut,
    /// The gateway is shutting down.
    Stopping,
}

/// One client connection.
struct ClientConn {
    stream: TcpStream,
    client: SocketAddr,
    /// `client`'s address as text (for `X-Forwarded-For`), made once.
    client_ip: Vec<u8>,
    buf: BytesMut,
    /// Response heads (and small bodies) are encoded here, reused from response to response.
    out: Vec<u8>,
    /// Offsets of the current request's fields.
    fields: Vec<(Span, Span)>,
    /// The head-read deadline; reset (not re-created) for every head.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The short path's upstream deadline, likewise.
    upstream_timer: Pin<Box<tokio::time::Sleep>>,
    /// Resolves once the gateway stops. Made once per connection: a new wait per request
    /// registered and removed a waiter on the stop signal every time (it showed in profiles).
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `stopping` has resolved (it must not be polled again).
    stopped: bool,
}

impl ClientConn {
    /// Reads what the socket has (at least one byte) into the buffer, waiting until `deadline`.
    async fn read_more(&mut self, deadline: Instant) -> Result<(), Ended> {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE_BYTES {
            self.buf.reserve(READ_RESERVE_BYTES);
        }
        // Often the bytes are there already: no timer, no waiting.
        match self.stream.try_read_buf(&mut self.buf) {
            Ok(0) => return Err(Ended::Closed),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Ended::Closed),
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.stopped {
            return Err(Ended::Stopping);
        }
        let (stream, buf, timer, stopping) = (
            &self.stream,
            &mut self.buf,
            &mut self.timer,
            &mut self.stopping,
        );
        let read = std::future::poll_fn(|cx| {
            loop {
                ready!(stream.poll_read_ready(cx)).map_err(|_| Ended::Closed)?;
                match stream.try_read_buf(buf) {
                    Ok(0) => return Poll::Ready(Err(Ended::Closed)),
                    Ok(_) => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(Err(Ended::Closed)),
                }
            }
        });
        tokio::select! {
            biased;
            r = read => r,
            _ = timer.as_mut() => Err(Ended::TimedOut),
            _ = stopping.as_mut() => {
                self.stopped = true;
                Err(Ended::Stopping)
            }
        }
    }

    /// Whether the connection ends after this answer: the client asked (`asked`), or the
    /// gateway is stopping.
    fn closing(&self, asked: bool, gateway: &crate::service::Gateway) -> bool {
        asked || self.stopped || gateway.shutting_down.load(Ordering::Acquire)
    }

    /// Writes `resp`; `Err` when the connection cannot carry another request (the client went
    /// away, or the body failed midway and the client sees it cut short).
    async fn respond(
        &mut self,
        resp: Response<Body>,
        head_request: bool,
        close: bool,
    ) -> Result<(), body::BoxError> {
        let (parts, mut body) = resp.into_parts();
        let framing = response_framing(parts.status, head_request, &body);
        self.out.clear();
        encode_response_head(parts.status, &parts.headers, framing, close, &mut self.out);
        drop(parts);
        if framing == Framing::NoBody {
            self.stream.write_all(&self.out).await?;
            return Ok(());
        }
        let mut sent: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                // Trailers are not sent (nothing here asks for them).
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let Framing::Length(n) = framing
                && sent > n
            {
                return Err(format!("the response body is longer than its {n} bytes").into());
            }
            if framing == Framing::Chunked {
                let _ = write!(self.out, "{:x}\r\n", data.len());
            }
            if self.out.len() + data.len() <= MAX_GATHERED_BODY_BYTES {
                self.out.extend_from_slice(&data);
            } else {
                self.stream.write_all(&self.out).await?;
                self.out.clear();
                self.stream.write_all(&data).await?;
            }
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            // What is gathered goes out before waiting on a streaming body's next frame.
            if !body.is_end_stream() && !self.out.is_empty() {
                self.stream.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        match framing {
            Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(n) if sent != n => {
                return Err(
                    format!("the response body ended after {sent} of its {n} bytes").into(),
                );
            }
            _ => {}
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
        }
        Ok(())
    }

    /// Answers a request this loop refused and ends the connection.
    async fn refuse(mut self, e: RequestError) {
        tracing::debug!(client = %self.client, error = %e, "refused an HTTP/1.1 request");
        let _ = self.respond(e.answer(), false, true).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Serves one client connection until it closes, times out, or the gateway stops.
pub(crate) async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    worker: Arc<Worker>,
    stop: watch::Receiver<bool>,
    hyper_server: Arc<auto::Builder<TokioExecutor>>,
) {
    let mut conn = ClientConn {
        stream,
        client,
        client_ip: crate::proxy::client_ip_text(client),
        buf: BytesMut::with_capacity(READ_RESERVE_BYTES),
        out: Vec::new(),
        fields: Vec::new(),
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        upstream_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        stopping: Box::pin(stopping(stop)),
        stopped: false,
    };
    let head_timeout = Duration::from_millis(HEADER_READ_TIMEOUT_MS);
    let mut first_request = true;
    loop {
        // A complete head, or the end of the connection.
        let mut deadline = None;
        let parsed = loop {
            // The h2c preface counts only as a connection's first bytes (RFC 9113 §3.4); while
            // they are a part of it, wait for more.
            let preface = first_request && H2_PREFACE_START.starts_with(&conn.buf[..]);
            if first_request && conn.buf.starts_with(H2_PREFACE_START) {
                return hand_to_hyper(conn, worker, hyper_server, "h2c").await;
            }
            if !preface {
                match parse_request(&conn.buf, &mut conn.fields) {
                    Ok(Some(p)) => break p,
                    Ok(None) => {}
                    Err(e) => return conn.refuse(e).await,
                }
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            if let Err(ended) = conn.read_more(d).await {
                if matches!(ended, Ended::TimedOut) && !conn.buf.is_empty() {
                    tracing::debug!(%client, "no complete request head in time");
                }
                return;
            }
        };
        first_request = false;
        let head_bytes = &conn.buf[..parsed.len];
        let fields = || {
            conn.fields
                .iter()
                .map(|(n, v)| (&head_bytes[n.range()], &head_bytes[v.range()]))
        };
        let (body_bytes, close) = match plan(
            &head_bytes[parsed.method.range()],
            parsed.minor_version,
            fields,
        ) {
            Ok(Plan::Here { body_bytes, close }) => (body_bytes, close),
            Ok(Plan::Hyper(why)) => return hand_to_hyper(conn, worker, hyper_server, why).await,
            Err(e) => return conn.refuse(e).await,
        };
        while conn.buf.len() < parsed.len + body_bytes {
            let d = *deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            if conn.read_more(d).await.is_err() {
                return;
            }
        }
        match short_path(&mut conn, &worker, &parsed, body_bytes, close).await {
            None => {}
            // Whatever the answer said: the shutdown flag only ever goes from false to true.
            Some(Short::Answered) if !conn.closing(close, &worker.gateway) => continue,
            Some(Short::Answered) => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            Some(Short::Broken) => return,
        }
        let head = conn.buf.split_to(parsed.len).freeze();
        let body = conn.buf.split_to(body_bytes).freeze();
        let req = match to_request(&head, &parsed, &conn.fields, body) {
            Ok(r) => r,
            Err(e) => return conn.refuse(e).await,
        };
        let head_request = req.method() == Method::HEAD;
        let resp = worker
            .gateway
            .handle(req, client, Via::Client, &worker.upstreams)
            .await;
        drop(head);
        let close = conn.closing(close, &worker.gateway);
        if let Err(e) = conn.respond(resp, head_request, close).await {
            tracing::debug!(%client, error = %e, "an answer could not be sent whole");
            return;
        }
        if close {
            let _ = conn.stream.shutdown().await;
            return;
        }
        if conn.buf.is_empty() && conn.buf.capacity() > MAX_IDLE_BUFFER_BYTES {
            conn.buf = BytesMut::with_capacity(READ_RESERVE_BYTES);
        }
        if conn.out.capacity() > MAX_IDLE_BUFFER_BYTES {
            conn.out = Vec::new();
        }
    }
}

/// The proxy's short path: a request for a local HTTP/1.1 upstream, every check passed (see
/// `Gateway::short_path`), goes upstream straight from the bytes read, and a small answer
/// comes back into the client's write buffer: no request or response objects, no header maps.
/// What the short path did with a request it took.
enum Short {
    /// Answered; the connection may carry another request.
    Answered,
    /// The answer could not be sent whole: the connection ends.
    Broken,
}

/// `None` when the request is not for it (nothing is consumed; the full path serves it).
async fn short_path(
    conn: &mut ClientConn,
    worker: &Worker,
    parsed: &ParsedHead,
    body_bytes: usize,
    close: bool,
) -> Option<Short> {
    let head = &conn.buf[..parsed.len];
    let target = &head[parsed.target.range()];
    // Only a plain origin-form target: anything the URI parser might read differently (a
    // fragment, characters it refuses) takes the full path.
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(b);
    if target.first() != Some(&b'/') || !target.iter().all(plain) {
        return None;
    }
    let path_end = target
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(target.len());
    let path = std::str::from_utf8(&target[..path_end]).ok()?;
    let method = Method::from_bytes(&head[parsed.method.range()]).ok()?;
    let fields = || {
        conn.fields
            .iter()
            .map(|(n, v)| (&head[n.range()], &head[v.range()]))
    };
    let field = |name: &[u8]| {
        fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let gateway = &worker.gateway;
    let short = gateway.short_path(
        &method,
        path,
        field(b"authorization"),
        field(crate::service::TICKET_HEADER.as_bytes()),
    )?;
    let req = ShortRequest {
        method: &method,
        target,
        fields,
        body: &conn.buf[parsed.len..parsed.len + body_bytes],
        client: conn.client,
        client_ip: &conn.client_ip,
        close,
        shutting_down: &gateway.shutting_down,
    };
    conn.out.clear();
    let answer = worker
        .upstreams
        .send_short(
            short.target,
            short.claims.uid_header.as_ref(),
            req,
            &mut conn.out,
            conn.upstream_timer.as_mut(),
        )
        .await;
    let written = match answer {
        ShortAnswer::Written(status) => {
            gateway.count_upstream_answer(status);
            conn.stream.write_all(&conn.out).await.map_err(|_| ())
        }
        ShortAnswer::Respond(resp) => {
            gateway.count_upstream_answer(resp.status());
            let head_request = method == Method::HEAD;
            let close = conn.closing(close, gateway);
            conn.respond(resp, head_request, close).await.map_err(|e| {
                tracing::debug!(client = %conn.client, error = %e, "an answer could not be sent whole");
            })
        }
    };
    drop(short.permit);
    conn.buf.advance(parsed.len + body_bytes);
    Some(match written {
        Ok(()) => Short::Answered,
        Err(()) => Short::Broken,
    })
}

/// Resolves once the gateway is stopping (or its stop signal is gone).
async fn stopping(mut stop: watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await (it is not Send).
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// hyper serves the rest of the connection, starting with the bytes already read.
async fn hand_to_hyper(
    conn: ClientConn,
    worker: Arc<Worker>,
    hyper_server: Arc<auto::Builder<TokioExecutor>>,
    why: &'static str,
) {
    let ClientConn {
        stream,
        client,
        buf,
        stopping,
        stopped,
        ..
    } = conn;
    tracing::trace!(%client, why, "hyper serves the rest of this connection");
    let io = TokioIo::new(Rewind {
        prefix: buf.freeze(),
        stream,
    });
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let w = worker.clone();
        async move {
            let req = req.map(body::incoming);
            Ok::<_, Infallible>(
                w.gateway
                    .handle(req, client, Via::Client, &w.upstreams)
                    .await,
            )
        }
    });
    let connection = hyper_server.serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        r = connection.as_mut() => r,
        _ = async move { if !stopped { stopping.await } } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%client, error = %e, "HTTP connection ended with an error");
    }
}

/// A connection with bytes already read from it put back in front.
struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed head and its fields as (name, value) copies.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn parse(text: &[u8]) -> Result<Option<(ParsedHead, Fields)>, RequestError> {
        let mut fields = Vec::new();
        Ok(parse_request(text, &mut fields)?.map(|p| {
            let f = fields
                .iter()
                .map(|(n, v)| (text[n.range()].to_vec(), text[v.range()].to_vec()))
                .collect();
            (p, f)
        }))
    }

    fn plan_of(text: &[u8]) -> Result<Plan, RequestError> {
        let mut fields = Vec::new();
        let p = parse_request(text, &mut fields)?.expect("a complete head");
        plan(&text[p.method.range()], p.minor_version, || {
            fields
                .iter()
                .map(|(n, v)| (&text[n.range()], &text[v.range()]))
        })
    }

    #[test]
    fn a_head_parses_only_when_complete_and_leaves_the_body() {
        let text = b"POST /bench/x?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi";
        for cut in 0..text.len() - 2 {
            assert_eq!(parse(&text[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (head, fields) = parse(text).unwrap().unwrap();
        assert_eq!(head.len, text.len() - 2);
        assert_eq!(&text[head.method.range()], b"POST");
        assert_eq!(&text[head.target.range()], b"/bench/x?a=1");
        assert_eq!(head.minor_version, 1);
        assert_eq!(
            fields,
            vec![
                (b"Host".to_vec(), b"gw".to_vec()),
                (b"Content-Length".to_vec(), b"2".to_vec())
            ]
        );
    }

    #[test]
    fn bad_and_oversized_heads_are_refused() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
            Err(RequestError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_REQUEST_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Err(RequestError::HeadTooLarge));
        let mut long = b"GET / HTTP/1.1\r\nx-long: ".to_vec();
        long.resize(MAX_REQUEST_HEAD_BYTES + 1, b'a');
        assert_eq!(parse(&long), Err(RequestError::HeadTooLarge));
        assert_eq!(
            RequestError::HeadTooLarge.answer().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn only_plain_http_1_1_with_a_small_body_is_served_here() {
        assert_eq!(
            plan_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Plan::Here {
                body_bytes: 0,
                close: false
            })
        );
        assert_eq!(
            plan_of(
                b"PUT / HTTP/1.1\r\nContent-Length: 5, 5\r\nConnection: keep-alive, Close\r\n\r\n"
            ),
            Ok(Plan::Here {
                body_bytes: 5,
                close: true
            })
        );
        let large = format!(
            "PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            SMALL_BODY_BYTES + 1
        );
        for text in [
            large.as_bytes(),
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(
                matches!(plan_of(text), Ok(Plan::Hyper(_))),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        for text in [
            &b"PUT / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"PUT / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        ] {
            assert!(matches!(plan_of(text), Err(RequestError::BadLength(_))));
        }
    }

    #[test]
    fn a_request_shares_the_head_bytes() {
        let text = Bytes::from_static(
            b"DELETE /v1/users/sh-1/records/k?x=1 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        );
        let mut fields = Vec::new();
        let parsed = parse_request(&text, &mut fields).unwrap().unwrap();
        let req = to_request(&text, &parsed, &fields, Bytes::new()).unwrap();
        assert_eq!(req.method(), Method::DELETE);
        assert_eq!(req.uri().path(), "/v1/users/sh-1/records/k");
        assert_eq!(req.uri().query(), Some("x=1"));
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert!(req.body().is_end_stream());
    }

    fn head_text(
        status: StatusCode,
        headers: &[(&str, &str)],
        framing: Framing,
        close: bool,
    ) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        encode_response_head(status, &map, framing, close, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_response_head_has_this_hops_framing_and_a_date() {
        let text = head_text(
            StatusCode::OK,
            &[
                ("content-type", "text/plain"),
                ("content-length", "99"),
                ("connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            Framing::Length(2),
            false,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: Sun, 06 Nov 1994 08:49:37 \
             GMT\r\ncontent-length: 2\r\n\r\n"
        );
        let text = head_text(StatusCode::NOT_FOUND, &[], Framing::Chunked, true);
        let date = text
            .strip_prefix("HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\ndate: ")
            .and_then(|rest| rest.strip_suffix("\r\nconnection: close\r\n\r\n"))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(date.len(), DATE_BYTES, "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
        // A HEAD answer keeps the handler's Content-Length and gets no framing of its own.
        let text = head_text(
            StatusCode::OK,
            &[("content-length", "10"), ("date", "x")],
            Framing::NoBody,
            false,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ndate: x\r\n\r\n"
        );
    }

    #[test]
    fn bodiless_answers_get_no_framing() {
        let full = body::full("abc");
        assert_eq!(
            response_framing(StatusCode::OK, false, &full),
            Framing::Length(3)
        );
        assert_eq!(
            response_framing(StatusCode::OK, true, &full),
            Framing::NoBody
        );
        for s in [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::CONTINUE,
        ] {
            assert_eq!(response_framing(s, false, &full), Framing::NoBody);
        }
        let streaming = Body::boxed(http_body_util::StreamBody::new(futures::stream::empty::<
            Result<http_body::Frame<Bytes>, std::io::Error>,
        >()));
        assert_eq!(
            response_framing(StatusCode::OK, false, &streaming),
            Framing::Chunked
        );
    }
}
