#!/usr/bin/env bash
# Load and memory figures for corral, on 127.0.0.1 only. Every run is bounded.
#
#   scripts/load.sh            # everything
#   PHASES=hits scripts/load.sh
#   PHASES="objects followers" scripts/load.sh
#
# Knobs (environment): PHASES (hits objects followers), RUNS (wrk runs per
# target, alternating, default 3), DURATION (wrk -d, default 10s),
# CONNECTIONS (wrk -c, default 64), OBJECTS (default 100000), FOLLOWERS
# (default 10000), BASE_PORT (default 27100; uses BASE_PORT..BASE_PORT+9).
#
# Hits: static_server and corral both pinned to core 0 (`taskset -c 0`, so each
# tokio runtime has one worker), wrk pinned to core 1. The same static_server
# is the baseline target and corral's origin; while wrk drives one, the other
# is idle. Bodies are 1 KiB both ways.
#
# Memory: VmRSS of a fresh corral, idle, then after caching OBJECTS distinct
# 1 KiB objects; and of another fresh corral idle, then with FOLLOWERS clients
# (one leader + FOLLOWERS-1 followers) waiting on one slow key; then, as a
# control, of a fresh static_server holding the same FOLLOWERS connections.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-bench}"
PHASES="${PHASES:-hits objects followers}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
OBJECTS="${OBJECTS:-100000}"
FOLLOWERS="${FOLLOWERS:-10000}"
BASE_PORT="${BASE_PORT:-27100}"
SLOW_SECS=120  # origin delay on /slow/*: far longer than the follower run
HOLD_SECS=90   # herd hold keeps its connections this long at most

STATIC_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
QUIET_PORT=$((BASE_PORT + 3))
QUIET_ADMIN_PORT=$((BASE_PORT + 4))
CONTROL_PORT=$((BASE_PORT + 5))
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d -t corral-load.XXXXXX)"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
die() { log "load.sh: $*"; exit 1; }

# Starts a background process and remembers its pid (taskset execs, so the pid
# is the program's own). Sets STARTED to the pid.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    STARTED=$!
    PIDS+=("$STARTED")
}

stop() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${!PIDS[@]}"; do
        [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'
    done
    return 0
}

wait_http() {
    local url=$1 i
    for i in $(seq 1 100); do
        curl -sf -o /dev/null "$url" && return 0
        sleep 0.1
    done
    die "$url did not answer"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
# utime + stime of a process, in clock ticks (fields 14 and 15 after the comm).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
CLK_TCK=$(getconf CLK_TCK)
metric() {
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

port_free() { ! ss -ltnH "sport = :$1" | grep -q .; }

start_corral() {  # start_corral CONFIG [env...]: sets CORRAL_PID
    local config=$1
    shift
    start corral env "$@" "$BIN/corral" --config "$config"
    CORRAL_PID=$STARTED
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
}

write_config() {
    cat >"$WORK/corral.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
max_connections = $((FOLLOWERS + 1000))

[origin]
url = "http://127.0.0.1:$STATIC_PORT"
timeout = "300s"
first_byte_timeout = "300s"
request_timeout = "300s"

[cache]
max_size = "512MiB"

[[route]]
name = "all"
match = "/"
ttl = "1h"
lock_timeout = "300s"
EOF
}

# ---------------------------------------------------------------- preflight
for port in "$STATIC_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$QUIET_PORT" "$QUIET_ADMIN_PORT" "$CONTROL_PORT"; do
    port_free "$port" || die "port $port is in use (set BASE_PORT)"
done
need_fds=$((FOLLOWERS + 1000))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $need_fds ]]; then
    die "hard open-file limit $hard < $need_fds needed for $FOLLOWERS followers"
fi
ulimit -n "$need_fds"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --quiet --bin corral --example static_server --example herd

echo "# corral load figures"
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || commit="$commit + uncommitted changes"
else
    commit="not a git checkout"
fi
echo "date: $(date -u +%FT%TZ)  commit: $commit"
echo "cpu: $(nproc) x $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
write_config

start static "$BIN/examples/static_server" "$STATIC_PORT" "$SLOW_SECS"
STATIC_PID=$STARTED
wait_http "http://127.0.0.1:$STATIC_PORT/"

# ---------------------------------------------------------------- hits/s
if [[ " $PHASES " == *" hits "* ]]; then
    echo
    echo "## hits/s: wrk -t1 -c$CONNECTIONS -d$DURATION on core 1, servers on core 0"
    stop "$STATIC_PID"
    start static taskset -c 0 "$BIN/examples/static_server" "$STATIC_PORT" "$SLOW_SECS"
    STATIC_PID=$STARTED
    wait_http "http://127.0.0.1:$STATIC_PORT/"
    # Two corrals in front of it, both on core 0, idle unless wrk drives them:
    #   default: as shipped (access log at info, written to a file);
    #   quiet:   RUST_LOG=warn, so no per-request log line is written.
    declare -A PROXY=([default]=$PROXY_PORT [quiet]=$QUIET_PORT)
    declare -A ADMIN=([default]=$ADMIN_PORT [quiet]=$QUIET_ADMIN_PORT)
    declare -A LEVEL=([default]=info [quiet]=warn)
    declare -A HIT_PIDS=()
    for variant in default quiet; do
        start "corral-$variant" env RUST_LOG="${LEVEL[$variant]}" taskset -c 0 "$BIN/corral" \
            --origin "http://127.0.0.1:$STATIC_PORT" --listen "127.0.0.1:${PROXY[$variant]}" \
            --admin-listen "127.0.0.1:${ADMIN[$variant]}" --ttl 3600s
        HIT_PIDS[$variant]=$STARTED
        wait_http "http://127.0.0.1:${ADMIN[$variant]}/readyz"
        # Warm the key; the second answer must be a hit.
        curl -sf -o /dev/null "http://127.0.0.1:${PROXY[$variant]}/obj/hot"
        status=$(curl -sf -o /dev/null -D - "http://127.0.0.1:${PROXY[$variant]}/obj/hot" |
            tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" { print $2 }')
        [[ $status == *"; hit"* ]] || die "key not warm on corral-$variant (cache-status: $status)"
        echo "corral-$variant: RUST_LOG=${LEVEL[$variant]}, $(threads "${HIT_PIDS[$variant]}") threads"
    done
    echo "static_server: $(threads "$STATIC_PID") threads"
    wrk_run() {  # wrk_run LABEL URL SERVER_PID: raw summary lines, req/s, server CPU per request
        local label=$1 url=$2 pid=$3 out="$WORK/wrk.txt" before after requests busy
        before=$(cpu_ticks "$pid")
        taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$url" >"$out"
        after=$(cpu_ticks "$pid")
        requests=$(awk '/requests in/ { print $1 }' "$out")
        echo "### $label: taskset -c 1 wrk -t1 -c$CONNECTIONS -d$DURATION $url"
        grep -E 'Latency|Req/Sec|requests in|Socket errors|Non-2xx|Requests/sec|Transfer/sec' "$out" | sed 's/^/    /'
        awk '/^Requests\/sec:/ { print $2 }' "$out" >>"$WORK/$label.rps"
        awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f\n", t / hz * 1e6 / n }' >>"$WORK/$label.cpu"
        busy=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" '/requests in/ { sub("s,", "", $4); printf "%.0f", t / hz / $4 * 100 }' "$out")
        echo "    server CPU (user+sys): $(((after - before) * 1000 / CLK_TCK)) ms, $(tail -n 1 "$WORK/$label.cpu") us/request, core 0 busy with it ${busy}% of the run"
        echo "$busy" >>"$WORK/$label.busy"
    }
    for run in $(seq 1 "$RUNS"); do
        wrk_run baseline "http://127.0.0.1:$STATIC_PORT/obj/hot" "$STATIC_PID"
        wrk_run corral-default "http://127.0.0.1:$PROXY_PORT/obj/hot" "${HIT_PIDS[default]}"
        wrk_run corral-quiet "http://127.0.0.1:$QUIET_PORT/obj/hot" "${HIT_PIDS[quiet]}"
    done
    for variant in default quiet; do
        fills=$(ADMIN_PORT=${ADMIN[$variant]} metric 'corral_origin_requests_total{route="default",status="200"}' || true)
        echo "corral-$variant origin requests in all: ${fills:-?} (1 = the warm-up miss only)"
        stop "${HIT_PIDS[$variant]}"
    done
    base=$(median <"$WORK/baseline.rps")
    base_cpu=$(median <"$WORK/baseline.cpu")
    echo
    echo "baseline req/s per run: $(paste -sd' ' "$WORK/baseline.rps"); median $base"
    echo "baseline server CPU us/request per run: $(paste -sd' ' "$WORK/baseline.cpu"); median $base_cpu"
    echo "server busy % per run (well under 100 = the server was starved by other work on core 0, req/s of that run is not comparable):"
    for label in baseline corral-default corral-quiet; do
        echo "    $label: $(paste -sd' ' "$WORK/$label.busy")"
    done
    for variant in default quiet; do
        med=$(median <"$WORK/corral-$variant.rps")
        med_cpu=$(median <"$WORK/corral-$variant.cpu")
        echo "corral-$variant req/s per run: $(paste -sd' ' "$WORK/corral-$variant.rps"); median $med; ratio corral/baseline = $(awk -v a="$med" -v b="$base" 'BEGIN { printf "%.3f", a / b }')"
        echo "corral-$variant server CPU us/request per run: $(paste -sd' ' "$WORK/corral-$variant.cpu"); median $med_cpu; ratio baseline/corral = $(awk -v a="$med_cpu" -v b="$base_cpu" 'BEGIN { printf "%.3f", b / a }')"
    done
    # The same figures over the runs in which every server had core 0 to itself
    # (busy >= 90% in baseline, default and quiet alike).
    clean=$(paste "$WORK/baseline.busy" "$WORK/corral-default.busy" "$WORK/corral-quiet.busy" |
        awk '$1 >= 90 && $2 >= 90 && $3 >= 90 { printf "%s ", NR }')
    echo "runs in which every server was >= 90% busy: ${clean:-none}"
    if [[ -n $clean ]]; then
        pick() { awk -v keep=" $clean" 'index(keep, " " FNR " ")' "$1"; }
        base=$(pick "$WORK/baseline.rps" | median)
        base_cpu=$(pick "$WORK/baseline.cpu" | median)
        echo "  baseline: median $base req/s, $base_cpu us/request"
        for variant in default quiet; do
            med=$(pick "$WORK/corral-$variant.rps" | median)
            med_cpu=$(pick "$WORK/corral-$variant.cpu" | median)
            echo "  corral-$variant: median $med req/s (ratio $(awk -v a="$med" -v b="$base" 'BEGIN { printf "%.3f", a / b }')), $med_cpu us/request (ratio baseline/corral $(awk -v a="$med_cpu" -v b="$base_cpu" 'BEGIN { printf "%.3f", b / a }'))"
        done
    fi
    echo "load average after hits: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# ---------------------------------------------------------------- memory: objects
if [[ " $PHASES " == *" objects "* ]]; then
    echo
    echo "## memory: $OBJECTS distinct 1 KiB objects (max_size 512MiB, ttl 1h)"
    start_corral "$WORK/corral.toml" RUST_LOG=warn
    sleep 1
    idle=$(rss_kib "$CORRAL_PID")
    echo "corral idle VmRSS: $idle KiB"
    echo "\$ herd fill http://127.0.0.1:$PROXY_PORT $OBJECTS 64 300"
    "$BIN/examples/herd" fill "http://127.0.0.1:$PROXY_PORT" "$OBJECTS" 64 300 | sed 's/^/    /' || true
    entries=$(metric corral_cache_entries)
    bytes=$(metric corral_cache_bytes)
    sleep 1
    full=$(rss_kib "$CORRAL_PID")
    echo "corral_cache_entries $entries, corral_cache_bytes $bytes"
    echo "corral VmRSS with $OBJECTS objects: $full KiB (delta $((full - idle)) KiB, $(((full - idle) * 1024 / OBJECTS)) bytes/object incl. 1024-byte body)"
    stop "$CORRAL_PID"
fi

# ---------------------------------------------------------------- memory: followers
if [[ " $PHASES " == *" followers "* ]]; then
    echo
    echo "## memory: $FOLLOWERS clients on one slow key (/slow/x, origin answers after ${SLOW_SECS}s)"
    start_corral "$WORK/corral.toml" RUST_LOG=warn
    sleep 1
    idle=$(rss_kib "$CORRAL_PID")
    echo "corral idle VmRSS: $idle KiB"
    echo "\$ herd hold 127.0.0.1:$PROXY_PORT /slow/x $FOLLOWERS $HOLD_SECS"
    start herd "$BIN/examples/herd" hold "127.0.0.1:$PROXY_PORT" /slow/x "$FOLLOWERS" "$HOLD_SECS"
    HERD_PID=$STARTED
    want=$((FOLLOWERS - 1))
    waiting=0
    for _ in $(seq 1 160); do
        waiting=$(metric corral_flight_followers_waiting || echo 0)
        [[ ${waiting:-0} -ge $want ]] && break
        sleep 0.5
    done
    [[ ${waiting:-0} -ge $want ]] || die "only ${waiting:-0} followers waiting (want $want); herd: $(tail -n 3 "$WORK/herd.err")"
    sleep 1
    held=$(rss_kib "$CORRAL_PID")
    waiting=$(metric corral_flight_followers_waiting)
    open=$(metric corral_connections_open || true)
    echo "corral_flight_followers_waiting $waiting, corral_connections_open ${open:-?}, threads $(threads "$CORRAL_PID")"
    echo "corral VmRSS with $FOLLOWERS waiting clients: $held KiB (delta $((held - idle)) KiB, $(((held - idle) * 1024 / FOLLOWERS)) bytes per follower, each including its client connection)"
    stop "$HERD_PID"
    stop "$CORRAL_PID"

    # Control: the same herd held by a fresh static_server (a bare hyper
    # connection plus a sleeping handler), to separate hyper's per-connection
    # cost from corral's.
    start control "$BIN/examples/static_server" "$CONTROL_PORT" "$SLOW_SECS"
    CONTROL_PID=$STARTED
    wait_http "http://127.0.0.1:$CONTROL_PORT/"
    sleep 1
    control_idle=$(rss_kib "$CONTROL_PID")
    echo "control: static_server idle VmRSS: $control_idle KiB"
    echo "\$ herd hold 127.0.0.1:$CONTROL_PORT /slow/x $FOLLOWERS $HOLD_SECS"
    start herd "$BIN/examples/herd" hold "127.0.0.1:$CONTROL_PORT" /slow/x "$FOLLOWERS" "$HOLD_SECS"
    HERD_PID=$STARTED
    established=0
    for _ in $(seq 1 160); do
        established=$(ss -tnH state established "( sport = :$CONTROL_PORT )" | wc -l)
        [[ $established -ge $FOLLOWERS ]] && break
        sleep 0.5
    done
    sleep 2  # let the server read every request and park its handler
    control_held=$(rss_kib "$CONTROL_PID")
    echo "control: static_server VmRSS with $established connections each waiting in /slow/x: $control_held KiB (delta $((control_held - control_idle)) KiB, $(((control_held - control_idle) * 1024 / FOLLOWERS)) bytes per connection)"
    echo "corral's own cost per follower beyond a bare hyper connection: $((((held - idle) - (control_held - control_idle)) * 1024 / FOLLOWERS)) bytes"
    stop "$HERD_PID"
    stop "$CONTROL_PID"
fi

echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
