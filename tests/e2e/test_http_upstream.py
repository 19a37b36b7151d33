"""Streamable HTTP upstreams (toolcrib's aiohttp transport), in both protocol eras."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import GatewayFactory
from tests.test_fixtures import http_server

pytestmark = pytest.mark.anyio

ERAS = {"modern": (), "legacy": ("--legacy",)}


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_http_upstream_calls_resources_prompts(gateway: GatewayFactory, era: str) -> None:
    with http_server("echo", *ERAS[era]) as url:
        async with gateway({"echo": {"url": url}}) as rt, Client(rt.url) as c:
            up = rt.pool.upstreams["echo"]
            assert up.state.protocol_version == ("2026-07-28" if era == "modern" else "2025-11-25")
            assert _text(await c.call_tool("echo__echo", {"text": "over http"})) == "over http"
            assert "42" in _text(await c.call_tool("echo__add", {"a": 40, "b": 2}))
            big = await c.call_tool("echo__big", {"n_bytes": 20_000_000})
            assert len(_text(big)) == 20_000_000
            resources = (await c.list_resources()).resources
            assert (await c.read_resource(str(resources[0].uri))).contents
            assert "Ada" in str((await c.get_prompt("echo__greet", {"name": "Ada"})).messages[0].content)


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_http_upstream_deadline_cancels(gateway: GatewayFactory, tmp_path: Path, era: str) -> None:
    with http_server("echo", *ERAS[era], env={"FIXTURE_MARKER_DIR": str(tmp_path)}) as url:
        async with gateway({"echo": {"url": url, "timeout": 1.0}}) as rt, Client(rt.url) as c:
            started = time.monotonic()
            result = await c.call_tool("echo__sleep", {"seconds": 30, "tag": "t"})
            assert result.is_error and "deadline" in _text(result)
            assert time.monotonic() - started < 5
            with anyio.fail_after(5):
                while not (tmp_path / "sleep-t.cancelled").exists():
                    await anyio.sleep(0.05)


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_http_upstream_list_changed(gateway: GatewayFactory, era: str) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            changed.set()

    with http_server("echo", *ERAS[era]) as url:
        async with (
            gateway({"echo": {"url": url}}) as rt,
            Client(rt.url, mode="legacy", message_handler=on_message) as c,
        ):
            await c.list_tools()
            await c.call_tool("echo__add_tool", {"name": "later"})
            with anyio.fail_after(10):
                await changed.wait()
            assert "echo__later" in {t.name for t in (await c.list_tools()).tools}


async def test_http_upstream_going_away_is_reported_and_recovers(gateway: GatewayFactory) -> None:
    with http_server("echo") as url:
        async with gateway({"echo": {"url": url}}) as rt, Client(rt.url) as c:
            assert _text(await c.call_tool("echo__echo", {"text": "a"})) == "a"
        # the server is gone now; a new gateway reports it and does not hang
    async with gateway({"echo": {"url": url, "connect_timeout": 2.0}}) as rt, Client(rt.url) as c:
        assert rt.pool.upstreams["echo"].state.status != "connected"
        assert rt.pool.upstreams["echo"].state.error
        assert (await c.list_tools()).tools == []


async def test_legacy_sse_upstream(gateway: GatewayFactory) -> None:
    with http_server("echo", flag="--sse") as url:
        assert url.endswith("/sse")
        async with gateway({"echo": {"url": url, "transport": "sse"}}) as rt, Client(rt.url) as c:
            assert rt.pool.upstreams["echo"].state.status == "connected"
            assert _text(await c.call_tool("echo__echo", {"text": "via sse"})) == "via sse"
            assert "5" in _text(await c.call_tool("echo__add", {"a": 2, "b": 3}))
