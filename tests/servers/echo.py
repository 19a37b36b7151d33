"""General fixture for the gateway's tests.

    python -m tests.servers.echo              # stdio
    python -m tests.servers.echo --http 0     # Streamable HTTP, prints LISTENING <url>

Tools:
  echo(text)             -> text
  add(a: int, b: int)    -> the sum, as text (and structuredContent {"result": sum})
  sleep(seconds, tag="") -> "slept N" after sleeping; for hang and deadline tests. With
                            FIXTURE_MARKER_DIR set it writes the files `sleep-<tag>.started`
                            on entry and `sleep-<tag>.cancelled` when the call is cancelled
                            (`sleep-<tag>.done` when it finished); tag defaults to `<pid>-<n>`.
  crash()                -> os._exit(1) in the middle of the call: a real crash
  big(n_bytes: int)      -> one text content of exactly n_bytes ASCII bytes
  env(name)              -> the value of an environment variable, or `<unset>`: the
                            stand-in for a malicious server probing for credentials
  headers()              -> JSON of the HTTP request headers this server received ({} on stdio)
  add_tool(name)         -> registers tool `name` (echoes its `text` argument) and announces
                            it: `notifications/tools/list_changed` on handshake-era sessions,
                            the subscription bus (`subscriptions/listen`) on 2026-07-28
Resource `echo://info` (JSON: server name, pid), template `echo://items/{id}`, prompt
`greet(name)`. `echo://env/NAME` reads an environment variable and `echo://fail/NAME` fails with an
error message holding it (leak probes for redaction on resources and errors).

FIXTURE_ECHO_DESCRIPTION replaces echo's description (a "rug pull" for the pinning tests).
FIXTURE_TOOLS_PREFIX=p_ prefixes every tool name (p_echo, p_add, ...), so two instances
behind one gateway can have distinct names.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers._common import FixtureServer, main

PREFIX = os.environ.get("FIXTURE_TOOLS_PREFIX", "")
_sleep_counter = itertools.count(1)
_bus = InMemorySubscriptionBus()


def _schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


BUILTIN: dict[str, types.Tool] = {
    tool.name: tool
    for tool in [
        types.Tool(
            name="echo",
            description=os.environ.get("FIXTURE_ECHO_DESCRIPTION", "Echo the given text back"),
            input_schema=_schema({"text": {"type": "string"}}, ["text"]),
        ),
        types.Tool(
            name="add",
            description="Add two integers",
            input_schema=_schema({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]),
        ),
        types.Tool(
            name="sleep",
            description="Sleep for the given number of seconds; records cancellation in FIXTURE_MARKER_DIR",
            input_schema=_schema({"seconds": {"type": "number"}, "tag": {"type": "string"}}, ["seconds"]),
        ),
        types.Tool(name="crash", description="Kill the server process mid-call", input_schema=_schema({})),
        types.Tool(
            name="big",
            description="Return a text of exactly n_bytes bytes",
            input_schema=_schema({"n_bytes": {"type": "integer", "minimum": 0}}, ["n_bytes"]),
        ),
        types.Tool(
            name="env",
            description="Return the value of an environment variable",
            input_schema=_schema({"name": {"type": "string"}}, ["name"]),
        ),
        types.Tool(
            name="headers",
            description="Return the HTTP request headers this server received (over Streamable HTTP)",
            input_schema=_schema({}),
        ),
        types.Tool(
            name="add_tool",
            description="Register a new echo-like tool at runtime and announce the list change",
            input_schema=_schema({"name": {"type": "string"}}, ["name"]),
        ),
    ]
}
_dynamic: dict[str, types.Tool] = {}


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _marker(tag: str, state: str) -> None:
    directory = os.environ.get("FIXTURE_MARKER_DIR")
    if directory:
        Path(directory, f"sleep-{tag}.{state}").write_text(str(os.getpid()))


async def _sleep(args: dict[str, Any]) -> types.CallToolResult:
    seconds = float(args["seconds"])
    tag = str(args.get("tag") or f"{os.getpid()}-{next(_sleep_counter)}")
    _marker(tag, "started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            _marker(tag, "cancelled")
        raise
    _marker(tag, "done")
    return types.CallToolResult(content=[_text(f"slept {seconds:g}")])


async def _add_tool(ctx: ServerRequestContext[Any], name: str) -> types.CallToolResult:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in BUILTIN:
        return types.CallToolResult(content=[_text(f"invalid or reserved tool name: {name!r}")], is_error=True)
    _dynamic[name] = types.Tool(
        name=name,
        description=f"Runtime tool {name}: echoes its text argument",
        input_schema=_schema({"text": {"type": "string"}}),
    )
    await _bus.publish(ToolsListChanged())
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        await ctx.session.send_tool_list_changed()
    return types.CallToolResult(content=[_text(f"added {PREFIX}{name}")])


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    name = params.name.removeprefix(PREFIX) if params.name.startswith(PREFIX) else None
    if name in _dynamic:
        return types.CallToolResult(content=[_text(f"{name}: {args.get('text', '')}")])
    if name == "echo":
        return types.CallToolResult(content=[_text(str(args["text"]))])
    if name == "add":
        total = int(args["a"]) + int(args["b"])
        return types.CallToolResult(content=[_text(str(total))], structured_content={"result": total})
    if name == "sleep":
        return await _sleep(args)
    if name == "crash":
        os._exit(1)
    if name == "big":
        return types.CallToolResult(content=[_text("x" * int(args["n_bytes"]))])
    if name == "env":
        value = os.environ.get(str(args["name"]))
        return types.CallToolResult(content=[_text("<unset>" if value is None else value)])
    if name == "headers":
        seen = getattr(ctx.request, "headers", None) or {}
        return types.CallToolResult(content=[_text(json.dumps({k.lower(): v for k, v in dict(seen).items()}))])
    if name == "add_tool":
        return await _add_tool(ctx, str(args["name"]))
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    tools = [*BUILTIN.values(), *_dynamic.values()]
    return types.ListToolsResult(tools=[t.model_copy(update={"name": PREFIX + t.name}) for t in tools])


INFO_URI = "echo://info"
ITEM_TEMPLATE = "echo://items/{id}"
_ITEM_RE = re.compile(r"^echo://items/(?P<id>[^/]+)$")


async def list_resources(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    info = types.Resource(uri=INFO_URI, name="info", description="About this server", mime_type="application/json")
    return types.ListResourcesResult(resources=[info])


async def list_resource_templates(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template=ITEM_TEMPLATE, name="item", description="One item by id", mime_type="text/plain"
    )
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(
    ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri == INFO_URI:
        text = json.dumps({"name": server.name, "pid": os.getpid(), "prefix": PREFIX})
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )
    if uri.startswith("echo://env/"):
        value = os.environ.get(uri.removeprefix("echo://env/"), "<unset>")
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=value)])
    if uri.startswith("echo://fail/"):
        raise MCPError(-32603, f"failed with {os.environ.get(uri.removeprefix('echo://fail/'), '<unset>')}")
    if match := _ITEM_RE.match(uri):
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"item {match['id']}")]
        )
    raise MCPError(-32002, f"Resource not found: {uri}", {"uri": uri})


GREET = types.Prompt(
    name="greet",
    description="Greet someone by name",
    arguments=[types.PromptArgument(name="name", description="Who to greet", required=True)],
)


async def list_prompts(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[GREET])


async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
    if params.name != GREET.name:
        raise MCPError(INVALID_PARAMS, f"Unknown prompt: {params.name}")
    who = (params.arguments or {}).get("name")
    if not who:
        raise MCPError(INVALID_PARAMS, "Missing required argument: name")
    message = types.PromptMessage(role="user", content=_text(f"Hello, {who}!"))
    return types.GetPromptResult(description="A greeting", messages=[message])


server = FixtureServer(
    "toolcrib-echo",
    version="1.0.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_list_resource_templates=list_resource_templates,
    on_read_resource=read_resource,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_subscriptions_listen=ListenHandler(_bus),
)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
