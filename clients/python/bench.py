"""Latency of GetKey over the service socket, from Python.

    KEYWARD_SOCKET=/path/keys.sock python clients/python/bench.py prod/x [-n 5000] [--client sync|aio|floor|floor-aio]
    KEYWARD_SOCKET=/path/keys.sock python clients/python/bench.py prod/x --compare [--rounds 3]

One client (one channel, one connection), 1,000 warm-up calls, then N
timed calls one after another. Prints ``p50_us=<float> p99_us=<float>``
(microseconds, nearest-rank percentiles) on one line, for the benchmark in
BENCHMARKS.md (benches/clients.rs runs the default, ``--client sync``).

Clients:

- ``sync``: ``keyward.Client.get``;
- ``aio``: ``await keyward.aio.Client.get``, from one coroutine;
- ``floor``: the bare generated stub on a plain grpcio channel, the same
  request and metadata, no keyward code around it (no interceptor, no
  KeySet conversion, no error mapping): the floor of what a Python client
  can reach with grpcio on this socket;
- ``floor-aio``: the same on a ``grpc.aio`` channel.

``--compare`` runs all four, alternating, ``--rounds`` times (keep it under
a minute: each round is 4 x (warm-up + N) calls) and prints each one's
median p50/p99 and its p50 against the floors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

import keyward  # noqa: E402 - after the path tweak, so no install is needed
import keyward.aio  # noqa: E402
from keyward._proto import keys_pb2_grpc  # noqa: E402
from keyward.client_name import CLIENT_METADATA  # noqa: E402
from keyward.core import CHANNEL_OPTIONS, get_request  # noqa: E402

CLIENTS = ("sync", "aio", "floor", "floor-aio")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


def timed(call: Callable[[], object], warmup: int, count: int) -> list[float]:
    for _ in range(warmup):
        call()
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


async def timed_async(call: Callable[[], Awaitable[object]], warmup: int, count: int) -> list[float]:
    for _ in range(warmup):
        await call()
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


def run(client: str, socket: str, key: str, warmup: int, count: int) -> list[float]:
    """The latencies (µs) of ``count`` calls with ``client``."""
    if client == "sync":
        with keyward.Client(socket) as c:
            return timed(lambda: c.get(key), warmup, count)
    if client == "aio":

        async def aio() -> list[float]:
            async with keyward.aio.Client(socket) as c:
                return await timed_async(lambda: c.get(key), warmup, count)

        return asyncio.run(aio())
    request = get_request(key)
    target = f"unix:{os.path.realpath(socket)}"
    if client == "floor":
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = keys_pb2_grpc.KeysStub(channel)  # type: ignore[no-untyped-call]
            return timed(lambda: stub.GetKey(request, timeout=10, metadata=CLIENT_METADATA), warmup, count)
    if client == "floor-aio":

        async def floor_aio() -> list[float]:
            async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
                stub = keys_pb2_grpc.KeysStub(channel)  # type: ignore[no-untyped-call]
                return await timed_async(
                    lambda: stub.GetKey(request, timeout=10, metadata=CLIENT_METADATA), warmup, count
                )

        return asyncio.run(floor_aio())
    raise ValueError(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("key", help="ENV/NAME of an existing key the caller may read")
    parser.add_argument("-n", "--count", type=int, default=5000, help="timed calls (default 5000)")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed calls first (default 1000)")
    parser.add_argument("--socket", default=None, help="service socket (default $KEYWARD_SOCKET)")
    parser.add_argument("--client", choices=CLIENTS, default="sync", help="what makes the calls (default sync)")
    parser.add_argument("--compare", action="store_true", help="all four clients, alternating, --rounds times")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare (default 3)")
    args = parser.parse_args()
    socket = args.socket or os.environ.get("KEYWARD_SOCKET") or keyward.DEFAULT_SOCKET

    try:
        if not args.compare:
            times = sorted(run(args.client, socket, args.key, args.warmup, args.count))
            print(f"p50_us={percentile(times, 50):.1f} p99_us={percentile(times, 99):.1f}")
            return 0
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in CLIENTS}
        for round_ in range(args.rounds):
            line = []
            for client in CLIENTS:
                times = sorted(run(client, socket, args.key, args.warmup, args.count))
                p50, p99 = percentile(times, 50), percentile(times, 99)
                results[client].append((p50, p99))
                line.append(f"{client} {p50:.1f}/{p99:.1f}")
            print(f"round {round_}: p50/p99 µs  " + "  ".join(line), flush=True)
    except keyward.KeywardError as e:
        print(f"bench: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    med = {c: (statistics.median(p for p, _ in r), statistics.median(q for _, q in r)) for c, r in results.items()}
    print(f"\nGetKey, median of {args.rounds} rounds of {args.count} calls (after {args.warmup} warm-up):")
    for client in CLIENTS:
        p50, p99 = med[client]
        print(
            f"  {client:<9} p50 {p50:7.1f} µs  p99 {p99:7.1f} µs  "
            f"p50 = {p50 / med['floor'][0]:.2f}x the grpcio floor, {p50 / med['floor-aio'][0]:.2f}x the grpc.aio floor"
        )
    print(f"  aio / sync p50: {med['aio'][0] / med['sync'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
