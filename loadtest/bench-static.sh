#!/usr/bin/env bash
# Static-site and KV-binding benchmark (the storage issue's speed targets).
#
#   loadtest/bench-static.sh
#
# In ONE run, on one machine, with the same wrk settings (keep-alive), it alternates
# rounds of
#   nginx-1k     GET /1k.bin   from Debian's nginx, the files on disk
#   lattice-1k   GET /1k.bin   from lattice-server through a static host binding
#   nginx-64k    GET /64k.bin  nginx
#   lattice-64k  GET /64k.bin  lattice
#   lattice-kv   GET /site-title through a KV host binding with a storage token
# and reports the median requests/s and p99 of each, the ratios lattice/nginx
# (targets: requests/s >= 0.90x, p99 <= 1.50x) and the ratio KV / static 1 KiB.
# With REF_BIN set (another build of lattice-server, e.g. the previous main), that
# build runs beside this one with the same site, and each round also measures it
# (ref-1k, ref-64k, ref-kv): the report adds this build / the reference, side by
# side in one run. Any non-2xx response fails the run.
#
# Knobs (env): DURATION (10s), CONNECTIONS (32), THREADS (2), ROUNDS (3),
# NGINX_WORKERS (2: as many cores as lattice's tokio runtime gets on this box),
# NGINX_SENDFILE (on), NGINX_TCP_NOPUSH (on; "on" stalls some 64 KiB answers on the
# delayed ACK, ~40 ms, which shows in nginx's p99: try off for a stricter baseline),
# PORT_OVERRIDE (18098; lattice also uses +3 to +6), NGINX_PORT (PORT + 10),
# BIN (target/release/lattice-server), REF_BIN (unset; its ports are PORT+20..+26),
# NGINX (/usr/sbin/nginx),
# KEEP_WORK (0; 1 keeps the temp dir with the wrk outputs and server logs).
# Needs: wrk, curl, python3, nginx (Debian packages). Everything listens on 127.0.0.1
# and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
NGINX_WORKERS=${NGINX_WORKERS:-2}
NGINX_SENDFILE=${NGINX_SENDFILE:-on}
NGINX_TCP_NOPUSH=${NGINX_TCP_NOPUSH:-on}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/lattice-server}
REF_BIN=${REF_BIN:-}
NGINX=${NGINX:-/usr/sbin/nginx}
KEEP_WORK=${KEEP_WORK:-0}
PORT=${PORT_OVERRIDE:-18098}
IPORT=$((PORT + 3))
SPORT=$((PORT + 4))
NGINX_PORT=${NGINX_PORT:-$((PORT + 10))}
REF_PORT=$((PORT + 20))

STATIC_HOST=static.bench.test
KV_HOST=kv.bench.test

for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y $tool" >&2; exit 1; }
done
[[ -x "$NGINX" ]] || { echo "nginx is missing ($NGINX): apt-get install -y nginx" >&2; exit 1; }
if [[ ! -x "$BIN" ]]; then
    echo "building release lattice-server..." >&2
    cargo build --release -p lattice-server >&2
fi

work=$(mktemp -d)
server_pid=""
ref_pid=""
nginx_pid=""
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        for log in server.err nginx-error.log; do
            if [[ -s "$work/$log" ]]; then
                echo "--- tail of $log ---" >&2
                tail -n 40 "$work/$log" >&2
            fi
        done
    fi
    if [[ -n "$nginx_pid" ]] && kill "$nginx_pid" 2>/dev/null; then wait "$nginx_pid" 2>/dev/null || true; fi
    if [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; then wait "$server_pid" 2>/dev/null || true; fi
    if [[ -n "$ref_pid" ]] && kill "$ref_pid" 2>/dev/null; then wait "$ref_pid" 2>/dev/null || true; fi
    if [[ "$KEEP_WORK" == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT

fail() {
    echo "bench-static: FAIL: $*" >&2
    exit 1
}

# Refuse to measure whatever already answers on our ports.
ports=("$PORT" "$IPORT" "$SPORT" $((PORT + 5)) $((PORT + 6)) "$NGINX_PORT")
if [[ -n "$REF_BIN" ]]; then
    [[ -x "$REF_BIN" ]] || fail "REF_BIN=$REF_BIN is not an executable"
    ports+=("$REF_PORT" $((REF_PORT + 3)) $((REF_PORT + 4)) $((REF_PORT + 5)) $((REF_PORT + 6)))
fi
for p in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        fail "something already listens on 127.0.0.1:$p (set PORT_OVERRIDE / NGINX_PORT)"
    fi
done

# --- the site, on disk for nginx and as an archive for lattice -------------------
site="$work/site"
mkdir -p "$site"
head -c 1024 /dev/urandom >"$site/1k.bin"
head -c 65536 /dev/urandom >"$site/64k.bin"
printf '<!doctype html>\n<title>bench</title>\n<p>lattice static bench</p>\n' >"$site/index.html"
tar czf "$work/site.tgz" -C "$site" .
# nginx's workers run as "nobody" when started by root: let them reach the files
# (the temp dir is 0700; traverse-only on it, read on the site).
chmod 711 "$work"
chmod 755 "$site"
chmod 644 "$site"/*

# --- lattice ---------------------------------------------------------------------
json_field() { # field: read a JSON object on stdin, print .field
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# start_lattice NAME BIN PORT: start a lattice-server on PORT (+3 identity, +4
# storage, +5 tasks, +6 tunnel, +7 policy when the build has it) with its own data dir, publish the site and the KV value, and set
# <NAME>_pid and <NAME>_token (a read storage token for the KV binding).
start_lattice() {
    local name=$1 bin=$2 port=$3
    local base="http://127.0.0.1:$port" pid token csrf jar="$work/cookies-$name"
    local extra=()
    if "$bin" --help 2>/dev/null | grep -q -- --policy-listen; then
        extra=(--policy-listen "127.0.0.1:$((port + 7))")
    fi
    LATTICE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password \
        "$bin" --data-dir "$work/data-$name" --listen "127.0.0.1:$port" --identity-listen "127.0.0.1:$((port + 3))" \
        --storage-listen "127.0.0.1:$((port + 4))" --tasks-listen "127.0.0.1:$((port + 5))" \
        --tunnel-listen "127.0.0.1:$((port + 6))" "${extra[@]}" --tls off --log-level warn >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    printf -v "${name}_pid" '%s' "$pid"
    local deadline=$((SECONDS + 30))
    until curl -fsS --max-time 1 "$base/health" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail "$name ($bin) exited during start"
        ((SECONDS < deadline)) || fail "$name not healthy after 30 s"
        sleep 0.05
    done
    api() { # method path [curl args...]: the API as the operator, body on stdout
        local method=$1 path=$2
        shift 2
        curl -fsS --max-time 30 -X "$method" -H "Authorization: Bearer $token" "$@" "$base$path" ||
            fail "$name: $method $path"
    }
    curl -fsS --max-time 10 -c "$jar" -H 'content-type: application/json' \
        -d '{"username":"admin","password":"bench-admin-password"}' "$base/api/v1/auth/login" >/dev/null ||
        fail "$name: login"
    csrf=$(awk '$6 == "lattice_csrf" {print $7}' "$jar")
    [[ -n "$csrf" ]] || fail "$name: no lattice_csrf cookie after login"
    token=$(curl -fsS --max-time 10 -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' \
        -d '{"name":"bench","scopes":["*"]}' "$base/api/v1/tokens" | json_field token) || fail "$name: create operator token"
    local J=(-H 'content-type: application/json')
    api POST /api/v1/buckets "${J[@]}" -d '{"name":"site","surface":"static"}' >/dev/null
    api POST /api/v1/buckets "${J[@]}" -d '{"name":"conf","surface":"kv"}' >/dev/null
    api POST /api/v1/static/site/deployments -H 'content-type: application/gzip' --data-binary "@$work/site.tgz" >/dev/null
    api POST /api/v1/bindings "${J[@]}" -d "{\"host\":\"$STATIC_HOST\",\"bucket\":\"site\"}" >/dev/null
    api POST /api/v1/bindings "${J[@]}" -d "{\"host\":\"$KV_HOST\",\"bucket\":\"conf\"}" >/dev/null
    api PUT /api/v1/kv/conf/site-title "${J[@]}" -d '{"value":"Lattice"}' >/dev/null
    local storage_token
    storage_token=$(api POST /api/v1/storage-tokens "${J[@]}" \
        -d '{"surface":"kv","access":"read","buckets":["conf"]}' | json_field token) || fail "$name: create storage token"
    [[ -n "$storage_token" ]] || fail "$name: empty storage token"
    printf -v "${name}_token" '%s' "$storage_token"
}

base="http://127.0.0.1:$PORT"
start_lattice server "$BIN" "$PORT"
storage_token=$server_token
if [[ -n "$REF_BIN" ]]; then
    rbase="http://127.0.0.1:$REF_PORT"
    start_lattice ref "$REF_BIN" "$REF_PORT"
fi

# --- nginx -----------------------------------------------------------------------
if [[ -f /etc/nginx/mime.types ]]; then
    types='include /etc/nginx/mime.types;'
else
    types='types { text/html html; application/octet-stream bin; }'
fi
mkdir -p "$work/nginx-tmp"
cat >"$work/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    $types
    default_type application/octet-stream;
    access_log off;
    sendfile $NGINX_SENDFILE;
    tcp_nopush $NGINX_TCP_NOPUSH;
    keepalive_requests 100000;
    client_body_temp_path $work/nginx-tmp/body;
    proxy_temp_path $work/nginx-tmp/proxy;
    fastcgi_temp_path $work/nginx-tmp/fastcgi;
    uwsgi_temp_path $work/nginx-tmp/uwsgi;
    scgi_temp_path $work/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $site;
        location / {
            add_header Cache-Control "public, no-cache";
            etag on;
        }
    }
}
EOF
nginx_args=(-c "$work/nginx.conf" -p "$work/")
# -e (1.19.5+): keep the startup error log out of /var/log/nginx.
if "$NGINX" -h 2>&1 | grep -q -- '-e filename'; then nginx_args+=(-e "$work/nginx-error.log"); fi
"$NGINX" -t "${nginx_args[@]}" >"$work/nginx-test.log" 2>&1 || { cat "$work/nginx-test.log" >&2; fail "nginx -t"; }
"$NGINX" "${nginx_args[@]}" >"$work/nginx.out" 2>&1 &
nginx_pid=$!
nbase="http://127.0.0.1:$NGINX_PORT"
deadline=$((SECONDS + 10))
until curl -fsS --max-time 1 -o /dev/null "$nbase/index.html" 2>/dev/null; do
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$work/nginx.out" >&2; fail "nginx exited during start"; }
    ((SECONDS < deadline)) || fail "nginx not answering after 10 s"
    sleep 0.05
done

# --- check every URL once (this also warms lattice's caches) ----------------------
check() { # label url expected-file|literal:TEXT [curl args...]
    local label=$1 url=$2 expect=$3
    shift 3
    local out="$work/check-$label" code
    code=$(curl -sS --max-time 10 -o "$out" -w '%{http_code}' "$@" "$url") || fail "$label: curl $url"
    [[ "$code" == 200 ]] || { head -c 300 "$out" >&2; echo >&2; fail "$label: $url answered $code, not 200"; }
    if [[ "$expect" == literal:* ]]; then
        [[ "$(cat "$out")" == "${expect#literal:}" ]] ||
            fail "$label: body '$(head -c 200 "$out")' is not '${expect#literal:}'"
    else
        cmp -s "$out" "$expect" ||
            fail "$label: body ($(wc -c <"$out") bytes) differs from $expect ($(wc -c <"$expect") bytes)"
    fi
    echo "ok $label: 200, $(wc -c <"$out") bytes" >&2
}
kv_args=(-H "Host: $KV_HOST" -H "Authorization: Bearer $storage_token")
check nginx-1k "$nbase/1k.bin" "$site/1k.bin"
check nginx-64k "$nbase/64k.bin" "$site/64k.bin"
check lattice-1k "$base/1k.bin" "$site/1k.bin" -H "Host: $STATIC_HOST"
check lattice-64k "$base/64k.bin" "$site/64k.bin" -H "Host: $STATIC_HOST"
check lattice-kv "$base/site-title" 'literal:"Lattice"' "${kv_args[@]}"
if [[ -n "$REF_BIN" ]]; then
    ref_kv_args=(-H "Host: $KV_HOST" -H "Authorization: Bearer $ref_token")
    check ref-1k "$rbase/1k.bin" "$site/1k.bin" -H "Host: $STATIC_HOST"
    check ref-64k "$rbase/64k.bin" "$site/64k.bin" -H "Host: $STATIC_HOST"
    check ref-kv "$rbase/site-title" 'literal:"Lattice"' "${ref_kv_args[@]}"
fi

# What each server gets to run on: tokio starts one worker per usable core unless
# TOKIO_WORKER_THREADS says otherwise (its blocking-pool threads carry the same
# name, so counting threads would not tell).
tokio_workers=${TOKIO_WORKER_THREADS:-$(nproc)}
nginx_worker_count=$(pgrep -P "$nginx_pid" | wc -l || true)

# --- load --------------------------------------------------------------------------
run_wrk() { # label url [wrk args...]: one line "label rps p99 non2xx socket_errors"
    local label=$1 url=$2
    shift 2
    local out="$work/wrk-$label-$round.txt"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1 ||
        { cat "$out" >&2; fail "wrk $label exited with an error"; }
    awk -v label="$label" '
        /^Requests\/sec/ { rps = $2 }
        $1 == "99%" { p99 = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d %d\n", label, (rps == "" ? "-" : rps), (p99 == "" ? "-" : p99), non2xx, sock }
    ' "$out"
}

results="$work/results"
: >"$results"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS round(s) of $([[ -n "$REF_BIN" ]] && echo 8 || echo 5) cases" >&2
for round in $(seq 1 "$ROUNDS"); do
    run_wrk nginx-1k "$nbase/1k.bin" | tee -a "$results" >&2
    run_wrk lattice-1k "$base/1k.bin" -H "Host: $STATIC_HOST" | tee -a "$results" >&2
    run_wrk nginx-64k "$nbase/64k.bin" | tee -a "$results" >&2
    run_wrk lattice-64k "$base/64k.bin" -H "Host: $STATIC_HOST" | tee -a "$results" >&2
    run_wrk lattice-kv "$base/site-title" "${kv_args[@]}" | tee -a "$results" >&2
    if [[ -n "$REF_BIN" ]]; then
        run_wrk ref-1k "$rbase/1k.bin" -H "Host: $STATIC_HOST" | tee -a "$results" >&2
        run_wrk ref-64k "$rbase/64k.bin" -H "Host: $STATIC_HOST" | tee -a "$results" >&2
        run_wrk ref-kv "$rbase/site-title" "${ref_kv_args[@]}" | tee -a "$results" >&2
        kill -0 "$ref_pid" 2>/dev/null || fail "the reference lattice-server died during round $round"
    fi
    kill -0 "$server_pid" 2>/dev/null || fail "lattice-server died during round $round"
    kill -0 "$nginx_pid" 2>/dev/null || fail "nginx died during round $round"
    echo "round $round done" >&2
done
busy_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

# Server-side trouble during the run: anything lattice logged at warn or above.
server_log_lines=$(grep -c . "$work/server.err" || true)
ref_rss_kb=0
if [[ -n "$REF_BIN" ]]; then ref_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$ref_pid/status"); fi

set +e
python3 - "$results" "$DURATION" "$CONNECTIONS" "$THREADS" "$ROUNDS" "$(nproc)" "$tokio_workers" \
    "$NGINX_WORKERS" "$nginx_worker_count" "$NGINX_SENDFILE" "$NGINX_TCP_NOPUSH" \
    "$busy_rss_kb" "$server_log_lines" "$REF_BIN" "$ref_rss_kb" <<'PY'
import math, statistics, sys

(path, dur, conns, threads, rounds, cores, tokio_workers, nginx_workers,
 nginx_running, sendfile, nopush, busy_kb, log_lines, ref_bin, ref_kb) = sys.argv[1:]
CASES = [
    ("nginx-1k", "nginx: GET /1k.bin (disk)"),
    ("lattice-1k", "lattice: GET /1k.bin (static binding)"),
    ("nginx-64k", "nginx: GET /64k.bin (disk)"),
    ("lattice-64k", "lattice: GET /64k.bin (static binding)"),
    ("lattice-kv", "lattice: KV GET /site-title (storage token)"),
]
if ref_bin:
    CASES += [
        ("ref-1k", "reference build: GET /1k.bin (static binding)"),
        ("ref-64k", "reference build: GET /64k.bin (static binding)"),
        ("ref-kv", "reference build: KV GET /site-title (storage token)"),
    ]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

def ms(v):
    """wrk latency ("850.00us", "1.20ms", "2.00s", "1.00m") -> milliseconds, or None."""
    v = v.strip()
    for unit in ("us", "ms", "s", "m", "h"):
        if v.endswith(unit):
            try:
                return float(v[: -len(unit)]) * UNITS[unit]
            except ValueError:
                return None
    try:
        return float(v) * 1e3  # wrk prints a bare number only for seconds
    except ValueError:
        return None

def num(v):
    try:
        x = float(v)
        return x if math.isfinite(x) else None
    except ValueError:
        return None

rps, p99, non2xx, sock, broken = {}, {}, {}, {}, []
for n, line in enumerate(open(path), 1):
    f = line.split()
    if not f:
        continue
    if len(f) != 5:
        broken.append(f"line {n}: {line.strip()!r}")
        continue
    label, r, p, e, s = f
    r, p = num(r), ms(p)
    if r is None or p is None:
        broken.append(f"{label}: no requests/s or p99 in wrk's output")
    if r is not None:
        rps.setdefault(label, []).append(r)
    if p is not None:
        p99.setdefault(label, []).append(p)
    non2xx[label] = non2xx.get(label, 0) + int(e)
    sock[label] = sock.get(label, 0) + int(s)

def med(d, label):
    xs = d.get(label)
    return statistics.median(xs) if xs else None

def fmt_rps(x):
    return "n/a" if x is None else f"{x:,.0f}"

def fmt_ms(x):
    return "n/a" if x is None else f"{x:.2f} ms"

def ratio(a, b):
    return None if a is None or not b else a / b

def verdict(x, target, higher_is_better):
    if x is None:
        return "n/a"
    ok = x >= target if higher_is_better else x <= target
    return "ok" if ok else "MISSED"

print(f"wrk -t{threads} -c{conns} -d{dur} (keep-alive), {rounds} round(s), medians; loopback, {cores} cores")
print(f"lattice: tokio multi-thread on {tokio_workers} worker threads ({cores} cores); "
      f"nginx: {nginx_workers} worker(s) (NGINX_WORKERS; {nginx_running} running), "
      f"sendfile {sendfile}, tcp_nopush {nopush}")
print()
print("| case | requests/s | p99 |")
print("|---|---:|---:|")
for label, name in CASES:
    print(f"| {name} | {fmt_rps(med(rps, label))} | {fmt_ms(med(p99, label))} |")
print()
for size in ("1k", "64k"):
    r = ratio(med(rps, f"lattice-{size}"), med(rps, f"nginx-{size}"))
    p = ratio(med(p99, f"lattice-{size}"), med(p99, f"nginx-{size}"))
    rs = "n/a" if r is None else f"{r:.2f}"
    ps = "n/a" if p is None else f"{p:.2f}"
    print(f"{size:>3} lattice/nginx: requests/s {rs}x (target >= 0.90: {verdict(r, 0.9, True)}), "
          f"p99 {ps}x (target <= 1.50: {verdict(p, 1.5, False)})")
if ref_bin:
    print(f"reference build: {ref_bin}")
    for case in ("1k", "64k", "kv"):
        r = ratio(med(rps, f"lattice-{case}"), med(rps, f"ref-{case}"))
        p = ratio(med(p99, f"lattice-{case}"), med(p99, f"ref-{case}"))
        print(f"{case:>3} this build/reference: requests/s {'n/a' if r is None else f'{r:.2f}'}x, "
              f"p99 {'n/a' if p is None else f'{p:.2f}'}x")
    for size in ("1k", "64k"):
        r = ratio(med(rps, f"ref-{size}"), med(rps, f"nginx-{size}"))
        print(f"{size:>3} reference/nginx: requests/s {'n/a' if r is None else f'{r:.2f}'}x")
r = ratio(med(rps, "lattice-kv"), med(rps, "lattice-1k"))
p = ratio(med(p99, "lattice-kv"), med(p99, "lattice-1k"))
print(f"KV GET / static 1k (lattice): requests/s {'n/a' if r is None else f'{r:.2f}'}x, "
      f"p99 {'n/a' if p is None else f'{p:.2f}'}x")
total_non2xx = sum(non2xx.values())
print("non-2xx responses: " + (", ".join(f"{l} {non2xx.get(l, 0)}" for l, _ in CASES)) + f" (total {total_non2xx})")
total_sock = sum(sock.values())
print("socket errors: " + (", ".join(f"{l} {sock.get(l, 0)}" for l, _ in CASES)) + f" (total {total_sock})")
print(f"lattice RSS after load: {int(busy_kb) / 1024:.1f} MiB; lines lattice logged (warn+): {log_lines}")
if ref_bin:
    print(f"reference RSS after load: {int(ref_kb) / 1024:.1f} MiB")
status = 0
missing = [l for l, _ in CASES if l not in rps or l not in p99]
if broken or missing:
    print("FAIL: unusable wrk results: " + "; ".join(broken + [f"{l}: no result" for l in missing]))
    status = 1
if total_non2xx:
    print(f"FAIL: {total_non2xx} non-2xx responses")
    status = 1
sys.exit(status)
PY
summary_rc=$?
set -e
if [[ "$server_log_lines" -gt 0 ]]; then
    echo "--- lattice logged during the run (tail of server.err) ---"
    tail -n 20 "$work/server.err"
fi
if [[ -s "$work/nginx-error.log" ]]; then
    echo "--- nginx error log (tail) ---"
    tail -n 10 "$work/nginx-error.log"
fi
if [[ $summary_rc -ne 0 ]]; then
    fail "see above"
fi
