#!/usr/bin/env bash
# The gateway benchmark: requests/s and p50/p99 of a trivial backend direct, through the gateway's
# upstream proxy (ticket checked on every request), and through nginx as a reverse proxy with
# upstream keep-alive, all driven by wrk in one run (see BENCHMARKS.md). Installs nginx and wrk
# with apt-get when they are missing, builds with the `dist` profile and runs `bench-gateway`; arguments are
# passed on, e.g.
#   scripts/bench-gateway.sh --duration-secs 20 --connections 128
# (`--help` lists them). The report goes to stdout (markdown), progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "bench-gateway.sh: cargo is missing: install a Rust toolchain (1.90 or newer) first" >&2
  exit 1
}

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "bench-gateway.sh: ${missing[*]} missing and not root (no sudo): install them, or pass --skip-nginx" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "bench-gateway.sh: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >&2
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# Each wrk connection is a socket in wrk, the gateway and the backend.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# Builds both programs with the production profile (`dist`: release with fat LTO, see
# Cargo.toml): bench-gateway finds the gateway program `homeport-it` next to itself.
cargo build --profile dist --locked -p homeport-integration --bin homeport-it --bin bench-gateway
exec "${CARGO_TARGET_DIR:-target}/dist/bench-gateway" --nginx "$nginx_bin" "$@"
