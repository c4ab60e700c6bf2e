#!/usr/bin/env bash
# Reviewed changes end to end: an intent change rolled out to AGENTS simulated
# agents (default 100; fleet-sim reports a firewall artifact per node and applies
# plans at once). Per round: a new intent version, the plan (rendered against what
# every node reports), the approval, then the time from approval to each node's
# result and to the plan's `applied` (canary first, then the rest). One
# all-in-one server on its embedded default (SQLite) unless BENCH_DATABASE_URL
# names a Postgres. Bounded: ROUNDS rounds (default 5), 120 s each at most.
#   loadtest/bench-rollout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
AGENTS=${AGENTS:-100}
ROUNDS=${ROUNDS:-5}
if [ -n "${BENCH_BIN_DIR:-}" ]; then B=$BENCH_BIN_DIR; else
  cargo build --release -q -p lattice-server -p lattice-fleet-sim
  B=$TARGET/release
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
  [ -n "${schema:-}" ] && PGOPTIONS=--client-min-messages=warning psql "$BENCH_DATABASE_URL" -qc "DROP SCHEMA $schema CASCADE" 2>/dev/null
  true
}
trap cleanup EXIT
GW=18643
DB=()
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  schema="bench_$(date +%s)"
  psql "$BENCH_DATABASE_URL" -qc "CREATE SCHEMA $schema"
  case $BENCH_DATABASE_URL in *\?*) sep='&' ;; *) sep='?' ;; esac
  DB=(env "DATABASE_URL=$BENCH_DATABASE_URL${sep}options=-c%20search_path%3D$schema" LATTICE_MIGRATE_ON_START=true)
fi
"${DB[@]}" env LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password LATTICE_LOG_LEVEL=${SERVER_LOG:-error} \
  "$B/lattice-server" --data-dir "$tmp/data" --listen 127.0.0.1:$GW --identity-listen 127.0.0.1:0 \
  --storage-listen 127.0.0.1:0 --tasks-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 --policy-listen 127.0.0.1:0 \
  --ops-listen 127.0.0.1:18664 >"$tmp/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$tmp/data/tls/ca.pem" ] && curl -sf --cacert "$tmp/data/tls/ca.pem" https://localhost:$GW/health >/dev/null && break; sleep 0.2; done
CA="$tmp/data/tls/ca.pem"
curl -sf --cacert "$CA" -c "$tmp/cj" https://localhost:$GW/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' > "$tmp/login.json"
CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$tmp/login.json")
export LATTICE_TOKEN=$(curl -sf --cacert "$CA" -b "$tmp/cj" -H "x-csrf-token: $CSRF" https://localhost:$GW/api/v1/tokens \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
timeout 900 "$B/fleet-sim" --server "https://localhost:$GW" --ca-file "$CA" rollout --count "$AGENTS" --rounds "$ROUNDS"
