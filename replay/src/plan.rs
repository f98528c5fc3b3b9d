//! Apply planning: which entries of a batch read from a source region's queue may be applied.
//!
//! Pure: the caller hands in decoded queue entries and a home resolver, and gets back the changes
//! to apply (in queue order), the newest heartbeat, and what was refused. It never fails and
//! never panics on bytes from the network; every entry ends up in exactly one counter.

use homeport_wire::pb;
use prost::Message;

/// Tells which region is a user's home.
pub trait HomeResolver: Send + Sync {
    fn home_of(&self, uid: &str) -> Option<String>;
}

/// The deployment's configured rule until the registry's home directory exists (issue 4): a uid
/// `<region>-<rest>` is homed in `<region>` (e.g. `sh-1001` in `sh`). An unknown region prefix,
/// or an empty rest, has no home, so nobody may write that user.
#[derive(Debug, Clone)]
pub struct PrefixHomeRule {
    regions: Vec<String>,
}

impl PrefixHomeRule {
    pub fn new(regions: Vec<String>) -> Self {
        Self { regions }
    }
}

impl HomeResolver for PrefixHomeRule {
    fn home_of(&self, uid: &str) -> Option<String> {
        let (prefix, rest) = uid.split_once('-')?;
        if rest.is_empty() {
            return None;
        }
        self.regions.iter().find(|r| r.as_str() == prefix).cloned()
    }
}

/// What [`plan_batch`] decided about one batch. Every entry is counted in exactly one of
/// `changes`, `heartbeats`, `test_entries`, `unknown_kinds`, `undecodable` or `refused`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannedBatch {
    /// Changes to apply, in queue order (the store applies each only if its version is newer).
    pub changes: Vec<pb::Change>,
    /// The entry id of each change in `changes`, at the same index (an external sink's
    /// idempotency key).
    pub change_ids: Vec<pb::EntryId>,
    /// Origin time of the newest heartbeat in the batch (the source's clock, ms since the epoch).
    pub heartbeat_unix_ms: Option<u64>,
    pub refused: Vec<Refusal>,
    /// Entries whose id, payload or kind could not be decoded.
    pub undecodable: u64,
    /// Entries in the batch, whatever became of them.
    pub entries: u64,
    /// Heartbeats that were taken into account (those from another origin are refused silently
    /// and counted in `foreign_heartbeats`).
    pub heartbeats: u64,
    pub foreign_heartbeats: u64,
    /// Operator test entries (`homeport queue append`): never applied.
    pub test_entries: u64,
    /// Entries of a kind this version does not know (written by a newer version during a rolling
    /// upgrade): skipped, not an error.
    pub unknown_kinds: u64,
}

/// A change that was not applied because its source is not the user's home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub uid: String,
    pub key: String,
    /// The home the change says decided it (`Change::home_region`).
    pub claimed_home: String,
    /// The user's home as the resolver sees it (`None`: no home known).
    pub actual_home: Option<String>,
    pub source_region: String,
}

/// Plans the application of `entries`, read from the queue of `source_region`.
///
/// `source_region` is the region whose queue nodes served the batch (their certificates name it).
/// A change is accepted only if `home_of(uid) == source_region` AND `change.home_region ==
/// source_region` AND `entry.id.origin_region == source_region`: no region can overwrite another
/// region's users, even when it writes a forged change into its own queue.
pub fn plan_batch(
    source_region: &str,
    entries: &[pb::Entry],
    homes: &dyn HomeResolver,
) -> PlannedBatch {
    let mut out = PlannedBatch {
        entries: entries.len() as u64,
        ..PlannedBatch::default()
    };
    for entry in entries {
        let Some(id) = entry.id.as_ref() else {
            out.undecodable += 1;
            continue;
        };
        match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::Change) => {
                let Ok(change) = pb::Change::decode(entry.payload.as_ref()) else {
                    out.undecodable += 1;
                    continue;
                };
                let actual_home = homes.home_of(&change.uid);
                let accepted = actual_home.as_deref() == Some(source_region)
                    && change.home_region == source_region
                    && id.origin_region == source_region;
                if accepted {
                    out.change_ids.push(id.clone());
                    out.changes.push(change);
                } else {
                    out.refused.push(Refusal {
                        uid: change.uid,
                        key: change.key,
                        claimed_home: change.home_region,
                        actual_home,
                        source_region: source_region.to_owned(),
                    });
                }
            }
            Ok(pb::EntryKind::Heartbeat) => {
                let Ok(hb) = pb::Heartbeat::decode(entry.payload.as_ref()) else {
                    out.undecodable += 1;
                    continue;
                };
                // A heartbeat of another origin would make a dead link look alive.
                if id.origin_region != source_region || hb.region != source_region {
                    out.foreign_heartbeats += 1;
                    continue;
                }
                out.heartbeats += 1;
                // An older writer may leave the payload's time unset; the entry's own origin time
                // is the same clock.
                let t = if hb.unix_ms != 0 {
                    hb.unix_ms
                } else {
                    entry.origin_unix_ms
                };
                out.heartbeat_unix_ms = Some(out.heartbeat_unix_ms.map_or(t, |h| h.max(t)));
            }
            Ok(pb::EntryKind::Test) => out.test_entries += 1,
            Ok(pb::EntryKind::Unspecified) => out.undecodable += 1,
            Err(_) => out.unknown_kinds += 1,
        }
    }
    debug_assert_eq!(out.changes.len(), out.change_ids.len());
    debug_assert_eq!(
        out.changes.len() as u64
            + out.refused.len() as u64
            + out.undecodable
            + out.heartbeats
            + out.foreign_heartbeats
            + out.test_entries
            + out.unknown_kinds,
        out.entries,
        "every entry is counted exactly once"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rule() -> PrefixHomeRule {
        PrefixHomeRule::new(vec!["sh".into(), "hk".into(), "ca".into()])
    }

    fn id(origin: &str, seq: u64) -> Option<pb::EntryId> {
        Some(pb::EntryId {
            origin_region: origin.into(),
            producer_incarnation: Bytes::from_static(&[7; 16]),
            sequence: seq,
        })
    }

    fn change_entry(origin: &str, uid: &str, home: &str, version: u64) -> pb::Entry {
        let c = pb::Change {
            uid: uid.into(),
            key: "profile".into(),
            version,
            value: Bytes::from_static(b"v"),
            deleted: false,
            commit_unix_ms: 1_000,
            home_region: home.into(),
        };
        pb::Entry {
            id: id(origin, version),
            kind: pb::EntryKind::Change as i32,
            origin_unix_ms: 1_000,
            payload: Bytes::from(c.encode_to_vec()),
        }
    }

    fn heartbeat_entry(origin: &str, region: &str, unix_ms: u64, origin_ms: u64) -> pb::Entry {
        let hb = pb::Heartbeat {
            region: region.into(),
            sequence: 1,
            unix_ms,
        };
        pb::Entry {
            id: id(origin, 9),
            kind: pb::EntryKind::Heartbeat as i32,
            origin_unix_ms: origin_ms,
            payload: Bytes::from(hb.encode_to_vec()),
        }
    }

    #[test]
    fn prefix_rule_homes_by_region_prefix() {
        let r = rule();
        assert_eq!(r.home_of("sh-1001").as_deref(), Some("sh"));
        assert_eq!(r.home_of("ca-x-y").as_deref(), Some("ca"));
        assert_eq!(r.home_of("us-1"), None);
        assert_eq!(r.home_of("sh"), None);
        assert_eq!(r.home_of("sh-"), None);
        assert_eq!(r.home_of("-1"), None);
        assert_eq!(r.home_of(""), None);
    }

    #[test]
    fn accepts_only_changes_the_home_region_shipped() {
        let entries = vec![
            change_entry("sh", "sh-1", "sh", 1),
            // sh's queue carrying a change of an hk user: sh may not overwrite hk's users.
            change_entry("sh", "hk-2", "sh", 2),
            // Claims another home than the one it came from.
            change_entry("sh", "sh-3", "hk", 3),
            // Origin region of the entry id is not the queue's region.
            change_entry("hk", "sh-4", "sh", 4),
            // Nobody's user.
            change_entry("sh", "zz-5", "sh", 5),
            change_entry("sh", "sh-6", "sh", 6),
        ];
        let p = plan_batch("sh", &entries, &rule());
        assert_eq!(p.entries, 6);
        let accepted: Vec<_> = p
            .changes
            .iter()
            .map(|c| (c.uid.as_str(), c.version))
            .collect();
        assert_eq!(accepted, vec![("sh-1", 1), ("sh-6", 6)]);
        assert_eq!(
            p.refused,
            vec![
                Refusal {
                    uid: "hk-2".into(),
                    key: "profile".into(),
                    claimed_home: "sh".into(),
                    actual_home: Some("hk".into()),
                    source_region: "sh".into(),
                },
                Refusal {
                    uid: "sh-3".into(),
                    key: "profile".into(),
                    claimed_home: "hk".into(),
                    actual_home: Some("sh".into()),
                    source_region: "sh".into(),
                },
                Refusal {
                    uid: "sh-4".into(),
                    key: "profile".into(),
                    claimed_home: "sh".into(),
                    actual_home: Some("sh".into()),
                    source_region: "sh".into(),
                },
                Refusal {
                    uid: "zz-5".into(),
                    key: "profile".into(),
                    claimed_home: "sh".into(),
                    actual_home: None,
                    source_region: "sh".into(),
                },
            ]
        );
    }

    #[test]
    fn heartbeats_give_the_newest_origin_time_and_nothing_to_apply() {
        let entries = vec![
            heartbeat_entry("hk", "hk", 5_000, 4_999),
            heartbeat_entry("hk", "hk", 7_000, 6_999),
            // Out of order across groups: the newest still wins.
            heartbeat_entry("hk", "hk", 6_000, 5_999),
            // Payload time unset: the entry's origin time stands in.
            heartbeat_entry("hk", "hk", 0, 6_500),
            // Not hk's heartbeat: must not make hk look alive.
            heartbeat_entry("hk", "sh", 9_000, 9_000),
            heartbeat_entry("sh", "hk", 9_000, 9_000),
        ];
        let p = plan_batch("hk", &entries, &rule());
        assert_eq!(p.heartbeat_unix_ms, Some(7_000));
        assert_eq!(p.heartbeats, 4);
        assert_eq!(p.foreign_heartbeats, 2);
        assert!(p.changes.is_empty());
        assert!(p.refused.is_empty());

        let none = plan_batch("hk", &[change_entry("hk", "hk-1", "hk", 1)], &rule());
        assert_eq!(none.heartbeat_unix_ms, None);
    }

    #[test]
    fn test_unknown_and_garbage_entries_are_counted_not_applied() {
        let mut test = change_entry("sh", "sh-1", "sh", 1);
        test.kind = pb::EntryKind::Test as i32;
        let mut future_kind = change_entry("sh", "sh-2", "sh", 2);
        future_kind.kind = 99;
        let mut garbage = change_entry("sh", "sh-3", "sh", 3);
        garbage.payload = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let mut bad_hb = heartbeat_entry("sh", "sh", 1, 1);
        bad_hb.payload = Bytes::from_static(&[0x0a, 0x10]);
        let mut no_id = change_entry("sh", "sh-4", "sh", 4);
        no_id.id = None;
        let mut unspecified = change_entry("sh", "sh-5", "sh", 5);
        unspecified.kind = pb::EntryKind::Unspecified as i32;
        let entries = vec![test, future_kind, garbage, bad_hb, no_id, unspecified];
        let p = plan_batch("sh", &entries, &rule());
        assert_eq!(p.entries, 6);
        assert_eq!(p.test_entries, 1);
        assert_eq!(p.unknown_kinds, 1);
        assert_eq!(p.undecodable, 4);
        assert!(p.changes.is_empty());
        assert!(p.refused.is_empty());
        assert_eq!(p.heartbeat_unix_ms, None);
    }

    proptest::proptest! {
        /// Whatever bytes arrive, planning never panics, counts every entry once, and never lets
        /// through a change whose user is homed elsewhere.
        #[test]
        fn random_entries_never_panic_nor_cross_homes(
            raw in proptest::collection::vec(
                (0i32..5, proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0usize..3, 0usize..4, 0usize..3),
                0..40,
            )
        ) {
            let regions = ["sh", "hk", "ca"];
            let entries: Vec<pb::Entry> = raw
                .iter()
                .map(|(kind, bytes, origin, uid_region, home)| {
                    if *kind == 1 && bytes.len() % 2 == 0 {
                        let uid_prefix = ["sh", "hk", "ca", "xx"][*uid_region];
                        change_entry(regions[*origin], &format!("{uid_prefix}-1"), regions[*home], 1)
                    } else {
                        pb::Entry {
                            id: id(regions[*origin], 1),
                            kind: *kind,
                            origin_unix_ms: 1,
                            payload: Bytes::from(bytes.clone()),
                        }
                    }
                })
                .collect();
            let p = plan_batch("sh", &entries, &rule());
            proptest::prop_assert_eq!(p.entries, entries.len() as u64);
            for c in &p.changes {
                let home = rule().home_of(&c.uid);
                proptest::prop_assert_eq!(home.as_deref(), Some("sh"));
                proptest::prop_assert_eq!(c.home_region.as_str(), "sh");
            }
        }
    }
}
