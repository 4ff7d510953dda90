#!/usr/bin/env bash
# A local raftkv cluster on 127.0.0.1, for trying raftkv and watching it fail over.
#
#   scripts/cluster.sh up          build (if needed), start 3 nodes, wait for a leader, show status
#   scripts/cluster.sh up --tls    the same with TLS everywhere: makes a CA and certificates
#                                  (raftkv certs) in .cluster/tls; clients need the env it prints
#   scripts/cluster.sh status      the status table (raftkv cluster status)
#   scripts/cluster.sh kill N      SIGKILL node N (a crash)
#   scripts/cluster.sh stop N      SIGTERM node N (a clean shutdown)
#   scripts/cluster.sh start N     start node N again with its data
#   scripts/cluster.sh restart N   stop then start node N
#   scripts/cluster.sh pause N     SIGSTOP node N (a frozen process, like a long GC pause)
#   scripts/cluster.sh resume N    SIGCONT node N
#   scripts/cluster.sh logs N [-f] print (or follow) node N's log
#   scripts/cluster.sh add         start a new node (next unused id) and add it to the cluster
#   scripts/cluster.sh remove N    remove node N from the cluster, then stop it
#   scripts/cluster.sh recover N   quorum lost for good: rebuild a one-node cluster from node N's
#                                  data (the other nodes' data is set aside); then `add` nodes
#   scripts/cluster.sh down        stop every node
#   scripts/cluster.sh clean       stop every node and delete all data and logs
#
# Ports: node N serves clients on 7000+N, peers on 7100+N, metrics on 7200+N and etcd's v3 API
# on 7300+N. Override with RAFTKV_CLIENT_PORT_BASE, RAFTKV_PEER_PORT_BASE,
# RAFTKV_METRICS_PORT_BASE, RAFTKV_ETCD_PORT_BASE (node N uses BASE+N; RAFTKV_ETCD_PORT_BASE=off
# serves no etcd API). RAFTKV_NODES sets the node count (3).
# Data, logs and PID files live in .cluster/ at the top of the checkout (git-ignored), or in
# RAFTKV_CLUSTER_DIR. Extra raftkvd flags can be passed in RAFTKV_NODE_FLAGS. RAFTKV_BIN_DIR runs
# binaries from that directory instead of building target/release.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${RAFTKV_CLUSTER_DIR:-$ROOT/.cluster}"
NODES="${RAFTKV_NODES:-3}"
CLIENT_BASE="${RAFTKV_CLIENT_PORT_BASE:-7000}"
PEER_BASE="${RAFTKV_PEER_PORT_BASE:-7100}"
METRICS_BASE="${RAFTKV_METRICS_PORT_BASE:-7200}"
ETCD_BASE="${RAFTKV_ETCD_PORT_BASE:-7300}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# RAFTKV_BIN_DIR points at already-built binaries (the tests use the debug ones) and skips the build.
BIN="${RAFTKV_BIN_DIR:-$TARGET_DIR/release}"
RAFTKVD="$BIN/raftkvd"
RAFTKV="$BIN/raftkv"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# TLS: a cluster made with `up --tls` keeps its certificates in $TLS_DIR, and every later
# command (and node start) of this script uses them.
TLS_DIR="$DIR/tls"
tls_on() { [[ -f "$TLS_DIR/ca.pem" ]]; }
# Points this script's own raftkv calls at the client certificate.
use_tls_env() {
  export RAFTKV_CACERT="$TLS_DIR/ca.pem" RAFTKV_CERT="$TLS_DIR/client.pem" RAFTKV_KEY="$TLS_DIR/client-key.pem"
}
if tls_on; then use_tls_env; fi
tls_flags() {
  local n="$1" t="$TLS_DIR"
  tls_on || return 0
  [[ -f "$t/node-$n.pem" ]] || die "no certificate for node $n in $t (made for the first nodes only); 'clean' and 'up --tls' again"
  echo "--tls-cert $t/node-$n.pem --tls-key $t/node-$n-key.pem --tls-client-ca $t/ca.pem" \
    "--peer-tls-cert $t/node-$n-peer.pem --peer-tls-key $t/node-$n-peer-key.pem --peer-tls-ca $t/peer-ca.pem"
}

client_port() { echo $((CLIENT_BASE + $1)); }
metrics_port() { echo $((METRICS_BASE + $1)); }
peer_port() { echo $((PEER_BASE + $1)); }
# Ids of the nodes this cluster has (the initial ones, plus any added since), in order.
node_ids() {
  local ids="" d
  if [[ -d "$DIR" ]]; then
    for d in "$DIR"/node*; do
      [[ -d "$d" ]] || continue
      d="${d##*/node}"
      [[ "$d" =~ ^[0-9]+$ ]] && ids+="$d "
    done
  fi
  ids+="$(seq 1 "$NODES" | tr '\n' ' ')"
  for d in $ids; do
    [[ -d "$DIR/removed-node$d" ]] || echo "$d"
  done | sort -nu | tr '\n' ' '
}
endpoints() {
  local out="" i
  for i in $(node_ids); do out+="${out:+,}127.0.0.1:$(client_port "$i")"; done
  echo "$out"
}
initial_cluster() {
  local out="" i
  for i in $(seq 1 "$NODES"); do
    out+="${out:+,}$i=127.0.0.1:$(client_port "$i")@127.0.0.1:$(peer_port "$i")"
  done
  echo "$out"
}

pidfile() { echo "$DIR/node$1.pid"; }
logfile() { echo "$DIR/node$1.log"; }

# The PID of node N if it is running (and really is a raftkvd), else nothing.
running_pid() {
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null && grep -q raftkvd "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

check_node() {
  [[ "$1" =~ ^[0-9]+$ ]] && [[ " $(node_ids) " == *" $1 "* ]] || die "no node '$1' (nodes: $(node_ids))"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

build() {
  if [[ -n "${RAFTKV_BIN_DIR:-}" ]]; then
    [[ -x "$RAFTKVD" && -x "$RAFTKV" ]] || die "RAFTKV_BIN_DIR=$RAFTKV_BIN_DIR holds no raftkvd/raftkv"
    return
  fi
  local quiet=-q
  if [[ ! -x "$RAFTKVD" || ! -x "$RAFTKV" ]]; then
    echo "building release binaries (the first build takes a few minutes)..." >&2
    quiet=
  fi
  (cd "$ROOT" && cargo build $quiet --release --locked -p raftkv-node -p raftkv-cli --bins) >&2
}

start_node() {
  local n="$1" pid
  pid="$(running_pid "$n")"
  [[ -z "$pid" ]] || die "node $n is already running (pid $pid)"
  local cp pp mp
  cp="$(client_port "$n")"; pp="$(peer_port "$n")"; mp="$(metrics_port "$n")"
  port_taken "$cp" && die "port $cp (node $n client API) is already in use; stop what listens there or set RAFTKV_CLIENT_PORT_BASE"
  port_taken "$pp" && die "port $pp (node $n peer API) is already in use; stop what listens there or set RAFTKV_PEER_PORT_BASE"
  port_taken "$mp" && die "port $mp (node $n metrics) is already in use; stop what listens there or set RAFTKV_METRICS_PORT_BASE"
  local etcd=() etcd_note=""
  if [[ "$ETCD_BASE" != off ]]; then
    local ep=$((ETCD_BASE + n))
    port_taken "$ep" && die "port $ep (node $n etcd API) is already in use; stop what listens there or set RAFTKV_ETCD_PORT_BASE (or =off)"
    etcd=(--etcd-addr "127.0.0.1:$ep")
    etcd_note=", etcd API 127.0.0.1:$ep"
  fi
  mkdir -p "$DIR"
  # The initial members get the initial cluster (ignored on restart); added nodes join.
  # (die inside $(...) would only end the subshell)
  local tls
  tls="$(tls_flags "$n")" || exit 1
  local membership=(--initial-cluster "$(initial_cluster)")
  if (( n > NODES )); then membership=(--join "${JOIN:-$(endpoints)}"); fi
  # shellcheck disable=SC2086
  nohup "$RAFTKVD" --id "$n" --data-dir "$DIR/node$n" \
    --client-addr "127.0.0.1:$cp" --peer-addr "127.0.0.1:$pp" --metrics-addr "127.0.0.1:$mp" \
    "${membership[@]}" "${etcd[@]}" $tls ${RAFTKV_NODE_FLAGS:-} \
    >>"$(logfile "$n")" 2>&1 </dev/null &
  echo $! >"$(pidfile "$n")"
  echo "node $n started (pid $!, client 127.0.0.1:$cp, peer 127.0.0.1:$pp, metrics http://127.0.0.1:$mp/metrics$etcd_note)"
}

signal_node() {
  local n="$1" sig="$2" pid
  pid="$(running_pid "$n")"
  [[ -n "$pid" ]] || die "node $n is not running"
  kill "-$sig" "$pid"
}

stop_node() {
  local n="$1" pid i
  pid="$(running_pid "$n")"
  [[ -n "$pid" ]] || { echo "node $n is not running"; return 0; }
  kill -CONT "$pid" 2>/dev/null || true   # a paused node cannot act on SIGTERM
  kill -TERM "$pid"
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { echo "node $n stopped"; rm -f "$(pidfile "$n")"; return 0; }
    sleep 0.1
  done
  echo "node $n did not stop within 10s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$(pidfile "$n")"
}

wait_for_leader() {
  local i
  for i in $(seq 1 200); do
    if "$RAFTKV" --endpoints "$(endpoints)" --timeout 1s cluster status -o json 2>/dev/null | grep -q '"role":"leader"'; then
      return 0
    fi
    sleep 0.1
  done
  die "no leader after 20s; see the logs: scripts/cluster.sh logs 1"
}

status() { "$RAFTKV" --endpoints "$(endpoints)" cluster status; }

cmd="${1:-}"
shift || true
case "$cmd" in
  up)
    build
    if [[ "${1:-}" == "--tls" ]] && ! tls_on; then
      mkdir -p "$DIR"
      # Spare certificates, so `add` works for a few more nodes.
      "$RAFTKV" certs --dir "$TLS_DIR" --nodes $((NODES + 6)) >/dev/null
      use_tls_env
      echo "TLS on: certificates in $TLS_DIR"
    elif [[ -n "${1:-}" && "${1:-}" != "--tls" ]]; then
      die "up takes no argument but --tls"
    fi
    for n in $(node_ids); do
      if [[ -n "$(running_pid "$n")" ]]; then die "node $n is already running; use 'status', or 'down' first"; fi
    done
    for n in $(node_ids); do start_node "$n"; done
    wait_for_leader
    status
    echo
    if tls_on; then
      echo "TLS is on; point the CLI at the certificates first:"
      echo "  export RAFTKV_CACERT=$RAFTKV_CACERT RAFTKV_CERT=$RAFTKV_CERT RAFTKV_KEY=$RAFTKV_KEY"
    fi
    echo "try: $RAFTKV put hello world && $RAFTKV get hello"
    ;;
  down)
    for n in $(node_ids); do stop_node "$n"; done
    ;;
  add)
    build
    # Ids are never reused: the next id is one past the highest ever used here.
    last="$(cat "$DIR/last-id" 2>/dev/null || echo 0)"
    for n in $(node_ids); do (( n > last )) && last=$n; done
    n=$((last + 1))
    echo "$n" >"$DIR/last-id"
    JOIN="$(endpoints)" start_node "$n"
    echo "node $n is joining; waiting until it is a voter..."
    for i in $(seq 1 600); do
      if "$RAFTKV" --endpoints "$(endpoints)" --timeout 2s member list -o json 2>/dev/null \
          | grep -q "\"id\":$n,[^}]*\"voter\":true\|\"voter\":true,[^}]*\"id\":$n"; then
        status
        exit 0
      fi
      if [[ -z "$(running_pid "$n")" ]]; then die "node $n stopped; see: $0 logs $n"; fi
      sleep 0.2
    done
    die "node $n did not become a voter within 120s; see: $0 logs $n"
    ;;
  recover)
    check_node "${1:-}"
    build
    survivor="$1"
    for n in $(node_ids); do stop_node "$n"; done
    recovered="$DIR/recovered-node$survivor"
    rm -rf "$recovered"
    "$RAFTKVD" recover --from-data-dir "$DIR/node$survivor" --id "$survivor" --data-dir "$recovered" \
      --client-addr "127.0.0.1:$(client_port "$survivor")" --peer-addr "127.0.0.1:$(peer_port "$survivor")"
    # Ids are never reused: remember the highest one, and set every old node's data aside.
    last="$(cat "$DIR/last-id" 2>/dev/null || echo 0)"
    stamp="$(date +%s)"
    for n in $(node_ids); do
      (( n > last )) && last=$n
      mv "$DIR/node$n" "$DIR/lost-node$n-$stamp"
      [[ "$n" == "$survivor" ]] || mkdir -p "$DIR/removed-node$n"
    done
    echo "$last" >"$DIR/last-id"
    mv "$recovered" "$DIR/node$survivor"
    start_node "$survivor"
    wait_for_leader
    status
    echo
    echo "node $survivor now leads a new one-node cluster; grow it with: $0 add"
    ;;
  remove)
    check_node "${1:-}"
    "$RAFTKV" --endpoints "$(endpoints)" member remove "$1"
    stop_node "$1"
    mv "$DIR/node$1" "$DIR/removed-node$1"
    echo "node $1 removed; its data was moved to $DIR/removed-node$1 (it cannot rejoin: ids are never reused)"
    ;;
  status)
    status
    ;;
  kill)
    check_node "${1:-}"; signal_node "$1" KILL; rm -f "$(pidfile "$1")"; echo "node $1 killed (SIGKILL)"
    ;;
  stop)
    check_node "${1:-}"; stop_node "$1"
    ;;
  start)
    check_node "${1:-}"; build; start_node "$1"
    ;;
  restart)
    check_node "${1:-}"; stop_node "$1"; start_node "$1"
    ;;
  pause)
    check_node "${1:-}"; signal_node "$1" STOP; echo "node $1 paused (SIGSTOP); resume with: $0 resume $1"
    ;;
  resume)
    check_node "${1:-}"; signal_node "$1" CONT; echo "node $1 resumed"
    ;;
  logs)
    check_node "${1:-}"
    [[ -f "$(logfile "$1")" ]] || die "node $1 has no log yet"
    if [[ "${2:-}" == "-f" ]]; then tail -n 50 -f "$(logfile "$1")"; else cat "$(logfile "$1")"; fi
    ;;
  clean)
    for n in $(node_ids); do stop_node "$n"; done
    rm -rf "$DIR"
    echo "removed $DIR"
    ;;
  ""|-h|--help|help)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "unknown command '$cmd'; see: $0 help"
    ;;
esac
