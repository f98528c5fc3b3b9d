//! Hand-written histories with a known answer: linearizable ones are accepted, the classic
//! violations (stale read, two owners of one key, lost write) are rejected and explained, and
//! operations of unknown outcome may take effect after their invocation, or never.

use std::collections::HashMap;
use std::sync::Arc;

use homeport_lincheck::models::{CasOp, CasRegister, CasRet, Registry, RegistryOp, RegistryRet};
use homeport_lincheck::{
    CheckOptions, History, HistoryError, Outcome, Recorder, SequentialSpec, Verdict, check,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type RegHistory = History<&'static str, RegistryOp<&'static str>, RegistryRet<&'static str>>;
type CasHistory = History<&'static str, CasOp<u8>, CasRet<u8>>;

fn registry(h: &RegHistory) -> Verdict<&'static str, Registry<&'static str>> {
    check(&Registry::new(), h, &CheckOptions::default())
}

fn cas(h: &CasHistory) -> Verdict<&'static str, CasRegister<u8>> {
    check(&CasRegister::new(), h, &CheckOptions::default())
}

use RegistryOp::{Claim, Lookup, Release};
use RegistryRet::{Claimed, Found, NotHeld, NotOwner, Owned, Released};

#[test]
fn sequential_registry_history_is_accepted() {
    let mut h = RegHistory::new();
    h.push_returned("wxid/a", Claim("u1"), Claimed, 1, 2)
        .unwrap();
    h.push_returned("wxid/a", Claim("u1"), Claimed, 3, 4)
        .unwrap();
    h.push_returned("wxid/a", Claim("u2"), Owned("u1"), 5, 6)
        .unwrap();
    h.push_returned("wxid/a", Release("u2"), NotOwner, 7, 8)
        .unwrap();
    h.push_returned("wxid/a", Lookup, Found(Some("u1")), 9, 10)
        .unwrap();
    h.push_returned("wxid/a", Release("u1"), Released, 11, 12)
        .unwrap();
    h.push_returned("wxid/a", Release("u1"), NotHeld, 13, 14)
        .unwrap();
    h.push_returned("wxid/b", Lookup, Found(None), 1, 14)
        .unwrap();
    match registry(&h) {
        Verdict::Linearizable(s) => {
            assert_eq!((s.keys, s.ops, s.unknown_ops), (2, 8, 0));
        }
        other => panic!("expected linearizable, got {other}"),
    }
}

#[test]
fn concurrent_claims_with_one_winner_are_accepted() {
    // u2's claim returns first yet loses: fine, u1's claim took effect earlier.
    let mut h = RegHistory::new();
    h.push_returned("k", Claim("u1"), Claimed, 1, 10).unwrap();
    h.push_returned("k", Claim("u2"), Owned("u1"), 2, 5)
        .unwrap();
    h.push_returned("k", Lookup, Found(None), 0, 3).unwrap();
    h.push_returned("k", Lookup, Found(Some("u1")), 4, 6)
        .unwrap();
    assert!(registry(&h).is_linearizable());
}

#[test]
fn read_concurrent_with_a_write_may_see_either_value() {
    for seen in [None, Some(1)] {
        let mut h = CasHistory::new();
        h.push_returned("k", CasOp::Write(1), CasRet::Written, 1, 10)
            .unwrap();
        h.push_returned("k", CasOp::Read, CasRet::Read(seen), 2, 9)
            .unwrap();
        assert!(cas(&h).is_linearizable(), "read of {seen:?}");
    }
}

#[test]
fn stale_read_is_rejected_and_explained() {
    let mut h = CasHistory::new();
    h.push_returned("k", CasOp::Write(1), CasRet::Written, 1, 2)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 3, 4)
        .unwrap();
    let stale = h
        .push_returned("k", CasOp::Read, CasRet::Read(None), 5, 6)
        .unwrap();
    let verdict = cas(&h);
    let v = verdict.violation().expect("a stale read is a violation");
    assert_eq!(v.key, "k");
    assert_eq!(v.failed.id, stale);
    assert_eq!(v.tried, vec![(Some(1), CasRet::Read(Some(1)))]);
    assert_eq!(v.concurrent_total, 0);
    assert_eq!(v.preceding.iter().map(|o| o.id).collect::<Vec<_>>(), [0, 1]);
    let text = v.to_string();
    assert!(
        text.contains("no order can place: #2 Read -> Read(None)"),
        "{text}"
    );
    assert!(text.contains("Some(1) -> Read(Some(1))"), "{text}");
}

#[test]
fn two_owners_of_one_key_are_rejected() {
    // Concurrent: whichever goes second should have heard Owned(first).
    let mut h = RegHistory::new();
    h.push_returned("wxid/x", Claim("u1"), Claimed, 1, 10)
        .unwrap();
    h.push_returned("wxid/x", Claim("u2"), Claimed, 2, 11)
        .unwrap();
    let verdict = registry(&h);
    let v = verdict.violation().expect("two owners is a violation");
    assert_eq!(v.key, "wxid/x");
    let other = 1 - v.failed.id;
    assert_eq!(
        v.concurrent.iter().map(|o| o.id).collect::<Vec<_>>(),
        [other]
    );
    assert!(!v.tried.is_empty());

    // Sequential: the same, plainer.
    let mut h = RegHistory::new();
    h.push_returned("wxid/x", Claim("u1"), Claimed, 1, 2)
        .unwrap();
    h.push_returned("wxid/x", Claim("u2"), Claimed, 3, 4)
        .unwrap();
    let verdict = registry(&h);
    let v = verdict.violation().expect("two owners is a violation");
    assert_eq!(v.failed.id, 1);
    assert_eq!(v.tried, vec![(Some("u1"), Owned("u1"))]);
}

#[test]
fn lost_write_is_rejected() {
    let mut h = CasHistory::new();
    h.push_returned("k", CasOp::Write(1), CasRet::Written, 1, 2)
        .unwrap();
    h.push_returned("k", CasOp::Write(2), CasRet::Written, 3, 4)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 5, 6)
        .unwrap();
    assert_eq!(cas(&h).violation().expect("lost write").failed.id, 2);

    // A put-if-absent that succeeded, then the key is absent again.
    let mut h = CasHistory::new();
    h.push_returned(
        "k",
        CasOp::Cas {
            expected: None,
            new: 7,
        },
        CasRet::Cas(true),
        1,
        2,
    )
    .unwrap();
    h.push_returned(
        "k",
        CasOp::Cas {
            expected: None,
            new: 8,
        },
        CasRet::Cas(true),
        3,
        4,
    )
    .unwrap();
    assert!(cas(&h).violation().is_some());
}

#[test]
fn unknown_outcome_may_take_effect_after_invocation() {
    let mut h = CasHistory::new();
    h.push_unknown("k", CasOp::Write(1), 1);
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 10, 11)
        .unwrap();
    assert!(cas(&h).is_linearizable());
}

#[test]
fn unknown_outcome_may_never_take_effect() {
    let mut h = CasHistory::new();
    h.push_unknown("k", CasOp::Write(1), 1);
    h.push_returned("k", CasOp::Read, CasRet::Read(None), 10, 11)
        .unwrap();
    h.push_returned("k", CasOp::Write(2), CasRet::Written, 12, 13)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(2)), 14, 15)
        .unwrap();
    match cas(&h) {
        Verdict::Linearizable(s) => assert_eq!(s.unknown_ops, 1),
        other => panic!("expected linearizable, got {other}"),
    }
}

#[test]
fn unknown_outcome_may_take_effect_late() {
    // Invoked long before, seen only after another write: it took effect in between.
    let mut h = CasHistory::new();
    h.push_unknown("k", CasOp::Write(1), 1);
    h.push_returned("k", CasOp::Write(2), CasRet::Written, 10, 11)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(2)), 12, 13)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 14, 15)
        .unwrap();
    assert!(cas(&h).is_linearizable());
}

#[test]
fn unknown_outcome_cannot_take_effect_before_invocation() {
    let mut h = CasHistory::new();
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 1, 2)
        .unwrap();
    h.push_unknown("k", CasOp::Write(1), 5);
    let verdict = cas(&h);
    assert_eq!(
        verdict.violation().expect("effect before cause").failed.id,
        0
    );
}

#[test]
fn unknown_outcome_takes_effect_at_most_once() {
    // Seen, then gone, with nothing in between that could remove it.
    let mut h = CasHistory::new();
    h.push_unknown("k", CasOp::Write(1), 1);
    h.push_returned("k", CasOp::Read, CasRet::Read(Some(1)), 10, 11)
        .unwrap();
    h.push_returned("k", CasOp::Read, CasRet::Read(None), 12, 13)
        .unwrap();
    assert!(cas(&h).violation().is_some());
}

#[test]
fn unknown_claim_explains_a_later_owner() {
    let mut h = RegHistory::new();
    h.push_unknown("k", Claim("u2"), 0);
    h.push_returned("k", Lookup, Found(Some("u2")), 5, 6)
        .unwrap();
    h.push_returned("k", Claim("u1"), Owned("u2"), 7, 8)
        .unwrap();
    assert!(registry(&h).is_linearizable());

    let mut h = RegHistory::new();
    h.push_unknown("k", Claim("u2"), 0);
    h.push_returned("k", Lookup, Found(Some("u2")), 5, 6)
        .unwrap();
    h.push_returned("k", Claim("u1"), Claimed, 7, 8).unwrap();
    assert_eq!(registry(&h).violation().expect("two owners").failed.id, 2);
}

#[test]
fn only_violating_keys_are_reported() {
    let mut h = CasHistory::new();
    for key in ["a", "b", "c"] {
        h.push_returned(key, CasOp::Write(1), CasRet::Written, 1, 2)
            .unwrap();
    }
    h.push_returned("a", CasOp::Read, CasRet::Read(Some(1)), 3, 4)
        .unwrap();
    h.push_returned("b", CasOp::Read, CasRet::Read(Some(9)), 3, 4)
        .unwrap();
    h.push_returned("c", CasOp::Read, CasRet::Read(None), 3, 4)
        .unwrap();
    let verdict = cas(&h);
    let v = verdict.violation().expect("b and c violate");
    assert_eq!(v.key, "b");
    assert_eq!(v.violating_keys, ["b", "c"]);
    assert_eq!(v.ops_of_key, 2);
}

#[test]
fn a_return_before_its_invocation_is_refused() {
    let mut h = CasHistory::new();
    assert_eq!(
        h.push_returned("k", CasOp::Read, CasRet::Read(None), 5, 5),
        Err(HistoryError::ReturnNotAfterInvoke {
            id: 0,
            invoked_ns: 5,
            returned_ns: 5
        })
    );
    assert!(h.is_empty());
}

#[test]
fn recorder_timestamps_increase_and_unsettled_ops_are_unknown() {
    let rec: Recorder<&str, CasOp<u8>, CasRet<u8>> = Recorder::new();
    let a = rec.invoke("k", CasOp::Write(1));
    let b = rec.invoke("k", CasOp::Read);
    let in_flight = rec.history();
    assert!(
        in_flight
            .ops()
            .iter()
            .all(|o| o.outcome == Outcome::Unknown)
    );
    a.ok(CasRet::Written);
    drop(b);
    let c = rec.invoke("k", CasOp::Read);
    c.unknown();
    let h = rec.history();
    let ops = h.ops();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[0].outcome, Outcome::Returned(CasRet::Written));
    assert!(ops[0].invoked_ns < ops[1].invoked_ns);
    assert!(ops[1].invoked_ns < ops[0].returned_ns.unwrap());
    assert!(ops[0].returned_ns.unwrap() < ops[2].invoked_ns);
    assert_eq!((ops[1].returned_ns, ops[2].returned_ns), (None, None));
}

/// Many tokio tasks on two worker threads use a truly atomic map (one lock) and record what
/// they see; some drop their handle as if they timed out. The history must be linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_from_many_tasks_of_an_atomic_map_is_linearizable() {
    const TASKS: u64 = 16;
    const OPS_PER_TASK: usize = 200;
    let rec: Recorder<u8, CasOp<u8>, CasRet<u8>> = Recorder::new();
    let map = Arc::new(tokio::sync::Mutex::new(HashMap::<u8, Option<u8>>::new()));
    let spec = CasRegister::<u8>::new();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (rec, map) = (rec.clone(), map.clone());
        tasks.push(tokio::spawn(async move {
            let spec = CasRegister::<u8>::new();
            let mut rng = StdRng::seed_from_u64(t);
            for _ in 0..OPS_PER_TASK {
                let key = rng.random_range(0..4u8);
                let op = match rng.random_range(0..3) {
                    0 => CasOp::Read,
                    1 => CasOp::Write(rng.random_range(0..4)),
                    _ => CasOp::Cas {
                        expected: rng.random_bool(0.3).then(|| rng.random_range(0..4)),
                        new: rng.random_range(0..4),
                    },
                };
                let inv = rec.invoke(key, op.clone());
                tokio::task::yield_now().await;
                let ret = {
                    let mut map = map.lock().await;
                    let state = map.entry(key).or_insert(None);
                    let (next, ret) = spec.step(state, &op);
                    *state = next;
                    ret
                };
                tokio::task::yield_now().await;
                if rng.random_bool(0.05) {
                    inv.unknown();
                } else {
                    inv.ok(ret);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = rec.history();
    assert_eq!(h.len(), TASKS as usize * OPS_PER_TASK);
    match check(&spec, &h, &CheckOptions::default()) {
        Verdict::Linearizable(s) => assert!(s.unknown_ops > 0),
        other => panic!("expected linearizable, got {other}"),
    }
}
