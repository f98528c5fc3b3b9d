//! The writer thread: the only code that opens write transactions.
//!
//! A dedicated OS thread rather than a tokio task because it spends its life in blocking redb
//! commits (fsync); one writer also gives a total order of writes without a lock, and makes group
//! commit natural: whatever queued up during one commit goes into the next transaction.
//!
//! Every request in a group commit gets its own outcome. A request that fails on its own (a
//! version mismatch, an undecodable stored value, a reused idempotency key) fails *before* it
//! changes anything, so the others still commit; a storage error fails the whole transaction and
//! therefore every request in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use homeport_wire::pb;
use prost::Message;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::tables::{
    self, CHECKPOINTS, FORMAT_VERSION, IDEMPOTENCY, IDEMPOTENCY_BY_TIME, META, OUTBOX, RECORDS,
    TOMBSTONES, decode, decode_record, meta,
};
use crate::{
    ApplyBatch, ApplyOutcome, MAX_PURGE_ROWS_PER_CALL, SharedStats, StoreConfig, StoreError,
    WriteOp, WriteOutcome, WriteRequest, digest, metric_names,
};

/// A request and where its answer goes; `outcome` is filled in the transaction and sent only
/// after the commit (an answer means durable).
pub(crate) struct Pending<Req, T> {
    pub req: Req,
    reply: oneshot::Sender<Result<T, StoreError>>,
    outcome: Option<Result<T, StoreError>>,
}

impl<Req, T> Pending<Req, T> {
    pub fn new(req: Req, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            req,
            reply,
            outcome: None,
        }
    }

    fn finish(self, failed: Option<&StoreError>) {
        let result = match (failed, self.outcome) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(outcome)) => outcome,
            (None, None) => {
                // `transact` sets every outcome or fails as a whole.
                debug_assert!(false, "a request of a committed transaction has no outcome");
                Err(StoreError::Invalid {
                    what: "request",
                    problem: "the store committed without deciding it (a bug); retry".into(),
                })
            }
        };
        // The caller may have given up waiting; the outcome is durable either way.
        let _ = self.reply.send(result);
    }
}

pub(crate) enum Command {
    Write(Pending<WriteRequest, WriteOutcome>),
    Apply(Pending<ApplyBatch, ApplyOutcome>),
    RemoveOutbox(Pending<Vec<u64>, ()>),
    PurgeTombstones(Pending<u64, u64>),
    PurgeIdempotency(Pending<u64, u64>),
}

impl Command {
    fn finish(self, failed: Option<&StoreError>) {
        match self {
            Command::Write(p) => p.finish(failed),
            Command::Apply(p) => p.finish(failed),
            Command::RemoveOutbox(p) => p.finish(failed),
            Command::PurgeTombstones(p) => p.finish(failed),
            Command::PurgeIdempotency(p) => p.finish(failed),
        }
    }
}

/// Counters kept in the `meta` table and written in the same transaction as what they count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub live_records: u64,
    pub tombstones: u64,
    pub outbox_len: u64,
    /// Never reused, even once the outbox is empty: a late `remove_outbox` of an old seq must not
    /// hit a newer entry.
    pub next_outbox_seq: u64,
    /// The highest version of any purged tombstone. A replica that has not purged that tombstone
    /// yet would skip a re-created record whose versions restart at 1; starting above the floor
    /// keeps "versions only grow" true across purges.
    pub version_floor: u64,
}

/// How a request failed: on its own (nothing of it was written), or taking the transaction down.
enum Fail {
    Request(StoreError),
    Txn(StoreError),
}

/// A request's own outcome, or the error that fails the whole transaction.
fn settle<T>(r: Result<T, Fail>) -> Result<Result<T, StoreError>, StoreError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Fail::Request(e)) => Ok(Err(e)),
        Err(Fail::Txn(e)) => Err(e),
    }
}

/// What a record was before a change, as far as indexes and counters care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prior {
    version: u64,
    deleted: bool,
    commit_unix_ms: u64,
}

impl Prior {
    fn of(rec: &pb::StoredRecord) -> Self {
        Prior {
            version: rec.version,
            deleted: rec.deleted,
            commit_unix_ms: rec.commit_unix_ms,
        }
    }
}

type Key2 = (&'static str, &'static str);

struct Tables<'t> {
    records: Table<'t, Key2, &'static [u8]>,
    tombstones: Table<'t, (u64, &'static str, &'static str), u64>,
    outbox: Table<'t, u64, &'static [u8]>,
    idempotency: Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    idempotency_by_time: Table<'t, (u64, &'static str, &'static str, &'static str), ()>,
    checkpoints: Table<'t, Key2, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, path: &Path) -> Result<Self, StoreError> {
        let e = |e| StoreError::storage(path, "open its tables", e);
        Ok(Tables {
            records: txn.open_table(RECORDS).map_err(e)?,
            tombstones: txn.open_table(TOMBSTONES).map_err(e)?,
            outbox: txn.open_table(OUTBOX).map_err(e)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(e)?,
            idempotency_by_time: txn.open_table(IDEMPOTENCY_BY_TIME).map_err(e)?,
            checkpoints: txn.open_table(CHECKPOINTS).map_err(e)?,
            meta: txn.open_table(META).map_err(e)?,
        })
    }

    fn load_counters(&self, path: &Path) -> Result<Counters, StoreError> {
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(self
                .meta
                .get(name)
                .map_err(|e| StoreError::storage(path, "read its counters", e))?
                .map(|g| g.value())
                .unwrap_or(0))
        };
        Ok(Counters {
            live_records: get(meta::LIVE_RECORDS)?,
            tombstones: get(meta::TOMBSTONES)?,
            outbox_len: get(meta::OUTBOX_LEN)?,
            next_outbox_seq: get(meta::NEXT_OUTBOX_SEQ)?,
            version_floor: get(meta::VERSION_FLOOR)?,
        })
    }

    fn store_counters(&mut self, c: &Counters) -> Result<(), redb::StorageError> {
        for (name, v) in [
            (meta::LIVE_RECORDS, c.live_records),
            (meta::TOMBSTONES, c.tombstones),
            (meta::OUTBOX_LEN, c.outbox_len),
            (meta::NEXT_OUTBOX_SEQ, c.next_outbox_seq),
            (meta::VERSION_FLOOR, c.version_floor),
        ] {
            self.meta.insert(name, v)?;
        }
        Ok(())
    }
}

/// Creates the tables, checks the format version and reads the counters (at open).
pub(crate) fn init(db: &Database, path: &Path) -> Result<Counters, StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::storage(path, "begin a write", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::storage(path, "set durability", e))?;
    let counters = {
        let mut t = Tables::open(&txn, path)?;
        let found = t
            .meta
            .get(meta::FORMAT_VERSION)
            .map_err(|e| StoreError::storage(path, "read its format version", e))?
            .map(|g| g.value());
        match found {
            Some(v) if v > FORMAT_VERSION => {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: v,
                    supported: FORMAT_VERSION,
                });
            }
            Some(_) => {}
            None => {
                t.meta
                    .insert(meta::FORMAT_VERSION, FORMAT_VERSION)
                    .map_err(|e| StoreError::storage(path, "write its format version", e))?;
            }
        }
        t.load_counters(path)?
    };
    txn.commit()
        .map_err(|e| StoreError::storage(path, "commit", e))?;
    Ok(counters)
}

pub(crate) struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    region: String,
    max_batch_requests: usize,
    rx: mpsc::Receiver<Command>,
    counters: Counters,
    stats: Arc<SharedStats>,
}

impl Writer {
    pub fn new(
        db: Arc<Database>,
        cfg: StoreConfig,
        rx: mpsc::Receiver<Command>,
        counters: Counters,
        stats: Arc<SharedStats>,
    ) -> Self {
        Self {
            db,
            path: cfg.path,
            region: cfg.region,
            max_batch_requests: cfg.max_batch_requests,
            rx,
            counters,
            stats,
        }
    }

    /// Runs until every `Store` handle is gone and the queue is drained.
    pub fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            // Group commit: take what is already queued, without waiting for more.
            while batch.len() < self.max_batch_requests {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        tracing::debug!(path = %self.path.display(), "store writer stopped: every handle was dropped");
    }

    fn commit(&mut self, mut batch: Vec<Command>) {
        let started = Instant::now();
        let mut next = self.counters.clone();
        let failed = self.transact(&mut batch, &mut next).err();
        let n = batch.len() as u64;
        if let Some(e) = &failed {
            tracing::error!(error = %e, requests = n, "store commit failed; every request in it failed");
        } else {
            self.counters = next;
            self.stats.publish(&self.counters);
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.batched_requests.fetch_add(n, Ordering::Relaxed);
            self.stats
                .largest_batch_requests
                .fetch_max(n, Ordering::Relaxed);
            let (mut applied, mut skipped) = (0, 0);
            for cmd in &batch {
                if let Command::Apply(p) = cmd
                    && let Some(Ok(o)) = &p.outcome
                {
                    applied += o.applied;
                    skipped += o.skipped_older + o.skipped_invalid;
                }
            }
            metrics::counter!(metric_names::COMMITS_TOTAL).increment(1);
            metrics::histogram!(metric_names::COMMIT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(metric_names::BATCH_REQUESTS).record(n as f64);
            metrics::counter!(metric_names::APPLIED_TOTAL).increment(applied);
            metrics::counter!(metric_names::SKIPPED_TOTAL).increment(skipped);
        }
        for cmd in batch {
            cmd.finish(failed.as_ref());
        }
    }

    fn transact(&self, batch: &mut [Command], c: &mut Counters) -> Result<(), StoreError> {
        let path = self.path.as_path();
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::storage(path, "begin a write", e))?;
        // Immediate is redb's default; spelled out because "answered means on disk" depends on it.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::storage(path, "set durability", e))?;
        {
            let mut t = Tables::open(&txn, path)?;
            for cmd in batch.iter_mut() {
                match cmd {
                    Command::Write(p) => {
                        p.outcome = Some(settle(self.write_one(&mut t, &p.req, c))?);
                    }
                    Command::Apply(p) => {
                        p.outcome = Some(settle(self.apply_one(&mut t, &p.req, c))?);
                    }
                    Command::RemoveOutbox(p) => {
                        p.outcome = Some(settle(self.remove_outbox(&mut t, &p.req, c))?);
                    }
                    Command::PurgeTombstones(p) => {
                        p.outcome = Some(settle(self.purge_tombstones(&mut t, p.req, c))?);
                    }
                    Command::PurgeIdempotency(p) => {
                        p.outcome = Some(settle(self.purge_idempotency(&mut t, p.req))?);
                    }
                }
            }
            t.store_counters(c)
                .map_err(|e| StoreError::storage(path, "write its counters", e))?;
        }
        txn.commit()
            .map_err(|e| StoreError::storage(path, "commit", e))
    }

    fn txn_err(&self, action: &'static str) -> impl Fn(redb::StorageError) -> Fail + '_ {
        move |e| Fail::Txn(StoreError::storage(&self.path, action, e))
    }

    fn read_record(
        &self,
        t: &Tables,
        uid: &str,
        key: &str,
    ) -> Result<Option<pb::StoredRecord>, Fail> {
        let Some(guard) = t
            .records
            .get((uid, key))
            .map_err(self.txn_err("read a record"))?
        else {
            return Ok(None);
        };
        decode_record(&self.path, uid, key, guard.value())
            .map(Some)
            .map_err(Fail::Request)
    }

    /// Stores `rec` as the new state of (uid, key), keeping the tombstone index and the counters
    /// in step. Only storage errors can happen here.
    fn put_record(
        &self,
        t: &mut Tables,
        c: &mut Counters,
        uid: &str,
        key: &str,
        prior: Option<Prior>,
        rec: &pb::StoredRecord,
    ) -> Result<(), Fail> {
        debug_assert!(
            prior.is_none_or(|p| rec.version > p.version),
            "a record's version must only grow"
        );
        let err = self.txn_err("write a record");
        t.records
            .insert((uid, key), rec.encode_to_vec().as_slice())
            .map_err(&err)?;
        if let Some(p) = prior
            && p.deleted
        {
            t.tombstones
                .remove((p.commit_unix_ms, uid, key))
                .map_err(&err)?;
        }
        if rec.deleted {
            t.tombstones
                .insert((rec.commit_unix_ms, uid, key), rec.version)
                .map_err(&err)?;
        }
        match (prior.map(|p| p.deleted), rec.deleted) {
            (None, false) => c.live_records += 1,
            (None, true) => c.tombstones += 1,
            (Some(false), true) => {
                decrement(&mut c.live_records);
                c.tombstones += 1;
            }
            (Some(true), false) => {
                decrement(&mut c.tombstones);
                c.live_records += 1;
            }
            (Some(_), _) => {}
        }
        Ok(())
    }

    fn write_one(
        &self,
        t: &mut Tables,
        req: &WriteRequest,
        c: &mut Counters,
    ) -> Result<WriteOutcome, Fail> {
        let (uid, key) = (req.uid.as_str(), req.key.as_str());
        let request_hash = digest::request_hash(&req.op, req.expected_version);
        if let Some(idem) = req.idempotency_key.as_deref() {
            let first = match t
                .idempotency
                .get((uid, key, idem))
                .map_err(self.txn_err("read an idempotency key"))?
            {
                Some(g) => Some(
                    decode::<pb::StoredIdempotency>(
                        &self.path,
                        "idempotency",
                        || format!("({uid:?}, {key:?}, {idem:?})"),
                        g.value(),
                    )
                    .map_err(Fail::Request)?,
                ),
                None => None,
            };
            if let Some(first) = first {
                if first.request_hash.as_ref() != request_hash.as_slice() {
                    return Err(Fail::Request(StoreError::Invalid {
                        what: "idempotency key",
                        problem: format!(
                            "{idem:?} was first used for a different write of ({uid:?}, {key:?}) \
                             (another value, operation or If-Match); use a new key for a new write"
                        ),
                    }));
                }
                let unshipped = t
                    .outbox
                    .get(first.outbox_seq)
                    .map_err(self.txn_err("read the outbox"))?
                    .is_some();
                return Ok(WriteOutcome::Replayed {
                    version: first.version,
                    outbox_seq: unshipped.then_some(first.outbox_seq),
                });
            }
        }

        let current = self.read_record(t, uid, key)?;
        let current_version = current.as_ref().map_or(0, |r| r.version);
        if let Some(expected) = req.expected_version {
            let absent = current.as_ref().is_none_or(|r| r.deleted);
            if expected != current_version && !(expected == 0 && absent) {
                return Ok(WriteOutcome::VersionMismatch {
                    current: current_version,
                });
            }
        }
        let base = match &current {
            Some(r) => r.version,
            None => c.version_floor,
        };
        let Some(version) = base.checked_add(1) else {
            return Err(Fail::Request(StoreError::Invalid {
                what: "write",
                problem: format!("({uid:?}, {key:?}) has used every version up to u64::MAX"),
            }));
        };

        let (value, deleted) = match &req.op {
            WriteOp::Put(v) => (v.clone(), false),
            WriteOp::Delete => (Bytes::new(), true),
        };
        let change = pb::Change {
            uid: req.uid.clone(),
            key: req.key.clone(),
            version,
            value: value.clone(),
            deleted,
            commit_unix_ms: req.now_unix_ms,
            home_region: self.region.clone(),
        };
        let entry = pb::Entry {
            id: Some(req.entry_id.clone()),
            kind: pb::EntryKind::Change as i32,
            origin_unix_ms: req.now_unix_ms,
            payload: Bytes::from(change.encode_to_vec()),
        };
        let entry = Bytes::from(entry.encode_to_vec());
        let rec = pb::StoredRecord {
            version,
            value,
            deleted,
            home_region: self.region.clone(),
            commit_unix_ms: req.now_unix_ms,
        };

        // Nothing was written before this point: every `Fail::Request` above left no trace.
        let outbox_seq = c.next_outbox_seq;
        c.next_outbox_seq += 1;
        c.outbox_len += 1;
        t.outbox
            .insert(outbox_seq, entry.as_ref())
            .map_err(self.txn_err("write the outbox"))?;
        self.put_record(t, c, uid, key, current.as_ref().map(Prior::of), &rec)?;
        if let Some(idem) = req.idempotency_key.as_deref() {
            let first = pb::StoredIdempotency {
                version,
                outbox_seq,
                created_unix_ms: req.now_unix_ms,
                request_hash: Bytes::copy_from_slice(&request_hash),
            };
            let err = self.txn_err("write an idempotency key");
            t.idempotency
                .insert((uid, key, idem), first.encode_to_vec().as_slice())
                .map_err(&err)?;
            t.idempotency_by_time
                .insert((req.now_unix_ms, uid, key, idem), ())
                .map_err(&err)?;
        }
        Ok(WriteOutcome::Written {
            version,
            outbox_seq,
            entry,
        })
    }

    fn apply_one(
        &self,
        t: &mut Tables,
        batch: &ApplyBatch,
        c: &mut Counters,
    ) -> Result<ApplyOutcome, Fail> {
        let mut outcome = ApplyOutcome::default();
        // Pass 1 reads and decides without writing, so an undecodable stored record fails this
        // batch alone. `seen` holds what earlier changes of this batch will have written.
        let mut seen: HashMap<(&str, &str), Option<Prior>> = HashMap::new();
        let mut plan: Vec<(&pb::Change, Option<Prior>)> = Vec::new();
        for ch in &batch.changes {
            if ch.uid.is_empty() || ch.key.is_empty() {
                tracing::warn!(source = %batch.source_region, uid = %ch.uid, key = %ch.key,
                    "dropped a replayed change with an empty uid or key");
                outcome.skipped_invalid += 1;
                continue;
            }
            let id = (ch.uid.as_str(), ch.key.as_str());
            let prior = match seen.get(&id) {
                Some(p) => *p,
                None => self.read_record(t, id.0, id.1)?.as_ref().map(Prior::of),
            };
            if ch.version > prior.map_or(0, |p| p.version) {
                plan.push((ch, prior));
                seen.insert(
                    id,
                    Some(Prior {
                        version: ch.version,
                        deleted: ch.deleted,
                        commit_unix_ms: ch.commit_unix_ms,
                    }),
                );
                outcome.applied += 1;
            } else {
                seen.insert(id, prior);
                outcome.skipped_older += 1;
            }
        }
        let cp_key = (batch.source_region.as_str(), batch.group.as_str());
        let old: pb::StoredCheckpoint = match t
            .checkpoints
            .get(cp_key)
            .map_err(self.txn_err("read a checkpoint"))?
        {
            Some(g) => decode(
                &self.path,
                "checkpoints",
                || format!("{cp_key:?}"),
                g.value(),
            )
            .map_err(Fail::Request)?,
            None => pb::StoredCheckpoint::default(),
        };

        // Pass 2: only storage errors from here on.
        for (ch, prior) in plan {
            let rec = pb::StoredRecord {
                version: ch.version,
                value: if ch.deleted {
                    Bytes::new()
                } else {
                    ch.value.clone()
                },
                deleted: ch.deleted,
                home_region: ch.home_region.clone(),
                commit_unix_ms: ch.commit_unix_ms,
            };
            self.put_record(t, c, &ch.uid, &ch.key, prior, &rec)?;
        }
        let (has_heartbeat, heartbeat_unix_ms) = match batch.heartbeat_unix_ms {
            // A heartbeat time never goes back, even if an older one is delivered late.
            Some(hb) => (true, hb.max(old.heartbeat_unix_ms)),
            None => (old.has_heartbeat, old.heartbeat_unix_ms),
        };
        let cp = pb::StoredCheckpoint {
            cursor: Some(batch.cursor.clone()),
            has_heartbeat,
            heartbeat_unix_ms,
            applied_entries: old.applied_entries.saturating_add(batch.applied_entries),
            updated_unix_ms: now_unix_ms(),
        };
        t.checkpoints
            .insert(cp_key, cp.encode_to_vec().as_slice())
            .map_err(self.txn_err("write a checkpoint"))?;
        Ok(outcome)
    }

    fn remove_outbox(&self, t: &mut Tables, seqs: &[u64], c: &mut Counters) -> Result<(), Fail> {
        for &seq in seqs {
            if t.outbox
                .remove(seq)
                .map_err(self.txn_err("remove outbox entries"))?
                .is_some()
            {
                decrement(&mut c.outbox_len);
            }
        }
        Ok(())
    }

    fn purge_tombstones(
        &self,
        t: &mut Tables,
        before_unix_ms: u64,
        c: &mut Counters,
    ) -> Result<u64, Fail> {
        let err = self.txn_err("purge tombstones");
        let mut victims: Vec<(u64, String, String, u64)> = Vec::new();
        for row in t
            .tombstones
            .range(..(before_unix_ms, "", ""))
            .map_err(&err)?
            .take(MAX_PURGE_ROWS_PER_CALL as usize)
        {
            let (k, v) = row.map_err(&err)?;
            let (ms, uid, key) = k.value();
            victims.push((ms, uid.to_owned(), key.to_owned(), v.value()));
        }
        let mut purged = 0;
        for (ms, uid, key, version) in victims {
            t.tombstones
                .remove((ms, uid.as_str(), key.as_str()))
                .map_err(&err)?;
            // The index and the record are written together, so they agree unless the file is
            // damaged: then leave the record alone rather than delete a live value.
            let still_that_tombstone =
                match t.records.get((uid.as_str(), key.as_str())).map_err(&err)? {
                    Some(g) => tables::decode_record(&self.path, &uid, &key, g.value())
                        .map(|r| r.deleted && r.version == version)
                        .unwrap_or(false),
                    None => false,
                };
            if !still_that_tombstone {
                tracing::error!(%uid, %key, version, "tombstone index disagrees with the record; index row dropped, record kept");
                continue;
            }
            t.records
                .remove((uid.as_str(), key.as_str()))
                .map_err(&err)?;
            decrement(&mut c.tombstones);
            c.version_floor = c.version_floor.max(version);
            purged += 1;
        }
        Ok(purged)
    }

    fn purge_idempotency(&self, t: &mut Tables, before_unix_ms: u64) -> Result<u64, Fail> {
        let err = self.txn_err("purge idempotency keys");
        let mut victims: Vec<(u64, String, String, String)> = Vec::new();
        for row in t
            .idempotency_by_time
            .range(..(before_unix_ms, "", "", ""))
            .map_err(&err)?
            .take(MAX_PURGE_ROWS_PER_CALL as usize)
        {
            let (k, _) = row.map_err(&err)?;
            let (ms, uid, key, idem) = k.value();
            victims.push((ms, uid.to_owned(), key.to_owned(), idem.to_owned()));
        }
        let purged = victims.len() as u64;
        for (ms, uid, key, idem) in victims {
            t.idempotency_by_time
                .remove((ms, uid.as_str(), key.as_str(), idem.as_str()))
                .map_err(&err)?;
            t.idempotency
                .remove((uid.as_str(), key.as_str(), idem.as_str()))
                .map_err(&err)?;
        }
        Ok(purged)
    }
}

fn decrement(counter: &mut u64) {
    debug_assert!(*counter > 0, "a store counter would go below zero");
    *counter = counter.saturating_sub(1);
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOp;

    fn setup(dir: &Path) -> Writer {
        let path = dir.join("store.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let counters = init(&db, &path).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let cfg = StoreConfig {
            path,
            region: "sh".into(),
            max_uid_bytes: 64,
            max_key_bytes: 64,
            max_value_bytes: 64,
            max_batch_requests: 64,
            max_queued_requests: 64,
        };
        Writer::new(db, cfg, rx, counters, Arc::new(SharedStats::default()))
    }

    fn write(
        key: &str,
        expected: Option<u64>,
    ) -> (Command, oneshot::Receiver<Result<WriteOutcome, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let req = WriteRequest {
            uid: "sh-1".into(),
            key: key.into(),
            op: WriteOp::Put(Bytes::from_static(b"v")),
            expected_version: expected,
            idempotency_key: None,
            entry_id: pb::EntryId {
                origin_region: "sh".into(),
                ..Default::default()
            },
            now_unix_ms: 1,
        };
        (Command::Write(Pending::new(req, tx)), rx)
    }

    /// The group-commit contract, made deterministic by handing the writer one batch: one
    /// transaction, and each request's own outcome (a failed condition fails only that request;
    /// a later request sees an earlier one's write).
    #[test]
    fn one_commit_carries_each_requests_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = setup(dir.path());
        let (a, a_rx) = write("a", None);
        let (b, b_rx) = write("a", Some(7));
        let (c, c_rx) = write("a", Some(1));
        let (d, d_rx) = write("b", Some(0));
        w.commit(vec![a, b, c, d]);
        let version = |rx: oneshot::Receiver<Result<WriteOutcome, StoreError>>| match rx
            .blocking_recv()
            .unwrap()
            .unwrap()
        {
            WriteOutcome::Written { version, .. } => Ok(version),
            WriteOutcome::VersionMismatch { current } => Err(current),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(version(a_rx), Ok(1));
        assert_eq!(version(b_rx), Err(1));
        assert_eq!(version(c_rx), Ok(2));
        assert_eq!(version(d_rx), Ok(1));
        assert_eq!(w.stats.commits.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats.batched_requests.load(Ordering::Relaxed), 4);
        assert_eq!(
            w.counters,
            Counters {
                live_records: 2,
                outbox_len: 3,
                next_outbox_seq: 3,
                ..Counters::default()
            }
        );
    }
}
