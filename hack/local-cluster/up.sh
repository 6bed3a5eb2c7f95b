#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine, built from source (build.sh):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (Debian), kubelet and
# kube-proxy (iptables mode), a CNI bridge network, and the network guard rules.
#
# Idempotent: if the cluster is already up and healthy it says so and exits 0; a half-up cluster
# is torn down (down.sh) and started again. The admin kubeconfig is printed at the end and copied
# to $CACHE/kubeconfig. Needs root. Tear down with down.sh (make cluster-down).
#
# Layout, addresses and VM-specific settings: see README.md next to this script.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

t0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
log() { echo "==> [$(elapsed)s] $*"; }
die() { echo "error: $*" >&2; echo "logs: $LOGS; tear down with: make cluster-down" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "up.sh needs root (network, mounts, containerd)" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$LOCK"
flock -n 9 || { echo "another up.sh or down.sh is running (lock $LOCK)" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. Binaries (cached) and Debian packages.
build=cached
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd; do
  [ -x "$BIN/$b" ] || build=cold
done
log "Kubernetes $K8S_VERSION binaries: $build"
[ "$build" = cached ] || log "cold build: about 15 min on 2 cores (13.5 min measured), then cached in $BIN"
"$LC_DIR/build.sh"

# package:command that proves it is installed
PACKAGES=(containerd:containerd runc:runc "containernetworking-plugins:$CNI_BIN_DIR/bridge"
  iptables:iptables nftables:nft conntrack:conntrack socat:socat busybox-static:/bin/busybox
  gcc:gcc libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a curl:curl jq:jq)
missing=()
for p in "${PACKAGES[@]}"; do
  pkg=${p%%:*} probe=${p#*:}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("$pkg"); else command -v "$probe" >/dev/null || missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
else
  log "Debian packages present (containerd $(containerd --version | awk '{print $3}'), runc, CNI plugins, iptables, nftables)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Already up? Half up?
healthy() {
  local d
  for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null || return 1; done
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$APISERVER/readyz" >/dev/null || return 1
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
if healthy; then
  cp "$ADMIN_KUBECONFIG" "$STABLE_KUBECONFIG"
  echo "==> the cluster is already up (node $NODE_NAME Ready); nothing to do"
  echo "    KUBECONFIG=$STABLE_KUBECONFIG   (also $ADMIN_KUBECONFIG)"
  exit 0
fi
if [ -d "$STATE" ] || ip link show "$NODE_IF" >/dev/null 2>&1 || ip link show "$BRIDGE" >/dev/null 2>&1 \
   || nft list table inet "$GUARD_TABLE" >/dev/null 2>&1 || [ -n "$(pids_using_state)" ]; then
  log "found a stopped or half-started cluster: cleaning it up first"
  PORTCULLIS_CLUSTER_LOCKED=1 "$LC_DIR/down.sh"
fi

# ---------------------------------------------------------------------------------------------
# 3. State directory (tmpfs) and a record of the host settings down.sh restores.
log "state directory $STATE (tmpfs, size limit $STATE_TMPFS_SIZE)"
paths_before=$(for p in "${HOST_PATHS[@]}"; do if [ -e "$p" ]; then echo "$p"; fi; done)
mkdir -p "$STATE"
mount -t tmpfs -o "size=$STATE_TMPFS_SIZE,mode=0700" portcullis-cluster "$STATE"
mkdir -m 0700 "$STATE/etcd"
mkdir -p "$PKI" "$KCFG" "$LOGS" "$PIDS" "$STATE/cni/net.d" "$STATE/cni/ipam" \
  "$STATE/containerd" "$STATE/kubelet" "$STATE/pod-logs" "$STATE/images"
{
  for s in "${SYSCTLS[@]}"; do
    if v=$(sysctl -n "$s" 2>/dev/null); then printf '%s=%s\n' "$s" "$v"; fi
  done
} > "$STATE/host-sysctls.conf"
nft list tables > "$STATE/host-nft-tables-before" 2>/dev/null || true
echo "$paths_before" > "$STATE/host-paths-before"

# ---------------------------------------------------------------------------------------------
# 4. Network: node IP on an interface of its own, routes that keep our ranges off eth0, guard rules.
# This kernel has no dummy driver (CONFIG_DUMMY unset: "Unknown device type"), so the node
# interface is a bridge without ports: local delivery to its address works, and whatever is routed
# into it is dropped, like a dummy.
log "network: $NODE_IF $NODE_IP, guard table inet $GUARD_TABLE (nothing of ours leaves via $UPLINK)"
ip link add "$NODE_IF" type bridge
ip link set "$NODE_IF" addrgenmode none   # no IPv6 link-local address
ip addr add "$NODE_IP/32" dev "$NODE_IF"
ip link set "$NODE_IF" up
# Un-DNATed Service traffic and pod IPs that are not on cni0 go into the node interface (dropped
# there) instead of following the default route out of eth0. The more specific cni0 route wins for
# real pods; a route (not a blackhole) keeps host connects to ClusterIPs working until DNAT.
ip route add "$SERVICE_CIDR" dev "$NODE_IF" src "$NODE_IP"
ip route add "$POD_CIDR" dev "$NODE_IF" src "$NODE_IP"
# §5.5 of the reference as one nftables table of our own: a DROP here is final whatever ACCEPTs
# kube-proxy's iptables chains issue, and removal is one command. Also keeps pods off etcd.
nft -f - <<EOF
table inet $GUARD_TABLE {
  set private_ranges { type ipv4_addr; flags interval; elements = { $POD_CIDR, $SERVICE_CIDR, $NODE_NET } }
  chain forward {
    type filter hook forward priority filter; policy accept;
    oifname "$UPLINK" ip saddr @private_ranges counter drop
    oifname "$UPLINK" ip daddr @private_ranges counter drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "$UPLINK" ip saddr @private_ranges counter drop
    oifname "$UPLINK" ip daddr @private_ranges counter drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$BRIDGE" ip daddr $NODE_IP tcp dport { 2379, 2380 } counter drop
  }
}
EOF

# ---------------------------------------------------------------------------------------------
# 5. PKI (one CA, client certificates for every component) and kubeconfigs. ECDSA P-256 keys (RSA
# key generation costs ~0.6 s each on a busy 2-core VM); RSA for the service-account signing key.
log "PKI and kubeconfigs"
(
  cd "$PKI"
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 365 \
    -subj "/CN=portcullis-local-ca" 2>/dev/null
  # the front-proxy CA signs the one client allowed to assert user headers (aggregated APIs)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout front-proxy-ca.key \
    -out front-proxy-ca.crt -days 365 -subj "/CN=portcullis-front-proxy-ca" 2>/dev/null
  # cert NAME SUBJECT EXTENSIONS [CA]
  cert() {
    local ca=${4:-ca}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%b' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -days 365 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
  server='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n'
  cert apiserver /CN=kube-apiserver "${server}subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP\n"
  cert kubelet-serving "/CN=$NODE_NAME" "${server}subjectAltName=DNS:$NODE_NAME,IP:$NODE_IP\n"
  cert admin "/O=system:masters/CN=portcullis-admin" "$client"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  cert kube-controller-manager /CN=system:kube-controller-manager "$client"
  cert kube-scheduler /CN=system:kube-scheduler "$client"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  cert kube-proxy /CN=system:kube-proxy "$client"
  cert front-proxy-client /CN=front-proxy-client "$client" front-proxy-ca
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
b64() { base64 -w0 < "$1"; }
for who in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do
  (umask 077; cat > "$KCFG/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: portcullis
  cluster: { server: "$APISERVER", certificate-authority-data: "$(b64 "$PKI/ca.crt")" }
users:
- name: $who
  user: { client-certificate-data: "$(b64 "$PKI/$who.crt")", client-key-data: "$(b64 "$PKI/$who.key")" }
contexts:
- name: portcullis
  context: { cluster: portcullis, user: $who }
current-context: portcullis
EOF
  )
done
# Pods must never get the host's resolver (10.255.255.53 is off the VM). An EMPTY file does not do
# it: containerd then copies the host's /etc/resolv.conf into the pod. The pod's own loopback
# refuses at once, so lookups fail fast.
echo "nameserver 127.0.0.1" > "$STATE/resolv.conf"

# ---------------------------------------------------------------------------------------------
# 6. Daemons.
# start NAME COMMAND...: run detached in its own session, log to LOGS/NAME.log, pidfile in PIDS.
start() {
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! > "$PIDS/$name.pid"
}
alive() { pid_of "$1" >/dev/null || die "$1 exited; see $LOGS/$1.log:
$(tail -n 30 "$LOGS/$1.log")"; }
V=${PORTCULLIS_CLUSTER_V:-1}
curl_admin() { curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }

log "etcd $ETCD_VERSION (data on tmpfs)"
start etcd "$BIN/etcd" --name=portcullis --data-dir="$STATE/etcd" \
  --listen-client-urls="http://$NODE_IP:2379" --advertise-client-urls="http://$NODE_IP:2379" \
  --listen-peer-urls="http://$NODE_IP:2380" --initial-advertise-peer-urls="http://$NODE_IP:2380" \
  --initial-cluster="portcullis=http://$NODE_IP:2380" --unsafe-no-fsync --log-level=warn
wait_for "etcd" 60 "$LOGS/etcd.log" curl -sf --max-time 2 "http://$NODE_IP:2379/health" || die "etcd did not start"

log "kube-apiserver"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="http://$NODE_IP:2379" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --allow-privileged=true --enable-admission-plugins=NodeRestriction \
  --profiling=false --v="$V"
wait_for "kube-apiserver /readyz" 120 "$LOGS/kube-apiserver.log" curl_admin "$APISERVER/readyz" \
  || die "kube-apiserver did not become ready"

log "kube-controller-manager and kube-scheduler"
k=$KCFG/kube-controller-manager.kubeconfig
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
  --bind-address="$NODE_IP" --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
  --controllers='*' --profiling=false --v="$V"
k=$KCFG/kube-scheduler.kubeconfig
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
  --bind-address="$NODE_IP" --leader-elect=false --profiling=false --v="$V"

log "containerd (restrict_oom_score_adj, cgroupfs, CNI from $CNI_BIN_DIR)"
C=$STATE/containerd
cat > "$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  restrict_oom_score_adj = true          # the VM has no CAP_SYS_RESOURCE
  netns_mounts_under_state_dir = true    # pod netns under $C/state, not /run/netns
  stream_server_address = "$NODE_IP"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false            # cgroupfs: no systemd on the VM
        Root = "$C/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
cat > "$STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$STATE/cni/ipam",
                "ranges": [[{ "subnet": "$NODE_POD_CIDR" }]], "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
start containerd containerd --config="$C/config.toml"
wait_for "containerd" 60 "$LOGS/containerd.log" ctr --address "$CONTAINERD_SOCK" version || die "containerd did not start"

log "images: $SANDBOX_IMAGE (static pause) and $SMOKE_IMAGE (busybox-static)"
pause=$CACHE/cluster-images/pause
if [ ! -x "$pause" ] || [ "$LC_DIR/pause.c" -nt "$pause" ]; then
  mkdir -p "$(dirname "$pause")"
  gcc -Os -static -o "$pause" "$LC_DIR/pause.c"
  strip "$pause"
fi
"$LC_DIR/import-image.sh" "$SANDBOX_IMAGE" "$pause"
echo "portcullis local cluster" > "$STATE/images/index.html"
"$LC_DIR/import-image.sh" -f "$STATE/images/index.html:/www/index.html:644" "$SMOKE_IMAGE" /bin/busybox

log "kubelet (node $NODE_NAME, cgroupfs, cgroup v1)"
cat > "$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs            # no systemd; containerd 1.6 has no RuntimeConfig RPC
failCgroupV1: false               # the VM is cgroup v1 (hybrid)
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
healthzBindAddress: $NODE_IP
readOnlyPort: 0
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization: { mode: Webhook }
resolvConf: $STATE/resolv.conf    # "nameserver 127.0.0.1": never the host's resolver
clusterDomain: cluster.local
clusterDNS: [127.0.0.1]           # no cluster DNS; ClusterFirst pods get the same dead-end nameserver
oomScoreAdj: 0                    # default -999 needs CAP_SYS_RESOURCE
maxOpenFiles: 20000               # the hard nofile limit; more needs CAP_SYS_RESOURCE
imageGCHighThresholdPercent: 100  # never garbage-collect our imported images
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%" }
serializeImagePulls: false
podLogsDir: $STATE/pod-logs
EOF
start kubelet "$BIN/kubelet" --config="$STATE/kubelet/config.yaml" \
  --kubeconfig="$KCFG/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v="$V"

log "kube-proxy (iptables mode)"
cat > "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: $KCFG/kube-proxy.kubeconfig }
hostnameOverride: $NODE_NAME
healthzBindAddress: $NODE_IP:10256
metricsBindAddress: $NODE_IP:10249
mode: iptables                    # no IPVS in this kernel
clusterCIDR: $POD_CIDR
nodePortAddresses: [primary]      # NodePorts on $NODE_IP only
iptables: { localhostNodePorts: false }
oomScoreAdj: 0
conntrack: { maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
EOF
start kube-proxy "$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v="$V"

# ---------------------------------------------------------------------------------------------
# 7. Node Ready, then a smoke pod answering on its pod IP and through a ClusterIP Service.
log "waiting for node $NODE_NAME to be Ready"
node_ready() { [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_for "node $NODE_NAME Ready" 180 "$LOGS/kubelet.log" node_ready || die "node did not become Ready"
for d in "${DAEMONS[@]}"; do alive "$d"; done
wait_for "kube-proxy healthz" 60 "$LOGS/kube-proxy.log" curl -sf --max-time 2 "http://$NODE_IP:10256/healthz" \
  || die "kube-proxy is not healthy"
wait_for "the default ServiceAccount" 60 "$LOGS/kube-controller-manager.log" kubectl get serviceaccount default \
  || die "no default ServiceAccount"

log "smoke test: busybox httpd pod"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: { name: portcullis-smoke, namespace: default, labels: { app: portcullis-smoke } }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: $SMOKE_IMAGE
    imagePullPolicy: Never
    command: ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: portcullis-smoke, namespace: default }
spec:
  selector: { app: portcullis-smoke }
  ports: [{ port: 80, targetPort: 8080 }]
EOF
kubectl wait --for=condition=Ready pod/portcullis-smoke --timeout=120s >/dev/null \
  || { kubectl describe pod portcullis-smoke >&2; die "smoke pod did not become Ready"; }
pod_ip=$(kubectl get pod portcullis-smoke -o jsonpath='{.status.podIP}')
svc_ip=$(kubectl get service portcullis-smoke -o jsonpath='{.spec.clusterIP}')
wait_for "http://$pod_ip:8080/ from the host" 20 "" curl -sf --max-time 2 "http://$pod_ip:8080/" \
  || die "the smoke pod does not answer on $pod_ip:8080"
wait_for "http://$svc_ip/ (ClusterIP via kube-proxy)" 30 "$LOGS/kube-proxy.log" curl -sf --max-time 2 "http://$svc_ip/" \
  || die "the smoke Service does not answer on $svc_ip:80"
log "smoke pod answered on $pod_ip:8080 and through Service $svc_ip:80; deleting it"
kubectl delete service portcullis-smoke >/dev/null
kubectl delete pod portcullis-smoke --wait=true --timeout=60s >/dev/null

cp "$ADMIN_KUBECONFIG" "$STABLE_KUBECONFIG"
chmod 600 "$STABLE_KUBECONFIG"
echo
echo "==> cluster up in $(elapsed)s (binaries: $build)"
echo "    Kubernetes $K8S_VERSION, node $NODE_NAME ($NODE_IP), pods $NODE_POD_CIDR, services $SERVICE_CIDR"
echo "    export KUBECONFIG=$STABLE_KUBECONFIG   (also $ADMIN_KUBECONFIG)"
echo "    kubectl: $BIN/kubectl;  images: $LC_DIR/import-image.sh NAME:TAG BINARY [ARGS]"
echo "    logs: $LOGS;  tear down: make cluster-down"
