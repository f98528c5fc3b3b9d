//! The WAN emulator between plain UDP echo servers and real QUIC endpoints on 127.0.0.1: what a
//! multi-region test relies on (delay, loss, partitions, runtime changes, per-client NAT, FIFO).
//!
//! Timing assertions are lower bounds (a relay must never be faster than the link it emulates);
//! upper bounds are only there to tell "took effect" from "did not", with 500 ms or more to spare.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeport_integration::wait_until;
use homeport_integration::wan::{
    BOTTLENECK_QUEUE_MAX_MS, LinkConditions, LinkStats, Wan, WanOptions,
};
use homeport_wire::{
    DevCertSpec, EndpointLimits, Identity, MAX_FRAME_BYTES, Role, TlsFiles, WireError, call,
    client_endpoint, connect, generate_dev_certs, pb, request, serve, server_endpoint,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Generous: the machine is shared and slow; only a hang should hit this.
const TEST_DEADLINE_MS: u64 = 30_000;
/// How long one ping waits for its echo before it counts as lost.
const PING_TIMEOUT_MS: u64 = 3_000;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(TEST_DEADLINE_MS), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_DEADLINE_MS} ms"))
}

async fn udp() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind((LOCALHOST, 0)).await.unwrap())
}

/// A UDP server answering each datagram with `reply(source, payload)`, for the test's lifetime.
async fn udp_server(reply: fn(SocketAddr, &[u8]) -> Vec<u8>) -> SocketAddr {
    let socket = udp().await;
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&reply(from, &buf[..n]), from).await;
        }
    });
    addr
}

async fn echo_server() -> SocketAddr {
    udp_server(|_, payload| payload.to_vec()).await
}

/// Answers `<source address> <payload>`, so clients see which address the server saw.
async fn who_server() -> SocketAddr {
    udp_server(|from, payload| {
        let mut out = format!("{from} ").into_bytes();
        out.extend_from_slice(payload);
        out
    })
    .await
}

/// Sends `payload` to `to` and returns the round trip once the same payload comes back, or
/// `None` after `timeout_ms` (older echoes arriving meanwhile are skipped).
async fn ping(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    timeout_ms: u64,
) -> Option<Duration> {
    let start = Instant::now();
    socket.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let deadline = start + Duration::from_millis(timeout_ms);
    loop {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if &buf[..n] == payload => return Some(start.elapsed()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

async fn ping_ok(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Duration {
    ping(socket, to, payload, PING_TIMEOUT_MS)
        .await
        .unwrap_or_else(|| panic!("no echo of {payload:?} within {PING_TIMEOUT_MS} ms"))
}

/// Collects every 4-byte sequence number that arrives on `socket`, in arrival order.
fn collect_seqs(socket: Arc<UdpSocket>) -> Arc<Mutex<Vec<u32>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            if let Ok(seq) = <[u8; 4]>::try_from(&buf[..n]) {
                out.lock().unwrap().push(u32::from_be_bytes(seq));
            }
        }
    });
    seen
}

/// Datagrams the relay has decided about in one direction (forwarded or dropped).
fn decided(s: &LinkStats) -> u64 {
    s.datagrams_forwarded
        + s.dropped_loss
        + s.dropped_partition
        + s.dropped_congestion
        + s.dropped_overflow
        + s.send_errors
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    wait_until(what, TEST_DEADLINE_MS, || {
        let ok = cond();
        async move { ok }
    })
    .await
    .unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn delay_applies_in_each_direction() {
    let server = echo_server().await;
    let wan = Wan::new(1);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;

    let direct: Vec<Duration> = {
        let mut v = Vec::new();
        for i in 0..10u8 {
            v.push(ping_ok(&client, server, &[b'd', i]).await);
        }
        v
    };
    let mut perfect = Vec::new();
    for i in 0..10u8 {
        perfect.push(ping_ok(&client, relay, &[b'p', i]).await);
    }

    // Different each way: the round trip pays both.
    wan.set("sh", "hk", LinkConditions::delay(30));
    wan.set("hk", "sh", LinkConditions::delay(50));
    let mut delayed = Vec::new();
    for i in 0..20u8 {
        delayed.push(ping_ok(&client, relay, &[b'w', i]).await);
    }
    let min = *delayed.iter().min().unwrap();
    assert!(
        min >= Duration::from_millis(80),
        "a round trip over 30 ms + 50 ms took only {min:?}"
    );
    let med = median(delayed.clone());
    assert!(
        med < Duration::from_millis(80 + 500),
        "median round trip {med:?} is far above the 80 ms configured"
    );
    eprintln!(
        "rtt median: direct {:?}, relay without delay {:?}, relay 30+50 ms {:?} (min {:?}, max {:?})",
        median(direct),
        median(perfect),
        med,
        min,
        delayed.iter().max().unwrap()
    );
    let there = wan.stats("sh", "hk");
    let back = wan.stats("hk", "sh");
    assert_eq!(there.datagrams_forwarded, 30);
    assert_eq!(back.datagrams_forwarded, 30);
    assert_eq!(there.bytes_forwarded, 60);
}

#[tokio::test]
async fn jitter_adds_within_its_range() {
    let server = echo_server().await;
    let wan = Wan::new(2);
    let relay = wan.relay("sh", "ca", server, LOCALHOST).await.unwrap();
    wan.set(
        "sh",
        "ca",
        LinkConditions {
            delay_ms: 20,
            jitter_ms: 40,
            ..LinkConditions::default()
        },
    );
    let client = udp().await;
    let mut rtts = Vec::new();
    for i in 0..30u8 {
        rtts.push(ping_ok(&client, relay, &[i]).await);
    }
    let min = *rtts.iter().min().unwrap();
    let max = *rtts.iter().max().unwrap();
    assert!(
        min >= Duration::from_millis(20),
        "min {min:?} below the delay floor"
    );
    // 30 uniform draws over 0..=40 ms all landing within 5 ms of each other would mean no jitter.
    assert!(
        max - min >= Duration::from_millis(5),
        "no spread in round trips ({min:?}..{max:?}) with 40 ms jitter"
    );
}

#[tokio::test]
async fn partition_drops_both_ways_and_heal_restores() {
    let server = echo_server().await;
    let wan = Wan::new(3);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    ping_ok(&client, relay, b"before").await;

    wan.partition("sh", "hk");
    assert!(wan.conditions("sh", "hk").partitioned && wan.conditions("hk", "sh").partitioned);
    for i in 0..10u8 {
        client.send_to(&[b'x', i], relay).await.unwrap();
    }
    within(
        "partition drops",
        wait_for("10 drops", || wan.stats("sh", "hk").dropped_partition >= 10),
    )
    .await;
    let mut buf = [0u8; 64];
    assert!(
        client.try_recv_from(&mut buf).is_err(),
        "a datagram crossed a partition"
    );
    assert_eq!(wan.stats("sh", "hk").datagrams_forwarded, 1);

    wan.heal("sh", "hk");
    within("traffic after heal", async {
        let mut i = 0u8;
        while ping(&client, relay, &[b'h', i], 500).await.is_none() {
            i = i.wrapping_add(1);
        }
    })
    .await;
}

#[tokio::test]
async fn partition_in_one_direction_cuts_only_replies() {
    let server = echo_server().await;
    let wan = Wan::new(4);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    wan.set(
        "hk",
        "sh",
        LinkConditions {
            partitioned: true,
            ..LinkConditions::default()
        },
    );
    for i in 0..5u8 {
        client.send_to(&[i], relay).await.unwrap();
    }
    within(
        "replies dropped",
        wait_for("5 replies dropped", || {
            wan.stats("hk", "sh").dropped_partition >= 5
        }),
    )
    .await;
    assert_eq!(wan.stats("sh", "hk").datagrams_forwarded, 5);
    assert_eq!(wan.stats("hk", "sh").datagrams_forwarded, 0);
}

#[tokio::test]
async fn partition_cuts_datagrams_already_in_flight() {
    let server = echo_server().await;
    let wan = Wan::new(5);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    // Long enough that the partition surely lands while the datagram waits in the relay.
    wan.set("sh", "hk", LinkConditions::delay(2_000));
    client.send_to(b"in flight", relay).await.unwrap();
    within(
        "datagram queued",
        wait_for("the relay to hold the datagram", || wan.nat_sessions() == 1),
    )
    .await;
    wan.partition("sh", "hk");
    within(
        "in-flight drop",
        wait_for("the queued datagram to be dropped", || {
            wan.stats("sh", "hk").dropped_partition == 1
        }),
    )
    .await;
    assert_eq!(wan.stats("sh", "hk").datagrams_forwarded, 0);
}

#[tokio::test]
async fn partition_region_cuts_every_link_of_that_region() {
    let server_hk = echo_server().await;
    let server_sh = echo_server().await;
    let wan = Wan::new(6);
    let sh_to_hk = wan.relay("sh", "hk", server_hk, LOCALHOST).await.unwrap();
    let client = udp().await;
    ping_ok(&client, sh_to_hk, b"a").await;

    wan.partition_region("ca");
    // Links of ca first used after the cut start cut; others are untouched.
    let ca_to_sh = wan.relay("ca", "sh", server_sh, LOCALHOST).await.unwrap();
    let hk_to_sh = wan.relay("hk", "sh", server_sh, LOCALHOST).await.unwrap();
    ping_ok(&client, sh_to_hk, b"b").await;
    ping_ok(&client, hk_to_sh, b"c").await;
    client.send_to(b"d", ca_to_sh).await.unwrap();
    within(
        "ca cut",
        wait_for("ca's datagram to be dropped", || {
            wan.stats("ca", "sh").dropped_partition == 1
        }),
    )
    .await;

    wan.heal_all();
    within("ca back", async {
        let mut i = 0u8;
        while ping(&client, ca_to_sh, &[b'e', i], 500).await.is_none() {
            i = i.wrapping_add(1);
        }
    })
    .await;
}

#[tokio::test]
async fn conditions_changed_at_runtime_take_effect() {
    let server = echo_server().await;
    let wan = Wan::new(7);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    ping_ok(&client, relay, b"warm").await;

    wan.set_both("sh", "hk", LinkConditions::delay(400));
    let slow = ping_ok(&client, relay, b"slow").await;
    assert!(
        slow >= Duration::from_millis(800),
        "slow link answered in {slow:?}"
    );

    wan.set_both("sh", "hk", LinkConditions::default());
    let fast = ping_ok(&client, relay, b"fast").await;
    assert!(
        fast < Duration::from_millis(800),
        "the link was made perfect again, yet answered in {fast:?}"
    );
}

#[tokio::test]
async fn each_client_gets_its_own_replies() {
    let server = who_server().await;
    let wan = Wan::new(8);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    wan.set_both("sh", "hk", LinkConditions::delay(10));
    let (a, b) = (udp().await, udp().await);
    let mut seen_by_server = HashSet::new();
    for i in 0..10u8 {
        for (name, socket) in [("a", &a), ("b", &b)] {
            let payload = format!("{name}{i}");
            socket.send_to(payload.as_bytes(), relay).await.unwrap();
            let mut buf = [0u8; 256];
            let (n, from) = within("reply", socket.recv_from(&mut buf)).await.unwrap();
            assert_eq!(from, relay, "replies come from the relay");
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (source, echoed) = reply.split_once(' ').unwrap();
            assert_eq!(echoed, payload, "client {name} got someone else's reply");
            seen_by_server.insert(source.to_owned());
        }
    }
    assert_eq!(
        seen_by_server.len(),
        2,
        "two clients must map to two upstream addresses: {seen_by_server:?}"
    );
    assert_eq!(wan.nat_sessions(), 2);
}

#[tokio::test]
async fn idle_sessions_expire_and_come_back() {
    let server = who_server().await;
    let wan = Wan::with_options(WanOptions {
        seed: 9,
        session_idle_timeout_ms: 500,
    });
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    let mut buf = [0u8; 256];
    client.send_to(b"1", relay).await.unwrap();
    within("first reply", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(wan.nat_sessions(), 1);
    within(
        "expiry",
        wait_for("the idle session to close", || wan.nat_sessions() == 0),
    )
    .await;
    client.send_to(b"2", relay).await.unwrap();
    let (n, _) = within("reply after expiry", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].ends_with(b" 2"));
    assert_eq!(wan.nat_sessions(), 1);
}

/// Sends `count` sequence numbers through `relay` in batches the socket buffers surely hold,
/// waiting after each batch until the relay has decided about all of it, then waits for every
/// forwarded one's echo. Returns the sequence numbers echoed, in arrival order.
async fn send_numbered(wan: &Wan, relay: SocketAddr, count: u32) -> Vec<u32> {
    const BATCH: u32 = 50;
    let client = udp().await;
    let received = collect_seqs(client.clone());
    let mut sent = 0u32;
    while sent < count {
        let end = (sent + BATCH).min(count);
        for seq in sent..end {
            client.send_to(&seq.to_be_bytes(), relay).await.unwrap();
        }
        sent = end;
        within(
            "batch",
            wait_for("the relay to decide on a batch", || {
                decided(&wan.stats("sh", "hk")) == u64::from(sent)
            }),
        )
        .await;
    }
    within(
        "echoes",
        wait_for("every forwarded datagram's echo", || {
            received.lock().unwrap().len() as u64 == wan.stats("sh", "hk").datagrams_forwarded
        }),
    )
    .await;
    received.lock().unwrap().clone()
}

#[tokio::test]
async fn loss_follows_its_probability_and_its_seed() {
    let run = |seed| async move {
        let server = echo_server().await;
        let wan = Wan::new(seed);
        let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
        wan.set(
            "sh",
            "hk",
            LinkConditions {
                loss: 0.3,
                ..LinkConditions::default()
            },
        );
        let got = send_numbered(&wan, relay, 2_000).await;
        (got, wan.stats("sh", "hk"))
    };
    let (first, stats) = run(42).await;
    let ratio = stats.dropped_loss as f64 / 2_000.0;
    eprintln!("loss 0.3 over 2000 datagrams: {ratio:.3} dropped");
    // Five standard deviations (0.01 each) either side.
    assert!(
        (0.25..=0.35).contains(&ratio),
        "dropped {ratio} with loss 0.3"
    );
    assert_eq!(first.len() as u64 + stats.dropped_loss, 2_000);

    let (again, _) = run(42).await;
    assert_eq!(first, again, "the same seed must drop the same datagrams");
    let (other, _) = run(43).await;
    assert_ne!(first, other, "another seed must drop other datagrams");
}

#[tokio::test]
async fn jitter_keeps_fifo_unless_reorder_is_on() {
    let run = |reorder| async move {
        let server = echo_server().await;
        let wan = Wan::new(10);
        let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
        wan.set(
            "sh",
            "hk",
            LinkConditions {
                delay_ms: 5,
                jitter_ms: 50,
                reorder,
                ..LinkConditions::default()
            },
        );
        send_numbered(&wan, relay, 100).await
    };
    let fifo = run(false).await;
    assert_eq!(
        fifo,
        (0..100).collect::<Vec<u32>>(),
        "reorder off must keep order"
    );
    // The control: the same jitter does reorder when allowed, so the check above can fail.
    let shuffled = run(true).await;
    assert_eq!(shuffled.len(), 100);
    assert!(
        shuffled.windows(2).any(|w| w[0] > w[1]),
        "50 ms of jitter with reorder on reordered nothing"
    );
}

#[tokio::test]
async fn bandwidth_cap_paces_and_tail_drops() {
    const DATAGRAM_BYTES: usize = 1_000;
    const RATE_BYTES_PER_S: u64 = 100_000; // 10 ms per datagram
    let server = echo_server().await;
    let wan = Wan::new(11);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    wan.set(
        "sh",
        "hk",
        LinkConditions {
            bandwidth_bytes_per_s: Some(RATE_BYTES_PER_S),
            ..LinkConditions::default()
        },
    );
    let client = udp().await;
    // 20 datagrams queue 200 ms, well within the bottleneck's buffer: all pass, paced.
    let start = Instant::now();
    for i in 0..20u8 {
        client.send_to(&[i; DATAGRAM_BYTES], relay).await.unwrap();
    }
    let mut buf = vec![0u8; 65_535];
    for _ in 0..20 {
        within("paced echo", client.recv_from(&mut buf))
            .await
            .unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(195),
        "20 kB at 100 kB/s arrived in {elapsed:?}"
    );
    assert_eq!(wan.stats("sh", "hk").dropped_congestion, 0);
    eprintln!("20 x 1000 B at 100 kB/s: {elapsed:?}");

    // Twice the buffer at once: the tail is dropped.
    let burst = 2 * BOTTLENECK_QUEUE_MAX_MS as usize / 10;
    for i in 0..burst {
        client
            .send_to(&[i as u8; DATAGRAM_BYTES], relay)
            .await
            .unwrap();
    }
    within(
        "tail drop",
        wait_for("congestion drops", || {
            wan.stats("sh", "hk").dropped_congestion > 0
        }),
    )
    .await;
}

#[tokio::test]
async fn large_datagrams_pass_whole() {
    let server = echo_server().await;
    let wan = Wan::new(12);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    ping_ok(&client, relay, &big).await;
}

#[tokio::test]
async fn dropping_the_wan_closes_its_sockets() {
    let server = who_server().await;
    let wan = Wan::new(13);
    let relay = wan.relay("sh", "hk", server, LOCALHOST).await.unwrap();
    let client = udp().await;
    client.send_to(b"x", relay).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = within("reply", client.recv_from(&mut buf)).await.unwrap();
    let upstream: SocketAddr = String::from_utf8_lossy(&buf[..n])
        .split_once(' ')
        .unwrap()
        .0
        .parse()
        .unwrap();
    drop(wan);
    // Each socket is free again only once the task holding it has ended.
    for addr in [relay, upstream] {
        within(
            "socket release",
            wait_for("the relay's tasks to end", || {
                std::net::UdpSocket::bind(addr).is_ok()
            }),
        )
        .await;
    }
}

fn quic_server_id() -> Identity {
    Identity::new("hk-g1-a", Role::QueueNode, "hk").unwrap()
}

#[tokio::test]
async fn quic_works_through_a_relay_and_not_across_a_partition() {
    const CALL_TIMEOUT_MS: u64 = 1_000;
    let pki = tempfile::tempdir().unwrap();
    let client_id = Identity::new("region-sh", Role::Region, "sh").unwrap();
    let specs = [quic_server_id(), client_id].map(|identity| DevCertSpec {
        identity,
        ips: vec![LOCALHOST],
    });
    generate_dev_certs(pki.path(), &specs).unwrap();
    let files = |name| TlsFiles::for_identity(&pki.path().join("ca.pem"), pki.path(), name);
    let server = server_endpoint(
        SocketAddr::new(LOCALHOST, 0),
        &files("hk-g1-a"),
        &EndpointLimits::default(),
    )
    .unwrap();
    let server_addr = server.local_addr().unwrap();
    tokio::spawn(serve(server, MAX_FRAME_BYTES, |_peer, _req| async {
        pb::Response {
            body: Some(pb::response::Body::Status(pb::StatusResponse::default())),
        }
    }));
    let client = client_endpoint(
        SocketAddr::new(LOCALHOST, 0),
        &files("region-sh"),
        &EndpointLimits::default(),
    )
    .unwrap();

    let wan = Wan::new(14);
    let relay = wan.relay("sh", "hk", server_addr, LOCALHOST).await.unwrap();
    wan.set_both("sh", "hk", LinkConditions::delay(30));
    let conn = within(
        "connect",
        connect(&client, relay, &quic_server_id(), TEST_DEADLINE_MS),
    )
    .await
    .unwrap();
    let status = || request(pb::request::Body::Status(pb::StatusRequest {}));

    let mut rtts = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let resp = call(&conn, &status(), TEST_DEADLINE_MS, MAX_FRAME_BYTES)
            .await
            .unwrap();
        rtts.push(start.elapsed());
        assert!(matches!(resp.body, Some(pb::response::Body::Status(_))));
    }
    let min = *rtts.iter().min().unwrap();
    assert!(
        min >= Duration::from_millis(60),
        "a call over 2 x 30 ms took {min:?}"
    );
    eprintln!("QUIC call over 30 ms each way: {rtts:?}");

    wan.partition("sh", "hk");
    match call(&conn, &status(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES).await {
        Err(WireError::Timeout { .. }) => {}
        other => panic!("a call across a partition must time out, got {other:?}"),
    }

    wan.heal("sh", "hk");
    within("call after heal", async {
        loop {
            if call(&conn, &status(), CALL_TIMEOUT_MS, MAX_FRAME_BYTES)
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await;
    assert!(
        conn.close_reason().is_none(),
        "the connection outlived a short partition"
    );
}
