"""``toolcrib serve``: the start-up report, signal handling, and stdio mode (see README "The command")."""

from __future__ import annotations

import signal
import sys
from typing import TextIO

import anyio

from toolcrib.app import build, running_gateway
from toolcrib.config import Config
from toolcrib.gateway.edge.stdio import serve_stdio
from toolcrib.gateway.trust.quarantine import Trust
from toolcrib.router.pool import Pool


def describe_upstreams(pool: Pool, trust: Trust | None = None) -> list[str]:
    """One start-up line per upstream: ``  NAME: connected, N tools[, Q quarantined ...], protocol V``
    or ``  NAME: STATUS (error)``. With ``trust``, quarantined tools (not callable until approved) are counted."""
    quarantined = trust.quarantined if trust is not None else {}
    lines = []
    for name, up in sorted(pool.upstreams.items()):
        st = up.state
        if st.status == "connected":
            held = sum(1 for key in quarantined if (e := pool.catalog.tools.get(key)) is not None and e.server == name)
            note = f", {held} quarantined (see `toolcrib tools list`)" if held else ""
            lines.append(f"  {name}: connected, {len(up.listing.tools)} tools{note}, protocol {st.protocol_version}")
        else:
            lines.append(f"  {name}: {st.status}" + (f" ({st.error})" if st.error else " (still connecting)"))
    return lines


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Each drains in-flight calls and stops (SIGHUP does not reload the config)."""


async def serve(config: Config, *, out: TextIO = sys.stderr) -> None:
    """``toolcrib serve``: run until SIGTERM, SIGINT or SIGHUP, then drain and shut down gracefully.

    A signal during start-up (upstreams connecting, the index building) aborts it: children are
    stopped, state files are closed, and :class:`StartupInterrupted` is raised (the CLI exits 130).
    """
    stopping = anyio.Event()
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for signum in signals:
                    received.append(signum)
                    stopping.set()
                    return

            received: list[int] = []
            tg.start_soon(watch)
            async with running_gateway(config, abort=stopping) as rt:
                print(f"toolcrib {config.gateway.mode} mode: connect clients to {rt.url}", file=out)
                for line in describe_upstreams(rt.pool, rt.parts.trust):
                    print(line, file=out)
                out.flush()
                await stopping.wait()
                name = signal.Signals(received[0]).name if received else "signal"
                print(f"toolcrib: {name}: shutting down (draining in-flight calls)", file=out)
            tg.cancel_scope.cancel()


async def serve_stdio_mode(config: Config) -> None:
    """``toolcrib serve --stdio``: one client on stdin/stdout, as the local operator."""
    parts = build(config)
    pool, gateway = parts.pool, parts.gateway
    try:
        async with pool.running():
            await pool.wait_ready(10.0)
            for line in describe_upstreams(pool, parts.trust):
                print(line, file=sys.stderr)
            await serve_stdio(gateway)
    finally:
        parts.close()
