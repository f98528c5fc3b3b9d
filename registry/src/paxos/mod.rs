//! CASPaxos (Rystsov 2018): every key is an independent register changed by a function of its
//! current value, with a prepare round and an accept round to a majority of acceptors. No leader,
//! no log: any proposer may change any key at any time, and a minority of acceptors down or
//! partitioned away costs nothing.
//!
//! This module holds the messages between the two roles; [`acceptor`] and [`proposer`] are the
//! sans-IO state machines. The shell carries [`Request`]s from a proposer to acceptor `i` and the
//! [`Reply`] back; it may lose, duplicate, delay or reorder them without harming safety.
//!
//! Safety rests on three rules, each enforced in one place (the fast round adds a fourth, below):
//! - an acceptor grants a ballot at most once: its promise only ever grows, strictly on a
//!   prepare, and an accept at ballot `b` that asks for the next promise moves it to `b.next()`
//!   (`acceptor.rs`);
//! - a proposer sends accept at ballot `b` only after a majority granted `b`, with the value
//!   derived from the highest accepted proposal those grants reported (`proposer.rs`);
//! - an acceptor answers only after its new state is durable ([`crate::storage`]).
//!
//! **The fast round** (Lamport's Fast Paxos, round zero, with a fast quorum of *every*
//! acceptor): a proposer that expects a key to be new sends `FastAccept`, the change applied to
//! no value, without a prepare. An acceptor that has seen nothing for the key accepts it at
//! [`Ballot::ZERO`] (so it votes once in round zero) and promises the proposer's ballot; anything
//! else answers conflict. The value is chosen only when *all* acceptors accepted it. Different
//! proposers may get different values accepted at round zero, so a later prepare that finds
//! round-zero proposals as the highest treats one as the current value only if *every* grant it
//! uses reports that same proposal (it could have been chosen only then: any quorum of grants
//! intersects the all-acceptor fast quorum in the whole quorum); otherwise nothing was chosen
//! and the key is still empty. Round zero is below every prepared ballot, so a round-zero value
//! accepted late never outweighs a value chosen in a real round.
//!
//! Since a ballot is granted at most once per acceptor, at most one proposer collects a majority
//! for it, provided replies to one proposer cannot reach another: every proposer *incarnation*
//! needs its own [`ProposerId`]. A proposer keeps nothing on disk, so a restarted one starts its
//! counter from scratch; were it to reuse its old id, a late grant addressed to the crashed
//! incarnation (same key, same ballot) would count for the new one, which could then accept a
//! second value at a ballot where the old one already got a value chosen. [`ProposerId::new`]
//! mixes a random incarnation into the id for this reason.

pub mod acceptor;
pub mod proposer;

use std::fmt;

use bytes::Bytes;

/// Longest key an acceptor stores; registry keys are a short prefix and a uid or WeChat ID.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value an acceptor stores; registry values are a few dozen bytes of protobuf.
pub const MAX_VALUE_BYTES: usize = 4096;

/// Names a proposer incarnation inside ballots, which makes ballots unique. Must differ between
/// any two proposers, *including a proposer and its own earlier incarnations* whose messages may
/// still be in flight (see the module docs): build it with [`ProposerId::new`] from the node's
/// index and a random incarnation drawn at every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ProposerId(pub u64);

impl ProposerId {
    /// Bits of the id that hold the incarnation; the node index sits above them.
    pub const INCARNATION_BITS: u32 = 48;

    /// `node` (e.g. the region's index in the deployment, for logs) in the top 16 bits, the low
    /// 48 bits of `incarnation` below. With a random incarnation per start, two incarnations of
    /// one node collide with probability 2^-48.
    pub fn new(node: u16, incarnation: u64) -> ProposerId {
        let low = incarnation & ((1u64 << Self::INCARNATION_BITS) - 1);
        ProposerId((u64::from(node) << Self::INCARNATION_BITS) | low)
    }

    pub fn node(self) -> u16 {
        (self.0 >> Self::INCARNATION_BITS) as u16
    }
}

/// A CASPaxos ballot, totally ordered by `(counter, proposer)`: ties between proposers that
/// picked the same counter are broken by their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ballot {
    pub counter: u64,
    pub proposer: ProposerId,
}

impl Ballot {
    /// Lower than every ballot a proposer uses (their counters start at 1): the promise of an
    /// acceptor that has seen nothing.
    pub const ZERO: Ballot = Ballot {
        counter: 0,
        proposer: ProposerId(0),
    };

    /// The ballot an accept at `self` may promise on the side (the one-round-trip
    /// optimization): the same proposer's next counter, so only it can use the promise.
    pub fn next(self) -> Ballot {
        Ballot {
            counter: self.counter.saturating_add(1),
            proposer: self.proposer,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.counter, self.proposer.0)
    }
}

/// The value of one key and its version. The version starts at 0 (no value) and grows by one
/// with every change that alters the value; a change that leaves the value as it is (a read, a
/// refused compare-and-set) keeps the version, so one version always names one value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Register {
    pub version: u64,
    pub value: Option<Bytes>,
}

impl Register {
    /// A key nobody has written.
    pub const EMPTY: Register = Register {
        version: 0,
        value: None,
    };
}

/// A proposal an acceptor accepted: at most one register per ballot exists anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcceptedValue {
    pub ballot: Ballot,
    pub register: Register,
}

/// Proposer → acceptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Request {
    /// Promise to accept nothing below `ballot`, and say what you accepted last.
    Prepare { key: String, ballot: Ballot },
    /// Accept `register` at `ballot`. With `promise_next`, also promise `ballot.next()`, so the
    /// same proposer's next change of this key can skip its prepare round.
    Accept {
        key: String,
        ballot: Ballot,
        register: Register,
        promise_next: bool,
    },
    /// The fast round (see [`proposer`]): if you have seen nothing at all for the key, accept
    /// `register` at round zero ([`Ballot::ZERO`]) and promise `ballot`, in one write. Answered
    /// with `Accepted` or `Conflict` at `ballot`.
    FastAccept {
        key: String,
        ballot: Ballot,
        register: Register,
    },
}

impl Request {
    pub fn key(&self) -> &str {
        match self {
            Request::Prepare { key, .. }
            | Request::Accept { key, .. }
            | Request::FastAccept { key, .. } => key,
        }
    }

    pub fn ballot(&self) -> Ballot {
        match self {
            Request::Prepare { ballot, .. }
            | Request::Accept { ballot, .. }
            | Request::FastAccept { ballot, .. } => *ballot,
        }
    }
}

/// Acceptor → proposer. Every reply names the key and the ballot of the request it answers, so
/// a proposer can drop late and duplicate replies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reply {
    /// The prepare is granted (durably); `accepted` is the last proposal accepted for the key.
    Promised {
        key: String,
        ballot: Ballot,
        accepted: Option<AcceptedValue>,
    },
    /// The accept is done (durably), and `ballot.next()` promised if the request asked for it.
    Accepted {
        key: String,
        ballot: Ballot,
        promised_next: bool,
    },
    /// Refused: the acceptor has promised `promised`, which is not below the request's ballot.
    Conflict {
        key: String,
        ballot: Ballot,
        promised: Ballot,
    },
    /// The acceptor could not carry out the request (its storage failed, the request broke a
    /// limit); nothing changed. `reason` is for logs.
    Failed {
        key: String,
        ballot: Ballot,
        reason: String,
    },
}

impl Reply {
    pub fn key(&self) -> &str {
        match self {
            Reply::Promised { key, .. }
            | Reply::Accepted { key, .. }
            | Reply::Conflict { key, .. }
            | Reply::Failed { key, .. } => key,
        }
    }

    pub fn ballot(&self) -> Ballot {
        match self {
            Reply::Promised { ballot, .. }
            | Reply::Accepted { ballot, .. }
            | Reply::Conflict { ballot, .. }
            | Reply::Failed { ballot, .. } => *ballot,
        }
    }
}

/// Smallest number of acceptors that is more than half of `acceptors`.
pub fn majority(acceptors: usize) -> usize {
    acceptors / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_counter_then_proposer() {
        let b = |c, p| Ballot {
            counter: c,
            proposer: ProposerId(p),
        };
        assert!(b(1, 9) < b(2, 0));
        assert!(b(2, 1) < b(2, 2));
        assert!(Ballot::ZERO < b(1, 0));
        assert_eq!(b(4, 7).next(), b(5, 7));
        assert!(b(4, 7) < b(4, 7).next());
    }

    #[test]
    fn proposer_ids_keep_the_node_and_differ_by_incarnation() {
        let a = ProposerId::new(2, 0xdead_beef);
        let b = ProposerId::new(2, 0xfeed);
        assert_eq!(a.node(), 2);
        assert_eq!(b.node(), 2);
        assert_ne!(a, b);
        assert_eq!(ProposerId::new(1, u64::MAX).node(), 1);
    }

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }
}
