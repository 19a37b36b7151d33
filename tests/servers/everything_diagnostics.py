"""Diagnostic tools of the conformance fixture for the 2026-07-28 scenarios that probe the server
itself rather than a content type (`server-stateless` SEP-2575, `http-custom-header-server-validation`
SEP-2243, `json-schema-2020-12` SEP-2106).

- `test_missing_capability`: needs `sampling`; a 2026-07-28 client that did not declare it gets
  -32021 MissingRequiredClientCapability with `data.requiredCapabilities == {"sampling": {}}`
  (the SDK's HTTP transport answers that code with 400), a handshake client a tool error.
- `test_streaming_elicitation`: needs `elicitation`; answers with an `InputRequiredResult` on its
  response stream, never with an independent server-to-client request (SEP-2575).
- `test_logging_tool`: logs three info lines; on 2026-07-28 the SDK delivers them only when the
  request's `_meta` carries `io.modelcontextprotocol/logLevel`.
- `test_trigger_tool_change` / `test_trigger_prompt_change`: bump the revision shown in the
  listing of `test_dynamic_tool` / `test_dynamic_prompt` and announce it: on `subscriptions/listen`
  streams that asked for `toolsListChanged` / `promptsListChanged`, and as
  `notifications/{tools,prompts}/list_changed` on a handshake session.
- `test_custom_headers`: string, integer and boolean parameters tagged `x-mcp-header` (SEP-2243).
  The SDK's 2026-07-28 HTTP transport checks each `Mcp-Param-*` header (plain or `=?base64?...?=`)
  against the body before dispatch and refuses a mismatch, an omission or bad Base64 with
  HTTP 400 / -32020 HeaderMismatch.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, PromptsListChanged, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers.everything_mrtr import declared, describe, elicit, missing_capability_error, run_flow, single

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

# The suite's own focal schema for `json_schema_2020_12_tool` (SEP-1613 + SEP-2106 vocabulary).
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

CUSTOM_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region", "description": "Mirrored as Mcp-Param-Region"},
        "priority": {"type": "integer", "x-mcp-header": "Priority", "description": "Mirrored as Mcp-Param-Priority"},
        "urgent": {"type": "boolean", "x-mcp-header": "Urgent", "description": "Mirrored as Mcp-Param-Urgent"},
        "note": {"type": "string", "description": "Body only"},
    },
    "required": ["region"],
}

_revision = {"tools": 0, "prompts": 0}

# 2026-07-28: one InputRequiredResult on the response stream, then the answer on the retry;
# 2025-11-25: the same question as a server-to-client request mid-call.
STREAMED = single(
    "stream_answer",
    elicit("What should the stream carry?", {"answer": {"type": "string"}}),
    lambda reply: _result(f"Streamed elicitation answered: {describe(reply)}"),
)


def tools() -> list[types.Tool]:
    """The diagnostic tools, as listed now (the dynamic tool's description carries the revision)."""
    return [
        types.Tool(name="test_missing_capability", description="Needs the sampling capability", input_schema=NO_ARGS),
        types.Tool(
            name="test_streaming_elicitation",
            description="Needs elicitation; asks with an InputRequiredResult on its response stream",
            input_schema=NO_ARGS,
        ),
        types.Tool(
            name="test_logging_tool",
            description="Logs three info lines (2026-07-28: only if the request opts in via _meta logLevel)",
            input_schema=NO_ARGS,
        ),
        types.Tool(
            name="test_trigger_tool_change",
            description="Changes the tool list and announces notifications/tools/list_changed",
            input_schema=NO_ARGS,
        ),
        types.Tool(
            name="test_trigger_prompt_change",
            description="Changes the prompt list and announces notifications/prompts/list_changed",
            input_schema=NO_ARGS,
        ),
        types.Tool(
            name="test_dynamic_tool",
            description=f"Tool list revision {_revision['tools']}",
            input_schema=NO_ARGS,
        ),
        types.Tool(
            name="json_schema_2020_12_tool",
            description="Tool with JSON Schema 2020-12 features",
            input_schema=JSON_SCHEMA_2020_12,
        ),
        types.Tool(
            name="test_custom_headers",
            description="Parameters mirrored into Mcp-Param-* headers (x-mcp-header, SEP-2243)",
            input_schema=CUSTOM_HEADERS_SCHEMA,
        ),
    ]


NAMES = frozenset(tool.name for tool in tools())


def prompts() -> list[types.Prompt]:
    return [types.Prompt(name="test_dynamic_prompt", description=f"Prompt list revision {_revision['prompts']}")]


def get_prompt(name: str) -> types.GetPromptResult | None:
    if name != "test_dynamic_prompt":
        return None
    text = f"This prompt is at revision {_revision['prompts']}."
    message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.GetPromptResult(messages=[message])


def _result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _missing(ctx: ServerRequestContext[Any], capability: str) -> types.CallToolResult:
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        raise missing_capability_error(capability)
    text = f"The client does not support {capability}"
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def call_tool(
    ctx: ServerRequestContext[Any],
    params: types.CallToolRequestParams,
    bus: InMemorySubscriptionBus,
    log: Any,
) -> types.CallToolResult | types.InputRequiredResult:
    """Serve one diagnostic tool (the caller checked `params.name in NAMES`).

    `log(ctx, level, data)` is the fixture's level-filtered logger.
    """
    name, args = params.name, params.arguments or {}
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    if name == "test_missing_capability":
        if not declared(ctx, "sampling"):
            return _missing(ctx, "sampling")
        return _result("The client declared sampling; nothing was asked")
    if name == "test_streaming_elicitation":
        if not declared(ctx, "elicitation"):
            return _missing(ctx, "elicitation")
        outcome = await run_flow(ctx, params, STREAMED)
        assert not isinstance(outcome, types.GetPromptResult)
        return outcome
    if name == "test_logging_tool":
        for step, line in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
            if step:
                await anyio.sleep(0.05)
            await log(ctx, "info", line)
        return _result("Logging tool executed")
    if name == "test_trigger_tool_change":
        _revision["tools"] += 1
        await bus.publish(ToolsListChanged())
        if not modern:
            await ctx.session.send_tool_list_changed()
        return _result(f"Tool list is now at revision {_revision['tools']}")
    if name == "test_trigger_prompt_change":
        _revision["prompts"] += 1
        await bus.publish(PromptsListChanged())
        if not modern:
            await ctx.session.send_prompt_list_changed()
        return _result(f"Prompt list is now at revision {_revision['prompts']}")
    if name == "test_dynamic_tool":
        return _result(f"Tool list revision {_revision['tools']}")
    if name == "json_schema_2020_12_tool":
        return _result(f"Received: {json.dumps(args, sort_keys=True)}")
    if name == "test_custom_headers":
        return _result("Received " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(args.items())))
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
