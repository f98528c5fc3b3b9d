//! Golden bytes of the store's on-disk values: a file written by this release must be read by
//! the next, so these encodings may only change by adding fields (and a new golden value).

use bytes::Bytes;
use homeport_wire::pb;
use prost::Message;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn stored_record_bytes() {
    let m = pb::StoredRecord {
        version: 3,
        value: Bytes::from_static(b"hi"),
        deleted: true,
        home_region: "sh".into(),
        commit_unix_ms: 1_700_000_000_000,
    };
    assert_eq!(
        hex(&m.encode_to_vec()),
        "0803120268691801220273682880d095ffbc31"
    );
}

#[test]
fn stored_idempotency_bytes() {
    let m = pb::StoredIdempotency {
        version: 2,
        outbox_seq: 9,
        created_unix_ms: 5,
        request_hash: Bytes::from_static(&[0xab, 0xcd]),
    };
    assert_eq!(hex(&m.encode_to_vec()), "0802100918052202abcd");
}

#[test]
fn stored_checkpoint_bytes() {
    let m = pb::StoredCheckpoint {
        cursor: Some(pb::ConsumerCursor {
            nodes: vec![pb::NodeCursor {
                node_id: "n".into(),
                incarnation: Bytes::from_static(&[1]),
                next_offset: 4,
            }],
        }),
        has_heartbeat: true,
        heartbeat_unix_ms: 6,
        applied_entries: 7,
        updated_unix_ms: 8,
    };
    assert_eq!(
        hex(&m.encode_to_vec()),
        // cursor { nodes { node_id "n", incarnation [1], next_offset 4 } }, then fields 2..5.
        "0a0a0a080a016e12010118041001180620072808"
    );
}
