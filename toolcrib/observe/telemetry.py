"""Operator telemetry of one gateway: Prometheus metrics (:mod:`.metrics`) and OpenTelemetry traces
(:mod:`.tracing`), wired by :func:`open_telemetry` and :meth:`Telemetry.attach`.

:class:`Telemetry` hooks the gateway in four places, each one call per request:

- :meth:`Telemetry.middleware`, the MCP server's only middleware, sees every request (``initialize``,
  listings, ``search_tools``, every upstream-bound call): it counts it with its outcome and duration
  and, with tracing on, runs its SERVER span;
- :meth:`Telemetry.layer`, the outermost pipeline layer, tells the middleware which upstream call a
  request became (server, the real tool behind ``invoke``, the outcome the layers noted);
- :class:`TimedSearcher` wraps the tool index (``search_tools`` latency, its span);
- :meth:`Telemetry.timed` wraps the policy and approval layers (approval wait; their spans), and
  :meth:`Telemetry.upstream_layer` (tracing only) runs the upstream CLIENT span and hands its
  context to the upstream edge.

With tracing off (``[telemetry] otlp_endpoint`` unset) no tracer exists and every hook tests one
attribute for None; nothing is allocated for tracing.
"""

from __future__ import annotations

import logging
import time
from asyncio import CancelledError
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST

from toolcrib.gateway.pipeline import OUTCOMES
from toolcrib.observe.context import outgoing
from toolcrib.observe.metrics import Metrics, TimedLog
from toolcrib.observe.tracing import MAX_VALUE, Tracing, short_name

if TYPE_CHECKING:
    from toolcrib.config import Config
    from toolcrib.gateway.audit.writer import AuditWriter
    from toolcrib.gateway.pipeline import Layer, Next, Result, UpstreamCall
    from toolcrib.gateway.server import Gateway
    from toolcrib.gateway.trust.approvals import AsyncApprovals
    from toolcrib.gateway.trust.redaction import Redactor
    from toolcrib.gateway.trust.secrets import CredentialStore
    from toolcrib.router.pool import Pool

__all__ = ["Metrics", "Telemetry", "TimedSearcher", "Tracing", "open_telemetry"]

log = logging.getLogger("toolcrib.observe")
SEARCH = "search_tools"
INVOKE = "invoke"


class _Request:
    """What the middleware learns about one MCP request while it is served."""

    __slots__ = ("call", "outcome", "span", "tool")

    def __init__(self, tool: str) -> None:
        self.call: UpstreamCall | None = None
        self.outcome: str | None = None
        self.tool = tool
        self.span: Span | None = None


_current: ContextVar[_Request | None] = ContextVar("toolcrib_request", default=None)


class Telemetry:
    """Metrics (always) and traces (when configured) of one gateway."""

    def __init__(
        self, metrics: Metrics, tracing: Tracing | None = None, served: Callable[[str], bool] | None = None
    ) -> None:
        """``served(method)``: True for a method the gateway answers (others are labelled ``other``)."""
        self.metrics = metrics
        self.tracing = tracing
        self._served = served or (lambda method: True)
        self.pending_approvals: Callable[[], Awaitable[int]] | None = None
        """Read by ``/metrics`` for ``toolcrib_approvals_pending``."""

    def attach(self, gateway: Gateway, pool: Pool, writer: AuditWriter, approvals: AsyncApprovals) -> None:
        """Hook a built gateway: its MCP server's middleware, the audit writer's timing and queue
        depth, upstream state and restarts, pending approvals (read per scrape)."""
        server = gateway.server
        server.middleware.append(self.middleware)
        self._served = lambda method: method == "initialize" or server.get_request_handler(method) is not None
        writer.sink = TimedLog(writer.sink, self.metrics)
        live = self.metrics.live
        live.upstreams = lambda: [(name, up.state.status == "connected") for name, up in sorted(pool.upstreams.items())]
        live.audit_queue = lambda: writer.queued
        seen: set[str] = set()

        async def restarted(server_name: str, what: str) -> None:
            if what == "connected":
                if server_name in seen:
                    self.metrics.upstream_restarted(server_name)
                seen.add(server_name)

        pool.subscribe(restarted)

        async def pending() -> int:
            return len(await approvals.list("pending"))

        self.pending_approvals = pending

    def add_route(self, app: web.Application, sessions: Callable[[], int]) -> None:
        """``GET /metrics`` for operators (the guard: Host/Origin, auth, the operators group);
        ``sessions()`` counts the open MCP sessions."""
        from toolcrib.gateway.edge.guard import access

        self.metrics.live.sessions = sessions
        app.router.add_get("/metrics", access("operator", self.handler))

    # ---- every MCP request -------------------------------------------------------------------

    async def middleware(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """The MCP server middleware (``(ctx, call_next) -> result``, mcp ``ServerMiddleware``)."""
        if ctx.request_id is None:  # a notification: not a request
            return await call_next(ctx)
        method: str = ctx.method
        params = ctx.params
        tool = ""
        if method == "tools/call" and params is not None and params.get("name") == SEARCH:
            tool = SEARCH
        req = _Request(tool)
        if self.tracing is not None:
            req.span = self._server_span(ctx, method, params)
        token = _current.set(req)
        started = time.perf_counter()
        outcome = "error"
        error: MCPError | None = None
        try:
            result = await call_next(ctx)
            tool_error = method == "tools/call" and isinstance(result, dict) and result.get("isError") is True
            outcome = self._noted(req) or ("tool_error" if tool_error else "ok")
            return result
        except MCPError as exc:
            error = exc
            outcome = self._noted(req, "protocol_error") or "error"
            raise
        except CancelledError:  # anyio's cancellation on asyncio, the only backend toolcrib runs on
            outcome = "cancelled"
            raise
        finally:
            _current.reset(token)
            call = req.call
            server = call.server if call is not None else ""
            if call is not None and call.kind == "tool":
                req.tool = call.target
            label = method if self._served(method) else "other"
            self.metrics.request(
                label, server, req.tool if method == "tools/call" else "", outcome, time.perf_counter() - started
            )
            if req.span is not None and self.tracing is not None:
                _end_server_span(self.tracing, req, outcome, error)

    @staticmethod
    def _noted(req: _Request, default: str | None = None) -> str | None:
        """The outcome the pipeline noted for the request's upstream call (audit vocabulary)."""
        if req.outcome is not None:
            return req.outcome
        call = req.call
        if call is None:
            return None
        noted = call.state.outcome
        if noted:
            return OUTCOMES.get(noted, "tool_error")
        return default

    def refused(self, call: UpstreamCall, reason: str) -> None:
        """A request refused before the pipeline (``hidden`` by policy, ``unknown``, ``not_loaded``)."""
        req = _current.get()
        if req is not None and reason == "hidden":
            req.outcome = "denied"
            req.call = call

    def _server_span(self, ctx: Any, method: str, params: Mapping[str, Any] | None) -> Span:
        tracing = self.tracing
        assert tracing is not None
        target: str | None = None
        attributes: dict[str, Any] = {"mcp.method.name": method, "jsonrpc.request.id": str(ctx.request_id)}
        if ctx.protocol_version:
            attributes["mcp.protocol.version"] = ctx.protocol_version
        if params is not None:
            name = params.get("name")
            if method == "tools/call" and isinstance(name, str):
                arguments = params.get("arguments")
                if name == INVOKE and isinstance(arguments, Mapping) and isinstance(arguments.get("tool"), str):
                    name = arguments["tool"]  # the REAL tool behind invoke
                target = name = name[:MAX_VALUE]
                attributes["gen_ai.tool.name"] = name
            elif method == "prompts/get" and isinstance(name, str):
                target = name = name[:MAX_VALUE]
                attributes["gen_ai.prompt.name"] = name
            elif isinstance(uri := params.get("uri"), str):
                attributes["mcp.resource.uri"] = uri[
                    :MAX_VALUE
                ]  # not in the span name: high cardinality (the convention)
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        info = ctx.request
        peer = getattr(info, "peer", None)
        headers = None
        if peer is not None:
            if peer.stateful and peer.transport == "http":
                attributes["mcp.session.id"] = peer.id
            if peer.transport == "stdio":
                attributes["network.transport"] = "pipe"
            else:
                attributes["network.transport"] = "tcp"
                attributes["network.protocol.name"] = "http"
                outbound = getattr(ctx.session, "_request_outbound", None)
                headers = getattr(getattr(outbound, "transport", None), "headers", None)
        meta = params.get("_meta") if params is not None else None
        parent = tracing.extract(meta if isinstance(meta, Mapping) else None)
        ambient = tracing.extract(headers) if headers is not None else None
        links: list[Link] = []
        if parent is None:
            parent = ambient
        elif ambient is not None:
            links.append(Link(trace.get_current_span(ambient).get_span_context()))
        return tracing.tracer.start_span(
            f"{method} {short_name(target)}" if target else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=links,
        )

    # ---- the pipeline ------------------------------------------------------------------------

    def layer(self) -> Layer:
        """The outermost pipeline layer: names the request's upstream call for the middleware."""

        async def layer(call: UpstreamCall, nxt: Next) -> Result:
            req = _current.get()
            if req is not None:
                req.call = call
            return await nxt(call)

        return layer

    def timed(self, name: str, layer: Layer) -> Layer:
        """``layer`` (policy or approval) with its own work as a ``toolcrib.<name>`` span; for
        ``approval`` also ``toolcrib_approval_wait_seconds``. The span ends when the layer hands the
        call on (or answers it). Without tracing the policy layer is returned unchanged."""
        tracing, metrics = self.tracing, self.metrics
        approval = name == "approval"
        if tracing is None and not approval:
            return layer

        async def timed(call: UpstreamCall, nxt: Next) -> Result:
            if approval:
                decision = call.state.decision
                if decision is None or decision.action != "approve":
                    return await layer(call, nxt)
            started = time.perf_counter()
            span: Span | None = None
            if tracing is not None:
                req = _current.get()
                span = tracing.child(f"toolcrib.{name}", req.span if req is not None else None)
            done = False

            def finish() -> None:
                nonlocal done
                if done:
                    return
                done = True
                if approval:
                    metrics.approval_waited(time.perf_counter() - started)
                if span is not None:
                    decision = call.state.decision
                    if decision is not None:
                        span.set_attribute("toolcrib.policy.action", decision.action)
                        span.set_attribute("toolcrib.policy.rule", decision.rule or "")
                    if call.state.outcome:
                        span.set_attribute("toolcrib.outcome", call.state.outcome)
                    if call.state.approver:
                        span.set_attribute("toolcrib.approver", call.state.approver)
                    span.end()

            async def forward(c: UpstreamCall) -> Result:
                finish()
                return await nxt(c)

            try:
                return await layer(call, forward)
            finally:
                finish()

        return timed

    def upstream_layer(self) -> Layer | None:
        """The innermost layer with tracing on (None when off): the upstream CLIENT span, current
        while the upstream edge runs, its context in :data:`~toolcrib.observe.context.outgoing`."""
        tracing = self.tracing
        if tracing is None:
            return None

        async def layer(call: UpstreamCall, nxt: Next) -> Result:
            req = _current.get()
            target = call.name if call.kind in ("tool", "prompt") else None
            attributes: dict[str, Any] = {"mcp.method.name": call.method, "toolcrib.server": call.server}
            if call.kind == "tool":
                attributes["gen_ai.tool.name"] = call.name
                attributes["gen_ai.operation.name"] = "execute_tool"
            elif call.kind == "prompt":
                attributes["gen_ai.prompt.name"] = call.name
            else:
                attributes["mcp.resource.uri"] = call.name
            span = tracing.child(
                f"{call.method} {short_name(target)}" if target else call.method,
                req.span if req is not None else None,
                SpanKind.CLIENT,
                **attributes,
            )
            token = outgoing.set(tracing.carrier(span))
            ctx_token = otel_context.attach(trace.set_span_in_context(span))  # the SDK client injects it
            error: BaseException | None = None
            result: Result = None
            try:
                result = await nxt(call)
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                otel_context.detach(ctx_token)
                outgoing.reset(token)
                _end_client_span(tracing, span, call, result, error)

        return layer

    # ---- search ------------------------------------------------------------------------------

    def search_results(self, keys: Sequence[str]) -> None:
        """What one ``search_tools`` returned (``on_search``)."""
        self.metrics.search_results(len(keys))

    # ---- /metrics ----------------------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the Prometheus text exposition (``CONTENT_TYPE_LATEST``)."""
        if self.pending_approvals is not None:
            try:
                self.metrics.approvals_pending.set(await self.pending_approvals())
            except Exception as exc:  # a store that cannot answer now: the last value stands
                log.warning("/metrics: pending approvals not read (%s)", exc)
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def close(self) -> None:
        """Flush and stop the span exporter (gateway stop)."""
        if self.tracing is not None:
            self.tracing.shutdown()


def _error_type(outcome: str, error: BaseException | None) -> str | None:
    if isinstance(error, MCPError):
        return str(error.error.code)
    if outcome in ("ok", "cancelled"):
        return None
    return outcome


def _end_server_span(tracing: Tracing, req: _Request, outcome: str, error: MCPError | None) -> None:
    span = req.span
    assert span is not None
    if req.call is not None and req.call.kind == "tool" and req.call.target:
        span.set_attribute("toolcrib.server", req.call.server)
    span.set_attribute("toolcrib.outcome", outcome)
    kind = _error_type(outcome, error)
    if kind is not None:
        span.set_attribute("error.type", kind)
        if error is not None:
            span.set_attribute("rpc.response.status_code", kind)
            span.set_status(StatusCode.ERROR, tracing.describe(error.error.message))
        else:
            span.set_status(StatusCode.ERROR)
    span.end()


def _end_client_span(
    tracing: Tracing, span: Span, call: UpstreamCall, result: Any, error: BaseException | None
) -> None:
    """End an upstream CLIENT span. Every status description goes through :meth:`Tracing.describe`:
    the upstream's error text may hold a secret injected into it (redacted for clients too)."""
    noted = call.state.outcome
    if isinstance(error, MCPError):
        kind: str | None = str(error.error.code)
        span.set_attribute("rpc.response.status_code", kind)
        span.set_status(StatusCode.ERROR, tracing.describe(error.error.message))
    elif error is not None:
        kind = None if isinstance(error, CancelledError) else type(error).__qualname__
        if kind is not None:
            span.set_status(StatusCode.ERROR, tracing.describe(str(error)))
    elif noted:
        kind = OUTCOMES.get(noted, noted)
        if kind == "pending":
            kind = None
        else:
            span.set_status(StatusCode.ERROR, tracing.describe(call.state.error or kind))
    elif getattr(result, "is_error", False):
        kind = "tool_error"
        span.set_status(StatusCode.ERROR)
    else:
        kind = None
    if kind is not None:
        span.set_attribute("error.type", kind)
    span.end()


class TimedSearcher:
    """The tool index (:class:`~toolcrib.router.dispatcher.Searcher`) with each ``search`` timed
    into ``toolcrib_search_duration_seconds`` and, with tracing, a ``toolcrib.search`` span
    (``toolcrib.search.queries``, ``toolcrib.search.results``). Everything else is the index's."""

    def __init__(self, index: Any, telemetry: Telemetry) -> None:
        self._index = index
        self._telemetry = telemetry

    def search(self, query: str | Sequence[str], **kw: Any) -> Sequence[Any]:
        tracing = self._telemetry.tracing
        span = None
        if tracing is not None:
            req = _current.get()
            span = tracing.child("toolcrib.search", req.span if req is not None else None)
        started = time.perf_counter()
        try:
            hits: Sequence[Any] = self._index.search(query, **kw)
        finally:
            self._telemetry.metrics.searched(time.perf_counter() - started)
            if span is not None:
                span.set_attribute("toolcrib.search.queries", 1 if isinstance(query, str) else len(query))
        if span is not None:
            span.set_attribute("toolcrib.search.results", len(hits))
            span.end()
        return hits

    def needs_model(self, query: str | Sequence[str]) -> bool:
        return bool(self._index.needs_model(query))

    def __len__(self) -> int:
        """Tools in the index (``__getattr__`` does not reach dunder methods)."""
        return len(self._index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def open_telemetry(config: Config, secrets: CredentialStore, redactor: Redactor | None = None) -> Telemetry:
    """Metrics, and tracing when ``[telemetry] otlp_endpoint`` is set (its ``headers`` resolved
    through ``secrets``; :class:`~toolcrib.errors.SecretError` names a missing one)."""
    cfg = config.telemetry
    tracing = None
    if cfg.otlp_endpoint is not None:
        from toolcrib.gateway.trust.secrets import expand

        headers = {name: expand(value, secrets, redactor) for name, value in cfg.headers.items()}
        tracing = Tracing(cfg, headers, redactor.scrub if redactor is not None else None)
    return Telemetry(Metrics(), tracing)
