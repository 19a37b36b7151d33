"""Per-principal limits and /readyz end to end: a real gateway (``running_gateway``), real stdio
fixture servers, API keys as the principals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import mcp_types as types
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.config import LimitsConfig
from toolcrib.gateway.edge.admin import AdminApi
from toolcrib.gateway.edge.guard import Guard
from toolcrib.gateway.pipeline import LIMITED
from toolcrib.gateway.trust.auth import build_authenticator

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
BACKCHANNEL = "tests.servers.backchannel"
RATE = "Rate limit: key:a may make 3 calls per minute ([limits] calls_per_minute); retry in "
BUSY = "Too many calls in flight for key:a (max 2, [limits] concurrent_calls); retry when one finishes"


@asynccontextmanager
async def limited_gateway(tmp_path: Path, limits: dict[str, Any]) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    servers = {"echo": stdio_server(ECHO), "bc": stdio_server(BACKCHANNEL)}
    cfg = make_config(servers, tmp_path, {"default": "allow"}, mode="passthrough", auth="keys")
    cfg = cfg.model_copy(update={"limits": LimitsConfig.model_validate(limits)})
    store = key_store(cfg)
    tokens = {"a": store.add("a"), "b": store.add("b"), "ops": store.add("ops", ["admins"])}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


@asynccontextmanager
async def client_as(rt: Running, token: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=90) as http,
        Client(streamable_http_client(rt.url, http_client=http)) as c,
    ):
        yield c


async def _echo(c: Client, text: str = "hi") -> types.CallToolResult:
    result = await c.call_tool("echo__echo", {"text": text})
    assert not result.is_error
    return result


async def _refusal(call: Awaitable[Any]) -> MCPError:
    with pytest.raises(MCPError) as err:
        await call
    assert err.value.error.code == LIMITED
    return err.value


async def _denied_rules(rt: Running, principal: str) -> list[str]:
    await rt.parts.writer.flush()
    return [r["rule"] for r in rt.parts.audit.query(principal=principal, outcome="denied", limit=100)]


async def test_rate_limit_refuses_with_retry_after_per_principal_and_is_audited(tmp_path: Path) -> None:
    limits = {"calls_per_minute": 3, "groups": {"admins": {"calls_per_minute": 0}}}
    async with limited_gateway(tmp_path, limits) as (rt, tokens), client_as(rt, tokens["a"]) as a:
        for i in range(3):
            await _echo(a, f"call {i}")
        err = await _refusal(a.call_tool("echo__echo", {"text": "one too many"}))
        assert err.error.message.startswith(RATE) and err.error.message.endswith(" s")
        data = err.error.data
        assert isinstance(data, dict) and isinstance(data["retryAfter"], int) and 1 <= data["retryAfter"] <= 60
        assert err.error.message == f"{RATE}{data['retryAfter']} s"
        await _refusal(a.read_resource("echo+echo://info"))  # every upstream-bound method counts
        async with client_as(rt, tokens["b"]) as b:  # key:a's limit is not key:b's
            for i in range(3):
                await _echo(b, f"b {i}")
        async with client_as(rt, tokens["ops"]) as ops:  # [limits.groups.admins] calls_per_minute = 0: off
            for i in range(6):
                await _echo(ops, f"ops {i}")
        assert await _denied_rules(rt, "key:a") == ["limits.rate", "limits.rate"]
        assert await _denied_rules(rt, "key:b") == []
        rows = rt.parts.audit.query(principal="key:a", outcome="denied", limit=10)
        assert {r["decision"] for r in rows} == {"deny"} and all(r["error"].startswith(RATE) for r in rows)


async def _held_until_refused(c: Client, deadline: float = 30.0) -> MCPError:
    """Probe with quick calls until one is refused for concurrency: the slow calls are in flight."""
    with anyio.fail_after(deadline):
        while True:
            try:
                await c.call_tool("echo__echo", {"text": "probe"})
            except MCPError as exc:
                assert exc.error.code == LIMITED
                return exc
            await anyio.sleep(0.05)


async def _admitted_again(c: Client, deadline: float = 30.0) -> None:
    with anyio.fail_after(deadline):
        while True:
            try:
                await _echo(c, "after")
                return
            except MCPError as exc:
                assert exc.error.message == BUSY
                await anyio.sleep(0.05)


async def _call_when_admitted(c: Client, tool: str, args: dict[str, Any]) -> types.CallToolResult:
    """A call retried while refused for concurrency (a probe of :func:`_held_until_refused` may hold
    the slot for a moment), so it is surely admitted."""
    while True:
        try:
            return await c.call_tool(tool, args)
        except MCPError as exc:
            assert exc.error.message == BUSY
            await anyio.sleep(0.05)


async def test_concurrency_limit_refuses_the_extra_call_until_one_finishes(tmp_path: Path) -> None:
    async with (
        limited_gateway(tmp_path, {"concurrent_calls": 2}) as (rt, tokens),
        client_as(rt, tokens["a"]) as a,
        client_as(rt, tokens["b"]) as b,
    ):
        # 1. two calls of key:a wait at the fixture's barrier (3 parties) and end ok once key:b's arrives
        results: list[types.CallToolResult] = []

        async def converse(c: Client, marker: str) -> None:
            args = {"marker": marker, "group": "held", "parties": 3, "steps": "none"}
            results.append(await _call_when_admitted(c, "bc__converse", args))

        async with anyio.create_task_group() as tg:
            tg.start_soon(converse, a, "a1")
            tg.start_soon(converse, a, "a2")
            refused = await _held_until_refused(a)
            assert refused.error.message == BUSY and refused.error.data is None
            await _echo(b, "key:b is not limited by key:a")
            tg.start_soon(converse, b, "b1")  # the third party: all three finish
        assert len(results) == 3 and not any(r.is_error for r in results)
        await _echo(a, "the slots came back")

        # 2. two calls that would sleep a minute, cancelled by the client: the slots come back too
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call_when_admitted, a, "echo__sleep", {"seconds": 60})
            tg.start_soon(_call_when_admitted, a, "echo__sleep", {"seconds": 60})
            await _held_until_refused(a)
            tg.cancel_scope.cancel()
        await _admitted_again(a)
        rules = await _denied_rules(rt, "key:a")
        assert len(rules) >= 2 and set(rules) == {"limits.concurrency"}


async def test_readyz_is_503_without_any_connected_upstream(tmp_path: Path) -> None:
    hang = stdio_server("tests.servers.hang", "--hang-at", "initialize", connect_timeout=1)
    cfg = make_config({"stuck": hang}, tmp_path, {"default": "allow"}, mode="passthrough")
    async with running_gateway(cfg, connect_wait=5) as rt, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{rt.port}"
        async with s.get(f"{base}/readyz") as r:  # the loopback operator (auth = "none") gets the detail
            assert r.status == 503
            body = await r.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["upstreams"] == {"ok": False, "detail": "not connected: stuck (none connected)"}
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "degraded"


@asynccontextmanager
async def admin_app(rt: Running, checks: dict[str, Callable[[], Awaitable[str | None]]]) -> AsyncIterator[str]:
    """The admin routes behind the real guard, with extra readiness checks, on a free loopback port."""
    guard = Guard(rt.config, build_authenticator(rt.config, key_store(rt.config)).authenticate)
    app = web.Application(middlewares=[guard.middleware])
    api = AdminApi(rt.config, rt.pool, rt.parts.audit, rt.parts.writer, rt.parts.approvals, ready_checks=checks)
    api.ready_timeout = 0.5
    api.add_routes(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_readyz_follows_its_checks_while_healthz_stays_200(tmp_path: Path) -> None:
    database_up = True

    async def database() -> str | None:
        return None if database_up else "connection refused (127.0.0.1:5432)"

    async def broken() -> str | None:
        raise RuntimeError("probe crashed")

    async def stuck() -> str | None:
        await anyio.sleep_forever()
        return None

    async with limited_gateway(tmp_path, {}) as (rt, tokens), aiohttp.ClientSession() as s:
        operator = {"Authorization": f"Bearer {tokens['ops']}"}
        async with s.get(f"http://127.0.0.1:{rt.port}/readyz") as r:  # the gateway's own: public, no credentials
            assert r.status == 200
            own = {"upstreams": {"ok": True}} | ({"database": {"ok": True}} if rt.config.storage.url else {})
            assert await r.json() == {"status": "ready", "checks": own}
        async with admin_app(rt, {"database": database}) as base:
            async with s.get(f"{base}/readyz") as r:
                assert r.status == 200
                assert (await r.json())["checks"] == {"upstreams": {"ok": True}, "database": {"ok": True}}
            database_up = False
            async with s.get(f"{base}/readyz") as r:  # a stranger learns which check fails, not why
                assert r.status == 503
                assert await r.json() == {
                    "status": "not_ready",
                    "checks": {"upstreams": {"ok": True}, "database": {"ok": False}},
                }
            async with s.get(f"{base}/readyz", headers=operator) as r:
                assert r.status == 503
                detail = (await r.json())["checks"]["database"]
                assert detail == {"ok": False, "detail": "connection refused (127.0.0.1:5432)"}
            async with s.get(f"{base}/healthz") as r:  # liveness never depends on the database
                assert r.status == 200 and (await r.json())["status"] == "ok"
        async with admin_app(rt, {"broken": broken, "stuck": stuck}) as base:
            async with s.get(f"{base}/readyz", headers=operator) as r:
                assert r.status == 503
                checks = (await r.json())["checks"]
            assert checks["broken"] == {"ok": False, "detail": "RuntimeError: probe crashed"}
            assert checks["stuck"] == {"ok": False, "detail": "no answer within 0.5 s"}
