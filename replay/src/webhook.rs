//! The webhook sink: hands replicated changes to an external HTTP service instead of the built-in
//! store.
//!
//! Delivery is at least once (the queue may deliver an entry twice, and a POST whose answer was
//! lost is sent again), so every request carries an `Idempotency-Key` built from entry ids, which
//! name a change forever; per-change requests also carry `Homeport-Version` so the service can
//! apply if newer, as the built-in store does. A change that cannot be delivered after
//! `max_attempts`, or that the service refuses outright (a 4xx other than 408/429), goes to a
//! dead-letter store of its own (a redb file) so that replay can checkpoint and move on; an
//! operator lists and re-drives dead letters later. Because a dead-lettered change is re-driven
//! after newer versions of the same record were delivered, a service must compare versions (the
//! `version` field) rather than trust arrival order.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use homeport_wire::pb;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{ReplayError, entry_id_string};

/// Header naming what a request delivers; equal keys mean equal content.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header with the change's version (per-change requests only).
pub const VERSION_HEADER: &str = "homeport-version";

/// Default upper bound of one per-batch POST body; a single change larger than this is sent alone.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Default upper bound of changes in one per-batch POST.
pub const DEFAULT_MAX_BATCH_CHANGES: usize = 1_000;
/// Upper bound of `max_attempts`: beyond this a dead service stalls replay for hours instead of
/// dead-lettering.
pub const MAX_WEBHOOK_ATTEMPTS: u32 = 100;
/// Dead letters returned by one [`WebhookSink::dead_letters`] / [`DeadLetters::list`] call.
pub const MAX_DEAD_LETTERS_LISTED: usize = 1_000;
/// Dead letters one [`WebhookSink::redrive`] call re-sends (oldest first); call again for more.
pub const MAX_REDRIVE_LETTERS_PER_CALL: usize = 1_000;
/// Response bodies are read (so the connection can be reused) up to this size, then dropped.
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;
/// Part of an error response's body kept in a dead letter's `last_error`.
const MAX_ERROR_SNIPPET_BYTES: usize = 256;
/// Idle keep-alive connections to the service are closed after this long.
const POOL_IDLE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://host:port/path`; https is not supported yet (put a TLS proxy on localhost).
    pub url: String,
    /// One POST per change (a JSON object) instead of one per batch (a JSON array).
    pub per_change: bool,
    /// Attempts per request, the first included, before its changes are dead-lettered.
    pub max_attempts: u32,
    /// Backoff after the first failed attempt; doubles per failure up to `backoff_max_ms`, and
    /// each wait is drawn between half and all of that (jitter, so many sinks do not retry in step).
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Per attempt: connect, send, and read the answer.
    pub timeout_ms: u64,
    /// The dead-letter store's redb file; one per sink.
    pub dead_letter_path: PathBuf,
    /// Per-batch mode: most bytes in one POST body.
    pub max_batch_bytes: usize,
    /// Per-batch mode: most changes in one POST.
    pub max_batch_changes: usize,
}

impl WebhookConfig {
    /// Per-batch delivery, 8 attempts, backoff 100 ms doubling to 10 s, 5 s per attempt,
    /// [`DEFAULT_MAX_BATCH_BYTES`], [`DEFAULT_MAX_BATCH_CHANGES`].
    pub fn new(url: impl Into<String>, dead_letter_path: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            per_change: false,
            max_attempts: 8,
            backoff_base_ms: 100,
            backoff_max_ms: 10_000,
            timeout_ms: 5_000,
            dead_letter_path: dead_letter_path.into(),
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_changes: DEFAULT_MAX_BATCH_CHANGES,
        }
    }

    fn validate(&self) -> Result<Uri, ReplayError> {
        let bad = |field: &'static str, problem: String| ReplayError::InvalidWebhookConfig {
            field,
            problem,
        };
        let uri: Uri = self.url.parse().map_err(|e| {
            bad(
                "url",
                format!(
                    "`{}` is not a URL ({e}); write it as http://host:port/path",
                    self.url
                ),
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "url",
                    format!(
                        "`{}` uses https, which this sink does not speak yet; point it at a \
                         TLS-terminating proxy on localhost over http",
                        self.url
                    ),
                ));
            }
            _ => {
                return Err(bad(
                    "url",
                    format!(
                        "`{}` needs the http:// scheme, e.g. http://host:port/path",
                        self.url
                    ),
                ));
            }
        }
        if uri.authority().is_none() {
            return Err(bad(
                "url",
                format!("`{}` names no host; write http://host:port/path", self.url),
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_WEBHOOK_ATTEMPTS {
            return Err(bad(
                "max_attempts",
                format!(
                    "is {}; it must be between 1 and {MAX_WEBHOOK_ATTEMPTS}",
                    self.max_attempts
                ),
            ));
        }
        if self.backoff_base_ms == 0 || self.backoff_base_ms > self.backoff_max_ms {
            return Err(bad(
                "backoff_base_ms",
                format!(
                    "is {} with backoff_max_ms {}; need 1 <= backoff_base_ms <= backoff_max_ms",
                    self.backoff_base_ms, self.backoff_max_ms
                ),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(bad(
                "timeout_ms",
                "is 0; give each attempt some time, e.g. 10000".into(),
            ));
        }
        if self.max_batch_bytes == 0 || self.max_batch_changes == 0 {
            return Err(bad(
                "max_batch_bytes",
                format!(
                    "max_batch_bytes {} and max_batch_changes {} must both be at least 1",
                    self.max_batch_bytes, self.max_batch_changes
                ),
            ));
        }
        if self.dead_letter_path.as_os_str().is_empty() {
            return Err(bad(
                "dead_letter_path",
                "is empty; name a file, e.g. data/webhook-dead-letters.redb".into(),
            ));
        }
        Ok(uri)
    }
}

/// What one [`WebhookSink::deliver`] did; every change is either delivered or dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: u64,
    pub dead_lettered: u64,
    /// POSTs sent, retries included.
    pub requests: u64,
    /// POSTs that failed (an error answer, no answer in time, or no connection).
    pub failed_attempts: u64,
}

/// What one [`WebhookSink::redrive`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Re-sent successfully and removed from the store.
    pub delivered: u64,
    /// Failed again; still in the store with their attempts and last error updated.
    pub still_failing: u64,
    /// Dead letters in the store afterwards.
    pub remaining: u64,
}

/// A change that could not be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Position in the store: dead letters are listed and re-driven in this (arrival) order.
    pub position: u64,
    pub entry_id: pb::EntryId,
    pub change: pb::Change,
    /// Attempts over all deliveries and re-drives.
    pub attempts: u32,
    pub last_error: String,
    pub dead_lettered_unix_ms: u64,
}

impl DeadLetter {
    pub fn idempotency_key(&self) -> String {
        entry_id_string(&self.entry_id)
    }
}

/// POSTs changes to an external service; see the module documentation.
pub struct WebhookSink {
    cfg: WebhookConfig,
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    dead: Arc<DeadLetters>,
}

impl WebhookSink {
    pub fn new(cfg: WebhookConfig) -> Result<Self, ReplayError> {
        let uri = cfg.validate()?;
        let dead = Arc::new(DeadLetters::open(&cfg.dead_letter_path)?);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(cfg.timeout_ms)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .build(connector);
        Ok(Self {
            cfg,
            uri,
            client,
            dead,
        })
    }

    /// Delivers `changes` in order; returns once each is delivered or durably dead-lettered, so
    /// the caller may then checkpoint. An error means the dead-letter store could not be written:
    /// do not checkpoint, deliver the batch again.
    pub async fn deliver(
        &self,
        changes: &[(pb::EntryId, pb::Change)],
    ) -> Result<DeliveryReport, ReplayError> {
        let sent = self.send(changes).await;
        let mut report = DeliveryReport {
            requests: sent.requests,
            failed_attempts: sent.failed_attempts,
            ..DeliveryReport::default()
        };
        let mut letters = Vec::new();
        for ((id, change), outcome) in changes.iter().zip(sent.outcomes) {
            match outcome {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Failed { attempts, error } => {
                    tracing::warn!(
                        entry_id = %entry_id_string(id), uid = %change.uid, key = %change.key,
                        attempts, error = %error, "webhook change dead-lettered"
                    );
                    letters.push(NewLetter {
                        entry_id: id.clone(),
                        change: change.clone(),
                        attempts,
                        error,
                    });
                }
            }
        }
        report.dead_lettered = letters.len() as u64;
        if !letters.is_empty() {
            let dead = self.dead.clone();
            blocking("writing dead letters", move || dead.add(letters)).await?;
        }
        metrics::counter!("homeport_webhook_delivered_total").increment(report.delivered);
        debug_assert_eq!(
            report.delivered + report.dead_lettered,
            changes.len() as u64
        );
        Ok(report)
    }

    /// The oldest [`MAX_DEAD_LETTERS_LISTED`] dead letters.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, ReplayError> {
        self.dead.list(MAX_DEAD_LETTERS_LISTED)
    }

    pub fn dead_letter_count(&self) -> Result<u64, ReplayError> {
        self.dead.count()
    }

    /// Re-sends the oldest [`MAX_REDRIVE_LETTERS_PER_CALL`] dead letters (with the usual retries)
    /// and removes those delivered.
    pub async fn redrive(&self) -> Result<RedriveReport, ReplayError> {
        let dead = self.dead.clone();
        let letters = blocking("reading dead letters", move || {
            dead.list(MAX_REDRIVE_LETTERS_PER_CALL)
        })
        .await?;
        let items: Vec<(pb::EntryId, pb::Change)> = letters
            .iter()
            .map(|l| (l.entry_id.clone(), l.change.clone()))
            .collect();
        let sent = self.send(&items).await;
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for (letter, outcome) in letters.into_iter().zip(sent.outcomes) {
            match outcome {
                Outcome::Delivered => delivered.push(letter.position),
                Outcome::Failed { attempts, error } => failed.push(NewLetter {
                    entry_id: letter.entry_id,
                    change: letter.change,
                    attempts,
                    error,
                }),
            }
        }
        let report = RedriveReport {
            delivered: delivered.len() as u64,
            still_failing: failed.len() as u64,
            remaining: 0,
        };
        let dead = self.dead.clone();
        let remaining = blocking("updating dead letters", move || {
            dead.remove(&delivered)?;
            dead.add(failed)
        })
        .await?;
        metrics::counter!("homeport_webhook_delivered_total").increment(report.delivered);
        Ok(RedriveReport {
            remaining,
            ..report
        })
    }

    /// Sends every change (per change, or in batches bounded by bytes and count), with retries;
    /// one outcome per change, in order.
    async fn send(&self, changes: &[(pb::EntryId, pb::Change)]) -> Sent {
        let objects: Vec<Vec<u8>> = changes.iter().map(|(id, c)| change_json(id, c)).collect();
        let mut sent = Sent {
            outcomes: Vec::with_capacity(changes.len()),
            requests: 0,
            failed_attempts: 0,
        };
        let ranges = if self.cfg.per_change {
            (0..changes.len()).map(|i| i..i + 1).collect()
        } else {
            let sizes: Vec<usize> = objects.iter().map(Vec::len).collect();
            chunk_ranges(&sizes, self.cfg.max_batch_bytes, self.cfg.max_batch_changes)
        };
        for range in ranges {
            let n = range.len();
            let (body, idempotency_key, version) = if self.cfg.per_change {
                let (id, c) = &changes[range.start];
                (
                    Bytes::from(objects[range.start].clone()),
                    entry_id_string(id),
                    Some(c.version),
                )
            } else {
                let ids: Vec<&pb::EntryId> =
                    changes[range.clone()].iter().map(|(id, _)| id).collect();
                (
                    json_array(&objects[range.clone()]),
                    batch_idempotency_key(&ids),
                    None,
                )
            };
            let outcome = self.post(body, &idempotency_key, version).await;
            sent.requests += u64::from(outcome.requests);
            sent.failed_attempts += u64::from(outcome.failed_attempts);
            for _ in 0..n {
                sent.outcomes.push(outcome.outcome.clone());
            }
        }
        debug_assert_eq!(sent.outcomes.len(), changes.len());
        sent
    }

    /// One request with its retries.
    async fn post(&self, body: Bytes, idempotency_key: &str, version: Option<u64>) -> Posted {
        let Ok(key) = HeaderValue::from_str(idempotency_key) else {
            // Only a forged entry id (region names are validated) can get here; it can never be
            // sent, so trying again is pointless.
            return Posted {
                outcome: Outcome::Failed {
                    attempts: 0,
                    error: format!(
                        "entry id `{}` cannot be an HTTP header value; not sent",
                        idempotency_key.escape_debug()
                    ),
                },
                requests: 0,
                failed_attempts: 0,
            };
        };
        let mut failures = 0u32;
        loop {
            let attempt = failures + 1;
            let result = self.attempt(body.clone(), &key, version).await;
            let (error, retry_after_ms) = match result {
                Attempt::Delivered => {
                    return Posted {
                        outcome: Outcome::Delivered,
                        requests: attempt,
                        failed_attempts: failures,
                    };
                }
                Attempt::Permanent(error) => {
                    metrics::counter!("homeport_webhook_failures_total").increment(1);
                    return Posted {
                        outcome: Outcome::Failed {
                            attempts: attempt,
                            error,
                        },
                        requests: attempt,
                        failed_attempts: attempt,
                    };
                }
                Attempt::Retry {
                    error,
                    retry_after_ms,
                } => (error, retry_after_ms),
            };
            metrics::counter!("homeport_webhook_failures_total").increment(1);
            failures = attempt;
            if attempt >= self.cfg.max_attempts {
                return Posted {
                    outcome: Outcome::Failed {
                        attempts: attempt,
                        error: format!("{error} (gave up after {attempt} attempts)"),
                    },
                    requests: attempt,
                    failed_attempts: failures,
                };
            }
            let mut wait_ms = backoff_delay_ms(
                failures,
                self.cfg.backoff_base_ms,
                self.cfg.backoff_max_ms,
                rand::random::<f64>(),
            );
            if let Some(asked) = retry_after_ms {
                wait_ms = wait_ms.max(asked.min(self.cfg.backoff_max_ms));
            }
            tracing::debug!(attempt, wait_ms, error = %error, "webhook POST failed; retrying");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }

    async fn attempt(&self, body: Bytes, key: &HeaderValue, version: Option<u64>) -> Attempt {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, key.clone());
        if let Some(v) = version {
            req = req.header(VERSION_HEADER, v);
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Attempt::Permanent(format!("could not build the request: {e}")),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(error_chain)?;
            let status = resp.status();
            let retry_after_ms = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|secs| secs.saturating_mul(1_000));
            // Read the answer so the connection can serve the next request; an oversized or
            // broken body does not change what the status said.
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, retry_after_ms, body))
        };
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Attempt::Retry {
                error: format!(
                    "no answer from {} within timeout_ms {}",
                    self.uri, self.cfg.timeout_ms
                ),
                retry_after_ms: None,
            },
            Ok(Err(e)) => Attempt::Retry {
                error: format!("POST {} failed: {e}", self.uri),
                retry_after_ms: None,
            },
            Ok(Ok((status, retry_after_ms, body))) => {
                let describe = || {
                    let end = body.len().min(MAX_ERROR_SNIPPET_BYTES);
                    format!(
                        "{} answered HTTP {status}: {}",
                        self.uri,
                        String::from_utf8_lossy(&body[..end]).trim()
                    )
                };
                match classify(status) {
                    StatusClass::Delivered => Attempt::Delivered,
                    StatusClass::Retry => Attempt::Retry {
                        error: describe(),
                        retry_after_ms,
                    },
                    StatusClass::Permanent => Attempt::Permanent(format!(
                        "{} (not retried: the service refused the request; fix it or the service, \
                         then re-drive)",
                        describe()
                    )),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Delivered,
    Failed { attempts: u32, error: String },
}

struct Posted {
    outcome: Outcome,
    requests: u32,
    failed_attempts: u32,
}

struct Sent {
    outcomes: Vec<Outcome>,
    requests: u64,
    failed_attempts: u64,
}

enum Attempt {
    Delivered,
    Retry {
        error: String,
        retry_after_ms: Option<u64>,
    },
    Permanent(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Delivered,
    Retry,
    Permanent,
}

/// 2xx delivers; 408, 429 and 5xx are worth another try; anything else (other 4xx, and redirects,
/// which are not followed) will not get better by repeating the same request.
fn classify(status: StatusCode) -> StatusClass {
    if status.is_success() {
        StatusClass::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        StatusClass::Retry
    } else {
        StatusClass::Permanent
    }
}

/// Wait after the `failures`-th failed attempt: `base * 2^(failures-1)` capped at `max`, then drawn
/// in its upper half by `jitter` in [0, 1).
fn backoff_delay_ms(failures: u32, base_ms: u64, max_ms: u64, jitter: f64) -> u64 {
    debug_assert!(failures >= 1);
    debug_assert!((0.0..1.0).contains(&jitter));
    let factor = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    let full = base_ms.saturating_mul(factor).min(max_ms);
    let half = full / 2;
    (full - half) + (half as f64 * jitter) as u64
}

/// Splits items of the given JSON sizes into consecutive requests: each body (`[a,b,...]`) at most
/// `max_bytes` and at most `max_items` items, except that an item too large on its own is sent
/// alone (the service then accepts it or answers 413, which dead-letters it).
fn chunk_ranges(sizes: &[usize], max_bytes: usize, max_items: usize) -> Vec<Range<usize>> {
    assert!(max_items >= 1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut body_bytes = 2; // "[]"
    for (i, &size) in sizes.iter().enumerate() {
        let n = i - start;
        let added = size + usize::from(n > 0);
        if n > 0 && (n >= max_items || body_bytes + added > max_bytes) {
            out.push(start..i);
            start = i;
            body_bytes = 2 + size;
        } else {
            body_bytes += added;
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// `<first id>..<last id>;count=<n>`: the same batch re-sent has the same key; within it, every
/// object carries its own `entry_id` for finer deduplication.
fn batch_idempotency_key(ids: &[&pb::EntryId]) -> String {
    match (ids.first(), ids.last()) {
        (Some(first), Some(last)) => format!(
            "{}..{};count={}",
            entry_id_string(first),
            entry_id_string(last),
            ids.len()
        ),
        _ => "empty;count=0".to_owned(),
    }
}

/// The JSON object a service receives for one change.
#[derive(Serialize)]
struct WireChange<'a> {
    uid: &'a str,
    key: &'a str,
    version: u64,
    deleted: bool,
    /// Standard base64 with padding; empty for a delete.
    value: String,
    commit_unix_ms: u64,
    home_region: &'a str,
    entry_id: String,
}

fn change_json(id: &pb::EntryId, c: &pb::Change) -> Vec<u8> {
    let w = WireChange {
        uid: &c.uid,
        key: &c.key,
        version: c.version,
        deleted: c.deleted,
        value: BASE64.encode(&c.value),
        commit_unix_ms: c.commit_unix_ms,
        home_region: &c.home_region,
        entry_id: entry_id_string(id),
    };
    // Serializing a struct of strings and integers cannot fail.
    serde_json::to_vec(&w).unwrap_or_default()
}

fn json_array(objects: &[Vec<u8>]) -> Bytes {
    let len = 2 + objects.iter().map(|o| o.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(o);
    }
    body.push(b']');
    Bytes::from(body)
}

fn error_chain(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ReplayError> + Send + 'static,
) -> Result<T, ReplayError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplayError::TaskFailed {
            what,
            message: e.to_string(),
        })?
}

const LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const BY_ENTRY_ID: TableDefinition<&str, u64> = TableDefinition::new("dead_letters_by_entry_id");

/// A dead letter as stored (JSON, so an operator can read the file's values with any redb tool).
/// `entry_id_pb` and `change_pb` are the protobuf messages in base64: they evolve as the wire does.
#[derive(Serialize, Deserialize)]
struct StoredLetter {
    entry_id: String,
    entry_id_pb: String,
    change_pb: String,
    attempts: u32,
    last_error: String,
    dead_lettered_unix_ms: u64,
}

struct NewLetter {
    entry_id: pb::EntryId,
    change: pb::Change,
    attempts: u32,
    error: String,
}

/// The durable store of changes a webhook could not deliver: a redb file of its own.
///
/// Positions grow with arrival; a change already in the store (same entry id) keeps its position
/// and has its attempts added up and its last error replaced, so re-delivery never duplicates.
pub struct DeadLetters {
    db: Database,
    path: PathBuf,
}

impl DeadLetters {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReplayError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    ReplayError::DeadLetterAlreadyOpen { path: path.clone() }
                }
                e => store_error(&path, "open the file", e),
            })?;
        let store = Self { db, path };
        // Create the tables, so readers never meet a missing one.
        let txn = store
            .db
            .begin_write()
            .map_err(|e| store.err("begin a write", e))?;
        txn.open_table(LETTERS)
            .map_err(|e| store.err("create its tables", e))?;
        txn.open_table(BY_ENTRY_ID)
            .map_err(|e| store.err("create its tables", e))?;
        txn.commit().map_err(|e| store.err("commit", e))?;
        let count = store.count()?;
        metrics::gauge!("homeport_webhook_dead_letters").set(count as f64);
        Ok(store)
    }

    pub fn count(&self) -> Result<u64, ReplayError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.err("begin a read", e))?;
        let table = txn
            .open_table(LETTERS)
            .map_err(|e| self.err("open its table", e))?;
        table.len().map_err(|e| self.err("count", e))
    }

    /// The oldest `max_letters` dead letters, oldest first.
    pub fn list(&self, max_letters: usize) -> Result<Vec<DeadLetter>, ReplayError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.err("begin a read", e))?;
        let table = txn
            .open_table(LETTERS)
            .map_err(|e| self.err("open its table", e))?;
        let mut out = Vec::new();
        for row in table
            .iter()
            .map_err(|e| self.err("read", e))?
            .take(max_letters)
        {
            let (k, v) = row.map_err(|e| self.err("read", e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Adds letters (or updates those already there); returns the count afterwards.
    fn add(&self, letters: Vec<NewLetter>) -> Result<u64, ReplayError> {
        let now_ms = now_unix_ms();
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin a write", e))?;
        let count = {
            let mut table = txn
                .open_table(LETTERS)
                .map_err(|e| self.err("open its table", e))?;
            let mut by_id = txn
                .open_table(BY_ENTRY_ID)
                .map_err(|e| self.err("open its table", e))?;
            let mut next = match table.last().map_err(|e| self.err("read", e))? {
                Some((k, _)) => k.value() + 1,
                None => 0,
            };
            for l in letters {
                let key = entry_id_string(&l.entry_id);
                let existing = by_id
                    .get(key.as_str())
                    .map_err(|e| self.err("read", e))?
                    .map(|g| g.value());
                let (position, attempts) = match existing {
                    Some(pos) => {
                        let before = match table.get(pos).map_err(|e| self.err("read", e))? {
                            Some(v) => self.decode(pos, v.value())?.attempts,
                            None => 0,
                        };
                        (pos, before.saturating_add(l.attempts))
                    }
                    None => {
                        let pos = next;
                        next += 1;
                        by_id
                            .insert(key.as_str(), pos)
                            .map_err(|e| self.err("write", e))?;
                        (pos, l.attempts)
                    }
                };
                let stored = StoredLetter {
                    entry_id: key,
                    entry_id_pb: BASE64.encode(l.entry_id.encode_to_vec()),
                    change_pb: BASE64.encode(l.change.encode_to_vec()),
                    attempts,
                    last_error: l.error,
                    dead_lettered_unix_ms: now_ms,
                };
                let bytes = serde_json::to_vec(&stored).unwrap_or_default();
                table
                    .insert(position, bytes.as_slice())
                    .map_err(|e| self.err("write", e))?;
            }
            table.len().map_err(|e| self.err("count", e))?
        };
        txn.commit().map_err(|e| self.err("commit", e))?;
        metrics::gauge!("homeport_webhook_dead_letters").set(count as f64);
        Ok(count)
    }

    /// Removes the letters at `positions` (absent ones are ignored); returns the count afterwards.
    fn remove(&self, positions: &[u64]) -> Result<u64, ReplayError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin a write", e))?;
        let count = {
            let mut table = txn
                .open_table(LETTERS)
                .map_err(|e| self.err("open its table", e))?;
            let mut by_id = txn
                .open_table(BY_ENTRY_ID)
                .map_err(|e| self.err("open its table", e))?;
            for &pos in positions {
                let removed = table
                    .remove(pos)
                    .map_err(|e| self.err("delete", e))?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = removed {
                    let letter = self.decode(pos, &bytes)?;
                    by_id
                        .remove(letter.idempotency_key().as_str())
                        .map_err(|e| self.err("delete", e))?;
                }
            }
            table.len().map_err(|e| self.err("count", e))?
        };
        txn.commit().map_err(|e| self.err("commit", e))?;
        metrics::gauge!("homeport_webhook_dead_letters").set(count as f64);
        Ok(count)
    }

    fn decode(&self, position: u64, bytes: &[u8]) -> Result<DeadLetter, ReplayError> {
        let corrupt = |problem: String| ReplayError::DeadLetterCorrupt {
            path: self.path.clone(),
            position,
            problem,
        };
        let s: StoredLetter =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let id_bytes = BASE64
            .decode(&s.entry_id_pb)
            .map_err(|e| corrupt(format!("entry id not base64: {e}")))?;
        let change_bytes = BASE64
            .decode(&s.change_pb)
            .map_err(|e| corrupt(format!("change not base64: {e}")))?;
        let entry_id = pb::EntryId::decode(id_bytes.as_slice())
            .map_err(|e| corrupt(format!("entry id not protobuf: {e}")))?;
        let change = pb::Change::decode(change_bytes.as_slice())
            .map_err(|e| corrupt(format!("change not protobuf: {e}")))?;
        Ok(DeadLetter {
            position,
            entry_id,
            change,
            attempts: s.attempts,
            last_error: s.last_error,
            dead_lettered_unix_ms: s.dead_lettered_unix_ms,
        })
    }

    fn err(&self, action: &'static str, e: impl Into<redb::Error>) -> ReplayError {
        store_error(&self.path, action, e)
    }
}

fn store_error(path: &Path, action: &'static str, e: impl Into<redb::Error>) -> ReplayError {
    ReplayError::DeadLetterStore {
        path: path.to_path_buf(),
        action,
        source: Box::new(e.into()),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_retry() {
        for (code, class) in [
            (200, StatusClass::Delivered),
            (204, StatusClass::Delivered),
            (408, StatusClass::Retry),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (503, StatusClass::Retry),
            (400, StatusClass::Permanent),
            (401, StatusClass::Permanent),
            (404, StatusClass::Permanent),
            (413, StatusClass::Permanent),
            (307, StatusClass::Permanent),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(classify(status), class, "HTTP {code}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_in_the_upper_half() {
        assert_eq!(backoff_delay_ms(1, 100, 10_000, 0.0), 50);
        assert_eq!(backoff_delay_ms(1, 100, 10_000, 0.999_999), 99);
        assert_eq!(backoff_delay_ms(2, 100, 10_000, 0.0), 100);
        assert_eq!(backoff_delay_ms(4, 100, 10_000, 0.5), 600);
        assert_eq!(backoff_delay_ms(8, 100, 10_000, 0.0), 5_000);
        assert_eq!(backoff_delay_ms(100, 100, 10_000, 0.0), 5_000);
        // No overflow however many failures or however large the base.
        assert_eq!(backoff_delay_ms(u32::MAX, 100, 10_000, 0.0), 5_000);
        assert_eq!(
            backoff_delay_ms(64, u64::MAX, u64::MAX, 0.0),
            u64::MAX / 2 + 1
        );
        assert_eq!(backoff_delay_ms(1, 1, 1, 0.9), 1);
    }

    #[test]
    fn chunks_respect_bytes_and_count_and_send_giants_alone() {
        // Bodies: "[" + items joined by "," + "]".
        assert_eq!(chunk_ranges(&[], 100, 10), Vec::<Range<usize>>::new());
        // 2 + 10 + 1 + 10 = 23 fits in 23; the third would need 34.
        assert_eq!(chunk_ranges(&[10, 10, 10], 23, 10), vec![0..2, 2..3]);
        assert_eq!(chunk_ranges(&[10, 10, 10], 22, 10), vec![0..1, 1..2, 2..3]);
        assert_eq!(
            chunk_ranges(&[1, 1, 1, 1, 1], 1_000, 2),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(
            chunk_ranges(&[5, 500, 5, 5], 100, 10),
            vec![0..1, 1..2, 2..4]
        );
    }

    #[test]
    fn json_objects_and_batch_keys_have_the_documented_shape() {
        let id = |seq| pb::EntryId {
            origin_region: "sh".into(),
            producer_incarnation: Bytes::from_static(&[0xab, 0x01]),
            sequence: seq,
        };
        let c = pb::Change {
            uid: "sh-1".into(),
            key: "profile".into(),
            version: 3,
            value: Bytes::from_static(b"hi"),
            deleted: false,
            commit_unix_ms: 17,
            home_region: "sh".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&change_json(&id(5), &c)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "uid": "sh-1", "key": "profile", "version": 3, "deleted": false, "value": "aGk=",
                "commit_unix_ms": 17, "home_region": "sh", "entry_id": "sh/ab01/5"
            })
        );
        assert_eq!(
            batch_idempotency_key(&[&id(5), &id(6), &id(9)]),
            "sh/ab01/5..sh/ab01/9;count=3"
        );
        assert_eq!(
            json_array(&[b"{}".to_vec(), b"1".to_vec()]),
            Bytes::from_static(b"[{},1]")
        );
        assert_eq!(json_array(&[]), Bytes::from_static(b"[]"));
    }
}
