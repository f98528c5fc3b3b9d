//! Golden bytes: every message of every .proto file (see [`PROTO_FILES`]), with every field set,
//! must encode to exactly the bytes committed here, and those bytes must decode back to the same value. Regions upgrade one
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

fn subscribe_request() -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_offset: 7,
        max_bytes: 1 << 20,
        max_entries: 100,
        idle_ms: 500,
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

fn change() -> pb::Change {
    pb::Change {
        uid: "sh-1001".into(),
        key: "profile".into(),
        version: 7,
        value: Bytes::from_static(b"v1"),
        deleted: false,
        commit_unix_ms: 1_700_000_000_123,
        home_region: "sh".into(),
    }
}

/// A delete carries no value, so the `deleted` flag gets its own case.
fn change_delete() -> pb::Change {
    pb::Change {
        uid: "sh-1001".into(),
        key: "profile".into(),
        version: 8,
        value: Bytes::new(),
        deleted: true,
        commit_unix_ms: 1_700_000_000_456,
        home_region: "sh".into(),
    }
}

fn heartbeat() -> pb::Heartbeat {
    pb::Heartbeat {
        region: "sh".into(),
        sequence: 42,
        unix_ms: 1_700_000_000_123,
    }
}

fn pair_lag() -> pb::PairLag {
    pb::PairLag {
        source_region: "sh".into(),
        destination_region: "hk".into(),
        has_heartbeat: true,
        lag_seconds: 1.5,
        entries_behind: 12,
        apply_rate_per_sec: 250.25,
        last_heartbeat_origin_unix_ms: 1_700_000_000_123,
        // Negative, so the 10-byte varint of a negative int64 is pinned too.
        clock_offset_ms: -3,
        applied_changes: 1000,
        refused_changes: 2,
        nodes_reachable: 5,
        nodes_total: 6,
    }
}

fn region_status_response() -> pb::RegionStatusResponse {
    pb::RegionStatusResponse {
        region: "hk".into(),
        unix_ms: 1_700_000_000_789,
        lags: vec![pair_lag()],
        version: "0.1.0".into(),
    }
}

fn checkpoint_report() -> pb::CheckpointReport {
    pb::CheckpointReport {
        consumer_region: "hk".into(),
        incarnation: Bytes::from_static(&INCARNATION),
        next_offset: 120,
    }
}

fn checkpoint_report_response() -> pb::CheckpointReportResponse {
    pb::CheckpointReportResponse { start_offset: 105 }
}

fn stored_record() -> pb::StoredRecord {
    pb::StoredRecord {
        version: 7,
        value: Bytes::from_static(b"v1"),
        deleted: true,
        home_region: "sh".into(),
        commit_unix_ms: 1_700_000_000_123,
    }
}

fn stored_idempotency() -> pb::StoredIdempotency {
    pb::StoredIdempotency {
        version: 7,
        outbox_seq: 11,
        created_unix_ms: 1_700_000_000_123,
        request_hash: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
    }
}

fn stored_checkpoint() -> pb::StoredCheckpoint {
    pb::StoredCheckpoint {
        cursor: Some(consumer_cursor()),
        has_heartbeat: true,
        heartbeat_unix_ms: 1_700_000_000_123,
        applied_entries: 300,
        updated_unix_ms: 1_700_000_000_456,
    }
}

fn http_header() -> pb::HttpHeader {
    pb::HttpHeader {
        name: "if-match".into(),
        value: Bytes::from_static(b"\"3\""),
    }
}

fn gateway_forward_request() -> pb::GatewayForwardRequest {
    pb::GatewayForwardRequest {
        method: "PUT".into(),
        path_and_query: "/v1/users/sh-1/records/k?x=1".into(),
        headers: vec![http_header()],
        body: Bytes::from_static(b"v1"),
        origin_region: "hk".into(),
        client_addr: "127.0.0.1:5000".into(),
    }
}

fn gateway_forward_response() -> pb::GatewayForwardResponse {
    pb::GatewayForwardResponse {
        status: 201,
        headers: vec![http_header()],
        body: Bytes::from_static(b"ok"),
    }
}

fn registry_ballot() -> pb::RegistryBallot {
    pb::RegistryBallot {
        counter: 7,
        proposer: (1 << 48) | 9,
    }
}

fn registry_register() -> pb::RegistryRegister {
    pb::RegistryRegister {
        version: 3,
        value: Some(Bytes::from_static(b"v")),
    }
}

fn registry_accepted_value() -> pb::RegistryAcceptedValue {
    pb::RegistryAcceptedValue {
        ballot: Some(registry_ballot()),
        register: Some(registry_register()),
    }
}

fn acceptor_request() -> pb::AcceptorRequest {
    pb::AcceptorRequest {
        kind: pb::AcceptorRequestKind::Accept as i32,
        key: "wxid/abc123".into(),
        ballot: Some(registry_ballot()),
        register: Some(registry_register()),
        promise_next: true,
    }
}

fn acceptor_reply() -> pb::AcceptorReply {
    pb::AcceptorReply {
        kind: pb::AcceptorReplyKind::Promised as i32,
        key: "wxid/abc123".into(),
        ballot: Some(registry_ballot()),
        accepted: Some(registry_accepted_value()),
        promised_next: true,
        promised: Some(registry_ballot()),
        reason: "disk".into(),
    }
}

fn acceptor_batch_request() -> pb::AcceptorBatchRequest {
    pb::AcceptorBatchRequest {
        requests: vec![acceptor_request()],
    }
}

fn acceptor_batch_response() -> pb::AcceptorBatchResponse {
    pb::AcceptorBatchResponse {
        replies: vec![acceptor_reply()],
    }
}

fn registry_operation_request() -> pb::RegistryOperationRequest {
    pb::RegistryOperationRequest {
        kind: pb::RegistryOperationKind::SetHome as i32,
        wxid: "abc123".into(),
        uid: "sh-1".into(),
        region: "hk".into(),
        expected_epoch: Some(2),
    }
}

fn registry_home_entry() -> pb::RegistryHomeEntry {
    pb::RegistryHomeEntry {
        region: "hk".into(),
        epoch: 3,
    }
}

fn registry_operation_response() -> pb::RegistryOperationResponse {
    pb::RegistryOperationResponse {
        answer: pb::RegistryAnswerKind::Error as i32,
        wxid: Some("abc123".into()),
        uid: "sh-1".into(),
        changing: true,
        home: Some(registry_home_entry()),
        error: pb::RegistryErrorCode::Taken as i32,
        message: "taken".into(),
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
        pb::request::Body::RegionStatus(_) => "region_status",
        pb::request::Body::CheckpointReport(_) => "checkpoint_report",
        pb::request::Body::Subscribe(_) => "subscribe",
        pb::request::Body::GatewayForward(_) => "gateway_forward",
        pb::request::Body::RegistryAcceptor(_) => "registry_acceptor",
        pb::request::Body::RegistryOperation(_) => "registry_operation",
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
        pb::response::Body::RegionStatus(_) => "region_status",
        pb::response::Body::CheckpointReport(_) => "checkpoint_report",
        pb::response::Body::GatewayForward(_) => "gateway_forward",
        pb::response::Body::RegistryAcceptor(_) => "registry_acceptor",
        pb::response::Body::RegistryOperation(_) => "registry_operation",
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

/// Every .proto file whose messages must have golden bytes here. The test fails when the proto
/// directory holds a file this list does not name, so a new file cannot slip past.
const PROTO_FILES: [&str; 5] = [
    "change.proto",
    "queue.proto",
    "store.proto",
    "gateway.proto",
    "registry.proto",
];

fn proto_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/homeport/v1")
}

/// The names of the messages `file` declares (nested ones included).
fn declared_messages(file: &str) -> BTreeSet<String> {
    let path = proto_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("message "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| name.trim_end_matches('{').to_string())
        .collect()
}

#[test]
fn the_covered_proto_files_are_all_there_are() {
    let found: BTreeSet<String> = std::fs::read_dir(proto_dir())
        .expect("proto dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".proto"))
        .collect();
    let covered: BTreeSet<String> = PROTO_FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        found, covered,
        "add the new .proto file to PROTO_FILES and golden bytes for its messages"
    );
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
    g.check(subscribe_request(), "080710808040186420f403");
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

    // change.proto
    g.check(
        change(),
        "0a0773682d31303031120770726f66696c6518072202763130fbd095ffbc313a027368",
    );
    g.check(
        change_delete(),
        "0a0773682d31303031120770726f66696c651808280130c8d395ffbc313a027368",
    );
    g.check(heartbeat(), "0a027368102a18fbd095ffbc31");
    g.check(pb::RegionStatusRequest {}, "");
    g.check(pair_lag(), "0a0273681202686b180121000000000000f83f280c310000000000486f4038fbd095ffbc3140fdffffffffffffffff0148e807500258056006");
    g.check(region_status_response(), "0a02686b1095d695ffbc311a390a0273681202686b180121000000000000f83f280c310000000000486f4038fbd095ffbc3140fdffffffffffffffff0148e8075002580560062205302e312e30");
    g.check(
        checkpoint_report(),
        "0a02686b1210000102030405060708090a0b0c0d0e0f1878",
    );
    g.check(checkpoint_report_response(), "0869");

    // store.proto
    g.check(stored_record(), "08071202763118012202736828fbd095ffbc31");
    g.check(stored_idempotency(), "0807100b18fbd095ffbc312204deadbeef");
    g.check(stored_checkpoint(), "0a3e0a1d0a0773682d67312d611210000102030405060708090a0b0c0d0e0f18090a1d0a0773682d67312d621210000102030405060708090a0b0c0d0e0f1804100118fbd095ffbc3120ac0228c8d395ffbc31");

    // gateway.proto
    g.check(http_header(), "0a0869662d6d617463681203223322");
    g.check(gateway_forward_request(), "0a03505554121c2f76312f75736572732f73682d312f7265636f7264732f6b3f783d311a0f0a0869662d6d617463681203223322220276312a02686b320e3132372e302e302e313a35303030");
    g.check(
        gateway_forward_response(),
        "08c901120f0a0869662d6d6174636812032233221a026f6b",
    );

    // registry.proto
    g.check(registry_ballot(), "08071089808080808040");
    g.check(registry_register(), "0803120176");
    g.check(
        registry_accepted_value(),
        "0a0a0807108980808080804012050803120176",
    );
    g.check(
        acceptor_request(),
        "0802120b777869642f6162633132331a0a08071089808080808040220508031201762801",
    );
    g.check(acceptor_reply(), "0801120b777869642f6162633132331a0a0807108980808080804022130a0a08071089808080808040120508031201762801320a080710898080808080403a046469736b");
    g.check(
        acceptor_batch_request(),
        "0a240802120b777869642f6162633132331a0a08071089808080808040220508031201762801",
    );
    g.check(acceptor_batch_response(), "0a440801120b777869642f6162633132331a0a0807108980808080804022130a0a08071089808080808040120508031201762801320a080710898080808080403a046469736b");
    g.check(
        registry_operation_request(),
        "080612066162633132331a0473682d312202686b2802",
    );
    g.check(registry_home_entry(), "0a02686b1003");
    g.check(
        registry_operation_response(),
        "080b12066162633132331a0473682d3120012a060a02686b100330013a0574616b656e",
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
        (
            pb::request::Body::RegionStatus(pb::RegionStatusRequest {}),
            "08013200",
        ),
        (
            pb::request::Body::CheckpointReport(checkpoint_report()),
            "08013a180a02686b1210000102030405060708090a0b0c0d0e0f1878",
        ),
        (
            pb::request::Body::Subscribe(subscribe_request()),
            "0801420b080710808040186420f403",
        ),
        (
            pb::request::Body::GatewayForward(gateway_forward_request()),
            "0801a2014c0a03505554121c2f76312f75736572732f73682d312f7265636f7264732f6b3f783d311a0f0a0869662d6d617463681203223322220276312a02686b320e3132372e302e302e313a35303030",
        ),
        (
            pb::request::Body::RegistryAcceptor(acceptor_batch_request()),
            "0801aa01260a240802120b777869642f6162633132331a0a08071089808080808040220508031201762801",
        ),
        (
            pb::request::Body::RegistryOperation(registry_operation_request()),
            "0801b20116080612066162633132331a0473682d312202686b2802",
        ),
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
        (
            pb::response::Body::RegionStatus(region_status_response()),
            "2a4d0a02686b1095d695ffbc311a390a0273681202686b180121000000000000f83f280c310000000000486f4038fbd095ffbc3140fdffffffffffffffff0148e8075002580560062205302e312e30",
        ),
        (
            pb::response::Body::CheckpointReport(checkpoint_report_response()),
            "32020869",
        ),
        (
            pb::response::Body::GatewayForward(gateway_forward_response()),
            "a2011808c901120f0a0869662d6d6174636812032233221a026f6b",
        ),
        (
            pb::response::Body::RegistryAcceptor(acceptor_batch_response()),
            "aa01460a440801120b777869642f6162633132331a0a0807108980808080804022130a0a08071089808080808040120508031201762801320a080710898080808080403a046469736b",
        ),
        (
            pb::response::Body::RegistryOperation(registry_operation_response()),
            "b20123080b12066162633132331a0473682d3120012a060a02686b100330013a0574616b656e",
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
        10,
        "every request type needs golden bytes"
    );
    assert_eq!(
        response_variants.len(),
        10,
        "every response type needs golden bytes"
    );

    for file in PROTO_FILES {
        let declared = declared_messages(file);
        assert!(!declared.is_empty(), "no messages found in {file}");
        let missing: Vec<_> = declared.difference(&g.messages).collect();
        assert!(
            missing.is_empty(),
            "messages in {file} without golden bytes: {missing:?}"
        );
    }
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
    assert_eq!(pb::AcceptorRequestKind::Accept as i32, 2);
    assert_eq!(pb::AcceptorReplyKind::Failed as i32, 4);
    assert_eq!(pb::RegistryOperationKind::SetHome as i32, 6);
    assert_eq!(pb::RegistryAnswerKind::Error as i32, 11);
    assert_eq!(
        pb::RegistryErrorCode::Corrupt.as_str_name(),
        "REGISTRY_ERROR_CODE_CORRUPT"
    );
    assert_eq!(pb::RegistryErrorCode::Corrupt as i32, 8);
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

    // A request type added by a newer version (oneof field 99; fields 6 and 7 are taken since)
    // decodes with no body, which `serve` answers with BAD_REQUEST instead of misreading it.
    let mut future_request = vec![0x08, 0x01];
    future_request.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]); // field 99, message {1: 1}
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
