#!/usr/bin/env bash
# The e2e tier, start to end: build/cache the tools, bring up a control plane,
# run the tests, and tear the control plane down on every exit (success,
# failure, Ctrl-C, TERM). See e2e/README.md.
#
#   e2e/run.sh                      tools + cluster + smoke test
#   CODED_E2E_TESTS=1 e2e/run.sh    ... plus the Rust e2e tests (when they exist)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# one cluster per run, so parallel runs (other worktrees, CI) never collide
export CODED_E2E_CLUSTER=${CODED_E2E_CLUSTER:-run-$$}

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
T0=$SECONDS

t=$SECONDS
"$HERE/tools.sh" >/dev/null
log "tools ready in $((SECONDS - t))s"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  "$HERE/cluster.sh" down || true
  log "finished in $((SECONDS - T0))s (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t=$SECONDS
"$HERE/cluster.sh" up
log "cluster up in $((SECONDS - t))s"
eval "$("$HERE/cluster.sh" env)"

"$HERE/smoke.sh"

# Hook for the Rust e2e tests (issue 5, item 2): they read KUBECONFIG and find
# kubectl/helm on PATH, both set above from `cluster.sh env`.
if [[ ${CODED_E2E_TESTS:-0} == 1 ]]; then
  (cd "$ROOT" && cargo test -p coded-operator --test e2e -- --test-threads=1)
fi
