#!/usr/bin/env bash
# Starts a local cluster on loopback: a real etcd and three Aisle nodes with distinct node ids, serving the same
# demo bundles. State, logs and pids live in .aisle/cluster/; `make cluster-down` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.aisle/cluster
if [ -f "$dir/pids" ]; then
  echo "a cluster is already running (make cluster-down first)" >&2
  exit 1
fi
mkdir -p "$dir"
bin=./target/release/aisle
etcd_port=${ETCD_PORT:-2379}

etcd --name local --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "local=http://127.0.0.1:$((etcd_port + 1))" >"$dir/etcd.log" 2>&1 &
echo "etcd $!" >"$dir/pids"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

[ -f "$dir/bundles/model.bin" ] || "$bin" export-demo --out "$dir/bundles" >/dev/null

for i in 1 2 3; do
  AISLE_LOG=${AISLE_LOG:-info} "$bin" serve --node-id "node-$i" \
    --grpc-addr "127.0.0.1:$((50050 + i))" --http-addr "127.0.0.1:$((9089 + i))" \
    --cluster etcd --etcd-endpoints "http://127.0.0.1:$etcd_port" --data-dir "$dir/bundles" \
    >"$dir/node-$i.log" 2>&1 &
  echo "node-$i $!" >>"$dir/pids"
done

for i in 1 2 3; do
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$((9089 + i))/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

cat <<TXT
cluster up (etcd at http://127.0.0.1:$etcd_port; logs in $dir/):
  node-1  gRPC http://127.0.0.1:50051  HTTP http://127.0.0.1:9090
  node-2  gRPC http://127.0.0.1:50052  HTTP http://127.0.0.1:9091
  node-3  gRPC http://127.0.0.1:50053  HTTP http://127.0.0.1:9092
try:
  $bin cluster --addr http://127.0.0.1:50051 --shopper s1
  for p in 50051 50052 50053; do $bin decide --addr http://127.0.0.1:\$p --shopper s1 --json | grep -o '"served_by":"[^"]*"'; done
  kill -9 \$(grep node-2 $dir/pids | cut -d' ' -f2)   # then watch its shoppers move (after the 5 s lease)
stop with: make cluster-down
TXT
