//! A client's view of one queue node: a lazily (re)connected QUIC connection plus typed calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_config::{Deployment, QueueGroup};
use homeport_wire::{self as wire, Identity, Role, pb};

/// After a failed connect, calls fail fast for this long instead of each waiting out a connect
/// timeout against a node that is down.
const RECONNECT_BACKOFF_MS: u64 = 250;
/// Upper bound on establishing a QUIC connection (handshake included) on the inter-campus network.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error, Clone)]
pub enum ClientError {
    #[error("queue node {node} ({addr}) is unreachable: {reason}")]
    Unreachable {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("queue node {node} did not answer within {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u64 },
    #[error("queue node {node} refused the request ({code:?}): {message}")]
    Refused {
        node: String,
        code: pb::ErrorCode,
        message: String,
    },
    #[error("queue node {node} answered {got} to a {expected} request; versions out of step?")]
    UnexpectedResponse {
        node: String,
        expected: &'static str,
        got: &'static str,
    },
}

/// A node's log followed by [`NodeClient::subscribe`]; dropping it ends the subscription.
pub struct Subscription {
    conn: quinn::Connection,
    stream: wire::ResponseStream,
}

struct ConnState {
    conn: Option<quinn::Connection>,
    failed_at: Option<Instant>,
    last_error: String,
}

/// One queue node as seen by a producer, consumer or operator.
pub struct NodeClient {
    pub id: String,
    pub addr: SocketAddr,
    server: Identity,
    endpoint: quinn::Endpoint,
    state: tokio::sync::Mutex<ConnState>,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish()
    }
}

impl NodeClient {
    pub fn new(endpoint: quinn::Endpoint, region: &str, id: &str, addr: SocketAddr) -> Self {
        let server = Identity {
            name: id.to_owned(),
            role: Role::QueueNode,
            region: region.to_owned(),
        };
        Self::with_identity(endpoint, server, addr)
    }

    /// A client of any homeport server (e.g. a region process), which must present `server`'s
    /// certificate.
    pub fn with_identity(endpoint: quinn::Endpoint, server: Identity, addr: SocketAddr) -> Self {
        Self {
            id: server.name.clone(),
            addr,
            server,
            endpoint,
            state: tokio::sync::Mutex::new(ConnState {
                conn: None,
                failed_at: None,
                last_error: String::new(),
            }),
            max_frame_bytes: wire::MAX_FRAME_BYTES,
        }
    }

    /// Clients for the 3 nodes of a group, in config order (the order the cores index nodes by).
    pub fn for_group(
        endpoint: &quinn::Endpoint,
        region: &str,
        group: &QueueGroup,
    ) -> [Arc<NodeClient>; 3] {
        debug_assert_eq!(group.nodes.len(), 3, "config validation guarantees 3 nodes");
        std::array::from_fn(|i| {
            let n = &group.nodes[i];
            Arc::new(NodeClient::new(endpoint.clone(), region, &n.id, n.addr))
        })
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            node: self.id.clone(),
            addr: self.addr,
            reason,
        }
    }

    async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            st.conn = None;
        }
        if let Some(t) = st.failed_at
            && t.elapsed() < Duration::from_millis(RECONNECT_BACKOFF_MS)
        {
            return Err(self.unreachable(format!("{} (retrying shortly)", st.last_error)));
        }
        match wire::connect(&self.endpoint, self.addr, &self.server, CONNECT_TIMEOUT_MS).await {
            Ok(c) => {
                st.conn = Some(c.clone());
                st.failed_at = None;
                Ok(c)
            }
            Err(e) => {
                st.failed_at = Some(Instant::now());
                st.last_error = e.to_string();
                Err(self.unreachable(e.to_string()))
            }
        }
    }

    /// One request, one response. A broken connection is dropped so the next call reconnects.
    pub async fn call(
        &self,
        body: pb::request::Body,
        timeout_ms: u64,
    ) -> Result<pb::Response, ClientError> {
        let conn = self.connection().await?;
        let req = pb::Request {
            protocol_version: wire::PROTOCOL_VERSION,
            body: Some(body),
        };
        match wire::call(&conn, &req, timeout_ms, self.max_frame_bytes).await {
            Ok(resp) => match resp.body {
                Some(pb::response::Body::Error(e)) => Err(ClientError::Refused {
                    node: self.id.clone(),
                    code: e.code(),
                    message: e.message,
                }),
                _ => Ok(resp),
            },
            Err(e) => Err(self.failed(&conn, e, timeout_ms).await),
        }
    }

    /// A request on `conn` got no answer. Drop the connection on a timeout too: a peer that was
    /// killed and restarted leaves a connection that only times out, and the next call should
    /// dial anew.
    async fn failed(
        &self,
        conn: &quinn::Connection,
        e: wire::WireError,
        timeout_ms: u64,
    ) -> ClientError {
        let mut st = self.state.lock().await;
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            st.conn = None;
        }
        match e {
            wire::WireError::Timeout { .. } => ClientError::Timeout {
                node: self.id.clone(),
                timeout_ms,
            },
            e => self.unreachable(e.to_string()),
        }
    }

    /// Follows the node's log from `req.from_offset` (see `SubscribeRequest` in queue.proto):
    /// read answers keep coming without a request each.
    pub async fn subscribe(
        &self,
        req: pb::SubscribeRequest,
        timeout_ms: u64,
    ) -> Result<Subscription, ClientError> {
        let conn = self.connection().await?;
        let request = wire::request(pb::request::Body::Subscribe(req));
        match wire::open_stream(&conn, &request, timeout_ms, self.max_frame_bytes).await {
            Ok(stream) => Ok(Subscription { conn, stream }),
            Err(e) => Err(self.failed(&conn, e, timeout_ms).await),
        }
    }

    /// The next answer of a subscription, waiting at most `timeout_ms` (set it above the
    /// subscription's `idle_ms`: the node sends a frame at least that often).
    pub async fn next_read(
        &self,
        sub: &mut Subscription,
        timeout_ms: u64,
    ) -> Result<pb::ReadResponse, ClientError> {
        let frame = match sub.stream.next(timeout_ms).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return Err(self.unreachable("the node ended the subscription".to_string()));
            }
            Err(e) => return Err(self.failed(&sub.conn, e, timeout_ms).await),
        };
        match frame.body {
            Some(pb::response::Body::Read(r)) => Ok(r),
            Some(pb::response::Body::Error(e)) => Err(ClientError::Refused {
                node: self.id.clone(),
                code: e.code(),
                message: e.message,
            }),
            other => Err(self.unexpected("subscribe", &other)),
        }
    }

    pub async fn append(
        &self,
        entries: &[Bytes],
        timeout_ms: u64,
    ) -> Result<pb::AppendResponse, ClientError> {
        let body = pb::request::Body::Append(pb::AppendRequest {
            entries: entries.to_vec(),
        });
        match self.call(body, timeout_ms).await?.body {
            Some(pb::response::Body::Append(a)) => Ok(a),
            other => Err(self.unexpected("append", &other)),
        }
    }

    pub async fn read(
        &self,
        req: pb::ReadRequest,
        timeout_ms: u64,
    ) -> Result<pb::ReadResponse, ClientError> {
        match self
            .call(pb::request::Body::Read(req), timeout_ms)
            .await?
            .body
        {
            Some(pb::response::Body::Read(r)) => Ok(r),
            other => Err(self.unexpected("read", &other)),
        }
    }

    pub async fn status(&self, timeout_ms: u64) -> Result<pb::StatusResponse, ClientError> {
        let body = pb::request::Body::Status(pb::StatusRequest {});
        match self.call(body, timeout_ms).await?.body {
            Some(pb::response::Body::Status(s)) => Ok(s),
            other => Err(self.unexpected("status", &other)),
        }
    }

    pub async fn trim(
        &self,
        below_offset: u64,
        timeout_ms: u64,
    ) -> Result<pb::TrimResponse, ClientError> {
        let body = pb::request::Body::Trim(pb::TrimRequest { below_offset });
        match self.call(body, timeout_ms).await?.body {
            Some(pb::response::Body::Trim(t)) => Ok(t),
            other => Err(self.unexpected("trim", &other)),
        }
    }

    /// Tells the node that `consumer_region` has durably applied everything below `next_offset`
    /// of the node's log under `incarnation`; the node deletes segments every consuming region has
    /// passed. Answers the node's first retained offset (unchanged when the incarnation is not the
    /// node's current one, or the report is lower than an earlier one).
    pub async fn report_checkpoint(
        &self,
        consumer_region: &str,
        incarnation: [u8; 16],
        next_offset: u64,
        timeout_ms: u64,
    ) -> Result<pb::CheckpointReportResponse, ClientError> {
        let body = pb::request::Body::CheckpointReport(pb::CheckpointReport {
            consumer_region: consumer_region.to_owned(),
            incarnation: Bytes::copy_from_slice(&incarnation),
            next_offset,
        });
        match self.call(body, timeout_ms).await?.body {
            Some(pb::response::Body::CheckpointReport(c)) => Ok(c),
            other => Err(self.unexpected("checkpoint_report", &other)),
        }
    }

    fn unexpected(&self, expected: &'static str, got: &Option<pb::response::Body>) -> ClientError {
        let got = match got {
            None => "an empty response",
            Some(pb::response::Body::Append(_)) => "append",
            Some(pb::response::Body::Read(_)) => "read",
            Some(pb::response::Body::Status(_)) => "status",
            Some(pb::response::Body::Trim(_)) => "trim",
            Some(pb::response::Body::Error(_)) => "error",
            Some(pb::response::Body::RegionStatus(_)) => "region_status",
            Some(pb::response::Body::CheckpointReport(_)) => "checkpoint_report",
            Some(pb::response::Body::GatewayForward(_)) => "gateway_forward",
            Some(pb::response::Body::RegistryAcceptor(_)) => "registry_acceptor",
            Some(pb::response::Body::RegistryOperation(_)) => "registry_operation",
        };
        ClientError::UnexpectedResponse {
            node: self.id.clone(),
            expected,
            got,
        }
    }
}

/// The TLS identity files a process of `region` uses as a queue client, and an endpoint with them.
pub fn client_endpoint(
    deployment: &Deployment,
    identity_name: &str,
) -> Result<quinn::Endpoint, wire::WireError> {
    let tls = wire::TlsFiles::for_identity(
        &deployment.tls.ca_cert,
        &deployment.tls.cert_dir,
        identity_name,
    );
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    wire::client_endpoint(bind, &tls, &wire::EndpointLimits::default())
}
