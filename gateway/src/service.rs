//! What the gateway does with one request: admission, ticket, home, then serve here (region
//! process or upstream), redirect home, or forward home.
//!
//! Whose request is it? The ticket names the user. For the record API the path's user decides
//! where the data lives: writes need a ticket of that user (403 otherwise) and happen at its home;
//! a user's own reads go home too (roaming redirect); reads of *another* user's records (a
//! friend's profile) are served from this region's replica by consistency: `any` as it is,
//! `critical` once it reaches `min_version` (else, after a bounded wait, home), `latest` at home.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use homeport_config::{Deployment, RoutePolicy, UpstreamProtocol};
use homeport_wire::{Identity, Role, pb};
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::admission::{Admission, Rejected};
use crate::body::{Body, CollectError, collect_limited, problem, problem_with};
use crate::forward::{self, ForwardError, Forwarder};
use crate::homes::CachedHomes;
use crate::proxy::{Protocol, Target, Upstreams};
use crate::routes::{self, Route};
use crate::ticket::{CachingVerifier, TicketError, Verified};
use crate::wechat_ids::{ClaimOutcome, ReleaseOutcome, WechatIdError, WechatIds, WxId, WxidError};

pub const HOME_REGION_HEADER: &str = "homeport-home-region";
/// Set on answers that came back from another region's gateway (`forward`).
pub const FORWARDED_FROM_HEADER: &str = "homeport-forwarded-from";
/// Alternative to `Authorization: Bearer`, for clients that reserve `Authorization`.
pub(crate) const TICKET_HEADER: &str = "homeport-ticket";

/// How a request reached this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// From a client over HTTP.
    Client,
    /// From another region's gateway (`forward`): it must be served here, never sent on.
    Forwarded { from_region: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Any,
    Critical,
    Latest,
}

/// One gateway's state, shared by every connection.
pub(crate) struct Gateway {
    pub region: String,
    pub deployment: Arc<Deployment>,
    pub verifier: CachingVerifier,
    pub homes: CachedHomes,
    pub admission: Arc<Admission>,
    /// Upstream clients for requests forwarded from other regions (served on the QUIC side);
    /// each HTTP worker thread has its own (see `lib.rs`).
    pub upstreams: Upstreams,
    pub forwarder: Forwarder,
    /// The local region process's HTTP API (internal, trusted).
    pub region_api: Target,
    /// Every upstream prefix of the deployment.
    pub prefixes: Vec<String>,
    pub shutting_down: AtomicBool,
    pub responses: ResponseCounters,
    /// This region's upstreams, parsed once (not per request).
    pub local_upstreams: Vec<LocalUpstream>,
    /// Where WeChat IDs are kept; `None`: the routes answer 503 `registry_not_configured`.
    pub wechat_ids: Option<Arc<dyn WechatIds>>,
}

/// One `[[regions.upstreams]]` of this region, ready to send to.
pub(crate) struct LocalUpstream {
    pub prefix: String,
    /// `Err(url)`: the URL has no valid authority (answered 502 `upstream_misconfigured`).
    pub authority: Result<Target, String>,
    pub protocol: Protocol,
}

impl LocalUpstream {
    pub fn of_region(deployment: &Deployment, region: &str) -> Vec<LocalUpstream> {
        let Some(r) = deployment.region(region) else {
            return Vec::new();
        };
        r.upstreams
            .iter()
            .map(|u| LocalUpstream {
                prefix: u.prefix.clone(),
                authority: u
                    .url
                    .trim_start_matches("http://")
                    .parse::<Authority>()
                    .map(Target::new)
                    .map_err(|_| u.url.clone()),
                protocol: match u.protocol {
                    UpstreamProtocol::Http1 => Protocol::Http1,
                    UpstreamProtocol::H2c => Protocol::H2c,
                },
            })
            .collect()
    }
}

fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Route names in metrics, in the order of [`ResponseCounters`].
const ROUTE_NAMES: [&str; 6] = [
    "create_user",
    "whereis",
    "record",
    "upstream",
    "wechat_id",
    "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(s: StatusCode) -> usize {
    usize::from((s.as_u16() / 100).clamp(1, 5)) - 1
}

/// `homeport_gateway_responses_total{route, class}`, registered once (a registry lookup per
/// request showed in profiles).
pub(crate) struct ResponseCounters(Vec<metrics::Counter>);

impl ResponseCounters {
    pub fn new() -> Self {
        let mut all = Vec::with_capacity(ROUTE_NAMES.len() * STATUS_CLASSES.len());
        for route in ROUTE_NAMES {
            for class in STATUS_CLASSES {
                all.push(metrics::counter!(
                    "homeport_gateway_responses_total",
                    "route" => route,
                    "class" => class
                ));
            }
        }
        ResponseCounters(all)
    }

    fn count(&self, route: &str, status: StatusCode) {
        let r = ROUTE_NAMES
            .iter()
            .position(|n| *n == route)
            .unwrap_or(ROUTE_NAMES.len() - 1);
        if let Some(c) = self.0.get(r * STATUS_CLASSES.len() + status_class(status)) {
            c.increment(1);
        }
    }
}

/// A request the proxy's short path carries: where it goes, whose it is, and its admission
/// slot (held until the answer is written).
pub(crate) struct ShortPath<'g> {
    pub target: &'g Target,
    pub claims: Arc<Verified>,
    pub permit: crate::admission::Permit,
}

/// The ticket of a request: `Authorization: Bearer <ticket>`, else `Homeport-Ticket`.
fn ticket_token<'h>(
    authorization: Option<&'h [u8]>,
    homeport_ticket: Option<&'h [u8]>,
) -> Result<&'h str, TicketError> {
    let visible = |v: &'h [u8], field: &str| {
        std::str::from_utf8(v)
            .ok()
            .filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .ok_or_else(|| {
                TicketError::Malformed(format!("the {field} header is not visible ASCII"))
            })
    };
    if let Some(v) = authorization {
        let text = visible(v, "Authorization")?;
        match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
            _ => Err(TicketError::Malformed(
                "the Authorization header must be `Bearer <ticket>`".into(),
            )),
        }
    } else if let Some(v) = homeport_ticket {
        visible(v, "Homeport-Ticket")
    } else {
        Err(TicketError::Missing)
    }
}

fn ticket_problem(e: &TicketError) -> Response<Body> {
    metrics::counter!("homeport_gateway_ticket_refusals_total", "reason" => e.code()).increment(1);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = problem(status, e.code(), e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"homeport\""),
        );
    }
    r
}

/// The ETag version of a region answer (`"7"` → 7).
fn etag_version(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::ETAG)?
        .to_str()
        .ok()?
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

impl Gateway {
    fn retry_after(&self, mut r: Response<Body>) -> Response<Body> {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.deployment.gateway.retry_after_secs),
        );
        r
    }

    /// Entry point for every request: admission first, so an overloaded gateway spends nothing
    /// on a request it will refuse.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        via: Via,
        up: &Upstreams,
    ) -> Response<Body> {
        if self.shutting_down.load(Ordering::Acquire) {
            return self.retry_after(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                format!("this gateway of region {} is shutting down", self.region),
            ));
        }
        let acquired = match self.admission.try_acquire() {
            Some(p) => Ok(p),
            // Boxed: the waiting future is large, and rarely needed.
            None => Box::pin(self.admission.acquire()).await,
        };
        let permit = match acquired {
            Ok(p) => p,
            Err(why) => {
                let message = match why {
                    Rejected::Full => "every slot of this gateway is busy and its queue is full",
                    Rejected::Deadline => {
                        "no slot of this gateway freed up within the queue deadline"
                    }
                };
                return self.retry_after(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!("{message}; retry after the time in Retry-After"),
                ));
            }
        };
        let (route_name, resp) = self.dispatch(req, client, via, up).await;
        self.responses.count(route_name, resp.status());
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.guarded(permit))
    }

    async fn dispatch(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        via: Via,
        up: &Upstreams,
    ) -> (&'static str, Response<Body>) {
        // A clone of the URI shares its bytes (no copy), and outlives `req`, which the handlers
        // take by value.
        let uri = req.uri().clone();
        let path = uri.path();
        match routes::route(req.method(), path, &self.prefixes) {
            // Every route but the upstream one is boxed: their futures are large, and inline they
            // would make every request's future as large, copied several times per request
            // (memmove showed in profiles).
            Route::CreateUser => ("create_user", Box::pin(self.create_user()).await),
            Route::Whereis { uid } => ("whereis", Box::pin(self.whereis(req.headers(), uid)).await),
            Route::Record { uid, key: _ } => (
                "record",
                Box::pin(self.record(req, client, via, uid, up)).await,
            ),
            Route::WechatId { id } => ("wechat_id", Box::pin(self.wechat_id(&req, id)).await),
            Route::Upstream { prefix } => (
                "upstream",
                self.upstream(req, client, via, prefix, up).await,
            ),
            Route::MethodNotAllowed { allow } => {
                let mut r = problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not served on {path}; use {allow}", req.method()),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                ("other", r)
            }
            Route::NotFound => (
                "other",
                problem(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "nothing is served at {path}: the gateway serves /v1/users, /v1/whereis, \
                         /v1/wechat-ids and the configured upstream prefixes ({})",
                        self.prefixes.join(", ")
                    ),
                ),
            ),
        }
    }

    fn ticket(&self, headers: &HeaderMap) -> Result<Arc<Verified>, TicketError> {
        let token = ticket_token(
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            headers.get(TICKET_HEADER).map(HeaderValue::as_bytes),
        )?;
        self.verifier.verify_shared(token, now_unix_secs())
    }

    /// The checks [`Gateway::handle`] and the upstream route make, for the proxy's short path
    /// (`server.rs`), on a request read in place: `Some` when it goes to a local HTTP/1.1
    /// upstream and every check passed (an admission slot is taken). `None` whenever anything
    /// else applies — shutting down, another route, no or a bad ticket, a home elsewhere or not
    /// cached yet, an h2c or misconfigured upstream, no free slot — and the request then takes
    /// the full path, which answers it as always.
    pub(crate) fn short_path<'g>(
        &'g self,
        method: &Method,
        path: &str,
        authorization: Option<&[u8]>,
        homeport_ticket: Option<&[u8]>,
    ) -> Option<ShortPath<'g>> {
        if self.shutting_down.load(Ordering::Acquire) {
            return None;
        }
        let Route::Upstream { prefix } = routes::route(method, path, &self.prefixes) else {
            return None;
        };
        let token = ticket_token(authorization, homeport_ticket).ok()?;
        let claims = self.verifier.verify_shared(token, now_unix_secs()).ok()?;
        if !self.homes.cached_home_is(&claims.uid, &self.region)? {
            return None;
        }
        let upstream = self.local_upstream(prefix)?;
        let (Ok(target), Protocol::Http1) = (&upstream.authority, upstream.protocol) else {
            return None;
        };
        let permit = self.admission.try_acquire()?;
        Some(ShortPath {
            target,
            claims,
            permit,
        })
    }

    /// Counts an answer of the proxy's short path (the full path counts in `handle`).
    pub(crate) fn count_upstream_answer(&self, status: StatusCode) {
        self.responses.count("upstream", status);
    }

    fn local_upstream(&self, prefix: &str) -> Option<&LocalUpstream> {
        self.local_upstreams.iter().find(|u| u.prefix == prefix)
    }

    /// `Ok(home)`, or the answer to give when there is none (boxed: answers are large).
    async fn home_of(&self, uid: &str) -> Result<String, Box<Response<Body>>> {
        match self.homes.home_of(uid).await {
            Ok(Some(home)) => Ok(home),
            Ok(None) => Err(Box::new(problem(
                StatusCode::NOT_FOUND,
                "no_home",
                format!(
                    "user {uid:?} has no home region (under the uid-prefix rule a uid is \
                     '<region>-<id>' with a region of: {})",
                    self.deployment.region_names().join(", ")
                ),
            ))),
            Err(e) => Err(Box::new(self.retry_after(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "home_lookup_failed",
                e.to_string(),
            )))),
        }
    }

    fn gateway_url(&self, region: &str) -> Option<&str> {
        self.deployment
            .region(region)
            .and_then(|r| r.gateway.as_ref())
            .map(|g| g.public_url.as_str())
    }

    async fn create_user(&self) -> Response<Body> {
        match self.homes.create_user(&self.region).await {
            Ok(uid) => {
                let mut r = crate::body::json(
                    StatusCode::CREATED,
                    &json!({
                        "uid": uid,
                        "home_region": self.region,
                        "gateway_url": self.gateway_url(&self.region),
                    }),
                );
                if let Ok(loc) = HeaderValue::from_str(&format!("/v1/whereis/{uid}")) {
                    r.headers_mut().insert(header::LOCATION, loc);
                }
                r
            }
            Err(e) => self.retry_after(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "home_directory_unavailable",
                e.to_string(),
            )),
        }
    }

    async fn whereis(&self, headers: &HeaderMap, raw_uid: &str) -> Response<Body> {
        if let Err(e) = self.ticket(headers) {
            return ticket_problem(&e);
        }
        let Some(uid) = routes::percent_decode(raw_uid) else {
            return bad_path(raw_uid);
        };
        match self.home_of(&uid).await {
            Ok(home) => {
                let mut r = crate::body::json(
                    StatusCode::OK,
                    &json!({
                        "uid": uid,
                        "home_region": home,
                        "gateway_url": self.gateway_url(&home),
                    }),
                );
                if let Ok(h) = HeaderValue::from_str(&home) {
                    r.headers_mut().insert(HOME_REGION_HEADER, h);
                }
                r
            }
            Err(r) => *r,
        }
    }

    /// `GET|PUT|DELETE /v1/wechat-ids/{id}`: lookup, claim and release for the ticket's user.
    /// The ID's syntax is checked here, before the registry is asked.
    async fn wechat_id(&self, req: &Request<Body>, raw_id: &str) -> Response<Body> {
        let claims = match self.ticket(req.headers()) {
            Ok(c) => c,
            Err(e) => return ticket_problem(&e),
        };
        let Some(text) = routes::percent_decode(raw_id) else {
            return bad_path(raw_id);
        };
        let id = match WxId::parse(&text) {
            Ok(id) => id,
            Err(e) => return bad_wechat_id(&e),
        };
        let Some(ids) = &self.wechat_ids else {
            return self.retry_after(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_not_configured",
                format!(
                    "the gateway of region {} has no registry to keep WeChat IDs in; start it \
                     with the registry client configured (GatewayOptions::wechat_ids)",
                    self.region
                ),
            ));
        };
        let reveal = self.deployment.gateway.reveal_wechat_id_owner;
        let uid = claims.uid.as_str();
        let held = |status, owner: Option<&str>| {
            let mut body = serde_json::Map::new();
            body.insert("id".into(), id.as_str().into());
            body.insert("held".into(), true.into());
            if let Some(owner) = owner {
                body.insert("owner".into(), owner.into());
            }
            crate::body::json(status, &serde_json::Value::Object(body))
        };
        let owner_extra = |owner: &str| {
            let mut extra = serde_json::Map::new();
            extra.insert("id".into(), id.as_str().into());
            if reveal {
                extra.insert("owner".into(), owner.into());
            }
            extra
        };
        match *req.method() {
            Method::PUT => match ids.claim(&id, uid).await {
                Ok(ClaimOutcome::Claimed) => {
                    let mut r = held(StatusCode::CREATED, Some(uid));
                    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/wechat-ids/{id}")) {
                        r.headers_mut().insert(header::LOCATION, loc);
                    }
                    r
                }
                Ok(ClaimOutcome::AlreadyYours) => held(StatusCode::OK, Some(uid)),
                Ok(ClaimOutcome::HeldByOther { owner }) => problem_with(
                    StatusCode::CONFLICT,
                    "wechat_id_taken",
                    format!("WeChat ID \"{id}\" is held by another user; choose another ID"),
                    owner_extra(&owner),
                ),
                Err(e) => self.registry_failed(&id, "claim", e),
            },
            Method::DELETE => match ids.release(&id, uid).await {
                Ok(ReleaseOutcome::Released) => {
                    let mut r = Response::new(crate::body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Ok(ReleaseOutcome::AlreadyFree) => {
                    let mut body = serde_json::Map::new();
                    body.insert("id".into(), id.as_str().into());
                    body.insert("held".into(), false.into());
                    crate::body::json(StatusCode::OK, &serde_json::Value::Object(body))
                }
                Ok(ReleaseOutcome::HeldByOther { owner }) => problem_with(
                    StatusCode::FORBIDDEN,
                    "not_wechat_id_owner",
                    format!(
                        "WeChat ID \"{id}\" is held by another user; only its owner may release it"
                    ),
                    owner_extra(&owner),
                ),
                Err(e) => self.registry_failed(&id, "release", e),
            },
            _ => match ids.lookup(&id).await {
                Ok(Some(owner)) => {
                    let shown = (reveal || owner == uid).then_some(owner.as_str());
                    held(StatusCode::OK, shown)
                }
                Ok(None) => {
                    let mut extra = serde_json::Map::new();
                    extra.insert("id".into(), id.as_str().into());
                    extra.insert("held".into(), false.into());
                    problem_with(
                        StatusCode::NOT_FOUND,
                        "wechat_id_free",
                        format!("nobody holds WeChat ID \"{id}\"; PUT it to claim it"),
                        extra,
                    )
                }
                Err(e) => self.registry_failed(&id, "lookup", e),
            },
        }
    }

    /// A registry call without a decision: 400 if it refused the syntax, else 503 saying the
    /// operation may still take effect (claim and release are idempotent, so a retry is safe).
    fn registry_failed(&self, id: &WxId, op: &str, e: WechatIdError) -> Response<Body> {
        match e {
            WechatIdError::BadSyntax(e) => bad_wechat_id(&e),
            WechatIdError::Rejected(message) => {
                let mut extra = serde_json::Map::new();
                extra.insert("rule".into(), "registry".into());
                problem_with(StatusCode::BAD_REQUEST, "bad_wechat_id", message, extra)
            }
            WechatIdError::Failed(message) => problem(
                StatusCode::BAD_GATEWAY,
                "registry_failed",
                format!("the {op} of WeChat ID \"{id}\" failed: {message}"),
            ),
            WechatIdError::OutcomeUnknown(why) => {
                let message = if op == "lookup" {
                    format!("the registry did not answer the lookup of \"{id}\" ({why}); retry")
                } else {
                    format!(
                        "the registry did not confirm the {op} of WeChat ID \"{id}\" ({why}); it \
                         may still take effect. Retrying is safe: the {op} is idempotent, and \
                         the retry's answer tells the outcome"
                    )
                };
                let mut extra = serde_json::Map::new();
                extra.insert("id".into(), id.as_str().into());
                extra.insert("may_have_taken_effect".into(), (op != "lookup").into());
                self.retry_after(problem_with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry_outcome_unknown",
                    message,
                    extra,
                ))
            }
        }
    }

    async fn record(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        via: Via,
        raw_uid: &str,
        up: &Upstreams,
    ) -> Response<Body> {
        let claims = match self.ticket(req.headers()) {
            Ok(c) => c,
            Err(e) => return ticket_problem(&e),
        };
        let Some(uid) = routes::percent_decode(raw_uid) else {
            return bad_path(raw_uid);
        };
        let write = req.method() != Method::GET;
        if write && claims.uid != uid {
            return ticket_problem(&TicketError::WrongUser {
                ticket_uid: claims.uid.clone(),
                path_uid: uid,
            });
        }
        let consistency = match query_consistency(req.uri().query()) {
            Ok(c) => c,
            Err(message) => return problem(StatusCode::BAD_REQUEST, "bad_consistency", message),
        };
        let home = match self.home_of(&uid).await {
            Ok(h) => h,
            Err(r) => return *r,
        };
        if home == self.region {
            return self.to_region(req, client, &claims.uid, up).await;
        }
        if let Via::Forwarded { from_region } = &via {
            return misdirected(&self.region, from_region, &home);
        }
        let policy = self.deployment.gateway.policy_for(req.uri().path());
        if write || claims.uid == uid {
            return self.go_home(req, client, &home, policy).await;
        }
        match consistency {
            Consistency::Any => self.to_region(req, client, &claims.uid, up).await,
            Consistency::Latest => self.go_home(req, client, &home, RoutePolicy::Forward).await,
            Consistency::Critical => {
                let Some(min_version) = query_min_version(req.uri().query()) else {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "min_version_required",
                        "consistency=critical needs min_version=<version> (the ETag you must \
                         see at least, e.g. the one your write returned)",
                    );
                };
                let target = (home.as_str(), policy, min_version);
                self.critical_read(req, client, &claims.uid, target, up)
                    .await
            }
        }
    }

    /// Reads the local replica, waiting (bounded) until it has `min_version`; else home.
    async fn critical_read(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        ticket_uid: &str,
        (home, policy, min_version): (&str, RoutePolicy, u64),
        up: &Upstreams,
    ) -> Response<Body> {
        let (parts, _body) = req.into_parts();
        let wait_ms = self.deployment.gateway.critical_read_max_wait_ms;
        let local_target = format!(
            "{}?min_version={min_version}&wait_ms={wait_ms}",
            parts.uri.path()
        );
        let mut local = Request::new(crate::body::empty());
        *local.method_mut() = Method::GET;
        *local.headers_mut() = parts.headers.clone();
        match local_target.parse() {
            Ok(uri) => *local.uri_mut() = uri,
            Err(_) => return bad_path(parts.uri.path()),
        }
        let resp = self.to_region(local, client, ticket_uid, up).await;
        let reached = etag_version(resp.headers()).is_some_and(|v| v >= min_version)
            && (resp.status() == StatusCode::OK || resp.status() == StatusCode::NOT_FOUND);
        if reached {
            metrics::counter!("homeport_gateway_critical_reads_total", "served" => "local")
                .increment(1);
            return resp;
        }
        metrics::counter!("homeport_gateway_critical_reads_total", "served" => "home").increment(1);
        let again = Request::from_parts(parts, crate::body::empty());
        self.go_home(again, client, home, policy).await
    }

    async fn upstream(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        via: Via,
        prefix: &str,
        up: &Upstreams,
    ) -> Response<Body> {
        let claims = match self.ticket(req.headers()) {
            Ok(c) => c,
            Err(e) => return ticket_problem(&e),
        };
        let home = match self.home_of(&claims.uid).await {
            Ok(h) => h,
            Err(r) => return *r,
        };
        if home != self.region {
            if let Via::Forwarded { from_region } = &via {
                return misdirected(&self.region, from_region, &home);
            }
            let policy = self.deployment.gateway.policy_for(req.uri().path());
            return Box::pin(self.go_home(req, client, &home, policy)).await;
        }
        let Some(service) = self.local_upstream(prefix) else {
            return problem(
                StatusCode::NOT_FOUND,
                "no_upstream",
                format!(
                    "region {} has no upstream for {prefix} (other regions do) — configure \
                     [[regions.upstreams]] prefix = {prefix:?} for it",
                    self.region
                ),
            );
        };
        let authority = match &service.authority {
            Ok(a) => a,
            Err(url) => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "upstream_misconfigured",
                    format!("upstream url {url:?} has no valid authority"),
                );
            }
        };
        let user = claims.uid_header.as_ref();
        up.send(req, authority, service.protocol, client, user)
            .await
    }

    async fn to_region(
        &self,
        req: Request<Body>,
        client: SocketAddr,
        uid: &str,
        up: &Upstreams,
    ) -> Response<Body> {
        let user = HeaderValue::from_str(uid).ok();
        up.send(
            req,
            &self.region_api,
            Protocol::Http1,
            client,
            user.as_ref(),
        )
        .await
    }

    /// Sends the client home (307) or carries its request there, as `policy` says.
    async fn go_home(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        home: &str,
        policy: RoutePolicy,
    ) -> Response<Body> {
        match policy {
            RoutePolicy::Redirect => self.redirect(req.uri(), home),
            RoutePolicy::Forward => self.forward(req, client, home).await,
        }
    }

    fn redirect(&self, uri: &http::Uri, home: &str) -> Response<Body> {
        metrics::counter!("homeport_gateway_redirects_total").increment(1);
        let Some(base) = self.gateway_url(home) else {
            return no_gateway(home);
        };
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = format!("{base}{target}");
        let mut extra = serde_json::Map::new();
        extra.insert("home_region".into(), home.into());
        extra.insert("location".into(), location.clone().into());
        let mut r = problem_with(
            StatusCode::TEMPORARY_REDIRECT,
            "not_home",
            format!("this user lives in region {home}; send the request to its gateway"),
            extra,
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(home) {
            r.headers_mut().insert(HOME_REGION_HEADER, v);
        }
        r
    }

    async fn forward(
        self: &Arc<Self>,
        req: Request<Body>,
        client: SocketAddr,
        home: &str,
    ) -> Response<Body> {
        metrics::counter!("homeport_gateway_forwards_total").increment(1);
        if self.gateway_url(home).is_none() {
            return no_gateway(home);
        }
        let settings = &self.deployment.gateway;
        let (parts, body) = req.into_parts();
        let body = match collect_limited(body, settings.max_forward_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                if let CollectError::TooLarge = e {
                    return problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large_to_forward",
                        format!(
                            "the body is larger than the {} bytes a forwarded request may carry; \
                             send it to the home region's gateway directly (region {home})",
                            settings.max_forward_body_bytes
                        ),
                    );
                }
                return problem(
                    StatusCode::BAD_REQUEST,
                    "body_read_failed",
                    format!("reading the request body failed: {e}"),
                );
            }
        };
        let msg = forward::request_message(&parts, body, &self.region, client);
        let answer = self
            .forwarder
            .call(home, msg, settings.forward_timeout_ms)
            .await;
        let mut resp = match answer {
            Ok(m) => match forward::response_from_message(m) {
                Ok(r) => r,
                Err(e) => {
                    return problem(
                        StatusCode::BAD_GATEWAY,
                        "forward_failed",
                        format!("the gateway of region {home} answered something invalid: {e}"),
                    );
                }
            },
            Err(e @ ForwardError::Timeout { .. }) => {
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "forward_timeout",
                    e.to_string(),
                );
            }
            Err(e) => return problem(StatusCode::BAD_GATEWAY, "forward_failed", e.to_string()),
        };
        if let Ok(v) = HeaderValue::from_str(home) {
            resp.headers_mut().insert(FORWARDED_FROM_HEADER, v);
        }
        resp
    }

    /// The home side of `forward`: runs the request as if it came over HTTP (ticket checked
    /// again), and sends the answer back whole (bounded).
    pub async fn serve_forwarded(
        self: &Arc<Self>,
        peer: &Identity,
        req: pb::Request,
    ) -> pb::Response {
        use homeport_wire::error_response;
        let Some(pb::request::Body::GatewayForward(msg)) = req.body else {
            return error_response(
                pb::ErrorCode::BadRequest,
                format!(
                    "the gateway of region {} answers gateway_forward requests only",
                    self.region
                ),
            );
        };
        if peer.role != Role::Gateway || peer.region == self.region {
            return error_response(
                pb::ErrorCode::Forbidden,
                format!(
                    "{} may not forward requests here: only gateways of other regions may",
                    peer.dns_name()
                ),
            );
        }
        let fallback_client: SocketAddr = ([0, 0, 0, 0], 0).into();
        let (request, client) = match forward::request_from_message(msg) {
            Ok(r) => r,
            Err(e) => return error_response(pb::ErrorCode::BadRequest, e),
        };
        let via = Via::Forwarded {
            from_region: peer.region.clone(),
        };
        let resp = self
            .handle(
                request,
                client.unwrap_or(fallback_client),
                via,
                &self.upstreams,
            )
            .await;
        let (parts, body) = resp.into_parts();
        let limit = self.deployment.gateway.max_forward_body_bytes;
        let body: Bytes = match collect_limited(body, limit).await {
            Ok(b) => b,
            Err(e) => {
                let (status, text) = if let CollectError::TooLarge = e {
                    (
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "the answer is larger than the {limit} bytes a forwarded response \
                             may carry; send the request to region {}'s gateway directly",
                            self.region
                        ),
                    )
                } else {
                    (
                        StatusCode::BAD_GATEWAY,
                        format!("reading the answer failed: {e}"),
                    )
                };
                let r = problem(status, "forward_response_failed", text);
                let (parts, body) = r.into_parts();
                let bytes = collect_limited(body, limit).await.unwrap_or_default();
                return pb::Response {
                    body: Some(pb::response::Body::GatewayForward(
                        forward::response_message(&parts, bytes),
                    )),
                };
            }
        };
        pb::Response {
            body: Some(pb::response::Body::GatewayForward(
                forward::response_message(&parts, body),
            )),
        }
    }
}

fn query_consistency(query: Option<&str>) -> Result<Consistency, String> {
    match routes::query_param(query, "consistency") {
        None | Some("any") => Ok(Consistency::Any),
        Some("critical") => Ok(Consistency::Critical),
        Some("latest") => Ok(Consistency::Latest),
        Some(other) => Err(format!(
            "consistency {other:?} is not one of any (local replica, possibly stale), critical \
             (local, at least min_version) or latest (the home region)"
        )),
    }
}

fn query_min_version(query: Option<&str>) -> Option<u64> {
    routes::query_param(query, "min_version")?.parse().ok()
}

/// 400 for an ID that breaks a syntax rule; `rule` names which, `message` how to fix it.
fn bad_wechat_id(e: &WxidError) -> Response<Body> {
    let rule = match e {
        WxidError::TooShort { .. } => "too_short",
        WxidError::TooLong { .. } => "too_long",
        WxidError::MustStartWithLetter { .. } => "must_start_with_letter",
        WxidError::BadCharacter { .. } => "bad_character",
        WxidError::ReservedWord { .. } => "reserved_word",
        WxidError::ReservedPrefix { .. } => "reserved_prefix",
    };
    let mut extra = serde_json::Map::new();
    extra.insert("rule".into(), rule.into());
    problem_with(
        StatusCode::BAD_REQUEST,
        "bad_wechat_id",
        e.to_string(),
        extra,
    )
}

fn bad_path(segment: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "bad_path",
        format!("path segment {segment:?} has a bad %-escape or is not UTF-8"),
    )
}

fn no_gateway(home: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_GATEWAY,
        "home_has_no_gateway",
        format!(
            "the user's home region {home} runs no gateway (no [regions.gateway] in the config)"
        ),
    )
}

/// A forwarded request whose user is not homed here either: the regions disagree about the
/// home (a stale cache). Never forwarded again, so a disagreement cannot loop.
fn misdirected(here: &str, from: &str, home: &str) -> Response<Body> {
    problem(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected",
        format!(
            "region {from} forwarded this request to {here}, but the user's home is {home}; \
             retry, the regions' home caches disagree"
        ),
    )
}
