#!/usr/bin/env bash
# The e2e tier, start to end: build/cache the tools, bring up a control plane,
# run the tests, and tear the control plane down on every exit (success,
# failure, Ctrl-C, TERM). See e2e/README.md.
#
#   e2e/run.sh                      tools + cluster + smoke test
#   CODED_E2E_TESTS=1 e2e/run.sh    ... plus the real node and the Rust e2e tests (operator/tests/e2e.rs)
#   CODED_E2E_FILTER=real ...       only the e2e tests whose names contain "real"
#
# The real node (e2e/node.sh: kubelet, containerd, CNI, kube-proxy, CoreDNS)
# joins after the smoke test when CODED_E2E_REAL_NODE is 1 (required: CI),
# or `auto` (the default: when running as root and `scripts/images.sh` has
# built the sidecar image); 0 leaves it out. After the teardown, anything the
# node left on the machine fails the run.
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
  # Whatever the step left in its process group (say, an operator process of
  # a test that was killed before it could stop it) goes with it.
  kill -KILL -- "-$CHILD" 2>/dev/null || true
  CHILD=""
  return "$rc"
}

REAL_NODE=${CODED_E2E_REAL_NODE:-auto}
# The tests read CODED_E2E_REAL_NODE as the node's name (`cluster.sh env`
# sets it once the node is up): the switch above must not reach them, or
# `CODED_E2E_REAL_NODE=0` would send them looking for a node named "0".
unset CODED_E2E_REAL_NODE
SIDECAR_IMAGE=${CODED_E2E_SIDECAR_IMAGE:-localhost/coded-sidecar:dev}
NODE_UP=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $CHILD ]]; then
    # TERM the step's whole group (cargo, the test binary, the operator
    # processes it started), give it 10 s to shut down, then KILL the rest.
    kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 -- "-$CHILD" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  "$HERE/cluster.sh" down || true
  if [[ -n $NODE_UP ]] && ! "$HERE/node.sh" leftovers >&2; then
    log "the real node left something behind (above)"
    ((rc != 0)) || rc=1
  fi
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

if [[ $REAL_NODE == auto ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v buildah >/dev/null && buildah inspect --type image "$SIDECAR_IMAGE" >/dev/null 2>&1; then
    REAL_NODE=1
  else
    REAL_NODE=0
    log "no real node: it needs root and the image $SIDECAR_IMAGE (scripts/images.sh); CODED_E2E_REAL_NODE=1 requires it"
  fi
fi
if [[ $REAL_NODE == 1 ]]; then
  buildah inspect --type image "$SIDECAR_IMAGE" >/dev/null 2>&1 \
    || { log "ERROR: the image $SIDECAR_IMAGE is missing: run scripts/images.sh first"; exit 1; }
  t=$SECONDS
  NODE_UP=1
  step "$HERE/node.sh" up
  # The images as scripts/images.sh tagged them, and under the names the
  # chart defaults to (so the quick-start runs as written: nothing is pulled).
  app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/coded-serving/Chart.yaml")
  OPERATOR_IMAGE=${SIDECAR_IMAGE/coded-sidecar/coded-operator}
  archives=()
  for pair in "$SIDECAR_IMAGE=$SIDECAR_IMAGE" "$SIDECAR_IMAGE=ghcr.io/coded-serving/coded-sidecar:$app_version" \
              "$OPERATOR_IMAGE=ghcr.io/coded-serving/coded-operator:$app_version"; do
    archive="$CODED_E2E_CLUSTER_DIR/image-${#archives[@]}.tar"
    buildah push --quiet "${pair%%=*}" "oci-archive:$archive:${pair#*=}" >/dev/null \
      || { log "ERROR: cannot export ${pair%%=*} (scripts/images.sh builds it)"; exit 1; }
    archives+=("$archive")
  done
  step "$HERE/node.sh" import "${archives[@]}"
  rm -f "${archives[@]}"
  log "real node up with $SIDECAR_IMAGE and $OPERATOR_IMAGE (also as the chart's ghcr.io/coded-serving/*:$app_version) in $((SECONDS - t))s"
  eval "$("$HERE/cluster.sh" env)"
  export CODED_E2E_REQUIRE_REAL_NODE=1 CODED_E2E_SIDECAR_IMAGE="$SIDECAR_IMAGE"
fi

# The Rust e2e tests (operator/tests/e2e.rs): they read KUBECONFIG and
# CODED_E2E_SERVER and find kubectl/helm on PATH, all set above from
# `cluster.sh env`. `--workspace` builds with the same features as the
# README's `cargo test --workspace`, so after it nothing is rebuilt (`-p`
# alone resolves features differently and recompiles the operator). Their
# temp dirs go under the cluster's state dir, which `down` removes even if a
# test process is killed before it can clean up.
if [[ ${CODED_E2E_TESTS:-0} == 1 ]]; then
  mkdir -p "$CODED_E2E_CLUSTER_DIR/tmp"
  # shellcheck disable=SC2016 # $1 and $2 expand in the child shell
  # CODED_E2E_FILTER: only the tests whose names contain it (cargo's filter)
  step bash -c 'cd "$1" && TMPDIR="$2" exec cargo test --workspace --locked --test e2e -- --test-threads=1 ${3:+"$3"}' \
    _ "$ROOT" "$CODED_E2E_CLUSTER_DIR/tmp" "${CODED_E2E_FILTER:-}"
fi
