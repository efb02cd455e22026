#!/usr/bin/env bash
# Installs what building and testing Aisle needs on a Debian/Ubuntu machine, when it is missing:
#   protobuf-compiler (protoc: our build and etcd-client's), etcd-server (cluster tests, `make cluster-up`),
#   iproute2 + nftables (network-partition tests), python3-venv (Kubernetes manifest validation).
# The Rust toolchain itself is expected (rustup); see the README.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ "${1:-}" != "--build-only" ]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  python3 -c 'import venv' >/dev/null 2>&1 || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
  # Debian starts etcd as a service on install; our tests run their own.
  if [[ " ${need[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
