"""Content of the conformance fixture: the binary payloads, resources, resource template,
static prompts and completions that the `@modelcontextprotocol/conformance` server scenarios
read by exact URI or name (`resources-*`, `prompts-*`, `completion-complete`,
`sep-2164-resource-not-found`).

An unknown resource URI is an error carrying `data.uri`: -32602 on 2026-07-28 (SEP-2164), the
-32002 of the 2025-11-25 spec on a handshake session.
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

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

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

# ---- resources -----------------------------------------------------------------------------

WATCHED = "test://watched-resource"
RESOURCE_NOT_FOUND_2025 = -32002  # the 2025-11-25 spec's code for an unknown resource URI
SUBSCRIPTIONS: set[str] = set()  # handshake-era resources/subscribe (one process, one subscriber set)
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
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        code = INVALID_PARAMS if modern else RESOURCE_NOT_FOUND_2025  # SEP-2164 standardizes on -32602
        raise MCPError(code, f"Resource not found: {uri}", {"uri": uri})
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIPTIONS.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIPTIONS.discard(str(params.uri))
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


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


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
