"""Non-JSON lines on a stdio server's stdout: one rate-limited warning per server, not one each.

The stdio transport (basic/transports, "stdio") reserves stdout for JSON-RPC messages; servers that
``print()`` there anyway still work (toolcrib's stdio transport, :mod:`toolcrib.router.stdio_transport`,
skips the line), but a banner per start or a debug line per call must not flood the operator's log.
:func:`non_json_line` warns at most once per :data:`WINDOW` seconds per server: ``upstream NAME wrote
N non-JSON line(s) to stdout (ignored; servers should log to stderr), e.g. '...'``. The server is
known from :data:`current_upstream`, set by each upstream's supervisor task and inherited by the
transport's reader task.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

current_upstream: ContextVar[str | None] = ContextVar("toolcrib_current_upstream", default=None)
"""The name of the upstream whose supervisor task (or a task it started) is running."""

WINDOW = 60.0
"""Seconds between two warnings about the same server."""
EXCERPT = 80
"""Characters of the offending line quoted in a warning."""
log = logging.getLogger("toolcrib.upstream")


@dataclass
class _Seen:
    last_warned: float = -WINDOW
    suppressed: int = 0


_SEEN: dict[str, _Seen] = {}


def non_json_line(line: bytes) -> None:
    """Count one stdout line of the current upstream that is not a JSON-RPC message (raw bytes, no
    newline); log a warning quoting it when this server was not warned about in the last
    :data:`WINDOW` seconds, with the number of such lines since the last warning."""
    name = current_upstream.get() or "(unknown)"
    seen = _SEEN.setdefault(name, _Seen())
    seen.suppressed += 1
    now = time.monotonic()
    if now - seen.last_warned >= WINDOW:
        text = line[: EXCERPT * 4].decode("utf-8", "replace")[:EXCERPT]
        log.warning(
            "upstream %s wrote %d non-JSON line(s) to stdout (ignored; servers should log to stderr), e.g. %r",
            name,
            seen.suppressed,
            text,
        )
        seen.last_warned, seen.suppressed = now, 0
