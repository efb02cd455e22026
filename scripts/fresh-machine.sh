#!/usr/bin/env bash
# shellcheck disable=SC1091 # /etc/os-release is read where the script runs
# Proves the README's two commands on a clean Debian root rather than on this machine.
#
#   scripts/fresh-machine.sh [--keep] [--reuse] [--full] [--root DIR] [--suite SUITE] [--commit REV]
#
# What it does (as root, on a Debian/Ubuntu host with network access to the Debian mirror and crates.io):
#   1. Builds a minimal Debian root with mmdebstrap (variant minbase) from the host's own apt sources and suite
#      (/etc/os-release's VERSION_CODENAME; --suite trixie, say, uses deb.debian.org instead of the host's sources
#      and needs the host's keyring to know that release). Besides the essential packages and apt, the root gets
#      only what a user with a Rust toolchain has:
#        ca-certificates  TLS for crates.io (plus this host's CA bundle, see below)
#        make             the README's commands are make targets
#        gcc, libc6-dev   the linker rustc uses and the C compiler of crates that build C
#      No protobuf-compiler, libprotobuf-dev, etcd, python3, curl: scripts/deps.sh must install what is needed.
#   2. Copies the checkout into /src/aisle of the root: the working tree's tracked and untracked-but-not-ignored
#      files (so no target/ and no .git), or `git archive REV` with --commit REV.
#   3. In private mount and PID namespaces (the host's network namespace is shared, so apt and crates.io work),
#      mounts /proc, /dev, /sys and, read-only, the host's Rust toolchain:
#        $RUSTUP_HOME (default ~/.rustup)   -> /opt/rustup     (read-only bind)
#        rustup and its proxies only        -> /opt/cargo/bin  (a copy of rustup and links to it: cargo, rustc, ...;
#                                                             tools installed on this host with `cargo install`,
#                                                             cargo-deny say, must not reach the root)
#      The root's own CARGO_HOME is /root/.cargo (writable). Its registry/ is an overlay whose lower layer is the
#      host's $CARGO_HOME/registry (never written) and whose upper layer lives in the root, so crates the host has
#      already downloaded are not fetched again and new ones land in the root only. Without overlayfs, the root
#      downloads every crate itself. The host's CA bundle is copied to /etc/ssl/host-ca.crt and named by
#      CARGO_HTTP_CAINFO, SSL_CERT_FILE and PIP_CERT: machines behind a TLS-inspecting proxy need it.
#   4. Inside (chroot, environment cleared):
#        cargo build --release -p aisle-proto before protoc or any .proto include is installed;
#      then the README's steps:
#        make run  (on free ports) in the background until GET /readyz answers 200 on its HTTP port;
#        aisle decide --shopper s1 --surface home against it; the node stopped by its process group id;
#        scripts/deps.sh (full mode: what `make test` installs, and cargo-deny);
#        .ci/run's dependency audit: cargo deny check licenses bans sources;
#        cargo build --workspace --all-targets --release (the release profile shares the crates `make run` built;
#          a debug build would compile every crate a second time);
#        with --full, `make test` as well (debug profile; long).
#   5. Prints PASS/FAIL per step with timings, exits non-zero if any step failed.
#
# Clean-up: every mount is made inside a private mount namespace and disappears with it; an EXIT trap stops the
# namespace's process (by PID) if it is still running, checks that nothing is mounted under the root and removes
# the root unless --keep. --reuse restores a root kept with --keep to its state right after mmdebstrap (from a
# tarball saved then) instead of bootstrapping again: fresh sources, empty CARGO_HOME, nothing deps.sh installed;
# it makes iterating on this script cheap.
set -euo pipefail

# ---------------------------------------------------------------------------------------------------------------
# Inside the root: the README's commands. Called as `fresh-machine.sh --inside RESULTS GRPC_PORT HTTP_PORT FULL`.
# ---------------------------------------------------------------------------------------------------------------
inside() {
  local results=$1 grpc_port=$2 http_port=$3 full=$4
  cd /src/aisle
  : >"$results"

  record() { echo "$1 $2 $3" >>"$results"; }

  # GET /readyz over bash's /dev/tcp: the root has no curl until deps.sh installs one, and `make run` must not
  # rely on it.
  readyz_status() {
    local line
    { exec 3<>"/dev/tcp/127.0.0.1/$http_port"; } 2>/dev/null || return 1
    printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS=' ' read -r -t 5 _ line _ <&3 || true
    exec 3<&- 3>&-
    echo "${line:-none}"
  }

  echo "== inside: $(. /etc/os-release && echo "$PRETTY_NAME"), $(cargo --version), $(nproc) cores"
  for tool in protoc etcd curl python3; do
    if command -v "$tool" >/dev/null 2>&1; then echo "   $tool: present"; else echo "   $tool: absent"; fi
  done
  if [ -e /usr/include/google/protobuf ]; then
    echo "   /usr/include/google/protobuf: present"
  else
    echo "   /usr/include/google/protobuf: absent"
  fi

  # -- 0. our protos need no protoc and no system include path -------------------------------------------------
  # Before anything installs protobuf-compiler or libprotobuf-dev: aisle-proto alone must build. (Release, so the
  # crates it compiles serve `make run` below.)
  start=$(date +%s)
  echo "== cargo build --release -p aisle-proto (no protoc, no /usr/include/google/protobuf)"
  if cargo build --release -p aisle-proto; then
    record proto-alone PASS $(($(date +%s) - start))
  else
    record proto-alone FAIL $(($(date +%s) - start))
  fi

  # -- 1. make run until /readyz is 200 ---------------------------------------------------------------------
  local start now status="" run_log=/tmp/make-run.log deadline
  start=$(date +%s)
  deadline=$((start + FRESH_RUN_DEADLINE_SECS))
  echo "== make run GRPC_ADDR=127.0.0.1:$grpc_port HTTP_ADDR=127.0.0.1:$http_port (log: $run_log)"
  setsid make run GRPC_ADDR="127.0.0.1:$grpc_port" HTTP_ADDR="127.0.0.1:$http_port" >"$run_log" 2>&1 &
  local run_pid=$!
  local ok=false
  while :; do
    if ! kill -0 "$run_pid" 2>/dev/null; then
      echo "make run exited before /readyz answered 200"
      break
    fi
    status=$(readyz_status || true)
    if [ "$status" = 200 ]; then
      ok=true
      break
    fi
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
      echo "no 200 from /readyz within $((now - start)) s"
      break
    fi
    sleep 2
  done
  now=$(date +%s)
  if $ok; then
    echo "   /readyz 200 after $((now - start)) s; from the log:"
    grep -E '^installing|Finished|serving' "$run_log" | sed 's/\x1b\[[0-9;]*m//g; s/^/   | /' || true
    record make-run PASS $((now - start))
  else
    tail -n 40 "$run_log"
    record make-run FAIL $((now - start))
  fi

  # -- 2. one decision against the node -----------------------------------------------------------------------
  if $ok; then
    start=$(date +%s)
    echo "== aisle decide --addr http://127.0.0.1:$grpc_port --shopper s1 --surface home"
    if timeout 60 ./target/release/aisle decide --addr "http://127.0.0.1:$grpc_port" --shopper s1 --surface home; then
      record decide PASS $(($(date +%s) - start))
    else
      record decide FAIL $(($(date +%s) - start))
    fi
  else
    record decide SKIP 0
  fi

  # Stop the node: make and the aisle it started share the process group setsid gave them.
  if kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM -- "-$run_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$run_pid" 2>/dev/null && [ $waited -lt 30 ]; do
      sleep 1
      waited=$((waited + 1))
    done
    if kill -0 "$run_pid" 2>/dev/null; then
      echo "   node did not stop within 30 s of SIGTERM: SIGKILL"
      kill -KILL -- "-$run_pid" 2>/dev/null || true
    fi
  fi
  wait "$run_pid" 2>/dev/null || true
  echo "   node stopped"

  # -- 3. scripts/deps.sh, full mode --------------------------------------------------------------------------
  start=$(date +%s)
  echo "== scripts/deps.sh"
  if ./scripts/deps.sh; then
    record deps PASS $(($(date +%s) - start))
  else
    record deps FAIL $(($(date +%s) - start))
  fi
  for tool in protoc etcd ip nft curl python3; do
    if command -v "$tool" >/dev/null 2>&1; then echo "   $tool: present"; else echo "   $tool: absent"; fi
  done
  echo "   cargo-deny: $(cargo deny --version 2>/dev/null || echo absent)"

  # -- 3b. .ci/run's dependency audit (deny.toml) with the cargo-deny deps.sh installed -------------------------
  start=$(date +%s)
  echo "== cargo deny --locked -L error check licenses bans sources"
  if cargo deny --locked -L error check licenses bans sources; then
    record audit PASS $(($(date +%s) - start))
  else
    record audit FAIL $(($(date +%s) - start))
  fi

  # -- 4. every target builds -----------------------------------------------------------------------------------
  start=$(date +%s)
  echo "== cargo build --workspace --all-targets --release"
  if cargo build --workspace --all-targets --release; then
    record all-targets PASS $(($(date +%s) - start))
  else
    record all-targets FAIL $(($(date +%s) - start))
  fi

  # -- 5. optionally, the README's second command ----------------------------------------------------------------
  if [ "$full" = 1 ]; then
    start=$(date +%s)
    echo "== make test"
    if make test; then
      record make-test PASS $(($(date +%s) - start))
    else
      record make-test FAIL $(($(date +%s) - start))
    fi
  fi
}

if [ "${1:-}" = "--inside" ]; then
  shift
  inside "$@"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# On the host.
# ---------------------------------------------------------------------------------------------------------------
# One compound command: bash reads it whole before running it, so editing this file during a run cannot change
# the run.
{
keep=false
reuse=false
full=0
root=/var/tmp/aisle-fresh-root
suite=""
commit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=true ;;
    --reuse) reuse=true; keep=true ;;
    --full) full=1 ;;
    --root) root=$2; shift ;;
    --suite) suite=$2; shift ;;
    --commit) commit=$2; shift ;;
    -h | --help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: mmdebstrap, mounts and chroot need it" >&2
  exit 1
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(realpath -m "$root")
case "$root" in
  / | /root | /home | /work | /var | /var/tmp | /tmp | "$repo"*) echo "refusing to use $root as the root" >&2; exit 2 ;;
esac
[ -n "$suite" ] || suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=$(dirname "$(command -v cargo)")
cargo_home=${CARGO_HOME:-$HOME/.cargo}
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -d "$rustup_home/toolchains" ] || { echo "no rustup toolchains under $rustup_home" >&2; exit 1; }
[ -f "$ca_bundle" ] || { echo "no CA bundle at $ca_bundle" >&2; exit 1; }

t0=$(date +%s)
summary=()
ns_pid=""
bootstrapping=false

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
    kill -TERM "$ns_pid" 2>/dev/null || true
    sleep 2
    kill -KILL "$ns_pid" 2>/dev/null || true
  fi
  # Mounts live in the namespace; should one have leaked into ours, undo it before anything is deleted.
  local mounted
  mounted=$(awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for m in $mounted; do umount -l "$m" 2>/dev/null || true; done
  if awk -v r="$root/" 'index($5, r) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    echo "still mounted under $root: leaving it in place" >&2
  elif { ! $keep || $bootstrapping; } && [ -d "$root" ]; then
    # Not kept, or a bootstrap cut short (which --reuse could not use).
    rm -rf --one-file-system "$root"
  fi
  if $keep && [ -d "$root" ]; then echo "root kept at $root (reuse it with --reuse --root $root)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo; echo "### $*"; }

# -- 1. the root --------------------------------------------------------------------------------------------------
packages=ca-certificates,make,gcc,libc6-dev
if $reuse && [ -f "$root/.aisle-fresh-root" ] && [ -f "$root/.aisle-fresh-root.pristine.tar" ]; then
  step "reusing $root: restoring its freshly bootstrapped state"
  s=$(date +%s)
  find "$root" -mindepth 1 -maxdepth 1 ! -name '.aisle-fresh-root*' -exec rm -rf --one-file-system {} +
  tar -C "$root" -xf "$root/.aisle-fresh-root.pristine.tar"
  summary+=("bootstrap REUSED $(($(date +%s) - s))")
else
  command -v mmdebstrap >/dev/null 2>&1 || apt-get install -y --no-install-recommends mmdebstrap
  if [ -e "$root" ]; then
    [ -f "$root/.aisle-fresh-root" ] || { echo "$root exists and is not a root made here" >&2; exit 1; }
    rm -rf --one-file-system "$root"
  fi
  mirrors=()
  host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    # Another suite than the host's: mmdebstrap's default (deb.debian.org with updates and security).
    [ "$suite" = "$host_suite" ] || break
    [ -f "$f" ] || continue
    # Debian's own archives only: a root made of Debian's packages, as a fresh machine has.
    grep -q 'deb.debian.org\|debian.org/debian\|ftp.*debian' "$f" && mirrors+=("$f")
  done
  step "mmdebstrap --variant=minbase --include=$packages $suite $root ${mirrors[*]:-(default mirror)}"
  s=$(date +%s)
  mkdir -p "$root"
  bootstrapping=true
  mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$root" "${mirrors[@]}"
  touch "$root/.aisle-fresh-root"
  tar -C "$root" --exclude='./.aisle-fresh-root*' -cf "$root/.aisle-fresh-root.pristine.tar" .
  bootstrapping=false
  summary+=("bootstrap PASS $(($(date +%s) - s))")
fi
echo "root: $(du -sh --exclude='.aisle-fresh-root*' "$root" | cut -f1), packages: $(chroot "$root" dpkg-query -W | wc -l)"

# -- 2. the sources -----------------------------------------------------------------------------------------------
step "copying the sources into $root/src/aisle"
mkdir -p "$root/src/aisle"
if [ -n "$commit" ]; then
  git -C "$repo" archive --format=tar "$commit" | tar -C "$root/src/aisle" -xf -
  echo "commit $(git -C "$repo" rev-parse "$commit")"
else
  # Tracked files deleted in the working tree are left out, as a checkout of it would have them.
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) |
    tar -C "$root/src/aisle" -xf -
  echo "working tree of $(git -C "$repo" rev-parse HEAD)$(git -C "$repo" diff --quiet HEAD || echo ' with uncommitted changes')"
fi
[ ! -e "$root/src/aisle/target" ] || { echo "a target dir was copied" >&2; exit 1; }

# -- 3. what the root needs from the host --------------------------------------------------------------------------
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$ca_bundle" "$root/etc/ssl/host-ca.crt"
mkdir -p "$root/opt/rustup" "$root/opt/cargo/bin" "$root/root/.cargo/registry" "$root/var/cache/fresh/upper" \
  "$root/var/cache/fresh/work" "$root/proc" "$root/dev" "$root/sys"
cp "$0" "$root/usr/local/bin/fresh-machine-inside.sh"
# rustup and the proxies that name it (cargo, rustc, rustfmt, ...), and nothing else of the host's cargo bin.
rm -rf "${root:?}/opt/cargo/bin" && mkdir -p "$root/opt/cargo/bin"
cp "$cargo_bin/rustup" "$root/opt/cargo/bin/rustup"
for tool in "$cargo_bin"/*; do
  name=$(basename "$tool")
  [ "$name" != rustup ] || continue
  if { [ -L "$tool" ] && [ "$(basename "$(readlink "$tool")")" = rustup ]; } || cmp -s "$tool" "$cargo_bin/rustup"; then
    ln -s rustup "$root/opt/cargo/bin/$name"
  fi
done

# Two free loopback ports for the node (other builds and nodes may run on this machine).
read -r grpc_port http_port < <(python3 - <<'EOF' 2>/dev/null || echo "50151 9190"
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
EOF
)

# -- 4. inside --------------------------------------------------------------------------------------------------
step "running the README's commands inside $root"
results=/tmp/fresh-results
env_vars=(
  HOME=/root USER=root LANG=C.UTF-8 TERM=dumb
  PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo RUSTUP_AUTO_INSTALL=0
  CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt PIP_CERT=/etc/ssl/host-ca.crt
  CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never
  FRESH_RUN_DEADLINE_SECS="${FRESH_RUN_DEADLINE_SECS:-5400}"
)
s=$(date +%s)
set +e
# shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
unshare --mount --propagation private --pid --fork --kill-child bash -euo pipefail -c '
  root=$1 rustup_home=$2 cargo_bin=$3 cargo_home=$4; shift 4
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount --rbind /sys "$root/sys"
  mount --bind "$rustup_home" "$root/opt/rustup"
  mount -o remount,bind,ro "$root/opt/rustup"
  if [ -d "$cargo_home/registry" ] && mount -t overlay overlay \
      -o "lowerdir=$cargo_home/registry,upperdir=$root/var/cache/fresh/upper,workdir=$root/var/cache/fresh/work" \
      "$root/root/.cargo/registry"; then
    echo "cargo registry: overlay of $cargo_home/registry (read-only lower layer)"
  else
    echo "cargo registry: empty (no overlay): every crate is downloaded"
  fi
  exec chroot "$root" /usr/bin/env -i "$@"
' fresh "$root" "$rustup_home" "$cargo_bin" "$cargo_home" "${env_vars[@]}" \
  bash /usr/local/bin/fresh-machine-inside.sh --inside "$results" "$grpc_port" "$http_port" "$full" &
ns_pid=$!
wait "$ns_pid"
inside_rc=$?
ns_pid=""
set -e
echo "inside finished with status $inside_rc after $(($(date +%s) - s)) s"

# -- 5. summary -------------------------------------------------------------------------------------------------
if [ -f "$root$results" ]; then
  while read -r name result secs; do summary+=("$name $result $secs"); done <"$root$results"
fi
failed=0
[ "$inside_rc" -eq 0 ] || failed=1
expected=(proto-alone make-run decide deps all-targets)
[ "$full" = 1 ] && expected+=(make-test)
echo
echo "=== fresh machine: Debian $suite root, $(date -u +%Y-%m-%dT%H:%MZ) ==="
for line in "${summary[@]}"; do
  read -r name result secs <<<"$line"
  printf '  %-12s %-6s %6d s  (%dm%02ds)\n' "$name" "$result" "$secs" $((secs / 60)) $((secs % 60))
  [ "$result" = FAIL ] && failed=1
done
for name in "${expected[@]}"; do
  if ! printf '%s\n' "${summary[@]}" | grep -q "^$name PASS "; then
    failed=1
    printf '%s\n' "${summary[@]}" | grep -q "^$name " || echo "  $name  (no result)"
  fi
done
total=$(($(date +%s) - t0))
if [ "$failed" = 0 ]; then
  echo "PASS in ${total} s"
else
  echo "FAIL after ${total} s"
  exit 1
fi
exit 0
}
