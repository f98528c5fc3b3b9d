//! Lag arithmetic for one ordered pair of regions (source → destination), without I/O or clocks:
//! every function takes `now_ms` (the destination's wall clock, ms since the Unix epoch).
//!
//! - *seconds behind*: now − origin time of the newest applied heartbeat. The origin time is on the
//!   source's clock, so it is first moved to the destination's clock with the offset measured on the
//!   QUIC link ([`ClockEstimator`]); without that, a source clock 2 s fast would hide 2 s of lag.
//! - *entries behind*: per group, the most any reachable node has that the consumer has not handed
//!   out yet; summed over groups ([`backlog`]).
//! - *apply rate*: queue entries taken in per second over the last [`APPLY_RATE_WINDOW_MS`].

use std::collections::VecDeque;

use homeport_queue::consumer::NodeState;
use homeport_wire::pb;

use crate::ReplayError;

/// Status round trips kept for the clock-offset estimate; the one with the smallest round trip
/// among them wins. Bounded so a clock that drifts or is stepped is followed within this many
/// samples.
pub const CLOCK_SAMPLE_WINDOW: usize = 16;

/// Span over which the apply rate is averaged.
pub const APPLY_RATE_WINDOW_MS: u64 = 10_000;

/// Granularity of the apply-rate window: memory is `APPLY_RATE_WINDOW_MS / APPLY_RATE_BUCKET_MS`
/// counters whatever the traffic.
pub const APPLY_RATE_BUCKET_MS: u64 = 1_000;

/// One status round trip to the source region: the destination's clock when the request left and
/// when the answer came back, and the source's clock when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    pub sent_local_ms: u64,
    pub remote_ms: u64,
    pub received_local_ms: u64,
}

impl ClockSample {
    pub fn rtt_ms(&self) -> u64 {
        self.received_local_ms.saturating_sub(self.sent_local_ms)
    }

    /// Remote clock minus local clock, assuming the answer was stamped half-way through the round
    /// trip (NTP). Whatever the real split of the delays, the truth is within
    /// [`Self::error_bound_ms`] of this, because the remote stamped it somewhere inside the trip.
    pub fn offset_ms(&self) -> i64 {
        let twice = 2 * i128::from(self.remote_ms)
            - i128::from(self.sent_local_ms)
            - i128::from(self.received_local_ms);
        clamp_i64(twice.div_euclid(2))
    }

    /// Half the round trip, rounded up (the offset is rounded down to whole ms).
    pub fn error_bound_ms(&self) -> u64 {
        self.rtt_ms().div_ceil(2)
    }
}

/// Source clock minus destination clock, and how wrong that can be at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEstimate {
    pub offset_ms: i64,
    pub error_bound_ms: u64,
    pub rtt_ms: u64,
}

/// NTP-style offset estimation over the last few status round trips.
///
/// The sample with the smallest round trip is kept because its error bound (rtt/2) is the
/// tightest; queueing delay only ever adds to a round trip, so the fastest one is the least skewed.
#[derive(Debug, Clone)]
pub struct ClockEstimator {
    samples: VecDeque<ClockSample>,
    window: usize,
}

impl Default for ClockEstimator {
    fn default() -> Self {
        Self::new(CLOCK_SAMPLE_WINDOW)
    }
}

impl ClockEstimator {
    /// `window`: how many of the newest samples are considered (at least 1).
    pub fn new(window: usize) -> Self {
        assert!(window >= 1, "a clock estimator needs room for one sample");
        Self {
            samples: VecDeque::with_capacity(window),
            window,
        }
    }

    /// Adds a round trip; refuses one during which the local clock went backwards (its bound
    /// would be meaningless).
    pub fn record(&mut self, sample: ClockSample) -> Result<(), ReplayError> {
        if sample.received_local_ms < sample.sent_local_ms {
            return Err(ReplayError::ClockWentBackwards {
                sent_local_ms: sample.sent_local_ms,
                received_local_ms: sample.received_local_ms,
            });
        }
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        debug_assert!(self.samples.len() <= self.window);
        Ok(())
    }

    /// The estimate from the smallest-RTT sample of the window (the newest among equals, since
    /// clocks drift); `None` before the first sample.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let best = self
            .samples
            .iter()
            .rev()
            .min_by_key(|s| s.rtt_ms())
            .copied()?;
        Some(ClockEstimate {
            offset_ms: best.offset_ms(),
            error_bound_ms: best.error_bound_ms(),
            rtt_ms: best.rtt_ms(),
        })
    }
}

/// Seconds from a heartbeat's origin (moved to the local clock) to `now_ms`.
///
/// `clock_offset_ms` is source minus destination. Never negative: a small negative value only
/// means the offset estimate erred by less than its bound.
pub fn lag_seconds(now_ms: u64, heartbeat_origin_ms: u64, clock_offset_ms: i64) -> f64 {
    let lag_ms = i128::from(now_ms) + i128::from(clock_offset_ms) - i128::from(heartbeat_origin_ms);
    // Exact for any lag below 2^53 ms (285,000 years).
    lag_ms.max(0) as f64 / 1_000.0
}

/// How much of a source's queues is not applied yet, and how many of its nodes answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub entries_behind: u64,
    pub nodes_reachable: u32,
    pub nodes_total: u32,
}

/// Sums, over groups, the most entries any reachable node of the group holds beyond the
/// consumer's cursor. The maximum (not the sum) because the same entry sits on two or three nodes
/// of its group; unreachable nodes are left out because their last known head is stale.
pub fn backlog<'a>(groups: impl IntoIterator<Item = &'a [NodeState]>) -> Backlog {
    let mut b = Backlog::default();
    for nodes in groups {
        let mut group_behind = 0u64;
        for n in nodes {
            b.nodes_total = b.nodes_total.saturating_add(1);
            if !n.reachable {
                continue;
            }
            b.nodes_reachable = b.nodes_reachable.saturating_add(1);
            group_behind = group_behind.max(n.entries_behind().unwrap_or(0));
        }
        b.entries_behind = b.entries_behind.saturating_add(group_behind);
    }
    debug_assert!(b.nodes_reachable <= b.nodes_total);
    b
}

/// Entries per second over a sliding window of [`APPLY_RATE_WINDOW_MS`], kept in whole buckets of
/// [`APPLY_RATE_BUCKET_MS`].
#[derive(Debug, Clone)]
pub struct ApplyRate {
    started_ms: u64,
    /// (bucket index = ms / bucket, entries), oldest first, at most one per bucket.
    buckets: VecDeque<(u64, u64)>,
}

const RATE_BUCKETS: u64 = APPLY_RATE_WINDOW_MS / APPLY_RATE_BUCKET_MS;
const _: () =
    assert!(RATE_BUCKETS >= 1 && APPLY_RATE_WINDOW_MS.is_multiple_of(APPLY_RATE_BUCKET_MS));

impl ApplyRate {
    /// `now_ms`: when measuring started, so a young tracker is not averaged over time it did not see.
    pub fn new(now_ms: u64) -> Self {
        Self {
            started_ms: now_ms,
            buckets: VecDeque::with_capacity(RATE_BUCKETS as usize + 1),
        }
    }

    pub fn record(&mut self, now_ms: u64, entries: u64) {
        let idx = now_ms / APPLY_RATE_BUCKET_MS;
        match self.buckets.back_mut() {
            // A clock stepped back lands in the newest bucket rather than reordering the window.
            Some((last, n)) if *last >= idx => *n = n.saturating_add(entries),
            _ => self.buckets.push_back((idx, entries)),
        }
        self.expire(idx);
    }

    /// Entries recorded in the window ending now, divided by the time the window covers: the last
    /// `RATE_BUCKETS` buckets (the current one partial) or less, if measuring started later.
    pub fn per_sec(&self, now_ms: u64) -> f64 {
        let idx = now_ms / APPLY_RATE_BUCKET_MS;
        let first_idx = idx.saturating_sub(RATE_BUCKETS - 1);
        let window_start_ms = (first_idx * APPLY_RATE_BUCKET_MS).max(self.started_ms);
        let span_ms = now_ms
            .saturating_sub(window_start_ms)
            .max(APPLY_RATE_BUCKET_MS);
        let entries: u64 = self
            .buckets
            .iter()
            .filter(|(b, _)| *b >= first_idx && *b <= idx)
            .map(|(_, n)| *n)
            .sum();
        entries as f64 * 1_000.0 / span_ms as f64
    }

    fn expire(&mut self, idx: u64) {
        let first_idx = idx.saturating_sub(RATE_BUCKETS - 1);
        while self.buckets.front().is_some_and(|(b, _)| *b < first_idx) {
            self.buckets.pop_front();
        }
        debug_assert!(self.buckets.len() as u64 <= RATE_BUCKETS);
    }
}

/// Everything known about one pair (source → destination) at the destination.
#[derive(Debug, Clone)]
pub struct PairTracker {
    source: String,
    destination: String,
    newest_heartbeat_origin_ms: Option<u64>,
    /// Destination clock when the newest heartbeat was applied.
    newest_heartbeat_applied_ms: u64,
    /// The source's heartbeat period: between two heartbeats the newest one ages by up to this
    /// much without anything being late.
    heartbeat_interval_ms: u64,
    applied_changes: u64,
    refused_changes: u64,
    rate: ApplyRate,
    backlog: Backlog,
}

impl PairTracker {
    pub fn new(source: &str, destination: &str, now_ms: u64) -> Self {
        Self {
            source: source.to_owned(),
            destination: destination.to_owned(),
            newest_heartbeat_origin_ms: None,
            newest_heartbeat_applied_ms: 0,
            heartbeat_interval_ms: 0,
            applied_changes: 0,
            refused_changes: 0,
            rate: ApplyRate::new(now_ms),
            backlog: Backlog::default(),
        }
    }

    /// Tells the tracker the source's heartbeat period, so a healthy pair shows its real delivery
    /// delay rather than the age of the newest heartbeat (which saw-tooths up to one period).
    pub fn with_heartbeat_interval_ms(mut self, heartbeat_interval_ms: u64) -> Self {
        self.heartbeat_interval_ms = heartbeat_interval_ms;
        self
    }

    /// After a batch was durably applied: `entries` queue entries taken in (all kinds),
    /// `applied_changes` that were newer than the store's, and the batch's newest heartbeat.
    pub fn record_applied(
        &mut self,
        now_ms: u64,
        entries: u64,
        applied_changes: u64,
        refused_changes: u64,
        heartbeat_unix_ms: Option<u64>,
    ) {
        self.rate.record(now_ms, entries);
        self.applied_changes = self.applied_changes.saturating_add(applied_changes);
        self.refused_changes = self.refused_changes.saturating_add(refused_changes);
        if let Some(h) = heartbeat_unix_ms {
            // Groups deliver independently: an older heartbeat may arrive after a newer one.
            if self.newest_heartbeat_origin_ms.is_none_or(|old| h > old) {
                self.newest_heartbeat_origin_ms = Some(h);
                self.newest_heartbeat_applied_ms = now_ms;
            }
        }
    }

    pub fn record_backlog(&mut self, backlog: Backlog) {
        self.backlog = backlog;
    }

    /// The pair's lag as of `now_ms`; `clock` is the source-minus-destination offset estimate
    /// (`None`: not measured yet, taken as 0).
    pub fn snapshot(&self, now_ms: u64, clock: Option<ClockEstimate>) -> pb::PairLag {
        let offset_ms = clock.map_or(0, |c| c.offset_ms);
        let (has_heartbeat, lag, origin) = match self.newest_heartbeat_origin_ms {
            Some(h) => {
                // How late the newest heartbeat was when applied, or, once the next one is
                // overdue, how overdue: a stalled pair's lag grows from one period on.
                let delivered = lag_seconds(self.newest_heartbeat_applied_ms, h, offset_ms);
                let overdue =
                    lag_seconds(now_ms, h, offset_ms) - self.heartbeat_interval_ms as f64 / 1_000.0;
                (true, delivered.max(overdue), h)
            }
            None => (false, 0.0, 0),
        };
        pb::PairLag {
            source_region: self.source.clone(),
            destination_region: self.destination.clone(),
            has_heartbeat,
            lag_seconds: lag,
            entries_behind: self.backlog.entries_behind,
            apply_rate_per_sec: self.rate.per_sec(now_ms),
            last_heartbeat_origin_unix_ms: origin,
            clock_offset_ms: offset_ms,
            applied_changes: self.applied_changes,
            refused_changes: self.refused_changes,
            nodes_reachable: self.backlog.nodes_reachable,
            nodes_total: self.backlog.nodes_total,
        }
    }
}

/// Alerting state of one pair, for `homeport lag --check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LagStatus {
    Ok,
    Warn,
    Crit,
    /// No heartbeat from the source was ever applied: the lag cannot be measured.
    Unknown,
}

impl LagStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "ok",
            LagStatus::Warn => "warn",
            LagStatus::Crit => "crit",
            LagStatus::Unknown => "unknown",
        }
    }

    /// Monitoring-plugin convention (0 ok, 1 warning, 2 critical, 3 unknown): the highest code
    /// over all pairs is the command's exit code, so a pair that cannot be measured is never
    /// quieter than one that is measured late.
    pub fn exit_code(self) -> i32 {
        match self {
            LagStatus::Ok => 0,
            LagStatus::Warn => 1,
            LagStatus::Crit => 2,
            LagStatus::Unknown => 3,
        }
    }
}

impl std::fmt::Display for LagStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds of lag above which a pair is `warn` and `crit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagThresholds {
    warn_secs: f64,
    crit_secs: f64,
}

impl LagThresholds {
    pub fn new(warn_secs: f64, crit_secs: f64) -> Result<Self, ReplayError> {
        let valid = warn_secs.is_finite()
            && crit_secs.is_finite()
            && warn_secs >= 0.0
            && warn_secs <= crit_secs;
        if !valid {
            return Err(ReplayError::InvalidThresholds {
                warn_secs,
                crit_secs,
            });
        }
        Ok(Self {
            warn_secs,
            crit_secs,
        })
    }

    pub fn warn_secs(&self) -> f64 {
        self.warn_secs
    }

    pub fn crit_secs(&self) -> f64 {
        self.crit_secs
    }

    /// A lag strictly above a threshold crosses it (`--warn 5` tolerates exactly 5 s).
    pub fn classify(&self, lag: &pb::PairLag) -> LagStatus {
        if !lag.has_heartbeat || !lag.lag_seconds.is_finite() {
            LagStatus::Unknown
        } else if lag.lag_seconds > self.crit_secs {
            LagStatus::Crit
        } else if lag.lag_seconds > self.warn_secs {
            LagStatus::Warn
        } else {
            LagStatus::Ok
        }
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(reachable: bool, head: Option<u64>, next: u64) -> NodeState {
        NodeState {
            node_id: "n".into(),
            reachable,
            incarnation: None,
            next_offset: next,
            read_offset: next,
            durable_head: head,
            buffered_entries: 0,
            consecutive_failures: 0,
            last_error: None,
            undecodable_entries: 0,
        }
    }

    #[test]
    fn offset_of_a_sample_is_remote_minus_midpoint() {
        let s = ClockSample {
            sent_local_ms: 1_000,
            remote_ms: 3_050,
            received_local_ms: 1_100,
        };
        assert_eq!(s.rtt_ms(), 100);
        assert_eq!(s.offset_ms(), 2_000);
        assert_eq!(s.error_bound_ms(), 50);

        // Remote behind, odd round trip: floor of -1000.5, bound rounded up.
        let s = ClockSample {
            sent_local_ms: 10_000,
            remote_ms: 9_000,
            received_local_ms: 10_001,
        };
        assert_eq!(s.offset_ms(), -1_001);
        assert_eq!(s.error_bound_ms(), 1);
    }

    #[test]
    fn estimator_keeps_the_fastest_round_trip_of_the_window() {
        let mut e = ClockEstimator::new(3);
        assert_eq!(e.estimate(), None);
        let sample = |sent: u64, rtt: u64, offset: i64| ClockSample {
            sent_local_ms: sent,
            remote_ms: (sent as i64 + rtt as i64 / 2 + offset) as u64,
            received_local_ms: sent + rtt,
        };
        e.record(sample(1_000, 40, 500)).unwrap();
        e.record(sample(2_000, 10, 700)).unwrap();
        e.record(sample(3_000, 30, 900)).unwrap();
        assert_eq!(
            e.estimate(),
            Some(ClockEstimate {
                offset_ms: 700,
                error_bound_ms: 5,
                rtt_ms: 10
            })
        );
        // The fast sample falls out of the window of 3; the best of the rest wins.
        e.record(sample(4_000, 20, 1_100)).unwrap();
        e.record(sample(5_000, 60, 1_300)).unwrap();
        assert_eq!(e.estimate().map(|c| c.offset_ms), Some(1_100));
        // Equal round trips: the newest wins (clocks drift).
        e.record(sample(6_000, 20, 1_500)).unwrap();
        assert_eq!(e.estimate().map(|c| c.offset_ms), Some(1_500));
    }

    #[test]
    fn estimator_refuses_a_round_trip_that_ran_backwards() {
        let mut e = ClockEstimator::default();
        let err = e
            .record(ClockSample {
                sent_local_ms: 2_000,
                remote_ms: 5,
                received_local_ms: 1_999,
            })
            .unwrap_err();
        assert!(matches!(err, ReplayError::ClockWentBackwards { .. }));
        assert_eq!(e.estimate(), None);
    }

    #[test]
    fn lag_moves_the_origin_time_to_the_local_clock() {
        // Heartbeat stamped at 100_000 on the source; the source is 2 s fast.
        assert_eq!(lag_seconds(101_500, 100_000, 0), 1.5);
        assert_eq!(lag_seconds(101_500, 100_000, 2_000), 3.5);
        assert_eq!(lag_seconds(101_500, 100_000, -1_000), 0.5);
        // Behind by less than the estimate's error: clamped, never negative.
        assert_eq!(lag_seconds(101_500, 100_000, -1_600), 0.0);
    }

    #[test]
    fn backlog_takes_max_per_group_over_reachable_nodes_and_sums_groups() {
        let g1 = vec![
            node(true, Some(100), 90),
            node(true, Some(120), 100),
            // Unreachable: its stale head does not count.
            node(false, Some(1_000), 0),
        ];
        let g2 = vec![
            node(true, Some(50), 50),
            node(true, None, 0),
            node(true, Some(7), 2),
        ];
        let g3 = vec![
            node(false, None, 0),
            node(false, None, 0),
            node(false, None, 0),
        ];
        let b = backlog([g1.as_slice(), g2.as_slice(), g3.as_slice()]);
        assert_eq!(
            b,
            Backlog {
                entries_behind: 20 + 5,
                nodes_reachable: 5,
                nodes_total: 9
            }
        );
        assert_eq!(backlog(std::iter::empty()), Backlog::default());
    }

    #[test]
    fn apply_rate_averages_over_the_window_and_forgets_old_buckets() {
        let t0 = 1_000_000;
        let mut r = ApplyRate::new(t0);
        assert_eq!(r.per_sec(t0), 0.0);
        r.record(t0, 100);
        // Young tracker: one bucket minimum span, not the whole window.
        assert_eq!(r.per_sec(t0), 100.0);
        r.record(t0 + 1_000, 100);
        assert_eq!(r.per_sec(t0 + 2_000), 100.0);
        for s in 2..10 {
            r.record(t0 + s * 1_000, 100);
        }
        // 10 buckets of 100, measured for 9.999 s.
        assert_eq!(r.per_sec(t0 + 10_000 - 1), 1_000_000.0 / 9_999.0);
        // 10 s later nothing has been applied: the window is empty.
        assert_eq!(r.per_sec(t0 + 20_000), 0.0);
        r.record(t0 + 30_000, 50);
        // The window is the last 10 whole buckets: 9 full ones and half of the current one.
        assert_eq!(r.per_sec(t0 + 30_500), 50_000.0 / 9_500.0);
    }

    #[test]
    fn tracker_snapshot_reports_exact_pair_lag() {
        let mut t = PairTracker::new("sh", "hk", 1_000_000);
        let empty = t.snapshot(1_000_000, None);
        assert!(!empty.has_heartbeat);
        assert_eq!(empty.lag_seconds, 0.0);
        t.record_applied(1_000_500, 10, 7, 1, Some(999_000));
        t.record_applied(1_000_900, 5, 2, 0, Some(998_000));
        t.record_backlog(Backlog {
            entries_behind: 42,
            nodes_reachable: 8,
            nodes_total: 9,
        });
        let clock = ClockEstimate {
            offset_ms: 250,
            error_bound_ms: 3,
            rtt_ms: 6,
        };
        let p = t.snapshot(1_002_000, Some(clock));
        assert_eq!(
            p,
            pb::PairLag {
                source_region: "sh".into(),
                destination_region: "hk".into(),
                has_heartbeat: true,
                lag_seconds: 3.25,
                entries_behind: 42,
                apply_rate_per_sec: 15.0 / 2.0,
                last_heartbeat_origin_unix_ms: 999_000,
                clock_offset_ms: 250,
                applied_changes: 9,
                refused_changes: 1,
                nodes_reachable: 8,
                nodes_total: 9,
            }
        );
    }

    #[test]
    fn healthy_pair_shows_delivery_delay_and_a_stalled_one_grows_after_one_period() {
        let mut t = PairTracker::new("sh", "hk", 1_000_000).with_heartbeat_interval_ms(1_000);
        // Heartbeat from 1_000_000 applied 40 ms later.
        t.record_applied(1_000_040, 1, 0, 0, Some(1_000_000));
        // 900 ms later, before the next heartbeat is due: still the delivery delay.
        assert_eq!(t.snapshot(1_000_900, None).lag_seconds, 0.04);
        // Nothing for 3.5 s: overdue by 2.5 s.
        assert_eq!(t.snapshot(1_003_500, None).lag_seconds, 2.5);
        // An older heartbeat arriving late changes nothing.
        t.record_applied(1_003_600, 1, 0, 0, Some(999_000));
        assert_eq!(t.snapshot(1_003_600, None).lag_seconds, 2.6);
        // The next one arrives: back to its delivery delay.
        t.record_applied(1_003_700, 1, 0, 0, Some(1_003_650));
        assert_eq!(t.snapshot(1_003_800, None).lag_seconds, 0.05);
    }

    #[test]
    fn classification_uses_strict_thresholds_and_unknown_without_heartbeat() {
        let t = LagThresholds::new(5.0, 30.0).unwrap();
        let pair = |has: bool, lag: f64| pb::PairLag {
            has_heartbeat: has,
            lag_seconds: lag,
            ..pb::PairLag::default()
        };
        assert_eq!(t.classify(&pair(true, 0.0)), LagStatus::Ok);
        assert_eq!(t.classify(&pair(true, 5.0)), LagStatus::Ok);
        assert_eq!(t.classify(&pair(true, 5.001)), LagStatus::Warn);
        assert_eq!(t.classify(&pair(true, 30.0)), LagStatus::Warn);
        assert_eq!(t.classify(&pair(true, 30.5)), LagStatus::Crit);
        assert_eq!(t.classify(&pair(false, 0.0)), LagStatus::Unknown);
        assert_eq!(t.classify(&pair(true, f64::NAN)), LagStatus::Unknown);
        assert_eq!(
            [
                LagStatus::Ok,
                LagStatus::Warn,
                LagStatus::Crit,
                LagStatus::Unknown
            ]
            .map(|s| (s.as_str(), s.exit_code())),
            [("ok", 0), ("warn", 1), ("crit", 2), ("unknown", 3)]
        );
        assert!(LagThresholds::new(10.0, 5.0).is_err());
        assert!(LagThresholds::new(-1.0, 5.0).is_err());
        assert!(LagThresholds::new(1.0, f64::INFINITY).is_err());
        assert!(LagThresholds::new(f64::NAN, 5.0).is_err());
        assert!(LagThresholds::new(5.0, 5.0).is_ok());
    }

    proptest! {
        /// Whatever the split of the delays (symmetric or not) and the remote's processing time,
        /// the truth lies within the sample's bound of its estimate.
        #[test]
        fn sample_offset_is_within_half_rtt_of_the_truth(
            true_offset in -3_600_000i64..3_600_000,
            to_remote in 0u64..5_000,
            processing in 0u64..200,
            stamp_at in 0u64..=100,
            back in 0u64..5_000,
            t0 in 1_600_000_000_000u64..1_800_000_000_000,
        ) {
            let stamp = t0 + to_remote + processing * stamp_at / 100;
            let s = ClockSample {
                sent_local_ms: t0,
                remote_ms: (stamp as i64 + true_offset) as u64,
                received_local_ms: t0 + to_remote + processing + back,
            };
            let err = (s.offset_ms() - true_offset).unsigned_abs();
            prop_assert!(err <= s.error_bound_ms(), "err {} > bound {}", err, s.error_bound_ms());
        }

        /// The estimator's pick is as good as its bound, and its bound is the tightest available.
        #[test]
        fn estimate_is_within_the_smallest_bound_of_the_window(
            true_offset in -3_600_000i64..3_600_000,
            trips in proptest::collection::vec((0u64..3_000, 0u64..3_000), 1..40),
        ) {
            let mut e = ClockEstimator::default();
            let mut t = 1_700_000_000_000u64;
            let mut bounds = Vec::new();
            for (there, back) in &trips {
                let s = ClockSample {
                    sent_local_ms: t,
                    remote_ms: (t as i64 + *there as i64 + true_offset) as u64,
                    received_local_ms: t + there + back,
                };
                bounds.push(s.error_bound_ms());
                e.record(s).unwrap();
                t += 1_000 + there + back;
            }
            let est = e.estimate().unwrap();
            let window_start = bounds.len().saturating_sub(CLOCK_SAMPLE_WINDOW);
            let best = bounds[window_start..].iter().copied().min().unwrap();
            prop_assert_eq!(est.error_bound_ms, best);
            prop_assert!((est.offset_ms - true_offset).unsigned_abs() <= est.error_bound_ms);
        }
    }
}
