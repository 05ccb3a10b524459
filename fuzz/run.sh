#!/usr/bin/env bash
# Runs Clusterfy's fuzz targets (libFuzzer through cargo-fuzz, nightly toolchain) on their kept
# corpora in fuzz/corpus/<target>/, and prints executions, corpus size and peak RSS per target.
#
#   fuzz/run.sh [TARGET|all] [SECONDS] [RUNS]
#
# Each target runs for SECONDS (default 60), or until RUNS executions when RUNS is given, built
# with debug assertions and overflow checks (cargo-fuzz's default; -O would drop them). The
# environment variable SEED fixes libFuzzer's seed (CI sets it). A crash,
# a timeout (10 s for one input) or an RSS over 1 GiB stops the run and fails the script; the
# input is kept in fuzz/artifacts/<target>/ (make it a regression test, see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")"

ALL=(frame_decoder worker_message control_message value path env cli_json link_session)
which="${1:-all}"
seconds="${2:-60}"
runs="${3:-}"
if [[ "$which" == all ]]; then targets=("${ALL[@]}"); else targets=("$which"); fi

cargo +nightly fuzz build
status=0
printf '%-16s %14s %8s %11s %s\n' target executions corpus peak_rss result
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$(mktemp)"
    limit=(-max_total_time="$seconds")
    if [[ -n "$runs" ]]; then limit=(-runs="$runs"); fi
    if [[ -n "${SEED:-}" ]]; then limit+=(-seed="$SEED"); fi
    if cargo +nightly fuzz run "$target" "corpus/$target" -- "${limit[@]}" -rss_limit_mb=1024 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (its output is above; a crashing input is in fuzz/artifacts/$target/)"
        status=1
        tail -40 "$log" >&2
    fi
    executions="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    rss="$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    corpus="$(find "corpus/$target" -type f | wc -l)"
    printf '%-16s %14s %8s %8s MB %s\n' "$target" "$executions" "$corpus" "$rss" "$result"
    rm -f "$log"
done
exit "$status"
