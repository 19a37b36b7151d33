"""SEP-2243 headers on upstream HTTP requests (2026-07-28 basic/transports, "Standard Headers").

Each 2026-07-28 POST toolcrib sends upstream carries ``Mcp-Method`` and, for named methods, ``Mcp-Name``;
a ``tools/call`` mirrors the arguments whose input-schema property is tagged ``x-mcp-header`` as
``Mcp-Param-<token>`` (a value that is not plain printable ASCII, or has edge whitespace, goes as
``=?base64?...?=``). The raw fixture's ``headers`` tool answers with the ``Mcp-*`` headers it received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.inbound import encode_header_value

from tests.e2e.conftest import make_config
from tests.test_fixtures import http_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

ARGS = {"region": "eu-west-1", "label": "héllo wörld", "plain": "not mirrored"}


def _seen(result: types.CallToolResult) -> dict[str, str]:
    assert not result.is_error, result
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    seen: dict[str, str] = json.loads(text)
    return seen


@asynccontextmanager
async def _gateway(tmp_path: Path, mode: str, *flags: str) -> AsyncIterator[Running]:
    with http_server("tolerant", *flags) as url:
        cfg = make_config({"tol": {"url": url}}, tmp_path, mode=mode)
        async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
            if rt.reindexer is not None:
                await rt.reindexer.sync({"tol"})
            yield rt


def _expected(args: dict[str, Any]) -> dict[str, str]:
    return {
        "mcp-method": "tools/call",
        "mcp-name": "headers",
        "mcp-param-region": args["region"],
        "mcp-param-label": encode_header_value(args["label"]),
        "mcp-protocol-version": "2026-07-28",
    }


async def test_tools_call_carries_method_name_and_param_headers(tmp_path: Path) -> None:
    async with _gateway(tmp_path, "passthrough") as rt, Client(rt.url) as c:
        seen = _seen(await c.call_tool("tol__headers", ARGS))
        assert seen == _expected(ARGS)
        assert seen["mcp-param-label"].startswith("=?base64?")
        padded = {"region": " padded ", "label": "ascii"}
        seen = _seen(await c.call_tool("tol__headers", padded))
        assert seen["mcp-param-region"] == encode_header_value(" padded ") != " padded "
        assert seen["mcp-param-label"] == "ascii"


async def test_invoke_sends_the_real_tools_name_and_params(tmp_path: Path) -> None:
    """Dispatcher mode: the upstream request is the real tool's tools/call, not `invoke`'s."""
    async with _gateway(tmp_path, "dispatcher") as rt, Client(rt.url) as c:
        seen = _seen(await c.call_tool("invoke", {"tool": "tol__headers", "arguments": ARGS}))
        assert seen == _expected(ARGS)


async def test_omitted_argument_sends_no_param_header(tmp_path: Path) -> None:
    async with _gateway(tmp_path, "passthrough") as rt, Client(rt.url) as c:
        seen = _seen(await c.call_tool("tol__headers", {"region": "us"}))
        assert seen.get("mcp-param-region") == "us" and "mcp-param-label" not in seen


async def test_handshake_era_sends_no_2026_headers(tmp_path: Path) -> None:
    """SEP-2243 is a 2026-07-28 rule; a 2025-11-25 session sends only the version header."""
    async with _gateway(tmp_path, "passthrough", "--legacy") as rt, Client(rt.url) as c:
        seen = _seen(await c.call_tool("tol__headers", ARGS))
        assert seen == {"mcp-protocol-version": "2025-11-25"}
