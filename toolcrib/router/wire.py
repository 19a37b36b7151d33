"""toolcrib's own JSON-RPC framing of ``tools/call`` on an upstream connection: the hot path.

The SDK's ``ClientSession`` turns each request into pydantic models, runs it through its
JSON-RPC dispatcher (memory streams, an OpenTelemetry span, per-version result validation) and
parses the answer into models again; on Streamable HTTP its transport posts from a task of its own.
For the one request that is most of the traffic, :class:`Wire` does the same job with less:

- the request is one dict, serialised once (``orjson``), with an id of toolcrib's own (``tc-N``,
  never an integer, so it cannot collide with the SDK's ids on the same connection);
- on toolcrib's Streamable HTTP transport it is POSTed from the calling task, and a JSON answer is
  parsed once and handed back without crossing a stream. An SSE answer (progress, log lines,
  server requests before the result), an HTTP error or a lost session goes the general way:
  every message is delivered on the connection's read stream, marked as related to this request;
- on stdio and legacy SSE the request is written to the transport's write stream and its answer
  is picked off the read stream by :class:`~toolcrib.router.backchannel.Backchannel`.

What stays the same as the SDK path, because it is the same connection and the same back channel:
the request is registered as the current call's (:meth:`Backchannel.expect`), so server requests
and log lines it causes reach only its client; progress notifications for its token go to the
caller's callback; cancellation (deadline or client) sends ``notifications/cancelled``; the result
passes :func:`~toolcrib.router.tolerate.tolerate` and is validated once into a ``CallToolResult``
(and against the tool's output schema, as the SDK client does); a ``resultType: "task"`` answer
raises :class:`~mcp.client.extension.UnexpectedClaimedResult` as the SDK's claim does.

Only 2025-11-25-era (handshake) upstreams get a :class:`Wire`: a 2026-07-28 request carries a
per-request envelope and may answer ``input_required``, which the SDK client drives.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
import orjson
from mcp import Client
from mcp.client.extension import UnexpectedClaimedResult
from mcp.shared.message import SessionMessage

from toolcrib.router.task_claim import CreateTaskResult

if TYPE_CHECKING:
    from toolcrib.router.backchannel import Backchannel
    from toolcrib.router.http_transport import _Conn

Progress = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]
"""``(progress, total, message)``, the SDK's ``ProgressFnT`` shape."""
CANCEL_SEND_TIMEOUT = 1.0
"""Seconds spent at most telling the upstream that an abandoned request is cancelled."""

_WIRES: dict[int, tuple[weakref.ref[Client], Wire]] = {}
"""By ``id(client)`` (an SDK ``Client`` is not hashable); an entry leaves with its client."""


def wire_of(client: Client) -> Wire | None:
    """The :class:`Wire` of a live SDK client, or None when its calls go through the SDK."""
    entry = _WIRES.get(id(client))
    return entry[1] if entry is not None and entry[0]() is client else None


class Wire:
    """Direct ``tools/call`` requests on one upstream connection (see the module docstring)."""

    def __init__(self, backchannel: Backchannel, write: Any, conn: _Conn | None = None) -> None:
        self._bc = backchannel
        self._write = write
        """The transport's own write stream (requests registered here, not by the recording wrapper)."""
        self._conn = conn
        self._ids = itertools.count(1)

    def attach(self, client: Client) -> None:
        """Make this the wire of ``client`` for as long as the client lives."""
        key = id(client)
        _WIRES[key] = (weakref.ref(client, lambda _: _WIRES.pop(key, None)), self)

    async def call_tool(
        self, client: Client, name: str, arguments: dict[str, Any], progress: Progress | None = None
    ) -> types.CallToolResult:
        """``tools/call`` ``name`` with ``arguments``; the validated result.

        Raises :class:`~mcp.shared.exceptions.MCPError` for the upstream's JSON-RPC error (and
        ``CONNECTION_CLOSED`` when the connection or session is lost, as the SDK does),
        :class:`UnexpectedClaimedResult` for a task result, ``pydantic.ValidationError`` for a
        result that is not a ``CallToolResult``, ``RuntimeError`` for structured content that does
        not fit the tool's output schema.
        """
        raw = await self.request("tools/call", {"name": name, "arguments": arguments}, progress)
        if raw.get("resultType") == "task":
            raise UnexpectedClaimedResult(CreateTaskResult.model_validate(raw, by_name=False))
        result = types.CallToolResult.model_validate(raw, by_name=False)
        if not result.is_error:
            await client.session.validate_tool_result(name, result)
        return result

    async def request(self, method: str, params: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
        """Send one request and return its result object (wire form, tolerated)."""
        rid = f"tc-{next(self._ids)}"
        if progress is not None:
            params = {**params, "_meta": {**(params.get("_meta") or {}), "progressToken": rid}}
        answer = self._bc.expect(rid, method, progress)
        sent = False
        try:
            if self._conn is not None:
                body = dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
                sent = True
                await self._conn.exchange(rid, body, self._bc.answer)
            else:
                message = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params)
                sent = True
                await self._write.send(SessionMessage(message))
            return await answer
        except BaseException:
            # Cancelled while waiting, asyncio cancels the awaited future too: unanswered all the same.
            if sent and (not answer.done() or answer.cancelled()):
                await self._cancel(rid)
            raise
        finally:
            self._bc.forget(rid)

    async def _cancel(self, rid: str) -> None:
        note = types.JSONRPCNotification(
            jsonrpc="2.0", method="notifications/cancelled", params={"requestId": rid, "reason": "abandoned"}
        )
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(CANCEL_SEND_TIMEOUT),
            contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError),
        ):
            await self._write.send(SessionMessage(note))


def dumps(message: dict[str, Any]) -> bytes:
    """One JSON-RPC message as UTF-8 JSON: ``orjson``, or :mod:`json` for what orjson refuses
    (an integer beyond 64 bits, which a client may send and must reach the upstream exact)."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
