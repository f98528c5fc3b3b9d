use std::path::PathBuf;

/// Everything that can go wrong in replay's own code. Network failures of a webhook are *not*
/// errors: they end in retries or a dead letter; an error means the caller must not checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("webhook configuration: `{field}` {problem}")]
    InvalidWebhookConfig {
        field: &'static str,
        problem: String,
    },

    #[error(
        "dead-letter store {path}: the file is already open (by another webhook sink or process); \
         give every sink its own `dead_letter_path`"
    )]
    DeadLetterAlreadyOpen { path: PathBuf },

    #[error(
        "dead-letter store {path}: could not {action}: {source}; check that the directory exists, \
         is writable and the disk is not full"
    )]
    DeadLetterStore {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    #[error(
        "dead-letter store {path}: record {position} is unreadable ({problem}); it was written by \
         an incompatible version or damaged; move the file aside to start a fresh store"
    )]
    DeadLetterCorrupt {
        path: PathBuf,
        position: u64,
        problem: String,
    },

    #[error(
        "lag thresholds: need 0 <= warn ({warn_secs}s) <= crit ({crit_secs}s), both finite; \
         pass e.g. `--warn 5 --crit 30`"
    )]
    InvalidThresholds { warn_secs: f64, crit_secs: f64 },

    #[error(
        "clock sample ignored: the local clock went backwards during a status round trip (sent at \
         {sent_local_ms} ms, received at {received_local_ms} ms); check time synchronisation on this host"
    )]
    ClockWentBackwards {
        sent_local_ms: u64,
        received_local_ms: u64,
    },

    #[error("{what} failed: {message}; this is a bug, please report it")]
    TaskFailed { what: &'static str, message: String },
}
