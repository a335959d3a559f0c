"""Latency of Client.get over the service socket.

    KEYWARD_SOCKET=/path/keys.sock python clients/python/bench.py prod/x [-n 5000]

One Client (one channel, one connection), 1,000 warm-up calls, then N timed
``get`` calls one after another. Prints ``p50_us=<float> p99_us=<float>``
(microseconds, nearest-rank percentiles) on one line, for the benchmark
in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keyward  # noqa: E402 - after the path tweak, so no install is needed


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("key", help="ENV/NAME of an existing key the caller may read")
    parser.add_argument("-n", "--count", type=int, default=5000, help="timed calls (default 5000)")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed calls first (default 1000)")
    parser.add_argument("--socket", default=None, help="service socket (default $KEYWARD_SOCKET)")
    args = parser.parse_args()

    with keyward.Client(args.socket) as client:
        try:
            for _ in range(args.warmup):
                client.get(args.key)
            times: list[float] = []
            for _ in range(args.count):
                start = time.perf_counter_ns()
                client.get(args.key)
                times.append((time.perf_counter_ns() - start) / 1000)
        except keyward.KeywardError as e:
            print(f"bench: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    times.sort()
    print(f"p50_us={percentile(times, 50):.1f} p99_us={percentile(times, 99):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
