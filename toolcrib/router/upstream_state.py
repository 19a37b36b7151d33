"""What the operator sees about an upstream: its state, and one line describing why it is not connected."""

from __future__ import annotations

from dataclasses import dataclass, field

import mcp_types as types
from mcp.shared.exceptions import MCPError

from toolcrib.errors import ToolcribError
from toolcrib.router.http_transport import cannot_connect, connect_reason


@dataclass
class UpstreamState:
    """What the operator sees about an upstream (``toolcrib serve`` output, ``/healthz``)."""

    status: str = "starting"  # starting | connected | reconnecting | crash-looping | stopped
    protocol_version: str | None = None
    server_name: str | None = None
    server_title: str | None = None
    server_description: str | None = None
    instructions: str | None = None
    """``serverInfo.title`` / ``serverInfo.description`` and ``instructions`` of the initialize result
    (what the tool index describes the server with, issue 14)."""
    error: str | None = None
    connects: int = 0
    crashes: list[float] = field(default_factory=list)

    @property
    def modern(self) -> bool:
        """True when the connection speaks a 2026-07-28-era (stateless, ``server/discover``) version."""
        return (self.protocol_version or "") >= "2026"


def describe(exc: BaseException, url: str | None = None, command: str | None = None) -> str:
    """One line for the operator; an unreachable URL reads ``cannot connect to URL (reason)``; a stdio
    server whose program cannot be started names ``command`` (the configured one) when the error
    itself does not name the file."""
    reason = connect_reason(exc) if url is not None else None
    if reason is not None and url is not None:
        return cannot_connect(url, reason)
    if isinstance(exc, ToolcribError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "did not finish connecting within connect_timeout"
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or command
        return f"command not found: {name} (give its full path, or check PATH and the server's cwd)"
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return describe(inner, url, command)
    if isinstance(exc, MCPError) and exc.error.code == types.CONNECTION_CLOSED:
        return exc.error.message
    if isinstance(exc, MCPError):
        return f"protocol error: {exc.error.message}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
