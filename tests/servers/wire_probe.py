"""Probe fixture for toolcrib's own ``tools/call`` framing (toolcrib/router/wire.py).

    python -m tests.servers.wire_probe                          # stdio, 2025-11-25
    python -m tests.servers.wire_probe --http 0                 # Streamable HTTP (SSE answers), 2025-11-25
    python -m tests.servers.wire_probe --http 0 --json-response # Streamable HTTP, JSON answers
    python -m tests.servers.wire_probe --modern ...             # also serve 2026-07-28 (the SDK path, for comparison)

Handshake era by default: ``server/discover`` is refused with -32601 (as a pre-2026 server does), so
an auto-mode client such as toolcrib falls back to ``initialize`` and 2025-11-25, the era whose
``tools/call`` toolcrib frames itself. ``--modern`` leaves discovery on, for a 2026-07-28 comparison.

Every ``notifications/cancelled`` the server receives is recorded (its ``requestId``) before the
SDK sees it: on stdio by a filter on the read stream, on HTTP by an ASGI wrapper reading each POST.

Tools (each result's text is JSON, with ``request_id``: the JSON-RPC id the request carried):
  echo_args(**anything)        -> {"arguments", "types" (Python type name of each argument),
                                   "request_id"}; structuredContent {"arguments": ...}
  emit_int(digits)             -> the integer written as ``digits`` in structuredContent {"value": int}
                                   and in the text (so only the answer's parsing is tested)
  progress(steps=3)            -> sends notifications/progress i of ``steps`` ("step i") for the
                                   request's progressToken, i = 1..steps, then {"token", "request_id"}
  fail(code, message)          -> raises MCPError(code, message, data={"probe": true}): a JSON-RPC error answer
  sleep(seconds, tag)          -> sleeps; records tag -> request id on entry and the tag when cancelled
  seen()                       -> {"sleeps": {tag: request_id}, "cancel_notes": [requestId, ...],
                                   "handler_cancelled": [tag, ...], "pid"}
  shaped(mode)                 -> outputSchema {"count": integer} (required); mode "ok" returns
                                   {"count": 3}, "mismatch" {"count": "three"}, "missing" no
                                   structuredContent at all
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from starlette.types import ASGIApp, Send

from tests.servers._common import (
    FixtureServer,
    InMemoryEventStore,
    _serve_asgi,
    posted_body_asgi,
    refuse_discover_asgi,
    serve_stdio,
)

_sleeps: dict[str, Any] = {}
_cancel_notes: list[Any] = []
_handler_cancelled: list[str] = []

SHAPED_OUTPUT = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}

TOOLS = [
    types.Tool(
        name="echo_args",
        description="Echo the arguments back exactly, with the Python type of each",
        input_schema={"type": "object"},
    ),
    types.Tool(
        name="emit_int",
        description="Answer with the integer written as digits, in structured content and text",
        input_schema={"type": "object", "properties": {"digits": {"type": "string"}}, "required": ["digits"]},
    ),
    types.Tool(
        name="progress",
        description="Report progress 1..steps of steps, then answer",
        input_schema={"type": "object", "properties": {"steps": {"type": "integer", "minimum": 1}}},
    ),
    types.Tool(
        name="fail",
        description="Answer with a JSON-RPC error of the given code and message",
        input_schema={
            "type": "object",
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        },
    ),
    types.Tool(
        name="sleep",
        description="Sleep; records the request id and whether the call was cancelled",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number"}, "tag": {"type": "string"}},
            "required": ["seconds", "tag"],
        },
    ),
    types.Tool(
        name="seen",
        description="What this server recorded: sleep request ids, notifications/cancelled, cancelled handlers",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="shaped",
        description="Structured content that fits its output schema, or not",
        input_schema={
            "type": "object",
            "properties": {"mode": {"enum": ["ok", "mismatch", "missing"]}},
            "required": ["mode"],
        },
        output_schema=SHAPED_OUTPUT,
    ),
]


def _json(payload: dict[str, Any], structured: dict[str, Any] | None = None) -> types.CallToolResult:
    text = types.TextContent(type="text", text=json.dumps(payload, ensure_ascii=False, sort_keys=True))
    return types.CallToolResult(content=[text], structured_content=structured)


def _note_cancel(message: Any) -> None:
    """Record the requestId of a ``notifications/cancelled`` (wire dict or SDK model)."""
    method: Any
    params: Any
    if isinstance(message, types.JSONRPCNotification):
        method, params = message.method, message.params
    elif isinstance(message, dict):
        method, params = message.get("method"), message.get("params")
    else:
        return
    if method == "notifications/cancelled" and isinstance(params, dict):
        _cancel_notes.append(params.get("requestId"))


async def _sleep(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> types.CallToolResult:
    tag = str(args["tag"])
    _sleeps[tag] = ctx.request_id
    try:
        await anyio.sleep(float(args["seconds"]))
    except anyio.get_cancelled_exc_class():
        _handler_cancelled.append(tag)
        raise
    return _json({"slept": tag, "request_id": ctx.request_id})


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    rid = ctx.request_id
    if params.name == "echo_args":
        kinds = {key: type(value).__name__ for key, value in args.items()}
        return _json({"arguments": args, "types": kinds, "request_id": rid}, {"arguments": args})
    if params.name == "emit_int":
        value = int(str(args["digits"]))
        return _json({"value": value, "request_id": rid}, {"value": value})
    if params.name == "progress":
        steps = int(args.get("steps") or 3)
        meta: dict[str, Any] = dict(ctx.meta or {})  # the SDK's parsed _meta (snake_case keys)
        token = meta.get("progress_token", meta.get("progressToken"))
        for i in range(1, steps + 1):
            await ctx.session.report_progress(i, steps, f"step {i}")
            await anyio.sleep(0.02)
        return _json({"token": token, "request_id": rid})
    if params.name == "fail":
        raise MCPError(int(args["code"]), str(args["message"]), {"probe": True})
    if params.name == "sleep":
        return await _sleep(ctx, args)
    if params.name == "seen":
        return _json(
            {
                "sleeps": _sleeps,
                "cancel_notes": _cancel_notes,
                "handler_cancelled": _handler_cancelled,
                "pid": os.getpid(),
                "request_id": rid,
            }
        )
    if params.name == "shaped":
        mode = args.get("mode")
        structured = {"count": 3} if mode == "ok" else {"count": "three"} if mode == "mismatch" else None
        return _json({"mode": mode, "request_id": rid}, structured)
    raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


server = FixtureServer("toolcrib-wire-probe", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def tap_asgi(app: ASGIApp) -> ASGIApp:
    """ASGI wrapper recording every POSTed ``notifications/cancelled`` (the body is replayed to ``app``)."""

    async def note(body: bytes, send: Send) -> bool:
        with contextlib.suppress(ValueError):
            _note_cancel(json.loads(body))
        return False

    return posted_body_asgi(app, note)


async def serve_http(port: int, *, json_response: bool, modern: bool) -> None:
    app = server.streamable_http_app(
        json_response=json_response, event_store=InMemoryEventStore(), retry_interval=1000, host="127.0.0.1"
    )
    asgi: ASGIApp = app if modern else refuse_discover_asgi(app)
    await _serve_asgi(tap_asgi(asgi), port, "/mcp", lifespan="on")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCP fixture server 'toolcrib-wire-probe' (2025-11-25)")
    parser.add_argument("--http", type=int, metavar="PORT", default=None, help="Streamable HTTP on 127.0.0.1:PORT/mcp")
    parser.add_argument("--json-response", action="store_true", help="HTTP: answer POSTs with application/json")
    parser.add_argument("--modern", action="store_true", help="also serve 2026-07-28 (do not refuse server/discover)")
    args = parser.parse_args(argv)
    try:
        if args.http is None:
            anyio.run(lambda: serve_stdio(server, legacy=not args.modern, watch=_note_cancel))
        else:
            anyio.run(lambda: serve_http(args.http, json_response=args.json_response, modern=args.modern))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
