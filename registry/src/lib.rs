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
//!
//! # Driving it from a tokio shell
//!
//! A registry node (one per region) is an acceptor and a registry client:
//! - **Acceptor**: a blocking thread owns `Acceptor<RedbStorage>`. Network tasks hand it
//!   `(Request, reply sender)`; it takes everything queued, calls
//!   [`handle_batch`](paxos::acceptor::Acceptor::handle_batch) (one fsync for the batch) and
//!   sends each reply. A reply only exists once the write is durable.
//! - **Client**: one task owns a [`registry::Registry`] built with
//!   [`ProposerId::new`](paxos::ProposerId::new)`(region index, random incarnation)` and a
//!   random seed. It loops over: an operation from a caller → [`submit`](registry::Registry::submit);
//!   a reply from acceptor `i` → [`on_reply`](registry::Registry::on_reply); a timer →
//!   [`on_timer`](registry::Registry::on_timer). After each, it drains
//!   [`poll_output`](registry::Registry::poll_output): `Send { to, request }` goes to acceptor
//!   `to` (its own by a channel, the others over QUIC; a send that fails may be dropped, the
//!   round times out), `SetTimer`/`CancelTimer` drive a delay queue keyed by
//!   [`TimerId`](paxos::proposer::TimerId), `Done` answers the caller.
//! - **Sweeper**: now and then, page through the local acceptor's `user/` keys
//!   ([`RedbStorage::scan`](storage::RedbStorage::scan)) and submit what
//!   [`sweep_candidate`](registry::sweep_candidate) returns, so a WeChat ID change whose node
//!   died is finished even if the user never comes back.
//!
//! [`Request`](paxos::Request) and [`Reply`](paxos::Reply) are plain Rust; the wire crate maps
//! them to protobuf. Acceptor state on disk is protobuf (`proto/`), with a format version.

pub mod client;
mod messages;
pub mod names;
pub mod node;
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
