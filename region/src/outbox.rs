//! The outbox: every change written at home is also an outbox entry (same transaction) until a
//! queue group commits it. The remover deletes the slots of committed entries in batches; the
//! shipper re-appends entries a crash or a slow queue left behind, with their original ids.

use std::sync::Arc;
use std::time::Duration;

use homeport_queue::entry;
use tokio::sync::{mpsc, watch};

use crate::Shared;

/// Most outbox slots removed in one store request.
const MAX_REMOVE_BATCH: usize = 4_096;
/// Most outbox entries the shipper re-appends per scan (one producer batch at a time).
const MAX_SHIP_SCAN_ENTRIES: usize = 1_024;

pub(crate) async fn remover(shared: Arc<Shared>, mut rx: mpsc::Receiver<u64>) {
    let mut batch = Vec::with_capacity(MAX_REMOVE_BATCH);
    while rx.recv_many(&mut batch, MAX_REMOVE_BATCH).await > 0 {
        let seqs = std::mem::take(&mut batch);
        if let Err(e) = shared.store.remove_outbox(seqs).await {
            // Left in the outbox, they are re-shipped later: duplicates, never loss.
            tracing::warn!(error = %e, "could not remove shipped outbox entries");
        }
    }
}

pub(crate) async fn shipper(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let replay = &shared.deployment.replay;
    let mut tick = tokio::time::interval(Duration::from_millis(replay.outbox_scan_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = ship_once(&shared).await {
            tracing::warn!(error = %e, "outbox shipping failed; will retry");
        }
    }
}

/// Re-appends outbox entries older than `outbox_min_age_ms` (younger ones are presumably still
/// being appended by the request that wrote them).
async fn ship_once(shared: &Shared) -> anyhow::Result<()> {
    let store = shared.store.clone();
    let pending =
        tokio::task::spawn_blocking(move || store.outbox(MAX_SHIP_SCAN_ENTRIES)).await??;
    metrics::gauge!("homeport_region_outbox_entries").set(pending.len() as f64);
    let cutoff = entry::now_unix_ms().saturating_sub(shared.deployment.replay.outbox_min_age_ms);
    let mut seqs = Vec::new();
    let mut entries = Vec::new();
    let mut size_bytes = 0usize;
    let max_batch_bytes = shared.deployment.queue.max_batch_bytes as usize;
    for (seq, bytes) in pending {
        let old_enough = match entry::decode(&bytes) {
            Ok(e) => e.origin_unix_ms <= cutoff,
            Err(e) => {
                // Written by this region's own store: a bug or disk damage. Keep it for an operator.
                tracing::error!(seq, error = %e, "undecodable outbox entry left in place");
                false
            }
        };
        if !old_enough {
            continue;
        }
        if size_bytes + bytes.len() > max_batch_bytes {
            break;
        }
        size_bytes += bytes.len();
        seqs.push(seq);
        entries.push(bytes);
    }
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len();
    shared.producer.append_encoded(entries).await?;
    shared.store.remove_outbox(seqs).await?;
    metrics::counter!("homeport_region_outbox_reshipped_total").increment(n as u64);
    tracing::info!(entries = n, "re-shipped outbox entries");
    Ok(())
}
