# Shared settings and helpers for up.sh, down.sh and import-image.sh. Source it; don't run it.
# shellcheck shell=bash disable=SC2034

LC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$LC_DIR/versions.env"

BIN=$CACHE/k8s-$K8S_VERSION/bin

# Everything the running cluster owns lives under STATE: a tmpfs mounted by up.sh (etcd data, PKI,
# kubeconfigs, containerd root and state, kubelet root, CNI state, logs, pidfiles). down.sh unmounts it.
STATE=${PORTCULLIS_CLUSTER_STATE:-/run/portcullis-cluster}
STATE_TMPFS_SIZE=${PORTCULLIS_CLUSTER_TMPFS_SIZE:-8g}
PKI=$STATE/pki
KCFG=$STATE/kubeconfig
ADMIN_KUBECONFIG=$KCFG/admin.kubeconfig
STABLE_KUBECONFIG=$CACHE/kubeconfig   # the stable path tests use (a copy of ADMIN_KUBECONFIG)
LOGS=$STATE/logs
PIDS=$STATE/run
CONTAINERD_SOCK=$STATE/containerd/containerd.sock
LOCK=$CACHE/cluster.lock
LAST_LOGS=$CACHE/cluster-logs        # down.sh copies the logs here before removing STATE

# Network: every listener binds the node IP on its own interface (a portless bridge: no dummy driver), so nothing of ours sits on
# loopback (where other tests pick ports) and nothing needs eth0.
NODE_NAME=portcullis-node
NODE_IF=portcullis0
NODE_IP=10.250.0.1
NODE_NET=10.250.0.0/24
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
BRIDGE=cni0
# The interface our private ranges must never leave through: the default route's (eth0 on the VMs).
UPLINK=${PORTCULLIS_CLUSTER_UPLINK:-$(ip -4 route show default 2>/dev/null | awk '{print $5; exit}')}
UPLINK=${UPLINK:-eth0}
CNI_NETWORK=portcullis
GUARD_TABLE=portcullis_guard          # nft table: inet portcullis_guard
APISERVER=https://$NODE_IP:6443
CNI_BIN_DIR=/usr/lib/cni              # Debian's containernetworking-plugins
SANDBOX_IMAGE=registry.k8s.io/pause:3.10
SMOKE_IMAGE=example.test/portcullis/busybox:1.35

# Daemons in start order; down.sh stops them in reverse.
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

# Kernel settings the kubelet, kube-proxy or the CNI bridge plugin may change; up.sh records them and
# down.sh puts them back.
SYSCTLS=(
  net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
  kernel.panic
  kernel.panic_on_oops
  vm.overcommit_memory
  vm.panic_on_oom
  kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes
)

# Host paths outside STATE that containerd (shim sockets), libcni (result cache), the kubelet
# (device-plugin socket, container log symlinks) and mount(8) (/run/mount) create whatever the
# configuration says. down.sh removes the ones that did not exist before up.sh.
HOST_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods /run/mount)

kubectl() { "$BIN/kubectl" --kubeconfig="$ADMIN_KUBECONFIG" "$@"; }
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# exe_name PID: the file name of PID's executable ("" when gone).
exe_name() { local e; e=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0; e=${e% (deleted)}; echo "${e##*/}"; }

# pid_of NAME: the pid in NAME's pidfile if that process is alive and still runs the NAME binary.
pid_of() {
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ "$(exe_name "$pid")" = "$1" ] || return 1
  echo "$pid"
}

# pids_using_state: processes running one of our daemons (or a containerd shim) whose command line
# mentions STATE -- a fallback for when pidfiles are gone. Nothing else is ever matched.
pids_using_state() {
  local p exe
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    exe=$(exe_name "$p")
    case " ${DAEMONS[*]} containerd-shim-runc-v2 " in *" $exe "*) ;; *) continue ;; esac
    [[ $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) == *"$STATE/"* ]] && echo "$p"
  done
  return 0
}

# wait_for DESCRIPTION TIMEOUT_S LOGFILE COMMAND...: retry COMMAND every 0.5 s; on timeout, show the log.
wait_for() {
  local what=$1 timeout=$2 logf=$3; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${timeout}s waiting for $what" >&2
      if [ -n "$logf" ] && [ -f "$logf" ]; then echo "--- last lines of $logf:" >&2; tail -n 40 "$logf" >&2; fi
      return 1
    fi
    sleep 0.5
  done
}

# The cgroup v1 hierarchies the kubelet creates its "kubepods" tree in.
cgroup_roots() {
  local d
  for d in /sys/fs/cgroup/*; do
    [ -d "$d/kubepods" ] && echo "$d/kubepods"
  done
  return 0
}
