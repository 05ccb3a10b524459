#!/usr/bin/env bash
# The public API of the published crates, as cargo-public-api lists it (rustdoc JSON, nightly
# toolchain), compared with the listings kept in api/<crate>.txt, so that every change to the
# surface shows up in review as a diff of those files.
#
#   api/check.sh            fail (and print the diff) if a crate's surface differs from its listing
#   api/check.sh --update   write the listings anew (commit them with the change that made them)
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=(clusterfy clusterfy-core clusterfy-derive clusterfy-control)
# The only crates whose types may appear in the public API (a 1.0 of ours must not hang on a
# 0.x of someone else's): std, our own crates, and tokio, serde, futures, bytes and tracing
# (with the crates they re-export from).
ALLOWED=(std core alloc clusterfy clusterfy_core clusterfy_derive clusterfy_control tokio serde serde_core futures futures_core bytes
    tracing tracing_core)
update="${1:-}"
status=0
for crate in "${CRATES[@]}"; do
    kept="api/$crate.txt"
    now="$(mktemp)"
    cargo +nightly public-api -p "$crate" --all-features --simplified >"$now"
    foreign="$(grep -oP '(?<![A-Za-z0-9_:])[a-z_][a-z0-9_]*(?=::)' "$now" | sort -u | grep -vxF -f <(printf '%s\n' "${ALLOWED[@]}") || true)"
    if [[ -n "$foreign" ]]; then
        echo "the public API of $crate shows types of crates outside the allowed list (api/check.sh):" >&2
        printf '  %s\n' $foreign >&2
        grep -P "(?<![A-Za-z0-9_:])($(paste -sd'|' <<<"$foreign"))::" "$now" | head -20 >&2
        status=1
    fi
    if [[ "$update" == --update ]]; then
        mv "$now" "$kept"
        echo "wrote $kept"
        continue
    fi
    if ! diff -u "$kept" "$now"; then
        echo "the public API of $crate changed (above: - kept, + now). If that is intended, run" >&2
        echo "api/check.sh --update and commit api/$crate.txt with the change." >&2
        status=1
    fi
    rm -f "$now"
done
exit "$status"
