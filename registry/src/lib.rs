//! homeport's registry: the one place that needs strong consistency across regions.
//!
//! Every key is a CASPaxos register (Rystsov 2018) replicated on one acceptor per region: a
//! change is decided by a majority of regions, with no leader and no log, so one region down or
//! partitioned away costs nothing while a majority is reachable. On those registers the registry
//! keeps globally unique WeChat IDs (`wxid/<id>`, with the per-user `user/<uid>` records that make
//! "a user holds at most one ID" crash-safe) and the home directory (`home/<uid>`).
//!
//! Everything here is sans-IO; the network shell drives three state machines:
//! - [`paxos::acceptor::Acceptor`] over an [`storage::AcceptorStorage`] ([`storage::RedbStorage`]
//!   on disk): request in, durable write, reply out;
//! - [`paxos::proposer::Proposer`]: one CASPaxos operation per key at a time, requests and timer
//!   requests out, results out;
//! - [`registry::Registry`]: the registry's operations (claim, release, lookup, home
//!   compare-and-set), each a short sequence of proposals, on top of a proposer.

pub mod names;
pub mod paxos;
pub mod registry;
mod rng;
pub mod storage;
pub mod values;

/// Messages generated from `proto/homeport/registry/v1/registry.proto` (storage formats).
#[allow(clippy::all, missing_docs)]
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/homeport.registry.v1.rs"));
}
