//! Group commit: concurrent requests share transactions, each keeping its own outcome.

mod common;

use std::collections::HashMap;

use common::{batch, change, config, put};
use homeport_store::{StoreError, WriteOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_each_gets_its_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let writers = 64;
    let writes_per_writer = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..writes_per_writer {
                // Writers 2w and 2w+1 share a record, so versions interleave across writers.
                let mut req = put(&format!("sh-{}", w / 2), "k", &format!("{w}/{i}"));
                if i % 4 == 3 {
                    // A conditional write that cannot match fails alone, inside a shared commit.
                    req.expected_version = Some(1_000_000);
                }
                versions.push((w / 2, store.write(req).await.unwrap()));
            }
            versions
        }));
    }
    let mut per_record: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut mismatches = 0;
    for t in tasks {
        for (record, outcome) in t.await.unwrap() {
            match outcome {
                WriteOutcome::Written { version, .. } => {
                    per_record.entry(record).or_default().push(version)
                }
                WriteOutcome::VersionMismatch { .. } => mismatches += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(mismatches, writers * writes_per_writer / 4);
    for (record, mut versions) in per_record {
        versions.sort_unstable();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(
            versions, expected,
            "record {record}: every version exactly once"
        );
    }
    let stats = store.stats();
    let requests = (writers * writes_per_writer) as u64;
    assert_eq!(stats.batched_requests, requests);
    assert!(
        stats.commits < requests,
        "{} commits for {requests} writes: group commit did not batch",
        stats.commits
    );
    assert!(stats.largest_batch_requests > 1);
    assert_eq!(stats.outbox_len, requests - mismatches as u64);
}

#[tokio::test]
async fn a_full_queue_refuses_writes_at_once_but_applies_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), common::REGION);
    cfg.max_queued_requests = 1;
    cfg.max_batch_requests = 1;
    let store = homeport_store::open(cfg).unwrap();
    let results = futures_join_all(
        (0..100)
            .map(|i| {
                let store = store.clone();
                async move { store.write(put("sh-1", &format!("k{i}"), "v")).await }
            })
            .collect(),
    )
    .await;
    let busy = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(StoreError::Busy {
                    max_queued_requests: 1
                })
            )
        })
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(busy + ok, 100, "{results:?}");
    assert!(
        busy > 0,
        "100 writes at once into a queue of 1 must meet a full queue"
    );
    assert!(ok > 0);
    assert_eq!(store.stats().records, ok as u64);

    let applies = futures_join_all(
        (0..20u64)
            .map(|i| {
                let store = store.clone();
                async move {
                    store
                        .apply(batch(
                            vec![change(&format!("hk-{i}"), "k", 1, Some("v"))],
                            i,
                        ))
                        .await
                }
            })
            .collect(),
    )
    .await;
    assert!(applies.iter().all(|r| r.is_ok()), "{applies:?}");
}

/// Polls every future in one task, so they all reach the queue at (nearly) the same moment.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
