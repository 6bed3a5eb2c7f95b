#!/usr/bin/env python3
"""Portcullis benchmark: the proxy against nginx, haproxy and direct-to-backend, side by side.

Method (see bench/README.md): the proxy under test runs alone on CPU 1; the load generator and
the backend share CPU 0. Every system serves the same route (Host bench.local, path prefix /,
two weighted backends 90/10, one response header added). Systems are measured interleaved
(direct, portcullis, nginx, haproxy, repeat) and each metric is the median over the runs.
The primary figure is proxy CPU time per request, read from /proc/<pid>/stat, because on two
cores closed-loop req/s measures the load generator as much as the proxy.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import ssl
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")

BACKENDS = [("127.0.0.1", 18090, "a", 90), ("127.0.0.2", 18090, "b", 10)]
PLAIN_PORT = {"portcullis": 18101, "nginx": 18102, "haproxy": 18103}
TLS_PORT = {"portcullis": 18201, "nginx": 18202, "haproxy": 18203}
# The handshake scenarios' port: the same HTTPS route, but every system refuses session
# resumption there, so each connection is a full handshake (wrk resumes its session on every
# reconnection where it may). TLS_PORT keeps each system's default, resumption on.
HANDSHAKE_PORT = {"portcullis": 18301, "nginx": 18302, "haproxy": 18303}
ADMIN_PORT = 18199
# oha (open loop at a fixed rate, corrects coordinated omission); hack/ensure-tools.sh bench
# installs it here with cargo.
OHA = os.path.expanduser("~/.cache/portcullis/tools/bin/oha")
# oha on the system OpenSSL, for the handshake scenario: it offers what wrk offers (X25519,
# TLS_AES_256_GCM_SHA384 first), where a rustls client would offer Portcullis alone a
# post-quantum hybrid key exchange the other systems' OpenSSL 3.0 lacks.
OHA_OPENSSL = os.path.expanduser("~/.cache/portcullis/tools/oha-openssl/bin/oha")
PROXY_CPU = "1"
LOAD_CPU = "0"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def wait_port(port, host="127.0.0.1", timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), which
    count for the process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def minor_faults(pid):
    """Minor page faults of a process and all its threads so far."""
    return int(stat_fields(pid)[7])


def ab_arguments(rounds):
    """The arguments every A/B script takes: two build directories and the number of rounds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", required=True, help="directory with the first portcullis-proxy")
    parser.add_argument("--b", required=True, help="directory with the second portcullis-proxy")
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def alternate_builds(builds, rounds, measure):
    """A/B helper: each round starts each (name, bin_dir) build alone with the bench config
    and backend, calls measure(system, round_index, name) and stops it, interleaved A B A B."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    work = tempfile.mkdtemp(prefix="bench-ab.")
    cert, key = ecdsa_certificate(work)
    backend = start_backend(work)
    try:
        for round_index in range(rounds):
            for name, bin_dir in builds:
                system = start_portcullis(work, bin_dir, cert, key)
                try:
                    measure(system, round_index, name)
                finally:
                    system.stop()
                time.sleep(1)
    finally:
        # SIGTERM: nginx's master stops its worker too (SIGKILL would leave it running).
        backend.terminate()
        backend.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def cpu_seconds(pid):
    """(utime + stime, stime) of a process and all its threads: all its CPU time, and the
    part of it spent in the kernel."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[12]) / TICKS


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class System:
    """A started proxy (or the direct path) with the pids whose CPU counts as 'the proxy'."""

    def __init__(self, name, procs, plain_port, tls_port, handshake_port):
        self.name = name
        self.procs = procs
        self.plain_port = plain_port
        self.tls_port = tls_port
        self.handshake_port = handshake_port

    def pids(self):
        return [p.pid for p in self.procs]

    def worker_pids(self):
        # nginx and haproxy do their work in a child; count the whole process tree.
        pids = []
        for pid in self.pids():
            pids.append(pid)
            try:
                out = run(["pgrep", "-P", str(pid)]).stdout.split()
                pids.extend(int(p) for p in out)
            except subprocess.CalledProcessError:
                pass
        return pids

    def cpu(self):
        """(CPU seconds, of which in the kernel) of the process tree so far."""
        times = [cpu_seconds(p) for p in self.worker_pids()]
        return sum(t for t, _ in times), sum(k for _, k in times)

    def rss(self):
        return sum(rss_kib(p) for p in self.worker_pids())

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def ecdsa_certificate(work):
    """A self-signed ECDSA P-256 certificate for bench.local in `work`: (cert path, key path)."""
    cert, key = f"{work}/cert.pem", f"{work}/key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.local",
         "-addext", "subjectAltName=DNS:bench.local"])
    return cert, key


def start_backend(work):
    conf = f"""
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid {work}/backend.pid;
error_log {work}/backend-error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
""" + "".join(
        f"  server {{ listen {ip}:{port}; location / {{ add_header x-backend {name}; return 200 \"ok\\n\"; }} }}\n"
        for ip, port, name, _ in BACKENDS
    ) + "}\n"
    write(f"{work}/backend.conf", conf)
    proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", f"{work}/backend.conf"])
    for ip, port, _, _ in BACKENDS:
        wait_port(port, ip)
    return proc


def portcullis_config(work, cert, key):
    with open(cert) as f:
        cert_pem = f.read()
    with open(key) as f:
        key_pem = f.read()

    def listener(name, certs):
        return {
            "name": name,
            "certificates": certs,
            "routes": [
                {
                    "name": "bench/route",
                    "hostnames": ["bench.local"],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "filters": [
                                {
                                    "type": "ResponseHeaderModifier",
                                    "add": [{"name": "x-proxy", "value": "bench"}],
                                }
                            ],
                            "backends": [
                                {"weight": w, "target": {"backend": f"bench/{n}"}}
                                for _, _, n, w in BACKENDS
                            ],
                        }
                    ],
                }
            ],
        }

    return {
        "schema_version": 1,
        "generation": 1,
        "ports": [
            {"port": PLAIN_PORT["portcullis"], "protocol": "HTTP", "listeners": [listener("http", [])]},
            {"port": TLS_PORT["portcullis"], "protocol": "HTTPS", "listeners": [listener("https", ["bench/cert"])]},
            {"port": HANDSHAKE_PORT["portcullis"], "protocol": "HTTPS",
             "listeners": [listener("full-handshakes", ["bench/cert"])], "session_resumption_disabled": True},
        ],
        "backends": [{"name": f"bench/{n}", "endpoints": [f"{ip}:{port}"]} for ip, port, n, _ in BACKENDS],
        "certificates": [{"name": "bench/cert", "cert_chain_pem": cert_pem, "private_key_pem": key_pem}],
        # Room for the idle-connection measurement (the default is 10 000 per core).
        "settings": {"max_connections_per_core": 30000},
    }


def with_extra_routes(config, routes, generation):
    """The bench config plus `routes` more HTTPRoutes (one host each) on the plaintext port."""
    config = json.loads(json.dumps(config))
    config["generation"] = generation
    extra = [
        {
            "name": f"bench/extra-{i}",
            "hostnames": [f"r{i}.bench.local"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/r{i}"}}],
                       "backends": [{"weight": 1, "target": {"backend": "bench/a"}}]}],
        }
        for i in range(routes)
    ]
    config["ports"][0]["listeners"][0]["routes"] = config["ports"][0]["listeners"][0]["routes"] + extra
    return config


def start_portcullis(work, bin_dir, cert, key):
    path = f"{work}/portcullis.json"
    write(path, json.dumps(portcullis_config(work, cert, key)))
    proc = subprocess.Popen(
        [
            f"{bin_dir}/portcullis-proxy",
            "--config", path,
            "--control-socket", f"{work}/control.sock",
            "--cpus", PROXY_CPU,
            "--bind-address", "127.0.0.1",
            "--admin-address", f"127.0.0.1:{ADMIN_PORT}",
            "--log-level", "warn",
        ],
    )
    wait_port(PLAIN_PORT["portcullis"])
    system = System("portcullis", [proc], PLAIN_PORT["portcullis"], TLS_PORT["portcullis"],
                    HANDSHAKE_PORT["portcullis"])
    system.work = work  # holds control.sock, for push_seconds
    return system


def start_nginx(work, cert, key):
    servers = "".join(f"    server {ip}:{port} weight={w};\n" for ip, port, _, w in BACKENDS)
    location = """    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header x-proxy bench;
    }
"""
    conf = f"""
worker_processes 1;
worker_cpu_affinity {"10" if PROXY_CPU == "1" else "01"};
worker_rlimit_nofile 65536;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream be {{
{servers}    keepalive 64;
  }}
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_protocols TLSv1.2 TLSv1.3;
  server {{
    listen 127.0.0.1:{PLAIN_PORT["nginx"]};
    listen 127.0.0.1:{TLS_PORT["nginx"]} ssl;
    server_name bench.local;
{location}  }}
  server {{
    listen 127.0.0.1:{HANDSHAKE_PORT["nginx"]} ssl;
    ssl_session_cache off;
    ssl_session_tickets off;
    server_name bench.local;
{location}  }}
}}
"""
    write(f"{work}/nginx.conf", conf)
    proc = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf"])
    wait_port(PLAIN_PORT["nginx"])
    return System("nginx", [proc], PLAIN_PORT["nginx"], TLS_PORT["nginx"], HANDSHAKE_PORT["nginx"])


def start_haproxy(work, cert, key):
    with open(f"{work}/haproxy.pem", "w") as f:
        f.write(open(cert).read() + open(key).read())
    servers = "".join(
        f"  server s{i} {ip}:{port} weight {w}\n" for i, (ip, port, _, w) in enumerate(BACKENDS)
    )
    conf = f"""
global
  nbthread 1
  cpu-map 1/1 {PROXY_CPU}
  maxconn 9500
  # No session cache (it is process-wide), so the handshake port's no-tls-tickets leaves it
  # nothing to resume with; the TLS port resumes with tickets.
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{PLAIN_PORT["haproxy"]}
  bind 127.0.0.1:{TLS_PORT["haproxy"]} ssl crt {work}/haproxy.pem
  bind 127.0.0.1:{HANDSHAKE_PORT["haproxy"]} ssl crt {work}/haproxy.pem no-tls-tickets
  http-response add-header x-proxy bench
  default_backend be
backend be
  balance roundrobin
  http-reuse always
{servers}"""
    write(f"{work}/haproxy.cfg", conf)
    proc = subprocess.Popen(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"])
    wait_port(PLAIN_PORT["haproxy"])
    return System("haproxy", [proc], PLAIN_PORT["haproxy"], TLS_PORT["haproxy"], HANDSHAKE_PORT["haproxy"])


def wrk(url, seconds, connections, extra=()):
    out = run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-H", "Host: bench.local", *extra, url]
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total_errors = int(errors.group(1)) if errors else 0
    if socket_errors:
        total_errors += sum(int(x) for x in socket_errors.groups())
    return int(m.group(1)) if m else 0, total_errors


def fixed_rate_latency(url, rate, seconds, connections):
    """Open-loop latency at `rate` requests/s (oha with latency correction: a request that
    should have been sent while the generator waited counts from its scheduled time, so a
    stall shows in the tail instead of hiding as coordinated omission). Returns
    (p50 ms, p99 ms, achieved req/s, failed requests)."""
    out = run(["taskset", "-c", LOAD_CPU, OHA, "-z", f"{seconds}s", "-q", str(rate),
               "-c", str(connections), "--latency-correction", "--no-tui", "--worker-threads", "1",
               "-H", "Host: bench.local", "--output-format", "json", url]).stdout
    result = json.loads(out)
    summary, percentiles = result.get("summary", {}), result.get("latencyPercentiles", {})
    codes = result.get("statusCodeDistribution", {})
    failed = sum(n for code, n in codes.items() if not str(code).startswith("2"))
    # oha reports requests still in flight when the duration ends as "aborted due to
    # deadline"; those were cut off by the generator, not failed by the system.
    failed += sum(n for error, n in result.get("errorDistribution", {}).items() if "deadline" not in error)

    def ms(v):
        return v * 1000 if isinstance(v, (int, float)) else None

    return ms(percentiles.get("p50")), ms(percentiles.get("p99")), summary.get("requestsPerSec"), failed


def resumed_sessions(port):
    """The TLS versions in which a client that kept a first connection's session resumes it on
    a second (openssl s_client -sess_out, then -sess_in): the handshake scenario is meant to
    measure full handshakes, so every system must refuse resumption. Also returns what a TLS 1.3
    OpenSSL client agrees with the system: cipher suite and key exchange."""
    request = b"GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n"
    resumed = []
    agreed = None
    with tempfile.TemporaryDirectory() as scratch:
        session = f"{scratch}/session.pem"
        for version in ["-tls1_3", "-tls1_2"]:
            outputs = []
            for flag in ["-sess_out", "-sess_in"]:
                # -ign_eof reads until the server closes, so TLS 1.3 tickets sent after the
                # handshake are taken in before the session is written.
                out = subprocess.run(
                    ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "bench.local",
                     version, "-ign_eof", flag, session],
                    input=request, capture_output=True, timeout=10).stdout.decode(errors="replace")
                outputs.append(out)
            if "Reused," in outputs[1]:
                resumed.append(version.lstrip("-"))
            if version == "-tls1_3":
                cipher = re.search(r"Cipher is (\S+)", outputs[0])
                key = re.search(r"Server Temp Key: ([^\n]+)", outputs[0])
                agreed = (f"{cipher.group(1) if cipher else '?'}, "
                          f"{key.group(1).strip() if key else '?'}")
    return resumed, agreed


def fixed_rate_handshakes(system, url, rate, seconds):
    """Full handshakes at `rate` per second, each on a new connection carrying one request
    (oha --disable-keepalive, open loop): (handshakes, failed, proxy CPU s, of which in the
    kernel, achieved per second). At a rate every system sustains, CPU per handshake compares
    the systems without favouring the one that runs closest to saturation."""
    before = system.cpu()
    out = run(["taskset", "-c", LOAD_CPU, OHA_OPENSSL, "-z", f"{seconds}s", "-q", str(rate), "-c", "20",
               "--disable-keepalive", "--insecure", "--no-tui", "--worker-threads", "1",
               "-H", "Host: bench.local", "--output-format", "json", url]).stdout
    after = system.cpu()
    result = json.loads(out)
    codes = result.get("statusCodeDistribution", {})
    succeeded = sum(n for code, n in codes.items() if str(code).startswith("2"))
    failed = sum(n for code, n in codes.items() if not str(code).startswith("2"))
    failed += sum(n for error, n in result.get("errorDistribution", {}).items() if "deadline" not in error)
    return succeeded, failed, after[0] - before[0], after[1] - before[1], succeeded / seconds


def measure(system, url, seconds, connections, extra=()):
    """(requests, errors, proxy CPU seconds, of which in the kernel) for one wrk run."""
    before = system.cpu() if system else (0.0, 0.0)
    requests, errors = wrk(url, seconds, connections, extra)
    after = system.cpu() if system else (0.0, 0.0)
    return requests, errors, after[0] - before[0], after[1] - before[1]


def open_idle(port, use_tls, count):
    """`count` client connections that each complete one request (TLS: after a full
    handshake) and then stay open, idle."""
    context = None
    if use_tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
    request = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    conns = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            # As browsers and curl do: with Nagle on, a request written right after the
            # handshake waits for the server's delayed ACK whenever the server sends nothing
            # after the client's Finished (no session ticket), and the connections open slowly.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(sock)
            if context:
                sock = context.wrap_socket(sock, server_hostname="bench.local")
                conns[-1] = sock
            sock.sendall(request)
            # The response is tiny ("ok\n" plus headers); one read holds it.
            if not sock.recv(4096):
                raise RuntimeError(f"port {port} closed an idle-test connection")
    except BaseException:
        for sock in conns:
            sock.close()
        raise
    return conns


def idle_kib_per_connection(system, count):
    """Proxy RSS growth per idle keep-alive connection, plaintext then TLS. The plaintext
    connections stay open while the TLS ones are measured, so memory they free cannot be
    reused and hide the TLS cost. Each kind opens in two halves: `kind` is the growth over all
    `count` (what the metric reports), `kind + "_marginal"` the growth over the second half
    alone, once the heap has grown for the connections' short busy phase (the first half
    pays for buffers that many connections hold at once before they go idle)."""
    held = []
    result = {}
    first = count // 2
    try:
        for kind, port in [("plain", system.plain_port), ("tls", system.tls_port)]:
            before = system.rss()
            held += open_idle(port, kind == "tls", first)
            time.sleep(2)
            middle = system.rss()
            held += open_idle(port, kind == "tls", count - first)
            time.sleep(2)
            after = system.rss()
            result[kind] = (after - before) / count
            result[kind + "_marginal"] = (after - middle) / (count - first)
    finally:
        for sock in held:
            sock.close()
    return result


def push_seconds(bin_dir, work, config):
    """Push -> ACK of one config as `portcullis push` times it, in seconds: from sending the
    frame to the proxy's ACK (send, checksum, decode, validate, build the tables, switch every
    core). Encoding the frame is timed apart and returned second: in a cluster the operator
    encodes a config once and the agent forwards its bytes, so no push waits for it. The
    command's own start and its reading of the JSON file are not part of a push."""
    path = f"{work}/push.json"
    write(path, json.dumps(config))
    return push_file_seconds(bin_dir, work, path)


def push_file_seconds(bin_dir, work, path):
    """push_seconds for a config already written to `path`."""
    out = run([f"{bin_dir}/portcullis", "push", "--socket", f"{work}/control.sock", "--config", path])
    timed = re.search(r"encoded in ([0-9.]+) ms; push -> ACK in ([0-9.]+) ms", out.stderr)
    if "ACK" not in out.stdout or "NACK" in out.stdout or not timed:
        raise RuntimeError(f"push refused: {out.stdout} {out.stderr}")
    return float(timed.group(2)) / 1000, float(timed.group(1)) / 1000


def swaps_under_load(bin_dir, work, base_config, swaps, seconds):
    """Failed requests while `swaps` configs (10 routes, then 11, alternating) are pushed
    during a `seconds`-long wrk run against the plaintext route."""
    result = {}

    def load():
        result["wrk"] = wrk(f"http://127.0.0.1:{PLAIN_PORT['portcullis']}/", seconds, 50)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1)
    pushed = 0
    deadline = time.monotonic() + seconds - 2
    generation = 1000
    while pushed < swaps and time.monotonic() < deadline:
        generation += 1
        push_seconds(bin_dir, work, with_extra_routes(base_config, 10 + pushed % 2, generation))
        pushed += 1
    thread.join()
    requests, errors = result["wrk"]
    return pushed, requests, errors


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_info():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "proxy_cpu": PROXY_CPU,
        "load_cpu": LOAD_CPU,
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=f"{ROOT}/target/release")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--out", default=f"{ROOT}/bench/results")
    parser.add_argument("--idle-connections", type=int, default=4500)
    args = parser.parse_args()

    # The idle connections, from this process and into each proxy. The hard limit here is
    # 20 000 descriptors (no CAP_SYS_RESOURCE), which caps haproxy (2 per connection) below
    # 10 000 connections: the idle test holds 4 500 plaintext + 4 500 TLS on every system.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    work = tempfile.mkdtemp(prefix="portcullis-bench.")
    os.makedirs("/var/lib/nginx", exist_ok=True)
    cert, key = ecdsa_certificate(work)

    procs = []
    systems = {}
    try:
        procs.append(start_backend(work))
        systems["portcullis"] = start_portcullis(work, args.bin, cert, key)
        systems["nginx"] = start_nginx(work, cert, key)
        systems["haproxy"] = start_haproxy(work, cert, key)
        order = ["direct", "portcullis", "nginx", "haproxy"]
        agreed = {}
        for name, system in systems.items():
            resumed, agreed[name] = resumed_sessions(system.handshake_port)
            if resumed:
                sys.exit(f"{name} resumed a TLS session ({', '.join(resumed)}): the handshake "
                         "scenario would not measure full handshakes")
            by_default, _ = resumed_sessions(system.tls_port)
            print(f"{name:10s} TLS 1.3 with an OpenSSL client: {agreed[name]}; the TLS port (defaults) "
                  f"resumes in: {', '.join(by_default) or 'none'}", flush=True)
        print("on the handshake port no system resumes TLS sessions (openssl s_client -sess_out/-sess_in, "
              "TLS 1.3 and 1.2)", flush=True)
        ip, port, _, _ = BACKENDS[0]
        direct_url = f"http://{ip}:{port}/"

        results = {name: {"plain": [], "one": [], "tls": [], "handshake": []} for name in order}
        for run_index in range(args.runs):
            for name in order:
                system = systems.get(name)
                # Warm-up: let pools fill and caches settle; not measured.
                url = direct_url if system is None else f"http://127.0.0.1:{system.plain_port}/"
                wrk(url, 2, args.connections)
                requests, errors, cpu, kernel = measure(system, url, args.seconds, args.connections)
                results[name]["plain"].append((requests, errors, cpu, kernel))
                print(f"run {run_index + 1} {name:10s} plaintext: {requests / args.seconds:9.0f} req/s, "
                      f"errors {errors}, proxy CPU {cpu:.2f}s ({kernel:.2f}s in the kernel)"
                      + (f", {cpu / requests * 1e6:.1f} us/req" if system and requests else ""), flush=True)
                # One connection, one request at a time: every request makes the proxy sleep
                # and wake twice (client, then backend), the cost a lightly loaded proxy pays.
                requests, errors, cpu, kernel = measure(system, url, args.seconds, 1)
                results[name]["one"].append((requests, errors, cpu, kernel))
                print(f"run {run_index + 1} {name:10s} one connection: {requests / args.seconds:9.0f} req/s, "
                      f"errors {errors}"
                      + (f", {cpu / requests * 1e6:.1f} us/req ({kernel / requests * 1e6:.1f} in the kernel)"
                         if system and requests else ""), flush=True)
                if system is None:
                    continue
                url = f"https://127.0.0.1:{system.tls_port}/"
                wrk(url, 2, args.connections)
                requests, errors, cpu, kernel = measure(system, url, args.seconds, args.connections)
                results[name]["tls"].append((requests, errors, cpu, kernel))
                print(f"run {run_index + 1} {name:10s} TLS keep-alive: {requests / args.seconds:9.0f} req/s, "
                      f"errors {errors}, {cpu / max(requests, 1) * 1e6:.1f} us/req", flush=True)
                url = f"https://127.0.0.1:{system.handshake_port}/"
                requests, errors, cpu, kernel = measure(system, url, args.seconds, 20, ("-H", "Connection: close"))
                results[name]["handshake"].append((requests, errors, cpu, kernel))
                print(f"run {run_index + 1} {name:10s} TLS full handshakes: {requests / args.seconds:9.0f} "
                      f"conn/s, errors {errors}, {requests / max(cpu, 1e-9):.0f} handshakes per CPU-second", flush=True)

        # Full handshakes at a fixed, lower rate: 40 % of the slowest system's closed-loop rate
        # above (within what oha on OpenSSL sustains on the shared core), the same offered load
        # for every system, interleaved. At this load per-wakeup costs weigh more.
        slowest = min(median([req / args.seconds for req, *_ in results[name]["handshake"]]) for name in systems)
        handshake_rate = max(200, int(slowest * 0.4 / 100) * 100)
        fixed_handshakes = {name: [] for name in systems}
        for run_index in range(args.runs):
            for name, system in systems.items():
                url = f"https://127.0.0.1:{system.handshake_port}/"
                handshakes_done, failed, cpu, kernel, achieved = fixed_rate_handshakes(
                    system, url, handshake_rate, args.seconds)
                fixed_handshakes[name].append((handshakes_done, failed, cpu, kernel, achieved))
                print(f"run {run_index + 1} {name:10s} TLS handshakes at {handshake_rate}/s: achieved "
                      f"{achieved:.0f}/s, failed {failed}, {cpu / max(handshakes_done, 1) * 1e6:.0f} us CPU "
                      f"({kernel / max(handshakes_done, 1) * 1e6:.0f} in the kernel) per handshake", flush=True)

        # Latency at a fixed rate: about half of nginx's closed-loop plaintext capacity measured
        # above, the same offered load for every system, interleaved like the CPU runs.
        nginx_capacity = median([req / args.seconds for req, *_ in results["nginx"]["plain"]])
        rate = max(1000, int(nginx_capacity * 0.5 / 100) * 100)
        latency = {name: [] for name in order}
        for run_index in range(args.runs):
            for name in order:
                system = systems.get(name)
                url = direct_url if system is None else f"http://127.0.0.1:{system.plain_port}/"
                before = system.cpu()[0] if system else 0.0
                p50, p99, achieved, failed = fixed_rate_latency(url, rate, args.seconds, args.connections)
                cpu = (system.cpu()[0] - before) if system else None
                latency[name].append((p50, p99, achieved, failed, cpu))
                print(f"run {run_index + 1} {name:10s} fixed rate {rate}/s: p50 {p50:.3f} ms, "
                      f"p99 {p99:.3f} ms, achieved {achieved:.0f}/s, failed {failed}"
                      + (f", proxy CPU {cpu / args.seconds * 100:.0f} % busy" if cpu is not None else ""),
                      flush=True)

        # Idle memory: once per system (it is a size, not a rate), client pinned with the load.
        idle = {name: {} for name in order if name != "direct"}
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        for name in idle:
            idle[name] = idle_kib_per_connection(systems[name], args.idle_connections)
            print(f"{name:10s} idle: {idle[name]['plain']:.2f} KiB per plaintext connection "
                  f"(second half {idle[name]['plain_marginal']:.2f}), "
                  f"{idle[name]['tls']:.2f} KiB per TLS connection "
                  f"(second half {idle[name]['tls_marginal']:.2f}) "
                  f"({args.idle_connections} of each, held together)", flush=True)
            time.sleep(1)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

        # Config swaps (Portcullis only: the peers reload by re-reading files and forking).
        base = portcullis_config(work, cert, key)
        pushes_10k = [push_seconds(args.bin, work, with_extra_routes(base, 10_000, 100 + i)) for i in range(5)]
        pushes_10 = [push_seconds(args.bin, work, with_extra_routes(base, 10, 200 + i)) for i in range(5)]
        swap_10k = median([acked * 1000 for acked, _ in pushes_10k])
        swap_10 = median([acked * 1000 for acked, _ in pushes_10])
        encode_10k = median([encoded * 1000 for _, encoded in pushes_10k])
        print(f"push -> ACK: 10 routes {swap_10:.1f} ms, 10 000 routes {swap_10k:.1f} ms (median of 5; "
              f"encoding the 10 000-route frame before it: {encode_10k:.1f} ms)", flush=True)
        pushed, swap_requests, swap_errors = swaps_under_load(args.bin, work, base, 100, 30)
        print(f"{pushed} swaps under load: {swap_requests} requests, {swap_errors} failed", flush=True)

        def per_request(name, kind):
            return median([cpu / req * 1e6 for req, _, cpu, _ in results[name][kind] if req])

        def kernel_per_request(name, kind):
            return median([kernel / req * 1e6 for req, _, _, kernel in results[name][kind] if req])

        def handshakes(name):
            return median([req / cpu for req, _, cpu, _ in results[name]["handshake"] if cpu > 0])

        def handshakes_fixed_rate(name):
            return median([done / cpu for done, _, cpu, _, _ in fixed_handshakes[name] if cpu > 0])

        metrics = {}
        def metric(name, values, better="lower"):
            row = dict(values)
            p, n = row.get("portcullis"), row.get("nginx")
            row["ratio_to_nginx"] = (p / n) if (p is not None and n) else None
            row["better"] = better
            metrics[name] = row

        metric("cpu_us_per_req_plaintext", {
            "portcullis": per_request("portcullis", "plain"),
            "nginx": per_request("nginx", "plain"),
            "haproxy": per_request("haproxy", "plain"),
            "direct": None,
        })
        metric("cpu_us_per_req_tls", {
            "portcullis": per_request("portcullis", "tls"),
            "nginx": per_request("nginx", "tls"),
            "haproxy": per_request("haproxy", "tls"),
            "direct": None,
        })
        for metric_name, kind in [("cpu_us_per_req_plaintext", "plain"), ("cpu_us_per_req_tls", "tls")]:
            metrics[metric_name]["kernel_us"] = {
                name: kernel_per_request(name, kind) for name in ["portcullis", "nginx", "haproxy"]
            }
            metrics[metric_name]["note"] = (
                "'kernel_us' is the part of each system's CPU per request spent in the kernel "
                "(stime), median over the runs: socket work every proxy pays for")
        metric("cpu_us_per_req_one_connection", {
            "portcullis": per_request("portcullis", "one"),
            "nginx": per_request("nginx", "one"),
            "haproxy": per_request("haproxy", "one"),
            "direct": None,
        })
        metrics["cpu_us_per_req_one_connection"]["kernel_us"] = {
            name: kernel_per_request(name, "one") for name in ["portcullis", "nginx", "haproxy"]
        }
        metrics["cpu_us_per_req_one_connection"]["note"] = (
            "plaintext keep-alive, wrk -c 1: one request at a time, so every request makes the proxy "
            "sleep and wake twice; req/s "
            + ", ".join(f"{n} {median([r / args.seconds for r, *_ in results[n]['one']]):.0f}" for n in order))
        metric("handshakes_per_cpu_s", {
            "portcullis": handshakes("portcullis"),
            "nginx": handshakes("nginx"),
            "haproxy": handshakes("haproxy"),
            "direct": None,
        }, better="higher")
        metrics["handshakes_per_cpu_s"]["kernel_us_per_handshake"] = {
            name: median([kernel / req * 1e6 for req, _, _, kernel in results[name]["handshake"] if req])
            for name in systems
        }
        metrics["handshakes_per_cpu_s"]["note"] = (
            "full TLS 1.3 handshakes (no system resumes sessions: checked with openssl s_client "
            "-sess_out/-sess_in), one request per connection, wrk -c 20 with Connection: close, as "
            "many as wrk drives from the shared core; handshakes/s "
            + ", ".join(f"{n} {median([r / args.seconds for r, *_ in results[n]['handshake']]):.0f}"
                        for n in systems)
            + ", proxy CPU busy "
            + ", ".join(f"{n} {median([c / args.seconds * 100 for _, _, c, _ in results[n]['handshake']]):.0f} %"
                        for n in systems)
            + "; agreed with an OpenSSL 3.0 client: " + "; ".join(f"{n} {a}" for n, a in agreed.items()))
        metric("handshakes_per_cpu_s_fixed_rate", {
            "portcullis": handshakes_fixed_rate("portcullis"),
            "nginx": handshakes_fixed_rate("nginx"),
            "haproxy": handshakes_fixed_rate("haproxy"),
            "direct": None,
        }, better="higher")
        metrics["handshakes_per_cpu_s_fixed_rate"]["kernel_us_per_handshake"] = {
            name: median([kernel / done * 1e6 for done, _, _, kernel, _ in fixed_handshakes[name] if done])
            for name in systems
        }
        metrics["handshakes_per_cpu_s_fixed_rate"]["note"] = (
            f"the same full handshakes at a fixed {handshake_rate}/s (40 % of the slowest system's "
            f"closed-loop rate), oha on OpenSSL --disable-keepalive -c 20, {args.seconds} s per run; "
            "at this load each handshake also pays the proxy's sleeps and wakeups; achieved/s "
            + ", ".join(f"{n} {median([r[4] for r in fixed_handshakes[n]]):.0f}" for n in systems)
            + "; failed " + ", ".join(f"{n} {sum(r[1] for r in fixed_handshakes[n])}" for n in systems))
        metric("req_per_s_plaintext_closed_loop", {
            name: median([req / args.seconds for req, *_ in results[name]["plain"]]) for name in order
        }, better="higher")
        metric("errors_total", {
            name: sum(e for kind in results[name].values() for _, e, *_ in kind) for name in order
        })
        metric("idle_kb_per_conn_plaintext", {
            name: idle.get(name, {}).get("plain") for name in order
        })
        metric("idle_kb_per_conn_tls", {
            name: idle.get(name, {}).get("tls") for name in order
        })
        for kind, name in [("plain", "idle_kb_per_conn_plaintext"), ("tls", "idle_kb_per_conn_tls")]:
            metrics[name]["marginal"] = {
                system: idle.get(system, {}).get(kind + "_marginal") for system in order if system != "direct"
            }
            metrics[name]["note"] = (
                f"RSS growth over {args.idle_connections} connections opened in two halves; "
                "'marginal' is the growth over the second half alone, per connection")
        metric("swap_ms_10_routes", {"portcullis": swap_10, "nginx": None, "haproxy": None, "direct": None})
        metric("swap_ms_10k_routes", {"portcullis": swap_10k, "nginx": None, "haproxy": None, "direct": None})
        metrics["swap_ms_10k_routes"]["note"] = (
            f"sending the frame -> ACK, median of 5; encoding the frame first took {encode_10k:.1f} ms "
            "(median), which the operator does once per config and the agent never repeats")
        metric("failed_requests_during_swaps", {
            "portcullis": swap_errors, "nginx": None, "haproxy": None, "direct": None,
        })
        metrics["failed_requests_during_swaps"]["note"] = (
            f"{pushed} pushes during a 30 s wrk run of {swap_requests} requests")
        metric("p99_ms_fixed_rate", {name: median([r[1] for r in latency[name]]) for name in order})
        metric("p50_ms_fixed_rate", {name: median([r[0] for r in latency[name]]) for name in order})
        metric("cpu_us_per_req_fixed_rate", {
            name: (median([r[4] / (r[2] * args.seconds) * 1e6 for r in latency[name] if r[2]])
                   if name != "direct" else None)
            for name in order
        })
        metrics["cpu_us_per_req_fixed_rate"]["note"] = (
            f"proxy CPU per request during the p50/p99 runs at {rate} req/s (achieved req/s x run length)")
        achieved = {name: median([r[2] for r in latency[name]]) for name in order}
        failed = {name: sum(r[3] for r in latency[name]) for name in order}
        for name in ["p99_ms_fixed_rate", "p50_ms_fixed_rate"]:
            metrics[name]["note"] = (
                f"oha -q {rate} (half of nginx's median closed-loop plaintext req/s) "
                f"--latency-correction -c {args.connections}, {args.seconds} s per run; achieved req/s "
                + ", ".join(f"{n} {a:.0f}" for n, a in achieved.items() if a is not None)
                + "; failed " + ", ".join(f"{n} {f}" for n, f in failed.items()))

        sha = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": sha,
            "command": " ".join(sys.argv),
            "method": {"runs": args.runs, "seconds_per_run": args.seconds, "connections": args.connections,
                       "pinning": f"proxy on CPU {PROXY_CPU}; wrk and backend on CPU {LOAD_CPU}"},
            "machine": machine_info(),
            "metrics": metrics,
        }
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        for path in [f"{args.out}/{stamp}-{sha}.json", f"{args.out}/latest.json"]:
            with open(path, "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")

        print()
        print(f"{'metric':34s} {'portcullis':>11s} {'nginx':>11s} {'haproxy':>11s} {'direct':>11s} {'p/nginx':>8s}")
        for name, row in metrics.items():
            cells = []
            for system in ["portcullis", "nginx", "haproxy", "direct"]:
                v = row.get(system)
                cells.append(f"{v:11.1f}" if isinstance(v, (int, float)) else f"{'-':>11s}")
            ratio = row.get("ratio_to_nginx")
            print(f"{name:34s} {' '.join(cells)} {ratio:8.2f}" if ratio is not None
                  else f"{name:34s} {' '.join(cells)} {'-':>8s}")
        print(f"\nwritten: {args.out}/{stamp}-{sha}.json and {args.out}/latest.json")
    finally:
        for system in systems.values():
            system.stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
