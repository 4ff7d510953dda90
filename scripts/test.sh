#!/usr/bin/env bash
# Runs raftkv's whole test suite from a fresh clone: builds the workspace binaries that the
# end-to-end tests start (raftkvd, raftkv), then runs every test — with cargo-nextest when it
# is installed (each test in its own process, with the timeouts in .config/nextest.toml),
# else with cargo test. Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace "$@"
  cargo test --locked --workspace --doc
else
  cargo test --locked --workspace "$@"
fi
