#!/usr/bin/env bash
# Several raftkvd builds and etcd side by side on the core workloads, with the servers' CPU per
# operation: what "CPU per put before and after" and the runs D/E of docs/benchmarks.md come from.
#
#   scripts/bench-compare.sh OUT_DIR BUILD_DIR...
#
# Each BUILD_DIR holds a raftkvd (and raftkv, which cluster.sh uses); the load generator is
# $GEN/raftkv (default: the first BUILD_DIR), built with `--features raftkv-cli/etcd`. etcd runs
# first, then each build, in one session, with the same workloads. Results: OUT_DIR/results.jsonl
# (one `raftkv bench -o json` line per run) and OUT_DIR/cpu.txt (CPU seconds of the three server
# processes per run, from /proc/PID/stat, and the operations measured).
#
# Knobs: DURATION (10s), WARMUP (2s), KEYS (100000), WORKLOADS ("put1 put16 put64 lin64
# stale64"), ETCD_BIN / ETCDCTL_BIN (etcd, etcdctl). Ports: 12379-32380 (etcd), 17001-17203.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 2 ]] || { echo "usage: $0 OUT_DIR BUILD_DIR..." >&2; exit 2; }
OUT="$1"; shift
GEN="${GEN:-$1}"
DURATION="${DURATION:-10s}"; WARMUP="${WARMUP:-2s}"; KEYS="${KEYS:-100000}"
WORKLOADS="${WORKLOADS:-put1 put16 put64 lin64 stale64}"
ETCD_BIN="${ETCD_BIN:-etcd}"; ETCDCTL_BIN="${ETCDCTL_BIN:-etcdctl}"
mkdir -p "$OUT"; RES="$OUT/results.jsonl"; CPU="$OUT/cpu.txt"; DATA="$OUT/data"; mkdir -p "$DATA"
ETCD_CLUSTER="etcd1=http://127.0.0.1:12380,etcd2=http://127.0.0.1:22380,etcd3=http://127.0.0.1:32380"
ETCD_EP="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
RK_EP="127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003"
export RAFTKV_CLUSTER_DIR="$DATA/rk" RAFTKV_CLIENT_PORT_BASE=17000 RAFTKV_PEER_PORT_BASE=17100 RAFTKV_METRICS_PORT_BASE=17200
ETCD_PIDS=()

stop_all() {
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  ETCD_PIDS=()
  "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
}
trap stop_all EXIT INT TERM

start_etcd() {
  for n in 1 2 3; do
    local port=$((n * 10000 + 2379))
    "$ETCD_BIN" --name "etcd$n" --data-dir "$DATA/etcd$n" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token compare --initial-cluster-state new \
      --logger zap --log-level warn >>"$DATA/etcd$n.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints="$ETCD_EP" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd did not become healthy (logs: $DATA/etcd*.log)" >&2; return 1
}

cputicks() { local t=0 f; for p in "$@"; do read -r -a f < "/proc/$p/stat" && t=$((t + f[13] + f[14])); done; echo "$t"; }

run() { # run LABEL DRIVER PIDS... -- BENCH_ARGS...
  local label="$1" driver="$2"; shift 2
  local pids=(); while [[ "$1" != "--" ]]; do pids+=("$1"); shift; done; shift
  local ep=(--endpoints "$RK_EP"); [[ "$driver" == etcd ]] && ep=(--etcd-endpoints "$ETCD_EP")
  local before after line ops
  before=$(cputicks "${pids[@]}")
  line=$("$GEN/raftkv" bench --driver "$driver" "${ep[@]}" "$@" --duration "$DURATION" --warmup "$WARMUP" \
    --keys "$KEYS" --value-size 256 -o json 2>/dev/null | tail -1)
  after=$(cputicks "${pids[@]}")
  echo "{\"system\":\"$label\",${line#\{}" >> "$RES"
  ops=$(sed -n 's/.*"ops":\([0-9]*\).*/\1/p' <<<"$line")
  echo "$label $* : server_cpu_s=$(( (after - before) / 100 )).$(( (after - before) % 100 )) ops=${ops:-0}" | tee -a "$CPU"
}

workloads() { # workloads LABEL DRIVER PIDS...
  local label="$1" driver="$2"; shift 2
  for w in $WORKLOADS; do
    case $w in
      put1) run "$label" "$driver" "$@" -- put --clients 1 --connections 1 ;;
      put16) run "$label" "$driver" "$@" -- put --clients 16 --connections 4 ;;
      put64) run "$label" "$driver" "$@" -- put --clients 64 --connections 4 ;;
      lin64) run "$label" "$driver" "$@" -- get --consistency linearizable --target all --clients 64 --connections 4 ;;
      stale64) run "$label" "$driver" "$@" -- get --consistency stale --target all --clients 64 --connections 4 ;;
      *) echo "unknown workload $w" >&2; exit 2 ;;
    esac
  done
}

start_etcd || exit 1
workloads "etcd-$("$ETCD_BIN" --version | head -1 | awk '{print $3}')" etcd "${ETCD_PIDS[@]}"
stop_all
for build in "$@"; do
  export RAFTKV_BIN_DIR="$build"
  "$ROOT/scripts/cluster.sh" up >/dev/null || { echo "cluster from $build did not start" >&2; exit 1; }
  mapfile -t PIDS < <(cat "$DATA"/rk/node*.pid)
  workloads "raftkv-$(basename "$build")" raftkv "${PIDS[@]}"
  du -sh "$DATA/rk" | tee -a "$CPU"
  "$ROOT/scripts/cluster.sh" down >/dev/null
  rm -rf "$DATA/rk"
done
rm -rf "$DATA"
echo "results: $RES; CPU: $CPU"
