//! What the gateway (`homeport gateway`) reads from the deployment file: deployment-wide
//! `[gateway]` limits and route policies, `[tickets]` verification keys, and per region an
//! optional `[regions.gateway]` (its listeners) and `[[regions.upstreams]]` (services by path
//! prefix). Kept apart from the rest of the config so other parts can grow without touching it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Prefix of a region's gateway certificate name (`gateway-<region>`); node ids may not start
/// with it, so no queue node can hold a certificate that names a gateway.
pub(crate) const GATEWAY_IDENTITY_PREFIX: &str = "gateway-";

/// The certificate name a region's gateways present on the inter-region QUIC link (every
/// gateway of a region shares it: the peer checks the region and the role, not the instance).
pub fn gateway_identity(region: &str) -> String {
    format!("{GATEWAY_IDENTITY_PREFIX}{region}")
}

/// Deployment-wide gateway limits. Every gateway of every region uses the same numbers, so a
/// request forwarded between regions meets the same bounds on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Requests a gateway works on at once (the FastReject concurrency bound).
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; past it a request is answered 503 at once.
    pub max_queued_requests: usize,
    /// A request that waited this long for a slot is answered 503 without any work done.
    pub queue_deadline_ms: u64,
    /// `Retry-After` of every 503 the gateway itself answers.
    pub retry_after_secs: u64,
    /// Connecting to an upstream (or the region process); past it the answer is 502.
    pub upstream_connect_timeout_ms: u64,
    /// From sending a request upstream until its response headers arrive; past it 504.
    pub upstream_timeout_ms: u64,
    /// A request forwarded to another region's gateway over QUIC, answer included; past it 504.
    pub forward_timeout_ms: u64,
    /// Users whose home the gateway remembers; a miss asks the home directory again.
    pub home_cache_entries: usize,
    /// Longest wait of a `critical` read for its `min_version` before the client is sent home.
    pub critical_read_max_wait_ms: u64,
    /// Largest request (and response) body carried over the inter-region link by `forward`:
    /// a forwarded message is held whole in memory on both sides.
    pub max_forward_body_bytes: usize,
    /// Idle keep-alive connections kept per upstream.
    pub upstream_max_idle_per_host: usize,
    /// Policy of a request for a user homed elsewhere, unless a route says otherwise.
    pub default_policy: RoutePolicy,
    /// Per path prefix policies; the longest matching prefix wins.
    pub routes: Vec<RouteRule>,
    /// Whether `/v1/wechat-ids/{id}` tells anyone who holds an ID (a 409 of a claim, a lookup).
    /// Off by default: an ID is a handle people search for, and its owner's uid is not public;
    /// the owner always sees that it is theirs.
    pub reveal_wechat_id_owner: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_concurrency: 512,
            max_queued_requests: 1024,
            queue_deadline_ms: 200,
            retry_after_secs: 1,
            upstream_connect_timeout_ms: 1_000,
            upstream_timeout_ms: 30_000,
            forward_timeout_ms: 10_000,
            home_cache_entries: 100_000,
            critical_read_max_wait_ms: 1_000,
            max_forward_body_bytes: 1024 * 1024,
            upstream_max_idle_per_host: 256,
            default_policy: RoutePolicy::Redirect,
            routes: Vec::new(),
            reveal_wechat_id_owner: false,
        }
    }
}

impl GatewaySettings {
    /// The policy for `path`: the longest matching route prefix, else the default.
    pub fn policy_for(&self, path: &str) -> RoutePolicy {
        self.routes
            .iter()
            .filter(|r| path.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map(|r| r.policy)
            .unwrap_or(self.default_policy)
    }
}

/// What a gateway does with a request for a user homed in another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutePolicy {
    /// `307` with `Location` at the home region's gateway; the client goes there itself.
    Redirect,
    /// Carried to the home region's gateway over the inter-region QUIC link, for clients that
    /// cannot follow redirects (bodies bounded by `max_forward_body_bytes`).
    Forward,
}

impl RoutePolicy {
    pub(crate) const ALL: [RoutePolicy; 2] = [RoutePolicy::Redirect, RoutePolicy::Forward];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RoutePolicy::Redirect => "redirect",
            RoutePolicy::Forward => "forward",
        }
    }
}

impl fmt::Display for RoutePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Starts with '/'; matched against the request path.
    pub prefix: String,
    pub policy: RoutePolicy,
}

/// How gateways check tickets. Several keys may be live at once, so a new signing key can be
/// rolled out (its public key first, then the issuer) without a moment where tickets fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSettings {
    /// A ticket valid for longer than this (expiry minus issue time) is refused.
    pub max_ttl_secs: u64,
    /// Tolerated clock difference between the issuer and a gateway.
    pub clock_skew_secs: u64,
    pub keys: Vec<TicketKey>,
}

impl Default for TicketSettings {
    fn default() -> Self {
        TicketSettings {
            max_ttl_secs: 24 * 60 * 60,
            clock_skew_secs: 60,
            keys: Vec::new(),
        }
    }
}

/// One Ed25519 verification key and the key id tickets name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub kid: String,
    pub public_key: TicketKeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketKeySource {
    /// The 32 raw bytes, from base64 in the file.
    Inline([u8; 32]),
    /// A public key file written by `homeport ticket keygen`, read when the gateway starts
    /// (like TLS files, it may be generated after the config is written).
    File(PathBuf),
}

/// A region's gateway listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionGateway {
    /// HTTP (1.1 and h2c) for clients and services.
    pub http_addr: SocketAddr,
    /// QUIC (mutual TLS): requests forwarded from other regions' gateways.
    pub quic_addr: SocketAddr,
    /// `/metrics`, `/healthz`.
    pub admin_addr: SocketAddr,
    /// Where clients reach this region's gateways (redirect `Location`s, `whereis`), without a
    /// trailing '/'; `http://<http_addr>` unless set (e.g. a load balancer in front).
    pub public_url: String,
}

/// An HTTP service behind the gateway: requests whose path starts with `prefix` go to `url` of
/// the user's home region (path and query kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub prefix: String,
    /// `http://host:port` (no path).
    pub url: String,
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 without TLS, with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub(crate) const ALL: [UpstreamProtocol; 2] = [UpstreamProtocol::Http1, UpstreamProtocol::H2c];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
