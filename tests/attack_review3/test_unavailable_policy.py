"""Attack review 3: what a not-connected server's name reveals under more policies than
tests/e2e/test_unavailable_tools.py covers. A default-deny allow-list and a deny-everything rule for
this caller hide a down server from search and invoke, also when the caller writes glob characters
into the tool name it asks for (the policy matches names literally)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

BROKEN = {"command": "/nonexistent/server-binary"}
ECHO = stdio_server("tests.servers.echo")
POLICIES = {
    "allow-list": {"default": "deny", "rules": [{"id": "echo", "tools": ["echo__*"], "action": "allow"}]},
    "allow-one-broken-tool": {
        "default": "deny",
        "rules": [
            {"id": "echo", "tools": ["echo__*"], "action": "allow"},
            {"id": "one", "tools": ["broken__safe"], "action": "allow"},
        ],
    },
}


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def _gateway(tmp_path: Path, policy: dict[str, Any]) -> AsyncIterator[Running]:
    cfg = make_config({"echo": ECHO, "broken": BROKEN}, tmp_path, policy=policy, mode="dispatcher")
    async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
        if rt.reindexer is not None:
            await rt.reindexer.sync(set(cfg.enabled_servers))
        yield rt


@pytest.mark.parametrize("name", ["broken__x", "broken__*", "broken__[a-z]*", "broken__safe?"])
async def test_an_allow_list_hides_a_down_server(tmp_path: Path, name: str) -> None:
    async with _gateway(tmp_path, POLICIES["allow-list"]) as rt, Client(rt.url) as c:
        for server in ("broken", None):
            args = {"query": "anything at all", **({"server": server} if server else {})}
            found = _text(await c.call_tool("search_tools", args))
            assert "broken" not in found and "not connected" not in found, found
        text = _text(await c.call_tool("invoke", {"tool": name, "arguments": {}}))
        assert "not connected" not in text and text.startswith("unknown tool"), text


async def test_a_tool_the_policy_allows_names_its_down_server_only_for_that_name(tmp_path: Path) -> None:
    async with _gateway(tmp_path, POLICIES["allow-one-broken-tool"]) as rt, Client(rt.url) as c:
        text = _text(await c.call_tool("invoke", {"tool": "broken__safe", "arguments": {}}))
        assert "not connected: broken (" in text
        for other in ("broken__other", "broken__*", "broken__s*"):
            text = _text(await c.call_tool("invoke", {"tool": other, "arguments": {}}))
            assert "not connected" not in text, (other, text)


async def test_search_of_a_server_with_one_allowed_tool(tmp_path: Path) -> None:
    """Known gap (reported, not fixed): search probes ``broken__*``, which the allow rule for
    ``broken__safe`` does not match, so the caller is told to rephrase although its one tool of
    ``broken`` is down. Conservative (nothing leaks); invoke of the exact name does say why."""
    async with _gateway(tmp_path, POLICIES["allow-one-broken-tool"]) as rt, Client(rt.url) as c:
        found = _text(await c.call_tool("search_tools", {"query": "safe", "server": "broken"}))
        assert found == "[] (no matching tools; rephrase the query or drop the server filter)"
