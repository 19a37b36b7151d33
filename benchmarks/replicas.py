"""Replica benchmark: ``python -m benchmarks.replicas [--seconds 15] [--concurrency 16 64] [--replicas 1 3]``.

calls/s and p50/p99 through nginx with 1 and with 3 ``toolcrib serve`` replicas on one PostgreSQL
database (issue 12), the same driver for both. Harness: :mod:`tests.replicas` (real processes, a
throw-away PostgreSQL cluster from :mod:`tests.pgcluster`, real nginx). Upstream: the fast fixture
(``python -m benchmarks.fixtures fast --http 0``, tool ``echo``), one process shared by every
replica, as a real upstream service would be. Each concurrency level opens that many 2025-11-25
sessions through nginx (``auth = "keys"``, passthrough mode, trust layers on) and keeps each busy
calling ``up__echo`` (closed loop) for ``--seconds`` after a 2 s warm-up. Every replica count gets
a fresh database.

Prints the table and writes ``benchmarks/results/replicas.md``. Needs PostgreSQL server binaries
and nginx (exits 2 with the install hint otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from benchmarks import machine
from benchmarks.driver import PY, HttpClient, Proc
from tests.pgcluster import Cluster, ClusterError, find_bindir
from tests.replicas import NGINX, NGINX_MISSING, ReplicaError, ReplicaSet, descendants, replica_set

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP_S = 2.0


@dataclass
class Run:
    replicas: int
    concurrency: int
    seconds: float = 0.0
    lat: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    spread: Counter[str] = field(default_factory=Counter)
    replica_cpu_s: float = 0.0
    nginx_cpu_s: float = 0.0
    machine_busy: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.lat) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        s = sorted(self.lat)
        return 1000 * s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


async def drive(rs: ReplicaSet, key: str, concurrency: int, seconds: float) -> Run:
    run = Run(len(rs.replicas), concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        clients = []
        for _ in range(concurrency):
            c = HttpClient(http, rs.url)
            c.headers.update({"Host": rs.host, "Authorization": f"Bearer {key}"})
            clients.append(c)
        await asyncio.gather(*(c.open() for c in clients))
        measuring = False
        stop = asyncio.Event()

        async def loop(client: HttpClient, n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                t = time.perf_counter()
                try:
                    await client.call_tool("up__echo", {"text": f"bench {n}-{i}"})
                except Exception as exc:
                    if measuring:
                        run.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                else:
                    if measuring:
                        run.lat.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(loop(c, n)) for n, c in enumerate(clients)]
        await asyncio.sleep(WARMUP_S)
        pids = [r.pid for r in rs.replicas]
        nginx = [rs.nginx_pid, *descendants(rs.nginx_pid)]  # master and its worker
        cpu0, ng0, (busy0, total0) = sum(map(_cpu_s, pids)), sum(map(_cpu_s, nginx)), _machine_ticks()
        measuring, t0 = True, time.monotonic()
        await asyncio.sleep(seconds)
        measuring = False
        run.seconds = time.monotonic() - t0
        run.replica_cpu_s = sum(map(_cpu_s, pids)) - cpu0
        run.nginx_cpu_s = sum(map(_cpu_s, nginx)) - ng0
        busy1, total1 = _machine_ticks()
        run.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(c.close() for c in clients))
    run.spread = _spread(rs)
    return run


def _spread(rs: ReplicaSet) -> Counter[str]:
    """Requests per replica from nginx's access log (``upstream=ADDR``), this run's lines only."""
    log = rs.dir / "nginx" / "access.log"
    seen: Counter[str] = Counter()
    names = {r.addr: f"r{r.index}" for r in rs.replicas}
    for line in log.read_text(errors="replace").splitlines():
        addr = line.split("upstream=", 1)[1].split()[0].rstrip(",") if "upstream=" in line else ""
        seen[names.get(addr, addr)] += 1
    log.write_text("")  # nginx keeps appending at its offset; a sparse file is fine for counting
    return seen


def audit_rows(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    return int(row[0]) if row else 0


async def bench(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="toolcrib-replicas-") as tmpdir, Cluster(max_connections=300) as pg:
        tmp = Path(tmpdir)
        up = Proc([PY, "-m", "benchmarks.fixtures", "fast", "--http", "0"])
        try:
            upstream = up.wait_line("LISTENING ")
            for n in args.replicas:
                url = pg.create_database(f"bench_{n}")
                servers = {"up": {"url": upstream}}
                with replica_set(tmp / f"n{n}", url, n, servers=servers) as rs:
                    key = rs.add_key("bench")
                    for c in args.concurrency:
                        run = await drive(rs, key, c, args.seconds)
                        print(_row(run), flush=True)
                        runs.append(run)
                    args.audit_rows[n] = audit_rows(url)
        finally:
            up.stop()
    return runs


def _row(r: Run) -> str:
    spread = " / ".join(f"{k} {v}" for k, v in sorted(r.spread.items()))
    return (
        f"| {r.replicas} | {r.concurrency} | {r.rate:.0f} | {r.pct(0.5):.1f} | {r.pct(0.99):.1f} | "
        f"{sum(r.errors.values())} | {1000 * r.replica_cpu_s / max(1, len(r.lat)):.2f} | "
        f"{1000 * r.nginx_cpu_s / max(1, len(r.lat)):.2f} | {100 * r.machine_busy:.0f}% | {spread} |"
    )


HEADER = (
    "| replicas | concurrency | calls/s | p50 ms | p99 ms | errors | replica CPU ms/call | nginx CPU ms/call "
    "| machine busy | requests per replica (nginx log, with warm-up and handshakes) |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def report(runs: list[Run], args: argparse.Namespace) -> str:
    by = {(r.replicas, r.concurrency): r for r in runs}
    ratios = []
    for c in args.concurrency:
        one, three = by.get((1, c)), by.get((3, c))
        if one and three and one.rate:
            ratios.append(
                f"- concurrency {c}: 3 replicas / 1 replica = {three.rate / one.rate:.2f}x calls/s, "
                f"p50 {three.pct(0.5) / one.pct(0.5):.2f}x, p99 {three.pct(0.99) / one.pct(0.99):.2f}x"
            )
    audit = ", ".join(f"{n} replica(s): {rows:,}" for n, rows in args.audit_rows.items())
    cmd = "python -m benchmarks.replicas" + (f" --seconds {args.seconds:g}" if args.seconds != 15 else "")
    return "\n".join(
        [
            "# Replicas: 1 vs 3 `toolcrib serve` behind nginx on PostgreSQL",
            "",
            machine.describe(),
            "",
            f"Reproduce: `{cmd}` (needs PostgreSQL server binaries and nginx; about 3 minutes).",
            "",
            "Set-up: a throw-away PostgreSQL 15 cluster (tests/pgcluster.py: fsync off, synchronous_commit off), "
            "one nginx worker (round robin, HTTP/1.1 keepalive to the replicas), N `toolcrib serve` processes "
            '(passthrough mode, `auth = "keys"`, trust layers on, `[storage] url` set) and one fast fixture '
            "upstream (HTTP, tool `echo`) that all replicas share. The driver opens one 2025-11-25 session per "
            f"concurrent client through nginx and calls `up__echo` in a closed loop for {args.seconds:g} s "
            f"after a {WARMUP_S:g} s warm-up. Driver, nginx, PostgreSQL, the upstream and every replica share "
            "the same cores. CPU columns: the replicas' (sum) and nginx's user+system time per answered call; "
            "machine busy: all CPUs, from /proc/stat.",
            "",
            HEADER,
            *(_row(r) for r in runs),
            "",
            "Ratios measured in this one run:",
            "",
            *ratios,
            "",
            f"Audit rows in PostgreSQL `audit_events` after each set's runs: {audit} (0 means the replicas still "
            "wrote their audit to their own SQLite files, i.e. the PostgreSQL audit log was not wired in yet).",
            "",
            "## What these figures say, and what they do not",
            "",
            "- This machine has 2 cores, shared by the driver, nginx, PostgreSQL, the upstream and the replicas. "
            "One replica is one Python process, so it uses at most one core at a time (see *machine busy* with "
            "1 replica); 3 replicas can use both, and then contend with everything else for them. So the ratio "
            "here is bounded near 2x at best and in practice near 1x: it is not a measure of how toolcrib "
            "scales on a larger machine.",
            "- What the figures do say: the per-call cost of the scaled-out path (session adopted from the "
            "database when a request lands on a replica that does not hold it, key and pin caches, NOTIFY "
            "traffic) measured as replica CPU per call, and that round robin spreads requests evenly "
            "(requests per replica).",
            "- On a larger machine (or one machine per replica) each replica gets its own cores, so throughput "
            "should grow with replicas until a shared resource saturates: the upstream, nginx, or PostgreSQL. "
            "The audit log is one chain: every attempt row takes the single `audit_head` row lock, so audit "
            "appends from all replicas are serialised in the database; that lock's hold time (a few round "
            "trips per append) bounds the cluster's audited calls/s whatever the replica count. This run does "
            "not measure that bound (it is CPU-bound long before it), and it does not measure network latency "
            "between machines (everything is on loopback).",
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replicas")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    p.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/replicas.md")
    args = p.parse_args()
    args.audit_rows = {}
    if find_bindir() is None:
        print("PostgreSQL server binaries not found: apt-get install postgresql", file=sys.stderr)
        raise SystemExit(2)
    if NGINX is None:
        print(NGINX_MISSING, file=sys.stderr)
        raise SystemExit(2)
    print(HEADER, flush=True)
    try:
        runs = asyncio.run(bench(args))
    except (ClusterError, ReplicaError) as exc:
        print(f"the set-up did not start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    text = report(runs, args)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "replicas.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
