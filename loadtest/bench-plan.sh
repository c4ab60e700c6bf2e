#!/usr/bin/env bash
# Reviewed changes: rendering and diffing one firewall plan for many nodes
# (target: 1,000 nodes in at most 1 s). Validates the intent, renders the
# table, diffs it against each node's base (none, the previous version, a hand
# edit) and hashes the plan, in-process; bounded by the round count.
#
#   loadtest/bench-plan.sh [NODES] [RULES] [ROUNDS]      (defaults 1000 50 5)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p lattice-policy --example bench_plan -- "${1:-1000}" "${2:-50}" "${3:-5}"
