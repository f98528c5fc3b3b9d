//! The gateway's upstream proxy against nginx: one trivial backend (a 2-byte answer), measured
//! by wrk (closed loop, keep-alive) directly, through the gateway (`homeport gateway`, ticket
//! checked on every request, admission, home resolution, hop-by-hop headers, Forwarded), and
//! through nginx as a reverse proxy with an upstream keep-alive pool. Same machine, same run.
//!
//! `scripts/bench-gateway.sh` installs nginx and wrk if missing, builds in release and runs this.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use homeport_integration::{Cluster, ClusterSpec, GatewaySetup, RegionSetup, wait_until};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser, Debug)]
#[command(about = "Requests/s and latency: backend direct, via the homeport gateway, via nginx")]
struct Args {
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of the warm-up run before each measurement (not reported).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Open connections of wrk.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// nginx worker processes (the gateway uses one tokio worker per core, 2 here).
    #[arg(long, default_value_t = 2)]
    nginx_workers: u32,
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Measure without nginx (when it is not installed).
    #[arg(long)]
    skip_nginx: bool,
    /// Rounds of direct, gateway, nginx in turn; the summary gives the medians of the
    /// per-round ratios (a 2-core machine is noisy: one round says little).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

/// What wrk reported for one target.
#[derive(Debug, Clone)]
struct Measured {
    target: &'static str,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: String,
    /// Requests wrk completed in the measured run.
    requests: Option<u64>,
    /// CPU time the proxy (gateway process, or nginx's workers) spent per request, in
    /// microseconds (user + system, from /proc): how much work a request costs it, which
    /// other load on the machine disturbs less than the request rate.
    proxy_cpu_us_per_request: Option<f64>,
}

/// The trivial backend: "ok" to everything, keep-alive, HTTP/1.1.
async fn start_backend() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(addr)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How long nginx's master may take to stop its workers after SIGTERM before it is killed.
const NGINX_STOP_MS: u64 = 5_000;

/// Stops nginx on drop: SIGTERM, so the master stops its workers too (a SIGKILL of the master
/// alone left the workers running), then SIGKILL if it has not exited in time.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(NGINX_STOP_MS);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(args: &Args, dir: &Path, backend: SocketAddr) -> Result<(KillOnDrop, u16)> {
    let port = free_port()?;
    for sub in ["logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let conf = format!(
        r#"worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream backend {{
        server {backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
        workers = args.nginx_workers,
        dir = dir.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new(&args.nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install it: apt-get install nginx, or pass --skip-nginx)",
                args.nginx.display()
            )
        })?;
    Ok((KillOnDrop(child), port))
}

/// Milliseconds from wrk's "1.23ms" / "456.00us" / "1.20s".
fn parse_duration_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

fn parse_wrk(target: &'static str, out: &str) -> Result<Measured> {
    let mut m = Measured {
        target,
        requests_per_sec: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        errors: String::new(),
        requests: parse_requests(out),
        proxy_cpu_us_per_request: None,
    };
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            m.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            m.p50_ms = parse_duration_ms(v).unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("99%") {
            m.p99_ms = parse_duration_ms(v).unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            m.non_2xx = v.trim().parse().unwrap_or(0);
        } else if l.starts_with("Socket errors:") {
            m.errors = l.to_owned();
        }
    }
    if m.requests_per_sec == 0.0 {
        bail!("wrk printed no Requests/sec for {target}:\n{out}");
    }
    Ok(m)
}

fn run_wrk(
    args: &Args,
    url: &str,
    ticket: Option<&str>,
    secs: u64,
    target: &'static str,
) -> Result<Measured> {
    let mut cmd = Command::new(&args.wrk);
    cmd.arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(t) = ticket {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} (install it: apt-get install wrk)",
                args.wrk.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "wrk failed on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(target, &String::from_utf8_lossy(&out.stdout))
}

/// Requests wrk completed ("N requests in ...").
fn parse_requests(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
}

/// Clock ticks per second of /proc/<pid>/stat times.
fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU ticks of `pid` (fields 14 and 15 of /proc/<pid>/stat, after the command
/// name, which may hold spaces and so is skipped up to its closing parenthesis).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The processes whose parent is `parent` (nginx's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn total_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run(args: Args) -> Result<()> {
    let backend = start_backend().await?;
    let bin = std::env::current_exe()?.with_file_name("homeport-it");
    let setup = GatewaySetup {
        settings: vec![
            "max_concurrency = 4096".into(),
            "max_queued_requests = 4096".into(),
            "upstream_max_idle_per_host = 1024".into(),
        ],
        region_toml: vec![(
            "sh".into(),
            format!("[[regions.upstreams]]\nprefix = \"/bench/\"\nurl = \"http://{backend}\""),
        )],
    };
    let spec = ClusterSpec::one_region(1);
    // Only the gateway runs: the upstream path needs neither queue nodes nor the region process.
    let cluster = Cluster::with_gateways(&bin, &spec, &RegionSetup::default(), &setup)?;
    cluster.start_gateway("sh")?;
    let metrics = cluster.gateway_metrics_url("sh")?;
    let metrics_addr: SocketAddr = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()?;
    wait_until("the gateway to listen", 30_000, || async {
        tokio::net::TcpStream::connect(metrics_addr).await.is_ok()
    })
    .await
    .with_context(|| cluster.node_log(&homeport_config::gateway_identity("sh")))?;
    let ticket = cluster.ticket("sh-1")?;
    let gateway_url = format!("{}/bench/x", cluster.gateway_url("sh")?);
    let direct_url = format!("http://{backend}/bench/x");

    let nginx_dir = tempfile::Builder::new()
        .prefix("homeport-nginx-")
        .tempdir()?;
    let nginx = if args.skip_nginx {
        None
    } else {
        let (child, port) = start_nginx(&args, nginx_dir.path(), backend)?;
        wait_until("nginx to listen", 30_000, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await?;
        Some((child, format!("http://127.0.0.1:{port}/bench/x")))
    };

    let mut targets: Vec<(&'static str, String, Option<&str>)> = vec![
        ("backend direct", direct_url, None),
        ("homeport gateway", gateway_url, Some(ticket.as_str())),
    ];
    if let Some((_, url)) = &nginx {
        targets.push(("nginx", url.clone(), None));
    }
    let ticks_per_sec = clock_ticks_per_sec();
    let gateway_pid = cluster.pid(&homeport_config::gateway_identity("sh"));
    let nginx_pid = nginx.as_ref().map(|(child, _)| child.0.id());
    let proxy_pids = |name: &str| -> Vec<u32> {
        match name {
            "homeport gateway" => gateway_pid.into_iter().collect(),
            "nginx" => nginx_pid.map(children_of).unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    let load_before = loadavg();
    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut results = Vec::new();
        for (name, url, t) in &targets {
            eprintln!("bench-gateway: round {round}: {name}: {url}");
            let (args2, url2, t2) = (&args, url.clone(), t.map(str::to_owned));
            // wrk blocks; run it off the async threads so the backend keeps serving.
            let warm = tokio::task::block_in_place(|| {
                run_wrk(args2, &url2, t2.as_deref(), args2.warmup_secs, name)
            })?;
            if warm.non_2xx > 0 {
                bail!("{name}: {} non-2xx answers during warm-up", warm.non_2xx);
            }
            let pids = proxy_pids(name);
            let before = total_cpu_ticks(&pids);
            let mut m = tokio::task::block_in_place(|| {
                run_wrk(args2, &url2, t2.as_deref(), args2.duration_secs, name)
            })?;
            let spent = total_cpu_ticks(&pids).saturating_sub(before);
            if !pids.is_empty()
                && let Some(n) = m.requests.filter(|n| *n > 0)
            {
                m.proxy_cpu_us_per_request = Some(spent as f64 / ticks_per_sec * 1e6 / n as f64);
            }
            results.push(m);
        }
        rounds.push(results);
    }
    let load_after = loadavg();
    report(&args, &rounds, &load_before, &load_after);
    drop(nginx);
    Ok(())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn report(args: &Args, rounds: &[Vec<Measured>], load_before: &str, load_after: &str) {
    println!(
        "## Gateway upstream proxy vs nginx (wrk -t{} -c{} -d{}s, keep-alive, 2-byte answers, {} rounds)\n",
        args.threads,
        args.connections,
        args.duration_secs,
        rounds.len()
    );
    println!(
        "| round | path | requests/s | p50 ms | p99 ms | proxy CPU µs/request | non-2xx | socket errors |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for (i, results) in rounds.iter().enumerate() {
        for m in results {
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} |",
                i + 1,
                m.target,
                m.requests_per_sec,
                m.p50_ms,
                m.p99_ms,
                m.proxy_cpu_us_per_request
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "—".into()),
                m.non_2xx,
                if m.errors.is_empty() {
                    "none"
                } else {
                    &m.errors
                }
            );
        }
    }
    // Per round: each proxy against the direct run and against each other, then medians.
    let of = |r: &[Measured], target: &str| r.iter().find(|m| m.target == target).cloned();
    let per_round = |f: &dyn Fn(&[Measured]) -> Option<f64>| -> Vec<f64> {
        rounds.iter().filter_map(|r| f(r)).collect()
    };
    let fmt = |v: Option<f64>, digits: usize| {
        v.map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "—".into())
    };
    println!("\nMedians over the rounds (each ratio taken within its round):\n");
    for target in ["homeport gateway", "nginx"] {
        let rps = per_round(&|r| of(r, target).map(|m| m.requests_per_sec));
        if rps.is_empty() {
            continue;
        }
        let vs_direct = per_round(&|r| {
            Some(of(r, target)?.requests_per_sec / of(r, "backend direct")?.requests_per_sec)
        });
        let added_p99 =
            per_round(&|r| Some(of(r, target)?.p99_ms - of(r, "backend direct")?.p99_ms));
        let cpu = per_round(&|r| of(r, target)?.proxy_cpu_us_per_request);
        println!(
            "- {target}: {} requests/s, {}x the direct throughput, p99 {} ms against direct, {} µs CPU per request",
            fmt(median(rps), 0),
            fmt(median(vs_direct), 2),
            fmt(median(added_p99), 3),
            fmt(median(cpu), 1),
        );
    }
    let ratios = per_round(&|r| {
        Some(of(r, "homeport gateway")?.requests_per_sec / of(r, "nginx")?.requests_per_sec)
    });
    if !ratios.is_empty() {
        let added = |r: &[Measured], t: &str| -> Option<f64> {
            Some(of(r, t)?.p99_ms - of(r, "backend direct")?.p99_ms)
        };
        let p99_gap = per_round(&|r| Some(added(r, "homeport gateway")? - added(r, "nginx")?));
        let cpu_ratio = per_round(&|r| {
            Some(
                of(r, "homeport gateway")?.proxy_cpu_us_per_request?
                    / of(r, "nginx")?.proxy_cpu_us_per_request?,
            )
        });
        let list = ratios
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "- **gateway / nginx throughput: median {}x** (rounds: {list})",
            fmt(median(ratios.clone()), 2)
        );
        println!(
            "- gateway's added p99 minus nginx's: median {} ms (negative: the gateway adds less)",
            fmt(median(p99_gap), 3)
        );
        println!(
            "- gateway / nginx CPU per request: median {}x",
            fmt(median(cpu_ratio), 2)
        );
    }
    println!(
        "- load average before / after: {load_before} / {load_after} ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    homeport_integration::bench_main("bench-gateway", run(args))
}
