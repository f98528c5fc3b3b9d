//! Protobuf mapping of the registry's messages (`wire/proto/homeport/v1/registry.proto`):
//! acceptor requests and replies between registry nodes, operations and their answers between
//! clients and nodes. Bytes from the network are never trusted: every decode returns a `Result`.

use homeport_wire::pb;

use crate::paxos::{AcceptedValue, Ballot, ProposerId, Register, Reply, Request};
use crate::registry::{Answer, Operation, RegistryError, WxidStatus};
use crate::values::HomeEntry;

fn ballot_to(b: Ballot) -> pb::RegistryBallot {
    pb::RegistryBallot {
        counter: b.counter,
        proposer: b.proposer.0,
    }
}

fn ballot_from(b: Option<pb::RegistryBallot>, what: &str) -> Result<Ballot, String> {
    let b = b.ok_or_else(|| format!("{what} has no ballot"))?;
    Ok(Ballot {
        counter: b.counter,
        proposer: ProposerId(b.proposer),
    })
}

fn register_to(r: &Register) -> pb::RegistryRegister {
    pb::RegistryRegister {
        version: r.version,
        value: r.value.clone(),
    }
}

fn register_from(r: Option<pb::RegistryRegister>) -> Result<Register, String> {
    let r = r.ok_or("an accept request has no register")?;
    Ok(Register {
        version: r.version,
        value: r.value,
    })
}

pub(crate) fn request_to_pb(r: &Request) -> pb::AcceptorRequest {
    match r {
        Request::Prepare { key, ballot } => pb::AcceptorRequest {
            kind: pb::AcceptorRequestKind::Prepare as i32,
            key: key.clone(),
            ballot: Some(ballot_to(*ballot)),
            register: None,
            promise_next: false,
        },
        Request::Accept {
            key,
            ballot,
            register,
            promise_next,
        } => pb::AcceptorRequest {
            kind: pb::AcceptorRequestKind::Accept as i32,
            key: key.clone(),
            ballot: Some(ballot_to(*ballot)),
            register: Some(register_to(register)),
            promise_next: *promise_next,
        },
        Request::FastAccept {
            key,
            ballot,
            register,
        } => pb::AcceptorRequest {
            kind: pb::AcceptorRequestKind::FastAccept as i32,
            key: key.clone(),
            ballot: Some(ballot_to(*ballot)),
            register: Some(register_to(register)),
            promise_next: false,
        },
    }
}

pub(crate) fn request_from_pb(r: pb::AcceptorRequest) -> Result<Request, String> {
    let ballot = ballot_from(r.ballot, "an acceptor request")?;
    match pb::AcceptorRequestKind::try_from(r.kind) {
        Ok(pb::AcceptorRequestKind::Prepare) => Ok(Request::Prepare { key: r.key, ballot }),
        Ok(pb::AcceptorRequestKind::Accept) => Ok(Request::Accept {
            key: r.key,
            ballot,
            register: register_from(r.register)?,
            promise_next: r.promise_next,
        }),
        Ok(pb::AcceptorRequestKind::FastAccept) => Ok(Request::FastAccept {
            key: r.key,
            ballot,
            register: register_from(r.register)?,
        }),
        _ => Err(format!(
            "acceptor request kind {} is unknown; this node speaks prepare, accept and fast \
             accept",
            r.kind
        )),
    }
}

pub(crate) fn reply_to_pb(r: &Reply) -> pb::AcceptorReply {
    let mut out = pb::AcceptorReply {
        key: r.key().to_owned(),
        ballot: Some(ballot_to(r.ballot())),
        ..Default::default()
    };
    match r {
        Reply::Promised { accepted, .. } => {
            out.kind = pb::AcceptorReplyKind::Promised as i32;
            out.accepted = accepted.as_ref().map(|a| pb::RegistryAcceptedValue {
                ballot: Some(ballot_to(a.ballot)),
                register: Some(register_to(&a.register)),
            });
        }
        Reply::Accepted { promised_next, .. } => {
            out.kind = pb::AcceptorReplyKind::Accepted as i32;
            out.promised_next = *promised_next;
        }
        Reply::Conflict { promised, .. } => {
            out.kind = pb::AcceptorReplyKind::Conflict as i32;
            out.promised = Some(ballot_to(*promised));
        }
        Reply::Failed { reason, .. } => {
            out.kind = pb::AcceptorReplyKind::Failed as i32;
            out.reason = reason.clone();
        }
    }
    out
}

pub(crate) fn reply_from_pb(r: pb::AcceptorReply) -> Result<Reply, String> {
    let key = r.key;
    let ballot = ballot_from(r.ballot, "an acceptor reply")?;
    match pb::AcceptorReplyKind::try_from(r.kind) {
        Ok(pb::AcceptorReplyKind::Promised) => {
            let accepted = match r.accepted {
                None => None,
                Some(a) => Some(AcceptedValue {
                    ballot: ballot_from(a.ballot, "an accepted value")?,
                    register: register_from(a.register)?,
                }),
            };
            Ok(Reply::Promised {
                key,
                ballot,
                accepted,
            })
        }
        Ok(pb::AcceptorReplyKind::Accepted) => Ok(Reply::Accepted {
            key,
            ballot,
            promised_next: r.promised_next,
        }),
        Ok(pb::AcceptorReplyKind::Conflict) => Ok(Reply::Conflict {
            key,
            ballot,
            promised: ballot_from(r.promised, "a conflict reply")?,
        }),
        Ok(pb::AcceptorReplyKind::Failed) => Ok(Reply::Failed {
            key,
            ballot,
            reason: r.reason,
        }),
        _ => Err(format!("acceptor reply kind {} is unknown", r.kind)),
    }
}

/// The operations a client may send; `RollForward` is the node's own (sweeper) business.
pub(crate) fn operation_to_pb(op: &Operation) -> pb::RegistryOperationRequest {
    use pb::RegistryOperationKind as K;
    let mut out = pb::RegistryOperationRequest::default();
    let kind = match op {
        Operation::Claim { wxid, uid } => {
            out.wxid = wxid.as_str().to_owned();
            out.uid = uid.clone();
            K::Claim
        }
        Operation::Release { wxid, uid } => {
            out.wxid = wxid.as_str().to_owned();
            out.uid = uid.clone();
            K::Release
        }
        Operation::Lookup { wxid } => {
            out.wxid = wxid.as_str().to_owned();
            K::Lookup
        }
        Operation::UserWxid { uid } | Operation::RollForward { uid } => {
            out.uid = uid.clone();
            K::UserWxid
        }
        Operation::GetHome { uid } => {
            out.uid = uid.clone();
            K::GetHome
        }
        Operation::SetHome {
            uid,
            region,
            expected_epoch,
        } => {
            out.uid = uid.clone();
            out.region = region.clone();
            out.expected_epoch = *expected_epoch;
            K::SetHome
        }
    };
    out.kind = kind as i32;
    out
}

/// `Err` carries the answer for a request that is malformed (bad names, unknown kind).
pub(crate) fn operation_from_pb(
    r: &pb::RegistryOperationRequest,
) -> Result<Operation, RegistryError> {
    use pb::RegistryOperationKind as K;
    match K::try_from(r.kind) {
        Ok(K::Claim) => Operation::claim(&r.wxid, &r.uid),
        Ok(K::Release) => Operation::release(&r.wxid, &r.uid),
        Ok(K::Lookup) => Operation::lookup(&r.wxid),
        Ok(K::UserWxid) => Operation::user_wxid(&r.uid),
        Ok(K::GetHome) => Operation::get_home(&r.uid),
        Ok(K::SetHome) => Operation::set_home(&r.uid, &r.region, r.expected_epoch),
        _ => Err(RegistryError::Corrupt {
            key: String::new(),
            problem: format!(
                "operation kind {} is unknown to this registry node; upgrade the node",
                r.kind
            ),
        }),
    }
}

fn home_to(h: &HomeEntry) -> pb::RegistryHomeEntry {
    pb::RegistryHomeEntry {
        region: h.region.clone(),
        epoch: h.epoch,
    }
}

pub(crate) fn home_from(h: pb::RegistryHomeEntry) -> HomeEntry {
    HomeEntry {
        region: h.region,
        epoch: h.epoch,
    }
}

pub(crate) fn answer_to_pb(
    result: &Result<Answer, RegistryError>,
) -> pb::RegistryOperationResponse {
    use pb::RegistryAnswerKind as A;
    let mut out = pb::RegistryOperationResponse::default();
    let kind = match result {
        Ok(Answer::Claimed { released }) => {
            out.wxid = released.clone();
            A::Claimed
        }
        Ok(Answer::AlreadyHeld) => A::AlreadyHeld,
        Ok(Answer::Released) => A::Released,
        Ok(Answer::AlreadyFree) => A::AlreadyFree,
        Ok(Answer::Status(WxidStatus::Free)) => A::Free,
        Ok(Answer::Status(WxidStatus::Held { uid })) => {
            out.uid = uid.clone();
            A::Held
        }
        Ok(Answer::Status(WxidStatus::Claiming { uid })) => {
            out.uid = uid.clone();
            A::Claiming
        }
        Ok(Answer::UserWxid { held, changing }) => {
            out.wxid = held.clone();
            out.changing = *changing;
            A::UserWxid
        }
        Ok(Answer::RolledForward { .. }) => A::Unspecified,
        Ok(Answer::Home(home)) => {
            out.home = home.as_ref().map(home_to);
            A::Home
        }
        Ok(Answer::HomeSet(home)) => {
            out.home = Some(home_to(home));
            A::HomeSet
        }
        Err(e) => {
            out.error = error_code(e) as i32;
            out.message = e.to_string();
            match e {
                RegistryError::Taken { wxid, owner } => {
                    out.wxid = Some(wxid.clone());
                    out.uid = owner.clone();
                }
                RegistryError::NotOwner { wxid, owner, .. } => {
                    out.wxid = Some(wxid.clone());
                    out.uid = owner.clone();
                }
                RegistryError::HomeConflict { current, .. } => {
                    out.home = current.as_ref().map(home_to);
                }
                _ => {}
            }
            A::Error
        }
    };
    out.answer = kind as i32;
    out
}

fn error_code(e: &RegistryError) -> pb::RegistryErrorCode {
    use pb::RegistryErrorCode as C;
    match e {
        RegistryError::Wxid(_) | RegistryError::Name(_) => C::BadName,
        RegistryError::Taken { .. } => C::Taken,
        RegistryError::NotOwner { .. } => C::NotOwner,
        RegistryError::HomeConflict { .. } => C::HomeConflict,
        RegistryError::Contended { .. } => C::Contended,
        RegistryError::Unavailable { .. } => C::Unavailable,
        RegistryError::Corrupt { .. } => C::Corrupt,
        // Key/value limits are refused before anything is proposed; a full proposer is overload.
        RegistryError::Submit(crate::paxos::proposer::SubmitError::KeyLength(_)) => C::BadName,
        RegistryError::Submit(_) => C::Overloaded,
    }
}

/// An overload answer for an operation the node did not start.
pub(crate) fn overloaded(message: String) -> pb::RegistryOperationResponse {
    pb::RegistryOperationResponse {
        answer: pb::RegistryAnswerKind::Error as i32,
        error: pb::RegistryErrorCode::Overloaded as i32,
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn b(counter: u64, proposer: u64) -> Ballot {
        Ballot {
            counter,
            proposer: ProposerId(proposer),
        }
    }

    #[test]
    fn acceptor_requests_round_trip() {
        let cases = [
            Request::Prepare {
                key: "wxid/abc123".into(),
                ballot: b(3, 9),
            },
            Request::FastAccept {
                key: "wxid/new-one".into(),
                ballot: b(1, 7),
                register: Register {
                    version: 1,
                    value: Some(Bytes::from_static(b"owner")),
                },
            },
            Request::Accept {
                key: "user/sh-1".into(),
                ballot: b(4, 1 << 48),
                register: Register {
                    version: 2,
                    value: Some(Bytes::from_static(b"x")),
                },
                promise_next: true,
            },
            Request::Accept {
                key: "home/sh-1".into(),
                ballot: b(1, 2),
                register: Register::EMPTY,
                promise_next: false,
            },
        ];
        for r in cases {
            assert_eq!(request_from_pb(request_to_pb(&r)), Ok(r));
        }
    }

    #[test]
    fn acceptor_replies_round_trip() {
        let cases = [
            Reply::Promised {
                key: "k".into(),
                ballot: b(1, 1),
                accepted: None,
            },
            Reply::Promised {
                key: "k".into(),
                ballot: b(2, 1),
                accepted: Some(AcceptedValue {
                    ballot: b(1, 5),
                    register: Register {
                        version: 1,
                        value: Some(Bytes::from_static(b"")),
                    },
                }),
            },
            Reply::Accepted {
                key: "k".into(),
                ballot: b(2, 1),
                promised_next: true,
            },
            Reply::Conflict {
                key: "k".into(),
                ballot: b(2, 1),
                promised: b(7, 3),
            },
            Reply::Failed {
                key: "k".into(),
                ballot: b(2, 1),
                reason: "disk full".into(),
            },
        ];
        for r in cases {
            assert_eq!(reply_from_pb(reply_to_pb(&r)), Ok(r));
        }
    }

    #[test]
    fn malformed_acceptor_messages_are_refused() {
        let mut r = request_to_pb(&Request::Prepare {
            key: "k".into(),
            ballot: b(1, 1),
        });
        r.ballot = None;
        assert!(request_from_pb(r).is_err());
        let r = pb::AcceptorRequest {
            kind: 99,
            ballot: Some(ballot_to(b(1, 1))),
            ..Default::default()
        };
        assert!(request_from_pb(r).is_err());
        let r = pb::AcceptorReply {
            kind: pb::AcceptorReplyKind::Conflict as i32,
            ballot: Some(ballot_to(b(1, 1))),
            promised: None,
            ..Default::default()
        };
        assert!(reply_from_pb(r).is_err());
    }

    #[test]
    fn operations_round_trip() {
        let ops = [
            Operation::claim("abc123", "sh-1").unwrap(),
            Operation::release("abc123", "sh-1").unwrap(),
            Operation::lookup("abc123").unwrap(),
            Operation::user_wxid("sh-1").unwrap(),
            Operation::get_home("sh-1").unwrap(),
            Operation::set_home("sh-1", "hk", Some(4)).unwrap(),
            Operation::set_home("sh-1", "hk", None).unwrap(),
        ];
        for op in ops {
            assert_eq!(operation_from_pb(&operation_to_pb(&op)), Ok(op));
        }
        let bad = pb::RegistryOperationRequest {
            kind: pb::RegistryOperationKind::Claim as i32,
            wxid: "no spaces allowed".into(),
            uid: "sh-1".into(),
            ..Default::default()
        };
        assert!(matches!(
            operation_from_pb(&bad),
            Err(RegistryError::Wxid(_))
        ));
    }

    #[test]
    fn refusals_carry_the_owner_and_the_current_home() {
        let taken = answer_to_pb(&Err(RegistryError::Taken {
            wxid: "abc123".into(),
            owner: "sh-2".into(),
        }));
        assert_eq!(taken.answer, pb::RegistryAnswerKind::Error as i32);
        assert_eq!(taken.error, pb::RegistryErrorCode::Taken as i32);
        assert_eq!(taken.uid, "sh-2");
        let conflict = answer_to_pb(&Err(RegistryError::HomeConflict {
            uid: "sh-1".into(),
            current: Some(HomeEntry {
                region: "hk".into(),
                epoch: 3,
            }),
        }));
        assert_eq!(conflict.error, pb::RegistryErrorCode::HomeConflict as i32);
        assert_eq!(conflict.home.map(home_from).map(|h| h.epoch), Some(3));
        let held = answer_to_pb(&Ok(Answer::Status(WxidStatus::Held { uid: "u".into() })));
        assert_eq!(held.answer, pb::RegistryAnswerKind::Held as i32);
        assert_eq!(held.uid, "u");
    }
}
