//! WeChat IDs through the gateway's real HTTP router (`/v1/wechat-ids/{id}`), tickets included:
//! claim (201/200/409), release (204/200/403), lookup (200/404), every syntax rule a 400 before
//! the registry is asked, "outcome unknown" a 503 that says a retry is safe, and the owner hidden
//! unless it is the caller's or the deployment reveals owners. The gateway runs in this process
//! with an in-memory registry behind its `WechatIds` trait.

mod gateway_common;
mod regions_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use gateway_common::{call, code, spec};
use homeport_gateway::homes::BoxFuture;
use homeport_gateway::wechat_ids::{
    ClaimOutcome, InMemoryWechatIds, ReleaseOutcome, WechatIdError, WechatIds, WxId,
};
use homeport_gateway::{GatewayOptions, RunningGateway};
use homeport_integration::{Cluster, GatewaySetup};
use hyper::{Method, StatusCode};
use regions_common::{Resp, bin, fast_setup};

/// Counts the calls that reach the registry, so a test can see that a bad ID never does.
struct Counting {
    inner: InMemoryWechatIds,
    calls: AtomicUsize,
}

impl WechatIds for Counting {
    fn claim<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ClaimOutcome, WechatIdError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(id, uid)
    }

    fn release<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, WechatIdError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.release(id, uid)
    }

    fn lookup<'a>(&'a self, id: &'a WxId) -> BoxFuture<'a, Result<Option<String>, WechatIdError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(id)
    }
}

/// A cluster directory (config, certificates, ticket key; no process started) and region sh's
/// gateway running in this process on ephemeral ports.
async fn gateway(
    settings: &[&str],
    ids: Option<Arc<dyn WechatIds>>,
) -> Result<(Cluster, RunningGateway)> {
    let setup = GatewaySetup {
        settings: settings.iter().map(|s| s.to_string()).collect(),
        region_toml: Vec::new(),
    };
    let cluster = Cluster::with_gateways(bin(), &spec(&["sh"]), &fast_setup(), &setup)?;
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;
    let options = GatewayOptions {
        http_addr: Some(any_port),
        quic_addr: Some(any_port),
        admin_addr: Some(any_port),
        resolver: None,
        wechat_ids: ids,
    };
    let running = homeport_gateway::start(Arc::new(cluster.deployment.clone()), "sh", options)
        .await
        .context("starting the gateway in-process")?;
    Ok((cluster, running))
}

fn url(gw: &RunningGateway, id: &str) -> String {
    format!("http://{}/v1/wechat-ids/{id}", gw.http_addr())
}

fn json_field(r: &Resp, field: &str) -> Option<serde_json::Value> {
    r.json().ok().and_then(|v| v.get(field).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_release_and_lookup_answer_every_case_and_hide_the_owner() -> Result<()> {
    let ids = Arc::new(Counting {
        inner: InMemoryWechatIds::new(),
        calls: AtomicUsize::new(0),
    });
    let (cluster, gw) = gateway(&[], Some(ids.clone())).await?;
    let (zhang, li) = (cluster.ticket("sh-zhang")?, cluster.ticket("sh-li")?);
    let id = url(&gw, "Zhang_San-88");

    // Tickets first: no ticket, no answer about the ID.
    let r = call(Method::PUT, &id, None, &[], "").await?;
    ensure!(
        r.status == StatusCode::UNAUTHORIZED && code(&r) == "ticket_missing",
        "no ticket: {r:?}"
    );
    let r = call(Method::GET, &id, Some("hp1.x.y.z"), &[], "").await?;
    ensure!(r.status == StatusCode::UNAUTHORIZED, "bad ticket: {r:?}");

    // Free: 404 with held=false.
    let r = call(Method::GET, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::NOT_FOUND
            && code(&r) == "wechat_id_free"
            && json_field(&r, "held") == Some(false.into()),
        "lookup of a free ID: {r:?}"
    );

    // Claim: 201, then 200 on a retry (also in another case: IDs are case-insensitive).
    let r = call(Method::PUT, &id, Some(&zhang), &[], "").await?;
    ensure!(r.status == StatusCode::CREATED, "first claim: {r:?}");
    ensure!(
        json_field(&r, "id") == Some("zhang_san-88".into())
            && json_field(&r, "owner") == Some("sh-zhang".into())
            && r.header("location") == Some("/v1/wechat-ids/zhang_san-88"),
        "first claim's body and Location: {r:?}"
    );
    let r = call(
        Method::PUT,
        &url(&gw, "zhang_san-88"),
        Some(&zhang),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK && json_field(&r, "held") == Some(true.into()),
        "repeated claim: {r:?}"
    );

    // Another user: 409 without the owner; release refused 403 without the owner.
    let r = call(Method::PUT, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::CONFLICT
            && code(&r) == "wechat_id_taken"
            && json_field(&r, "owner").is_none()
            && !r.text().contains("sh-zhang"),
        "claim of a taken ID must not name its owner: {r:?}"
    );
    let r = call(Method::DELETE, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN
            && code(&r) == "not_wechat_id_owner"
            && !r.text().contains("sh-zhang"),
        "release by another user: {r:?}"
    );

    // Lookup: the owner sees itself, another user sees only that it is held.
    let r = call(Method::GET, &id, Some(&zhang), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && json_field(&r, "owner") == Some("sh-zhang".into()),
        "owner's lookup: {r:?}"
    );
    let r = call(Method::GET, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK
            && json_field(&r, "held") == Some(true.into())
            && json_field(&r, "owner").is_none(),
        "another user's lookup: {r:?}"
    );

    // Release: 204, then 200 (already free), and the ID is claimable again.
    let r = call(Method::DELETE, &id, Some(&zhang), &[], "").await?;
    ensure!(
        r.status == StatusCode::NO_CONTENT && r.body.is_empty(),
        "release: {r:?}"
    );
    let r = call(Method::DELETE, &id, Some(&zhang), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && json_field(&r, "held") == Some(false.into()),
        "repeated release: {r:?}"
    );
    let r = call(Method::PUT, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "claim after release: {r:?}"
    );

    // Methods the route does not serve.
    let r = call(Method::POST, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::METHOD_NOT_ALLOWED && r.header("allow") == Some("GET, PUT, DELETE"),
        "POST: {r:?}"
    );

    // Outcome unknown: 503 with Retry-After, saying the claim may still take effect.
    ids.inner.set_unavailable(true);
    let r = call(Method::PUT, &url(&gw, "wang_wu_1"), Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::SERVICE_UNAVAILABLE
            && code(&r) == "registry_outcome_unknown"
            && r.header("retry-after").is_some()
            && json_field(&r, "may_have_taken_effect") == Some(true.into())
            && r.text().contains("may still take effect"),
        "claim without a registry decision: {r:?}"
    );
    let r = call(Method::GET, &url(&gw, "wang_wu_1"), Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.header("retry-after").is_some(),
        "lookup without a registry answer: {r:?}"
    );
    ids.inner.set_unavailable(false);

    // Every syntax rule: 400 with the rule's name and message, and the registry never asked.
    let before = ids.calls.load(Ordering::SeqCst);
    let cases = [
        ("abc", "too_short", "at least 6"),
        ("a23456789012345678901", "too_long", "at most 20"),
        (
            "1abcdef",
            "must_start_with_letter",
            "must start with a letter",
        ),
        ("abc%20def", "bad_character", "only letters"),
        ("abc.def", "bad_character", "only letters"),
        ("nobody", "reserved_word", "reserved word"),
        ("Admin_Zhang", "reserved_prefix", "reserved for the service"),
    ];
    for (raw, rule, says) in cases {
        let r = call(Method::PUT, &url(&gw, raw), Some(&li), &[], "").await?;
        ensure!(
            r.status == StatusCode::BAD_REQUEST
                && code(&r) == "bad_wechat_id"
                && json_field(&r, "rule") == Some(rule.into())
                && r.text().contains(says),
            "{raw:?} must be refused by rule {rule}: {r:?}"
        );
    }
    let r = call(Method::GET, &url(&gw, "abc%zz"), Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::BAD_REQUEST && code(&r) == "bad_path",
        "bad escape: {r:?}"
    );
    ensure!(
        ids.calls.load(Ordering::SeqCst) == before,
        "a syntactically bad ID reached the registry"
    );
    gw.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_shown_when_the_deployment_reveals_it() -> Result<()> {
    let ids: Arc<dyn WechatIds> = Arc::new(InMemoryWechatIds::new());
    let (cluster, gw) = gateway(&["reveal_wechat_id_owner = true"], Some(ids)).await?;
    let (zhang, li) = (cluster.ticket("sh-zhang")?, cluster.ticket("sh-li")?);
    let id = url(&gw, "li_si_007");
    let r = call(Method::PUT, &id, Some(&zhang), &[], "").await?;
    ensure!(r.status == StatusCode::CREATED, "claim: {r:?}");
    let r = call(Method::PUT, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::CONFLICT && json_field(&r, "owner") == Some("sh-zhang".into()),
        "409 with the owner: {r:?}"
    );
    let r = call(Method::GET, &id, Some(&li), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && json_field(&r, "owner") == Some("sh-zhang".into()),
        "lookup with the owner: {r:?}"
    );
    gw.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_the_routes_say_so() -> Result<()> {
    let (cluster, gw) = gateway(&[], None).await?;
    let t = cluster.ticket("sh-zhang")?;
    for m in [Method::GET, Method::PUT, Method::DELETE] {
        let r = call(m.clone(), &url(&gw, "zhang_san"), Some(&t), &[], "").await?;
        ensure!(
            r.status == StatusCode::SERVICE_UNAVAILABLE
                && code(&r) == "registry_not_configured"
                && r.header("retry-after").is_some(),
            "{m} without a registry: {r:?}"
        );
    }
    // Syntax is still checked first.
    let r = call(Method::PUT, &url(&gw, "abc"), Some(&t), &[], "").await?;
    ensure!(r.status == StatusCode::BAD_REQUEST, "bad ID: {r:?}");
    gw.shutdown().await;
    Ok(())
}
