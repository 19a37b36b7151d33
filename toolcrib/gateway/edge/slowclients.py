"""Slow-client limits for the aiohttp server: a header timeout and an idle keep-alive timeout.

aiohttp reads a request head for as long as the client keeps the socket open, so a few hundred
sockets that trickle one header line every few seconds ("slowloris") hold their connections
forever. :func:`apply_client_timeouts` makes the server close:

- a connection whose request head (request line and headers, up to the blank line) is not complete
  ``header_timeout`` seconds after the connection opened, or, on a keep-alive connection, after the
  first byte of the next request arrived (the rule of nginx's ``client_header_timeout`` and
  Apache's ``mod_reqtimeout``); trickling bytes does not extend the deadline;
- a keep-alive connection idle (no request in progress, no head started) for ``idle_timeout``
  seconds (aiohttp's own ``keepalive_timeout``, which also covers a connection that never sends).

A request whose head has arrived is never cut by these timers, however long its handler or its
response stream (an SSE ``GET``) runs; body reads are bounded by the guard's body cap, not here.

Hook: aiohttp builds one :class:`aiohttp.web_protocol.RequestHandler` per connection from the
runner's :class:`aiohttp.web.Server`; after ``runner.setup()`` this module makes that server build
:class:`HeadTimeoutHandler` instead, which arms a timer in ``connection_made`` and disarms it when
the parser has produced the request's message (aiohttp 3.14's ``web_protocol``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("toolcrib.edge.slowclients")


class HeadTimeoutHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus a deadline for each request head (seconds)."""

    __slots__ = ("_head_count", "_head_handle", "_head_timeout")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_handle: asyncio.TimerHandle | None = None
        self._head_count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        idle = self._waiting_for_head()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # a whole head was parsed (or refused with a 400)
        elif idle and data and self._head_handle is None:
            self._arm()  # the first bytes of the next request on a keep-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm(self) -> None:
        self._head_count = self._request_count
        self._head_handle = self._loop.call_later(self._head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _expired(self) -> None:
        self._head_handle = None
        if self._request_count == self._head_count and self._waiting_for_head():
            log.debug("closed a connection whose request head took over %.0f s", self._head_timeout)
            self.force_close()


class _TimeoutServer(web.Server):
    """A :class:`web.Server` whose connections are :class:`HeadTimeoutHandler` s."""

    head_timeout: float

    def __call__(self) -> RequestHandler:
        return HeadTimeoutHandler(self, loop=self._loop, head_timeout=self.head_timeout, **self._kwargs)


def apply_client_timeouts(runner: web.BaseRunner, *, header_timeout: float, idle_timeout: float) -> None:
    """Make ``runner``'s server close slow and idle connections (both in seconds, > 0).

    Call after ``await runner.setup()`` and before any site starts, e.g. ``apply_client_timeouts(
    runner, header_timeout=config.gateway.header_timeout, idle_timeout=config.gateway.idle_timeout)``.
    Raises ValueError for a non-positive timeout and RuntimeError when the runner is not set up.
    """
    if not header_timeout > 0 or not idle_timeout > 0:
        raise ValueError("header_timeout and idle_timeout must be positive numbers of seconds")
    server = runner.server
    if server is None or type(server) not in (web.Server, _TimeoutServer):
        raise RuntimeError("call apply_client_timeouts after `await runner.setup()`, on an aiohttp AppRunner")
    server._kwargs["keepalive_timeout"] = idle_timeout
    server.__class__ = _TimeoutServer
    assert isinstance(server, _TimeoutServer)
    server.head_timeout = header_timeout
