//! Periodic clean-up: idempotency records past their TTL, and tombstones every region has passed.
//!
//! A tombstone may go only when no older change of its record can still arrive anywhere: its
//! commit time must be older than `tombstone_retention_secs` AND older than the newest heartbeat
//! every region has applied from every other region (so every queue has delivered past it). If
//! any region's status is missing or stale, nothing is purged.

use std::sync::Arc;
use std::time::Duration;

use homeport_queue::entry::now_unix_ms;
use tokio::sync::watch;

use crate::Shared;

/// How often the janitor runs.
const JANITOR_INTERVAL_MS: u64 = 60_000;
/// Purge calls per run and kind (each removes at most `homeport_store::MAX_PURGE_ROWS_PER_CALL`).
const MAX_PURGE_CALLS_PER_RUN: usize = 100;
/// Other regions' statuses older than this many status intervals do not count.
const STATUS_FRESHNESS_INTERVALS: u64 = 5;

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(JANITOR_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = now_unix_ms();
        let settings = &shared.deployment.store;
        let idem_cutoff = now.saturating_sub(settings.idempotency_ttl_secs * 1_000);
        purge(&shared, "idempotency records", |s| async move {
            s.store.purge_idempotency_older_than(idem_cutoff).await
        })
        .await;
        let freshness_ms = shared.deployment.replay.status_interval_ms * STATUS_FRESHNESS_INTERVALS;
        let Some(passed) = shared.lag.passed_by_all(now, freshness_ms) else {
            tracing::debug!("not purging tombstones: not every region has reported its progress");
            continue;
        };
        let cutoff = passed.min(now.saturating_sub(settings.tombstone_retention_secs * 1_000));
        purge(&shared, "tombstones", |s| async move {
            s.store.purge_tombstones_older_than(cutoff).await
        })
        .await;
    }
}

async fn purge<F, Fut>(shared: &Arc<Shared>, what: &str, call: F)
where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<u64, homeport_store::StoreError>>,
{
    let mut total = 0;
    for _ in 0..MAX_PURGE_CALLS_PER_RUN {
        match call(shared.clone()).await {
            Ok(n) => {
                total += n;
                if n < homeport_store::MAX_PURGE_ROWS_PER_CALL {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging {what} failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(purged = total, "purged {what}");
    }
}
