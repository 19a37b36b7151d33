"""Gateway overhead and throughput: ``python -m benchmarks.latency [--quick]``.

For each upstream (an SDK fixture and a fast hand-written fixture, each over Streamable HTTP and
over stdio, see :mod:`benchmarks.fixtures`) one trivial ``echo`` call is made:

- ``direct``: the raw client talks to the fixture itself (HTTP, or its stdio pipe);
- ``passthrough``: through ``toolcrib`` in passthrough mode, trust layers on (audit, redaction
  with the upstream's credential registered, policy; auth = none on loopback);
- ``passthrough-notrust``: the same with the trust layers removed (their share);
- ``invoke``: through ``toolcrib`` in dispatcher mode, calling ``invoke``;
- ``baseline``: ``passthrough`` as an earlier commit built it (``--baseline REF``, unpacked with
  ``git archive`` into ``.toolcrib/baseline-<sha>`` and run with the same interpreter), so a change
  is measured against what it replaced in the same run on the same machine;
- ``mcp-proxy``: the peer proxy (PyPI ``mcp-proxy`` 0.13.0, installed into
  ``.tools/mcp-proxy-venv`` on first run). It serves HTTP only in front of stdio servers, so it
  appears in the stdio rows.

Rounds alternate the modes at concurrency 1, 16 and 64 (one client session per concurrent
worker; stdio-direct multiplexes one pipe). The client is a raw aiohttp JSON-RPC driver
(:mod:`benchmarks.driver`). Gateway CPU per call is utime+stime of the gateway process (not its
children) from /proc before and after each run. Writes ``benchmarks/results/latency.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import machine
from benchmarks.driver import PY, ROOT, HttpClient, Proc, StdioClient, free_port, upstream_credential, wait_http

RESULTS = Path(__file__).resolve().parent / "results"
MCP_PROXY_VERSION = "0.13.0"
MCP_PROXY_VENV = ROOT / ".tools" / "mcp-proxy-venv"
MODES = ("direct", "passthrough", "passthrough-notrust", "invoke", "mcp-proxy", "baseline")
CONCURRENCY = (1, 16, 64)
FULL_CALLS = {1: 300, 16: 1200, 64: 2400}
QUICK_CALLS = {1: 100, 16: 300, 64: 600}


def ensure_baseline(ref: str) -> Path:
    """The source tree of commit ``ref`` (``git archive``), unpacked once under ``.toolcrib/``."""
    sha = subprocess.run(["git", "rev-parse", "--short=12", ref], cwd=ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"--baseline {ref!r}: not a commit here ({sha.stderr.strip()}); give a sha or tag")
    tree = ROOT / ".toolcrib" / f"baseline-{sha.stdout.strip()}"
    if not (tree / "toolcrib").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def ensure_mcp_proxy() -> Path:
    """Install mcp-proxy (it pins mcp 1.x) into its own venv, once; return the executable."""
    exe = MCP_PROXY_VENV / "bin" / "mcp-proxy"
    if exe.exists():
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
        if MCP_PROXY_VERSION in out.stdout + out.stderr:
            return exe
    print(f"installing mcp-proxy {MCP_PROXY_VERSION} into {MCP_PROXY_VENV} ...", file=sys.stderr)
    if not (MCP_PROXY_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MCP_PROXY_VENV)], check=True)
    pip = [str(MCP_PROXY_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"mcp-proxy=={MCP_PROXY_VERSION}"], check=True)
    return exe


# ---- one measured target ----------------------------------------------------------------------


Call = Callable[[int], Awaitable[Any]]


@dataclass
class Target:
    """A way to make the echo call, with the process whose CPU is charged to it (if any)."""

    mode: str
    open_worker: Callable[[], Awaitable[Call]]
    proc: Proc | None = None
    samples: dict[int, list[float]] = field(default_factory=dict)
    elapsed: dict[int, float] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)


async def run_cell(target: Target, workers: list[Call], n: int, record: bool) -> None:
    c = len(workers)
    lat: list[float] = []
    remaining = n

    async def worker(call: Call) -> None:
        nonlocal remaining
        i = 0
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t)
            i += 1

    cpu0 = target.proc.cpu_seconds() if target.proc else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in workers))
    elapsed = time.perf_counter() - t0
    cpu = (target.proc.cpu_seconds() - cpu0) if target.proc else 0.0
    if record:
        target.samples.setdefault(c, []).extend(lat)
        target.elapsed[c] = target.elapsed.get(c, 0.0) + elapsed
        target.calls[c] = target.calls.get(c, 0) + len(lat)
        target.cpu[c] = target.cpu.get(c, 0.0) + cpu


def http_worker(http: aiohttp.ClientSession, url: str, tool: str, wrap_invoke: bool) -> Callable[[], Awaitable[Call]]:
    async def open_() -> Call:
        client = await HttpClient(http, url).open()

        async def call(i: int) -> Any:
            args = {"text": f"hello {i}"}
            if wrap_invoke:
                return await client.call_tool("invoke", {"tool": tool, "arguments": args})
            return await client.call_tool(tool, args)

        return call

    return open_


# ---- upstream setups --------------------------------------------------------------------------


def fixture_argv(kind: str) -> list[str]:
    return [PY, "-m", "benchmarks.fixtures", kind]


def gateway_config(tmp: Path, name: str, mode: str, kind: str, transport: str, upstream_url: str | None) -> Path:
    if transport == "http":
        server = f'url = "{upstream_url}"\n'
    else:
        argv = fixture_argv(kind)
        server = f"command = {json.dumps(argv[0])}\nargs = {json.dumps(argv[1:])}\ncwd = {json.dumps(str(ROOT))}\n"
    text = (
        f'[gateway]\nmode = "{mode}"\nmax_sessions_per_principal = 1000\n\n'
        f'[index]\npath = "{tmp / name}-index"\nranking = "bm25"\n\n'
        f'[audit]\npath = "{tmp / name}-audit.db"\n\n[servers.up]\n{server}{upstream_credential(transport)}'
    )
    path = tmp / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def setup(
    kind: str,
    transport: str,
    modes: list[str],
    tmp: Path,
    http: aiohttp.ClientSession,
    profile: Path | None,
    baseline: Path | None = None,
) -> AsyncIterator[list[Target]]:
    procs: list[Proc] = []
    stdio_clients: list[StdioClient] = []
    try:
        upstream_url = None
        if transport == "http":
            up = Proc([*fixture_argv(kind), "--http", "0"])
            procs.append(up)
            upstream_url = up.wait_line("LISTENING ")
        targets = []
        for mode in modes:
            if mode == "direct":
                if transport == "http":
                    assert upstream_url is not None
                    targets.append(Target(mode, http_worker(http, upstream_url, "echo", False)))
                else:
                    client = await StdioClient(fixture_argv(kind)).open()
                    stdio_clients.append(client)

                    async def open_stdio(client: StdioClient = client) -> Call:
                        return lambda i: client.call_tool("echo", {"text": f"hello {i}"})

                    targets.append(Target(mode, open_stdio))
            elif mode == "mcp-proxy":
                if transport != "stdio":
                    continue
                port = free_port()
                exe = ensure_mcp_proxy()
                argv = [str(exe), "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port), "--"]
                argv += fixture_argv(kind)
                proc = Proc(argv)
                procs.append(proc)
                url = f"http://127.0.0.1:{port}/mcp"
                await wait_http(url)
                targets.append(Target(mode, http_worker(http, url, "echo", False), proc))
            else:
                gw_mode = "dispatcher" if mode == "invoke" else "passthrough"
                name = f"{kind}-{transport}-{mode}"
                cfg = gateway_config(tmp, name, gw_mode, kind, transport, upstream_url)
                port = free_port()
                argv = [PY, "-m", "benchmarks.gateway_proc", str(cfg), "--port", str(port)]
                if mode == "passthrough-notrust":
                    argv.append("--no-trust")
                if profile is not None and mode == "passthrough":
                    argv += ["--profile", str(profile / f"{name}.pstats")]
                if mode == "baseline":
                    assert baseline is not None
                    proc = Proc(argv, cwd=baseline, env={"PYTHONPATH": str(baseline)})
                else:
                    proc = Proc(argv)
                procs.append(proc)
                url = proc.wait_line("LISTENING ", timeout=120)
                targets.append(Target(mode, http_worker(http, url, "up__echo", mode == "invoke"), proc))
        yield targets
    finally:
        for client in stdio_clients:
            await client.close()
        for proc in reversed(procs):
            proc.stop()


async def measure(kind: str, transport: str, args: argparse.Namespace, tmp: Path) -> list[Target]:
    calls = QUICK_CALLS if args.quick else FULL_CALLS
    rounds = args.rounds or (2 if args.quick else 3)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        setup(kind, transport, args.modes, tmp, http, args.profile, args.baseline_tree) as targets,
    ):
        pools: dict[tuple[str, int], list[Call]] = {}
        for t in targets:
            for c in CONCURRENCY:
                pools[(t.mode, c)] = [await t.open_worker() for _ in range(c)]
            await run_cell(t, pools[(t.mode, 16)], 100, record=False)  # warm up
        for r in range(rounds):
            for c in CONCURRENCY:
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for t in order:
                    await run_cell(t, pools[(t.mode, c)], calls[c], record=True)
            print(f"  {kind}/{transport}: round {r + 1}/{rounds} done", file=sys.stderr)
    return targets


# ---- report ------------------------------------------------------------------------------------


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(targets: list[Target]) -> list[dict[str, Any]]:
    base = next((t for t in targets if t.mode == "direct"), None)
    rows = []
    for c in CONCURRENCY:
        direct_rate = base.calls[c] / base.elapsed[c] if base and c in base.calls else None
        direct_p50 = pctl(base.samples[c], 0.5) * 1000 if base and c in base.samples else None
        direct_p99 = pctl(base.samples[c], 0.99) * 1000 if base and c in base.samples else None
        for t in targets:
            if c not in t.calls:
                continue
            p50, p99 = pctl(t.samples[c], 0.5) * 1000, pctl(t.samples[c], 0.99) * 1000
            rate = t.calls[c] / t.elapsed[c]
            rows.append(
                {
                    "mode": t.mode,
                    "c": c,
                    "p50": p50,
                    "p99": p99,
                    "added_p50": p50 - direct_p50 if direct_p50 is not None else None,
                    "added_p99": p99 - direct_p99 if direct_p99 is not None else None,
                    "rate": rate,
                    "ratio": rate / direct_rate if direct_rate else None,
                    "cpu_ms": 1000 * t.cpu[c] / t.calls[c] if t.proc else None,
                    "n": t.calls[c],
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    cross = any("x_http_direct" in r for r in rows)
    lines = [
        "| mode | conc. | p50 ms | p99 ms | added p50 | added p99 | calls/s | x direct | "
        + ("x HTTP direct | " if cross else "")
        + "proxy CPU ms/call | calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cross else "") + "---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['c']} | {r['p50']:.2f} | {r['p99']:.2f} | {f(r['added_p50'], '+.2f')} | "
            f"{f(r['added_p99'], '+.2f')} | {r['rate']:.0f} | {f(r['ratio'], '.2f')} | "
            + (f"{f(r.get('x_http_direct'), '.2f')} | " if cross else "")
            + f"{f(r['cpu_ms'], '.2f')} | {r['n']} |"
        )
    return lines


def cross_ratios(all_rows: dict[str, list[dict[str, Any]]]) -> None:
    """For stdio setups, also relate calls/s to the same fixture's HTTP direct (an HTTP-to-HTTP baseline)."""
    for name, rows in all_rows.items():
        twin = all_rows.get(name.replace("stdio upstream", "Streamable HTTP upstream"))
        if "stdio" not in name or twin is None:
            continue
        base = {r["c"]: r["rate"] for r in twin if r["mode"] == "direct"}
        for r in rows:
            if r["c"] in base and r["mode"] != "direct":
                r["x_http_direct"] = r["rate"] / base[r["c"]]


def verdicts(all_rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Issue 11's targets, each with the value measured in this run, met or not."""
    out = []

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for setup_name, rows in all_rows.items():
        by = {(r["mode"], r["c"]): r for r in rows}
        pt1 = by.get(("passthrough", 1))
        if pt1 and pt1["added_p50"] is not None:
            ok = pt1["added_p50"] <= 0.5 and pt1["added_p99"] <= 1.5
            out.append(
                f"- {setup_name}: added at c=1 (trust on) p50 {pt1['added_p50']:+.2f} ms (target <= 0.5), "
                f"p99 {pt1['added_p99']:+.2f} ms (target <= 1.5): {mark(ok)}"
            )
        for c in (16, 64):
            pt = by.get(("passthrough", c))
            peer = by.get(("mcp-proxy", c))
            if pt and pt["ratio"] is not None:
                line = f"- {setup_name}: passthrough throughput at c={c}: {pt['ratio']:.2f}x direct"
                if "sdk fixture, Streamable HTTP" in setup_name:
                    line += f" (target >= 0.95): {mark(pt['ratio'] >= 0.95)}"
                if peer and peer["ratio"] is not None:
                    ahead = pt["ratio"] >= peer["ratio"] and pt["p50"] <= peer["p50"] and pt["p99"] <= peer["p99"]
                    line += (
                        f"; mcp-proxy {peer['ratio']:.2f}x, p50 {pt['p50']:.2f} vs {peer['p50']:.2f} ms, "
                        f"p99 {pt['p99']:.2f} vs {peer['p99']:.2f} ms (target: ahead on all three): {mark(ahead)}"
                    )
                out.append(line)
        fast16 = by.get(("passthrough", 16))
        if fast16 and setup_name.startswith("fast fixture, Streamable HTTP"):
            out.append(
                f"- {setup_name}: {fast16['rate']:.0f} calls/s through the gateway at c=16 (target >= 3,000): "
                f"{mark(fast16['rate'] >= 3000)}"
            )
        for mode, target in (("passthrough", 0.5), ("invoke", 0.6)):
            cpus = [r["cpu_ms"] for r in rows if r["mode"] == mode and r["cpu_ms"] is not None]
            if cpus:
                out.append(
                    f"- {setup_name}: gateway CPU per {mode} call {min(cpus):.2f}-{max(cpus):.2f} ms "
                    f"(target <= {target}): {mark(max(cpus) <= target)}"
                )
        before = {r["c"]: r for r in rows if r["mode"] == "baseline" and r["cpu_ms"] is not None}
        now = [r for r in rows if r["mode"] == "passthrough" and r["cpu_ms"] is not None and r["c"] in before]
        if now:
            desc = ", ".join(
                f"c={r['c']}: CPU {r['cpu_ms']:.2f} vs {before[r['c']]['cpu_ms']:.2f} ms "
                f"({before[r['c']]['cpu_ms'] / r['cpu_ms']:.2f}x less), calls/s "
                f"{r['rate'] / before[r['c']]['rate']:.2f}x, p50 {r['p50']:.2f} vs {before[r['c']]['p50']:.2f} ms"
                for r in now
            )
            out.append(f"- {setup_name}: passthrough now vs baseline: {desc}")
        on = [r for r in rows if r["mode"] == "passthrough" and r["cpu_ms"] is not None]
        off = {r["c"]: r for r in rows if r["mode"] == "passthrough-notrust" and r["cpu_ms"] is not None}
        share = [
            (r["c"], r["cpu_ms"] - off[r["c"]]["cpu_ms"], r["p50"] - off[r["c"]]["p50"]) for r in on if r["c"] in off
        ]
        if share:
            desc = ", ".join(f"c={c}: {cpu:+.2f} ms CPU, {p50:+.2f} ms p50" for c, cpu, p50 in share)
            out.append(f"- {setup_name}: trust layers' share (on - off): {desc}")
    return out


def write(all_rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, seconds: float) -> str:
    calls = QUICK_CALLS if args.quick else FULL_CALLS
    cross_ratios(all_rows)
    lines = [
        "# Gateway overhead and throughput",
        "",
        machine.describe(),
        "",
        f"Reproduce: `python -m benchmarks.latency{' --quick' if args.quick else ''}"
        f"{f' --baseline {args.baseline}' if getattr(args, 'baseline', None) else ''}` "
        f"({args.rounds or (2 if args.quick else 3)} alternating rounds, calls per run per concurrency "
        f"{calls}; took {seconds:.0f} s).",
        "",
        "Client: raw aiohttp Streamable HTTP JSON-RPC driver (one session per concurrent worker), loopback. "
        "Everything (driver, gateway, upstream) shares the same 2 cores, so calls/s at high concurrency are "
        "bounded by total CPU, and the ratio to direct reflects the gateway's CPU cost.",
        "toolcrib: `passthrough` = trust layers on (audit to SQLite, redaction with the upstream's credential "
        "registered, policy; auth = none on loopback); "
        "`passthrough-notrust` = the same pipeline without them; `invoke` = dispatcher mode calling `invoke`; "
        "`baseline` = `passthrough` as the commit given with `--baseline` built it (same run, same machine).",
        f"mcp-proxy {MCP_PROXY_VERSION} (PyPI, own venv with mcp 1.x) serves HTTP only in front of a stdio "
        "server, so it is measured in the stdio setups. CPU ms/call = utime+stime of the proxy process only.",
        "Stdio rows: `direct` is the raw client on the server's own pipe (no HTTP at all), so `x direct` "
        "charges the proxies for HTTP too; `x HTTP direct` relates them to the same fixture served over HTTP.",
        "",
    ]
    for name, rows in all_rows.items():
        lines += [f"## {name}", "", *table(rows), ""]
    lines += ["## Against the targets", "", *verdicts(all_rows), ""]
    text = "\n".join(lines)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latency.md").write_text(text, encoding="utf-8")
        raw = {
            "rows": all_rows,
            "seconds": seconds,
            "quick": args.quick,
            "rounds": args.rounds,
            "baseline": getattr(args, "baseline", None),
        }
        (RESULTS / "latency.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return text


async def amain(args: argparse.Namespace) -> None:
    if args.render:
        raw = json.loads(args.render.read_text(encoding="utf-8"))
        args.quick, args.rounds, args.baseline = raw["quick"], raw["rounds"], raw.get("baseline")
        print(write(raw["rows"], args, raw["seconds"]))
        return
    if "mcp-proxy" in args.modes:
        ensure_mcp_proxy()
    args.baseline_tree = None
    if args.baseline:
        args.baseline_tree = ensure_baseline(args.baseline)
        if "baseline" not in args.modes:
            args.modes = [*args.modes, "baseline"]
    elif "baseline" in args.modes:
        raise SystemExit("mode baseline needs --baseline REF (the commit to compare with)")
    all_rows: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toolcrib-latency-") as tmp:
        for kind in args.upstreams:
            for transport in args.transports:
                name = f"{kind} fixture, {'Streamable HTTP' if transport == 'http' else 'stdio'} upstream"
                print(f"{name} ...", file=sys.stderr)
                targets = await measure(kind, transport, args, Path(tmp))
                all_rows[name] = summarize(targets)
                print("\n".join(table(all_rows[name])), file=sys.stderr)
    print(write(all_rows, args, time.perf_counter() - t0))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls and rounds (for make bench)")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 2)")
    p.add_argument("--upstreams", nargs="+", default=["sdk", "fast"], choices=["sdk", "fast"])
    p.add_argument("--transports", nargs="+", default=["http", "stdio"], choices=["http", "stdio"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--baseline", metavar="REF", help="also run passthrough as commit REF built it (mode baseline)")
    p.add_argument("--profile", type=Path, help="write cProfile stats of the passthrough gateway into this directory")
    p.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    p.add_argument("--render", type=Path, metavar="JSON", help="re-render the report from a saved latency.json")
    args = p.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally blocks stop every child we started
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
