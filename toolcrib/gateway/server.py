"""The MCP server a client sees: dispatcher mode or passthrough mode, over any transport.

One :class:`Gateway` serves every client. Transports (:mod:`toolcrib.gateway.edge`) attach a
:class:`RequestInfo` to each inbound message, naming the :class:`Peer` (the client connection) and
the authenticated principal; handlers read it from ``ctx.request``.

Every request that reaches an upstream, whatever the method and path, becomes an
:class:`~toolcrib.gateway.pipeline.UpstreamCall` and goes through the one
:class:`~toolcrib.gateway.pipeline.Pipeline`. Listings (tools, resources, templates, prompts) show
a principal only what its policy lets it reach; anything else is answered exactly as if it did not
exist, and the refusal is audited with the rule that decided it.
"""

from __future__ import annotations

import fnmatch
import logging
import secrets
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.caching import CacheHint, validate_cache_hints
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError

from toolcrib import __version__
from toolcrib.config import Config
from toolcrib.errors import InvalidArguments
from toolcrib.gateway import listen, tasks
from toolcrib.gateway.changes import notify, upstream_changed
from toolcrib.gateway.forward import Forwarder
from toolcrib.gateway.mrtr import Mrtr, arrive
from toolcrib.gateway.parked import Parking
from toolcrib.gateway.pipeline import Layer, Pipeline, TargetKind, UpstreamCall, quarantined_text, tool_error
from toolcrib.gateway.relay import Relay
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.quarantine import Trust
from toolcrib.gateway.trust.redaction import Redactor
from toolcrib.gateway.trust.sealed import Sealer
from toolcrib.observe.savings import SavingsMeter
from toolcrib.router import dispatcher as disp
from toolcrib.router.pool import Pool
from toolcrib.router.tolerate import client_declared
from toolcrib.router.upstreams import current_caller

log = logging.getLogger("toolcrib.gateway")

Ctx = ServerRequestContext[Any, Any]
SEARCH_CONCURRENCY = 2
"""Searches embedding a query at once: the model is CPU-bound (and itself multi-threaded), so more
parallel searches only starve the event loop that serves every other call."""
CACHE_HINTED = ("tools/list", "resources/list", "resources/templates/list", "prompts/list", "resources/read")
Refused = Callable[[UpstreamCall, str, str], None]
"""``(call, rule, reason)``: a request answered as unknown or refused before the pipeline."""


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
    log_level: str | None = None
    persist: Callable[[], Awaitable[None]] | None = None
    """Set by a transport whose sessions are shared by replicas: writes ``loaded``, ``subscriptions``
    and ``log_level`` to the shared store. The handler that changes them awaits it before its answer
    exists, so another replica never serves the session's next request from the state before it."""

    async def changed(self) -> None:
        """This peer's shared state changed: persist it now (no-op unless :attr:`persist` is set)."""
        if self.persist is not None:
            await self.persist()


@dataclass(frozen=True)
class RequestInfo:
    """Attached by the transport to every inbound message (``ServerMessageMetadata.request_context``)."""

    peer: Peer
    principal: Principal


class Gateway:
    """The client-facing MCP server, shared by every transport."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        trust: Trust,
        redactor: Redactor,
        *,
        index: disp.Searcher | None = None,
        layers: Sequence[Layer] = (),
        on_search: Callable[[UpstreamCall, Sequence[str]], None] | None = None,
        on_refused: Refused | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.trust = trust
        self.redactor = redactor
        self.index = index
        self.sealer = sealer or Sealer(secrets.token_bytes(32))
        """Mints and opens the tokens clients echo back (requestState, task ids): `trust/sealed.py`."""
        self.mode = config.gateway.mode
        self._on_search = on_search
        self._on_refused = on_refused
        self._search_slots: anyio.CapacityLimiter | None = None
        self.savings: SavingsMeter | None = None
        """Records what each tools/list and search_tools answer cost in tokens (set by ``app.build``)."""
        self.mrtr = Mrtr(redactor, self.sealer)
        self.mrtr.parking = Parking(self.mrtr, lambda: pool.task_group)  # parked calls live as long as the pool serves
        self.forwarder = forwarder = Forwarder(pool, self.mrtr)
        self.pipeline = Pipeline(layers, forwarder)
        self.peers: weakref.WeakSet[Peer] = weakref.WeakSet()
        pool.subscribe(lambda server, what: upstream_changed(self, server, what))
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
        self.tasks = tasks.install(self, forwarder)  # tasks extension (SEP-2663): gateway/tasks.py
        self.listeners = listen.install(self)  # subscriptions/listen (SEP-2575): gateway/listen.py
        # SEP-2549 cache hints for results a handler leaves unset (an upstream's own ttlMs on a read wins):
        # listings follow upstream changes and policy at once and are filtered per principal.
        self.server.cache_hints = validate_cache_hints({m: CacheHint(ttl_ms=0, scope="private") for m in CACHE_HINTED})
        self.init_options: InitializationOptions = self.server.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )

    def _instructions(self) -> str:
        if self.mode == "dispatcher":
            return "Use search_tools to find the tool for a task, then invoke it."
        return "toolcrib: tools of several MCP servers, named <server>" + self.config.gateway.separator + "<tool>."

    def answers_locally(self, params: Any) -> bool:
        """Whether a ``tools/call`` with these params is answered by toolcrib itself, never reaching
        an upstream: ``search_tools`` in dispatcher mode (an index lookup of milliseconds)."""
        return self.mode == "dispatcher" and isinstance(params, dict) and params.get("name") == disp.SEARCH

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

    def may_use(self, principal: Principal, target: str, kind: TargetKind = "tool") -> bool:
        return self.trust.may_use(principal, target, kind)

    def _call(
        self, ctx: Ctx, info: RequestInfo, method: str, kind: TargetKind, target: str, server: str, name: str, **kw: Any
    ) -> UpstreamCall:
        peer = info.peer
        return UpstreamCall(
            principal=info.principal,
            method=method,
            kind=kind,
            target=target,
            server=server,
            name=name,
            arguments=kw.pop("arguments", {}),
            via=kw.pop("via", "direct" if kind == "tool" else method),  # see UpstreamCall.via
            transport=peer.transport,
            session_id=peer.id if peer.stateful else None,
            client_name=peer.client_name,
            request_id=ctx.request_id,
            **kw,
        )

    def _unknown(self, call: UpstreamCall, reason: str) -> None:
        """Record a request for something this principal may not reach (or that does not exist)."""
        if self._on_refused is None:
            return
        rule = reason.replace("_", "-")
        if reason == "hidden":
            rule = self.trust.refusing_rule(call.principal, call.target, call.arguments, call.kind)
        self._on_refused(call, rule, reason)

    async def _run(self, ctx: Ctx, call: UpstreamCall) -> Any:
        relay = Relay(ctx, self.redactor, self.info(ctx).peer.log_level, principal_id=call.principal.id)
        call.relay = relay
        arrive(call, ctx, self.sealer)  # era, capabilities, an MRTR retry (-32602 for a bad requestState)
        token = current_caller.set(relay)
        declared = client_declared.set(call.client_capabilities)  # upstream requests declare no more
        try:
            return await self.pipeline.call(call)
        finally:
            client_declared.reset(declared)
            current_caller.reset(token)

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
        tools = self.visible_tools(info.peer, info.principal)
        if self.savings is not None:
            self.savings.listed(self, info.principal, tools)
        return types.ListToolsResult(tools=tools)

    def _callable_by_name(self, peer: Peer, key: str) -> bool:
        if self.mode == "passthrough":
            return key in self.pool.catalog.tools
        if key in peer.loaded:
            return True
        return any(fnmatch.fnmatchcase(key, g) for g in self.config.gateway.always_expose)

    async def _call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        info = self._peer(ctx)
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
        entry = self.pool.catalog.tools.get(name)
        call = self._call(
            ctx, info, "tools/call", "tool", name, entry.server if entry else "", entry.name if entry else name,
            arguments=arguments, via=via, tool_hash=entry.hash if entry else None,
        )  # fmt: skip
        allowed = entry is not None and self.may_use(info.principal, name)
        if not allowed or (via != "invoke" and not self._callable_by_name(info.peer, name)):
            self._unknown(call, "unknown" if entry is None else "hidden" if not allowed else "not_loaded")
            why = self._why_unavailable(info.principal, name, entry is not None)
            if why is not None and via == "invoke":
                return tool_error(why)
            if why is not None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}; {why}")
            if via == "invoke":
                return tool_error(f"unknown tool {name!r}; call search_tools to find the exact name")
            if allowed and not info.peer.stateful:
                hint = (
                    f'; a stateless client calls a found tool with invoke: {{"tool": "{name}", "arguments": {{...}}}}'
                )
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}{hint}")
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        result: types.CallToolResult | types.InputRequiredResult = await self._run(ctx, call)
        return result

    def _down_servers(self, principal: Principal, tool: str | None = None) -> list[tuple[str, str]]:
        """``[(server, status)]`` of the servers not connected (:meth:`Pool.not_connected`) that ``principal``
        may hear about: those whose tools the policy would list to it, probed with ``tool`` (a name asked
        for, which must then carry the server's prefix unless ``keep_names``) or ``SERVER<sep>*``."""
        sep, keep = self.config.gateway.separator, self.config.gateway.keep_names
        down = []
        for server, status in self.pool.not_connected():
            if tool is not None and not keep and not tool.startswith(server + sep):
                continue
            probe = tool if tool is not None else ("*" if keep else f"{server}{sep}*")
            if self.trust.may_use(principal, probe):
                down.append((server, status))
        return down

    def _why_unavailable(self, principal: Principal, name: str, listed: bool) -> str | None:
        """Why tool ``name`` cannot be called, when it is not the caller's mistake: it is quarantined
        (``listed``, and the policy would allow it), or no listed tool has this name and the server its
        name points to (any server not connected, with ``keep_names``) is not connected. None: unknown."""
        if listed:
            return quarantined_text(name) if self.trust.only_quarantined(principal, name) else None
        down = self._down_servers(principal, name)
        if not down:
            return None
        return f"tool {name!r} is not available now, its server is {disp.not_connected_text(down)}"

    async def _search(self, ctx: Ctx, info: RequestInfo, arguments: dict[str, Any]) -> types.CallToolResult:
        args = disp.parse_search_args(arguments)
        if self.index is None:
            return tool_error("search is unavailable: the tool index is not loaded; see `toolcrib serve` output")
        principal = info.principal
        if self._search_slots is None:
            self._search_slots = anyio.CapacityLimiter(SEARCH_CONCURRENCY)
        index = self.index

        def run() -> list[Any]:
            return disp.search(index, self.pool.catalog, args, lambda k: self.may_use(principal, k))

        if index.needs_model(disp.search_queries(args)):  # embedding a query: ~5-10 ms of model, in a worker thread
            results = await anyio.to_thread.run_sync(run, limiter=self._search_slots)
        else:  # every query vector cached (or BM25 only): well under a millisecond, cheaper than a thread hop
            results = run()
        keys = [e.key for e, _ in results]
        if self._on_search is not None:
            call = self._call(
                ctx, info, "tools/call", "tool", disp.SEARCH, "", disp.SEARCH, arguments=arguments, via="direct"
            )
            self._on_search(call, keys)
        await self._load(info.peer, keys)
        if results:
            rendered = disp.render_results(results)
        else:
            down = self._down_servers(principal)
            visible = down and any(self.may_use(principal, k) for k in self.pool.catalog.tools)
            rendered = disp.render_results([], disp.empty_search_text(args.server, down, bool(visible)))
        if self.savings is not None:
            self.savings.searched(principal, rendered)
        return rendered

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
            await peer.changed()
            await notify(peer, types.ToolListChangedNotification())

    # ---- resources, prompts, completion, logging ---------------------------------------------

    def _resource(self, ctx: Ctx, info: RequestInfo, method: str, uri: str, **kw: Any) -> UpstreamCall:
        split = self.pool.catalog.split_uri(uri, self.pool.upstreams)
        server, inner = split if split is not None else ("", uri)
        call = self._call(ctx, info, method, "resource", uri, server, inner, **kw)
        if split is None or not self.may_use(info.principal, uri, "resource"):
            self._unknown(call, "hidden" if split is not None else "unknown")
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        return call

    def _prompt(self, ctx: Ctx, info: RequestInfo, method: str, name: str, **kw: Any) -> UpstreamCall:
        entry = self.pool.catalog.prompts.get(name)
        call = self._call(
            ctx, info, method, "prompt", name, entry.server if entry else "", entry.name if entry else name, **kw
        )
        if entry is None or not self.may_use(info.principal, name, "prompt"):
            self._unknown(call, "hidden" if entry is not None else "unknown")
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {name}")
        return call

    async def _list_resources(self, ctx: Ctx, params: Any) -> types.ListResourcesResult:
        p = self._peer(ctx).principal
        items = [r for _, r in self.pool.catalog.resources if self.may_use(p, str(r.uri), "resource")]
        return types.ListResourcesResult(resources=items)

    async def _list_templates(self, ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
        p = self._peer(ctx).principal
        items = [t for _, t in self.pool.catalog.templates if self.may_use(p, t.uri_template, "resource")]
        return types.ListResourceTemplatesResult(resource_templates=items)

    async def _list_prompts(self, ctx: Ctx, params: Any) -> types.ListPromptsResult:
        p = self._peer(ctx).principal
        items = [e.prompt for k, e in self.pool.catalog.prompts.items() if self.may_use(p, k, "prompt")]
        return types.ListPromptsResult(prompts=items)

    async def _read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        call = self._resource(ctx, self._peer(ctx), "resources/read", str(params.uri))
        result: types.ReadResourceResult | types.InputRequiredResult = await self._run(ctx, call)
        return result

    async def _subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        info = self._peer(ctx)
        await self._run(ctx, self._resource(ctx, info, "resources/subscribe", str(params.uri)))
        if str(params.uri) not in info.peer.subscriptions:
            info.peer.subscriptions.add(str(params.uri))
            await info.peer.changed()
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        info = self._peer(ctx)
        uri = str(params.uri)
        call = self._resource(ctx, info, "resources/unsubscribe", uri)  # unknown unless reachable, first
        if uri in info.peer.subscriptions:
            info.peer.subscriptions.discard(uri)
            await info.peer.changed()
        if not any(uri in p.subscriptions for p in self.peers) and not self.listeners.subscribed(uri):
            await self._run(ctx, call)
        return types.EmptyResult()

    async def _get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        args = dict(params.arguments or {})
        call = self._prompt(ctx, self._peer(ctx), "prompts/get", params.name, arguments=args)
        result: types.GetPromptResult | types.InputRequiredResult = await self._run(ctx, call)
        return result

    async def _complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        info = self._peer(ctx)
        ref = params.ref
        kw: dict[str, Any] = {
            "arguments": {params.argument.name: params.argument.value},
            "completion_context": dict(params.context.arguments or {}) if params.context else None,
        }
        if isinstance(ref, types.PromptReference):
            call = self._prompt(ctx, info, "completion/complete", ref.name, **kw)
        else:
            call = self._resource(ctx, info, "completion/complete", ref.uri, **kw)
        result: types.CompleteResult = await self._run(ctx, call)
        return result

    async def _set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        """Answered here, per client connection: upstreams are shared, so one client's level never
        changes what another receives; relayed log messages below it are dropped for this client."""
        peer = self._peer(ctx).peer
        if peer.log_level != params.level:
            peer.log_level = params.level
            await peer.changed()
        return types.EmptyResult()
