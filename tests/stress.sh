#!/usr/bin/env bash
# Runs the end-to-end tests (crate clusterfy-tests) N times while two CPU hogs load the machine,
# and reports every failing test with its count. Races show up under load first.
# Usage: tests/stress.sh [N]   (default 20). Exits non-zero if any run had a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
case "$runs" in ''|*[!0-9]*) echo "usage: tests/stress.sh [N]: N is a number of runs" >&2; exit 2 ;; esac

echo "building the end-to-end tests once"
cargo test -p clusterfy-tests --no-run --quiet || exit 1

hogs=()
stop_hogs() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null; }
trap stop_hogs EXIT
for _ in 1 2; do
    yes >/dev/null &
    hogs+=("$!")
done

logs=$(mktemp -d)
failed_runs=0
for run in $(seq 1 "$runs"); do
    log="$logs/run-$run.log"
    if cargo test -p clusterfy-tests --no-fail-fast >"$log" 2>&1; then
        echo "run $run/$runs: ok"
    else
        failed_runs=$((failed_runs + 1))
        echo "run $run/$runs: FAILED (log: $log)"
        grep -E '^test .* FAILED$|^---- .* stdout ----$' "$log" | sed 's/^/    /'
    fi
done

echo
echo "failing tests over $runs runs (count, name):"
grep -hE '^test .* FAILED$' "$logs"/run-*.log | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | sort | uniq -c | sort -rn
echo "$failed_runs of $runs runs had failures (logs in $logs)"
[ "$failed_runs" -eq 0 ]
