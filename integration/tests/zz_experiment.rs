mod common;
use common::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_latency() -> anyhow::Result<()> {
    let (cluster, endpoint) =
        start_some(&fast_spec(1), |c| vec![group_nodes(c, "g1")[0].clone()]).await?;
    let node = group_nodes(&cluster, "g1")[0].clone();
    let client = cluster.node_client(&endpoint, &node)?;
    for busy in [false, true] {
        client.status(5000).await?;
        cluster.kill_node(&node)?;
        if busy {
            // calls while the node is down
            for _ in 0..3 {
                let r = client.status(300).await;
                eprintln!("while down: {r:?}");
            }
        }
        restart(&cluster, &endpoint, &node).await?;
        let t = Instant::now();
        loop {
            let r = client.status(if busy { 500 } else { 15_000 }).await;
            if r.is_ok() {
                break;
            }
            eprintln!("{:?} {:?}", t.elapsed(), r.err());
        }
        eprintln!(
            "EXP busy={busy}: old client answered {:?} after restart",
            t.elapsed()
        );
    }
    Ok(())
}
