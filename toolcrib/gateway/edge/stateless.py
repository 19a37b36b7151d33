"""2026-07-28 stateless POSTs on ``/mcp``: the rules a request without a session is held to.

Spec: 2026-07-28 basic/index "Per-request protocol fields" and basic/transports (SEP-2575,
SEP-2243, SEP-2549). A modern request carries its own envelope in ``params._meta``
(``io.modelcontextprotocol/protocolVersion`` and ``.../clientCapabilities``; ``clientInfo`` is
optional) and is served on its own, with no ``initialize`` and no ``Mcp-Session-Id``. In order:

1. ``MCP-Protocol-Version``, ``Mcp-Method`` or ``Mcp-Name`` sent twice: -32020, HTTP 400.
2. The SDK's classification ladder (:func:`mcp.shared.inbound.classify_inbound_request`):
   ``_meta`` missing or incomplete -32602; headers that disagree with the body (version, method,
   name) -32020; a version toolcrib does not serve -32022 with ``data = {"supported": [...],
   "requested": "..."}``; all HTTP 400.
3. A method the 2026-07-28 revision removed (``initialize``, ``ping``, ``logging/setLevel``,
   ``resources/subscribe``, ``resources/unsubscribe``: the SDK's per-version method surface,
   :data:`mcp_types.methods.CLIENT_REQUESTS`): -32601, HTTP 404.
4. ``tools/call``: ``Mcp-Param-*`` headers against the tool's ``x-mcp-header`` properties
   (:mod:`toolcrib.gateway.edge.headers`): -32020, HTTP 400.
5. Served by the SDK kernel; an error it answers gets the SDK's HTTP status for its code
   (:data:`mcp.shared.inbound.ERROR_CODE_HTTP_STATUS`: -32601 404, -32021 400, ...). Cacheable
   results (lists, reads, discover) leave with ``cacheScope: "private"``: toolcrib filters what it
   lists and reads by each principal's policy, so no result may be shared across principals (SEP-2549).

A POST without a session is modern when its ``MCP-Protocol-Version`` header names a modern
revision or one toolcrib does not know, its ``_meta`` names a protocol version, or its method exists
only in the modern revision (``server/discover``). Anything else is a 2025-11-25 client that has
not called ``initialize`` yet, and keeps being told to (see :mod:`toolcrib.gateway.edge.http`).
Notifications are accepted (202) and dropped, as the SDK's own transport does: the modern core
protocol defines none a client POSTs, and a stateless server has nothing for one to act on.

``subscriptions/listen`` (:mod:`toolcrib.gateway.listen`) is answered as an SSE stream held open
on its POST (406 when ``Accept`` refuses ``text/event-stream``, as the SDK's transport does); it
counts as a request in flight, and shutdown ends it gracefully before draining.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import anyio
import mcp_types as types
from aiohttp import web
from mcp.server.connection import Connection, allowed_log_levels
from mcp.shared.dispatcher import CallOptions
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    InboundModernRoute,
    classify_inbound_request,
    unsupported_protocol_version_rejection,
)
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp_types import PROTOCOL_VERSION_META_KEY
from mcp_types.methods import CACHEABLE_METHODS, CLIENT_REQUESTS
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from toolcrib.gateway.edge import headers as hdr
from toolcrib.gateway.edge.accept import accepted
from toolcrib.gateway.edge.replies import respond, rpc_error
from toolcrib.gateway.edge.sessions import Exchange, answer
from toolcrib.gateway.server import Gateway, Peer, RequestInfo
from toolcrib.gateway.trust.identity import Principal

KNOWN_VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)
LISTEN = "subscriptions/listen"
LISTEN_NOT_ACCEPTABLE = "Not Acceptable: subscriptions/listen answers with a stream; send Accept: text/event-stream\n"


def _methods_of(versions: tuple[str, ...]) -> frozenset[str]:
    return frozenset(method for method, version in CLIENT_REQUESTS if version in versions)


MODERN_METHODS: Mapping[str, frozenset[str]] = {v: _methods_of((v,)) for v in MODERN_PROTOCOL_VERSIONS}
"""The client requests each modern revision defines (the SDK's surface map)."""
HANDSHAKE_METHODS = _methods_of(HANDSHAKE_PROTOCOL_VERSIONS)
MODERN_ONLY = _methods_of(MODERN_PROTOCOL_VERSIONS) - HANDSHAKE_METHODS
"""``server/discover``, ``subscriptions/listen``: a request for one is modern by its method alone."""


def removed_in(version: str, method: str) -> bool:
    """True when ``method`` is a handshake-era client request that revision ``version`` dropped."""
    return method in HANDSHAKE_METHODS and method not in MODERN_METHODS.get(version, frozenset())


def is_modern(headers: Mapping[str, str], raw: Mapping[str, Any]) -> bool:
    """Whether a POST without ``Mcp-Session-Id`` is judged by the 2026-07-28 rules (module docstring)."""
    version = headers.get("MCP-Protocol-Version")
    if version is not None and (version in MODERN_PROTOCOL_VERSIONS or version not in KNOWN_VERSIONS):
        return True
    params = raw.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta:
        return True
    return raw.get("method") in MODERN_ONLY


def reject(rejection: InboundLadderRejection, rid: Any) -> web.Response:
    """A ladder rejection as its JSON-RPC error, with the SDK's HTTP status for the code (400 unless mapped)."""
    status = ERROR_CODE_HTTP_STATUS.get(rejection.code, 400)
    return rpc_error(rejection.code, rejection.message, rid, status=status, data=rejection.data)


def private_cache(method: str, message: types.JSONRPCMessage) -> None:
    """Mark a cacheable result ``cacheScope: "private"`` (SEP-2549): listings and reads are per principal."""
    if method in CACHEABLE_METHODS and isinstance(message, types.JSONRPCResponse) and "cacheScope" in message.result:
        message.result["cacheScope"] = "private"


class LogGatedExchange(Exchange):
    """A stateless request's dispatch context that delivers ``notifications/message`` only at the
    levels the request opted into with ``_meta["io.modelcontextprotocol/logLevel"]`` (that level and
    above; absent: none). Spec 2026-07-28 server/utilities/logging: ``logging/setLevel`` is gone and
    log delivery is a per-request opt-in; the server MUST NOT send a log the request did not ask for.
    The gate is the SDK's (:func:`mcp.server.connection.allowed_log_levels`)."""

    def __init__(self, rid: Any, headers: Any, info: RequestInfo, params: Mapping[str, Any] | None, version: str):
        super().__init__(rid, headers, info, progress_token_from_params(params))
        meta = (params or {}).get("_meta")
        self.levels = allowed_log_levels(version, meta if isinstance(meta, Mapping) else None)

    async def notify(self, method: str, params: Any, opts: CallOptions | None = None) -> None:
        if method == "notifications/message" and (params or {}).get("level") not in self.levels:
            return
        await super().notify(method, params, opts)


class Stateless:
    """Serves the modern POSTs of :class:`toolcrib.gateway.edge.http.HttpTransport`.

    ``busy()`` is a context manager the transport uses to count requests in flight (for a graceful
    shutdown); each served request is inside one.
    """

    def __init__(self, gateway: Gateway, busy: Callable[[], AbstractContextManager[None]]) -> None:
        self.gateway = gateway
        self.busy = busy

    async def post(
        self, request: web.Request, principal: Principal, message: types.JSONRPCMessage, raw: dict[str, Any]
    ) -> web.StreamResponse:
        if isinstance(message, types.JSONRPCNotification):
            version = request.headers.get("MCP-Protocol-Version", "")
            unsupported = unsupported_protocol_version_rejection(version) if version else None
            return reject(unsupported, None) if unsupported is not None else web.Response(status=202)
        if not isinstance(message, types.JSONRPCRequest):
            return rpc_error(types.INVALID_REQUEST, "Bad Request: POST a JSON-RPC request or notification")
        rid = message.id
        if message.method == LISTEN and not accepted(request.headers.get("Accept"))[1]:
            return web.Response(status=406, text=LISTEN_NOT_ACCEPTABLE)
        raw_headers = list(request.headers.items())
        duplicated = hdr.routing_rejection(raw_headers)
        if duplicated is not None:
            return reject(duplicated, rid)
        verdict = classify_inbound_request(raw, headers={k.lower(): v for k, v in raw_headers})
        if isinstance(verdict, InboundLadderRejection):
            return reject(verdict, rid)
        version = verdict.protocol_version
        if removed_in(version, message.method):
            text = f"Method not found: {message.method} was removed in {version}; send requests with _meta instead"
            return rpc_error(types.METHOD_NOT_FOUND, text, rid, status=404)
        params = message.params or {}
        named = hdr.extension_name_rejection(message.method, params, raw_headers)
        if named is not None:
            return reject(named, rid)
        if message.method == "tools/call":
            arguments = params.get("arguments")
            schema = hdr.tool_schema(self.gateway, principal, params.get("name"))
            if isinstance(arguments, dict) or arguments is None:
                bad = hdr.param_rejection(schema, arguments or {}, raw_headers)
                if bad is not None:
                    return reject(bad, rid)
        return await self._serve(request, principal, message, verdict)

    async def _serve(
        self, request: web.Request, principal: Principal, message: types.JSONRPCRequest, verdict: InboundModernRoute
    ) -> web.StreamResponse:
        peer = Peer(transport="http", principal=principal, stateful=False)
        info = RequestInfo(peer, principal)
        dctx = LogGatedExchange(message.id, request.headers, info, message.params, verdict.protocol_version)
        connection = Connection.from_envelope(
            verdict.protocol_version, verdict.client_info, verdict.client_capabilities
        )
        send, recv = anyio.create_memory_object_stream[types.JSONRPCMessage](256)
        dctx.sink = send

        async def run() -> None:
            out = await answer(self.gateway.server, dctx, message, connection)
            private_cache(message.method, out)
            with anyio.CancelScope(shield=True):
                await send.send(out)
                send.close()

        with self.busy():
            try:
                if self.gateway.answers_locally(message.params):  # search_tools: no task, answered in place
                    await run()
                    return await respond(request, recv, message.id, {}, error_status=ERROR_CODE_HTTP_STATUS)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    resp = await respond(request, recv, message.id, {}, error_status=ERROR_CODE_HTTP_STATUS)
                return resp
            finally:
                send.close()
                recv.close()
