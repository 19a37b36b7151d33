"""Streamable HTTP on aiohttp at ``/mcp``, for both protocol eras.

- 2025-11-25 clients open a session with ``initialize``; toolcrib answers with a 128-bit random
  ``Mcp-Session-Id``. Each session runs the SDK server loop over anyio memory streams; messages
  the loop writes are routed back by JSON-RPC id (responses) or ``related_request_id``
  (request-scoped notifications and server-to-client requests) to the POST that caused them, and
  everything else to the session's GET stream. A POST answers in a type its ``Accept`` allows
  (:mod:`toolcrib.gateway.edge.accept`): by default JSON when the response is all there is,
  upgraded to SSE as soon as anything else must be sent first; 406 when it accepts neither.
- 2026-07-28 clients are stateless: each POST carries its own envelope and is served on its own,
  under the rules of :mod:`toolcrib.gateway.edge.stateless` (which POSTs count as modern is decided
  there too: :func:`~toolcrib.gateway.edge.stateless.is_modern`).

Security: every request has passed the guard (:mod:`toolcrib.gateway.edge.guard`: Host/Origin,
the whole body read under a cap, authentication to a typed principal) before a handler here runs.
Malformed JSON-RPC gets -32700/-32600 (HTTP 400) and never disturbs a session; a request naming a
session that is gone, or racing its ``DELETE``, gets 404; nothing a client sends yields a 500.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from toolcrib.config import Config
from toolcrib.gateway.edge.accept import NOT_ACCEPTABLE, accepted, response_mode
from toolcrib.gateway.edge.guard import BODY, PRINCIPAL, access
from toolcrib.gateway.edge.jsonrpc import BadMessage, parse_message
from toolcrib.gateway.edge.replies import SSE_HEADERS, dump, note_request, respond, rpc_error, sse
from toolcrib.gateway.edge.resume import LAST_EVENT_ID, RETRY_MS, Refused, Replay, StreamLog, serve
from toolcrib.gateway.edge.sessions import HttpSession, SessionExchange, SessionTable, answer
from toolcrib.gateway.edge.shared_sessions import SessionDirectory, StoredSession, apply, snapshot
from toolcrib.gateway.edge.stateless import Stateless, is_modern
from toolcrib.gateway.server import Gateway, Peer, RequestInfo
from toolcrib.gateway.trust.identity import Principal

log = logging.getLogger("toolcrib.http")

SESSION_HEADER = "Mcp-Session-Id"
SUPPORTED_VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)
RESUMABLE_SINCE = "2025-11-25"
"""Sessions negotiating this version or later get resumable SSE (priming event, event ids, replay)."""


class HttpTransport:
    """Owns the sessions; its routes are added to an aiohttp application."""

    def __init__(
        self,
        gateway: Gateway,
        config: Config,
        tg: anyio.abc.TaskGroup,
        directory: SessionDirectory | None = None,
    ) -> None:
        self.gateway = gateway
        self.directory = directory
        """Set with ``[storage] url``: sessions live in PostgreSQL and any replica serves them."""
        self._adopting: dict[str, anyio.Event] = {}
        self.cfg = config.gateway
        self.tg = tg
        self.table = SessionTable(self.cfg)
        if directory is not None:  # a session closed to make room is closed on every replica

            def evicted(sid: str) -> None:
                tg.start_soon(directory.delete, sid)

            self.table.on_evict = evicted
        self.sessions = self.table.by_id
        self.accepting = True
        self.inflight = 0
        self.idle = anyio.Event()
        self.stateless = Stateless(gateway, self._busy)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/mcp", access("client", self.post))
        app.router.add_route("GET", "/mcp", access("client", self.get))
        app.router.add_route("DELETE", "/mcp", access("client", self.delete))

    # ---- checks ------------------------------------------------------------------------------

    async def _session(self, request: web.Request, principal: Principal) -> HttpSession | web.Response | None:
        sid = request.headers.get(SESSION_HEADER)
        if sid is None:
            return None
        sess = self.sessions.get(sid)
        if sess is not None and sess.closed.is_set():
            sess = None
        if self.directory is not None and not (sess is not None and self.directory.fresh(sid)):
            stored = await self.directory.load(sid)
            if sess is not None and sess.closed.is_set():  # expired or evicted here while we read the row
                sess = None
            if stored is None:
                if sess is not None:  # deleted or expired on another replica
                    sess.scope.cancel()
                    self.table.drop(sess)
                sess = None
            elif stored.principal.id != principal.id:
                return web.Response(status=403, text="Forbidden: this session belongs to another principal\n")
            elif sess is None:
                adopted = await self._adopt_once(stored, principal)
                if isinstance(adopted, web.Response):
                    return adopted
                sess = adopted
            elif stored.state != snapshot(sess):
                apply(sess, stored.state)
                self.directory.seen(sid, stored.state)
        if sess is None:
            return _session_gone()
        if sess.peer.principal.id != principal.id:
            return web.Response(status=403, text="Forbidden: this session belongs to another principal\n")
        sess.last_seen = time.monotonic()
        return sess

    async def _adopt_once(self, stored: StoredSession, principal: Principal) -> HttpSession | web.Response:
        """Adopt ``stored`` unless a request racing this one already is: then use that adoption."""
        pending = self._adopting.get(stored.id)
        if pending is not None:
            await pending.wait()
            sess = self.sessions.get(stored.id)
            if sess is not None and not sess.closed.is_set():
                return sess
            return _session_gone()
        held = self.sessions.get(stored.id)
        if held is not None and not held.closed.is_set():  # adopted by a request that finished meanwhile
            return held
        done = self._adopting[stored.id] = anyio.Event()
        try:
            return await self._adopt(stored, principal)
        except (TimeoutError, anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            # EndOfStream: the session closed (its waiters' streams with it) while the prime was in flight
            sess = self.sessions.get(stored.id)
            if sess is None or sess.closed.is_set():  # ended meanwhile (a DELETE on another replica)
                return _session_gone()
            sess.scope.cancel()
            self.table.drop(sess)
            log.warning("session %s: could not be adopted from the database", stored.id[:8])
            return rpc_error(-32000, "Session could not be resumed here; retry shortly", status=503)
        finally:
            del self._adopting[stored.id]
            done.set()

    async def _adopt(self, stored: StoredSession, principal: Principal) -> HttpSession:
        """Serve a session another replica opened: a local server loop primed with its ``initialize``."""
        assert self.directory is not None
        init = dict(stored.state.get("init") or {})
        sess = self._open(Peer(transport="http", principal=principal, id=stored.id), init)
        send, recv = anyio.create_memory_object_stream[types.JSONRPCMessage](1)
        rid = f"toolcrib-adopt-{stored.id[:8]}"
        sess.waiters[rid] = send
        try:
            prime = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method="initialize", params=init)
            info = RequestInfo(sess.peer, principal)
            await sess.to_server.send(SessionMessage(prime, ServerMessageMetadata(request_context=info)))
            with anyio.fail_after(10):
                await recv.receive()
            done = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
            await sess.to_server.send(SessionMessage(done, ServerMessageMetadata(request_context=info)))
        finally:
            sess.waiters.pop(rid, None)
            send.close()
            recv.close()
        apply(sess, stored.state)
        self.directory.seen(stored.id, stored.state)
        log.info("session %s adopted from the database", stored.id[:8])
        return sess

    async def _saved(self, sess: HttpSession | None) -> None:
        if self.directory is not None and sess is not None and not sess.closed.is_set():
            try:
                await self.directory.save(sess)
            except Exception as exc:
                log.warning("session %s: state not saved (%s)", sess.peer.id[:8], str(exc).splitlines()[0])

    def busy_sessions(self) -> list[str]:
        """Ids of the sessions with a call in flight or a GET stream open here (never idle)."""
        return [sid for sid, sess in self.sessions.items() if not sess.idle]

    def deliver(self, sid: str, message: dict[str, object]) -> None:
        """A notification another replica published for ``sid``: onto its GET stream if held here."""
        sess = self.sessions.get(sid)
        if sess is None or sess.standalone is None:
            return
        try:
            note = types.JSONRPCNotification.model_validate(message)
            sess.standalone.send_nowait(note)
        except Exception:
            log.debug("session %s: a relayed notification was not delivered", sid[:8], exc_info=True)

    def closed_elsewhere(self, sid: str) -> None:
        """Another replica ended ``sid`` (``DELETE``): drop this replica's copy."""
        sess = self.sessions.get(sid)
        if sess is not None:
            sess.scope.cancel()
            self.table.drop(sess)

    def relay(self, sess: HttpSession, msg: types.JSONRPCMessage) -> bool:
        """Publish a GET-stream message of ``sess`` for the replica holding its GET stream; False
        when sessions are not shared."""
        if self.directory is None or not isinstance(msg, types.JSONRPCNotification):
            return False
        data = msg.model_dump(by_alias=True, exclude_none=True, mode="json")
        self.tg.start_soon(self.directory.publish, sess.peer.id, data)
        return True

    # ---- POST --------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        if not self.accepting:
            return web.Response(status=503, text="Service Unavailable: shutting down\n", headers={"Retry-After": "5"})
        ctype = request.headers.get("Content-Type", "")
        if not ctype.lower().startswith("application/json"):
            return web.Response(status=415, text="Unsupported Media Type: send Content-Type: application/json\n")
        principal = request[PRINCIPAL]
        parsed = parse_message(request[BODY])
        if isinstance(parsed, BadMessage):
            return rpc_error(parsed.code, parsed.message)
        raw, message = parsed
        if isinstance(message, types.JSONRPCRequest):
            note_request(request, message)
            if response_mode(request.headers.get("Accept")) == "none":
                return web.Response(status=406, text=NOT_ACCEPTABLE)
        sess = await self._session(request, principal)
        if isinstance(sess, web.Response):
            return sess
        try:
            return await self._post(request, principal, message, raw, sess)
        finally:
            await self._saved(sess)

    async def _post(
        self,
        request: web.Request,
        principal: Principal,
        message: types.JSONRPCMessage,
        raw: dict[str, Any],
        sess: HttpSession | None,
    ) -> web.StreamResponse:
        if sess is None and is_modern(request.headers, raw):
            return await self.stateless.post(request, principal, message, raw)
        version = request.headers.get("MCP-Protocol-Version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            return rpc_error(
                types.INVALID_REQUEST,
                f"Bad Request: MCP-Protocol-Version {version!r} is not supported; use {', '.join(SUPPORTED_VERSIONS)}",
                getattr(message, "id", None),
            )
        if sess is None:
            if isinstance(message, types.JSONRPCRequest) and message.method == "initialize":
                return await self._initialize(request, principal, message)
            if isinstance(message, types.JSONRPCRequest):
                return rpc_error(
                    types.INVALID_REQUEST,
                    f"Bad Request: missing {SESSION_HEADER}; call initialize first",
                    message.id,
                )
            if isinstance(message, types.JSONRPCNotification):
                return web.Response(status=202)
            return rpc_error(types.INVALID_REQUEST, f"Bad Request: missing {SESSION_HEADER} header")
        info = RequestInfo(sess.peer, principal)
        if not isinstance(message, types.JSONRPCRequest):
            if self._intercept(sess, message):
                return web.Response(status=202)
            await sess.to_server.send(SessionMessage(message, ServerMessageMetadata(request_context=info)))
            return web.Response(status=202)
        if message.method == "tools/call" and sess.initialized and sess.init is not None:
            return await self._direct(request, sess, message, info)
        return await self._exchange(request, sess, message, info)

    def _intercept(self, sess: HttpSession, message: types.JSONRPCMessage) -> bool:
        """Handle what belongs to directly served calls; True when the SDK loop must not see it."""
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            fut = sess.pending.get(str(message.id))
            if fut is not None and not fut.done():
                fut.set_result(message)
                return True
            return False
        if isinstance(message, types.JSONRPCNotification):
            if message.method == "notifications/initialized":
                sess.initialized = True
            elif message.method == "notifications/cancelled":
                rid = (message.params or {}).get("requestId")
                if not isinstance(rid, str | int) or isinstance(rid, bool):
                    return True  # not a request id: nothing to cancel, and never the SDK loop's problem
                scope = sess.direct.get(rid)
                if scope is not None:
                    scope.cancel()
                    return True
        return False

    async def _direct(
        self, request: web.Request, sess: HttpSession, message: types.JSONRPCRequest, info: RequestInfo
    ) -> web.StreamResponse:
        """Serve a session's ``tools/call`` with the SDK's kernel (:func:`answer`) instead of its per-session loop.

        The hot path: one task, no memory-stream hops through the loop. A client disconnect does
        not cancel the call (2025-11-25); ``notifications/cancelled`` does. A call toolcrib answers
        itself (``search_tools``: :meth:`Gateway.answers_locally`) has nothing upstream to finish and
        runs in the request's own task instead, two loop turns fewer (under load, each turn waits
        behind every other ready request); a disconnect cancels it.
        """
        rid = message.id
        if rid in sess.direct or rid in sess.waiters:
            return rpc_error(types.INVALID_REQUEST, f"Invalid Request: id {rid!r} is already in flight", rid)
        connection = sess.connection(self.relay)
        token = progress_token_from_params(message.params)
        dctx = SessionExchange(sess, rid, request.headers, info, token)
        send, recv = anyio.create_memory_object_stream[types.JSONRPCMessage](256)
        dctx.sink = send
        scope = anyio.CancelScope()
        sess.direct[rid] = scope
        self.inflight += 1

        async def run() -> None:
            out: types.JSONRPCMessage | None = None
            try:
                with scope:
                    out = await answer(self.gateway.server, dctx, message, connection)
            finally:
                sess.direct.pop(rid, None)
                sess.last_seen = time.monotonic()
                if out is None:  # cancelled (notifications/cancelled, shutdown): built only then
                    out = types.JSONRPCError(
                        jsonrpc="2.0", id=rid, error=types.ErrorData(code=-32800, message="Request cancelled")
                    )
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    send.send_nowait(out)
                send.close()
                self._done()

        if self.gateway.answers_locally(message.params):
            await run()
        else:
            self.tg.start_soon(run)
        try:
            return await respond(request, recv, rid, {SESSION_HEADER: sess.peer.id}, sess)
        finally:
            recv.close()

    async def _initialize(
        self, request: web.Request, principal: Principal, message: types.JSONRPCRequest
    ) -> web.StreamResponse:
        full = self.table.make_room(principal)
        if full is not None:
            return rpc_error(-32000, full, status=503)
        sess = self._open(Peer(transport="http", principal=principal), dict(message.params or {}))
        if self.directory is not None:
            try:
                await self.directory.create(sess)
            except Exception as exc:
                self.table.drop(sess)
                sess.scope.cancel()
                log.error("session not recorded in the database: %s", str(exc).splitlines()[0])
                return rpc_error(-32000, "Session store unavailable; retry shortly", message.id, status=503)
        return await self._exchange(request, sess, message, RequestInfo(sess.peer, principal))

    def _open(self, peer: Peer, init: dict[str, object]) -> HttpSession:
        """A local session with its server loop started (not yet initialized)."""
        to_server, server_read = anyio.create_memory_object_stream[SessionMessage | Exception](64)
        server_write, from_server = anyio.create_memory_object_stream[SessionMessage](64)
        sess = HttpSession(peer=peer, to_server=to_server, init=init)
        if self.directory is not None:  # shared by replicas: a handler's state change is saved before its answer
            peer.persist = functools.partial(self._saved, sess)
        requested = init.get("protocolVersion")
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        if isinstance(version, str) and version >= RESUMABLE_SINCE:
            sess.replay = Replay(self.tg.start_soon)
        self.sessions[peer.id] = sess
        self.tg.start_soon(self._run_session, sess, server_read, server_write, from_server)
        return sess

    async def _run_session(
        self,
        sess: HttpSession,
        server_read: MemoryObjectReceiveStream[SessionMessage | Exception],
        server_write: MemoryObjectSendStream[SessionMessage],
        from_server: MemoryObjectReceiveStream[SessionMessage],
    ) -> None:
        # Every exit closes the session and its streams, including a cancellation from outside
        # (shutdown) and one that arrives before the SDK loop or the router took their streams over.
        try:
            with sess.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._route, sess, from_server)
                    try:
                        await self.gateway.server.run(server_read, server_write, self.gateway.init_options)
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            server_read.close()
            server_write.close()
            from_server.close()
            self.table.drop(sess)
            if self.directory is not None and sess.peer.id not in self.sessions:  # not re-adopted meanwhile
                self.directory.forget(sess.peer.id)

    async def _route(self, sess: HttpSession, from_server: MemoryObjectReceiveStream[SessionMessage]) -> None:
        async with from_server:
            async for out in from_server:
                msg = out.message
                target: MemoryObjectSendStream[types.JSONRPCMessage] | None = None
                if isinstance(msg, types.JSONRPCResponse | types.JSONRPCError):
                    # A response belongs on its request's POST; if that client went away it is
                    # dropped (a response never goes on the GET stream).
                    target = sess.waiters.get(msg.id)
                else:
                    meta = out.metadata
                    related = meta.related_request_id if isinstance(meta, ServerMessageMetadata) else None
                    target = sess.waiters.get(related) if related is not None else None
                    if target is None:
                        target = sess.standalone
                        if target is None and self.relay(sess, msg):
                            continue
                if target is None:
                    continue
                try:
                    target.send_nowait(msg)
                except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    log.debug("session %s: dropped a message for a closed stream", sess.peer.id)

    async def _exchange(
        self, request: web.Request, sess: HttpSession, message: types.JSONRPCRequest, info: RequestInfo
    ) -> web.StreamResponse:
        rid = message.id
        if rid in sess.waiters:
            return rpc_error(types.INVALID_REQUEST, f"Invalid Request: id {rid!r} is already in flight", rid)
        send, recv = anyio.create_memory_object_stream[types.JSONRPCMessage](256)
        sess.waiters[rid] = send
        self.inflight += 1

        def release() -> None:
            if sess.waiters.get(rid) is send:
                del sess.waiters[rid]
            send.close()

        held = [release]  # a resumable SSE answer takes it over, to run once the stream has its response
        try:
            await sess.to_server.send(SessionMessage(message, ServerMessageMetadata(request_context=info)))
            return await respond(request, recv, rid, {SESSION_HEADER: sess.peer.id}, sess, handoff=held)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return rpc_error(-32000, "Session closed; start a new session with initialize", rid, status=404)
        finally:
            self._done()
            sess.last_seen = time.monotonic()
            for fn in held:
                fn()
            recv.close()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """One request in flight for the length of the block (see :meth:`_done`)."""
        self.inflight += 1
        try:
            yield
        finally:
            self._done()

    def _done(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and not self.accepting:
            self.idle.set()

    # ---- GET / DELETE ------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        if not accepted(request.headers.get("Accept"))[1]:
            return web.Response(status=406, text="Not Acceptable: GET /mcp needs Accept: text/event-stream\n")
        sess = await self._session(request, request[PRINCIPAL])
        if sess is None:
            return web.Response(status=405, headers={"Allow": "POST"}, text="Method Not Allowed without a session\n")
        if isinstance(sess, web.Response):
            return sess
        headers = {**SSE_HEADERS, SESSION_HEADER: sess.peer.id}
        log: StreamLog | None = None
        cursor = -1
        last = request.headers.get(LAST_EVENT_ID)
        if last is not None:
            if sess.replay is None:
                return web.Response(status=400, text="Bad Request: this session's streams are not resumable\n")
            try:
                log, cursor = sess.replay.find(last)
            except Refused as why:
                return web.Response(status=why.status, text=why.text)
            if not log.standalone:
                return await serve(request, log, cursor, headers)
            if sess.standalone is not None:
                sess.standalone.close()  # the GET stream being resumed: its old connection ends
                sess.standalone = None
        if sess.standalone is not None:
            return web.Response(status=409, text="Conflict: this session already has a GET stream\n")
        send, recv = anyio.create_memory_object_stream[types.JSONRPCMessage](256)
        sess.standalone = send
        replay = sess.replay
        if replay is not None and log is None:
            log = replay.open(standalone=True)
        resp = web.StreamResponse(status=200, headers=headers)
        try:
            await resp.prepare(request)
            if log is not None:
                log.done = False
                log.reader = recv
                await resp.write(log.priming() if cursor < 0 else f"retry: {RETRY_MS}\n\n".encode())
                for _, frame in log.after(cursor):
                    await resp.write(frame)
            while not sess.closed.is_set():
                with anyio.move_on_after(15) as timer:
                    msg = await recv.receive()
                    data = dump(msg)
                    await resp.write(replay.append(log, data) if replay and log else sse(data))
                if timer.cancelled_caught:
                    await resp.write(b": keepalive\n\n")
        except (anyio.EndOfStream, anyio.ClosedResourceError, ConnectionResetError):
            pass
        finally:
            if sess.standalone is send:
                sess.standalone = None
            if replay is not None and log is not None and log.reader is recv:
                log.reader = None
                replay.finish(log)
            send.close()
            recv.close()
        return resp

    async def delete(self, request: web.Request) -> web.StreamResponse:
        sess = await self._session(request, request[PRINCIPAL])
        if sess is None:
            return web.Response(status=400, text=f"Bad Request: DELETE needs {SESSION_HEADER}\n")
        if isinstance(sess, web.Response):
            return sess
        sess.scope.cancel()
        self.table.drop(sess)
        if self.directory is not None:
            await self.directory.delete(sess.peer.id)
        return web.Response(status=204)


def _session_gone() -> web.Response:
    """The 404 for a session id that names no live session (never created, deleted, expired)."""
    return rpc_error(-32001, "Session not found or expired; start a new session with initialize", status=404)
