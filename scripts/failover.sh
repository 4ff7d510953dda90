#!/usr/bin/env bash
# Measures failover on the local cluster (scripts/cluster.sh up first):
# for each round, SIGKILL the current leader, then retry a write until one succeeds; the time
# from the SIGKILL to that first acknowledged write is the round's failover time. The killed
# node is restarted and allowed to catch up before the next round.
#
#   scripts/failover.sh [ROUNDS]      (default 5)
#
# Resolution: each attempt is one `raftkv put` process with a 100 ms deadline, so a figure
# includes a few ms of process start-up per attempt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-5}"
CLUSTER="$ROOT/scripts/cluster.sh"
RAFTKV="${CARGO_TARGET_DIR:-$ROOT/target}/release/raftkv"
[[ -x "$RAFTKV" ]] || { echo "failover.sh: $RAFTKV missing; run scripts/cluster.sh up first" >&2; exit 1; }

leader_id() {
  "$RAFTKV" --timeout 1s cluster leader 2>/dev/null | cut -d' ' -f1
}

wait_leader() {
  local i id
  for i in $(seq 1 200); do
    id="$(leader_id || true)"
    if [[ -n "$id" ]]; then echo "$id"; return 0; fi
    sleep 0.05
  done
  echo "failover.sh: no leader" >&2
  exit 1
}

times=()
for round in $(seq 1 "$ROUNDS"); do
  leader="$(wait_leader)"
  "$RAFTKV" put "failover/round-$round/before" ok >/dev/null
  t0=$(date +%s%N)
  "$CLUSTER" kill "$leader" >/dev/null
  attempts=0
  until "$RAFTKV" --timeout 100ms put "failover/round-$round/after" ok >/dev/null 2>&1; do
    attempts=$((attempts + 1))
  done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times+=("$ms")
  echo "round $round: killed leader node $leader; first write acknowledged after ${ms} ms ($attempts failed attempts)"
  "$CLUSTER" start "$leader" >/dev/null
  # Let the restarted node rejoin and catch up before the next kill.
  for i in $(seq 1 100); do
    if "$RAFTKV" --endpoints "127.0.0.1:$(( ${RAFTKV_CLIENT_PORT_BASE:-7000} + leader ))" --timeout 500ms \
        get "failover/round-$round/after" --consistency stale >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
done

sorted=($(printf '%s\n' "${times[@]}" | sort -n))
n=${#sorted[@]}
if (( n % 2 == 1 )); then median=${sorted[$((n / 2))]}; else median=$(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
echo "failover over $n rounds: median ${median} ms, min ${sorted[0]} ms, max ${sorted[$((n - 1))]} ms"
