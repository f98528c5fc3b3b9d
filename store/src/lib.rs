//! A region's record store on redb: versioned records and tombstones, the outbox of changes made at
//! home, apply-if-newer for changes replayed from other regions (with the consumer checkpoint in
//! the same transaction), idempotency keys, and an order-independent digest to prove convergence.
//!
//! One writer thread owns every write transaction and batches whatever requests queued up while
//! the previous commit was fsyncing into the next single transaction (group commit): one fsync for
//! many requests, each still getting its own outcome. Reads go straight to redb (MVCC snapshots)
//! from any thread and never wait for the writer.
//!
//! Versions: home gives a record `stored version + 1` (a tombstone keeps its version, so a record
//! re-created after a delete continues the sequence; a record that does not exist at all starts
//! above the highest purged tombstone, see [`Store::purge_tombstones_older_than`]). Replicas apply a
//! change only if its version is higher than what they hold, so they never go back.

mod digest;
mod error;
mod tables;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use homeport_wire::pb;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;

use tables::{CHECKPOINTS, OUTBOX, RECORDS, decode, decode_record};
use writer::{Command, Counters, Pending, Writer};

/// Longest idempotency key accepted, in bytes (it is part of a redb key, so it is bounded).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most tombstones or idempotency rows one purge call removes, so a purge never holds up the
/// writes queued behind it for long; call again while a purge returns this many.
pub const MAX_PURGE_ROWS_PER_CALL: u64 = 10_000;

/// Metric names, so dashboards and tests spell them one way.
pub mod metric_names {
    pub const COMMITS_TOTAL: &str = "homeport_store_commits_total";
    pub const COMMIT_SECONDS: &str = "homeport_store_commit_seconds";
    pub const BATCH_REQUESTS: &str = "homeport_store_batch_requests";
    pub const APPLIED_TOTAL: &str = "homeport_store_applied_total";
    pub const SKIPPED_TOTAL: &str = "homeport_store_skipped_total";
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The redb file (created if missing; its directory must exist).
    pub path: PathBuf,
    /// This region's name: the home region of every record written here, and the origin every
    /// outbox entry must carry.
    pub region: String,
    pub max_uid_bytes: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most requests one group commit (one transaction, one fsync) takes.
    pub max_batch_requests: usize,
    /// Most requests waiting for the writer; beyond it `write` answers `Busy` at once.
    pub max_queued_requests: usize,
}

impl StoreConfig {
    fn validate(&self) -> Result<(), StoreError> {
        let mut problems = Vec::new();
        if self.region.is_empty() {
            problems.push("region is empty; name the region this store belongs to".to_owned());
        }
        for (name, v) in [
            ("max_uid_bytes", self.max_uid_bytes),
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_batch_requests", self.max_batch_requests),
            ("max_queued_requests", self.max_queued_requests),
        ] {
            if v == 0 {
                problems.push(format!("{name} is 0; it must be at least 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Config {
                problem: problems.join("; "),
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put(Bytes),
    Delete,
}

#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub uid: String,
    pub key: String,
    pub op: WriteOp,
    /// Write only if the record is at this version now; `Some(0)` means "must not exist"
    /// (missing or deleted).
    pub expected_version: Option<u64>,
    /// A retry with the same key for the same (uid, key) gets the first outcome, and no write.
    pub idempotency_key: Option<String>,
    /// The outbox entry's id, assigned by the caller's producer (its origin must be this region).
    pub entry_id: pb::EntryId,
    pub now_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durable at home. `entry` (an encoded `pb::Entry` of kind CHANGE) is in the outbox at
    /// `outbox_seq` until `remove_outbox` is called with it.
    Written {
        version: u64,
        outbox_seq: u64,
        entry: Bytes,
    },
    /// The idempotency key was seen for this record: the first write's outcome; `outbox_seq` is
    /// set while its outbox entry is still unshipped.
    Replayed {
        version: u64,
        outbox_seq: Option<u64>,
    },
    /// `expected_version` did not match; nothing was written.
    VersionMismatch { current: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub version: u64,
    /// `None`: a tombstone (the record was deleted at `version`).
    pub value: Option<Bytes>,
    pub home_region: String,
    pub commit_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApplyBatch {
    pub source_region: String,
    pub group: String,
    /// In queue order; each is applied only if newer than the stored record.
    pub changes: Vec<pb::Change>,
    /// The consumer's position after this batch, stored in the same transaction.
    pub cursor: pb::ConsumerCursor,
    /// Origin time of the newest heartbeat in the batch.
    pub heartbeat_unix_ms: Option<u64>,
    /// Queue entries this batch consumed (changes, heartbeats, refused, ...), added to the total.
    pub applied_entries: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u64,
    /// Equal or older than the stored version: a re-delivery, or overtaken by a newer change.
    pub skipped_older: u64,
    /// Changes with an empty uid or key: no home writes them, so they are dropped and logged.
    pub skipped_invalid: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointView {
    pub source_region: String,
    pub group: String,
    pub cursor: pb::ConsumerCursor,
    /// Origin time of the newest heartbeat ever applied from this group (None: none yet).
    pub heartbeat_unix_ms: Option<u64>,
    /// Queue entries consumed from this group, in total.
    pub applied_entries: u64,
    pub updated_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digest {
    /// 32 hex digits; equal in two regions iff they hold the same records (and tombstones).
    pub total: String,
    /// Rows covered: live records and tombstones.
    pub records: u64,
    /// uid → that user's digest.
    pub per_user: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Live records (tombstones not included).
    pub records: u64,
    pub tombstones: u64,
    pub outbox_len: u64,
    /// Transactions the writer committed.
    pub commits: u64,
    /// Requests those transactions carried; `batched_requests / commits` is the group-commit factor.
    pub batched_requests: u64,
    /// The most requests one commit carried.
    pub largest_batch_requests: u64,
    /// Size of the redb file (0 if it cannot be read).
    pub file_size_bytes: u64,
}

/// Counters the writer publishes after each commit, for `stats()` without a transaction.
#[derive(Default)]
pub(crate) struct SharedStats {
    pub live_records: AtomicU64,
    pub tombstones: AtomicU64,
    pub outbox_len: AtomicU64,
    pub commits: AtomicU64,
    pub batched_requests: AtomicU64,
    pub largest_batch_requests: AtomicU64,
}

impl SharedStats {
    fn publish(&self, c: &Counters) {
        self.live_records.store(c.live_records, Ordering::Relaxed);
        self.tombstones.store(c.tombstones, Ordering::Relaxed);
        self.outbox_len.store(c.outbox_len, Ordering::Relaxed);
    }
}

/// A handle on one open store. Clones share the database and its one writer; the file closes
/// when the last clone is dropped (the drop waits for the writer to finish what is queued).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

// Fields drop in order: the sender first (so the writer sees the channel close and drains),
// then the guard, which waits for the writer thread to end.
struct Inner {
    tx: mpsc::Sender<Command>,
    _writer: WriterGuard,
    db: Arc<Database>,
    cfg: StoreConfig,
    stats: Arc<SharedStats>,
}

struct WriterGuard(Option<JoinHandle<()>>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take()
            && handle.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// Opens (or creates) the store: blocking, so call it from `spawn_blocking` in async code.
pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
    cfg.validate()?;
    let path = cfg.path.clone();
    let db = Database::builder().create(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.clone() },
        e => StoreError::storage(&path, "open the file", e),
    })?;
    let db = Arc::new(db);
    let counters = writer::init(&db, &path)?;
    let stats = Arc::new(SharedStats::default());
    stats.publish(&counters);
    let (tx, rx) = mpsc::channel(cfg.max_queued_requests);
    let writer = Writer::new(db.clone(), cfg.clone(), rx, counters, stats.clone());
    let handle = std::thread::Builder::new()
        .name("homeport-store-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Io {
            path: path.clone(),
            action: "start its writer thread",
            source: Arc::new(e),
        })?;
    tracing::info!(path = %path.display(), region = %cfg.region, "store opened");
    Ok(Store {
        inner: Arc::new(Inner {
            tx,
            _writer: WriterGuard(Some(handle)),
            db,
            cfg,
            stats,
        }),
    })
}

impl Store {
    pub fn path(&self) -> &Path {
        &self.inner.cfg.path
    }

    /// Writes at home: the record and its outbox entry in one transaction. Answers only once
    /// that transaction is durable. Refuses at once with `Busy` when the writer's queue is full.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteOutcome, StoreError> {
        self.validate_write(&req)?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .try_send(Command::Write(Pending::new(req, reply)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy {
                    max_queued_requests: self.inner.cfg.max_queued_requests,
                },
                mpsc::error::TrySendError::Closed(_) => self.closed(),
            })?;
        rx.await.map_err(|_| self.closed())?
    }

    /// The latest local state of a record (a tombstone shows as `value: None`).
    pub fn read(&self, uid: &str, key: &str) -> Result<Option<RecordView>, StoreError> {
        let path = self.path();
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| StoreError::storage(path, "begin a read", e))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| StoreError::storage(path, "open its records table", e))?;
        let Some(guard) = table
            .get((uid, key))
            .map_err(|e| StoreError::storage(path, "read a record", e))?
        else {
            return Ok(None);
        };
        let rec = decode_record(path, uid, key, guard.value())?;
        Ok(Some(RecordView {
            version: rec.version,
            value: (!rec.deleted).then_some(rec.value),
            home_region: rec.home_region,
            commit_unix_ms: rec.commit_unix_ms,
        }))
    }

    /// Applies replayed changes (each only if newer) and stores the cursor, heartbeat time and
    /// entry count for (source_region, group), all in one transaction. Waits for room in the
    /// writer's queue rather than failing: replay is background work and should slow down.
    pub async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Apply(Pending::new(batch, reply)))
            .await?;
        rx.await.map_err(|_| self.closed())?
    }

    pub fn checkpoint(
        &self,
        source_region: &str,
        group: &str,
    ) -> Result<Option<pb::ConsumerCursor>, StoreError> {
        let path = self.path();
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| StoreError::storage(path, "begin a read", e))?;
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| StoreError::storage(path, "open its checkpoints table", e))?;
        let Some(guard) = table
            .get((source_region, group))
            .map_err(|e| StoreError::storage(path, "read a checkpoint", e))?
        else {
            return Ok(None);
        };
        let cp: pb::StoredCheckpoint = decode(
            path,
            "checkpoints",
            || format!("({source_region:?}, {group:?})"),
            guard.value(),
        )?;
        Ok(Some(cp.cursor.unwrap_or_default()))
    }

    /// Every stored checkpoint, ordered by (source region, group).
    pub fn checkpoints(&self) -> Result<Vec<CheckpointView>, StoreError> {
        let path = self.path();
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| StoreError::storage(path, "begin a read", e))?;
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| StoreError::storage(path, "open its checkpoints table", e))?;
        let mut out = Vec::new();
        for row in table
            .iter()
            .map_err(|e| StoreError::storage(path, "read checkpoints", e))?
        {
            let (k, v) = row.map_err(|e| StoreError::storage(path, "read checkpoints", e))?;
            let (source_region, group) = k.value();
            let cp: pb::StoredCheckpoint = decode(
                path,
                "checkpoints",
                || format!("({source_region:?}, {group:?})"),
                v.value(),
            )?;
            out.push(CheckpointView {
                source_region: source_region.to_owned(),
                group: group.to_owned(),
                cursor: cp.cursor.unwrap_or_default(),
                heartbeat_unix_ms: cp.has_heartbeat.then_some(cp.heartbeat_unix_ms),
                applied_entries: cp.applied_entries,
                updated_unix_ms: cp.updated_unix_ms,
            });
        }
        Ok(out)
    }

    /// The oldest `limit` outbox entries (seq, encoded `pb::Entry`), oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let path = self.path();
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| StoreError::storage(path, "begin a read", e))?;
        let table = txn
            .open_table(OUTBOX)
            .map_err(|e| StoreError::storage(path, "open its outbox table", e))?;
        let mut out = Vec::new();
        for row in table
            .iter()
            .map_err(|e| StoreError::storage(path, "read the outbox", e))?
            .take(limit)
        {
            let (k, v) = row.map_err(|e| StoreError::storage(path, "read the outbox", e))?;
            out.push((k.value(), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    /// Removes shipped outbox entries (absent seqs are ignored). Batched with other requests.
    pub async fn remove_outbox(&self, seqs: Vec<u64>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::RemoveOutbox(Pending::new(seqs, reply)))
            .await?;
        rx.await.map_err(|_| self.closed())?
    }

    /// The order-independent digest of every record and tombstone, in total and per user.
    /// Reads one snapshot, so it is consistent even while writes go on.
    pub fn digest(&self) -> Result<Digest, StoreError> {
        self.scan_digest(None).map(|(d, _)| d)
    }

    /// One user's digest (the same value as `digest().per_user[uid]`; all zeros for no records).
    pub fn user_digest(&self, uid: &str) -> Result<String, StoreError> {
        self.scan_digest(Some(uid))
            .map(|(_, user)| digest::hex(user))
    }

    fn scan_digest(&self, only_uid: Option<&str>) -> Result<(Digest, u128), StoreError> {
        let path = self.path();
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| StoreError::storage(path, "begin a read", e))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| StoreError::storage(path, "open its records table", e))?;
        let rows = match only_uid {
            Some(uid) => table.range((uid, "")..),
            None => table.iter(),
        }
        .map_err(|e| StoreError::storage(path, "read records", e))?;
        let mut total: u128 = 0;
        let mut records = 0u64;
        let mut per_user: BTreeMap<String, String> = BTreeMap::new();
        // Rows come sorted by uid, so one user's sum is finished when the uid changes.
        let mut current: Option<(String, u128)> = None;
        for row in rows {
            let (k, v) = row.map_err(|e| StoreError::storage(path, "read records", e))?;
            let (uid, key) = k.value();
            if only_uid.is_some_and(|only| only != uid) {
                break;
            }
            let rec = decode_record(path, uid, key, v.value())?;
            let h = digest::record_hash(uid, key, rec.version, rec.deleted, &rec.value);
            total = total.wrapping_add(h);
            records += 1;
            match &mut current {
                Some((u, sum)) if u == uid => *sum = sum.wrapping_add(h),
                _ => {
                    if let Some((u, sum)) = current.take() {
                        per_user.insert(u, digest::hex(sum));
                    }
                    current = Some((uid.to_owned(), h));
                }
            }
        }
        if let Some((u, sum)) = current.take() {
            per_user.insert(u, digest::hex(sum));
        }
        Ok((
            Digest {
                total: digest::hex(total),
                records,
                per_user,
            },
            total,
        ))
    }

    /// Deletes tombstones committed before `unix_ms` (at most [`MAX_PURGE_ROWS_PER_CALL`]);
    /// returns how many. The caller must pass a time every region has applied past: a replica
    /// that still lacks the delete would otherwise keep the old value forever. Home never reuses
    /// a purged version: a record created later starts above every purged version.
    pub async fn purge_tombstones_older_than(&self, unix_ms: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::PurgeTombstones(Pending::new(unix_ms, reply)))
            .await?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Forgets idempotency keys first used before `unix_ms` (at most
    /// [`MAX_PURGE_ROWS_PER_CALL`]); a retry after that is a new write.
    pub async fn purge_idempotency_older_than(&self, unix_ms: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::PurgeIdempotency(Pending::new(unix_ms, reply)))
            .await?;
        rx.await.map_err(|_| self.closed())?
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.stats;
        StoreStats {
            records: s.live_records.load(Ordering::Relaxed),
            tombstones: s.tombstones.load(Ordering::Relaxed),
            outbox_len: s.outbox_len.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            batched_requests: s.batched_requests.load(Ordering::Relaxed),
            largest_batch_requests: s.largest_batch_requests.load(Ordering::Relaxed),
            file_size_bytes: std::fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0),
        }
    }

    async fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.inner.tx.send(cmd).await.map_err(|_| self.closed())
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.inner.cfg.path.clone(),
        }
    }

    fn validate_write(&self, req: &WriteRequest) -> Result<(), StoreError> {
        let cfg = &self.inner.cfg;
        check_name("uid", &req.uid, cfg.max_uid_bytes, "max_uid_bytes")?;
        check_name("key", &req.key, cfg.max_key_bytes, "max_key_bytes")?;
        if let WriteOp::Put(v) = &req.op
            && v.len() > cfg.max_value_bytes
        {
            return Err(StoreError::TooLarge {
                what: "value",
                size_bytes: v.len(),
                max_bytes: cfg.max_value_bytes,
                limit_name: "max_value_bytes",
            });
        }
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() {
                return Err(StoreError::Invalid {
                    what: "idempotency key",
                    problem: "is empty; send a unique non-empty key per logical write, or none"
                        .into(),
                });
            }
            if k.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(StoreError::Invalid {
                    what: "idempotency key",
                    problem: format!(
                        "it is {} bytes, over the fixed limit of {MAX_IDEMPOTENCY_KEY_BYTES} \
                         bytes; use a shorter key (a UUID is 36 bytes)",
                        k.len()
                    ),
                });
            }
        }
        if req.entry_id.origin_region != cfg.region {
            return Err(StoreError::Invalid {
                what: "entry id",
                problem: format!(
                    "its origin region is {:?} but this store belongs to region {:?}; \
                     a change is written only at its home and shipped under that region's name",
                    req.entry_id.origin_region, cfg.region
                ),
            });
        }
        Ok(())
    }
}

fn check_name(
    what: &'static str,
    s: &str,
    max_bytes: usize,
    limit_name: &'static str,
) -> Result<(), StoreError> {
    if s.is_empty() {
        return Err(StoreError::Invalid {
            what,
            problem: format!(
                "the {what} is empty; every record is named by a non-empty uid and key"
            ),
        });
    }
    if s.len() > max_bytes {
        return Err(StoreError::TooLarge {
            what,
            size_bytes: s.len(),
            max_bytes,
            limit_name,
        });
    }
    Ok(())
}
