//! Golden bytes: every message of queue.proto, with every field set, must encode to exactly the
//! bytes committed here, and those bytes must decode back to the same value. Regions upgrade one
//! at a time, so a build must read the bytes older builds wrote and vice versa; a failure here
//! means the encoding changed. Never "fix" a constant unless the change is a deliberate, compatible
//! addition (and then add a new case rather than editing an old one).

use std::collections::BTreeSet;

use bytes::Bytes;
use homeport_wire::pb;
use prost::Message;

const INCARNATION: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];

fn entry_id() -> pb::EntryId {
    pb::EntryId {
        origin_region: "sh".into(),
        producer_incarnation: Bytes::from_static(&INCARNATION),
        sequence: 300,
    }
}

fn entry() -> pb::Entry {
    pb::Entry {
        id: Some(entry_id()),
        kind: pb::EntryKind::Change as i32,
        origin_unix_ms: 1_700_000_000_123,
        payload: Bytes::from_static(b"hello"),
    }
}

fn stored_entry(offset: u64) -> pb::StoredEntry {
    pb::StoredEntry {
        offset,
        entry: Bytes::from_static(b"\x0a\x02sh"),
    }
}

fn append_request() -> pb::AppendRequest {
    pb::AppendRequest {
        entries: vec![Bytes::from_static(b"e1"), Bytes::from_static(b"e2")],
    }
}

fn append_response() -> pb::AppendResponse {
    pb::AppendResponse {
        incarnation: Bytes::from_static(&INCARNATION),
        first_offset: 7,
        next_offset: 9,
    }
}

fn read_request() -> pb::ReadRequest {
    pb::ReadRequest {
        from_offset: 7,
        max_bytes: 1 << 20,
        max_entries: 100,
        wait_ms: 500,
    }
}

fn read_response() -> pb::ReadResponse {
    pb::ReadResponse {
        incarnation: Bytes::from_static(&INCARNATION),
        entries: vec![stored_entry(7), stored_entry(8)],
        start_offset: 3,
        durable_head: 9,
        next_offset: 9,
    }
}

fn status_response() -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: "sh-g1-a".into(),
        incarnation: Bytes::from_static(&INCARNATION),
        start_offset: 3,
        durable_head: 9,
        segment_count: 2,
        disk_bytes: 123_456,
        region: "sh".into(),
        campus: "sh-c1".into(),
        version: "0.1.0".into(),
        corruption_detected: true,
        fsync_mode: "always".into(),
    }
}

fn trim_request() -> pb::TrimRequest {
    pb::TrimRequest { below_offset: 5 }
}

fn trim_response() -> pb::TrimResponse {
    pb::TrimResponse {
        start_offset: 5,
        segments_deleted: 1,
    }
}

fn error_response() -> pb::ErrorResponse {
    pb::ErrorResponse {
        code: pb::ErrorCode::Overloaded as i32,
        message: "busy".into(),
    }
}

fn node_cursor(node: &str, next_offset: u64) -> pb::NodeCursor {
    pb::NodeCursor {
        node_id: node.into(),
        incarnation: Bytes::from_static(&INCARNATION),
        next_offset,
    }
}

fn consumer_cursor() -> pb::ConsumerCursor {
    pb::ConsumerCursor {
        nodes: vec![node_cursor("sh-g1-a", 9), node_cursor("sh-g1-b", 4)],
    }
}

fn req(body: pb::request::Body) -> pb::Request {
    pb::Request {
        protocol_version: 1,
        body: Some(body),
    }
}

fn resp(body: pb::response::Body) -> pb::Response {
    pb::Response { body: Some(body) }
}

/// Exhaustive on purpose: a new request type does not compile here until it has golden bytes.
fn request_variant(body: &pb::request::Body) -> &'static str {
    match body {
        pb::request::Body::Append(_) => "append",
        pb::request::Body::Read(_) => "read",
        pb::request::Body::Status(_) => "status",
        pb::request::Body::Trim(_) => "trim",
    }
}

/// Exhaustive on purpose, like [`request_variant`].
fn response_variant(body: &pb::response::Body) -> &'static str {
    match body {
        pb::response::Body::Append(_) => "append",
        pb::response::Body::Read(_) => "read",
        pb::response::Body::Status(_) => "status",
        pb::response::Body::Trim(_) => "trim",
        pb::response::Body::Error(_) => "error",
    }
}

struct Golden {
    messages: BTreeSet<String>,
    failures: Vec<String>,
}

impl Golden {
    fn check<M: Message + Default + PartialEq + std::fmt::Debug>(&mut self, value: M, hex: &str) {
        let full = std::any::type_name::<M>();
        let name = full.rsplit("::").next().unwrap_or(full).to_string();
        let encoded = hex::encode(value.encode_to_vec());
        if encoded != hex {
            self.failures.push(format!(
                "{name}: encoding changed\n  committed: {hex}\n  now:       {encoded}"
            ));
        }
        match hex::decode(hex).map(|b| M::decode(Bytes::from(b))) {
            Ok(Ok(decoded)) if decoded == value => {}
            other => self.failures.push(format!(
                "{name}: committed bytes no longer decode to the value: {other:?}"
            )),
        }
        self.messages.insert(name);
    }
}

fn proto_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/homeport/v1/queue.proto");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_message_matches_its_golden_bytes() {
    let mut g = Golden {
        messages: BTreeSet::new(),
        failures: Vec::new(),
    };
    g.check(
        entry_id(),
        "0a0273681210000102030405060708090a0b0c0d0e0f18ac02",
    );
    g.check(
        entry(),
        "0a190a0273681210000102030405060708090a0b0c0d0e0f18ac02100118fbd095ffbc31220568656c6c6f",
    );
    g.check(stored_entry(42), "082a12040a027368");
    g.check(append_request(), "0a0265310a026532");
    g.check(
        append_response(),
        "0a10000102030405060708090a0b0c0d0e0f10071809",
    );
    g.check(read_request(), "080710808040186420f403");
    g.check(
        read_response(),
        "0a10000102030405060708090a0b0c0d0e0f1208080712040a0273681208080812040a027368180320092809",
    );
    g.check(pb::StatusRequest {}, "");
    g.check(
        status_response(),
        "0a0773682d67312d611210000102030405060708090a0b0c0d0e0f18032009280230c0c4073a027368420573682d63314a05302e312e3050015a06616c77617973",
    );
    g.check(trim_request(), "0805");
    g.check(trim_response(), "08051001");
    g.check(error_response(), "0807120462757379");
    g.check(
        consumer_cursor(),
        "0a1d0a0773682d67312d611210000102030405060708090a0b0c0d0e0f18090a1d0a0773682d67312d621210000102030405060708090a0b0c0d0e0f1804",
    );
    g.check(
        node_cursor("sh-g1-a", 9),
        "0a0773682d67312d611210000102030405060708090a0b0c0d0e0f1809",
    );

    let mut request_variants = BTreeSet::new();
    for (body, hex) in [
        (
            pb::request::Body::Append(append_request()),
            "080112080a0265310a026532",
        ),
        (
            pb::request::Body::Read(read_request()),
            "08011a0b080710808040186420f403",
        ),
        (pb::request::Body::Status(pb::StatusRequest {}), "08012200"),
        (pb::request::Body::Trim(trim_request()), "08012a020805"),
    ] {
        request_variants.insert(request_variant(&body));
        g.check(req(body), hex);
    }
    let mut response_variants = BTreeSet::new();
    for (body, hex) in [
        (
            pb::response::Body::Append(append_response()),
            "0a160a10000102030405060708090a0b0c0d0e0f10071809",
        ),
        (
            pb::response::Body::Read(read_response()),
            "122c0a10000102030405060708090a0b0c0d0e0f1208080712040a0273681208080812040a027368180320092809",
        ),
        (
            pb::response::Body::Status(status_response()),
            "1a410a0773682d67312d611210000102030405060708090a0b0c0d0e0f18032009280230c0c4073a027368420573682d63314a05302e312e3050015a06616c77617973",
        ),
        (pb::response::Body::Trim(trim_response()), "220408051001"),
        (
            pb::response::Body::Error(error_response()),
            "7a080807120462757379",
        ),
    ] {
        response_variants.insert(response_variant(&body));
        g.check(resp(body), hex);
    }

    assert!(
        g.failures.is_empty(),
        "golden bytes differ (see the comment at the top of this file before changing anything):\n{}",
        g.failures.join("\n")
    );
    assert_eq!(
        request_variants.len(),
        4,
        "every request type needs golden bytes"
    );
    assert_eq!(
        response_variants.len(),
        5,
        "every response type needs golden bytes"
    );

    let declared: BTreeSet<String> = proto_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("message "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(!declared.is_empty(), "no messages found in queue.proto");
    let missing: Vec<_> = declared.difference(&g.messages).collect();
    assert!(
        missing.is_empty(),
        "messages in queue.proto without golden bytes: {missing:?}"
    );
}

#[test]
fn enum_numbers_are_pinned() {
    let kinds = [
        (pb::EntryKind::Unspecified, 0, "ENTRY_KIND_UNSPECIFIED"),
        (pb::EntryKind::Change, 1, "ENTRY_KIND_CHANGE"),
        (pb::EntryKind::Heartbeat, 2, "ENTRY_KIND_HEARTBEAT"),
        (pb::EntryKind::Test, 3, "ENTRY_KIND_TEST"),
    ];
    for (kind, number, name) in kinds {
        assert_eq!(kind as i32, number);
        assert_eq!(kind.as_str_name(), name);
    }
    let codes = [
        (pb::ErrorCode::Unspecified, 0, "ERROR_CODE_UNSPECIFIED"),
        (pb::ErrorCode::BadRequest, 1, "ERROR_CODE_BAD_REQUEST"),
        (
            pb::ErrorCode::UnsupportedVersion,
            2,
            "ERROR_CODE_UNSUPPORTED_VERSION",
        ),
        (pb::ErrorCode::TooLarge, 3, "ERROR_CODE_TOO_LARGE"),
        (pb::ErrorCode::Corrupt, 4, "ERROR_CODE_CORRUPT"),
        (pb::ErrorCode::Forbidden, 5, "ERROR_CODE_FORBIDDEN"),
        (pb::ErrorCode::Unavailable, 6, "ERROR_CODE_UNAVAILABLE"),
        (pb::ErrorCode::Overloaded, 7, "ERROR_CODE_OVERLOADED"),
    ];
    for (code, number, name) in codes {
        assert_eq!(code as i32, number);
        assert_eq!(code.as_str_name(), name);
    }
}

/// Appends fields a future version might add: a varint (field 100), a length-delimited string
/// (field 101) and a fixed64 (field 102).
fn with_future_fields(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.extend_from_slice(&[0xa0, 0x06, 0x2a]); // field 100, varint 42
    bytes.extend_from_slice(&[0xaa, 0x06, 0x03, b'n', b'e', b'w']); // field 101, "new"
    bytes.extend_from_slice(&[0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 102, fixed64
    bytes
}

#[test]
fn bytes_from_a_future_version_decode_and_keep_known_fields() {
    let decoded = pb::Entry::decode(&with_future_fields(entry().encode_to_vec())[..]).unwrap();
    assert_eq!(decoded, entry());

    // Unknown fields nested inside a known message field.
    let mut nested = Vec::new();
    let mut id = with_future_fields(entry_id().encode_to_vec());
    nested.push(0x0a);
    prost::encoding::encode_varint(id.len() as u64, &mut nested);
    nested.append(&mut id);
    let decoded = pb::Entry::decode(&with_future_fields(nested)[..]).unwrap();
    assert_eq!(decoded.id, Some(entry_id()));

    // Tolerance covers unknown fields only: a known field with another wire type (payload, field
    // 4, sent as a varint) is an incompatible change and must be refused, not misread.
    assert!(pb::Entry::decode(&[0x20, 0x05][..]).is_err());

    // A request type added by a newer version (oneof field 6) decodes with no body, which
    // `serve` answers with BAD_REQUEST instead of misreading it.
    let mut future_request = vec![0x08, 0x01];
    future_request.extend_from_slice(&[0x32, 0x02, 0x08, 0x01]); // field 6, message {1: 1}
    let decoded = pb::Request::decode(&future_request[..]).unwrap();
    assert_eq!(decoded.protocol_version, 1);
    assert_eq!(decoded.body, None);

    // A response with a future error code keeps the number, so it can still be logged.
    let future_error = [0x7a, 0x02, 0x08, 0x63]; // Error { code: 99 }
    let decoded = pb::Response::decode(&future_error[..]).unwrap();
    match decoded.body {
        Some(pb::response::Body::Error(e)) => {
            assert_eq!(e.code, 99);
            assert!(pb::ErrorCode::try_from(e.code).is_err());
        }
        other => panic!("expected an error body, got {other:?}"),
    }
}
