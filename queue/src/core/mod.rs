//! The quorum queue's protocol as sans-IO state machines (in the manner of quinn-proto).
//!
//! The cores never touch a socket, a file, a clock or a task: a shell feeds them inputs (results of
//! requests, the current [`std::time::Instant`]) and carries out what they ask for (requests to
//! send, the next time to wake them). All decisions live here, so they are tested deterministically
//! with a simulated network (`queue/tests/core_*.rs`), and the tokio shells stay thin.
//!
//! - [`producer`]: the commit rule (2 of a group's 3 nodes acked), failover of a batch to another
//!   group with the same entries, per-producer group health and probing.
//! - [`consumer`]: reading all 3 nodes of a group, merging them by entry id, per-node cursors that
//!   survive restarts and wiped nodes.

pub mod consumer;
mod dedup;
pub mod producer;

/// Nodes in a queue group: one per campus of the region.
pub const NODES_PER_GROUP: usize = 3;

/// Acks that commit an entry: a majority of [`NODES_PER_GROUP`], so any 2 nodes share every
/// committed entry and a consumer that reads 2 nodes to their end sees all of them.
pub const ACKS_TO_COMMIT: usize = 2;

/// Length of a queue node's incarnation id, in bytes (16 random bytes drawn when its log is
/// created; a new one means the node lost its log).
pub const NODE_INCARNATION_BYTES: usize = 16;
