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

# Steps run in the background, each in a process group of its own, and are
# waited for: a TERM/INT to this script is handled at once (bash defers traps
# until a foreground child ends), and cleanup stops the step's whole tree
# (e.g. a `go build` under tools.sh) before tearing the cluster down.
CHILD=""
step() {
  setsid "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  "$HERE/cluster.sh" down || true
  log "finished in $((SECONDS - T0))s (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t=$SECONDS
step "$HERE/tools.sh" >/dev/null
log "tools ready in $((SECONDS - t))s"

t=$SECONDS
step "$HERE/cluster.sh" up
log "cluster up in $((SECONDS - t))s"
eval "$("$HERE/cluster.sh" env)"

step "$HERE/smoke.sh"

# Hook for the Rust e2e tests (issue 5, item 2): they read KUBECONFIG and find
# kubectl/helm on PATH, both set above from `cluster.sh env`.
if [[ ${CODED_E2E_TESTS:-0} == 1 ]]; then
  # shellcheck disable=SC2016 # $1 expands in the child shell
  step bash -c 'cd "$1" && exec cargo test -p coded-operator --test e2e -- --test-threads=1' _ "$ROOT"
fi
