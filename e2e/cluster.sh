#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the e2e tier:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (which plays the kubelet for fake nodes: their pods go Running/Ready).
#
#   e2e/cluster.sh up     start everything, create fake nodes, wait until Ready
#   e2e/cluster.sh env    print `export KUBECONFIG=...` and PATH lines (eval them)
#   e2e/cluster.sh down   stop every process `up` started, remove the state dir
#                          (safe to run twice, or when nothing is up)
#   e2e/cluster.sh status show the processes and the API server's /readyz
#
# The binaries come from e2e/tools.sh's cache (run it first; run.sh does).
# State (certs, kubeconfigs, etcd data, logs, pids) lives in one temp dir,
#   ${TMPDIR:-/tmp}/coded-e2e-${CODED_E2E_CLUSTER:-default}
# so several clusters can run side by side under different names. Ports are
# free high ports picked at `up` (override: CODED_E2E_API_PORT).
# Knobs: CODED_E2E_NODES (fake nodes, default 3), CODED_E2E_NODE_CPU/_MEMORY/_PODS
# (each node's capacity, default 1000 / 4Ti / 2000), CODED_E2E_KEEP_ON_FAILURE=1
# (leave a failed `up` running to debug it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=${CODED_E2E_CLUSTER:-default}
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bad CODED_E2E_CLUSTER name: $NAME" >&2; exit 2; }
DIR="${TMPDIR:-/tmp}/coded-e2e-$NAME"
NODES=${CODED_E2E_NODES:-3}
[[ $NODES =~ ^[1-9][0-9]*$ ]] || { echo "CODED_E2E_NODES must be a positive number, not '$NODES'" >&2; exit 2; }
# Fake nodes are big so the scale benchmark (1,000 resources) fits on 3 of them.
NODE_CPU=${CODED_E2E_NODE_CPU:-1000}
NODE_MEMORY=${CODED_E2E_NODE_MEMORY:-4Ti}
NODE_PODS=${CODED_E2E_NODE_PODS:-2000}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

UP_TEARDOWN=down   # what a failed `up` runs (lib.sh up_exit)
log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=e2e/lib.sh
source "$HERE/lib.sh"

stop_all() {
  [[ -d $DIR/pids ]] || return 0
  # clients first, then the API server (while etcd is still there for its
  # graceful shutdown), etcd last
  stop 5 kwok kube-scheduler kube-controller-manager
  stop 10 kube-apiserver
  stop 5 etcd
}

# ---- certificates ---------------------------------------------------------------------
pki() {
  local p="$DIR/pki"
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -keyout ca.key -out ca.crt -subj "/CN=coded-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    # service-account token signing key (RSA: RS256 is what every client expects)
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    local client=$CLIENT_CERT_EXT
    issue_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    # aggregation layer (front proxy): its own CA, as kubeadm does; without it
    # every delegating authenticator (controller-manager, scheduler, and
    # later any webhook/extension server) logs a missing requestheader CA
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -keyout front-proxy-ca.key -out front-proxy-ca.crt -subj "/CN=coded-e2e-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout front-proxy-client.key \
      -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
    printf '%s\n' "$client" >front-proxy-client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial \
      -days 2 -out front-proxy-client.crt -extfile front-proxy-client.ext 2>/dev/null
    rm -f front-proxy-client.csr front-proxy-client.ext
    issue_cert admin "/O=system:masters/CN=coded-e2e-admin" "$client"
    issue_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
    issue_cert kube-scheduler "/CN=system:kube-scheduler" "$client"
    # kwok plays the kubelet of every fake node: it updates node and pod status
    # and node leases, which the Node authorizer only allows per node, so it
    # gets an admin identity of its own.
    issue_cert kwok "/O=system:masters/CN=kwok-controller" "$client"
    # the API server's identity towards kubelets (logs, exec, port-forward on
    # the real node of node.sh)
    issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  )
}


# ---- up -------------------------------------------------------------------------------
up() {
  local t0=$SECONDS
  if [[ -d $DIR ]]; then
    if ours kube-apiserver >/dev/null; then die "cluster '$NAME' is already up ($DIR); run '$0 down' first"; fi
    log "removing leftovers of a previous cluster '$NAME'"; down >/dev/null 2>&1 || true
  fi
  BIN=$(bin_dir)
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run e2e/tools.sh first"
  done
  local stages="$BIN/../share/kwok-stages.yaml"
  [[ -f $stages ]] || die "$stages is missing: run e2e/tools.sh first"

  mkdir -p "$DIR"/{logs,pids,etcd}
  chmod 700 "$DIR" "$DIR/etcd"
  # any failure (or Ctrl-C) from here on: show the logs and tear down
  trap 'up_exit $?' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  if [[ -n ${CODED_E2E_API_PORT:-} ]]; then API_PORT=$CODED_E2E_API_PORT; TAKEN[$API_PORT]=1; else free_port API_PORT; fi
  free_port ETCD_PORT; free_port ETCD_PEER_PORT; free_port KCM_PORT; free_port SCHED_PORT; free_port KWOK_PORT
  cat >"$DIR/ports" <<EOF
ETCD_PORT=$ETCD_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_PORT=$KWOK_PORT
EOF
  log "state in $DIR; API server on https://127.0.0.1:$API_PORT"

  pki
  local n
  for n in admin kube-controller-manager kube-scheduler kwok; do kubeconfig "$n"; done
  local P="$DIR/pki"

  start etcd --name=coded-e2e --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="coded-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn
  wait_until 30 "etcd healthy" curl -fsS "http://127.0.0.1:$ETCD_PORT/health" || { alive_or_die etcd; false; }

  # Admission: the default plugin set (NamespaceLifecycle, ServiceAccount,
  # ResourceQuota, mutating/validating webhooks and admission policies,
  # DefaultTolerationSeconds, ...) plus NodeRestriction. APF is on by default.
  # The endpoint reconciler is off: the only address is 127.0.0.1, which an
  # Endpoints object may not hold; nothing in this cluster dials the
  # `kubernetes` Service.
  start kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$DIR/apiserver" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$P/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.96.0.0/12 \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --enable-priority-and-fairness=true \
    --profiling=false --v=1
  wait_until 90 "kube-apiserver /readyz ok" \
    curl -fsS --cacert "$P/ca.crt" "https://127.0.0.1:$API_PORT/readyz" || { alive_or_die kube-apiserver; false; }

  # Every controller runs under its own ServiceAccount (TokenRequest), the
  # token controller signs legacy SA tokens, the garbage collector is on
  # (it is in the default set; --controllers=* spells the intent).
  start kube-controller-manager \
    --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$P/sa.key" \
    --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --service-cluster-ip-range=10.96.0.0/12 \
    --profiling=false --v=1
  start kube-scheduler \
    --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false --profiling=false --v=1
  # kwok manages only nodes annotated kwok.x-k8s.io/node=fake (and their pods),
  # with the stages kwokctl uses by default (node init, heartbeat + lease,
  # pod ready/complete/delete) from tools.sh's cache.
  start kwok \
    --kubeconfig="$DIR/kwok.kubeconfig" \
    --config="$stages" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --cidr=10.244.0.1/16 --node-ip=10.244.0.1 \
    --server-address="127.0.0.1:$KWOK_PORT"

  wait_until 60 "kube-controller-manager healthy" curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz" || { alive_or_die kube-controller-manager; false; }
  wait_until 60 "kube-scheduler healthy" curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz" || { alive_or_die kube-scheduler; false; }
  wait_until 60 "kwok healthy" curl -fsS "http://127.0.0.1:$KWOK_PORT/healthz" || { alive_or_die kwok; false; }

  export KUBECONFIG="$DIR/admin.kubeconfig"
  local k="$BIN/kubectl"
  # pods need the namespace's default ServiceAccount, made by the SA controller
  wait_until 60 "default ServiceAccount exists" "$k" -n default get serviceaccount default
  {
    for ((n = 0; n < NODES; n++)); do
      cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$n
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
spec:
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
status:
  allocatable: {cpu: "$NODE_CPU", memory: $NODE_MEMORY, pods: "$NODE_PODS"}
  capacity: {cpu: "$NODE_CPU", memory: $NODE_MEMORY, pods: "$NODE_PODS"}
EOF
    done
  } | "$k" apply -f - >/dev/null
  wait_until 60 "$NODES kwok nodes Ready" "$k" wait --for=condition=Ready node -l type=kwok --timeout=2s
  alive_or_die "${COMPONENTS[@]}"

  cat >"$DIR/env" <<EOF
export KUBECONFIG="$DIR/admin.kubeconfig"
export PATH="$BIN:\$PATH"
export CODED_E2E_CLUSTER_DIR="$DIR"
export CODED_E2E_SERVER="https://127.0.0.1:$API_PORT"
export CODED_E2E_CA="$DIR/pki/ca.crt"
EOF
  trap - EXIT INT TERM
  log "up in $((SECONDS - t0))s: eval \"\$($0 env)\" to use it"
}


# ---- down / env / status ----------------------------------------------------------------
down() {
  local t0=$SECONDS
  if [[ ! -e $DIR ]]; then log "cluster '$NAME' is not up"; return 0; fi
  # the real node first (e2e/node.sh), while the API server is still there
  if [[ -d $DIR/node ]]; then "$HERE/node.sh" down || true; fi
  stop_all
  rm -rf "$DIR"
  log "down in $((SECONDS - t0))s"
}

env_() {
  [[ -f $DIR/env ]] || die "cluster '$NAME' is not up"
  cat "$DIR/env"
}

status() {
  [[ -d $DIR ]] || { echo "cluster '$NAME' is not up"; return 1; }
  local n pid
  for n in "${COMPONENTS[@]}"; do
    if pid=$(ours "$n"); then echo "$n: running ($pid)"; else echo "$n: not running"; fi
  done
  # shellcheck disable=SC1091
  source "$DIR/ports"
  echo "readyz: $(curl -sS --cacert "$DIR/pki/ca.crt" "https://127.0.0.1:$API_PORT/readyz" 2>&1)"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  env) env_ ;;
  status) status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
