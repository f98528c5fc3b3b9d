//! A lean HTTP/1.1 client for upstreams, run inside the request's own task.
//!
//! hyper's client runs every upstream connection as a separate task fed through a channel, and
//! hyper-util's pool adds a checkout future, pool keys and a shared lock on top: per proxied
//! request two task wake-ups and as many hand-offs (measured: the client side was over a third
//! of the gateway's user-space CPU). Here the request task writes the request head itself and
//! reads the answer from the same socket: one write, one read for a small exchange. Idle
//! connections wait in a per-worker pool (the lock is never contended: one worker thread uses
//! it).
//!
//! Only requests whose body is empty or small and of known length take this path (their body is
//! read first, as nginx does, so a stale pooled connection can be retried on a fresh one);
//! larger or streaming request bodies keep hyper's full-duplex client. Response bodies stream:
//! small ones (`SMALL_BODY_BYTES`) are read whole so the client gets one write.
//!
//! The protocol parts (head encoding, response framing, chunked decoding) are pure functions and
//! a state machine, unit-tested without sockets.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};

/// Most header fields an upstream answer may have.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest upstream response head (status line and fields), in bytes.
const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size or trailer line of a chunked body, in bytes.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// A connection's read buffer grows by at least this much before a read.
const READ_RESERVE_BYTES: usize = 8 * 1024;
/// An idle pooled connection's buffers are dropped when larger than this.
const MAX_IDLE_BUFFER_BYTES: usize = 32 * 1024;
/// Read size while a large body streams.
const STREAM_READ_BYTES: usize = 64 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: no connection within {0} ms")]
    ConnectTimeout(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before a complete response head arrived")]
    Closed,
    #[error("the response is not valid HTTP/1.1: {0}")]
    Invalid(String),
}

impl H1Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect(_) | H1Error::ConnectTimeout(_))
    }
}

/// Writes a request as HTTP/1.1: the head, then the body (read whole already, or none) with its
/// Content-Length.
pub(crate) fn encode_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Option<&Bytes>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if body.is_some() && name == header::CONTENT_LENGTH {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(b) = body {
        push_content_length(out, b.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
}

/// A parsed response head; `len` is how many bytes of the buffer it took.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    /// HTTP/1.0 answers are not kept alive unless they say so.
    pub minor_version: u8,
    pub headers: HeaderMap,
}

/// One field line of a head: `name: value` and CRLF.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `content-length` field line for `n` bytes.
pub(crate) fn push_content_length(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "content-length: {n}\r\n");
}

/// Whether an answer with this status never has a body (RFC 9110 §6.4.1): 1xx, 204, 304.
pub(crate) fn bodiless(status: StatusCode) -> bool {
    let s = status.as_u16();
    (100..200).contains(&s) || s == 204 || s == 304
}

/// Where something lies in a parsed head, as byte offsets into the buffer it was parsed from
/// (heads are at most 64 KiB, so offsets fit in 32 bits). Values made from a frozen buffer by
/// offset share its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part`, a slice of `base`, lies in it.
    pub fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        debug_assert!(
            start + part.len() <= base.len(),
            "a span lies inside its buffer"
        );
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A response head parsed in place: its fields borrow the read buffer (nothing copied yet).
pub(crate) struct HeadView<'b, 'h> {
    pub status: StatusCode,
    /// HTTP/1.0 answers are not kept alive unless they say so.
    pub minor_version: u8,
    pub fields: &'h [httparse::Header<'b>],
    /// Bytes of the head, up to and including the empty line.
    pub len: usize,
}

impl HeadView<'_, '_> {
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| (f.name.as_bytes(), f.value))
    }
}

/// Parses a response head at the front of `buf`; `Ok(None)` until it is complete.
fn parse_view<'b, 'h>(
    buf: &'b [u8],
    storage: &'h mut [httparse::Header<'b>],
) -> Result<Option<HeadView<'b, 'h>>, H1Error> {
    let mut resp = httparse::Response::new(storage);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD_BYTES {
                return Err(H1Error::Invalid(format!(
                    "its head is larger than {MAX_RESPONSE_HEAD_BYTES} bytes"
                )));
            }
            return Ok(None);
        }
        Err(e) => return Err(H1Error::Invalid(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| H1Error::Invalid(format!("status {code} is not a valid status code")))?;
    Ok(Some(HeadView {
        status,
        minor_version: resp.version.unwrap_or(1),
        fields: resp.headers,
        len,
    }))
}

/// Parses a response head from the front of `buf` and removes it; `Ok(None)` until it is
/// complete. Field values share the buffer's bytes (no copy).
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    // Offsets of names and values into the buffer, on the stack (no allocation), so the values
    // can share its bytes once it is frozen.
    let mut spans = [(Span::default(), Span::default()); MAX_RESPONSE_HEADERS];
    let (status, minor_version, len, count) = {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let Some(view) = parse_view(buf, &mut storage)? else {
            return Ok(None);
        };
        for (span, f) in spans.iter_mut().zip(view.fields.iter()) {
            *span = (Span::of(buf, f.name.as_bytes()), Span::of(buf, f.value));
        }
        (view.status, view.minor_version, view.len, view.fields.len())
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, value) in spans.iter().take(count) {
        let name = HeaderName::from_bytes(&head[name.range()])
            .map_err(|_| H1Error::Invalid("a field name is not a valid token".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range()))
            .map_err(|_| H1Error::Invalid(format!("bad value of field {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        minor_version,
        headers,
    }))
}

/// A parsed [`Head`]'s fields as the raw pairs the framing rules read.
fn head_fields(head: &Head) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (which then cannot be reused).
    Close,
}

pub(crate) fn framing(method: &Method, head: &Head) -> Result<Framing, H1Error> {
    framing_of(method, head.status, || head_fields(head))
}

/// [`framing`] from raw fields (the proxy's short path reads them in place); `fields` makes a
/// fresh iterator over them each time it is called.
pub(crate) fn framing_of<'a, I>(
    method: &Method,
    status: StatusCode,
    fields: impl Fn() -> I,
) -> Result<Framing, H1Error>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    if method == Method::HEAD || bodiless(status) {
        return Ok(Framing::None);
    }
    // Chunked must be the last coding; anything else runs until close.
    let last_coding = fields()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"))
        .last();
    if let Some((_, last)) = last_coding {
        let chunked = last
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let length = content_length(
        fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, v)| v),
    )
    .map_err(|e| H1Error::Invalid(e.to_string()))?;
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Why Content-Length fields give no length (RFC 9110 §8.6).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LengthError {
    #[error("Content-Length {0:?} is not a number of bytes")]
    NotANumber(String),
    #[error("conflicting Content-Length fields")]
    Conflicting,
}

/// The length the Content-Length `values` give (requests and responses alike): a list of
/// equal numbers counts as one, differing ones are an error; `None` without any.
pub(crate) fn content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, LengthError> {
    let mut length = None;
    for v in values {
        for part in v.split(|b| *b == b',') {
            let n = digits(part.trim_ascii())
                .ok_or_else(|| LengthError::NotANumber(String::from_utf8_lossy(v).into_owned()))?;
            if length.is_some_and(|l| l != n) {
                return Err(LengthError::Conflicting);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `1*DIGIT` (RFC 9110 §8.6) as a number: no sign, no other whitespace, no overflow. A
/// lenient parse (`u64::from_str` takes "+5") is a request-smuggling risk between hops.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Whether the connection may carry another request once this response is complete.
pub(crate) fn keep_alive(head: &Head) -> bool {
    keep_alive_of(head.minor_version, head_fields(head))
}

/// [`keep_alive`] from raw fields.
pub(crate) fn keep_alive_of<'a>(
    minor_version: u8,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> bool {
    let mut close = false;
    let mut keep = false;
    for (_, v) in fields.filter(|(n, _)| n.eq_ignore_ascii_case(b"connection")) {
        for token in v.split(|b| *b == b',') {
            let t = token.trim_ascii();
            close |= t.eq_ignore_ascii_case(b"close");
            keep |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (minor_version >= 1 || keep)
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Takes a response body from the connection's buffer, frame by frame.
#[derive(Debug)]
pub(crate) struct Decoder {
    framing: Framing,
    /// `Length`: bytes still to come.
    left: u64,
    chunk: ChunkState,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Decoder {
            framing,
            left,
            chunk: ChunkState::Size,
        }
    }

    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::None => Some(0),
            Framing::Length(_) => Some(self.left),
            _ => None,
        }
    }

    /// Takes the next piece of body from `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        match self.framing {
            Framing::None => Ok(Step::Done),
            Framing::Length(_) => {
                if self.left == 0 {
                    return Ok(Step::Done);
                }
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.left -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Framing::Close => Ok(if buf.is_empty() {
                Step::NeedMore
            } else {
                Step::Data(buf.split().freeze())
            }),
            Framing::Chunked => self.chunked(buf),
        }
    }

    fn chunked(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        let bad = |m: &str| H1Error::Invalid(format!("chunked body: {m}"));
        loop {
            match self.chunk {
                ChunkState::Size => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let line = &buf[..end];
                    let digits = line.split(|b| *b == b';').next().unwrap_or(&[]);
                    let digits = digits.trim_ascii();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(bad("bad chunk size"));
                    }
                    let mut size = 0u64;
                    for d in digits {
                        let v = (*d as char)
                            .to_digit(16)
                            .ok_or_else(|| bad("bad chunk size"))?;
                        size = size * 16 + u64::from(v);
                    }
                    buf.advance(end + 2);
                    self.chunk = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.chunk = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("a chunk is longer than its size says"));
                    }
                    buf.advance(2);
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Trailer fields are hop-by-hop here: dropped.
                    let Some(end) = line_end(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        self.chunk = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Step::Done),
            }
        }
    }

    /// The connection ended: the end of a `Close` body, an error for any other.
    pub fn eof(&self) -> Result<(), H1Error> {
        match self.framing {
            Framing::Close | Framing::None => Ok(()),
            Framing::Length(_) if self.left == 0 => Ok(()),
            _ => Err(H1Error::Invalid(
                "the upstream closed the connection before the body's end".into(),
            )),
        }
    }
}

/// Where the CRLF of the first line of `buf` starts, if a whole line is there.
fn line_end(buf: &[u8]) -> Result<Option<usize>, H1Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() > MAX_CHUNK_LINE_BYTES => Err(H1Error::Invalid(format!(
            "chunked body: a line is longer than {MAX_CHUNK_LINE_BYTES} bytes"
        ))),
        None => Ok(None),
    }
}

/// An upstream connection and what has been read from it but not used yet.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Request heads are encoded here, reused from request to request.
    out: Vec<u8>,
}

impl Conn {
    /// Reads what the socket has (at least one byte); `Ok(0)` when the upstream closed.
    fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        reserve: usize,
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE_BYTES {
            self.buf.reserve(reserve);
        }
        loop {
            match self.stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_read_ready(cx))?;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, READ_RESERVE_BYTES)).await
    }

    /// Whether the upstream closed (or wrote something unasked) while the connection was idle.
    /// One non-blocking read.
    fn idle_broken(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

struct Idle {
    since: Instant,
    conn: Conn,
}

struct Upstream {
    authority: Authority,
    idle: VecDeque<Idle>,
}

struct PoolInner {
    upstreams: Mutex<Vec<Upstream>>,
    max_idle_per_upstream: usize,
    idle_timeout: Duration,
    connect_timeout_ms: u64,
}

/// Idle keep-alive connections per upstream, newest last. Bounded by `max_idle_per_upstream`;
/// a connection idle longer than `idle_timeout` is closed instead of used.
#[derive(Clone)]
pub(crate) struct Pool(Arc<PoolInner>);

impl Pool {
    pub fn new(
        max_idle_per_upstream: usize,
        idle_timeout: Duration,
        connect_timeout_ms: u64,
    ) -> Self {
        Pool(Arc::new(PoolInner {
            upstreams: Mutex::new(Vec::new()),
            max_idle_per_upstream,
            idle_timeout,
            connect_timeout_ms,
        }))
    }

    fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let mut ups = self.0.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let up = ups.iter_mut().find(|u| u.authority == *authority)?;
        let idle = up.idle.pop_back()?;
        if idle.since.elapsed() >= self.0.idle_timeout {
            // The newest is too old, so are all the others.
            up.idle.clear();
            return None;
        }
        Some(idle.conn)
    }

    fn checkin(&self, authority: &Authority, mut conn: Conn) {
        if !conn.buf.is_empty() || self.0.max_idle_per_upstream == 0 {
            return;
        }
        // An idle connection keeps small buffers only (a large body may have grown them).
        if conn.buf.capacity() > MAX_IDLE_BUFFER_BYTES {
            conn.buf = BytesMut::with_capacity(READ_RESERVE_BYTES);
        }
        if conn.out.capacity() > MAX_IDLE_BUFFER_BYTES {
            conn.out = Vec::new();
        }
        let now = Instant::now();
        let mut ups = self.0.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let i = match ups.iter().position(|u| u.authority == *authority) {
            Some(i) => i,
            None => {
                ups.push(Upstream {
                    authority: authority.clone(),
                    idle: VecDeque::new(),
                });
                ups.len() - 1
            }
        };
        let idle = &mut ups[i].idle;
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= self.0.idle_timeout)
            || idle.len() >= self.0.max_idle_per_upstream
        {
            idle.pop_front();
        }
        idle.push_back(Idle { since: now, conn });
    }

    /// Closes idle connections that expired or that their upstream closed meanwhile (idle
    /// connections are not watched between requests, so without this a quiet upstream's closed
    /// connections would linger until the next request to it). One non-blocking read each.
    pub fn reap(&self) {
        let now = Instant::now();
        let mut ups = self.0.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        for up in ups.iter_mut() {
            up.idle.retain(|c| {
                now.duration_since(c.since) < self.0.idle_timeout && !c.conn.idle_broken()
            });
        }
        ups.retain(|u| !u.idle.is_empty());
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, H1Error> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let ms = self.0.connect_timeout_ms;
        let stream =
            tokio::time::timeout(Duration::from_millis(ms), TcpStream::connect((host, port)))
                .await
                .map_err(|_| H1Error::ConnectTimeout(ms))?
                .map_err(H1Error::Connect)?;
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_RESERVE_BYTES),
            out: Vec::new(),
        })
    }

    /// Sends one request (head and body in one write, made by `encode`) and waits for the
    /// first bytes of the answer. A pooled connection the upstream closed meanwhile is retried
    /// once on a new one: for idempotent methods when no answer byte came back, for others only
    /// when a check just before sending found it closed.
    async fn request(
        &self,
        authority: &Authority,
        method: &Method,
        encode: impl Fn(&mut Vec<u8>),
    ) -> Result<Conn, H1Error> {
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        // After a pooled connection turned out closed, the retry takes a new one.
        let mut fresh = false;
        loop {
            let pooled = if fresh {
                None
            } else {
                // One non-blocking read: an idle connection the upstream closed, or one that
                // got bytes nobody asked for (a late or overlong answer), is never used: those
                // bytes would be read as the next request's answer, maybe another user's.
                match self.checkout(authority) {
                    Some(c) if c.idle_broken() => {
                        drop(c);
                        continue;
                    }
                    other => other,
                }
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                // Boxed: a connect future is large, and most requests reuse a connection.
                None => Box::pin(self.connect(authority)).await?,
            };
            conn.out.clear();
            encode(&mut conn.out);
            debug_assert!(
                conn.buf.is_empty(),
                "a pooled connection has nothing unread"
            );
            let first = match conn.stream.write_all(&conn.out).await {
                Ok(()) => conn.read_more().await,
                Err(e) => Err(e),
            };
            match first {
                Ok(n) if n > 0 => return Ok(conn),
                Ok(_) if reused && idempotent => fresh = true,
                Ok(_) => return Err(H1Error::Closed),
                Err(_) if reused && idempotent => fresh = true,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one request (see [`Pool::request`]) and returns the answer; its body streams from
    /// the connection, which goes back to the pool once the body is read.
    pub async fn send(
        &self,
        authority: &Authority,
        method: &Method,
        encode: impl Fn(&mut Vec<u8>),
    ) -> Result<Response<Body>, H1Error> {
        let mut conn = self.request(authority, method, encode).await?;
        loop {
            while let Some(head) = parse_head(&mut conn.buf)? {
                if head.status.is_informational() {
                    informational(head.status)?;
                    continue;
                }
                let framing = framing(method, &head)?;
                return Ok(self.response(authority, conn, head, framing).await);
            }
            if conn.read_more().await? == 0 {
                return Err(H1Error::Closed);
            }
        }
    }

    /// The proxy's short path: sends one request (see [`Pool::request`]) and, when the answer
    /// has no body or a small one of known length, puts it into `out` for the client: the head
    /// as `write_head` makes it from the upstream's fields read in place, then the body. No
    /// header map, no response object. An answer that must stream takes [`Pool::send`]'s way.
    pub async fn send_small(
        &self,
        authority: &Authority,
        method: &Method,
        encode: impl Fn(&mut Vec<u8>),
        out: &mut Vec<u8>,
        write_head: impl Fn(&HeadView<'_, '_>, Option<u64>, &mut Vec<u8>),
    ) -> Result<Small, H1Error> {
        let mut conn = self.request(authority, method, encode).await?;
        loop {
            match small_step(&conn.buf, method, out, &write_head)? {
                SmallStep::NeedMore => {
                    if conn.read_more().await? == 0 {
                        return Err(H1Error::Closed);
                    }
                }
                SmallStep::Skip(len) => conn.buf.advance(len),
                SmallStep::Written {
                    status,
                    consumed,
                    reusable,
                } => {
                    conn.buf.advance(consumed);
                    if reusable {
                        self.checkin(authority, conn);
                    }
                    return Ok(Small::Written(status));
                }
                SmallStep::Streams => {
                    let Some(head) = parse_head(&mut conn.buf)? else {
                        return Err(H1Error::Invalid("a complete head parsed twice".into()));
                    };
                    let framing = framing(method, &head)?;
                    return Ok(Small::Streams(
                        self.response(authority, conn, head, framing).await,
                    ));
                }
            }
        }
    }

    async fn response(
        &self,
        authority: &Authority,
        mut conn: Conn,
        head: Head,
        framing: Framing,
    ) -> Response<Body> {
        let reusable = keep_alive(&head);
        let mut head = head;
        if matches!(framing, Framing::Chunked | Framing::Close) {
            // The body is re-framed for the client; a Content-Length next to chunked is void.
            head.headers.remove(header::CONTENT_LENGTH);
        }
        let mut builder = Response::builder()
            .status(head.status)
            .version(Version::HTTP_11);
        if let Some(h) = builder.headers_mut() {
            *h = head.headers;
        }
        let mut decoder = Decoder::new(framing);
        let small = decoder
            .remaining()
            .is_some_and(|n| n <= crate::proxy::SMALL_BODY_BYTES);
        let body = if small {
            // Read whole, so the client gets head and body in one write.
            match read_small(&mut conn, &mut decoder).await {
                Ok(bytes) => {
                    if reusable {
                        self.checkin(authority, conn);
                    }
                    crate::body::full(bytes)
                }
                Err(e) => crate::body::failed(e),
            }
        } else {
            Body::boxed(UpstreamBody {
                conn: Some(conn),
                decoder,
                reusable: reusable && framing != Framing::Close,
                pool: self.clone(),
                authority: authority.clone(),
            })
        };
        builder
            .body(body)
            .unwrap_or_else(|_| Response::new(crate::body::empty()))
    }
}

/// What [`Pool::send_small`] did.
pub(crate) enum Small {
    /// The answer is in `out`, whole.
    Written(StatusCode),
    /// The answer's body is large or of unknown length: it streams.
    Streams(Response<Body>),
}

/// One look at what has arrived of a short-path answer.
enum SmallStep {
    NeedMore,
    /// An informational (1xx) head of this many bytes, to pass over.
    Skip(usize),
    Written {
        status: StatusCode,
        consumed: usize,
        reusable: bool,
    },
    Streams,
}

/// Parses what `buf` holds of an answer in place (the header storage lives only here, never in
/// a future) and writes it into `out` once head and body are complete.
fn small_step(
    buf: &[u8],
    method: &Method,
    out: &mut Vec<u8>,
    write_head: &impl Fn(&HeadView<'_, '_>, Option<u64>, &mut Vec<u8>),
) -> Result<SmallStep, H1Error> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let Some(view) = parse_view(buf, &mut storage)? else {
        return Ok(SmallStep::NeedMore);
    };
    if view.status.is_informational() {
        informational(view.status)?;
        return Ok(SmallStep::Skip(view.len));
    }
    // The body to take, and the Content-Length the client is told.
    let (body, length) = match framing_of(method, view.status, || view.fields())? {
        Framing::None => {
            // A HEAD or 304 answer may announce the length of what a GET would get; an
            // invalid announcement is dropped (it frames nothing here). 204 has none.
            let announced = (view.status != StatusCode::NO_CONTENT)
                .then(|| {
                    content_length(
                        view.fields()
                            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
                            .map(|(_, v)| v),
                    )
                    .ok()
                    .flatten()
                })
                .flatten();
            (0, announced)
        }
        Framing::Length(n) if n <= crate::proxy::SMALL_BODY_BYTES => {
            (usize::try_from(n).unwrap_or(usize::MAX), Some(n))
        }
        _ => return Ok(SmallStep::Streams),
    };
    let consumed = view.len + body;
    if buf.len() < consumed {
        return Ok(SmallStep::NeedMore);
    }
    write_head(&view, length, out);
    out.extend_from_slice(&buf[view.len..consumed]);
    Ok(SmallStep::Written {
        status: view.status,
        consumed,
        reusable: keep_alive_of(view.minor_version, view.fields()),
    })
}

/// A 1xx answer is passed over, except 101: nothing here asked for an upgrade.
fn informational(status: StatusCode) -> Result<(), H1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Invalid(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    Ok(())
}

async fn read_small(conn: &mut Conn, decoder: &mut Decoder) -> Result<Bytes, H1Error> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        match decoder.step(&mut conn.buf)? {
            Step::Data(d) => match (&mut first, &mut more) {
                (None, _) => first = Some(d),
                (Some(f), None) => {
                    let mut m = BytesMut::from(&f[..]);
                    m.extend_from_slice(&d);
                    more = Some(m);
                }
                (Some(_), Some(m)) => m.extend_from_slice(&d),
            },
            Step::NeedMore => {
                if conn.read_more().await? == 0 {
                    decoder.eof()?;
                    return Err(H1Error::Closed);
                }
            }
            Step::Done => {
                return Ok(match more {
                    Some(m) => m.freeze(),
                    None => first.unwrap_or_default(),
                });
            }
        }
    }
}

/// A response body read from the upstream connection as the client takes it; the connection
/// goes back to the pool after the last byte (and is closed if the body is dropped before).
struct UpstreamBody {
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    pool: Pool,
    authority: Authority,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.step(&mut conn.buf) {
                Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(Step::Done) => {
                    if let Some(conn) = this.conn.take()
                        && this.reusable
                    {
                        this.pool.checkin(&this.authority, conn);
                    }
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => match ready!(conn.poll_read_more(cx, STREAM_READ_BYTES)) {
                    Ok(0) => {
                        this.conn = None;
                        return Poll::Ready(match this.decoder.eof() {
                            Ok(()) => None,
                            Err(e) => Some(Err(e.into())),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.remaining() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).unwrap().unwrap()
    }

    fn decode_all(
        framing: Framing,
        input: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, bool), H1Error> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut chunks = input.chunks(piece.max(1));
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::Done => return Ok((out, true)),
                Step::NeedMore => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => return Ok((out, false)),
                },
            }
        }
    }

    /// A raw upstream on 127.0.0.1 that answers each connection's requests with `answers` in
    /// turn, then closes it (a keep-alive connection the upstream drops while it is idle).
    async fn upstream(
        answers: Vec<&'static str>,
    ) -> (Authority, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answer in answers {
                        // One request: read up to the end of its head (no bodies here).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (authority, connections)
    }

    async fn get(pool: &Pool, authority: &Authority) -> Result<(StatusCode, Bytes), H1Error> {
        use http_body_util::BodyExt as _;
        let host = authority.to_string();
        let resp = pool
            .send(authority, &Method::GET, |out| {
                out.extend_from_slice(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
            })
            .await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| H1Error::Invalid(e.to_string()))?;
        Ok((status, body.to_bytes()))
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_dropped_idle_one_is_retried_on_a_new_one() {
        use std::sync::atomic::Ordering;
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let chunked =
            "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (authority, connections) = upstream(vec![ok, chunked]).await;
        let pool = Pool::new(4, Duration::from_secs(60), 1_000);
        assert_eq!(
            get(&pool, &authority).await.unwrap(),
            (StatusCode::OK, Bytes::from_static(b"ok"))
        );
        let (status, body) = get(&pool, &authority).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"abc"[..]));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the second request reused the connection"
        );
        // The upstream closed that connection after two answers; the pool still holds it.
        assert_eq!(
            get(&pool, &authority).await.unwrap(),
            (StatusCode::OK, Bytes::from_static(b"ok"))
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "retried on a new connection"
        );
    }

    #[tokio::test]
    async fn bytes_an_idle_connection_got_are_never_taken_as_the_next_answer() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let read_head = async |s: &mut TcpStream| {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            // The first connection: an answer, then (once the client is done with it) a
            // second one nobody asked for.
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = go_rx.await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL")
                .await
                .unwrap();
            let _ = sent_tx.send(());
            let late = tokio::spawn(async move {
                if read_head(&mut s).await {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nreuse")
                        .await;
                }
            });
            let (mut s2, _) = listener.accept().await.unwrap();
            read_head(&mut s2).await;
            s2.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine")
                .await
                .unwrap();
            let _ = late.await;
        });
        let pool = Pool::new(4, Duration::from_secs(60), 1_000);
        assert_eq!(
            get(&pool, &authority).await.unwrap(),
            (StatusCode::OK, Bytes::from_static(b"ok"))
        );
        go_tx.send(()).unwrap();
        // On loopback the bytes are in this side's receive queue once the write returned.
        sent_rx.await.unwrap();
        assert_eq!(
            get(&pool, &authority).await.unwrap(),
            (StatusCode::OK, Bytes::from_static(b"fine")),
            "a new connection, not the stale bytes or the connection that had them"
        );
    }

    #[tokio::test]
    async fn reaping_closes_connections_the_upstream_dropped() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (authority, _) = upstream(vec![ok]).await;
        let pool = Pool::new(4, Duration::from_secs(60), 1_000);
        get(&pool, &authority).await.unwrap();
        let idle = |pool: &Pool| -> usize {
            let ups = pool.0.upstreams.lock().unwrap();
            ups.iter().map(|u| u.idle.len()).sum()
        };
        assert_eq!(idle(&pool), 1);
        // The upstream closes after its one answer; reaping notices once the FIN has arrived.
        let deadline = Instant::now() + Duration::from_secs(10);
        while idle(&pool) > 0 {
            assert!(
                Instant::now() < deadline,
                "the closed connection was never reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            pool.reap();
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error_and_its_connection_is_not_reused() {
        use std::sync::atomic::Ordering;
        let (authority, connections) =
            upstream(vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let pool = Pool::new(4, Duration::from_secs(60), 1_000);
        assert!(get(&pool, &authority).await.is_err());
        assert!(get(&pool, &authority).await.is_err());
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        let refused: Authority = "127.0.0.1:1".parse().unwrap();
        assert!(get(&pool, &refused).await.unwrap_err().is_connect());
    }

    #[test]
    fn the_head_is_one_block_with_the_body_length() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("up:80"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        let body = Bytes::from_static(b"hello");
        encode_head(&Method::POST, "/p?q=1", &h, Some(&body), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\nhello"
        );
        let mut out = Vec::new();
        encode_head(&Method::GET, "/", &HeaderMap::new(), None, &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_parses_only_when_complete_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"x-y: a b\r\n\r\nok");
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-y"], "a b");
        assert_eq!(&buf[..], b"ok");
        assert!(parse_head(&mut BytesMut::from(&b"HTTP/1.1 abc\r\n\r\n"[..])).is_err());
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        huge.extend_from_slice(&vec![b'a'; MAX_RESPONSE_HEAD_BYTES + 1]);
        assert!(parse_head(&mut huge).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let cl = head_of("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(framing(&get, &cl).unwrap(), Framing::Length(7));
        assert_eq!(framing(&Method::HEAD, &cl).unwrap(), Framing::None);
        let te = head_of(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 7\r\n\r\n",
        );
        assert_eq!(framing(&get, &te).unwrap(), Framing::Chunked);
        let te = head_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
        assert_eq!(framing(&get, &te).unwrap(), Framing::Close);
        let none = head_of("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(framing(&get, &none).unwrap(), Framing::None);
        let none = head_of("HTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(framing(&get, &none).unwrap(), Framing::None);
        let close = head_of("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(framing(&get, &close).unwrap(), Framing::Close);
        let same = head_of("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(framing(&get, &same).unwrap(), Framing::Length(3));
        let conflict = head_of("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n");
        assert!(framing(&get, &conflict).is_err());
        let junk = head_of("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n");
        assert!(framing(&get, &junk).is_err());
    }

    #[test]
    fn a_short_answer_tells_the_client_one_valid_length() {
        // (method, upstream answer) → the Content-Length the client is told, if any.
        let told = |method: Method, text: &str| -> Result<Option<u64>, H1Error> {
            let told = std::cell::Cell::new(None);
            let write =
                |_: &HeadView<'_, '_>, length: Option<u64>, _: &mut Vec<u8>| told.set(length);
            match small_step(text.as_bytes(), &method, &mut Vec::new(), &write)? {
                SmallStep::Written { consumed, .. } => {
                    assert_eq!(consumed, text.len(), "{text}");
                    Ok(told.get())
                }
                _ => panic!("not written: {text}"),
            }
        };
        let ok = "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(told(Method::GET, ok).unwrap(), Some(2));
        let twice = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(told(Method::GET, twice).unwrap(), Some(2));
        let signed = "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok";
        assert!(
            told(Method::GET, signed).is_err(),
            "an invalid length is a failed upstream"
        );
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(told(Method::HEAD, head).unwrap(), Some(5));
        let head_signed = "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n";
        assert_eq!(told(Method::HEAD, head_signed).unwrap(), None);
        let no_content = "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(told(Method::GET, no_content).unwrap(), None);
        let not_modified = "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(told(Method::GET, not_modified).unwrap(), Some(7));
    }

    #[test]
    fn content_length_is_digits_only() {
        let cl = |values: &[&[u8]]| content_length(values.iter().copied());
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&[b"5"]), Ok(Some(5)));
        assert_eq!(cl(&[b" 005 "]), Ok(Some(5)));
        assert_eq!(cl(&[b"5, 5", b"5"]), Ok(Some(5)));
        assert_eq!(cl(&[b"5", b"6"]), Err(LengthError::Conflicting));
        for bad in [
            &b"+5"[..],
            b"-0",
            b"",
            b"5,",
            b"0x5",
            b"5_0",
            b"5\xc2\xa0",
            b"\xc2\xa05",
            b"5\x0b",
            b"99999999999999999999999",
        ] {
            assert!(
                matches!(cl(&[bad]), Err(LengthError::NotANumber(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_needs_http_1_1_or_an_explicit_keep_alive() {
        assert!(keep_alive(&head_of("HTTP/1.1 200 OK\r\n\r\n")));
        assert!(!keep_alive(&head_of(
            "HTTP/1.1 200 OK\r\nconnection: x, Close\r\n\r\n"
        )));
        assert!(!keep_alive(&head_of("HTTP/1.0 200 OK\r\n\r\n")));
        assert!(keep_alive(&head_of(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n"
        )));
    }

    #[test]
    fn bodies_decode_whatever_the_read_sizes() {
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n";
        for piece in 1..chunked.len() + 1 {
            let (out, done) = decode_all(Framing::Chunked, chunked, piece).unwrap();
            assert!(done, "piece {piece}");
            assert_eq!(out, b"hello 0123456789");
            let (out, done) = decode_all(Framing::Length(5), b"hello", piece).unwrap();
            assert!(done);
            assert_eq!(out, b"hello");
        }
        let (out, done) = decode_all(Framing::Close, b"until the end", 3).unwrap();
        assert!(!done);
        assert_eq!(out, b"until the end");
        let (out, done) = decode_all(Framing::None, b"", 1).unwrap();
        assert!(done && out.is_empty());
    }

    #[test]
    fn a_bad_chunked_body_is_refused() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(decode_all(Framing::Chunked, bad, 64).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE_BYTES + 2];
        assert!(decode_all(Framing::Chunked, &long, long.len()).is_err());
    }

    #[test]
    fn an_early_close_is_an_error_except_for_close_delimited_bodies() {
        let mut d = Decoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert_eq!(
            d.step(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"ab"))
        );
        assert!(d.eof().is_err());
        assert!(Decoder::new(Framing::Chunked).eof().is_err());
        assert!(Decoder::new(Framing::Close).eof().is_ok());
    }
}
