//! A gateway killed with `kill -9` holds nothing that matters: once restarted it serves the same
//! records with the same tickets (the state lives in the region process).

mod gateway_common;
mod regions_common;

use anyhow::{Result, ensure};
use gateway_common::{call, logs, start};
use homeport_integration::GatewaySetup;
use hyper::{Method, StatusCode};
use regions_common::{WAIT_MS, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_comes_back_serving_the_same_data() -> Result<()> {
    let cluster = start(&["sh"], &GatewaySetup::default(), None).await?;
    let gw = cluster.gateway_url("sh")?;
    let record = format!("{gw}/v1/users/sh-1/records/k");
    let t = cluster.ticket("sh-1")?;
    let r = call(Method::PUT, &record, Some(&t), &[], "before").await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "{r:?}{}",
        logs(&cluster, &["sh"])
    );

    let name = homeport_config::gateway_identity("sh");
    cluster.kill_node(&name)?;
    ensure!(
        call(Method::GET, &record, Some(&t), &[], "").await.is_err(),
        "nothing answers while the gateway is down"
    );
    cluster.start_gateway("sh")?;
    eventually(
        "the restarted gateway to serve the record",
        WAIT_MS,
        || async {
            match call(Method::GET, &record, Some(&t), &[], "").await {
                Ok(r) if r.status == StatusCode::OK && r.text() == "before" => Ok(()),
                Ok(r) => Err(format!("{r:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await?;
    let r = call(
        Method::PUT,
        &record,
        Some(&t),
        &[("if-match", "\"1\"")],
        "after",
    )
    .await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "writes after the restart: {r:?}"
    );
    Ok(())
}
