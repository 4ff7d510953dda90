#!/usr/bin/env bash
# A chaos run: 8 clients read, write and compare-and-swap on a few keys of a fresh three-node
# cluster (real raftkvd processes on 127.0.0.1, peer links through fault-injecting proxies)
# while nodes are SIGKILLed, paused and partitioned; then the history is checked for
# linearizability and the nodes for convergence. Exit code 0 only if both hold.
#
#   scripts/chaos.sh [--duration 20m] [--clients 8] [--faults kill,pause,partition] [--seed N]
#                    [--out DIR] [--check HISTORY]
#
# Builds release binaries first. Artifacts (history.jsonl, faults.jsonl, report.json, node logs)
# go to .chaos/<time>-seed<seed>/ unless --out is given. See docs/testing.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build -q --release --locked -p raftkv-node --bin raftkvd -p raftkv-tests --bin raftkv-chaos
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/raftkv-chaos" "$@"
