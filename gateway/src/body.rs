//! The one body type the gateway passes around (streaming), and JSON answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::admission::Permit;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streaming request and response bodies, whatever produced them. The two kinds every proxied
/// request has (a client's body as hyper received it, and an answer held whole) are kept
/// without a box: three allocations per request fewer than boxing each layer.
pub(crate) struct Body {
    kind: Kind,
    /// Held until the body is finished or dropped (see [`Body::guarded`]).
    permit: Option<Permit>,
}

enum Kind {
    /// `None` once sent.
    Full(Option<Bytes>),
    Incoming(hyper::body::Incoming),
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
}

impl Body {
    /// Any other body, boxed.
    pub fn boxed<B>(body: B) -> Body
    where
        B: HttpBody<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Body {
            kind: Kind::Boxed(body.map_err(Into::into).boxed()),
            permit: None,
        }
    }

    /// Keeps an admission slot taken for as long as a streaming response is still being sent.
    pub fn guarded(mut self, permit: Permit) -> Body {
        self.permit = Some(permit);
        self
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes: Bytes = bytes.into();
    Body {
        // An empty body is over before it starts (no empty data frame).
        kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        permit: None,
    }
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
    Body {
        kind: Kind::Incoming(body),
        permit: None,
    }
}

/// A body that fails at once with `error` (the upstream broke off mid-body): the client sees
/// the connection end early, as with a streamed body.
pub(crate) fn failed(error: impl Into<BoxError>) -> Body {
    let error: BoxError = error.into();
    let frames = futures::stream::once(async move { Err::<Frame<Bytes>, BoxError>(error) });
    Body::boxed(http_body_util::StreamBody::new(frames))
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
