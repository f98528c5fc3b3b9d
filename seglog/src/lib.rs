//! The storage of one queue node: an append-only log of opaque byte entries with node-local
//! offsets (0, 1, 2, ... one per entry), durable before it is acknowledged.
//!
//! It knows nothing of protobuf or the network; the `queue` crate serves it.
//!
//! # Guarantees
//! - [`Log::append`] resolves `Ok` only after the entries are on disk (`fdatasync`), unless
//!   [`FsyncMode::Never`] was chosen (benchmarks only).
//! - [`Log::read`] returns only durable entries (below the durable head), so a consumer never
//!   sees an offset that a crash could take back and hand to a different entry.
//! - Every frame read is verified (magic, length, offset, CRC32C). A bad frame is never served,
//!   nor anything after it: the read fails with [`LogError::Corrupt`], and so do all later
//!   reads at or after that offset, and appends, until a restart cuts the log there.
//! - After a failed write or fsync nothing is acked any more; the node must be restarted.
//!
//! # On-disk format
//! A log directory holds:
//! - `incarnation`: 16 random bytes as 32 lowercase hex digits and a newline. It names this
//!   log's *history*: whenever recovery has to drop acknowledged entries (damage), or finds no
//!   log at all, it writes a new one, and consumers then treat the node as empty and re-read it
//!   from its start offset. Written as `incarnation.tmp`, fsynced, renamed, directory fsynced.
//! - `<base offset, 20 decimal digits>.seg`: segment files, e.g. `00000000000000001000.seg`
//!   holds entries from offset 1000 on. Segments are contiguous: each starts where the
//!   previous one ends. Only the last one is written to.
//! - `*.tmp`: leftovers of an interrupted write; removed at start-up.
//!
//! A segment is a sequence of frames, nothing else (no file header, no padding). A frame is a
//! 20-byte header followed by the payload, all integers little-endian:
//!
//! | bytes  | field         | meaning                                                   |
//! |--------|---------------|-----------------------------------------------------------|
//! | 0..4   | `magic`       | [`FRAME_MAGIC`], the ASCII bytes `hpq1`                    |
//! | 4..8   | `payload_len` | u32, payload size in bytes                                |
//! | 8..16  | `offset`      | u64, the entry's node-local offset                        |
//! | 16..20 | `crc`         | u32, CRC32C (Castagnoli) of the 8 offset bytes + payload  |
//! | 20..   | payload       | `payload_len` opaque bytes                                |
//!
//! A segment rolls when the next frame would make it pass `segment_size_bytes`; a frame
//! larger than that goes alone into a fresh segment.
//!
//! # Recovery
//! [`open`] verifies every frame of every segment. At the first bad frame:
//! - in the last segment, with no valid frame (magic, CRC, larger offset) anywhere after it:
//!   a *torn tail* left by a crash during a group commit. Those bytes were never acked (the
//!   fsync had not returned) and never served (reads stop at the durable head), so the file
//!   is truncated there and the incarnation is kept.
//! - otherwise (valid frames follow, or it is in an older segment) acknowledged data is
//!   damaged: the log is cut at the bad frame (that segment truncated, later ones deleted) and
//!   a new incarnation is written first, so offsets may continue from the cut point safely.
//!
//! A flipped bit in the very last acked frame is indistinguishable from a torn tail and is
//! handled as one; the other two replicas of the group cover that entry.

mod frame;
mod index;
mod recovery;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use frame::{
    FRAME_HEADER_SIZE_BYTES, FRAME_MAGIC, Frame, FrameError, decode_frame, encode_frame,
};

use index::Shared;
use writer::{AppendRequest, Command, TrimRequest, TrimRule, Writer};

const INCARNATION_FILE: &str = "incarnation";
const TEMP_SUFFIX: &str = ".tmp";

/// Metric names, so the node's dashboards and this crate agree.
pub mod metric_names {
    pub const APPENDED_ENTRIES_TOTAL: &str = "homeport_queue_appended_entries_total";
    /// Payload bytes (frame headers not included).
    pub const APPENDED_BYTES_TOTAL: &str = "homeport_queue_appended_bytes_total";
    pub const FSYNC_SECONDS: &str = "homeport_queue_fsync_seconds";
    pub const GROUP_COMMIT_ENTRIES: &str = "homeport_queue_group_commit_entries";
    pub const SEGMENTS: &str = "homeport_queue_segments";
    pub const DISK_BYTES: &str = "homeport_queue_disk_bytes";
    pub const CORRUPTION_TOTAL: &str = "homeport_queue_corruption_total";
}

/// Whether a group commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// `fdatasync` before every ack. The only mode that keeps the "durable before ack" promise.
    Always,
    /// Ack once written to the page cache. A power loss can lose acked entries: benchmarks only.
    Never,
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncMode::Always => "always",
            FsyncMode::Never => "never",
        })
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Roll to a new segment before a frame would make the current one pass this size.
    /// Also the retention granularity: trimming deletes whole segments. At most `u32::MAX`.
    pub segment_size_bytes: u64,
    /// Larger entries are refused with [`LogError::EntryTooLarge`].
    pub max_entry_bytes: u32,
    pub fsync: FsyncMode,
    /// Appends queued for the writer beyond this are refused with [`LogError::Busy`] at once,
    /// rather than queueing until every caller times out.
    pub max_pending_appends: usize,
    /// Upper bound of entries per group commit (one write + one fsync). A single append with
    /// more entries still goes in one commit, alone.
    pub max_group_entries: usize,
}

/// Smallest segment that holds at least one frame with a one-byte payload.
const MIN_SEGMENT_SIZE_BYTES: u64 = FRAME_HEADER_SIZE_BYTES as u64 + 1;

impl LogConfig {
    fn validate(&self) -> Result<(), LogError> {
        let invalid = |reason: String| Err(LogError::InvalidConfig { reason });
        if !(MIN_SEGMENT_SIZE_BYTES..=u64::from(u32::MAX)).contains(&self.segment_size_bytes) {
            return invalid(format!(
                "segment_size_bytes = {} is outside {MIN_SEGMENT_SIZE_BYTES}..={} (frame positions are u32)",
                self.segment_size_bytes,
                u32::MAX
            ));
        }
        if self.max_entry_bytes == 0 {
            return invalid(
                "max_entry_bytes = 0 would refuse every entry; use at least 1".to_owned(),
            );
        }
        if self.max_pending_appends == 0 {
            return invalid(
                "max_pending_appends = 0 would refuse every append; use at least 1".to_owned(),
            );
        }
        if self.max_group_entries == 0 {
            return invalid(
                "max_group_entries = 0 cannot commit anything; use at least 1".to_owned(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "could not {op} {path}: {source} (check that the path exists, is writable, and the disk is healthy)"
    )]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "entry of {size_bytes} bytes is larger than max_entry_bytes = {max_bytes}; split it or raise the limit"
    )]
    EntryTooLarge { size_bytes: usize, max_bytes: u32 },
    #[error(
        "corrupt frame for offset {offset} at byte {position} of {segment}: {reason}; nothing at or after offset {offset} is served (restart the node: recovery cuts the log there and starts a new incarnation)"
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        position: u64,
        reason: String,
    },
    #[error(
        "offset {requested} was trimmed by retention; the log now starts at offset {start_offset}, read from there"
    )]
    Trimmed { requested: u64, start_offset: u64 },
    #[error(
        "offset {requested} is past the durable head {durable_head}; the cursor belongs to another incarnation of this node or is wrong"
    )]
    OffsetBeyondHead { requested: u64, durable_head: u64 },
    #[error(
        "{max_pending_appends} appends are already waiting for the disk; retry later or on another node"
    )]
    Busy { max_pending_appends: usize },
    #[error("the log is closed (its writer thread stopped); reopen it")]
    Closed,
    #[error(
        "the log refuses appends since a write or fsync failed ({reason}); after a failed fsync the page cache state is unknown, so restart the node to let recovery re-read what is really on disk"
    )]
    Failed { reason: String },
    #[error("invalid log configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error(
        "log directory {dir} is in use by another process (its LOCK file is locked); is this node already running?"
    )]
    Locked { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the first entry appended.
    pub first_offset: u64,
    /// One past the last entry appended.
    pub next_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub entries: Vec<(u64, Bytes)>,
    /// Where the next read should start: one past the last entry returned, or `from_offset`
    /// when nothing was returned.
    pub next_offset: u64,
    pub start_offset: u64,
    pub durable_head: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimOutcome {
    /// The first offset still stored.
    pub start_offset: u64,
    pub segments_deleted: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    pub incarnation: [u8; 16],
    pub start_offset: u64,
    pub durable_head: u64,
    pub segment_count: usize,
    pub disk_bytes: u64,
    pub corruption_detected: bool,
    /// A write or fsync failed: appends are refused until restart.
    pub failed: bool,
    pub fsync: FsyncMode,
    /// fsyncs issued by the writer since open (data and directory), for watching group commit.
    pub fsync_count: u64,
    /// Group commits completed since open (each answers one or more appends).
    pub group_commit_count: u64,
}

/// What recovery did, most severe first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryReason {
    /// Acked data was damaged; the log was cut there under a new incarnation.
    Damaged {
        segment: PathBuf,
        offset: u64,
        position: u64,
        detail: String,
    },
    /// Segments exist but the incarnation file is missing or unreadable; the data was kept
    /// under a new incarnation.
    IncarnationUnreadable { detail: String },
    /// No segments: a new, empty log.
    Fresh,
    /// A torn (never acked) tail was cut; the incarnation is kept.
    TornTail {
        segment: PathBuf,
        position: u64,
        detail: String,
    },
    /// Every frame verified; nothing changed.
    Clean,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub incarnation: [u8; 16],
    pub incarnation_changed: bool,
    pub reason: RecoveryReason,
    pub segments: usize,
    pub entries: u64,
    pub start_offset: u64,
    pub head_offset: u64,
    /// Bytes removed from disk by cuts (torn tail or damage, including deleted segments).
    pub truncated_bytes: u64,
    pub removed_segments: u32,
}

/// A handle to an open log. Cheap to clone; the writer thread stops when the last clone is
/// dropped (or [`Log::close`]d).
#[derive(Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

struct LogInner {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    max_entry_bytes: u32,
    max_pending_appends: usize,
    /// Resolves (with an error) when the writer thread exits and drops its sender.
    writer_exited: Mutex<Option<oneshot::Receiver<()>>>,
}

fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let io = |op| {
        move |source| LogError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    std::fs::File::open(dir)
        .map_err(io("open log directory"))?
        .sync_all()
        .map_err(io("fsync log directory"))
}

/// Opens (recovering) or creates the log in `cfg.dir`. Blocking: it reads every segment, so
/// call it from `spawn_blocking` in async code.
///
/// Two processes must never open the same directory; nothing here prevents it.
/// Name of the lock file that keeps a second process off a log directory.
const LOCK_FILE: &str = "LOCK";

/// Takes an exclusive advisory lock on `<dir>/LOCK`: two writers on one log would interleave
/// frames and reuse offsets, so a second `open` of the same directory fails instead.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, LogError> {
    std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
        op: "create log directory",
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LogError::Io {
            op: "open lock file",
            path: path.clone(),
            source,
        })?;
    // A log of this process that was just dropped releases the lock when its writer thread
    // notices, moments later; another live process holds it for good.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LogError::Io {
                    op: "lock",
                    path,
                    source,
                });
            }
        }
    }
}

/// How long `open` waits for a log directory's lock before reporting it in use.
const LOCK_WAIT_MS: u64 = 2_000;
const LOCK_RETRY_MS: u64 = 10;

pub fn open(cfg: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
    cfg.validate()?;
    if cfg.fsync == FsyncMode::Never {
        tracing::warn!(
            dir = %cfg.dir.display(),
            "!!! seglog fsync is OFF: appends are acked before they reach the disk and a power loss or kernel crash LOSES ACKNOWLEDGED ENTRIES. Use this for benchmarks only !!!"
        );
    }
    let lock = lock_dir(&cfg.dir)?;
    let recovered = recovery::recover(&cfg)?;
    let report = recovered.report;
    let next_offset = recovered.index.durable_head;
    metrics::gauge!(metric_names::SEGMENTS).set(recovered.index.segments.len() as f64);
    metrics::gauge!(metric_names::DISK_BYTES).set(recovered.index.disk_bytes as f64);
    let shared = Arc::new(Shared::new(
        cfg.dir.clone(),
        recovered.incarnation,
        cfg.fsync,
        recovered.index,
    ));
    let (tx, rx) = mpsc::channel(cfg.max_pending_appends);
    let (exit_tx, exit_rx) = oneshot::channel::<()>();
    let writer = Writer {
        shared: shared.clone(),
        rx,
        segment_size_bytes: cfg.segment_size_bytes,
        max_group_entries: cfg.max_group_entries,
        active: recovered.active,
        next_offset,
    };
    std::thread::Builder::new()
        .name("seglog-writer".to_owned())
        .spawn(move || {
            // Dropped when the thread ends, even by a panic: that is the exit signal.
            let _exit_tx = exit_tx;
            // The directory stays locked for as long as the writer may touch it.
            let _lock = lock;
            writer.run();
        })
        .map_err(|source| LogError::Io {
            op: "start the writer thread for",
            path: cfg.dir.clone(),
            source,
        })?;
    let log = Log {
        inner: Arc::new(LogInner {
            tx,
            shared,
            max_entry_bytes: cfg.max_entry_bytes,
            max_pending_appends: cfg.max_pending_appends,
            writer_exited: Mutex::new(Some(exit_rx)),
        }),
    };
    Ok((log, report))
}

impl Log {
    /// Appends `entries` at consecutive offsets and resolves once they are durable (one fsync
    /// shared with every append in the same group commit). An empty `entries` is a no-op that
    /// reports the durable head.
    ///
    /// Cancel-safe in the sense that dropping the future never corrupts the log, but the
    /// entries may still be written (and later read) without the caller learning their offsets.
    pub async fn append(&self, entries: Vec<Bytes>) -> Result<AppendOutcome, LogError> {
        let inner = &self.inner;
        if let Some(e) = entries
            .iter()
            .find(|e| e.len() > inner.max_entry_bytes as usize)
        {
            return Err(LogError::EntryTooLarge {
                size_bytes: e.len(),
                max_bytes: inner.max_entry_bytes,
            });
        }
        if let Some(reason) = inner.shared.failed_reason() {
            return Err(LogError::Failed { reason });
        }
        // Entries appended after a known corruption could never be read back, so acking them
        // would promise something this node cannot deliver.
        if let Some(c) = inner.shared.corruption() {
            return Err(c.to_error());
        }
        if entries.is_empty() {
            let head = inner.shared.read_index().durable_head;
            return Ok(AppendOutcome {
                first_offset: head,
                next_offset: head,
            });
        }
        let (reply, rx) = oneshot::channel();
        inner
            .tx
            .try_send(Command::Append(AppendRequest { entries, reply }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Busy {
                    max_pending_appends: inner.max_pending_appends,
                },
                mpsc::error::TrySendError::Closed(_) => LogError::Closed,
            })?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Reads durable entries from `from_offset` on: at most `max_entries`, and at most
    /// `max_bytes` of payload, except that one entry is always returned if one exists, however
    /// large. Never blocks on the writer's fsync. Blocking file I/O (positional reads, usually
    /// served from the page cache).
    pub fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<ReadOutcome, LogError> {
        self.inner.shared.read(from_offset, max_bytes, max_entries)
    }

    /// The durable head, for long-polls: wait until it passes your cursor, then read.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.head_tx.subscribe()
    }

    pub fn incarnation(&self) -> [u8; 16] {
        self.inner.shared.incarnation
    }

    /// Deletes every whole segment whose entries are all below `offset` (never the active one).
    pub async fn trim_below(&self, offset: u64) -> Result<TrimOutcome, LogError> {
        self.trim(TrimRule::Below(offset)).await
    }

    /// Deletes the oldest segments whose last write is older than `max_age` (by file mtime),
    /// stopping at the first younger one, and never the active one. So data in the active
    /// segment stays until it rolls.
    pub async fn trim_older_than(&self, max_age: Duration) -> Result<TrimOutcome, LogError> {
        self.trim(TrimRule::OlderThan(max_age)).await
    }

    async fn trim(&self, rule: TrimRule) -> Result<TrimOutcome, LogError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Trim(TrimRequest { rule, reply }))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    pub fn status(&self) -> LogStatus {
        let shared = &self.inner.shared;
        let (start_offset, durable_head, segment_count, disk_bytes) = {
            let index = shared.read_index();
            (
                index.start_offset(),
                index.durable_head,
                index.segments.len(),
                index.disk_bytes,
            )
        };
        LogStatus {
            incarnation: shared.incarnation,
            start_offset,
            durable_head,
            segment_count,
            disk_bytes,
            corruption_detected: shared.corruption().is_some(),
            failed: shared.failed_reason().is_some(),
            fsync: shared.fsync,
            fsync_count: shared
                .fsync_count
                .load(std::sync::atomic::Ordering::Relaxed),
            group_commit_count: shared
                .group_commit_count
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Drops this handle; if it was the last one, waits until the writer thread has finished
    /// the commit in progress and stopped, so the directory can be reopened at once.
    pub async fn close(self) {
        let Some(inner) = Arc::into_inner(self.inner) else {
            return;
        };
        let LogInner {
            tx, writer_exited, ..
        } = inner;
        drop(tx);
        let exited = writer_exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(exited) = exited {
            let _ = exited.await;
        }
    }
}

#[cfg(test)]
mod tests;
