#!/usr/bin/env bash
# scripts/api-conformance.sh — the REST API answers what its OpenAPI document says.
#
# Fuzzes every operation of /api/v1/openapi.json with schemathesis against the real
# debug lattice-server binary, authenticated as the bootstrap admin with a `*` token
# (and, for the few operations only a password session may use, with the admin's
# session), after creating fixtures for the routes to find (buckets, a key, a site, a
# binding, tokens, a group). It fails on any finding of these checks:
#   not_a_server_error           no 5xx answer
#   status_code_conformance      every status answered is listed for the operation
#   response_schema_conformance  every answer's body matches the schema listed for it
# and on any warning or error in the server's log.
#
# Usage:
#   scripts/api-conformance.sh              build the binaries, then fuzz
#   scripts/api-conformance.sh --no-build   use the binary already built
#
# Environment:
#   LATTICE_TOOLS_DIR          where the schemathesis venv lives
#                              (default ~/.cache/lattice-tools; venv in ./schemathesis)
#   CARGO_TARGET_DIR           where the binary is (default target/)
#   API_CONFORMANCE_EXAMPLES   most test cases per operation and phase (default 25)
#   API_CONFORMANCE_MAX_TIME   schemathesis's time budget in seconds (default 100)
#   API_CONFORMANCE_SEED       a seed, to replay a run that found something
#   API_CONFORMANCE_KEEP=1     keep the temporary directory (server data and logs)
#
# Everything listens on 127.0.0.1 (ports chosen by the kernel); the server and its
# temporary data directory are removed on exit, whatever happens. The last line is
# `api conformance: N operations, 0 findings (M requests)` on success.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ST_VERSION=4.32.5
TOOLS_DIR="${LATTICE_TOOLS_DIR:-$HOME/.cache/lattice-tools}"
VENV="$TOOLS_DIR/schemathesis"
BIN="${CARGO_TARGET_DIR:-target}/debug/lattice-server"
EXAMPLES="${API_CONFORMANCE_EXAMPLES:-25}"
MAX_TIME="${API_CONFORMANCE_MAX_TIME:-100}"
ADMIN_PASSWORD="api-conformance-admin-password"

BUILD=1
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

log() { printf '%s\n' "$*" >&2; }
banner() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf '\n### api conformance: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- schemathesis
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

venv_works() {
    local probe
    probe="$(mktemp -d)"
    python3 -m venv "$probe/v" >/dev/null 2>&1
    local ok=$?
    rm -rf "$probe"
    return "$ok"
}

ensure_schemathesis() {
    if [[ -x "$VENV/bin/st" ]] && [[ "$("$VENV/bin/st" --version 2>/dev/null)" == *" $ST_VERSION" ]]; then
        return 0
    fi
    banner "installing schemathesis $ST_VERSION into $VENV"
    # Debian splits venv (ensurepip) out of python3.
    if ! command -v python3 >/dev/null 2>&1 || ! venv_works; then
        log "python3 -m venv is missing: apt-get install python3-venv"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
            die "apt-get update failed (need root or sudo to install python3-venv)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends python3 python3-venv >&2 ||
            die "cannot install python3-venv"
    fi
    mkdir -p "$TOOLS_DIR"
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION" >&2
    "$VENV/bin/st" --version >&2
}

ensure_schemathesis

# ---------------------------------------------------------------- the server
if [[ "$BUILD" -eq 1 ]]; then
    banner "cargo build --workspace --bins --locked"
    cargo build --workspace --bins --locked
fi
[[ -x "$BIN" ]] || die "$BIN is missing: run cargo build --workspace --bins (or drop --no-build)"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    # Only the script itself cleans up, not a subshell that exits (set -e).
    [[ "$BASHPID" == "$$" ]] || return 0
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "${API_CONFORMANCE_KEEP:-}" ]]; then
        log "kept $WORK (server data in $WORK/data)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

banner "starting $BIN on 127.0.0.1"
: >"$WORK/server.out"
# A clean environment: lattice-server reads every LATTICE_* variable as a setting and
# refuses unknown ones (LATTICE_TOOLS_DIR among them). The gateway trusts
# X-Forwarded-For, so that each schemathesis run has its own client address: failed
# logins and password changes are throttled per address, and one run's failures must
# not turn the other's logins into 429s before they reach the login logic.
env -i PATH="$PATH" HOME="$HOME" \
    LATTICE_DATA_DIR="$WORK/data" \
    LATTICE_MIGRATE_ON_START=true \
    LATTICE_GATEWAY__LISTEN=127.0.0.1:0 \
    LATTICE_GATEWAY__TLS=off \
    LATTICE_IDENTITY__LISTEN=127.0.0.1:0 \
    LATTICE_STORAGE__LISTEN=127.0.0.1:0 \
    LATTICE_TASKS__LISTEN=127.0.0.1:0 \
    LATTICE_TUNNEL__LISTEN=127.0.0.1:0 \
    LATTICE_POLICY__LISTEN=127.0.0.1:0 \
    LATTICE_IDENTITY__ARGON2_MEMORY_KIB=64 \
    LATTICE_IDENTITY__ARGON2_ITERATIONS=1 \
    LATTICE_GATEWAY__TRUST_FORWARDED_FOR=true \
    LATTICE_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    RUST_LOG=warn,sqlx::query=error \
    "$BIN" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!

server_log() {
    log "--- server stdout (last 20 lines)"
    tail -n 20 "$WORK/server.out" >&2 || true
    log "--- server stderr (last 40 lines)"
    tail -n 40 "$WORK/server.err" >&2 || true
}

URL=""
for _ in $(seq 1 600); do
    URL="$(sed -n 's#^Lattice is listening on \(http://127\.0\.0\.1:[0-9]*\).*#\1#p' "$WORK/server.out" | head -n 1)"
    [[ -n "$URL" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        server_log
        die "lattice-server exited before it listened"
    fi
    sleep 0.1
done
[[ -n "$URL" ]] || {
    server_log
    die "lattice-server did not listen within 60 s"
}
for _ in $(seq 1 100); do
    curl -fsS "$URL/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$URL/ready" >/dev/null || {
    server_log
    die "$URL/ready is not 200"
}
log "server at $URL"

# ---------------------------------------------------------------- fixtures
# json_field PATH: the value at a dotted PATH of the JSON document on stdin.
json_field() {
    "$VENV/bin/python" -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}

# api METHOD PATH [JSON]: a bearer-authenticated call that must succeed.
api() {
    local method="$1" path="$2" body="${3:-}"
    local args=(-sS --fail-with-body -X "$method" -H "Authorization: Bearer $TOKEN")
    [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' --data "$body")
    curl "${args[@]}" "$URL$path" || die "fixture: $method $path failed"
}

banner "fixtures: an admin token, buckets, a key, a site, a binding, storage and join tokens, a group"
JAR="$WORK/cookies"
LOGIN="$(curl -sS --fail-with-body -c "$JAR" -H 'Content-Type: application/json' \
    --data "{\"username\":\"admin\",\"password\":\"$ADMIN_PASSWORD\"}" "$URL/api/v1/auth/login")" ||
    die "login failed: $LOGIN"
CSRF="$(json_field csrf_token <<<"$LOGIN")"
ADMIN_ID="$(json_field user.user_id <<<"$LOGIN")"
TOKEN="$(curl -sS --fail-with-body -b "$JAR" -H "X-CSRF-Token: $CSRF" -H 'Content-Type: application/json' \
    --data '{"name":"api-conformance","scopes":["*"]}' "$URL/api/v1/tokens" | json_field token)" ||
    die "cannot create the admin token"
api POST /api/v1/buckets '{"name":"conf","surface":"kv"}' >/dev/null
api PUT /api/v1/kv/conf/greeting '{"value":{"text":"hello"}}' >/dev/null
api POST /api/v1/buckets '{"name":"site","surface":"static"}' >/dev/null
DEPLOYMENT_ID="$(curl -sS --fail-with-body -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/html' \
    --data '<h1>hello</h1>' "$URL/api/v1/static/site/objects/index.html" | json_field id)" ||
    die "fixture: PUT /api/v1/static/site/objects/index.html failed"
api POST /api/v1/bindings '{"host":"conf.conformance.test","bucket":"conf"}' >/dev/null
STORAGE_TOKEN_ID="$(api POST /api/v1/storage-tokens \
    '{"surface":"kv","access":"read","buckets":["conf"],"name":"reader"}' | json_field id)"
api POST /api/v1/nodes/join-tokens '{"labels":{"env":"test"}}' >/dev/null
api POST /api/v1/groups '{"name":"ops","description":"fixture"}' >/dev/null
api PUT /api/v1/groups/ops/members/admin >/dev/null
SPARE_TOKEN_ID="$(api POST /api/v1/tokens '{"name":"spare","scopes":["users:read"]}' | json_field id)"
LOGOUT_TOKEN="$(api POST /api/v1/tokens '{"name":"logout","scopes":["users:read"]}' | json_field token)"
SESSION="$(awk '$6 == "lattice_session" { print $7 }' "$JAR")"
[[ -n "$SESSION" ]] || die "no session cookie from the login"

# Path parameters name the fixtures half of the time (random values the other half),
# so that operations find something and answer their 200s too.
#
# Two operations would end the credential of the run, and every later request would
# be a 401 that proves nothing, so they act on spare tokens:
# - schemathesis reuses ids it saw in answers, and GET /api/v1/tokens lists the token
#   of this run: DELETE /api/v1/tokens/{id} always names a spare token (204 once, 404
#   after);
# - POST /api/v1/auth/logout with a bearer token revokes that token: it is sent with
#   a token of its own (200 once, 401 after).
cat >"$WORK/schemathesis.toml" <<TOML
[dictionaries]
buckets = { values = ["conf", "site"] }
keys = { values = ["greeting"] }
hosts = { values = ["conf.conformance.test"] }
paths = { values = ["index.html"] }
groups = { values = ["ops", "admins"] }
usernames = { values = ["admin"] }
ids = { values = ["$ADMIN_ID", "$DEPLOYMENT_ID", "$STORAGE_TOKEN_ID"] }

[parameters]
"path.bucket" = { dictionary = "buckets", probability = 0.5 }
"path.key" = { dictionary = "keys", probability = 0.5 }
"path.host" = { dictionary = "hosts", probability = 0.5 }
"path.path" = { dictionary = "paths", probability = 0.5 }
"path.name" = { dictionary = "groups", probability = 0.5 }
"path.username" = { dictionary = "usernames", probability = 0.5 }
"path.id" = { dictionary = "ids", probability = 0.5 }

[[operations]]
include-name = "DELETE /api/v1/tokens/{id}"
parameters = { "path.id" = "$SPARE_TOKEN_ID" }

[[operations]]
include-name = "POST /api/v1/auth/logout"
headers = { Authorization = "Bearer $LOGOUT_TOKEN" }
TOML

# ---------------------------------------------------------------- fuzz
# st_run NAME ARGS...: one schemathesis run; its JSON report is $WORK/NAME.json.
REPORTS=()
FAILED=()
st_run() {
    local name="$1"
    shift
    local args=(
        --config-file "$WORK/schemathesis.toml"
        run "$URL/api/v1/openapi.json"
        --url "$URL"
        --checks status_code_conformance,not_a_server_error,response_schema_conformance
        --max-examples "$EXAMPLES"
        # One worker: the server has the other core (and schemathesis's generator is
        # not safe to run in threads on every Python 3.11).
        --workers 1
        --request-timeout 20
        --generation-database none
        --no-color
        --report json --report-json-path "$WORK/$name.json"
        "$@"
    )
    [[ -n "${API_CONFORMANCE_SEED:-}" ]] && args+=(--seed "$API_CONFORMANCE_SEED")
    banner "schemathesis $ST_VERSION ($name): $URL/api/v1/openapi.json"
    local status=0
    # From the temporary directory: schemathesis keeps a cache in its working directory.
    (cd "$WORK" && "$VENV/bin/st" "${args[@]}") || status=$?
    REPORTS+=("$WORK/$name.json")
    [[ "$status" -eq 0 ]] || FAILED+=("$name (exit $status)")
}

# The operations only a password session may use (with a token they are a 403): with
# the session cookie and its CSRF header. First, as its wrong current passwords lock
# the admin out of logging in (and of this operation: 429), not out of the token.
st_run session --max-time 15 \
    --include-path-regex '^/api/v1/auth/(password|totp/)' \
    --header "Cookie: lattice_session=$SESSION" --header "X-CSRF-Token: $CSRF" \
    --header "X-Forwarded-For: 127.0.0.3" \
    --generation-with-security-parameters false
# Every operation, as the admin's `*` token.
st_run token --max-time "$MAX_TIME" --header "Authorization: Bearer $TOKEN" \
    --header "X-Forwarded-For: 127.0.0.2"

# The token must have survived the run, or everything after its loss was a 401.
if [[ "$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL/api/v1/auth/me")" != 200 ]]; then
    die "the admin token stopped working during the run: its results prove nothing"
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    server_log
    die "lattice-server died during the run"
fi
# Nothing the clients cannot see went wrong either (an audit event the log refuses,
# a failed background task): the server logged no warning or error. (sqlx's warnings
# about slow statements are left out of the log: they say how busy the machine is.)
if sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.err" | grep -E '^[^ ]+ +(WARN|ERROR) ' >"$WORK/server-problems"; then
    log "--- the server logged warnings or errors:"
    head -n 40 "$WORK/server-problems" >&2
    FAILED+=("server log ($(wc -l <"$WORK/server-problems") warnings or errors)")
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    server_log
    die "found problems in: ${FAILED[*]}. See above; replay a run with API_CONFORMANCE_SEED=<its seed>"
fi

# One line: operations tested and requests sent (each test case is one request).
"$VENV/bin/python" - "${REPORTS[@]}" <<'PY'
import json, sys

reports = [json.load(open(p)) for p in sys.argv[1:]]
operations = max(r["operations"]["tested"] for r in reports)
findings = sum(r["test_cases"]["unique_failures"] for r in reports)
requests = sum(r["test_cases"]["generated"] for r in reports)
print(f"api conformance: {operations} operations, {findings} findings ({requests} requests)")
PY
