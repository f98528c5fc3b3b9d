//! Real QUIC on 127.0.0.1 with certificates from `generate_dev_certs`: who may connect, what each
//! side learns about the other, and request/response through `call` and `serve`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use homeport_wire::{
    ALPN, DevCertSpec, EndpointLimits, Identity, MAX_FRAME_BYTES, PROTOCOL_VERSION, Reply, Role,
    TlsFiles, WireError, call, client_endpoint, connect, generate_dev_certs, open_stream, pb,
    peer_identity, read_frame, request, serve, server_endpoint,
};
use rustls_pki_types::pem::PemObject;

/// Generous: the machine is shared and slow; only a hang should hit this.
const TEST_DEADLINE_MS: u64 = 30_000;
const CALL_TIMEOUT_MS: u64 = 20_000;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn any_port() -> SocketAddr {
    SocketAddr::new(LOCALHOST, 0)
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(TEST_DEADLINE_MS), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_DEADLINE_MS} ms"))
}

fn server_id() -> Identity {
    Identity::new("sh-g1-a", Role::QueueNode, "sh").unwrap()
}

fn client_id() -> Identity {
    Identity::new("region-sh", Role::Region, "sh").unwrap()
}

/// A CA with certificates for the server and the client identities, in its own temp dir.
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let specs = [server_id(), client_id()].map(|identity| DevCertSpec {
        identity,
        ips: vec![LOCALHOST],
    });
    generate_dev_certs(dir.path(), &specs).unwrap();
    dir
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles::for_identity(&dir.join("ca.pem"), dir, name)
}

fn server(dir: &Path) -> quinn::Endpoint {
    server_endpoint(
        any_port(),
        &files(dir, "sh-g1-a"),
        &EndpointLimits::default(),
    )
    .unwrap()
}

fn client(tls: &TlsFiles) -> quinn::Endpoint {
    client_endpoint(any_port(), tls, &EndpointLimits::default()).unwrap()
}

fn addr(endpoint: &quinn::Endpoint) -> SocketAddr {
    endpoint.local_addr().unwrap()
}

/// Accepts one connection attempt and returns how its handshake ended on the server.
async fn accept_one(
    endpoint: &quinn::Endpoint,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = endpoint.accept().await.expect("endpoint closed");
    incoming.await
}

/// A server whose handler counts its calls and echoes who asked (in `node_id`). A subscribe
/// streams `max_entries` read frames (offsets from `from_offset` on) and finishes, or with
/// `max_entries == 0` streams until the client goes away, then counts a stop in `STREAMS_STOPPED`.
fn spawn_server(
    endpoint: quinn::Endpoint,
    max_frame_bytes: usize,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let task = tokio::spawn(serve(endpoint, max_frame_bytes, move |peer, req| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = match req.body {
                Some(pb::request::Body::Subscribe(s)) => return subscribe_reply(s),
                Some(pb::request::Body::Append(a)) => {
                    pb::response::Body::Append(pb::AppendResponse {
                        incarnation: Bytes::from(peer.dns_name()),
                        first_offset: 0,
                        next_offset: a.entries.len() as u64,
                    })
                }
                Some(pb::request::Body::Status(_)) => {
                    pb::response::Body::Status(pb::StatusResponse {
                        node_id: peer.dns_name(),
                        ..Default::default()
                    })
                }
                Some(pb::request::Body::Read(r)) => {
                    // Answers with `max_bytes` of payload, to test response limits.
                    pb::response::Body::Read(pb::ReadResponse {
                        entries: vec![pb::StoredEntry {
                            offset: 0,
                            entry: Bytes::from(vec![7u8; r.max_bytes as usize]),
                        }],
                        ..Default::default()
                    })
                }
                // Never answers, to test call timeouts.
                Some(pb::request::Body::Trim(_)) => std::future::pending().await,
                Some(
                    pb::request::Body::RegionStatus(_)
                    | pb::request::Body::CheckpointReport(_)
                    | pb::request::Body::GatewayForward(_)
                    | pb::request::Body::RegistryAcceptor(_)
                    | pb::request::Body::RegistryOperation(_),
                ) => pb::response::Body::Error(pb::ErrorResponse::default()),
                None => unreachable!("serve must not pass requests without a body"),
            };
            Reply::One(pb::Response { body: Some(body) })
        }
    }));
    (calls, task)
}

static STREAMS_STOPPED: AtomicUsize = AtomicUsize::new(0);

fn subscribe_reply(s: pb::SubscribeRequest) -> Reply {
    /// Counts in `STREAMS_STOPPED` when the stream is dropped before its end.
    struct Producer {
        offset: u64,
        end: Option<u64>,
    }
    impl Drop for Producer {
        fn drop(&mut self) {
            if self.end != Some(self.offset) {
                STREAMS_STOPPED.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let producer = Producer {
        offset: s.from_offset,
        end: (s.max_entries != 0).then(|| s.from_offset + u64::from(s.max_entries)),
    };
    Reply::Stream(Box::pin(futures::stream::unfold(
        producer,
        |mut p| async move {
            if p.end == Some(p.offset) {
                return None;
            }
            let frame = pb::Response {
                body: Some(pb::response::Body::Read(pb::ReadResponse {
                    entries: vec![pb::StoredEntry {
                        offset: p.offset,
                        entry: Bytes::from(vec![1u8; 1000]),
                    }],
                    next_offset: p.offset + 1,
                    ..Default::default()
                })),
            };
            p.offset += 1;
            Some((frame, p))
        },
    )))
}

fn status_request() -> pb::Request {
    request(pb::request::Body::Status(pb::StatusRequest {}))
}

fn error_code(resp: &pb::Response) -> Option<pb::ErrorCode> {
    match &resp.body {
        Some(pb::response::Body::Error(e)) => Some(e.code()),
        _ => None,
    }
}

#[tokio::test]
async fn mutual_tls_gives_each_side_the_others_identity() {
    let dir = pki();
    let server = server(dir.path());
    let client = client(&files(dir.path(), "region-sh"));
    let sid = server_id();
    let (server_side, client_side) = within("handshake", async {
        tokio::join!(
            accept_one(&server),
            connect(&client, addr(&server), &sid, CALL_TIMEOUT_MS)
        )
    })
    .await;
    let server_side = server_side.unwrap();
    let client_side = client_side.unwrap();
    assert_eq!(peer_identity(&server_side).unwrap(), client_id());
    assert_eq!(peer_identity(&client_side).unwrap(), server_id());
    assert_eq!(
        client_side
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol),
        Some(ALPN.to_vec())
    );
}

#[tokio::test]
async fn server_endpoint_can_also_dial_out() {
    let dir = pki();
    let a = server(dir.path());
    // The second process dials with its server endpoint, as a region's registry node would.
    let b = server_endpoint(
        any_port(),
        &files(dir.path(), "region-sh"),
        &EndpointLimits::default(),
    )
    .unwrap();
    let sid = server_id();
    let (accepted, dialed) = within("handshake", async {
        tokio::join!(accept_one(&a), connect(&b, addr(&a), &sid, CALL_TIMEOUT_MS))
    })
    .await;
    assert_eq!(peer_identity(&accepted.unwrap()).unwrap(), client_id());
    assert_eq!(peer_identity(&dialed.unwrap()).unwrap(), server_id());
}

/// From the client's view a TLS 1.3 handshake can complete before the server has checked the
/// client's certificate; the refusal then arrives as a closed connection. Either way no request
/// may succeed.
async fn assert_client_refused(client: &quinn::Endpoint, server: &quinn::Endpoint) {
    let (server_side, client_side) = within("refused handshake", async {
        tokio::join!(accept_one(server), async {
            let conn = connect(client, addr(server), &server_id(), CALL_TIMEOUT_MS).await?;
            call(&conn, &status_request(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES).await
        })
    })
    .await;
    assert!(
        server_side.is_err(),
        "the server accepted a client it must refuse"
    );
    assert!(
        client_side.is_err(),
        "a refused client got a response: {client_side:?}"
    );
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let dir = pki();
    let other = pki();
    let server = server(dir.path());
    // Trusts the right CA (so the server's certificate is fine) but presents a certificate for
    // the right name signed by a different CA.
    let impostor = TlsFiles {
        ca_cert: dir.path().join("ca.pem"),
        ..files(other.path(), "region-sh")
    };
    assert_client_refused(&client(&impostor), &server).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = pki();
    let server = server(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut anonymous = quinn::Endpoint::client(any_port()).unwrap();
    anonymous.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    assert_client_refused(&anonymous, &server).await;
}

#[tokio::test]
async fn ca_signed_certificate_without_an_identity_never_reaches_the_handler() {
    let dir = pki();
    let server = server(dir.path());
    let server_addr = addr(&server);
    let (calls, _task) = spawn_server(server, MAX_FRAME_BYTES);

    // Signed by the right CA, but naming no homeport identity.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca.key")).unwrap())
            .unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["rogue.example.org".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert.der().clone()], key_der)
    .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut rogue = quinn::Endpoint::client(any_port()).unwrap();
    rogue.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let sid = server_id();
    let result = within("rogue call", async {
        let conn = connect(&rogue, server_addr, &sid, CALL_TIMEOUT_MS).await?;
        call(&conn, &status_request(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES).await
    })
    .await;
    assert!(result.is_err(), "a peer without identity got {result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_expecting_another_server_name_is_refused() {
    let dir = pki();
    let server = server(dir.path());
    let client = client(&files(dir.path(), "region-sh"));
    // Same CA, but the client wants queue node sh-g1-b and reached sh-g1-a.
    let expected = Identity::new("sh-g1-b", Role::QueueNode, "sh").unwrap();
    let server_task = {
        let server = server.clone();
        tokio::spawn(async move { accept_one(&server).await.is_ok() })
    };
    let result = within(
        "connect",
        connect(&client, addr(&server), &expected, CALL_TIMEOUT_MS),
    )
    .await;
    match result {
        Err(WireError::Connect { server, .. }) => assert_eq!(server, expected.dns_name()),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(
        !within("server side", server_task).await.unwrap(),
        "the handshake must fail on the server too"
    );
}

#[tokio::test]
async fn oversized_frame_is_rejected_from_its_prefix_alone() {
    let dir = pki();
    let server = server(dir.path());
    let client = client(&files(dir.path(), "region-sh"));
    let sid = server_id();
    let (server_side, client_side) = within("handshake", async {
        tokio::join!(
            accept_one(&server),
            connect(&client, addr(&server), &sid, CALL_TIMEOUT_MS)
        )
    })
    .await;
    let (server_conn, client_conn) = (server_side.unwrap(), client_side.unwrap());
    let (mut send, _recv) = client_conn.open_bi().await.unwrap();
    // Announce 4 GiB and send nothing else, keeping the stream open: a reader that trusted the
    // prefix would allocate 4 GiB or wait forever for the body.
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let (_server_send, mut server_recv) =
        within("accept_bi", server_conn.accept_bi()).await.unwrap();
    let result = within(
        "read_frame",
        read_frame::<pb::Request>(&mut server_recv, 1024),
    )
    .await;
    match result {
        Err(WireError::FrameTooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn call_round_trips_through_serve() {
    let dir = pki();
    let server = server(dir.path());
    let server_addr = addr(&server);
    let (calls, _task) = spawn_server(server, MAX_FRAME_BYTES);
    let client = client(&files(dir.path(), "region-sh"));
    let conn = within(
        "connect",
        connect(&client, server_addr, &server_id(), CALL_TIMEOUT_MS),
    )
    .await
    .unwrap();

    let resp = within(
        "status call",
        call(&conn, &status_request(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    match resp.body {
        Some(pb::response::Body::Status(s)) => assert_eq!(s.node_id, client_id().dns_name()),
        other => panic!("expected a status response, got {other:?}"),
    }

    // Concurrent calls on one connection, each on its own stream, each with its own answer.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..32u64 {
        let conn = conn.clone();
        tasks.spawn(async move {
            let entries = (0..n).map(|i| Bytes::from(vec![i as u8; 100])).collect();
            let req = request(pb::request::Body::Append(pb::AppendRequest { entries }));
            let resp = call(&conn, &req, CALL_TIMEOUT_MS, MAX_FRAME_BYTES)
                .await
                .unwrap();
            match resp.body {
                Some(pb::response::Body::Append(a)) => assert_eq!(a.next_offset, n),
                other => panic!("expected an append response, got {other:?}"),
            }
        });
    }
    within("concurrent calls", async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 33);
}

#[tokio::test]
async fn a_streaming_reply_arrives_in_order_and_stops_when_the_client_goes_away() {
    let dir = pki();
    let server = server(dir.path());
    let server_addr = addr(&server);
    let (_calls, _task) = spawn_server(server, MAX_FRAME_BYTES);
    let client = client(&files(dir.path(), "region-sh"));
    let conn = within(
        "connect",
        connect(&client, server_addr, &server_id(), CALL_TIMEOUT_MS),
    )
    .await
    .unwrap();
    let subscribe = |from_offset, max_entries| {
        request(pb::request::Body::Subscribe(pb::SubscribeRequest {
            from_offset,
            max_entries,
            ..Default::default()
        }))
    };

    // A finite stream: every frame in order, then a clean end.
    let mut stream = within(
        "open",
        open_stream(&conn, &subscribe(5, 50), CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    let mut offsets = Vec::new();
    while let Some(resp) = within("next frame", stream.next(CALL_TIMEOUT_MS))
        .await
        .unwrap()
    {
        match resp.body {
            Some(pb::response::Body::Read(r)) => offsets.push(r.entries[0].offset),
            other => panic!("expected a read frame, got {other:?}"),
        }
    }
    assert_eq!(offsets, (5..55).collect::<Vec<u64>>());

    // An endless stream (far more than flow control lets through unread): dropping the client's
    // side stops the producer.
    let stopped_before = STREAMS_STOPPED.load(Ordering::SeqCst);
    let mut endless = within(
        "open",
        open_stream(&conn, &subscribe(0, 0), CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    for expected in 0..10u64 {
        let resp = within("next frame", endless.next(CALL_TIMEOUT_MS))
            .await
            .unwrap()
            .expect("an endless stream does not end");
        match resp.body {
            Some(pb::response::Body::Read(r)) => assert_eq!(r.entries[0].offset, expected),
            other => panic!("expected a read frame, got {other:?}"),
        }
    }
    drop(endless);
    within("the producer to stop", async {
        while STREAMS_STOPPED.load(Ordering::SeqCst) == stopped_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn serve_answers_what_the_handler_must_not_see() {
    let dir = pki();
    let server = server(dir.path());
    let server_addr = addr(&server);
    let (calls, _task) = spawn_server(server, 1024);
    let client = client(&files(dir.path(), "region-sh"));
    let conn = within(
        "connect",
        connect(&client, server_addr, &server_id(), CALL_TIMEOUT_MS),
    )
    .await
    .unwrap();

    let too_large = request(pb::request::Body::Append(pb::AppendRequest {
        entries: vec![Bytes::from(vec![0u8; 4096])],
    }));
    let resp = within(
        "oversized call",
        call(&conn, &too_large, CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&resp), Some(pb::ErrorCode::TooLarge), "{resp:?}");

    let mut old = status_request();
    old.protocol_version = 0;
    let mut future = status_request();
    future.protocol_version = PROTOCOL_VERSION + 1;
    for req in [old, future] {
        let resp = within(
            "versioned call",
            call(&conn, &req, CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
        )
        .await
        .unwrap();
        assert_eq!(
            error_code(&resp),
            Some(pb::ErrorCode::UnsupportedVersion),
            "{resp:?}"
        );
    }

    let no_body = pb::Request {
        protocol_version: PROTOCOL_VERSION,
        body: None,
    };
    let resp = within(
        "bodiless call",
        call(&conn, &no_body, CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(&resp),
        Some(pb::ErrorCode::BadRequest),
        "{resp:?}"
    );

    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler saw a request");

    // The connection is still usable after all those refusals.
    let resp = within(
        "status call",
        call(&conn, &status_request(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    assert!(matches!(resp.body, Some(pb::response::Body::Status(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn call_enforces_the_response_limit_and_its_timeout() {
    let dir = pki();
    let server = server(dir.path());
    let server_addr = addr(&server);
    let (_calls, _task) = spawn_server(server, MAX_FRAME_BYTES);
    let client = client(&files(dir.path(), "region-sh"));
    let conn = within(
        "connect",
        connect(&client, server_addr, &server_id(), CALL_TIMEOUT_MS),
    )
    .await
    .unwrap();

    let big_read = request(pb::request::Body::Read(pb::ReadRequest {
        max_bytes: 100_000,
        ..Default::default()
    }));
    match within("big read", call(&conn, &big_read, CALL_TIMEOUT_MS, 10_000)).await {
        Err(WireError::FrameTooLarge { len, max }) => {
            assert!(len > 100_000);
            assert_eq!(max, 10_000);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }

    // The handler never answers a trim; the call must give up on its own.
    let trim = request(pb::request::Body::Trim(pb::TrimRequest { below_offset: 1 }));
    match within("unanswered call", call(&conn, &trim, 200, MAX_FRAME_BYTES)).await {
        Err(WireError::Timeout { timeout_ms, .. }) => assert_eq!(timeout_ms, 200),
        other => panic!("expected a timeout, got {other:?}"),
    }

    // Neither failure broke the connection.
    let resp = within(
        "status call",
        call(&conn, &status_request(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES),
    )
    .await
    .unwrap();
    assert!(matches!(resp.body, Some(pb::response::Body::Status(_))));
}

#[tokio::test]
async fn serve_returns_when_the_endpoint_closes() {
    let dir = pki();
    let server = server(dir.path());
    let (_calls, task) = spawn_server(server.clone(), MAX_FRAME_BYTES);
    server.close(quinn::VarInt::from_u32(0), b"shutdown");
    within("serve after close", task).await.unwrap();
}

#[tokio::test]
async fn missing_certificate_file_says_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = files(dir.path(), "nobody");
    let err = client_endpoint(any_port(), &tls, &EndpointLimits::default()).unwrap_err();
    assert!(matches!(err, WireError::TlsFileMissing { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("ca.pem"), "{message}");
    assert!(message.contains("homeport certs"), "{message}");
}

#[tokio::test]
async fn key_of_another_certificate_is_refused_at_start_up() {
    let dir = pki();
    let mismatched = TlsFiles {
        key: dir.path().join("sh-g1-a.key"),
        ..files(dir.path(), "region-sh")
    };
    let err = server_endpoint(any_port(), &mismatched, &EndpointLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TlsFileInvalid {
                what: "private key",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn nonsensical_limits_are_refused() {
    let dir = pki();
    let tls = files(dir.path(), "region-sh");
    for limits in [
        EndpointLimits {
            max_concurrent_bidi_streams: 0,
            ..Default::default()
        },
        EndpointLimits {
            idle_timeout_ms: 0,
            ..Default::default()
        },
        EndpointLimits {
            keep_alive_interval_ms: 10_000,
            idle_timeout_ms: 10_000,
            ..Default::default()
        },
    ] {
        let err = client_endpoint(any_port(), &tls, &limits).unwrap_err();
        assert!(matches!(err, WireError::BadLimits { .. }), "{err:?}");
    }
}
