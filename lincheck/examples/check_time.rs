//! How long a check takes: histories of a simulated atomic register map (concurrent clients,
//! some outcomes unknown), checked with the default limits. A program, not a test:
//! `cargo run --release -p homeport-lincheck --example check_time [ops] [keys] [clients] [unknown%]`.

use std::time::Instant;

use homeport_lincheck::models::{CasOp, CasRegister, CasRet};
use homeport_lincheck::{CheckOptions, History, SequentialSpec, check};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("arguments are integers"))
    };
    let (ops, keys, clients, unknown_pct) = (arg(1, 10_000), arg(2, 100), arg(3, 16), arg(4, 5));
    let spec = CasRegister::<u16>::new();
    for seed in 0..3 {
        let h = simulate(&spec, seed, ops, keys, clients, unknown_pct as f64 / 100.0);
        let start = Instant::now();
        let verdict = check(&spec, &h, &CheckOptions::default());
        let took = start.elapsed();
        println!(
            "{ops} ops, {keys} keys, {clients} clients, {unknown_pct}% unknown (seed {seed}): {:.1} ms: {verdict}",
            took.as_secs_f64() * 1e3
        );
    }
}

/// Clients issue one operation at a time (random key, 40% reads, 30% writes, 30% compare-and-
/// set); each takes effect at a random point of its interval on a truly atomic map.
fn simulate(
    spec: &CasRegister<u16>,
    seed: u64,
    ops: u64,
    keys: u64,
    clients: u64,
    unknown_rate: f64,
) -> History<u64, CasOp<u16>, CasRet<u16>> {
    let mut rng = StdRng::seed_from_u64(seed);
    // (effect time, invoked, returned, key, op, unknown, applied)
    let mut planned = Vec::new();
    let mut clock = vec![0u64; clients as usize];
    for i in 0..ops {
        let c = (i % clients) as usize;
        let invoked = clock[c] + rng.random_range(0..5);
        let effect = invoked + rng.random_range(1..=10);
        let returned = effect + rng.random_range(1..=10);
        clock[c] = returned;
        let op = match rng.random_range(0..10) {
            0..4 => CasOp::Read,
            4..7 => CasOp::Write(rng.random_range(0..8)),
            _ => CasOp::Cas {
                expected: rng.random_bool(0.7).then(|| rng.random_range(0..8)),
                new: rng.random_range(0..8),
            },
        };
        let unknown = rng.random_bool(unknown_rate);
        let applied = !unknown || rng.random_bool(0.5);
        planned.push((
            effect,
            invoked,
            returned,
            rng.random_range(0..keys),
            op,
            unknown,
            applied,
        ));
    }
    planned.sort_by_key(|p| (p.0, p.1));
    let mut state = std::collections::HashMap::new();
    let mut h = History::new();
    for (_, invoked, returned, key, op, unknown, applied) in planned {
        let ret = if applied {
            let s = state.entry(key).or_insert_with(|| spec.init());
            let (next, ret) = spec.step(s, &op);
            *s = next;
            Some(ret)
        } else {
            None
        };
        match ret {
            Some(ret) if !unknown => {
                h.push_returned(key, op, ret, invoked, returned)
                    .expect("returned after invoked by construction");
            }
            _ => {
                h.push_unknown(key, op, invoked);
            }
        }
    }
    h
}
