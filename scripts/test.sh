#!/usr/bin/env bash
# scripts/test.sh — the single command that runs every CI check for Lattice.
#
# Usage:
#   scripts/test.sh                 fmt + clippy + API conformance + deploy checks
#                                   (scripts/check-deploy.sh) + tests (what CI
#                                   runs, via .ci/run)
#   scripts/test.sh --no-lint [ARGS...]
#                                   skip fmt/clippy; any other ARGS are passed to
#                                   `cargo test` (e.g. `--no-lint -p lattice-core foo`)
#                                   and skip the API conformance run
#
# Environment:
#   LATTICE_TEST_DATABASE_URL  Postgres URL for integration tests. If set it is used
#                              as-is (only checked for reachability). Default:
#                              postgres://lattice:lattice@127.0.0.1:5432/lattice_test,
#                              which this script provisions (apt-get install, start the
#                              cluster, create role + database) when it is not reachable.
#   LATTICE_TEST_REDIS_URL     Redis URL. Same rules. Default: redis://127.0.0.1:6379/
#   CI=true                    An unreachable backend is a hard failure. Otherwise a
#                              loud warning is printed, the variable is NOT exported
#                              and the tests run SQLite-only.
#   LATTICE_TEST_SETUP_ONLY=1  Only ensure the backends, then print `export VAR=...`
#                              lines on stdout and exit 0 (all logging is on stderr), so
#                              `eval "$(LATTICE_TEST_SETUP_ONLY=1 scripts/test.sh)"`
#                              sets up a local shell for `cargo test`.
#   CARGO_TARGET_DIR           Honoured if set (cargo does this itself). This script
#                              never picks a shared target dir on its own; .ci/run does.
#
# Idempotent: re-running with the role/database already present and the servers
# already running is a no-op for the setup part.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# ---------------------------------------------------------------- arguments
RUN_LINT=1
CARGO_TEST_ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-lint) RUN_LINT=0 ;;
        *) CARGO_TEST_ARGS+=("$arg") ;;
    esac
done

# ---------------------------------------------------------------- helpers
log() { printf '%s\n' "$*" >&2; }
banner() { printf '\n==> %s\n' "$*" >&2; }
warn() {
    {
        printf '\n'
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf '!!! WARNING: %s\n' "$*"
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf '\n'
    } >&2
}
die() {
    {
        printf '\n'
        printf '########################################################################\n'
        printf '### ERROR: %s\n' "$*"
        printf '########################################################################\n'
    } >&2
    exit 1
}
# Hide the password in a URL before printing it.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

is_ci() { [[ "${CI:-}" == "true" ]]; }

# Run privileged commands directly as root, via sudo otherwise (dev laptops).
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi
can_admin() { [[ "$(id -u)" -eq 0 || ${#SUDO[@]} -gt 0 ]]; }
as_root() { "${SUDO[@]}" "$@"; }

# Run a command as the postgres OS user (peer auth over the local socket).
as_postgres() {
    if command -v runuser >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    elif [[ ${#SUDO[@]} -gt 0 ]]; then
        (cd / && sudo -u postgres -- "$@")
    else
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

APT_UPDATED=0
apt_install() {
    # apt_install PKG... — installs only the given (missing) packages.
    if ! can_admin || ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install $* (not root / no apt-get)"
        return 1
    fi
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@" >&2 || return 1
}

# wait_for DESCRIPTION CHECK_FN [SECONDS]: poll CHECK_FN once a second.
wait_for() {
    local what="$1" check="$2" limit="${3:-30}" i
    for ((i = 0; i < limit; i++)); do
        if "$check"; then
            return 0
        fi
        sleep 1
    done
    log "timed out after ${limit}s waiting for $what"
    return 1
}

# ---------------------------------------------------------------- postgres
DEFAULT_DB_URL="postgres://lattice:lattice@127.0.0.1:5432/lattice_test"
DB_URL_FROM_ENV=0
if [[ -n "${LATTICE_TEST_DATABASE_URL:-}" ]]; then
    DB_URL="$LATTICE_TEST_DATABASE_URL"
    DB_URL_FROM_ENV=1
else
    DB_URL="$DEFAULT_DB_URL"
fi

pg_server_ready() { pg_isready -q -d "$DB_URL" -t 2 >/dev/null 2>&1; }
pg_reachable() {
    command -v psql >/dev/null 2>&1 || return 1
    pg_isready -q -d "$DB_URL" -t 2 >/dev/null 2>&1 || return 1
    local out
    out="$(PGCONNECT_TIMEOUT=5 psql "$DB_URL" -X -q -tA -v ON_ERROR_STOP=1 -c 'select 1' 2>/dev/null)" || return 1
    [[ "$out" == "1" ]]
}

# Pick the cluster to use: the one on port 5432, else the newest one.
pg_pick_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local line
    line="$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print; exit }')"
    if [[ -z "$line" ]]; then
        line="$(pg_lsclusters -h 2>/dev/null | sort -V | tail -n 1)"
    fi
    [[ -n "$line" ]] || return 1
    read -r PG_VER PG_CLUSTER PG_PORT _ <<<"$line"
}

pg_provision() {
    # Only ever called for the default URL (we own role/db/port then).
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        apt_install postgresql postgresql-client || return 1
    fi
    PG_VER="" PG_CLUSTER="" PG_PORT=""
    if ! pg_pick_cluster; then
        # Package installed but no cluster (e.g. create_main_cluster=false).
        local ver d
        ver="$(for d in /usr/lib/postgresql/*/bin/postgres; do d="${d#/usr/lib/postgresql/}"; echo "${d%%/*}"; done | sort -V | tail -n 1)"
        log "creating PostgreSQL $ver cluster 'main'"
        as_root pg_createcluster "$ver" main >&2 || return 1
        pg_pick_cluster || return 1
    fi
    log "using PostgreSQL cluster $PG_VER/$PG_CLUSTER (port $PG_PORT)"
    if [[ "$PG_PORT" != "5432" ]]; then
        log "cluster listens on port $PG_PORT; using that port instead of 5432"
        DB_URL="postgres://lattice:lattice@127.0.0.1:${PG_PORT}/lattice_test"
    fi

    # Loopback only (this is Debian's default; make it explicit).
    if command -v pg_conftool >/dev/null 2>&1; then
        local cur
        cur="$(pg_conftool -s "$PG_VER" "$PG_CLUSTER" show listen_addresses 2>/dev/null || true)"
        if [[ -n "$cur" && "$cur" != "localhost" && "$cur" != "127.0.0.1" ]]; then
            log "setting listen_addresses=localhost (was '$cur')"
            as_root pg_conftool "$PG_VER" "$PG_CLUSTER" set listen_addresses localhost >&2
            as_root pg_ctlcluster "$PG_VER" "$PG_CLUSTER" stop >&2 || true
        fi
    fi

    # Start without systemd.
    if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" -v c="$PG_CLUSTER" '$1 == v && $2 == c && $4 ~ /^online/ { f = 1 } END { exit !f }'; then
        log "starting PostgreSQL $PG_VER/$PG_CLUSTER"
        if ! as_root pg_ctlcluster "$PG_VER" "$PG_CLUSTER" start >&2; then
            log "pg_ctlcluster failed; trying 'service postgresql start'"
            as_root service postgresql start >&2 || true
        fi
    fi
    if ! wait_for "PostgreSQL on $PG_PORT" pg_server_ready 30; then
        tail -n 20 "/var/log/postgresql/postgresql-${PG_VER}-${PG_CLUSTER}.log" >&2 2>/dev/null || true
        return 1
    fi

    # Role + database, idempotently (peer auth as the postgres OS user).
    log "ensuring role 'lattice' and database 'lattice_test'"
    as_postgres psql -X -q -p "$PG_PORT" -v ON_ERROR_STOP=1 -d postgres >&2 <<'SQL' || return 1
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice') THEN
        CREATE ROLE lattice LOGIN SUPERUSER PASSWORD 'lattice';
    ELSE
        ALTER ROLE lattice LOGIN SUPERUSER PASSWORD 'lattice';
    END IF;
END
$$;
SQL
    local has_db
    has_db="$(as_postgres psql -X -tA -p "$PG_PORT" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = 'lattice_test'")" || return 1
    if [[ "$has_db" != "1" ]]; then
        as_postgres psql -X -q -p "$PG_PORT" -v ON_ERROR_STOP=1 -d postgres \
            -c 'CREATE DATABASE lattice_test OWNER lattice' >&2 || return 1
    fi

    # Password auth over TCP 127.0.0.1 (Debian's default pg_hba has a scram rule
    # for 127.0.0.1/32; add one for our role if somebody removed it).
    if ! pg_reachable; then
        local hba
        hba="$(as_postgres psql -X -tA -p "$PG_PORT" -d postgres -c 'SHOW hba_file')" || return 1
        if ! grep -Eq '^[[:space:]]*host[[:space:]]+(all|lattice_test)[[:space:]]+(all|lattice)[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5|password)' "$hba"; then
            log "adding 'host all lattice 127.0.0.1/32 scram-sha-256' to $hba"
            as_root sed -i '1i host    all    lattice    127.0.0.1/32    scram-sha-256' "$hba"
            as_postgres psql -X -q -p "$PG_PORT" -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
            sleep 1
        fi
    fi
}

ensure_postgres() {
    banner "PostgreSQL: checking $(redact "$DB_URL")"
    if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        apt_install postgresql-client || true
    fi
    if pg_reachable; then
        log "PostgreSQL reachable"
        return 0
    fi
    if [[ "$DB_URL_FROM_ENV" -eq 1 ]]; then
        log "LATTICE_TEST_DATABASE_URL is set but not reachable; not provisioning a local server"
        return 1
    fi
    log "PostgreSQL not reachable; provisioning a local server"
    pg_provision || return 1
    if wait_for "PostgreSQL login as lattice" pg_reachable 30; then
        log "PostgreSQL reachable"
        return 0
    fi
    return 1
}

# ---------------------------------------------------------------- redis
DEFAULT_REDIS_URL="redis://127.0.0.1:6379/"
REDIS_URL_FROM_ENV=0
if [[ -n "${LATTICE_TEST_REDIS_URL:-}" ]]; then
    REDIS_URL="$LATTICE_TEST_REDIS_URL"
    REDIS_URL_FROM_ENV=1
else
    REDIS_URL="$DEFAULT_REDIS_URL"
fi

redis_reachable() {
    command -v redis-cli >/dev/null 2>&1 || return 1
    local out
    out="$(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null)" || return 1
    [[ "$out" == "PONG" ]]
}

redis_provision() {
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server || return 1
    fi
    # The package may have been started by its init script; re-check first.
    if redis_reachable; then
        return 0
    fi
    log "starting redis-server on 127.0.0.1:6379 (no persistence)"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 \
        --save '' --appendonly no --dir /tmp \
        --logfile /tmp/lattice-test-redis.log >&2 || return 1
    if ! wait_for "Redis on 127.0.0.1:6379" redis_reachable 30; then
        tail -n 20 /tmp/lattice-test-redis.log >&2 2>/dev/null || true
        return 1
    fi
}

ensure_redis() {
    banner "Redis: checking $(redact "$REDIS_URL")"
    if ! command -v redis-cli >/dev/null 2>&1; then
        if [[ "$REDIS_URL_FROM_ENV" -eq 1 ]]; then
            apt_install redis-tools || true
        fi
    fi
    if redis_reachable; then
        log "Redis reachable"
        return 0
    fi
    if [[ "$REDIS_URL_FROM_ENV" -eq 1 ]]; then
        log "LATTICE_TEST_REDIS_URL is set but not reachable; not provisioning a local server"
        return 1
    fi
    log "Redis not reachable; provisioning a local server"
    redis_provision || return 1
    log "Redis reachable"
}

# ---------------------------------------------------------------- backends
EXPORTS=()

if ensure_postgres; then
    export LATTICE_TEST_DATABASE_URL="$DB_URL"
    EXPORTS+=(LATTICE_TEST_DATABASE_URL)
elif is_ci; then
    die "PostgreSQL is not reachable at $(redact "$DB_URL") (CI=true: refusing to run SQLite-only)"
else
    warn "PostgreSQL is NOT reachable — Postgres tests will be skipped, running SQLite-only"
    unset LATTICE_TEST_DATABASE_URL
fi

if ensure_redis; then
    export LATTICE_TEST_REDIS_URL="$REDIS_URL"
    EXPORTS+=(LATTICE_TEST_REDIS_URL)
elif is_ci; then
    die "Redis is not reachable at $(redact "$REDIS_URL") (CI=true: refusing to run without Redis)"
else
    warn "Redis is NOT reachable — Redis tests will be skipped"
    unset LATTICE_TEST_REDIS_URL
fi

# ---------------------------------------------------------------- tools
# The reviewed-change tests run the real tools: nftables rulesets only inside a
# network namespace each test creates (`unshare -rn`), never into the host's own
# tables; zone files through named-checkzone; HAProxy configurations through
# `haproxy -c` and a real haproxy on loopback, in temporary directories.
for tool in nft:nftables named-checkzone:bind9-utils haproxy:haproxy; do
    cmd="${tool%%:*}" pkg="${tool#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [[ -x "/usr/sbin/$cmd" ]]; then
        if ! apt_install "$pkg"; then
            if is_ci; then
                die "$cmd is missing and cannot be installed (CI=true: the reviewed-change tests need $pkg)"
            fi
            warn "$cmd is missing: the tests against the real $cmd will be skipped"
        fi
    fi
done

# The dashboard tests drive Debian's Chromium through its chromedriver (nothing
# downloads a browser).
if ! [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    if ! apt_install chromium chromium-driver; then
        if is_ci; then
            die "chromium and chromium-driver are missing and cannot be installed (CI=true: the dashboard tests need them)"
        fi
        warn "no chromium: the dashboard tests will be skipped"
    fi
fi

# The single sign-on tests run a real OpenID provider (oidc-provider, pinned by
# crates/server/tests/oidc-provider/package-lock.json) with Node, on loopback.
OIDC_FIXTURE="$REPO_ROOT/crates/server/tests/oidc-provider"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm || true
fi
if [[ ! -d "$OIDC_FIXTURE/node_modules/oidc-provider" ]]; then
    if command -v npm >/dev/null 2>&1 \
        && (cd "$OIDC_FIXTURE" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        log "installed the OpenID provider for the single sign-on tests"
    elif is_ci; then
        die "cannot install the OpenID provider for the single sign-on tests (npm ci in $OIDC_FIXTURE)"
    else
        warn "no OpenID provider: the single sign-on tests will be skipped"
    fi
fi

if [[ "${LATTICE_TEST_SETUP_ONLY:-}" == "1" ]]; then
    log "LATTICE_TEST_SETUP_ONLY=1: backends ready, skipping cargo"
    for v in "${EXPORTS[@]}"; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

# ---------------------------------------------------------------- cargo
banner "toolchain"
cargo --version >&2
rustc --version >&2
log "CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-<unset: $REPO_ROOT/target>}"

if [[ "$RUN_LINT" -eq 1 ]]; then
    banner "cargo fmt --all -- --check"
    cargo fmt --all -- --check

    banner "cargo clippy --workspace --all-targets --locked -- -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    log "--no-lint: skipping cargo fmt and cargo clippy"
fi

# The agent-update test needs a second, real build of the agent that reports
# another version: built first and set aside (the build below rebuilds the agent
# crate with its own version; only that crate recompiles).
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
banner "LATTICE_AGENT_VERSION=0.1.1-next cargo build -p lattice-agent --locked"
LATTICE_AGENT_VERSION=0.1.1-next cargo build -p lattice-agent --locked
cp "$TARGET_DIR/debug/lattice-agent" "$TARGET_DIR/lattice-agent-next"
export LATTICE_TEST_AGENT_NEXT="$TARGET_DIR/lattice-agent-next"

# The black-box tests run the real binaries (lattice-server and the lattice CLI);
# nextest builds test targets only, so build every binary first.
banner "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

# The REST API answers what its OpenAPI document says (schemathesis against the
# binary just built, about two minutes). Not with extra cargo test arguments: those
# ask for a narrow run.
if [[ ${#CARGO_TEST_ARGS[@]} -eq 0 ]]; then
    banner "scripts/api-conformance.sh --no-build"
    bash scripts/api-conformance.sh --no-build
    # What ships (Dockerfile, compose, systemd units, the Helm chart) and the
    # image's build and run steps (a release build, started as the image's user).
    banner "scripts/check-deploy.sh"
    if [[ "$(id -u)" -eq 0 ]]; then
        bash scripts/check-deploy.sh
    else
        log "not root: the image run step needs setpriv as root; checking the rest"
        bash scripts/check-deploy.sh --no-image
    fi
else
    log "cargo test arguments given: skipping scripts/api-conformance.sh and scripts/check-deploy.sh"
fi

if [[ ${#CARGO_TEST_ARGS[@]} -eq 0 ]] && cargo nextest --version >/dev/null 2>&1; then
    # Doc tests first (nextest cannot run them) so that nextest's summary is the
    # closing line of the run.
    banner "cargo test --workspace --doc --locked"
    cargo test --workspace --doc --locked

    banner "cargo nextest run --workspace --locked --no-fail-fast"
    cargo nextest run --workspace --locked --no-fail-fast
else
    banner "cargo test --workspace --locked${CARGO_TEST_ARGS[*]:+ ${CARGO_TEST_ARGS[*]}}"
    cargo test --workspace --locked "${CARGO_TEST_ARGS[@]}"
fi
# Nothing is printed after the test runner on purpose: its summary must be the
# closing line of the run.
