"""``toolcrib serve``: the start-up report, signal handling, and stdio mode (see README "The command")."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import anyio

from toolcrib.app import Running, build, check_bind, running_gateway
from toolcrib.config import Config, load_config, shared_state, shared_state_warning
from toolcrib.errors import ConfigError, ToolcribError
from toolcrib.gateway.edge.stdio import serve_stdio
from toolcrib.gateway.trust import policy
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


EVENT_LOOP_ENV = "TOOLCRIB_EVENT_LOOP"
"""``uvloop`` (the default where it is installed) or ``asyncio``: the event loop ``toolcrib serve`` runs on."""


def run(fn: Callable[[], Awaitable[object]]) -> None:
    """Run ``fn`` on the event loop named by ``$TOOLCRIB_EVENT_LOOP``: uvloop when installed (libuv;
    less CPU per call than asyncio's selector loop, see ``benchmarks/results/latency.md``), else
    asyncio. Raises :class:`ConfigError` for another value."""
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"{EVENT_LOOP_ENV}={choice!r} is not an event loop; use uvloop or asyncio")
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not has_uvloop:
        raise ConfigError(f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed; pip install uvloop, or unset it")
    anyio.run(fn, backend_options={"use_uvloop": choice != "asyncio" and has_uvloop})


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Each drains in-flight calls and stops. SIGHUP reloads the servers and the policy (see
:func:`reload_config`); when ``serve`` has no config file to read again it stops like these."""
_SECTIONS = ("gateway", "index", "audit", "auth", "secrets")


async def reload_config(trust: Trust, pool: Pool, running: Config, path: Path) -> tuple[str, Config]:
    """Read ``path`` again and apply, without dropping a session: its ``[servers]`` to ``pool``
    (:meth:`Pool.reconfigure`: removed stopped, added started, changed restarted, unchanged untouched;
    pins and quarantine follow) and its ``[[policy.rules]]`` and ``[policy] default`` to ``trust``
    (effective from the next call and listing). Other changes are not applied: the returned one-line
    report names them ("not applied until restart"). Returns ``(report, the config now running)``.
    Raises :class:`ConfigError` (and changes nothing) when the file no longer validates."""
    new, _ = load_config(path)
    check_bind(new)
    trust.rules = new.policy.rules
    trust.default = policy.effective_default(new.policy, running.gateway)
    servers = await pool.reconfigure(new)
    trust.refresh()
    pending = [name for name in _SECTIONS if getattr(new, name) != getattr(running, name)]
    kept = {"rules", "default"}
    if new.policy.model_dump(exclude=kept) != running.policy.model_dump(exclude=kept):
        pending.append("policy (other than rules and default)")
    applied = running.model_copy(
        update={
            "servers": new.servers,
            "policy": running.policy.model_copy(update={"rules": new.policy.rules, "default": new.policy.default}),
        }
    )
    rules = f"{len(new.policy.rules)} rules, default {trust.default}"
    report = f"reloaded policy ({rules}) and {servers.describe()} from {path}"
    if pending:
        report += f"; not applied until restart: {', '.join(pending)}"
    return report, applied


async def serve(config: Config, *, out: TextIO = sys.stderr, config_path: Path | None = None) -> None:
    """``toolcrib serve``: run until SIGTERM or SIGINT, then drain and shut down gracefully. SIGHUP
    reloads the servers and the policy from ``config_path`` (:func:`reload_config`); without one it
    stops too.

    A stop signal during start-up (upstreams connecting, the index building) aborts it: children are
    stopped, state files are closed, and :class:`StartupInterrupted` is raised (the CLI exits 130).
    A SIGHUP during start-up is applied once the gateway listens.
    """
    stopping = anyio.Event()
    reload_wanted = anyio.Event()
    live: list[Running] = []
    current = [config]
    received: list[int] = []

    async def reload() -> None:
        if not live or config_path is None:
            return
        rt = live[0]
        try:
            report, current[0] = await reload_config(rt.parts.trust, rt.pool, current[0], config_path)
            print(f"toolcrib: SIGHUP: {report}", file=out)
        except ToolcribError as exc:
            print(
                f"toolcrib: SIGHUP: reload failed, the running policy is kept and so are the servers: {exc.message}",
                file=out,
            )
        out.flush()

    with anyio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP and config_path is not None:
                        reload_wanted.set()
                        await reload()
                        continue
                    received.append(signum)
                    stopping.set()
                    return

            tg.start_soon(watch)
            async with running_gateway(config, abort=stopping) as rt:
                print(f"toolcrib {config.gateway.mode} mode: connect clients to {rt.url}", file=out)
                if config.console.enabled:
                    print(f"  operator console: {rt.url.removesuffix('/mcp')}/console", file=out)
                for line in describe_upstreams(rt.pool, rt.parts.trust):
                    print(line, file=out)
                if config_path is not None:
                    for other, what in await anyio.to_thread.run_sync(shared_state, config, config_path):
                        print(f"  warning: {shared_state_warning(other, what)}", file=out)
                live.append(rt)
                if reload_wanted.is_set():
                    await reload()
                out.flush()
                await stopping.wait()
                name = signal.Signals(received[0]).name if received else "signal"
                print(f"toolcrib: {name}: shutting down (draining in-flight calls)", file=out)
            tg.cancel_scope.cancel()


async def serve_stdio_mode(config: Config) -> None:
    """``toolcrib serve --stdio``: one client on stdin/stdout, as the local operator."""
    parts = build(config)
    pool, gateway = parts.pool, parts.gateway
    if parts.reindexer is not None:
        parts.reindexer.hold()  # one start-up sync below decides the model once (issue 14)
    try:
        async with pool.running():
            await pool.wait_ready(10.0)
            if parts.reindexer is not None:
                connected = {name for name, up in pool.upstreams.items() if up.state.status == "connected"}
                try:
                    await parts.reindexer.start(connected)
                except ToolcribError as exc:
                    print(f"toolcrib: initial index build failed: {exc.message}", file=sys.stderr)
            for line in describe_upstreams(pool, parts.trust):
                print(line, file=sys.stderr)
            await serve_stdio(gateway)
    finally:
        parts.close()
