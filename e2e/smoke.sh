#!/usr/bin/env bash
# Smoke test of the e2e control plane (needs `eval "$(e2e/cluster.sh env)"`):
#  1. a Deployment of 3 replicas lands on the kwok nodes and its pods become
#     Running and Ready (scheduler + ReplicaSet controller + kwok);
#  2. deleting the Deployment garbage-collects its ReplicaSet and Pods
#     (kube-controller-manager's garbage collector);
#  3. a ServiceAccount token from TokenRequest (`kubectl create token`)
#     authenticates, and RBAC answers `kubectl auth can-i` for it — the way
#     the operator will run, as the chart's ServiceAccount;
#  4. the real helm installs (--wait) and uninstalls a chart.
set -euo pipefail

: "${KUBECONFIG:?run: eval \"\$(e2e/cluster.sh env)\"}"
NS=coded-smoke
PASS=0 FAIL=0
T0=$SECONDS

log() { printf '[smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ok() { PASS=$((PASS + 1)); log "ok: $*"; }
fail() { FAIL=$((FAIL + 1)); log "FAIL: $*"; }
check() { # DESCRIPTION CMD...
  local what=$1; shift
  if "$@" >&2; then ok "$what"; else fail "$what"; fi
}
finish() {
  local rc=$?
  kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  [[ -n ${TMP:-} ]] && rm -rf "$TMP"
  ((rc == 0 && FAIL == 0)) || { ((FAIL > 0)) || FAIL=$((FAIL + 1)); }
  log "done in $((SECONDS - T0))s"
  echo "smoke: $PASS passed, $FAIL failed"
  ((FAIL == 0)) || exit 1   # (an EXIT trap's own status is not the script's)
  exit 0
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
TMP=$(mktemp -d "${TMPDIR:-/tmp}/coded-smoke.XXXXXX")

# a namespace left by an earlier run on the same cluster goes first
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=90s >/dev/null
kubectl create namespace "$NS" >/dev/null
# the namespace's default ServiceAccount comes from the SA controller
for _ in $(seq 100); do kubectl -n "$NS" get sa default >/dev/null 2>&1 && break; sleep 0.2; done

# ---- 0. the server is the pinned build ---------------------------------------------
client_version=$(kubectl version --client -o json | sed -n 's/^ *"gitVersion": "\(.*\)",$/\1/p' | head -n 1)
server_version=$(kubectl get --raw /version | sed -n 's/^ *"gitVersion": "\(.*\)",$/\1/p')
log "kubectl $client_version, API server $server_version"
check "API server /version ($server_version) = kubectl's build ($client_version)" \
  test -n "$server_version" -a "$server_version" = "$client_version"

# ---- 1. pods on kwok nodes become Running and Ready ----------------------------
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 3
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      nodeSelector: {type: kwok}
      tolerations:
      - {key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}
      containers:
      - name: app
        image: registry.invalid/never-pulled:1   # kwok runs no container
EOF
check "Deployment rolled out (3/3 available)" \
  kubectl -n "$NS" rollout status deployment/smoke --timeout=120s
check "3 pods Ready" kubectl -n "$NS" wait --for=condition=Ready pod -l app=smoke --timeout=60s
phases=$(kubectl -n "$NS" get pods -l app=smoke -o jsonpath='{range .items[*]}{.status.phase}{" "}{.spec.nodeName}{"\n"}{end}')
check "3 pods Running on kwok nodes" \
  test "$(grep -c '^Running kwok-node-' <<<"$phases")" -eq 3
rs=$(kubectl -n "$NS" get rs -l app=smoke -o jsonpath='{.items[*].metadata.name}')
pods=$(kubectl -n "$NS" get pods -l app=smoke -o name)
check "one ReplicaSet owned by the Deployment" \
  test "$(kubectl -n "$NS" get rs "$rs" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')" = Deployment/smoke

# ---- 2. garbage collection -------------------------------------------------------
# background cascade: the API server deletes only the Deployment; the
# ReplicaSet and Pods go only if the garbage collector does its job.
kubectl -n "$NS" delete deployment smoke --cascade=background --wait=true >/dev/null
check "ReplicaSet $rs garbage-collected" kubectl -n "$NS" wait --for=delete "rs/$rs" --timeout=60s
# shellcheck disable=SC2086
check "its 3 Pods garbage-collected" kubectl -n "$NS" wait --for=delete $pods --timeout=60s
# --use-service-account-credentials: each controller has its own ServiceAccount
check "controllers run as their own ServiceAccounts (generic-garbage-collector, replicaset-controller)" \
  kubectl -n kube-system get serviceaccount generic-garbage-collector replicaset-controller

# ---- 3. ServiceAccount token (TokenRequest) + RBAC --------------------------------
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: smoke-operator}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: smoke-pod-reader}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: smoke-pod-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: smoke-pod-reader}
subjects:
- {kind: ServiceAccount, name: smoke-operator, namespace: coded-smoke}
EOF
token=$(kubectl -n "$NS" create token smoke-operator --duration=10m)
server=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$TMP/ca.crt"
# a kubeconfig with nothing but the token: no client certificate to fall back on
SA_KC="$TMP/sa.kubeconfig"
KUBECONFIG=$SA_KC kubectl config set-cluster e2e --server="$server" --certificate-authority="$TMP/ca.crt" --embed-certs=true >/dev/null
KUBECONFIG=$SA_KC kubectl config set-credentials sa --token="$token" >/dev/null
KUBECONFIG=$SA_KC kubectl config set-context e2e --cluster=e2e --user=sa >/dev/null
KUBECONFIG=$SA_KC kubectl config use-context e2e >/dev/null
sa() { KUBECONFIG=$SA_KC kubectl "$@"; }

check "token authenticates as system:serviceaccount:$NS:smoke-operator" \
  test "$(sa auth whoami -o jsonpath='{.status.userInfo.username}')" = "system:serviceaccount:$NS:smoke-operator"
check "can-i list pods in $NS: yes" test "$(sa auth can-i list pods -n "$NS")" = yes
check "can-i delete pods in $NS: no" test "$(sa auth can-i delete pods -n "$NS" || true)" = no
check "can-i list secrets in kube-system: no" test "$(sa auth can-i list secrets -n kube-system || true)" = no
check "the token lists pods for real" sa -n "$NS" get pods
check "RBAC forbids the token to list nodes" bash -c "KUBECONFIG='$SA_KC' kubectl get nodes 2>&1 | grep -q Forbidden"
check "a garbled token is rejected (401)" bash -c "KUBECONFIG='$SA_KC' kubectl --token='${token}x' get pods -n '$NS' 2>&1 | grep -qi unauthorized"

# ---- 4. helm installs a chart into this cluster --------------------------------------
# (the operator's chart is installed the same way by the Rust e2e tests)
export HELM_CACHE_HOME="$TMP/helm/cache" HELM_CONFIG_HOME="$TMP/helm/config" HELM_DATA_HOME="$TMP/helm/data"
helm create "$TMP/smoke-chart" >/dev/null
check "helm install --wait (chart's Deployment Ready on kwok nodes)" \
  helm install smoke-chart "$TMP/smoke-chart" -n "$NS" --wait --timeout 90s \
    --set image.repository=registry.invalid/never-pulled --set image.tag=1 \
    --set nodeSelector.type=kwok \
    --set 'tolerations[0].key=kwok.x-k8s.io/node' --set 'tolerations[0].operator=Exists' --set 'tolerations[0].effect=NoSchedule'
check "helm list shows the release deployed" \
  test "$(helm list -n "$NS" --deployed -q)" = smoke-chart
check "helm uninstall" helm uninstall smoke-chart -n "$NS" --wait --timeout 60s
