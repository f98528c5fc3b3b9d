//! Crashes (`kill -9`) of region processes: a replay worker killed mid-stream applies every
//! change exactly once in effect after its restart; a home killed between its store transaction
//! and the queue append still ships the change (the outbox) once it is back.

mod regions_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail, ensure};
use homeport_integration::Cluster;
use hyper::StatusCode;
use regions_common::{
    Api, REGIONS, WAIT_MS, Want, eventually, fast_setup, process, region_logs, restart_region,
    spec, start,
};

/// Writes of the background stream in the replay-crash test.
const STREAM_WRITES: usize = 500;
/// Concurrent writers of the stream; each owns its own records, so each record's last version
/// and value are known exactly.
const STREAM_WRITERS: usize = 4;
/// Distinct (uid, key) records the stream writes, spread over 10 users.
const STREAM_RECORDS: usize = 100;
/// Writes done before the replay worker is killed, and before it is restarted.
const KILL_AFTER_WRITES: usize = 100;
const RESTART_AFTER_WRITES: usize = 250;

fn record_of(i: usize) -> (String, String) {
    let r = i % STREAM_RECORDS;
    (format!("sh-{}", 100 + r / 10), format!("k{}", r % 10))
}

/// What the stream last wrote per record: (version, value).
type Written = HashMap<(String, String), (u64, String)>;

/// Writer `w` writes its share of `STREAM_WRITES` to sh, one after the other.
async fn write_stream(api: Api, w: usize, done: Arc<AtomicUsize>) -> Result<Written> {
    let mut last = Written::new();
    for i in (w..STREAM_WRITES).step_by(STREAM_WRITERS) {
        let (uid, key) = record_of(i);
        let value = format!("write-{i}");
        let r = api.put("sh", &uid, &key, &value, &[]).await?;
        // 503: durable at home, not yet on the queue; it ships by itself, so it counts as written.
        let accepted = r.status.is_success() || r.status == StatusCode::SERVICE_UNAVAILABLE;
        let Some(version) = r.etag().filter(|_| accepted) else {
            bail!("write {i} ({uid}/{key}) failed: {r:?}");
        };
        if let Some((prev, _)) = last.get(&(uid.clone(), key.clone())) {
            ensure!(
                version == prev + 1,
                "{uid}/{key}: version {version} after {prev}"
            );
        }
        last.insert((uid, key), (version, value));
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(last)
}

async fn wait_writes(done: &AtomicUsize, n: usize) -> Result<()> {
    eventually(&format!("{n} writes of the stream"), WAIT_MS, || async {
        let d = done.load(Ordering::SeqCst);
        if d >= n {
            Ok(())
        } else {
            Err(format!("{d} done"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_worker_killed_mid_stream_applies_every_change_once() -> Result<()> {
    let cluster = start(&spec(1), &fast_setup(), None).await?;
    let api = Api::new(&cluster)?;

    let done = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..STREAM_WRITERS)
        .map(|w| tokio::spawn(write_stream(api.clone(), w, done.clone())))
        .collect();

    wait_writes(&done, KILL_AFTER_WRITES).await?;
    // Make sure hk is in the middle of applying the stream, not idle, when it dies.
    eventually("hk to have applied some of the stream", WAIT_MS, || async {
        let row = api.lag("hk", "sh").await.map_err(|e| format!("{e:#}"))?;
        if row["applied_changes"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(row.to_string())
        }
    })
    .await?;
    cluster.kill_node(&process("hk"))?;
    wait_writes(&done, RESTART_AFTER_WRITES).await?;
    restart_region(&cluster, "hk").await?;

    let mut written = Written::new();
    for w in writers {
        written.extend(w.await??);
    }
    ensure!(
        written.len() == STREAM_RECORDS,
        "{} records written",
        written.len()
    );

    let digest = api.wait_converged(&cluster, WAIT_MS).await?;
    ensure!(
        digest["records"] == STREAM_RECORDS as u64,
        "expected {STREAM_RECORDS} records: {digest}"
    );
    // Equal digests could still all be wrong: every record must be at its last written version.
    for region in REGIONS {
        for ((uid, key), (version, value)) in &written {
            let r = api.get(region, uid, key).await?;
            ensure!(
                r.status == StatusCode::OK
                    && r.etag() == Some(*version)
                    && r.body == value.as_bytes(),
                "{region}: {uid}/{key} should be version {version} {value:?}, is {r:?}{}",
                region_logs(&cluster)
            );
        }
    }
    let log = cluster.node_log(&process("hk"));
    ensure!(
        log.matches("replay worker started").count() >= 4,
        "hk's replay workers (2 sources) should have started twice:\n{log}"
    );
    Ok(())
}

/// The node ids of every queue group of `region`.
fn queue_nodes(cluster: &Cluster, region: &str) -> Vec<String> {
    cluster
        .deployment
        .region(region)
        .map(|r| {
            r.queue_groups
                .iter()
                .flat_map(|g| g.nodes.iter().map(|n| n.id.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_killed_before_the_queue_append_ships_the_change_from_its_outbox() -> Result<()> {
    // A write waits this long for the (dead) queue before answering 503.
    let mut spec = spec(2);
    spec.queue_settings
        .retain(|s| !s.starts_with("append_timeout_ms"));
    let spec = spec.with("append_timeout_ms = 3000");
    let cluster = start(&spec, &fast_setup(), None).await?;
    let api = Api::new(&cluster)?;

    // Replication works to begin with.
    let r = api.put("sh", "sh-1", "before", "ok", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "first write: {r:?}");
    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-1", "before", Want::Value(1, "ok"))
            .await?;
    }

    // No queue group of sh can take an append. Every node, not only 2 of 3 per group: a node left
    // up would store the entry (uncommitted) and replicas reading it would apply the change
    // without the outbox, so the test could not tell whether the outbox shipped it.
    let sh_nodes = queue_nodes(&cluster, "sh");
    ensure!(sh_nodes.len() == 6, "2 groups of 3: {sh_nodes:?}");
    for n in &sh_nodes {
        cluster.kill_node(n)?;
    }
    let r = api.put("sh", "sh-1", "crash", "durable", &[]).await?;
    ensure!(
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.etag() == Some(1),
        "with the queue down a write is durable at home but not shipped: {r:?}{}",
        region_logs(&cluster)
    );
    ensure!(
        r.header("retry-after").is_some(),
        "503 says when to retry: {r:?}"
    );
    api.wait_record(&cluster, "sh", "sh-1", "crash", Want::Value(1, "durable"))
        .await?;

    // The home dies with the change only in its store and outbox.
    cluster.kill_node(&process("sh"))?;
    for region in ["hk", "ca"] {
        let r = api.get(region, "sh-1", "crash").await?;
        ensure!(
            r.status == StatusCode::NOT_FOUND && r.etag().is_none(),
            "{region} cannot have the change before anything shipped it: {r:?}"
        );
    }

    let endpoint = cluster.endpoint(homeport_config::OPERATOR_IDENTITY)?;
    for n in &sh_nodes {
        cluster.start_node(n)?;
    }
    cluster.wait_up(&endpoint, &sh_nodes).await?;
    restart_region(&cluster, "sh").await?;

    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-1", "crash", Want::Value(1, "durable"))
            .await?;
    }
    // The restarted home works as before, and the digests agree.
    let r = api.put("sh", "sh-1", "crash", "after", &[]).await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "write after restart: {r:?}"
    );
    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-1", "crash", Want::Value(2, "after"))
            .await?;
    }
    api.wait_converged(&cluster, WAIT_MS).await?;
    let log = cluster.node_log(&process("sh"));
    ensure!(
        log.contains("re-shipped outbox entries"),
        "the change should have been shipped by the outbox shipper:\n{log}"
    );
    Ok(())
}
