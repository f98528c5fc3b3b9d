//! Replay workers: pull one other region's queue (every group, every node), decide with
//! `homeport_replay::plan` what may be applied, and apply it together with the checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use homeport_queue::consumer::{self, ConsumedBatch, ConsumerOptions, RegionConsumer};
use homeport_store::ApplyBatch;
use tokio::sync::watch;

use crate::Shared;

/// Backoff between retries of a store apply that failed (e.g. the store is busy): the same batch
/// is retried until it applies, never skipped.
const APPLY_RETRY_BACKOFF_MS: u64 = 200;
/// How often the lag table's view of the source's queue nodes is refreshed between batches: a
/// cut-off source delivers no batch at all, and its nodes must still show as unreachable (and
/// its backlog as unknown) in `/v1/status` rather than as they were before the cut.
const NODE_STATE_REFRESH_MS: u64 = 500;
/// Consumed batches waiting for the store that are applied together (see `run_source`). The
/// consumer's channel holds 16, so a worker that is behind takes them all.
const MAX_MERGED_BATCHES: usize = 16;

pub(crate) async fn run_source(
    shared: Arc<Shared>,
    source: String,
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let store = shared.store.clone();
    let cursors = match tokio::task::spawn_blocking(move || store.checkpoints()).await {
        Ok(Ok(all)) => all
            .into_iter()
            .filter(|c| c.source_region == source)
            .map(|c| (c.group, consumer::cursor_from_pb(&c.cursor)))
            .collect::<HashMap<_, _>>(),
        Ok(Err(e)) => {
            tracing::error!(%source, error = %e, "cannot read checkpoints; replay of this source is stopped");
            return;
        }
        Err(e) => {
            tracing::error!(%source, error = %e, "checkpoint task failed");
            return;
        }
    };
    let replay = &shared.deployment.replay;
    let mut opts = ConsumerOptions::from_settings(&shared.deployment.queue);
    opts.batch_max_entries = replay.batch_max_entries;
    opts.wait_ms = replay.read_wait_ms;
    opts.retry_backoff_ms = replay.retry_backoff_ms;
    opts.max_retry_backoff_ms = replay.max_retry_backoff_ms;
    let mut consumer = RegionConsumer::start(&shared.deployment, &source, &endpoint, cursors, opts);
    tracing::info!(region = %shared.region, %source, "replay worker started");
    let mut refresh = tokio::time::interval(Duration::from_millis(NODE_STATE_REFRESH_MS));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = refresh.tick() => {
                shared.lag.record_nodes(&source, consumer.node_states());
                continue;
            }
            // Cancel-safe: an mpsc receive.
            b = consumer.next_batch() => b,
        };
        let Some(batch) = batch else {
            tracing::error!(%source, "consumer stopped");
            return;
        };
        // Behind (catching up), more batches are already waiting: apply them together, one
        // transaction per group and the groups side by side, so the store commits many changes
        // per fsync instead of `batch_max_entries`. Batches of a group stay in order (merged in
        // order, the cursor of the last), and groups have independent checkpoints. A webhook
        // sink keeps the configured batch size: it is what the external service accepts.
        let mut batches = vec![batch];
        if shared.webhook.is_none() {
            while batches.len() < MAX_MERGED_BATCHES {
                match consumer.try_next_batch() {
                    Some(b) => batches.push(b),
                    None => break,
                }
            }
        }
        let merged = merge_by_group(batches);
        let applied = futures::future::join_all(
            merged
                .into_iter()
                .map(|b| apply_one(&shared, &source, b, stop.clone())),
        )
        .await;
        if applied.iter().any(Option::is_none) {
            return;
        }
        shared.lag.record_nodes(&source, consumer.node_states());
    }
}

/// Consumed batches of one source merged per group: entries in delivery order, and the cursor of
/// the group's last batch (which covers all of them).
fn merge_by_group(batches: Vec<ConsumedBatch>) -> Vec<ConsumedBatch> {
    let mut merged: Vec<ConsumedBatch> = Vec::new();
    for b in batches {
        match merged.iter_mut().find(|m| m.group == b.group) {
            Some(m) => {
                m.entries.extend(b.entries);
                m.cursor = b.cursor;
            }
            None => merged.push(b),
        }
    }
    merged
}

/// Plans, delivers (webhook) and applies one group's batch with its checkpoint, retrying until it
/// applies; `None` when asked to stop first.
async fn apply_one(
    shared: &Shared,
    source: &str,
    batch: ConsumedBatch,
    mut stop: watch::Receiver<bool>,
) -> Option<()> {
    let entries: Vec<_> = batch.entries.iter().map(|e| e.entry.clone()).collect();
    let planned = homeport_replay::plan::plan_batch(source, &entries, shared.homes.as_ref());
    for r in &planned.refused {
        metrics::counter!("homeport_replay_refused_total", "source" => source.to_owned())
            .increment(1);
        tracing::warn!(
            %source, uid = %r.uid, key = %r.key, claimed_home = %r.claimed_home,
            actual_home = ?r.actual_home,
            "refused a change from a region that is not the user's home"
        );
    }
    // With a webhook sink, the changes go out first (delivered or dead-lettered), and the
    // store only records the checkpoint: a crash in between re-delivers, never skips.
    let (changes, delivered) = match &shared.webhook {
        None => (planned.changes, None),
        Some(sink) => {
            let items: Vec<_> = planned
                .change_ids
                .into_iter()
                .zip(planned.changes)
                .collect();
            let report = loop {
                match sink.deliver(&items).await {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::error!(%source, error = %e, "webhook delivery could not finish (dead-letter store?); retrying");
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => return None,
                            _ = tokio::time::sleep(Duration::from_millis(APPLY_RETRY_BACKOFF_MS)) => {}
                        }
                    }
                }
            };
            (Vec::new(), Some(report.delivered))
        }
    };
    let apply = ApplyBatch {
        source_region: source.to_owned(),
        group: batch.group.clone(),
        changes,
        cursor: consumer::cursor_to_pb(&batch.cursor),
        heartbeat_unix_ms: planned.heartbeat_unix_ms,
        applied_entries: planned.entries,
    };
    let outcome = loop {
        match shared.store.apply(apply.clone()).await {
            Ok(o) => break o,
            Err(e) => {
                tracing::warn!(%source, error = %e, "apply failed; retrying the same batch");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return None,
                    _ = tokio::time::sleep(Duration::from_millis(APPLY_RETRY_BACKOFF_MS)) => {}
                }
            }
        }
    };
    let now_ms = homeport_queue::entry::now_unix_ms();
    let offset_ms = shared.lag.clock_offset_ms(source);
    let apply_delay =
        metrics::histogram!("homeport_replay_apply_delay_seconds", "source" => source.to_owned());
    for c in &apply.changes {
        // Home's commit time moved to this region's clock: commit-to-applied delay.
        let delay_ms = now_ms as i64 + offset_ms - c.commit_unix_ms as i64;
        apply_delay.record(delay_ms.max(0) as f64 / 1_000.0);
    }
    shared.lag.record_applied(
        source,
        homeport_queue::entry::now_unix_ms(),
        planned.entries,
        delivered.unwrap_or(outcome.applied),
        planned.refused.len() as u64,
        planned.heartbeat_unix_ms,
    );
    Some(())
}
