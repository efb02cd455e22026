#!/usr/bin/env bash
# Starts a local cluster on loopback, secured like a production one: a real etcd over TLS with client certificates,
# and three Aisle nodes with distinct node ids serving the same demo bundles, with TLS and a token on their client
# ports and mutual TLS between them, each with its own peer certificate. A throwaway CA, the certificates and a
# token are made here with openssl; the demo bundles are signed with a throwaway release key (`aisle bundle keygen`,
# `aisle bundle sign`) and the nodes load only bundles that key signed (--trusted-keys).
# State, logs, pids and credentials live in .aisle/cluster/; `make cluster-down` stops everything.
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
pki="$dir/pki"

# shellcheck source=scripts/pki.sh
. scripts/pki.sh
make_local_pki "$pki"

etcd --name local --data-dir "$dir/etcd" \
  --cert-file "$pki/etcd.pem" --key-file "$pki/etcd.key" --trusted-ca-file "$pki/ca.pem" --client-cert-auth \
  --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "local=http://127.0.0.1:$((etcd_port + 1))" >"$dir/etcd.log" 2>&1 &
echo "etcd $!" >"$dir/pids"
for _ in $(seq 1 100); do
  curl -fs --cacert "$pki/ca.pem" --cert "$pki/etcd-client.pem" --key "$pki/etcd-client.key" \
    "https://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

[ -f "$dir/bundles/model.bin" ] || "$bin" export-demo --out "$dir/bundles" >/dev/null
[ -f "$pki/release.key" ] || "$bin" bundle keygen --out "$pki/release.key" >"$pki/trusted.pub"
for f in catalog.json model.bin; do
  "$bin" bundle sign --key "$pki/release.key" "$dir/bundles/$f" >/dev/null
done

for i in 1 2 3; do
  peer_cert "$pki" "node-$i"
  AISLE_LOG=${AISLE_LOG:-info} "$bin" serve --node-id "node-$i" \
    --grpc-addr "127.0.0.1:$((50050 + i))" --http-addr "127.0.0.1:$((9089 + i))" \
    --peer-addr "127.0.0.1:$((50060 + i))" \
    --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --auth-tokens "$pki/tokens.toml" \
    --pseudonym-key "$pki/pseudonym.key" \
    --peer-tls-cert "$pki/peer-node-$i.pem" --peer-tls-key "$pki/peer-node-$i.key" --peer-tls-ca "$pki/ca.pem" \
    --cluster etcd --etcd-endpoints "https://127.0.0.1:$etcd_port" \
    --etcd-ca "$pki/ca.pem" --etcd-cert "$pki/etcd-client.pem" --etcd-key "$pki/etcd-client.key" \
    --data-dir "$dir/bundles" --trusted-keys "$pki/trusted.pub" \
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
cluster up (etcd at https://127.0.0.1:$etcd_port; logs in $dir/; CA, certificates and token in $pki/):
  node-1  gRPC https://127.0.0.1:50051  peers 127.0.0.1:50061  HTTP http://127.0.0.1:9090
  node-2  gRPC https://127.0.0.1:50052  peers 127.0.0.1:50062  HTTP http://127.0.0.1:9091
  node-3  gRPC https://127.0.0.1:50053  peers 127.0.0.1:50063  HTTP http://127.0.0.1:9092
try:
  export AISLE_CA_CERT=$pki/ca.pem AISLE_TOKEN=\$(cat $pki/token)
  $bin cluster --addr https://127.0.0.1:50051 --shopper s1
  for p in 50051 50052 50053; do $bin decide --addr https://127.0.0.1:\$p --shopper s1 --json | grep -o '"served_by":"[^"]*"'; done
  kill -9 \$(grep node-2 $dir/pids | cut -d' ' -f2)   # then watch its shoppers move (after the 5 s lease)
stop with: make cluster-down
TXT
