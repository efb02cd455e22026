#!/usr/bin/env bash
# Stops what `make cluster-up` started (nodes first, gracefully, then etcd) and removes its state.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=.aisle/cluster
[ -f "$dir/pids" ] || { echo "no cluster running"; exit 0; }
tac "$dir/pids" | while read -r name pid; do
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
done
rm -rf "$dir"
