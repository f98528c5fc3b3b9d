//! The region's HTTP record API (internal: no tickets; the gateway puts routing and tickets in
//! front of it). `PUT/GET/DELETE /v1/users/{uid}/records/{key}`, plus `GET /v1/digest` and
//! `GET /v1/status` for operators and tests.
//!
//! `GET` takes `?min_version=V&wait_ms=N` for the gateway's `critical` reads: the answer waits
//! (at most `N` ms, capped at [`MAX_READ_WAIT_MS`]) until replay applied version `V` or newer,
//! then shows whatever the store holds; the caller compares the `ETag` with `V`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use homeport_store::{StoreError, WriteOp};
use serde_json::json;

use crate::Shared;
use crate::writes::{self, WriteError, WriteResult};

/// Seconds a client should wait before retrying a write that is durable but not yet shipped.
const RETRY_AFTER_SECS: u64 = 1;
pub const HOME_REGION_HEADER: &str = "homeport-home-region";
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Longest a read may wait for `min_version`, in ms: the wait holds a request open.
pub const MAX_READ_WAIT_MS: u64 = 30_000;
/// How often a read waiting for `min_version` looks at the store again. Bounded polling keeps
/// the wait out of the replay path; at this interval a 1 s wait costs at most 100 point reads.
const READ_POLL_INTERVAL_MS: u64 = 10;

/// `?min_version=V&wait_ms=N` of a read (other parameters are ignored).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ReadParams {
    min_version: Option<u64>,
    wait_ms: Option<u64>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // One byte over the limit reaches the handler, which then names the limit in its answer.
    let body_limit = shared.deployment.store.max_value_bytes + 1;
    Router::new()
        .route(
            "/v1/users/{uid}/records/{key}",
            get(get_record).put(put_record).delete(delete_record),
        )
        .route("/v1/digest", get(digest))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route(
            "/v1/admin/dead-letters/redrive",
            axum::routing::post(redrive_dead_letters),
        )
        .route("/v1/status", get(status))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

fn problem(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a valid header value")
}

/// `If-Match: "3"` or `If-Match: 3` → Some(3); `0` means "must not exist yet".
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| {
        format!(
            "If-Match must be a record version as returned in ETag (e.g. \"3\", or \"0\" for \
             'must not exist'); got {:?}",
            v.to_str().unwrap_or("<not text>")
        )
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY_BYTES => Ok(Some(s.to_owned())),
        _ => Err(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes of visible ASCII"
        )),
    }
}

async fn put_record(
    State(shared): State<Arc<Shared>>,
    Path((uid, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&shared, &uid, &key, WriteOp::Put(body), &headers, "PUT").await
}

async fn delete_record(
    State(shared): State<Arc<Shared>>,
    Path((uid, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    write(&shared, &uid, &key, WriteOp::Delete, &headers, "DELETE").await
}

async fn write(
    shared: &Shared,
    uid: &str,
    key: &str,
    op: WriteOp,
    headers: &HeaderMap,
    method: &str,
) -> Response {
    let (expected, idem) = match (expected_version(headers), idempotency_key(headers)) {
        (Ok(e), Ok(i)) => (e, i),
        (Err(m), _) | (_, Err(m)) => return problem(StatusCode::BAD_REQUEST, m),
    };
    match writes::write(shared, uid, key, op, expected, idem).await {
        Ok(WriteResult::Committed { version }) => {
            let code = if version == 1 && method == "PUT" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut r = (
                code,
                axum::Json(json!({ "version": version, "shipped": true })),
            )
                .into_response();
            r.headers_mut().insert(header::ETAG, etag(version));
            r
        }
        Ok(WriteResult::DurableNotShipped { version, reason }) => {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the change is durable at home as version {version} but not yet on the queue \
                     ({reason}); it will ship by itself. Retrying with the same Idempotency-Key \
                     is safe and never writes twice"
                ),
            );
            r.headers_mut().insert(header::ETAG, etag(version));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            r
        }
        Ok(WriteResult::Conflict { current }) => {
            let mut r = problem(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "the record is at version {current}, not the version in If-Match; read it again and retry"
                ),
            );
            r.headers_mut().insert(header::ETAG, etag(current));
            r
        }
        Ok(WriteResult::NotHome { home }) => not_home(shared, uid, key, home),
        Err(WriteError::Store(e)) => store_error(e),
        Err(e @ WriteError::ShuttingDown(_)) => {
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            r
        }
    }
}

/// A user homed elsewhere is sent home: `307` keeps the method and body.
fn not_home(shared: &Shared, uid: &str, key: &str, home: Option<String>) -> Response {
    let Some(home) = home else {
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "user {uid:?} has no home region under the deployment's rule (uid must look like \
                 '<region>-<id>' with a region of: {})",
                shared.deployment.region_names().join(", ")
            ),
        );
    };
    let api = shared
        .deployment
        .region(&home)
        .and_then(|r| r.process.as_ref())
        .map(|p| p.api_addr);
    let mut r = problem(
        StatusCode::TEMPORARY_REDIRECT,
        format!("user {uid:?} lives in region {home}; writes go there"),
    );
    if let Some(api) = api
        && let Ok(loc) =
            HeaderValue::from_str(&format!("http://{api}/v1/users/{uid}/records/{key}"))
    {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    if let Ok(h) = HeaderValue::from_str(&home) {
        r.headers_mut().insert(HOME_REGION_HEADER, h);
    }
    r
}

fn store_error(e: StoreError) -> Response {
    let code = match &e {
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
        StoreError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            tracing::error!(error = %e, "store error");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let mut r = problem(code, e.to_string());
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    r
}

async fn get_record(
    State(shared): State<Arc<Shared>>,
    Path((uid, key)): Path<(String, String)>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("min_version and wait_ms must be whole numbers: {e}"),
            );
        }
    };
    let wait_ms = params.wait_ms.unwrap_or(0).min(MAX_READ_WAIT_MS);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let found = loop {
        let store = shared.store.clone();
        let (u, k) = (uid.clone(), key.clone());
        let found = match tokio::task::spawn_blocking(move || store.read(&u, &k)).await {
            Ok(r) => r,
            Err(e) => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("read task failed: {e}"),
                );
            }
        };
        let Some(min_version) = params.min_version else {
            break found;
        };
        let reached = match &found {
            Ok(Some(rec)) => rec.version >= min_version,
            Ok(None) => false,
            Err(_) => true,
        };
        let now = tokio::time::Instant::now();
        if reached || now >= deadline || shared.is_shutting_down() {
            break found;
        }
        let pause = std::time::Duration::from_millis(READ_POLL_INTERVAL_MS);
        tokio::time::sleep_until((now + pause).min(deadline)).await;
    };
    match found {
        Ok(Some(rec)) => {
            let home = HeaderValue::from_str(&rec.home_region).ok();
            let mut r = match rec.value {
                Some(v) => (StatusCode::OK, v).into_response(),
                None => problem(
                    StatusCode::NOT_FOUND,
                    format!(
                        "record {key:?} of user {uid:?} was deleted (version {})",
                        rec.version
                    ),
                ),
            };
            r.headers_mut().insert(header::ETAG, etag(rec.version));
            if let Some(h) = home {
                r.headers_mut().insert(HOME_REGION_HEADER, h);
            }
            r
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            format!(
                "no record {key:?} for user {uid:?} in region {}",
                shared.region
            ),
        ),
        Err(e) => store_error(e),
    }
}

async fn digest(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.digest()).await {
        Ok(Ok(d)) => axum::Json(json!({
            "region": shared.region,
            "total": d.total,
            "records": d.records,
            "per_user": d.per_user,
        }))
        .into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("digest task failed: {e}"),
        ),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let lags = shared.lag_table();
    axum::Json(json!({
        "region": shared.region,
        "lags": lags.iter().map(crate::lag::pair_lag_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

fn no_webhook(shared: &Shared) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        format!(
            "region {} delivers to its store, not a webhook, so it has no dead letters",
            shared.region
        ),
    )
}

/// The oldest dead letters of the webhook sink (changes it gave up on), for an operator.
async fn dead_letters(State(shared): State<Arc<Shared>>) -> Response {
    if shared.webhook.is_none() {
        return no_webhook(&shared);
    }
    // The dead-letter store is a redb file: read it off the async threads.
    let reader = shared.clone();
    let listed = tokio::task::spawn_blocking(move || match &reader.webhook {
        Some(sink) => sink
            .dead_letters()
            .and_then(|l| Ok((sink.dead_letter_count()?, l)))
            .map_err(|e| e.to_string()),
        None => Err("no webhook sink".to_owned()),
    })
    .await
    .unwrap_or_else(|e| Err(format!("dead-letter task failed: {e}")));
    match listed {
        Ok((count, letters)) => axum::Json(json!({
            "region": shared.region,
            "count": count,
            "letters": letters.iter().map(|l| json!({
                "position": l.position,
                "entry_id": l.idempotency_key(),
                "uid": l.change.uid,
                "key": l.change.key,
                "version": l.change.version,
                "deleted": l.change.deleted,
                "attempts": l.attempts,
                "last_error": l.last_error,
                "dead_lettered_unix_ms": l.dead_lettered_unix_ms,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Sends the oldest dead letters again; those delivered leave the store.
async fn redrive_dead_letters(State(shared): State<Arc<Shared>>) -> Response {
    let Some(sink) = &shared.webhook else {
        return no_webhook(&shared);
    };
    match sink.redrive().await {
        Ok(r) => axum::Json(json!({
            "region": shared.region,
            "delivered": r.delivered,
            "still_failing": r.still_failing,
            "remaining": r.remaining,
        }))
        .into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
