#!/usr/bin/env bash
# `make loadtest`: starts one release node with the embedded demo world on free loopback ports, loads it with the
# `decide` scenario at 5,000 requests/s open-loop with the health floor interleaved, prints the table and a verdict
# against the 2 ms p99 target, and stops the node it started. Override with RATE, DURATION, WARMUP, CONNECTIONS,
# P99_TARGET_MS; extra arguments go to `aisle-loadtest run` (e.g. --json).
#
# `scripts/loadtest.sh --compare OLD_BIN NEW_BIN [--json]`: an A/B of two `aisle` binaries. ROUNDS times (default
# 3) it starts a fresh node of OLD, then one of NEW (order A B A B A B), each with the demo world on its own fresh
# free ports, and on each measures
#   1. the node's CPU per decision at a fixed rate below saturation (CPU_RATE decisions/s, default 2000, for
#      CPU_DURATION, default 15 s, after CPU_WARMUP, default 3 s, at the same rate): the node process's
#      utime + stime from /proc/<pid>/stat (clock ticks of `getconf CLK_TCK`) before and after the window, divided
#      by the decisions completed in it. Read from /proc, not /metrics, so any binary can be compared, also one
#      without process_cpu_seconds_total;
#   2. its saturation point: the knee of `aisle-loadtest ramp --scenario decide` (the highest rate whose p99 stays
#      under RAMP_P99_TARGET_MS, default 10, with no error; RAMP_START 4000, RAMP_STEP 1000, RAMP_MAX 24000,
#      RAMP_STEP_DURATION 3s, RAMP_SETTLE 1s, stopping after RAMP_STOP_AFTER_FAILURES, default 2, failing steps:
#      about 50 s for a knee near 14,000/s);
# then stops that node by its PID. It prints every run, each side's medians and the ratios NEW/OLD (CPU per decision:
# below 1 is cheaper; saturation: above 1 is better); with --json the last line is one JSON object as well. The load
# generator is ./target/release/aisle-loadtest (LOADTEST to override) and shares the machine with the node: both
# sides pay that alike, which is why the runs alternate.
#
# `scripts/loadtest.sh --floor-ratio BIN [--json]`: a decision's price against the health-check floor, one binary.
# ROUNDS times (default 3) it starts a fresh node of BIN (demo world, own free ports below the ephemeral range),
# loads it with the `health` scenario (grpc.health.v1 Check: same server, transport and connections, no work) at
# CPU_RATE/s (default 2000) for CPU_DURATION (default 15 s) after CPU_WARMUP (default 3 s), reads the node's CPU
# from /proc/<pid>/stat around the recorded window and stops it by PID; then a fresh node the same way with the
# `decide` scenario. It prints node CPU µs per request for each and their ratio per round, then the medians and the
# median of the per-round ratios, which is the headline (each ratio is taken between two runs close in time, so it
# is less exposed to the machine's drift than the ratio of the medians). A rise of the headline means the decision
# path grew dearer than the transport under it. LOADTEST overrides the load generator as in --compare.
#
# `scripts/loadtest.sh --compare-tls BIN [--json]`: the same A/B with one binary, plaintext (OLD) against TLS and a
# token file (NEW): the NEW node serves TLS with a throwaway CA (scripts/pki.sh) and checks a bearer token on every
# call, and the load generator speaks TLS and sends the token. The ratio is the cost of security.
#
# `scripts/loadtest.sh --compare-replication BIN [--json]`: the cost of session replication, with one binary. ROUNDS
# times (default 3) it starts a two-node cluster (one etcd for the whole comparison, a fresh cluster name per run,
# TLS everywhere with a throwaway CA: scripts/pki.sh) with replication off (OLD, `--replication-ms 0`), then one with
# it on (NEW, `--replication-ms ${REPLICATION_MS:-200}`), loads the first node with the `mixed` scenario (Decide and
# Track; about half of the shoppers are owned by the other node, so forwarding is in both sides alike) at CPU_RATE
# requests/s for CPU_DURATION after CPU_WARMUP, and reads the CPU of both node processes around the recorded run:
# CPU per request (both nodes) and Decide p99. No saturation ramp.
#
# `scripts/loadtest.sh --compare-outbox BIN [--json]`: the same two-node A/B, replication on in both, without a Track
# outbox (OLD) and with one (NEW, `--outbox-dir` per node in the work directory): the cost of numbering every Track
# for exactly-once delivery when nothing needs queueing.
#
# `scripts/loadtest.sh --fair-share BIN [--json]`: a caller past its `rate_per_sec` against a well-behaved one, one
# node with TLS and a token file (scripts/pki.sh) holding two tokens: `victim` (no limits) and `abuser`
# (`rate_per_sec = ABUSER_LIMIT`, default 200). ROUNDS times (default 3) it runs the victim alone (`decide` at
# VICTIM_RATE, default 1000/s, for FAIR_DURATION, default 15 s), then the victim again while the abuser sends
# ABUSER_RATE (default 4000/s) beside it, and reports the victim's p99 in both and their ratio (target: at most
# 1.5), and what the abuser got (OK against RESOURCE_EXHAUSTED). Alone and under abuse alternate.
#
# With DECISION_LOG=1 every node of either comparison writes its decision log (`--decision-log`, a fresh file per
# run in the work directory): `DECISION_LOG=1 scripts/loadtest.sh --compare OLD NEW` prices a change to the log.
set -euo pipefail
caller_dir=$PWD
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

# Starts `$1 serve` as node $2 on 127.0.0.1 ports $3 (gRPC) and $4 (HTTP), its log in $5, with any further
# arguments after $7, and waits up to $6 seconds for /readyz; sets node_pid. On failure it prints the node's log,
# prefixed by $7, and exits 1.
start_node() {
  local node_bin=$1 id=$2 grpc=$3 http=$4 log=$5 within=$6 what=$7 ready=
  shift 7
  AISLE_LOG=${AISLE_LOG:-warn} "$node_bin" serve --node-id "$id" \
    --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" "$@" >"$log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 $((within * 10))); do
    if curl -fs "http://127.0.0.1:$http/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    echo "${what}did not become ready in $within s; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
}

# A path as the caller gave it, from where the caller stands.
abs() { case $1 in /*) echo "$1" ;; *) echo "$caller_dir/$1" ;; esac; }

# CPU ticks (user + system) of process $1 so far. The command name (field 2) may hold spaces: count from the last
# ')'; utime and stime are fields 14 and 15, so the 12th and 13th after it.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat")
  echo "${stat##*) }" | awk '{ print $12 + $13 }'
}

# The load generator: $LOADTEST (a path from where the caller stands), else this build's.
loadtest_bin() { if [ -n "${LOADTEST:-}" ]; then abs "$LOADTEST"; else echo "$bin/aisle-loadtest"; fi; }

# Exits 2, naming it, unless every argument is an executable.
require_executables() {
  local b
  for b in "$@"; do
    [ -x "$b" ] || { echo "not an executable: $b (build with \`cargo build --release\`)" >&2; exit 2; }
  done
}

# Stops the node start_node started (by its PID), if it still runs.
stop_started_node() {
  if [ -n "${node_pid:-}" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill "$node_pid"
    wait "$node_pid" 2>/dev/null || true
  fi
  node_pid=
}

if [ "${1:-}" = "--fair-share" ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/loadtest.sh --fair-share BIN [--json]" >&2; exit 2; }
  node_bin=$(abs "$1")
  shift
  json=
  [ "${1:-}" = "--json" ] && json=1
  loadtest=$(loadtest_bin)
  require_executables "$node_bin" "$loadtest"
  rounds=${ROUNDS:-3}
  victim_rate=${VICTIM_RATE:-1000}
  abuser_rate=${ABUSER_RATE:-4000}
  abuser_limit=${ABUSER_LIMIT:-200}
  fair_duration=${FAIR_DURATION:-15s}
  work=$(mktemp -d)
  node_pid= abuser_pid=
  trap 'stop_started_node; [ -n "$abuser_pid" ] && kill "$abuser_pid" 2>/dev/null; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  # shellcheck source=scripts/pki.sh
  . scripts/pki.sh
  make_local_pki "$work/pki"
  victim=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n') abuser=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
  cat >"$work/tokens.toml" <<TOML
[[token]]
name = "victim"
sha256 = "$(printf %s "$victim" | sha256sum | cut -d' ' -f1)"
scopes = ["decide"]
[[token]]
name = "abuser"
sha256 = "$(printf %s "$abuser" | sha256sum | cut -d' ' -f1)"
scopes = ["decide"]
rate_per_sec = $abuser_limit
TOML
  grpc=$(free_port 50700); http=$(free_port $((grpc + 1)))
  start_node "$node_bin" fair-share "$grpc" "$http" "$work/node.log" 60 "$node_bin: " \
    --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" --auth-tokens "$work/tokens.toml"
  target="https://127.0.0.1:$grpc"
  run() { # run TOKEN RATE OUT
    "$loadtest" run --target "$target" --ca-cert "$work/pki/ca.pem" --token "$1" --scenario decide --rate "$2" \
      --duration "$fair_duration" --json >"$3"
  }
  echo "fair share on $node_bin: victim decide at $victim_rate/s for $fair_duration, alone and beside an abuser" \
       "sending $abuser_rate/s past its rate_per_sec = $abuser_limit; $rounds round(s); $(nproc) cores shared with" \
       "both load generators"
  "$loadtest" run --target "$target" --ca-cert "$work/pki/ca.pem" --token "$victim" --scenario decide \
    --rate "$victim_rate" --duration 3s --quiet >/dev/null
  for round in $(seq 1 "$rounds"); do
    run "$victim" "$victim_rate" "$work/alone-$round.out"
    run "$abuser" "$abuser_rate" "$work/abuser-$round.out" &
    abuser_pid=$!
    run "$victim" "$victim_rate" "$work/abused-$round.out"
    wait "$abuser_pid"; abuser_pid=
  done
  stop_started_node
  python3 - "$rounds" "$abuser_limit" "${json:-}" "$work" <<'PY'
import json, statistics, sys
rounds, limit, want_json, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
last = lambda path: json.loads(open(path).read().strip().splitlines()[-1])
rows = []
for r in range(1, rounds + 1):
    alone, abused, abuser = (last(f"{work}/{k}-{r}.out") for k in ("alone", "abused", "abuser"))
    rows.append({"round": r, "alone_p99_ms": alone["p99_ms"], "abused_p99_ms": abused["p99_ms"],
                 "ratio": round(abused["p99_ms"] / alone["p99_ms"], 3),
                 "victim_errors": alone["errors"] + abused["errors"],
                 "abuser_ok": abuser["ok"], "abuser_errors_by_code": abuser["errors_by_code"],
                 "abuser_ok_per_sec": round(abuser["ok"] / abuser["duration_s"], 1)})
    x = rows[-1]
    print(f"round {r}: victim p99 alone {x['alone_p99_ms']:.3f} ms, beside the abuser {x['abused_p99_ms']:.3f} ms "
          f"(ratio {x['ratio']:.3f}); victim errors {x['victim_errors']}; abuser {x['abuser_ok']} OK "
          f"({x['abuser_ok_per_sec']}/s against rate_per_sec {limit}), refused {x['abuser_errors_by_code']}")
median = statistics.median(x["ratio"] for x in rows)
print(f"median victim p99 ratio (beside the abuser / alone): {median:.3f} (target: at most 1.5)")
if want_json:
    print(json.dumps({"mode": "fair_share", "rounds": rounds, "abuser_limit": limit, "runs": rows,
                      "median_ratio": median}))
PY
  exit 0
fi

if [ "${1:-}" = "--compare-replication" ] || [ "${1:-}" = "--compare-outbox" ]; then
  ab=${1#--compare-}
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/loadtest.sh --compare-$ab BIN [--json]" >&2; exit 2; }
  node_bin=$(abs "$1")
  shift
  json=
  [ "${1:-}" = "--json" ] && json=1
  loadtest=$(loadtest_bin)
  require_executables "$node_bin" "$loadtest"
  command -v etcd >/dev/null || { echo "etcd is not installed (make deps)" >&2; exit 2; }
  rounds=${ROUNDS:-3}
  cpu_rate=${CPU_RATE:-1000}
  cpu_duration=${CPU_DURATION:-15s}
  cpu_warmup=${CPU_WARMUP:-3s}
  replication_ms=${REPLICATION_MS:-200}
  clk_tck=$(getconf CLK_TCK)
  work=$(mktemp -d)
  pids=()
  stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
  }
  trap 'stop_all; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  # shellcheck source=scripts/pki.sh
  . scripts/pki.sh
  make_local_pki "$work/pki"
  pki=$work/pki
  etcd_port=$(free_port 52379)
  etcd --name ab --data-dir "$work/etcd" \
    --cert-file "$pki/etcd.pem" --key-file "$pki/etcd.key" --trusted-ca-file "$pki/ca.pem" --client-cert-auth \
    --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "ab=http://127.0.0.1:$((etcd_port + 1))" >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  trap 'stop_all; kill $etcd_pid 2>/dev/null || true; wait $etcd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
  port_base=30700  # below the ephemeral range (32768+), where outgoing connections take their ports
  : >"$work/runs.jsonl"
  if [ "$ab" = replication ]; then
    sides="OLD --replication-ms 0, NEW --replication-ms $replication_ms"
  else
    sides="--replication-ms $replication_ms, OLD without an outbox, NEW with --outbox-dir"
  fi
  echo "A/B of $ab in a 2-node cluster of $node_bin: $sides; $rounds round(s) of A B; mixed scenario at" \
       "$cpu_rate/s for $cpu_duration after $cpu_warmup; $(nproc) cores shared by etcd, both nodes and the load" \
       "generator"
  for round in $(seq 1 "$rounds"); do
    for side in old new; do
      if [ "$side" = old ]; then label=A; else label=B; fi
      ms=$replication_ms
      [ "$ab" = replication ] && [ "$side" = old ] && ms=0
      node_pids=()
      for i in 1 2; do
        extra=()
        [ "$ab" = outbox ] && [ "$side" = new ] && extra=(--outbox-dir "$work/outbox-$label$round-$i")
        grpc=$(free_port "$port_base"); http=$(free_port $((grpc + 1))); peer=$(free_port $((http + 1)))
        port_base=$((peer + 1))
        [ "$i" = 1 ] && target="https://127.0.0.1:$grpc"
        peer_cert "$pki" "ab-$i"
        start_node "$node_bin" "ab-$i" "$grpc" "$http" "$work/node-$label$round-$i.log" 60 \
          "run $label$round node $i: " --peer-addr "127.0.0.1:$peer" --cluster etcd \
          --cluster-name "ab-$label$round" --etcd-endpoints "https://127.0.0.1:$etcd_port" \
          --etcd-ca "$pki/ca.pem" --etcd-cert "$pki/etcd-client.pem" --etcd-key "$pki/etcd-client.key" \
          --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --auth-tokens "$pki/tokens.toml" \
          --pseudonym-key "$pki/pseudonym.key" \
          --peer-tls-cert "$pki/peer-ab-$i.pem" --peer-tls-key "$pki/peer-ab-$i.key" --peer-tls-ca "$pki/ca.pem" \
          --replication-ms "$ms" "${extra[@]}"
        pids+=("$node_pid") node_pids+=("$node_pid")
        metrics_port[$i]=$http
      done
      for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:${metrics_port[1]}/metrics" | grep -q '^aisle_cluster_members 2' && break
        sleep 0.1
      done
      client_args=(--ca-cert "$pki/ca.pem" --token "$(cat "$pki/token")")
      "$loadtest" run --target "$target" "${client_args[@]}" --scenario mixed --rate "$cpu_rate" \
        --duration "$cpu_warmup" --quiet >/dev/null
      t0=0; for p in "${node_pids[@]}"; do t0=$((t0 + $(cpu_ticks "$p"))); done
      "$loadtest" run --target "$target" "${client_args[@]}" --scenario mixed --rate "$cpu_rate" \
        --duration "$cpu_duration" --json >"$work/cpu-$label$round.out"
      t1=0; for p in "${node_pids[@]}"; do t1=$((t1 + $(cpu_ticks "$p"))); done
      replicated=$(curl -fs "http://127.0.0.1:${metrics_port[1]}/metrics" \
        | awk '/^aisle_replication_sessions_total\{result="sent"\}/ { print $2 }')
      stop_all
      python3 - "$side" "$label$round" "$((t1 - t0))" "$clk_tck" "$work/cpu-$label$round.out" \
        "${replicated:-0}" "$work/runs.jsonl" <<'PY'
import json, sys
side, run, ticks, clk_tck, out, replicated, runs = sys.argv[1:]
r = json.loads(open(out).read().strip().splitlines()[-1])
calls = r["ok"] + r["errors"]
cpu_s = int(ticks) / int(clk_tck)
row = {"side": side, "run": run, "cpu_us_per_request": round(cpu_s * 1e6 / calls, 1) if calls else None,
       "nodes_cpu_cores": round(cpu_s / r["duration_s"], 3), "requests": calls, "errors": r["errors"],
       "decide_p99_ms": r.get("decide_p99_ms"), "track_p99_ms": r.get("track_p99_ms"),
       "sessions_replicated_node1": float(replicated)}
with open(runs, "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"run {run:<4} {side:<3}  CPU {row['cpu_us_per_request']} µs/request ({row['nodes_cpu_cores']:.2f} cores, "
      f"{calls} requests, {row['errors']} errors)  Decide p99 {row['decide_p99_ms']:.3f} ms  Track p99 "
      f"{row['track_p99_ms']:.3f} ms  sessions replicated by node 1: {row['sessions_replicated_node1']:.0f}",
      flush=True)
PY
    done
  done
  python3 - "$rounds" "${json:-}" "$work/runs.jsonl" "$ab" <<'PY'
import json, statistics, sys
rounds, want_json, path, ab = sys.argv[1:]
runs = [json.loads(l) for l in open(path) if l.strip()]
med = lambda side, key: statistics.median([r[key] for r in runs if r["side"] == side and r[key] is not None])
out = {k: {s: med(s, k) for s in ("old", "new")} for k in ("cpu_us_per_request", "decide_p99_ms", "track_p99_ms")}
ratios = {k: round(v["new"] / v["old"], 3) for k, v in out.items()}
print()
for k, v in out.items():
    print(f"median {k}: OLD {v['old']:.3f}  NEW {v['new']:.3f}  NEW/OLD {ratios[k]:.3f}")
if any(r["errors"] for r in runs):
    print("warning: some runs had errors")
if want_json:
    print(json.dumps({"mode": "compare-" + ab, "rounds": int(rounds), "runs": runs, "medians": out,
                      "ratios": ratios}))
PY
  exit 0
fi
if [ "${1:-}" = "--floor-ratio" ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/loadtest.sh --floor-ratio BIN [--json]" >&2; exit 2; }
  node_bin=$(abs "$1")
  shift
  json=
  [ "${1:-}" = "--json" ] && json=1
  loadtest=$(loadtest_bin)
  require_executables "$node_bin" "$loadtest"
  rounds=${ROUNDS:-3}
  cpu_rate=${CPU_RATE:-2000}
  cpu_duration=${CPU_DURATION:-15s}
  cpu_warmup=${CPU_WARMUP:-3s}
  clk_tck=$(getconf CLK_TCK)
  work=$(mktemp -d)
  node_pid=
  trap 'stop_started_node; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  port_base=30800  # below the ephemeral range (32768+), where outgoing connections take their ports
  : >"$work/runs.jsonl"
  echo "floor ratio of $node_bin: $rounds round(s) of health then decide, each on a fresh node, at $cpu_rate/s for" \
       "$cpu_duration after $cpu_warmup warm-up; $(nproc) cores shared with the load generator"
  for round in $(seq 1 "$rounds"); do
    for scenario in health decide; do
      grpc_port=$(free_port "$port_base")
      http_port=$(free_port $((grpc_port + 1)))
      port_base=$((http_port + 1))
      target="http://127.0.0.1:$grpc_port"
      start_node "$node_bin" "floor-$scenario$round" "$grpc_port" "$http_port" "$work/node-$scenario$round.log" 60 \
        "round $round ($scenario): $node_bin "
      "$loadtest" run --target "$target" --scenario "$scenario" --rate "$cpu_rate" --duration "$cpu_warmup" \
        --quiet >/dev/null
      t0=$(cpu_ticks "$node_pid")
      "$loadtest" run --target "$target" --scenario "$scenario" --rate "$cpu_rate" --duration "$cpu_duration" \
        --json >"$work/$scenario$round.out"
      t1=$(cpu_ticks "$node_pid")
      stop_started_node
      python3 - "$round" "$scenario" "$((t1 - t0))" "$clk_tck" "$work/$scenario$round.out" "$work/runs.jsonl" <<'PY'
import json, sys
rnd, scenario, ticks, clk_tck, out, runs = sys.argv[1:]
r = json.loads(open(out).read().strip().splitlines()[-1])
requests = r["ok"] + r["errors"]
cpu_s = int(ticks) / int(clk_tck)
row = {"round": int(rnd), "scenario": scenario,
       "cpu_us_per_request": round(cpu_s * 1e6 / requests, 1) if requests else None,
       "node_cpu_seconds": round(cpu_s, 3), "node_cpu_cores": round(cpu_s / r["duration_s"], 3),
       "requests": requests, "errors": r["errors"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
with open(runs, "a") as f:
    f.write(json.dumps(row) + "\n")
fmt = lambda v: "-" if v is None else f"{v:.1f}"
print(f"round {rnd} {scenario:<7} CPU {fmt(row['cpu_us_per_request'])} µs/request ({row['node_cpu_cores']:.2f} cores, "
      f"{requests} requests, {row['errors']} errors, p99 {row['p99_ms']:.3f} ms)", flush=True)
PY
    done
  done
  python3 - "$node_bin" "$rounds" "$cpu_rate" "${json:-}" "$work/runs.jsonl" <<'PY'
import json, statistics, sys
node_bin, rounds, cpu_rate, want_json, path = sys.argv[1:]
runs = [json.loads(l) for l in open(path) if l.strip()]
cpu = {(r["round"], r["scenario"]): r["cpu_us_per_request"] for r in runs}
fmt = lambda v, f: "-" if v is None else format(v, f)
def ratio(health, decide):
    return round(decide / health, 3) if health and decide is not None else None
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
per_round = []
print()
print(f"{'round':<8}{'health µs/req':>15}{'decide µs/req':>15}{'decide/health':>15}")
for n in range(1, int(rounds) + 1):
    h, d = cpu.get((n, "health")), cpu.get((n, "decide"))
    per_round.append({"round": n, "health_cpu_us_per_request": h, "decide_cpu_us_per_request": d,
                      "ratio": ratio(h, d)})
    print(f"{n:<8}{fmt(h, '.1f'):>15}{fmt(d, '.1f'):>15}{fmt(ratio(h, d), '.3f'):>15}")
med_h = median(r["health_cpu_us_per_request"] for r in per_round)
med_d = median(r["decide_cpu_us_per_request"] for r in per_round)
med_ratio = median(r["ratio"] for r in per_round)
print(f"{'median':<8}{fmt(med_h, '.1f'):>15}{fmt(med_d, '.1f'):>15}{fmt(med_ratio, '.3f'):>15}")
print(f"headline: decide/health = {fmt(med_ratio, '.3f')} (median of the {rounds} per-round ratios; the ratio of "
      f"the medians is {fmt(ratio(med_h, med_d), '.3f')})")
if any(r["errors"] for r in runs):
    print(f"warning: some runs had errors: {cpu_rate}/s is not below saturation for every run")
if want_json:
    print(json.dumps({"mode": "floor-ratio", "bin": node_bin, "rounds": int(rounds), "cpu_rate": float(cpu_rate),
                      "runs": runs, "per_round": per_round, "median_health_cpu_us_per_request": med_h,
                      "median_decide_cpu_us_per_request": med_d, "median_ratio": med_ratio,
                      "ratio_of_medians": ratio(med_h, med_d)}))
PY
  exit 0
fi
if [ "${1:-}" = "--compare" ] || [ "${1:-}" = "--compare-tls" ]; then
  tls_mode=
  [ "$1" = "--compare-tls" ] && tls_mode=1
  shift
  if [ -n "$tls_mode" ]; then
    [ $# -ge 1 ] || { echo "usage: scripts/loadtest.sh --compare-tls BIN [--json]" >&2; exit 2; }
    old_bin=$(abs "$1") new_bin=$(abs "$1")
    shift 1
  else
    [ $# -ge 2 ] || { echo "usage: scripts/loadtest.sh --compare OLD_BIN NEW_BIN [--json]" >&2; exit 2; }
    old_bin=$(abs "$1") new_bin=$(abs "$2")
    shift 2
  fi
  json=
  [ "${1:-}" = "--json" ] && json=1
  loadtest=$(loadtest_bin)
  require_executables "$old_bin" "$new_bin" "$loadtest"
  rounds=${ROUNDS:-3}
  cpu_rate=${CPU_RATE:-2000}
  cpu_duration=${CPU_DURATION:-15s}
  cpu_warmup=${CPU_WARMUP:-3s}
  ramp_start=${RAMP_START:-4000}
  ramp_step=${RAMP_STEP:-1000}
  ramp_max=${RAMP_MAX:-24000}
  ramp_step_duration=${RAMP_STEP_DURATION:-3s}
  ramp_settle=${RAMP_SETTLE:-1s}
  ramp_target_ms=${RAMP_P99_TARGET_MS:-10}
  ramp_failures=${RAMP_STOP_AFTER_FAILURES:-2}
  clk_tck=$(getconf CLK_TCK)

  work=$(mktemp -d)
  node_pid=
  trap 'stop_started_node; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM

  port_base=50600
  : >"$work/runs.jsonl"
  if [ -n "$tls_mode" ]; then
    # shellcheck source=scripts/pki.sh
    . scripts/pki.sh
    make_local_pki "$work/pki"
    echo "OLD: plaintext, no tokens; NEW: TLS (EC P-256, rustls) and a bearer token checked on every call"
  fi
  echo "A/B of OLD $old_bin and NEW $new_bin: $rounds round(s) of A B; per run: CPU per decision at $cpu_rate/s" \
       "for $cpu_duration after $cpu_warmup warm-up, then the saturation ramp ($ramp_start → $ramp_max by $ramp_step," \
       "$ramp_step_duration a step, p99 under $ramp_target_ms ms); $(nproc) cores shared with the load generator"
  for round in $(seq 1 "$rounds"); do
    for side in old new; do
      if [ "$side" = old ]; then node_bin=$old_bin; label=A; else node_bin=$new_bin; label=B; fi
      grpc_port=$(free_port "$port_base")
      http_port=$(free_port $((grpc_port + 1)))
      port_base=$((http_port + 1))
      node_args=() client_args=() target="http://127.0.0.1:$grpc_port"
      if [ -n "$tls_mode" ] && [ "$side" = new ]; then
        node_args=(--tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key"
          --auth-tokens "$work/pki/tokens.toml")
        client_args=(--ca-cert "$work/pki/ca.pem" --token "$(cat "$work/pki/token")")
        target="https://127.0.0.1:$grpc_port"
      fi
      if [ -n "${DECISION_LOG:-}" ]; then
        node_args+=(--decision-log "$work/decisions-$label$round.jsonl")
      fi
      start_node "$node_bin" "compare-$label$round" "$grpc_port" "$http_port" "$work/node-$label$round.log" 60 \
        "run $label$round: $node_bin " "${node_args[@]}"
      # 1. CPU per decision: warm up at the rate, then read the node's CPU around the recorded run.
      "$loadtest" run --target "$target" "${client_args[@]}" --scenario decide --rate "$cpu_rate" \
        --duration "$cpu_warmup" --quiet >/dev/null
      t0=$(cpu_ticks "$node_pid")
      "$loadtest" run --target "$target" "${client_args[@]}" --scenario decide --rate "$cpu_rate" \
        --duration "$cpu_duration" --json >"$work/cpu-$label$round.out"
      t1=$(cpu_ticks "$node_pid")
      # 2. Saturation point.
      "$loadtest" ramp --target "$target" "${client_args[@]}" --scenario decide --start "$ramp_start" --step "$ramp_step" \
        --max "$ramp_max" --step-duration "$ramp_step_duration" --settle "$ramp_settle" \
        --p99-target-ms "$ramp_target_ms" --stop-after-failures "$ramp_failures" --json >"$work/ramp-$label$round.out"
      stop_started_node
      python3 - "$side" "$label$round" "$node_bin" "$((t1 - t0))" "$clk_tck" \
        "$work/cpu-$label$round.out" "$work/ramp-$label$round.out" "$work/runs.jsonl" <<'PY'
import json, sys
side, run, binary, ticks, clk_tck, cpu_out, ramp_out, runs = sys.argv[1:]
last = lambda path: json.loads(open(path).read().strip().splitlines()[-1])
cpu, ramp = last(cpu_out), last(ramp_out)
decisions = cpu["ok"] + cpu["errors"]
cpu_s = int(ticks) / int(clk_tck)
r = {
    "side": side, "run": run, "bin": binary,
    "cpu_us_per_decision": round(cpu_s * 1e6 / decisions, 1) if decisions else None,
    "node_cpu_seconds": round(cpu_s, 3), "node_cpu_cores": round(cpu_s / cpu["duration_s"], 3),
    "decisions": decisions, "errors": cpu["errors"], "p99_ms": cpu["p99_ms"],
    "saturation_rps": ramp["saturation_rps"],
    "ramp_steps": [{"rate": s["rate"], "p99_ms": s["p99_ms"], "errors": s["errors"], "passed": s["passed"]}
                   for s in ramp["steps"]],
}
with open(runs, "a") as f:
    f.write(json.dumps(r) + "\n")
fmt = lambda v, f: "-" if v is None else format(v, f)
print(f"run {run:<4} {side:<3}  CPU {fmt(r['cpu_us_per_decision'], '.1f')} µs/decision ({r['node_cpu_cores']:.2f} cores, "
      f"{decisions} decisions, {r['errors']} errors, p99 {r['p99_ms']:.3f} ms)  saturation "
      f"{fmt(r['saturation_rps'], '.0f')}/s (steps: "
      + ", ".join(f"{s['rate']:.0f} {'pass' if s['passed'] else 'FAIL'}" for s in r["ramp_steps"]) + ")", flush=True)
PY
    done
  done

  python3 - "$old_bin" "$new_bin" "$rounds" "$cpu_rate" "${json:-}" "$work/runs.jsonl" <<'PY'
import json, statistics, sys
old_bin, new_bin, rounds, cpu_rate, want_json, path = sys.argv[1:]
runs = [json.loads(l) for l in open(path) if l.strip()]
def median(side, key):
    values = [r[key] for r in runs if r["side"] == side and r[key] is not None]
    return statistics.median(values) if values else None
def ratio(a, b):
    return round(b / a, 3) if a and b is not None else None
fmt = lambda v, f: "-" if v is None else format(v, f)
cpu_old, cpu_new = median("old", "cpu_us_per_decision"), median("new", "cpu_us_per_decision")
sat_old, sat_new = median("old", "saturation_rps"), median("new", "saturation_rps")
print()
print(f"{'run':<8}{'side':<5}{'CPU µs/decision':>16}{'node cores':>12}{'decisions':>11}{'errors':>8}{'p99 ms':>9}"
      f"{'saturation/s':>14}")
for r in runs:
    print(f"{r['run']:<8}{r['side']:<5}{fmt(r['cpu_us_per_decision'], '.1f'):>16}{r['node_cpu_cores']:>12.2f}"
          f"{r['decisions']:>11}{r['errors']:>8}{r['p99_ms']:>9.3f}{fmt(r['saturation_rps'], '.0f'):>14}")
print(f"{'median':<8}{'old':<5}{fmt(cpu_old, '.1f'):>16}{'':>12}{'':>11}{'':>8}{'':>9}{fmt(sat_old, '.0f'):>14}")
print(f"{'median':<8}{'new':<5}{fmt(cpu_new, '.1f'):>16}{'':>12}{'':>11}{'':>8}{'':>9}{fmt(sat_new, '.0f'):>14}")
print(f"NEW/OLD: CPU per decision {fmt(ratio(cpu_old, cpu_new), '.3f')} (below 1: NEW is cheaper), "
      f"saturation {fmt(ratio(sat_old, sat_new), '.3f')} (above 1: NEW saturates later)")
if any(r["errors"] for r in runs):
    print(f"warning: some fixed-rate runs had errors: {cpu_rate}/s is not below saturation for every run")
if want_json:
    side = lambda s, b: {"bin": b, "runs": [r for r in runs if r["side"] == s],
                         "median_cpu_us_per_decision": median(s, "cpu_us_per_decision"),
                         "median_saturation_rps": median(s, "saturation_rps")}
    print(json.dumps({"mode": "compare", "rounds": int(rounds), "cpu_rate": float(cpu_rate),
                      "old": side("old", old_bin), "new": side("new", new_bin),
                      "ratio_cpu_us_per_decision": ratio(cpu_old, cpu_new),
                      "ratio_saturation_rps": ratio(sat_old, sat_new)}))
PY
  exit 0
fi
grpc_port=$(free_port 50561)
http_port=$(free_port 9561)

work=$(mktemp -d)
node_pid=
trap 'stop_started_node; rm -rf "$work"' EXIT INT TERM

start_node "$bin/aisle" loadtest "$grpc_port" "$http_port" "$work/node.log" 30 "the node "
echo "node (pid $node_pid) ready on 127.0.0.1:$grpc_port; load generator on the same machine ($(nproc) cores)"

"$bin/aisle-loadtest" run --target "http://127.0.0.1:$grpc_port" --scenario decide \
  --rate "$rate" --duration "$duration" --warmup "$warmup" --connections "$connections" \
  --floor --p99-target-ms "$target_ms" "$@"
