"""Upstream fixtures for the latency and load benchmarks: one trivial ``echo`` tool.

    python -m benchmarks.fixtures sdk            # mcp SDK low-level Server over stdio
    python -m benchmarks.fixtures sdk --http 0   # ... over the SDK's Streamable HTTP (uvicorn)
    python -m benchmarks.fixtures fast           # hand-written JSON-RPC over stdio
    python -m benchmarks.fixtures fast --http 0  # hand-written Streamable HTTP on aiohttp

HTTP modes print ``LISTENING http://127.0.0.1:PORT/mcp`` on stdout once bound. The fast fixture
speaks the 2025-11-25 handshake era (``initialize``, ``Mcp-Session-Id``, JSON responses) and
answers ``server/discover`` with -32601, so mcp 2.x clients fall back to the handshake; it exists so
that the gateway, not the SDK fixture (about 450 calls/s here), is what a benchmark saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import sys
import warnings
from typing import Any

ECHO_TOOL = {
    "name": "echo",
    "description": "Echo the given text back",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
PROTOCOL = "2025-11-25"
SERVER_INFO = {"name": "bench-fast", "version": "1.0"}


# ---- the fast fixture --------------------------------------------------------------------------


def handle(msg: dict[str, Any]) -> dict[str, Any] | None:
    """Answer one JSON-RPC message (None for notifications)."""
    if "id" not in msg or "method" not in msg:
        return None
    rid, method, params = msg["id"], msg["method"], msg.get("params") or {}
    if method == "initialize":
        version = params.get("protocolVersion") or PROTOCOL
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
        }
    elif method == "tools/list":
        result = {"tools": [ECHO_TOOL]}
    elif method == "tools/call":
        text = str((params.get("arguments") or {}).get("text", ""))
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "ping":
        result = {}
    elif method in ("resources/list", "prompts/list"):
        result = {method.split("/")[0]: []}
    elif method == "resources/templates/list":
        result = {"resourceTemplates": []}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


async def fast_stdio() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while line := await reader.readline():
        if not line.strip():
            continue
        reply = handle(json.loads(line))
        if reply is not None:
            out.write(json.dumps(reply).encode() + b"\n")
            out.flush()


async def fast_http(port: int) -> None:
    from aiohttp import web

    sessions: set[str] = set()

    async def post(request: web.Request) -> web.StreamResponse:
        msg = await request.json()
        sid = request.headers.get("Mcp-Session-Id")
        headers = {}
        if msg.get("method") == "initialize":
            sid = secrets.token_hex(16)
            sessions.add(sid)
            headers["Mcp-Session-Id"] = sid
        elif sid is not None and sid not in sessions:
            return web.json_response({"jsonrpc": "2.0", "id": msg.get("id"), "error": {"code": -32001}}, status=404)
        reply = handle(msg)
        if reply is None:
            return web.Response(status=202)
        return web.Response(text=json.dumps(reply), content_type="application/json", headers=headers)

    async def get(request: web.Request) -> web.StreamResponse:
        return web.Response(status=405, headers={"Allow": "POST"})

    async def delete(request: web.Request) -> web.StreamResponse:
        sessions.discard(request.headers.get("Mcp-Session-Id", ""))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", get)
    app.router.add_delete("/mcp", delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _listen(port)
    await web.SockSite(runner, sock).start()
    _announce(sock)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# ---- the SDK fixture ---------------------------------------------------------------------------


def sdk_server() -> Any:
    import mcp_types as types
    from mcp.server import Server

    tool = types.Tool.model_validate(ECHO_TOOL)

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("bench-sdk", on_list_tools=list_tools, on_call_tool=call_tool)


async def sdk_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = sdk_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def sdk_http(port: int) -> None:
    import uvicorn

    app = sdk_server().streamable_http_app(host="127.0.0.1")
    sock = _listen(port)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def announce_when_started() -> None:
        while not uv.started:  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.01)
        _announce(sock)

    task = asyncio.create_task(announce_when_started())
    await uv.serve(sockets=[sock])
    task.cancel()


# ---- plumbing ----------------------------------------------------------------------------------


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _announce(sock: socket.socket) -> None:
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fixtures")
    p.add_argument("kind", choices=["sdk", "fast"])
    p.add_argument("--http", type=int, metavar="PORT", help="Streamable HTTP on this port (0 = free port)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.kind == "fast":
        coro = fast_stdio() if args.http is None else fast_http(args.http)
    else:
        coro = sdk_stdio() if args.http is None else sdk_http(args.http)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)


if __name__ == "__main__":
    main()
