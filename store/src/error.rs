//! What can go wrong in the store, each message saying what happened and what to do.
//!
//! `StoreError` is `Clone` (its sources sit behind `Arc`) because one failed group commit fails
//! every request that was in it, and each of them gets the same error.

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An input exceeds a configured limit.
    #[error(
        "{what} is {size_bytes} bytes, over {limit_name} = {max_bytes} bytes; send a shorter {what}, \
         or raise {limit_name} in the [store] section of the deployment config"
    )]
    TooLarge {
        what: &'static str,
        size_bytes: usize,
        max_bytes: usize,
        limit_name: &'static str,
    },
    /// A request the store cannot carry out as asked (empty uid, reused idempotency key, ...).
    #[error("invalid {what}: {problem}")]
    Invalid { what: &'static str, problem: String },
    /// The writer's queue is full: the store is taking requests faster than the disk commits them.
    #[error(
        "the store is busy: {max_queued_requests} requests (max_queued_requests) already wait for \
         the writer; retry shortly"
    )]
    Busy { max_queued_requests: usize },
    /// The writer thread is gone: every handle was dropped or it stopped after a bug.
    #[error(
        "the store at {} is closed: its writer thread has stopped (see the log for why); \
         restart the process",
        path.display()
    )]
    Closed { path: PathBuf },
    #[error(
        "the store file {} is already open by another store in this or another process; \
         stop the other one, or give each region process its own data_dir",
        path.display()
    )]
    AlreadyOpen { path: PathBuf },
    #[error(
        "the store file {} has format version {found}, this build reads up to {supported}; \
         run a homeport release that knows format {found}",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("invalid store configuration: {problem}")]
    Config { problem: String },
    /// redb failed (I/O, a full disk, a damaged file).
    #[error(
        "the store at {} could not {action}: {source}; check the disk (space, permissions, \
         errors in the kernel log)",
        path.display()
    )]
    Storage {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error("the store at {} could not {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Bytes read from the file do not decode: disk damage or a bug in a writer.
    #[error(
        "the store at {} holds undecodable bytes in table {table} at key {key}: {problem}; \
         restore the region from a replica or a backup",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        problem: String,
    },
}

impl StoreError {
    pub(crate) fn storage(
        path: &std::path::Path,
        action: &'static str,
        e: impl Into<redb::Error>,
    ) -> Self {
        StoreError::Storage {
            path: path.to_path_buf(),
            action,
            source: Arc::new(e.into()),
        }
    }
}
