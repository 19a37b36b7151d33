"""Conformance fixture: every tool, resource, template and prompt that the server scenarios of
`@modelcontextprotocol/conformance` 0.2.0-alpha.12 call by exact name, for both requirement sets
(`--requirements 2025-11-25` and `--requirements 2026-07-28`).

    python -m tests.servers.everything                # stdio
    python -m tests.servers.everything --http 0       # Streamable HTTP, prints LISTENING <url>
    python -m tests.servers.everything --legacy ...   # handshake era only (refuses server/discover)

Written on the SDK's low-level `Server`, which serves both eras on one endpoint. Handshake era
(2025-11-25): sampling, elicitation and roots are server-to-client requests sent mid-call, logs
and progress ride the call's stream, `resources/subscribe` is honoured. 2026-07-28 (stateless,
SEP-2575): input is asked for with an `InputRequiredResult` and answered on the retried call
(MRTR, SEP-2322), logs are sent only when the request opts in via `_meta` logLevel, and
`subscriptions/listen` carries resource updates and tools/prompts list changes.

Where the parts live:

- here: the content tools (`test_simple_text` ... `test_reconnection`), `test_sampling` and the
  `test_elicitation*` tools, which answer `isError` when the client lacks the capability;
- `everything_content`: resources, template, static prompts, completions; an unknown resource
  is -32602 with `data.uri` on 2026-07-28 (SEP-2164), -32002 on 2025-11-25;
- `everything_mrtr`: the `test_input_required_result_*` tools and prompt (SEP-2322), with
  `requestState` sealed and verified by the SDK's `RequestStateBoundary` (tampered: -32602);
- `everything_diagnostics`: `server-stateless` probes (`test_missing_capability` -> -32021 +
  HTTP 400, `test_streaming_elicitation`, `test_logging_tool`, `test_trigger_tool_change`,
  `test_trigger_prompt_change`), `json_schema_2020_12_tool` (SEP-2106 keywords kept) and
  `test_custom_headers` (`x-mcp-header`, SEP-2243; the SDK validates `Mcp-Param-*` headers).

Server extensions (SEP-2133), e.g. the tasks extension, are registered in one place:
`EXTENSIONS` below. Extra tool beyond the suite: `test_trigger_resource_update` announces an
update of `test://watched-resource` to its subscribers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.extension import Extension, MethodBinding, compose_tool_call_handler
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers import everything_content as content
from tests.servers import everything_diagnostics as diagnostics
from tests.servers import everything_mrtr as mrtr
from tests.servers._common import FixtureServer, main
from tests.servers.tasks_ext import TasksExtension

# ---- tools ---------------------------------------------------------------------------------

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: list[types.Tool] = [
    types.Tool(name="test_simple_text", description="Returns a simple text response", input_schema=NO_ARGS),
    types.Tool(name="test_image_content", description="Returns a 1x1 PNG image", input_schema=NO_ARGS),
    types.Tool(name="test_audio_content", description="Returns a short WAV clip", input_schema=NO_ARGS),
    types.Tool(name="test_embedded_resource", description="Returns an embedded resource", input_schema=NO_ARGS),
    types.Tool(
        name="test_multiple_content_types",
        description="Returns text, image and resource content",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_tool_with_logging",
        description="Sends three info log notifications while running",
        input_schema=NO_ARGS,
    ),
    types.Tool(name="test_error_handling", description="Always returns an error result", input_schema=NO_ARGS),
    types.Tool(
        name="test_tool_with_progress",
        description="Reports progress 0, 50, 100 of 100",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_sampling",
        description="Asks the client to sample an LLM completion",
        input_schema={
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
            "required": ["prompt"],
        },
    ),
    types.Tool(
        name="test_elicitation",
        description="Asks the client for user input",
        input_schema={
            "type": "object",
            "properties": {"message": {"type": "string", "description": "The message to show the user"}},
            "required": ["message"],
        },
    ),
    types.Tool(
        name="test_elicitation_sep1034_defaults",
        description="Elicitation whose schema has defaults for every primitive type (SEP-1034)",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_elicitation_sep1330_enums",
        description="Elicitation whose schema has all five enum variants (SEP-1330)",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_reconnection",
        description="Closes its SSE stream mid-call, then answers on the resumed stream (SEP-1699)",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_trigger_resource_update",
        description="Announces an update of test://watched-resource to its subscribers (both eras)",
        input_schema=NO_ARGS,
    ),
]


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[_text(text)], is_error=True)


def _result(*content: Any) -> types.CallToolResult:
    return types.CallToolResult(content=list(content))


# Log levels, least to most severe; logging/setLevel sets the floor for this process.
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
_state: dict[str, Any] = {"log_level": "debug"}
_bus = InMemorySubscriptionBus()


async def _log(ctx: ServerRequestContext[Any], level: types.LoggingLevel, data: Any) -> None:
    if LEVELS.index(level) < LEVELS.index(_state["log_level"]):
        return
    await ctx.session.send_log_message(level, data, logger="everything", related_request_id=ctx.request_id)


ToolReply = types.CallToolResult | types.InputRequiredResult


async def _ask(
    ctx: ServerRequestContext[Any],
    params: types.CallToolRequestParams,
    request: types.CreateMessageRequest | types.ElicitRequest,
    capability: types.ClientCapabilities,
) -> types.InputResponse | types.InputRequiredResult | None:
    """Ask the client for input in the connection's era; None if it lacks the capability.

    Handshake era: a server-to-client request on the call's stream. 2026-07-28: an
    `InputRequiredResult` first, then the answer arrives on the retried call.
    """
    if not ctx.session.check_client_capability(capability):
        return None
    key = request.method
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        answered = (params.input_responses or {}).get(key)
        if answered is None:
            return types.InputRequiredResult(input_requests={key: request})
        return answered
    if isinstance(request, types.CreateMessageRequest):
        result_type: type[types.InputResponse] = types.CreateMessageResult
    else:
        result_type = types.ElicitResult
    return await ctx.session.send_request(
        request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
    )


async def _sample(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> ToolReply:
    prompt = str((params.arguments or {}).get("prompt", ""))
    request = types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=_text(prompt))], max_tokens=100
        )
    )
    reply = await _ask(ctx, params, request, types.ClientCapabilities(sampling=types.SamplingCapability()))
    if reply is None:
        return _error("The client does not support sampling")
    if isinstance(reply, types.InputRequiredResult):
        return reply
    if not isinstance(reply, types.CreateMessageResult):
        return _error(f"Unexpected answer to sampling/createMessage: {type(reply).__name__}")
    content = reply.content
    text = content.text if isinstance(content, types.TextContent) else json.dumps(content.model_dump(mode="json"))
    return _result(_text(f"LLM response: {text}"))


async def _elicit(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams, message: str, schema: dict[str, Any]
) -> ToolReply:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    reply = await _ask(ctx, params, request, types.ClientCapabilities(elicitation=types.ElicitationCapability()))
    if reply is None:
        return _error("The client does not support elicitation")
    if isinstance(reply, types.InputRequiredResult):
        return reply
    if not isinstance(reply, types.ElicitResult):
        return _error(f"Unexpected answer to elicitation/create: {type(reply).__name__}")
    return _result(_text(f"Elicitation completed: action={reply.action}, content={json.dumps(reply.content)}"))


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> ToolReply:
    name, args = params.name, params.arguments or {}
    if name in mrtr.TOOL_FLOWS:
        return await mrtr.call_tool(ctx, params)
    if name in diagnostics.NAMES:
        return await diagnostics.call_tool(ctx, params, _bus, _log)
    if name == "test_simple_text":
        return _result(_text("This is a simple text response for testing."))
    if name == "test_image_content":
        return _result(types.ImageContent(type="image", data=content.PNG_B64, mime_type="image/png"))
    if name == "test_audio_content":
        return _result(types.AudioContent(type="audio", data=content.WAV_B64, mime_type="audio/wav"))
    if name == "test_embedded_resource":
        resource = types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return _result(types.EmbeddedResource(type="resource", resource=resource))
    if name == "test_multiple_content_types":
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return _result(
            _text("Multiple content types test:"),
            types.ImageContent(type="image", data=content.PNG_B64, mime_type="image/png"),
            types.EmbeddedResource(type="resource", resource=resource),
        )
    if name == "test_tool_with_logging":
        await _log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool execution completed")
        return _result(_text("Tool with logging executed successfully"))
    if name == "test_error_handling":
        return _error("This tool intentionally returns an error for testing")
    if name == "test_tool_with_progress":
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(0.05)
            await ctx.session.report_progress(progress, 100)
        return _result(_text("Tool with progress executed successfully"))
    if name == "test_sampling":
        return await _sample(ctx, params)
    if name == "test_elicitation":
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return await _elicit(ctx, params, str(args.get("message", "Please provide your information")), schema)
    if name == "test_elicitation_sep1034_defaults":
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": True},
            },
        }
        return await _elicit(ctx, params, "Please review and update the form fields with defaults", schema)
    if name == "test_elicitation_sep1330_enums":
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
        }
        return await _elicit(ctx, params, "Please pick from the enum fields", schema)
    if name == "test_reconnection":
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()  # the result then arrives on the resumed GET stream
        await anyio.sleep(0.1)
        return _result(_text("Reconnection test completed"))
    if name == "test_trigger_resource_update":
        # 2026-07-28 listeners get it through subscriptions/listen; a handshake-era session
        # that called resources/subscribe gets notifications/resources/updated.
        await _bus.publish(ResourceUpdated(uri=content.WATCHED))
        legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if legacy and content.WATCHED in content.SUBSCRIPTIONS:
            await ctx.session.send_resource_updated(content.WATCHED)
        return _result(_text(f"Published an update for {content.WATCHED}"))
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    extra = [tool for extension in EXTENSIONS for tool in getattr(extension, "listed_tools", ())]
    return types.ListToolsResult(tools=[*TOOLS, *diagnostics.tools(), *mrtr.TOOLS, *extra])


async def list_prompts(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[*content.PROMPTS, *diagnostics.prompts(), mrtr.PROMPT])


async def get_prompt(
    ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    if params.name == mrtr.PROMPT_NAME:
        return await mrtr.get_prompt(ctx, params)
    return diagnostics.get_prompt(params.name) or await content.get_prompt(ctx, params)


async def set_level(ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
    _state["log_level"] = params.level
    return types.EmptyResult()


server = FixtureServer(
    "toolcrib-everything",
    version="1.0.0",
    instructions="Conformance fixture for toolcrib: implements the conformance suite's server scenarios.",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=content.list_resources,
    on_list_resource_templates=content.list_resource_templates,
    on_read_resource=content.read_resource,
    on_subscribe_resource=content.subscribe,
    on_unsubscribe_resource=content.unsubscribe,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_completion=content.complete,
    on_set_logging_level=set_level,
    on_subscriptions_listen=ListenHandler(_bus),
)
mrtr.install_request_state_security(server)

# ---- server extensions (SEP-2133): THE one place to register them ----------------------------
#
# Append an `mcp.server.extension.Extension` instance to EXTENSIONS, e.g.
#     from tests.servers.tasks_ext import TasksExtension
#     EXTENSIONS.append(TasksExtension())
# `install_extensions` then, as `MCPServer(extensions=...)` does on its tier: advertises
# `extension.settings()` under `capabilities.extensions[extension.identifier]`, registers each
# `extension.methods()` binding (e.g. `tasks/get`) as a request handler, and wraps `tools/call`
# in every `intercept_tool_call` (first extension outermost). The low-level server cannot take
# `ToolBinding`s (they need MCPServer's function introspection): an extension that adds tools
# lists them as `listed_tools: Sequence[types.Tool]` and answers their calls in
# `intercept_tool_call` without calling `call_next`.

EXTENSIONS: list[Extension] = [TasksExtension()]  # tasks (SEP-2663): tests/servers/tasks_ext.py


def _version_gated(binding: MethodBinding) -> Any:
    """`binding.handler`, answering -32601 at protocol versions outside `binding.protocol_versions`."""
    versions = binding.protocol_versions
    if versions is None:
        return binding.handler

    async def gated(ctx: ServerRequestContext[Any], params: Any) -> Any:
        if ctx.protocol_version not in versions:
            raise MCPError(METHOD_NOT_FOUND, f"Method not found: {binding.method}")
        return await binding.handler(ctx, params)

    return gated


def install_extensions(extensions: Sequence[Extension]) -> None:
    for extension in extensions:
        for binding in extension.methods():
            if server.get_request_handler(binding.method) is not None:
                raise ValueError(f"extension {extension.identifier!r} rebinds {binding.method!r}")
            server.add_request_handler(binding.method, binding.params_type, _version_gated(binding))
        server.extensions[extension.identifier] = extension.settings()
    if any(type(e).intercept_tool_call is not Extension.intercept_tool_call for e in extensions):
        server.add_request_handler(
            "tools/call", types.CallToolRequestParams, compose_tool_call_handler(extensions, call_tool)
        )


install_extensions(EXTENSIONS)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
