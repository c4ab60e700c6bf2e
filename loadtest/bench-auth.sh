#!/usr/bin/env bash
# Gateway auth benchmark (the foundation issue's speed targets).
#
#   loadtest/bench-auth.sh
#
# In ONE run, on one embedded lattice-server (release build), with the same wrk
# settings, it alternates rounds of
#   GET /health                       (no auth: the ceiling of the HTTP stack)
#   GET /api/v1/auth/me  (Bearer)     (token check served from the gateway's cache)
# and reports the median requests/s and p99 of each and their ratio. It also reports
# the time from process start to the first /health 200, and idle RSS.
#
# Knobs (env): DURATION (10s), CONNECTIONS (32), THREADS (2), ROUNDS (3),
# TLS (off | self-signed; default off), BIN (target/release/lattice-server).
# Needs: wrk, curl, python3 (Debian packages). Everything listens on 127.0.0.1 and
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
TLS=${TLS:-off}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/lattice-server}
PORT=${PORT_OVERRIDE:-18088}
IPORT=$((PORT + 3))

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
if [[ ! -x "$BIN" ]]; then
    echo "building release lattice-server..." >&2
    cargo build --release -p lattice-server >&2
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

scheme=http
curl_tls=()
if [[ "$TLS" != off ]]; then
    scheme=https
    curl_tls=(--cacert "$work/data/tls/ca.pem")
fi
base="$scheme://127.0.0.1:$PORT"

start_ns=$(date +%s%N)
LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password \
    "$BIN" --data-dir "$work/data" --listen "127.0.0.1:$PORT" --identity-listen "127.0.0.1:$IPORT" \
    --storage-listen "127.0.0.1:$((PORT + 4))" --tasks-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 --policy-listen 127.0.0.1:0 \
    --tls "$TLS" --log-level warn >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
until curl -fsS "${curl_tls[@]}" "$base/health" >/dev/null 2>&1; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.err" >&2
        exit 1
    fi
    sleep 0.005
done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
sleep 2
idle_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

jar="$work/cookies"
curl -fsS "${curl_tls[@]}" -c "$jar" -H 'content-type: application/json' \
    -d '{"username":"admin","password":"bench-admin-password"}' "$base/api/v1/auth/login" >/dev/null
csrf=$(awk '$6 == "lattice_csrf" {print $7}' "$jar")
token=$(curl -fsS "${curl_tls[@]}" -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' \
    -d '{"name":"bench","scopes":["*"]}' "$base/api/v1/tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

run_wrk() { # label, path, extra header args...
    local label=$1 path=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$base$path" >"$work/$label.txt"
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$label.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$work/$label.txt")
    local non2xx
    non2xx=$(awk '/Non-2xx/ {print $4}' "$work/$label.txt")
    echo "$label $rps $p99 ${non2xx:-0}"
}

results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    run_wrk health /health | tee -a "$results" >&2
    run_wrk me /api/v1/auth/me -H "Authorization: Bearer $token" | tee -a "$results" >&2
    echo "round $round done" >&2
done
busy_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

python3 - "$results" "$ready_ms" "$idle_rss_kb" "$busy_rss_kb" "$DURATION" "$CONNECTIONS" "$THREADS" "$TLS" <<'PY'
import statistics, sys
path, ready_ms, idle_kb, busy_kb, dur, conns, threads, tls = sys.argv[1:]
rows = [l.split() for l in open(path) if l.strip()]
def med(label, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == label)
def ms(v):
    v = v.strip()
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float(v)
def p99(label):
    return statistics.median(ms(r[2]) for r in rows if r[0] == label)
errors = sum(int(r[3]) for r in rows)
h, m = med("health", 1), med("me", 1)
print(f"wrk -t{threads} -c{conns} -d{dur}, TLS {tls}, {len(rows)//2} rounds (medians)")
print(f"| endpoint | requests/s | p99 |")
print(f"|---|---:|---:|")
print(f"| GET /health | {h:,.0f} | {p99('health'):.2f} ms |")
print(f"| GET /api/v1/auth/me (Bearer) | {m:,.0f} | {p99('me'):.2f} ms |")
print(f"ratio me/health: {m/h:.2f} (target >= 0.80)")
print(f"non-2xx responses: {errors}")
print(f"ready after start: {ready_ms} ms (target < 1000)")
print(f"idle RSS: {int(idle_kb)/1024:.1f} MiB (target < 80 MB); after load: {int(busy_kb)/1024:.1f} MiB")
PY
