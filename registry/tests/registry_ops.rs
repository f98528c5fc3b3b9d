//! The registry's operations against 3 real acceptors over a perfect network, including the
//! states a crash leaves behind in the middle of a WeChat ID change (built by running the first
//! steps of a transition by hand, as a proposer that then died would have).

mod common;

use common::{Client, ClientOut};
use homeport_registry::names::WxidError;
use homeport_registry::paxos::acceptor::Acceptor;
use homeport_registry::paxos::proposer::{Proposer, ProposerConfig};
use homeport_registry::paxos::{ProposerId, Request};
use homeport_registry::registry::{
    Answer, Operation, Registry, RegistryConfig, RegistryError, RegistryOutput, WxidStatus,
    sweep_candidate,
};
use homeport_registry::storage::MemStorage;
use homeport_registry::values::{
    Goal, HomeEntry, OpTag, Outcome, RegistryChange, Transition, UserIds, decode_reservation,
    decode_user, user_key, wxid_key,
};

struct Cluster {
    acceptors: Vec<Acceptor<MemStorage>>,
    registry: Registry,
    next_id: u16,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            acceptors: (0..3).map(|_| Acceptor::new(MemStorage::new())).collect(),
            registry: Registry::new(RegistryConfig::default(), ProposerId::new(0, 1), 1).unwrap(),
            next_id: 1,
        }
    }

    /// Delivers every message at once, in order, until `client` is quiet, firing its timers
    /// only when nothing else is left (a backoff after a conflict); returns what ended.
    fn drive<C: Client>(acceptors: &mut [Acceptor<MemStorage>], client: &mut C) -> Vec<C::Done> {
        let mut done = Vec::new();
        let mut inbox = std::collections::VecDeque::new();
        let mut timers = std::collections::BTreeSet::new();
        loop {
            while let Some(out) = client.poll() {
                match out {
                    ClientOut::Send { to, request } => {
                        let reply = acceptors[to].handle(request);
                        inbox.push_back((to, reply));
                    }
                    ClientOut::Done(d) => done.push(d),
                    ClientOut::SetTimer { timer, .. } => {
                        timers.insert(timer);
                    }
                    ClientOut::CancelTimer { timer } => {
                        timers.remove(&timer);
                    }
                }
            }
            if let Some((from, reply)) = inbox.pop_front() {
                client.on_reply(from, reply);
            } else if let Some(timer) = timers.pop_first() {
                client.on_timer(timer);
            } else {
                return done;
            }
        }
    }

    fn run(&mut self, op: Result<Operation, RegistryError>) -> Result<Answer, RegistryError> {
        let id = self.registry.submit(op?)?;
        let done = Self::drive(&mut self.acceptors, &mut self.registry);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].0, id);
        assert_eq!(self.registry.pending_operations(), 0);
        done.into_iter().next().unwrap().1
    }

    /// One raw registry change, by a throwaway proposer (a node that dies right after).
    fn change(&mut self, key: &str, change: RegistryChange) -> Outcome {
        self.next_id += 1;
        let mut p: Proposer<RegistryChange> = Proposer::new(
            ProposerConfig::default(),
            ProposerId::new(self.next_id, 7),
            0,
        )
        .unwrap();
        p.submit(key, change.clone()).unwrap();
        let done = Self::drive(&mut self.acceptors, &mut p);
        let c = done[0].2.as_ref().expect("the change is chosen");
        change.outcome(c.before.value.as_ref()).unwrap()
    }

    fn begin(&mut self, uid: &str, goal: Goal) -> Transition {
        let tag = OpTag {
            proposer: u64::from(self.next_id) + 1000,
            request: 1,
            begin: 0,
        };
        match self.change(&user_key(uid), RegistryChange::Begin { goal, tag }) {
            Outcome::Began(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// Step 2 of a transition by hand: `wxid` reserved for `(uid, transition)`.
    fn reserve(&mut self, wxid: &str, uid: &str, transition: u64) {
        let change = RegistryChange::Reserve {
            uid: uid.into(),
            transition,
        };
        assert_eq!(self.change(&wxid_key(wxid), change), Outcome::Reserved);
    }

    /// The user's record as chosen now (read by a throwaway proposer).
    fn user_record(&mut self, uid: &str) -> UserIds {
        let Outcome::Read(record) = self.change(&user_key(uid), RegistryChange::Read) else {
            panic!("a read answers the record")
        };
        decode_user(record.as_ref()).unwrap()
    }

    fn lookup(&mut self, wxid: &str) -> WxidStatus {
        match self.run(Operation::lookup(wxid)) {
            Ok(Answer::Status(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn held(&mut self, uid: &str) -> Option<String> {
        match self.run(Operation::user_wxid(uid)) {
            Ok(Answer::UserWxid { held, changing }) => {
                assert!(!changing, "{uid} is in the middle of a change");
                held
            }
            other => panic!("{other:?}"),
        }
    }
}

fn held_by(uid: &str) -> WxidStatus {
    WxidStatus::Held { uid: uid.into() }
}

#[test]
fn claim_is_idempotent_and_exclusive_release_is_by_the_holder_only() {
    let mut c = Cluster::new();
    assert_eq!(
        c.run(Operation::claim("szdy01", "sh-1")),
        Ok(Answer::Claimed { released: None })
    );
    assert_eq!(
        c.run(Operation::claim("szdy01", "sh-1")),
        Ok(Answer::AlreadyHeld)
    );
    assert_eq!(
        c.run(Operation::claim("SZDY01", "hk-2")),
        Err(RegistryError::Taken {
            wxid: "szdy01".into(),
            owner: "sh-1".into()
        }),
        "IDs are unique case-insensitively"
    );
    assert_eq!(c.lookup("szdy01"), held_by("sh-1"));
    assert_eq!(c.held("sh-1").as_deref(), Some("szdy01"));
    assert_eq!(c.held("hk-2"), None);
    let err = c.run(Operation::release("szdy01", "hk-2")).unwrap_err();
    assert_eq!(
        err,
        RegistryError::NotOwner {
            wxid: "szdy01".into(),
            uid: "hk-2".into(),
            owner: "sh-1".into()
        }
    );
    assert!(
        err.to_string().contains("only its holder may release it"),
        "{err}"
    );
    assert_eq!(
        c.run(Operation::release("szdy01", "sh-1")),
        Ok(Answer::Released)
    );
    assert_eq!(c.lookup("szdy01"), WxidStatus::Free);
    assert_eq!(
        c.run(Operation::release("szdy01", "sh-1")),
        Ok(Answer::AlreadyFree)
    );
    assert_eq!(
        c.run(Operation::claim("szdy01", "hk-2")),
        Ok(Answer::Claimed { released: None })
    );
    assert_eq!(c.lookup("szdy01"), held_by("hk-2"));
}

#[test]
fn a_user_holds_one_id_changing_it_frees_the_old_one() {
    let mut c = Cluster::new();
    c.run(Operation::claim("first1", "u1")).unwrap();
    assert_eq!(
        c.run(Operation::claim("second2", "u1")),
        Ok(Answer::Claimed {
            released: Some("first1".into())
        })
    );
    assert_eq!(c.held("u1").as_deref(), Some("second2"));
    assert_eq!(c.lookup("first1"), WxidStatus::Free);
    assert_eq!(c.lookup("second2"), held_by("u1"));
    assert_eq!(
        c.run(Operation::claim("first1", "u2")),
        Ok(Answer::Claimed { released: None })
    );
    // A change to a taken ID changes nothing.
    assert_eq!(
        c.run(Operation::claim("first1", "u1")),
        Err(RegistryError::Taken {
            wxid: "first1".into(),
            owner: "u2".into()
        })
    );
    assert_eq!(c.held("u1").as_deref(), Some("second2"));
}

#[test]
fn bad_names_are_refused_before_anything_is_proposed() {
    let mut c = Cluster::new();
    let cases = [
        (Operation::claim("abc", "u1"), "at least 6"),
        (Operation::claim("9lives", "u1"), "must start with a letter"),
        (Operation::claim("ab cdef", "u1"), "only letters"),
        (Operation::claim("admin_wang", "u1"), "reserved"),
        (Operation::claim("service", "u1"), "reserved word"),
        (Operation::claim("goodid1", ""), "uid"),
        (Operation::set_home("u1", "Not A Region", None), "region"),
    ];
    for (op, expected) in cases {
        let err = op.unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected:?}"
        );
    }
    assert!(matches!(
        Operation::lookup("abcde"),
        Err(RegistryError::Wxid(WxidError::TooShort { .. }))
    ));
    // An Operation built by hand with a bad uid is refused by submit, with nothing sent.
    let op = Operation::UserWxid {
        uid: "has space".into(),
    };
    assert!(matches!(c.registry.submit(op), Err(RegistryError::Name(_))));
    assert_eq!(c.registry.poll_output(), None);
}

#[test]
fn home_directory_is_compare_and_set() {
    let mut c = Cluster::new();
    assert_eq!(c.run(Operation::get_home("sh-1")), Ok(Answer::Home(None)));
    let sh = HomeEntry {
        region: "sh".into(),
        epoch: 1,
    };
    assert_eq!(
        c.run(Operation::set_home("sh-1", "sh", None)),
        Ok(Answer::HomeSet(sh.clone()))
    );
    assert_eq!(
        c.run(Operation::set_home("sh-1", "hk", None)),
        Err(RegistryError::HomeConflict {
            uid: "sh-1".into(),
            current: Some(sh.clone())
        })
    );
    let hk = HomeEntry {
        region: "hk".into(),
        epoch: 2,
    };
    assert_eq!(
        c.run(Operation::set_home("sh-1", "hk", Some(1))),
        Ok(Answer::HomeSet(hk.clone()))
    );
    assert_eq!(
        c.run(Operation::get_home("sh-1")),
        Ok(Answer::Home(Some(hk)))
    );
}

#[test]
fn a_claim_that_died_after_reserving_is_claiming_then_rolled_forward() {
    let mut c = Cluster::new();
    let t = c.begin("u1", Goal::Claim("szdy01".into()));
    c.reserve("szdy01", "u1", t.id);
    // The node died here. Others see the ID taken (the claim may still complete) ...
    assert_eq!(
        c.lookup("szdy01"),
        WxidStatus::Claiming { uid: "u1".into() }
    );
    assert_eq!(
        c.run(Operation::claim("szdy01", "u2")),
        Err(RegistryError::Taken {
            wxid: "szdy01".into(),
            owner: "u1".into()
        })
    );
    // ... and the sweeper finishes it.
    assert_eq!(
        c.run(Operation::roll_forward("u1")),
        Ok(Answer::RolledForward {
            transition: Some((t.id, true))
        })
    );
    assert_eq!(c.lookup("szdy01"), held_by("u1"));
    assert_eq!(c.held("u1").as_deref(), Some("szdy01"));
    assert_eq!(
        c.run(Operation::roll_forward("u1")),
        Ok(Answer::RolledForward { transition: None })
    );
}

#[test]
fn asking_which_id_a_user_holds_finishes_a_claim_left_half_done() {
    // A claim answered at its reservation whose commit never ran (its node died): the user's
    // ID is already the claimed one, and the question must not say otherwise.
    let mut c = Cluster::new();
    let t = c.begin("u1", Goal::Claim("szdy01".into()));
    c.reserve("szdy01", "u1", t.id);
    assert_eq!(
        c.run(Operation::user_wxid("u1")),
        Ok(Answer::UserWxid {
            held: Some("szdy01".into()),
            changing: false
        })
    );
    assert_eq!(c.lookup("szdy01"), held_by("u1"));
}

#[test]
fn the_users_next_operation_finishes_a_dead_change_first() {
    let mut c = Cluster::new();
    c.run(Operation::claim("oldid1", "u1")).unwrap();
    let t = c.begin("u1", Goal::Claim("middle1".into()));
    c.reserve("middle1", "u1", t.id);
    // Died before committing. The user's next change completes the dead one, then its own.
    assert_eq!(
        c.run(Operation::claim("newid1", "u1")),
        Ok(Answer::Claimed {
            released: Some("middle1".into())
        })
    );
    assert_eq!(c.lookup("oldid1"), WxidStatus::Free);
    assert_eq!(c.lookup("middle1"), WxidStatus::Free);
    assert_eq!(c.lookup("newid1"), held_by("u1"));
    assert_eq!(c.held("u1").as_deref(), Some("newid1"));
}

#[test]
fn an_old_id_left_reserved_after_commit_is_free_and_not_lost() {
    let mut c = Cluster::new();
    c.run(Operation::claim("oldid1", "u1")).unwrap();
    let t = c.begin("u1", Goal::Claim("newid1".into()));
    c.reserve("newid1", "u1", t.id);
    c.change(&user_key("u1"), RegistryChange::Commit { transition: t.id });
    // Died after committing, before releasing the old ID. The user no longer holds it: it is
    // free, and another user can have it at once (the dead reservation is cleared on the way).
    assert_eq!(c.lookup("oldid1"), WxidStatus::Free);
    assert_eq!(c.lookup("newid1"), held_by("u1"));
    assert_eq!(
        c.run(Operation::claim("oldid1", "u2")),
        Ok(Answer::Claimed { released: None })
    );
    // Finishing the dead transition later must not take it from its new holder.
    c.run(Operation::roll_forward("u1")).unwrap();
    assert_eq!(c.lookup("oldid1"), held_by("u2"));
    assert_eq!(c.held("u1").as_deref(), Some("newid1"));
}

#[test]
fn a_reservation_made_after_its_transition_was_aborted_is_stale_and_cleared() {
    let mut c = Cluster::new();
    let t = c.begin("u1", Goal::Claim("szdy01".into()));
    // Another node aborted the transition (it saw the ID taken, since released) ...
    c.change(&user_key("u1"), RegistryChange::Abort { transition: t.id });
    // ... and then the slow original node reserved the ID, and died.
    c.reserve("szdy01", "u1", t.id);
    assert_eq!(c.lookup("szdy01"), WxidStatus::Free);
    assert_eq!(
        c.run(Operation::claim("szdy01", "u2")),
        Ok(Answer::Claimed { released: None })
    );
    assert_eq!(c.lookup("szdy01"), held_by("u2"));
    assert_eq!(c.held("u1"), None);
}

#[test]
fn a_release_that_died_half_way_is_finished_by_the_sweeper() {
    let mut c = Cluster::new();
    c.run(Operation::claim("szdy01", "u1")).unwrap();
    let t = c.begin("u1", Goal::Release("szdy01".into()));
    c.change(&user_key("u1"), RegistryChange::Commit { transition: t.id });
    // Died before releasing the ID itself: nobody holds it.
    assert_eq!(c.lookup("szdy01"), WxidStatus::Free);
    let record = c.user_record("u1");
    assert_eq!(record.held, None, "u1 should hold nothing, mid-change");
    assert!(record.pending.is_some());
    assert_eq!(
        c.run(Operation::roll_forward("u1")),
        Ok(Answer::RolledForward {
            transition: Some((t.id, true))
        })
    );
    assert_eq!(c.held("u1"), None);
    assert_eq!(
        c.run(Operation::claim("szdy01", "u2")),
        Ok(Answer::Claimed { released: None })
    );
}

#[test]
fn registry_outputs_are_what_the_shell_needs() {
    // One claim from a fresh registry: requests to every acceptor, a timer per round, one Done.
    let mut c = Cluster::new();
    let id = c
        .registry
        .submit(Operation::claim("szdy01", "u1").unwrap())
        .unwrap();
    let mut sends = Vec::new();
    let mut timers = 0;
    while let Some(out) = c.registry.poll_output() {
        match out {
            RegistryOutput::Send { to, request } => sends.push((to, request)),
            RegistryOutput::SetTimer { after_ms, .. } => {
                assert_eq!(after_ms, ProposerConfig::default().round_timeout_ms);
                timers += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // A new user: begin and the speculative reserve, both in the fast round, to every acceptor.
    let targets: Vec<_> = sends
        .iter()
        .map(|(to, r)| (*to, r.key().to_owned()))
        .collect();
    assert_eq!(
        targets,
        [
            (0, "user/u1".to_owned()),
            (1, "user/u1".to_owned()),
            (2, "user/u1".to_owned()),
            (0, "wxid/szdy01".to_owned()),
            (1, "wxid/szdy01".to_owned()),
            (2, "wxid/szdy01".to_owned()),
        ],
        "the first steps go to every acceptor"
    );
    assert!(
        sends
            .iter()
            .all(|(_, r)| matches!(r, Request::FastAccept { .. }))
    );
    assert_eq!(timers, 2, "one round timer per proposal");
    for (to, request) in sends {
        let reply = c.acceptors[to].handle(request);
        c.registry.on_reply(to, reply);
    }
    let done = Cluster::drive(&mut c.acceptors, &mut c.registry);
    assert_eq!(done, vec![(id, Ok(Answer::Claimed { released: None }))]);
}

#[test]
fn the_sweeper_finds_users_with_a_pending_transition() {
    let mut c = Cluster::new();
    c.run(Operation::claim("settled1", "u1")).unwrap();
    let t = c.begin("u2", Goal::Claim("dangling1".into()));
    let candidates = |c: &Cluster| -> Vec<Operation> {
        c.acceptors[0]
            .storage()
            .iter()
            .filter_map(|(key, state)| sweep_candidate(key, state))
            .collect()
    };
    assert_eq!(candidates(&c), vec![Operation::roll_forward("u2").unwrap()]);
    assert_eq!(
        c.run(Operation::roll_forward("u2")),
        Ok(Answer::RolledForward {
            transition: Some((t.id, true))
        })
    );
    assert_eq!(candidates(&c), vec![]);
    assert_eq!(c.lookup("dangling1"), held_by("u2"));
}

#[test]
fn a_damaged_value_is_reported_not_overwritten() {
    let mut c = Cluster::new();
    c.run(Operation::claim("szdy01", "u1")).unwrap();
    // Damage the user record on every acceptor (as a broken release would write it).
    for a in &mut c.acceptors {
        let mut state = a.storage().get(&user_key("u1")).unwrap().clone();
        let accepted = state.accepted.as_mut().unwrap();
        accepted.register.value = Some(bytes::Bytes::from_static(&[0xff, 0xff, 0xff]));
        a.storage_mut().put(&user_key("u1"), state);
    }
    // Another region's client (this one would accept on the value it wrote, skipping the read).
    c.registry = Registry::new(RegistryConfig::default(), ProposerId::new(2, 1), 2).unwrap();
    let err = c.run(Operation::claim("other1", "u1")).unwrap_err();
    assert!(
        matches!(&err, RegistryError::Corrupt { key, .. } if key == "user/u1"),
        "{err}"
    );
    assert!(err.to_string().contains("does not decode"), "{err}");
}

/// A registry that counts the requests it sends to acceptor 0 (prepare, accept, fast accept),
/// and hands each answer out with the counts at the moment it came.
struct Counting<'a> {
    registry: &'a mut Registry,
    sent: [u32; 3],
}

impl Client for Counting<'_> {
    type Done = (Result<Answer, RegistryError>, [u32; 3]);
    fn on_reply(&mut self, from: usize, reply: homeport_registry::paxos::Reply) {
        self.registry.on_reply(from, reply)
    }
    fn on_timer(&mut self, timer: homeport_registry::paxos::proposer::TimerId) {
        self.registry.on_timer(timer)
    }
    fn poll(&mut self) -> Option<ClientOut<Self::Done>> {
        Some(match self.registry.poll()? {
            ClientOut::Send { to, request } => {
                if to == 0 {
                    self.sent[match request {
                        Request::Prepare { .. } => 0,
                        Request::Accept { .. } => 1,
                        Request::FastAccept { .. } => 2,
                    }] += 1;
                }
                ClientOut::Send { to, request }
            }
            ClientOut::Done((_, result)) => ClientOut::Done((result, self.sent)),
            ClientOut::SetTimer { timer, after_ms } => ClientOut::SetTimer { timer, after_ms },
            ClientOut::CancelTimer { timer } => ClientOut::CancelTimer { timer },
        })
    }
}

/// Runs `op` on `registry` with [`Cluster::drive`]; returns the answer and how many requests
/// of each kind (prepare, accept, fast accept) it had sent to acceptor 0 when it answered.
fn run_counting(
    acceptors: &mut [Acceptor<MemStorage>],
    registry: &mut Registry,
    op: Operation,
) -> (Result<Answer, RegistryError>, [u32; 3]) {
    registry.submit(op).unwrap();
    let mut counting = Counting {
        registry,
        sent: [0; 3],
    };
    let mut done = Cluster::drive(acceptors, &mut counting);
    assert_eq!(done.len(), 1, "one answer per operation: {done:?}");
    // Background work after an early answer has ended too.
    assert_eq!(counting.registry.pending_operations(), 0);
    done.remove(0)
}

#[test]
fn a_new_users_first_claim_is_answered_after_one_round_trip() {
    let mut acceptors: Vec<_> = (0..3).map(|_| Acceptor::new(MemStorage::new())).collect();
    let mut registry = Registry::new(RegistryConfig::default(), ProposerId::new(0, 1), 1).unwrap();
    // Begin on the new user record and a speculative reserve of the new ID, side by side in
    // the fast round; the answer comes with both, and the commit (which also finishes: there is
    // no old ID to release) on the ballot the fast begin got is already on its way.
    let (answer, [prepares, accepts, fast]) = run_counting(
        &mut acceptors,
        &mut registry,
        Operation::claim("szdy01", "sh-1").unwrap(),
    );
    assert_eq!(answer, Ok(Answer::Claimed { released: None }));
    assert_eq!((prepares, accepts, fast), (0, 0, 2));

    // Changing the ID: this node made the last change of the user record and of the old ID, so
    // begin, commit, release of the old ID and finish take one round trip each; the new ID is
    // new (fast round).
    let (answer, [prepares, accepts, fast]) = run_counting(
        &mut acceptors,
        &mut registry,
        Operation::claim("newid22", "sh-1").unwrap(),
    );
    assert_eq!(
        answer,
        Ok(Answer::Claimed {
            released: Some("szdy01".into())
        })
    );
    assert_eq!((prepares, accepts, fast), (0, 4, 1));

    // Another node claiming a taken ID: its fast begin on the new user works, its fast reserve
    // is refused (the ID is used) and the full round finds the owner.
    let mut other = Registry::new(RegistryConfig::default(), ProposerId::new(1, 2), 2).unwrap();
    let (answer, _) = run_counting(
        &mut acceptors,
        &mut other,
        Operation::claim("newid22", "hk-7").unwrap(),
    );
    assert!(
        matches!(&answer, Err(RegistryError::Taken { owner, .. }) if owner == "sh-1"),
        "{answer:?}"
    );
    let c_status = run_counting(
        &mut acceptors,
        &mut other,
        Operation::lookup("szdy01").unwrap(),
    )
    .0;
    assert_eq!(c_status, Ok(Answer::Status(WxidStatus::Free)));
}

#[test]
fn a_speculative_reserve_for_a_user_with_a_past_is_dropped_and_the_claim_goes_on() {
    let mut c = Cluster::new();
    c.run(Operation::claim("oldid1", "u1")).unwrap();
    // Another node, which knows nothing of u1, bets on a first transition: its reservation of
    // `newid22` for transition 1 is not u1's (u1 is at transition 1 already), so it is freed
    // and the claim reserves for its real transition.
    let mut other = Registry::new(RegistryConfig::default(), ProposerId::new(5, 5), 5).unwrap();
    let (answer, _) = run_counting(
        &mut c.acceptors,
        &mut other,
        Operation::claim("newid22", "u1").unwrap(),
    );
    assert_eq!(
        answer,
        Ok(Answer::Claimed {
            released: Some("oldid1".into())
        })
    );
    assert_eq!(c.lookup("newid22"), held_by("u1"));
    assert_eq!(c.lookup("oldid1"), WxidStatus::Free);
    let Outcome::Read(Some(r)) = c.change(&wxid_key("newid22"), RegistryChange::Read) else {
        panic!("newid22 is reserved")
    };
    assert_eq!(decode_reservation(Some(&r)).unwrap().unwrap().transition, 2);
}

#[test]
fn a_reservation_made_ahead_of_its_begin_is_fenced_off_by_whoever_checks_it() {
    let mut c = Cluster::new();
    // A speculating node reserved `szdy01` for u1's transition 1 and died before its begin.
    c.change(
        &wxid_key("szdy01"),
        RegistryChange::ReserveIfFree {
            uid: "u1".into(),
            transition: 1,
        },
    );
    // A lookup fences u1's record at transition 1: the reservation is stale for good.
    assert_eq!(c.lookup("szdy01"), WxidStatus::Free);
    assert_eq!(c.user_record("u1").last_transition, 1);
    // So u1's late begin gets transition 2, and another user may take the ID.
    assert_eq!(
        c.run(Operation::claim("szdy01", "u2")),
        Ok(Answer::Claimed { released: None })
    );
    assert_eq!(
        c.run(Operation::claim("szdy01", "u1")),
        Err(RegistryError::Taken {
            wxid: "szdy01".into(),
            owner: "u2".into()
        })
    );
    let t = c.begin("u1", Goal::Claim("other11".into()));
    assert_eq!(
        t.id, 3,
        "transitions 1 (fenced) and 2 (aborted) are used up"
    );
}

#[test]
fn the_commit_behind_an_early_answer_travels_with_the_next_claim() {
    let mut acceptors: Vec<_> = (0..3).map(|_| Acceptor::new(MemStorage::new())).collect();
    let mut registry = Registry::new(RegistryConfig::default(), ProposerId::new(0, 1), 1).unwrap();
    // Delivers sends and replies until the registry is quiet; returns the requests it sent to
    // acceptor 0 and whether an answer came.
    let deliver = |acceptors: &mut [Acceptor<MemStorage>], registry: &mut Registry| {
        let mut sent = Vec::new();
        let mut answered = false;
        loop {
            let mut replies = Vec::new();
            while let Some(out) = registry.poll_output() {
                match out {
                    RegistryOutput::Send { to, request } => {
                        if to == 0 {
                            sent.push(request.clone());
                        }
                        replies.push((to, acceptors[to].handle(request)));
                    }
                    RegistryOutput::Done { result, .. } => {
                        assert_eq!(result, Ok(Answer::Claimed { released: None }));
                        answered = true;
                    }
                    _ => {}
                }
            }
            if replies.is_empty() {
                return (sent, answered);
            }
            for (to, reply) in replies {
                registry.on_reply(to, reply);
            }
        }
    };
    registry
        .submit(Operation::claim("first1", "u1").unwrap())
        .unwrap();
    let (sent, answered) = deliver(&mut acceptors, &mut registry);
    assert!(answered);
    assert!(
        sent.iter().all(|r| matches!(r, Request::FastAccept { .. })),
        "the commit is held back: {sent:?}"
    );
    assert_eq!(registry.pending_operations(), 1, "the commit still waits");
    registry
        .submit(Operation::claim("second2", "u2").unwrap())
        .unwrap();
    let first_batch: std::collections::BTreeSet<_> = std::iter::from_fn(|| registry.poll_output())
        .filter_map(|o| match o {
            RegistryOutput::Send { to: 0, request } => Some(request.key().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        first_batch,
        ["user/u1", "user/u2", "wxid/second2"]
            .into_iter()
            .map(String::from)
            .collect(),
        "u1's commit goes out with u2's claim"
    );
}
