"""Probe fixture for trace context propagation (toolcrib/observe): what ``params._meta`` arrived.

    python -m tests.servers.trace_probe              # stdio
    python -m tests.servers.trace_probe --http 0     # Streamable HTTP

Tools:
  meta()              -> JSON of the ``params._meta`` this ``tools/call`` carried ({} without one)
  fail()              -> a JSON-RPC error answer (-32603 "probe failure")
Prompt ``meta()``     -> one user message whose text is the JSON of the ``prompts/get`` ``_meta``.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS

from tests.servers._common import FixtureServer, main

EMPTY = {"type": "object", "properties": {}}
TOOLS = [
    types.Tool(name="meta", description="Return the _meta of this request as JSON.", input_schema=EMPTY),
    types.Tool(name="fail", description="Always answer with a JSON-RPC error.", input_schema=EMPTY),
]
PROMPT = types.Prompt(name="meta", description="A message holding the _meta of this request.")


def _meta(ctx: ServerRequestContext[Any]) -> str:
    params = ctx.params or {}
    meta = params.get("_meta") if isinstance(params, dict) else None
    return json.dumps(meta if isinstance(meta, dict) else {}, sort_keys=True)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "meta":
        return types.CallToolResult(content=[types.TextContent(type="text", text=_meta(ctx))])
    if params.name == "fail":
        raise MCPError(INTERNAL_ERROR, "probe failure")
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")


async def list_prompts(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[PROMPT])


async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
    if params.name != PROMPT.name:
        raise MCPError(INVALID_PARAMS, f"Unknown prompt: {params.name}")
    text = types.TextContent(type="text", text=_meta(ctx))
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=text)])


server = FixtureServer(
    "toolcrib-trace-probe",
    version="1.0.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
