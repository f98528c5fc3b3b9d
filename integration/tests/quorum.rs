//! One node of a group down: appends still commit on the other two, and a consumer still sees
//! every committed entry.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use homeport_integration::wait_until;
use homeport_queue::producer::Committed;

/// Commit means 2 distinct nodes of the group acked, and none of them is a node that is down.
fn assert_acked_by_live(c: &Committed, live: &[String], cluster_logs: impl Fn() -> String) {
    let nodes: HashSet<&str> = c.acks.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        nodes.len() >= 2 && nodes.len() == c.acks.len(),
        "a commit needs 2 distinct acks, got {:?}{}",
        c.acks,
        cluster_logs()
    );
    for n in &nodes {
        assert!(
            live.iter().any(|l| l == n),
            "ack from {n}, which is down (live: {live:?}){}",
            cluster_logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_never_started_appends_commit_and_consumer_sees_all() -> anyhow::Result<()> {
    // Only campuses b and c of g1 run; a never starts.
    let (cluster, endpoint) =
        start_some(&fast_spec(1), |c| group_nodes(c, "g1")[1..].to_vec()).await?;
    let g1 = group_nodes(&cluster, "g1");
    let live = g1[1..].to_vec();
    let producer = producer(&cluster, &endpoint)?;
    let ledger = Ledger::default();
    let commits = ledger.append_n(&producer, "quorum-never", 60).await?;
    for c in &commits {
        assert_eq!(c.group, "g1");
        assert_acked_by_live(c, &live, || logs(&cluster));
    }
    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    assert!(
        ledger
            .keys()
            .is_subset(&seen.entries.keys().cloned().collect())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_killed_mid_run_appends_commit_and_consumer_sees_all() -> anyhow::Result<()> {
    let (cluster, endpoint) = start(&fast_spec(1)).await?;
    let g1 = group_nodes(&cluster, "g1");
    let producer = Arc::new(producer(&cluster, &endpoint)?);
    let ledger = Ledger::default();

    // Concurrent appenders keep writing while the node dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (p, l, s) = (producer.clone(), ledger.clone(), stop.clone());
        tasks.spawn(async move {
            let tag = format!("quorum-kill-w{w}");
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                l.append_one(&p, &tag, 64 + (i * 53) % 700).await?;
                i += 1;
            }
            anyhow::Ok(())
        });
    }
    let l = ledger.clone();
    wait_until("100 commits before the kill", WAIT_MS, || {
        let l = l.clone();
        async move { l.len() >= 100 }
    })
    .await?;
    cluster.kill_node(&g1[2])?;
    let at_kill = ledger.len();
    wait_until("150 more commits after the kill", WAIT_MS, || {
        let l = l.clone();
        async move { l.len() >= at_kill + 150 }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }

    // Appends started after the kill can only be acked by the two live nodes.
    let live = g1[..2].to_vec();
    let after = ledger.append_n(&producer, "quorum-after", 30).await?;
    for c in &after {
        assert_acked_by_live(c, &live, || logs(&cluster));
    }
    for (_, (_, c)) in ledger.snapshot() {
        assert_acked_by_live(&c, &g1, || logs(&cluster));
    }

    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    let seen: HashSet<Key> = seen.entries.keys().cloned().collect();
    assert!(
        ledger.keys().is_subset(&seen),
        "consumer missed committed entries{}",
        logs(&cluster)
    );
    Ok(())
}
