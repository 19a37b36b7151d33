"""Optional request kinds an upstream may not implement: completions and resource subscriptions.

An upstream that answers ``-32601`` (Method not found, JSON-RPC 2.0 section 5.1) to
``completion/complete`` or ``resources/subscribe`` is taken at its word: one warning per server per
capability, and later requests of that kind are answered here at once, without reaching the
upstream again, until it reconnects: ``completion/complete`` with an empty completion (the client
just gets no suggestions, MCP server/utilities/completion), ``resources/subscribe`` with a one-line
``-32601`` error, and ``resources/unsubscribe`` with an empty result (nothing was subscribed).
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

log = logging.getLogger("toolcrib.upstream")

CAPABILITY = {
    "completion/complete": "completion/complete",
    "resources/subscribe": "resources/subscribe",
    "resources/unsubscribe": "resources/subscribe",
}
"""Request kind (the ``what`` of :meth:`Upstream.request`) -> the capability it belongs to."""


class OptionalCaps:
    """What one upstream refused with -32601 on this connection, and the warnings already given."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.refused: set[str] = set()
        self._warned: set[str] = set()

    def known_refused(self, what: str) -> bool:
        """True when ``what`` belongs to a capability this upstream refused since it connected."""
        return CAPABILITY.get(what) in self.refused

    def refuse(self, what: str, exc: MCPError) -> bool:
        """Record ``exc`` for ``what``; True when it means the capability is missing (-32601)."""
        cap = CAPABILITY.get(what)
        if cap is None or exc.error.code != types.METHOD_NOT_FOUND:
            return False
        self.refused.add(cap)
        if cap not in self._warned:
            self._warned.add(cap)
            log.warning(
                "upstream %s does not support %s (error %d: %s); answering it locally from now on",
                self.server,
                cap,
                exc.error.code,
                exc.error.message,
            )
        return True

    def answer(self, what: str) -> Any:
        """The local answer to ``what`` for a refused capability; raises :class:`MCPError` for subscribe."""
        if what == "completion/complete":
            return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))
        if what == "resources/unsubscribe":
            return types.EmptyResult()
        raise MCPError(
            code=types.METHOD_NOT_FOUND,
            message=f"{self.server} does not support resource subscriptions; read the resource again instead",
        )
