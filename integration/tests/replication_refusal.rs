//! Only a user's home decides their changes: a change arriving through a region that is not the
//! user's home is refused by every replica and counted in its lag table, and replay goes on.

mod regions_common;

use anyhow::{Result, ensure};
use bytes::Bytes;
use homeport_queue::producer::Producer;
use homeport_wire::pb;
use hyper::StatusCode;
use prost::Message;
use regions_common::{
    Api, REGIONS, WAIT_MS, Want, eventually, fast_setup, process, region_logs, spec, start,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_a_region_that_is_not_the_home_are_refused_and_counted() -> Result<()> {
    let cluster = start(&spec(1), &fast_setup(), None).await?;
    let api = Api::new(&cluster)?;

    // The real record, written at its home (hk) and replicated.
    let r = api.put("hk", "hk-7", "profile", "real", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "{r:?}");
    for region in REGIONS {
        api.wait_record(&cluster, region, "hk-7", "profile", Want::Value(1, "real"))
            .await?;
    }

    // Forged changes on sh's queue, appended with sh's own identity (as a compromised or buggy
    // sh would): one for an hk user claiming sh is home, one for a ca user that admits ca is home.
    let endpoint = cluster.endpoint(&process("sh"))?;
    let producer = Producer::for_region(&cluster.deployment, "sh", &endpoint)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let forged = [
        pb::Change {
            uid: "hk-7".into(),
            key: "profile".into(),
            version: 99,
            value: Bytes::from_static(b"forged"),
            home_region: "sh".into(),
            ..Default::default()
        },
        pb::Change {
            uid: "hk-7".into(),
            key: "planted".into(),
            version: 99,
            value: Bytes::from_static(b"forged"),
            home_region: "sh".into(),
            ..Default::default()
        },
        pb::Change {
            uid: "ca-3".into(),
            key: "planted".into(),
            version: 5,
            value: Bytes::from_static(b"forged"),
            home_region: "ca".into(),
            ..Default::default()
        },
    ];
    let entries: Vec<pb::Entry> = forged
        .iter()
        .map(|c| producer.new_entry(pb::EntryKind::Change, Bytes::from(c.encode_to_vec())))
        .collect();
    producer.append(&entries).await?;

    // Both replicas of sh process them and refuse all three.
    for region in ["hk", "ca"] {
        eventually(
            &format!("{region} to refuse the forged changes"),
            WAIT_MS,
            || async {
                let row = api.lag(region, "sh").await.map_err(|e| format!("{e:#}"))?;
                if row["refused_changes"].as_u64().unwrap_or(0) >= forged.len() as u64 {
                    Ok(())
                } else {
                    Err(row.to_string())
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", region_logs(&cluster)))?;
    }

    // Nothing of them was applied anywhere.
    for region in REGIONS {
        let r = api.get(region, "hk-7", "profile").await?;
        ensure!(
            r.status == StatusCode::OK && r.etag() == Some(1) && r.body == "real",
            "{region}: hk-7/profile must still be the real version 1: {r:?}"
        );
        for uid in ["hk-7", "ca-3"] {
            let r = api.get(region, uid, "planted").await?;
            ensure!(
                r.status == StatusCode::NOT_FOUND && r.etag().is_none(),
                "{region}: {uid}/planted must not exist: {r:?}"
            );
        }
    }

    // Refusing is not stopping: sh's genuine changes still replicate, and every region agrees.
    let r = api.put("sh", "sh-8", "after", "genuine", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "{r:?}");
    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-8", "after", Want::Value(1, "genuine"))
            .await?;
    }
    let digest = api.wait_converged(&cluster, WAIT_MS).await?;
    ensure!(
        digest["records"] == 2,
        "only the two genuine records: {digest}"
    );
    let log = cluster.node_log(&process("ca"));
    ensure!(
        log.contains("refused a change from a region that is not the user's home"),
        "ca logs each refusal:\n{log}"
    );
    Ok(())
}
