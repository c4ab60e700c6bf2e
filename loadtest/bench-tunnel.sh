#!/usr/bin/env bash
# Proxy tunnel vs direct: the same small GET sent straight to a local nginx and
# through Lattice, same wrk, same run, two ways: the HTTP proxy route (gateway ->
# tunnel service -> agent stream -> nginx) and a port forward (`lattice proxy`, a
# local port carried as TCP over the same path, like rathole and kubectl
# port-forward); a user allowed by a Cedar policy of their own among POLICY_FILLER
# (1000) others against the admin allowed by the seeded permit-all (the policy in
# the path); and, when `rathole` is on PATH (cargo install rathole), the same
# GET through rathole (a Rust reverse tunnel) on the same machine. Also reports the
# agent's idle RSS. Bounded: 10 s per scenario.
#   loadtest/bench-tunnel.sh                  gateway TLS on (as deployed)
#   GATEWAY_TLS=off loadtest/bench-tunnel.sh  plain HTTP/h2c, like direct and rathole
# (CARGO_TARGET_DIR honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
DURATION=${DURATION:-10s}
GATEWAY_TLS=${GATEWAY_TLS:-self-signed}
CONNS=${CONNS:-32}
# BENCH_BIN_DIR: run binaries built elsewhere (e.g. a previous build, side by side).
if [ -n "${BENCH_BIN_DIR:-}" ]; then B=$BENCH_BIN_DIR; else
  cargo build --release -q -p lattice-server -p lattice-agent -p lattice
  B=$TARGET/release
fi
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is required (apt-get install nginx-light)"; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

UP=18080 GW=18443
mkdir -p "$tmp/www" && head -c 1024 /dev/urandom | base64 > "$tmp/www/small.txt"
# nginx's workers run as an unprivileged user: let them read the file (mktemp -d is
# 0700), or every answer is a 403 page.
chmod 755 "$tmp" "$tmp/www" && chmod 644 "$tmp/www/small.txt"
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$UP; root $tmp/www; } }
CONF
nginx -c "$tmp/nginx.conf" & pids+=($!)

LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password LATTICE_LOG_LEVEL=warn env ${SERVER_ENV:-} \
  "$B/lattice-server" --data-dir "$tmp/data" --tls "$GATEWAY_TLS" --listen 127.0.0.1:$GW --identity-listen 127.0.0.1:0 \
  --storage-listen 127.0.0.1:0 --tasks-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 --policy-listen 127.0.0.1:0 >"$tmp/server.log" 2>&1 & SERVER_PID=$!; pids+=($SERVER_PID)
if [ "$GATEWAY_TLS" = off ]; then
  URL=http://127.0.0.1:$GW; CA=()
else
  URL=https://localhost:$GW; CA=(--cacert "$tmp/data/tls/ca.pem")
fi
for _ in $(seq 50); do curl -sf "${CA[@]}" $URL/health >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "${CA[@]}" -c "$tmp/cj" $URL/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' > "$tmp/login.json"
CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$tmp/login.json")
TOKEN=$(curl -sf "${CA[@]}" -b "$tmp/cj" -H "x-csrf-token: $CSRF" $URL/api/v1/tokens \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
JOIN=$(curl -sf "${CA[@]}" -H "authorization: Bearer $TOKEN" $URL/api/v1/nodes/join-tokens \
  -H 'content-type: application/json' -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$B/lattice-agent" enroll --token "$JOIN" --state-dir "$tmp/agent" >/dev/null
echo "proxy_ports = [$UP]" > "$tmp/agent.toml"
LATTICE_AGENT_LOG=warn "$B/lattice-agent" run --config "$tmp/agent.toml" --state-dir "$tmp/agent" & AGENT=$!; pids+=($AGENT)
for _ in $(seq 50); do
  NODE=$(curl -sf "${CA[@]}" -H "authorization: Bearer $TOKEN" $URL/api/v1/nodes \
    | python3 -c 'import json,sys; n=json.load(sys.stdin)["nodes"]; print(n[0]["id"] if n and n[0]["status"]=="connected" else "")')
  [ -n "$NODE" ] && break; sleep 0.2
done
[ -n "$NODE" ] || { echo "agent did not connect"; exit 1; }
sleep 5
echo "agent idle RSS: $(ps -o rss= -p $AGENT | tr -d ' ') KiB"

# Any non-2xx answer fails the run (a benchmark of error pages measures nothing).
run() {
  local out; out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@")
  if grep -q 'Non-2xx' <<<"$out"; then echo "$*: $(grep 'Non-2xx' <<<"$out")" >> "$tmp/non2xx"; fi
  awk '/Requests\/sec/{rps=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} END{printf "%s req/s  p50 %s  p99 %s\n", rps, p50, p99}' <<<"$out"
}
echo "direct (nginx):        $(run http://127.0.0.1:$UP/small.txt)"
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
s0=$(ticks $SERVER_PID); a0=$(ticks $AGENT)
echo "through the tunnel:    $(run -H "Authorization: Bearer $TOKEN" $URL/api/v1/nodes/$NODE/proxy/$UP/small.txt)"
s1=$(ticks $SERVER_PID); a1=$(ticks $AGENT); hz=$(getconf CLK_TCK); secs=${DURATION%s}
echo "  CPU during that run:  server $(( (s1 - s0) * 100 / hz / secs ))% of a core, agent $(( (a1 - a0) * 100 / hz / secs ))% of a core"
# Policy in the path: the same proxied GET as a user who is not an admin, allowed by
# a policy of their own among POLICY_FILLER (default 1000) other policies, against
# the admin above (allowed by the seeded admins policy), in the same run.
POLICY_FILLER=${POLICY_FILLER:-1000}
api() { curl -sf "${CA[@]}" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
api $URL/api/v1/users -d '{"username":"bench-op","password":"bench-op-password-1","scopes":["nodes:proxy","tokens:write"]}' >/dev/null
curl -sf "${CA[@]}" -c "$tmp/cj2" $URL/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"bench-op","password":"bench-op-password-1"}' > "$tmp/login2.json"
CSRF2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$tmp/login2.json")
OP_TOKEN=$(curl -sf "${CA[@]}" -b "$tmp/cj2" -H "x-csrf-token: $CSRF2" $URL/api/v1/tokens \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["nodes:proxy"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for i in $(seq "$POLICY_FILLER"); do
  api -X PUT $URL/api/v1/policies/filler-$i -d "{\"policies\": \"permit(principal == Lattice::User::\\\"user-$i\\\", action == Lattice::Action::\\\"AccessNode\\\", resource == Lattice::Node::\\\"$NODE\\\") when { context.port == $((i % 60000 + 1)) };\"}" >/dev/null
done
api -X PUT $URL/api/v1/policies/bench-op -d "{\"policies\": \"permit(principal == Lattice::User::\\\"bench-op\\\", action == Lattice::Action::\\\"AccessNode\\\", resource == Lattice::Node::\\\"$NODE\\\") when { context.port == $UP };\"}" >/dev/null
code=$(curl -s "${CA[@]}" -o "$tmp/op.out" -w '%{http_code}' -H "authorization: Bearer $OP_TOKEN" $URL/api/v1/nodes/$NODE/proxy/$UP/small.txt)
[ "$code" = 200 ] || { echo "bench-op is not let through by its policy: $code $(head -c 300 "$tmp/op.out")"; exit 1; }
# Two rounds, alternating, so both see the same machine.
runs=()
for round in 1 2; do
  for who in admin op; do
    if [ $who = admin ]; then t=$TOKEN; else t=$OP_TOKEN; fi
    r=$(run -H "Authorization: Bearer $t" $URL/api/v1/nodes/$NODE/proxy/$UP/small.txt)
    echo "tunnel, round $round, $who: $r"
    runs+=("$who $r")
  done
done
python3 - "${runs[@]}" <<'PY'
import sys
rates = {"admin": [], "op": []}
for arg in sys.argv[1:]:
    who, rps = arg.split()[:2]
    rates[who].append(float(rps))
a, o = sum(rates["admin"]) / 2, sum(rates["op"]) / 2
print(f"  policy in the path (admin: the seeded permit-all; op: its own permit among the fillers):"
      f" op / admin requests/s {o / a:.2f}x (means of 2 alternating rounds)")
PY
PF=18082
if [ -x "$B/lattice" ]; then
  LATTICE_TOKEN=$TOKEN "$B/lattice" --server "$URL" ${CA:+--ca-file "$tmp/data/tls/ca.pem"} \
    proxy "$NODE" "$UP" --listen 127.0.0.1:$PF 2>"$tmp/cli.log" & CLI=$!; pids+=($CLI)
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$PF/small.txt >/dev/null && break; sleep 0.2; done
  s0=$(ticks $SERVER_PID); a0=$(ticks $AGENT); c0=$(ticks $CLI)
  echo "through lattice proxy: $(run http://127.0.0.1:$PF/small.txt)"
  s1=$(ticks $SERVER_PID); a1=$(ticks $AGENT); c1=$(ticks $CLI)
  echo "  CPU during that run:  server $(( (s1 - s0) * 100 / hz / secs ))%, agent $(( (a1 - a0) * 100 / hz / secs ))%, lattice proxy $(( (c1 - c0) * 100 / hz / secs ))% of a core"
fi
if command -v rathole >/dev/null; then
  cat > "$tmp/rh-server.toml" <<CONF
[server]
bind_addr = "127.0.0.1:18233"
[server.services.web]
token = "bench"
bind_addr = "127.0.0.1:18081"
CONF
  cat > "$tmp/rh-client.toml" <<CONF
[client]
remote_addr = "127.0.0.1:18233"
[client.services.web]
token = "bench"
local_addr = "127.0.0.1:$UP"
CONF
  rathole "$tmp/rh-server.toml" >/dev/null 2>&1 & RHS=$!; pids+=($RHS)
  sleep 0.5
  rathole "$tmp/rh-client.toml" >/dev/null 2>&1 & RHC=$!; pids+=($RHC)
  for _ in $(seq 50); do curl -sf http://127.0.0.1:18081/small.txt >/dev/null && break; sleep 0.2; done
  s0=$(ticks $RHS); c0=$(ticks $RHC)
  echo "through rathole:       $(run http://127.0.0.1:18081/small.txt)"
  s1=$(ticks $RHS); c1=$(ticks $RHC)
  echo "  CPU during that run:  rathole server $(( (s1 - s0) * 100 / hz / secs ))%, rathole client $(( (c1 - c0) * 100 / hz / secs ))% of a core"
else
  echo "through rathole:       skipped (rathole not on PATH: cargo install rathole)"
fi
# Added latency without queueing: one connection, one request at a time.
one() { wrk -t1 -c1 -d"${LATENCY_DURATION:-5s}" --latency "$@" | awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} END{printf "p50 %s  p99 %s\n", p50, p99}'; }
echo "one connection, direct:      $(one http://127.0.0.1:$UP/small.txt)"
echo "one connection, tunnel:      $(one -H "Authorization: Bearer $TOKEN" $URL/api/v1/nodes/$NODE/proxy/$UP/small.txt)"
if [ -x "$B/lattice" ]; then
  echo "one connection, lattice proxy: $(one http://127.0.0.1:$PF/small.txt)"
fi
if command -v rathole >/dev/null; then
  echo "one connection, rathole:     $(one http://127.0.0.1:18081/small.txt)"
fi
echo "server RSS after load: $(ps -o rss= -p $SERVER_PID | tr -d ' ') KiB; agent RSS after load: $(ps -o rss= -p $AGENT | tr -d ' ') KiB"
if [ -s "$tmp/non2xx" ]; then
  echo "FAILED: non-2xx answers (the numbers above measure error pages):"; cat "$tmp/non2xx"; exit 1
fi
