//! Bytes of a segment file changed behind a node's back (bad disk, stray write): the node notices,
//! never serves them, and consumers still get every committed entry from the other nodes.

mod common;

use common::*;
use homeport_integration::Cluster;
use homeport_queue::client::{ClientError, NodeClient};
use homeport_wire::pb;

/// Bytes complemented in the middle of a segment file: enough to span a frame boundary sometimes.
const FLIP_BYTES: usize = 64;

/// One read of a single entry at `offset`: `Ok(Some(bytes))`, `Ok(None)` when the node refuses it
/// as corrupt, or the unexpected error.
async fn read_one(client: &NodeClient, offset: u64) -> anyhow::Result<Option<bytes::Bytes>> {
    let req = pb::ReadRequest {
        from_offset: offset,
        max_bytes: 0,
        max_entries: 1,
        wait_ms: 0,
    };
    match client.read(req, RPC_TIMEOUT_MS).await {
        Ok(r) => {
            let e =
                r.entries.into_iter().next().ok_or_else(|| {
                    anyhow::anyhow!("no entry at {offset} below the durable head")
                })?;
            anyhow::ensure!(e.offset == offset, "asked for {offset}, got {}", e.offset);
            Ok(Some(e.entry))
        }
        Err(ClientError::Refused {
            code: pb::ErrorCode::Corrupt,
            ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the node one entry at a time from its start to its durable head. Every entry it serves
/// must decode and carry the appended payload; returns the offsets it refused as corrupt.
async fn scan_node(client: &NodeClient, ledger: &Ledger) -> anyhow::Result<Vec<u64>> {
    let st = client.status(RPC_TIMEOUT_MS).await?;
    let mut refused = Vec::new();
    for offset in st.start_offset..st.durable_head {
        match read_one(client, offset).await? {
            Some(bytes) => {
                check_entries(&client.id, &[(offset, bytes)], ledger);
            }
            None => refused.push(offset),
        }
    }
    Ok(refused)
}

async fn cluster_with_entries(ledger: &Ledger) -> anyhow::Result<(Cluster, quinn::Endpoint)> {
    let (cluster, endpoint) = start(&fast_spec(1)).await?;
    let producer = producer(&cluster, &endpoint)?;
    ledger.append_n(&producer, "corruption", 400).await?;
    Ok((cluster, endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_damaged_while_stopped_is_detected_at_restart() -> anyhow::Result<()> {
    let ledger = Ledger::default();
    let (cluster, endpoint) = cluster_with_entries(&ledger).await?;
    let victim = group_nodes(&cluster, "g1")[0].clone();
    let client = cluster.node_client(&endpoint, &victim)?;
    let before = incarnation(&client).await?;

    cluster.kill_node(&victim)?;
    let segs = segment_files(&cluster, &victim)?;
    assert!(segs.len() >= 3, "expected several segments, got {segs:?}");
    flip_middle(&segs[0], FLIP_BYTES)?;
    let log_len = cluster.node_log(&victim).len();
    restart(&cluster, &endpoint, &victim).await?;
    // A new client: the old one's connection went to the killed process.
    let client = cluster.node_client(&endpoint, &victim)?;

    let recovery_log = cluster.node_log(&victim)[log_len..].to_owned();
    let st = client.status(RPC_TIMEOUT_MS).await?;
    assert!(
        st.incarnation != before || st.corruption_detected,
        "the node came back with the same incarnation and no corruption flag after its acked data \
         was damaged:\n{recovery_log}"
    );
    let lower = recovery_log.to_lowercase();
    assert!(
        lower.contains("corrupt") || lower.contains("damaged"),
        "the node's log does not mention the damage it found:\n{recovery_log}"
    );

    // More appends after the restart; then no read from the node may return a damaged entry.
    let producer = producer(&cluster, &endpoint)?;
    ledger.append_n(&producer, "corruption-after", 100).await?;
    scan_node(&client, &ledger).await?;
    match read_node_all(&client).await {
        Ok(entries) => {
            check_entries(&victim, &entries, &ledger);
        }
        Err(e) => assert!(
            matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Refused {
                    code: pb::ErrorCode::Corrupt,
                    ..
                })
            ),
            "reading the restarted node failed with {e:#}, expected entries or a Corrupt refusal"
        ),
    }

    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    assert!(ledger.keys().iter().all(|k| seen.entries.contains_key(k)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_damaged_under_running_node_is_refused() -> anyhow::Result<()> {
    let ledger = Ledger::default();
    let (cluster, endpoint) = cluster_with_entries(&ledger).await?;
    let victim = group_nodes(&cluster, "g1")[2].clone();
    let client = cluster.node_client(&endpoint, &victim)?;
    assert!(!client.status(RPC_TIMEOUT_MS).await?.corruption_detected);

    let segs = segment_files(&cluster, &victim)?;
    assert!(segs.len() >= 3, "expected several segments, got {segs:?}");
    // The first segment is sealed: what it holds is durable and acked.
    flip_middle(&segs[0], FLIP_BYTES)?;

    let refused = scan_node(&client, &ledger).await?;
    let Some(&damaged) = refused.first() else {
        panic!(
            "the node served every entry although bytes in the middle of {} were changed{}",
            segs[0].display(),
            logs(&cluster)
        );
    };
    // Asked again, directly at the damaged offset: still an error, never the bytes.
    assert_eq!(read_one(&client, damaged).await?, None);
    // A bulk read from the start returns at most what lies before the damage.
    let bulk = pb::ReadRequest {
        from_offset: 0,
        max_bytes: 0,
        max_entries: 0,
        wait_ms: 0,
    };
    match client.read(bulk, RPC_TIMEOUT_MS).await {
        Ok(r) => {
            assert!(
                r.entries.iter().all(|e| e.offset < damaged),
                "a bulk read returned entries at or past the damaged offset {damaged}"
            );
            let entries: Vec<_> = r.entries.into_iter().map(|e| (e.offset, e.entry)).collect();
            check_entries(&victim, &entries, &ledger);
        }
        Err(ClientError::Refused {
            code: pb::ErrorCode::Corrupt,
            ..
        }) => {}
        Err(e) => panic!("bulk read failed with {e}, expected entries or a Corrupt refusal"),
    }
    let st = client.status(RPC_TIMEOUT_MS).await?;
    assert!(
        st.corruption_detected,
        "status does not report the corruption the node refused to serve"
    );
    assert!(
        cluster.node_log(&victim).to_lowercase().contains("corrupt"),
        "the node's log does not mention the corruption{}",
        logs(&cluster)
    );

    // Consumers read around the damaged node.
    let seen = consume_all_from_start(&cluster, &endpoint, &ledger).await?;
    assert!(ledger.keys().iter().all(|k| seen.entries.contains_key(k)));
    Ok(())
}
