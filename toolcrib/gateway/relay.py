"""The client side of one upstream-bound call: where upstream-to-client traffic for it goes.

The router (:mod:`toolcrib.router.upstreams`) hands every server-to-client request (sampling,
elicitation, roots) and every request-scoped notification (log messages, progress) that it can
attribute to a call to that call's :class:`Relay`, and to nothing else. The relay scrubs known
secrets from every message before it leaves, and sends it on the client request that caused the
call (``related_request_id``), so it rides that request's own stream, never another client's.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

from toolcrib.gateway.trust.redaction import Redactor

log = logging.getLogger("toolcrib.relay")

Ctx = ServerRequestContext[Any, Any]
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""RFC 5424 severities in MCP's order (``logging/setLevel``)."""
CANNOT_ASK = (
    "the client cannot be asked for input on this request: only tools/call, prompts/get and "
    "resources/read ask a 2026-07-28 client, as input_required rounds"
)
"""Why a server request found no way to the client: only the MRTR methods can carry one to a
2026-07-28 client (SEP-2322; :mod:`toolcrib.gateway.mrtr`), and a session may have no stream for it."""


class Relay:
    """Relays upstream-initiated traffic of one call back to the client request that made it.

    ``min_level`` is the client's ``logging/setLevel`` for its connection (``None``: everything).
    """

    def __init__(self, ctx: Ctx, redactor: Redactor, min_level: str | None = None, *, principal_id: str = "") -> None:
        self.principal_id = principal_id
        self._ctx = ctx
        self._redactor = redactor
        self._min_level = LOG_LEVELS.index(min_level) if min_level in LOG_LEVELS else 0

    async def _send(self, request: Any, result_type: Any) -> dict[str, Any]:
        session = self._ctx.session
        if not session.can_send_request:
            raise MCPError(code=types.INVALID_REQUEST, message=CANNOT_ASK)
        meta = ServerMessageMetadata(related_request_id=self._ctx.request_id)
        result = await session.send_request(request, result_type, metadata=meta)
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped

    async def create_message(self, params: types.CreateMessageRequestParams) -> dict[str, Any]:
        return await self._send(
            types.CreateMessageRequest(params=self._redactor.scrub_model(params)), types.CreateMessageResult
        )

    async def elicit(self, params: types.ElicitRequestParams) -> dict[str, Any]:
        return await self._send(types.ElicitRequest(params=self._redactor.scrub_model(params)), types.ElicitResult)

    async def elicitation_complete(self, elicitation_id: str) -> None:
        """``notifications/elicitation/complete`` for a URL-mode elicitation this call sent (2025-11-25);
        best effort: a client that went away is not an error."""
        params = types.ElicitCompleteNotificationParams(elicitation_id=elicitation_id)
        try:
            await self._ctx.session.send_notification(
                types.ElicitCompleteNotification(params=params), related_request_id=self._ctx.request_id
            )
        except Exception:
            log.debug("dropped an elicitation/complete notification", exc_info=True)

    async def list_roots(self) -> dict[str, Any]:
        return await self._send(types.ListRootsRequest(), types.ListRootsResult)

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        level = LOG_LEVELS.index(params.level) if params.level in LOG_LEVELS else len(LOG_LEVELS) - 1
        if level < self._min_level:
            return
        note = types.LoggingMessageNotification(params=self._redactor.scrub_model(params))
        try:
            await self._ctx.session.send_notification(note, related_request_id=self._ctx.request_id)
        except Exception:
            log.debug("dropped a relayed log message", exc_info=True)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        token = self._ctx.meta.get("progress_token") if self._ctx.meta else None
        if token is None:
            return
        if message is not None and len(self._redactor):
            message = self._redactor.scrub(message)
        await self._ctx.session.send_progress_notification(
            token, progress, total, message, related_request_id=str(self._ctx.request_id)
        )

    @property
    def wants_progress(self) -> bool:
        return bool(self._ctx.meta and self._ctx.meta.get("progress_token") is not None)
