"""toolcrib as a liberal MCP client: what the spec tells a client to tolerate from a server is relayed, not failed.

Every test runs the raw fixture ``tests.servers.tolerant`` (no SDK on its side) behind a real toolcrib,
over stdio and Streamable HTTP, in both eras (2026-07-28 stateless, 2025-11-25 sessions). The rules
and their spec sources are listed in :mod:`toolcrib.router.tolerate`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import GatewayFactory, stdio_server
from tests.test_fixtures import http_server
from toolcrib.app import Running

pytestmark = pytest.mark.anyio

UPSTREAMS = ["stdio-2026", "http-2026", "stdio-2025", "http-2025"]


@contextmanager
def _server(kind: str) -> Iterator[dict[str, Any]]:
    transport, era = kind.split("-")
    args = () if era == "2026" else ("--legacy",)
    if transport == "stdio":
        yield stdio_server("tests.servers.tolerant", *args)
        return
    with http_server("tolerant", *args) as url:
        yield {"url": url}


@asynccontextmanager
async def _through(
    gateway: GatewayFactory, kind: str, client_mode: str = "auto"
) -> AsyncIterator[tuple[Running, Client]]:
    with _server(kind) as server:
        async with gateway({"tol": server}) as rt, Client(rt.url, mode=client_mode) as client:
            up = rt.pool.upstreams["tol"]
            assert up.state.status == "connected", up.state.error
            assert up.state.protocol_version == ("2026-07-28" if kind.endswith("2026") else "2025-11-25")
            yield rt, client


def _texts(content: list[Any]) -> list[str]:
    return [c.text for c in content if isinstance(c, types.TextContent)]


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_absent_result_type_is_complete(gateway: GatewayFactory, kind: str) -> None:
    """The reported case: {"content": [{"type": "text", "text": "hi"}]} and nothing else, at 2026-07-28."""
    async with _through(gateway, kind) as (_rt, c):
        result = await c.call_tool("tol__hi", {})
        assert not result.is_error
        assert _texts(result.content) == ["hi"]


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_listings_without_result_type_or_caching_hints(gateway: GatewayFactory, kind: str) -> None:
    """Discover and every listing arrive without resultType, ttlMs, cacheScope; items carry unknown fields."""
    async with _through(gateway, kind) as (_rt, c):
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == {"tol__hi", "tol__odd_blocks", "tol__headers"}
        assert tools["tol__hi"].description is None or isinstance(tools["tol__hi"].description, str)
        assert [str(r.uri) for r in (await c.list_resources()).resources] == ["tol+tol://one"]
        assert [t.uri_template for t in (await c.list_resource_templates()).resource_templates] == [
            "tol+tol://item/{id}"
        ]
        prompts = (await c.list_prompts()).prompts
        assert [p.name for p in prompts] == ["tol__greet"]
        assert [a.name for a in prompts[0].arguments or []] == ["name"]


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_unknown_meta_keys_are_relayed(gateway: GatewayFactory, kind: str) -> None:
    async with _through(gateway, kind) as (_rt, c):
        result = await c.call_tool("tol__odd_blocks", {})
        assert result.meta is not None and result.meta.get("example.com/trace") == "t-1"
        assert result.meta.get("example.com/nested") == {"a": [1, 2]}
        read = await c.read_resource("tol+tol://one")
        assert read.meta is not None and read.meta.get("example.com/trace") == "t-1"


@pytest.mark.parametrize("client_mode", ["auto", "legacy"])
@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_unknown_content_blocks_are_dropped_not_fatal(
    gateway: GatewayFactory, kind: str, client_mode: str
) -> None:
    """A block type neither client revision can carry is dropped (debug log); the rest of the result arrives."""
    async with _through(gateway, kind, client_mode) as (_rt, c):
        result = await c.call_tool("tol__odd_blocks", {})
        assert not result.is_error
        assert _texts(result.content) == ["before", "after"]
        prompt = await c.get_prompt("tol__greet", {"name": "Ada"})
        assert [m.content.text for m in prompt.messages if isinstance(m.content, types.TextContent)] == ["hello Ada"]
        assert len(prompt.messages) == 1


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_resources_read_and_completion_with_unknown_fields(gateway: GatewayFactory, kind: str) -> None:
    """Unknown capabilities in discover/initialize do not stop the known ones; extra fields are ignored."""
    async with _through(gateway, kind) as (_rt, c):
        read = await c.read_resource("tol+tol://one")
        assert [getattr(x, "text", None) for x in read.contents] == ["one"]
        done = await c.complete(
            types.PromptReference(type="ref/prompt", name="tol__greet"), {"name": "name", "value": "a"}
        )
        assert done.completion.values == ["alpha", "beta"]
        assert done.completion.total is None and done.completion.has_more is None


async def test_headers_tool_over_stdio_answers_empty(gateway: GatewayFactory) -> None:
    """Over stdio there are no HTTP headers: the fixture's `headers` tool answers ``{}`` (see test_upstream_headers)."""
    async with _through(gateway, "stdio-2026") as (_rt, c):
        result = await c.call_tool("tol__headers", {"region": "eu"})
        assert json.loads(_texts(result.content)[0]) == {}
