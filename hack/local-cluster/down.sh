#!/usr/bin/env bash
# Stops the local cluster started by up.sh and puts the machine back as it was: every daemon, the
# containers, shims and pod processes, pod network namespaces and mounts, cni0 and its veths, the
# node interface, kube-proxy's, the kubelet's and the CNI plugins' iptables chains, our nft
# guard table, the kernel settings the cluster changed, and the state directory. The logs are kept
# in $CACHE/cluster-logs. Safe to run when nothing is up; best effort (goes on after errors).
set -uo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "down.sh needs root" >&2; exit 1; }
if [ -z "${PORTCULLIS_CLUSTER_LOCKED:-}" ]; then
  mkdir -p "$CACHE"
  exec 9>"$LOCK"
  flock -n 9 || { echo "another up.sh or down.sh is running (lock $LOCK)" >&2; exit 1; }
fi
t0=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '==> [%d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
did=()   # what was actually cleaned, for the summary
# Which HOST_PATHS existed before up.sh ("unknown" when there is no record).
paths_before=unknown
[ -f "$STATE/host-paths-before" ] && paths_before=$(cat "$STATE/host-paths-before")
created_by_us() { [ "$paths_before" != unknown ] && ! grep -qx "$1" <<<"$paths_before"; }

# kill_pids TIMEOUT_S PID...: SIGTERM, wait, then SIGKILL whatever is left.
kill_pids() {
  local timeout=$1; shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  local deadline=$(( $(date +%s) + timeout )) p left
  while :; do
    left=()
    for p in "$@"; do [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && return 0
    [ "$(date +%s)" -ge "$deadline" ] && break
    sleep 0.2
  done
  kill -KILL "${left[@]}" 2>/dev/null
  sleep 0.2
}

stop_daemon() {
  local name=$1 timeout=${2:-10} pid
  if pid=$(pid_of "$name"); then
    log "stopping $name (pid $pid)"
    kill_pids "$timeout" "$pid"
    did+=("$name")
  fi
  rm -f "$PIDS/$name.pid"
}

# ---------------------------------------------------------------------------------------------
# 1. Node agents first, so nothing restarts containers behind our back.
stop_daemon kube-proxy
stop_daemon kubelet

# 2. Containers: kill every task through containerd while it still runs, then containerd itself.
if [ -S "$CONTAINERD_SOCK" ] && pid_of containerd >/dev/null; then
  for ns in $(ctr --address "$CONTAINERD_SOCK" namespaces ls -q 2>/dev/null); do
    c() { timeout 10 ctr --address "$CONTAINERD_SOCK" -n "$ns" "$@"; }
    tasks=$(c tasks ls -q 2>/dev/null)
    if [ -n "$tasks" ]; then
      log "killing $(echo "$tasks" | wc -w) container task(s) in containerd namespace $ns"
      for t in $tasks; do c tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1; done
      for t in $tasks; do c tasks delete -f "$t" >/dev/null 2>&1; done
      did+=("containers")
    fi
    for ctn in $(c containers ls -q 2>/dev/null); do c containers delete "$ctn" >/dev/null 2>&1; done
  done
fi
stop_daemon containerd 15

# 3. Control plane, newest first.
stop_daemon kube-scheduler
stop_daemon kube-controller-manager
stop_daemon kube-apiserver 15
stop_daemon etcd

# 4. Anything of ours still running: shims, daemons whose pidfile is gone, pod processes.
leftover=$(pids_using_state)
if [ -n "$leftover" ]; then
  log "stopping leftover processes: $(for p in $leftover; do printf '%s(%s) ' "$p" "$(exe_name "$p")"; done)"
  # shellcheck disable=SC2086
  kill_pids 5 $leftover
  did+=("leftover processes")
fi
for root in $(cgroup_roots); do
  for _ in 1 2 3 4 5; do
    pids=$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    log "killing pod processes left in $root: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.3
  done
done

# 5. cgroups the kubelet and runc created (kubepods/... in every v1 hierarchy).
root=
for root in $(cgroup_roots); do
  find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
  [ -d "$root" ] && echo "warning: could not remove every cgroup under $root" >&2
done
[ -n "$root" ] && did+=("cgroups")

# 6. Packet filtering: kube-proxy's own cleanup, then any KUBE-* / CNI-* chain still there.
if command -v iptables >/dev/null; then
  if [ -x "$BIN/kube-proxy" ] && [[ $(iptables-save 2>/dev/null) == *":KUBE-"* ]]; then
    log "kube-proxy --cleanup"
    timeout 60 "$BIN/kube-proxy" --cleanup --v=0 >/dev/null 2>&1
    did+=("kube-proxy rules")
  fi
  for ipt in iptables ip6tables; do
    for t in raw mangle nat filter; do
      ours=$($ipt -t $t -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}')
      for chain in $($ipt -t $t -S 2>/dev/null | awk '($1 == "-P" || $1 == "-N") && $2 !~ /^(KUBE-|CNI-)/ {print $2}'); do
        for n in $($ipt -t $t -L "$chain" -n --line-numbers 2>/dev/null | awk 'NR > 2 && $2 ~ /^(KUBE-|CNI-)/ {print $1}' | sort -rn); do
          $ipt -t $t -D "$chain" "$n"
        done
      done
      [ -n "$ours" ] || continue
      log "removing $ipt $t chains: ${ours//$'\n'/ }"
      for chain in $ours; do $ipt -t $t -F "$chain"; done
      for chain in $ours; do $ipt -t $t -X "$chain"; done
      did+=("$ipt $t chains")
    done
  done
fi
if command -v nft >/dev/null; then
  for tbl in "inet $GUARD_TABLE" "ip kube-proxy" "ip6 kube-proxy"; do
    # shellcheck disable=SC2086
    if nft list table $tbl >/dev/null 2>&1; then
      log "deleting nft table $tbl"; nft delete table $tbl; did+=("nft $tbl")
    fi
  done
  # Tables that iptables-nft created for the cluster (none existed before up.sh) and that are now
  # empty: drop them too, so `nft list ruleset` reads as before. Non-empty tables are left alone.
  if [ -f "$STATE/host-nft-tables-before" ] && command -v jq >/dev/null; then
    nft list tables 2>/dev/null | while read -r _ fam name; do
      grep -qx "table $fam $name" "$STATE/host-nft-tables-before" && continue
      j=$(nft -j list table "$fam" "$name" 2>/dev/null) || continue
      if [ "$(echo "$j" | jq '[.nftables[] | select(.rule or .set or .map or (.chain.policy // "accept") != "accept")] | length')" = 0 ]; then
        nft delete table "$fam" "$name" && echo "==> deleted empty nft table $fam $name (created by iptables for the cluster)"
      fi
    done
  fi
fi

# 7. Mounts under the state directory (pod volumes, netns, overlay rootfs), deepest first.
mapfile -t mounts < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
if [ ${#mounts[@]} -gt 0 ]; then
  log "unmounting ${#mounts[@]} mount(s) under $STATE"
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  did+=("mounts")
fi

# 8. Interfaces: veths on the bridge, the bridge, the node interface (and its routes).
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null
  done
  log "deleting $BRIDGE"; ip link del "$BRIDGE"; did+=("$BRIDGE")
fi
if ip link show "$NODE_IF" >/dev/null 2>&1; then
  log "deleting $NODE_IF"; ip link del "$NODE_IF"; did+=("$NODE_IF")
fi

# 9. Connection tracking entries of our ranges.
if command -v conntrack >/dev/null; then
  for r in "$POD_CIDR" "$SERVICE_CIDR" "$NODE_NET"; do
    addr=${r%/*} bits=${r#*/}
    mask=$(( 0xffffffff << (32 - bits) & 0xffffffff ))
    mask=$(printf '%d.%d.%d.%d' $((mask >> 24 & 255)) $((mask >> 16 & 255)) $((mask >> 8 & 255)) $((mask & 255)))
    conntrack -D --orig-src "$addr" --mask-src "$mask" >/dev/null 2>&1
    conntrack -D --orig-dst "$addr" --mask-dst "$mask" >/dev/null 2>&1
  done
fi

# 10. Kernel settings the kubelet, kube-proxy and the bridge plugin changed.
if [ -f "$STATE/host-sysctls.conf" ]; then
  changed=()
  while IFS='=' read -r k v; do
    [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] && continue
    sysctl -q -w "$k=$v" && changed+=("$k=$v")
  done < "$STATE/host-sysctls.conf"
  [ ${#changed[@]} -gt 0 ] && log "restored sysctls: ${changed[*]}"
fi

# 11. Host paths containerd, libcni and the kubelet create outside STATE.
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null
find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null
for p in "${HOST_PATHS[@]}"; do
  if [ ! -e "$p" ] || [ "$p" = /run/mount ]; then continue; fi
  # created by this cluster: whatever is left in it is ours (shim sockets, CNI cache, kubelet socket)
  created_by_us "$p" && rm -rf "$p"
done

# 12. The state directory (a tmpfs) and the kubeconfig copy; keep the logs.
if [ -d "$STATE" ]; then
  if [ -d "$LOGS" ]; then
    rm -rf "$LAST_LOGS" && mkdir -p "$LAST_LOGS" && cp -a "$LOGS/." "$LAST_LOGS/" 2>/dev/null
  fi
  while mountpoint -q "$STATE"; do umount "$STATE" 2>/dev/null || umount -l "$STATE"; done
  rm -rf "$STATE"
  did+=("state directory")
fi
# mount(8) keeps its utab lock in /run/mount (recreated by every umount above): remove it if it is
# empty and was not there before up.sh.
created_by_us /run/mount && rmdir /run/mount 2>/dev/null
rm -f "$STABLE_KUBECONFIG"

# 13. Report what (if anything) is still there.
problems=()
[ -n "$(pids_using_state)" ] && problems+=("processes: $(pids_using_state | tr '\n' ' ')")
for i in "$BRIDGE" "$NODE_IF"; do ip link show "$i" >/dev/null 2>&1 && problems+=("interface $i"); done
[ -n "$(cgroup_roots)" ] && problems+=("cgroups: $(cgroup_roots | tr '\n' ' ')")
if command -v iptables-save >/dev/null && [[ $({ iptables-save; ip6tables-save; } 2>/dev/null) =~ (^|$'\n'):(KUBE|CNI)- ]]; then
  problems+=("iptables chains")
fi
if [ ${#problems[@]} -gt 0 ]; then
  echo "==> cluster down, but left behind: ${problems[*]}" >&2
  exit 1
fi
if [ ${#did[@]} -eq 0 ]; then
  echo "==> nothing to clean up: the local cluster is not running"
else
  echo "==> cluster down in $(( ($(date +%s%N) - t0) / 1000000 )) ms (cleaned: $(printf '%s, ' "${did[@]}" | sed 's/, $//')); logs kept in $LAST_LOGS"
fi
