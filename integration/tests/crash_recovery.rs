//! kill -9 of queue nodes in the middle of a write storm: nodes recover by themselves, serve only
//! valid entries, keep everything they acked, and no committed entry is lost.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use common::*;
use homeport_integration::{Cluster, wait_until};
use homeport_queue::producer::Producer;
use tokio::task::JoinSet;

/// Commits between two faults: enough that every fault lands in the middle of many appends and the
/// log spans dozens of segments.
const COMMITS_PER_PHASE: usize = 1_500;

/// Concurrent appenders that write single entries as fast as the queue takes them.
struct Storm {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<anyhow::Result<()>>,
    ledger: Ledger,
}

impl Storm {
    fn start(producer: Arc<Producer>, writers: usize) -> Self {
        let ledger = Ledger::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for w in 0..writers {
            let (p, l, s) = (producer.clone(), ledger.clone(), stop.clone());
            tasks.spawn(async move {
                let tag = format!("storm-w{w}");
                let mut i = 0usize;
                while !s.load(Ordering::Relaxed) {
                    l.append_one(&p, &tag, 64 + (i * 97 + w * 13) % 1400)
                        .await
                        .with_context(|| format!("writer {w}, append {i}"))?;
                    i += 1;
                }
                anyhow::Ok(())
            });
        }
        Self {
            stop,
            tasks,
            ledger,
        }
    }

    /// Waits until `more` entries beyond what is committed now have committed.
    async fn wait_more(&self, more: usize, cluster: &Cluster) -> anyhow::Result<()> {
        let target = self.ledger.len() + more;
        let l = self.ledger.clone();
        let r = wait_until(&format!("{target} commits"), WAIT_MS, || {
            let l = l.clone();
            async move { l.len() >= target }
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("{e} (have {}){}", self.ledger.len(), logs(cluster)))
    }

    /// Stops the writers; every append must have committed (none failed).
    async fn finish(mut self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(r) = self.tasks.join_next().await {
            r??;
        }
        Ok(self.ledger)
    }
}

/// Reads every node of g1 alone and checks what a reader of one node relies on: each entry decodes
/// and carries its appended payload, offsets are contiguous, and every ack a node gave (entry id at
/// an offset) is still there, crash or not.
async fn check_every_node(
    cluster: &Cluster,
    endpoint: &quinn::Endpoint,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let acked = ledger.snapshot();
    for node in group_nodes(cluster, "g1") {
        let client = cluster.node_client(endpoint, &node)?;
        let entries = read_node_all(&client).await?;
        check_entries(&node, &entries, ledger);
        let by_offset: HashMap<u64, Key> = entries
            .iter()
            .filter_map(|(o, b)| homeport_queue::entry::decode(b).ok().map(|e| (*o, key(&e))))
            .collect();
        for (k, (_, c)) in &acked {
            for (n, offset) in &c.acks {
                if *n == node {
                    assert_eq!(
                        by_offset.get(offset),
                        Some(k),
                        "node {node} acked {k:?} at offset {offset}, but no longer holds it there{}",
                        logs(cluster)
                    );
                }
            }
        }
    }
    Ok(())
}

/// Appends a torn frame (a header promising bytes that never arrived) to the node's newest segment,
/// as a crash in the middle of a write leaves it.
fn tear_tail(cluster: &Cluster, node: &str) -> anyhow::Result<u64> {
    use std::io::Write;
    let segs = segment_files(cluster, node)?;
    let last = segs.last().context("the node has no segment files")?;
    let mut torn = Vec::new();
    torn.extend_from_slice(b"hpq1");
    torn.extend_from_slice(&4_000u32.to_le_bytes());
    torn.extend_from_slice(&[0x5a; 9]);
    let mut f = std::fs::OpenOptions::new().append(true).open(last)?;
    f.write_all(&torn)?;
    f.sync_all()?;
    Ok(torn.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_in_write_storm_recovers_and_nothing_is_lost() -> anyhow::Result<()> {
    let (cluster, endpoint) = start(&fast_spec(1)).await?;
    let victim = group_nodes(&cluster, "g1")[1].clone();
    let victim_client = cluster.node_client(&endpoint, &victim)?;
    let incarnation_before = incarnation(&victim_client).await?;
    let producer = Arc::new(producer(&cluster, &endpoint)?);

    let storm = Storm::start(producer.clone(), 16);
    storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
    cluster.kill_node(&victim)?;
    storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
    tear_tail(&cluster, &victim)?;
    let log_before_restart = cluster.node_log(&victim).len();
    restart(&cluster, &endpoint, &victim).await?;
    storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
    let ledger = storm.finish().await?;

    let recovery_log = cluster.node_log(&victim)[log_before_restart..].to_owned();
    // A new client: the old one's connection went to the killed process.
    let victim_client = cluster.node_client(&endpoint, &victim)?;
    assert!(
        recovery_log.contains("log recovered"),
        "the restarted node does not say how it recovered:\n{recovery_log}"
    );
    assert!(
        recovery_log.contains("torn")
            || recovery_log.contains("truncat")
            || recovery_log.contains("cut"),
        "the restarted node does not say that it cut its torn tail:\n{recovery_log}"
    );
    assert_eq!(
        incarnation(&victim_client).await?,
        incarnation_before,
        "a torn tail loses nothing that was acked, so the incarnation must stay:\n{recovery_log}"
    );

    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    let seen: HashSet<Key> = seen.entries.into_keys().collect();
    assert!(ledger.keys().is_subset(&seen));
    check_every_node(&cluster, &endpoint, &ledger).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_killed_in_turn_nothing_is_lost() -> anyhow::Result<()> {
    let (cluster, endpoint) = start(&fast_spec(1)).await?;
    let g1 = group_nodes(&cluster, "g1");
    let producer = Arc::new(producer(&cluster, &endpoint)?);

    let storm = Storm::start(producer.clone(), 16);
    storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
    for victim in [&g1[0], &g1[2]] {
        let client = cluster.node_client(&endpoint, victim)?;
        let before = incarnation(&client).await?;
        cluster.kill_node(victim)?;
        let t = std::time::Instant::now();
        storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
        eprintln!(
            "TIMING after killing {victim}: 250 commits in {:?}",
            t.elapsed()
        );
        restart(&cluster, &endpoint, victim).await?;
        let client = cluster.node_client(&endpoint, victim)?;
        assert_eq!(
            incarnation(&client).await?,
            before,
            "kill -9 damages no acked data, so {victim} must keep its incarnation{}",
            logs(&cluster)
        );
        storm.wait_more(COMMITS_PER_PHASE, &cluster).await?;
    }
    let ledger = storm.finish().await?;

    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    let seen: HashSet<Key> = seen.entries.into_keys().collect();
    assert!(ledger.keys().is_subset(&seen));
    check_every_node(&cluster, &endpoint, &ledger).await
}
