#!/usr/bin/env bash
# The registry benchmark (issue 4): claims/s and p50/p99 of 3 registry nodes on loopback and
# with an emulated WAN between regions, a steady writer's latency, and a 3-member etcd doing
# put-if-absent transactions in the same run (see BENCHMARKS.md). Installs etcd (Debian
# etcd-server) if missing, builds in release and runs `bench-registry`; arguments are passed on:
#   scripts/bench-registry.sh --duration-secs 5 --concurrency 1,16,64 --one-way-delay-ms 30
#   scripts/bench-registry.sh --skip-etcd --steady-secs 20
# (`--help` lists them). The report goes to stdout (markdown), progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "bench-registry.sh: cargo is missing: install a Rust toolchain (1.90 or newer) first" >&2
  exit 1
}
case " $* " in
  *" --skip-etcd "* | *" --help "* | *" -h "*) ;;
  *) scripts/etcd-cluster.sh install ;;
esac

# Builds every program: bench-registry finds `homeport-it` (the registry node) and `bench-etcd`
# next to itself.
cargo build --release --locked -p homeport-integration --bins
exec "${CARGO_TARGET_DIR:-target}/release/bench-registry" "$@"
