//! Tickets at the gateway: every way a ticket can be wrong is refused with 401/403 and a named
//! reason, never with data; and the record API behind a good ticket (conditional writes: 412).

mod gateway_common;
mod regions_common;

use anyhow::{Result, ensure};
use gateway_common::{call, code, logs, start};
use homeport_gateway::ticket::Claims;
use homeport_integration::GatewaySetup;
use homeport_integration::now_unix_secs as now;
use hyper::{Method, StatusCode};

const SECRET: &str = "the secret value";

/// What is sent, the headers sent, and the status and error code expected.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, StatusCode, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ticket_failure_is_refused_with_its_reason_and_no_data() -> Result<()> {
    let cluster = start(&["sh"], &GatewaySetup::default(), None).await?;
    let logs = || logs(&cluster, &["sh"]);
    let gw = cluster.gateway_url("sh")?;
    let record = format!("{gw}/v1/users/sh-1/records/profile");
    let good = cluster.ticket("sh-1")?;

    let r = call(Method::PUT, &record, Some(&good), &[], SECRET).await?;
    ensure!(r.status == StatusCode::CREATED, "PUT: {r:?}{}", logs());
    let r = call(Method::GET, &record, Some(&good), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && r.text() == SECRET,
        "GET: {r:?}"
    );
    // The alternative header works too.
    let r = call(
        Method::GET,
        &record,
        None,
        &[("homeport-ticket", &good)],
        "",
    )
    .await?;
    ensure!(r.status == StatusCode::OK, "Homeport-Ticket: {r:?}");

    let t = now();
    let parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let claims = |uid: &str, iat: u64, exp: u64| Claims {
        uid: uid.to_owned(),
        iat,
        exp,
    };
    let expired = cluster.ticket_with(&claims("sh-1", t - 7_200, t - 3_600))?;
    let future = cluster.ticket_with(&claims("sh-1", t + 3_600, t + 7_200))?;
    let too_long = cluster.ticket_with(&claims("sh-1", t, t + 40 * 24 * 3_600))?;
    let unknown_kid = format!("hp1.other.{}.{}", parts[2], parts[3]);
    // Another user's claims under this ticket's signature.
    let other_claims = cluster.ticket("sh-2")?;
    let other_payload = other_claims
        .split('.')
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    let forged = format!("hp1.{}.{other_payload}.{}", parts[1], parts[3]);
    let bad_base64 = format!("hp1.{}.{}.***", parts[1], parts[2]);
    let cases: Vec<Case> = vec![
        (
            "missing",
            vec![],
            StatusCode::UNAUTHORIZED,
            "ticket_missing",
        ),
        (
            "not a bearer",
            vec![("authorization", "Basic c2gtMTpwdw==".into())],
            StatusCode::UNAUTHORIZED,
            "ticket_malformed",
        ),
        (
            "malformed",
            vec![("authorization", "Bearer hello".into())],
            StatusCode::UNAUTHORIZED,
            "ticket_malformed",
        ),
        (
            "bad base64",
            vec![("authorization", format!("Bearer {bad_base64}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_bad_base64",
        ),
        (
            "unknown key",
            vec![("authorization", format!("Bearer {unknown_kid}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_unknown_key",
        ),
        (
            "forged",
            vec![("authorization", format!("Bearer {forged}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_bad_signature",
        ),
        (
            "expired",
            vec![("authorization", format!("Bearer {expired}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_expired",
        ),
        (
            "not yet valid",
            vec![("authorization", format!("Bearer {future}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_not_yet_valid",
        ),
        (
            "valid too long",
            vec![("authorization", format!("Bearer {too_long}"))],
            StatusCode::UNAUTHORIZED,
            "ticket_ttl_too_long",
        ),
    ];
    for (what, headers, status, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let r = call(method.clone(), &record, None, &h, "overwrite").await?;
            ensure!(
                r.status == *status && code(&r) == *want,
                "{what} ({method}): want {status} {want}, got {r:?}"
            );
            ensure!(
                !r.text().contains(SECRET),
                "{what} ({method}) leaked data: {r:?}"
            );
            ensure!(
                r.json()?["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: a reason in the body: {r:?}"
            );
        }
    }

    // A valid ticket of another user may not write or delete this user's records.
    let other = cluster.ticket("sh-2")?;
    for method in [Method::PUT, Method::DELETE] {
        let r = call(method.clone(), &record, Some(&other), &[], "mine now").await?;
        ensure!(
            r.status == StatusCode::FORBIDDEN && code(&r) == "ticket_wrong_user",
            "{method} with another user's ticket: {r:?}"
        );
    }
    let r = call(Method::GET, &record, Some(&good), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && r.text() == SECRET && r.etag() == Some(1),
        "nothing was overwritten: {r:?}"
    );

    // whereis needs a ticket as well.
    let whereis = format!("{gw}/v1/whereis/sh-9");
    let r = call(Method::GET, &whereis, None, &[], "").await?;
    ensure!(
        r.status == StatusCode::UNAUTHORIZED,
        "whereis without: {r:?}"
    );
    let r = call(Method::GET, &whereis, Some(&good), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && r.json()?["home_region"] == "sh",
        "whereis: {r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_through_the_gateway() -> Result<()> {
    let cluster = start(&["sh"], &GatewaySetup::default(), None).await?;
    let gw = cluster.gateway_url("sh")?;
    let record = format!("{gw}/v1/users/sh-5/records/k");
    let t = cluster.ticket("sh-5")?;

    let r = call(
        Method::PUT,
        &record,
        Some(&t),
        &[("if-match", "\"0\"")],
        "a",
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED && r.etag() == Some(1),
        "create with If-Match 0: {r:?}{}",
        logs(&cluster, &["sh"])
    );
    let r = call(
        Method::PUT,
        &record,
        Some(&t),
        &[("if-match", "\"1\"")],
        "b",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "If-Match 1: {r:?}"
    );
    let r = call(
        Method::PUT,
        &record,
        Some(&t),
        &[("if-match", "\"1\"")],
        "c",
    )
    .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED && r.etag() == Some(2),
        "stale If-Match must be 412 with the current ETag: {r:?}"
    );
    let r = call(
        Method::DELETE,
        &record,
        Some(&t),
        &[("if-match", "\"1\"")],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED,
        "stale delete: {r:?}"
    );
    let r = call(Method::GET, &record, Some(&t), &[], "").await?;
    ensure!(
        r.status == StatusCode::OK && r.text() == "b",
        "value kept: {r:?}"
    );
    let r = call(
        Method::DELETE,
        &record,
        Some(&t),
        &[("if-match", "\"2\"")],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(3),
        "delete: {r:?}"
    );
    let r = call(Method::GET, &record, Some(&t), &[], "").await?;
    ensure!(
        r.status == StatusCode::NOT_FOUND && r.etag() == Some(3),
        "tombstone: {r:?}"
    );

    // Routes and methods the gateway does not serve.
    let r = call(Method::POST, &record, Some(&t), &[], "").await?;
    ensure!(
        r.status == StatusCode::METHOD_NOT_ALLOWED && code(&r) == "method_not_allowed",
        "POST on a record: {r:?}"
    );
    let r = call(Method::GET, &format!("{gw}/nothing"), Some(&t), &[], "").await?;
    ensure!(r.status == StatusCode::NOT_FOUND, "unknown path: {r:?}");
    let r = call(
        Method::GET,
        &format!("{record}?consistency=eventual"),
        Some(&t),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::BAD_REQUEST && code(&r) == "bad_consistency",
        "{r:?}"
    );

    // POST /v1/users makes a user homed here; its ticket then works at once.
    let r = call(Method::POST, &format!("{gw}/v1/users"), None, &[], "").await?;
    ensure!(r.status == StatusCode::CREATED, "create user: {r:?}");
    let uid = r.json()?["uid"].as_str().unwrap_or_default().to_owned();
    ensure!(uid.starts_with("sh-"), "a uid homed in sh: {uid:?}");
    let t = cluster.ticket(&uid)?;
    let r = call(
        Method::PUT,
        &format!("{gw}/v1/users/{uid}/records/k"),
        Some(&t),
        &[],
        "x",
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "the new user writes: {r:?}"
    );
    Ok(())
}
