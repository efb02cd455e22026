#!/usr/bin/env bash
# `make loadtest`: starts one release node with the embedded demo world on free loopback ports, loads it with the
# `decide` scenario at 5,000 requests/s open-loop with the health floor interleaved, prints the table and a verdict
# against the 2 ms p99 target, and stops the node it started. Override with RATE, DURATION, WARMUP, CONNECTIONS,
# P99_TARGET_MS; extra arguments go to `aisle-loadtest run` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release
rate=${RATE:-5000}
duration=${DURATION:-30s}
warmup=${WARMUP:-5s}
connections=${CONNECTIONS:-4}
target_ms=${P99_TARGET_MS:-2}

# The first port from $1 up that nothing listens on.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
grpc_port=$(free_port 50561)
http_port=$(free_port 9561)

work=$(mktemp -d)
node_pid=
stop_node() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill "$node_pid"
    wait "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_node EXIT INT TERM

AISLE_LOG=${AISLE_LOG:-warn} "$bin/aisle" serve --node-id loadtest \
  --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" >"$work/node.log" 2>&1 &
node_pid=$!
ready=
for _ in $(seq 1 300); do
  if curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the node did not become ready in 30 s; its log:" >&2
  cat "$work/node.log" >&2
  exit 1
fi
echo "node (pid $node_pid) ready on 127.0.0.1:$grpc_port; load generator on the same machine ($(nproc) cores)"

"$bin/aisle-loadtest" run --target "http://127.0.0.1:$grpc_port" --scenario decide \
  --rate "$rate" --duration "$duration" --warmup "$warmup" --connections "$connections" \
  --floor --p99-target-ms "$target_ms" "$@"
