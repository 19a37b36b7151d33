"""The MCP server a client sees: dispatcher mode or passthrough mode, over any transport.

One :class:`Gateway` serves every client. Transports (``gateway/http.py``, ``gateway/stdio.py``)
attach a :class:`RequestInfo` to each inbound message, naming the :class:`Peer` (the client
connection) and the authenticated principal; handlers read it from ``ctx.request``.
Every tool call, whatever the path, becomes a :class:`~toolcrib.gateway.pipeline.ToolCall` and
goes through the one :class:`~toolcrib.gateway.pipeline.Pipeline`.
"""

from __future__ import annotations

import fnmatch
import logging
import secrets
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

from toolcrib import __version__
from toolcrib.config import Config
from toolcrib.errors import InvalidArguments, ToolcribError, ToolNotFound, UpstreamError
from toolcrib.gateway.pipeline import Layer, Pipeline, ToolCall, tool_error
from toolcrib.gateway.trust.identity import Principal
from toolcrib.router import dispatcher as disp
from toolcrib.router.pool import Pool
from toolcrib.router.upstreams import current_caller
from toolcrib.router.validation import validate_arguments

log = logging.getLogger("toolcrib.gateway")

Ctx = ServerRequestContext[Any, Any]
SEARCH_CONCURRENCY = 2
"""Searches embedding a query at once: the model is CPU-bound (and itself multi-threaded), so more
parallel searches only starve the event loop that serves every other call."""


@dataclass(eq=False)
class Peer:
    """One client connection: an HTTP session, one stateless HTTP request, or the stdio client."""

    transport: str
    principal: Principal
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    stateful: bool = True
    client_name: str | None = None
    loaded: OrderedDict[str, None] = field(default_factory=OrderedDict)
    outbound: ServerSession | None = None
    subscriptions: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RequestInfo:
    """Attached by the transport to every inbound message (``ServerMessageMetadata.request_context``)."""

    peer: Peer
    principal: Principal


class _Relay:
    """Relays upstream-initiated requests back to the client whose call is in flight."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx

    async def _send(self, request: Any, result_type: Any) -> dict[str, Any]:
        session = self._ctx.session
        if not session.can_send_request:
            raise MCPError(code=types.INVALID_REQUEST, message="the client cannot take server requests here")
        meta = ServerMessageMetadata(related_request_id=self._ctx.request_id)
        result = await session.send_request(request, result_type, metadata=meta)
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped

    async def create_message(self, params: types.CreateMessageRequestParams) -> dict[str, Any]:
        return await self._send(types.CreateMessageRequest(params=params), types.CreateMessageResult)

    async def elicit(self, params: types.ElicitRequestParams) -> dict[str, Any]:
        return await self._send(types.ElicitRequest(params=params), types.ElicitResult)

    async def list_roots(self) -> dict[str, Any]:
        return await self._send(types.ListRootsRequest(), types.ListRootsResult)

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        note = types.LoggingMessageNotification(params=params)
        try:
            await self._ctx.session.send_notification(note, related_request_id=self._ctx.request_id)
        except Exception:
            log.debug("dropped a relayed log message", exc_info=True)


class Gateway:
    """The client-facing MCP server, shared by every transport."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        *,
        index: disp.Searcher | None = None,
        layers: Sequence[Layer] = (),
        allowed: Callable[[Principal, str], bool] | None = None,
        on_search: Callable[[ToolCall, Sequence[str]], None] | None = None,
        on_hidden: Callable[[ToolCall], None] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.index = index
        self.mode = config.gateway.mode
        self._allowed = allowed or (lambda _p, _k: True)
        self._on_search = on_search
        self._on_hidden = on_hidden
        self._search_slots: anyio.CapacityLimiter | None = None
        self.pipeline = Pipeline([*layers, self._validate], self._forward)
        self.peers: weakref.WeakSet[Peer] = weakref.WeakSet()
        pool.subscribe(self._upstream_changed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # logging/setLevel is deprecated in 2026-07-28 but live in 2025-11-25
            self.server: Server[Any] = Server(
                "toolcrib",
                version=__version__,
                instructions=self._instructions(),
                on_list_tools=self._list_tools,
                on_call_tool=self._call_tool,
                on_list_resources=self._list_resources,
                on_list_resource_templates=self._list_templates,
                on_read_resource=self._read_resource,
                on_subscribe_resource=self._subscribe,
                on_unsubscribe_resource=self._unsubscribe,
                on_list_prompts=self._list_prompts,
                on_get_prompt=self._get_prompt,
                on_completion=self._complete,
                on_set_logging_level=self._set_level,
            )
        self.server.middleware = []  # no tracing middleware on the hot path
        self.init_options: InitializationOptions = self.server.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )

    def _instructions(self) -> str:
        if self.mode == "dispatcher":
            return "Use search_tools to find the tool for a task, then invoke it."
        return "toolcrib: tools of several MCP servers, named <server>" + self.config.gateway.separator + "<tool>."

    # ---- who is asking -----------------------------------------------------------------------

    @staticmethod
    def info(ctx: Ctx) -> RequestInfo:
        req = ctx.request
        if isinstance(req, RequestInfo):
            return req
        raise MCPError(code=types.INTERNAL_ERROR, message="request reached the gateway without a transport context")

    def _peer(self, ctx: Ctx) -> RequestInfo:
        info = self.info(ctx)
        peer = info.peer
        if peer.stateful and peer.outbound is None:
            peer.outbound = ctx.session
            self.peers.add(peer)
            params = ctx.session.client_params
            peer.client_name = params.client_info.name if params and params.client_info else None
        return info

    def may_use(self, principal: Principal, key: str) -> bool:
        return self._allowed(principal, key)

    # ---- tools -------------------------------------------------------------------------------

    def visible_tools(self, peer: Peer, principal: Principal) -> list[types.Tool]:
        catalog = self.pool.catalog
        if self.mode == "passthrough":
            return [e.tool for k, e in catalog.tools.items() if self.may_use(principal, k)]
        out = list(disp.DISPATCHER_TOOLS)
        pinned = self.config.gateway.always_expose
        seen = set()
        for key, entry in catalog.tools.items():
            if any(fnmatch.fnmatchcase(key, g) for g in pinned) and self.may_use(principal, key):
                out.append(entry.tool)
                seen.add(key)
        for key in peer.loaded:
            loaded = catalog.tools.get(key)
            if loaded is not None and key not in seen and self.may_use(principal, key):
                out.append(loaded.tool)
        return out

    async def _list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        info = self._peer(ctx)
        return types.ListToolsResult(tools=self.visible_tools(info.peer, info.principal))

    def _callable_by_name(self, peer: Peer, key: str) -> bool:
        if self.mode == "passthrough":
            return key in self.pool.catalog.tools
        if key in peer.loaded:
            return True
        return any(fnmatch.fnmatchcase(key, g) for g in self.config.gateway.always_expose)

    async def _call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        info = self._peer(ctx)
        peer, principal = info.peer, info.principal
        name, arguments = params.name, dict(params.arguments or {})
        via = "passthrough" if self.mode == "passthrough" else "direct"
        if self.mode == "dispatcher" and name in disp.RESERVED_NAMES:
            try:
                if name == disp.SEARCH:
                    return await self._search(ctx, info, arguments)
                name, arguments = disp.parse_invoke_args(arguments)
            except InvalidArguments as exc:
                return tool_error(exc.message)
            via = "invoke"
        elif not self._callable_by_name(peer, name) or not self.may_use(principal, name):
            self._hidden(ctx, info, name, arguments)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        try:
            entry = self.pool.entry(name)
        except ToolNotFound as exc:
            return tool_error(exc.message)
        if via == "invoke" and not self.may_use(principal, name):
            self._hidden(ctx, info, name, arguments)
            return tool_error(f"unknown tool {name!r}; call search_tools to find the exact name")
        call = _tool_call(ctx, info, entry.key, entry.server, entry.name, arguments, via, entry.hash)
        call.notes["ctx"] = ctx
        token = current_caller.set(_Relay(ctx))
        try:
            return await self.pipeline.call(call)
        finally:
            current_caller.reset(token)

    def _hidden(self, ctx: Ctx, info: RequestInfo, name: str, arguments: dict[str, Any]) -> None:
        """A call to a tool this principal may not see: answered as unknown, recorded as denied."""
        entry = self.pool.catalog.tools.get(name)
        if self._on_hidden is None or entry is None:
            return
        self._on_hidden(_tool_call(ctx, info, entry.key, entry.server, entry.name, arguments, "hidden", entry.hash))

    async def _search(self, ctx: Ctx, info: RequestInfo, arguments: dict[str, Any]) -> types.CallToolResult:
        args = disp.parse_search_args(arguments)
        if self.index is None:
            return tool_error("search is unavailable: the tool index is not loaded; see `toolcrib serve` output")
        principal = info.principal
        if self._search_slots is None:
            self._search_slots = anyio.CapacityLimiter(SEARCH_CONCURRENCY)
        results = await anyio.to_thread.run_sync(
            lambda: disp.search(self.index, self.pool.catalog, args, lambda k: self.may_use(principal, k)),  # type: ignore[arg-type]
            limiter=self._search_slots,
        )
        keys = [e.key for e, _ in results]
        if self._on_search is not None:
            self._on_search(_tool_call(ctx, info, disp.SEARCH, "", disp.SEARCH, arguments, "search_tools"), keys)
        await self._load(info.peer, keys)
        return disp.render_results(results)

    async def _load(self, peer: Peer, keys: Sequence[str]) -> None:
        """Dynamic loading: add found tools to this session's tools/list and tell the client."""
        cap = self.config.gateway.loaded_tools_max
        if not peer.stateful or cap == 0 or not keys or peer.outbound is None:
            return
        before = list(peer.loaded)
        for key in keys:
            peer.loaded[key] = None
            peer.loaded.move_to_end(key)
        while len(peer.loaded) > cap:
            peer.loaded.popitem(last=False)
        if list(peer.loaded) != before:
            await _notify(peer, types.ToolListChangedNotification())

    async def _validate(self, call: ToolCall, nxt: Any) -> types.CallToolResult:
        entry = self.pool.catalog.tools.get(call.key)
        try:
            validate_arguments(call.key, entry.tool.input_schema if entry else None, call.arguments)
        except InvalidArguments as exc:
            call.notes["outcome"] = "invalid_arguments"
            return tool_error(exc.message)
        result: types.CallToolResult = await nxt(call)
        return result

    async def _forward(self, call: ToolCall) -> types.CallToolResult:
        """The upstream edge: bulkhead, deadline, progress relay."""
        ctx: Ctx | None = call.notes.get("ctx")
        progress_cb = None
        token = ctx.meta.get("progress_token") if ctx is not None and ctx.meta else None
        if ctx is not None and token is not None:
            session, rid = ctx.session, ctx.request_id

            async def progress_cb(progress: float, total: float | None, message: str | None) -> None:
                await session.send_progress_notification(token, progress, total, message, related_request_id=str(rid))

        try:
            up = self.pool.upstream(call.server)
            return await up.request(
                lambda c: c.call_tool(call.tool, call.arguments, progress_callback=progress_cb),
                what=f"tools/call {call.tool}",
            )
        except UpstreamError as exc:
            call.notes["outcome"] = type(exc).__name__
            return tool_error(exc.message)
        except MCPError as exc:
            call.notes["outcome"] = "protocol_error"
            return tool_error(f"{call.server} answered with an error: {exc.error.message}")

    # ---- resources, prompts, completion, logging ---------------------------------------------

    def _split(self, uri: str) -> tuple[str, str]:
        split = self.pool.catalog.split_uri(uri, self.pool.upstreams)
        if split is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        return split

    async def _upstream_call(self, server: str, op: Any, what: str) -> Any:
        try:
            return await self.pool.upstream(server).request(op, what=what)
        except ToolcribError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=exc.message) from None

    async def _list_resources(self, ctx: Ctx, params: Any) -> types.ListResourcesResult:
        self._peer(ctx)
        return types.ListResourcesResult(resources=[r for _, r in self.pool.catalog.resources])

    async def _list_templates(self, ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
        self._peer(ctx)
        return types.ListResourceTemplatesResult(resource_templates=[t for _, t in self.pool.catalog.templates])

    async def _read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        self._peer(ctx)
        uri = str(params.uri)
        server, inner = self._split(uri)
        result: types.ReadResourceResult = await self._upstream_call(
            server, lambda c: c.read_resource(inner, cache_mode="bypass"), f"resources/read {inner}"
        )
        contents = [
            c.model_copy(update={"uri": self.pool.catalog.resource_uri(server, str(c.uri))}) for c in result.contents
        ]
        return result.model_copy(update={"contents": contents})

    async def _subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        info = self._peer(ctx)
        server, inner = self._split(str(params.uri))
        await self._subscribe_upstream(server, inner, True)
        info.peer.subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        info = self._peer(ctx)
        info.peer.subscriptions.discard(str(params.uri))
        server, inner = self._split(str(params.uri))
        if not any(str(params.uri) in p.subscriptions for p in self.peers):
            await self._subscribe_upstream(server, inner, False)
        return types.EmptyResult()

    async def _subscribe_upstream(self, server: str, uri: str, on: bool) -> None:
        try:
            await self.pool.upstream(server).subscribe(uri, on)
        except ToolcribError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=exc.message) from None

    async def _list_prompts(self, ctx: Ctx, params: Any) -> types.ListPromptsResult:
        self._peer(ctx)
        return types.ListPromptsResult(prompts=[p.prompt for p in self.pool.catalog.prompts.values()])

    async def _get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        self._peer(ctx)
        entry = self.pool.catalog.prompts.get(params.name)
        if entry is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        args = dict(params.arguments or {})
        result: types.GetPromptResult = await self._upstream_call(
            entry.server, lambda c: c.get_prompt(entry.name, args), f"prompts/get {entry.name}"
        )
        return result

    async def _complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        self._peer(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            entry = self.pool.catalog.prompts.get(ref.name)
            if entry is None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {ref.name}")
            server = entry.server
            upstream_ref: Any = types.PromptReference(type="ref/prompt", name=entry.name)
        else:
            server, inner = self._split(ref.uri)
            upstream_ref = types.ResourceTemplateReference(type="ref/resource", uri=inner)
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = dict(params.context.arguments or {}) if params.context else None
        result: types.CompleteResult = await self._upstream_call(
            server, lambda c: c.complete(upstream_ref, argument, context), "completion/complete"
        )
        return result

    async def _set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self._peer(ctx)
        for up in self.pool.upstreams.values():
            if up.state.status == "connected" and (up.state.protocol_version or "") < "2026":
                with anyio.move_on_after(5):
                    try:
                        await up.request(lambda c: c.set_logging_level(params.level), what="logging/setLevel")
                    except (ToolcribError, MCPError):
                        log.debug("upstream %s refused logging/setLevel", up.name)
        return types.EmptyResult()

    # ---- upstream changes --------------------------------------------------------------------

    async def _upstream_changed(self, server: str, what: str) -> None:
        note: types.ServerNotification | None = None
        if what.startswith("resource_updated:"):
            upstream_uri = what.split(":", 1)[1]
            uri = self.pool.catalog.resource_uri(server, upstream_uri)
            update = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri=uri))
            for peer in list(self.peers):
                if uri in peer.subscriptions:
                    await _notify(peer, update)
            return
        if what in ("tools_changed", "connected", "disconnected"):
            if self.mode == "passthrough" or self.config.gateway.always_expose:
                note = types.ToolListChangedNotification()
        elif what == "resources_changed":
            note = types.ResourceListChangedNotification()
        elif what == "prompts_changed":
            note = types.PromptListChangedNotification()
        if note is not None:
            for peer in list(self.peers):
                await _notify(peer, note)


def _tool_call(
    ctx: Ctx,
    info: RequestInfo,
    key: str,
    server: str,
    tool: str,
    arguments: dict[str, Any],
    via: str,
    tool_hash: str | None = None,
) -> ToolCall:
    """The :class:`ToolCall` for a request of ``info``'s peer and principal."""
    peer = info.peer
    return ToolCall(
        principal=info.principal,
        key=key,
        server=server,
        tool=tool,
        arguments=arguments,
        via=via,
        transport=peer.transport,
        session_id=peer.id if peer.stateful else None,
        client_name=peer.client_name,
        request_id=ctx.request_id,
        tool_hash=tool_hash,
    )


async def _notify(peer: Peer, note: Any) -> None:
    if peer.outbound is None:
        return
    try:
        with anyio.move_on_after(2):
            await peer.outbound.send_notification(note)
    except Exception:
        log.debug("could not notify peer %s", peer.id, exc_info=True)
