//! A node whose disk was wiped comes back empty with a new incarnation; consumers (resumed from an
//! old cursor or fresh) still see every committed entry, including those left on one survivor.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_gets_new_incarnation_and_consumers_miss_nothing() -> anyhow::Result<()> {
    let (cluster, endpoint) = start(&fast_spec(1)).await?;
    let [a, b, c]: [String; 3] = group_nodes(&cluster, "g1")
        .try_into()
        .map_err(|v| anyhow::anyhow!("g1 has nodes {v:?}"))?;
    let producer = producer(&cluster, &endpoint)?;

    // Phase A: consumed, and the consumer's cursor saved (as a replica's checkpoint would).
    let ledger = Ledger::default();
    ledger.append_n(&producer, "wipe-a", 60).await?;
    let phase_a = ledger.keys();
    let consumed = consume_until(
        &cluster,
        &endpoint,
        HashMap::new(),
        &phase_a,
        &ledger,
        WAIT_MS,
    )
    .await?;
    let saved_cursors = consumed.cursors;
    assert!(
        saved_cursors.contains_key("g1"),
        "no cursor for g1: {saved_cursors:?}"
    );

    // Phase B: committed while c is down, so on a and b only; not yet consumed.
    cluster.kill_node(&c)?;
    let b_commits = ledger.append_n(&producer, "wipe-b", 60).await?;
    for commit in &b_commits {
        assert!(
            commit.acks.iter().all(|(n, _)| *n == a || *n == b),
            "{commit:?}"
        );
    }
    restart(&cluster, &endpoint, &c).await?;

    // Wipe a: phase B now lives on b alone.
    let a_client = cluster.node_client(&endpoint, &a)?;
    let old_incarnation = incarnation(&a_client).await?;
    cluster.kill_node(&a)?;
    let dir = cluster.data_dir(&a);
    std::fs::remove_dir_all(&dir)?;
    restart(&cluster, &endpoint, &a).await?;
    // A new client: the old one's connection went to the killed process.
    let a_client = cluster.node_client(&endpoint, &a)?;
    let st = a_client.status(RPC_TIMEOUT_MS).await?;
    assert_ne!(
        st.incarnation, old_incarnation,
        "a wiped node must come back with a new incarnation"
    );
    assert_eq!(st.durable_head, 0, "a wiped node must come back empty");

    // Phase C: after the wipe.
    ledger.append_n(&producer, "wipe-c", 60).await?;

    let after_cursor: HashSet<Key> = ledger.keys().difference(&phase_a).cloned().collect();
    let resumed = consume_until(
        &cluster,
        &endpoint,
        saved_cursors,
        &after_cursor,
        &ledger,
        WAIT_MS,
    )
    .await?;
    assert!(after_cursor.iter().all(|k| resumed.entries.contains_key(k)));

    let all = ledger.keys();
    let fresh = consume_until(&cluster, &endpoint, HashMap::new(), &all, &ledger, WAIT_MS).await?;
    assert!(all.iter().all(|k| fresh.entries.contains_key(k)));

    // The wiped node holds only what was appended after it came back, all of it valid.
    let entries = read_node_all(&a_client).await?;
    let on_a = check_entries(&a, &entries, &ledger);
    assert!(
        on_a.is_disjoint(&phase_a),
        "the wiped node serves entries from before the wipe"
    );
    Ok(())
}
