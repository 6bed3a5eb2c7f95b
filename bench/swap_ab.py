#!/usr/bin/env python3
"""Config-swap latency of two proxy builds, side by side: for each round, each build is started
alone with the bench config and then receives `--pushes` pushes of the bench config plus
`--routes` HTTPRoutes, each timed push -> ACK by `portcullis push` (bench.py's push_seconds).
The configs are written to files first, so the pushes follow each other as fast as the push
client starts (an agent forwarding a burst of changes), or `--gap` seconds apart. Prints each
round's median and quartiles.

    python3 bench/swap_ab.py --a OLD_BIN_DIR --b NEW_BIN_DIR [--rounds 3] [--pushes 20] [--gap 0]

Each directory holds `portcullis-proxy` and `portcullis` (the push client)."""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

# The first pushes grow the control thread's heap; a running proxy is past them.
WARM_UP = 3


def main():
    parser = bench.ab_arguments(rounds=3)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between pushes")
    args = parser.parse_args()
    bin_dirs = {"A": args.a, "B": args.b}

    def measure(system, round_index, name):
        work = system.work
        base = bench.portcullis_config(work, f"{work}/cert.pem", f"{work}/key.pem")
        paths = []
        for i in range(WARM_UP + args.pushes):
            path = f"{work}/push-{i}.json"
            bench.write(path, json.dumps(bench.with_extra_routes(base, args.routes, 100 + i)))
            paths.append(path)
        acked = []
        for i, path in enumerate(paths):
            seconds, _ = bench.push_file_seconds(bin_dirs[name], work, path)
            if i >= WARM_UP:
                acked.append(seconds * 1000)
            time.sleep(args.gap)
        for path in paths:
            os.remove(path)
        q1, q2, q3 = statistics.quantiles(acked, n=4)
        print(f"round {round_index} {name}: push -> ACK with {args.routes} routes, {args.gap} s "
              f"apart: median {q2:.1f} ms (quartiles {q1:.1f} / {q3:.1f}) over {len(acked)} "
              f"pushes", flush=True)

    bench.alternate_builds([("A", args.a), ("B", args.b)], args.rounds, measure)


if __name__ == "__main__":
    main()
