#!/usr/bin/env bash
# The replication benchmark: end-to-end lag at fixed write rates and catch-up after a backlog,
# three regions behind the WAN emulator (see BENCHMARKS.md). Builds in release and runs
# `bench-replication`; any arguments are passed on, e.g.
#   scripts/bench-replication.sh --rates 1000,5000 --duration-secs 20 --backlog 200000
#   scripts/bench-replication.sh --skip-catchup --no-search
# (`--help` lists them). The report goes to stdout (markdown), progress to stderr.
# Needs only a Rust toolchain: every process runs on 127.0.0.0/8, the WAN is emulated in-process.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "bench-replication.sh: cargo is missing: install a Rust toolchain (1.90 or newer) first" >&2
  exit 1
}

# The open-loop load generator opens a connection per request in flight when the server falls
# behind (up to --max-in-flight, 4096 by default), and each region process holds as many; many
# systems start with a soft limit of 1024 open files. Raise it as far as the hard limit allows.
want_files=65536
hard_files=$(ulimit -Hn)
if [ "$hard_files" = unlimited ] || [ "$hard_files" -ge "$want_files" ]; then
  ulimit -Sn "$want_files" 2>/dev/null || true
else
  ulimit -Sn "$hard_files" 2>/dev/null || true
fi
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 8192 ]; then
  echo "bench-replication.sh: only $(ulimit -Sn) open files allowed; high rates may fail to connect (pass a lower --max-in-flight, or raise the hard limit)" >&2
fi

# Builds both programs: bench-replication finds the region/node program `homeport-it` next to itself.
cargo build --release --locked -p homeport-integration --bins
exec "${CARGO_TARGET_DIR:-target}/release/bench-replication" "$@"
