//! The redb tables and how their values are decoded.
//!
//! Values are protobuf (store.proto), never a Rust-specific layout, so a file written by one
//! release is read by the next; keys are redb tuples so that one user's records are contiguous
//! (per-user digests are one range scan).

use std::path::Path;

use homeport_wire::pb;
use prost::Message;
use redb::TableDefinition;

use crate::StoreError;

/// (uid, key) → encoded `StoredRecord` (a live value or a tombstone).
pub(crate) const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// (commit_unix_ms, uid, key) → version, one row per tombstone, so a purge is a range scan
/// rather than a walk over every record.
pub(crate) const TOMBSTONES: TableDefinition<(u64, &str, &str), u64> =
    TableDefinition::new("tombstones_by_commit_time");
/// outbox seq → encoded `Entry`, written at home with the record, removed once a group committed it.
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// (uid, key, idempotency key) → encoded `StoredIdempotency`.
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("idempotency");
/// (created_unix_ms, uid, key, idempotency key), so the TTL purge is a range scan.
pub(crate) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str, &str, &str), ()> =
    TableDefinition::new("idempotency_by_time");
/// (source region, group) → encoded `StoredCheckpoint`.
pub(crate) const CHECKPOINTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("checkpoints");
/// Counters and the format version, updated in the same transaction as the data they count.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) mod meta {
    pub const FORMAT_VERSION: &str = "format_version";
    pub const LIVE_RECORDS: &str = "live_records";
    pub const TOMBSTONES: &str = "tombstones";
    pub const OUTBOX_LEN: &str = "outbox_len";
    pub const NEXT_OUTBOX_SEQ: &str = "next_outbox_seq";
    /// The highest version of any tombstone ever purged: a record created where none exists
    /// starts above it (see `Counters::version_floor`).
    pub const VERSION_FLOOR: &str = "version_floor";
}

/// The file layout this build writes; a file with a higher number is refused at open.
pub(crate) const FORMAT_VERSION: u64 = 1;

pub(crate) fn decode<M: Message + Default>(
    path: &Path,
    table: &'static str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        table,
        key: key(),
        problem: format!("not a valid protobuf message: {e}"),
    })
}

pub(crate) fn decode_record(
    path: &Path,
    uid: &str,
    key: &str,
    bytes: &[u8],
) -> Result<pb::StoredRecord, StoreError> {
    decode(path, "records", || format!("({uid:?}, {key:?})"), bytes)
}
