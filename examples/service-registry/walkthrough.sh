#!/usr/bin/env bash
# The service registry, live: three instances of service "api" register with `raftkv service
# register` (primaries a and b of weights 3 and 1, backup c), `service-shares` prints each
# instance's share of 100 picks every second, and then:
#   1. a's registrar is SIGKILLed: its share moves to b within the lease TTL;
#   2. b's too: the backup c serves;
#   3. both come back: 75 / 25 / 0 again;
#   4. `raftkv service set-weight`: a canary shift to 9 / 1 (90 % / 10 %), at run time.
#
# It runs its own 3-node cluster (scripts/cluster.sh) on ports that do not collide with the
# default local cluster, in RAFTKV_CLUSTER_DIR (wiped first), and takes it down at the end.
#   RAFTKV_CLIENT_PORT_BASE (18000), RAFTKV_PEER_PORT_BASE (18100),
#   RAFTKV_METRICS_PORT_BASE (18200), RAFTKV_CLUSTER_DIR (/tmp/registry-walk),
#   TTL (2s; at least the cluster's minimum lease TTL, max(1 s, 5 x election max) = 1 s with
#   cluster.sh's defaults), RAFTKV_BIN_DIR (use built binaries, e.g. target/debug, instead
#   of building target/release).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export RAFTKV_CLIENT_PORT_BASE="${RAFTKV_CLIENT_PORT_BASE:-18000}"
export RAFTKV_PEER_PORT_BASE="${RAFTKV_PEER_PORT_BASE:-18100}"
export RAFTKV_METRICS_PORT_BASE="${RAFTKV_METRICS_PORT_BASE:-18200}"
export RAFTKV_ETCD_PORT_BASE="${RAFTKV_ETCD_PORT_BASE:-18300}"
export RAFTKV_CLUSTER_DIR="${RAFTKV_CLUSTER_DIR:-/tmp/registry-walk}"
TTL="${TTL:-2s}"
CLUSTER="$ROOT/scripts/cluster.sh"

if [[ -n "${RAFTKV_BIN_DIR:-}" ]]; then
  BIN="$(cd "$RAFTKV_BIN_DIR" && pwd)"
  export RAFTKV_BIN_DIR="$BIN"
  if [[ ! -x "$BIN/service-shares" ]]; then
    profile=()
    [[ "$(basename "$BIN")" == release ]] && profile=(--release)
    (cd "$ROOT" && cargo build -q "${profile[@]}" -p raftkv-example-service-registry)
  fi
else
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  echo "building release binaries (the first build takes a few minutes)..." >&2
  (cd "$ROOT" && cargo build -q --release -p raftkv-node -p raftkv-cli -p raftkv-example-service-registry) >&2
fi
RAFTKV="$BIN/raftkv"
export RAFTKV_ENDPOINTS="127.0.0.1:$((RAFTKV_CLIENT_PORT_BASE + 1)),127.0.0.1:$((RAFTKV_CLIENT_PORT_BASE + 2)),127.0.0.1:$((RAFTKV_CLIENT_PORT_BASE + 3))"

# Every process this script starts, so the end (or Ctrl-C) stops exactly those.
declare -A registrar=()
watcher=""
T0=""

# A step's title; once service-shares runs, with the seconds since it started (its clock).
say() {
  if [[ -n "$T0" ]]; then printf '\n### [%3ss] %s\n' "$((SECONDS - T0))" "$*"; else printf '\n### %s\n' "$*"; fi
}

cleanup() {
  set +e
  # SIGTERM: a registrar deregisters (revokes its lease) and exits.
  for id in "${!registrar[@]}"; do kill -TERM "${registrar[$id]}" 2>/dev/null; done
  sleep 1
  [[ -n "$watcher" ]] && kill "$watcher" 2>/dev/null
  "$CLUSTER" down
}
trap cleanup EXIT

# Starts `raftkv service register api ID ADDRESS ARGS...` in the background.
register() {
  local id="$1" address="$2"
  shift 2
  "$RAFTKV" service register api "$id" "$address" --ttl "$TTL" "$@" &
  registrar[$id]=$!
  disown "$!"
}

listed() { "$RAFTKV" service list api -o json | grep -c "\"id\":\"$1\"" || true; }

# Waits (at most 20 s) until instance $1 is listed ($2 = 1) or not ($2 = 0).
wait_listed() {
  local i
  for i in $(seq 1 100); do
    [[ "$(listed "$1")" == "$2" ]] && return 0
    sleep 0.2
  done
  echo "walkthrough: instance $1 is still $([[ $2 == 1 ]] && echo missing || echo listed) after 20s" >&2
  exit 1
}

"$CLUSTER" clean >/dev/null
"$CLUSTER" up

say "register a (weight 3), b (weight 1) and c (backup), each held by its own raftkv process"
register a 127.0.0.1:9001 --weight 3
register b 127.0.0.1:9002 --weight 1
register c 127.0.0.1:9003 --backup
for id in a b c; do wait_listed "$id" 1; done
"$RAFTKV" service list api

say "service-shares: the share of 100 picks each instance gets, every second"
"$BIN/service-shares" --service api --picks 100 &
watcher=$!
T0=$SECONDS
sleep 3.5

say "SIGKILL a's registrar (a crash: no deregistration); a leaves when its lease expires"
kill -KILL "${registrar[a]}"
unset 'registrar[a]'
wait_listed a 0
say "a is gone from the registry"
sleep 2.5

say "SIGKILL b's registrar too: no primary is left, the backup c serves"
kill -KILL "${registrar[b]}"
unset 'registrar[b]'
wait_listed b 0
say "b is gone from the registry"
sleep 2.5

say "restart a and b: the weights 3:1 are back, c is idle again"
register a 127.0.0.1:9001 --weight 3
register b 127.0.0.1:9002 --weight 1
wait_listed a 1
wait_listed b 1
sleep 3

say "canary shift at run time: raftkv service set-weight api a 9 (b stays 1)"
"$RAFTKV" service set-weight api a 9
sleep 3

say "raftkv service list api / pick --count 10 --tally"
"$RAFTKV" service list api
"$RAFTKV" service pick api --count 10 --tally

say "done: registrars get SIGTERM (they deregister), the cluster goes down"
