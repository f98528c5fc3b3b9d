//! Tests that need the internal fault-injection hook; the rest are in `tests/`.

use std::sync::atomic::Ordering;

use super::*;

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_size_bytes: 4096,
        max_entry_bytes: 1024,
        fsync: FsyncMode::Always,
        max_pending_appends: 64,
        max_group_entries: 64,
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i}"))
}

#[tokio::test]
async fn failed_fsync_acks_nothing_after_it_and_refuses_appends_until_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path())).unwrap();
    log.append((0..3).map(entry).collect()).await.unwrap();

    log.inner
        .shared
        .fail_next_sync
        .store(true, Ordering::SeqCst);
    let err = log.append(vec![entry(3)]).await.unwrap_err();
    assert!(matches!(err, LogError::Failed { .. }), "{err}");

    // The failed batch's bytes are in the file (written, not fsynced) but never served.
    let st = log.status();
    assert!(st.failed);
    assert_eq!(st.durable_head, 3);
    let r = log.read(0, usize::MAX, 100).unwrap();
    assert_eq!(r.entries.len(), 3);
    assert_eq!(r.next_offset, 3);

    // Sticky: even though the disk would work now, nothing more is acked.
    let err = log.append(vec![entry(4)]).await.unwrap_err();
    assert!(err.to_string().contains("restart the node"), "{err}");
    log.close().await;

    // After a restart the written-but-unacked frame is valid data and may be kept; either
    // way every acked entry is intact and appends work again.
    let (log, report) = open(config(tmp.path())).unwrap();
    assert!(!report.incarnation_changed);
    let r = log.read(0, usize::MAX, 100).unwrap();
    for (i, (offset, bytes)) in r.entries.iter().enumerate().take(3) {
        assert_eq!((*offset, bytes), (i as u64, &entry(i as u64)));
    }
    let out = log.append(vec![entry(9)]).await.unwrap();
    assert_eq!(out.first_offset, report.head_offset);
}

#[tokio::test]
async fn failed_fsync_fails_every_waiter_of_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path())).unwrap();
    log.inner
        .shared
        .fail_next_sync
        .store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(
            async move { log.append(vec![entry(i)]).await },
        ));
    }
    for t in tasks {
        // Whichever group the injected failure hit, no append is acked after it, and an
        // append acked before it must be readable.
        match t.await.unwrap() {
            Ok(out) => {
                let r = log.read(out.first_offset, usize::MAX, 1).unwrap();
                assert_eq!(r.entries.len(), 1);
            }
            Err(e) => assert!(matches!(e, LogError::Failed { .. }), "{e}"),
        }
    }
    assert!(log.status().failed);
    assert_eq!(
        log.status().durable_head,
        log.read(0, usize::MAX, 100).unwrap().next_offset
    );
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        LogConfig {
            segment_size_bytes: 10,
            ..config(tmp.path())
        },
        LogConfig {
            segment_size_bytes: u64::from(u32::MAX) + 1,
            ..config(tmp.path())
        },
        LogConfig {
            max_pending_appends: 0,
            ..config(tmp.path())
        },
        LogConfig {
            max_group_entries: 0,
            ..config(tmp.path())
        },
        LogConfig {
            max_entry_bytes: 0,
            ..config(tmp.path())
        },
    ] {
        assert!(matches!(open(bad), Err(LogError::InvalidConfig { .. })));
    }
}
