#!/usr/bin/env python3
"""CPU per request of two proxy builds, side by side: for each round, each build is started
alone and measured like bench.py's keep-alive scenarios (2 s of wrk unmeasured, then
`--seconds` of wrk with 50 connections, plaintext then TLS), counting the proxy's CPU time,
the kernel's part of it, and its minor page faults per request.

    python3 bench/cpu_ab.py --a OLD_BIN_DIR --b NEW_BIN_DIR [--rounds 4] [--seconds 8]

Each directory holds a `portcullis-proxy`. Prints every run, then per build the median over
rounds and B's medians divided by A's. Uses the same ports, CPUs and backend as bench.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

FIGURES = ["cpu_us", "kernel_us", "faults"]


def main():
    parser = bench.ab_arguments(rounds=4)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    runs = {(name, kind): [] for name in "AB" for kind in ["plain", "tls"]}

    def measure(system, round_index, name):
        pid = system.pids()[0]
        for kind, url in [("plain", f"http://127.0.0.1:{system.plain_port}/"),
                          ("tls", f"https://127.0.0.1:{system.tls_port}/")]:
            bench.wrk(url, 2, 50)
            faults = bench.minor_faults(pid)
            requests, errors, cpu, kernel = bench.measure(system, url, args.seconds, 50)
            faults = bench.minor_faults(pid) - faults
            row = {"cpu_us": cpu / requests * 1e6, "kernel_us": kernel / requests * 1e6,
                   "faults": faults / requests}
            runs[(name, kind)].append(row)
            print(f"round {round_index} {name} {kind:5s}: "
                  + ", ".join(f"{k} {row[k]:.2f}" for k in FIGURES)
                  + f" per request ({requests} requests, {errors} errors)", flush=True)

    bench.alternate_builds([("A", args.a), ("B", args.b)], args.rounds, measure)
    for kind in ["plain", "tls"]:
        medians = {name: {k: bench.median([r[k] for r in runs[(name, kind)]]) for k in FIGURES}
                   for name in "AB"}
        for name in "AB":
            print(f"median {name} {kind:5s}: " + ", ".join(f"{k} {medians[name][k]:.2f}" for k in FIGURES))
        print(f"B / A  {kind:5s}: " + ", ".join(
            f"{k} {medians['B'][k] / medians['A'][k]:.3f}" if medians["A"][k] else f"{k} -"
            for k in FIGURES))


if __name__ == "__main__":
    main()
