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
- on stdio it is written to the child's stdin from the calling task, and the transport's reader
  settles its answer from the parsed line with no model and no stream hop
  (:mod:`toolcrib.router.stdio_transport`); everything else the server sends goes the general way;
- on legacy SSE the request is written to the transport's write stream and its answer is picked
  off the read stream by :class:`~toolcrib.router.backchannel.Backchannel`.

What stays the same as the SDK path, because it is the same connection and the same back channel:
the request is registered as the current call's (:meth:`Backchannel.expect`), so server requests
and log lines it causes reach only its client; progress notifications for its token go to the
caller's callback; cancellation (deadline or client) sends ``notifications/cancelled``; the result
passes :func:`~toolcrib.router.tolerate.tolerate` and is validated once into a ``CallToolResult``
(and against the tool's output schema, as the SDK client does); a ``resultType: "task"`` answer
raises :class:`~mcp.client.extension.UnexpectedClaimedResult` as the SDK's claim does.

A 2026-07-28 upstream's request carries its per-request envelope (``_meta`` protocol version,
client info and capabilities, log level) and routing headers (``MCP-Protocol-Version``,
``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``), stamped by the SDK session's own per-era stamp, so
both paths send the same. Its rarer answers are finished by the SDK client: an ``input_required``
round (SEP-2322) is driven by the client's input-request driver, whose retries go through the SDK
session; a ``HEADER_MISMATCH`` (-32020) refusal, which the server sends before running anything,
is retried through ``Client.call_tool`` (which re-lists the tool and resends once).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import mcp_types as types
import orjson
from mcp import Client
from mcp.client.extension import UnexpectedClaimedResult
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import HEADER_MISMATCH

from toolcrib.observe.context import outgoing
from toolcrib.router.task_claim import CreateTaskResult
from toolcrib.router.tolerate import honest_capabilities, request_version

if TYPE_CHECKING:
    from toolcrib.router.backchannel import Backchannel

Progress = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]
"""``(progress, total, message)``, the SDK's ``ProgressFnT`` shape."""
CANCEL_SEND_TIMEOUT = 1.0
"""Seconds spent at most telling the upstream that an abandoned request is cancelled."""


class Exchange(Protocol):
    """A transport that sends a request framed by :class:`Wire` itself (Streamable HTTP, stdio)."""

    async def exchange(
        self, rid: str, body: bytes, answer: Callable[[dict[str, Any]], bool], extra: Mapping[str, str] | None = None
    ) -> None:
        """Send request ``rid`` (``body``: one JSON object, UTF-8); its wire-form answer goes to
        ``answer`` (here or later, from the transport's reader); ``extra``: HTTP headers, if any.
        Raises ``MCPError`` ``CONNECTION_CLOSED`` when it cannot be sent."""


_WIRES: dict[int, tuple[weakref.ref[Client], Wire]] = {}
"""By ``id(client)`` (an SDK ``Client`` is not hashable); an entry leaves with its client."""


def wire_of(client: Client) -> Wire | None:
    """The :class:`Wire` of a live SDK client, or None when its calls go through the SDK."""
    entry = _WIRES.get(id(client))
    return entry[1] if entry is not None and entry[0]() is client else None


class Wire:
    """Direct ``tools/call`` requests on one upstream connection (see the module docstring)."""

    def __init__(
        self,
        backchannel: Backchannel,
        write: Any,
        conn: Exchange | None = None,
        stamp: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> None:
        self._bc = backchannel
        self._write = write
        """The transport's own write stream (requests registered here, not by the recording wrapper)."""
        self._conn = conn
        self._stamp = stamp
        """The SDK session's per-era stamp of a 2026-07-28 connection (``_meta`` envelope, headers), else None."""
        self._ids = itertools.count(1)

    def attach(self, client: Client) -> None:
        """Make this the wire of ``client`` for as long as the client lives."""
        key = id(client)
        _WIRES[key] = (weakref.ref(client, lambda _: _WIRES.pop(key, None)), self)

    async def call_tool(
        self,
        client: Client,
        name: str,
        arguments: dict[str, Any],
        progress: Progress | None = None,
        *,
        drive: bool = True,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """``tools/call`` ``name`` with ``arguments``; the validated result. With ``drive`` an
        ``input_required`` answer is finished by the SDK client's driver (as ``Client.call_tool``);
        without, it is returned (as ``ClientSession.call_tool(allow_input_required=True)``).

        Raises :class:`~mcp.shared.exceptions.MCPError` for the upstream's JSON-RPC error (and
        ``CONNECTION_CLOSED`` when the connection or session is lost, as the SDK does),
        :class:`UnexpectedClaimedResult` for a task result, ``pydantic.ValidationError`` for a
        result that is not a ``CallToolResult``, ``RuntimeError`` for structured content that does
        not fit the tool's output schema.
        """
        try:
            raw = await self.request("tools/call", {"name": name, "arguments": arguments}, progress)
        except MCPError as exc:
            if exc.error.code != HEADER_MISMATCH or self._stamp is None:
                raise
            # Refused before anything ran: resent the SDK's way (Client.call_tool re-lists the tool first).
            if drive:
                return await client.call_tool(name, arguments, progress_callback=cast(Any, progress))
            return await client.session.call_tool(
                name, arguments, progress_callback=cast(Any, progress), allow_input_required=True
            )
        kind = raw.get("resultType")
        if kind == "task":
            raise UnexpectedClaimedResult(CreateTaskResult.model_validate(raw, by_name=False))
        if kind == "input_required":
            if not drive:
                return types.InputRequiredResult.model_validate(raw, by_name=False)
            if self._stamp is not None:
                return await self._drive(client, name, arguments, progress, raw)
        result = types.CallToolResult.model_validate(raw, by_name=False)
        if not result.is_error:
            await client.session.validate_tool_result(name, result)
        return result

    async def _drive(
        self, client: Client, name: str, arguments: dict[str, Any], progress: Progress | None, raw: dict[str, Any]
    ) -> types.CallToolResult:
        """Finish a call whose first round answered ``input_required`` as ``Client.call_tool`` does."""
        first = types.InputRequiredResult.model_validate(raw, by_name=False)

        async def retry(responses: Any, state: str | None) -> Any:
            return await client.session.call_tool(
                name,
                arguments,
                progress_callback=cast(Any, progress),
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
                allow_claimed=True,
            )

        result = await client._drive_input_required(first, retry)
        if not isinstance(result, types.CallToolResult):
            raise UnexpectedClaimedResult(result)
        if not result.is_error:
            await client.session.validate_tool_result(name, result)
        return result

    async def request(self, method: str, params: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
        """Send one request and return its result object (wire form, tolerated)."""
        rid = f"tc-{next(self._ids)}"
        headers: dict[str, str] | None = None
        if self._stamp is not None:
            data: dict[str, Any] = {"method": method, "params": dict(params)}
            opts: dict[str, Any] = {}
            self._stamp(data, opts)
            # declared capabilities made true, as on every request the SDK writes (backchannel._RecordedWrite)
            params, headers = honest_capabilities(data["params"]) or {}, opts.get("headers")
        if progress is not None:
            params = {**params, "_meta": {**(params.get("_meta") or {}), "progressToken": rid}}
        trace = outgoing.get()  # the upstream span's traceparent (SEP-414); None with tracing off
        if trace is not None:
            params = {**params, "_meta": {**(params.get("_meta") or {}), **trace}}
        answer = self._bc.expect(rid, method, progress, request_version(params))
        sent = False
        try:
            if self._conn is not None:
                body = dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
                sent = True
                await self._conn.exchange(rid, body, self._bc.answer, headers)
            else:
                message = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params)
                sent = True  # a started write counts as issued (it may have been delivered when cancelled)
                try:
                    await self._write.send(SessionMessage(message))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    # the transport is gone (a child that died): the SDK's contract for a closed connection
                    raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
            return await answer
        except BaseException:
            # Cancelled while waiting, asyncio cancels the awaited future too: unanswered all the same.
            if sent and (not answer.done() or answer.cancelled()):
                await self._cancel(rid)
            raise
        finally:
            self._bc.forget(rid)
            if answer.done() and not answer.cancelled():
                # A write that failed on a dead connection raised before `answer` was awaited, while the
                # connection's end also failed `answer`: read its exception so asyncio does not report
                # "Future exception was never retrieved" (an error log; an error in anyio's test runner).
                answer.exception()

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
