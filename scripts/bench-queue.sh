#!/usr/bin/env bash
# The quorum-queue append benchmark, side by side with NATS JetStream R3 (see BENCHMARKS.md).
# Installs nats-server if it is missing, builds in release, and runs `bench-queue`; any arguments
# are passed on, e.g. `scripts/bench-queue.sh --duration-secs 5 --repeats 5 --concurrency 1,256`
# (`--help` lists them). The results table goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

skip_nats=0
for arg in "$@"; do
  case "$arg" in
    --skip-nats) skip_nats=1 ;;
    -h|--help) skip_nats=1 ;;
  esac
done

if [ "$skip_nats" = 0 ] && ! command -v nats-server >/dev/null 2>&1; then
  echo "bench-queue.sh: nats-server is missing; installing the Debian package" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "bench-queue.sh: not root and no sudo: install nats-server (apt-get install -y nats-server) or pass --skip-nats" >&2
      exit 1
    }
    sudo="sudo"
  fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y nats-server
fi

command -v cargo >/dev/null 2>&1 || {
  echo "bench-queue.sh: cargo is missing: install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
}

# Builds both programs: bench-queue finds the node program `homeport-it` next to itself.
cargo build --release --locked -p homeport-integration --bins
exec "${CARGO_TARGET_DIR:-target}/release/bench-queue" "$@"
