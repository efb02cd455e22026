#!/usr/bin/env bash
# Seeds the corpora, builds every fuzz target and runs them one after another, niced, one fuzzer process at a time,
# printing one summary line per target.
#
#   fuzz/run.sh [SECONDS_PER_TARGET (default 600)] [TARGET...]
#
# Logs: fuzz/artifacts/logs/<target>.log; crash inputs: fuzz/artifacts/<target>/ (both git-ignored).
# Exits non-zero when any target crashed, leaked, ran out of memory or timed out.
set -uo pipefail
cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)
SECS=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(catalog model rules experiments session_import request_validation assertion bundle_signature)

max_len() {
    case "$1" in
        catalog) echo 16384 ;;
        model) echo 16384 ;;
        session_import) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

./seeds.sh || exit 1
# Five targets need only the actors (--no-default-features); three also need services/node, and are built
# separately so that a node that does not compile only skips those.
NODE_TARGETS=" request_validation assertion bundle_signature "
nice -n 15 cargo +nightly fuzz build --no-default-features || exit 1
NODE_OK=1
for t in "${TARGETS[@]}"; do
    if [[ "$NODE_TARGETS" == *" $t "* ]]; then
        nice -n 15 cargo +nightly fuzz build "$t" || NODE_OK=0
    fi
done

LOGS="$FUZZ_DIR/artifacts/logs"
mkdir -p "$LOGS"
status=0
summary=()
for t in "${TARGETS[@]}"; do
    features=(--no-default-features)
    if [[ "$NODE_TARGETS" == *" $t "* ]]; then
        features=()
        if [ $NODE_OK = 0 ]; then
            summary+=("$(printf '%-20s' "$t") SKIPPED: services/node does not compile"); status=1; continue
        fi
    fi
    log="$LOGS/$t.log"
    work="$LOGS/$t.work"
    mkdir -p "$work" "$FUZZ_DIR/artifacts/$t"
    before=$(ls "$FUZZ_DIR/artifacts/$t" | wc -l)
    # -jobs=1 -workers=1: libFuzzer runs exactly one fuzzing child (its log, fuzz-0.log, lands in $work and is
    # copied to the output when it ends).
    # JSON targets get boundary numbers (dict/json.dict) plus their own dict/<target>.dict, if any.
    dict=()
    case "$t" in
        catalog | rules | experiments | session_import)
            cat dict/json.dict $( [ -f "dict/$t.dict" ] && echo "dict/$t.dict" ) >"$work/$t.dict"
            dict=(-dict="$work/$t.dict") ;;
    esac
    cmd=(nice -n 15 cargo +nightly fuzz run "${features[@]}" --fuzz-dir "$FUZZ_DIR" "$t" --
        -max_total_time="$SECS" -print_final_stats=1 -jobs=1 -workers=1
        -max_len="$(max_len "$t")" -timeout=30 -rss_limit_mb=2048 "${dict[@]}")
    echo "== $t: ${cmd[*]}"
    (cd "$work" && "${cmd[@]}") >"$log" 2>&1
    rc=$?
    after=$(ls "$FUZZ_DIR/artifacts/$t" | wc -l)
    crashes=$(( after - before ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*')
    corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*')
    # Seconds fuzzed: libFuzzer's "Done N runs in S second(s)", or (after a crash) executions / rate.
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}')
    if [ -z "$secs" ] && [ -n "$execs" ] && [ "${eps:-0}" -gt 0 ]; then secs="~$(( execs / eps ))"; fi
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then status=1; fi
    line=$(printf '%-20s secs=%-5s execs=%-10s exec/s=%-7s cov=%-6s ft=%-7s corpus=%-6s crashes=%s rc=%s' \
        "$t" "${secs:-?}" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "$rc")
    echo "$line"
    summary+=("$line")
done
echo
echo "== summary (${SECS}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
