//! The `homeport` program as an operator drives it: `queue append|tail|status`, `queue-node`, and
//! what it says when the config or the command line is wrong.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use common::*;

/// Longest any one command may take; `status` with nodes down waits out connect timeouts.
const COMMAND_TIMEOUT_MS: u64 = 60_000;

async fn run(args: &[&str], config: &Path) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(bin());
    for a in args {
        cmd.arg(a.replace("{config}", &config.display().to_string()));
    }
    cmd.env("HOMEPORT_LOG", "warn").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_millis(COMMAND_TIMEOUT_MS), cmd.output())
        .await
        .with_context(|| {
            format!(
                "`homeport {}` did not finish in {COMMAND_TIMEOUT_MS} ms",
                args.join(" ")
            )
        })??;
    Ok(out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "`homeport {}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_tail_and_status() -> anyhow::Result<()> {
    let (cluster, _endpoint) = start(&fast_spec(2)).await?;
    let config = cluster.config_path.clone();

    let args = [
        "queue", "append", "--config", "{config}", "--region", "sh", "--count", "5",
    ];
    let out = run(&args, &config).await?;
    assert!(out.status.success(), "{}", describe(&args, &out));
    let committed = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("committed"))
        .count();
    assert_eq!(committed, 5, "{}", describe(&args, &out));

    let args = [
        "queue", "tail", "--config", "{config}", "--region", "sh", "--json",
    ];
    let out = run(&args, &config).await?;
    assert!(out.status.success(), "{}", describe(&args, &out));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| describe(&args, &out))?;
    let ids: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        5,
        "tail must list the 5 appended entries once each: {}",
        describe(&args, &out)
    );
    let payloads: HashSet<&str> = lines.iter().filter_map(|l| l["payload"].as_str()).collect();
    let expected: HashSet<String> = (0..5).map(|i| format!("test entry {i}")).collect();
    assert_eq!(
        payloads,
        expected.iter().map(String::as_str).collect(),
        "{}",
        describe(&args, &out)
    );
    assert!(
        lines.iter().all(|l| l["kind"] == "ENTRY_KIND_TEST"),
        "{}",
        describe(&args, &out)
    );

    let args = ["queue", "status", "--config", "{config}", "--region", "sh"];
    let out = run(&args, &config).await?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    let stdout = text(&out.stdout);
    for id in cluster.node_ids() {
        assert!(
            stdout.contains(&id),
            "status does not list {id}: {}",
            describe(&args, &out)
        );
    }
    assert!(!stdout.contains("DOWN"), "{}", describe(&args, &out));

    let g2 = group_nodes(&cluster, "g2");
    cluster.kill_node(&g2[0])?;
    cluster.kill_node(&g2[2])?;
    let out = run(&args, &config).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("g2") && !stderr.contains("g1"),
        "status must name the group without quorum (g2) and only it: {}",
        describe(&args, &out)
    );
    assert_eq!(
        text(&out.stdout).matches("DOWN").count(),
        2,
        "{}",
        describe(&args, &out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_is_named() -> anyhow::Result<()> {
    let cluster = homeport_integration::Cluster::new(bin(), &fast_spec(1))?;
    let args = ["queue-node", "--config", "{config}", "--node", "nope"];
    let out = run(&args, &cluster.config_path).await?;
    assert!(!out.status.success(), "{}", describe(&args, &out));
    assert!(
        text(&out.stderr).contains("\"nope\""),
        "the error must name the unknown node: {}",
        describe(&args, &out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_fails_every_command_with_the_place() -> anyhow::Result<()> {
    let cluster = homeport_integration::Cluster::new(bin(), &fast_spec(1))?;
    let good = std::fs::read_to_string(&cluster.config_path)?;
    assert!(good.contains("[queue]\n"));
    let bad = cluster.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        good.replacen("[queue]\n", "[queue]\nmax_in_flight_batches = 0\n", 1),
    )?;
    let node = cluster.node_ids()[0].clone();

    let commands: [&[&str]; 5] = [
        &["queue", "status", "--config", "{config}", "--region", "sh"],
        &[
            "queue", "append", "--config", "{config}", "--region", "sh", "--count", "1",
        ],
        &["queue", "tail", "--config", "{config}", "--region", "sh"],
        &["queue-node", "--config", "{config}", "--node", &node],
        &["certs", "--config", "{config}"],
    ];
    for args in commands {
        let out = run(args, &bad).await?;
        assert_eq!(out.status.code(), Some(2), "{}", describe(args, &out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("queue.max_in_flight_batches") && stderr.contains("bad.toml"),
            "the error must say which file and which setting is wrong: {}",
            describe(args, &out)
        );
    }
    Ok(())
}
