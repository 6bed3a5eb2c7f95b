#!/usr/bin/env python3
"""Slow-client (slowloris) measurements for portcullis-proxy: slow headers, slow body, slow read.

For each attack a fresh release proxy (one core, CPU 1) is started with the explicit limits in
SETTINGS, in front of one nginx worker (CPU 0). slowhttptest (CPU 0) opens --connections slow
connections at --rate per second while a probe sends one ordinary GET every 20 ms on a fresh
connection and one on a keep-alive connection. Measured per attack:

- probe latency p50/p99/max and errors during the attack (target: p99 < 100 ms, 0 errors);
- how long each slow connection lived on the proxy side (from `ss` polls every 0.2 s: first
  seen ESTABLISHED until the proxy closed it), against the timer that should end it (target:
  every one closed by the proxy within that timer + 1 s); slowhttptest's own CSV
  (closed/pending/connected per second) is kept alongside;
- the proxy's RSS before and at the peak of the attack (sampled every 0.1 s) and the growth
  per slow connection; the admin metrics (active connections, 4xx answers) every 0.5 s;
- what a few slow connections of our own (sentinels, from 127.0.0.4) were answered.

Writes bench/results/hardening/slow-clients-<date>-<short-sha>.json and prints a table.
See bench/hardening/README.md.
"""

import argparse
import csv
import datetime
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts (not git-ignored)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import LOAD_CPU, PROXY_CPU, SENTINEL_SOURCE, percentile  # noqa: E402

PROXY_PORT = 18301
ADMIN_PORT = 18399
BACKEND_PORT = 18390
SLOW_SOURCE = "127.0.0.1"  # slowhttptest cannot choose its source address

# The limits under test, written out in full (the proxy's defaults are in
# api/src/config.rs ProxySettings). The min-data-rate pair is added when the source has it.
SETTINGS = {
    "max_header_count": 100,
    "max_header_bytes": 60 * 1024,
    "max_request_line_bytes": 8 * 1024,
    "header_read_timeout_ms": 5_000,
    "idle_timeout_ms": 15_000,
    "body_idle_timeout_ms": 10_000,
    "upstream_connect_timeout_ms": 5_000,
    "upstream_idle_timeout_ms": 30_000,
    "upstream_max_idle_per_endpoint": 64,
    "max_connections_per_core": 10_000,
    "max_requests_per_connection": 0,
}
MIN_RATE = {"min_data_rate_bytes_per_s": 240, "min_data_rate_grace_ms": 5_000}

# Follow-up interval of the slow-header and slow-body attacks: below body_idle_timeout_ms, so
# a per-read idle timer alone never fires and only an absolute deadline or a rate rule can
# end the connection.
FOLLOWUP_S = 3
BODY_LENGTH = 1_000_000


def attacks(args, settings):
    """name -> (slowhttptest arguments, URL path, timer that should end it (s), its name)."""
    rate_rule = "min_data_rate_grace_ms" in settings
    grace = settings.get("min_data_rate_grace_ms", 0) / 1000
    body_idle = settings["body_idle_timeout_ms"] / 1000
    return {
        "headers": (
            ["-H", "-i", str(FOLLOWUP_S), "-x", "24"], "/",
            settings["header_read_timeout_ms"] / 1000, "header_read_timeout_ms"),
        "body": (
            ["-B", "-i", str(FOLLOWUP_S), "-x", "10", "-s", str(BODY_LENGTH)], "/",
            grace if rate_rule else None,
            "min_data_rate_grace_ms (rate ~3 B/s < 240 B/s)" if rate_rule
            else "none: body_idle_timeout_ms is per read and data arrives every 3 s"),
        "read": (
            ["-X", "-w", "512", "-y", "1024", "-n", "1", "-z", "32", "-k", "1"], "/big",
            min(grace, body_idle) if rate_rule else body_idle,
            "min_data_rate_grace_ms (32 B/s < 240 B/s)" if rate_rule
            else "body_idle_timeout_ms (write timeout)"),
    }


class Sentinel(threading.Thread):
    """One slow connection of our own, doing what slowhttptest does for `kind`, recording what
    the proxy answered and when the connection ended (seen from the client)."""

    def __init__(self, kind, port, deadline):
        super().__init__(daemon=True)
        self.kind = kind
        self.port = port
        self.deadline = deadline
        self.result = {"kind": kind}

    def run(self):
        r = self.result
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.kind == "read":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.bind((SENTINEL_SOURCE, 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError as e:
            r["error"] = f"connect: {e}"
            return
        opened = time.monotonic()
        r["opened"] = opened
        received = b""
        how = "deadline"
        try:
            if self.kind == "headers":
                sock.sendall(b"GET / HTTP/1.1\r\nHost: sentinel.local\r\nUser-Agent: sentinel\r\n")
                step, payload = FOLLOWUP_S, b"X-Slow: abcdefghij\r\n"
            elif self.kind == "body":
                sock.sendall(b"POST / HTTP/1.1\r\nHost: sentinel.local\r\n"
                             b"Content-Type: application/x-www-form-urlencoded\r\n"
                             b"Content-Length: %d\r\n\r\n" % BODY_LENGTH)
                step, payload = FOLLOWUP_S, b"abcdefghi&"
            else:
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: sentinel.local\r\n\r\n")
                step, payload = 1, None
            next_at = time.monotonic() + step
            while time.monotonic() < self.deadline:
                wait = max(0.0, min(next_at, self.deadline) - time.monotonic())
                if payload is None:
                    time.sleep(wait)
                    data = sock.recv(32)
                    if not data:
                        how = "eof"
                        break
                    received += data if len(received) < 256 else b""
                else:
                    ready, _, _ = select.select([sock], [], [], wait)
                    if ready:
                        data = sock.recv(4096)
                        if not data:
                            how = "eof"
                            break
                        received += data
                        continue
                    sock.sendall(payload)
                next_at += step
        except (ConnectionResetError, BrokenPipeError) as e:
            how = type(e).__name__
        except OSError as e:
            how = f"{type(e).__name__}: {e}"
        r["ended_after_s"] = round(time.monotonic() - opened, 3)
        r["how"] = how
        r["response_first_line"] = received.split(b"\r\n", 1)[0].decode(errors="replace") or None
        sock.close()


def read_slowhttptest_csv(path):
    rows = []
    try:
        with open(path) as f:
            for row in csv.DictReader(f):
                rows.append({k.strip(): v.strip() for k, v in row.items() if k})
    except OSError:
        return []
    out = []
    for row in rows:
        try:
            out.append({
                "s": int(row["Seconds"]),
                "closed": int(row["Closed"]),
                "pending": int(row["Pending"]),
                "connected": int(row["Connected"]),
                "service_available": row.get("Service Available"),
            })
        except (KeyError, ValueError):
            continue
    return out


def csv_lifetimes(rows, count):
    """Lifetimes from slowhttptest's per-second counts, assuming connections close in the
    order they opened (true for one attack: same timer for all). 1 s resolution."""
    lifetimes = []
    for k in range(1, count + 1):
        opened = next((r["s"] for r in rows if r["closed"] + r["pending"] + r["connected"] >= k), None)
        closed = next((r["s"] for r in rows if r["closed"] >= k), None)
        if opened is not None and closed is not None:
            lifetimes.append(closed - opened)
    return lifetimes


def summarize_after_response(pairs):
    """p50/p99/max of the wait for the response and of the lifetime after it began."""
    waits = sorted(w for w, _ in pairs)
    lives = sorted(life for _, life in pairs)
    if not pairs:
        return None

    def stats(values):
        return {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
                "max": round(max(values), 2)}

    return {"connections": len(pairs), "response_wait_s": stats(waits),
            "lifetime_after_response_s": stats(lives)}


def run_attack(name, spec, args, work, settings):
    flags, path, expected_s, timer = spec
    print(f"\n==> attack: {name} ({timer})", flush=True)
    proxy = common.Proxy(work, PROXY_PORT, ADMIN_PORT, BACKEND_PORT, settings)
    try:
        time.sleep(1.0)
        tracker = common.SocketTracker(PROXY_PORT, interval=0.2).start()
        rss = common.Sampler(proxy.rss, 0.1).start()
        kernel = common.Sampler(common.kernel_tcp_kib, 0.5).start()
        proxy_cpu = common.Sampler(proxy.cpu, 0.5).start()
        skmem = common.Sampler(lambda: common.skmem_kib({
            "proxy_to_clients": f"( sport = :{PROXY_PORT} )",
            "proxy_to_backend": f"( dport = :{BACKEND_PORT} )",
            "backend_to_proxy": f"( sport = :{BACKEND_PORT} )",
            "clients": f"( dport = :{PROXY_PORT} )",
        }), 2.0).start()
        metrics = common.Sampler(proxy.metrics, 0.5).start()
        probe = common.Probe(PROXY_PORT).start()
        time.sleep(args.pre_seconds)
        rss_before = proxy.rss()
        cpu_before = proxy.cpu()
        machine_cpu_before = common.cpu_times()
        tcp_before = common.tcp_counters()
        prefix = f"{work}/{name}"
        cmd = ["taskset", "-c", LOAD_CPU, "slowhttptest", *flags,
               "-c", str(args.connections), "-r", str(args.rate), "-l", str(args.attack_seconds),
               "-p", "3", "-g", "-o", prefix, "-u", f"http://127.0.0.1:{PROXY_PORT}{path}"]
        t_attack = time.monotonic()
        with open(f"{prefix}.out", "w") as out:
            slow = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        sentinels = [Sentinel(name, PROXY_PORT, t_attack + args.attack_seconds)
                     for _ in range(args.sentinels)]
        for s in sentinels:
            s.start()
        try:
            slow.wait(timeout=args.attack_seconds + 60)
        except subprocess.TimeoutExpired:
            slow.kill()
            slow.wait()
        t_end = time.monotonic()
        for s in sentinels:
            s.deadline = min(s.deadline, time.monotonic())
        for s in sentinels:
            s.join(timeout=10)
        time.sleep(args.post_seconds)
        probe.stop()
        tracker.stop()
        rss_samples = rss.stop()
        kernel_samples = kernel.stop()
        cpu_samples = [(t, v) for t, v in proxy_cpu.stop() if isinstance(v, float)]
        skmem_samples = skmem.stop()
        metric_samples = metrics.stop()
        cpu_after = proxy.cpu()
        machine_cpu = common.cpu_busy(machine_cpu_before, common.cpu_times())
        tcp_delta = common.counters_delta(tcp_before, common.tcp_counters())
        alive = proxy.alive()
        hwm = proxy.status_field("VmHWM")
        rss_after = proxy.rss() if alive else None
    finally:
        code = proxy.stop()
    log_lines = proxy.log_lines()

    # Proxy-side lifetimes of the attack's connections, including those the proxy closed in
    # the seconds after slowhttptest exited (it exits once its own count says all closed).
    conns = tracker.lifetimes(SLOW_SOURCE, since=t_attack - 0.5)
    closed_by_proxy = sorted(left - first for first, left, how in conns
                             if left is not None and how in ("proxy", "gone"))
    still_open_at_end = [(left or t_end) - first for first, left, how in conns
                         if left is None or how not in ("proxy", "gone")]
    how_counts = {}
    for _, left, how in conns:
        key = how if left is not None else "open at end"
        how_counts[key] = how_counts.get(key, 0) + 1
    sentinel_conns = tracker.lifetimes(common.SENTINEL_SOURCE, since=t_attack - 0.5)
    sentinel_lifetimes = sorted(left - first for first, left, how in sentinel_conns
                                if left is not None and how in ("proxy", "gone"))
    peak_conns = max((n for _, n in tracker.established(SLOW_SOURCE)), default=0)
    peak_conns += max((n for _, n in tracker.established(common.SENTINEL_SOURCE)), default=0)
    attack_rss = [v for t, v in rss_samples if t_attack <= t <= t_end and isinstance(v, int)]
    rss_peak = max(attack_rss, default=None)
    rss_delta = (rss_peak - rss_before) if rss_peak is not None else None
    limit = expected_s + 1.0 if expected_s is not None else None
    all_closed_in_time = (
        limit is not None and not still_open_at_end and closed_by_proxy
        and all(x <= limit for x in closed_by_proxy))
    csv_rows = read_slowhttptest_csv(f"{prefix}.csv")
    csv_life = csv_lifetimes(csv_rows, args.connections)
    with open(f"{prefix}.out", errors="replace") as f:
        slow_out = f.read()
    active = [v.get("portcullis_active_connections") for _, v in metric_samples
              if isinstance(v, dict) and "portcullis_active_connections" in v]
    first_m = next((v for _, v in metric_samples if isinstance(v, dict) and "requests_by_class" in v), {})
    last_m = next((v for _, v in reversed(metric_samples) if isinstance(v, dict) and "requests_by_class" in v), {})

    def delta(key):
        a, b = first_m.get(key), last_m.get(key)
        return None if a is None or b is None else int(b - a)

    probe_stats = common.probe_summary(probe.window(t_attack, t_end))
    baseline = common.probe_summary(probe.window(t_attack - args.pre_seconds, t_attack))
    result = {
        "attack": name,
        "command": " ".join(cmd[3:]),
        "timer": timer,
        "expected_lifetime_s": expected_s,
        "attack_duration_s": round(t_end - t_attack, 2),
        "probe": probe_stats,
        "probe_late_slots": dict(probe.late),
        "probe_baseline_before_attack": baseline,
        "slow_connections": {
            "seen": len(conns),
            "peak_concurrent": peak_conns,
            "closed_by_proxy": len(closed_by_proxy),
            "still_open_when_attack_ended": len(still_open_at_end),
            "end_states": how_counts,
            "lifetime_s": {
                "p50": round(percentile(closed_by_proxy, 50), 2) if closed_by_proxy else None,
                "p99": round(percentile(closed_by_proxy, 99), 2) if closed_by_proxy else None,
                "max": round(max(closed_by_proxy), 2) if closed_by_proxy else None,
                "min": round(min(closed_by_proxy), 2) if closed_by_proxy else None,
                "open_at_end_min_age": round(min(still_open_at_end), 2) if still_open_at_end else None,
                "resolution_s": 0.2,
                "ss_poll_interval_mean_max_s": tracker.poll_interval(),
            },
            "limit_s": limit,
            "over_limit": sum(1 for x in closed_by_proxy if limit is not None and x > limit),
            "all_closed_within_limit": all_closed_in_time,
            # Slow read only: the proxy's write-side timer starts when the response does, so
            # the whole lifetime above also counts the wait for the backend's response.
            "after_response_began_s": summarize_after_response(
                tracker.since_sending(SLOW_SOURCE, since=t_attack - 0.5)) if name == "read" else None,
            "slowhttptest_csv_fifo_lifetime_s": {
                "p50": percentile(csv_life, 50), "max": max(csv_life, default=None)},
        },
        "sentinels": [dict((k, v) for k, v in s.result.items() if k != "opened") for s in sentinels],
        "sentinel_proxy_side_lifetimes_s": [round(x, 2) for x in sentinel_lifetimes],
        "memory": {
            "rss_kib_before": rss_before,
            "rss_kib_peak": rss_peak,
            "rss_kib_after": rss_after,
            "vm_hwm_kib": hwm,
            "kib_per_slow_connection": round(rss_delta / peak_conns, 2) if rss_delta is not None and peak_conns else None,
            "kernel_tcp_kib_before": kernel_samples[0][1] if kernel_samples else None,
            "kernel_tcp_kib_peak": max((v for _, v in kernel_samples if isinstance(v, int)), default=None),
            "kernel_tcp_note": "whole-machine TCP buffer memory (/proc/net/sockstat), both ends of every loopback connection",
            "socket_buffers_at_kernel_peak": max(
                (v for _, v in skmem_samples if isinstance(v, dict) and "error" not in v),
                key=lambda v: sum(g["rmem_kib"] + g["wmem_queued_kib"] for g in v.values()), default=None),
        },
        "proxy": {
            "alive_after": alive,
            "exit_code": code,
            "cpu_s_during": round(cpu_after - cpu_before, 3),
            "machine_cpu_busy_during": machine_cpu,
            "machine_tcp_counters_delta": tcp_delta,
            "active_connections_max": max(active, default=None),
            "connections_accepted": delta("portcullis_connections_accepted_total"),
            "connections_rejected": delta("portcullis_connections_rejected_total"),
            "invalid_requests": delta("portcullis_invalid_requests_total"),
            "requests_by_class_delta": {
                k: last_m.get("requests_by_class", {}).get(k, 0) - first_m.get("requests_by_class", {}).get(k, 0)
                for k in sorted(set(last_m.get("requests_by_class", {})) | set(first_m.get("requests_by_class", {})))},
            "log_warnings": [line for line in log_lines if '"level":"warn"' in line or '"level":"error"' in line][-20:],
        },
        "slowhttptest_csv": csv_rows,
        "slowhttptest_output_tail": slow_out.strip().splitlines()[-25:],
        "series": {
            "rss_kib": [(round(t - t_attack, 1), v) for t, v in rss_samples[::5]],
            "active_connections": [(round(t - t_attack, 1), v.get("portcullis_active_connections"))
                                   for t, v in metric_samples if isinstance(v, dict)],
            "kernel_tcp_kib": [(round(t - t_attack, 1), v) for t, v in kernel_samples],
            "proxy_cpu_busy": [(round(b[0] - t_attack, 1), round((b[1] - a[1]) / (b[0] - a[0]), 2))
                               for a, b in zip(cpu_samples, cpu_samples[1:])],
            "probe_per_second": common.probe_timeline(probe.records, t_attack - args.pre_seconds,
                                                      t_end + args.post_seconds),
            "slow_established": [(round(t - t_attack, 1), n) for t, n in tracker.established(SLOW_SOURCE)[::5]],
        },
    }
    p = probe_stats
    result["targets"] = {
        "probe_p99_under_100ms": p["p99_ms"] is not None and p["p99_ms"] < 100,
        "probe_zero_errors": p["errors"] == 0,
        "slow_connections_closed_within_timer_plus_1s": all_closed_in_time,
        "proxy_survived": alive,
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000, help="slowhttptest -r (connections/s)")
    parser.add_argument("--attack-seconds", type=int, default=40, help="slowhttptest -l")
    parser.add_argument("--big-bytes", type=int, default=common.BIG_BYTES,
                        help="size of the /big response the slow-read attack asks for")
    parser.add_argument("--attacks", default="headers,body,read")
    parser.add_argument("--sentinels", type=int, default=5)
    parser.add_argument("--pre-seconds", type=float, default=3.0)
    parser.add_argument("--post-seconds", type=float, default=3.0)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="override one of SETTINGS (integer), e.g. --set body_idle_timeout_ms=30000")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", help="JSON path (default bench/results/hardening/slow-clients-<date>-<sha>.json)")
    args = parser.parse_args()

    common.ensure_apt("slowhttptest", "slowhttptest")
    common.ensure_apt("nginx", "nginx-light")
    common.ensure_apt("ss", "iproute2")
    if not args.no_build:
        common.build_proxy()
    nofile = common.raise_nofile()
    common.pin_self(LOAD_CPU)
    source = common.source_state()
    settings = dict(SETTINGS)
    if source["min_data_rate_supported"]:
        settings.update(MIN_RATE)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = int(value)
    specs = attacks(args, settings)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="portcullis-slow.")
    common.BIG_BYTES = args.big_bytes
    backend = common.start_backend(work, BACKEND_PORT)
    results = {}
    try:
        for name in args.attacks.split(","):
            results[name] = run_attack(name, specs[name], args, work, settings)
            time.sleep(2)
    finally:
        common.stop_proc(backend)
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "command": " ".join(sys.argv),
        "machine": common.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "method": {
            "pinning": f"proxy --cpus {PROXY_CPU}; slowhttptest, nginx backend, probe on CPU {LOAD_CPU}",
            "connections": args.connections, "rate_per_s": args.rate,
            "attack_seconds_max": args.attack_seconds, "followup_interval_s": FOLLOWUP_S,
            "slow_read_response_bytes": args.big_bytes,
            "probe": "GET / every 20 ms on a fresh connection and every 20 ms on a keep-alive one, "
                     "from 127.0.0.3, 2 s timeout; stats over the attack (slowhttptest start to exit)",
            "lifetimes": "proxy-side sockets of port %d from 127.0.0.1, ss every 0.2 s: first seen "
                         "ESTAB until the proxy closed (FIN-WAIT/TIME-WAIT) or the socket vanished" % PROXY_PORT,
            "memory": "VmRSS of the proxy every 0.1 s; per connection = (peak during attack - "
                      "before) / peak concurrent slow connections",
            "nofile": nofile,
        },
        "settings": settings,
        "attacks": results,
    }
    path = args.out or common.results_path("slow-clients", source["commit"])
    common.write_json(path, report)

    print()
    print(f"proxy {source['commit']}{' +uncommitted' if source['uncommitted_api_dataplane'] else ''}, "
          f"min-data-rate settings {'present' if source['min_data_rate_supported'] else 'ABSENT'}; "
          f"load average before {load_before[0]:.2f}")
    header = (f"{'attack':8s} {'probe p50':>9s} {'p99':>7s} {'max':>7s} {'err':>4s} {'peak':>5s} "
              f"{'closed':>6s} {'open':>5s} {'life p50':>8s} {'max':>6s} {'limit':>6s} "
              f"{'RSS before':>10s} {'peak':>8s} {'KiB/conn':>8s}  targets")
    print(header)
    for name, r in results.items():
        p, s, m = r["probe"], r["slow_connections"], r["memory"]

        def f(v, w, d=1):
            return f"{v:{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}s}"
        verdict = ", ".join(f"{k}={'ok' if v else 'MISS'}" for k, v in r["targets"].items())
        print(f"{name:8s} {f(p['p50_ms'], 9, 2)} {f(p['p99_ms'], 7, 2)} {f(p['max_ms'], 7, 1)} {p['errors']:4d} "
              f"{s['peak_concurrent']:5d} {s['closed_by_proxy']:6d} {s['still_open_when_attack_ended']:5d} "
              f"{f(s['lifetime_s']['p50'], 8)} {f(s['lifetime_s']['max'], 6)} {f(s['limit_s'], 6)} "
              f"{f(m['rss_kib_before'], 10, 0)} {f(m['rss_kib_peak'], 8, 0)} {f(m['kib_per_slow_connection'], 8)}  {verdict}")
        after = s.get("after_response_began_s")
        if after:
            wait, life = after["response_wait_s"], after["lifetime_after_response_s"]
            print(f"{'':8s} {after['connections']} connections: response began after p50 "
                  f"{wait['p50']} / max {wait['max']} s; lived after it p50 {life['p50']} / "
                  f"max {life['max']} s (timer {r['expected_lifetime_s']} s)")
    print("(latencies in ms, lifetimes in s, RSS in KiB)")
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
