//! Mutual TLS against a real node process: only holders of a certificate from the deployment's CA
//! get any answer, and only the node's own region (or an operator) may append.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use homeport_integration::{Cluster, ClusterSpec};
use homeport_queue::client::{ClientError, NodeClient};
use homeport_queue::entry::{self, EntryIdGen};
use homeport_wire::{self as wire, pb};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn two_regions() -> ClusterSpec {
    ClusterSpec {
        regions: vec!["sh".to_owned(), "hk".to_owned()],
        groups_per_region: 1,
        queue_settings: Vec::new(),
    }
}

/// The first node of sh's g1, running alone (nothing here needs a quorum).
async fn one_node() -> anyhow::Result<(Cluster, String)> {
    let (cluster, _) =
        start_some(&two_regions(), |c| vec![group_nodes(c, "g1")[0].clone()]).await?;
    let node = group_nodes(&cluster, "g1")[0].clone();
    Ok((cluster, node))
}

fn client_for(
    cluster: &Cluster,
    endpoint: quinn::Endpoint,
    node: &str,
) -> anyhow::Result<NodeClient> {
    let n = cluster
        .deployment
        .node(node)
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    Ok(NodeClient::new(endpoint, &n.region.name, node, n.node.addr))
}

fn sh_entry() -> Bytes {
    entry::encode(&EntryIdGen::new("sh").entry(pb::EntryKind::Test, Bytes::from_static(b"mtls")))
}

fn read_req() -> pb::ReadRequest {
    pb::ReadRequest {
        from_offset: 0,
        max_bytes: 0,
        max_entries: 0,
        wait_ms: 0,
    }
}

/// No answer at all: the request fails in the transport, not with a node's refusal.
fn assert_no_answer<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>, log: &str) {
    match r {
        Err(ClientError::Unreachable { .. } | ClientError::Timeout { .. }) => {}
        other => panic!(
            "{what}: expected no answer from the node, got {other:?}\n--- node log ---\n{log}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_gets_no_answer() -> anyhow::Result<()> {
    let (cluster, node) = one_node().await?;
    // A second CA with certificates of the very same identity names.
    let other = tempfile::tempdir()?;
    wire::generate_dev_certs(other.path(), &homeport::cert_specs(&cluster.deployment))?;
    // The client trusts both CAs, so it accepts the real node: only the node can end the handshake.
    let both_cas = other.path().join("both-cas.pem");
    let mut pem = std::fs::read(&cluster.deployment.tls.ca_cert)?;
    pem.extend(std::fs::read(other.path().join(wire::CA_CERT_FILE))?);
    std::fs::write(&both_cas, pem)?;

    for identity in ["operator", "region-sh"] {
        let tls = wire::TlsFiles::for_identity(&both_cas, other.path(), identity);
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let ep = wire::client_endpoint(bind, &tls, &wire::EndpointLimits::default())?;
        let client = client_for(&cluster, ep, &node)?;
        let log = cluster.node_log(&node);
        assert_no_answer(
            &format!("status as foreign {identity}"),
            client.status(3_000).await,
            &log,
        );
        assert_no_answer(
            &format!("read as foreign {identity}"),
            client.read(read_req(), 3_000).await,
            &log,
        );
        assert_no_answer(
            &format!("append as foreign {identity}"),
            client.append(&[sh_entry()], 3_000).await,
            &log,
        );
    }

    // The control: the same trust file with the deployment's own operator certificate is
    // answered, so the refusal above is the foreign CA and nothing else.
    let tls = wire::TlsFiles::for_identity(&both_cas, &cluster.deployment.tls.cert_dir, "operator");
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let ep = wire::client_endpoint(bind, &tls, &wire::EndpointLimits::default())?;
    client_for(&cluster, ep, &node)?
        .status(RPC_TIMEOUT_MS)
        .await?;
    Ok(())
}

/// A QUIC client endpoint built with rustls directly: trusts the deployment CA, speaks the homeport
/// ALPN, and presents `client_cert` (chain and key files) or no certificate at all.
fn raw_endpoint(
    cluster: &Cluster,
    client_cert: Option<(&Path, &Path)>,
) -> anyhow::Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cluster.deployment.tls.ca_cert)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
    };
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut ep = quinn::Endpoint::client(([0, 0, 0, 0], 0).into())?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    Ok(ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_gets_no_answer() -> anyhow::Result<()> {
    let (cluster, node) = one_node().await?;
    let client = client_for(&cluster, raw_endpoint(&cluster, None)?, &node)?;
    let log = cluster.node_log(&node);
    assert_no_answer(
        "status without a certificate",
        client.status(3_000).await,
        &log,
    );
    assert_no_answer(
        "read without a certificate",
        client.read(read_req(), 3_000).await,
        &log,
    );
    assert_no_answer(
        "append without a certificate",
        client.append(&[sh_entry()], 3_000).await,
        &log,
    );

    // The control: the same client setup presenting the operator's certificate is answered, so
    // the refusal above is the missing certificate and nothing else.
    let tls = &cluster.deployment.tls;
    let cert = tls.cert_path("operator");
    let key = tls.key_path("operator");
    let with_cert = client_for(
        &cluster,
        raw_endpoint(&cluster, Some((&cert, &key)))?,
        &node,
    )?;
    with_cert.status(RPC_TIMEOUT_MS).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_region_may_read_but_not_append() -> anyhow::Result<()> {
    let (cluster, node) = one_node().await?;

    let hk = client_for(&cluster, cluster.endpoint("region-hk")?, &node)?;
    let st = hk.status(RPC_TIMEOUT_MS).await?;
    assert_eq!(st.node_id, node);
    hk.read(read_req(), RPC_TIMEOUT_MS).await?;
    match hk.append(&[sh_entry()], RPC_TIMEOUT_MS).await {
        Err(ClientError::Refused {
            code: pb::ErrorCode::Forbidden,
            ..
        }) => {}
        other => panic!("region-hk appended to an sh node: {other:?}"),
    }
    // Another queue node's certificate is from the same CA but names no region role: no appends.
    let peer = group_nodes(&cluster, "g1")[1].clone();
    let as_peer = client_for(&cluster, cluster.endpoint(&peer)?, &node)?;
    match as_peer.append(&[sh_entry()], RPC_TIMEOUT_MS).await {
        Err(ClientError::Refused {
            code: pb::ErrorCode::Forbidden,
            ..
        }) => {}
        other => panic!("queue node {peer} appended to {node}: {other:?}"),
    }
    assert_eq!(
        hk.status(RPC_TIMEOUT_MS).await?.durable_head,
        0,
        "a refused append wrote something"
    );

    // The node's own region may append (the control), and the other region then reads it.
    let sh = client_for(&cluster, cluster.endpoint("region-sh")?, &node)?;
    let a = sh.append(&[sh_entry()], RPC_TIMEOUT_MS).await?;
    assert_eq!((a.first_offset, a.next_offset), (0, 1));
    let r = hk.read(read_req(), RPC_TIMEOUT_MS).await?;
    assert_eq!(r.entries.len(), 1);
    Ok(())
}
