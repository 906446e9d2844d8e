#!/usr/bin/env bash
# A real node for the e2e cluster: the operator's pods run for real beside
# kwok's fake nodes. On this machine, as root:
#   containerd (Debian's, its own root, state and socket) running runc,
#   a CNI bridge with host-local addresses, kubelet and kube-proxy (built by
#   tools.sh), and CoreDNS (built by tools.sh) serving cluster.local as the
#   cluster DNS.
#
#   e2e/node.sh up             after `cluster.sh up`: join node `coded-node-0`, wait until Ready
#   e2e/node.sh import TAR...  import OCI/Docker archives into the node's containerd (k8s.io namespace)
#   e2e/node.sh down           stop it and remove everything it made (cluster.sh down calls it)
#   e2e/node.sh leftovers      print whatever a node left on this machine; exit 1 if anything
#
# Everything lives under the cluster's state dir ($DIR/node), except what
# only exists machine-wide: the bridge `coded-e2e0` (10.240.0.1/24, the pod
# network), iptables chains (kube-proxy's KUBE-*, the kubelet's canaries and
# CODED-E2E-*), the cgroup subtree /coded-e2e in every v1 controller, and the
# kubelet's links in /var/log/containers. So one real node at a time per
# machine (a lock says whose). `down` removes all of it, after a failure too,
# and `leftovers` checks that it did.
#
# Addresses: pods get 10.240.0.0/24 on the bridge; Services keep the API
# server's 10.96.0.0/12; the node, the kubelet and CoreDNS are on 10.240.0.1.
# Pod traffic may only reach pods and the node: anything else is dropped
# (CODED-E2E-FORWARD), and the Service range is routed onto the bridge, so
# nothing from the pod network ever leaves the machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=${CODED_E2E_CLUSTER:-default}
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bad CODED_E2E_CLUSTER name: $NAME" >&2; exit 2; }
DIR="${TMPDIR:-/tmp}/coded-e2e-$NAME"
N="$DIR/node"
NODE=coded-node-0
BRIDGE=coded-e2e0
POD_CIDR=10.240.0.0/24
NODE_IP=10.240.0.1
SERVICE_CIDR=10.96.0.0/12
CGROUP=coded-e2e
LOCK=/run/coded-e2e-node.owner
SOCK="$N/containerd/containerd.sock"
# pause: the pod sandbox image, built here from Kubernetes' own pause.c
PAUSE_IMAGE=localhost/coded-e2e/pause:3.10.2
COMPONENTS=(containerd coredns kubelet kube-proxy apiserver-proxy)
# Pods reach the API server as in any cluster, through the `kubernetes`
# Service (10.96.0.1:443): its endpoint is this port on the node's address,
# relayed to the API server, which listens on loopback only.
API_RELAY_PORT=6443

UP_TEARDOWN=down_node   # what a failed `up` runs (lib.sh up_exit)
log() { printf '[node %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$HERE/lib.sh"

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# ---- what a node needs on the machine ---------------------------------------------
need_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v gcc >/dev/null || missing+=(gcc)
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v socat >/dev/null || missing+=(socat)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The pod sandbox image: Kubernetes' pause.c (from the module tools.sh built
# from) compiled statically, in an image of its own, kept as an OCI archive in
# the tool cache.
pause_archive() {
  local share; share=$(cd "$BIN/../share" && pwd)
  local tar="$share/pause-3.10.2.oci.tar"
  if [[ ! -s $tar ]]; then
    local src="$share/pause.c"
    [[ -f $src ]] || die "$src is missing: run e2e/tools.sh"
    local work; work=$(mktemp -d "${TMPDIR:-/tmp}/coded-e2e-pause.XXXXXX")
    gcc -Os -Wall -static -DVERSION=v3.10.2 -o "$work/pause" "$src"
    local c; c=$(buildah from scratch)
    buildah copy "$c" "$work/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit --quiet "$c" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$c" >/dev/null
    buildah push --quiet "$PAUSE_IMAGE" "oci-archive:$tar.tmp:$PAUSE_IMAGE"
    buildah rmi "$PAUSE_IMAGE" >/dev/null 2>&1 || true
    mv "$tar.tmp" "$tar"
    rm -rf "$work"
  fi
  echo "$tar"
}

# ---- up -----------------------------------------------------------------------------
up() {
  local t0=$SECONDS
  [[ $(id -u) -eq 0 ]] || die "a real node needs root (containerd, mounts, iptables)"
  [[ -f $DIR/env ]] || die "cluster '$NAME' is not up: run 'e2e/cluster.sh up' first"
  if [[ -e $LOCK ]]; then
    local owner; owner=$(<"$LOCK")
    if [[ $owner != "$DIR" && -d $owner/node ]]; then
      die "a real node of another cluster ($owner) is up on this machine; 'CODED_E2E_CLUSTER=${owner##*/coded-e2e-} $0 down' first"
    fi
    log "removing leftovers of an earlier node ($owner)"
    DIR=$owner N="$owner/node" SOCK="$owner/node/containerd/containerd.sock" down_node >/dev/null 2>&1 || true
  fi
  need_packages
  BIN=$(bin_dir)
  local b
  for b in kubelet kube-proxy coredns kubectl; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run e2e/tools.sh first"
  done
  local pause; pause=$(pause_archive)

  mkdir -p "$N"/{containerd,cni/net.d,cni/ipam,cni/cache,kubelet,pod-logs,volume-plugins} "$DIR"/{logs,pids}
  echo "$DIR" >"$LOCK"
  trap 'up_exit $?' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # machine-wide settings this node changes, restored by down
  cat /proc/sys/net/ipv4/ip_forward >"$N/ip_forward.orig"

  # ---- network: the bridge, the forward guard, the Service route
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  iptables -w -N CODED-E2E-FORWARD
  iptables -w -A CODED-E2E-FORWARD -d "$POD_CIDR" -j ACCEPT
  iptables -w -A CODED-E2E-FORWARD -s "$POD_CIDR" -j DROP
  iptables -w -I FORWARD 1 -j CODED-E2E-FORWARD
  cat >"$N/cni/net.d/10-coded-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "coded-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF

  # ---- containerd
  cat >"$N/containerd.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
EOF
  start_exe containerd "$(command -v containerd)" --config "$N/containerd.toml"
  wait_until 30 "containerd answers" ctr --address "$SOCK" version
  node_import "$pause"

  # ---- identities (signed by the cluster's CA)
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE" "$CLIENT_CERT_EXT"
  issue_cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE"
  issue_cert kube-proxy "/CN=system:kube-proxy" "$CLIENT_CERT_EXT"
  # CoreDNS lists Services, EndpointSlices and Namespaces cluster-wide
  issue_cert coredns "/O=system:masters/CN=coded-e2e-coredns" "$CLIENT_CERT_EXT"
  # shellcheck disable=SC1091
  source "$DIR/ports"
  local n
  for n in kubelet kube-proxy coredns; do kubeconfig "$n"; done

  # ---- CoreDNS: cluster.local on the node's address
  free_port DNS_HEALTH_PORT; free_port DNS_READY_PORT
  cat >"$N/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$DNS_HEALTH_PORT
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $DIR/coredns.kubeconfig coded-e2e
        pods insecure
        ttl 5
    }
    cache 5
}
.:53 {
    bind $NODE_IP
    errors
}
EOF
  start coredns -conf "$N/Corefile"
  wait_until 30 "CoreDNS ready" curl -fsS "http://127.0.0.1:$DNS_READY_PORT/ready"

  # ---- kubelet
  free_port KUBELET_PORT; free_port KUBELET_HEALTHZ_PORT
  local ctl
  for ctl in /sys/fs/cgroup/*/; do
    [[ -e $ctl/cgroup.procs && $ctl != */unified/ ]] && mkdir -p "$ctl$CGROUP"
  done
  : >"$N/resolv.conf"
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has cgroup v1 controllers only (a tmpfs /sys/fs/cgroup).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $DIR/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $N/resolv.conf
failSwapOn: false
podLogsDir: $N/pod-logs
volumePluginDir: $N/volume-plugins
serializeImagePulls: false
maxPods: 40
# images are imported, never pulled: keep them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
  start kubelet --config="$N/kubelet.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --root-dir="$N/kubelet" --cert-dir="$N/kubelet/pki" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" \
    --node-labels="type=real,coded.dev/e2e-node=real" --v=1

  # ---- kube-proxy
  free_port PROXY_HEALTH_PORT; free_port PROXY_METRICS_PORT
  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTH_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
# replies of Service traffic come back through the node, whatever the bridge does
iptables: {masqueradeAll: true, syncPeriod: 30s, minSyncPeriod: 0s}
# leave the machine's conntrack sysctls alone
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy --config="$N/kube-proxy.yaml" --v=1

  cat >>"$DIR/ports" <<EOF
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
PROXY_HEALTH_PORT=$PROXY_HEALTH_PORT
DNS_READY_PORT=$DNS_READY_PORT
EOF
  # ---- the API server for pods: the relay and the `kubernetes` Service's endpoint
  start_exe apiserver-proxy "$(command -v socat)" \
    "TCP-LISTEN:$API_RELAY_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$API_PORT"
  export KUBECONFIG="$DIR/admin.kubeconfig"
  "$BIN/kubectl" apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-coded-e2e
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: coded-e2e-node
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports:
- {name: https, port: $API_RELAY_PORT, protocol: TCP}
EOF
  wait_until 60 "kubelet healthy" curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_until 90 "node $NODE Ready" "$BIN/kubectl" wait --for=condition=Ready "node/$NODE" --timeout=2s
  wait_until 30 "kube-proxy healthy" curl -fsS "http://127.0.0.1:$PROXY_HEALTH_PORT/healthz"
  alive_or_die "${COMPONENTS[@]}"
  sed -i '/^export CODED_E2E_REAL_NODE=/d; /^export CODED_E2E_NODE_DIR=/d' "$DIR/env"
  cat >>"$DIR/env" <<EOF
export CODED_E2E_REAL_NODE="$NODE"
export CODED_E2E_NODE_DIR="$N"
EOF
  trap - EXIT INT TERM
  log "node $NODE up in $((SECONDS - t0))s (pods on $POD_CIDR, DNS and kubelet on $NODE_IP)"
}


node_import() { # ARCHIVE...
  local a
  for a in "$@"; do
    [[ -s $a ]] || die "no image archive at $a"
    ctr_ images import --no-unpack=false "$a" >/dev/null || die "ctr images import $a failed"
  done
}

# ---- down ---------------------------------------------------------------------------
# Safe to run twice, or with nothing up; works from whatever a failed `up` left.
down_node() {
  [[ -d $N || -e $LOCK ]] || return 0
  local t0=$SECONDS
  # No new pods: the kubelet and kube-proxy first, then every container, by
  # cgroup (pause included), then containerd and its shims.
  if [[ -d $DIR/pids ]]; then stop 10 kubelet kube-proxy coredns apiserver-proxy; fi
  kill_cgroup
  if [[ -d $DIR/pids ]]; then stop 10 containerd; fi
  local pid
  for pid in $(pgrep -f "containerd-shim.* -address $SOCK" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  kill_cgroup
  unmount_under "$N"
  remove_cgroup
  # kube-proxy's rules, then the kubelet's canaries and ours
  if [[ -x ${BIN:-}/kube-proxy ]]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  remove_chains
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  if [[ -f $N/ip_forward.orig ]]; then cat "$N/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward; fi
  local l
  for l in /var/log/containers/*.log; do
    [[ -L $l && $(readlink "$l") == "$N"/* ]] && rm -f "$l"
  done
  rm -rf "$N"
  if [[ -f $DIR/env ]]; then sed -i '/^export CODED_E2E_REAL_NODE=/d; /^export CODED_E2E_NODE_DIR=/d' "$DIR/env"; fi
  if [[ -e $LOCK && $(<"$LOCK") == "$DIR" ]]; then rm -f "$LOCK"; fi
  log "node down in $((SECONDS - t0))s"
}

kill_cgroup() { # every process in the node's cgroup subtree
  local f pid
  for f in $(find /sys/fs/cgroup/pids/$CGROUP /sys/fs/cgroup/memory/$CGROUP -name cgroup.procs 2>/dev/null); do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
  done
  sleep 0.2
}

unmount_under() { # DIR: every mount point at or below DIR, deepest first
  local m i
  for i in 1 2 3; do
    mapfile -t ms < <(awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#ms[@]})) || return 0
    for m in "${ms[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
}

remove_cgroup() { # the /coded-e2e subtree of every controller, leaves first
  local ctl d
  for ctl in /sys/fs/cgroup/*/; do
    [[ -d $ctl$CGROUP ]] || continue
    while read -r d; do rmdir "$d" 2>/dev/null || true; done < <(find "$ctl$CGROUP" -depth -type d)
  done
}

remove_chains() { # KUBE-* (kube-proxy, kubelet) and CODED-E2E-*, with the rules that jump to them
  local t c
  iptables -w -D FORWARD -j CODED-E2E-FORWARD 2>/dev/null || true
  for t in filter nat mangle; do
    iptables -w -t "$t" -S 2>/dev/null | awk '$1 == "-A" && /-j (KUBE-|CODED-E2E-)/' | while read -r line; do
      # shellcheck disable=SC2086 # the rule's own words
      iptables -w -t "$t" ${line/-A/-D} 2>/dev/null || true
    done
    for c in $(iptables -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CODED-E2E-/) {print $2}'); do
      iptables -w -t "$t" -F "$c" 2>/dev/null || true
    done
    for c in $(iptables -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CODED-E2E-/) {print $2}'); do
      iptables -w -t "$t" -X "$c" 2>/dev/null || true
    done
  done
}

# ---- leftovers ------------------------------------------------------------------------
leftovers() {
  local found=0 what
  report() { [[ -z $2 ]] || { echo "left behind: $1: $2"; found=1; }; }
  what=$(pgrep -a -f "containerd-shim|/kubelet |/kube-proxy |/coredns |containerd --config $DIR|socat TCP-LISTEN:$API_RELAY_PORT" || true)
  report processes "$what"
  report mounts "$(awk -v d="$DIR/node" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo)"
  report bridge "$(ip -br link show "$BRIDGE" 2>/dev/null || true)"
  report "veth interfaces" "$(ip -br link show type veth 2>/dev/null || true)"
  report "Service route" "$(ip route show "$SERVICE_CIDR" 2>/dev/null || true)"
  report "network namespaces" "$(find /var/run/netns -name 'cni-*' 2>/dev/null || true)"
  report "iptables chains" "$(for t in filter nat mangle; do iptables -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CODED-E2E-/)'; done)"
  report cgroups "$(ls -d /sys/fs/cgroup/*/$CGROUP 2>/dev/null || true)"
  report lock "$(cat "$LOCK" 2>/dev/null || true)"
  ((found == 0)) && echo "node: nothing left behind"
  return "$found"
}

case ${1:-} in
  up) up ;;
  import) shift; BIN=$(bin_dir); node_import "$@" ;;
  down) BIN=$(bin_dir 2>/dev/null || true); down_node ;;
  leftovers) leftovers ;;
  *) echo "usage: $0 up|import ARCHIVE...|down|leftovers" >&2; exit 2 ;;
esac
