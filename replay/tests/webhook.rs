//! The webhook sink against a real local HTTP server that answers from a script.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use homeport_replay::ReplayError;
use homeport_replay::webhook::{DeliveryReport, RedriveReport, WebhookConfig, WebhookSink};
use homeport_wire::pb;

const INCARNATION: [u8; 16] = [0xab; 16];
const INCARNATION_HEX: &str = "abababababababababababababababab";

#[derive(Clone, Debug)]
enum Reply {
    Status(u16, &'static str),
    TooManyRetryAfterZero,
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    idempotency_key: Option<String>,
    version: Option<String>,
    content_type: Option<String>,
    body: serde_json::Value,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// Once the script is used up; `None`: 200.
    then: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
}

struct Server {
    addr: SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(replies: Vec<Reply>, then: Option<Reply>) -> Self {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            then: Mutex::new(then),
            received: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, script, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    fn answer_from_now_on(&self, reply: Option<Reply>) {
        *self.script.then.lock().unwrap() = reply;
    }
}

async fn handle(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    script.received.lock().unwrap().push(Received {
        idempotency_key: header("idempotency-key"),
        version: header("homeport-version"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    let reply = script
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| script.then.lock().unwrap().clone());
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Status(code, body)) => {
            (StatusCode::from_u16(code).unwrap(), body).into_response()
        }
        Some(Reply::TooManyRetryAfterZero) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response(),
        Some(Reply::Hang) => std::future::pending().await,
    }
}

fn config(url: String, dir: &Path) -> WebhookConfig {
    WebhookConfig {
        url,
        per_change: true,
        max_attempts: 4,
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        // Generous: the machine is noisy; only the timeout test shortens it.
        timeout_ms: 10_000,
        dead_letter_path: dir.join("dead.redb"),
        max_batch_bytes: 1024 * 1024,
        max_batch_changes: 1_000,
    }
}

fn id(seq: u64) -> pb::EntryId {
    pb::EntryId {
        origin_region: "sh".into(),
        producer_incarnation: INCARNATION.to_vec().into(),
        sequence: seq,
    }
}

fn key(seq: u64) -> String {
    format!("sh/{INCARNATION_HEX}/{seq}")
}

fn change(seq: u64, version: u64) -> (pb::EntryId, pb::Change) {
    (
        id(seq),
        pb::Change {
            uid: format!("sh-{seq}"),
            key: "profile".into(),
            version,
            value: format!("value {seq}").into_bytes().into(),
            deleted: false,
            commit_unix_ms: 1_700_000_000_000 + seq,
            home_region: "sh".into(),
        },
    )
}

fn json_of(seq: u64, version: u64) -> serde_json::Value {
    use base64::Engine;
    serde_json::json!({
        "uid": format!("sh-{seq}"),
        "key": "profile",
        "version": version,
        "deleted": false,
        "value": base64::engine::general_purpose::STANDARD.encode(format!("value {seq}")),
        "commit_unix_ms": 1_700_000_000_000u64 + seq,
        "home_region": "sh",
        "entry_id": key(seq),
    })
}

#[tokio::test]
async fn per_change_retries_server_errors_with_the_same_idempotency_key() {
    let server = Server::start(
        vec![Reply::Status(503, "busy"), Reply::Status(500, "oops")],
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = WebhookSink::new(config(server.url(), dir.path())).unwrap();
    let report = sink.deliver(&[change(5, 7)]).await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 1,
            dead_lettered: 0,
            requests: 3,
            failed_attempts: 2
        }
    );
    let got = server.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.idempotency_key.as_deref(), Some(key(5).as_str()));
        assert_eq!(r.version.as_deref(), Some("7"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.body, json_of(5, 7));
    }
    assert_eq!(sink.dead_letter_count().unwrap(), 0);
}

#[tokio::test]
async fn request_timeout_and_too_many_requests_are_retried() {
    let server = Server::start(
        vec![Reply::Status(408, ""), Reply::TooManyRetryAfterZero],
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = WebhookSink::new(config(server.url(), dir.path())).unwrap();
    let report = sink.deliver(&[change(1, 1)]).await.unwrap();
    assert_eq!((report.delivered, report.requests), (1, 3));
}

#[tokio::test]
async fn a_bad_request_is_dead_lettered_at_once_and_later_changes_still_go() {
    let server = Server::start(vec![Reply::Status(400, "uid is malformed")], None).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = WebhookSink::new(config(server.url(), dir.path())).unwrap();
    let report = sink.deliver(&[change(1, 1), change(2, 4)]).await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 1,
            dead_lettered: 1,
            requests: 2,
            failed_attempts: 1
        }
    );
    let keys: Vec<_> = server
        .received()
        .into_iter()
        .map(|r| r.idempotency_key.unwrap())
        .collect();
    assert_eq!(keys, vec![key(1), key(2)]);
    let dead = sink.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entry_id, change(1, 1).0);
    assert_eq!(dead[0].change, change(1, 1).1);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].idempotency_key(), key(1));
    assert!(dead[0].last_error.contains("400"), "{}", dead[0].last_error);
    assert!(
        dead[0].last_error.contains("uid is malformed"),
        "{}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_retried_then_dead_lettered() {
    let server = Server::start(vec![], Some(Reply::Hang)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(server.url(), dir.path());
    cfg.timeout_ms = 300;
    cfg.max_attempts = 2;
    let sink = WebhookSink::new(cfg).unwrap();
    let report = sink.deliver(&[change(3, 3)]).await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 0,
            dead_lettered: 1,
            requests: 2,
            failed_attempts: 2
        }
    );
    assert_eq!(server.received().len(), 2);
    let dead = sink.dead_letters().unwrap();
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].last_error.contains("timeout_ms 300"),
        "{}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn an_unreachable_service_is_retried_then_dead_lettered() {
    // A port nobody listens on: bind, note it, release it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(format!("http://{addr}/hook"), dir.path());
    cfg.max_attempts = 3;
    let sink = WebhookSink::new(cfg).unwrap();
    let report = sink.deliver(&[change(1, 1)]).await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 0,
            dead_lettered: 1,
            requests: 3,
            failed_attempts: 3
        }
    );
    assert_eq!(sink.dead_letters().unwrap()[0].attempts, 3);
}

#[tokio::test]
async fn per_batch_posts_bounded_arrays_keyed_by_first_and_last_id() {
    let server = Server::start(vec![], None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(server.url(), dir.path());
    cfg.per_change = false;
    cfg.max_batch_changes = 2;
    let sink = WebhookSink::new(cfg).unwrap();
    let changes: Vec<_> = (10..15).map(|s| change(s, s * 2)).collect();
    let report = sink.deliver(&changes).await.unwrap();
    assert_eq!((report.delivered, report.requests), (5, 3));
    let got = server.received();
    let keys: Vec<_> = got
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("{}..{};count=2", key(10), key(11)),
            format!("{}..{};count=2", key(12), key(13)),
            format!("{}..{};count=1", key(14), key(14)),
        ]
    );
    assert!(got.iter().all(|r| r.version.is_none()));
    assert_eq!(
        got[0].body,
        serde_json::Value::Array(vec![json_of(10, 20), json_of(11, 22)])
    );
    assert_eq!(got[2].body, serde_json::Value::Array(vec![json_of(14, 28)]));
}

#[tokio::test]
async fn per_batch_bytes_limit_splits_requests() {
    let server = Server::start(vec![], None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(server.url(), dir.path());
    cfg.per_change = false;
    // One object is about 200 bytes: two fit, three do not.
    let one = serde_json::to_vec(&json_of(10, 1)).unwrap().len();
    cfg.max_batch_bytes = 2 + 2 * one + 1 + 10;
    let sink = WebhookSink::new(cfg).unwrap();
    let changes: Vec<_> = (10..15).map(|s| change(s, 1)).collect();
    sink.deliver(&changes).await.unwrap();
    let sizes: Vec<_> = server
        .received()
        .iter()
        .map(|r| r.body.as_array().map(Vec::len))
        .collect();
    assert_eq!(sizes, vec![Some(2), Some(2), Some(1)]);
}

#[tokio::test]
async fn a_refused_batch_dead_letters_each_of_its_changes() {
    let server = Server::start(vec![Reply::Status(422, "no")], None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(server.url(), dir.path());
    cfg.per_change = false;
    cfg.max_batch_changes = 2;
    let sink = WebhookSink::new(cfg).unwrap();
    let changes: Vec<_> = (0..3).map(|s| change(s, 1)).collect();
    let report = sink.deliver(&changes).await.unwrap();
    assert_eq!((report.delivered, report.dead_lettered), (1, 2));
    let dead: Vec<_> = sink
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|d| d.idempotency_key())
        .collect();
    assert_eq!(dead, vec![key(0), key(1)]);
}

#[tokio::test]
async fn dead_letters_survive_reopen_and_redrive_empties_them() {
    let server = Server::start(vec![], Some(Reply::Status(400, "refused"))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(server.url(), dir.path());
    let before = {
        let sink = WebhookSink::new(cfg.clone()).unwrap();
        let report = sink.deliver(&[change(1, 1), change(2, 2)]).await.unwrap();
        assert_eq!(report.dead_lettered, 2);
        // The file is the sink's alone while it is open.
        match WebhookSink::new(cfg.clone()) {
            Err(ReplayError::DeadLetterAlreadyOpen { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a second sink opened the same dead-letter file"),
        }
        sink.dead_letters().unwrap()
    };
    let sink = WebhookSink::new(cfg.clone()).unwrap();
    let after = sink.dead_letters().unwrap();
    assert_eq!(after, before);
    assert_eq!(
        after.iter().map(|d| d.position).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(after[1].change, change(2, 2).1);

    server.answer_from_now_on(None);
    let seen_before = server.received().len();
    let report = sink.redrive().await.unwrap();
    assert_eq!(
        report,
        RedriveReport {
            delivered: 2,
            still_failing: 0,
            remaining: 0
        }
    );
    let redriven: Vec<_> = server.received()[seen_before..]
        .iter()
        .map(|r| (r.idempotency_key.clone().unwrap(), r.body.clone()))
        .collect();
    assert_eq!(
        redriven,
        vec![(key(1), json_of(1, 1)), (key(2), json_of(2, 2))]
    );
    assert!(sink.dead_letters().unwrap().is_empty());
    drop(sink);
    let sink = WebhookSink::new(cfg).unwrap();
    assert_eq!(sink.dead_letter_count().unwrap(), 0);
    // Nothing to re-drive: nothing sent.
    let seen = server.received().len();
    assert_eq!(sink.redrive().await.unwrap(), RedriveReport::default());
    assert_eq!(server.received().len(), seen);
}

#[tokio::test]
async fn a_failing_redrive_keeps_the_letter_and_counts_its_attempts() {
    let server = Server::start(vec![], Some(Reply::Status(404, "gone"))).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = WebhookSink::new(config(server.url(), dir.path())).unwrap();
    sink.deliver(&[change(1, 1)]).await.unwrap();
    server.answer_from_now_on(Some(Reply::Status(410, "really gone")));
    let report = sink.redrive().await.unwrap();
    assert_eq!(
        report,
        RedriveReport {
            delivered: 0,
            still_failing: 1,
            remaining: 1
        }
    );
    let dead = sink.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].position, 0);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].last_error.contains("really gone"),
        "{}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn the_same_change_dead_lettered_twice_is_one_letter() {
    let server = Server::start(vec![], Some(Reply::Status(400, "no"))).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = WebhookSink::new(config(server.url(), dir.path())).unwrap();
    // The queue may deliver an entry twice (failover, replay restart).
    sink.deliver(&[change(1, 1), change(2, 1)]).await.unwrap();
    sink.deliver(&[change(1, 1)]).await.unwrap();
    let dead = sink.dead_letters().unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.position, d.idempotency_key(), d.attempts))
            .collect::<Vec<_>>(),
        vec![(0, key(1), 2), (1, key(2), 1)]
    );
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = config("http://127.0.0.1:9/hook".into(), dir.path());
    type Mutation = Box<dyn Fn(&mut WebhookConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "url",
            Box::new(|c| c.url = "https://example.test/hook".into()),
        ),
        (
            "url",
            Box::new(|c| c.url = "ftp://example.test/hook".into()),
        ),
        ("url", Box::new(|c| c.url = "not a url".into())),
        ("url", Box::new(|c| c.url = "/hook".into())),
        ("max_attempts", Box::new(|c| c.max_attempts = 0)),
        ("max_attempts", Box::new(|c| c.max_attempts = 1_000)),
        ("backoff_base_ms", Box::new(|c| c.backoff_base_ms = 10)),
        ("backoff_base_ms", Box::new(|c| c.backoff_base_ms = 0)),
        ("timeout_ms", Box::new(|c| c.timeout_ms = 0)),
        ("max_batch_bytes", Box::new(|c| c.max_batch_changes = 0)),
        (
            "dead_letter_path",
            Box::new(|c| c.dead_letter_path = "".into()),
        ),
    ];
    for (field, mutate) in cases {
        let mut cfg = base.clone();
        mutate(&mut cfg);
        match WebhookSink::new(cfg.clone()) {
            Err(ReplayError::InvalidWebhookConfig { field: f, .. }) => {
                assert_eq!(f, field, "{cfg:?}")
            }
            Err(e) => panic!("{cfg:?}: unexpected error {e}"),
            Ok(_) => panic!("{cfg:?} was accepted"),
        }
    }
    // Nothing was created for the refused configurations.
    assert!(!dir.path().join("dead.redb").exists());
    assert!(WebhookSink::new(base).is_ok());
}

#[tokio::test]
async fn a_missing_dead_letter_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("http://127.0.0.1:9/hook".into(), dir.path());
    cfg.dead_letter_path = dir.path().join("no/such/dir/dead.redb");
    match WebhookSink::new(cfg) {
        Err(e @ ReplayError::DeadLetterStore { .. }) => {
            assert!(e.to_string().contains("directory exists"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store in a missing directory"),
    }
}
