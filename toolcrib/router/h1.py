"""A lean HTTP/1.1 client for the POSTs toolcrib frames itself on Streamable HTTP (the hot path).

:meth:`toolcrib.router.http_transport._Conn.exchange` sends a ``tools/call`` and, most of the
time, gets one JSON answer back. aiohttp's client spends ~195 us of CPU on such a request on the
benchmark machine (request and response objects, a payload writer, timers, tracing hooks); the
same exchange over a kept-alive socket with ``httptools`` (the llhttp parser uvicorn uses) costs
~100 us (``python -m benchmarks.h1_client``). :class:`Origin` does only that:

- ``http://`` URLs without user info (:meth:`Origin.serves`); anything else stays on aiohttp;
- one request per connection at a time, connections kept alive and reused (an idle one the server
  closed is noticed and dropped), at most :data:`MAX_IDLE` kept;
- the upstream's configured headers (its injected credentials) sent with every request, request
  headers overriding them by name as aiohttp merges them; header names and values checked as
  aiohttp checks them (:class:`ValueError` for CR, LF or NUL);
- cookies shared with the transport's aiohttp session (a load balancer's affinity cookie set on
  one path is sent on the other);
- bodies framed by ``Content-Length``, ``chunked`` or the end of the connection; ``gzip`` and
  ``deflate`` content decoded; a body read whole (:meth:`Response.read`) over :data:`MAX_BODY`
  fails the request (one streamed by ``iter_any`` is not capped as a whole, as over aiohttp);
- a streamed body (SSE) read with back-pressure: reading is paused while :data:`HIGH_WATER`
  bytes wait for the reader.

A response is used inside ``async with origin.post(...) as resp``; it offers what the transport
reads of an aiohttp response (``status``, ``headers``, ``read()``, ``content.iter_any()``). Leaving
the block before the body was read to its end closes the connection instead of reusing it.
Failures are :class:`OSError`: :class:`ConnectFailed` (wrapping the cause) when no connection could
be made, :class:`ConnectionError` when it broke or the server's answer was not HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import collections
import re
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http.cookies import BaseCookie
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict
from yarl import URL

MAX_BODY = 64 * 1024 * 1024
"""Bytes of a body read whole at most, on the wire and decoded; of one decoded piece of a streamed
body (the same cap as one SSE line over aiohttp)."""
MAX_IDLE = 32
"""Idle kept-alive connections per origin at most; more are closed when released."""
HIGH_WATER = 256 * 1024
"""Bytes of a streamed body waiting for its reader before the socket is paused."""
MAX_HEAD = 256 * 1024
"""Bytes received before an answer's head is complete (interim answers included) at most: llhttp
keeps every header byte, so an endless head would grow without bound (aiohttp stops at 8190 bytes
a line and 128 headers)."""
USER_AGENT = aiohttp.http.SERVER_SOFTWARE
"""The same ``User-Agent`` as the transport's aiohttp requests: one gateway, one name."""
_BAD_HEADER = re.compile(r"[\r\n\0]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Unasked(Exception):
    """A message the server began while no request waits for one (idle, or after the answer)."""


class UnsendableHeader(ValueError):
    """A header h1 will not write (:func:`check_headers`), raised before anything is sent: the
    transport leaves such a request, or an upstream configured with such a header, to aiohttp."""


class ConnectFailed(OSError):
    """No connection could be made (refused, timed out, host not found); ``__cause__`` says why."""


class _Connection(asyncio.Protocol):
    """One socket and the response being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.head: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.framed = False
        """True when the body's end is told by its framing (length or chunked), not by EOF."""
        self._wake: asyncio.Future[None] | None = None
        self._paused = False
        self._heading = True
        """The final answer's head is not complete yet: received bytes count against MAX_HEAD."""
        self._head_bytes = 0

    # ---- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101 (no HttpParserError): nothing toolcrib can read
            self._fail(ConnectionError("the server switched protocols (HTTP 101) instead of answering"))
            return
        except httptools.HttpParserError as exc:
            if self.complete and self.transport is not None:
                # more after the answer (another answer, garbage): the answer stands, the connection
                # that carried the rest is not reused
                self.keep_alive = False
                self.transport.close()
            elif isinstance(exc.__context__, _Unasked):
                self._fail(ConnectionError("the server sent an answer while no request was waiting"))
            else:
                self._fail(ConnectionError(f"the server's answer is not valid HTTP/1.1 ({exc})"))
            return
        if self._heading:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(ConnectionError(f"the server's answer head exceeded {MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        if self.head is not None and self.head.done() and not self.framed and not self.complete:
            self.complete = True  # a body that ends with the connection
            self._notify()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.head is not None and self.head.done() and not self.framed:
                self.complete = True
                self._notify()
            else:
                self._fail(ConnectionResetError("the server closed the connection before answering in full"))

    # ---- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head is None or self.complete:
            raise _Unasked  # stops the parser: see data_received

    def on_header(self, name: bytes, value: bytes) -> None:  # whole: httptools joins a header split across reads
        self.headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:
            self.headers = CIMultiDict()  # an interim answer (100 Continue): the real one follows
            return
        self._heading = False
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        self.framed = "Content-Length" in self.headers or "chunked" in encoding
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self.keep_alive = bool(self._parser.should_keep_alive())  # read now: llhttp resets it after the message
        self.complete = True
        self._notify()

    # ---- the reading side -----------------------------------------------------------------------

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: the awaiting request raises it
        self._notify()
        if self.transport is not None:
            self.transport.close()

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, None at its end; raises the connection's failure."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self._paused and self.buffered <= HIGH_WATER // 4 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None


class Response:
    """One HTTP answer: ``status``, ``headers`` (case-insensitive), the body by :meth:`read` or
    ``content.iter_any()`` (decoded when ``Content-Encoding`` is gzip or deflate)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self.content = self
        self._whole = False
        """Read by :meth:`read`: capped at MAX_BODY as a whole."""
        self._raw = 0
        self._decoded = 0
        self._started = False
        coding = self._coding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip"):
            self._decoder: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj()
        elif coding in ("", "identity"):
            self._decoder = None
        else:
            raise ConnectionError(f"the server answered with Content-Encoding {coding!r}, which toolcrib cannot read")

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive."""
        while (chunk := await self._conn.next_chunk()) is not None:
            if self._whole:
                self._raw += len(chunk)
                if self._raw > MAX_BODY:
                    raise ConnectionError(f"the server's answer exceeded {MAX_BODY} bytes")
            if self._decoder is not None:
                if self._decoder.eof:
                    continue  # bytes after the compressed stream: ignored, not kept (unused_data)
                if not self._started and chunk:
                    self._started = True
                    if self._coding == "deflate" and chunk[0] & 0xF != 8:  # no zlib header: raw deflate, as aiohttp
                        self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                room = MAX_BODY - self._decoded if self._whole else MAX_BODY  # whole: a gzip bomb
                try:
                    chunk = self._decoder.decompress(chunk, room + 1)
                except zlib.error as exc:  # an OSError, as the transport expects (aiohttp: ClientPayloadError)
                    raise ConnectionError(f"the server's answer is not valid {self._coding} ({exc})") from None
                if self._whole:
                    self._decoded += len(chunk)
                if len(chunk) > room or self._decoder.unconsumed_tail:
                    raise ConnectionError(f"the server's answer exceeded {MAX_BODY} bytes once decoded")
            if chunk:
                yield chunk

    async def read(self) -> bytes:
        """The whole body (at most :data:`MAX_BODY` bytes, on the wire and decoded)."""
        self._whole = True
        parts = [chunk async for chunk in self.iter_any()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def finished(self) -> bool:
        """The body was read to its end (the connection may carry another request)."""
        conn = self._conn
        return conn.complete and not conn.chunks and conn.error is None


class Origin:
    """Kept-alive HTTP/1.1 connections to the origin of ``url`` (see the module docstring)."""

    def __init__(
        self, url: str, headers: Mapping[str, str], connect_timeout: float, http: aiohttp.ClientSession
    ) -> None:
        self.url = URL(url)
        self._host = self.url.raw_host or ""
        self._port = self.url.port or 80
        self._target = self.url.raw_path_qs  # percent-encoded, as aiohttp sends it
        self._defaults = CIMultiDict(headers)
        check_headers(self._defaults)
        for framing in ("Content-Length", "Transfer-Encoding"):  # the request is framed here, once
            self._defaults.popall(framing, None)
        self._defaults.setdefault("Host", self.url.host_port_subcomponent or self._host)  # as aiohttp: IDNA
        self._defaults.setdefault("User-Agent", USER_AGENT)
        self._names = {name.lower() for name in self._defaults}
        self._block = "".join(f"{k}: {v}\r\n" for k, v in self._defaults.items())
        """The configured headers as written on every request (built once)."""
        self._timeout = connect_timeout
        self._jar = http.cookie_jar
        self._idle: list[_Connection] = []

    @staticmethod
    def serves(url: str) -> bool:
        """True for a plain ``http://`` URL with no user info (https and the rest stay on aiohttp,
        as does a URL that does not parse: aiohttp fails each request on it, as before)."""
        try:
            parts = urlsplit(url)
            URL(url).port  # noqa: B018  # raises for a port out of range, as Origin would
        except ValueError:
            return False
        return parts.scheme == "http" and parts.username is None and parts.password is None and bool(parts.hostname)

    @asynccontextmanager
    async def post(self, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        """POST ``body`` with ``headers`` (over the configured ones); the answer, its head read.

        Raises :class:`UnsendableHeader` for a header that cannot be sent, :class:`ConnectFailed` when no
        connection could be made, :class:`ConnectionError` when the exchange broke."""
        check_headers(headers)
        extra: Mapping[str, str] = headers
        if len(self._jar):
            cookies = self._jar.filter_cookies(self.url)
            if cookies:
                extra = {k: v for k, v in headers.items() if k.lower() != "cookie"}
                extra["Cookie"] = self._cookie_header(headers, cookies)
        if self._names.isdisjoint(name.lower() for name in extra):
            head = self._block + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        else:  # a request header replaces a configured one of the same name, as aiohttp merges them
            merged = self._defaults.copy()
            merged.update(extra)
            head = "".join(f"{k}: {v}\r\n" for k, v in merged.items())
        head += f"Content-Length: {len(body)}\r\n"
        # as aiohttp encodes: UTF-8, a lone surrogate (a client's tool name may hold one) dropped
        message = f"POST {self._target} HTTP/1.1\r\n{head}\r\n".encode("utf-8", "ignore") + body
        conn = await self._connection()
        reusable = False
        try:
            conn.head = asyncio.get_running_loop().create_future()
            assert conn.transport is not None
            conn.transport.write(message)
            await conn.head
            self._cookies(conn.headers)
            resp = Response(conn)
            yield resp
            reusable = resp.finished and conn.keep_alive
        finally:
            if reusable and not conn.closed and len(self._idle) < MAX_IDLE:
                conn._reset()
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()

    def _cookie_header(self, headers: Mapping[str, str], cookies: BaseCookie[str]) -> str:
        """The jar's ``cookies`` merged into the request's or configured ``Cookie`` header (a
        credential), the jar's winning by name, as aiohttp's ``ClientRequest.update_cookies`` merges
        them; the given pairs are kept as written (``name=value``, split at ``;``)."""
        given = next((v for k, v in headers.items() if k.lower() == "cookie"), None) or self._defaults.get("Cookie")
        pairs: dict[str, str] = {}
        for part in (given or "").split(";"):
            pair = part.strip()
            name = pair.partition("=")[0].strip()
            if name:
                pairs[name] = pair
        for name, morsel in cookies.items():
            pairs[name] = f"{name}={morsel.coded_value}"
        return "; ".join(pairs[name] for name in sorted(pairs))  # sorted by name, as aiohttp writes them

    def _cookies(self, headers: CIMultiDict[str]) -> None:
        values = headers.getall("Set-Cookie", [])
        if values:  # as aiohttp's client takes them (its lenient parser, its limits)
            self._jar.update_cookies_from_headers(values, self.url)

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            transport = conn.transport
            if transport is None or conn.closed or transport.is_closing():
                continue
            if conn.status or conn.chunks or conn.error is not None:  # the server sent something unasked
                transport.close()
                continue
            return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                transport, conn = await loop.create_connection(_Connection, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}") from exc
        conn.transport = transport
        return conn

    def close(self) -> None:
        """Close every idle connection (one in use closes when its request ends)."""
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise :class:`UnsendableHeader` for a header name that is not an RFC 9110 token, or a name or
    value holding CR, LF or NUL (it would split or end the request: header injection)."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise UnsendableHeader(f"invalid HTTP header name {name!r}")
        if _BAD_HEADER.search(value):
            raise UnsendableHeader(f"invalid character in the value of HTTP header {name!r}")
