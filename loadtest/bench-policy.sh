#!/usr/bin/env bash
# Policy decision latency (the policy issue's speed target): the policy service's
# indexed decisions against Cedar's own Authorizer over the whole set, side by side
# on the same 10,000 policies and the same questions, in one run.
#
#   loadtest/bench-policy.sh [POLICIES] [QUESTIONS]      (defaults 10000 20000)
#
# Targets: indexed p50 <= 10 us, p99 <= 50 us at 10,000 policies. The set is mostly
# per-user and per-node permits, with group, label and forbid policies (see
# services/policy/examples/bench_authorize.rs). Runs in-process, bounded by the
# question count; needs only cargo. BENCH_OPAQUE=1 gives every policy a clause
# only Cedar evaluates; BENCH_PARTS=1 also times the index alone.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p lattice-policy --example bench_authorize -- "${1:-10000}" "${2:-20000}"
