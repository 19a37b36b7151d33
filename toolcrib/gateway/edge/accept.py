"""Content negotiation for ``POST /mcp`` and ``GET /mcp``: which of JSON and SSE a client accepts.

Streamable HTTP (MCP 2025-11-25, "Sending Messages to the Server"): a client lists
``application/json`` and ``text/event-stream`` in ``Accept``, and the server answers a request with
one of them. toolcrib is lenient where the spec is strict and strict where it must be:

- both acceptable (or no ``Accept`` at all, which RFC 9110 section 12.5.1 reads as ``*/*``): JSON
  when the response is all there is, SSE as soon as anything must be sent first;
- only ``application/json``: never SSE; request-scoped notifications (progress, logging) are
  dropped, server-to-client requests go to the session's GET stream when it has one, and the final
  response is sent as JSON;
- only ``text/event-stream``: SSE, also for a response that is all there is;
- neither: 406 with a one-line message.

Media ranges (``*/*``, ``application/*``, ``text/*``) count, parameters other than ``q`` are
ignored, and ``q=0`` means "not acceptable" (RFC 9110 section 12.4.2). A malformed element is
skipped, never an error.
"""

from __future__ import annotations

import functools
from typing import Literal

JSON = "application/json"
SSE = "text/event-stream"
Mode = Literal["either", "json", "sse", "none"]
NOT_ACCEPTABLE = "Not Acceptable: send Accept: application/json, text/event-stream\n"


def _quality(params: list[str]) -> float:
    for param in params:
        name, eq, value = param.partition("=")
        if eq and name.strip().lower() == "q":
            try:
                q = float(value.strip().strip('"'))
            except ValueError:
                return 1.0
            return q if 0.0 <= q <= 1.0 else 1.0
    return 1.0


def accepted(header: str | None) -> tuple[bool, bool]:
    """``(json_ok, sse_ok)`` for an ``Accept`` header value (None or blank: both).

    The most specific matching range decides a type's quality (``text/event-stream;q=0, */*`` refuses SSE).
    """
    if header is None or not header.strip():
        return True, True
    best: dict[str, tuple[int, float]] = {}
    for element in header.split(","):
        media, *params = element.split(";")
        media = media.strip().lower()
        kind, slash, sub = media.partition("/")
        if not slash or not kind or not sub:
            continue
        q = _quality(params)
        for want in (JSON, SSE):
            wkind = want.partition("/")[0]
            if media == want:
                rank = 2
            elif kind == wkind and sub == "*":
                rank = 1
            elif kind == "*" and sub == "*":
                rank = 0
            else:
                continue
            old = best.get(want)
            if old is None or rank > old[0] or (rank == old[0] and q > old[1]):
                best[want] = (rank, q)
    return best.get(JSON, (0, 0.0))[1] > 0, best.get(SSE, (0, 0.0))[1] > 0


@functools.lru_cache(maxsize=256)
def response_mode(header: str | None) -> Mode:
    """How to answer a request whose ``Accept`` is ``header``: see the module docstring.

    Asked twice per POST, with the few ``Accept`` values clients send: the answers are cached (256 values at most).
    """
    json_ok, sse_ok = accepted(header)
    if json_ok and sse_ok:
        return "either"
    return "json" if json_ok else "sse" if sse_ok else "none"
