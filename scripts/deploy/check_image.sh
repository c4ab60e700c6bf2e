#!/usr/bin/env bash
# Prove the image's build and run steps without a container engine: run the
# `cargo build` the Dockerfile runs, lay the binaries out as the image does (root-
# owned, read-only to the server's user), and start `lattice-server` as the image's
# non-root user 65532 with the image's environment, writable only in its data
# volume; then `lattice-server healthcheck` (the image's HEALTHCHECK) must pass.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '%s\n' "$*" >&2; }
die() { printf '\n### image check: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (it starts the server as uid 65532 with setpriv)"
command -v setpriv >/dev/null || die "setpriv (util-linux) is missing"

# The build command, exactly as the Dockerfile has it.
build=$(grep -oE 'cargo build [^&\\]*' Dockerfile | head -1 | sed 's/[[:space:]]*$//')
[[ "$build" == "cargo build --release --locked"* ]] || die "no cargo build --release --locked line in the Dockerfile"
log "==> $build   (from the Dockerfile)"
$build
target="${CARGO_TARGET_DIR:-target}/release"

root=$(mktemp -d)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT
install -D -m 0755 "$target/lattice-server" "$root/usr/local/bin/lattice-server"
install -D -m 0755 "$target/lattice" "$root/usr/local/bin/lattice"
install -d -m 0700 -o 65532 -g 65532 "$root/var/lib/lattice"
chmod 0755 "$root"

# The image's environment (ENV lines), with the gateway on a loopback port here.
mapfile -t image_env < <(awk '/^ENV /{flag=1; sub(/^ENV /,"")} flag{line=$0; sub(/\\$/,"",line); n=split(line, kv, " "); for(i=1;i<=n;i++) if (kv[i] ~ /=/) print kv[i]; if ($0 !~ /\\$/) flag=0}' Dockerfile)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env_args=(env -i PATH=/usr/bin:/bin HOME=/nonexistent)
for kv in "${image_env[@]}"; do
    env_args+=("${kv//\/var\/lib\/lattice/$root/var/lib/lattice}")
done
env_args+=("LATTICE_GATEWAY__LISTEN=127.0.0.1:$port" "LATTICE_BOOTSTRAP_ADMIN_PASSWORD=image-check-password")
as_image=(setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs)
entry=$(grep -oE '^ENTRYPOINT \[.*\]' Dockerfile | python3 -c 'import json,sys; print(" ".join(json.loads(sys.stdin.read()[len("ENTRYPOINT "):])))')
cmd=$(grep -oE '^CMD \[.*\]' Dockerfile | python3 -c 'import json,sys; print(" ".join(json.loads(sys.stdin.read()[len("CMD "):])))')
[[ "$entry" == "/usr/local/bin/lattice-server" ]] || die "unexpected ENTRYPOINT $entry"
log "==> as uid 65532: $entry $cmd   (gateway on 127.0.0.1:$port)"
"${as_image[@]}" "${env_args[@]}" "$root$entry" $cmd >"$root/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 60); do
    if "${as_image[@]}" "${env_args[@]}" "$root/usr/local/bin/lattice-server" healthcheck >/dev/null 2>&1; then
        log "healthcheck: ok"
        break
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$root/server.log" >&2; die "the server exited"; }
    sleep 0.5
done
"${as_image[@]}" "${env_args[@]}" "$root/usr/local/bin/lattice-server" healthcheck >/dev/null \
    || { cat "$root/server.log" >&2; die "healthcheck never passed"; }
# Only the data volume was written, by the server's user, privately.
[[ -f "$root/var/lib/lattice/lattice.db" ]] || die "no database in the data volume"
[[ "$(stat -c '%u %a' "$root/var/lib/lattice/master.key")" == "65532 600" ]] || die "master.key is not 0600 and the server user's"
if "${as_image[@]}" touch "$root/usr/local/bin/x" 2>/dev/null; then die "the binary directory is writable by the server user"; fi
log "image check: ok"
