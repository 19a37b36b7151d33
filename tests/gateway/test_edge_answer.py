"""``edge.sessions.answer``: the SDK's server kernel for one request, the connection's exit stack
unwound only when something was pushed on it (what ``serve_one`` does, less its empty unwinding)."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from mcp.server import Server
from mcp.server.connection import Connection

from toolcrib.gateway.edge.sessions import Exchange, answer
from toolcrib.gateway.server import Peer, RequestInfo
from toolcrib.gateway.trust.identity import Principal

pytestmark = pytest.mark.anyio


async def _answer(name: str, closed: list[str] | None) -> types.JSONRPCMessage:
    connection = Connection.from_envelope("2025-11-25", {"name": "c", "version": "1"}, {})

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if closed is not None:  # a handler holding its connection pushes a clean-up
            connection.exit_stack.callback(closed.append, params.name)
        if params.name == "boom":
            raise RuntimeError("the handler failed")
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"ran {params.name}")])

    principal = Principal(kind="anonymous", subject="test")
    dctx = Exchange(1, {}, RequestInfo(Peer(transport="http", principal=principal), principal), None)
    request = types.JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params={"name": name, "arguments": {}})
    return await answer(Server("t", on_call_tool=call_tool), dctx, request, connection)


@pytest.mark.parametrize("name", ["ok", "boom"])
async def test_what_is_pushed_on_the_exit_stack_is_unwound_after_the_answer(name: str) -> None:
    closed: list[str] = []
    out = await _answer(name, closed)
    assert closed == [name]  # unwound on success and on failure alike
    if name == "boom":
        assert isinstance(out, types.JSONRPCError)
    else:
        assert isinstance(out, types.JSONRPCResponse)


async def test_an_answer_with_nothing_pushed_is_the_kernels_result() -> None:
    out = await _answer("ok", None)
    assert isinstance(out, types.JSONRPCResponse)
    assert out.id == 1 and out.result["content"] == [{"type": "text", "text": "ran ok"}]
