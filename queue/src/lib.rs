//! The 2-of-3 quorum queue that ships every change out of its home region.
//!
//! - [`core`]: the protocol as sans-IO state machines (producer commit rule and failover, consumer
//!   merge and cursors). No sockets, no clocks: tested deterministically.
//! - [`node`]: a queue node, a thin shell around a [`homeport_seglog::Log`] served over QUIC.
//! - [`producer`] and [`consumer`]: tokio shells that drive the cores over [`client::NodeClient`]s.
//!
//! Nodes never talk to each other; all quorum logic lives in producers and consumers.

pub mod admin;
pub mod client;
pub mod consumer;
pub mod core;
pub mod entry;
pub mod node;
pub mod producer;
