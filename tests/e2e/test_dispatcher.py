"""Dispatcher mode end to end: search_tools, invoke, validation, dynamic loading, pins, the real model."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import Embedder, HashingEmbedder

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
TIME = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def dispatcher(
    tmp_path: Path, servers: dict[str, Any], real_model: bool = False, **gateway: Any
) -> AsyncIterator[Running]:
    cfg = make_config(servers, tmp_path, mode="dispatcher", **gateway)
    embedder: Embedder | None = None if real_model else HashingEmbedder()
    async with running_gateway(cfg, connect_wait=20, embedder=embedder) as rt:
        assert rt.reindexer is not None
        await rt.reindexer.sync(set(cfg.enabled_servers))
        yield rt


async def test_lists_only_the_dispatcher_and_invokes(tmp_path: Path) -> None:
    async with dispatcher(tmp_path, {"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        names = [t.name for t in (await c.list_tools()).tools]
        assert names == ["search_tools", "invoke"]
        found = await c.call_tool("search_tools", {"query": "add two numbers", "limit": 3})
        items = json.loads(_text(found))
        assert items and all({"name", "description", "score"} <= set(i) for i in items)
        assert "echo__add" in [i["name"] for i in items]
        result = await c.call_tool("invoke", {"tool": "echo__add", "arguments": {"a": 2, "b": 3}})
        assert not result.is_error and "5" in _text(result)


async def test_invalid_arguments_are_refused_before_forwarding(tmp_path: Path) -> None:
    async with dispatcher(tmp_path, {"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        result = await c.call_tool("invoke", {"tool": "echo__add", "arguments": {"a": "two"}})
        assert result.is_error
        text = _text(result)
        assert "invalid arguments for echo__add" in text and "'b' is a required property" in text
        unknown = await c.call_tool("invoke", {"tool": "echo__nope", "arguments": {}})
        assert unknown.is_error and "search_tools" in _text(unknown)
        bad = await c.call_tool("search_tools", {"query": 42})
        assert bad.is_error and "query" in _text(bad)


async def test_dynamic_loading_for_session_clients(tmp_path: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            changed.set()

    async with dispatcher(tmp_path, {"echo": stdio_server(ECHO)}) as rt:
        async with Client(rt.url, mode="legacy", message_handler=on_message) as c:
            await c.call_tool("search_tools", {"query": "echo text back", "limit": 2})
            with anyio.fail_after(5):
                await changed.wait()
            names = [t.name for t in (await c.list_tools()).tools]
            assert names[:2] == ["search_tools", "invoke"] and "echo__echo" in names
            assert _text(await c.call_tool("echo__echo", {"text": "by name"})) == "by name"
        # a stateless client gets the dispatcher only: calling by name is an unknown tool
        async with Client(rt.url) as stateless:
            assert [t.name for t in (await stateless.list_tools()).tools] == ["search_tools", "invoke"]
            with pytest.raises(Exception, match="Unknown tool"):
                await stateless.call_tool("echo__echo", {"text": "x"})


async def test_loaded_tools_are_bounded_lru(tmp_path: Path) -> None:
    async with (
        dispatcher(tmp_path, {"echo": stdio_server(ECHO)}, loaded_tools_max=2) as rt,
        Client(rt.url, mode="legacy") as c,
    ):
        for query in ("add numbers", "echo text", "sleep seconds", "big text bytes"):
            await c.call_tool("search_tools", {"query": query, "limit": 1})
        names = [t.name for t in (await c.list_tools()).tools]
        assert len(names) == 4


async def test_always_expose_pins_tools(tmp_path: Path) -> None:
    async with (
        dispatcher(tmp_path, {"echo": stdio_server(ECHO)}, always_expose=["echo__ec*"]) as rt,
        Client(rt.url) as c,
    ):
        names = [t.name for t in (await c.list_tools()).tools]
        assert names == ["search_tools", "invoke", "echo__echo"]
        assert _text(await c.call_tool("echo__echo", {"text": "pinned"})) == "pinned"


async def test_multi_query_search(tmp_path: Path) -> None:
    async with dispatcher(tmp_path, {"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        found = await c.call_tool("search_tools", {"query": ["add numbers", "echo text"], "limit": 4})
        names = [i["name"] for i in json.loads(_text(found))]
        assert {"echo__add", "echo__echo"} <= set(names)


@pytest.mark.slow
async def test_real_model_finds_the_time_tool(tmp_path: Path) -> None:
    """The issue's acceptance path, with the shipped offline MiniLM model."""
    servers = {"time": TIME, "echo": stdio_server(ECHO), "notes": {**stdio_server("toolcrib.demo.notes_server")}}
    servers["notes"]["args"] += ["--file", str(tmp_path / "notes.json")]
    async with dispatcher(tmp_path, servers, real_model=True) as rt, Client(rt.url) as c:
        found = await c.call_tool("search_tools", {"query": "what time is it in Tokyo"})
        items = json.loads(_text(found))
        assert items[0]["name"] == "time__get_current_time", items
        result = await c.call_tool(
            "invoke", {"tool": "time__get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
        )
        assert "Asia/Tokyo" in _text(result)
