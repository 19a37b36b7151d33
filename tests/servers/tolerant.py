"""A raw (non-SDK) server that sends every form the spec tells a client to tolerate.

    python -m tests.servers.tolerant [--legacy]              # stdio
    python -m tests.servers.tolerant [--legacy] --http 0     # Streamable HTTP, prints LISTENING <url>

Default era is 2026-07-28 (``server/discover`` answered, stateless requests); ``--legacy`` speaks
the handshake era only (``server/discover`` -32601, then ``initialize`` at 2025-11-25).

What it sends, each a form a client MUST (or is expected to) accept:

- **absent ``resultType``** on every 2026-07-28 result, including ``server/discover`` (2026-07-28
  basic/index "Result Type": a client MUST treat an absent ``resultType`` as ``"complete"``), and no
  caching hints (``ttlMs``, ``cacheScope``) on listings;
- **absent optional fields**: a tool without description or annotations, a call result without
  ``isError`` or ``structuredContent``, a completion without ``total``/``hasMore``;
- **unknown fields** at the top of results, in list items, in content blocks and prompt arguments;
- **unknown ``_meta`` keys** in results and list items;
- **unknown capabilities** (``futureCapability``, unknown flags inside ``tools``);
- **unknown content block types** (``{"type": "hologram"}``) in a tool result and a prompt message.

Tools: ``hi`` (``{"content": [{"type": "text", "text": "hi"}]}`` and nothing else), ``odd_blocks``
(text, an unknown block, text with an unknown field, plus unknown ``_meta`` and top-level fields),
``headers(region, label)`` (answers with the ``Mcp-*`` request headers it received as JSON text;
``region`` and ``label`` are tagged ``x-mcp-header``, SEP-2243; over stdio it answers ``{}``).
Resource ``tol://one``, template ``tol://item/{id}``, prompt ``greet(name)``, completion of
``greet``'s ``name`` (``["alpha", "beta"]``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from tests.servers import _raw
from tests.servers._common import serve_aiohttp

NAME = "toolcrib-tolerant"
CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": False, "futureToolFlag": True},
    "resources": {},
    "prompts": {},
    "completions": {},
    "futureCapability": {"enabled": True},
}
FUTURE_META = {"example.com/trace": "t-1", "example.com/nested": {"a": [1, 2]}}
HEADER_SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "label": {"type": "string", "x-mcp-header": "Label"},
        "plain": {"type": "string"},
    },
}
TOOLS: list[dict[str, Any]] = [
    {
        "name": "hi",
        "inputSchema": {"type": "object"},
        "futureField": {"x": 1},
        "_meta": FUTURE_META,
    },
    {
        "name": "odd_blocks",
        "description": "text, an unknown block type, text with an unknown field",
        "inputSchema": {"type": "object", "properties": {}},
        "annotations": {"readOnlyHint": True, "futureHint": "soon"},
    },
    {"name": "headers", "description": "the Mcp-* headers of this request", "inputSchema": HEADER_SCHEMA},
]
RESULTS: dict[str, dict[str, Any]] = {
    "tools/list": {"tools": TOOLS, "futureListField": 1, "_meta": FUTURE_META},
    "resources/list": {"resources": [{"uri": "tol://one", "name": "one", "futureField": 1, "_meta": FUTURE_META}]},
    "resources/templates/list": {
        "resourceTemplates": [{"uriTemplate": "tol://item/{id}", "name": "item", "futureField": True}]
    },
    "resources/read": {
        "contents": [{"uri": "tol://one", "text": "one", "futureField": 2}],
        "_meta": FUTURE_META,
        "futureTopLevel": "x",
    },
    "prompts/list": {
        "prompts": [{"name": "greet", "futureField": 1, "arguments": [{"name": "name", "futureArg": True}]}]
    },
    "completion/complete": {"completion": {"values": ["alpha", "beta"], "futureField": 1}},
    "ping": {},
}


def tool_result(name: str, arguments: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    if name == "hi":
        return {"content": [{"type": "text", "text": "hi"}]}
    if name == "odd_blocks":
        return {
            "content": [
                {"type": "text", "text": "before"},
                {"type": "hologram", "frames": 3, "data": "AAEC"},
                {"type": "text", "text": "after", "futureField": {"k": 1}},
            ],
            "_meta": FUTURE_META,
            "futureTopLevel": [1, 2],
        }
    if name == "headers":
        seen = {k.lower(): v for k, v in headers.items() if k.lower().startswith("mcp-")}
        return {"content": [{"type": "text", "text": json.dumps(seen, sort_keys=True)}]}
    raise KeyError(name)


def respond(message: Any, modern: bool, headers: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The JSON-RPC answer to one request (None for a notification or a response)."""
    if not isinstance(message, dict) or "id" not in message or not isinstance(message.get("method"), str):
        return None
    msg_id, method = message["id"], message["method"]
    params = message.get("params") or {}

    def ok(result: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": msg_id, "result": result}

    def err(code: int, text: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text}}

    if method == "initialize":
        return ok(_raw.initialize_result(params, NAME, CAPABILITIES))
    if method == "server/discover":
        if not modern:
            return err(-32601, "Method not found: server/discover")
        discover = _raw.discover_result(NAME, CAPABILITIES)
        for key in ("resultType", "ttlMs", "cacheScope"):  # all tolerated when absent
            discover.pop(key)
        return ok(discover)
    if method in RESULTS:
        return ok(RESULTS[method])
    if method == "tools/call":
        try:
            return ok(tool_result(str(params.get("name")), params.get("arguments") or {}, headers or {}))
        except KeyError:
            return err(-32602, f"Unknown tool: {params.get('name')}")
    if method == "prompts/get":
        name = str((params.get("arguments") or {}).get("name", "you"))
        messages = [
            {"role": "user", "content": {"type": "text", "text": f"hello {name}", "futureField": 1}},
            {"role": "user", "content": {"type": "hologram", "frames": 1}},
        ]
        return ok({"messages": messages, "_meta": FUTURE_META})
    return err(-32601, f"Method not found: {method}")


def run_stdio(modern: bool) -> None:
    for _line, message in _raw.messages():
        answer = respond(message, modern)
        if answer is not None:
            _raw.write(answer)


async def _post(request: web.Request) -> web.Response:
    try:
        message = json.loads(await request.read())
    except ValueError:
        return web.json_response({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    answer = respond(message, request.app[MODERN_KEY], request.headers)
    if answer is None:
        return web.Response(status=202)
    return web.json_response(answer)


async def _get(request: web.Request) -> web.Response:
    return web.Response(status=405, headers={"Allow": "POST"})


MODERN_KEY = web.AppKey("modern", bool)


async def serve_http(port: int, modern: bool) -> None:
    app = web.Application()
    app[MODERN_KEY] = modern
    app.router.add_post("/mcp", _post)
    app.router.add_get("/mcp", _get)
    await serve_aiohttp(app, port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="raw MCP server sending the forms a client must tolerate")
    parser.add_argument("--http", type=int, metavar="PORT", default=None, help="serve HTTP on 127.0.0.1:PORT/mcp")
    parser.add_argument("--legacy", action="store_true", help="handshake era only (2025-11-25)")
    args = parser.parse_args(argv)
    if args.http is None:
        run_stdio(not args.legacy)
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_http(args.http, not args.legacy))


if __name__ == "__main__":
    main()
