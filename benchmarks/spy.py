"""Sample where a gateway's CPU goes on the echo hot path: ``python -m benchmarks.spy``.

Starts the fast fixture (Streamable HTTP or stdio) and one ``toolcrib`` gateway process
(:mod:`benchmarks.gateway_proc`), drives ``echo`` calls at a fixed concurrency with the raw
aiohttp driver while ``py-spy record`` samples the gateway (on-CPU time only, ``--format raw``),
then prints the functions with the largest inclusive and exclusive share of the samples.
py-spy is installed into the virtualenv by ``make profile``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.driver import PY, HttpClient, Proc
from benchmarks.latency import ensure_baseline, fixture_argv, gateway_config


def split_cpu(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of process ``pid`` so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("audit rows (hash chain, SQLite group commit)", ("toolcrib/gateway/audit/",)),
    ("models (pydantic validation and dumps)", ("pydantic/", "pydantic_core/")),
    (
        "upstream edge (wire, back channel, h1 and aiohttp clients)",
        ("toolcrib/router/", "toolcrib/gateway/forward.py", "aiohttp/client", "aiohttp/connector.py", "mcp/client/"),
    ),
    (
        "trust layers and pipeline (policy, validation, redaction, approvals)",
        ("toolcrib/gateway/pipeline.py", "toolcrib/gateway/trust/", "toolcrib/gateway/approval.py", "jsonschema/"),
    ),
    ("client edge (aiohttp server, guard, /mcp)", ("toolcrib/gateway/edge/", "aiohttp/web", "aiohttp/http")),
    ("MCP handlers (gateway/server.py, mrtr, tasks, relay)", ("toolcrib/gateway/",)),
    ("SDK server kernel (ServerRunner)", ("mcp/server/", "mcp/shared/", "mcp_types/")),
    ("anyio (tasks, cancel scopes, streams)", ("anyio/",)),
]
"""Each sample goes to the part of its deepest frame that names one (so a pydantic call made by the
audit counts as pydantic, and the pipeline's own frames as the pipeline); the rest is the event loop."""


def parts(raw: Path) -> str:
    """The share of samples per part of the path (:data:`PARTS`), as markdown table rows."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        part = "event loop, sockets and the rest"
        for frame in reversed(stack.split(";")):
            function, _, where = frame.partition(" (")
            if function in ("run", "AsyncIOBackend.run"):  # anyio.run at the root of every loop sample
                continue
            found = next((name for name, keys in PARTS if where.startswith(keys)), None)
            if found is not None:
                part = found
                break
        counts[part] += n
    return "\n".join(f"| {part} | {100 * n / max(total, 1):.0f}% |" for part, n in counts.most_common())


def report(raw: Path, top: int, focus: str | None) -> str:
    incl: collections.Counter[str] = collections.Counter()
    excl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 2)[-1] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        total += n
        for f in set(frames):
            incl[f] += n
        excl[frames[-1]] += n
    out = [f"{total} samples"]
    out.append("inclusive:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top) if not focus or focus in f]
    out.append("exclusive:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in excl.most_common(top)]
    return "\n".join(out)


async def drive(url: str, tool: str, concurrency: int, seconds: float, invoke: bool) -> int:
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = [await HttpClient(http, url).open() for _ in range(concurrency)]
        end = time.monotonic() + seconds

        async def worker(c: HttpClient) -> None:
            nonlocal done
            while time.monotonic() < end:
                args = {"text": "hello"}
                if invoke:
                    await c.call_tool("invoke", {"tool": tool, "arguments": args})
                else:
                    await c.call_tool(tool, args)
                done += 1

        await asyncio.gather(*(worker(c) for c in clients))
    return done


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spy", description=__doc__.splitlines()[0])
    p.add_argument("--transport", choices=["http", "stdio"], default="http")
    p.add_argument("--mode", choices=["passthrough", "invoke"], default="passthrough")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--focus", help="show only inclusive rows containing this text")
    p.add_argument("--baseline", metavar="REF", help="sample the gateway of commit REF instead (git archive)")
    p.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            url = None
            if args.transport == "http":
                up = Proc([*fixture_argv("fast"), "--http", "0"])
                procs.append(up)
                url = up.wait_line("LISTENING ")
            mode = "dispatcher" if args.mode == "invoke" else "passthrough"
            cfg = gateway_config(tmp, "spy", mode, "fast", args.transport, url)
            port = __import__("benchmarks.driver", fromlist=["free_port"]).free_port()
            argv = [PY, "-m", "benchmarks.gateway_proc", str(cfg), "--port", str(port)]
            if args.baseline:  # the gateway as an earlier commit built it
                tree = ensure_baseline(args.baseline)
                gw = Proc(argv, cwd=tree, env={"PYTHONPATH": str(tree)})
            else:
                gw = Proc(argv)
            procs.append(gw)
            gw_url = gw.wait_line("LISTENING ", timeout=120)
            asyncio.run(drive(gw_url, "up__echo", args.concurrency, 1.0, args.mode == "invoke"))  # warm up
            raw = args.raw or tmp / "spy.txt"
            rec = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(gw.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "500",
                    "--gil",
                    "--duration",
                    str(int(args.seconds)),
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            user0, sys0 = split_cpu(gw.pid)
            n = asyncio.run(drive(gw_url, "up__echo", args.concurrency, args.seconds, args.mode == "invoke"))
            user1, sys1 = split_cpu(gw.pid)
            rec.wait(timeout=60)
            per = 1000 / max(n, 1)
            print(
                f"{n} calls in {args.seconds:g} s at concurrency {args.concurrency}: {n / args.seconds:.0f} calls/s, "
                f"gateway CPU {per * (user1 + sys1 - user0 - sys0):.2f} ms/call "
                f"(user {per * (user1 - user0):.2f}, kernel {per * (sys1 - sys0):.2f})"
            )
            print(report(raw, args.top, args.focus))
            print("| part of the path | share of on-CPU samples |\n|---|---:|")
            print(parts(raw))
        finally:
            for proc in reversed(procs):
                proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
