#!/usr/bin/env bash
# Build (once) and cache the real control-plane binaries used by the e2e tier:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy, helm and kwok: one `go build` in one throwaway module
#   (k8s.io/kubernetes, helm.sh/helm/v3, sigs.k8s.io/kwok), so that they
#   compile client-go, apimachinery and the rest once
#   etcd                                                              (Go module, go.etcd.io/etcd/server/v3)
#   coredns (cluster DNS of node.sh's real node)                     (Go module, github.com/coredns/coredns)
#
# Everything is built with the machine's Go from the Go module proxy; nothing
# else is downloaded. Binaries land in
#   ${CODED_E2E_CACHE:-$HOME/.cache/coded-serving/e2e}/k8s-<K8S_VERSION>/bin
# and a second run only checks that each binary is there and reports the
# pinned version (a few seconds).
#
# Usage: e2e/tools.sh            build what is missing, print the bin dir last
#        e2e/tools.sh --print-bin-dir   only print the bin dir
set -euo pipefail

# ---- pinned versions ---------------------------------------------------------
# Newest Kubernetes patch release whose k8s.io/kubernetes module zip and every
# published staging module (k8s.io/api v0.37.1, ...) download through the proxy
# (v1.37.2 is listed, but its module zip is refused: 403 "not available").
K8S_VERSION=v1.37.1
# etcd: the 3.7 line, which Kubernetes 1.37 itself pins (hack/lib/etcd.sh,
# build/dependencies.yaml: 3.7.0; its client libraries are 3.7), newest patch.
ETCD_VERSION=v3.7.3
KWOK_VERSION=v0.8.0
# CoreDNS 1.15 is built against client-go v0.37, as Kubernetes 1.37 is.
COREDNS_VERSION=v1.15.0
HELM_VERSION=v3.22.0

CACHE_ROOT=${CODED_E2E_CACHE:-$HOME/.cache/coded-serving/e2e}
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION/bin"
SHARE_DIR="$CACHE_ROOT/k8s-$K8S_VERSION/share"   # kwok-stages.yaml

if [[ ${1:-} == --print-bin-dir ]]; then
  echo "$BIN_DIR"
  exit 0
fi

# Builds share 2 cores with everything else: lowest priority, 2 compile jobs.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-p=2"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
NICE=(nice -n 19)

log() { printf '[tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# (a non-login shell, e.g. CI's, may not have Go's default install dir on PATH)
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH="/usr/local/go/bin:$PATH"; }
command -v go >/dev/null || die "go is not on PATH (Go >= 1.26 is needed to build Kubernetes ${K8S_VERSION})"
mkdir -p "$BIN_DIR" "$SHARE_DIR"
# one build at a time per cache (parallel runs from several worktrees/CI)
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then log "another tools.sh is building into $CACHE_ROOT: waiting"; flock 9; fi

K8S_MINOR=${K8S_VERSION#v1.}; K8S_MINOR=${K8S_MINOR%%.*}
STAGING_VERSION="v0.${K8S_MINOR}.${K8S_VERSION##*.}"   # v1.37.2 -> v0.37.2

# ---- version checks (cheap: build info embedded by the Go linker) -------------
# `go version -m BIN` lists the module versions a binary was built from, so a
# cached binary is accepted only if it was built from the pinned module.
# (Output is captured, then matched: `cmd | grep -q` under pipefail fails at
# random when grep exits early and cmd dies of SIGPIPE on its next line.)
built_from() { # BIN MODULE VERSION
  local bin=$1 mod=$2 ver=$3 info
  [[ -x $bin ]] || return 1
  info=$(go version -m "$bin" 2>/dev/null) || return 1
  awk -v m="$mod" -v v="$ver" '($1=="mod"||$1=="dep") && $2==m && $3==v {ok=1} END {exit !ok}' <<<"$info"
}
says() { # PATTERN(grep -E, whole line) CMD...: CMD succeeds and prints a matching line
  local pat=$1 out; shift
  out=$("$@" 2>/dev/null) || return 1
  grep -Eqx -- "$pat" <<<"$out"
}
re() { printf '%s' "$1" | sed 's/[.+]/\\&/g'; }   # escape a version for grep -E

k8s_ok() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    built_from "$BIN_DIR/$b" k8s.io/kubernetes "$K8S_VERSION" || return 1
    says "Kubernetes $(re "$K8S_VERSION")" "$BIN_DIR/$b" --version || return 1
  done
  built_from "$BIN_DIR/kubectl" k8s.io/kubernetes "$K8S_VERSION" || return 1
  says "Client Version: $(re "$K8S_VERSION")" "$BIN_DIR/kubectl" version --client
}
etcd_ok() { built_from "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" && says "etcd Version: $(re "${ETCD_VERSION#v}")" "$BIN_DIR/etcd" --version; }
kwok_ok() { built_from "$BIN_DIR/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" && says "kwok version v?$(re "${KWOK_VERSION#v}") .*" "$BIN_DIR/kwok" --version; }
coredns_ok() { built_from "$BIN_DIR/coredns" github.com/coredns/coredns "$COREDNS_VERSION" && says "CoreDNS-$(re "${COREDNS_VERSION#v}")" "$BIN_DIR/coredns" -version; }
PAUSE_SRC="$SHARE_DIR/pause.c"
pause_ok() { [[ -s $PAUSE_SRC ]] && grep -qx "// from k8s.io/kubernetes@$K8S_VERSION build/pause/linux/pause.c" "$PAUSE_SRC"; }
STAGES="$SHARE_DIR/kwok-stages.yaml"
stages_ok() { [[ -s $STAGES ]] && grep -qx "# kwok $KWOK_VERSION" "$STAGES"; }
helm_ok() { built_from "$BIN_DIR/helm" helm.sh/helm/v3 "$HELM_VERSION" && says "$(re "$HELM_VERSION")(\+.*)?" "$BIN_DIR/helm" version --short; }

timed() { # NAME CMD...  run CMD, log how long it took
  local name=$1; shift
  local t0=$SECONDS
  log "building $name ..."
  "$@"
  log "built $name in $((SECONDS - t0))s"
}

# ---- builders ------------------------------------------------------------------
WORK=""
cleanup() { [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"; return 0; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
workdir() {
  [[ -z $WORK ]] || return 0
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/coded-e2e-tools.XXXXXX")
  # go's own temp dirs too, so an interrupted build leaves no /tmp/go-build*
  mkdir -p "$WORK/gotmp"
  export GOTMPDIR="$WORK/gotmp"
}

build_k8s() {
  workdir
  local mod="$WORK/k8s"
  mkdir -p "$mod"
  (
    cd "$mod"
    cat > go.mod <<EOF
module coded-serving.invalid/e2e-k8s

go 1.26.0

require (
	k8s.io/kubernetes $K8S_VERSION
	helm.sh/helm/v3 $HELM_VERSION
	sigs.k8s.io/kwok $KWOK_VERSION
)
EOF
    cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "sigs.k8s.io/kwok/cmd/kwok"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
    # k8s.io/kubernetes requires every staging module at v0.0.0 and replaces
    # it with ./staging/src/...; those directories are not in its module zip,
    # so map each one to its published release instead.
    go mod download k8s.io/kubernetes@"$K8S_VERSION"
    local kmod
    kmod=$(go mod download -json k8s.io/kubernetes@"$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
    [[ -f $kmod ]] || die "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION"
    local staging
    staging=$(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\)\s*=>\s*\./staging/.*#\1#p' "$kmod" | sort -u | grep -v '^k8s.io/sample-')
    [[ -n $staging ]] || die "no staging replace lines found in $kmod"
    {
      echo
      echo "replace ("
      local m
      for m in $staging; do echo "	$m => $m $STAGING_VERSION"; done
      echo ")"
    } >> go.mod
    log "k8s: $(wc -w <<<"$staging") staging modules mapped to $STAGING_VERSION; resolving modules"
    go mod tidy -e >/dev/null 2>"$WORK/tidy.log" || { cat "$WORK/tidy.log" >&2; die "go mod tidy failed"; }
    # same variables as hack/lib/version.sh sets, so /version and --version are right
    local pkg date ld=""
    date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X '$pkg.gitVersion=$K8S_VERSION'"
      ld+=" -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$K8S_MINOR'"
      ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.gitCommit=' -X '$pkg.buildDate=$date'"
    done
    # helm: what its Makefile sets (its version, and the Kubernetes minor of
    # the client-go it is built with: default .Capabilities.KubeVersion);
    # kwok: its version
    local kminor v
    kminor=$(awk '$1 == "k8s.io/client-go" && $2 == "=>" {split($4, a, "."); print a[2]}' go.mod)
    [[ $kminor =~ ^[0-9]+$ ]] || die "cannot read the client-go version from the build module"
    ld+=" -X 'helm.sh/helm/v3/internal/version.version=$HELM_VERSION' -X 'helm.sh/helm/v3/internal/version.gitTreeState=clean'"
    for v in pkg/lint/rules pkg/chartutil; do
      ld+=" -X 'helm.sh/helm/v3/$v.k8sVersionMajor=1' -X 'helm.sh/helm/v3/$v.k8sVersionMinor=$kminor'"
    done
    ld+=" -X 'sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}'"
    "${NICE[@]}" go build -trimpath -ldflags "-s -w$ld" -o "$WORK/out/" \
      helm.sh/helm/v3/cmd/helm \
      sigs.k8s.io/kwok/cmd/kwok \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy
  )
  install -m 0755 "$WORK"/out/* "$BIN_DIR/"
}

build_etcd() {
  workdir
  local mod="$WORK/etcd"
  mkdir -p "$mod"
  (
    cd "$mod"
    # server/v3's own go.mod has replace lines (so `go install ...@ver` is
    # refused); a throwaway module requiring it builds its main package.
    cat > go.mod <<EOF
module coded-serving.invalid/e2e-etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
    cat > tools.go <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    go mod tidy -e >/dev/null 2>"$WORK/tidy-etcd.log" || { cat "$WORK/tidy-etcd.log" >&2; die "go mod tidy (etcd) failed"; }
    "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$WORK/out-etcd/etcd" go.etcd.io/etcd/server/v3
  )
  install -m 0755 "$WORK/out-etcd/etcd" "$BIN_DIR/etcd"
}

# CoreDNS with only the plugins cluster DNS needs (its own main, as CoreDNS
# documents for custom builds): a fraction of the full build.
build_coredns() {
  workdir
  local mod="$WORK/coredns"
  mkdir -p "$mod"
  (
    cd "$mod"
    cat > go.mod <<EOF
module coded-serving.invalid/e2e-coredns

go 1.26.0

require github.com/coredns/coredns $COREDNS_VERSION
EOF
    cat > main.go <<'EOF'
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
EOF
    go mod tidy -e >/dev/null 2>"$WORK/tidy-coredns.log" || { cat "$WORK/tidy-coredns.log" >&2; die "go mod tidy (coredns) failed"; }
    "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$WORK/out-coredns/coredns" .
  )
  install -m 0755 "$WORK/out-coredns/coredns" "$BIN_DIR/coredns"
}

# The pod sandbox ("pause") program of the real node, from the same module.
install_pause_src() {
  local dir
  dir=$(go mod download -json k8s.io/kubernetes@"$K8S_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  [[ -f $dir/build/pause/linux/pause.c ]] || die "pause.c not found in k8s.io/kubernetes@$K8S_VERSION ($dir)"
  { echo "// from k8s.io/kubernetes@$K8S_VERSION build/pause/linux/pause.c"; cat "$dir/build/pause/linux/pause.c"; } >"$PAUSE_SRC.tmp"
  mv "$PAUSE_SRC.tmp" "$PAUSE_SRC"
}

# The kwok binary has no built-in behaviour: it needs Stage objects. Install the
# stages kwokctl uses by default (fast node init, heartbeat with lease, pod
# ready/complete/delete) straight from the pinned kwok module.
install_stages() {
  local dir s sep=""
  dir=$(go mod download -json sigs.k8s.io/kwok@"$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  [[ -d $dir/kustomize/stage ]] || die "kwok module source not found ($dir)"
  {
    echo "# kwok $KWOK_VERSION"
    echo "# default stages from sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage (generated by e2e/tools.sh)"
    for s in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      [[ -z $sep ]] || echo "$sep"; sep="---"
      cat "$dir/kustomize/stage/$s"
    done
  } >"$STAGES.tmp"
  mv "$STAGES.tmp" "$STAGES"
}

# ---- main ------------------------------------------------------------------------
T0=$SECONDS
log "cache: $BIN_DIR"
if k8s_ok && kwok_ok && helm_ok; then log "Kubernetes $K8S_VERSION binaries, kwok $KWOK_VERSION, helm $HELM_VERSION: cached"
else timed "Kubernetes $K8S_VERSION binaries (kube-apiserver, -controller-manager, -scheduler, kubectl, kubelet, kube-proxy), kwok $KWOK_VERSION, helm $HELM_VERSION" build_k8s
     k8s_ok || die "Kubernetes binaries do not report $K8S_VERSION after the build"
     kwok_ok || die "kwok is not built from $KWOK_VERSION"
     helm_ok || die "helm does not report $HELM_VERSION after the build"; fi
if etcd_ok; then log "etcd $ETCD_VERSION: cached"
else timed "etcd $ETCD_VERSION" build_etcd; etcd_ok || die "etcd does not report $ETCD_VERSION after the build"; fi
if coredns_ok; then log "coredns $COREDNS_VERSION: cached"
else timed "coredns $COREDNS_VERSION" build_coredns; coredns_ok || die "coredns does not report $COREDNS_VERSION after the build"; fi
if pause_ok; then log "pause.c: cached"
else install_pause_src; pause_ok || die "pause.c not installed"; log "pause.c installed: $PAUSE_SRC"; fi
if stages_ok; then log "kwok stages: cached"
else install_stages; stages_ok || die "kwok stages not installed"; log "kwok stages installed: $STAGES"; fi
log "all tools ready in $((SECONDS - T0))s"
echo "$BIN_DIR"
