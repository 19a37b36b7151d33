"""CPU per request of the hot path's upstream POST: ``python -m benchmarks.h1_client``.

Starts the fast fixture over Streamable HTTP, opens a session, then sends the same small
``tools/call`` POST sequentially through aiohttp's client (as ``router/http_transport.py`` did) and
through :class:`toolcrib.router.h1.Origin`, alternating rounds on one uvloop, and prints the
process CPU time (user + system) and wall time per request of each. The fixture runs in its own
process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import aiohttp
import uvloop

from benchmarks import machine
from benchmarks.driver import HttpClient, Proc
from benchmarks.latency import fixture_argv
from toolcrib.router.h1 import Origin

BODY = json.dumps(
    {"jsonrpc": "2.0", "id": "tc-1", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
).encode()


async def run(url: str, requests: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "h1": []}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        headers = (await HttpClient(http, url).open()).headers  # a session: initialize + initialized
        origin = Origin(url, {}, 10.0, http)

        async def via_aiohttp() -> None:
            async with http.post(url, data=BODY, headers=headers) as resp:
                await resp.read()

        async def via_h1() -> None:
            async with origin.post(BODY, headers) as resp:
                await resp.read()

        for _ in range(rounds):
            for name, fn in (("aiohttp", via_aiohttp), ("h1", via_h1)):
                for _ in range(requests // 10):
                    await fn()  # warm
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(requests):
                    await fn()
                out[name].append(((time.process_time() - cpu) / requests, (time.perf_counter() - wall) / requests))
        origin.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per round and client (default 3000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = p.parse_args()
    up = Proc([*fixture_argv("fast"), "--http", "0"])
    try:
        url = up.wait_line("LISTENING ")
        out = uvloop.run(run(url, args.requests, args.rounds))
    finally:
        up.stop()
    print(machine.describe())
    print(f"{args.rounds} alternating rounds of {args.requests} sequential POSTs; medians of the rounds")
    print("| client | CPU us/request | wall us/request |")
    print("|---|---:|---:|")
    for name, rows in out.items():
        cpu = statistics.median(r[0] for r in rows) * 1e6
        wall = statistics.median(r[1] for r in rows) * 1e6
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
