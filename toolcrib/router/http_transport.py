"""A Streamable HTTP client transport on aiohttp, for the SDK's ``Client``.

The SDK's own transport (httpx2) costs about 1.5 ms of CPU per call here; this one sends each
JSON-RPC message as one POST on a pooled aiohttp connection and feeds the answers back to the
SDK session, which keeps doing the protocol work (both eras, handshake, discovery).

What it implements of the transport's contract:
- ``Mcp-Session-Id`` captured from the ``initialize`` answer and sent afterwards; ``DELETE`` on close;
- ``MCP-Protocol-Version`` remembered from the per-message headers the session stamps, and those
  headers (``Mcp-Method``, ``Mcp-Name``, ...) applied to each POST;
- JSON and SSE answers; a request's SSE stream that ends before its answer is resumed with a GET
  carrying ``Last-Event-ID`` after the server's ``retry`` delay (the GET stream is reopened the same
  way); a JSON-RPC error in a non-2xx body is surfaced as is, other failures
  become a JSON-RPC error for that request so no caller waits forever;
- a 2026-07-28 request is cancelled by aborting its POST (the server sees the stream close);
- for 2025-11-25 sessions, the GET stream for server-initiated messages once initialized (reopened
  when it ends);
- a 404 to a request carrying the session id (the session expired or the server restarted) fails
  that request with ``CONNECTION_CLOSED`` and ends the read stream, so the supervisor re-initializes;
- every message read from a request's own SSE stream carries
  ``ServerMessageMetadata(related_request_id=<that request's id>)``: the spec has the server send
  there only what relates to that request (basic/transports, "Sending Messages to the Server"),
  which is how :mod:`toolcrib.router.backchannel` routes it to the call that caused it. Messages
  from the GET stream carry no relation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ClientMessageMetadata, ServerMessageMetadata, SessionMessage
from mcp_types.jsonrpc import jsonrpc_message_adapter
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from toolcrib.gateway.trust.matchers import loads_json
from toolcrib.router.backchannel import TransportFailure
from toolcrib.router.h1 import ConnectFailed, Origin, UnsendableHeader

log = logging.getLogger("toolcrib.upstream.http")

SESSION = "Mcp-Session-Id"
VERSION = "mcp-protocol-version"
MAX_EVENT_BYTES = 64 * 1024 * 1024
SESSION_GONE = "the server ended the session (HTTP 404)"
"""Prefix of the ``CONNECTION_CLOSED`` error for a request the server refused with 404: it was not processed."""
Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


DEFAULT_RETRY = 1.0
"""Seconds before resuming a stream whose server gave no ``retry`` field."""
MAX_RESUMES = 5
"""Resumptions of one request's stream in a row that bring no new event before the request fails."""


class _Stream:
    """What resuming one SSE stream needs: the last event id seen and the server's ``retry`` (seconds)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry = DEFAULT_RETRY


class Answer(Protocol):
    """What this transport reads of an HTTP answer: an aiohttp ``ClientResponse`` or an
    :class:`~toolcrib.router.h1.Response`."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> Any:
        """``iter_any()``: the body's pieces as they arrive."""

    async def read(self) -> bytes: ...


class _Conn:
    def __init__(
        self, http: aiohttp.ClientSession, url: str, read: MemoryObjectSendStream[Any], h1: Origin | None = None
    ) -> None:
        self.http = http
        self.h1 = h1
        """The lean client for :meth:`exchange` (plain ``http://`` URLs), else None: all on aiohttp."""
        self.url = url
        self.read = read
        self.session_id: str | None = None
        self.version: str | None = None
        self.posts: dict[Any, anyio.CancelScope] = {}
        self.get_started = False
        self.session_lost = False
        self.get_stream = _Stream()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self.session_id:
            h[SESSION] = self.session_id
        if self.version:
            h[VERSION] = self.version
        if extra:
            h.update(extra)
        return h

    async def deliver(self, raw: bytes | str, rid: Any = None, *, related: Any = None) -> None:
        """Parse one message and hand it to the session; ``related`` is the request whose stream it came on."""
        try:
            message = jsonrpc_message_adapter.validate_json(raw, by_name=False)
        except ValidationError as exc:
            if rid is None:
                log.debug("dropped an unparsable message from %s", self.url)
                return
            await self.fail(rid, types.PARSE_ERROR, f"unparsable answer from the server: {exc.errors()[0]['msg']}")
            return
        meta = ServerMessageMetadata(related_request_id=related) if related is not None else None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.read.send(SessionMessage(message, metadata=meta))

    async def fail(self, rid: Any, code: int, message: str) -> None:
        """Fail request ``rid`` with this transport's own error (a :class:`TransportFailure`)."""
        err = types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.read.send(TransportFailure(err))

    async def post(self, msg: SessionMessage) -> None:
        message = msg.message
        rid = message.id if isinstance(message, types.JSONRPCRequest) else None
        meta = msg.metadata if isinstance(msg.metadata, ClientMessageMetadata) else None
        extra = meta.headers if meta is not None else None
        if isinstance(message, types.JSONRPCRequest) and message.method == "initialize":
            self.version = None
        elif extra:
            stamped = next((v for k, v in extra.items() if k.lower() == VERSION), None)
            if stamped is not None:
                self.version = stamped
        body = message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            async with self.http.post(self.url, data=body, headers=self.headers(extra)) as resp:
                if isinstance(message, types.JSONRPCRequest) and message.method == "initialize":
                    self.session_id = resp.headers.get(SESSION) or self.session_id
                if rid is None:
                    await resp.read()
                    return
                await self._answer(resp, rid)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if rid is not None:
                await self._unreachable(rid, exc)

    async def exchange(
        self, rid: str, body: bytes, answer: Callable[[dict[str, Any]], bool], extra: Mapping[str, str] | None = None
    ) -> None:
        """POST one request framed by toolcrib (:mod:`toolcrib.router.wire`) from the calling task.

        A JSON answer carrying ``rid`` is parsed once and given to ``answer``; anything else (an SSE
        stream, an HTTP error, a lost session, a failed connection) is delivered on the read stream
        exactly as :meth:`post` delivers it, marked as related to ``rid``. ``extra``: the request's
        own headers (a 2026-07-28 request's ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name``...).
        """
        headers = self.headers(extra)
        try:
            if self.h1 is not None:
                # A header h1 refuses is refused before anything is sent: left to aiohttp, as before.
                with contextlib.suppress(UnsendableHeader):
                    async with self.h1.post(body, headers) as resp:
                        if not 300 <= resp.status < 400:
                            await self._exchanged(resp, rid, answer)
                            return
                    # A redirect (the server ran nothing): made again on aiohttp, which follows it.
            async with self.http.post(self.url, data=body, headers=headers) as resp:
                await self._exchanged(resp, rid, answer)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._unreachable(rid, exc)

    async def _exchanged(self, resp: Answer, rid: str, answer: Callable[[dict[str, Any]], bool]) -> None:
        if resp.status != 200 or not resp.headers.get("Content-Type", "").lower().startswith("application/json"):
            await self._answer(resp, rid)
            return
        raw = await resp.read()
        try:
            data = loads_json(raw)
        except (ValueError, RecursionError):
            await self.deliver(raw, rid)  # the general parser says what is wrong with it
            return
        if isinstance(data, dict) and data.get("id") == rid:
            answer(data)
        else:
            await self.fail(rid, types.INVALID_REQUEST, "the server answered with another request's id")

    async def _unreachable(self, rid: Any, exc: BaseException) -> None:
        """Fail request ``rid`` whose POST could not be made or read (``CONNECTION_CLOSED``, one line why)."""
        reason = connect_reason(exc)
        text = f"HTTP request to the server failed: {exc}" if reason is None else cannot_connect(self.url, reason)
        await self.fail(rid, types.CONNECTION_CLOSED, text)

    async def _answer(self, resp: Answer, rid: Any) -> None:
        ctype = resp.headers.get("Content-Type", "").lower()
        if resp.status == 202:
            await self.fail(rid, types.INVALID_REQUEST, "server answered a request with 202 Accepted")
        elif resp.status == 404 and self.session_id is not None:
            # basic/transports, "Session Management": a 404 to a request carrying a session id means
            # the session is gone (server restarted or expired it); the client must re-initialize.
            await resp.read()
            await self.fail(rid, types.CONNECTION_CLOSED, f"{SESSION_GONE}; reconnecting")
            self.gone()
        elif resp.status >= 400:
            body = await resp.read()
            if ctype.startswith("application/json"):
                with contextlib.suppress(ValidationError):
                    parsed = jsonrpc_message_adapter.validate_json(body, by_name=False)
                    if isinstance(parsed, types.JSONRPCError):
                        parsed = types.JSONRPCError(jsonrpc="2.0", id=rid, error=parsed.error)
                        await self.read.send(SessionMessage(parsed))
                        return
            if resp.status == 404:
                await self.fail(rid, types.METHOD_NOT_FOUND, "Not Found")
            else:
                await self.fail(rid, types.INTERNAL_ERROR, f"server returned HTTP {resp.status}")
        elif ctype.startswith("application/json"):
            await self.deliver(await resp.read(), rid)
        elif ctype.startswith("text/event-stream"):
            await self.events(resp, rid, resume=True)
        else:
            await self.fail(rid, types.INVALID_REQUEST, f"unexpected content type {ctype!r} from the server")

    async def events(
        self, resp: Answer, rid: Any = None, stream: _Stream | None = None, *, resume: bool = False
    ) -> None:
        """Read an SSE body; return once the answer to ``rid`` arrived (or the stream ended for good).

        With ``resume``, a request's stream that ends before its answer, after the server gave it an
        event id, is resumed: after the server's ``retry`` delay (else :data:`DEFAULT_RETRY`), a GET with
        ``Last-Event-ID`` (basic/transports, "Resumability and Redelivery"; SEP-1699), at most
        :data:`MAX_RESUMES` times in a row without progress. Without an event id it cannot be resumed.
        """
        stream = stream or _Stream()
        answered = await self._read(resp, rid, stream)
        idle = 0
        while resume and rid is not None and not answered and stream.last_id is not None and idle < MAX_RESUMES:
            idle += 1
            seen = stream.last_id
            await anyio.sleep(stream.retry)
            answered = await self._resume(rid, stream)
            if stream.last_id != seen:
                idle = 0
        if rid is not None and not answered:
            await self.fail(rid, types.CONNECTION_CLOSED, "the server closed the SSE stream before answering")

    async def _resume(self, rid: Any, stream: _Stream) -> bool:
        """One GET resuming ``stream`` after its last event id; True once ``rid`` was answered."""
        headers = self.headers()
        headers["Accept"] = "text/event-stream"
        headers["Last-Event-ID"] = stream.last_id or ""
        log.debug("resuming the SSE stream of request %r at event %r", rid, stream.last_id)
        async with self.http.get(self.url, headers=headers, timeout=aiohttp.ClientTimeout()) as resp:
            if resp.status != 200 or not resp.headers.get("Content-Type", "").lower().startswith("text/event-stream"):
                log.debug("%s refused to resume a stream: HTTP %d", safe_url(self.url), resp.status)
                stream.last_id = None
                return False
            return await self._read(resp, rid, stream)

    async def _read(self, resp: Answer, rid: Any, stream: _Stream) -> bool:
        """Deliver the messages of one SSE body (noting event ids and ``retry``); True once ``rid`` was answered."""
        data: list[str] = []
        event = "message"
        async for line in _lines(resp):
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].removeprefix(" ")
                if "\0" not in event_id:  # the SSE rule: an id with NUL is ignored
                    stream.last_id = event_id
            elif line.startswith("retry:"):
                value = line[6:].strip()
                if value.isdigit():
                    stream.retry = int(value) / 1000
            elif not line:
                text = "\n".join(data)
                if text.strip() and event == "message":
                    await self.deliver(text, related=rid)
                    if rid is not None and _answers(text, rid):
                        return True
                data, event = [], "message"
        return False

    def gone(self) -> None:
        """The connection is lost for good (session ended): end the read stream, so the supervisor
        notices at once and reconnects with a fresh ``initialize``."""
        self.session_lost = True
        self.read.close()

    async def listen(self) -> None:
        """The 2025-11-25 GET stream: server-initiated requests and notifications.

        A stream that ends is reopened (with backoff, 0.5 s doubling to 5 s), which is also how a
        restarted server is noticed while idle: its 404 to the old session id ends the connection.
        Any other refusal (405: the server offers no GET stream) ends the attempts.
        """
        delay = 0.5
        while not self.session_lost:
            try:
                headers = self.headers()
                headers["Accept"] = "text/event-stream"
                if self.get_stream.last_id is not None:
                    headers["Last-Event-ID"] = self.get_stream.last_id
                async with self.http.get(self.url, headers=headers, timeout=aiohttp.ClientTimeout()) as resp:
                    if resp.status == 404 and self.session_id is not None:
                        log.info("%s ended the session (HTTP 404 on the GET stream); reconnecting", safe_url(self.url))
                        self.gone()
                        return
                    if resp.status != 200:
                        log.debug("GET stream of %s refused: HTTP %d", self.url, resp.status)
                        return
                    opened = anyio.current_time()
                    await self.events(resp, stream=self.get_stream)
                    if anyio.current_time() - opened > 30:
                        delay = 0.5  # a stream that lasted is a healthy one: reopen it promptly
            except (aiohttp.ClientError, OSError) as exc:
                log.debug("GET stream of %s ended: %s", self.url, exc)
            await anyio.sleep(max(delay, self.get_stream.retry if self.get_stream.last_id else 0))
            delay = min(delay * 2, 5.0)


def cannot_connect(url: str, reason: str) -> str:
    """``cannot connect to URL (reason)``, the one line an operator sees for an unreachable upstream;
    the URL is shown without user info or query (they may hold credentials)."""
    return f"cannot connect to {safe_url(url)} ({reason})"


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment, for logs."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def connect_reason(exc: BaseException) -> str | None:
    """Why a connection could not be made (``connection refused``, ``host name not found``,
    ``TLS certificate not trusted``, ``timed out``, ...), or None if ``exc`` is not a failure to connect.

    Knows aiohttp's connector errors and httpx's ``ConnectError`` / ``ConnectTimeout`` (by name, as the
    SDK's SSE client may use either httpx package), and looks through their causes for the OS error.
    """
    is_connect = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | ConnectFailed) or type(
        exc
    ).__name__ in ("ConnectError", "ConnectTimeout")
    if not is_connect:
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
            return "TLS certificate not trusted"
        if isinstance(current, aiohttp.ClientConnectorSSLError | ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(current, aiohttp.ClientConnectorDNSError | socket.gaierror):
            return "host name not found"
        if (
            isinstance(current, TimeoutError | aiohttp.ConnectionTimeoutError)
            or type(current).__name__ == "ConnectTimeout"
        ):
            return "timed out"
        if isinstance(current, aiohttp.ClientConnectorError) and current.os_error.errno:
            return os.strerror(current.os_error.errno).lower()
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno).lower()
        current = current.__cause__ or current.__context__
    return "connection failed"


async def _lines(resp: Answer) -> AsyncIterator[str]:
    """Lines of a body, however long (aiohttp's line reader stops at 64 KiB); linear in the size."""
    pending: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        if b"\n" not in chunk:
            pending.append(chunk)
            size += len(chunk)
            if size > MAX_EVENT_BYTES:
                raise aiohttp.ClientPayloadError(f"an SSE line exceeded {MAX_EVENT_BYTES} bytes")
            continue
        parts = chunk.split(b"\n")
        pending.append(parts[0])
        yield b"".join(pending).rstrip(b"\r").decode("utf-8", "replace")
        for part in parts[1:-1]:
            yield part.rstrip(b"\r").decode("utf-8", "replace")
        pending, size = [parts[-1]], len(parts[-1])
    tail = b"".join(pending)
    if tail:
        yield tail.rstrip(b"\r").decode("utf-8", "replace")


def _answers(text: str, rid: Any) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("id") == rid and ("result" in data or "error" in data)


@asynccontextmanager
async def aiohttp_transport(
    url: str, headers: Mapping[str, str], *, timeout: float, on_conn: Callable[[_Conn], None] | None = None
) -> AsyncIterator[Streams]:
    """An SDK ``Transport``: ``async with`` it to get the (read, write) stream pair. ``on_conn`` is
    given the connection, for requests toolcrib frames itself (:meth:`_Conn.exchange`)."""
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](256)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](256)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
    try:
        async with aiohttp.ClientSession(headers=dict(headers), connector=connector, timeout=client_timeout) as http:
            h1 = None
            if Origin.serves(url):
                with contextlib.suppress(UnsendableHeader):  # a configured header h1 refuses: all on aiohttp
                    h1 = Origin(url, headers, timeout, http)
            conn = _Conn(http, url, read_send, h1)
            if on_conn is not None:
                on_conn(conn)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_writer, conn, write_recv, tg)
                try:
                    yield read_recv, write_send
                finally:
                    tg.cancel_scope.cancel()
            if conn.h1 is not None:
                conn.h1.close()
            if conn.session_id:
                with anyio.move_on_after(2), contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.delete(url, headers=conn.headers()):
                        pass
    finally:
        for stream in (read_send, read_recv, write_send, write_recv):
            stream.close()


async def _writer(conn: _Conn, write_recv: MemoryObjectReceiveStream[SessionMessage], tg: anyio.abc.TaskGroup) -> None:
    async with write_recv:
        async for msg in write_recv:
            message = msg.message
            if isinstance(message, types.JSONRPCRequest):
                scope = anyio.CancelScope()
                conn.posts[message.id] = scope
                tg.start_soon(_run_post, conn, msg, scope)
                continue
            if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
                target = (message.params or {}).get("requestId")
                if conn.version in MODERN_PROTOCOL_VERSIONS:
                    scope_of = conn.posts.get(target)
                    if scope_of is not None:
                        scope_of.cancel()
                    continue
            await conn.post(msg)
            if (
                isinstance(message, types.JSONRPCNotification)
                and message.method == "notifications/initialized"
                and not conn.get_started
            ):
                conn.get_started = True
                tg.start_soon(conn.listen)


async def _run_post(conn: _Conn, msg: SessionMessage, scope: anyio.CancelScope) -> None:
    rid = msg.message.id if isinstance(msg.message, types.JSONRPCRequest) else None
    try:
        with scope:
            await conn.post(msg)
    finally:
        if conn.posts.get(rid) is scope:
            del conn.posts[rid]
