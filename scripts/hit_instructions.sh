#!/usr/bin/env bash
# User-space instructions per cache hit, counted by callgrind: a figure that
# does not move with the machine's load, unlike requests per second.
#
#   scripts/hit_instructions.sh [CORRAL_BIN ...]
#
# Starts static_server (the origin, and the baseline measured the same way),
# then each corral binary given (default: this checkout's release build) in
# front of it, each under `valgrind --tool=callgrind`. Warms one 1 KiB key,
# runs wrk for 3 s unmeasured, zeroes the counters, runs wrk for 8 s, dumps
# them and prints the instructions per request, every thread of the process
# included (the access log's writer too). Kernel time is not counted.
#
# Needs valgrind (Debian: apt-get install valgrind), wrk and curl. Ports
# BASE_PORT..BASE_PORT+9 (default 28400). Keeps its files in a temp dir.
set -euo pipefail

BASE_PORT="${BASE_PORT:-28400}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-bench}"
export CARGO_TARGET_DIR
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
    command -v "$tool" >/dev/null || { echo "hit_instructions: needs $tool" >&2; exit 1; }
done
cargo build --release --quiet --bin corral --example static_server
BIN="$CARGO_TARGET_DIR/release"
if [[ $# -eq 0 ]]; then set -- "$BIN/corral"; fi

wait_ok() {  # wait_ok URL: up to 30 s under valgrind
    for _ in $(seq 1 150); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done
    echo "hit_instructions: $1 never answered" >&2
    exit 1
}

# measure TAG LABEL PORT CMD...: prints "LABEL: N requests, M instructions per request"
measure() {
    local tag=$1 label=$2 port=$3 out="$WORK/$1.callgrind"
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "$@" \
        >"$WORK/$tag.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ok "http://127.0.0.1:$port/obj/hot"
    curl -sf -o /dev/null "http://127.0.0.1:$port/obj/hot"
    wrk -t1 -c8 -d3s "http://127.0.0.1:$port/obj/hot" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    wrk -t1 -c8 -d8s "http://127.0.0.1:$port/obj/hot" >"$WORK/$tag.wrk"
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local requests instructions
    requests=$(awk '/requests in/ { print $1 }' "$WORK/$tag.wrk")
    # The dump after zeroing is part 1; callgrind names it OUT.1.
    instructions=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    echo "$label: $requests requests, $((instructions / requests)) instructions per request"
}

STATIC_PORT=$BASE_PORT
measure static static_server "$STATIC_PORT" "$BIN/examples/static_server" "$STATIC_PORT" 0
# The origin for the corrals, outside valgrind.
"$BIN/examples/static_server" "$STATIC_PORT" 0 >/dev/null 2>&1 &
PIDS+=("$!")
wait_ok "http://127.0.0.1:$STATIC_PORT/obj/hot"
n=1
for corral in "$@"; do
    port=$((BASE_PORT + 2 * n))
    # As shipped: the access log on (valgrind must run corral itself, not
    # `env`, whose exec it would not follow).
    RUST_LOG=info measure "corral$n" "corral $corral" "$port" "$corral" \
        --origin "http://127.0.0.1:$STATIC_PORT" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$((port + 1))" --ttl 3600s
    n=$((n + 1))
done
