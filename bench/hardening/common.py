"""Shared pieces of the hardening measurements (slow_clients.py, overload.py).

Reuses bench/bench.py's helpers (process CPU and RSS from /proc, port waits, machine facts,
pinning constants) and adds what these two scripts need on top: a standalone proxy with an
explicit ProxySettings block, an nginx backend with a 1 MiB path, a latency probe, and
samplers for RSS, the admin metrics and the proxy-side socket states (ss).

Addresses: the load tools connect from 127.0.0.1, the probe from 127.0.0.3 and the
slow-client sentinels from 127.0.0.4, so the proxy-side sockets of each can be told apart.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

import bench  # noqa: E402  (bench/bench.py: run, wait_port, rss_kib, cpu_seconds, machine_info)

PROXY_CPU = bench.PROXY_CPU
LOAD_CPU = bench.LOAD_CPU
run = bench.run
wait_port = bench.wait_port
rss_kib = bench.rss_kib
cpu_seconds = bench.cpu_seconds
write = bench.write

PROBE_SOURCE = "127.0.0.3"
SENTINEL_SOURCE = "127.0.0.4"
# The /big response. 1 MiB is not enough on loopback: the kernel takes about 1.7 MiB into a
# connection's send buffer before a write blocks when the reader's window is 1 KiB (measured
# here; tcp_wmem max is 4 MiB), so the proxy would never wait on a slow reader.
BIG_BYTES = 8 << 20


# --------------------------------------------------------------------------------------------
# Environment


def raise_nofile():
    """Raise this process's descriptor limit to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pin_self(cpu=LOAD_CPU):
    os.sched_setaffinity(0, {int(cpu)})


def ensure_apt(binary, package):
    if shutil.which(binary):
        return
    print(f"==> installing {package}", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", package], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)


def build_proxy():
    """`cargo build --release -p portcullis-dataplane`, right before measuring, so the run
    picks up whatever the tree holds now."""
    print("==> cargo build --release -p portcullis-dataplane", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "portcullis-dataplane"],
                   cwd=ROOT, check=True)


def source_state():
    """Which proxy was measured: HEAD, uncommitted changes under api/ and dataplane/, and
    whether the min-data-rate settings exist in the source."""
    sha = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "api", "dataplane"]).stdout
    with open(f"{ROOT}/api/src/config.rs") as f:
        config_rs = f.read()
    # A fingerprint of the uncommitted proxy source, so two runs can tell they measured the same.
    digest = hashlib.sha256(run(["git", "-C", ROOT, "diff", "HEAD", "--", "api", "dataplane"]).stdout.encode())
    for line in sorted(dirty.splitlines()):
        path = f"{ROOT}/{line[3:]}"
        if line.startswith("??") and os.path.isfile(path) and path.endswith(".rs"):
            with open(path, "rb") as f:
                digest.update(f.read())
    return {
        "commit": sha,
        "uncommitted_api_dataplane": [line[3:] for line in dirty.splitlines()],
        "uncommitted_sha256": digest.hexdigest()[:16] if dirty else None,
        "min_data_rate_supported": "min_data_rate_bytes_per_s" in config_rs,
    }


def machine():
    info = bench.machine_info()
    info.pop("haproxy", None)
    info["nginx_backend"] = info.pop("nginx", None)
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import resource
    info["nofile_hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    info["python"] = sys.version.split()[0]
    for name, cmd in (("oha", [os.path.expanduser("~/.cache/portcullis/tools/bin/oha"), "--version"]),
                      ("slowhttptest", ["slowhttptest", "-h"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            info[name] = next((line.strip() for line in out.splitlines() if "version" in line or
                               line.startswith(name)), None)
        except OSError:
            info[name] = None
    try:
        with open("/proc/sys/net/ipv4/tcp_mem") as f:
            info["tcp_mem_pages"] = [int(x) for x in f.read().split()]
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            info["tcp_wmem"] = [int(x) for x in f.read().split()]
    except OSError:
        pass
    return info


def results_path(kind, sha):
    out = f"{ROOT}/bench/results/hardening"
    os.makedirs(out, exist_ok=True)
    return f"{out}/{kind}-{datetime.date.today().isoformat()}-{sha}.json"


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Backend and proxy


def start_backend(work, port):
    """One nginx worker on the load CPU: `/` answers "ok\\n" (any method; a request body is
    read and dropped), `/big` serves a 1 MiB file. Its own timeouts are an hour, so only the
    proxy's timers decide when a slow connection ends."""
    os.makedirs(f"{work}/www", exist_ok=True)
    with open(f"{work}/www/big", "wb") as f:
        f.write(b"x" * BIG_BYTES)
    # nginx workers run as www-data; mkdtemp made the directory private.
    for path in (work, f"{work}/www"):
        os.chmod(path, 0o755)
    os.chmod(f"{work}/www/big", 0o644)
    os.makedirs("/var/lib/nginx", exist_ok=True)
    conf = f"""
worker_processes 1;
worker_cpu_affinity {'01' if LOAD_CPU == '0' else '10'};
worker_rlimit_nofile 40000;
daemon off;
pid {work}/backend.pid;
error_log {work}/backend-error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 1h;
  client_body_timeout 1h;
  send_timeout 1h;
  lingering_time 1h;
  lingering_timeout 1h;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /big {{ root {work}/www; default_type application/octet-stream; }}
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
    write(f"{work}/backend.conf", conf)
    proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", f"{work}/backend.conf"])
    wait_port(port)
    return proc


def proxy_config(port, backend_port, settings):
    return {
        "schema_version": 1,
        "generation": 1,
        "ports": [{
            "port": port,
            "protocol": "HTTP",
            "listeners": [{
                "name": "http",
                "routes": [{
                    "name": "hardening/route",
                    "hostnames": [],
                    "rules": [{"backends": [{"weight": 1, "target": {"backend": "hardening/backend"}}]}],
                }],
            }],
        }],
        "backends": [{"name": "hardening/backend", "endpoints": [f"127.0.0.1:{backend_port}"]}],
        "settings": settings,
    }


class Proxy:
    def __init__(self, work, port, admin_port, backend_port, settings, bin_dir=None):
        self.work = work
        self.port = port
        self.admin_port = admin_port
        self.config_path = f"{work}/proxy-{port}.json"
        self.log_path = f"{work}/proxy-{port}.log"
        write(self.config_path, json.dumps(proxy_config(port, backend_port, settings), indent=1))
        bin_dir = bin_dir or f"{ROOT}/target/release"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            # This script pins itself to the load CPU; the proxy gets every CPU back and
            # pins its worker core itself (--cpus), as bench.py runs it.
            ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}",
             f"{bin_dir}/portcullis-proxy", "--config", self.config_path,
             "--cpus", PROXY_CPU, "--bind-address", "127.0.0.1",
             "--admin-address", f"127.0.0.1:{admin_port}", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        wait_port(port)
        wait_port(admin_port)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def rss(self):
        return rss_kib(self.pid)

    def status_field(self, name):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(name + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def cpu(self):
        return cpu_seconds(self.pid)

    def metrics(self, timeout=2.0):
        return scrape(self.admin_port, timeout)

    def log_lines(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read().splitlines()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def scrape(admin_port, timeout=2.0):
    """The admin /metrics as {name: value} for unlabelled series, plus requests_by_class."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    values = {}
    by_class = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("portcullis_requests_total{"):
            cls = re.search(r'status_class="(\dxx)"', name).group(1)
            by_class[cls] = by_class.get(cls, 0) + int(float(value))
        elif "{" not in name:
            values[name] = float(value)
    values["requests_by_class"] = by_class
    return values


def stop_proc(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# Probe


def http_get(sock, request, deadline):
    """Send `request` and read one response with a Content-Length body. Returns
    (status, keep_alive) or raises."""
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response head")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    while len(body) < length:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed in the response body")
        body += data
    return status, keep_alive


class Probe:
    """One ordinary GET every `interval` seconds on a fresh connection and, in step, one on a
    keep-alive connection (reconnected when it breaks), both from PROBE_SOURCE. Each request
    is timed from its send to the end of its response; `timeout` makes it an error. Requests
    are scheduled on a fixed grid; a request that overruns its slot delays the next one
    (counted in `late`)."""

    def __init__(self, port, interval=0.02, timeout=2.0, path="/"):
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.request = f"GET {path} HTTP/1.1\r\nHost: probe.local\r\nUser-Agent: probe\r\n\r\n".encode()
        self.records = []  # (t_monotonic, kind, latency_s or None, status or None, error or None)
        self.late = {"fresh": 0, "keepalive": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(kind,), daemon=True)
                         for kind in ("fresh", "keepalive")]
        self._lock = threading.Lock()

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join()

    def _connect(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((PROBE_SOURCE, 0))
        sock.settimeout(self.timeout)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def _loop(self, kind):
        sock = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            elif now - next_at > self.interval:
                self.late[kind] += 1
                next_at = now
            next_at += self.interval
            started = time.monotonic()
            deadline = started + self.timeout
            status, error = None, None
            try:
                if sock is None:
                    sock = self._connect()
                status, keep_alive = http_get(sock, self.request, deadline)
                if kind == "fresh" or not keep_alive:
                    sock.close()
                    sock = None
            except (OSError, ValueError, IndexError) as e:
                error = type(e).__name__ + (f": {e}" if str(e) else "")
                if sock is not None:
                    sock.close()
                sock = None
            latency = time.monotonic() - started
            ok = error is None and status == 200
            with self._lock:
                self.records.append((started, kind, latency if ok else None, status,
                                     error or (None if ok else f"status {status}")))
        if sock is not None:
            sock.close()

    def window(self, start, end):
        with self._lock:
            return [r for r in self.records if start <= r[0] < end]


def probe_timeline(records, start, end, step=1.0):
    """Per-`step` bins of probe records from `start`: [offset, n, errors, p99_ms, max_ms]."""
    out = []
    t = start
    while t < end:
        rs = [r for r in records if t <= r[0] < t + step]
        lat = [r[2] * 1000 for r in rs if r[2] is not None]
        out.append([round(t - start, 1), len(rs), len(rs) - len(lat),
                    round(percentile(lat, 99), 2) if lat else None, round(max(lat), 2) if lat else None])
        t += step
    return out


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def probe_summary(records):
    """p50/p99/max in ms and error count over probe records, overall and by kind."""
    def summarize(rs):
        lat = [r[2] * 1000 for r in rs if r[2] is not None]
        errors = [r for r in rs if r[2] is None]
        kinds = {}
        for r in errors:
            kinds[r[4]] = kinds.get(r[4], 0) + 1
        t0 = rs[0][0] if rs else 0
        return {
            "requests": len(rs),
            "errors": len(errors),
            "error_offsets_s": [(round(r[0] - t0, 2), r[1]) for r in errors][:20],
            "error_kinds": kinds,
            "p50_ms": round(percentile(lat, 50), 3) if lat else None,
            "p99_ms": round(percentile(lat, 99), 3) if lat else None,
            "max_ms": round(max(lat), 3) if lat else None,
        }
    out = summarize(records)
    for kind in ("fresh", "keepalive"):
        out[kind] = summarize([r for r in records if r[1] == kind])
    return out


# --------------------------------------------------------------------------------------------
# Samplers


class Sampler:
    """Calls `fn()` every `interval` seconds in a thread; keeps (t_monotonic, value)."""

    def __init__(self, fn, interval):
        self.fn = fn
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.samples

    def _loop(self):
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                value = self.fn()
            except Exception as e:  # noqa: BLE001 - a failed sample is recorded, not fatal
                value = {"error": f"{type(e).__name__}: {e}"}
            self.samples.append((t, value))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))


class SocketTracker:
    """Polls `ss` for the proxy-side sockets of `port` and keeps, per client address, when it
    was first seen ESTABLISHED and when it left that state, and how:
    - "proxy": the proxy closed first (FIN-WAIT-1/2, CLOSING, TIME-WAIT);
    - "client": the client closed first (CLOSE-WAIT, LAST-ACK);
    - "gone": the socket vanished between two polls (a reset from either side, or a close with
      unread data, which the kernel turns into a reset).
    It also keeps when the proxy was first seen to have sent bytes on it (`bytes_sent` of
    `ss -i`): for a request that is answered, when its response began.
    Resolution is the poll interval."""

    PROXY_CLOSED = {"FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "TIME-WAIT"}
    CLIENT_CLOSED = {"CLOSE-WAIT", "LAST-ACK"}

    def __init__(self, port, interval=0.2):
        self.port = port
        self.interval = interval
        self.conns = {}  # peer -> {"first": t, "left": t|None, "how": str|None}
        self.counts = []  # (t, {ip: established count}, syn_recv)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._poll()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._poll()

    def _poll(self):
        t = time.monotonic()
        out = subprocess.run(["ss", "-tanHiO", f"( sport = :{self.port} )"],
                             capture_output=True, text=True).stdout
        seen = {}
        sending = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 5 or parts[0] == "LISTEN":
                continue
            seen[parts[4]] = parts[0]
            if any(p.startswith("bytes_sent:") and p != "bytes_sent:0" for p in parts[5:]):
                sending.add(parts[4])
        established = {}
        syn_recv = 0
        for peer, state in seen.items():
            if state == "SYN-RECV":
                syn_recv += 1
                continue
            entry = self.conns.get(peer)
            if state == "ESTAB":
                ip = peer.rsplit(":", 1)[0]
                established[ip] = established.get(ip, 0) + 1
                if entry is None or entry["left"] is not None:
                    entry = self.conns[peer] = {"first": t, "left": None, "how": None,
                                                "sending": None}
                if peer in sending and entry["sending"] is None:
                    entry["sending"] = t
            elif entry is not None and entry["left"] is None:
                entry["left"] = t
                entry["how"] = ("proxy" if state in self.PROXY_CLOSED
                                else "client" if state in self.CLIENT_CLOSED else state)
        for peer, entry in self.conns.items():
            if entry["left"] is None and peer not in seen:
                entry["left"] = t
                entry["how"] = "gone"
        self.counts.append((t, established, syn_recv))

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._poll()

    def lifetimes(self, ip, since=None):
        """[(first, left|None, how)] for connections from `ip` first seen at or after `since`."""
        return [(e["first"], e["left"], e["how"]) for peer, e in self.conns.items()
                if peer.rsplit(":", 1)[0] == ip and (since is None or e["first"] >= since)]

    def since_sending(self, ip, since=None):
        """[(sending - first, left - sending)] for connections from `ip` first seen at or after
        `since` that the proxy sent bytes on and then closed: how long the response took to
        begin, and how long the connection lived after that."""
        return [(e["sending"] - e["first"], e["left"] - e["sending"])
                for peer, e in self.conns.items()
                if peer.rsplit(":", 1)[0] == ip and (since is None or e["first"] >= since)
                and e["sending"] is not None and e["left"] is not None
                and e["how"] in ("proxy", "gone")]

    def poll_interval(self):
        """Mean and max seconds between polls actually achieved."""
        ts = [t for t, _, _ in self.counts]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        return (round(sum(gaps) / len(gaps), 3), round(max(gaps), 3)) if gaps else (None, None)

    def established(self, ip):
        return [(t, counts.get(ip, 0)) for t, counts, _ in self.counts]


def cpu_times():
    """{cpu: (busy_ticks, total_ticks)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                values = [int(x) for x in parts[1:]]
                idle = values[3] + values[4]  # idle + iowait
                out[parts[0]] = (sum(values[:8]) - idle, sum(values[:8]))
    return out


def cpu_busy(before, after):
    """Busy fraction per CPU between two cpu_times() readings."""
    return {cpu: round((after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]), 3)
            for cpu in after if cpu in before}


TCP_COUNTERS = (
    "ListenOverflows", "ListenDrops", "TCPMemoryPressures", "TCPAbortOnMemory", "PruneCalled",
    "RcvPruned", "TCPRcvQDrop", "TCPBacklogDrop", "TCPZeroWindowDrop", "TCPSynRetrans",
    "TCPTimeouts", "RetransSegs", "TCPReqQFullDrop", "TCPAbortOnData", "TCPAbortOnClose")


def tcp_counters():
    """Machine-wide TCP counters (/proc/net/netstat TcpExt and /proc/net/snmp Tcp) that tell
    drops, memory pressure and retransmissions apart."""
    values = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, numbers in zip(lines[::2], lines[1::2]):
            prefix, _, names = names.partition(":")
            if prefix not in ("TcpExt", "Tcp"):
                continue
            for name, value in zip(names.split(), numbers.partition(":")[2].split()):
                if name in TCP_COUNTERS:
                    values[name] = int(value)
    return values


def counters_delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def kernel_tcp_kib():
    """TCP socket buffer memory of the whole machine (/proc/net/sockstat "mem", in pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return None


def skmem_kib(filters):
    """Socket buffer memory from `ss -tm`, summed per filter: {name: {"sockets", "rmem_kib"
    (received, not yet read by the owner), "wmem_queued_kib" (written, not yet acknowledged)}}."""
    out = {}
    for name, expr in filters.items():
        text = subprocess.run(["ss", "-tmnH", expr], capture_output=True, text=True).stdout
        r = w = n = 0
        for m in re.finditer(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+)", text):
            r += int(m.group(1))
            w += int(m.group(2))
            n += 1
        out[name] = {"sockets": n, "rmem_kib": r // 1024, "wmem_queued_kib": w // 1024}
    return out


def rel(samples, t0, digits=2):
    return [(round(t - t0, digits), v) for t, v in samples]
