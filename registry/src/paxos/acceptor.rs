//! The CASPaxos acceptor: per key, the highest promised ballot and the last accepted proposal.
//!
//! Synchronous over its storage: [`Acceptor::handle_batch`] decides every request of a batch,
//! writes all changed states in one durable [`AcceptorStorage::store`], and only then returns the
//! replies. A shell therefore has nothing to send before the state is durable, and gets group
//! commit (one fsync per batch) by handing over the requests that queued up during the last
//! commit. Run it on a blocking thread; the acceptor keeps no state of its own besides the
//! storage, so a crash loses nothing that was answered.
//!
//! The rules (a ballot is granted at most once, because the promise only grows):
//! - Prepare `b`: granted if `b > promised`; then `promised = b` and the reply carries the last
//!   accepted proposal. Strictly greater, so a duplicate prepare is refused rather than
//!   granted twice.
//! - Accept `b`: done if `b >= promised` (the proposer holds a majority of grants for `b`);
//!   then `accepted = (b, register)` and `promised = b`, or `b.next()` if the request asks to
//!   promise the next ballot (the one-round-trip optimization).
//! - Fast accept at promise `b` (round zero, see [`super`]): done if the key has seen nothing
//!   (`promised` is [`Ballot::ZERO`]); then `accepted = (ZERO, register)` and `promised = b`. A
//!   duplicate of the fast accept that was done is answered done again, without a write.
//! - Anything else: `Conflict` with the promised ballot, and no write.

use super::{AcceptedValue, Ballot, MAX_KEY_BYTES, MAX_VALUE_BYTES, Reply, Request};
use crate::storage::{AcceptorStorage, KeyState};

/// Most requests [`Acceptor::handle_batch`] takes at once, to bound one write transaction; a
/// larger batch is refused whole.
pub const MAX_BATCH_REQUESTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acceptor<S> {
    storage: S,
}

impl<S: AcceptorStorage> Acceptor<S> {
    pub fn new(storage: S) -> Self {
        Self { storage }
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    /// One request, one durable write (if the state changed), one reply.
    pub fn handle(&mut self, request: Request) -> Reply {
        let mut replies = self.handle_batch(vec![request]);
        debug_assert_eq!(replies.len(), 1);
        replies.pop().expect("handle_batch answers every request")
    }

    /// Answers `requests` in order, with one durable write for all the state they change:
    /// `replies[i]` answers `requests[i]`. Requests for the same key see each other's effect, as
    /// if handled one by one. If the write fails, every request gets `Reply::Failed` (nothing
    /// was promised or accepted). More than [`MAX_BATCH_REQUESTS`] requests are all refused.
    pub fn handle_batch(&mut self, requests: Vec<Request>) -> Vec<Reply> {
        if requests.len() > MAX_BATCH_REQUESTS {
            let reason = format!(
                "a batch of {} requests is over MAX_BATCH_REQUESTS = {MAX_BATCH_REQUESTS}; the \
                 acceptor shell must hand over smaller batches",
                requests.len()
            );
            return requests.iter().map(|r| failed(r, reason.clone())).collect();
        }
        // The batch's view: durable state plus the changes decided so far.
        let mut changed: Vec<(String, KeyState)> = Vec::new();
        let mut replies = Vec::with_capacity(requests.len());
        for request in &requests {
            if let Some(problem) = over_limit(request) {
                replies.push(failed(request, problem));
                continue;
            }
            let key = request.key();
            let current = match changed.iter().rposition(|(k, _)| k == key) {
                Some(i) => changed[i].1.clone(),
                None => match self.storage.load(key) {
                    Ok(state) => state.unwrap_or_default(),
                    Err(e) => {
                        replies.push(failed(request, format!("reading the key's state: {e}")));
                        continue;
                    }
                },
            };
            let (next, reply) = decide(&current, request);
            if let Some(next) = next {
                debug_assert!(next.promised >= current.promised, "a promise never shrinks");
                match changed.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = next,
                    None => changed.push((key.to_owned(), next)),
                }
            }
            replies.push(reply);
        }
        if !changed.is_empty()
            && let Err(e) = self.storage.store(&changed)
        {
            let reason = format!("storing the new state: {e}");
            return requests.iter().map(|r| failed(r, reason.clone())).collect();
        }
        replies
    }
}

/// The acceptor's rule for one request: the new state to store (if any) and the reply.
fn decide(current: &KeyState, request: &Request) -> (Option<KeyState>, Reply) {
    match request {
        Request::Prepare { key, ballot } => {
            if *ballot > current.promised {
                let next = KeyState {
                    promised: *ballot,
                    accepted: current.accepted.clone(),
                };
                let reply = Reply::Promised {
                    key: key.clone(),
                    ballot: *ballot,
                    accepted: current.accepted.clone(),
                };
                (Some(next), reply)
            } else {
                (None, conflict(key, *ballot, current))
            }
        }
        Request::Accept {
            key,
            ballot,
            register,
            promise_next,
        } => {
            if *ballot >= current.promised {
                let promised = if *promise_next {
                    ballot.next()
                } else {
                    *ballot
                };
                let next = KeyState {
                    promised,
                    accepted: Some(AcceptedValue {
                        ballot: *ballot,
                        register: register.clone(),
                    }),
                };
                let reply = Reply::Accepted {
                    key: key.clone(),
                    ballot: *ballot,
                    promised_next: *promise_next,
                };
                (Some(next), reply)
            } else {
                (None, conflict(key, *ballot, current))
            }
        }
        Request::FastAccept {
            key,
            ballot,
            register,
        } => {
            let done = Reply::Accepted {
                key: key.clone(),
                ballot: *ballot,
                promised_next: false,
            };
            let fast = AcceptedValue {
                ballot: Ballot::ZERO,
                register: register.clone(),
            };
            // Every accept promises at least its own ballot, which is above zero, so a key with
            // nothing promised has nothing accepted; both are checked all the same.
            if current.promised == Ballot::ZERO && current.accepted.is_none() {
                let next = KeyState {
                    promised: *ballot,
                    accepted: Some(fast),
                };
                (Some(next), done)
            } else if current.promised == *ballot && current.accepted.as_ref() == Some(&fast) {
                (None, done)
            } else {
                (None, conflict(key, *ballot, current))
            }
        }
    }
}

fn conflict(key: &str, ballot: super::Ballot, current: &KeyState) -> Reply {
    Reply::Conflict {
        key: key.to_owned(),
        ballot,
        promised: current.promised,
    }
}

fn failed(request: &Request, reason: String) -> Reply {
    Reply::Failed {
        key: request.key().to_owned(),
        ballot: request.ballot(),
        reason,
    }
}

fn over_limit(request: &Request) -> Option<String> {
    let key = request.key();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Some(format!(
            "key of {} bytes; keys are 1..={MAX_KEY_BYTES} bytes (MAX_KEY_BYTES)",
            key.len()
        ));
    }
    if let Request::FastAccept { ballot, .. } = request
        && *ballot == Ballot::ZERO
    {
        return Some(
            "a fast accept must promise a ballot above zero (a proposer's own ballot)".to_owned(),
        );
    }
    if let Request::Accept { register, .. } | Request::FastAccept { register, .. } = request
        && let Some(v) = &register.value
        && v.len() > MAX_VALUE_BYTES
    {
        return Some(format!(
            "value of {} bytes is over MAX_VALUE_BYTES = {MAX_VALUE_BYTES}",
            v.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::paxos::{Ballot, ProposerId, Register};
    use crate::storage::MemStorage;

    fn b(c: u64, p: u64) -> Ballot {
        Ballot {
            counter: c,
            proposer: ProposerId(p),
        }
    }

    fn reg(version: u64, v: &'static [u8]) -> Register {
        Register {
            version,
            value: Some(Bytes::from_static(v)),
        }
    }

    fn prepare(ballot: Ballot) -> Request {
        Request::Prepare {
            key: "k".into(),
            ballot,
        }
    }

    fn accept(ballot: Ballot, register: Register, promise_next: bool) -> Request {
        Request::Accept {
            key: "k".into(),
            ballot,
            register,
            promise_next,
        }
    }

    #[test]
    fn prepare_grants_only_strictly_higher_ballots() {
        let mut a = Acceptor::new(MemStorage::new());
        assert!(matches!(
            a.handle(prepare(b(2, 1))),
            Reply::Promised { accepted: None, .. }
        ));
        // The same ballot again (a duplicate) is not granted twice.
        assert_eq!(
            a.handle(prepare(b(2, 1))),
            Reply::Conflict {
                key: "k".into(),
                ballot: b(2, 1),
                promised: b(2, 1)
            }
        );
        assert!(
            matches!(a.handle(prepare(b(1, 9))), Reply::Conflict { promised, .. } if promised == b(2, 1))
        );
        assert!(matches!(a.handle(prepare(b(2, 2))), Reply::Promised { .. }));
    }

    #[test]
    fn accept_at_or_above_the_promise_and_reports_it_on_the_next_prepare() {
        let mut a = Acceptor::new(MemStorage::new());
        a.handle(prepare(b(2, 1)));
        assert!(matches!(
            a.handle(accept(b(1, 1), reg(1, b"old"), false)),
            Reply::Conflict { .. }
        ));
        assert_eq!(
            a.handle(accept(b(2, 1), reg(1, b"x"), false)),
            Reply::Accepted {
                key: "k".into(),
                ballot: b(2, 1),
                promised_next: false
            }
        );
        match a.handle(prepare(b(3, 2))) {
            Reply::Promised { accepted, .. } => assert_eq!(
                accepted,
                Some(AcceptedValue {
                    ballot: b(2, 1),
                    register: reg(1, b"x")
                })
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accept_with_promise_next_reserves_only_the_next_ballot_of_that_proposer() {
        let mut a = Acceptor::new(MemStorage::new());
        a.handle(prepare(b(2, 1)));
        a.handle(accept(b(2, 1), reg(1, b"x"), true));
        assert_eq!(a.storage().get("k").unwrap().promised, b(3, 1));
        // Nobody can be granted 3.1 any more: not by prepare, not by a replayed accept at 2.1.
        assert!(matches!(a.handle(prepare(b(3, 1))), Reply::Conflict { .. }));
        assert!(matches!(
            a.handle(accept(b(2, 1), reg(1, b"x"), true)),
            Reply::Conflict { .. }
        ));
        // The holder of 3.1 accepts directly, and promises 4.1.
        assert!(matches!(
            a.handle(accept(b(3, 1), reg(2, b"y"), true)),
            Reply::Accepted { .. }
        ));
        assert_eq!(a.storage().get("k").unwrap().promised, b(4, 1));
        // A higher ballot of another proposer takes over.
        assert!(matches!(a.handle(prepare(b(4, 2))), Reply::Promised { .. }));
        assert!(matches!(
            a.handle(accept(b(4, 1), reg(3, b"z"), true)),
            Reply::Conflict { .. }
        ));
    }

    #[test]
    fn nothing_is_answered_positively_when_the_write_fails() {
        let mut a = Acceptor::new(MemStorage::new());
        a.storage_mut().fail_next_writes(1);
        assert!(matches!(a.handle(prepare(b(2, 1))), Reply::Failed { .. }));
        assert_eq!(a.storage().get("k"), None);
        // Refusals need no write, and the next write works again.
        assert!(matches!(a.handle(prepare(b(2, 1))), Reply::Promised { .. }));
    }

    #[test]
    fn a_batch_sees_its_own_changes_and_writes_once() {
        let mut a = Acceptor::new(MemStorage::new());
        let replies = a.handle_batch(vec![
            prepare(b(2, 1)),
            prepare(b(2, 1)),
            accept(b(2, 1), reg(1, b"x"), true),
            Request::Prepare {
                key: "other".into(),
                ballot: b(1, 1),
            },
        ]);
        assert!(matches!(replies[0], Reply::Promised { .. }));
        assert!(matches!(replies[1], Reply::Conflict { .. }));
        assert!(matches!(replies[2], Reply::Accepted { .. }));
        assert!(matches!(replies[3], Reply::Promised { .. }));
        assert_eq!(a.storage().writes_done(), 1);
        assert_eq!(a.storage().get("k").unwrap().promised, b(3, 1));

        a.storage_mut().fail_next_writes(1);
        let replies = a.handle_batch(vec![prepare(b(9, 1)), prepare(b(1, 1))]);
        assert!(
            replies.iter().all(|r| matches!(r, Reply::Failed { .. })),
            "{replies:?}"
        );
        assert_eq!(a.storage().get("k").unwrap().promised, b(3, 1));
    }

    #[test]
    fn promises_and_accepts_survive_a_restart_on_redb() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.redb");
        {
            let mut a = Acceptor::new(crate::storage::RedbStorage::open(&path).unwrap());
            a.handle(prepare(b(5, 1)));
            a.handle(accept(b(5, 1), reg(1, b"x"), true));
        }
        let mut a = Acceptor::new(crate::storage::RedbStorage::open(&path).unwrap());
        // The promise of 6.1 (piggybacked) and the accepted value are still there.
        assert!(
            matches!(a.handle(prepare(b(6, 1))), Reply::Conflict { promised, .. } if promised == b(6, 1))
        );
        match a.handle(prepare(b(6, 2))) {
            Reply::Promised { accepted, .. } => assert_eq!(
                accepted,
                Some(AcceptedValue {
                    ballot: b(5, 1),
                    register: reg(1, b"x")
                })
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversize_requests_are_refused() {
        let mut a = Acceptor::new(MemStorage::new());
        let big = Register {
            version: 1,
            value: Some(Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1])),
        };
        assert!(matches!(
            a.handle(accept(b(1, 1), big, false)),
            Reply::Failed { .. }
        ));
        let long_key = Request::Prepare {
            key: "k".repeat(MAX_KEY_BYTES + 1),
            ballot: b(1, 1),
        };
        assert!(matches!(a.handle(long_key), Reply::Failed { .. }));
        assert_eq!(a.storage().writes_done(), 0);
    }

    fn fast(promise: Ballot, register: Register) -> Request {
        Request::FastAccept {
            key: "k".into(),
            ballot: promise,
            register,
        }
    }

    #[test]
    fn a_fast_accept_is_done_only_on_a_key_that_has_seen_nothing() {
        let mut a = Acceptor::new(MemStorage::new());
        assert!(matches!(
            a.handle(fast(b(1, 1), reg(1, b"x"))),
            Reply::Accepted { ballot, .. } if ballot == b(1, 1)
        ));
        // A duplicate is answered again without a write; another value is refused (one vote
        // in round zero).
        let writes = a.storage().writes_done();
        assert!(matches!(
            a.handle(fast(b(1, 1), reg(1, b"x"))),
            Reply::Accepted { .. }
        ));
        assert_eq!(a.storage().writes_done(), writes);
        assert!(matches!(
            a.handle(fast(b(1, 2), reg(1, b"y"))),
            Reply::Conflict { promised, .. } if promised == b(1, 1)
        ));
        // The promise holds: lower ballots are refused, and a prepare reports round zero.
        assert!(matches!(a.handle(prepare(b(1, 0))), Reply::Conflict { .. }));
        assert_eq!(
            a.handle(prepare(b(2, 3))),
            Reply::Promised {
                key: "k".into(),
                ballot: b(2, 3),
                accepted: Some(AcceptedValue {
                    ballot: Ballot::ZERO,
                    register: reg(1, b"x"),
                }),
            }
        );
        // A key a prepare has touched takes no fast accept.
        assert!(matches!(
            a.handle(Request::FastAccept {
                key: "other".into(),
                ballot: b(5, 5),
                register: reg(1, b"z"),
            }),
            Reply::Accepted { .. }
        ));
        let mut a = Acceptor::new(MemStorage::new());
        a.handle(prepare(b(1, 1)));
        assert!(matches!(
            a.handle(fast(b(3, 3), reg(1, b"x"))),
            Reply::Conflict { .. }
        ));
        // A fast accept must promise a real ballot.
        assert!(matches!(
            a.handle(Request::FastAccept {
                key: "new".into(),
                ballot: Ballot::ZERO,
                register: reg(1, b"x"),
            }),
            Reply::Failed { .. }
        ));
    }
}
