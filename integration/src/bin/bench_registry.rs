//! The registry benchmark of issue 4: WeChat ID claims/s and p50/p99 against 3 real registry
//! nodes (`homeport registry`, one CASPaxos acceptor per region), side by side with a 3-member
//! etcd doing put-if-absent transactions in the same run.
//!
//! Scenarios, each on a fresh cluster of regions sh, hk, ca (fsync on, default settings):
//! - loopback: the nodes talk directly;
//! - WAN: every datagram between two nodes crosses the WAN emulator's UDP relays with
//!   `--one-way-delay-ms` each way (`RegistryCluster::route_through`). The client is in region
//!   sh and talks to sh's node (no delay); sh's node proposes to all three acceptors and needs
//!   the fastest other region's answer: one round trip per proposal.
//!
//! Load: for each level `c` of `--concurrency`, `c` tasks each await one claim at a time (a
//! closed loop) for `--duration-secs` after a warm-up. Every claim is of a fresh, valid WeChat ID
//! by a fresh uid (a user registering), so every claim succeeds and writes. A claim is several
//! proposals (begin on the user record, reserve the ID, commit, finish); proposals per claim
//! are counted from sh's node's `/metrics` (`registry_rounds_total`).
//!
//! Steady writer: one client changes ONE key over and over (`set_home` of one uid, the expected
//! epoch being the one the last change returned): consecutive changes of the same key by the same
//! proposer, the path where an accept hands out the next ballot so the next change skips the
//! prepare. Target with delay: p50 within one round trip + 5 ms.
//!
//! etcd: the `bench-etcd` program (next to this one) runs as a child process with the same
//! levels, duration and delay; its report is printed below this one's.
//!
//! Run it with `scripts/bench-registry.sh`; numbers are printed, nothing is asserted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, ensure};
use bytes::Bytes;
use clap::Parser;
use homeport_integration::bench_claims::{
    LoopResult, closed_loop, cpu_busy, cpu_jiffies, load_average, metric_sum,
};
use homeport_integration::registries::RegistryCluster;
use homeport_integration::wan::{LinkConditions, Wan};
use homeport_registry::client::{Claimed, RegistryClient};
use http_body_util::BodyExt as _;

/// The regions, the client's first.
const REGIONS: [&str; 3] = ["sh", "hk", "ca"];
const CLIENT_REGION: &str = "sh";
/// How long a `/metrics` scrape may take.
const SCRAPE_TIMEOUT_MS: u64 = 5_000;

/// Registry claims/s and p50/p99 on loopback and behind a WAN, with etcd in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench-registry")]
struct Args {
    /// Claims in flight: that many tasks, each awaiting one claim at a time.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Length of one measured run, per scenario and concurrency level.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up before each measured run (not measured; its IDs are distinct too).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Length of the steady-writer run per scenario (after one warm-up change); 0 skips it.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// One-way delay between regions in the WAN scenario; 0 skips it.
    #[arg(long, default_value_t = 30)]
    one_way_delay_ms: u64,
    /// Skip the loopback scenario.
    #[arg(long)]
    skip_loopback: bool,
    /// Skip etcd (bench-etcd) in this run.
    #[arg(long)]
    skip_etcd: bool,
    /// Where etcd's leader sits in its WAN scenario (a = the client's region; b costs two
    /// round trips per claim); passed to bench-etcd.
    #[arg(long, default_value = "a,b")]
    etcd_wan_leader: String,
    /// Seconds of bench-etcd's linearizability check per scenario; 0 skips it.
    #[arg(long, default_value_t = 0)]
    etcd_lincheck_secs: u64,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        ensure!(
            !self.concurrency.is_empty(),
            "--concurrency needs at least one level, e.g. 1,16,64"
        );
        for &c in &self.concurrency {
            ensure!(
                (1..=4096).contains(&c),
                "--concurrency {c} is outside 1..=4096"
            );
        }
        ensure!(
            self.one_way_delay_ms <= 10_000,
            "--one-way-delay-ms {} is above 10000; registry rounds (round_timeout_ms 2000) would never finish",
            self.one_way_delay_ms
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("bench-registry: {e:#}");
        return ExitCode::from(2);
    }
    homeport_integration::bench_main("bench-registry", run(args))
}

async fn run(args: Args) -> Result<()> {
    let load_before = load_average();
    let bin = std::env::current_exe()?.with_file_name("homeport-it");
    ensure!(
        bin.exists(),
        "{} not found: build it next to this program with `cargo build --release -p homeport-integration --bins`",
        bin.display()
    );
    let mut rows = Vec::new();
    let mut steady = Vec::new();
    if !args.skip_loopback {
        let bed = Bed::start(&bin, None).await?;
        measure(&args, &bed, "loopback", &mut rows, &mut steady).await?;
    }
    if args.one_way_delay_ms > 0 {
        let bed = Bed::start(&bin, Some(args.one_way_delay_ms)).await?;
        let label = format!("WAN {} ms one-way", args.one_way_delay_ms);
        measure(&args, &bed, &label, &mut rows, &mut steady).await?;
    }
    let load_mid = load_average();
    let etcd = if args.skip_etcd {
        None
    } else {
        Some(run_etcd(&args).await?)
    };
    let load_after = load_average();
    print_report(
        &args,
        &rows,
        &steady,
        etcd.as_deref(),
        [&load_before, &load_mid, &load_after],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The registry cluster

/// Three registry nodes, optionally behind the WAN emulator, and a client in sh.
struct Bed {
    /// Kept for its Drop, which kills the nodes.
    _cluster: RegistryCluster,
    client: Arc<RegistryClient>,
    /// sh's node's `/metrics` listener: sh's node runs every proposal of this benchmark.
    admin: SocketAddr,
    http: homeport_integration::BenchHttpClient,
    /// Dropped after the cluster (field order), so no node sees its peers vanish first.
    _wan: Option<Wan>,
    /// The WAN relays run here, on a thread of their own, not behind the benchmark's tasks.
    wan_runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // A runtime may not be dropped (which blocks) inside another one; this does not block.
        if let Some(rt) = self.wan_runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Bed {
    async fn start(bin: &std::path::Path, one_way_delay_ms: Option<u64>) -> Result<Bed> {
        let cluster = RegistryCluster::new(bin, &REGIONS, &[])?;
        let (wan, wan_runtime) = match one_way_delay_ms {
            Some(ms) => {
                let wan = Wan::new(0x5eed);
                for (i, a) in REGIONS.iter().enumerate() {
                    for b in &REGIONS[i + 1..] {
                        wan.set_both(a, b, LinkConditions::delay(ms));
                    }
                }
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("wan")
                    .enable_all()
                    .build()
                    .context("starting the WAN emulator's runtime")?;
                // The relays are spawned on the runtime that creates them.
                tokio::task::block_in_place(|| rt.block_on(cluster.route_through(&wan)))?;
                (Some(wan), Some(rt))
            }
            None => (None, None),
        };
        cluster.start_all()?;
        for r in REGIONS {
            cluster.wait_up(r).await?;
        }
        let admin = cluster
            .deployment
            .regions
            .iter()
            .find(|r| r.name == CLIENT_REGION)
            .and_then(|r| r.registry.as_ref())
            .map(|r| r.admin_addr)
            .ok_or_else(|| anyhow!("region {CLIENT_REGION} has no registry node"))?;
        let client = Arc::new(cluster.client(CLIENT_REGION)?);
        eprintln!(
            "bench-registry: registry nodes up in {}",
            cluster.dir.path().display()
        );
        Ok(Bed {
            _cluster: cluster,
            client,
            admin,
            http: homeport_integration::bench_http_client(),
            _wan: wan,
            wan_runtime,
        })
    }

    async fn metrics(&self) -> Result<Counters> {
        let url = format!("http://{}/metrics", self.admin);
        let req = hyper::Request::get(&url).body(http_body_util::Full::new(Bytes::new()))?;
        let work = async {
            let resp = self.http.request(req).await?;
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
        };
        let page = tokio::time::timeout(std::time::Duration::from_millis(SCRAPE_TIMEOUT_MS), work)
            .await
            .map_err(|_| anyhow!("{url}: no answer within {SCRAPE_TIMEOUT_MS} ms"))?
            .with_context(|| format!("scraping {url}"))?;
        Ok(Counters {
            prepares: metric_sum(&page, "registry_rounds_total", &["phase=\"prepare\""]),
            accepts: metric_sum(&page, "registry_rounds_total", &["phase=\"accept\""]),
            fast_accepts: metric_sum(&page, "registry_rounds_total", &["phase=\"fast_accept\""]),
            conflicts: metric_sum(&page, "registry_conflicts_total", &[]),
            commits: metric_sum(&page, "registry_acceptor_commit_seconds_count", &[]),
            batched_requests: metric_sum(&page, "registry_acceptor_batch_requests_sum", &[]),
        })
    }
}

/// Counters of sh's node; differences over a run.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Proposer rounds (one per proposal-attempt, counted once though sent to 3 acceptors).
    prepares: f64,
    accepts: f64,
    /// Fast rounds (round zero, no prepare) tried.
    fast_accepts: f64,
    conflicts: f64,
    /// The local acceptor's storage commits (one fsync each) and requests they covered.
    commits: f64,
    batched_requests: f64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            prepares: self.prepares - o.prepares,
            accepts: self.accepts - o.accepts,
            fast_accepts: self.fast_accepts - o.fast_accepts,
            conflicts: self.conflicts - o.conflicts,
            commits: self.commits - o.commits,
            batched_requests: self.batched_requests - o.batched_requests,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runs

struct Row {
    scenario: String,
    concurrency: usize,
    result: LoopResult,
    counters: Counters,
    cpu_busy: Option<f64>,
}

struct SteadyRow {
    scenario: String,
    one_way_delay_ms: u64,
    result: LoopResult,
    counters: Counters,
}

async fn measure(
    args: &Args,
    bed: &Bed,
    scenario: &str,
    rows: &mut Vec<Row>,
    steady: &mut Vec<SteadyRow>,
) -> Result<()> {
    // Distinct IDs across scenarios and runs: a letter, 5 hex digits, then counters.
    let run_id = rand::random::<u32>() & 0xf_ffff;
    for (level, &c) in args.concurrency.iter().enumerate() {
        eprintln!("bench-registry: {scenario}, concurrency {c}");
        let phase = |tag: char| {
            let client = bed.client.clone();
            move |task: usize, n: u64| {
                let client = client.clone();
                // e.g. "r1a2b3wl2t15n1234": 6-20 chars, starts with a letter, lowercase.
                let wxid = format!("r{run_id:05x}{tag}{level}t{task}n{n}");
                let uid = format!("bench-{run_id:05x}-{tag}{level}-{task}-{n}");
                async move {
                    match client.claim(&wxid, &uid).await {
                        Ok(Claimed::Claimed { released: None }) => Ok(()),
                        Ok(other) => {
                            Err(anyhow!("claim of fresh {wxid} by fresh {uid}: {other:?}"))
                        }
                        Err(e) => Err(anyhow!("claim of {wxid}: {e}")),
                    }
                }
            }
        };
        if args.warmup_secs > 0 {
            closed_loop(c, args.warmup_secs, phase('w')).await?;
        }
        let before = bed.metrics().await?;
        let cpu0 = cpu_jiffies();
        let result = closed_loop(c, args.duration_secs, phase('m')).await?;
        let cpu1 = cpu_jiffies();
        let counters = bed.metrics().await? - before;
        if let Some(e) = &result.last_error {
            eprintln!("bench-registry: {scenario}, concurrency {c}: last error: {e}");
        }
        rows.push(Row {
            scenario: scenario.to_owned(),
            concurrency: c,
            result,
            counters,
            cpu_busy: cpu_busy(cpu0, cpu1),
        });
    }
    if args.steady_secs > 0 {
        eprintln!("bench-registry: {scenario}, steady writer");
        let uid = format!("steady-{run_id:05x}");
        // The first change prepares; the measured ones follow it.
        let first = bed
            .client
            .set_home(&uid, "sh", None)
            .await
            .with_context(|| format!("first set_home of {uid}"))?;
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(first.epoch));
        let before = bed.metrics().await?;
        let client = bed.client.clone();
        let result = closed_loop(1, args.steady_secs, move |_, n| {
            let (client, uid, epoch) = (client.clone(), uid.clone(), epoch.clone());
            async move {
                let region = REGIONS[(n % 2) as usize];
                let expected = epoch.load(std::sync::atomic::Ordering::Relaxed);
                let e = client
                    .set_home(&uid, region, Some(expected))
                    .await
                    .map_err(|e| anyhow!("set_home of {uid} at epoch {expected}: {e}"))?;
                epoch.store(e.epoch, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        let counters = bed.metrics().await? - before;
        steady.push(SteadyRow {
            scenario: scenario.to_owned(),
            one_way_delay_ms: if scenario == "loopback" {
                0
            } else {
                args.one_way_delay_ms
            },
            result,
            counters,
        });
    }
    Ok(())
}

/// Runs `bench-etcd` (next to this program) with the same levels and returns its report.
async fn run_etcd(args: &Args) -> Result<String> {
    let bin: PathBuf = std::env::current_exe()?.with_file_name("bench-etcd");
    ensure!(
        bin.exists(),
        "{} not found: build it next to this program with `cargo build --release -p homeport-integration --bins`, or pass --skip-etcd",
        bin.display()
    );
    let levels: Vec<String> = args.concurrency.iter().map(|c| c.to_string()).collect();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["--concurrency", &levels.join(",")])
        .args(["--duration-secs", &args.duration_secs.to_string()])
        .args(["--warmup-secs", &args.warmup_secs.to_string()])
        .args(["--one-way-delay-ms", &args.one_way_delay_ms.to_string()])
        .args(["--wan-leader", &args.etcd_wan_leader])
        .args(["--lincheck-secs", &args.etcd_lincheck_secs.to_string()]);
    if args.skip_loopback {
        cmd.arg("--skip-loopback");
    }
    eprintln!("bench-registry: running {}", bin.display());
    // Its progress goes to our stderr; its report is ours to print. Killed if we are dropped.
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}); its output:\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_report(
    args: &Args,
    rows: &[Row],
    steady: &[SteadyRow],
    etcd: Option<&str>,
    load: [&str; 3],
) {
    println!("# bench-registry: WeChat ID claims (fresh ID, fresh uid) against 3 registry nodes");
    println!(
        "# regions {}, one node (acceptor + proposer) each, fsync on; client in {CLIENT_REGION} talking to {CLIENT_REGION}'s node",
        REGIONS.join(", ")
    );
    println!(
        "# {} s per run after {} s warm-up; steady writer {} s",
        args.duration_secs, args.warmup_secs, args.steady_secs
    );
    println!(
        "# cores {}; load average (1/5/15 min) before {}, after the registry runs {}, after etcd {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load[0],
        load[1],
        load[2]
    );
    println!();
    println!(
        "| scenario | conc | claims/s | p50 ms | p99 ms | errors | prepares/claim | accepts/claim | fast rounds/claim | conflicts | sh fsyncs/s | requests/fsync | CPU busy |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let claims = r.result.ok.max(1) as f64;
        let k = &r.counters;
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {} |",
            r.scenario,
            r.concurrency,
            r.result.per_sec(),
            r.result.ms(0.5),
            r.result.ms(0.99),
            r.result.errors,
            k.prepares / claims,
            k.accepts / claims,
            k.fast_accepts / claims,
            k.conflicts,
            k.commits / r.result.secs,
            if k.commits > 0.0 {
                k.batched_requests / k.commits
            } else {
                0.0
            },
            r.cpu_busy
                .map_or("?".to_owned(), |b| format!("{:.0}%", b * 100.0)),
        );
    }
    if !steady.is_empty() {
        println!();
        println!(
            "Steady writer: one client, `set_home` of ONE uid with the epoch the last change returned"
        );
        println!();
        println!(
            "| scenario | changes/s | p50 ms | p99 ms | errors | prepares/change | accepts/change | target p50 | met |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for s in steady {
            let n = s.result.ok.max(1) as f64;
            let (target, met) = if s.one_way_delay_ms > 0 {
                let target = (2 * s.one_way_delay_ms + 5) as f64;
                (
                    format!("≤ {target:.0} ms"),
                    if s.result.ms(0.5) <= target {
                        "yes"
                    } else {
                        "NO"
                    },
                )
            } else {
                ("-".to_owned(), "-")
            };
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {target} | {met} |",
                s.scenario,
                s.result.per_sec(),
                s.result.ms(0.5),
                s.result.ms(0.99),
                s.result.errors,
                s.counters.prepares / n,
                s.counters.accepts / n,
            );
        }
    }
    if let Some(etcd) = etcd {
        println!();
        println!("## etcd in the same run (bench-etcd)");
        println!();
        println!("```");
        print!("{etcd}");
        println!("```");
    }
}
