"""A minimal, fast Streamable HTTP MCP server on aiohttp (no SDK on the serving path), so a
latency benchmark measures the gateway and not the fixture.

    python -m tests.servers.fast_http --http 0     # prints LISTENING http://127.0.0.1:PORT/mcp

One tool, `echo(text)`. Every answer is plain `application/json` (never SSE). Both eras:

- 2026-07-28: `server/discover` answers a DiscoverResult; later requests are stateless
  (the version rides in `params._meta`), no session id.
- 2025-11-25 (and 2025-06-18, 2025-03-26): `initialize` answers with the client's version
  when known and issues an `Mcp-Session-Id`; requests carrying an unknown session id get
  404; `notifications/initialized` gets 202; GET (no standalone stream) gets 405;
  DELETE ends the session.

Errors: malformed JSON -32700 (HTTP 400), not a JSON-RPC request -32600 (400), unknown
method -32601, unknown tool / bad arguments -32602.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from tests.servers._common import serve_aiohttp

MODERN = "2026-07-28"
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SERVER_INFO = {"name": "toolcrib-fast-http", "version": "1.0.0"}
CAPABILITIES = {"tools": {"listChanged": False}}
ECHO_TOOL = {
    "name": "echo",
    "description": "Echo the given text back",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
# 2026-07-28 cacheable results must carry ttlMs and cacheScope.
CACHEABLE = frozenset({"server/discover", "tools/list"})
SESSIONS = web.AppKey("sessions", set[str])


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reply(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(msg_id: Any, code: int, message: str, status: int = 200) -> web.Response:
    return _reply({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}, status)


def _is_modern(params: dict[str, Any]) -> bool:
    meta = params.get("_meta")
    return isinstance(meta, dict) and meta.get("io.modelcontextprotocol/protocolVersion") == MODERN


def _result(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "ping":
        return {}
    if method == "server/discover":
        return {"supportedVersions": [MODERN], "capabilities": CAPABILITIES, "resultType": "complete"}
    if method == "tools/list":
        return {"tools": [ECHO_TOOL]}
    if method == "tools/call":
        if params.get("name") != "echo":
            raise RpcError(-32602, f"Unknown tool: {params.get('name')}")
        text = (params.get("arguments") or {}).get("text")
        if not isinstance(text, str):
            raise RpcError(-32602, "echo needs a string argument 'text'")
        return {"content": [{"type": "text", "text": text}], "isError": False}
    raise RpcError(-32601, f"Method not found: {method}")


async def post(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    try:
        message = json.loads(await request.read())
    except ValueError:
        return _error(None, -32700, "Parse error", 400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        if isinstance(message, dict) and ("result" in message or "error" in message):
            return web.Response(status=202)  # a response to a request we never send
        return _error(None, -32600, "Invalid Request", 400)
    method: str = message["method"]
    params = message.get("params") or {}
    if "id" not in message:
        return web.Response(status=202)  # notifications (initialized, cancelled, ...)
    msg_id = message["id"]
    if not isinstance(params, dict):
        return _error(msg_id, -32602, "params must be an object")

    if method == "initialize":
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        new_session = secrets.token_hex(16)
        sessions.add(new_session)
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}
        return _reply({"jsonrpc": "2.0", "id": msg_id, "result": result}, headers={"Mcp-Session-Id": new_session})

    session_id = request.headers.get("Mcp-Session-Id")
    modern = method == "server/discover" or _is_modern(params)
    if session_id is not None and session_id not in sessions:
        return _error(msg_id, -32001, "Session not found", 404)
    if session_id is None and not modern and method != "ping":
        return _error(msg_id, -32600, "Bad Request: missing Mcp-Session-Id (send initialize first)", 400)
    try:
        result = _result(method, params)
    except RpcError as exc:
        return _error(msg_id, exc.code, exc.message)
    if modern:
        result = {**result, "resultType": "complete", "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO}}
        if method in CACHEABLE:
            result.update(ttlMs=0, cacheScope="private")
    return _reply({"jsonrpc": "2.0", "id": msg_id, "result": result})


async def get(request: web.Request) -> web.Response:
    return web.Response(status=405, headers={"Allow": "POST, DELETE"})


async def delete(request: web.Request) -> web.Response:
    session_id = request.headers.get("Mcp-Session-Id")
    if session_id is None:
        return web.Response(status=405, headers={"Allow": "POST"})
    if session_id not in request.app[SESSIONS]:
        return web.Response(status=404)
    request.app[SESSIONS].discard(session_id)
    return web.Response(status=200)


def make_app() -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SESSIONS] = set()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", get)
    app.router.add_delete("/mcp", delete)
    return app


async def _serve(port: int) -> None:
    await serve_aiohttp(make_app(), port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fast aiohttp MCP server with one echo tool")
    parser.add_argument("--http", type=int, metavar="PORT", default=0, help="port on 127.0.0.1 (0 = free port)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.http))


if __name__ == "__main__":
    main()
