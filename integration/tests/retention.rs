//! Retention by checkpoint reports: a queue node deletes the segments every consuming region has
//! applied, never one a region still needs, only on the word of that region (or an operator), and
//! remembers the reports across a restart.

mod common;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use common::*;
use homeport_integration::{Cluster, ClusterSpec, wait_until};
use homeport_queue::client::{ClientError, NodeClient};
use homeport_queue::entry::{self, EntryIdGen};
use homeport_wire::pb;

/// sh's queue is consumed by hk and ca.
const NODE: &str = "sh-g1-a";
const ENTRIES: u64 = 240;
const ENTRIES_PER_APPEND: u64 = 4;
const PAYLOAD_BYTES: usize = 200;

/// Segments of 4 KiB hold about 15 entries of ~270 bytes, so 240 entries span ~16 segments.
fn spec() -> ClusterSpec {
    ClusterSpec {
        regions: vec!["sh".into(), "hk".into(), "ca".into()],
        groups_per_region: 1,
        queue_settings: vec![
            "segment_size_bytes = 4096".into(),
            "max_batch_bytes = 4096".into(),
            "max_entry_bytes = 1024".into(),
        ],
    }
}

struct Node {
    cluster: Cluster,
    /// Clients of the one running node, each with another certificate.
    as_sh: NodeClient,
    as_hk: NodeClient,
    as_ca: NodeClient,
    as_operator: NodeClient,
    /// Kept so the clients' endpoints outlive them; `[0]` has sh's certificate.
    endpoints: Vec<quinn::Endpoint>,
}

async fn start_node() -> Result<Node> {
    let cluster = Cluster::new(bin(), &spec())?;
    let mut endpoints = Vec::new();
    let mut clients = Vec::new();
    for identity in ["region-sh", "region-hk", "region-ca", "operator"] {
        let endpoint = cluster.endpoint(identity)?;
        clients.push(cluster.node_client(&endpoint, NODE)?);
        endpoints.push(endpoint);
    }
    cluster.start_node(NODE)?;
    cluster.wait_up(&endpoints[0], &[NODE.to_owned()]).await?;
    let [as_sh, as_hk, as_ca, as_operator]: [NodeClient; 4] = clients
        .try_into()
        .map_err(|_| anyhow::anyhow!("four clients"))?;
    Ok(Node {
        cluster,
        as_sh,
        as_hk,
        as_ca,
        as_operator,
        endpoints,
    })
}

async fn fill(client: &NodeClient) -> Result<()> {
    let mut ids = EntryIdGen::new("sh");
    let mut sequence = 0;
    while sequence < ENTRIES {
        let batch: Vec<Bytes> = (0..ENTRIES_PER_APPEND)
            .map(|i| {
                let payload = payload_for("retention", sequence + i, PAYLOAD_BYTES);
                entry::encode(&ids.entry(pb::EntryKind::Test, payload))
            })
            .collect();
        client
            .append(&batch, RPC_TIMEOUT_MS)
            .await
            .with_context(|| format!("append at {sequence}"))?;
        sequence += ENTRIES_PER_APPEND;
    }
    Ok(())
}

fn incarnation_of(status: &pb::StatusResponse) -> Result<[u8; 16]> {
    <[u8; 16]>::try_from(status.incarnation.as_ref())
        .map_err(|_| anyhow::anyhow!("incarnation of {} bytes", status.incarnation.len()))
}

fn assert_refused(result: Result<pb::CheckpointReportResponse, ClientError>, code: pb::ErrorCode) {
    match result {
        Err(ClientError::Refused { code: got, .. }) if got == code => {}
        other => panic!("expected a {code:?} refusal, got {other:?}"),
    }
}

async fn report(
    client: &NodeClient,
    region: &str,
    incarnation: [u8; 16],
    next_offset: u64,
) -> Result<u64> {
    Ok(client
        .report_checkpoint(region, incarnation, next_offset, RPC_TIMEOUT_MS)
        .await
        .with_context(|| format!("{region} reporting {next_offset}"))?
        .start_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_every_consuming_region_applied_are_deleted_and_stay_deleted() -> Result<()> {
    let node = start_node().await?;
    let logs = || node.cluster.node_log(NODE);
    fill(&node.as_sh).await?;
    let before = node.as_sh.status(RPC_TIMEOUT_MS).await?;
    let incarnation = incarnation_of(&before)?;
    assert_eq!(before.start_offset, 0);
    assert_eq!(before.durable_head, ENTRIES);
    if before.segment_count < 8 {
        bail!("expected many segments, got {}", before.segment_count);
    }

    // hk reports; ca never has, so ca holds everything.
    assert_eq!(report(&node.as_hk, "hk", incarnation, 120).await?, 0);
    assert_eq!(
        node.as_sh.status(RPC_TIMEOUT_MS).await?.segment_count,
        before.segment_count,
        "trimmed while ca had not reported{}",
        logs()
    );

    // Only a region speaks for itself; the node's own region does not consume its queue.
    assert_refused(
        node.as_sh
            .report_checkpoint("hk", incarnation, 200, RPC_TIMEOUT_MS)
            .await,
        pb::ErrorCode::Forbidden,
    );
    assert_refused(
        node.as_hk
            .report_checkpoint("ca", incarnation, 200, RPC_TIMEOUT_MS)
            .await,
        pb::ErrorCode::Forbidden,
    );
    assert_refused(
        node.as_sh
            .report_checkpoint("sh", incarnation, 200, RPC_TIMEOUT_MS)
            .await,
        pb::ErrorCode::BadRequest,
    );
    // Nobody can have applied what the node does not hold.
    assert_refused(
        node.as_operator
            .report_checkpoint("ca", incarnation, ENTRIES + 1, RPC_TIMEOUT_MS)
            .await,
        pb::ErrorCode::BadRequest,
    );
    assert_eq!(
        node.as_sh.status(RPC_TIMEOUT_MS).await?.start_offset,
        0,
        "a refused report trimmed{}",
        logs()
    );

    // ca reports past hk: the node trims below hk's 120, the lower of the two.
    let start = report(&node.as_ca, "ca", incarnation, 150).await?;
    let after = node.as_sh.status(RPC_TIMEOUT_MS).await?;
    assert!(
        start > 0 && start <= 120,
        "start offset {start} after reports 120 and 150{}",
        logs()
    );
    assert_eq!(after.start_offset, start);
    assert!(
        after.segment_count < before.segment_count,
        "{} segments before, {} after{}",
        before.segment_count,
        after.segment_count,
        logs()
    );
    assert_eq!(after.durable_head, ENTRIES);

    // Below the start there is nothing to read, and the answer says where the log starts.
    let below = node
        .as_hk
        .read(
            pb::ReadRequest {
                from_offset: 0,
                max_bytes: 0,
                max_entries: 0,
                wait_ms: 0,
            },
            RPC_TIMEOUT_MS,
        )
        .await?;
    assert!(below.entries.is_empty());
    assert_eq!(below.start_offset, start);
    assert_eq!(below.next_offset, start);
    let at_start = node
        .as_hk
        .read(
            pb::ReadRequest {
                from_offset: start,
                max_bytes: 0,
                max_entries: 1,
                wait_ms: 0,
            },
            RPC_TIMEOUT_MS,
        )
        .await?;
    assert_eq!(
        at_start.entries.first().map(|e| e.offset),
        Some(start),
        "the first retained entry is readable"
    );

    // A report about another incarnation of the log is ignored.
    assert_eq!(report(&node.as_hk, "hk", [0xAB; 16], ENTRIES).await?, start);
    assert_eq!(node.as_sh.status(RPC_TIMEOUT_MS).await?.start_offset, start);

    // kill -9 and restart: the log and the reports are as they were.
    node.cluster.kill_node(NODE)?;
    restart(&node.cluster, &node.endpoints[0], NODE).await?;
    // Each client's connection to the killed process fails once before it dials anew.
    for client in [&node.as_sh, &node.as_hk, &node.as_ca] {
        wait_until("a client to reach the restarted node", WAIT_MS, || async {
            client.status(1_000).await.is_ok()
        })
        .await?;
    }
    let restarted = node.as_sh.status(RPC_TIMEOUT_MS).await?;
    assert_eq!(restarted.incarnation, before.incarnation);
    assert_eq!(restarted.start_offset, start, "{}", logs());

    // Positions never go back: a lower report trims nothing more.
    assert_eq!(report(&node.as_hk, "hk", incarnation, 50).await?, start);
    assert_eq!(
        node.as_sh.status(RPC_TIMEOUT_MS).await?.segment_count,
        restarted.segment_count
    );

    // hk moves on; ca's 150 from before the restart is what holds now, so the node trims below
    // it (with ca's report forgotten it would trim nothing).
    let later = report(&node.as_hk, "hk", incarnation, 230).await?;
    assert!(
        later > start && later <= 150,
        "start offset {later} after hk 230 with ca at 150 (was {start}){}",
        logs()
    );
    assert_eq!(node.as_sh.status(RPC_TIMEOUT_MS).await?.start_offset, later);
    Ok(())
}
