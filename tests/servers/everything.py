"""Conformance fixture: every tool, resource, template and prompt that the server scenarios
of `@modelcontextprotocol/conformance` (0.1.16) call by exact name.

    python -m tests.servers.everything                # stdio
    python -m tests.servers.everything --http 0       # Streamable HTTP, prints LISTENING <url>
    python -m tests.servers.everything --legacy ...   # handshake era only (refuses server/discover)

Written on the SDK's low-level `Server`, which serves both eras on one endpoint. Handshake
era (2025-11-25): sampling and elicitation are server-to-client requests sent mid-call,
logs and progress ride the call's stream, `resources/subscribe` is honoured. 2026-07-28:
sampling and elicitation are asked for with an `InputRequiredResult` and answered on the
retried call, logs are sent only when the request opts in via `_meta`, and
`subscriptions/listen` carries resource updates. Tools that need a client capability the
client did not declare answer `isError`.

Extra tool beyond the suite: `test_trigger_resource_update` announces an update of
`test://watched-resource` to its subscribers.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import wave
import zlib
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers._common import FixtureServer, main

# ---- binary payloads, generated so they are real files -------------------------------------


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    idat = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _wav_silence(ms: int = 10, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(b"\x80" * (rate * ms // 1000))
    return buf.getvalue()


PNG_B64 = base64.b64encode(_png_1x1_red()).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()

# ---- tools ---------------------------------------------------------------------------------

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}

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
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema=JSON_SCHEMA_2020_12,
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
_state: dict[str, Any] = {"log_level": "debug", "subscriptions": set()}
_bus = InMemorySubscriptionBus()


async def _log(ctx: ServerRequestContext[Any], level: types.LoggingLevel, data: Any) -> None:
    if LEVELS.index(level) < LEVELS.index(_state["log_level"]):
        return
    await ctx.session.send_log_message(level, data, logger="everything", related_request_id=ctx.request_id)


def _has(ctx: ServerRequestContext[Any], capability: types.ClientCapabilities) -> bool:
    return ctx.session.check_client_capability(capability)


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
    if name == "test_simple_text":
        return _result(_text("This is a simple text response for testing."))
    if name == "test_image_content":
        return _result(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"))
    if name == "test_audio_content":
        return _result(types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav"))
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
            types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
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
    if name == "json_schema_2020_12_tool":
        return _result(_text(f"Received: {json.dumps(args, sort_keys=True)}"))
    if name == "test_reconnection":
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()  # the result then arrives on the resumed GET stream
        await anyio.sleep(0.1)
        return _result(_text("Reconnection test completed"))
    if name == "test_trigger_resource_update":
        # 2026-07-28 listeners get it through subscriptions/listen; a handshake-era session
        # that called resources/subscribe gets notifications/resources/updated.
        await _bus.publish(ResourceUpdated(uri=WATCHED))
        legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if legacy and WATCHED in _state["subscriptions"]:
            await ctx.session.send_resource_updated(WATCHED)
        return _result(_text(f"Published an update for {WATCHED}"))
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


# ---- resources -----------------------------------------------------------------------------

WATCHED = "test://watched-resource"
RESOURCE_NOT_FOUND = -32002  # the 2025-11-25 spec's code for an unknown resource URI
TEMPLATE = "test://template/{id}/data"
_TEMPLATE_RE = re.compile(r"^test://template/(?P<id>[^/]+)/data$")

RESOURCES: list[types.Resource] = [
    types.Resource(
        uri="test://static-text",
        name="static-text",
        description="A static text resource",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary",
        name="static-binary",
        description="A static binary resource (1x1 PNG)",
        mime_type="image/png",
    ),
    types.Resource(
        uri=WATCHED,
        name="watched-resource",
        description="A resource clients can subscribe to",
        mime_type="text/plain",
    ),
]


async def list_resources(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_resource_templates(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template=TEMPLATE,
        name="template-data",
        description="Data for an id, substituted into the URI",
        mime_type="application/json",
    )
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(
    ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        contents = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
        )
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_B64)
    elif uri == WATCHED:
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content.")
    elif match := _TEMPLATE_RE.match(uri):
        item = match["id"]
        text = json.dumps({"id": item, "templateTest": True, "data": f"Data for ID: {item}"})
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
    else:
        raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
    _state["subscriptions"].add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _state["subscriptions"].discard(str(params.uri))
    return types.EmptyResult()


# ---- prompts -------------------------------------------------------------------------------

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource",
        arguments=[types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with image content"),
]


async def list_prompts(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


def _user(content: Any) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    if params.name == "test_simple_prompt":
        messages = [_user(_text("This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        missing = [a for a in ("arg1", "arg2") if a not in args]
        if missing:
            raise MCPError(INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")
        messages = [_user(_text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
    elif params.name == "test_prompt_with_embedded_resource":
        uri = args.get("resourceUri")
        if not uri:
            raise MCPError(INVALID_PARAMS, "Missing required argument: resourceUri")
        resource = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        messages = [
            _user(types.EmbeddedResource(type="resource", resource=resource)),
            _user(_text("Please process the embedded resource above.")),
        ]
    elif params.name == "test_prompt_with_image":
        messages = [
            _user(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            _user(_text("Please analyze the image above.")),
        ]
    else:
        raise MCPError(INVALID_PARAMS, f"Unknown prompt: {params.name}")
    return types.GetPromptResult(messages=messages)


# ---- completion and logging ----------------------------------------------------------------

COMPLETIONS: dict[tuple[str, str], list[str]] = {
    ("test_prompt_with_arguments", "arg1"): ["paris", "park", "party", "test", "testing"],
    ("test_prompt_with_arguments", "arg2"): ["alpha", "beta", "gamma"],
    (TEMPLATE, "id"): ["1", "2", "3", "123"],
}


async def complete(ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> types.CompleteResult:
    ref = params.ref
    key = ref.name if isinstance(ref, types.PromptReference) else ref.uri
    candidates = COMPLETIONS.get((key, params.argument.name), [])
    values = [v for v in candidates if v.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_level(ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
    _state["log_level"] = params.level
    return types.EmptyResult()


server = FixtureServer(
    "toolcrib-everything",
    version="1.0.0",
    instructions="Conformance fixture for toolcrib: implements the conformance suite's server scenarios.",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_list_resource_templates=list_resource_templates,
    on_read_resource=read_resource,
    on_subscribe_resource=subscribe,
    on_unsubscribe_resource=unsubscribe,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_completion=complete,
    on_set_logging_level=set_level,
    on_subscriptions_listen=ListenHandler(_bus),
)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
