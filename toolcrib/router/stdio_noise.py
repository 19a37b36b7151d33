"""Non-JSON lines on a stdio server's stdout: one rate-limited warning per server, not a traceback each.

The stdio transport (basic/transports, "stdio") reserves stdout for JSON-RPC messages; servers that
``print()`` there anyway still work (the SDK skips the line), but the SDK logs every such line as
an ERROR with a traceback on the ``mcp.client.stdio`` logger. :func:`install` puts a filter on that
logger which drops those records and instead warns at most once per :data:`WINDOW` seconds per
server: ``upstream NAME wrote N non-JSON line(s) to stdout (ignored; servers should log to stderr),
e.g. '...'``. The server is known from :data:`current_upstream`, set by each upstream's supervisor
task and inherited by the transport's reader task.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

current_upstream: ContextVar[str | None] = ContextVar("toolcrib_current_upstream", default=None)
"""The name of the upstream whose supervisor task (or a task it started) is running."""

WINDOW = 60.0
SDK_LOGGER = "mcp.client.stdio"
SDK_MESSAGE = "Failed to parse JSONRPC message from server"
log = logging.getLogger("toolcrib.upstream")


@dataclass
class _Seen:
    last_warned: float = -WINDOW
    suppressed: int = 0


class NonJsonLineFilter(logging.Filter):
    """Turns the SDK's per-line parse-error records into per-server rate-limited warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != SDK_MESSAGE:
            return True
        name = current_upstream.get() or "(unknown)"
        seen = self.seen.setdefault(name, _Seen())
        seen.suppressed += 1
        now = time.monotonic()
        if now - seen.last_warned >= WINDOW:
            log.warning(
                "upstream %s wrote %d non-JSON line(s) to stdout (ignored; servers should log to stderr), e.g. %s",
                name,
                seen.suppressed,
                _excerpt(record),
            )
            seen.last_warned, seen.suppressed = now, 0
        return False


def _excerpt(record: logging.LogRecord) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            value = errors()[0].get("input")
        except Exception:
            value = None
        if isinstance(value, str | bytes):
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return repr(text[:80])
    return "(unparsable)"


_FILTER = NonJsonLineFilter()


def install() -> NonJsonLineFilter:
    """Attach the filter to the SDK's stdio logger (idempotent); returns it."""
    logger = logging.getLogger(SDK_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return _FILTER
