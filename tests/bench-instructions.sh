#!/usr/bin/env bash
# Instructions per pipelined save in the primary, beside instructions per frame of the raw echo
# server, counted by callgrind (valgrind). Prints
#   RESULT instructions_per_pipelined_save <n> instr baseline=<raw echo per frame> ratio=<r>
#
# Each side runs twice, with a small and a large number of operations; the difference of the two
# instruction counts over the difference of the operation counts is the cost of one operation,
# so start-up and shutdown cancel out.
# - The primary: the bench binary with --only-pipelined-save <n>, under callgrind
#   (--trace-children=no: its worker, forked by it, runs natively and does <n> saves with 256 in
#   flight, as save_pipelined_ops does).
# - The baseline: the bench binary with --only-raw-echo <n> drives <n> frames with 256 in flight
#   (as raw_pipelined_ops does) to its raw echo child, which it starts under callgrind.
# Every thread of the measured process counts. Under callgrind the measured process runs tens of
# times slower than its native peer, so it finds more requests per read than it would
# natively: the counts lean low on per-wakeup costs, on both sides alike.
#
# Usage: tests/bench-instructions.sh [<small n> <large n>]   (default 20000 200000)
# Honours CARGO_TARGET_DIR. Takes a minute or two; CI does not run it.
set -euo pipefail

small=${1:-20000}
large=${2:-200000}
if ! [[ $small =~ ^[0-9]+$ && $large =~ ^[0-9]+$ ]] || ((large <= small)); then
    echo "usage: $0 [<small n> <large n>] (whole numbers, small < large)" >&2
    exit 2
fi
if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (apt-get install valgrind); it counts the instructions" >&2
    exit 1
fi

cd "$(dirname "$0")/.."
cargo build --release -p clusterfy-tests --bin bench
target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
bench="$target_dir/release/bench"
[[ -x $bench ]] || { echo "no bench binary at $bench" >&2; exit 1; }

out=$(mktemp -d "${TMPDIR:-/tmp}/cy-bench-instr.XXXXXX")
trap 'rm -rf "$out"' EXIT

callgrind=(--tool=callgrind --trace-children=no)

# The instructions callgrind counted in the one profile $out/<name>.profile.<pid>.
totals() {
    local name=$1 files
    files=("$out/$name".profile.*)
    if ((${#files[@]} != 1)) || [[ ! -f ${files[0]} ]]; then
        echo "expected one callgrind profile $out/$name.profile.<pid>, found: ${files[*]}" >&2
        cat "$out/$name".log.* >&2 || true
        exit 1
    fi
    awk '/^totals:/ { print $2; found = 1 } END { exit !found }' "${files[0]}"
}

# The valgrind arguments naming where the profile and the log of <name> go.
outputs() {
    outputs=("--callgrind-out-file=$out/$1.profile.%p" "--log-file=$out/$1.log.%p")
}

primary() {
    local n=$1
    outputs "primary-$n"
    valgrind "${callgrind[@]}" "${outputs[@]}" "$bench" --only-pipelined-save "$n" >&2
    totals "primary-$n"
}

echo_server() {
    local n=$1
    outputs "echo-$n"
    "$bench" --only-raw-echo "$n" -- valgrind "${callgrind[@]}" "${outputs[@]}" >&2
    totals "echo-$n"
}

echo "[instructions] primary: $small and $large pipelined saves under callgrind" >&2
primary_small=$(primary "$small")
primary_large=$(primary "$large")
echo "[instructions] raw echo server: $small and $large frames under callgrind" >&2
echo_small=$(echo_server "$small")
echo_large=$(echo_server "$large")

awk -v ps="$primary_small" -v pl="$primary_large" -v es="$echo_small" -v el="$echo_large" \
    -v small="$small" -v large="$large" 'BEGIN {
    save = (pl - ps) / (large - small)
    frame = (el - es) / (large - small)
    printf "  primary: %.0f instructions with %s saves, %.0f with %s\n", ps, small, pl, large
    printf "  raw echo server: %.0f instructions with %s frames, %.0f with %s\n", es, small, el, large
    printf "RESULT instructions_per_pipelined_save %.0f instr baseline=%.0f ratio=%.3f\n", save, frame, save / frame
}'
