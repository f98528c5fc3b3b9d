//! Applying other regions' changes: apply-if-newer, checkpoints, digests, tombstone purge.

mod common;

use bytes::Bytes;
use common::{batch, change, cursor, open, put, written};
use homeport_store::{ApplyOutcome, StoreError};

#[tokio::test]
async fn apply_if_newer_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store
        .apply(batch(vec![change("hk-1", "k", 2, Some("v2"))], 1))
        .await
        .unwrap();
    assert_eq!(
        o,
        ApplyOutcome {
            applied: 1,
            skipped_older: 0,
            skipped_invalid: 0
        }
    );

    // Older and equal versions arrive late (out of order, or re-delivered): skipped.
    let o = store
        .apply(batch(
            vec![
                change("hk-1", "k", 1, Some("v1")),
                change("hk-1", "k", 2, Some("other")),
            ],
            3,
        ))
        .await
        .unwrap();
    assert_eq!((o.applied, o.skipped_older), (0, 2));
    let rec = store.read("hk-1", "k").unwrap().unwrap();
    assert_eq!(
        (rec.version, rec.value.unwrap()),
        (2, Bytes::from_static(b"v2"))
    );
    assert_eq!(rec.home_region, "hk");
    assert_eq!(rec.commit_unix_ms, 1_700_000_000_002);

    // Newer wins; a delete is a tombstone with its version; an older put cannot revive it.
    store
        .apply(batch(vec![change("hk-1", "k", 4, None)], 4))
        .await
        .unwrap();
    let o = store
        .apply(batch(vec![change("hk-1", "k", 3, Some("v3"))], 5))
        .await
        .unwrap();
    assert_eq!(o.skipped_older, 1);
    let rec = store.read("hk-1", "k").unwrap().unwrap();
    assert_eq!((rec.version, rec.value), (4, None));
    // A newer put revives it.
    store
        .apply(batch(vec![change("hk-1", "k", 5, Some("v5"))], 6))
        .await
        .unwrap();
    assert_eq!(
        store.read("hk-1", "k").unwrap().unwrap().value.unwrap(),
        "v5"
    );
    let s = store.stats();
    assert_eq!((s.records, s.tombstones), (1, 0));
}

#[tokio::test]
async fn one_batch_with_several_versions_of_a_record_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store
        .apply(batch(
            vec![
                change("hk-1", "k", 1, Some("a")),
                change("hk-1", "k", 3, None),
                change("hk-1", "k", 2, Some("b")),
                change("hk-1", "k", 3, None),
                change("hk-1", "j", 7, Some("j7")),
                change("", "k", 9, Some("no uid")),
            ],
            6,
        ))
        .await
        .unwrap();
    assert_eq!(
        o,
        ApplyOutcome {
            applied: 3,
            skipped_older: 2,
            skipped_invalid: 1
        }
    );
    let rec = store.read("hk-1", "k").unwrap().unwrap();
    assert_eq!((rec.version, rec.value), (3, None));
    let s = store.stats();
    assert_eq!((s.records, s.tombstones), (1, 1));
}

#[tokio::test]
async fn checkpoint_is_stored_with_the_data_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert_eq!(store.checkpoint("hk", "g1").unwrap(), None);
        let mut b = batch(vec![change("hk-1", "k", 1, Some("a"))], 10);
        b.heartbeat_unix_ms = Some(1_700_000_005_000);
        b.applied_entries = 3;
        store.apply(b).await.unwrap();
        let mut b = batch(vec![change("hk-2", "k", 1, Some("b"))], 12);
        b.group = "g2".into();
        store.apply(b).await.unwrap();
    }
    // After a reopen: data and cursors together.
    let store = open(dir.path());
    assert_eq!(store.read("hk-1", "k").unwrap().unwrap().version, 1);
    assert_eq!(store.read("hk-2", "k").unwrap().unwrap().version, 1);
    assert_eq!(
        store.checkpoint("hk", "g1").unwrap(),
        Some(cursor("hk-q1", 10))
    );
    assert_eq!(
        store.checkpoint("hk", "g2").unwrap(),
        Some(cursor("hk-q1", 12))
    );
    assert_eq!(store.checkpoint("ca", "g1").unwrap(), None);

    // Totals add up; a heartbeat time never goes back; a batch without one keeps the last.
    let mut b = batch(vec![], 11);
    b.heartbeat_unix_ms = Some(1_700_000_001_000);
    b.applied_entries = 2;
    store.apply(b).await.unwrap();
    store.apply(batch(vec![], 11)).await.unwrap();
    let all = store.checkpoints().unwrap();
    assert_eq!(all.len(), 2);
    let g1 = &all[0];
    assert_eq!((g1.source_region.as_str(), g1.group.as_str()), ("hk", "g1"));
    assert_eq!(g1.cursor, cursor("hk-q1", 11));
    assert_eq!(g1.heartbeat_unix_ms, Some(1_700_000_005_000));
    assert_eq!(g1.applied_entries, 5);
    assert!(g1.updated_unix_ms > 0);
    assert_eq!(
        all[1].heartbeat_unix_ms, None,
        "no heartbeat applied from g2 yet"
    );
}

/// A stored record whose bytes do not decode fails the batch that touches it, which then stores
/// neither its other changes nor its checkpoint; other requests and reads of other keys go on.
#[tokio::test]
async fn undecodable_record_fails_only_its_batch_and_the_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .apply(batch(vec![change("hk-1", "good", 1, Some("a"))], 1))
            .await
            .unwrap();
    }
    {
        // Damage one record the way a bad disk or a buggy writer would.
        const RECORDS: redb::TableDefinition<(&str, &str), &[u8]> =
            redb::TableDefinition::new("records");
        let db = redb::Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RECORDS)
            .unwrap()
            .insert(("hk-1", "bad"), &[0xff, 0xff][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(dir.path());
    let err = store.read("hk-1", "bad").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                table: "records",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"bad\""), "{err}");

    let (a, b) = tokio::join!(
        store.apply(batch(
            vec![
                change("hk-1", "new", 1, Some("n")),
                change("hk-1", "bad", 5, Some("x"))
            ],
            9,
        )),
        store.write(put("sh-1", "k", "v")),
    );
    assert!(matches!(a.unwrap_err(), StoreError::Corrupt { .. }));
    assert_eq!(written(b.unwrap()), 1);
    assert_eq!(
        store.read("hk-1", "new").unwrap(),
        None,
        "nothing of the failed batch"
    );
    assert_eq!(
        store.checkpoint("hk", "g1").unwrap(),
        Some(cursor("hk-q1", 1))
    );
    assert!(matches!(
        store.digest().unwrap_err(),
        StoreError::Corrupt { .. }
    ));
}

#[tokio::test]
async fn digest_is_order_independent_and_sees_any_difference() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    assert_eq!(a.digest().unwrap(), b.digest().unwrap(), "two empty stores");
    assert_eq!(a.digest().unwrap().total, "0".repeat(32));

    let changes = vec![
        change("hk-1", "k", 1, Some("a")),
        change("hk-1", "k", 2, Some("b")),
        change("hk-1", "j", 1, Some("c")),
        change("hk-2", "k", 1, Some("d")),
        change("hk-2", "k", 2, None),
    ];
    a.apply(batch(changes.clone(), 5)).await.unwrap();
    let mut reversed = changes.clone();
    reversed.reverse();
    for c in reversed {
        b.apply(batch(vec![c], 1)).await.unwrap();
    }
    let (da, db) = (a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(da, db);
    assert_eq!(da.records, 3);
    assert_eq!(da.per_user.len(), 2);
    assert_eq!(a.user_digest("hk-1").unwrap(), da.per_user["hk-1"]);
    assert_eq!(a.user_digest("hk-nobody").unwrap(), "0".repeat(32));

    // One more version of one record in one store: the total and that user's digest differ,
    // the other user's does not.
    b.apply(batch(vec![change("hk-1", "j", 2, Some("c"))], 6))
        .await
        .unwrap();
    let db = b.digest().unwrap();
    assert_ne!(da.total, db.total);
    assert_ne!(da.per_user["hk-1"], db.per_user["hk-1"]);
    assert_eq!(da.per_user["hk-2"], db.per_user["hk-2"]);
    // Same version, different value: differs too.
    a.apply(batch(vec![change("hk-1", "j", 2, Some("C"))], 6))
        .await
        .unwrap();
    assert_ne!(a.digest().unwrap().total, b.digest().unwrap().total);
}

#[tokio::test]
async fn purge_removes_old_tombstones_only_and_home_never_reuses_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A tombstone written at home at version 7 (after 6 puts), and a replicated one.
    for _ in 0..6 {
        written(store.write(put("sh-1", "k", "v")).await.unwrap());
    }
    let mut del = common::delete("sh-1", "k");
    del.now_unix_ms = 1_000;
    assert_eq!(written(store.write(del).await.unwrap()), 7);
    let mut late = change("hk-1", "k", 3, None);
    late.commit_unix_ms = 5_000;
    store
        .apply(batch(vec![late, change("hk-1", "live", 1, Some("x"))], 2))
        .await
        .unwrap();
    assert_eq!(store.stats().tombstones, 2);

    assert_eq!(
        store.purge_tombstones_older_than(1_000).await.unwrap(),
        0,
        "strictly older"
    );
    assert_eq!(store.purge_tombstones_older_than(1_001).await.unwrap(), 1);
    assert_eq!(store.read("sh-1", "k").unwrap(), None);
    assert!(store.read("hk-1", "k").unwrap().is_some());
    assert_eq!(
        store.purge_tombstones_older_than(u64::MAX).await.unwrap(),
        1
    );
    assert_eq!(store.read("hk-1", "k").unwrap(), None);
    assert_eq!(
        store.read("hk-1", "live").unwrap().unwrap().version,
        1,
        "live records stay"
    );
    let s = store.stats();
    assert_eq!((s.records, s.tombstones), (1, 0));
    drop(store);

    // Re-creating the purged record (even after a reopen) continues above the purged versions,
    // so a replica that still holds the tombstone at 7 applies it.
    let store = open(dir.path());
    let v = written(store.write(put("sh-1", "k", "again")).await.unwrap());
    assert!(v > 7, "version {v} must be above the purged tombstone's 7");
}

#[tokio::test]
async fn a_revived_record_is_no_longer_purged_as_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .apply(batch(vec![change("hk-1", "k", 1, None)], 1))
        .await
        .unwrap();
    store
        .apply(batch(vec![change("hk-1", "k", 2, Some("back"))], 2))
        .await
        .unwrap();
    assert_eq!(
        store.purge_tombstones_older_than(u64::MAX).await.unwrap(),
        0
    );
    assert_eq!(
        store.read("hk-1", "k").unwrap().unwrap().value.unwrap(),
        "back"
    );
}

mod property {
    use super::common::{self, change};
    use homeport_wire::pb;
    use proptest::prelude::*;

    /// Per record, a history of versions 1..=n (each a put or a delete), as home would produce.
    fn histories() -> impl Strategy<Value = Vec<pb::Change>> {
        prop::collection::vec(
            (
                0u8..3,
                0u8..3,
                1u64..6,
                prop::collection::vec(any::<bool>(), 6),
            ),
            1..6,
        )
        .prop_map(|records| {
            let mut out = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (u, k, n, deletes) in records {
                if !seen.insert((u, k)) {
                    continue;
                }
                for v in 1..=n {
                    let value = format!("u{u}k{k}v{v}");
                    let deleted = deletes[(v - 1) as usize];
                    out.push(change(
                        &format!("hk-{u}"),
                        &format!("k{k}"),
                        v,
                        (!deleted).then_some(value.as_str()),
                    ));
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Replay delivers batches in any order, some twice; a replica that applies them that way
        /// ends with the same digest as one that applied every change once, in order.
        #[test]
        fn shuffled_duplicated_batches_converge(
            changes in histories(),
            batch_size in 1usize..4,
            seed in any::<u64>(),
            dup_every in 1usize..4,
        ) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let a_dir = tempfile::tempdir().unwrap();
                let b_dir = tempfile::tempdir().unwrap();
                let a = common::open(a_dir.path());
                let b = common::open(b_dir.path());
                a.apply(common::batch(changes.clone(), 1)).await.unwrap();

                let mut batches: Vec<Vec<pb::Change>> =
                    changes.chunks(batch_size).map(|c| c.to_vec()).collect();
                let dups: Vec<_> = batches.iter().step_by(dup_every).cloned().collect();
                batches.extend(dups);
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                batches.shuffle(&mut rng);
                for (i, mut bt) in batches.into_iter().enumerate() {
                    bt.shuffle(&mut rng);
                    b.apply(common::batch(bt, i as u64)).await.unwrap();
                }
                let (da, db) = (a.digest().unwrap(), b.digest().unwrap());
                prop_assert_eq!(&da, &db);
                // And both hold, per record, the newest version home produced.
                for c in &changes {
                    let rec = b.read(&c.uid, &c.key).unwrap().unwrap();
                    prop_assert!(rec.version >= c.version);
                }
                let (sa, sb) = (a.stats(), b.stats());
                prop_assert_eq!((sa.records, sa.tombstones), (sb.records, sb.tombstones));
                Ok(())
            })?;
        }
    }
}
