#!/usr/bin/env bash
# Installs what building and testing Aisle needs on a Debian/Ubuntu machine, when it is missing. Each check tries
# what the build or the tests actually do, not merely whether a command exists:
#
#   build (always; `--build-only` stops here, as `make build` and `make run` ask):
#     cc                  the C compiler and libc headers rustc links with and some crates compile C with
#                         -> gcc libc6-dev
#     protoc + includes   etcd-client's build script runs `protoc` (or $PROTOC) on etcd's .proto files, which import
#                         google/protobuf/descriptor.proto and google/protobuf/struct.proto from protoc's include
#                         path (or $PROTOC_INCLUDE) -> protobuf-compiler libprotobuf-dev. Our own protos
#                         (aisle-proto) are compiled in Rust by protox and need neither.
#   tests (`make test`):
#     etcd                cluster tests and `make cluster-up` start their own etcd -> etcd-server
#     etcdctl, openssl    the chart check's TLS run: certificates, and the chart's etcd auth bootstrap
#                         -> etcd-client openssl
#     ip, nft             network-partition tests -> iproute2 nftables
#     curl                scripts that wait on HTTP endpoints -> curl
#     python3 venv        Kubernetes manifest validation builds a venv with pip -> python3-venv
#     cargo-deny 0.20     .ci/run's dependency audit (deny.toml) -> cargo install cargo-deny --locked (crates.io;
#                         about 3 minutes on 2 cores)
#
# The Rust toolchain itself is expected (rustup); see the README. Runs as root, or as a user with sudo.
set -euo pipefail

build_only=false
case "${1:-}" in
  --build-only) build_only=true ;;
  "") ;;
  *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT

# Compiles a .proto importing what etcd-client's protos import, the way prost-build invokes protoc.
protoc_works() {
  local protoc="${PROTOC:-protoc}"
  command -v "$protoc" >/dev/null 2>&1 || return 1
  cat >"$probe_dir/probe.proto" <<'EOF'
syntax = "proto3";
package aisle.probe;
import "google/protobuf/descriptor.proto";
import "google/protobuf/struct.proto";
extend google.protobuf.FieldOptions { google.protobuf.Struct probe = 50000; }
EOF
  local args=(--include_imports -o "$probe_dir/probe.bin" -I "$probe_dir")
  [ -n "${PROTOC_INCLUDE:-}" ] && args+=(-I "$PROTOC_INCLUDE")
  "$protoc" "${args[@]}" "$probe_dir/probe.proto" >"$probe_dir/protoc.log" 2>&1
}

cc_works() {
  command -v cc >/dev/null 2>&1 || return 1
  printf '#include <stdio.h>\nint main(void) { return 0; }\n' >"$probe_dir/probe.c"
  cc "$probe_dir/probe.c" -o "$probe_dir/probe" >/dev/null 2>&1
}

need=()
cc_works || need+=(gcc libc6-dev)
protoc_works || need+=(protobuf-compiler libprotobuf-dev)
if ! $build_only; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  # Debian ships `venv` without `ensurepip`; `python3 -m venv` fails until python3-venv is installed.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "not root and sudo is missing: install as root: apt-get install ${need[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  apt_log="$probe_dir/apt.log"
  apt_install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${need[@]}" >>"$apt_log" 2>&1
  }
  # A fresh machine may have no package lists yet: update once if the first attempt fails.
  if ! apt_install; then
    if ! { "${sudo[@]}" apt-get update >>"$apt_log" 2>&1 && apt_install; }; then
      tail -n 20 "$apt_log" >&2
      echo "apt-get install ${need[*]} failed" >&2
      exit 1
    fi
  fi
  # Debian starts etcd as a service on install; our tests run their own.
  if [[ " ${need[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

# Say so now rather than deep inside a build script.
if ! cc_works; then
  echo "cc cannot compile a C program; the Rust build links with it" >&2
  exit 1
fi
if ! protoc_works; then
  cat "$probe_dir/protoc.log" >&2 2>/dev/null || true
  echo "${PROTOC:-protoc} cannot compile a .proto importing google/protobuf/descriptor.proto and struct.proto;" \
    "etcd-client's build needs it (PROTOC and PROTOC_INCLUDE override the compiler and its include path)" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

# cargo-deny, for .ci/run's dependency audit. After the packages: it builds with the C compiler checked above.
if ! $build_only && ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; then
  echo "installing: cargo-deny 0.20.2 (cargo install --locked)" >&2
  if ! cargo install cargo-deny --locked --version 0.20.2 >"$probe_dir/cargo-deny.log" 2>&1; then
    tail -n 20 "$probe_dir/cargo-deny.log" >&2
    echo "cargo install cargo-deny failed" >&2
    exit 1
  fi
fi
