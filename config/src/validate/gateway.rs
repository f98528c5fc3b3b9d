//! Checks of the gateway's part of the file (`[gateway]`, `[tickets]`, `[regions.gateway]`,
//! `[[regions.upstreams]]`), in the same style as the rest: every problem with its place and fix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::{AddrUse, Checker, DAY_SECS, KIB, MIB, RawRegion, to_u64, to_usize};
use crate::gateway::{
    GatewaySettings, RegionGateway, RoutePolicy, RouteRule, TicketKey, TicketKeySource,
    TicketSettings, Upstream, UpstreamProtocol,
};

/// Paths the gateway serves itself; an upstream prefix may not take them.
const RESERVED_PREFIXES: [&str; 3] = ["/v1/users", "/v1/whereis", "/v1/wechat-ids"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGateway {
    max_concurrency: u64,
    max_queued_requests: u64,
    queue_deadline_ms: u64,
    retry_after_secs: u64,
    upstream_connect_timeout_ms: u64,
    upstream_timeout_ms: u64,
    forward_timeout_ms: u64,
    home_cache_entries: u64,
    critical_read_max_wait_ms: u64,
    max_forward_body_bytes: u64,
    upstream_max_idle_per_host: u64,
    default_policy: String,
    routes: Vec<RawRoute>,
    reveal_wechat_id_owner: bool,
}

impl Default for RawGateway {
    fn default() -> Self {
        let d = GatewaySettings::default();
        RawGateway {
            max_concurrency: to_u64(d.max_concurrency),
            max_queued_requests: to_u64(d.max_queued_requests),
            queue_deadline_ms: d.queue_deadline_ms,
            retry_after_secs: d.retry_after_secs,
            upstream_connect_timeout_ms: d.upstream_connect_timeout_ms,
            upstream_timeout_ms: d.upstream_timeout_ms,
            forward_timeout_ms: d.forward_timeout_ms,
            home_cache_entries: to_u64(d.home_cache_entries),
            critical_read_max_wait_ms: d.critical_read_max_wait_ms,
            max_forward_body_bytes: to_u64(d.max_forward_body_bytes),
            upstream_max_idle_per_host: to_u64(d.upstream_max_idle_per_host),
            default_policy: d.default_policy.to_string(),
            routes: Vec::new(),
            reveal_wechat_id_owner: d.reveal_wechat_id_owner,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    prefix: String,
    policy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTickets {
    max_ttl_secs: u64,
    clock_skew_secs: u64,
    keys: Vec<RawTicketKey>,
}

impl Default for RawTickets {
    fn default() -> Self {
        let d = TicketSettings::default();
        RawTickets {
            max_ttl_secs: d.max_ttl_secs,
            clock_skew_secs: d.clock_skew_secs,
            keys: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTicketKey {
    kid: String,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegionGateway {
    http_addr: String,
    quic_addr: String,
    admin_addr: String,
    public_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    prefix: String,
    url: String,
    protocol: Option<String>,
}

impl Checker {
    pub(super) fn check_gateway(&mut self, raw: &RawGateway) -> Option<GatewaySettings> {
        let d = GatewaySettings::default();
        let before = self.problems.len();
        let mut range = |field: &str, value: u64, default: u64, min: u64, max: u64, why: &str| {
            self.check_range(&format!("gateway.{field}"), value, default, min, max, why);
        };
        range(
            "max_concurrency",
            raw.max_concurrency,
            to_u64(d.max_concurrency),
            1,
            64 * KIB,
            "each request in progress holds buffers and an upstream connection",
        );
        range(
            "max_queued_requests",
            raw.max_queued_requests,
            to_u64(d.max_queued_requests),
            0,
            1024 * KIB,
            "a long queue only makes everyone in it wait past their own deadline",
        );
        range(
            "queue_deadline_ms",
            raw.queue_deadline_ms,
            d.queue_deadline_ms,
            1,
            60_000,
            "a request that waited a minute for a slot is no longer wanted by its client",
        );
        range(
            "retry_after_secs",
            raw.retry_after_secs,
            d.retry_after_secs,
            1,
            3_600,
            "clients that wait longer than an hour have given up",
        );
        range(
            "upstream_connect_timeout_ms",
            raw.upstream_connect_timeout_ms,
            d.upstream_connect_timeout_ms,
            1,
            60_000,
            "a request holds its slot while it waits for the connection",
        );
        range(
            "upstream_timeout_ms",
            raw.upstream_timeout_ms,
            d.upstream_timeout_ms,
            1,
            600_000,
            "a request holds its slot while it waits for the upstream's answer",
        );
        range(
            "forward_timeout_ms",
            raw.forward_timeout_ms,
            d.forward_timeout_ms,
            1,
            600_000,
            "a request holds its slot while the home region answers",
        );
        range(
            "home_cache_entries",
            raw.home_cache_entries,
            to_u64(d.home_cache_entries),
            1,
            64 * MIB,
            "every cached user costs memory in every gateway",
        );
        range(
            "critical_read_max_wait_ms",
            raw.critical_read_max_wait_ms,
            d.critical_read_max_wait_ms,
            0,
            60_000,
            "a critical read holds its slot while it waits for replication",
        );
        range(
            "max_forward_body_bytes",
            raw.max_forward_body_bytes,
            to_u64(d.max_forward_body_bytes),
            1,
            32 * MIB,
            "a forwarded request travels as one message, held whole in memory on both sides (larger bodies: use redirect)",
        );
        range(
            "upstream_max_idle_per_host",
            raw.upstream_max_idle_per_host,
            to_u64(d.upstream_max_idle_per_host),
            0,
            64 * KIB,
            "each idle connection holds a socket on both sides",
        );
        let default_policy = self.check_policy("gateway.default_policy", &raw.default_policy);
        let mut routes = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, route) in raw.routes.iter().enumerate() {
            let place = format!("gateway.routes[{i}] {:?}", route.prefix);
            if !route.prefix.starts_with('/') {
                self.report(
                    format!("{place}, prefix"),
                    format!(
                        "{:?} does not start with '/'; a prefix is matched against request \
                         paths — write it like \"/v1/users/\"",
                        route.prefix
                    ),
                );
            }
            if let Some(first) = seen.get(route.prefix.as_str()) {
                self.report(
                    format!("{place}, prefix"),
                    format!(
                        "is also the prefix of gateway.routes[{first}]; one prefix has one \
                         policy — remove one of them"
                    ),
                );
            } else {
                seen.insert(&route.prefix, i);
            }
            if let Some(policy) = self.check_policy(&format!("{place}, policy"), &route.policy) {
                routes.push(RouteRule {
                    prefix: route.prefix.clone(),
                    policy,
                });
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(GatewaySettings {
            max_concurrency: to_usize(raw.max_concurrency),
            max_queued_requests: to_usize(raw.max_queued_requests),
            queue_deadline_ms: raw.queue_deadline_ms,
            retry_after_secs: raw.retry_after_secs,
            upstream_connect_timeout_ms: raw.upstream_connect_timeout_ms,
            upstream_timeout_ms: raw.upstream_timeout_ms,
            forward_timeout_ms: raw.forward_timeout_ms,
            home_cache_entries: to_usize(raw.home_cache_entries),
            critical_read_max_wait_ms: raw.critical_read_max_wait_ms,
            max_forward_body_bytes: to_usize(raw.max_forward_body_bytes),
            upstream_max_idle_per_host: to_usize(raw.upstream_max_idle_per_host),
            default_policy: default_policy?,
            routes,
            reveal_wechat_id_owner: raw.reveal_wechat_id_owner,
        })
    }

    fn check_policy(&mut self, place: &str, text: &str) -> Option<RoutePolicy> {
        let found = RoutePolicy::ALL.into_iter().find(|p| p.as_str() == text);
        if found.is_none() {
            self.report(
                place,
                format!(
                    "{text:?} is not a route policy — use \"redirect\" (307 to the user's home \
                     region) or \"forward\" (carried to the home region over the inter-region \
                     link, for clients that cannot follow redirects)"
                ),
            );
        }
        found
    }

    /// `any_gateway`: some region runs a gateway, which cannot check a ticket without a key.
    pub(super) fn check_tickets(
        &mut self,
        raw: &RawTickets,
        base_dir: &Path,
        any_gateway: bool,
    ) -> Option<TicketSettings> {
        let d = TicketSettings::default();
        let before = self.problems.len();
        self.check_range(
            "tickets.max_ttl_secs",
            raw.max_ttl_secs,
            d.max_ttl_secs,
            1,
            30 * DAY_SECS,
            "a stolen ticket works until it expires; issue shorter tickets and refresh them",
        );
        self.check_range(
            "tickets.clock_skew_secs",
            raw.clock_skew_secs,
            d.clock_skew_secs,
            0,
            3_600,
            "clocks that far apart need fixing (NTP), and the allowance extends every ticket",
        );
        if any_gateway && raw.keys.is_empty() {
            self.report(
                "tickets.keys",
                "is empty, but a region runs a gateway, which refuses every request without a \
                 key to check tickets — add [[tickets.keys]] with kid and public_key_file (make \
                 one with `homeport ticket keygen --out DIR --kid K`)",
            );
        }
        let mut kids: HashMap<&str, usize> = HashMap::new();
        let mut keys = Vec::new();
        for (i, key) in raw.keys.iter().enumerate() {
            let place = format!("tickets.keys[{i}] {:?}", key.kid);
            self.check_name(&format!("{place}, kid"), "key id", &key.kid);
            if let Some(first) = kids.get(key.kid.as_str()) {
                self.report(
                    format!("{place}, kid"),
                    format!(
                        "key id {:?} is also used by tickets.keys[{first}]; a ticket names its key \
                         by id, so ids must be unique — rename one (e.g. after its date)",
                        key.kid
                    ),
                );
            } else {
                kids.insert(&key.kid, i);
            }
            let source = match (&key.public_key, &key.public_key_file) {
                (Some(_), Some(_)) => {
                    self.report(
                        place,
                        "sets both public_key and public_key_file — keep one of them",
                    );
                    None
                }
                (None, None) => {
                    self.report(
                        place,
                        "has no key — add public_key_file = \"<kid>.pub\" (written by `homeport \
                         ticket keygen`) or public_key = \"<base64 of the 32-byte Ed25519 public \
                         key>\"",
                    );
                    None
                }
                (Some(text), None) => match decode_public_key(text) {
                    Ok(bytes) => Some(TicketKeySource::Inline(bytes)),
                    Err(message) => {
                        self.report(format!("{place}, public_key"), message);
                        None
                    }
                },
                (None, Some(path)) => Some(TicketKeySource::File(self.resolve_path(
                    &format!("{place}, public_key_file"),
                    path,
                    base_dir,
                    "set it to the .pub file `homeport ticket keygen` wrote",
                ))),
            };
            if let Some(public_key) = source {
                keys.push(TicketKey {
                    kid: key.kid.clone(),
                    public_key,
                });
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(TicketSettings {
            max_ttl_secs: raw.max_ttl_secs,
            clock_skew_secs: raw.clock_skew_secs,
            keys,
        })
    }

    /// `Err(())` once a problem is reported. A gateway fronts the region process (record API),
    /// so a region with a gateway needs one.
    pub(super) fn check_region_gateway(
        &mut self,
        region_place: &str,
        region: &RawRegion,
        addrs: &mut HashMap<SocketAddr, AddrUse>,
    ) -> Result<Option<RegionGateway>, ()> {
        let Some(raw) = &region.gateway else {
            return Ok(None);
        };
        let before = self.problems.len();
        let place = format!("{region_place}, gateway");
        if region.api_addr.is_none() {
            self.report(
                place.clone(),
                "is set, but the region has no process (addr, api_addr, admin_addr); the gateway \
                 serves the record API through the region process — add the region process, or \
                 remove [regions.gateway]",
            );
        }
        let owner = "gateway";
        let http = self.check_addr(&place, owner, "http_addr", &raw.http_addr, addrs);
        let quic = self.check_addr(&place, owner, "quic_addr", &raw.quic_addr, addrs);
        let admin = self.check_addr(&place, owner, "admin_addr", &raw.admin_addr, addrs);
        let public_url = match (&raw.public_url, http) {
            (Some(url), _) => match check_public_url(url) {
                Ok(url) => Some(url),
                Err(message) => {
                    self.report(format!("{place}, public_url"), message);
                    None
                }
            },
            (None, Some(http)) => Some(format!("http://{http}")),
            (None, None) => None,
        };
        if self.problems.len() > before {
            return Err(());
        }
        match (http, quic, admin, public_url) {
            (Some(http_addr), Some(quic_addr), Some(admin_addr), Some(public_url)) => {
                Ok(Some(RegionGateway {
                    http_addr,
                    quic_addr,
                    admin_addr,
                    public_url,
                }))
            }
            _ => Err(()),
        }
    }

    pub(super) fn check_upstreams(
        &mut self,
        region_place: &str,
        region: &RawRegion,
    ) -> Option<Vec<Upstream>> {
        let before = self.problems.len();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        if !region.upstreams.is_empty() && region.gateway.is_none() {
            self.report(
                format!("{region_place}, upstreams"),
                "are set, but the region has no [regions.gateway] to serve them — add the \
                 gateway, or remove the upstreams",
            );
        }
        for (i, up) in region.upstreams.iter().enumerate() {
            let place = format!("{region_place}, upstreams[{i}] {:?}", up.prefix);
            if !up.prefix.starts_with('/') || up.prefix.len() < 2 {
                self.report(
                    format!("{place}, prefix"),
                    format!(
                        "{:?} is not a path prefix; write it like \"/chat/\" (it must start \
                         with '/' and name something)",
                        up.prefix
                    ),
                );
            }
            if let Some(reserved) = RESERVED_PREFIXES
                .iter()
                .find(|r| up.prefix.starts_with(*r) || r.starts_with(&up.prefix))
            {
                self.report(
                    format!("{place}, prefix"),
                    format!(
                        "overlaps {reserved}, which the gateway serves itself — choose another \
                         prefix"
                    ),
                );
            }
            if let Some(first) = seen.get(up.prefix.as_str()) {
                self.report(
                    format!("{place}, prefix"),
                    format!(
                        "is also the prefix of upstreams[{first}] of this region; a prefix names \
                         one service — remove one of them"
                    ),
                );
            } else {
                seen.insert(&up.prefix, i);
            }
            if let Err(message) = check_upstream_url(&up.url) {
                self.report(format!("{place}, url"), message);
            }
            let protocol = match up.protocol.as_deref() {
                None => Some(UpstreamProtocol::Http1),
                Some(text) => {
                    let found = UpstreamProtocol::ALL
                        .into_iter()
                        .find(|p| p.as_str() == text);
                    if found.is_none() {
                        self.report(
                            format!("{place}, protocol"),
                            format!(
                                "{text:?} is not an upstream protocol — use \"http1\" (the \
                                 default) or \"h2c\" (HTTP/2 without TLS)"
                            ),
                        );
                    }
                    found
                }
            };
            if let Some(protocol) = protocol {
                out.push(Upstream {
                    prefix: up.prefix.clone(),
                    url: up.url.trim_end_matches('/').to_string(),
                    protocol,
                });
            }
        }
        (self.problems.len() == before).then_some(out)
    }
}

fn decode_public_key(text: &str) -> Result<[u8; 32], String> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(text.trim()).ok())
        .ok_or_else(|| {
            "is not base64 — paste the public_key value of the .pub file `homeport ticket \
             keygen` wrote, or use public_key_file"
                .to_string()
        })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes; an Ed25519 public key is 32 bytes — paste the public_key value \
             of the .pub file `homeport ticket keygen` wrote",
            bytes.len()
        )
    })
}

/// `http://host:port` with nothing after the authority but an optional '/'.
fn check_upstream_url(url: &str) -> Result<(), String> {
    const FORM: &str = "write it as http://IP:port (h2c or HTTP/1.1 without TLS)";
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} does not start with http:// — {FORM}"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!(
            "{url:?} has a path; the request's own path is sent as it is — {FORM}"
        ));
    }
    if authority.parse::<SocketAddr>().is_err() {
        return Err(format!(
            "{url:?} does not name an IP:port (hostnames are not resolved) — {FORM}"
        ));
    }
    Ok(())
}

/// Returns the URL without a trailing '/'.
fn check_public_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            if rest.trim_end_matches('/').contains(['/', '?', '#', ' ']) {
                return Err(format!(
                    "{url:?} has a path, query or space; redirects append the request's own \
                     path — write it as http(s)://host[:port]"
                ));
            }
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(format!(
            "{url:?} is not http(s)://host[:port] — write where clients reach this region's \
             gateways, e.g. \"https://sh.example.com\""
        )),
    }
}
