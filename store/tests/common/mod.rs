//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use homeport_store::{Store, StoreConfig, WriteOp, WriteOutcome, WriteRequest};
use homeport_wire::pb;

pub const REGION: &str = "sh";

pub fn config(dir: &Path, region: &str) -> StoreConfig {
    StoreConfig {
        path: dir.join("store.redb"),
        region: region.to_owned(),
        max_uid_bytes: 64,
        max_key_bytes: 128,
        max_value_bytes: 4096,
        max_batch_requests: 256,
        max_queued_requests: 4096,
    }
}

pub fn open(dir: &Path) -> Store {
    homeport_store::open(config(dir, REGION)).expect("open store")
}

pub fn entry_id(seq: u64) -> pb::EntryId {
    pb::EntryId {
        origin_region: REGION.to_owned(),
        producer_incarnation: Bytes::from_static(&[7; 16]),
        sequence: seq,
    }
}

pub fn put(uid: &str, key: &str, value: &str) -> WriteRequest {
    WriteRequest {
        uid: uid.to_owned(),
        key: key.to_owned(),
        op: WriteOp::Put(Bytes::copy_from_slice(value.as_bytes())),
        expected_version: None,
        idempotency_key: None,
        entry_id: entry_id(1),
        now_unix_ms: 1_700_000_000_000,
    }
}

pub fn delete(uid: &str, key: &str) -> WriteRequest {
    WriteRequest {
        op: WriteOp::Delete,
        ..put(uid, key, "")
    }
}

/// The version of a `Written` outcome; panics (fails the test) on anything else.
pub fn written(o: WriteOutcome) -> u64 {
    match o {
        WriteOutcome::Written { version, .. } => version,
        other => panic!("expected Written, got {other:?}"),
    }
}

pub fn change(uid: &str, key: &str, version: u64, value: Option<&str>) -> pb::Change {
    pb::Change {
        uid: uid.to_owned(),
        key: key.to_owned(),
        version,
        value: value
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .unwrap_or_default(),
        deleted: value.is_none(),
        commit_unix_ms: 1_700_000_000_000 + version,
        home_region: "hk".to_owned(),
    }
}

pub fn cursor(node: &str, next_offset: u64) -> pb::ConsumerCursor {
    pb::ConsumerCursor {
        nodes: vec![pb::NodeCursor {
            node_id: node.to_owned(),
            incarnation: Bytes::from_static(&[1; 16]),
            next_offset,
        }],
    }
}

pub fn batch(changes: Vec<pb::Change>, next_offset: u64) -> homeport_store::ApplyBatch {
    homeport_store::ApplyBatch {
        source_region: "hk".to_owned(),
        group: "g1".to_owned(),
        applied_entries: changes.len() as u64,
        changes,
        cursor: cursor("hk-q1", next_offset),
        heartbeat_unix_ms: None,
    }
}
