"""Load run: ``python -m benchmarks.load [--seconds 120] [--sessions 200]``.

Starts toolcrib in dispatcher mode (real index model, trust layers on, audit to SQLite) in front
of the fast fixture (Streamable HTTP, tool ``echo``) and ``mcp-server-time`` (stdio, a real
server, so search has more than one tool to rank), opens ``--sessions`` client sessions and keeps
every one busy for ``--seconds`` with a mix of ``search_tools`` and ``invoke`` calls (closed loop).
Reports calls, errors, latency, the gateway's RSS sampled over time, and whether every call
reached the audit log. Writes ``benchmarks/results/load.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import machine
from benchmarks.driver import PY, HttpClient, Proc, free_port, upstream_credential

RESULTS = Path(__file__).resolve().parent / "results"
#: Issue 11's targets for this run: twice the calls/s measured on 2026-11-26, search_tools p50 <= 30 ms.
BASELINE_CALLS_PER_S = 342
SEARCH_P50_TARGET_MS = 30.0
QUERIES = ["echo some text back", "what time is it in Tokyo", "convert time between timezones", "repeat my words"]


def config_text(tmp: Path, upstream_url: str) -> str:
    return (
        f'[gateway]\nmode = "dispatcher"\nmax_sessions = 1000\nmax_sessions_per_principal = 1000\n\n'
        f'[index]\npath = "{tmp}/index"\n\n'
        f'[audit]\npath = "{tmp}/audit.db"\n\n'
        f'[servers.up]\nurl = "{upstream_url}"\n{upstream_credential("http")}\n'
        f'[servers.time]\ncommand = "{PY}"\nargs = ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
    )


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def run(args: argparse.Namespace) -> str:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="toolcrib-load-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            up = Proc([PY, "-m", "benchmarks.fixtures", "fast", "--http", "0"])
            procs.append(up)
            cfg = tmp / "toolcrib.toml"
            cfg.write_text(config_text(tmp, up.wait_line("LISTENING ")), encoding="utf-8")
            gw = Proc([PY, "-m", "benchmarks.gateway_proc", str(cfg), "--port", str(free_port())])
            procs.append(gw)
            url = gw.wait_line("LISTENING ", timeout=180)
            result = await drive(url, gw, args)
            gw.stop()  # flush and close the audit log before counting rows
            result["audit"] = audit_counts(tmp / "audit.db")
            return report(result, args)
        finally:
            for p in reversed(procs):
                p.stop()


async def drive(url: str, gw: Proc, args: argparse.Namespace) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"search_tools": [], "invoke": []}
    errors: Counter[str] = Counter()
    rss: list[tuple[float, float]] = []
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        clients = await asyncio.gather(*(HttpClient(http, url).open() for _ in range(args.sessions)))
        rss_start = gw.rss_mb()
        t0 = time.monotonic()

        counter = itertools.count()

        async def session(client: HttpClient, seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                if rng.random() < args.search_share:
                    kind, name = "search_tools", "search_tools"
                    query = rng.choice(QUERIES)
                    if args.unique_queries:
                        query = f"{query} {seed}-{next(counter)}"
                    arguments: dict[str, Any] = {"query": query, "limit": 5}
                else:
                    kind, name = "invoke", "invoke"
                    arguments = {"tool": "up__echo", "arguments": {"text": f"load {seed}"}}
                t = time.perf_counter()
                try:
                    await client.call_tool(name, arguments)
                except Exception as exc:
                    errors[f"{kind}: {type(exc).__name__}: {str(exc)[:120]}"] += 1
                else:
                    lat[kind].append(time.perf_counter() - t)

        async def sample() -> None:
            while not stop.is_set():
                rss.append((time.monotonic() - t0, gw.rss_mb()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.sample_every)

        async def timer() -> None:
            await asyncio.sleep(args.seconds)
            stop.set()

        cpu0 = gw.cpu_seconds()
        await asyncio.gather(timer(), sample(), *(session(c, i) for i, c in enumerate(clients)))
        elapsed = time.monotonic() - t0
        cpu = gw.cpu_seconds() - cpu0
        rss.append((elapsed, gw.rss_mb()))
        await asyncio.gather(*(c.close() for c in clients))
    return {"lat": lat, "errors": errors, "rss": rss, "rss_start": rss_start, "elapsed": elapsed, "cpu": cpu}


def audit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall()
        done = con.execute("SELECT count(*) FROM events WHERE kind = 'call' AND completed IS NOT NULL").fetchone()
    finally:
        con.close()
    return {**{str(k): int(n) for k, n in rows}, "call completed": int(done[0])}


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    lat, errors, rss = r["lat"], r["errors"], r["rss"]
    ok = sum(len(v) for v in lat.values())
    total = ok + sum(errors.values())
    half = len(rss) // 2
    first = max(m for _, m in rss[: max(1, half)])
    second = max(m for _, m in rss[half:]) if rss[half:] else first
    audit = r["audit"]
    invokes = len(lat["invoke"]) + sum(n for k, n in errors.items() if k.startswith("invoke"))
    searches = len(lat["search_tools"]) + sum(n for k, n in errors.items() if k.startswith("search"))
    lines = [
        "# Load run",
        "",
        machine.describe(),
        "",
        f"Reproduce: `python -m benchmarks.load --seconds {args.seconds:g} --sessions {args.sessions}"
        f"{' --unique-queries' if args.unique_queries else ''}` (`make load`).",
        "",
        f"toolcrib dispatcher mode (index model from the default config, trust layers on, audit to SQLite, "
        f"the upstream's credential registered for redaction) in front "
        f"of the fast fixture (HTTP) and mcp-server-time (stdio). {args.sessions} concurrent sessions, closed loop, "
        f"{args.search_share:.0%} search_tools / {1 - args.search_share:.0%} invoke, for {r['elapsed']:.0f} s; "
        f"{'every query distinct' if args.unique_queries else f'queries drawn from {len(QUERIES)}'}; "
        "driver, gateway and upstreams share the machine's cores.",
        "",
        "| | value |",
        "|---|---:|",
        f"| calls completed | {ok:,} ({ok / r['elapsed']:.0f}/s) |",
        f"| errors | {sum(errors.values())} of {total:,} |",
        f"| search_tools p50 / p99 ms | {1000 * pctl(lat['search_tools'], 0.5):.1f} / "
        f"{1000 * pctl(lat['search_tools'], 0.99):.1f} ({len(lat['search_tools']):,} calls) |",
        f"| invoke p50 / p99 ms | {1000 * pctl(lat['invoke'], 0.5):.1f} / {1000 * pctl(lat['invoke'], 0.99):.1f} "
        f"({len(lat['invoke']):,} calls) |",
        f"| gateway CPU ms per call | {1000 * r['cpu'] / max(1, ok):.2f} |",
        f"| gateway RSS MB: sessions open / max 1st half / max 2nd half / end | {r['rss_start']:.0f} / {first:.0f} / "
        f"{second:.0f} / {rss[-1][1]:.0f} |",
        f"| audit rows (call, completed / call / search) | {audit.get('call completed', 0):,} / "
        f"{audit.get('call', 0):,} / {audit.get('search', 0):,} for {invokes:,} invokes and {searches:,} searches |",
        "",
    ]
    verdict = []
    rate, search_p50 = ok / r["elapsed"], 1000 * pctl(lat["search_tools"], 0.5)
    verdict.append(
        f"- calls/s >= {2 * BASELINE_CALLS_PER_S} (twice the {BASELINE_CALLS_PER_S}/s of 2026-11-26): {rate:.0f}/s, "
        f"{'met' if rate >= 2 * BASELINE_CALLS_PER_S else '**missed**'}"
    )
    verdict.append(
        f"- search_tools p50 <= {SEARCH_P50_TARGET_MS:g} ms: {search_p50:.1f} ms, "
        f"{'met' if search_p50 <= SEARCH_P50_TARGET_MS else '**missed**'}"
    )
    verdict.append(f"- 0 errors: {'met' if not errors else '**missed** (' + str(sum(errors.values())) + ')'}")
    growth = second - first
    verdict.append(
        f"- memory flat: max RSS 2nd half - 1st half = {growth:+.1f} MB "
        f"({'flat' if growth < max(10.0, 0.05 * first) else '**growing**'})"
    )
    in_audit = audit.get("call completed", 0) >= invokes and audit.get("search", 0) >= searches
    verdict.append(f"- every call in the audit log: {'met' if in_audit else '**missed**'}")
    lines += ["## Against the targets", "", *verdict, ""]
    if errors:
        lines += ["## Errors", "", *(f"- {n} x {k}" for k, n in errors.most_common(10)), ""]
    lines += ["## RSS over time", "", "| t s | RSS MB |", "|---:|---:|"]
    step = max(1, len(rss) // 20)
    lines += [f"| {t:.0f} | {m:.0f} |" for t, m in rss[::step]]
    return "\n".join(lines) + "\n"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--search-share", type=float, default=0.3, help="fraction of calls that are search_tools")
    p.add_argument(
        "--unique-queries",
        action="store_true",
        help="make every search_tools query distinct (each one a query-embedding cache miss)",
    )
    p.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling interval, seconds")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally blocks stop every child we started
    try:
        text = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "load.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
