//! The one body type the gateway passes around (boxed, streaming), and JSON answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Streaming request and response bodies, whatever produced them.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Why [`collect_limited`] gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    #[error("the body is larger than allowed")]
    TooLarge,
    #[error("{0}")]
    Read(String),
}

/// Reads a whole body, refusing more than `limit` bytes as soon as they arrive.
pub(crate) async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, CollectError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(CollectError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A body hyper received (from a client or an upstream), streaming.
pub(crate) fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// A body that fails at once with `error` (the upstream broke off mid-body): the client sees
/// the connection end early, as with a streamed body.
pub(crate) fn failed(error: impl Into<BoxError>) -> Body {
    let error: BoxError = error.into();
    let frames = futures::stream::once(async move { Err::<Frame<Bytes>, BoxError>(error) });
    http_body_util::StreamBody::new(frames).boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// A gateway's own answer: `{"error": code, "message": ...}` plus any extra fields. `code` is a
/// stable name clients and tests may match on; `message` is for people.
pub(crate) fn problem(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response<Body> {
    problem_with(status, code, message, serde_json::Map::new())
}

pub(crate) fn problem_with(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    mut extra: serde_json::Map<String, serde_json::Value>,
) -> Response<Body> {
    extra.insert("error".into(), code.into());
    extra.insert("message".into(), message.into().into());
    json(status, &serde_json::Value::Object(extra))
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Holds `guard` until the body is finished or dropped, so a slot (admission permit) stays taken
/// for as long as a streaming response is still being sent.
pub(crate) struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Sync + Unpin + 'static> Guarded<G> {
    pub fn wrap(inner: Body, guard: G) -> Body {
        Guarded {
            inner,
            _guard: guard,
        }
        .boxed()
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
