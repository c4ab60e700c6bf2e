#!/usr/bin/env bash
# Fleet scale on one all-in-one server backed by Postgres:
#  1. AGENTS simulated agents (default 1000), each with its own TLS connection and
#     agent stream: server memory per connected agent, and the CPU the heartbeats
#     cost (default interval 10 s) while the fleet sits idle.
#  2. Tasks end to end (REST enqueue -> push -> claim -> result recorded) with
#     TASK_AGENTS simulated agents (default 100): tasks/s and enqueue-to-start p50/p99.
# Bounded: the agents are held 40 s; TASKS tasks (default 20000). Needs Postgres:
# BENCH_DATABASE_URL (default: the test database scripts/test.sh provides; add
# `?sslmode=disable` to measure without TLS to the database); each run uses a fresh
# schema. BENCH_ONLY=agents or BENCH_ONLY=tasks runs one part.
#   loadtest/bench-fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BASE=${BENCH_DATABASE_URL:-postgres://lattice:lattice@127.0.0.1:5432/lattice_test}
AGENTS=${AGENTS:-1000}
TASK_AGENTS=${TASK_AGENTS:-100}
TASKS=${TASKS:-20000}
# BENCH_BIN_DIR: run binaries built elsewhere (e.g. a previous build, side by side).
if [ -n "${BENCH_BIN_DIR:-}" ]; then B=$BENCH_BIN_DIR; else
  cargo build --release -q -p lattice-server -p lattice-fleet-sim
  B=$TARGET/release
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP_LOG:-}" ] && cp "$tmp/server.log" "$KEEP_LOG"
  rm -rf "$tmp"
  [ -n "${schema:-}" ] && [ -z "${KEEP_SCHEMA:-}" ] && PGOPTIONS=--client-min-messages=warning psql "$BASE" -qc "DROP SCHEMA $schema CASCADE" 2>/dev/null
  true
}
trap cleanup EXIT

schema="bench_$(date +%s)"
psql "$BASE" -qc "CREATE SCHEMA $schema"
GW=18543
case $BASE in *\?*) sep='&' ;; *) sep='?' ;; esac
DATABASE_URL="$BASE${sep}options=-c%20search_path%3D$schema" LATTICE_MIGRATE_ON_START=true \
LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password LATTICE_LOG_LEVEL=${SERVER_LOG:-error} \
  "$B/lattice-server" --data-dir "$tmp/data" --listen 127.0.0.1:$GW --identity-listen 127.0.0.1:0 \
  --storage-listen 127.0.0.1:0 --tasks-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 --policy-listen 127.0.0.1:0 \
  --ops-listen 127.0.0.1:18564 >"$tmp/server.log" 2>&1 &
SERVER=$!; pids+=($SERVER)
for _ in $(seq 100); do [ -f "$tmp/data/tls/ca.pem" ] && curl -sf --cacert "$tmp/data/tls/ca.pem" https://localhost:$GW/health >/dev/null && break; sleep 0.2; done
CA="$tmp/data/tls/ca.pem"
curl -sf --cacert "$CA" -c "$tmp/cj" https://localhost:$GW/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' > "$tmp/login.json"
CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$tmp/login.json")
export LATTICE_TOKEN=$(curl -sf --cacert "$CA" -b "$tmp/cj" -H "x-csrf-token: $CSRF" https://localhost:$GW/api/v1/tokens \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
SIM=("$B/fleet-sim" --server "https://localhost:$GW" --ca-file "$CA")

rss() { awk '/^VmRSS/{print $2}' /proc/"$1"/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
HZ=$(getconf CLK_TCK)

ONLY=${BENCH_ONLY:-}
if [ "$ONLY" != tasks ]; then
echo "== $AGENTS simulated agents"
sleep 2
rss0=$(rss $SERVER)
"${SIM[@]}" connect --count "$AGENTS" --hold-s 45 > "$tmp/sim.out" 2>"$tmp/sim.err" & SIMPID=$!; pids+=($SIMPID)
for _ in $(seq 600); do grep -q "^connected" "$tmp/sim.out" && break; kill -0 $SIMPID 2>/dev/null || { cat "$tmp/sim.err"; exit 1; }; sleep 0.2; done
sleep 5
rss1=$(rss $SERVER)
c0=$(cpu_ticks $SERVER); sleep 30; c1=$(cpu_ticks $SERVER)
python3 - "$AGENTS" "$rss0" "$rss1" "$c0" "$c1" "$HZ" <<'PY'
import sys
n, r0, r1, c0, c1, hz = (float(x) for x in sys.argv[1:])
beats = n / 10 * 30  # one heartbeat per agent per 10 s, over 30 s
cpu = (c1 - c0) / hz
print(f"server RSS {r0/1024:.1f} MiB before, {r1/1024:.1f} MiB with {int(n)} agents: {(r1-r0)/n:.1f} KiB per agent")
print(f"idle fleet CPU: {cpu/30*100:.2f}% of one core = {cpu/beats*1e6:.0f} us per heartbeat ({beats/30:.0f} heartbeats/s)")
PY
kill $SIMPID 2>/dev/null || true; wait $SIMPID 2>/dev/null || true
fi
[ "$ONLY" = agents ] && exit 0

echo "== tasks end to end, $TASK_AGENTS simulated agents, $TASKS tasks, Postgres"
# Warm-up, then ANALYZE: a fresh schema has no statistics, and plans made while the
# tables are nearly empty (sequential scans) stay cached in the server's connections
# until autovacuum analyzes them, about a minute in. A running deployment has them.
"${SIM[@]}" tasks --count "$TASK_AGENTS" --tasks 2000 --concurrency 64 >/dev/null
psql "$BASE" -qc "ANALYZE $schema.tasks, $schema.audit_pending, $schema.audit_log"
"${SIM[@]}" tasks --count "$TASK_AGENTS" --tasks "$TASKS" --concurrency 64

# Where the time went: mean server-side latency of the internal calls.
curl -sf http://127.0.0.1:18564/metrics | python3 -c '
import re, sys
sums, counts = {}, {}
for line in sys.stdin:
    m = re.match(r"(\w+)_seconds_(sum|count)\{([^}]*)\} ([0-9.e+-]+)", line)
    if not m or "grpc" not in m.group(1):
        continue
    method = re.search(r"method=\"([^\"]+)\"", m.group(3))
    key = method.group(1) if method else m.group(3)
    (sums if m.group(2) == "sum" else counts)[key] = float(m.group(4))
for k in sorted(counts, key=lambda k: -counts[k])[:12]:
    if counts[k]:
        print(f"  {k}: {int(counts[k])} calls, mean {sums.get(k, 0) / counts[k] * 1000:.2f} ms")
'
