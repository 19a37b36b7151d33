"""The composition root: builds pool, index, trust layers and transports from a Config, and runs them.

``toolcrib serve`` calls :func:`serve`; tests call :func:`running_gateway` to get a live gateway on
an ephemeral port.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.abc
from aiohttp import web

from toolcrib.config import Config
from toolcrib.errors import ConfigError, ToolcribError
from toolcrib.gateway import policy
from toolcrib.gateway.audit import AuditEvent, SqliteAuditLog, load_hmac_key
from toolcrib.gateway.credentials import ChainStore, Redactor, expand
from toolcrib.gateway.http import HttpTransport
from toolcrib.gateway.pipeline import ToolCall, audit_layer, policy_layer, redact_layer
from toolcrib.gateway.policy import Principal, effective_default
from toolcrib.gateway.server import LOCAL_OPERATOR, Gateway
from toolcrib.gateway.stdio import serve_stdio
from toolcrib.router.pool import Pool

if TYPE_CHECKING:
    from toolcrib.index.embedder import Embedder
    from toolcrib.router.reindex import Reindexer

log = logging.getLogger("toolcrib.serve")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
ANONYMOUS = Principal(name="anonymous", kind="anonymous", groups=frozenset())


@dataclass
class Running:
    """A live gateway: its address, pool and transport (for tests and the serve command)."""

    config: Config
    pool: Pool
    gateway: Gateway
    http: HttpTransport | None
    url: str
    port: int
    reindexer: Reindexer | None = None


@dataclass
class Parts:
    pool: Pool
    gateway: Gateway
    reindexer: Reindexer | None
    audit: SqliteAuditLog
    redactor: Redactor


def build(config: Config, *, embedder: Embedder | None = None) -> Parts:
    """Wire credentials, pool, index, audit, policy and the dispatch pipeline from the config."""
    store = ChainStore(config.secrets.file)
    redactor = Redactor()

    def expand_secret(value: str) -> str:
        return expand(value, store, redactor)

    pool = Pool(config, expand_secret=expand_secret)
    audit = SqliteAuditLog(config.audit.path, hmac_key=load_hmac_key(config.audit.path, store), redactor=redactor)
    rules = config.policy.rules
    default = effective_default(config.policy, config.gateway)

    def may_use(principal: Principal, key: str) -> bool:
        return policy.allowed(principal, key, rules, default)

    def on_search(call: ToolCall, results: Sequence[str]) -> None:
        query = call.arguments.get("query")
        audit.append(
            AuditEvent(
                kind="search",
                request_id=None if call.request_id is None else str(call.request_id),
                principal=call.principal.name,
                client_name=call.client_name,
                session=call.session_id,
                transport=call.transport,
                method="tools/call:search_tools",
                query=query if isinstance(query, str) else json.dumps(query, ensure_ascii=False),
                results=list(results),
            )
        )

    layers = [audit_layer(audit), redact_layer(redactor), policy_layer(rules, default)]
    reindexer: Reindexer | None = None
    if config.gateway.mode == "dispatcher":
        from toolcrib.router.reindex import Reindexer, open_index

        try:
            index = open_index(config, embedder)
        except ToolcribError as exc:
            log.error("tool index unavailable, search_tools will fail: %s", exc.message)
        else:
            reindexer = Reindexer(index, lambda: pool.catalog)
    gateway = Gateway(
        config,
        pool,
        index=reindexer.index if reindexer else None,
        layers=layers,
        allowed=may_use,
        on_search=on_search,
    )
    if reindexer is not None:
        _reindex_on_change(pool, reindexer)
    return Parts(pool, gateway, reindexer, audit, redactor)


def _reindex_on_change(pool: Pool, reindexer: Reindexer) -> None:
    async def listener(server: str, what: str) -> None:
        if what in ("connected", "tools_changed"):
            try:
                await reindexer.sync({server})
            except ToolcribError as exc:
                log.error("reindex of %s failed: %s", server, exc.message)

    pool.subscribe(listener)


async def _no_auth(request: web.Request) -> Principal:
    return ANONYMOUS


def check_bind(config: Config) -> None:
    if config.gateway.auth == "none" and config.gateway.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f'[gateway] auth = "none" is only allowed on a loopback bind, not {config.gateway.host!r}; '
            'set auth = "keys" (and run `toolcrib keys add NAME`) or bind to 127.0.0.1'
        )


@asynccontextmanager
async def running_gateway(
    config: Config, *, connect_wait: float = 10.0, embedder: Embedder | None = None
) -> AsyncIterator[Running]:
    """Start upstreams and the HTTP endpoint; on exit, drain and stop everything."""
    check_bind(config)
    parts = build(config, embedder=embedder)
    pool, gateway = parts.pool, parts.gateway
    async with pool.running(), anyio.create_task_group() as tg:
        pool.rebuild()
        app = web.Application(client_max_size=config.gateway.max_body_bytes + 1024)
        transport = HttpTransport(gateway, config, tg, authenticate=_no_auth)
        transport.add_routes(app)
        app.router.add_get("/healthz", _healthz(pool))
        if parts.reindexer is not None:
            app.router.add_post("/admin/reindex", _reindex_handler(parts.reindexer))
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, config.gateway.host, config.gateway.port, reuse_address=True)
        await site.start()
        port = _bound_port(runner, config.gateway.port)
        host = config.gateway.host if ":" not in config.gateway.host else f"[{config.gateway.host}]"
        tg.start_soon(transport.reap)
        await pool.wait_ready(connect_wait)
        try:
            yield Running(config, pool, gateway, transport, f"http://{host}:{port}/mcp", port, parts.reindexer)
        finally:
            with anyio.CancelScope(shield=True):
                transport.accepting = False
                if transport.inflight:
                    with anyio.move_on_after(config.gateway.drain_timeout):
                        await transport.idle.wait()
                transport.close_all()
                await runner.cleanup()
            tg.cancel_scope.cancel()
    parts.audit.close()


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return default


def _reindex_handler(reindexer: Reindexer) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        if request.remote not in ("127.0.0.1", "::1"):
            return web.json_response({"error": "forbidden", "message": "admin API is loopback-only"}, status=403)
        server = request.query.get("server")
        full = request.query.get("full", "").lower() in ("1", "true", "yes")
        try:
            report = await reindexer.sync({server} if server else None, full=full)
        except ToolcribError as exc:
            return web.json_response({"error": "reindex_failed", "message": exc.message}, status=500)
        return web.json_response(dataclasses.asdict(report))

    return handler


def _healthz(pool: Pool) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        ups = {
            name: {
                "status": up.state.status,
                "protocol": up.state.protocol_version,
                "tools": len(up.listing.tools),
                "error": up.state.error,
            }
            for name, up in pool.upstreams.items()
        }
        return web.json_response({"status": "ok", "upstreams": ups})

    return handler


def describe_upstreams(pool: Pool) -> list[str]:
    lines = []
    for name, up in sorted(pool.upstreams.items()):
        st = up.state
        if st.status == "connected":
            lines.append(f"  {name}: connected, {len(up.listing.tools)} tools, protocol {st.protocol_version}")
        else:
            lines.append(f"  {name}: {st.status}" + (f" ({st.error})" if st.error else " (still connecting)"))
    return lines


async def _wait_for_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve(config: Config, *, out: TextIO = sys.stderr) -> None:
    """``toolcrib serve``: run until SIGTERM/SIGINT, then shut down gracefully."""
    async with running_gateway(config) as rt:
        print(f"toolcrib {config.gateway.mode} mode: connect clients to {rt.url}", file=out)
        for line in describe_upstreams(rt.pool):
            print(line, file=out)
        out.flush()
        await _wait_for_signal()
        print("toolcrib: shutting down (draining in-flight calls)", file=out)


async def serve_stdio_mode(config: Config) -> None:
    """``toolcrib serve --stdio``: one client on stdin/stdout, as the local operator."""
    parts = build(config)
    pool, gateway = parts.pool, parts.gateway
    async with pool.running():
        await pool.wait_ready(10.0)
        pool.rebuild()
        for line in describe_upstreams(pool):
            print(line, file=sys.stderr)
        try:
            await serve_stdio(gateway)
        finally:
            parts.audit.close()


__all__ = ["LOCAL_OPERATOR", "Running", "running_gateway", "serve", "serve_stdio_mode"]
