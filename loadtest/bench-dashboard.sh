#!/usr/bin/env bash
# The dashboard's targets (a benchmark, not a timed test):
#   - Lighthouse (desktop preset, Debian's Chromium): accessibility >= 95 and
#     performance >= 90 on the overview, nodes and KV pages;
#   - axe-core: no serious or critical violation on those pages;
#   - the first load of a page <= 150 KB on the wire (compressed, cache off);
#   - server time p50 <= 20 ms for every request a page makes,
# with 1,000 connected nodes (simulated agents), 10,000 tasks and 10,000 KV keys.
#
#   loadtest/bench-dashboard.sh
#
# Knobs (env): AGENTS (1000), TASKS (10000), KEYS (10000), RUNS (30 replays per
# request), GW (18643), BENCH_BIN_DIR (run binaries built elsewhere).
# Needs: chromium, node and npm (Debian packages); installs loadtest/dashboard's
# pinned packages (lighthouse, puppeteer-core, axe-core) with npm ci. The server
# runs on its embedded SQLite, on 127.0.0.1; everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
AGENTS=${AGENTS:-1000}
TASKS=${TASKS:-10000}
KEYS=${KEYS:-10000}
RUNS=${RUNS:-30}
GW=${GW:-18643}
if [ -n "${BENCH_BIN_DIR:-}" ]; then B=$BENCH_BIN_DIR; else
  cargo build --release -q -p lattice-server -p lattice-fleet-sim
  B=$TARGET/release
fi
(cd loadtest/dashboard && npm ci --no-audit --no-fund --loglevel=error >&2)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password LATTICE_LOG_LEVEL=${SERVER_LOG:-error} \
  "$B/lattice-server" --data-dir "$tmp/data" --listen 127.0.0.1:$GW --identity-listen 127.0.0.1:0 \
  --storage-listen 127.0.0.1:0 --tasks-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 --policy-listen 127.0.0.1:0 \
  >"$tmp/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$tmp/data/tls/ca.pem" ] && curl -sf --cacert "$tmp/data/tls/ca.pem" https://localhost:$GW/health >/dev/null && break; sleep 0.2; done
CA="$tmp/data/tls/ca.pem"
curl -sf --cacert "$CA" -c "$tmp/cj" https://localhost:$GW/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' > "$tmp/login.json"
CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$tmp/login.json")
export LATTICE_TOKEN=$(curl -sf --cacert "$CA" -b "$tmp/cj" -H "x-csrf-token: $CSRF" https://localhost:$GW/api/v1/tokens \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
SIM=("$B/fleet-sim" --server "https://localhost:$GW" --ca-file "$CA")

echo "== $AGENTS connected nodes, $TASKS tasks, $KEYS KV keys" >&2
"${SIM[@]}" connect --count "$AGENTS" --hold-s 900 > "$tmp/sim.out" 2>"$tmp/sim.err" & SIMPID=$!; pids+=($SIMPID)
for _ in $(seq 900); do grep -q "^connected" "$tmp/sim.out" && break; kill -0 $SIMPID 2>/dev/null || { cat "$tmp/sim.err"; exit 1; }; sleep 0.2; done
"${SIM[@]}" tasks --count 20 --tasks "$TASKS" --concurrency 64 > "$tmp/tasks.out" 2>"$tmp/tasks.err" || { cat "$tmp/tasks.err"; exit 1; }

NODE_TLS_REJECT_UNAUTHORIZED=0 node loadtest/dashboard/bench.mjs "https://localhost:$GW" bench-admin-password "$KEYS" "$RUNS" \
  > "$tmp/report.json" 2> >(grep -v NODE_TLS_REJECT_UNAUTHORIZED >&2)
python3 - "$tmp/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['keys']} KV keys written in {r['kv_fill_s']:.1f} s; server time is the median of {r['runs']} replays")
print(f"{'page':<10}{'first load':>12}{'requests':>10}{'server p50 (max)':>18}{'axe serious+':>14}{'LH perf':>9}{'LH a11y':>9}")
for name, p in r['pages'].items():
    print(f"{name:<10}{p['first_load_bytes']/1024:>10.1f}KB{p['requests']:>10}{p['server_time_p50_ms_max']:>16.1f}ms"
          f"{p['axe_serious_or_critical']:>14}{p['lighthouse_performance']:>9}{p['lighthouse_accessibility']:>9}")
    for path, ms in p['server_time_p50_ms'].items():
        print(f"    {ms:8.1f} ms  {path}")
    if p['axe_violations']:
        print("    axe:", ", ".join(f"{v['id']} ({v['impact']}, {v['nodes']})" for v in p['axe_violations']))
    print("    lighthouse:", ", ".join(f"{k} {v}" for k, v in p['lighthouse_metrics'].items()))
    if p['lighthouse_failed_accessibility_audits']:
        print("    lighthouse a11y audits not passed:", ", ".join(p['lighthouse_failed_accessibility_audits']))
    if p['console_errors']:
        print("    console errors:", p['console_errors'])
PY
