#!/usr/bin/env bash
# The chaos run (services/node/tests/chaos.rs) against release binaries: a real etcd and three `aisle` nodes on
# loopback under steady mixed load (Decide, and Track every third call, 150 calls/s over 201 shoppers) through five
# faults in turn — SIGKILL and restart, SIGSTOP/SIGCONT past the lease TTL, etcd stopped for 60 s, a node cut from
# etcd and from its peers for 10 s, a rolling restart — then every phase checked against its documented promise and
# one table printed. Exits non-zero when a promise is broken (the test fails after printing the table). About 4
# minutes of run, plus the release build the first time. docs/RELIABILITY.md explains the promises and records runs.
#
# The test is #[ignore]d so `make test` does not run it; this script asks for it by name. In a --release test build
# the harness spawns the release `aisle` binary (CARGO_BIN_EXE_aisle), so the nodes are release builds too.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
  echo "chaos.sh: etcd is not installed (Debian: apt-get install etcd-server, or run 'make deps')" >&2
  exit 2
fi

echo "chaos.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), $(nproc) cores, $(etcd --version | head -1)"
exec cargo test --release -p aisle-node --test chaos -- --ignored --nocapture --test-threads=1
