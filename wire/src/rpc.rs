//! One request per bidirectional stream: the client writes one `Request` frame and finishes its
//! side, the server answers with one `Response` frame and finishes. Streams are cheap in QUIC, so
//! concurrent requests never wait behind each other (no head-of-line blocking, no request ids).
//!
//! A handler may instead answer with a sequence of `Response` frames ([`Reply::Stream`], read by
//! [`open_stream`]), for subscriptions where the next answer should already be travelling while
//! the client handles the previous one. QUIC's per-stream flow control is the back-pressure: a
//! client that stops reading stops the server's writes, so nothing piles up in memory.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::frame::{FRAME_PREFIX_BYTES, decode_body, decode_frame_len, encode_frame};
use crate::tls::CLOSE_WRONG_IDENTITY;
use crate::{Identity, PROTOCOL_VERSION, WireError, pb, peer_identity};

/// Oldest protocol version a server of this build still answers.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// First receive-buffer reservation for a frame that arrives in pieces; the buffer then grows
/// with the bytes actually received, so memory follows data, not the announced length.
const INITIAL_FRAME_BUFFER_BYTES: usize = 64 << 10;

/// What a handler answers: one response, or a sequence of them on the same stream.
pub enum Reply {
    One(pb::Response),
    /// Frames are written in order; the stream is finished when it ends. It is polled for the
    /// next frame only once the previous one was handed to QUIC, so a client that stops reading
    /// (flow control) stops the producer too, and it is dropped as soon as the client goes away
    /// or the connection ends: no task outlives the stream.
    Stream(futures::stream::BoxStream<'static, pb::Response>),
}

impl From<pb::Response> for Reply {
    fn from(response: pb::Response) -> Self {
        Reply::One(response)
    }
}

/// The client's side of a streaming reply (see [`open_stream`]). Dropping it resets the stream,
/// which tells the server to stop.
pub struct ResponseStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame_bytes: usize,
}

impl ResponseStream {
    /// The next response frame, or `Ok(None)` when the server finished the stream. Waits at
    /// most `timeout_ms` (a server that went silent is indistinguishable from a dead one).
    pub async fn next(&mut self, timeout_ms: u64) -> Result<Option<pb::Response>, WireError> {
        let read = async {
            let mut prefix = [0u8; FRAME_PREFIX_BYTES];
            match self.recv.read(&mut prefix[..1]).await.map_err(read_error)? {
                None => return Ok(None),
                Some(0) => {
                    return Err(WireError::Stream {
                        what: "reading a frame",
                        detail: "stream returned no bytes".to_string(),
                    });
                }
                Some(_) => {}
            }
            self.recv
                .read_exact(&mut prefix[1..])
                .await
                .map_err(|e| exact_error(e, 1))?;
            let len = decode_frame_len(prefix, self.max_frame_bytes)?;
            let body = read_body(&mut self.recv, len).await?;
            decode_body::<pb::Response>(body).map(Some)
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), read).await {
            Ok(outcome) => outcome,
            Err(_) => Err(WireError::Timeout {
                what: "the next frame of a streaming reply".to_string(),
                timeout_ms,
            }),
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        let _ = self.send.reset(quinn::VarInt::from_u32(0));
        let _ = self.recv.stop(quinn::VarInt::from_u32(0));
    }
}

/// Sends `req` on a new stream whose server answers with a sequence of frames ([`Reply::Stream`]).
/// Waits at most `timeout_ms` to open the stream and send the request; read the answers with
/// [`ResponseStream::next`].
pub async fn open_stream(
    conn: &quinn::Connection,
    req: &pb::Request,
    timeout_ms: u64,
    max_frame_bytes: usize,
) -> Result<ResponseStream, WireError> {
    let frame = encode_frame(req)?;
    let open = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|source| WireError::Connection {
                what: "opening a request stream",
                source,
            })?;
        write_bytes(&mut send, frame).await?;
        send.finish().map_err(|e| WireError::Stream {
            what: "finishing a request",
            detail: e.to_string(),
        })?;
        Ok(ResponseStream {
            send,
            recv,
            max_frame_bytes,
        })
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), open).await {
        Ok(outcome) => outcome,
        Err(_) => Err(WireError::Timeout {
            what: format!("opening a stream to {}", conn.remote_address()),
            timeout_ms,
        }),
    }
}

/// A request carrying this build's protocol version.
pub fn request(body: pb::request::Body) -> pb::Request {
    pb::Request {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

/// A response reporting `code`; `message` is for humans (logs, CLI output).
pub fn error_response(code: pb::ErrorCode, message: impl Into<String>) -> pb::Response {
    pb::Response {
        body: Some(pb::response::Body::Error(pb::ErrorResponse {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// Writes `msg` as one frame. Does not finish the stream.
pub async fn write_frame<M: prost::Message>(
    send: &mut quinn::SendStream,
    msg: &M,
) -> Result<(), WireError> {
    write_bytes(send, encode_frame(msg)?).await
}

async fn write_bytes(send: &mut quinn::SendStream, frame: Bytes) -> Result<(), WireError> {
    send.write_chunk(frame).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(source) => WireError::Connection {
            what: "writing a frame",
            source,
        },
        other => WireError::Stream {
            what: "writing a frame",
            detail: other.to_string(),
        },
    })
}

/// Reads one frame and decodes it. A length over `max_frame_bytes` is refused as soon as the
/// prefix arrives, before any of the body is read or buffered.
pub async fn read_frame<M: prost::Message + Default>(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: usize,
) -> Result<M, WireError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| exact_error(e, 0))?;
    let len = decode_frame_len(prefix, max_frame_bytes)?;
    decode_body(read_body(recv, len).await?)
}

/// A failed read of the length prefix, of which `already` bytes had arrived before.
fn exact_error(e: quinn::ReadExactError, already: usize) -> WireError {
    match e {
        quinn::ReadExactError::FinishedEarly(n) if n + already == 0 => WireError::Stream {
            what: "reading a frame",
            detail: "the peer finished the stream without sending a frame".to_string(),
        },
        quinn::ReadExactError::FinishedEarly(n) => WireError::Stream {
            what: "reading a frame",
            detail: format!(
                "the stream ended after {} of the {FRAME_PREFIX_BYTES} length-prefix bytes",
                n + already
            ),
        },
        quinn::ReadExactError::ReadError(e) => read_error(e),
    }
}

async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let chunk = recv
            .read_chunk(len - buf.len(), true)
            .await
            .map_err(read_error)?
            .ok_or_else(|| WireError::Stream {
                what: "reading a frame",
                detail: format!(
                    "the stream ended after {} of the {len} bytes its prefix announced",
                    buf.len()
                ),
            })?;
        debug_assert!(chunk.bytes.len() <= len - buf.len());
        if buf.is_empty() && chunk.bytes.len() == len {
            // The common case: the whole body in one chunk, handed on without a copy.
            return Ok(chunk.bytes);
        }
        if buf.is_empty() {
            buf.reserve(len.min(INITIAL_FRAME_BUFFER_BYTES));
        }
        buf.extend_from_slice(&chunk.bytes);
    }
    Ok(buf.freeze())
}

fn read_error(e: quinn::ReadError) -> WireError {
    match e {
        quinn::ReadError::ConnectionLost(source) => WireError::Connection {
            what: "reading a frame",
            source,
        },
        other => WireError::Stream {
            what: "reading a frame",
            detail: other.to_string(),
        },
    }
}

/// Sends `req` on a new stream and waits for its response, all within `timeout_ms` (including
/// waiting for a free stream when the peer's stream limit is reached). A server error is an
/// `Ok` response with an `Error` body; `Err` means no response arrived.
pub async fn call(
    conn: &quinn::Connection,
    req: &pb::Request,
    timeout_ms: u64,
    max_frame_bytes: usize,
) -> Result<pb::Response, WireError> {
    let frame = encode_frame(req)?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let timeout = || WireError::Timeout {
        what: format!("request to {}", conn.remote_address()),
        timeout_ms,
    };
    let (mut send, mut recv) = tokio::time::timeout_at(deadline, conn.open_bi())
        .await
        .map_err(|_| timeout())?
        .map_err(|source| WireError::Connection {
            what: "opening a request stream",
            source,
        })?;
    let exchange = async {
        let written = write_bytes(&mut send, frame).await.and_then(|()| {
            send.finish().map_err(|e| WireError::Stream {
                what: "finishing a request",
                detail: e.to_string(),
            })
        });
        // Even when the write failed because the server stopped reading (it refused the
        // request, e.g. as too large), its response explaining why may be waiting.
        match read_frame::<pb::Response>(&mut recv, max_frame_bytes).await {
            Ok(response) => Ok(response),
            Err(read_err) => Err(written.err().unwrap_or(read_err)),
        }
    };
    let result = tokio::time::timeout_at(deadline, exchange).await;
    match result {
        Ok(outcome) => outcome,
        Err(_elapsed) => {
            // Tell the server to stop working on an answer nobody will read.
            let _ = send.reset(quinn::VarInt::from_u32(0));
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            Err(timeout())
        }
    }
}

/// Accepts connections; for each bidi stream reads one Request frame, calls
/// `handler(identity, request).await`, writes the Response, finishes the stream. Returns when
/// `endpoint` is closed.
///
/// Only peers whose certificate chains to the CA complete the handshake, and a connection whose
/// certificate names no identity is closed before its first stream, so unauthenticated peers never
/// reach the handler. The handler sees only requests with a supported `protocol_version` and a
/// body this build knows: others get `UNSUPPORTED_VERSION` or `BAD_REQUEST` answers here, the same
/// way on every server. Oversized or undecodable requests get `TOO_LARGE` / `BAD_REQUEST`.
///
/// A handler runs to completion even if its peer goes away, so handlers never see cancellation
/// mid-way except when `serve` itself ends or is dropped.
pub async fn serve<H, F, R>(endpoint: quinn::Endpoint, max_frame_bytes: usize, handler: H)
where
    H: Fn(Arc<Identity>, pb::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(serve_connection(incoming, max_frame_bytes, handler.clone()));
                }
                None => break,
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_panic(joined, None);
            }
        }
    }
    debug!("endpoint closed; serve returns");
}

async fn serve_connection<H, F, R>(incoming: quinn::Incoming, max_frame_bytes: usize, handler: H)
where
    H: Fn(Arc<Identity>, pb::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%remote, error = %e, "handshake failed; peer refused");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(identity) => Arc::new(identity),
        Err(e) => {
            warn!(%remote, error = %e, "peer certificate names no identity; connection closed");
            conn.close(
                CLOSE_WRONG_IDENTITY,
                b"certificate names no homeport identity",
            );
            return;
        }
    };
    debug!(%remote, peer = %identity, "connection accepted");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(
                        identity.clone(),
                        send,
                        recv,
                        max_frame_bytes,
                        handler.clone(),
                    ));
                }
                Err(e) => {
                    debug!(%remote, peer = %identity, reason = %e, "connection ended");
                    break;
                }
            },
            Some(joined) = streams.join_next(), if !streams.is_empty() => log_panic(joined, Some(&identity)),
        }
    }
    while let Some(joined) = streams.join_next().await {
        log_panic(joined, Some(&identity));
    }
}

/// Panics are bugs worth an error log; other join errors are cancellations we asked for.
fn log_panic(joined: Result<(), tokio::task::JoinError>, peer: Option<&Identity>) {
    match (joined, peer) {
        (Err(e), Some(peer)) if e.is_panic() => {
            error!(%peer, error = %e, "a request handler panicked")
        }
        (Err(e), None) if e.is_panic() => error!(error = %e, "a connection task panicked"),
        _ => {}
    }
}

async fn serve_stream<H, F, R>(
    identity: Arc<Identity>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max_frame_bytes: usize,
    handler: H,
) where
    H: Fn(Arc<Identity>, pb::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let response = match read_frame::<pb::Request>(&mut recv, max_frame_bytes).await {
        Ok(request) => match refuse(&request) {
            Some(refusal) => refusal,
            None => match handler(identity.clone(), request).await.into() {
                Reply::One(response) => response,
                Reply::Stream(frames) => {
                    drop(recv);
                    write_stream(&identity, send, frames).await;
                    return;
                }
            },
        },
        Err(e @ WireError::FrameTooLarge { .. }) => {
            // Stop the peer sending the rest of a frame we will never read.
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            error_response(pb::ErrorCode::TooLarge, e.to_string())
        }
        Err(e @ WireError::Decode { .. }) => {
            error_response(pb::ErrorCode::BadRequest, e.to_string())
        }
        Err(e) => {
            debug!(peer = %identity, error = %e, "request stream failed before a request arrived");
            return;
        }
    };
    drop(recv);
    let frame = match encode_frame(&response) {
        Ok(frame) => frame,
        Err(e) => {
            error!(peer = %identity, error = %e, "handler produced an unsendable response");
            match encode_frame(&error_response(
                pb::ErrorCode::TooLarge,
                format!("the response could not be sent: {e}"),
            )) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = write_bytes(&mut send, frame).await {
        debug!(peer = %identity, error = %e, "could not write a response");
        return;
    }
    let _ = send.finish();
}

/// Writes a streaming reply's frames as they come; finishes the QUIC stream when `frames` ends.
/// Returns (dropping `frames`) as soon as the client goes away.
async fn write_stream(
    identity: &Identity,
    mut send: quinn::SendStream,
    mut frames: futures::stream::BoxStream<'static, pb::Response>,
) {
    use futures::StreamExt;
    loop {
        let response = tokio::select! {
            next = frames.next() => match next {
                Some(response) => response,
                None => break,
            },
            // The client reset its side while the producer had nothing to send.
            _ = send.stopped() => return,
        };
        let frame = match encode_frame(&response) {
            Ok(frame) => frame,
            Err(e) => {
                error!(peer = %identity, error = %e, "handler produced an unsendable stream frame");
                return;
            }
        };
        if let Err(e) = write_bytes(&mut send, frame).await {
            debug!(peer = %identity, error = %e, "streaming reply ended by the peer");
            return;
        }
    }
    let _ = send.finish();
}

/// The answer `serve` gives itself, without bothering the handler, to a request this build
/// cannot handle.
fn refuse(request: &pb::Request) -> Option<pb::Response> {
    let version = request.protocol_version;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Some(error_response(
            pb::ErrorCode::UnsupportedVersion,
            format!(
                "request has protocol version {version}; this server speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
        ));
    }
    if request.body.is_none() {
        // Also what a request type added by a newer version decodes to here.
        return Some(error_response(
            pb::ErrorCode::BadRequest,
            "request has no body this server version understands (a newer request type?)",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_versions_and_empty_bodies() {
        let ok = request(pb::request::Body::Status(pb::StatusRequest {}));
        assert!(refuse(&ok).is_none());
        let code_of = |r: Option<pb::Response>| match r.and_then(|r| r.body) {
            Some(pb::response::Body::Error(e)) => e.code(),
            other => panic!("expected an error response, got {other:?}"),
        };
        for version in [0, PROTOCOL_VERSION + 1] {
            let mut req = ok.clone();
            req.protocol_version = version;
            assert_eq!(code_of(refuse(&req)), pb::ErrorCode::UnsupportedVersion);
        }
        let mut empty = ok;
        empty.body = None;
        assert_eq!(code_of(refuse(&empty)), pb::ErrorCode::BadRequest);
    }
}
