"""The composition root: builds pool, index, trust layers and transports from a Config, and runs them.

``toolcrib serve`` calls :func:`serve`; tests call :func:`running_gateway` to get a live gateway on
an ephemeral port.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.abc
from aiohttp import web

from toolcrib.config import Config
from toolcrib.errors import ConfigError, ToolcribError
from toolcrib.gateway.audit.log import SqliteAuditLog, load_hmac_key
from toolcrib.gateway.audit.rows import refused_auth_event, refused_call_event, search_event
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.edge.admin import AdminApi
from toolcrib.gateway.edge.guard import Guard, access
from toolcrib.gateway.edge.http import HttpTransport
from toolcrib.gateway.edge.slowclients import apply_client_timeouts
from toolcrib.gateway.edge.stdio import serve_stdio
from toolcrib.gateway.pipeline import (
    approval_layer,
    audit_layer,
    policy_layer,
    quarantine_layer,
    redact_layer,
    redact_model,
    validation_layer,
)
from toolcrib.gateway.server import Gateway
from toolcrib.gateway.trust import policy
from toolcrib.gateway.trust.approvals import ApprovalStore, AsyncApprovals
from toolcrib.gateway.trust.auth import (
    Authenticator,
    build_authenticator,
    challenger,
    protected_resource_metadata,
)
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR
from toolcrib.gateway.trust.quarantine import Trust
from toolcrib.gateway.trust.redaction import Redactor, install_log_redaction
from toolcrib.gateway.trust.secrets import ChainStore, expander
from toolcrib.router.pool import Pool

if TYPE_CHECKING:
    from toolcrib.index.embedder import Embedder
    from toolcrib.router.reindex import Reindexer

log = logging.getLogger("toolcrib.serve")


@dataclass
class Running:
    """A live gateway: its address, parts and transport (for tests and the serve command)."""

    config: Config
    parts: Parts
    http: HttpTransport
    url: str
    port: int

    @property
    def pool(self) -> Pool:
        return self.parts.pool

    @property
    def gateway(self) -> Gateway:
        return self.parts.gateway

    @property
    def reindexer(self) -> Reindexer | None:
        return self.parts.reindexer


@dataclass
class Parts:
    pool: Pool
    gateway: Gateway
    reindexer: Reindexer | None
    audit: SqliteAuditLog
    writer: AuditWriter
    approvals: AsyncApprovals
    redactor: Redactor
    trust: Trust

    def close(self) -> None:
        self.writer.close()
        self.audit.close()
        self.approvals.close()


def build(config: Config, *, embedder: Embedder | None = None) -> Parts:
    """Wire credentials, pool, index, audit, policy, approvals, pins and the dispatch pipeline."""
    store = ChainStore(config.secrets.file)
    redactor = Redactor()
    pool = Pool(config, expand_secret=expander(store, redactor), scrub=lambda model: redact_model(redactor, model))
    install_log_redaction(redactor)
    trust = Trust(config, pool)

    async def on_change(server: str, what: str) -> None:
        if what in ("connected", "tools_changed"):
            trust.refresh()

    pool.subscribe(on_change)  # before the gateway and the index: quarantine is settled first
    audit = SqliteAuditLog(
        config.audit.path,
        hmac_key=load_hmac_key(config.audit.path, store),
        redactor=redactor,
        anchor_path=config.audit.anchor_path,
    )
    writer = AuditWriter(audit)
    approvals = AsyncApprovals(ApprovalStore(config.policy.approvals_path, redactor=redactor))

    layers = [
        audit_layer(writer),
        redact_layer(redactor),
        quarantine_layer(trust.is_quarantined),
        policy_layer(trust.rules, trust.default),
        validation_layer(lambda key: e.tool.input_schema if (e := pool.catalog.tools.get(key)) else None),
        approval_layer(approvals, mode=config.policy.approval_mode, timeout=config.policy.approval_timeout),
    ]
    reindexer: Reindexer | None = None
    if config.gateway.mode == "dispatcher":
        from toolcrib.router.reindex import Reindexer, open_index

        try:
            index = open_index(config, embedder)
        except ToolcribError as exc:
            log.error("tool index unavailable, search_tools will fail: %s", exc.message)
        else:
            reindexer = Reindexer(index, lambda: pool.catalog, visible=trust.searchable)
    gateway = Gateway(
        config,
        pool,
        trust,
        redactor,
        index=reindexer.index if reindexer else None,
        layers=layers,
        on_search=lambda call, results: writer.submit(search_event(call, results)),
        on_refused=lambda call, rule, reason: writer.submit(refused_call_event(call, rule, reason)),
    )
    if reindexer is not None:
        _reindex_on_change(pool, reindexer)
    return Parts(pool, gateway, reindexer, audit, writer, approvals, redactor, trust)


def _reindex_on_change(pool: Pool, reindexer: Reindexer) -> None:
    async def listener(server: str, what: str) -> None:
        if what in ("connected", "tools_changed"):
            try:
                await reindexer.sync({server})
            except ToolcribError as exc:
                log.error("reindex of %s failed: %s", server, exc.message)

    pool.subscribe(listener)


def check_bind(config: Config) -> None:
    if config.gateway.auth == "none" and not policy.is_loopback(config.gateway.host):
        raise ConfigError(
            f'[gateway] auth = "none" is only allowed on a loopback bind, not {config.gateway.host!r}; '
            'set auth = "keys" (and run `toolcrib keys add NAME`) or bind to 127.0.0.1'
        )


class StartupInterrupted(ToolcribError):
    """A stop signal arrived before the gateway was listening; everything started so far was stopped."""

    exit_code = 130


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` (one line) when ``host:port`` cannot be bound, e.g. another toolcrib
    already listens there. Port 0 (pick a free one) is always fine. Called before any upstream starts
    or the index is built, so a busy port costs nothing."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve bind address {host!r} ({exc.strerror}); fix [gateway] host or --host"
        ) from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no conflict
            try:
                sock.bind(addr)
            except OSError as exc:
                raise _bind_error(host, port, exc) from None


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} on {host} is already in use (another toolcrib or `make run`?); stop it, "
            "or pass --port N (0 picks a free port) or set [gateway] port"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(f"no permission to listen on {host}:{port}; use a port above 1023 (--port N)")
    return ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); fix [gateway] host/port or pass --port N")


@asynccontextmanager
async def running_gateway(
    config: Config,
    *,
    connect_wait: float = 10.0,
    embedder: Embedder | None = None,
    abort: anyio.Event | None = None,
) -> AsyncIterator[Running]:
    """Start upstreams and the HTTP endpoint; on exit, drain and stop everything.

    Raises :class:`ConfigError` before starting anything when the bind is refused (see
    :func:`check_bind`) or the port is busy (:func:`check_port_free`). Setting ``abort`` before the
    endpoint listens stops the waiting for upstreams and the first index build, stops every upstream
    started so far and raises :class:`StartupInterrupted`."""
    check_bind(config)
    check_port_free(config.gateway.host, config.gateway.port)
    authenticator = build_authenticator(config)
    parts = build(config, embedder=embedder)
    try:
        async with AsyncExitStack() as stack:
            if hasattr(authenticator, "__aenter__"):
                await stack.enter_async_context(authenticator)  # type: ignore[arg-type]
            tg = await stack.enter_async_context(_serving(parts.pool))
            yield await _start_http(config, parts, authenticator, tg, stack, connect_wait, abort or anyio.Event())
    finally:
        parts.close()


@asynccontextmanager
async def _serving(pool: Pool) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with pool.running(), anyio.create_task_group() as tg:
        try:
            yield tg
        finally:
            tg.cancel_scope.cancel()


async def _start_http(
    config: Config,
    parts: Parts,
    authenticator: Authenticator,
    tg: anyio.abc.TaskGroup,
    stack: AsyncExitStack,
    connect_wait: float,
    abort: anyio.Event,
) -> Running:
    pool = parts.pool
    base: dict[str, str] = {}

    guard = Guard(
        config,
        authenticator.authenticate,
        on_refused=lambda request, detail, status: parts.writer.submit(refused_auth_event(request, detail, status)),
        challenge=challenger(config, lambda: base.get("url", "")),
    )
    app = web.Application(middlewares=[guard.middleware], client_max_size=config.gateway.max_body_bytes + 1024)
    transport = HttpTransport(parts.gateway, config, tg)
    transport.add_routes(app)
    reindex = None
    if parts.reindexer is not None:
        reindexer = parts.reindexer

        async def reindex(server: str | None, full: bool) -> Any:
            return await reindexer.sync({server} if server else None, full=full)

    AdminApi(config, pool, parts.audit, parts.writer, parts.approvals, reindex).add_routes(app)
    if config.gateway.auth in ("oauth", "keys+oauth"):
        metadata = access("public", _metadata_handler(config, base))
        app.router.add_get("/.well-known/oauth-protected-resource", metadata)
        app.router.add_get("/.well-known/oauth-protected-resource/mcp", metadata)
    # Listen only once every upstream had its first attempt and the first index is built, so the
    # first client sees the whole catalog (an upstream still connecting after connect_wait joins later).
    await _unless(abort, lambda: pool.wait_ready(connect_wait))  # catalog and quarantine follow by themselves
    if parts.reindexer is not None:
        connected = {name for name, up in pool.upstreams.items() if up.state.status == "connected"}
        try:
            await _unless(abort, lambda: _sync(parts.reindexer, connected))
        except ToolcribError as exc:
            if isinstance(exc, StartupInterrupted):
                raise
            log.error("initial index build failed: %s", exc.message)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    apply_client_timeouts(
        runner, header_timeout=config.gateway.header_timeout, idle_timeout=config.gateway.idle_timeout
    )
    site = web.TCPSite(runner, config.gateway.host, config.gateway.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:  # taken while we were starting up
        await runner.cleanup()
        raise _bind_error(config.gateway.host, config.gateway.port, exc) from None
    port = _bound_port(runner, config.gateway.port)
    host = config.gateway.host if ":" not in config.gateway.host else f"[{config.gateway.host}]"
    base["url"] = f"http://{host}:{port}"
    tg.start_soon(transport.table.reap)

    async def shutdown() -> None:
        with anyio.CancelScope(shield=True):
            transport.accepting = False
            if transport.inflight:
                with anyio.move_on_after(config.gateway.drain_timeout):
                    await transport.idle.wait()
            transport.table.close_all()
            await runner.cleanup()

    stack.push_async_callback(shutdown)
    tg.start_soon(_audit_upkeep, parts.audit, config.audit.retention_days)
    return Running(config, parts, transport, f"{base['url']}/mcp", port)


async def _sync(reindexer: Reindexer | None, servers: set[str]) -> None:
    if reindexer is not None:
        await reindexer.sync(servers)


async def _unless(abort: anyio.Event, step: Callable[[], Any]) -> None:
    """Run the start-up ``step`` unless ``abort`` is (or becomes) set; then raise :class:`StartupInterrupted`.
    Only the step is cancelled: upstreams keep running until the caller's exit stack stops them in order."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await abort.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        if not abort.is_set():
            await step()
        tg.cancel_scope.cancel()
    if abort.is_set():
        raise StartupInterrupted("interrupted during start-up: stopped every upstream started so far; nothing listens")


async def _audit_upkeep(audit: SqliteAuditLog, retention_days: int) -> None:
    """Fold the WAL every minute; with retention set, prune old rows (behind a checkpoint) daily."""
    last_prune = 0.0
    while True:
        if retention_days and time.time() - last_prune > 86400:
            pruned = await anyio.to_thread.run_sync(audit.prune, time.time() - retention_days * 86400)
            if pruned:
                log.info("audit retention: pruned %d rows older than %d days", pruned, retention_days)
            last_prune = time.time()
        await anyio.sleep(60)
        await anyio.to_thread.run_sync(audit.checkpoint)


def _metadata_handler(config: Config, base: dict[str, str]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(protected_resource_metadata(config.auth, base.get("url", "")))

    return handler


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return default


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


__all__ = ["LOCAL_OPERATOR", "Running", "running_gateway", "serve", "serve_stdio_mode"]
