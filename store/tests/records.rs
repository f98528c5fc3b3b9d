//! Writes at home: versions, conditional writes, deletes, limits, idempotency, the outbox, reopen.

mod common;

use bytes::Bytes;
use common::{delete, open, put, written};
use homeport_store::{StoreError, WriteOp, WriteOutcome};
use homeport_wire::pb;
use prost::Message;

#[tokio::test]
async fn write_then_read_returns_value_version_and_home() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.read("sh-1", "name").unwrap(), None);
    let v = written(store.write(put("sh-1", "name", "alice")).await.unwrap());
    assert_eq!(v, 1);
    let rec = store.read("sh-1", "name").unwrap().unwrap();
    assert_eq!(rec.version, 1);
    assert_eq!(rec.value, Some(Bytes::from_static(b"alice")));
    assert_eq!(rec.home_region, "sh");
    assert_eq!(rec.commit_unix_ms, 1_700_000_000_000);
    // Another key of the same user and the same key of another user are separate records.
    assert_eq!(store.read("sh-1", "name2").unwrap(), None);
    assert_eq!(store.read("sh-2", "name").unwrap(), None);
}

#[tokio::test]
async fn versions_strictly_increase_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut last = 0;
    for i in 0..20 {
        let v = written(
            store
                .write(put("sh-1", "k", &format!("v{i}")))
                .await
                .unwrap(),
        );
        assert_eq!(v, last + 1);
        last = v;
    }
    // A different record has its own sequence.
    assert_eq!(
        written(store.write(put("sh-1", "other", "x")).await.unwrap()),
        1
    );
    assert_eq!(
        store.read("sh-1", "k").unwrap().unwrap().value.unwrap(),
        "v19"
    );
}

#[tokio::test]
async fn written_entry_is_a_change_entry_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut req = put("sh-1", "k", "hello");
    req.entry_id = common::entry_id(42);
    let WriteOutcome::Written {
        version,
        outbox_seq,
        entry,
    } = store.write(req).await.unwrap()
    else {
        panic!("expected Written")
    };
    let e = pb::Entry::decode(entry.clone()).unwrap();
    assert_eq!(e.id, Some(common::entry_id(42)));
    assert_eq!(e.kind, pb::EntryKind::Change as i32);
    assert_eq!(e.origin_unix_ms, 1_700_000_000_000);
    let ch = pb::Change::decode(e.payload).unwrap();
    assert_eq!(
        ch,
        pb::Change {
            uid: "sh-1".into(),
            key: "k".into(),
            version,
            value: Bytes::from_static(b"hello"),
            deleted: false,
            commit_unix_ms: 1_700_000_000_000,
            home_region: "sh".into(),
        }
    );
    assert_eq!(store.outbox(10).unwrap(), vec![(outbox_seq, entry)]);
}

#[tokio::test]
async fn conditional_write_succeeds_only_on_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut r = put("sh-1", "k", "a");
    r.expected_version = Some(3);
    assert_eq!(
        store.write(r).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 0 }
    );
    assert_eq!(
        store.read("sh-1", "k").unwrap(),
        None,
        "a mismatch writes nothing"
    );
    assert_eq!(store.stats().outbox_len, 0, "a mismatch ships nothing");

    // 0 = "must not exist": succeeds on a missing record...
    let mut r = put("sh-1", "k", "a");
    r.expected_version = Some(0);
    assert_eq!(written(store.write(r).await.unwrap()), 1);
    // ...and fails on an existing one.
    let mut r = put("sh-1", "k", "b");
    r.expected_version = Some(0);
    assert_eq!(
        store.write(r).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 1 }
    );

    let mut r = put("sh-1", "k", "b");
    r.expected_version = Some(1);
    assert_eq!(written(store.write(r).await.unwrap()), 2);
    // A stale expected version (test-and-set lost the race) fails.
    let mut r = put("sh-1", "k", "c");
    r.expected_version = Some(1);
    assert_eq!(
        store.write(r).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 2 }
    );
    assert_eq!(
        store.read("sh-1", "k").unwrap().unwrap().value.unwrap(),
        "b"
    );
}

#[tokio::test]
async fn delete_leaves_a_tombstone_and_a_re_put_continues_the_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    written(store.write(put("sh-1", "k", "a")).await.unwrap());
    written(store.write(put("sh-1", "k", "b")).await.unwrap());
    let v = written(store.write(delete("sh-1", "k")).await.unwrap());
    assert_eq!(v, 3);
    let rec = store.read("sh-1", "k").unwrap().unwrap();
    assert_eq!((rec.version, rec.value), (3, None));
    let stats = store.stats();
    assert_eq!((stats.records, stats.tombstones), (0, 1));

    // "Must not exist" holds for a deleted record; so does its exact tombstone version.
    let mut r = put("sh-1", "k", "c");
    r.expected_version = Some(0);
    assert_eq!(written(store.write(r).await.unwrap()), 4);
    let rec = store.read("sh-1", "k").unwrap().unwrap();
    assert_eq!(rec.value, Some(Bytes::from_static(b"c")));
    written(store.write(delete("sh-1", "k")).await.unwrap());
    let mut r = put("sh-1", "k", "d");
    r.expected_version = Some(5);
    assert_eq!(written(store.write(r).await.unwrap()), 6);
    let stats = store.stats();
    assert_eq!((stats.records, stats.tombstones), (1, 0));

    // The delete's outbox entry is a deleted change with its version.
    let entries = store.outbox(100).unwrap();
    let deletes: Vec<_> = entries
        .iter()
        .map(|(_, b)| pb::Change::decode(pb::Entry::decode(b.clone()).unwrap().payload).unwrap())
        .filter(|c| c.deleted)
        .map(|c| (c.version, c.value.len()))
        .collect();
    assert_eq!(deletes, vec![(3, 0), (5, 0)]);
}

#[tokio::test]
async fn oversize_and_empty_inputs_are_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long_uid = "u".repeat(65);
    let err = store.write(put(&long_uid, "k", "v")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                what: "uid",
                size_bytes: 65,
                max_bytes: 64,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_uid_bytes = 64"), "{err}");

    let err = store
        .write(put("sh-1", &"k".repeat(129), "v"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { what: "key", .. }),
        "{err:?}"
    );

    let err = store
        .write(put("sh-1", "k", &"v".repeat(4097)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                what: "value",
                size_bytes: 4097,
                max_bytes: 4096,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_value_bytes"), "{err}");
    // Exactly at the limit is fine.
    written(
        store
            .write(put("sh-1", "k", &"v".repeat(4096)))
            .await
            .unwrap(),
    );
    written(
        store
            .write(put(&"u".repeat(64), &"k".repeat(128), "v"))
            .await
            .unwrap(),
    );

    for (uid, key) in [("", "k"), ("sh-1", "")] {
        let err = store.write(put(uid, key, "v")).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    }
    let mut r = put("sh-1", "k", "v");
    r.idempotency_key = Some("i".repeat(homeport_store::MAX_IDEMPOTENCY_KEY_BYTES + 1));
    assert!(matches!(
        store.write(r).await.unwrap_err(),
        StoreError::Invalid { .. }
    ));
    // An entry id naming another region would be refused by the queue: refuse it here.
    let mut r = put("sh-1", "k", "v");
    r.entry_id.origin_region = "hk".into();
    let err = store.write(r).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                what: "entry id",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.stats().records, 2, "refused writes wrote nothing");
}

#[tokio::test]
async fn idempotent_retry_returns_the_first_outcome_and_writes_once() {
    let dir = tempfile::tempdir().unwrap();
    let (first_seq, entry) = {
        let store = open(dir.path());
        let mut r = put("sh-1", "k", "a");
        r.idempotency_key = Some("req-1".into());
        let WriteOutcome::Written {
            version,
            outbox_seq,
            entry,
        } = store.write(r.clone()).await.unwrap()
        else {
            panic!("expected Written")
        };
        assert_eq!(version, 1);
        // The retry: same outcome, the outbox slot is still there, nothing new written.
        assert_eq!(
            store.write(r.clone()).await.unwrap(),
            WriteOutcome::Replayed {
                version: 1,
                outbox_seq: Some(outbox_seq)
            }
        );
        assert_eq!(store.read("sh-1", "k").unwrap().unwrap().version, 1);
        assert_eq!(store.outbox(10).unwrap().len(), 1);
        (outbox_seq, entry)
    };
    // Across a reopen, and after the entry was shipped.
    let store = open(dir.path());
    assert_eq!(store.outbox(10).unwrap(), vec![(first_seq, entry)]);
    store.remove_outbox(vec![first_seq]).await.unwrap();
    let mut r = put("sh-1", "k", "a");
    r.idempotency_key = Some("req-1".into());
    assert_eq!(
        store.write(r.clone()).await.unwrap(),
        WriteOutcome::Replayed {
            version: 1,
            outbox_seq: None
        }
    );
    // Meanwhile another write moved the record on; the retry still answers what it did.
    written(store.write(put("sh-1", "k", "b")).await.unwrap());
    assert_eq!(
        store.write(r.clone()).await.unwrap(),
        WriteOutcome::Replayed {
            version: 1,
            outbox_seq: None
        }
    );
    assert_eq!(store.read("sh-1", "k").unwrap().unwrap().version, 2);

    // The same key for a different request is refused, not answered with an unrelated outcome.
    let mut other = put("sh-1", "k", "different");
    other.idempotency_key = Some("req-1".into());
    let err = store.write(other).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                what: "idempotency key",
                ..
            }
        ),
        "{err:?}"
    );
    // The same key on another record is another request.
    let mut other = put("sh-1", "k2", "a");
    other.idempotency_key = Some("req-1".into());
    assert_eq!(written(store.write(other).await.unwrap()), 1);

    // After the TTL purge the key is forgotten: a retry is a new write.
    assert_eq!(
        store
            .purge_idempotency_older_than(1_600_000_000_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_idempotency_older_than(1_800_000_000_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(written(store.write(r).await.unwrap()), 3);
}

#[tokio::test]
async fn outbox_lifecycle_keeps_order_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut seqs = Vec::new();
    for i in 0..5 {
        let WriteOutcome::Written { outbox_seq, .. } = store
            .write(put("sh-1", &format!("k{i}"), "v"))
            .await
            .unwrap()
        else {
            panic!("expected Written")
        };
        seqs.push(outbox_seq);
    }
    let listed: Vec<u64> = store
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, seqs, "oldest first");
    assert_eq!(store.outbox(2).unwrap().len(), 2, "limit respected");
    assert_eq!(store.stats().outbox_len, 5);

    store
        .remove_outbox(vec![seqs[1], seqs[3], 9_999])
        .await
        .unwrap();
    let listed: Vec<u64> = store
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, vec![seqs[0], seqs[2], seqs[4]]);
    assert_eq!(store.stats().outbox_len, 3);

    store.remove_outbox(seqs.clone()).await.unwrap();
    assert!(store.outbox(100).unwrap().is_empty());
    assert_eq!(store.stats().outbox_len, 0);
    drop(store);

    // An emptied outbox (even across a reopen) still hands out new seqs, so a late removal of an
    // old seq can never delete a newer entry.
    let store = open(dir.path());
    let WriteOutcome::Written { outbox_seq, .. } =
        store.write(put("sh-1", "k9", "v")).await.unwrap()
    else {
        panic!("expected Written")
    };
    assert!(outbox_seq > *seqs.iter().max().unwrap());
    store.remove_outbox(seqs).await.unwrap();
    assert_eq!(store.outbox(10).unwrap().len(), 1);
}

#[tokio::test]
async fn reopen_is_fast_and_keeps_records_counters_and_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..200u32 {
        written(
            store
                .write(put(&format!("sh-{}", i % 7), &format!("k{i}"), "v"))
                .await
                .unwrap(),
        );
    }
    written(store.write(delete("sh-0", "k0")).await.unwrap());
    let digest = store.digest().unwrap();
    let stats = store.stats();
    let outbox = store.outbox(1000).unwrap();
    drop(store);

    let started = std::time::Instant::now();
    let store = open(dir.path());
    let reopen = started.elapsed();
    // Generous: a reopen reads no data, only the header; a full scan would show as seconds.
    assert!(
        reopen < std::time::Duration::from_secs(5),
        "reopen took {reopen:?}"
    );
    assert_eq!(store.digest().unwrap(), digest);
    let again = store.stats();
    assert_eq!(
        (again.records, again.tombstones, again.outbox_len),
        (stats.records, stats.tombstones, stats.outbox_len)
    );
    assert_eq!((again.records, again.tombstones), (199, 1));
    assert_eq!(store.outbox(1000).unwrap(), outbox);
    assert_eq!(store.read("sh-0", "k0").unwrap().unwrap().value, None);
    assert_eq!(
        written(store.write(put("sh-1", "k1", "w")).await.unwrap()),
        2
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused_and_close_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let clone = store.clone();
    let err = homeport_store::open(common::config(dir.path(), "sh"))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
    drop(store);
    // A clone keeps the store open and working.
    written(clone.write(put("sh-1", "k", "v")).await.unwrap());
    drop(clone);
    let store = open(dir.path());
    assert_eq!(store.read("sh-1", "k").unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn bad_config_is_refused_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), "");
    cfg.max_value_bytes = 0;
    let err = homeport_store::open(cfg).err().unwrap().to_string();
    assert!(
        err.contains("region is empty") && err.contains("max_value_bytes is 0"),
        "{err}"
    );
}

#[tokio::test]
async fn delete_op_of_a_missing_record_leaves_a_tombstone_at_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        written(store.write(delete("sh-1", "never")).await.unwrap()),
        1
    );
    let rec = store.read("sh-1", "never").unwrap().unwrap();
    assert_eq!((rec.version, rec.value), (1, None));
    let r = common::put("sh-1", "never", "x");
    assert!(matches!(r.op, WriteOp::Put(_)));
    assert_eq!(written(store.write(r).await.unwrap()), 2);
}
