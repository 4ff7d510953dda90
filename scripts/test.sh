#!/usr/bin/env bash
# Runs raftkv's whole test suite from a fresh clone: builds the workspace binaries that the
# end-to-end tests start (raftkvd, raftkv), then runs every test — with cargo-nextest when it
# is installed (each test in its own process, with the timeouts in .config/nextest.toml),
# else with cargo test. Extra arguments go to the test runner (e.g. a test name filter).
#
# With a system `protoc` (Debian: protobuf-compiler) it also builds the tests that drive
# raftkv's etcd port with the `etcd-client` crate (feature raftkv-tests/etcd-client; that
# crate's build script needs protoc); without one they are skipped, and it says so.
set -euo pipefail
cd "$(dirname "$0")/.."

features=()
if command -v protoc >/dev/null; then
  features=(--features raftkv-tests/etcd-client)
else
  echo "test.sh: no protoc on this machine: the etcd-client crate tests (tests/tests/etcd_client.rs) are skipped (apt-get install protobuf-compiler)"
fi

cargo build --locked --workspace --bins "${features[@]}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace "${features[@]}" "$@"
  cargo test --locked --workspace --doc "${features[@]}"
else
  cargo test --locked --workspace "${features[@]}" "$@"
fi
