#!/usr/bin/env python3
"""Overload measurement for portcullis-proxy: twice its saturating rate, plus a connection flood.

1. Saturation: closed-loop wrk (CPU 0, with the nginx backend) against a release proxy on one
   core (CPU 1), at a few connection counts; the best req/s is the saturating rate S. The
   proxy's CPU use during that run tells whether the proxy or the load side was the limit.
2. Baseline: the probe alone (one GET every 20 ms on a fresh connection and every 20 ms on a
   keep-alive one) for --baseline-seconds.
3. Overload for DURATION seconds (default 300): oha, open loop at 2 x S requests/s with
   --latency-correction (latency counted from each request's scheduled start, so coordinated
   omission is corrected), and, in waves, a connection flood (a separate process opening more
   connections than max_connections_per_core, one GET on each, held for --flood-hold seconds),
   to exercise the over-limit 503 path. The probe keeps running; the proxy's RSS and admin
   metrics are sampled every second.
4. Recovery: after the load stops, the time until the probe is back to its baseline (first
   1 s window with no error, p50 <= 1.5 x baseline p50 and p99 <= 2 x baseline p99; target
   <= 10 s).

Writes bench/results/hardening/overload-<date>-<short-sha>.json and prints a table.
See bench/hardening/README.md.
"""

import argparse
import datetime
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts (not git-ignored)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import LOAD_CPU, PROXY_CPU, percentile  # noqa: E402

PROXY_PORT = 18401
ADMIN_PORT = 18499
BACKEND_PORT = 18490
FLOOD_SOURCE = "127.0.0.5"
TOOLS = os.path.expanduser("~/.cache/portcullis/tools")
OHA = f"{TOOLS}/bin/oha"

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
    # Low on purpose: the flood goes above it.
    "max_connections_per_core": 2_000,
    "max_requests_per_connection": 0,
}
MIN_RATE = {"min_data_rate_bytes_per_s": 240, "min_data_rate_grace_ms": 5_000}


def ensure_oha():
    if os.path.exists(OHA):
        return
    print(f"==> cargo install oha --locked --root {TOOLS}", flush=True)
    subprocess.run(["cargo", "install", "oha", "--locked", "--root", TOOLS], check=True)


# --------------------------------------------------------------------------------------------
# Flood worker (runs as its own process so it does not share the probe's interpreter lock)


def flood_worker(args):
    """Waves of --flood-connections connections from FLOOD_SOURCE, each sending one GET.
    A connection answered 200 is held until the wave ends; one answered otherwise is closed
    at once, as a client would after `connection: close`. Prints JSON counts per wave."""
    request = b"GET / HTTP/1.1\r\nHost: flood.local\r\nUser-Agent: flood\r\n\r\n"
    end = time.monotonic() + args.duration
    waves = []
    while time.monotonic() < end:
        wave_start = time.monotonic()
        counts = {}
        sel = selectors.DefaultSelector()
        socks = []

        def count(key):
            counts[key] = counts.get(key, 0) + 1

        for _ in range(args.flood_connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((FLOOD_SOURCE, 0))
            err = s.connect_ex(("127.0.0.1", args.port))
            if err not in (0, 115):  # EINPROGRESS
                count(f"connect errno {err}")
                s.close()
                continue
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE, {"buf": b""})
        pending = len(socks)
        answer_deadline = wave_start + args.flood_answer_timeout
        connected_at = time.monotonic() - wave_start
        while pending and time.monotonic() < answer_deadline:
            for key, events in sel.select(timeout=0.1):
                s, state = key.fileobj, key.data
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        count(f"connect errno {err}")
                        sel.unregister(s)
                        s.close()
                        pending -= 1
                        continue
                    try:
                        s.send(request)
                    except OSError as e:
                        count(f"send {type(e).__name__}")
                        sel.unregister(s)
                        s.close()
                        pending -= 1
                        continue
                    sel.modify(s, selectors.EVENT_READ, state)
                    continue
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = None
                except OSError as e:
                    count(f"recv {type(e).__name__}")
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    continue
                if data is None:
                    count("reset")
                elif not data:
                    count("eof" if not state["buf"] else "eof mid-response")
                else:
                    state["buf"] += data
                    if b"\r\n" not in state["buf"]:
                        continue
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", state["buf"])
                    status = m.group(1).decode() if m else "garbage"
                    count(status)
                    if status == "200":
                        sel.unregister(s)  # held open until the wave ends
                        pending -= 1
                        continue
                sel.unregister(s)
                s.close()
                pending -= 1
        if pending:
            count("no answer")
        answered_at = time.monotonic() - wave_start
        time.sleep(max(0.0, wave_start + args.flood_hold - time.monotonic()))
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        sel.close()
        waves.append({"t": round(wave_start, 3), "connect_loop_s": round(connected_at, 3),
                      "answered_s": round(answered_at, 3), "counts": counts})
        print(json.dumps(waves[-1]), file=sys.stderr, flush=True)
        time.sleep(max(0.0, min(end, wave_start + args.flood_period) - time.monotonic()))
    print(json.dumps(waves))


# --------------------------------------------------------------------------------------------
# Measurement


def wrk(port, seconds, connections):
    out = common.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                      "-H", "Host: bench.local", f"http://127.0.0.1:{port}/"]).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(m.group(1)) if m else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def saturation(proxy, seconds, connection_counts):
    runs = []
    wrk(PROXY_PORT, 2, connection_counts[0])  # warm-up
    for c in connection_counts:
        cpu0, t0, m0 = proxy.cpu(), time.monotonic(), common.cpu_times()
        r = wrk(PROXY_PORT, seconds, c)
        cpu, wall = proxy.cpu() - cpu0, time.monotonic() - t0
        r.update({"connections": c, "req_per_s": round(r["requests"] / seconds),
                  "proxy_cpu_busy": round(cpu / wall, 3),
                  "machine_cpu_busy": common.cpu_busy(m0, common.cpu_times()),
                  "proxy_cpu_us_per_req": round(cpu / max(r["requests"], 1) * 1e6, 1)})
        print(f"    wrk -c{c}: {r['req_per_s']} req/s, proxy CPU busy {r['proxy_cpu_busy']:.0%} "
              f"(CPU busy {r['machine_cpu_busy']}), "
              f"{r['proxy_cpu_us_per_req']} us/req, errors {r['socket_errors'] + r['non_2xx']}", flush=True)
        runs.append(r)
    return max(runs, key=lambda r: r["req_per_s"]), runs


def windows(records, start, end, step=0.1, width=1.0):
    """Sliding 1 s windows of probe records: (offset, n, errors, p50_ms, p99_ms)."""
    out = []
    t = start
    while t + width <= end:
        rs = [r for r in records if t <= r[0] < t + width]
        lat = [r[2] * 1000 for r in rs if r[2] is not None]
        out.append((round(t - start, 2), len(rs), sum(1 for r in rs if r[2] is None),
                    percentile(lat, 50), percentile(lat, 99)))
        t += step
    return out


def recovery_time(records, t_stop, end, base):
    """Seconds from the end of the load to the start of the first 1 s probe window with no
    error, p50 <= 1.5 x baseline p50 and p99 <= 2 x baseline p99 (None if never)."""
    p50_limit = 1.5 * base["p50_ms"]
    p99_limit = 2.0 * base["p99_ms"]
    for offset, n, errors, p50, p99 in windows(records, t_stop, end):
        if n and not errors and p50 is not None and p50 <= p50_limit and p99 <= p99_limit:
            return offset, {"p50_limit_ms": round(p50_limit, 3), "p99_limit_ms": round(p99_limit, 3)}
    return None, {"p50_limit_ms": round(p50_limit, 3), "p99_limit_ms": round(p99_limit, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 300)),
                        help="overload seconds (env DURATION, default 300)")
    parser.add_argument("--saturation-seconds", type=int, default=10)
    parser.add_argument("--saturation-connections", default="64,256")
    parser.add_argument("--factor", type=float, default=2.0, help="offered rate = factor x saturating rate")
    parser.add_argument("--oha-connections", type=int, default=256)
    parser.add_argument("--oha-timeout", default="10s")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--recovery-seconds", type=float, default=30.0)
    parser.add_argument("--flood-connections", type=int, default=3000)
    parser.add_argument("--flood-hold", type=float, default=10.0)
    parser.add_argument("--flood-period", type=float, default=20.0)
    parser.add_argument("--flood-answer-timeout", type=float, default=8.0)
    parser.add_argument("--no-flood", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out")
    # Internal: the flood process.
    parser.add_argument("--flood-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PROXY_PORT, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.flood_worker:
        common.raise_nofile()
        flood_worker(args)
        return

    common.ensure_apt("wrk", "wrk")
    common.ensure_apt("nginx", "nginx-light")
    ensure_oha()
    if not args.no_build:
        common.build_proxy()
    nofile = common.raise_nofile()
    common.pin_self(LOAD_CPU)
    source = common.source_state()
    settings = dict(SETTINGS)
    if source["min_data_rate_supported"]:
        settings.update(MIN_RATE)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="portcullis-overload.")
    backend = common.start_backend(work, BACKEND_PORT)
    proxy = None
    flood = None
    oha = None
    try:
        proxy = common.Proxy(work, PROXY_PORT, ADMIN_PORT, BACKEND_PORT, settings)
        time.sleep(1)
        print("==> saturation (closed-loop wrk)", flush=True)
        best, sat_runs = saturation(proxy, args.saturation_seconds,
                                    [int(c) for c in args.saturation_connections.split(",")])
        rate = int(best["req_per_s"] * args.factor)
        time.sleep(2)

        print(f"==> baseline probe, {args.baseline_seconds:.0f} s", flush=True)
        rss = common.Sampler(proxy.rss, 1.0).start()
        metrics = common.Sampler(proxy.metrics, 1.0).start()
        probe = common.Probe(PROXY_PORT).start()
        t_base = time.monotonic()
        time.sleep(args.baseline_seconds)
        t_load = time.monotonic()
        base = common.probe_summary(probe.window(t_base, t_load))
        print(f"    probe p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms, errors {base['errors']}", flush=True)

        print(f"==> overload: oha -q {rate} (= {args.factor} x {best['req_per_s']}) "
              f"-c {args.oha_connections} for {args.duration} s"
              + ("" if args.no_flood else f", flood waves of {args.flood_connections} connections "
                 f"every {args.flood_period:.0f} s (limit {settings['max_connections_per_core']})"), flush=True)
        cpu_before = proxy.cpu()
        machine_before = common.cpu_times()
        oha_json = f"{work}/oha.json"
        oha_cmd = ["taskset", "-c", LOAD_CPU, OHA, "-z", f"{args.duration}s", "-q", str(rate),
                   "-c", str(args.oha_connections), "--latency-correction", "--no-tui",
                   "--worker-threads", "1", "-t", args.oha_timeout,
                   "-H", "Host: bench.local", "--output-format", "json", "-o", oha_json,
                   f"http://127.0.0.1:{PROXY_PORT}/"]
        oha = subprocess.Popen(oha_cmd, stdout=subprocess.DEVNULL, stderr=open(f"{work}/oha.err", "w"))
        flood_cmd = None
        if not args.no_flood:
            time.sleep(min(10.0, args.duration / 10))  # let the open-loop load settle first
            flood_cmd = ["taskset", "-c", LOAD_CPU, sys.executable, os.path.abspath(__file__),
                         "--flood-worker", "--port", str(PROXY_PORT),
                         "--duration", str(max(1, int(args.duration - (time.monotonic() - t_load)) - 5)),
                         "--flood-connections", str(args.flood_connections),
                         "--flood-hold", str(args.flood_hold), "--flood-period", str(args.flood_period),
                         "--flood-answer-timeout", str(args.flood_answer_timeout)]
            flood = subprocess.Popen(flood_cmd, stdout=subprocess.PIPE, stderr=open(f"{work}/flood.err", "w"),
                                     text=True)
        flood_out = flood.communicate()[0] if flood else "[]"
        oha.wait()
        t_stop = time.monotonic()
        cpu_load = proxy.cpu() - cpu_before
        machine_busy = common.cpu_busy(machine_before, common.cpu_times())
        print(f"==> load stopped; watching recovery for {args.recovery_seconds:.0f} s", flush=True)
        time.sleep(args.recovery_seconds)
        t_end = time.monotonic()
        probe.stop()
        rss_samples = rss.stop()
        metric_samples = metrics.stop()
        alive = proxy.alive()
        try:
            live = common.scrape(ADMIN_PORT) is not None and alive
        except OSError:
            live = False
        hwm = proxy.status_field("VmHWM")
    finally:
        for p in (oha, flood):
            if p is not None and p.poll() is None:
                p.kill()
        code = proxy.stop() if proxy else None
        common.stop_proc(backend)
    log_lines = proxy.log_lines() if proxy else []
    try:
        with open(oha_json) as f:
            oha_result = json.load(f)
    except (OSError, ValueError) as e:
        oha_result = {"error": str(e)}
    with open(f"{work}/oha.err", errors="replace") as f:
        oha_err = f.read().strip().splitlines()[-10:]
    try:
        waves = json.loads(flood_out.strip().splitlines()[-1]) if flood_out.strip() else []
    except (ValueError, IndexError):
        waves = [{"error": flood_out[-500:]}]
    shutil.rmtree(work, ignore_errors=True)

    # Summaries.
    flood_counts = {}
    for w in waves:
        for k, v in w.get("counts", {}).items():
            flood_counts[k] = flood_counts.get(k, 0) + v
    flood_total = sum(flood_counts.values())
    rss_load = [(t, v) for t, v in rss_samples if isinstance(v, int)]
    rss_before = next((v for t, v in rss_load if t >= t_base), None)
    load_records = probe.window(t_load, t_stop)
    during = common.probe_summary(load_records)
    after = common.probe_summary(probe.window(t_stop, t_end))
    recovered_s, limits = recovery_time(probe.records, t_stop, t_end, base)
    metric_dicts = [(t, v) for t, v in metric_samples if isinstance(v, dict) and "requests_by_class" in v]
    m0 = next((v for t, v in metric_dicts if t >= t_load), {})
    m1 = next((v for t, v in reversed(metric_dicts) if t <= t_stop + 1.5), {})

    def delta(key):
        return None if key not in m0 or key not in m1 else int(m1[key] - m0[key])

    classes = {k: m1.get("requests_by_class", {}).get(k, 0) - m0.get("requests_by_class", {}).get(k, 0)
               for k in sorted(set(m1.get("requests_by_class", {})) | set(m0.get("requests_by_class", {})))}
    oha_summary = oha_result.get("summary", {})
    oha_pct = oha_result.get("latencyPercentiles", {})
    status_counts = {str(k): v for k, v in oha_result.get("statusCodeDistribution", {}).items()}
    oha_errors = oha_result.get("errorDistribution", {})
    after_windows = windows(probe.records, t_stop, t_end, step=1.0)

    def ms(v):
        return round(v * 1000, 3) if isinstance(v, (int, float)) else None

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "command": " ".join(sys.argv),
        "machine": common.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "method": {
            "pinning": f"proxy --cpus {PROXY_CPU}; wrk/oha, flood, nginx backend and probe on CPU {LOAD_CPU}",
            "saturation": f"wrk -t1 -c{{{args.saturation_connections}}} -d{args.saturation_seconds}s, best req/s",
            "overload": " ".join(oha_cmd[3:]),
            "flood": " ".join(flood_cmd[3:]) if flood_cmd else None,
            "probe": "GET / every 20 ms on a fresh connection and every 20 ms on a keep-alive one, from "
                     "127.0.0.3, 2 s timeout",
            "recovery": "first 1 s window (0.1 s steps) after oha exits with no probe error, p50 <= 1.5 x "
                        "baseline p50 and p99 <= 2 x baseline p99",
            "nofile": nofile,
        },
        "settings": settings,
        "saturation": {"best": best, "runs": sat_runs, "offered_rate": rate},
        "overload": {
            "duration_s": round(t_stop - t_load, 1),
            "oha": {
                "requests_per_s_achieved": round(oha_summary.get("requestsPerSec", 0) or 0, 1),
                "success_rate": oha_summary.get("successRate"),
                "status_codes": status_counts,
                "errors": oha_errors,
                "p50_ms_corrected": ms(oha_pct.get("p50")),
                "p99_ms_corrected": ms(oha_pct.get("p99")),
                "p99_9_ms_corrected": ms(oha_pct.get("p99.9")),
                "slowest_ms": ms(oha_summary.get("slowest")),
                "stderr_tail": oha_err,
            },
            "flood": {"waves": len(waves), "totals": flood_counts, "connections": flood_total,
                      "per_wave": waves},
            "probe_during": during,
            "probe_per_second": common.probe_timeline(probe.records, t_base, t_end),
            "proxy": {
                "alive_after": alive,
                "admin_answers_after": live,
                "exit_code": code,
                "cpu_busy_during": round(cpu_load / max(t_stop - t_load, 1e-9), 3),
                "machine_cpu_busy_during": machine_busy,
                "requests_by_class": classes,
                "connections_accepted": delta("portcullis_connections_accepted_total"),
                "connections_rejected": delta("portcullis_connections_rejected_total"),
                "active_connections_max": max((v.get("portcullis_active_connections", 0)
                                               for _, v in metric_dicts), default=None),
                "metrics_scrape_failures": sum(1 for _, v in metric_samples if not isinstance(v, dict)
                                               or "error" in v),
                "log_warnings": [line for line in log_lines
                                 if '"level":"warn"' in line or '"level":"error"' in line][-20:],
            },
            "rss_kib": {
                "before": rss_before,
                "max": max((v for _, v in rss_load), default=None),
                "vm_hwm": hwm,
                "series": [(round(t - t_load, 1), v) for t, v in rss_load],
            },
        },
        "baseline_probe": base,
        "recovery": {
            "seconds": recovered_s,
            **limits,
            "probe_after_load": after,
            "slow_probes_after_stop": [
                (round(r[0] - t_stop, 2), r[1], round(r[2] * 1000, 2) if r[2] is not None else r[4])
                for r in probe.window(t_stop, t_end)
                if r[2] is None or r[2] * 1000 > limits["p99_limit_ms"]][:300],
            "per_second_after_stop": [{"t": w[0], "n": w[1], "errors": w[2], "p50_ms": w[3], "p99_ms": w[4]}
                                      for w in after_windows[:20]],
        },
    }
    report["targets"] = {
        "proxy_survived": alive and live,
        "recovery_within_10s": recovered_s is not None and recovered_s <= 10,
        "over_limit_connections_answered_503": (flood_counts.get("503", 0) > 0
                                                and flood_counts.get("reset", 0) + flood_counts.get("eof", 0) == 0),
    }
    path = args.out or common.results_path("overload", source["commit"])
    common.write_json(path, report)

    o = report["overload"]
    print()
    print(f"proxy {source['commit']}{' +uncommitted' if source['uncommitted_api_dataplane'] else ''}; "
          f"load average before {load_before[0]:.2f}")
    rows = [
        ("saturating rate (closed-loop wrk)", f"{best['req_per_s']} req/s at -c{best['connections']}, "
                                              f"proxy CPU busy {best['proxy_cpu_busy']:.0%}"),
        ("offered (open loop, oha -q)", f"{rate} req/s for {o['duration_s']} s"),
        ("achieved by oha", f"{o['oha']['requests_per_s_achieved']} req/s"),
        ("oha status codes", json.dumps(o["oha"]["status_codes"])),
        ("oha errors", json.dumps(o["oha"]["errors"])),
        ("oha p50 / p99 (corrected)", f"{o['oha']['p50_ms_corrected']} / {o['oha']['p99_ms_corrected']} ms"),
        ("flood answers", f"{json.dumps(flood_counts)} over {len(waves)} waves"),
        ("proxy: 2xx/5xx, rejected conns", f"{json.dumps(classes)}, {o['proxy']['connections_rejected']}"),
        ("probe during load p50/p99/max, errors",
         f"{during['p50_ms']} / {during['p99_ms']} / {during['max_ms']} ms, {during['errors']} "
         f"{json.dumps(during['error_kinds'])}"),
        ("probe baseline p50/p99", f"{base['p50_ms']} / {base['p99_ms']} ms"),
        ("recovery to baseline", f"{recovered_s} s (target <= 10 s)"),
        ("RSS before / max / VmHWM", f"{o['rss_kib']['before']} / {o['rss_kib']['max']} / {hwm} KiB"),
        ("proxy survived", f"{alive and live} (exit code at stop: {code})"),
    ]
    for k, v in rows:
        print(f"{k:40s} {v}")
    print("targets: " + ", ".join(f"{k}={'ok' if v else 'MISS'}" for k, v in report["targets"].items()))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
