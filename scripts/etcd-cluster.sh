#!/usr/bin/env bash
# A local 3-member etcd cluster on 127.0.0.x, for the registry benchmark's side-by-side numbers
# (see BENCHMARKS.md). Members a, b, c stand for regions A, B, C; each listens on its own IP
# (<prefix>.1, .2, .3) with the client port and the peer port, data under DIR/<member>.etcd,
# fsync on (etcd's default). Processes are started detached; their pids are kept in DIR so
# `stop` ends exactly those.
#
#   scripts/etcd-cluster.sh install                 # Debian etcd-server + etcd-client, if missing
#   scripts/etcd-cluster.sh start DIR [options]     # start, wait until healthy, print endpoints
#   scripts/etcd-cluster.sh stop DIR                # SIGTERM, then SIGKILL after 10 s
#   scripts/etcd-cluster.sh status DIR              # etcdctl endpoint status
#   scripts/etcd-cluster.sh bench [args]            # build and run bench-etcd (`-- --help`)
#
# start options:
#   --ip-prefix P          first three octets of the members' IPs (default 127.0.77)
#   --client-port N        (default 2379)     --peer-port N   (default 2380)
#   --advertise-peers U,U,U  peer URLs the members advertise to each other instead of their
#                          own, e.g. WAN-emulator relays in front of each member's peer port
#   --ready-timeout-secs N (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=(a b c)

die() {
  echo "etcd-cluster.sh: $*" >&2
  exit 1
}

install() {
  if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
    return
  fi
  echo "etcd-cluster.sh: etcd or etcdctl is missing; installing the Debian packages" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
      die "not root and no sudo: install etcd-server and etcd-client (apt-get install -y etcd-server etcd-client)"
    sudo="sudo"
  fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y etcd-server etcd-client
  # The package may start a system-wide etcd on 127.0.0.1:2379 where systemd runs; ours use
  # other IPs, so it does not get in the way, but it costs memory and disk: stop it if it runs.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl stop etcd || true
  fi
}

# The pid in DIR/<member>.pid if that process still runs etcd.
member_pid() {
  local pidfile="$1/$2.pid" pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q etcd || return 1
  echo "$pid"
}

start() {
  local dir="${1:-}"
  [ -n "$dir" ] || die "start needs a directory for data, logs and pids, e.g. start /tmp/etcd-bench"
  shift
  local prefix=127.0.77 client_port=2379 peer_port=2380 advertise="" ready_secs=60
  while [ $# -gt 0 ]; do
    case "$1" in
      --ip-prefix) prefix="$2"; shift 2 ;;
      --client-port) client_port="$2"; shift 2 ;;
      --peer-port) peer_port="$2"; shift 2 ;;
      --advertise-peers) advertise="$2"; shift 2 ;;
      --ready-timeout-secs) ready_secs="$2"; shift 2 ;;
      *) die "unknown start option $1 (see the top of $0)" ;;
    esac
  done
  install
  mkdir -p "$dir"
  for m in "${MEMBERS[@]}"; do
    if member_pid "$dir" "$m" >/dev/null; then
      die "member $m already runs from $dir (pid $(member_pid "$dir" "$m")); run: $0 stop $dir"
    fi
  done

  local -a adv
  if [ -n "$advertise" ]; then
    IFS=, read -r -a adv <<<"$advertise"
    [ "${#adv[@]}" = 3 ] || die "--advertise-peers needs 3 comma-separated URLs (members a,b,c), got '$advertise'"
  else
    adv=("http://$prefix.1:$peer_port" "http://$prefix.2:$peer_port" "http://$prefix.3:$peer_port")
  fi
  local cluster="a=${adv[0]},b=${adv[1]},c=${adv[2]}"
  local token="homeport-bench-$$-$RANDOM"
  local endpoints=""
  for i in 0 1 2; do
    local m="${MEMBERS[$i]}" ip="$prefix.$((i + 1))"
    local client_url="http://$ip:$client_port"
    endpoints="${endpoints:+$endpoints,}$client_url"
    rm -rf "${dir:?}/$m.etcd"
    # setsid: the member outlives this script and is not hit by the caller's Ctrl-C; `stop`
    # ends it by pid.
    setsid nohup etcd \
      --name "$m" \
      --data-dir "$dir/$m.etcd" \
      --listen-client-urls "$client_url" \
      --advertise-client-urls "$client_url" \
      --listen-peer-urls "http://$ip:$peer_port" \
      --initial-advertise-peer-urls "${adv[$i]}" \
      --initial-cluster "$cluster" \
      --initial-cluster-token "$token" \
      --initial-cluster-state new \
      --logger zap --log-outputs stderr \
      >"$dir/$m.log" 2>&1 </dev/null &
    echo $! >"$dir/$m.pid"
  done
  echo "$endpoints" >"$dir/endpoints"

  local deadline=$((SECONDS + ready_secs))
  until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    for m in "${MEMBERS[@]}"; do
      member_pid "$dir" "$m" >/dev/null ||
        die "member $m exited during start-up; its log: $dir/$m.log ($(tail -n 3 "$dir/$m.log" 2>/dev/null | tr '\n' ' '))"
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      stop "$dir"
      die "the cluster was not healthy within $ready_secs s (logs: $dir/*.log); stopped it"
    fi
    sleep 0.2
  done
  echo "$endpoints"
}

stop() {
  local dir="${1:-}"
  [ -n "$dir" ] || die "stop needs the directory given to start"
  local -a pids=()
  for m in "${MEMBERS[@]}"; do
    local pid
    if pid="$(member_pid "$dir" "$m")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/$m.pid"
  done
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
}

status() {
  local dir="${1:-}"
  [ -n "$dir" ] && [ -f "$dir/endpoints" ] || die "status needs the directory given to start"
  ETCDCTL_API=3 etcdctl --endpoints="$(cat "$dir/endpoints")" endpoint status -w table
}

bench() {
  install
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install a Rust toolchain first"
  cargo build --release --locked -p homeport-integration --bin bench-etcd
  exec "${CARGO_TARGET_DIR:-target}/release/bench-etcd" --script "$PWD/scripts/etcd-cluster.sh" "$@"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) status "$@" ;;
  bench) bench "$@" ;;
  *) die "usage: $0 install | start DIR [options] | stop DIR | status DIR | bench [args] (see the top of this file)" ;;
esac
