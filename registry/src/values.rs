//! The registry's keys, their values, and the pure changes applied to them.
//!
//! Three kinds of keys, each a CASPaxos register:
//! - `wxid/<id>` → [`Reservation`]: the ID is taken by a user (absent: free). One register per
//!   ID, so two users can never both have it: a reservation is only ever made on a free ID or
//!   one the same user already had.
//! - `user/<uid>` → [`UserIds`]: the ID the user holds, and the change of it in progress.
//! - `home/<uid>` → [`HomeEntry`]: the user's home region, set by compare-and-set on its epoch.
//!
//! Every change is a pure function `decide(current) -> (new value, outcome)`: the proposer
//! applies it to the chosen value, and the caller gets the outcome by deciding again on the
//! `before` value the proposer reports, so both always agree. Values are protobuf, so any release
//! reads what another wrote.

use bytes::Bytes;
use prost::Message;

use crate::paxos::proposer::{Change, ChangeRejected};
use crate::pb;

/// `wxid` is a normalized ID ([`crate::names::WxId::as_str`]).
pub fn wxid_key(wxid: &str) -> String {
    format!("wxid/{wxid}")
}

pub fn user_key(uid: &str) -> String {
    format!("user/{uid}")
}

pub fn home_key(uid: &str) -> String {
    format!("home/{uid}")
}

/// Who has taken a WeChat ID, and by which of their transitions. The transition id makes
/// releases exact: a late release meant for an older reservation never frees a newer one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    pub owner: String,
    pub transition: u64,
}

/// A user's home region; `epoch` grows by one with every move.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HomeEntry {
    pub region: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldId {
    pub wxid: String,
    /// The transition that reserved it.
    pub transition: u64,
}

/// Names the operation that began a transition. A proposer may see its begin chosen through
/// another proposer's round and then apply it again; the tag lets it recognize its own
/// transition (pending, or the last finished one) instead of taking it for someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpTag {
    pub proposer: u64,
    pub request: u64,
    /// Counts the begins of one operation (it begins again after its transition was aborted).
    pub begin: u32,
}

/// A change of the ID a user holds, from `from` to `to`, recorded in the user's record before
/// any ID is touched (see [`crate::registry`] for the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Transition {
    pub id: u64,
    pub from: Option<HeldId>,
    pub to: Option<String>,
    pub tag: OpTag,
}

impl Transition {
    /// What the user holds once this transition has committed.
    pub fn target(&self) -> Option<HeldId> {
        self.to.as_ref().map(|wxid| HeldId {
            wxid: wxid.clone(),
            transition: self.id,
        })
    }
}

/// The value of `user/<uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserIds {
    pub held: Option<HeldId>,
    pub pending: Option<Transition>,
    pub last_transition: u64,
    /// The last transition that finished, and whether it committed.
    pub last_finished: Option<(Transition, bool)>,
}

impl UserIds {
    /// Whether `t` (the pending transition) has committed: the user holds its target.
    pub fn committed(&self, t: &Transition) -> bool {
        self.held == t.target()
    }

    /// Whether a reservation of `wxid` by this user is backed by the user's record: the user
    /// holds it by that reservation, or is in a transition to it that made that reservation.
    /// A reservation that is not backed is stale for good (see [`crate::registry`]).
    pub fn backs(&self, wxid: &str, r: &Reservation) -> bool {
        let held = self
            .held
            .as_ref()
            .is_some_and(|h| h.wxid == wxid && h.transition == r.transition);
        let pending = self
            .pending
            .as_ref()
            .is_some_and(|t| t.id == r.transition && t.to.as_deref() == Some(wxid));
        held || pending
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ChangeRejected {
    ChangeRejected(format!(
        "the stored {what} does not decode ({e}); it was written by a broken release or damaged"
    ))
}

pub fn decode_reservation(bytes: Option<&Bytes>) -> Result<Option<Reservation>, ChangeRejected> {
    let Some(bytes) = bytes else { return Ok(None) };
    let m = pb::WxidReservation::decode(bytes.as_ref())
        .map_err(|e| corrupt("WeChat ID reservation", e))?;
    if m.owner_uid.is_empty() {
        return Err(corrupt("WeChat ID reservation", "no owner"));
    }
    Ok(Some(Reservation {
        owner: m.owner_uid,
        transition: m.transition,
    }))
}

pub fn encode_reservation(r: &Reservation) -> Bytes {
    pb::WxidReservation {
        owner_uid: r.owner.clone(),
        transition: r.transition,
    }
    .encode_to_vec()
    .into()
}

pub fn decode_home(bytes: Option<&Bytes>) -> Result<Option<HomeEntry>, ChangeRejected> {
    let Some(bytes) = bytes else { return Ok(None) };
    let m = pb::HomeEntry::decode(bytes.as_ref()).map_err(|e| corrupt("home entry", e))?;
    Ok(Some(HomeEntry {
        region: m.region,
        epoch: m.epoch,
    }))
}

pub fn encode_home(h: &HomeEntry) -> Bytes {
    pb::HomeEntry {
        region: h.region.clone(),
        epoch: h.epoch,
    }
    .encode_to_vec()
    .into()
}

fn held_from_pb(h: pb::HeldId) -> HeldId {
    HeldId {
        wxid: h.wxid,
        transition: h.transition,
    }
}

fn held_to_pb(h: &HeldId) -> pb::HeldId {
    pb::HeldId {
        wxid: h.wxid.clone(),
        transition: h.transition,
    }
}

fn transition_from_pb(t: pb::Transition) -> Transition {
    let tag = t.tag.unwrap_or_default();
    Transition {
        id: t.id,
        from: t.from.map(held_from_pb),
        to: t.to,
        tag: OpTag {
            proposer: tag.proposer,
            request: tag.request,
            begin: tag.begin,
        },
    }
}

fn transition_to_pb(t: &Transition) -> pb::Transition {
    pb::Transition {
        id: t.id,
        from: t.from.as_ref().map(held_to_pb),
        to: t.to.clone(),
        tag: Some(pb::OpTag {
            proposer: t.tag.proposer,
            request: t.tag.request,
            begin: t.tag.begin,
        }),
    }
}

/// A missing user record reads as the default (holds nothing, no transition yet).
pub fn decode_user(bytes: Option<&Bytes>) -> Result<UserIds, ChangeRejected> {
    let Some(bytes) = bytes else {
        return Ok(UserIds::default());
    };
    let m = pb::UserIds::decode(bytes.as_ref()).map_err(|e| corrupt("user record", e))?;
    Ok(UserIds {
        held: m.held.map(held_from_pb),
        pending: m.pending.map(transition_from_pb),
        last_transition: m.last_transition,
        last_finished: match m.last_finished {
            None => None,
            Some(f) => {
                let t = f.transition.ok_or_else(|| {
                    corrupt(
                        "user record",
                        "a finished transition without its transition",
                    )
                })?;
                Some((transition_from_pb(t), f.committed))
            }
        },
    })
}

pub fn encode_user(u: &UserIds) -> Bytes {
    pb::UserIds {
        held: u.held.as_ref().map(held_to_pb),
        pending: u.pending.as_ref().map(transition_to_pb),
        last_transition: u.last_transition,
        last_finished: u
            .last_finished
            .as_ref()
            .map(|(t, committed)| pb::FinishedTransition {
                transition: Some(transition_to_pb(t)),
                committed: *committed,
            }),
    }
    .encode_to_vec()
    .into()
}

/// What a user asks of their WeChat ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Goal {
    /// Hold this ID (releasing the one held now, if any).
    Claim(String),
    /// Stop holding this ID.
    Release(String),
}

/// Every change the registry proposes. The key it applies to is the caller's business
/// ([`crate::registry`] pairs them correctly).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryChange {
    /// Any key: leave it as it is (a linearizable read).
    Read,
    /// `wxid/<id>`: reserve for `(uid, transition)` if free or already the user's.
    Reserve { uid: String, transition: u64 },
    /// `wxid/<id>`: reserve for `(uid, transition)` only if free (or already exactly that): the
    /// speculative reserve a new user's claim makes alongside its begin (see
    /// [`crate::registry`]), which must never replace a reservation the user already has.
    ReserveIfFree { uid: String, transition: u64 },
    /// `wxid/<id>`: free it if reserved by exactly `(uid, transition)`.
    ReleaseIf { uid: String, transition: u64 },
    /// `user/<uid>`: make sure no transition up to `transition` can begin any more (raise
    /// `last_transition` to it), then report the record: what a staleness check of a
    /// reservation `(uid, transition)` reads, so that a reservation it finds unbacked stays so.
    Fence { transition: u64 },
    /// `user/<uid>`: record a new transition towards `goal` for the operation `tag`, unless one
    /// is pending (idempotent: finds the transition `tag` began, if any).
    Begin { goal: Goal, tag: OpTag },
    /// `user/<uid>`: the user now holds the pending transition's target; a transition with no
    /// old ID to release is finished by it too.
    Commit { transition: u64 },
    /// `user/<uid>`: drop the pending transition, unless it committed.
    Abort { transition: u64 },
    /// `user/<uid>`: clear the committed pending transition.
    Finish { transition: u64 },
    /// `home/<uid>`: set the region if the entry's epoch is `expected_epoch` (`None`: no entry);
    /// the new epoch is one more.
    SetHome {
        region: String,
        expected_epoch: Option<u64>,
    },
}

/// What a change found, decided from the value before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    Read(Option<Bytes>),
    /// The ID is now reserved for the asking transition.
    Reserved,
    /// Someone else has the ID.
    Taken(Reservation),
    /// `ReleaseIf`: whether the reservation was the one named (and is now gone).
    ReleasedIf {
        released: bool,
    },
    /// `Begin`: the transition now pending (begun now, or earlier by the same operation).
    Began(Transition),
    /// `Fence`: the user record after it.
    Fenced(UserIds),
    /// `Begin`: the transition this operation began already finished (`committed` or not).
    Ended {
        transition: Transition,
        committed: bool,
    },
    /// `Begin`: another transition is pending; it must be finished first.
    Busy {
        user: UserIds,
    },
    /// `Begin` of a claim: the user already holds the ID.
    AlreadyHeld(HeldId),
    /// `Begin` of a release: the user does not hold the ID.
    NotHeld {
        held: Option<HeldId>,
    },
    /// `Commit`/`Abort`/`Finish` did (or had already done) what was asked, or found the
    /// transition committed (`Abort`). `user` is the record before the change.
    Committed {
        user: UserIds,
    },
    Aborted,
    Finished,
    /// The transition is no longer pending: another proposer finished or aborted it.
    Gone {
        user: UserIds,
    },
    /// `SetHome` applied, or the entry already was what it would write.
    HomeSet(HomeEntry),
    /// `SetHome` found another epoch.
    HomeConflict(Option<HomeEntry>),
}

impl RegistryChange {
    /// The new value and the outcome, from the current value.
    pub fn decide(
        &self,
        current: Option<&Bytes>,
    ) -> Result<(Option<Bytes>, Outcome), ChangeRejected> {
        let keep = || current.cloned();
        Ok(match self {
            RegistryChange::Read => (keep(), Outcome::Read(keep())),
            RegistryChange::Reserve { uid, transition } => match decode_reservation(current)? {
                Some(r) if r.owner != *uid => (keep(), Outcome::Taken(r)),
                _ => {
                    let r = Reservation {
                        owner: uid.clone(),
                        transition: *transition,
                    };
                    (Some(encode_reservation(&r)), Outcome::Reserved)
                }
            },
            RegistryChange::ReserveIfFree { uid, transition } => {
                let wanted = Reservation {
                    owner: uid.clone(),
                    transition: *transition,
                };
                match decode_reservation(current)? {
                    None => (Some(encode_reservation(&wanted)), Outcome::Reserved),
                    Some(r) if r == wanted => (keep(), Outcome::Reserved),
                    Some(r) => (keep(), Outcome::Taken(r)),
                }
            }
            RegistryChange::Fence { transition } => {
                let user = decode_user(current)?;
                if user.last_transition >= *transition {
                    (keep(), Outcome::Fenced(user))
                } else {
                    let next = UserIds {
                        last_transition: *transition,
                        ..user
                    };
                    (Some(encode_user(&next)), Outcome::Fenced(next))
                }
            }
            RegistryChange::ReleaseIf { uid, transition } => match decode_reservation(current)? {
                Some(r) if r.owner == *uid && r.transition == *transition => {
                    (None, Outcome::ReleasedIf { released: true })
                }
                _ => (keep(), Outcome::ReleasedIf { released: false }),
            },
            RegistryChange::Begin { goal, tag } => {
                let user = decode_user(current)?;
                match &user.pending {
                    Some(t) if t.tag == *tag => return Ok((keep(), Outcome::Began(t.clone()))),
                    Some(_) => return Ok((keep(), Outcome::Busy { user })),
                    None => {}
                }
                if let Some((t, committed)) = &user.last_finished
                    && t.tag == *tag
                {
                    let outcome = Outcome::Ended {
                        transition: t.clone(),
                        committed: *committed,
                    };
                    return Ok((keep(), outcome));
                }
                let held_name = user.held.as_ref().map(|h| h.wxid.as_str());
                let to = match goal {
                    Goal::Claim(wxid) if held_name == Some(wxid.as_str()) => {
                        let held = user.held.clone().expect("compared above");
                        return Ok((keep(), Outcome::AlreadyHeld(held)));
                    }
                    Goal::Claim(wxid) => Some(wxid.clone()),
                    Goal::Release(wxid) if held_name != Some(wxid.as_str()) => {
                        return Ok((keep(), Outcome::NotHeld { held: user.held }));
                    }
                    Goal::Release(_) => None,
                };
                let id = user.last_transition.checked_add(1).ok_or_else(|| {
                    ChangeRejected("the user's transition counter is exhausted".into())
                })?;
                let t = Transition {
                    id,
                    from: user.held.clone(),
                    to,
                    tag: *tag,
                };
                let next = UserIds {
                    pending: Some(t.clone()),
                    last_transition: id,
                    ..user
                };
                (Some(encode_user(&next)), Outcome::Began(t))
            }
            RegistryChange::Commit { transition } => {
                let user = decode_user(current)?;
                match user.pending.clone() {
                    Some(t) if t.id == *transition => {
                        // With no old ID to release there is nothing between commit and
                        // finish (see `crate::registry`), so the commit finishes too.
                        let finishes = t.from.is_none();
                        if user.committed(&t) && !finishes {
                            (keep(), Outcome::Committed { user })
                        } else {
                            let held = UserIds {
                                held: t.target(),
                                ..user.clone()
                            };
                            let next = if finishes {
                                UserIds {
                                    pending: None,
                                    last_finished: Some((t, true)),
                                    ..held
                                }
                            } else {
                                held
                            };
                            (Some(encode_user(&next)), Outcome::Committed { user })
                        }
                    }
                    _ => (keep(), Outcome::Gone { user }),
                }
            }
            RegistryChange::Abort { transition } => {
                let user = decode_user(current)?;
                match user.pending.clone() {
                    Some(t) if t.id == *transition => {
                        if user.committed(&t) {
                            (keep(), Outcome::Committed { user })
                        } else {
                            let next = UserIds {
                                pending: None,
                                last_finished: Some((t, false)),
                                ..user
                            };
                            (Some(encode_user(&next)), Outcome::Aborted)
                        }
                    }
                    _ => (keep(), Outcome::Gone { user }),
                }
            }
            RegistryChange::Finish { transition } => {
                let user = decode_user(current)?;
                match user.pending.clone() {
                    Some(t) if t.id == *transition && user.committed(&t) => {
                        let next = UserIds {
                            pending: None,
                            last_finished: Some((t, true)),
                            ..user
                        };
                        (Some(encode_user(&next)), Outcome::Finished)
                    }
                    Some(t) if t.id == *transition => {
                        return Err(ChangeRejected(format!(
                            "transition {} of this user is asked to finish before it committed \
                             (a bug in the registry client)",
                            t.id
                        )));
                    }
                    _ => (keep(), Outcome::Gone { user }),
                }
            }
            RegistryChange::SetHome {
                region,
                expected_epoch,
            } => {
                let current_entry = decode_home(current)?;
                let epoch = expected_epoch
                    .unwrap_or(0)
                    .checked_add(1)
                    .ok_or_else(|| ChangeRejected("the home entry's epoch is exhausted".into()))?;
                let wanted = HomeEntry {
                    region: region.clone(),
                    epoch,
                };
                let current_epoch = current_entry.as_ref().map(|h| h.epoch);
                if current_entry.as_ref() == Some(&wanted) {
                    // A retry of a set that already happened (or the same set by another caller).
                    (keep(), Outcome::HomeSet(wanted))
                } else if current_epoch == *expected_epoch {
                    (Some(encode_home(&wanted)), Outcome::HomeSet(wanted))
                } else {
                    (keep(), Outcome::HomeConflict(current_entry))
                }
            }
        })
    }

    /// The outcome of this change given the value it was applied to.
    pub fn outcome(&self, before: Option<&Bytes>) -> Result<Outcome, ChangeRejected> {
        self.decide(before).map(|(_, outcome)| outcome)
    }
}

impl Change for RegistryChange {
    fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ChangeRejected> {
        self.decide(current).map(|(value, _)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: OpTag = OpTag {
        proposer: 9,
        request: 4,
        begin: 0,
    };

    fn begin(goal: Goal) -> RegistryChange {
        RegistryChange::Begin { goal, tag: TAG }
    }

    fn apply(change: &RegistryChange, current: Option<Bytes>) -> (Option<Bytes>, Outcome) {
        change.decide(current.as_ref()).unwrap()
    }

    #[test]
    fn reserve_takes_a_free_or_own_id_only() {
        let reserve = |uid: &str, t| RegistryChange::Reserve {
            uid: uid.into(),
            transition: t,
        };
        let (v, o) = apply(&reserve("alice", 1), None);
        assert_eq!(o, Outcome::Reserved);
        let (v2, o) = apply(&reserve("bob", 1), v.clone());
        assert_eq!(
            o,
            Outcome::Taken(Reservation {
                owner: "alice".into(),
                transition: 1
            })
        );
        assert_eq!(v2, v);
        // The same user's newer transition takes its own (stale) reservation over.
        let (v3, o) = apply(&reserve("alice", 4), v.clone());
        assert_eq!(o, Outcome::Reserved);
        assert_eq!(
            decode_reservation(v3.as_ref()).unwrap().unwrap().transition,
            4
        );
        // A release for another transition of the owner leaves it alone.
        let release = |uid: &str, t| RegistryChange::ReleaseIf {
            uid: uid.into(),
            transition: t,
        };
        assert_eq!(
            apply(&release("alice", 1), v3.clone()).1,
            Outcome::ReleasedIf { released: false }
        );
        assert_eq!(
            apply(&release("bob", 4), v3.clone()).1,
            Outcome::ReleasedIf { released: false }
        );
        assert_eq!(
            apply(&release("alice", 4), v3),
            (None, Outcome::ReleasedIf { released: true })
        );
    }

    #[test]
    fn a_transition_begins_commits_and_finishes() {
        let claim = begin(Goal::Claim("szdy01".into()));
        let (v, o) = apply(&claim, None);
        let Outcome::Began(t) = o else {
            panic!("{o:?}")
        };
        assert_eq!(t.id, 1);
        assert_eq!(t.from, None);
        assert_eq!(t.tag, TAG);
        // The same begin again (a retry) finds its own transition and changes nothing ...
        let (v_same, o) = apply(&claim, v.clone());
        assert_eq!(o, Outcome::Began(t.clone()));
        assert_eq!(v_same, v);
        // ... another operation's begin finds the user busy: one transition at a time.
        let other = RegistryChange::Begin {
            goal: Goal::Claim("szdy01".into()),
            tag: OpTag { begin: 1, ..TAG },
        };
        let (v_same, o) = apply(&other, v.clone());
        assert!(matches!(o, Outcome::Busy { .. }));
        assert_eq!(v_same, v);
        // Finishing before committing is a bug, refused.
        assert!(
            RegistryChange::Finish { transition: 1 }
                .decide(v.as_ref())
                .is_err()
        );
        // With no old ID to release, the commit finishes the transition too.
        let (v, o) = apply(&RegistryChange::Commit { transition: 1 }, v);
        assert!(matches!(o, Outcome::Committed { .. }));
        // A retried commit, a late abort or finish find it finished (committed).
        for late in [
            RegistryChange::Commit { transition: 1 },
            RegistryChange::Abort { transition: 1 },
            RegistryChange::Finish { transition: 1 },
        ] {
            let (v_again, o) = apply(&late, v.clone());
            let Outcome::Gone { user } = o else {
                panic!("{late:?}: {o:?}")
            };
            assert_eq!(user.last_finished, Some((t.clone(), true)));
            assert_eq!(v_again, v);
        }
        let user = decode_user(v.as_ref()).unwrap();
        assert_eq!(
            user.held,
            Some(HeldId {
                wxid: "szdy01".into(),
                transition: 1
            })
        );
        assert_eq!(user.pending, None);
        assert_eq!(user.last_finished, Some((t.clone(), true)));
        // The same begin once more (a very late retry) learns that its transition committed.
        assert_eq!(
            apply(&claim, v.clone()).1,
            Outcome::Ended {
                transition: t.clone(),
                committed: true
            }
        );
        // Claiming the held ID again (another operation) changes nothing.
        assert!(matches!(
            apply(&other, v.clone()).1,
            Outcome::AlreadyHeld(_)
        ));
        // A stale commit/finish of transition 1 finds it gone.
        assert!(matches!(
            apply(&RegistryChange::Commit { transition: 1 }, v.clone()).1,
            Outcome::Gone { .. }
        ));
        // Releasing another ID is refused; releasing the held one begins transition 2.
        let release = |wxid: &str| RegistryChange::Begin {
            goal: Goal::Release(wxid.into()),
            tag: OpTag { request: 77, ..TAG },
        };
        let (_, o) = apply(&release("other1"), v.clone());
        assert!(matches!(o, Outcome::NotHeld { .. }));
        let (v, o) = apply(&release("szdy01"), v);
        let Outcome::Began(t2) = o else {
            panic!("{o:?}")
        };
        assert_eq!(t2.id, 2);
        assert_eq!(t2.to, None);
        assert_eq!(t2.from.as_ref().unwrap().wxid, "szdy01");
        // With an old ID to release, commit leaves the transition pending until finish (the
        // old ID is released in between).
        let (v, o) = apply(&RegistryChange::Commit { transition: 2 }, v);
        assert!(matches!(o, Outcome::Committed { .. }));
        let user = decode_user(v.as_ref()).unwrap();
        assert_eq!(user.held, None);
        assert_eq!(user.pending, Some(t2.clone()));
        let (v, o) = apply(&RegistryChange::Finish { transition: 2 }, v);
        assert_eq!(o, Outcome::Finished);
        assert_eq!(decode_user(v.as_ref()).unwrap().pending, None);
    }

    #[test]
    fn abort_drops_an_uncommitted_transition() {
        let (v, _) = apply(&begin(Goal::Claim("szdy01".into())), None);
        let (v, o) = apply(&RegistryChange::Abort { transition: 1 }, v);
        assert_eq!(o, Outcome::Aborted);
        let user = decode_user(v.as_ref()).unwrap();
        assert_eq!(user.pending, None);
        assert_eq!(user.held, None);
        assert!(matches!(&user.last_finished, Some((t, false)) if t.id == 1));
        assert_eq!(user.last_transition, 1);
    }

    #[test]
    fn home_compare_and_set() {
        let set = |region: &str, expected| RegistryChange::SetHome {
            region: region.into(),
            expected_epoch: expected,
        };
        let (v, o) = apply(&set("sh", None), None);
        assert_eq!(
            o,
            Outcome::HomeSet(HomeEntry {
                region: "sh".into(),
                epoch: 1
            })
        );
        // Same request again (a retry): already done.
        assert_eq!(
            apply(&set("sh", None), v.clone()).1,
            Outcome::HomeSet(HomeEntry {
                region: "sh".into(),
                epoch: 1
            })
        );
        // Stale expectation.
        assert_eq!(
            apply(&set("hk", None), v.clone()).1,
            Outcome::HomeConflict(Some(HomeEntry {
                region: "sh".into(),
                epoch: 1
            }))
        );
        let (v, o) = apply(&set("hk", Some(1)), v);
        assert_eq!(
            o,
            Outcome::HomeSet(HomeEntry {
                region: "hk".into(),
                epoch: 2
            })
        );
        assert_eq!(decode_home(v.as_ref()).unwrap().unwrap().region, "hk");
        assert_eq!(
            apply(&set("ca", Some(5)), None).1,
            Outcome::HomeConflict(None)
        );
    }

    #[test]
    fn damaged_values_are_rejected_not_guessed() {
        let junk = Some(Bytes::from_static(&[0xff, 0xff, 0xff]));
        for change in [
            RegistryChange::Reserve {
                uid: "a".into(),
                transition: 1,
            },
            begin(Goal::Claim("szdy01".into())),
            RegistryChange::SetHome {
                region: "sh".into(),
                expected_epoch: None,
            },
        ] {
            let err = change.decide(junk.as_ref()).unwrap_err();
            assert!(err.0.contains("does not decode"), "{err}");
        }
    }

    #[test]
    fn values_round_trip() {
        let t3 = Transition {
            id: 3,
            from: None,
            to: Some("abcdef".into()),
            tag: TAG,
        };
        let u = UserIds {
            held: Some(HeldId {
                wxid: "abcdef".into(),
                transition: 3,
            }),
            pending: Some(Transition {
                id: 4,
                from: Some(HeldId {
                    wxid: "abcdef".into(),
                    transition: 3,
                }),
                to: None,
                tag: OpTag { request: 5, ..TAG },
            }),
            last_transition: 4,
            last_finished: Some((t3, true)),
        };
        assert_eq!(decode_user(Some(&encode_user(&u))).unwrap(), u);
        let h = HomeEntry {
            region: "ca".into(),
            epoch: 9,
        };
        assert_eq!(decode_home(Some(&encode_home(&h))).unwrap(), Some(h));
        let r = Reservation {
            owner: "u1".into(),
            transition: 2,
        };
        assert_eq!(
            decode_reservation(Some(&encode_reservation(&r))).unwrap(),
            Some(r)
        );
    }
}
