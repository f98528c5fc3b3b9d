//! The gateway's part of the config (`[gateway]`, `[tickets]`, `[regions.gateway]`,
//! `[[regions.upstreams]]`): defaults, what it builds, and every problem with its place and fix.

use std::path::Path;

use homeport_config::{
    ConfigError, Deployment, GatewaySettings, RoutePolicy, TicketKeySource, UpstreamProtocol,
    gateway_identity, parse,
};

/// One region with a process and a gateway; `%TICKETS%` and `%REGION_EXTRA%` are filled in.
const TEMPLATE: &str = r#"
[deployment]
name = "test"

[tls]
ca_cert = "certs/ca.pem"
cert_dir = "certs"

%TICKETS%

[[regions]]
name = "sh"
addr = "127.0.1.1:7000"
api_addr = "127.0.1.1:8000"
admin_addr = "127.0.1.1:9000"
%REGION_EXTRA%

[[regions.queue_groups]]
name = "g1"
nodes = [
  { id = "sh-g1-a", addr = "127.0.1.1:7101", admin_addr = "127.0.1.1:9101", campus = "a" },
  { id = "sh-g1-b", addr = "127.0.1.2:7101", admin_addr = "127.0.1.2:9101", campus = "b" },
  { id = "sh-g1-c", addr = "127.0.1.3:7101", admin_addr = "127.0.1.3:9101", campus = "c" },
]
"#;

const TICKETS: &str = "[[tickets.keys]]\nkid = \"k1\"\npublic_key_file = \"keys/k1.pub\"";
const GATEWAY: &str = "[regions.gateway]\nhttp_addr = \"127.0.1.1:8080\"\nquic_addr = \"127.0.1.1:7080\"\nadmin_addr = \"127.0.1.1:9080\"";

fn text(tickets: &str, region_extra: &str) -> String {
    TEMPLATE
        .replace("%TICKETS%", tickets)
        .replace("%REGION_EXTRA%", region_extra)
}

fn ok(t: &str) -> Deployment {
    parse(t, Path::new("/srv/hp")).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

/// The problems as `place: message` lines.
fn problems(t: &str) -> Vec<String> {
    match parse(t, Path::new("/srv/hp")) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected problems, got {other:?}\n{t}"),
    }
}

fn has(problems: &[String], place: &str, words: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(place) && p.contains(words)),
        "no problem at {place:?} mentioning {words:?} in:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_gateway_with_defaults_builds() {
    let d = ok(&text(TICKETS, GATEWAY));
    assert_eq!(d.gateway, GatewaySettings::default());
    let g = d.regions[0].gateway.as_ref().expect("gateway");
    assert_eq!(g.http_addr.to_string(), "127.0.1.1:8080");
    assert_eq!(g.public_url, "http://127.0.1.1:8080");
    assert_eq!(d.tickets.keys[0].kid, "k1");
    assert_eq!(
        d.tickets.keys[0].public_key,
        TicketKeySource::File("/srv/hp/keys/k1.pub".into())
    );
    assert!(d.identities().contains(&gateway_identity("sh")));
}

#[test]
fn no_gateway_needs_no_ticket_keys() {
    let d = ok(&text("", ""));
    assert!(d.regions[0].gateway.is_none());
    assert!(d.tickets.keys.is_empty());
}

#[test]
fn settings_routes_upstreams_and_inline_keys_are_read() {
    let tickets = "[gateway]\nmax_concurrency = 8\ndefault_policy = \"forward\"\n\
        [[gateway.routes]]\nprefix = \"/v1/users/\"\npolicy = \"redirect\"\n\
        [tickets]\nmax_ttl_secs = 600\n[[tickets.keys]]\nkid = \"k2\"\n\
        public_key = \"A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg\"";
    let region = format!(
        "{GATEWAY}\npublic_url = \"https://sh.example.com/\"\n\
         [[regions.upstreams]]\nprefix = \"/chat/\"\nurl = \"http://127.0.0.1:9999/\"\nprotocol = \"h2c\""
    );
    let d = ok(&text(tickets, &region));
    assert_eq!(d.gateway.max_concurrency, 8);
    assert_eq!(
        d.gateway.policy_for("/v1/users/sh-1"),
        RoutePolicy::Redirect
    );
    assert_eq!(d.gateway.policy_for("/chat/x"), RoutePolicy::Forward);
    assert_eq!(d.tickets.max_ttl_secs, 600);
    assert!(matches!(
        d.tickets.keys[0].public_key,
        TicketKeySource::Inline(_)
    ));
    let r = &d.regions[0];
    assert_eq!(
        r.gateway.as_ref().map(|g| g.public_url.as_str()),
        Some("https://sh.example.com")
    );
    assert_eq!(r.upstreams[0].url, "http://127.0.0.1:9999");
    assert_eq!(r.upstreams[0].protocol, UpstreamProtocol::H2c);
}

#[test]
fn a_gateway_without_keys_is_refused() {
    let p = problems(&text("", GATEWAY));
    has(&p, "tickets.keys", "homeport ticket keygen");
}

#[test]
fn every_gateway_problem_is_reported_with_its_place() {
    let tickets = "[gateway]\nmax_concurrency = 0\nqueue_deadline_ms = 999999\n\
        default_policy = \"teleport\"\n[[gateway.routes]]\nprefix = \"v1\"\npolicy = \"forward\"\n\
        [tickets]\nmax_ttl_secs = 0\n\
        [[tickets.keys]]\nkid = \"K 1\"\npublic_key = \"!!!\"\n\
        [[tickets.keys]]\nkid = \"k2\"\n\
        [[tickets.keys]]\nkid = \"k3\"\npublic_key = \"AAAA\"\npublic_key_file = \"x.pub\"";
    let region = "[regions.gateway]\nhttp_addr = \"127.0.1.1:8000\"\nquic_addr = \"nope\"\n\
        admin_addr = \"127.0.1.1:9081\"\npublic_url = \"ftp://x\"\n\
        [[regions.upstreams]]\nprefix = \"/v1/users/x\"\nurl = \"http://127.0.0.1:1/path\"\n\
        [[regions.upstreams]]\nprefix = \"/chat/\"\nurl = \"https://x\"\nprotocol = \"h3\"";
    let p = problems(&text(tickets, region));
    has(&p, "gateway.max_concurrency", "below the minimum");
    has(&p, "gateway.queue_deadline_ms", "above the limit");
    has(&p, "gateway.default_policy", "\"redirect\"");
    has(&p, "gateway.routes[0] \"v1\", prefix", "start with '/'");
    has(&p, "tickets.max_ttl_secs", "below the minimum");
    has(&p, "tickets.keys[0] \"K 1\", kid", "lowercase");
    has(&p, "tickets.keys[0] \"K 1\", public_key", "not base64");
    has(&p, "tickets.keys[1] \"k2\"", "has no key");
    has(&p, "tickets.keys[2] \"k3\"", "both");
    has(
        &p,
        "regions[0] \"sh\", gateway, http_addr",
        "also the api_addr",
    );
    has(&p, "regions[0] \"sh\", gateway, quic_addr", "IP:port");
    has(&p, "regions[0] \"sh\", gateway, public_url", "http(s)://");
    has(&p, "regions[0] \"sh\", upstreams[0]", "/v1/users");
    has(&p, "regions[0] \"sh\", upstreams[0]", "has a path");
    has(
        &p,
        "regions[0] \"sh\", upstreams[1]",
        "does not start with http://",
    );
    has(&p, "regions[0] \"sh\", upstreams[1]", "\"h2c\"");
}

#[test]
fn a_gateway_needs_its_region_process() {
    let t = text(TICKETS, GATEWAY)
        .replace("addr = \"127.0.1.1:7000\"\n", "")
        .replace("api_addr = \"127.0.1.1:8000\"\n", "")
        .replace("admin_addr = \"127.0.1.1:9000\"\n", "");
    let p = problems(&t);
    has(&p, "regions[0] \"sh\", gateway", "no process");
}

#[test]
fn node_ids_may_not_take_gateway_names() {
    let t = text(TICKETS, GATEWAY).replace("\"sh-g1-a\"", "\"gateway-x\"");
    let p = problems(&t);
    has(
        &p,
        "regions[0] \"sh\", queue_groups[0]",
        "reserved for gateway",
    );
}
