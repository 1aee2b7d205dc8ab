#!/usr/bin/env bash
# Load and memory figures for corral, on 127.0.0.1 only. Every run is bounded.
#
#   scripts/load.sh            # everything
#   PHASES=hits scripts/load.sh
#   PHASES="hits coldstart" RUNS=1 DURATION=3s scripts/load.sh
#
# Knobs (environment): PHASES (hits coldstart objects followers), RUNS (wrk
# runs per target, alternating, default 3), DURATION (wrk -d, default 10s),
# CONNECTIONS (wrk -c, default 64), COLD_RUNS (cold starts, default 20),
# OBJECTS (default 100000), FOLLOWERS (default 10000), BASE_PORT (default
# 27100; uses BASE_PORT..BASE_PORT+9), CORRAL_BEFORE (path to another corral
# binary, e.g. a build of an older commit: phase hits then measures it too,
# as shipped, as target corral-before), RESTART (default 1: phase hits starts
# every server anew before each round after the first; 0 keeps one process
# of each for all rounds), MAX_STEAL and STEAL_RETRIES (default 5 and 3: a
# wrk run during which the hypervisor took more than MAX_STEAL% of either
# core is measured again, up to STEAL_RETRIES more times).
#
# Needs cargo, curl, ss, taskset and wrk. Phase hits also needs nginx: when
# it is missing the script installs Debian's nginx-light (apt-get, as root or
# through sudo) and stops the service the package may start.
#
# Hits: every server pinned to core 0 (`taskset -c 0`, so each tokio runtime
# has one worker, and nginx has its one worker there), wrk pinned to core 1,
# one wrk run per target per round, RUNS rounds:
#   baseline        static_server, a bare hyper server (also the proxies' origin)
#   nginx-static    nginx, `return 200` of the same body: the ceiling
#   nginx-cache     nginx proxy_cache in front of static_server, one key warm,
#                   access log on (combined format, to a file), like corral
#   corral-default  corral as shipped: RUST_LOG=info, access log to a file
#   corral-quiet    corral with RUST_LOG=warn: no access log line
# While wrk drives one, the others are idle. Bodies are 1 KiB both ways.
#
# Cold start: examples/cold_start spawns corral COLD_RUNS times, timing each
# from just before the spawn to its first complete 200 (a miss, fetched from
# an origin), and prints min / median / p90 / max.
#
# Memory: VmRSS of a fresh corral, idle, then after caching OBJECTS distinct
# 1 KiB objects; and of another fresh corral idle, then with FOLLOWERS clients
# (one leader + FOLLOWERS-1 followers) waiting on one slow key; then, as a
# control, of a fresh static_server holding the same FOLLOWERS connections.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-bench}"
PHASES="${PHASES:-hits coldstart objects followers}"
RUNS="${RUNS:-3}"
RESTART="${RESTART:-1}"
DURATION="${DURATION:-10s}"
# A wrk run during which the hypervisor took more than MAX_STEAL% of either
# core's time is measured again, up to STEAL_RETRIES more times: on a shared
# host other guests, not the servers, decide such a run's req/s.
MAX_STEAL="${MAX_STEAL:-5}"
STEAL_RETRIES="${STEAL_RETRIES:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
COLD_RUNS="${COLD_RUNS:-20}"
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
NGINX_STATIC_PORT=$((BASE_PORT + 6))
NGINX_CACHE_PORT=$((BASE_PORT + 7))
BEFORE_PORT=$((BASE_PORT + 8))
BEFORE_ADMIN_PORT=$((BASE_PORT + 9))
CORRAL_BEFORE="${CORRAL_BEFORE:-}"
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
# utime + stime of a process and of its children, in clock ticks (fields 14
# and 15 after the comm). The children count because nginx's master only
# supervises: its worker serves. A child gone by the time it is read counts 0.
cpu_ticks() {
    local pid ticks total=0
    for pid in "$1" $(ps -o pid= --ppid "$1"); do
        ticks=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || ticks=0
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
# steal_ticks CORE: clock ticks the hypervisor gave core CORE's time to
# other guests (the 8th counter of its /proc/stat line); 0 where not counted.
steal_ticks() { awk -v cpu="cpu$1" '$1 == cpu { print $9 + 0; found = 1 } END { if (!found) print 0 }' /proc/stat; }
metric() {
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

port_free() { ! ss -ltnH "sport = :$1" | grep -q .; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# nginx on PATH or in /usr/sbin (not on a non-root PATH). Sets NGINX.
find_nginx() {
    NGINX=$(command -v nginx 2>/dev/null || true)
    if [[ -z $NGINX && -x /usr/sbin/nginx ]]; then
        NGINX=/usr/sbin/nginx
    fi
    [[ -n $NGINX ]]
}

install_nginx() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "nginx is missing, and installing it needs root or sudo"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "nginx is missing, and there is no apt-get to install it with"
    log "nginx not found: installing Debian's nginx-light"
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >&2
    # nginx was missing, so a service running now is the one the package just
    # started: it would hold port 80, and this script runs its own nginx.
    if command -v service >/dev/null 2>&1; then
        "${sudo[@]}" service nginx stop >&2 || true
    fi
    find_nginx || die "nginx is still missing after installing nginx-light"
}

# nginx_conf NAME < HTTP_LINES: writes $WORK/NAME/nginx.conf, a whole nginx
# config that keeps every file it touches (pid, logs, temp, cache) in
# $WORK/NAME, with the http-level lines (server blocks...) read from stdin.
nginx_conf() {
    local dir="$WORK/$1"
    mkdir -p "$dir/tmp"
    {
        # Workers run as nobody otherwise, and could not write the cache or
        # temp files under $WORK (mode 700) when the master runs as root.
        if [[ $(id -u) -eq 0 ]]; then
            echo "user root;"
        fi
        cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
lock_file $dir/nginx.lock;
error_log $dir/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log $dir/access.log;
    default_type application/octet-stream;
    # nginx closes a client connection after 1,000 requests by default; hyper
    # (static_server, corral) never does, so wrk's reconnects would be
    # measured against nginx alone.
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

# start_nginx NAME PORT: checks and starts the nginx configured in
# $WORK/NAME on core 0 and waits for its /ready. Sets NGINX_PID to the
# master's PID (taskset execs; the workers exit with the master).
start_nginx() {
    local name=$1 port=$2 dir="$WORK/$1"
    "$NGINX" -t -q -p "$dir/" -c "$dir/nginx.conf" -e stderr 2>"$dir/check.err" ||
        die "$name: nginx -t rejected $dir/nginx.conf: $(cat "$dir/check.err")"
    start "$name" taskset -c 0 "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e stderr
    NGINX_PID=$STARTED
    wait_http "http://127.0.0.1:$port/ready"
}

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
for port in "$STATIC_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$QUIET_PORT" "$QUIET_ADMIN_PORT" "$CONTROL_PORT" \
    "$NGINX_STATIC_PORT" "$NGINX_CACHE_PORT" "$BEFORE_PORT" "$BEFORE_ADMIN_PORT"; do
    port_free "$port" || die "port $port is in use (set BASE_PORT)"
done
if [[ " $PHASES " == *" hits "* ]]; then
    command -v wrk >/dev/null 2>&1 || die "phase hits needs wrk (Debian: apt-get install wrk)"
    find_nginx || install_nginx
fi
need_fds=$((FOLLOWERS + 1000))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $need_fds ]]; then
    die "hard open-file limit $hard < $need_fds needed for $FOLLOWERS followers"
fi
ulimit -n "$need_fds"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --quiet --bin corral --example static_server --example herd --example cold_start

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
    TARGETS=(baseline nginx-static nginx-cache corral-default corral-quiet)
    declare -A URL=([baseline]="http://127.0.0.1:$STATIC_PORT/obj/hot")
    declare -A SERVER_PID=()
    launch_baseline() {  # static_server on core 0: the baseline, and the proxies' origin
        start static taskset -c 0 "$BIN/examples/static_server" "$STATIC_PORT" "$SLOW_SECS"
        STATIC_PID=$STARTED
        SERVER_PID[baseline]=$STARTED
        wait_http "http://127.0.0.1:$STATIC_PORT/"
    }
    stop "$STATIC_PID"
    launch_baseline
    echo "baseline: static_server, $(threads "$STATIC_PID") threads"

    # nginx, one worker each, both on core 0. The static one is the ceiling:
    # no upstream, no cache lookup, the same 1 KiB body from memory.
    body=$(printf '%*s' 1024 '' | tr ' ' x)
    nginx_conf nginx-static <<EOF
    server {
        listen 127.0.0.1:$NGINX_STATIC_PORT;
        location = /ready { return 204; }
        location / { return 200 "$body"; }
    }
EOF
    start_nginx nginx-static "$NGINX_STATIC_PORT"
    SERVER_PID[nginx-static]=$NGINX_PID
    URL[nginx-static]="http://127.0.0.1:$NGINX_STATIC_PORT/obj/hot"
    # The caching one holds the one key in a small zone, keeps its upstream
    # connections alive, and names the cache's verdict in X-Cache-Status.
    nginx_conf nginx-cache <<EOF
    proxy_cache_path $WORK/nginx-cache/cache keys_zone=one:1m max_size=16m inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$STATIC_PORT;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$NGINX_CACHE_PORT;
        location = /ready { return 204; }
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache one;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
EOF
    start_nginx nginx-cache "$NGINX_CACHE_PORT"
    SERVER_PID[nginx-cache]=$NGINX_PID
    URL[nginx-cache]="http://127.0.0.1:$NGINX_CACHE_PORT/obj/hot"
    cache_status() {
        curl -sf -o /dev/null -D - "$1" | tr -d '\r' | awk -F': ' -v name="$2" 'tolower($1) == name { print $2 }'
    }
    warm_nginx_cache() {  # warms the key (the second answer must be a hit); sets NGINX_WARMUP
        local first second
        first=$(cache_status "${URL[nginx-cache]}" x-cache-status)
        second=$(cache_status "${URL[nginx-cache]}" x-cache-status)
        [[ $second == HIT ]] || die "key not warm on nginx-cache (X-Cache-Status: $first, then $second)"
        NGINX_WARMUP="$first, then $second"
    }
    warm_nginx_cache
    for label in nginx-static nginx-cache; do
        echo "$label: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 1; under master ${SERVER_PID[$label]}: $(ps -o args= --ppid "${SERVER_PID[$label]}" | paste -sd',' | sed 's/,/, /g')"
    done
    echo "nginx-cache warm-up: X-Cache-Status $NGINX_WARMUP"

    # Two corrals in front of static_server, both on core 0:
    #   default: as shipped (access log at info, written to a file);
    #   quiet:   RUST_LOG=warn, so no per-request log line is written.
    #   before:  CORRAL_BEFORE (another build), as shipped, when given.
    declare -A PROXY=([default]=$PROXY_PORT [quiet]=$QUIET_PORT [before]=$BEFORE_PORT)
    declare -A ADMIN=([default]=$ADMIN_PORT [quiet]=$QUIET_ADMIN_PORT [before]=$BEFORE_ADMIN_PORT)
    declare -A LEVEL=([default]=info [quiet]=warn [before]=info)
    declare -A CORRAL_BIN=([default]="$BIN/corral" [quiet]="$BIN/corral" [before]="$CORRAL_BEFORE")
    VARIANTS=(default quiet)
    if [[ -n $CORRAL_BEFORE ]]; then
        [[ -x $CORRAL_BEFORE ]] || die "CORRAL_BEFORE=$CORRAL_BEFORE is not an executable"
        VARIANTS+=(before)
        TARGETS+=(corral-before)
    fi
    launch_corral() {  # launch_corral VARIANT: starts it on core 0, warms its key
        local variant=$1 status
        start "corral-$variant" env RUST_LOG="${LEVEL[$variant]}" taskset -c 0 "${CORRAL_BIN[$variant]}" \
            --origin "http://127.0.0.1:$STATIC_PORT" --listen "127.0.0.1:${PROXY[$variant]}" \
            --admin-listen "127.0.0.1:${ADMIN[$variant]}" --ttl 3600s
        SERVER_PID[corral-$variant]=$STARTED
        URL[corral-$variant]="http://127.0.0.1:${PROXY[$variant]}/obj/hot"
        wait_http "http://127.0.0.1:${ADMIN[$variant]}/readyz"
        # Warm the key; the second answer must be a hit.
        curl -sf -o /dev/null "${URL[corral-$variant]}"
        status=$(cache_status "${URL[corral-$variant]}" cache-status)
        [[ $status == *"; hit"* ]] || die "key not warm on corral-$variant (cache-status: $status)"
    }
    for variant in "${VARIANTS[@]}"; do
        launch_corral "$variant"
        echo "corral-$variant: RUST_LOG=${LEVEL[$variant]}, $(threads "${SERVER_PID[corral-$variant]}") threads"
    done
    for label in "${TARGETS[@]}"; do
        size=$(curl -sf -o /dev/null -w '%{size_download}' "${URL[$label]}")
        [[ $size == 1024 ]] || die "$label answered a $size-byte body, not 1024"
    done

    wrk_run() {  # wrk_run LABEL URL SERVER_PID: raw summary lines, req/s, server CPU per request
        local label=$1 url=$2 pid=$3 out="$WORK/wrk.txt" before after requests busy
        local steal0 steal1 attempt
        # share TICKS: TICKS as a whole percentage of the wrk run just made.
        share() { awk -v t="$1" -v hz="$CLK_TCK" '/requests in/ { sub("s,", "", $4); printf "%.0f", t / hz / $4 * 100 }' "$out"; }
        for ((attempt = 0; ; attempt++)); do
            steal0=$(steal_ticks 0)
            steal1=$(steal_ticks 1)
            before=$(cpu_ticks "$pid")
            taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$url" >"$out"
            after=$(cpu_ticks "$pid")
            # Time the hypervisor took from this guest's cores, in percent: a
            # starved run with steal was starved by other machines.
            steal0=$(share $(($(steal_ticks 0) - steal0)))
            steal1=$(share $(($(steal_ticks 1) - steal1)))
            ((steal0 > MAX_STEAL || steal1 > MAX_STEAL)) && ((attempt < STEAL_RETRIES)) || break
            echo "### $label: attempt discarded, ${steal0}% of core 0 and ${steal1}% of core 1 stolen by the hypervisor (MAX_STEAL=$MAX_STEAL); again"
        done
        requests=$(awk '/requests in/ { print $1 }' "$out")
        echo "### $label: taskset -c 1 wrk -t1 -c$CONNECTIONS -d$DURATION $url"
        grep -E 'Latency|Req/Sec|requests in|Socket errors|Non-2xx|Requests/sec|Transfer/sec' "$out" | sed 's/^/    /'
        awk '/^Requests\/sec:/ { print $2 }' "$out" >>"$WORK/$label.rps"
        awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f\n", t / hz * 1e6 / n }' >>"$WORK/$label.cpu"
        busy=$(share $((after - before)))
        echo "    server CPU (user+sys): $(((after - before) * 1000 / CLK_TCK)) ms, $(tail -n 1 "$WORK/$label.cpu") us/request, core 0 busy with it ${busy}% of the run"
        echo "    stolen by the hypervisor: core 0 ${steal0}%, core 1 ${steal1}% of the run"
        echo "$busy" >>"$WORK/$label.busy"
        echo "$steal0" >>"$WORK/$label.steal"
    }
    # relaunch LABEL: stops LABEL's server and starts it again as above,
    # warm. A process's own memory layout moves its req/s by several
    # percent (the same binary, restarted, ran that much faster or slower),
    # so with RESTART=1 each round measures a new process of every server.
    relaunch() {
        local label=$1
        stop "${SERVER_PID[$label]}"
        case $label in
            baseline) launch_baseline ;;
            nginx-static)
                start_nginx nginx-static "$NGINX_STATIC_PORT"
                SERVER_PID[$label]=$NGINX_PID
                ;;
            nginx-cache)
                start_nginx nginx-cache "$NGINX_CACHE_PORT"
                SERVER_PID[$label]=$NGINX_PID
                warm_nginx_cache
                ;;
            corral-*) launch_corral "${label#corral-}" ;;
        esac
    }
    for run in $(seq 1 "$RUNS"); do
        for label in "${TARGETS[@]}"; do
            if [[ $RESTART == 1 && $run -gt 1 ]]; then
                relaunch "$label"
            fi
            wrk_run "$label" "${URL[$label]}" "${SERVER_PID[$label]}"
        done
    done
    for variant in "${VARIANTS[@]}"; do
        fills=$(ADMIN_PORT=${ADMIN[$variant]} metric 'corral_origin_requests_total{route="default",status="200"}' || true)
        echo "corral-$variant origin requests in all: ${fills:-?} (1 = the warm-up miss only)"
        stop "${SERVER_PID[corral-$variant]}"
    done
    echo "corral-default stderr (its access log, last process): $(wc -l <"$WORK/corral-default.err") lines"
    for label in nginx-static nginx-cache; do
        stop "${SERVER_PID[$label]}"
        echo "$label access log: $(wc -l <"$WORK/$label/access.log") lines"
    done

    echo
    echo "server busy % per run (well under 100 = the server was starved by other work on core 0, req/s of that run is not comparable):"
    for label in "${TARGETS[@]}"; do
        echo "    $label: $(paste -sd' ' "$WORK/$label.busy")"
    done
    echo "core 0 time stolen by the hypervisor, % per run (other guests on the host; 0 where not counted):"
    for label in "${TARGETS[@]}"; do
        echo "    $label: $(paste -sd' ' "$WORK/$label.steal")"
    done
    for label in "${TARGETS[@]}"; do
        echo "$label req/s per run: $(paste -sd' ' "$WORK/$label.rps")"
        echo "$label server CPU us/request per run: $(paste -sd' ' "$WORK/$label.cpu")"
    done
    # keep_runs "1 3 " FILE: the lines of FILE for those runs ("": all).
    keep_runs() { awk -v keep=" $1" 'keep == " " || index(keep, " " FNR " ")' "$2"; }
    hits_table() {  # hits_table TITLE KEEP: medians over the runs in KEEP ("": all)
        local title=$1 keep=$2 label
        local -A rps=() cpu=()
        for label in "${TARGETS[@]}"; do
            rps[$label]=$(keep_runs "$keep" "$WORK/$label.rps" | median)
            cpu[$label]=$(keep_runs "$keep" "$WORK/$label.cpu" | median)
        done
        echo
        echo "summary, medians over $title:"
        echo "| target | req/s | ratio to baseline | ratio to nginx-static | server CPU us/request |"
        echo "|---|---|---|---|---|"
        for label in "${TARGETS[@]}"; do
            echo "| $label | ${rps[$label]} | $(ratio "${rps[$label]}" "${rps[baseline]}") | $(ratio "${rps[$label]}" "${rps[nginx-static]}") | ${cpu[$label]} |"
        done
        for label in "${VARIANTS[@]/#/corral-}"; do
            echo "$label / nginx-cache: req/s ratio $(ratio "${rps[$label]}" "${rps[nginx-cache]}"), CPU us/request ratio $(ratio "${cpu[$label]}" "${cpu[nginx-cache]}")"
        done
    }
    hits_table "all $RUNS runs" ""
    # The same figures over the runs in which every server had core 0 to itself.
    busy_files=()
    for label in "${TARGETS[@]}"; do
        busy_files+=("$WORK/$label.busy")
    done
    clean=$(paste "${busy_files[@]}" | awk '{ for (i = 1; i <= NF; i++) if ($i < 90) next; printf "%s ", NR }')
    echo
    echo "runs in which every server was >= 90% busy: ${clean:-none}"
    if [[ -n $clean ]]; then
        hits_table "the clean runs (${clean% })" "$clean"
    fi
    echo "load average after hits: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# ---------------------------------------------------------------- cold start
if [[ " $PHASES " == *" coldstart "* ]]; then
    echo
    echo "## cold start: process start to first answered request, $COLD_RUNS runs"
    echo "\$ cold_start $BIN/corral $COLD_RUNS"
    "$BIN/examples/cold_start" "$BIN/corral" "$COLD_RUNS" | sed 's/^/    /'
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
