//! A region cut off by the WAN: the others keep taking writes and replicating between
//! themselves, the cut-off region's lag shows it falling behind, and after the heal it catches up
//! until every region holds the same records.

mod regions_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, bail, ensure};
use homeport_integration::wan::LinkConditions;
use hyper::StatusCode;
use regions_common::{
    Api, REGIONS, WAIT_MS, Want, eventually, fast_setup, region_logs, spec, start, uniform_wan,
};

/// One-way delay between every pair of regions.
const WAN_DELAY_MS: u64 = 10;
/// Lag of the cut-off region that shows it is falling behind: heartbeats come every 200 ms, so
/// a healthy pair stays far below it.
const LAG_GROWN_SECS: f64 = 2.0;
/// Lag after the heal that counts as caught up.
const LAG_HEALED_SECS: f64 = 1.5;

/// Writes `<region>-3xx/k<n>` at `region` until `stop`; returns how many. Any write that is not
/// a success fails the test: a partition elsewhere must not disturb a region's own writes.
async fn write_until(
    api: Api,
    region: &'static str,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Result<usize> {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let uid = format!("{region}-{}", 300 + n % 5);
        let r = api
            .put(region, &uid, &format!("k{n}"), &format!("v{n}"), &[])
            .await?;
        if r.status != StatusCode::CREATED {
            bail!("write {n} at {region} during the partition: {r:?}");
        }
        n += 1;
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(n)
}

async fn lag_seconds(api: &Api, region: &str, source: &str) -> Result<f64, String> {
    let row = api
        .lag(region, source)
        .await
        .map_err(|e| format!("{e:#}"))?;
    match (row["has_heartbeat"].as_bool(), row["lag_seconds"].as_f64()) {
        (Some(true), Some(lag)) => Ok(lag),
        _ => Err(format!("no lag measured yet: {row}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_region_falls_behind_then_catches_up() -> Result<()> {
    let wan = uniform_wan(0x9a27, LinkConditions::delay(WAN_DELAY_MS));
    let cluster = start(&spec(1), &fast_setup(), Some(&wan)).await?;
    let api = Api::new(&cluster)?;

    // Before: every pair replicates and ca's lag from both sources is small.
    for (region, uid) in [("sh", "sh-1"), ("hk", "hk-1")] {
        let r = api.put(region, uid, "before", "x", &[]).await?;
        ensure!(r.status == StatusCode::CREATED, "{r:?}");
    }
    api.wait_converged(&cluster, WAIT_MS).await?;
    for source in ["sh", "hk"] {
        eventually(
            &format!("ca's lag from {source} to be small"),
            WAIT_MS,
            || async {
                let lag = lag_seconds(&api, "ca", source).await?;
                if lag < LAG_HEALED_SECS {
                    Ok(())
                } else {
                    Err(format!("lag {lag} s"))
                }
            },
        )
        .await?;
    }

    wan.partition_region("ca");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = ["sh", "hk"]
        .into_iter()
        .map(|r| tokio::spawn(write_until(api.clone(), r, stop.clone(), done.clone())))
        .collect();

    // sh and hk keep replicating to each other.
    let r = api.put("sh", "sh-1", "during", "cut", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "{r:?}");
    api.wait_record(&cluster, "hk", "sh-1", "during", Want::Value(1, "cut"))
        .await?;
    let r = api.put("hk", "hk-1", "during", "cut", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "{r:?}");
    api.wait_record(&cluster, "sh", "hk-1", "during", Want::Value(1, "cut"))
        .await?;

    // ca's lag grows while it hears nothing.
    let mut peak = 0.0f64;
    for source in ["sh", "hk"] {
        let lag = eventually(
            &format!("ca's lag from {source} to grow"),
            WAIT_MS,
            || async {
                let lag = lag_seconds(&api, "ca", source).await?;
                if lag > LAG_GROWN_SECS {
                    Ok(lag)
                } else {
                    Err(format!("lag {lag} s"))
                }
            },
        )
        .await?;
        peak = peak.max(lag);
    }
    // ...and shows sh's queue nodes as unreachable rather than as they were before the cut.
    let during = eventually(
        "ca to see sh's queue nodes as unreachable",
        WAIT_MS,
        || async {
            let row = api.lag("ca", "sh").await.map_err(|e| format!("{e:#}"))?;
            match (row["nodes_reachable"].as_u64(), row["nodes_total"].as_u64()) {
                (Some(up), Some(all)) if all > 0 && up < all => Ok(row),
                _ => Err(row.to_string()),
            }
        },
    )
    .await?;
    // The partition is real: ca has none of what was written meanwhile.
    for (uid, key) in [("sh-1", "during"), ("hk-1", "during")] {
        let r = api.get("ca", uid, key).await?;
        ensure!(
            r.status == StatusCode::NOT_FOUND,
            "ca should not see {uid}/{key} while cut off: {r:?}"
        );
    }
    ensure!(
        done.load(Ordering::SeqCst) > 0,
        "sh and hk should have taken writes during the partition"
    );

    for other in ["sh", "hk"] {
        let stats = wan.stats(other, "ca");
        ensure!(
            stats.dropped_partition > 0,
            "the partition should have dropped datagrams {other} -> ca: {stats:?}"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    wan.heal_region("ca");

    let digest = api.wait_converged(&cluster, WAIT_MS).await?;
    // 2 "before" + 2 "during" + one record per stream write.
    let expected = 4 + written as u64;
    ensure!(
        digest["records"] == expected,
        "expected {expected} records: {digest}{}",
        region_logs(&cluster)
    );
    for region in REGIONS {
        api.wait_record(&cluster, region, "hk-1", "during", Want::Value(1, "cut"))
            .await?;
    }
    for source in ["sh", "hk"] {
        eventually(
            &format!("ca's lag from {source} to be small again"),
            WAIT_MS,
            || async {
                let lag = lag_seconds(&api, "ca", source).await?;
                if lag < LAG_HEALED_SECS {
                    Ok(())
                } else {
                    Err(format!("lag {lag} s"))
                }
            },
        )
        .await?;
    }
    eprintln!("ca's lag row for sh during the partition: {during}");
    eprintln!(
        "partition: {written} writes at sh and hk while ca was cut off; ca's lag peaked at {peak:.1} s"
    );
    Ok(())
}
