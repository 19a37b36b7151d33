"""The back channel: upstream-initiated traffic delivered only to the client call that caused it.

While a call is in flight an upstream may send its client log lines (``notifications/message``)
and requests (``sampling/createMessage``, ``elicitation/create``, ``roots/list``). Each must reach
the client whose call caused it and nobody else: another principal's client must never see its
log lines (they may carry secrets) nor answer its questions.

One :class:`Backchannel` per upstream sits between the SDK session and the transport streams:

- **write side** (:class:`_RecordedWrite`): the SDK writes a request in the task that makes the
  call, where :data:`current_call` (set by :meth:`Backchannel.call`) names the call; the request's
  JSON-RPC id is recorded as that call's, and forgotten when its response is read or the call ends.
- **read side** (:class:`_RoutedRead`): a message the transport marks as related to one of our
  requests (``ServerMessageMetadata.related_request_id``; toolcrib's Streamable HTTP transport
  marks every message read from a request's own SSE stream, which the spec says relates to that
  request: basic/transports, "Sending Messages to the Server") belongs to the call that sent it.
  A message with no relation (stdio, legacy HTTP+SSE, the 2025-11-25 GET stream) is attributed
  only when exactly one call is in flight on this upstream (no other call exists that could have
  caused it), or when every other call in flight is waiting for the answer to a server request it
  was sent and all of them act for the same principal as the one free call. Otherwise a log line
  is **dropped** and a request **refused**
  (JSON-RPC error ``-32600`` to the upstream), with one rate-limited warning each. A relation to a
  request that no client call in flight made (a finished call, the gateway's own listing) is
  treated the same way. Never another principal's call.
- Log lines are queued per call (in order, without blocking the read loop) and delivered before
  the call's result is returned. Server requests are noted by their id, and the SDK's sampling,
  elicitation and roots callbacks (which get only that id) look the call up here. 2026-07-28
  input requests (``InputRequiredResult``) are answered by the SDK inside the calling task, so
  :data:`current_call` names the call directly. Progress is matched by the SDK's progress tokens.

The client side of a call is the :class:`Caller` the gateway puts in ``current_caller``.

Every result read passes through :func:`toolcrib.router.tolerate.tolerate` (by the method and
version of the request it answers, noted on the write side), so the forms the spec tells a client
to accept (absent ``resultType``, unknown content block types, ...) reach the SDK in a shape it parses.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, Self

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from pydantic import ValidationError

from toolcrib.router.tolerate import honest_capabilities, request_version, tolerate

log = logging.getLogger("toolcrib.upstream.backchannel")

RELAYED = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})
LOG_QUEUE = 256
"""Log lines buffered per call before further ones are dropped."""
LOG_FLUSH_TIMEOUT = 5.0
"""Seconds a finished call waits for its queued log lines to reach its client."""
WARN_EVERY = 10.0
"""Seconds between two warnings of the same kind for one upstream."""

PENDING_LIMIT = 4096
"""Requests whose method is remembered for normalising their answer; the oldest are forgotten beyond it."""

RequestId = int | str


class Caller(Protocol):
    """The client-side party of a call in flight, to which upstream-initiated traffic is relayed."""

    principal_id: str
    """The typed id of the principal the call acts for (:attr:`Principal.id`)."""

    async def create_message(self, params: types.CreateMessageRequestParams) -> dict[str, Any]: ...
    async def elicit(self, params: types.ElicitRequestParams) -> dict[str, Any]: ...
    async def list_roots(self) -> dict[str, Any]: ...
    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None: ...


class UpstreamError(MCPError):
    """The JSON-RPC error an upstream itself answered to a request of toolcrib's own
    (:mod:`toolcrib.router.wire`): never a transport failure, whatever its code. JSON-RPC leaves
    -32000..-32099 to servers, and many answer -32000 for any failure, the code the SDK also uses
    for its own ``CONNECTION_CLOSED``; only a transport's own failure means the connection is lost."""


class TransportFailure(SessionMessage):
    """A JSON-RPC error a transport made up for a request it could not carry (unreachable server,
    session gone, stream cut), delivered on the read stream like the server's own answers; the
    back channel fails a request of toolcrib's own with a plain :class:`MCPError` for it, not an
    :class:`UpstreamError`."""


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("toolcrib_caller", default=None)
"""Set by the gateway around a client's call; read once when the call reaches an upstream."""


class Call:
    """One call in flight on an upstream: its caller (None for the gateway's own requests), the
    JSON-RPC ids of the requests it sent, and its queue of log lines for the caller."""

    def __init__(self, caller: Caller | None) -> None:
        self.caller = caller
        self.ids: set[RequestId] = set()
        self._logs: MemoryObjectSendStream[types.LoggingMessageNotificationParams] | None = None
        self._flushed = anyio.Event()
        self._progressing = 0
        """Progress notifications of this call's requests being delivered to the caller now."""
        self._idle: anyio.Event | None = None

    async def flushed(self, timeout: float = LOG_FLUSH_TIMEOUT) -> None:
        """Wait (at most ``timeout`` seconds) until the log lines queued for the caller and the
        progress notifications received before the answer were delivered: the answer goes to the
        client after them (basic/utilities/progress: no progress after the final response)."""
        if self._logs is None and not self._progressing:
            return
        with anyio.move_on_after(timeout):
            if self._logs is not None:
                await self._flushed.wait()
            while self._progressing:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()

    def _progress_started(self) -> None:
        self._progressing += 1

    def _progress_done(self) -> None:
        self._progressing -= 1
        if not self._progressing and self._idle is not None:
            self._idle.set()
            self._idle = None


current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("toolcrib_upstream_call", default=None)
"""The upstream call the current task is making (set by :meth:`Backchannel.call`)."""


class Backchannel:
    """Routes one upstream's back-channel traffic; see the module docstring for the rules."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._calls: set[Call] = set()
        self._outbound: dict[RequestId, Call] = {}
        self._inbound: dict[RequestId, Call | None] = {}
        self._pending: dict[RequestId, tuple[str, str | None]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._warned: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._wire: dict[RequestId, tuple[asyncio.Future[dict[str, Any]], str, str | None]] = {}
        """toolcrib's own requests in flight (:mod:`toolcrib.router.wire`): answer future and method, by id."""
        self._progress: dict[RequestId, Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]] = {}
        self.transport_write: Any = None
        """The transport's own write stream of the attached connection (for :class:`~toolcrib.router.wire.Wire`)."""

    # ---- calls -------------------------------------------------------------------------------

    @contextmanager
    def call(self) -> Iterator[Call]:
        """Register a call by the current task's :data:`current_caller` for the duration of the block."""
        call = Call(current_caller.get())
        self._calls.add(call)
        token = current_call.set(call)
        try:
            yield call
        finally:
            current_call.reset(token)
            self._calls.discard(call)
            for rid in call.ids:
                if self._outbound.get(rid) is call:
                    del self._outbound[rid]
            call.ids.clear()
            if call._logs is not None:
                call._logs.close()

    @asynccontextmanager
    async def attach(
        self, read: Any, write: Any, closed: anyio.Event
    ) -> AsyncIterator[tuple[_RoutedRead, _RecordedWrite]]:
        """Wrap one connection's (read, write) transport streams; ids start afresh per connection.
        ``closed`` is set when the read stream ends, so a dead server is noticed at once."""
        self._outbound.clear()
        self._inbound.clear()
        self._pending.clear()
        self.transport_write = write
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield _RoutedRead(self, read, closed), _RecordedWrite(self, write)
            finally:
                self._tg = None
                self.transport_write = None
                self._lose_wire()
                tg.cancel_scope.cancel()

    # ---- write side --------------------------------------------------------------------------

    def sent(self, message: Any) -> None:
        """Note one message the SDK writes: a request is the current call's; an answer ends a server request."""
        if isinstance(message, types.JSONRPCRequest):
            self._pending[message.id] = (message.method, request_version(message.params))
            if len(self._pending) > PENDING_LIMIT:
                del self._pending[next(iter(self._pending))]
            self._claim(message.id)
        elif isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            self._inbound.pop(message.id, None)

    # ---- toolcrib's own requests (router/wire.py) ----------------------------------------------

    def expect(
        self,
        rid: RequestId,
        method: str,
        progress: Callable[[float, float | None, str | None], Coroutine[Any, Any, None]] | None = None,
        version: str | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Register request ``rid`` (about to be sent outside the SDK session) as the current call's;
        the future gets its result object, or raises :class:`MCPError` for its error answer.
        ``progress`` receives the ``notifications/progress`` carrying ``rid`` as token; ``version`` is
        the 2026-07-28 revision the request names in its ``_meta`` (None for a session request)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._wire[rid] = (fut, method, version)
        if progress is not None:
            self._progress[rid] = progress
        self._claim(rid)
        return fut

    def _claim(self, rid: RequestId) -> None:
        """Request ``rid`` is the current call's (if a client call is in flight): what it causes is routed there."""
        call = current_call.get()
        if call is not None and call in self._calls:
            self._outbound[rid] = call
            call.ids.add(rid)

    def _release(self, rid: RequestId) -> None:
        """Request ``rid`` is answered or over: it no longer names its call."""
        call = self._outbound.pop(rid, None)
        if call is not None:
            call.ids.discard(rid)

    def answer(self, message: dict[str, Any], *, transport: bool = False) -> bool:
        """Settle the request a wire-form JSON-RPC answer is for; False when it is not one of ours.
        An error answer fails it with :class:`UpstreamError`, or with a plain :class:`MCPError`
        when ``transport`` (the transport's own failure, :class:`TransportFailure`)."""
        rid = message.get("id")
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            return False
        entry = self._wire.pop(rid, None)
        if entry is None:
            return False
        fut, method, version = entry
        self._release(rid)
        if fut.done():
            return True
        result, error = message.get("result"), message.get("error")
        if isinstance(result, dict) and error is None:
            fut.set_result(tolerate(method, version, result, upstream=self.upstream))
        elif isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str):
            kind = MCPError if transport else UpstreamError
            fut.set_exception(kind(code=error["code"], message=error["message"], data=error.get("data")))
        else:
            fut.set_exception(
                MCPError(code=types.INTERNAL_ERROR, message=f"upstream {self.upstream} sent a malformed answer")
            )
        return True

    def forget(self, rid: RequestId) -> None:
        """The request ``rid`` is over (answered, abandoned or failed): drop what was kept for it."""
        self._wire.pop(rid, None)
        self._progress.pop(rid, None)
        self._release(rid)

    def _lose_wire(self) -> None:
        """The connection ended: every request of toolcrib's own still waiting fails as the SDK's do."""
        wire, self._wire = self._wire, {}
        for fut, _, _ in wire.values():
            if not fut.done():
                fut.set_exception(MCPError(code=types.CONNECTION_CLOSED, message="Connection closed"))

    def _wire_progress(self, params: Any) -> bool:
        """Deliver a ``notifications/progress`` for one of toolcrib's own requests; True when it was
        one (consumed, delivered or, when malformed, dropped)."""
        token = params.get("progressToken") if isinstance(params, dict) else None
        if not isinstance(token, str | int):
            return False
        callback = self._progress.get(token)
        if callback is None or self._tg is None:
            return False
        progress, total, message = _number(params.get("progress")), params.get("total"), params.get("message")
        if progress is None or (total is not None and _number(total) is None):
            log.debug("upstream %s: dropped a progress notification with a malformed number", self.upstream)
            return True
        call = self._outbound.get(token)
        if call is not None:
            call._progress_started()
        self._tg.start_soon(_progressed, call, callback, progress, _number(total), message)
        return True

    # ---- read side ---------------------------------------------------------------------------

    def received(self, item: SessionMessage) -> bool:
        """Note one message from the upstream; False if it was consumed here (a log line, an answer
        to or progress of one of toolcrib's own requests)."""
        message = item.message
        related = item.metadata.related_request_id if isinstance(item.metadata, ServerMessageMetadata) else None
        if self._wire and isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id in self._wire:
            if isinstance(message, types.JSONRPCResponse):  # already parsed: only the error needs its wire form
                return not self.answer({"id": message.id, "result": message.result})
            return not self.answer(
                {"id": message.id, "error": message.error.model_dump(by_alias=True, exclude_none=True)},
                transport=isinstance(item, TransportFailure),
            )
        if (
            self._progress
            and isinstance(message, types.JSONRPCNotification)
            and message.method == "notifications/progress"
            and self._wire_progress(message.params)
        ):
            return False
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            sent = self._pending.pop(message.id, None) if message.id is not None else None
            if sent is not None and isinstance(message, types.JSONRPCResponse):
                message.result = tolerate(sent[0], sent[1], message.result, upstream=self.upstream)
            if message.id is not None:
                self._release(message.id)
        elif isinstance(message, types.JSONRPCRequest) and message.method in RELAYED:
            call, why = self._origin(related)
            if call is not None and call.caller is None:
                call, why = None, "the call it belongs to was made by the gateway itself, not a client"
            self._inbound[message.id] = call
            if call is None:
                self._warn(
                    "refused",
                    f"upstream {self.upstream}: refused its {message.method}: {why}; "
                    "send it on the stream of the request it serves",
                )
        elif isinstance(message, types.JSONRPCNotification):
            if message.method == "notifications/message":
                self._log(message.params, related)
                return False
            target = (message.params or {}).get("requestId")
            if message.method == "notifications/cancelled" and isinstance(target, int | str):
                self._inbound.pop(target, None)
        return True

    def _origin(self, related: RequestId | None) -> tuple[Call | None, str]:
        """The call a message belongs to, or None and why not."""
        if related is not None:
            call = self._outbound.get(related)
            if call is None:
                return None, f"it relates to request {related!r}, which no client call in flight made"
            return call, ""
        if len(self._calls) == 1:
            # Nothing names the request, but only one call is in flight: it is the only possible cause.
            return next(iter(self._calls)), ""
        waiting = {c for c in self._inbound.values() if c is not None} & self._calls
        free = [c for c in self._calls if c not in waiting]
        if len(free) == 1 and free[0].caller is not None:
            # Every other call is itself waiting for the answer to a server request it was sent (a
            # parked call, a user thinking over an elicitation): the free one is the likely cause,
            # and it is taken only when all of them act for the same principal, so a wrong guess
            # can never show one principal's request to another.
            who = free[0].caller.principal_id
            if all(c.caller is not None and c.caller.principal_id == who for c in waiting):
                return free[0], ""
        return None, f"it names no request and {len(self._calls)} calls are in flight"

    def _log(self, params: Any, related: RequestId | None) -> None:
        call, why = self._origin(related)
        if call is None or call.caller is None:
            if related is None:  # ambiguous: worth telling the operator
                self._warn("dropped", f"upstream {self.upstream}: dropped a log message: {why or 'no client call'}")
            else:  # it belongs to a finished call or to the gateway's own request: nobody to tell
                log.debug("upstream %s: dropped a log message of request %r", self.upstream, related)
            return
        try:
            line = types.LoggingMessageNotificationParams.model_validate(params or {})
        except ValidationError:
            self._warn("dropped", f"upstream {self.upstream}: dropped a malformed log message")
            return
        if call._logs is None:
            if self._tg is None:
                return
            send, receive = anyio.create_memory_object_stream[types.LoggingMessageNotificationParams](LOG_QUEUE)
            call._logs = send
            self._tg.start_soon(_pump, call.caller, receive, call._flushed)
        try:
            call._logs.send_nowait(line)
        except anyio.WouldBlock:
            self._warn("dropped", f"upstream {self.upstream}: dropped log messages: {LOG_QUEUE} already queued")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the call ended in the meantime

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY) < WARN_EVERY:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._warned[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("%s%s", message, f" (and {more} more like it since the last report)" if more else "")

    # ---- the SDK's callbacks -----------------------------------------------------------------

    def caller_for(self, request_id: RequestId) -> Caller | None:
        """The caller to ask for a server request (the SDK's ``ClientRequestContext.request_id``)."""
        if request_id in self._inbound:
            noted = self._inbound[request_id]
            return noted.caller if noted is not None else None
        call = current_call.get()  # a 2026-07-28 input request, answered in the calling task
        return call.caller if call is not None else None

    async def _relay(
        self, context: Any, what: str, ask: Callable[[Caller], Awaitable[dict[str, Any]]], result: Any
    ) -> Any:
        caller = self.caller_for(context.request_id)
        if caller is None:
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"toolcrib cannot tell which client call this {what} belongs to; "
                "send it on the stream of the request it serves",
            )
        try:
            return result.model_validate(await ask(caller))
        except MCPError as exc:
            return exc.error
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The call it belongs to ended first (the server sent it, then the answer, at once).
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"toolcrib could not relay this {what}: the client call it belongs to has ended",
            )

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        """SDK ``sampling_callback``: ask the call's client; an ``ErrorData`` if there is none."""
        return await self._relay(
            context, "sampling request", lambda c: c.create_message(params), types.CreateMessageResult
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> Any:
        """SDK ``elicitation_callback``: ask the call's client; an ``ErrorData`` if there is none."""
        return await self._relay(context, "elicitation", lambda c: c.elicit(params), types.ElicitResult)

    async def roots(self, context: Any) -> Any:
        """SDK ``list_roots_callback``: ask the call's client; an ``ErrorData`` if there is none."""
        return await self._relay(context, "roots request", lambda c: c.list_roots(), types.ListRootsResult)


def _number(value: Any) -> float | None:
    """A JSON number as a finite float, or None (not a number, a boolean, or beyond a float's range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


async def _progressed(
    call: Call | None,
    callback: Callable[[float, float | None, str | None], Coroutine[Any, Any, None]],
    progress: float,
    total: float | None,
    message: Any,
) -> None:
    """Deliver one progress notification of a request of toolcrib's own; ``call`` (the call that
    sent it) waits for this in :meth:`Call.flushed` before its answer goes to the client."""
    try:
        await callback(progress, total, message if isinstance(message, str) else None)
    finally:
        if call is not None:
            call._progress_done()


async def _pump(
    caller: Caller, receive: MemoryObjectReceiveStream[types.LoggingMessageNotificationParams], done: anyio.Event
) -> None:
    """Deliver one call's log lines in order; ends when the call closed its queue and it is empty."""
    try:
        async with receive:
            async for line in receive:
                try:
                    await caller.log_message(line)
                except Exception:
                    log.debug("could not relay a log message", exc_info=True)
    finally:
        done.set()


class _Wrapped:
    """A transport stream seen through the back-channel: closing the wrapper closes the stream."""

    def __init__(self, backchannel: Backchannel, inner: Any) -> None:
        self._bc = backchannel
        self._inner = inner

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _RoutedRead(_Wrapped):
    """The transport's read stream as the SDK sees it, minus log lines (delivered here); sets
    ``closed`` at end of stream."""

    def __init__(self, backchannel: Backchannel, inner: Any, closed: anyio.Event) -> None:
        super().__init__(backchannel, inner)
        self._closed = closed

    async def receive(self) -> SessionMessage | Exception:
        while True:
            try:
                item: SessionMessage | Exception = await self._inner.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._closed.set()
                raise
            if not isinstance(item, SessionMessage) or self._bc.received(item):
                return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StopAsyncIteration from None


class _RecordedWrite(_Wrapped):
    """The transport's write stream, noting which call sent each request."""

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, types.JSONRPCRequest):
            params = honest_capabilities(message.params)
            if params is not message.params:  # assigning marks the field set: only when changed
                message.params = params
        self._bc.sent(item.message)
        await self._inner.send(item)
