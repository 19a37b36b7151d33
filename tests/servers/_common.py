"""Shared plumbing for the SDK fixture servers: one `main()` that serves a low-level
`mcp.server.Server` over stdio (default) or Streamable HTTP (`--http PORT`).

HTTP mode binds 127.0.0.1 (port 0 picks a free port) and, once the socket is listening,
prints one line `LISTENING http://127.0.0.1:PORT/mcp` on stdout and on stderr (flushed),
so a test can read whichever stream it captures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import anyio
from aiohttp import web
from mcp.server import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.message import SessionMessage
from mcp_types import METHOD_NOT_FOUND, ErrorData, JSONRPCError, JSONRPCMessage, JSONRPCRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The fixtures deliberately exercise the handshake-era features (logging, sampling,
# roots) that mcp 2.x marks deprecated; the warnings are noise in a fixture.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)


class FixtureServer(Server[Any]):
    """A low-level `Server` that advertises `listChanged` for tools, resources and prompts
    on every transport (the SDK's HTTP manager calls `create_initialization_options()`
    with no arguments)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        if notification_options is None:
            notification_options = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(notification_options, experimental_capabilities, extensions)


class InMemoryEventStore(EventStore):
    """Unbounded in-memory event store: enables SSE priming events and resumption
    (`Last-Event-ID`) on the handshake-era Streamable HTTP transport."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        index = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, sid, message in self._events[index + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def announce(url: str) -> None:
    """Print the LISTENING line on stdout and stderr."""
    line = f"LISTENING {url}"
    for stream in (sys.stdout, sys.stderr):
        print(line, file=stream, flush=True)


async def serve_aiohttp(app: web.Application, port: int) -> None:
    """Serve a raw aiohttp fixture on 127.0.0.1:``port`` (0: a free one), announce ``/mcp``, run until cancelled."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    announce(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        default=None,
        help="serve Streamable HTTP on 127.0.0.1:PORT/mcp (0 = pick a free port) instead of stdio",
    )
    parser.add_argument(
        "--sse",
        type=int,
        metavar="PORT",
        default=None,
        help="serve the legacy HTTP+SSE transport on 127.0.0.1:PORT/sse (0 = pick a free port)",
    )
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="handshake era only: answer server/discover with -32601, as a pre-2026 server does, "
        "so an auto-mode client falls back to initialize (2025-11-25)",
    )
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="HTTP: answer POSTs with application/json instead of SSE streams",
    )
    return parser.parse_args(argv)


DISCOVER_REFUSAL = "Method not found: server/discover (this server speaks the handshake era only)"


async def serve_stdio(server: Server[Any], *, legacy: bool = False, watch: Callable[[Any], None] | None = None) -> None:
    """``server`` on stdin/stdout; ``legacy`` refuses ``server/discover`` (handshake era only);
    ``watch`` sees every incoming JSON-RPC message first (None for a transport error item)."""
    async with stdio_server() as (read_stream, write_stream):
        if not legacy and watch is None:
            await server.run(read_stream, write_stream, server.create_initialization_options())
            return
        # The dual-era loop lets the first request pick the era; refusing server/discover
        # before the loop sees it makes `initialize` the first request it gets.
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](16)

        async def screen() -> None:
            async with send:
                async for item in read_stream:
                    message = item.message if isinstance(item, SessionMessage) else None
                    if watch is not None:
                        watch(message)
                    if legacy and isinstance(message, JSONRPCRequest) and message.method == "server/discover":
                        error = ErrorData(code=METHOD_NOT_FOUND, message=DISCOVER_REFUSAL)
                        await write_stream.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(screen)
            await server.run(receive, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()


def posted_body_asgi(app: ASGIApp, on_body: Callable[[bytes, Send], Awaitable[bool]]) -> ASGIApp:
    """ASGI wrapper that reads a POST's whole body and shows it to ``on_body(body, send)`` first:
    when that returns True it has answered the request itself; else the body is replayed to ``app``."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if await on_body(body, send):
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return wrapper


def refuse_discover_asgi(app: ASGIApp) -> ASGIApp:
    """ASGI wrapper answering a POSTed `server/discover` with a JSON-RPC -32601 error."""

    async def refuse(body: bytes, send: Send) -> bool:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, dict) and parsed.get("method") == "server/discover" and "id" in parsed):
            return False
        error = {"code": METHOD_NOT_FOUND, "message": DISCOVER_REFUSAL}
        payload = json.dumps({"jsonrpc": "2.0", "id": parsed["id"], "error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return True

    return posted_body_asgi(app, refuse)


async def serve_http(server: Server[Any], port: int, *, json_response: bool = False, legacy: bool = False) -> None:
    app = server.streamable_http_app(
        json_response=json_response,
        event_store=InMemoryEventStore(),
        retry_interval=1000,
        host="127.0.0.1",
    )
    asgi: ASGIApp = refuse_discover_asgi(app) if legacy else app
    await _serve_asgi(asgi, port, "/mcp", lifespan="on")


async def serve_sse(server: Server[Any], port: int) -> None:
    """The legacy HTTP+SSE transport (GET /sse + POST /messages/), as older servers speak it."""
    from mcp.server.sse import SseServerTransport
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    transport = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        async with transport.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    app = Starlette(
        routes=[
            Route("/sse", endpoint=handle_sse, methods=["GET"]),
            Mount("/messages/", app=transport.handle_post_message),
        ]
    )
    await _serve_asgi(app, port, "/sse", lifespan="off")


async def _serve_asgi(app: Any, port: int, path: str, *, lifespan: Literal["on", "off"]) -> None:
    """Serve ``app`` with uvicorn on 127.0.0.1:PORT; announce ``http://127.0.0.1:PORT{path}`` once up."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))

    async def announce_when_started() -> None:
        while not uv.started:
            await anyio.sleep(0.01)
        announce(f"http://127.0.0.1:{sock.getsockname()[1]}{path}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce_when_started)
        await uv.serve(sockets=[sock])
        tg.cancel_scope.cancel()


def main(server: Server[Any], argv: Sequence[str] | None = None, *, description: str = "") -> None:
    """Serve `server` over stdio, or over Streamable HTTP with `--http PORT`."""
    args = parse_args(argv, description or f"MCP fixture server {server.name!r}")
    try:
        if args.sse is not None:
            anyio.run(lambda: serve_sse(server, args.sse))
        elif args.http is None:
            anyio.run(lambda: serve_stdio(server, legacy=args.legacy))
        else:
            anyio.run(lambda: serve_http(server, args.http, json_response=args.json_response, legacy=args.legacy))
    except KeyboardInterrupt:
        pass
