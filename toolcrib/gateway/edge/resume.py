"""Resumable SSE for 2025-11-25 sessions: event ids, the priming event, a bounded replay buffer.

MCP 2025-11-25 basic/transports ("Sending Messages to the Server" item 6, "Resumability and
Redelivery"; SEP-1699): a server that initiates an SSE stream SHOULD first send a *priming event*
(an event id and empty data) so the client can reconnect with ``Last-Event-ID``; it MAY close the
*connection* without ending the *stream*, sending a ``retry`` field first; event ids MUST be unique
across the session's streams and SHOULD say which stream they belong to; a client resumes with
``GET`` and ``Last-Event-ID``, and the server replays only that stream's later messages.

toolcrib does this for sessions whose negotiated version is 2025-11-25 or later (older clients
cannot read an empty-data event; the SDK draws the same line), on every stream that is SSE anyway:
a POST answered with JSON pays nothing. Event ids are ``<stream>-<seq>``: ``stream`` is 16 random
hex digits per stream (so another session's ids are unknown here), ``seq`` counts from 0 (the
priming event). A POST stream's messages are read off the call by a task of their own, so when the
client drops the connection the call goes on (2025-11-25: disconnection is not cancellation) and
what it still sends is kept for a resume, which replays after the named event and then follows the
stream to its response.

Caps, per session, all streams together (:class:`Replay`): at most ``MAX_EVENTS`` (1000) events and
``MAX_BYTES`` (4 MiB) of frames; an event is kept at most ``MAX_AGE`` (120 s). Past a cap the
oldest events go first (whole finished streams before events of live ones); a ``Last-Event-ID``
whose successors are gone is refused (HTTP 410), as is one that names no kept stream (unknown,
another session's, or expired); one that is not of toolcrib's shape gets 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from aiohttp import web

RETRY_MS = 1000
"""The ``retry`` field (milliseconds) of every priming event: how long a client waits to reconnect."""
MAX_EVENTS = 1000
MAX_BYTES = 4 * 1024 * 1024
MAX_AGE = 120.0
LAST_EVENT_ID = "Last-Event-ID"
EVENT_ID = re.compile(r"([0-9a-f]{16})-(0|[1-9][0-9]{0,17})")


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(stream, seq)`` of an event id toolcrib issues (``<16 lowercase hex>-<decimal seq>``, no
    leading zeros, no whitespace); None for anything else."""
    match = EVENT_ID.fullmatch(value)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


class Refused(Exception):
    """A ``Last-Event-ID`` that cannot be resumed: ``status`` (400 or 410) and a one-line ``text``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class StreamLog:
    """One SSE stream's recent events, ``(seq, produced at, frame)`` in order.

    ``reader`` is the token of the connection that currently writes this stream (at most one: a
    message is never sent on two connections); ``changed`` is replaced (after being set) whenever
    something happens, so any number of waiters wake.
    """

    def __init__(self, standalone: bool) -> None:
        self.id = secrets.token_hex(8)
        self.standalone = standalone
        self.events: deque[tuple[int, float, bytes]] = deque()
        self.last = 0  # the priming event is seq 0
        self.dropped = -1  # highest seq trimmed (replay after k needs k >= dropped)
        self.done = False
        self.reader: object | None = None
        self.changed = asyncio.Event()
        self.touched = time.monotonic()

    def priming(self) -> bytes:
        return (
            f"id: {self.id}-0\nretry: {RETRY_MS}\ndata:\n\n".encode()
        )  # "data:" (no space): same event, and a naive "data: " line reader skips it

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The kept events after ``seq``, oldest first."""
        return [(s, frame) for s, _, frame in self.events if s > seq]

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Replay:
    """A session's resumable streams, under the caps in the module docstring.

    ``spawn`` starts a background task (the transport's task group ``start_soon``): it reads a POST
    stream's messages so they are kept after its client is gone.
    """

    def __init__(
        self,
        spawn: Callable[..., Any],
        max_events: int = MAX_EVENTS,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE,
    ) -> None:
        self.spawn = spawn
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.streams: dict[str, StreamLog] = {}
        self.count = 0
        self.size = 0

    def open(self, standalone: bool = False) -> StreamLog:
        self.expire(time.monotonic())
        log = StreamLog(standalone)
        self.streams[log.id] = log
        return log

    def append(self, log: StreamLog, data: str) -> bytes:
        """Record one JSON-RPC message (its JSON text) on ``log``; its SSE frame."""
        log.last += 1
        frame = f"id: {log.id}-{log.last}\nevent: message\ndata: {data}\n\n".encode()
        now = time.monotonic()
        log.events.append((log.last, now, frame))
        log.touched = now
        self.count += 1
        self.size += len(frame)
        self.expire(now)
        while self.count > self.max_events or self.size > self.max_bytes:
            self._trim_one()
        log.wake()
        return frame

    def finish(self, log: StreamLog) -> None:
        log.done = True
        log.touched = time.monotonic()
        log.wake()

    def find(self, header: str) -> tuple[StreamLog, int]:
        """The stream and the seq of the event a ``Last-Event-ID`` names; :class:`Refused` otherwise."""
        parsed = parse_event_id(header.strip())
        if parsed is None:
            raise Refused(400, f"Bad Request: Last-Event-ID {header[:80]!r} is not an event id this server issued\n")
        self.expire(time.monotonic())
        log = self.streams.get(parsed[0])
        seq = parsed[1]
        if log is None or seq > log.last:
            raise Refused(410, "Gone: Last-Event-ID names no stream this session still keeps; send the request again\n")
        if seq < log.dropped:
            raise Refused(
                410, "Gone: events after this Last-Event-ID were dropped (buffer cap); send the request again\n"
            )
        return log, seq

    def expire(self, now: float) -> None:
        """Trim events older than ``max_age``; forget finished streams with nothing left to replay."""
        horizon = now - self.max_age
        for sid, log in list(self.streams.items()):
            while log.events and log.events[0][1] < horizon:
                self._drop_head(log)
            if log.done and not log.events and log.touched < horizon:
                del self.streams[sid]

    def close(self) -> None:
        """The session ended: wake every reader (they end) and forget everything."""
        for log in self.streams.values():
            log.done = True
            log.reader = None
            log.wake()
        self.streams.clear()
        self.count = self.size = 0

    def _trim_one(self) -> None:
        finished = [log for log in self.streams.values() if log.done and log.events]
        if finished:
            victim = min(finished, key=lambda lg: lg.touched)
            while victim.events:
                self._drop_head(victim)
            del self.streams[victim.id]
            return
        live = [log for log in self.streams.values() if log.events]
        self._drop_head(min(live, key=lambda lg: lg.events[0][1]))

    def _drop_head(self, log: StreamLog) -> None:
        seq, _, frame = log.events.popleft()
        log.dropped = seq
        self.count -= 1
        self.size -= len(frame)


KEEPALIVE = 15.0


async def pump(resp: web.StreamResponse, log: StreamLog, cursor: int, token: object) -> None:
    """Write ``log``'s events after ``cursor`` to ``resp`` until the stream is done, another
    connection takes it over (``log.reader`` changes), or events it still owed were trimmed.
    Raises what ``resp.write`` raises when the client is gone."""
    while log.reader is token and cursor >= log.dropped:
        waiter, done = log.changed, log.done
        for seq, frame in log.after(cursor):
            if log.reader is not token:
                return
            await resp.write(frame)
            cursor = seq
        if done:
            return
        with anyio.move_on_after(KEEPALIVE) as timer:
            await waiter.wait()
        if timer.cancelled_caught:
            await resp.write(b": keepalive\n\n")


async def serve(request: web.Request, log: StreamLog, cursor: int, headers: dict[str, str]) -> web.StreamResponse:
    """Answer a ``GET`` whose ``Last-Event-ID`` names event ``cursor`` of POST stream ``log``: the
    later events, then the rest of the stream up to its response; this connection takes the stream
    over from any earlier one."""
    token = object()
    log.reader = token
    log.wake()  # an earlier connection still writing this stream stops
    resp = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(request)
    try:
        with contextlib.suppress(ConnectionError):
            await resp.write(f"retry: {RETRY_MS}\n\n".encode())
            await pump(resp, log, cursor, token)
            await resp.write_eof()
    finally:
        if log.reader is token:
            log.reader = None
    return resp
