//! A group that loses 2 of its 3 nodes cannot commit: the producer fails over to another group
//! without losing anything it acknowledged, and takes the group back once it is healthy again.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use homeport_integration::wait_until;
use homeport_queue::producer::Producer;

/// Whether the producer currently considers `group` healthy (`None`: it does not know the group).
fn healthy(p: &Producer, group: &str) -> Option<bool> {
    p.groups()
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_fails_over_to_other_group_and_probes_back() -> anyhow::Result<()> {
    let (cluster, endpoint) = start(&fast_spec(2)).await?;
    let g1 = group_nodes(&cluster, "g1");
    let producer = producer(&cluster, &endpoint)?;
    let ledger = Ledger::default();
    ledger.append_n(&producer, "failover-before", 20).await?;
    assert_eq!(
        healthy(&producer, "g1"),
        Some(true),
        "{:?}",
        producer.groups()
    );

    cluster.kill_node(&g1[0])?;
    cluster.kill_node(&g1[1])?;
    let after = ledger.append_n(&producer, "failover-during", 40).await?;
    for c in &after {
        assert_eq!(
            c.group,
            "g2",
            "g1 has one node left and cannot commit, yet an append landed there: {c:?}{}",
            logs(&cluster)
        );
    }
    wait_until("the producer to mark g1 unhealthy", WAIT_MS, || async {
        healthy(&producer, "g1") == Some(false)
    })
    .await?;

    restart(&cluster, &endpoint, &g1[0]).await?;
    restart(&cluster, &endpoint, &g1[1]).await?;
    let r = wait_until(
        "the producer to probe g1 back to healthy",
        WAIT_MS,
        || async { healthy(&producer, "g1") == Some(true) },
    )
    .await;
    if let Err(e) = r {
        panic!("{e}: groups {:?}{}", producer.groups(), logs(&cluster));
    }

    // Once healthy, g1 takes appends again.
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    let mut back_in_g1 = false;
    let mut appended = 0usize;
    while !back_in_g1 && Instant::now() < deadline {
        let c = ledger.append_one(&producer, "failover-back", 200).await?;
        appended += 1;
        back_in_g1 = c.group == "g1";
    }
    assert!(
        back_in_g1,
        "none of {appended} appends after g1 recovered landed in g1; groups {:?}",
        producer.groups()
    );

    // Nothing acknowledged is lost, whichever group it committed in.
    let groups: HashSet<String> = ledger
        .snapshot()
        .values()
        .map(|(_, c)| c.group.clone())
        .collect();
    assert!(groups.contains("g1") && groups.contains("g2"), "{groups:?}");
    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    for (k, (_, c)) in ledger.snapshot() {
        assert!(
            seen.entries.contains_key(&k),
            "acked entry {k:?} ({c:?}) was not delivered"
        );
    }
    Ok(())
}
