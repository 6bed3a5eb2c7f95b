#!/usr/bin/env python3
"""Idle memory per connection of two proxy builds, side by side: for each round, each build is
started alone, warmed with 3 s of wrk per port, and measured with bench.py's
idle_kib_per_connection (plaintext, then TLS while the plaintext connections stay open).

    python3 bench/idle_ab.py --a OLD_BIN_DIR --b NEW_BIN_DIR [--rounds 2] [--connections 4500]

Each directory holds a `portcullis-proxy`. Uses the same ports, CPUs and backend as bench.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    parser = bench.ab_arguments(rounds=2)
    parser.add_argument("--connections", type=int, default=4500)
    args = parser.parse_args()

    def measure(system, round_index, name):
        bench.wrk(f"http://127.0.0.1:{system.plain_port}/", 3, 50)
        bench.wrk(f"https://127.0.0.1:{system.tls_port}/", 3, 50)
        os.sched_setaffinity(0, {int(bench.LOAD_CPU)})
        r = bench.idle_kib_per_connection(system, args.connections)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        print(f"round {round_index} {name}: plaintext {r['plain']:.2f} "
              f"(second half {r['plain_marginal']:.2f}), TLS {r['tls']:.2f} "
              f"(second half {r['tls_marginal']:.2f}) KiB per connection", flush=True)

    bench.alternate_builds([("A", args.a), ("B", args.b)], args.rounds, measure)


if __name__ == "__main__":
    main()
