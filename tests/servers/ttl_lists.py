"""Fixture: list results with a caching TTL (SEP-2549), and a tool list that changes silently.

    python -m tests.servers.ttl_lists            # stdio
    python -m tests.servers.ttl_lists --http 0   # Streamable HTTP, prints LISTENING <url>

`tools/list` answers with `ttlMs` = FIXTURE_LIST_TTL_MS (default 1000) and lists `listings` plus
`gen_N`, N being how many times tools/list was called: the list changes on every listing and
the server never announces it (no `listChanged`), so only a TTL-driven refresh sees it.
`listings()` -> that count, as text. Resource `ttl://doc` is read with `ttlMs` 60000 and
`cacheScope` "public".
"""

from __future__ import annotations

import os
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tests.servers._common import main

TTL_MS = int(os.environ.get("FIXTURE_LIST_TTL_MS", "1000"))
DOC = "ttl://doc"
_count = {"tools/list": 0}
NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    _count["tools/list"] += 1
    n = _count["tools/list"]
    tools = [
        types.Tool(name="listings", description="How many times tools/list was called", input_schema=NO_ARGS),
        types.Tool(name=f"gen_{n}", description=f"Listed by tools/list call {n}", input_schema=NO_ARGS),
    ]
    return types.ListToolsResult(tools=tools, ttl_ms=TTL_MS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "listings":
        text = str(_count["tools/list"])
    elif params.name.startswith("gen_"):
        text = params.name
    else:
        raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def list_resources(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[types.Resource(uri=DOC, name="doc")], ttl_ms=TTL_MS)


async def read_resource(
    ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    if str(params.uri) != DOC:
        raise MCPError(INVALID_PARAMS, f"Unknown resource: {params.uri}")
    content = types.TextResourceContents(uri=DOC, text="cacheable", mime_type="text/plain")
    return types.ReadResourceResult(contents=[content], ttl_ms=60_000, cache_scope="public")


server: Server[Any] = Server(
    "toolcrib-ttl-lists",
    version="1.0.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_read_resource=read_resource,
)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
