#!/usr/bin/env bash
# Multi-core scaling: plaintext keep-alive throughput of Portcullis and nginx with 1, 2, 4, 8, …
# worker cores, next to direct-to-backend, so a run capped by the load generator or the backend
# shows. Each N gets its own CPUs: the proxy N, the load generator (wrk) N others, the backend
# (nginx returning a fixed 200) ceil(N/2) more. N goes up in powers of two, plus the largest N
# that still fits. On a machine too small for even N = 1 the load and the backend share one
# CPU and every row says so.
#
#   bench/scaling.sh [--bin DIR] [--seconds S] [--runs R] [--out FILE]
#   bench/scaling.sh --package DIR    # copy the binaries, their libraries and this script to DIR
#
# --package is for running on another machine: build here (cargo build --release), package,
# copy DIR over, then run `DIR/scaling.sh --bin DIR` there. In a package, the binaries come
# from DIR and start through DIR/lib's loader with DIR/lib's libraries (the C library too);
# otherwise from PATH (`make bench` installs them). Results: a table on stdout and JSON in --out (default bench/results/scaling-<date>.json
# in a checkout, ./scaling-<date>.json in a package).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="${here}/../target/release"
[ -x "${here}/portcullis-proxy" ] && bin="${here}"
seconds=10
runs=3
out=""
package=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --package) package="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

tool() { # the binary named $1: from the package folder when there, else PATH
  if [ -x "${bin}/$1" ]; then echo "${bin}/$1"; else command -v "$1" || { echo "missing $1" >&2; exit 1; }; fi
}

if [ -n "${package}" ]; then
  mkdir -p "${package}/lib"
  for name in portcullis-proxy nginx wrk; do
    path="$(tool "${name}")"
    # Without debug information: the package must stay small enough to copy (50 MB -> 10 MB).
    objcopy --strip-debug "${path}" "${package}/${name}"
    # Every shared library, the C library and the loader included, so the binaries run on a
    # machine whose C library is older than this one's (they are started through DIR/lib's
    # loader below).
    ldd "${path}" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | xargs -r -I{} cp -L {} "${package}/lib/"
  done
  cp "$0" "${package}/scaling.sh"
  echo "packaged into ${package} ($(du -sh "${package}" | cut -f1)): $(ls "${package}" | tr '\n' ' ')"
  exit 0
fi

# In a package, every binary starts through the package's own loader and libraries.
launcher=()
loader="$(ls "${bin}"/lib/ld-linux*.so* 2>/dev/null | head -n1 || true)"
[ -n "${loader}" ] && launcher=("${loader}" --library-path "${bin}/lib")
proxy_bin="$(tool portcullis-proxy)"
nginx_bin="$(tool nginx)"
wrk_bin="$(tool wrk)"
# A binary that cannot be loaded here (a missing library, a C library too old) fails now, with
# the loader's message, rather than as a port nothing listens on.
for name in proxy_bin nginx_bin wrk_bin; do
  if loaded="$("${launcher[@]}" "${!name}" -v 2>&1)"; [[ "${loaded}" == *"error while loading"* || "${loaded}" == *"not found"* ]]; then
    echo "${!name} does not start here: ${loaded}" >&2
    exit 1
  fi
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# CPUs this process may use, expanded from taskset's list ("0-3,8" -> 0 1 2 3 8).
cpus=()
IFS=',' read -ra ranges <<< "$(taskset -cp $$ | sed 's/.*: //')"
for range in "${ranges[@]}"; do
  if [[ "${range}" == *-* ]]; then
    for ((c = ${range%-*}; c <= ${range#*-}; c++)); do cpus+=("$c"); done
  else
    cpus+=("${range}")
  fi
done
total=${#cpus[@]}
# With SMT, the first hardware thread of every core first, then the second ones: N proxy
# cores are N physical cores (while N is at most the core count), not N/2 cores' two threads.
smt_rank() { # position of CPU $1 among its core's threads (0 without SMT information)
  local siblings="/sys/devices/system/cpu/cpu$1/topology/thread_siblings_list"
  [ -r "${siblings}" ] || { echo 0; return; }
  local first; first="$(sed 's/[,-].*//' "${siblings}")"
  [ "${first}" = "$1" ] && echo 0 || echo 1
}
mapfile -t cpus < <(for c in "${cpus[@]}"; do echo "$(smt_rank "$c") $c"; done | sort -k1,1n -k2,2n | cut -d' ' -f2)
threads_per_core="$(awk -F'[,-]' '{print NF}' /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null || echo 1)"
list() { local IFS=,; echo "$*"; } # CPUs $@ as a taskset list

work="$(mktemp -d /tmp/portcullis-scaling.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${work}"
}
trap cleanup EXIT

backend_port=18390
proxy_port=18391
nginx_port=18392

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

nginx_conf() { # $1 file, $2 body of the http block
  cat > "$1" <<EOF
worker_processes auto;
worker_cpu_affinity auto;
worker_rlimit_nofile 65536;
daemon off;
pid $1.pid;
error_log $1.error.log;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path ${work}/body;
  proxy_temp_path ${work}/proxy;
  fastcgi_temp_path ${work}/fastcgi;
  uwsgi_temp_path ${work}/uwsgi;
  scgi_temp_path ${work}/scgi;
  keepalive_requests 1000000;
$2
}
EOF
}

start() { # $1 CPU list, then the command; records the pid
  taskset -c "$1" "${launcher[@]}" "${@:2}" > "${work}/$(basename "$2").log" 2>&1 &
  pids+=("$!")
  last_pid=$!
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

requests_per_s() { # $1 load CPUs, $2 threads, $3 connections, $4 URL, $5 seconds (--seconds)
  taskset -c "$1" "${launcher[@]}" "${wrk_bin}" -t"$2" -c"$3" -d"${5:-${seconds}}s" -H "Host: bench.local" "$4" \
    | awk '/^Requests\/sec:/ {print $2}'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# The N values to measure.
plan=()
fits() { local n=$1; echo $((2 * n + (n + 1) / 2 <= total)); }
for ((n = 1; $(fits $n) == 1; n *= 2)); do plan+=("$n"); done
largest=0
for ((n = 1; $(fits $n) == 1; n++)); do largest=$n; done
if ((largest > 0)) && [ "${plan[-1]:-0}" != "${largest}" ]; then plan+=("${largest}"); fi
shared=0
if ((${#plan[@]} == 0)); then
  shared=1
  plan=(1)
  echo "note: ${total} CPUs cannot give the proxy, the load generator and the backend their own" \
    "CPUs even at N = 1; measuring N = 1 with wrk and the backend sharing CPU ${cpus[1]:-${cpus[0]}}." \
    "Direct shows the cap; this is not a scaling result." >&2
fi

echo "machine: ${total} CPUs, ${threads_per_core} thread(s) per core ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), kernel $(uname -r); CPU order: ${cpus[*]}"
echo "plan: N = ${plan[*]}; ${runs} runs x ${seconds} s each, interleaved direct, portcullis, nginx"
printf '%4s %10s %12s %12s %12s %9s %9s %9s\n' N cpus direct portcullis nginx "p/N=1" "n/N=1" "p/nginx"

rows=()
base_p="" base_n=""
for n in "${plan[@]}"; do
  proxy_cpus=("${cpus[@]:0:n}")
  load_cpus=("${cpus[@]:n:n}")
  backend_count=$(((n + 1) / 2))
  backend_cpus=("${cpus[@]:2*n:backend_count}")
  if ((shared)); then
    load_cpus=("${cpus[1]:-${cpus[0]}}")
    backend_cpus=("${load_cpus[@]}")
  fi
  pl="$(list "${proxy_cpus[@]}")" ll="$(list "${load_cpus[@]}")" bl="$(list "${backend_cpus[@]}")"
  connections=$((64 * n))

  nginx_conf "${work}/backend.conf" "  server { listen 127.0.0.1:${backend_port} backlog=4096; location / { return 200 \"ok\\n\"; } }"
  start "${bl}" "${nginx_bin}" -c "${work}/backend.conf"
  backend_pid=${last_pid}
  wait_port "${backend_port}"

  cat > "${work}/portcullis.json" <<EOF
{"schema_version": 1, "generation": 1,
 "ports": [{"port": ${proxy_port}, "protocol": "HTTP", "listeners": [{"name": "http", "routes": [
   {"name": "bench/route", "hostnames": ["bench.local"], "rules": [{
     "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
     "backends": [{"weight": 1, "target": {"backend": "bench/backend"}}]}]}]}]}],
 "backends": [{"name": "bench/backend", "endpoints": ["127.0.0.1:${backend_port}"]}],
 "settings": {"max_connections_per_core": 30000}}
EOF
  nginx_conf "${work}/nginx.conf" "  upstream be { server 127.0.0.1:${backend_port}; keepalive $((64 * n)); }
  server { listen 127.0.0.1:${nginx_port} backlog=4096; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

  direct=() portcullis=() nginx=()
  for ((r = 0; r < runs; r++)); do
    direct+=("$(requests_per_s "${ll}" "${#load_cpus[@]}" "${connections}" "http://127.0.0.1:${backend_port}/")")

    start "${pl}" "${proxy_bin}" --config "${work}/portcullis.json" --cpus "${pl}" \
      --bind-address 127.0.0.1 --admin-address 127.0.0.1:18399 --log-level warn
    proxy_pid=${last_pid}
    wait_port "${proxy_port}"
    requests_per_s "${ll}" "${#load_cpus[@]}" "${connections}" "http://127.0.0.1:${proxy_port}/" 2 >/dev/null # warm-up
    portcullis+=("$(requests_per_s "${ll}" "${#load_cpus[@]}" "${connections}" "http://127.0.0.1:${proxy_port}/")")
    stop "${proxy_pid}"

    start "${pl}" "${nginx_bin}" -c "${work}/nginx.conf"
    nginx_pid=${last_pid}
    wait_port "${nginx_port}"
    requests_per_s "${ll}" "${#load_cpus[@]}" "${connections}" "http://127.0.0.1:${nginx_port}/" 2 >/dev/null
    nginx+=("$(requests_per_s "${ll}" "${#load_cpus[@]}" "${connections}" "http://127.0.0.1:${nginx_port}/")")
    stop "${nginx_pid}"
  done
  stop "${backend_pid}"

  d="$(median "${direct[@]}")" p="$(median "${portcullis[@]}")" x="$(median "${nginx[@]}")"
  [ -z "${base_p}" ] && base_p="${p}" base_n="${x}"
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
  printf '%4s %10s %12.0f %12.0f %12.0f %9s %9s %9s\n' "${n}" "${pl}" "${d}" "${p}" "${x}" \
    "$(ratio "${p}" "${base_p}")" "$(ratio "${x}" "${base_n}")" "$(ratio "${p}" "${x}")"
  rows+=("{\"cores\": ${n}, \"proxy_cpus\": \"${pl}\", \"load_cpus\": \"${ll}\", \"backend_cpus\": \"${bl}\", \"shared_load_and_backend\": $([ "${shared}" = 1 ] && echo true || echo false), \"direct_rps\": ${d}, \"portcullis_rps\": ${p}, \"nginx_rps\": ${x}, \"portcullis_vs_1_core\": $(ratio "${p}" "${base_p}"), \"nginx_vs_1_core\": $(ratio "${x}" "${base_n}"), \"portcullis_vs_nginx\": $(ratio "${p}" "${x}"), \"runs\": {\"direct\": [$(list "${direct[@]}")], \"portcullis\": [$(list "${portcullis[@]}")], \"nginx\": [$(list "${nginx[@]}")]}}")
done

echo "targets: portcullis >= 0.9 x N x its 1-core figure, and >= nginx at every N;" \
  "a row whose direct figure is not well above both is capped by load or backend"
stamp="$(date -u +%Y-%m-%d)"
if [ -z "${out}" ]; then
  if [ -d "${here}/results" ]; then out="${here}/results/scaling-${stamp}.json"; else out="./scaling-${stamp}.json"; fi
fi
{
  echo "{\"date\": \"$(date -u +%FT%TZ)\", \"command\": \"$0 --seconds ${seconds} --runs ${runs}\","
  echo " \"machine\": {\"cpus\": ${total}, \"threads_per_core\": ${threads_per_core}, \"cpu_model\": \"$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')\", \"kernel\": \"$(uname -r)\"},"
  echo " \"note\": \"$([ "${shared}" = 1 ] && echo "too few CPUs: load and backend shared one CPU; not a scaling result" || echo "own CPUs for proxy, load and backend at every N")\","
  echo " \"rows\": ["
  (IFS=$',\n'; echo "  ${rows[*]}")
  echo " ]}"
} > "${out}"
echo "written: ${out}"
