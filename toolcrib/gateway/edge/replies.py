"""The shapes of ``/mcp`` answers (JSON-RPC errors, SSE events, the answer to one POST) and what a
request adds to the request log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream

from toolcrib.gateway.edge.accept import response_mode
from toolcrib.gateway.edge.guard import NOTE
from toolcrib.gateway.edge.resume import Replay, StreamLog, pump
from toolcrib.gateway.edge.sessions import HttpSession

log = logging.getLogger("toolcrib.http")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def rpc_error(code: int, message: str, rid: Any = None, status: int = 400, data: Any = None) -> web.Response:
    """A JSON-RPC error answer (``id`` null when the request's id is unknown) with HTTP ``status``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return web.json_response({"jsonrpc": "2.0", "id": rid, "error": error}, status=status)


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


async def respond(
    request: web.Request,
    recv: MemoryObjectReceiveStream[types.JSONRPCMessage],
    rid: Any,
    headers: dict[str, str],
    sess: HttpSession | None = None,
    error_status: Mapping[int, int] | None = None,
    handoff: list[Callable[[], None]] | None = None,
) -> web.StreamResponse:
    """Answer one POST as ``Accept`` allows (see :mod:`toolcrib.gateway.edge.accept`): JSON when the
    first thing ready is the response (or the client takes only JSON: what comes before the response
    is then diverted, see :func:`divert`); otherwise SSE until the response is sent.

    ``error_status`` maps a JSON-RPC error code to the HTTP status of a JSON answer (2026-07-28
    basic/transports: -32601 is 404, -32602/-32020/-32021/-32022 are 400); unmapped codes and every
    SSE answer are 200.

    A session with resumable streams (``sess.replay``, 2025-11-25 and later) gets them on SSE: see
    :func:`resumable`; ``handoff`` holds the caller's clean-ups (its routing entry for ``rid``),
    which then run when the stream has its response instead of when this POST ends.
    """
    mode = response_mode(request.headers.get("Accept"))
    try:
        try:
            first = recv.receive_nowait()  # answered already (a local call): no loop turn
        except anyio.WouldBlock:
            first = await recv.receive()
        while mode == "json" and not is_final(first, rid):
            divert(sess, first)
            first = await recv.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return rpc_error(-32001, "Session closed before the request was answered; start a new session", rid, 404)
    if is_final(first, rid) and mode != "sse":
        note_outcome(request, first)
        status = 200
        if isinstance(first, types.JSONRPCError) and error_status is not None:
            status = error_status.get(first.error.code, 200)
        return web.Response(text=dump(first), status=status, content_type="application/json", headers=headers)
    if sess is not None and sess.replay is not None:
        return await resumable(request, sess.replay, first, recv, rid, headers, handoff)
    resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    await resp.prepare(request)
    await resp.write(sse(dump(first)))
    if is_final(first, rid):
        note_outcome(request, first)
    else:
        async for msg in recv:
            await resp.write(sse(dump(msg)))
            if is_final(msg, rid):
                note_outcome(request, msg)
                break
    await resp.write_eof()
    return resp


async def resumable(
    request: web.Request,
    replay: Replay,
    first: types.JSONRPCMessage,
    recv: MemoryObjectReceiveStream[types.JSONRPCMessage],
    rid: Any,
    headers: dict[str, str],
    handoff: list[Callable[[], None]] | None,
) -> web.StreamResponse:
    """A POST's SSE stream with event ids, opened by a priming event with ``retry`` (2025-11-25
    basic/transports, SEP-1699). Its messages are read into the session's replay buffer by a task of
    their own (:func:`drain`), so a client that drops the connection can ``GET`` the rest with
    ``Last-Event-ID``; the call is not cancelled by the drop."""
    log = replay.open()
    token = object()
    log.reader = token
    replay.append(log, dump(first))
    cleanups = list(handoff or ())
    if handoff is not None:
        handoff.clear()
    if is_final(first, rid):
        note_outcome(request, first)
        replay.finish(log)
        for fn in cleanups:
            fn()
    else:
        replay.spawn(drain, request, replay, log, recv.clone(), rid, cleanups)
    resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    try:
        await resp.prepare(request)
        await resp.write(log.priming())
        await pump(resp, log, 0, token)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away: the stream is kept for a resume
    finally:
        if log.reader is token:
            log.reader = None
    return resp


async def drain(
    request: web.Request,
    replay: Replay,
    log: StreamLog,
    recv: MemoryObjectReceiveStream[types.JSONRPCMessage],
    rid: Any,
    cleanups: list[Callable[[], None]],
) -> None:
    """Read one POST stream's messages into ``log`` up to the response, whoever is connected."""
    try:
        async with recv:
            async for msg in recv:
                replay.append(log, dump(msg))
                if is_final(msg, rid):
                    note_outcome(request, msg)
                    break
    finally:
        replay.finish(log)
        for fn in cleanups:
            fn()
