//! The gateway's own HTTP/1.1 connection loop, seen from a raw socket: keep-alive, pipelined
//! requests answered in order, heads arriving in pieces, `Connection: close`, refused heads
//! (400, 431) answered before the connection closes, and what it hands to hyper (HTTP/1.0,
//! chunked bodies) served the same.

mod gateway_common;
mod regions_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gateway_common::Backend;
use homeport_integration::{Cluster, ClusterSpec, GatewaySetup, RegionSetup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the machine may be busy with other tests.
const READ_TIMEOUT_MS: u64 = 30_000;
/// An idle connection must be closed well before the gateway's drain limit (10 s) would
/// close it anyway; it takes milliseconds.
const IDLE_CLOSE_MAX_MS: u64 = 5_000;

/// Reads one response (head and a body of its Content-Length, or chunked) from `stream`,
/// keeping what follows in `pending`. Returns (head, body).
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(String, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(READ_TIMEOUT_MS);
    let more = async |stream: &mut TcpStream, pending: &mut Vec<u8>| -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("no response in time")??;
        if n == 0 {
            bail!(
                "the gateway closed the connection mid-response: {:?}",
                String::from_utf8_lossy(pending)
            );
        }
        pending.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(stream, pending).await?;
    };
    let head = String::from_utf8(pending.drain(..head_end).collect())?;
    let lower = head.to_ascii_lowercase();
    let body = if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let len: usize = len.trim().parse()?;
        while pending.len() < len {
            more(stream, pending).await?;
        }
        pending.drain(..len).collect()
    } else if lower.contains("transfer-encoding: chunked") {
        while !pending.windows(5).any(|w| w == b"0\r\n\r\n") {
            more(stream, pending).await?;
        }
        let end = pending
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .unwrap_or(0)
            + 5;
        pending.drain(..end).collect()
    } else {
        Vec::new()
    };
    Ok((head, body))
}

/// Whether the gateway closes the connection (reads to EOF, nothing more may come).
async fn closes(stream: &mut TcpStream) -> Result<bool> {
    let mut rest = Vec::new();
    match tokio::time::timeout(
        Duration::from_millis(READ_TIMEOUT_MS),
        stream.read_to_end(&mut rest),
    )
    .await
    {
        Ok(Ok(_)) => Ok(rest.is_empty()),
        // A reset after the answer is a close too.
        Ok(Err(_)) => Ok(true),
        Err(_) => Ok(false),
    }
}

fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_loop_keeps_alive_pipelines_and_refuses_bad_heads() -> Result<()> {
    let backend = Backend::start().await?;
    let setup = GatewaySetup {
        settings: Vec::new(),
        region_toml: vec![(
            "sh".into(),
            format!(
                "[[regions.upstreams]]\nprefix = \"/svc/\"\nurl = \"{}\"",
                backend.url()
            ),
        )],
    };
    // Only the gateway runs: the upstream path needs neither queue nodes nor the region process.
    let cluster = Cluster::with_gateways(
        regions_common::bin(),
        &ClusterSpec::one_region(1),
        &RegionSetup::default(),
        &setup,
    )?;
    cluster.start_gateway("sh")?;
    let addr = cluster
        .gateway_url("sh")?
        .trim_start_matches("http://")
        .to_string();
    let ticket = cluster.ticket("sh-1")?;
    let connect = async || -> Result<TcpStream> {
        regions_common::eventually("the gateway to listen", regions_common::WAIT_MS, || async {
            TcpStream::connect(&addr).await.map_err(|e| e.to_string())
        })
        .await
    };
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ticket}\r\n{extra}\r\n")
    };

    // Keep-alive, three requests pipelined in one write, then one sent a few bytes at a time.
    let mut s = connect().await?;
    let mut pending = Vec::new();
    let three = format!(
        "{}{}{}",
        get("/svc/headers?n=1", ""),
        get("/svc/nothing-here", ""),
        get("/svc/headers?n=3", "")
    );
    s.write_all(three.as_bytes()).await?;
    for (n, want) in [(1, "200"), (2, "404"), (3, "200")] {
        let (head, body) = read_response(&mut s, &mut pending).await?;
        ensure!(status(&head) == want, "answer {n}: {head}");
        ensure!(
            head.to_ascii_lowercase().contains("\r\ndate: "),
            "a Date field: {head}"
        );
        if want == "200" {
            let seen: serde_json::Value = serde_json::from_slice(&body)?;
            ensure!(
                seen["query"] == format!("n={n}"),
                "answers in order: {seen}"
            );
        }
    }
    // Headers adapted for the upstream on the short path too (the user's home is cached by now).
    let spoof = get(
        "/svc/headers",
        "Connection: x-drop\r\nX-Drop: 1\r\nHomeport-User: sh-999\r\nX-Forwarded-For: 10.0.0.1\r\n",
    );
    s.write_all(spoof.as_bytes()).await?;
    let (head, body) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "200", "{head}");
    let seen: serde_json::Value = serde_json::from_slice(&body)?;
    let h = &seen["headers"];
    ensure!(
        h.get("x-drop").is_none() && h.get("connection").is_none(),
        "{seen}"
    );
    ensure!(h["homeport-user"] == "sh-1", "the checked user: {seen}");
    ensure!(h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1", "{seen}");
    ensure!(
        h["forwarded"] == "for=127.0.0.1;proto=http;host=\"gw\"",
        "{seen}"
    );
    let one = get("/svc/headers?n=4", "");
    for piece in one.as_bytes().chunks(7) {
        s.write_all(piece).await?;
        s.flush().await?;
        tokio::task::yield_now().await;
    }
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "200", "a head in pieces: {head}");

    // A small body is read whole and passed on.
    let put = format!(
        "PUT /svc/sink HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ticket}\r\nContent-Length: 5\r\n\r\nhello"
    );
    s.write_all(put.as_bytes()).await?;
    let (head, body) = read_response(&mut s, &mut pending).await?;
    let got: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(status(&head) == "200" && got["bytes"] == 5, "{head}{got}");

    // Connection: close is answered, then the gateway closes.
    s.write_all(get("/svc/headers", "Connection: close\r\n").as_bytes())
        .await?;
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(
        status(&head) == "200" && head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    ensure!(closes(&mut s).await?, "closed after Connection: close");

    // A malformed head: 400 with the reason, then closed.
    let mut s = connect().await?;
    s.write_all(b"GET /svc/x HTTP/1.1\r\nno colon here\r\n\r\n")
        .await?;
    let (head, body) = read_response(&mut s, &mut Vec::new()).await?;
    ensure!(status(&head) == "400", "{head}");
    ensure!(
        String::from_utf8_lossy(&body).contains("not valid HTTP/1.1"),
        "{body:?}"
    );
    ensure!(closes(&mut s).await?, "closed after a malformed head");

    // Conflicting lengths: 400.
    let mut s = connect().await?;
    s.write_all(b"PUT /svc/sink HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        .await?;
    let (head, _) = read_response(&mut s, &mut Vec::new()).await?;
    ensure!(status(&head) == "400", "conflicting lengths: {head}");

    // A signed length (u64::from_str takes "+5"; RFC 9110 says 1*DIGIT): 400.
    let mut s = connect().await?;
    s.write_all(
        format!(
            "PUT /svc/sink HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ticket}\r\n\
             Content-Length: +5\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await?;
    let (head, _) = read_response(&mut s, &mut Vec::new()).await?;
    ensure!(status(&head) == "400", "signed length: {head}");

    // The h2c preface arriving in pieces still starts HTTP/2 (the server's first frame is
    // SETTINGS, type 4); after an HTTP/1.1 request it is no preface, just a bad request.
    let mut s = connect().await?;
    s.write_all(b"PRI * HTTP/2").await?;
    s.flush().await?;
    tokio::task::yield_now().await;
    s.write_all(b".0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let mut frame = [0u8; 9];
    tokio::time::timeout(
        Duration::from_millis(READ_TIMEOUT_MS),
        s.read_exact(&mut frame),
    )
    .await??;
    ensure!(frame[3] == 4, "an HTTP/2 SETTINGS frame first: {frame:?}");
    let mut s = connect().await?;
    let mut pending = Vec::new();
    s.write_all(get("/svc/headers", "").as_bytes()).await?;
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "200", "{head}");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "400", "a preface mid-connection: {head}");

    // A head over the limit: 431.
    let mut s = connect().await?;
    let huge = get(
        "/svc/headers",
        &format!("X-Big: {}\r\n", "a".repeat(70 * 1024)),
    );
    // The gateway may answer and close before it has read everything.
    let _ = s.write_all(huge.as_bytes()).await;
    let (head, _) = read_response(&mut s, &mut Vec::new()).await?;
    ensure!(status(&head) == "431", "{head}");

    // Handed to hyper: HTTP/1.0, and a chunked body, each after a request served here.
    let mut s = connect().await?;
    let mut pending = Vec::new();
    s.write_all(get("/svc/headers", "").as_bytes()).await?;
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "200", "{head}");
    let chunked = format!(
        "PUT /svc/sink HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ticket}\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    );
    s.write_all(chunked.as_bytes()).await?;
    let (head, body) = read_response(&mut s, &mut pending).await?;
    let got: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(
        status(&head) == "200" && got["bytes"] == 7,
        "chunked: {head}{got}"
    );
    s.write_all(get("/svc/headers?after=chunked", "").as_bytes())
        .await?;
    let (head, _) = read_response(&mut s, &mut pending).await?;
    ensure!(status(&head) == "200", "hyper keeps the connection: {head}");

    let mut s = connect().await?;
    let old = format!("GET /svc/headers HTTP/1.0\r\nAuthorization: Bearer {ticket}\r\n\r\n");
    s.write_all(old.as_bytes()).await?;
    let mut all = Vec::new();
    tokio::time::timeout(
        Duration::from_millis(READ_TIMEOUT_MS),
        s.read_to_end(&mut all),
    )
    .await??;
    let text = String::from_utf8_lossy(&all);
    ensure!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "HTTP/1.0: {text}"
    );

    // Graceful shutdown (SIGTERM): a request in flight is answered (and told the connection
    // closes), an idle keep-alive connection is closed at once rather than at the drain limit.
    let mut idle = connect().await?;
    let mut pending = Vec::new();
    idle.write_all(get("/svc/headers", "").as_bytes()).await?;
    let (head, _) = read_response(&mut idle, &mut pending).await?;
    ensure!(status(&head) == "200", "{head}");
    let mut busy = connect().await?;
    let before = backend.requests.load(Ordering::SeqCst);
    busy.write_all(get("/svc/slow?ms=1500", "").as_bytes())
        .await?;
    regions_common::eventually(
        "the slow request to reach the upstream",
        regions_common::WAIT_MS,
        || async {
            if backend.requests.load(Ordering::SeqCst) > before {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await?;
    let pid = cluster
        .pid(&homeport_config::gateway_identity("sh"))
        .context("the gateway runs")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -TERM {pid}");
    let started = tokio::time::Instant::now();
    ensure!(closes(&mut idle).await?, "the idle connection is closed");
    ensure!(
        started.elapsed() < Duration::from_millis(IDLE_CLOSE_MAX_MS),
        "the idle connection was closed only after {:?}: shutdown waited for it",
        started.elapsed()
    );
    let (head, body) = read_response(&mut busy, &mut Vec::new()).await?;
    ensure!(
        status(&head) == "200" && body == b"ok",
        "the request in flight is answered: {head}"
    );
    ensure!(
        head.to_ascii_lowercase().contains("connection: close"),
        "and told the connection closes: {head}"
    );
    ensure!(closes(&mut busy).await?, "then closed");
    Ok(())
}
