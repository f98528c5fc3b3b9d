//! Home routing across two regions behind an emulated WAN: roaming users are redirected home in
//! both directions (and following the redirect works), routes with policy `forward` are carried
//! home over the inter-region QUIC link instead, `latest` reads are forwarded, `whereis` answers.

mod gateway_common;
mod regions_common;

use anyhow::{Result, ensure};
use gateway_common::{call, code, logs, metric, start};
use homeport_gateway::{FORWARDED_FROM_HEADER, HOME_REGION_HEADER};
use homeport_integration::GatewaySetup;
use homeport_integration::wan::LinkConditions;
use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use regions_common::{WAIT_MS, eventually};

const REGIONS: [&str; 2] = ["sh", "hk"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roaming_users_are_redirected_home_and_forward_routes_go_over_quic() -> Result<()> {
    let wan = regions_common::uniform_wan(
        0x6a7e,
        LinkConditions {
            delay_ms: 20,
            jitter_ms: 2,
            ..LinkConditions::default()
        },
    );
    // Users hk-fwd* are forwarded; everyone else is redirected.
    let setup = GatewaySetup {
        settings: vec![
            "[[gateway.routes]]\nprefix = \"/v1/users/hk-fwd\"\npolicy = \"forward\"".into(),
        ],
        region_toml: Vec::new(),
    };
    let cluster = start(&REGIONS, &setup, Some(&wan)).await?;
    let logs = || logs(&cluster, &REGIONS);
    let sh = cluster.gateway_url("sh")?;
    let hk = cluster.gateway_url("hk")?;

    // sh user roaming in hk: 307 to sh's gateway, same path, body not consumed.
    let t_sh = cluster.ticket("sh-1")?;
    let path = "/v1/users/sh-1/records/profile";
    let r = call(
        Method::PUT,
        &format!("{hk}{path}"),
        Some(&t_sh),
        &[],
        "from hk",
    )
    .await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT,
        "sh user at hk: {r:?}{}",
        logs()
    );
    ensure!(
        r.header(HOME_REGION_HEADER) == Some("sh"),
        "home header: {r:?}"
    );
    let location = r.header(LOCATION.as_str()).unwrap_or_default().to_owned();
    ensure!(location == format!("{sh}{path}"), "Location {location:?}");
    ensure!(code(&r) == "not_home", "named reason: {r:?}");
    let r = call(Method::PUT, &location, Some(&t_sh), &[], "from hk").await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "following the redirect: {r:?}"
    );
    // Own reads go home too, with their query.
    let r = call(
        Method::GET,
        &format!("{hk}{path}?consistency=any"),
        Some(&t_sh),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT
            && r.header(LOCATION.as_str()) == Some(&format!("{sh}{path}?consistency=any")),
        "own read at hk: {r:?}"
    );

    // hk user roaming in sh: 307 the other way.
    let t_hk = cluster.ticket("hk-1")?;
    let path_hk = "/v1/users/hk-1/records/profile";
    let r = call(
        Method::DELETE,
        &format!("{sh}{path_hk}"),
        Some(&t_hk),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT
            && r.header(HOME_REGION_HEADER) == Some("hk")
            && r.header(LOCATION.as_str()) == Some(&format!("{hk}{path_hk}")),
        "hk user at sh: {r:?}"
    );
    let r = call(
        Method::PUT,
        &format!("{hk}{path_hk}"),
        Some(&t_hk),
        &[],
        "at home",
    )
    .await?;
    ensure!(r.status == StatusCode::CREATED, "hk user at home: {r:?}");

    // whereis, from either region.
    for gw in [&sh, &hk] {
        let r = call(
            Method::GET,
            &format!("{gw}/v1/whereis/hk-1"),
            Some(&t_sh),
            &[],
            "",
        )
        .await?;
        let v = r.json()?;
        ensure!(
            r.status == StatusCode::OK
                && v["home_region"] == "hk"
                && v["gateway_url"] == hk.as_str(),
            "whereis at {gw}: {r:?}"
        );
    }
    let r = call(
        Method::GET,
        &format!("{sh}/v1/whereis/zz-1"),
        Some(&t_sh),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::NOT_FOUND && code(&r) == "no_home",
        "{r:?}"
    );

    // Policy forward: an hk-fwd user writing at sh is served by hk, through sh.
    let t_fwd = cluster.ticket("hk-fwd1")?;
    let path_fwd = "/v1/users/hk-fwd1/records/k";
    let r = call(
        Method::PUT,
        &format!("{sh}{path_fwd}"),
        Some(&t_fwd),
        &[("if-match", "\"0\"")],
        "forwarded",
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED && r.etag() == Some(1),
        "forwarded PUT: {r:?}{}",
        logs()
    );
    ensure!(
        r.header(FORWARDED_FROM_HEADER) == Some("hk"),
        "served by hk: {r:?}"
    );
    let r = call(
        Method::PUT,
        &format!("{sh}{path_fwd}"),
        Some(&t_fwd),
        &[("if-match", "\"0\"")],
        "again",
    )
    .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED && r.etag() == Some(1),
        "the home's 412 comes back through the forward: {r:?}"
    );
    let r = call(
        Method::GET,
        &format!("{hk}{path_fwd}"),
        Some(&t_fwd),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK && r.text() == "forwarded",
        "the forwarded write is at home: {r:?}"
    );
    // Forwarding needs a good ticket at both ends: a bad one stops at sh.
    let r = call(
        Method::GET,
        &format!("{sh}{path_fwd}"),
        Some("hp1.x.y.z"),
        &[],
        "",
    )
    .await?;
    ensure!(r.status == StatusCode::UNAUTHORIZED, "bad ticket: {r:?}");
    ensure!(metric(&cluster, "sh", "homeport_gateway_forwards_total").await? >= 2.0);

    // Another user's record, read at a replica: `any` locally once replicated, `latest` from
    // home (forwarded, whatever the route policy).
    let t_reader = cluster.ticket("hk-2")?;
    let url_any = format!("{hk}{path}");
    eventually("sh-1's profile to replicate to hk", WAIT_MS, || async {
        let r = call(Method::GET, &url_any, Some(&t_reader), &[], "")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if r.status == StatusCode::OK
            && r.text() == "from hk"
            && r.header(FORWARDED_FROM_HEADER).is_none()
        {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await?;
    let r = call(
        Method::GET,
        &format!("{hk}{path}?consistency=latest"),
        Some(&t_reader),
        &[],
        "",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK
            && r.text() == "from hk"
            && r.header(FORWARDED_FROM_HEADER) == Some("sh"),
        "latest comes from home: {r:?}"
    );
    Ok(())
}
