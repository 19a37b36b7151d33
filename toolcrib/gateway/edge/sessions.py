"""What one exchange on ``/mcp`` needs below the HTTP layer: session state and dispatch contexts.

A dispatch context is what the SDK's server kernel (``ServerRunner``) talks back through while it
serves one request: request-scoped notifications (progress, logs) and, for 2025-11-25 sessions,
server-to-client requests (sampling, elicitation, roots) whose answers arrive as later POSTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.connection import Connection
from mcp.server.runner import ServerRunner, aclose_shielded, modern_error_data
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from toolcrib.config import GatewayConfig
from toolcrib.gateway.edge.resume import Replay
from toolcrib.gateway.server import Peer, RequestInfo
from toolcrib.gateway.trust.identity import Principal

log = logging.getLogger("toolcrib.http")


@dataclass(eq=False)
class HttpSession:
    """A 2025-11-25 session: the SDK server loop plus routing tables."""

    peer: Peer
    to_server: MemoryObjectSendStream[SessionMessage | Exception]
    waiters: dict[Any, MemoryObjectSendStream[types.JSONRPCMessage]] = field(default_factory=dict)
    standalone: MemoryObjectSendStream[types.JSONRPCMessage] | None = None
    last_seen: float = field(default_factory=time.monotonic)
    closed: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    init: dict[str, Any] | None = None
    """The client's ``initialize`` params, for serving ``tools/call`` directly (see ``_direct``)."""
    initialized: bool = False
    pending: dict[str, asyncio.Future[types.JSONRPCMessage]] = field(default_factory=dict)
    """Our requests to the client made from directly served calls, by id."""
    direct: dict[Any, anyio.CancelScope] = field(default_factory=dict)
    """Directly served calls in flight, by the client's request id (for notifications/cancelled)."""
    next_id: int = 0
    replay: Replay | None = None
    """Resumable SSE streams (negotiated version 2025-11-25 or later; see :mod:`~toolcrib.gateway.edge.resume`)."""
    _envelope: Connection | None = field(default=None, repr=False)
    """What ``init`` describes (version, typed client info and capabilities), validated once: see :meth:`connection`."""
    _outbound: Standalone | None = field(default=None, repr=False)

    def connection(self, relay: Callable[[HttpSession, types.JSONRPCMessage], bool] | None) -> Connection:
        """A born-ready connection for one directly served call, as ``Connection.from_envelope`` builds
        it from ``init``, whose client info and capabilities are validated the first time only (``init``
        never changes; the typed params are shared by the session's calls, as the SDK loop's one
        connection shares them). Each call still gets a connection of its own (its ``state``, exit stack)."""
        envelope = self._envelope
        if envelope is None:
            init = self.init or {}
            requested = init.get("protocolVersion")
            version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
            envelope = self._envelope = Connection.from_envelope(
                version, init.get("clientInfo"), init.get("capabilities")
            )
        outbound = self._outbound
        if outbound is None:
            outbound = self._outbound = Standalone(self, relay)
        connection = Connection(
            outbound, protocol_version=envelope.protocol_version, client_params=envelope.client_params
        )
        connection.client_capabilities = envelope.client_capabilities
        connection.initialized.set()
        return connection

    @property
    def idle(self) -> bool:
        """No request in flight and no GET stream open: the session may expire or be evicted."""
        return not self.waiters and not self.direct and self.standalone is None


class SessionTable:
    """The open 2025-11-25 sessions by id: caps with idle eviction, idle expiry, shutdown."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.by_id: dict[str, HttpSession] = {}
        self.on_evict: Callable[[str], None] | None = None
        """Told the id of a session closed to make room (shared sessions: closed on every replica)."""

    def make_room(self, principal: Principal) -> str | None:
        """Enforce the session caps before a new session of ``principal``; a reason when it cannot have one.

        Per principal (``max_sessions_per_principal``) and overall (``max_sessions``): when a cap is
        reached the least recently used *idle* session (of this principal first) is closed to make
        room, so one caller opening sessions in a loop only ever evicts its own.
        """
        mine = [s for s in self.by_id.values() if s.peer.principal.id == principal.id]
        if len(mine) >= self.cfg.max_sessions_per_principal and not self.evict(mine):
            return (
                f"Too many sessions for {principal.id} (max_sessions_per_principal = "
                f"{self.cfg.max_sessions_per_principal}), all busy; close one with DELETE or retry later"
            )
        if len(self.by_id) >= self.cfg.max_sessions and not (self.evict(mine) or self.evict(list(self.by_id.values()))):
            return "Too many sessions, all busy; retry later or raise [gateway] max_sessions"
        return None

    def evict(self, candidates: list[HttpSession]) -> bool:
        idle = [s for s in candidates if s.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_seen)
        log.info("session %s closed to make room (least recently used, idle)", victim.peer.id[:8])
        victim.scope.cancel()
        self.drop(victim)
        if self.on_evict is not None:
            self.on_evict(victim.peer.id)
        return True

    def drop(self, sess: HttpSession) -> None:
        """Close ``sess`` and forget it, unless its id now names a newer session (idempotent).

        A session's loop ends some time after the session was closed (expired, evicted, deleted
        elsewhere), and a request may have adopted the id again meanwhile (shared sessions): that
        newer session stays in the table.
        """
        if self.by_id.get(sess.peer.id) is sess:
            del self.by_id[sess.peer.id]
        sess.closed.set()
        sess.to_server.close()
        for w in sess.waiters.values():
            w.close()
        if sess.replay is not None:
            sess.replay.close()

    async def reap(self) -> None:
        """Close sessions idle longer than ``session_ttl``; runs until cancelled."""
        while True:
            await anyio.sleep(min(30.0, self.cfg.session_ttl / 2))
            self.expire_idle()

    def expire_idle(self) -> None:
        """Close every session idle longer than ``session_ttl`` (none in flight, no GET stream open)."""
        now = time.monotonic()
        for sess in list(self.by_id.values()):
            if now - sess.last_seen > self.cfg.session_ttl and sess.idle:
                log.info("session %s expired after %.0f s idle", sess.peer.id[:8], self.cfg.session_ttl)
                sess.scope.cancel()
                self.drop(sess)

    def close_all(self) -> None:
        for sess in list(self.by_id.values()):
            sess.scope.cancel()
            self.drop(sess)


class Exchange:
    """Dispatch context for one stateless (2026-07-28) request: no back-channel, SSE sink for notifications."""

    def __init__(
        self, rid: Any, headers: Any, info: RequestInfo, progress_token: Any, *, can_send_request: bool = False
    ) -> None:
        self.transport = TransportContext(kind="streamable-http", can_send_request=can_send_request, headers=headers)
        self.request_id = rid
        self.message_metadata = ServerMessageMetadata(request_context=info)
        self.progress_token = progress_token
        self.cancel_requested = anyio.Event()
        self.can_send_request = can_send_request
        self.sink: MemoryObjectSendStream[types.JSONRPCMessage] | None = None

    async def send_raw_request(self, method: str, params: Any, opts: CallOptions | None = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Any, opts: CallOptions | None = None) -> None:
        if self.sink is not None:
            note = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=dict(params) if params else None)
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self.sink.send(note)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)


class SessionExchange(Exchange):
    """Dispatch context for a ``tools/call`` of a 2025-11-25 session served without the SDK loop.

    Request-scoped notifications and server-to-client requests (sampling, elicitation, roots)
    ride this POST's stream; the client's answers arrive as POSTs and are matched by id.
    """

    def __init__(self, sess: HttpSession, rid: Any, headers: Any, info: RequestInfo, token: Any) -> None:
        super().__init__(rid, headers, info, token, can_send_request=True)
        self._sess = sess

    async def send_raw_request(self, method: str, params: Any, opts: CallOptions | None = None) -> dict[str, Any]:
        sess = self._sess
        sess.next_id += 1
        rid = f"toolcrib-{sess.next_id}"
        fut: asyncio.Future[types.JSONRPCMessage] = asyncio.get_running_loop().create_future()
        sess.pending[rid] = fut
        try:
            req = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=dict(params) if params else None)
            if self.sink is None:
                raise NoBackChannelError(method)
            await self.sink.send(req)
            timeout = (opts or {}).get("timeout")
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                answer = await fut
        finally:
            sess.pending.pop(rid, None)
        if isinstance(answer, types.JSONRPCError):
            raise MCPError(code=answer.error.code, message=answer.error.message, data=answer.error.data)
        assert isinstance(answer, types.JSONRPCResponse)
        return dict(answer.result)


class Standalone:
    """A session's standalone channel (its GET stream) for directly served calls: notifications only."""

    def __init__(
        self, sess: HttpSession, relay: Callable[[HttpSession, types.JSONRPCMessage], bool] | None = None
    ) -> None:
        self._sess = sess
        self._relay = relay
        """With shared sessions: publishes a message for the replica holding the GET stream."""

    async def send_raw_request(self, method: str, params: Any, opts: CallOptions | None = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Any, opts: CallOptions | None = None) -> None:
        stream = self._sess.standalone
        note = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=dict(params) if params else None)
        if stream is not None:
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                stream.send_nowait(note)
        elif self._relay is not None:
            self._relay(self._sess, note)


async def answer(server: Any, dctx: Any, message: types.JSONRPCRequest, connection: Connection) -> types.JSONRPCMessage:
    """Run one request through the SDK's server kernel and return its JSON-RPC answer.

    What the SDK's ``serve_one`` does (one ``ServerRunner.on_request``, then the connection's exit
    stack unwound under a shielded, bounded scope), except that an exit stack nothing was pushed on
    is not unwound: toolcrib's handlers push nothing, and the shielded scope and its checkpoint were
    two of a call's five cancel scopes."""
    try:
        try:
            result = await ServerRunner(server, connection, {}).on_request(dctx, message.method, message.params)
        finally:
            if _has_exits(connection):
                await aclose_shielded(connection)
    except Exception as exc:
        return types.JSONRPCError(jsonrpc="2.0", id=message.id, error=modern_error_data(exc))
    # The kernel's result is already its wire form (validated by the SDK): not validated again.
    return types.JSONRPCResponse.model_construct(jsonrpc="2.0", id=message.id, result=result)


def _has_exits(connection: Connection) -> bool:
    """Whether anything was pushed on ``connection.exit_stack`` (True when that cannot be told)."""
    callbacks = getattr(connection.exit_stack, "_exit_callbacks", None)
    return callbacks is None or bool(callbacks)
