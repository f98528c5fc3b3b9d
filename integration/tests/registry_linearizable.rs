//! The registry's proof on real processes: 12 clients claim, release and look up 4 WeChat IDs on
//! 3 registry nodes while one node is killed (-9) and restarted and one region is cut off by the
//! WAN emulator and healed; the recorded history must be linearizable (`homeport-lincheck`,
//! `models::Registry`). The same workload against acceptors broken on purpose
//! (`HOMEPORT_REGISTRY_UNSAFE_FAULT=forget-promises`) must be found NOT linearizable, so the
//! first test cannot pass because the check is blind.
//!
//! How the history stays faithful to what the registry promises:
//! - Each uid claims only ONE key, so "a user holds one ID; claiming another releases the first"
//!   never links two keys (each key is then an independent register, checked on its own).
//! - Each client talks to ONE node (no fallback to another region's node). The client's fallback
//!   re-sends an operation that may have half-happened on the first node; the second node then
//!   answers for the retry (a release that took effect answers "already free"), which no single
//!   operation of the model could answer. With one node per client, every answer is the answer
//!   of one operation; a node that died or lost its majority gives an unknown outcome.
//! - After an unknown outcome a client only looks up (reads of unknown outcome cost the checker
//!   nothing) until one answers, so each outage adds at most one unknown change per client.
//! - `Claiming{uid}` (a claim has reserved the ID and will commit: nothing can abort a reserved,
//!   backed transition, and the registry already answers `Taken{uid}` to others) is `Found(uid)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use homeport_config::OPERATOR_IDENTITY;
use homeport_integration::registries::RegistryCluster;
use homeport_integration::wait_until;
use homeport_integration::wan::Wan;
use homeport_lincheck::models::{Registry, RegistryOp, RegistryRet};
use homeport_lincheck::{CheckOptions, Recorder, Verdict, check};
use homeport_registry::client::{ClientError, RegistryClient, Released};
use homeport_registry::node::{FORGET_PROMISES, UNSAFE_FAULT_ENV};
use homeport_registry::registry::WxidStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const REGIONS: [&str; 3] = ["sh", "hk", "ca"];
/// WeChat IDs the clients fight over.
const KEYS: usize = 4;
/// Clients; client `i` uses key `i % KEYS` and node `REGIONS[i % 3]`, so every key has 3 clients
/// on 3 different nodes (4 and 3 are coprime), each with a uid of its own.
const CLIENTS: usize = 12;
/// Operations the clients may start per phase; past it they wait for the next phase, so a slow
/// restart cannot pile up operations: at most 5 phases × 400 = 2000 operations per run.
const MAX_OPS_PER_PHASE: usize = 400;
/// Operations that must succeed (invoked and answered in the same phase) in every phase.
const MIN_OK_OPS_PER_PHASE: u64 = 20;
/// Generous: a phase on a loaded 2-core machine reaches its quota in a few seconds.
const PHASE_TIMEOUT_MS: u64 = 60_000;
/// Pause after an unknown outcome before the next try, so a dead node is not hammered.
const RETRY_PAUSE_MS: u64 = 100;
/// Rounds of the broken-acceptor workload before giving up on finding a violation.
const MAX_FAULT_ROUNDS: usize = 4;

type Rec = Recorder<String, RegistryOp<String>, RegistryRet<String>>;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_homeport-it"))
}

/// Short rounds so a dead or cut-off acceptor costs little, and few attempts so a node without
/// a majority answers "unavailable" within a few seconds.
fn cluster() -> Result<RegistryCluster> {
    RegistryCluster::new(
        bin(),
        &REGIONS,
        &[
            "round_timeout_ms = 500",
            "max_attempts = 4",
            "backoff_base_ms = 10",
            "backoff_max_ms = 100",
            "operation_timeout_ms = 15000",
            "connect_timeout_ms = 1000",
        ],
    )
}

/// A client that only ever asks `region`'s node (see the module documentation).
fn pinned_client(c: &RegistryCluster, region: &str) -> Result<RegistryClient> {
    let mut only = c.deployment.clone();
    for r in &mut only.regions {
        if r.name != region {
            r.registry = None;
        }
    }
    Ok(RegistryClient::new(
        c.endpoint(OPERATOR_IDENTITY)?,
        &only,
        region,
    )?)
}

fn key_name(k: usize) -> String {
    format!("linkey{k}")
}

/// What the workload shares between the clients and the fault schedule.
struct Shared {
    rec: Rec,
    /// Current phase, as set by the schedule (also woken on stop).
    phase: watch::Sender<usize>,
    /// Per phase, operations answered (ok or refused) that were invoked in the same phase.
    ok_per_phase: Vec<AtomicU64>,
    /// Per region, operations answered.
    ok_per_region: Vec<AtomicU64>,
    /// Per phase, operations started (bounded by [`MAX_OPS_PER_PHASE`], plus refused tries).
    started_per_phase: Vec<AtomicUsize>,
    in_flight: AtomicUsize,
    unknown: AtomicU64,
    /// Errors that are neither refusals nor unknown outcomes (recorded as unknown).
    unexpected: std::sync::Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn new(phases: usize) -> Arc<Self> {
        Arc::new(Shared {
            rec: Recorder::new(),
            phase: watch::Sender::new(0),
            ok_per_phase: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            ok_per_region: REGIONS.iter().map(|_| AtomicU64::new(0)).collect(),
            started_per_phase: (0..phases).map(|_| AtomicUsize::new(0)).collect(),
            in_flight: AtomicUsize::new(0),
            unknown: AtomicU64::new(0),
            unexpected: std::sync::Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn ok_in(&self, phase: usize) -> u64 {
        self.ok_per_phase[phase].load(Ordering::SeqCst)
    }

    fn budget_spent(&self, phase: usize) -> bool {
        self.started_per_phase[phase].load(Ordering::SeqCst) >= MAX_OPS_PER_PHASE
            && self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Moves to `phase` and waits until [`MIN_OK_OPS_PER_PHASE`] operations succeeded in it.
    async fn run_phase(&self, phase: usize, what: &str) -> Result<()> {
        self.phase.send_replace(phase);
        let started = Instant::now();
        let r = wait_until(
            &format!("{MIN_OK_OPS_PER_PHASE} answered operations in phase {phase} ({what})"),
            PHASE_TIMEOUT_MS,
            || async { self.ok_in(phase) >= MIN_OK_OPS_PER_PHASE || self.budget_spent(phase) },
        )
        .await;
        if let Err(e) = r {
            bail!("{e}: the registry made no progress");
        }
        if self.ok_in(phase) < MIN_OK_OPS_PER_PHASE {
            bail!(
                "phase {phase} ({what}) got only {} answered operations out of \
                 {MAX_OPS_PER_PHASE} started: the registry is too slow or stuck",
                self.ok_in(phase)
            );
        }
        eprintln!(
            "phase {phase} ({what}): {} answered in {:?}",
            self.ok_in(phase),
            started.elapsed()
        );
        Ok(())
    }
}

/// One client: random claims, releases and lookups of its key as its uid, until told to stop.
async fn client_loop(
    shared: Arc<Shared>,
    client: RegistryClient,
    i: usize,
    region_index: usize,
    seed: u64,
) {
    let key = key_name(i % KEYS);
    let uid = format!("u{i}");
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut probing = false;
    let mut phase_rx = shared.phase.subscribe();
    while !shared.stop.load(Ordering::SeqCst) {
        let phase = *phase_rx.borrow_and_update();
        if shared.started_per_phase[phase].fetch_add(1, Ordering::SeqCst) >= MAX_OPS_PER_PHASE {
            // This phase's budget is spent: wait for the next phase, or the stop.
            if phase_rx.changed().await.is_err() {
                break;
            }
            continue;
        }
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let op = match (probing, rng.random_range(0..10)) {
            (true, _) | (false, 0..3) => RegistryOp::Lookup,
            (false, 3..7) => RegistryOp::Claim(uid.clone()),
            (false, _) => RegistryOp::Release(uid.clone()),
        };
        let inv = shared.rec.invoke(key.clone(), op.clone());
        let answer: Result<RegistryRet<String>, ClientError> = match &op {
            RegistryOp::Claim(u) => match client.claim(&key, u).await {
                Ok(_) => Ok(RegistryRet::Claimed),
                Err(ClientError::Taken { owner, .. }) => Ok(RegistryRet::Owned(owner)),
                Err(e) => Err(e),
            },
            RegistryOp::Release(u) => match client.release(&key, u).await {
                Ok(Released::Released) => Ok(RegistryRet::Released),
                Ok(Released::AlreadyFree) => Ok(RegistryRet::NotHeld),
                Err(ClientError::NotOwner { .. }) => Ok(RegistryRet::NotOwner),
                Err(e) => Err(e),
            },
            RegistryOp::Lookup => match client.lookup(&key).await {
                Ok(WxidStatus::Free) => Ok(RegistryRet::Found(None)),
                Ok(WxidStatus::Held { uid } | WxidStatus::Claiming { uid }) => {
                    Ok(RegistryRet::Found(Some(uid)))
                }
                Err(e) => Err(e),
            },
        };
        match answer {
            Ok(ret) => {
                inv.ok(ret);
                probing = false;
                if *shared.phase.borrow() == phase {
                    shared.ok_per_phase[phase].fetch_add(1, Ordering::SeqCst);
                }
                shared.ok_per_region[region_index].fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                // Unknown, or an error the client does not classify: the operation may or may
                // not have taken effect, which is all the checker may assume.
                inv.unknown();
                shared.unknown.fetch_add(1, Ordering::SeqCst);
                if !e.outcome_unknown() {
                    shared
                        .unexpected
                        .lock()
                        .expect("unexpected lock")
                        .push(format!(
                            "client {i} ({}) {op:?}: {e}",
                            REGIONS[region_index]
                        ));
                }
                probing = true;
            }
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if probing {
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    }
}

/// Starts the clients; returns their handles.
fn spawn_clients(
    c: &RegistryCluster,
    shared: &Arc<Shared>,
    seed: u64,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let region_index = i % REGIONS.len();
        let client = pinned_client(c, REGIONS[region_index])?;
        tasks.push(tokio::spawn(client_loop(
            shared.clone(),
            client,
            i,
            region_index,
            seed,
        )));
    }
    Ok(tasks)
}

async fn stop_clients(shared: &Shared, tasks: Vec<tokio::task::JoinHandle<()>>) -> Result<()> {
    shared.stop.store(true, Ordering::SeqCst);
    shared.phase.send_modify(|_| {});
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn seed() -> u64 {
    let seed = std::env::var("REGISTRY_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("client seed {seed} (REGISTRY_LIN_SEED={seed} repeats the clients' choices)");
    seed
}

fn check_history(shared: &Shared) -> (Verdict<String, Registry<String>>, usize, Duration) {
    let history = shared.rec.history();
    let ops = history.len();
    let started = Instant::now();
    let verdict = check(&Registry::new(), &history, &CheckOptions::default());
    (verdict, ops, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_is_linearizable_under_kills_and_partitions() -> Result<()> {
    let test_started = Instant::now();
    let c = cluster()?;
    let wan = Wan::new(rand::random());
    c.route_through(&wan).await?;
    c.start_all()?;
    for r in REGIONS {
        c.wait_up(r).await?;
    }
    let phases = [
        "all nodes up",
        "sh killed (-9)",
        "sh restarted",
        "ca cut off",
        "ca healed",
    ];
    let shared = Shared::new(phases.len());
    let tasks = spawn_clients(&c, &shared, seed())?;

    let schedule = async {
        shared.run_phase(0, phases[0]).await?;
        c.kill("sh")?;
        shared.run_phase(1, phases[1]).await?;
        c.start("sh")?;
        c.wait_up("sh").await?;
        shared.run_phase(2, phases[2]).await?;
        wan.partition_region("ca");
        shared.run_phase(3, phases[3]).await?;
        let dropped: u64 = ["sh", "hk"]
            .iter()
            .map(|o| wan.stats(o, "ca").dropped_partition + wan.stats("ca", o).dropped_partition)
            .sum();
        if dropped == 0 {
            bail!("the partition of ca dropped nothing: registry traffic does not cross the WAN");
        }
        wan.heal_region("ca");
        let ca_before = shared.ok_per_region[2].load(Ordering::SeqCst);
        shared.run_phase(4, phases[4]).await?;
        // ca's clients are served again, not just the other regions'.
        wait_until(
            "ca's clients to be answered after the heal",
            PHASE_TIMEOUT_MS,
            || async { shared.ok_per_region[2].load(Ordering::SeqCst) > ca_before },
        )
        .await?;
        Ok::<(), anyhow::Error>(())
    };
    let scheduled = schedule.await;
    stop_clients(&shared, tasks).await?;
    if let Err(e) = scheduled {
        let logs: String = REGIONS
            .iter()
            .map(|r| {
                let log = c.log(r);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "\n--- last lines of registry-{r} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        bail!("{e:#}{logs}");
    }

    let unexpected = shared.unexpected.lock().expect("unexpected lock").clone();
    assert!(
        unexpected.is_empty(),
        "errors that are neither refusals nor unknown outcomes: {unexpected:#?}"
    );
    let (verdict, ops, check_time) = check_history(&shared);
    let per_phase: HashMap<&str, u64> = phases
        .iter()
        .enumerate()
        .map(|(p, name)| (*name, shared.ok_in(p)))
        .collect();
    eprintln!(
        "registry linearizability: {ops} operations recorded ({} of unknown outcome), answered per \
         phase {per_phase:?}, checked in {check_time:?}; test took {:?}",
        shared.unknown.load(Ordering::SeqCst),
        test_started.elapsed()
    );
    match verdict {
        Verdict::Linearizable(_) => Ok(()),
        other => bail!("the registry's history is not proven linearizable: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_forgets_promises_is_caught() -> Result<()> {
    let test_started = Instant::now();
    let c = cluster()?;
    c.set_node_env(UNSAFE_FAULT_ENV, FORGET_PROMISES);
    c.start_all()?;
    for r in REGIONS {
        c.wait_up(r).await?;
    }
    assert!(
        c.log("sh").contains(UNSAFE_FAULT_ENV),
        "a node with the fault on must say so in its log:\n{}",
        c.log("sh")
    );
    let seed = seed();
    let shared = Shared::new(MAX_FAULT_ROUNDS);
    let tasks = spawn_clients(&c, &shared, seed)?;
    let mut found = None;
    for round in 0..MAX_FAULT_ROUNDS {
        let r = shared
            .run_phase(round, "all nodes forget their promises")
            .await;
        if let Err(e) = r {
            stop_clients(&shared, tasks).await?;
            return Err(e);
        }
        let (verdict, ops, check_time) = check_history(&shared);
        if let Verdict::NotLinearizable(v) = verdict {
            found = Some((round, ops, check_time, v));
            break;
        }
        eprintln!("round {round}: {ops} operations, no violation yet ({verdict})");
    }
    stop_clients(&shared, tasks).await?;
    let Some((round, ops, check_time, violation)) = found else {
        bail!(
            "the checker found no violation in {MAX_FAULT_ROUNDS} rounds against acceptors that \
             forget their promises: either the fault switch does not work \
             ({UNSAFE_FAULT_ENV}={FORGET_PROMISES} in registry/src/node.rs) or the check is blind"
        );
    };
    eprintln!(
        "broken acceptors caught in round {round}: {ops} operations, checked in {check_time:?}; \
         test took {:?}\n{violation}",
        test_started.elapsed()
    );
    Ok(())
}
