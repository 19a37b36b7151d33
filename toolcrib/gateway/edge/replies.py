"""The shapes of ``/mcp`` answers (JSON-RPC errors, SSE events) and what a request adds to the request log."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import mcp_types as types
from aiohttp import web

from toolcrib.gateway.edge.guard import NOTE
from toolcrib.gateway.edge.sessions import HttpSession

log = logging.getLogger("toolcrib.http")


def rpc_error(code: int, message: str, rid: Any = None, status: int = 400) -> web.Response:
    body = {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status)


def dump(message: types.JSONRPCMessage) -> str:
    return message.model_dump_json(by_alias=True, exclude_none=True)


def sse(data: str) -> bytes:
    return f"event: message\ndata: {data}\n\n".encode()


def is_final(msg: types.JSONRPCMessage, rid: Any) -> bool:
    return isinstance(msg, types.JSONRPCResponse | types.JSONRPCError) and msg.id == rid


def divert(sess: HttpSession | None, msg: types.JSONRPCMessage) -> None:
    """A JSON-only client's message that is not its response: a server-to-client request goes to the
    session's GET stream when there is one (else it is dropped and times out upstream); a
    notification (progress, logging) is dropped, as it would be worthless after the response."""
    target = sess.standalone if sess is not None and isinstance(msg, types.JSONRPCRequest) else None
    if target is not None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            target.send_nowait(msg)
            return
    log.debug("dropped a message for a client that accepts only application/json")


def note_request(request: web.Request, message: types.JSONRPCRequest) -> None:
    """Method and target (tool, prompt or resource; never arguments) for the request log line."""
    note = request.get(NOTE)
    if note is None:
        return
    note["method"] = message.method
    params = message.params or {}
    target = params.get("name") if message.method in ("tools/call", "prompts/get") else params.get("uri")
    args = params.get("arguments")
    if target == "invoke" and isinstance(args, dict) and isinstance(args.get("tool"), str):
        target = f"invoke:{args['tool']}"
    if isinstance(target, str):
        note["target"] = target[:200]


def note_outcome(request: web.Request, msg: types.JSONRPCMessage) -> None:
    note = request.get(NOTE)
    if note is None:
        return
    if isinstance(msg, types.JSONRPCError):
        note["outcome"] = f"error {msg.error.code}"
    elif isinstance(msg, types.JSONRPCResponse):
        note["outcome"] = "tool_error" if msg.result.get("isError") is True else "ok"
