//! The region's view of replication lag from every other region, and the two background loops
//! that feed it from the network: clock sampling (status round trips to other regions) and
//! retention reports (telling source queue nodes how far this region has durably applied).
//! All arithmetic is `homeport_replay::lag`'s; this file holds state and does I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeport_config::Deployment;
use homeport_queue::client::NodeClient;
use homeport_queue::consumer::NodeState;
use homeport_queue::entry::now_unix_ms;
use homeport_replay::lag::{self as lagmath, ClockEstimator, ClockSample, PairTracker};
use homeport_wire::{Identity, Role, pb};
use serde_json::json;
use tokio::sync::watch;

use crate::Shared;

/// Per request to another region's status endpoint or a queue node.
const RPC_TIMEOUT_MS: u64 = 2_000;

struct SourceState {
    tracker: PairTracker,
    clock: ClockEstimator,
    nodes: HashMap<String, Vec<NodeState>>,
}

/// Lag of every other region into this one, and the latest lag tables other regions reported.
pub struct LagBook {
    sources: Mutex<HashMap<String, SourceState>>,
    /// Per other region: when its status arrived (local ms) and its rows (pairs into it).
    peers: Mutex<HashMap<String, (u64, Vec<pb::PairLag>)>>,
    /// Ordered pairs of regions in the deployment.
    pairs_total: usize,
}

impl LagBook {
    pub(crate) fn new(region: &str, deployment: &Deployment) -> Self {
        let now = now_unix_ms();
        let sources = deployment
            .regions
            .iter()
            .filter(|r| r.name != region)
            .map(|r| {
                (
                    r.name.clone(),
                    SourceState {
                        tracker: PairTracker::new(&r.name, region, now)
                            .with_heartbeat_interval_ms(deployment.queue.heartbeat_interval_ms),
                        clock: ClockEstimator::new(lagmath::CLOCK_SAMPLE_WINDOW),
                        nodes: HashMap::new(),
                    },
                )
            })
            .collect();
        let n = deployment.regions.len();
        Self {
            sources: Mutex::new(sources),
            peers: Mutex::new(HashMap::new()),
            pairs_total: n * n.saturating_sub(1),
        }
    }

    fn record_peer(&self, region: &str, now_ms: u64, rows: Vec<pb::PairLag>) {
        self.peers
            .lock()
            .expect("lag lock poisoned")
            .insert(region.to_owned(), (now_ms, rows));
    }

    /// An origin time every region has applied heartbeats past, from every other region: the
    /// minimum over all ordered pairs of the newest applied heartbeat. `None` unless every pair
    /// has reported, with statuses no older than `max_age_ms` (safe default: purge nothing).
    pub(crate) fn passed_by_all(&self, now_ms: u64, max_age_ms: u64) -> Option<u64> {
        let mut rows = self.table(now_ms);
        for (received_ms, peer_rows) in self.peers.lock().expect("lag lock poisoned").values() {
            if now_ms.saturating_sub(*received_ms) > max_age_ms {
                return None;
            }
            rows.extend(peer_rows.iter().cloned());
        }
        if rows.len() < self.pairs_total || rows.iter().any(|r| !r.has_heartbeat) {
            return None;
        }
        rows.iter().map(|r| r.last_heartbeat_origin_unix_ms).min()
    }

    fn with_source(&self, source: &str, f: impl FnOnce(&mut SourceState)) {
        let mut sources = self.sources.lock().expect("lag lock poisoned");
        if let Some(s) = sources.get_mut(source) {
            f(s);
        }
    }

    pub(crate) fn record_applied(
        &self,
        source: &str,
        now_ms: u64,
        entries: u64,
        applied: u64,
        refused: u64,
        heartbeat_unix_ms: Option<u64>,
    ) {
        self.with_source(source, |s| {
            s.tracker
                .record_applied(now_ms, entries, applied, refused, heartbeat_unix_ms)
        });
    }

    pub(crate) fn record_nodes(&self, source: &str, nodes: HashMap<String, Vec<NodeState>>) {
        self.with_source(source, |s| {
            s.nodes = nodes;
            s.tracker
                .record_backlog(lagmath::backlog(s.nodes.values().map(Vec::as_slice)));
        });
    }

    /// Source clock minus this region's clock, as estimated so far (0 until measured).
    pub(crate) fn clock_offset_ms(&self, source: &str) -> i64 {
        let sources = self.sources.lock().expect("lag lock poisoned");
        sources
            .get(source)
            .and_then(|s| s.clock.estimate())
            .map_or(0, |c| c.offset_ms)
    }

    fn record_clock(&self, source: &str, sample: ClockSample) {
        self.with_source(source, |s| {
            if let Err(e) = s.clock.record(sample) {
                tracing::debug!(%source, error = %e, "clock sample ignored");
            }
        });
    }

    /// One row per source region, sorted by name.
    pub fn table(&self, now_ms: u64) -> Vec<pb::PairLag> {
        let sources = self.sources.lock().expect("lag lock poisoned");
        let mut rows: Vec<pb::PairLag> = sources
            .values()
            .map(|s| s.tracker.snapshot(now_ms, s.clock.estimate()))
            .collect();
        rows.sort_by(|a, b| a.source_region.cmp(&b.source_region));
        for r in &rows {
            let labels = [
                ("source", r.source_region.clone()),
                ("destination", r.destination_region.clone()),
            ];
            if r.has_heartbeat {
                metrics::gauge!("homeport_replication_lag_seconds", &labels).set(r.lag_seconds);
            }
            metrics::gauge!("homeport_replication_entries_behind", &labels)
                .set(r.entries_behind as f64);
            metrics::gauge!("homeport_replication_apply_rate", &labels).set(r.apply_rate_per_sec);
        }
        rows
    }
}

pub fn pair_lag_json(l: &pb::PairLag) -> serde_json::Value {
    json!({
        "source": l.source_region,
        "destination": l.destination_region,
        "has_heartbeat": l.has_heartbeat,
        "lag_seconds": l.lag_seconds,
        "entries_behind": l.entries_behind,
        "apply_rate_per_sec": l.apply_rate_per_sec,
        "last_heartbeat_origin_unix_ms": l.last_heartbeat_origin_unix_ms,
        "clock_offset_ms": l.clock_offset_ms,
        "applied_changes": l.applied_changes,
        "refused_changes": l.refused_changes,
        "nodes_reachable": l.nodes_reachable,
        "nodes_total": l.nodes_total,
    })
}

/// Samples every other region's clock (status round trips) and refreshes the lag gauges.
pub(crate) async fn sampler(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let peers: Vec<(String, NodeClient)> = shared
        .deployment
        .regions
        .iter()
        .filter(|r| r.name != shared.region)
        .filter_map(|r| {
            let p = r.process.as_ref()?;
            let id = Identity {
                name: homeport_config::region_identity(&r.name),
                role: Role::Region,
                region: r.name.clone(),
            };
            Some((
                r.name.clone(),
                NodeClient::with_identity(endpoint.clone(), id, p.addr),
            ))
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.deployment.replay.status_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let rounds = peers.iter().map(|(name, client)| async move {
            let sent_local_ms = now_unix_ms();
            let body = pb::request::Body::RegionStatus(pb::RegionStatusRequest {});
            let answer = client.call(body, RPC_TIMEOUT_MS).await;
            let received_local_ms = now_unix_ms();
            match answer.map(|r| r.body) {
                Ok(Some(pb::response::Body::RegionStatus(s))) => Some((
                    name,
                    ClockSample {
                        sent_local_ms,
                        remote_ms: s.unix_ms,
                        received_local_ms,
                    },
                    s.lags,
                )),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(source = %name, error = %e, "region status round trip failed");
                    None
                }
            }
        });
        for (name, sample, rows) in futures::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
        {
            shared.lag.record_clock(name, sample);
            shared.lag.record_peer(name, sample.received_local_ms, rows);
        }
        shared.lag_table();
    }
}

/// Tells every source queue node how far this region has durably applied its log (the stored
/// checkpoints), so nodes can trim segments every consuming region has passed.
pub(crate) async fn retention_reporter(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients: HashMap<String, NodeClient> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.deployment.replay.checkpoint_report_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let store = shared.store.clone();
        let checkpoints = match tokio::task::spawn_blocking(move || store.checkpoints()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read checkpoints for retention reports");
                continue;
            }
            Err(_) => continue,
        };
        for cp in checkpoints {
            for n in &cp.cursor.nodes {
                let Ok(incarnation) = <[u8; 16]>::try_from(&n.incarnation[..]) else {
                    continue;
                };
                let Some(node) = shared.deployment.node(&n.node_id) else {
                    continue;
                };
                let client = clients.entry(n.node_id.clone()).or_insert_with(|| {
                    NodeClient::new(
                        endpoint.clone(),
                        &node.region.name,
                        &n.node_id,
                        node.node.addr,
                    )
                });
                if let Err(e) = client
                    .report_checkpoint(&shared.region, incarnation, n.next_offset, RPC_TIMEOUT_MS)
                    .await
                {
                    tracing::debug!(node = %n.node_id, error = %e, "checkpoint report failed; retrying next round");
                }
            }
        }
    }
}
