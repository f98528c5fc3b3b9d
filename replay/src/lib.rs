//! Replay: how a region takes in other regions' changes.
//!
//! - [`plan`] decides, without I/O, which entries of a consumed batch may be applied: only changes
//!   that the user's home region itself shipped (no region can overwrite another region's users).
//! - [`lag`] is the arithmetic behind `homeport lag`: heartbeat lag corrected for clock offset,
//!   entries behind, apply rate, and the ok/warn/crit classification.
//! - [`webhook`] hands changes to an external HTTP service instead of the built-in store, with
//!   idempotency keys, retries and a durable dead-letter store.
//!
//! The tokio wiring (consumers, store transactions, status round trips) lives in the region
//! process; everything here is either pure or a self-contained sink.

mod error;
pub mod lag;
pub mod plan;
pub mod webhook;

pub use error::ReplayError;

use homeport_wire::pb;

/// The printable name of an entry id, `<origin>/<incarnation hex>/<sequence>`.
///
/// This is the idempotency key external sinks see: it names one change forever, also when the
/// queue delivers it twice (after a failover or a replay restart).
pub fn entry_id_string(id: &pb::EntryId) -> String {
    format!(
        "{}/{}/{}",
        id.origin_region,
        hex::encode(&id.producer_incarnation),
        id.sequence
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_id_string_names_origin_incarnation_and_sequence() {
        let id = pb::EntryId {
            origin_region: "sh".into(),
            producer_incarnation: bytes::Bytes::from_static(&[0x00, 0xab, 0x10]),
            sequence: 42,
        };
        assert_eq!(entry_id_string(&id), "sh/00ab10/42");
    }
}
