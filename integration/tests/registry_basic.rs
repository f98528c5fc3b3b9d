//! The registry as real processes: three registry nodes (one per region), operations through
//! `RegistryClient`; a node killed with -9, the client falling back to another region's node, and
//! every node killed and restarted with its state intact.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use homeport_config::{OPERATOR_IDENTITY, registry_identity};
use homeport_integration::registries::RegistryCluster;
use homeport_registry::client::{Claimed, ClientError, Released};
use homeport_registry::registry::WxidStatus;
use homeport_wire::{self as wire, Identity, Role, pb};

const REGIONS: [&str; 3] = ["sh", "hk", "ca"];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_homeport-it"))
}

/// Quick rounds so a dead node costs little; generous per-node timeouts for a loaded machine.
fn cluster() -> Result<RegistryCluster> {
    RegistryCluster::new(
        bin(),
        &REGIONS,
        &[
            "round_timeout_ms = 1000",
            "backoff_base_ms = 20",
            "backoff_max_ms = 200",
            "operation_timeout_ms = 15000",
            "connect_timeout_ms = 1000",
        ],
    )
}

async fn start_all(c: &RegistryCluster) -> Result<()> {
    c.start_all()?;
    for r in REGIONS {
        c.wait_up(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_lookup_release_across_nodes_crashes_and_restarts() -> Result<()> {
    let c = cluster()?;
    start_all(&c).await?;
    let sh = c.client("sh")?;
    let hk = c.client("hk")?;

    // Claim, idempotently; visible from another region's node.
    let started = Instant::now();
    assert_eq!(
        sh.claim("alice01", "sh-1").await?,
        Claimed::Claimed { released: None }
    );
    let first_claim = started.elapsed();
    assert_eq!(sh.claim("alice01", "sh-1").await?, Claimed::AlreadyHeld);
    assert_eq!(
        hk.lookup("Alice01").await?,
        WxidStatus::Held { uid: "sh-1".into() }
    );
    assert_eq!(hk.user_wxid("sh-1").await?, (Some("alice01".into()), false));

    // Refusals name the owner and are typed as refused.
    let taken = hk.claim("alice01", "hk-2").await.unwrap_err();
    assert_eq!(
        taken,
        ClientError::Taken {
            wxid: "alice01".into(),
            owner: "sh-1".into()
        }
    );
    assert!(taken.is_refused() && !taken.outcome_unknown());
    let not_owner = hk.release("alice01", "hk-2").await.unwrap_err();
    assert!(matches!(not_owner, ClientError::NotOwner { ref owner, .. } if owner == "sh-1"));
    let bad = sh.claim("1abc", "sh-1").await.unwrap_err();
    assert!(matches!(bad, ClientError::BadName { .. }), "{bad:?}");

    // Changing ID releases the old one.
    assert_eq!(
        sh.claim("alice02", "sh-1").await?,
        Claimed::Claimed {
            released: Some("alice01".into())
        }
    );
    assert_eq!(hk.lookup("alice01").await?, WxidStatus::Free);
    assert_eq!(hk.release("alice01", "hk-2").await?, Released::AlreadyFree);

    // Home directory compare-and-set.
    assert_eq!(sh.get_home("sh-1").await?, None);
    let home = sh.set_home("sh-1", "sh", None).await?;
    let conflict = hk.set_home("sh-1", "hk", None).await.unwrap_err();
    assert!(
        matches!(conflict, ClientError::HomeConflict { current: Some(ref h) } if *h == home),
        "{conflict:?}"
    );
    let moved = hk.set_home("sh-1", "hk", Some(home.epoch)).await?;
    assert_eq!(moved.region, "hk");
    assert_eq!(sh.get_home("sh-1").await?, Some(moved.clone()));

    // Latency of uncontended claims on loopback (each: 5 proposals, fsync on 3 acceptors).
    let mut latencies = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        sh.claim(&format!("user{i:04}"), &format!("sh-u{i}"))
            .await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    eprintln!(
        "registry claim latency on loopback: first {first_claim:?}, p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // sh's node dies: a client of sh falls back to hk's node; two acceptors are a majority.
    c.kill("sh")?;
    assert_eq!(
        sh.claim("bob0001", "sh-3").await?,
        Claimed::Claimed { released: None }
    );
    assert_eq!(
        hk.lookup("bob0001").await?,
        WxidStatus::Held { uid: "sh-3".into() }
    );

    // sh comes back; then every node is killed and restarted: acceptor state is durable.
    c.start("sh")?;
    c.wait_up("sh").await?;
    for r in REGIONS {
        c.kill(r)?;
    }
    start_all(&c).await?;
    assert_eq!(
        sh.lookup("alice02").await?,
        WxidStatus::Held { uid: "sh-1".into() }
    );
    assert_eq!(
        sh.lookup("bob0001").await?,
        WxidStatus::Held { uid: "sh-3".into() }
    );
    assert_eq!(sh.get_home("sh-1").await?, Some(moved));

    // SIGTERM stops a node cleanly.
    let status = c.stop("ca")?;
    assert!(status.success(), "registry-ca exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_the_outcome_is_unknown() -> Result<()> {
    let c = RegistryCluster::new(
        bin(),
        &REGIONS,
        &[
            "round_timeout_ms = 200",
            "max_attempts = 2",
            "backoff_base_ms = 10",
            "backoff_max_ms = 20",
            "operation_timeout_ms = 15000",
            "connect_timeout_ms = 200",
        ],
    )?;
    start_all(&c).await?;

    // Acceptor requests only from registry nodes; operations not from queue nodes.
    let sh_node = c
        .deployment
        .region("sh")
        .and_then(|r| r.registry.clone())
        .unwrap();
    let server = Identity::new(registry_identity("sh"), Role::Registry, "sh")?;
    for (who, body) in [
        (
            OPERATOR_IDENTITY,
            pb::request::Body::RegistryAcceptor(pb::AcceptorBatchRequest::default()),
        ),
        (
            "sh-g1-a",
            pb::request::Body::RegistryOperation(pb::RegistryOperationRequest::default()),
        ),
    ] {
        let endpoint = c.endpoint(who)?;
        let conn = wire::connect(&endpoint, sh_node.addr, &server, 10_000).await?;
        let answer = wire::call(&conn, &wire::request(body), 10_000, 1 << 20).await?;
        match answer.body {
            Some(pb::response::Body::Error(e)) => {
                assert_eq!(e.code(), pb::ErrorCode::Forbidden, "{who}: {e:?}")
            }
            other => panic!("{who} was not refused: {other:?}"),
        }
    }

    c.kill("hk")?;
    c.kill("ca")?;
    let sh = c.client("sh")?;
    let e = sh.claim("carol01", "sh-9").await.unwrap_err();
    assert!(e.outcome_unknown() && !e.is_refused(), "{e:?}");
    Ok(())
}
