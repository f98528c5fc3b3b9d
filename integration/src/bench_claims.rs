//! Pieces the benchmark programs share: a closed-loop driver with an hdrhistogram per task (the
//! claim benchmarks), the machine's load average, whole-machine CPU busy from `/proc/stat`, and
//! `/metrics` pages fetched and read.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

/// Largest latency the histograms hold; slower operations are clamped (and would have timed out).
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Pause after a failed operation, so a dead system is not hammered in a tight loop.
pub const ERROR_BACKOFF_MS: u64 = 10;

/// What one closed-loop run did. Only operations that completed inside the window count.
pub struct LoopResult {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    pub latency_us: Histogram<u64>,
    /// The last error any task saw, for the progress output.
    pub last_error: Option<String>,
}

impl LoopResult {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// A quantile of the latency in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `c` tasks each await `op(task, n)` one at a time (`n` counts that task's operations from 0)
/// for `secs`: `c` operations in flight. An `Err` counts as an error and the task backs off.
pub async fn closed_loop<F, Fut>(c: usize, secs: u64, op: F) -> Result<LoopResult>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for t in 0..c {
        let (stop, errors, op) = (stop.clone(), errors.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?;
            let mut last_error = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = op(t, n).await;
                n += 1;
                match r {
                    Ok(()) => {
                        if !stop.load(Ordering::Relaxed) {
                            hist.saturating_record(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        last_error = Some(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                    }
                }
            }
            anyhow::Ok((hist, last_error))
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let mut total = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?;
    let mut last_error = None;
    for t in tasks {
        let (hist, e) = t.await??;
        total.add(hist)?;
        last_error = e.or(last_error);
    }
    Ok(LoopResult {
        ok: total.len(),
        errors: errors.load(Ordering::Relaxed),
        secs,
        latency_us: total,
        last_error,
    })
}

/// The 1/5/15-minute load average, as `/proc/loadavg` shows it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whole-machine CPU jiffies `(busy, total)` from `/proc/stat`; `None` where it is not readable.
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Fraction of CPU time busy between two [`cpu_jiffies`] readings.
pub fn cpu_busy(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let total = t1.checked_sub(t0)?;
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// Longest wait for one `/metrics` page; an admin listener slower than this counts as absent.
pub const SCRAPE_TIMEOUT_MS: u64 = 2_000;

/// `GET /metrics` over plain HTTP/1.0 (the admin listeners are axum), or `None` if it does not
/// answer within [`SCRAPE_TIMEOUT_MS`].
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_millis(SCRAPE_TIMEOUT_MS), fetch)
        .await
        .ok()
        .flatten()
}

/// Sum of the samples named `name` (exactly, before `{` or a space) whose labels contain every
/// `label="value"` text in `labels`, in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let (series, value) = l.rsplit_once(' ')?;
            labels
                .iter()
                .all(|want| series.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_matches_name_and_labels_exactly() {
        let page = "# TYPE registry_rounds_total counter\n\
                    registry_rounds_total{phase=\"accept\"} 10\n\
                    registry_rounds_total{phase=\"prepare\"} 3\n\
                    registry_rounds_total_other{phase=\"accept\"} 100\n\
                    registry_conflicts_total 2\n";
        assert_eq!(
            metric_sum(page, "registry_rounds_total", &["phase=\"accept\""]),
            10.0
        );
        assert_eq!(metric_sum(page, "registry_rounds_total", &[]), 13.0);
        assert_eq!(metric_sum(page, "registry_conflicts_total", &[]), 2.0);
        assert_eq!(metric_sum(page, "registry_missing", &[]), 0.0);
    }

    #[test]
    fn cpu_busy_is_a_fraction_of_the_interval() {
        assert_eq!(cpu_busy(Some((10, 100)), Some((60, 200))), Some(0.5));
        assert_eq!(cpu_busy(Some((10, 100)), Some((10, 100))), None);
        assert_eq!(cpu_busy(None, Some((1, 2))), None);
    }
}
