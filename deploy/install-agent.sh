#!/bin/sh
# Install the Lattice node agent on a systemd host, and enroll it when a join
# token is given. Run it as root from a copy of the repository's deploy/
# directory (it installs systemd/lattice-agent.service from next to itself).
#
#   sudo ./install-agent.sh --binary ./lattice-agent --token 'ljt1....'
#
# Options:
#   --binary PATH   the lattice-agent binary to install (default ./lattice-agent)
#   --token TOKEN   a join token (POST /api/v1/nodes/join-tokens or
#                   "lattice nodes join-token"); enrolls the node when given
#   --server URL    the control plane's URL, when the one inside the token is not
#                   the address this node should use (only with --token)
#
# The script is safe to run again: it replaces the binary and the unit, keeps an
# existing /etc/lattice/agent.toml, and reuses the lattice-agent user.
# See docs/fleet.md.

set -eu

BIN=/usr/local/bin/lattice-agent
CONFIG_DIR=/etc/lattice
CONFIG=$CONFIG_DIR/agent.toml
STATE_DIR=/var/lib/lattice-agent
UNIT=/etc/systemd/system/lattice-agent.service
AGENT_USER=lattice-agent

binary=./lattice-agent
token=
server=

say() {
    printf '%s\n' "$*"
}

die() {
    printf 'install-agent.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    printf 'usage: %s [--binary PATH] [--token TOKEN [--server URL]]\n' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --binary)
            [ $# -ge 2 ] || usage
            binary=$2
            shift 2
            ;;
        --binary=*)
            binary=${1#--binary=}
            shift
            ;;
        --token)
            [ $# -ge 2 ] || usage
            token=$2
            shift 2
            ;;
        --token=*)
            token=${1#--token=}
            shift
            ;;
        --server)
            [ $# -ge 2 ] || usage
            server=$2
            shift 2
            ;;
        --server=*)
            server=${1#--server=}
            shift
            ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            printf 'install-agent.sh: unknown option %s\n' "$1" >&2
            usage
            ;;
    esac
done

if [ -n "$server" ] && [ -z "$token" ]; then
    printf 'install-agent.sh: --server is used for enrollment and needs --token\n' >&2
    usage
fi

# Check everything before changing anything.
[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0 ...)"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this script needs systemd"
[ -f "$binary" ] || die "--binary: $binary does not exist (build it with: cargo build --release -p lattice-agent)"

script_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
unit_src=$script_dir/systemd/lattice-agent.service
[ -f "$unit_src" ] || die "$unit_src not found: run the script from the repository's deploy/ directory"

umask 022

# 1. The binary.
install -m 0755 "$binary" "$BIN"
say "installed $BIN"

# 2. The system user the service runs as.
if id -u "$AGENT_USER" >/dev/null 2>&1; then
    say "user $AGENT_USER exists"
else
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --user-group --no-create-home --home-dir "$STATE_DIR" \
        --shell "$nologin" "$AGENT_USER"
    say "created system user $AGENT_USER"
fi

# 3. The configuration: everything off until you enable it.
mkdir -p "$CONFIG_DIR"
if [ -e "$CONFIG" ]; then
    say "kept existing $CONFIG"
else
    cat >"$CONFIG" <<'EOF'
# lattice-agent configuration. Without any setting, everything is off: no
# privileged capability, no proxy port, no logs. Restart the agent after a
# change: systemctl restart lattice-agent. See docs/fleet.md.

# Privileged capabilities this node consents to (the server must enable them too).
# capabilities = []                 # e.g. ["exec"]

# Programs exec tasks may run (argv[0] must match exactly).
# exec_allow = []                   # e.g. ["/usr/bin/uptime", "/usr/bin/systemctl"]

# Local ports the proxy may reach on 127.0.0.1.
# proxy_ports = []                  # e.g. [8080]

# Logs to ship.
# [[logs]]
# type = "journald"
# units = ["nginx.service"]
#
# [[logs]]
# type = "file"
# path = "/var/log/app.log"
EOF
    chmod 0644 "$CONFIG"
    say "wrote $CONFIG (everything off)"
fi

# 4. The systemd unit.
install -m 0644 "$unit_src" "$UNIT"
say "installed $UNIT"

# 5. Enrollment.
if [ -n "$token" ]; then
    if [ -n "$server" ]; then
        "$BIN" enroll --token "$token" --server "$server" --state-dir "$STATE_DIR"
    else
        "$BIN" enroll --token "$token" --state-dir "$STATE_DIR"
    fi
    chown -R "$AGENT_USER": "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    say "enrolled: credentials in $STATE_DIR/credentials.json"
fi

# 6. The service.
systemctl daemon-reload
if [ -f "$STATE_DIR/credentials.json" ]; then
    systemctl enable lattice-agent
    # restart, not start: a re-run picks up the new binary and unit.
    systemctl restart lattice-agent
    say "enabled and (re)started lattice-agent (systemctl status lattice-agent; journalctl -u lattice-agent)"
else
    # Without credentials the agent would only fail and restart.
    systemctl enable lattice-agent
    say "enabled lattice-agent; not started: the node is not enrolled yet"
    say "enroll it with:"
    say "  sudo $BIN enroll --token '<join token>' --state-dir $STATE_DIR"
    say "  sudo chown -R $AGENT_USER: $STATE_DIR && sudo systemctl start lattice-agent"
fi
