"""OpenTelemetry traces of one gateway, exported over OTLP/HTTP (protobuf) when ``[telemetry]
otlp_endpoint`` is set; off (and free) otherwise.

The gateway owns its :class:`~opentelemetry.sdk.trace.TracerProvider` (never the global one:
several gateways may run in one process), with a ``BatchSpanProcessor`` that is flushed and shut
down when the gateway stops (:meth:`Tracing.shutdown`).

Spans follow the OpenTelemetry semantic conventions for the Model Context Protocol
(https://github.com/open-telemetry/semantic-conventions-genai, ``docs/gen-ai/mcp.md``, status
Development):

- one SERVER span per MCP request, named ``{mcp.method.name} {target}`` where the target is the
  tool (``gen_ai.tool.name``; the REAL tool behind ``invoke``) or the prompt (``gen_ai.prompt.name``);
  resource URIs stay out of span names (high cardinality: the convention's default) and go in
  ``mcp.resource.uri``. Attributes: ``mcp.method.name``, ``mcp.protocol.version``,
  ``mcp.session.id`` (sessions only), ``jsonrpc.request.id``, ``gen_ai.operation.name`` =
  ``execute_tool`` on ``tools/call``, ``network.transport`` (``tcp``/``pipe``),
  ``network.protocol.name`` (``http`` on HTTP); on failure ``error.type`` (the JSON-RPC code, or
  ``tool_error`` for a result with ``isError``; toolcrib's own outcome such as ``denied`` or
  ``timeout`` when it has one), ``rpc.response.status_code`` for a JSON-RPC error, and status ERROR.
  Its parent is the context in the request's ``params._meta`` (``traceparent``/``tracestate``,
  SEP-414); an HTTP ``traceparent`` header is linked (or the parent when ``_meta`` carries none);
- INTERNAL children ``toolcrib.search`` (index work of ``search_tools``), ``toolcrib.policy``
  (the policy decision) and ``toolcrib.approval`` (the wait for an operator's approval);
- one CLIENT child per upstream request, named ``{mcp.method.name} {upstream tool or prompt}``,
  with ``toolcrib.server``; its context is sent to the upstream in ``params._meta``
  (``traceparent``, ``tracestate``), on toolcrib's own ``tools/call`` framing
  (:mod:`toolcrib.router.wire`) and on the SDK's (which injects the current context).

What a client or upstream controls is bounded and scrubbed before export: names in span names are cut
to :data:`MAX_NAME` characters, attribute values to :data:`MAX_VALUE`, and every status description
(an upstream's error text) passes the gateway's secret redaction, as clients see it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from toolcrib import __version__
from toolcrib.config import TelemetryConfig

log = logging.getLogger("toolcrib.observe")

EXPORT_TIMEOUT = 5.0
"""Seconds one export to the collector may take (also bounds the flush at shutdown)."""
MAX_NAME = 128
"""Longest tool, prompt or upstream name put in a span name (characters; longer ones are cut and
marked with ``…``). Catalog keys are at most 64; the rest are names a client made up."""
MAX_VALUE = 1024
"""Longest attribute value or status description exported (characters): a client's 200 kB tool name
or resource URI would otherwise make one span too big for the collector, losing its whole batch."""


class Tracing:
    """The gateway's tracer provider, exporter and W3C Trace Context propagator."""

    def __init__(
        self, cfg: TelemetryConfig, headers: Mapping[str, str], scrub: Callable[[str], str] | None = None
    ) -> None:
        """``headers``: the collector's HTTP headers with secret references already resolved.
        ``scrub``: the gateway's secret redaction (:meth:`~toolcrib.gateway.trust.redaction.Redactor.scrub`),
        applied to every status description (upstream error messages may echo an injected secret).
        ``cfg.otlp_endpoint`` must be set."""
        assert cfg.otlp_endpoint is not None
        resource = Resource.create({"service.name": cfg.service_name, "service.version": __version__})
        self.provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
            span_limits=SpanLimits(max_attribute_length=MAX_VALUE),
        )
        self._scrub = scrub or (lambda text: text)
        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=dict(headers), timeout=EXPORT_TIMEOUT)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self.tracer: Tracer = self.provider.get_tracer("toolcrib", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.endpoint = cfg.otlp_endpoint

    def extract(self, carrier: Mapping[str, Any] | None) -> Context | None:
        """The remote parent in ``carrier`` (``params._meta`` or HTTP headers), or None when it has no
        valid ``traceparent``."""
        if not carrier:
            return None
        value = carrier.get("traceparent")
        if not isinstance(value, str):
            return None
        ctx = self.propagator.extract(
            {k: v for k in ("traceparent", "tracestate") if isinstance(v := carrier.get(k), str)}
        )
        return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None

    def describe(self, text: str) -> str:
        """A span status description: ``text`` with known secrets redacted, at most :data:`MAX_VALUE` characters."""
        return self._scrub(text[: MAX_VALUE * 4])[:MAX_VALUE]

    def carrier(self, span: Span) -> dict[str, str]:
        """``{"traceparent", "tracestate"?}`` naming ``span`` as the remote parent."""
        out: dict[str, str] = {}
        self.propagator.inject(out, context=trace.set_span_in_context(span))
        return out

    def child(self, name: str, parent: Span | None, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Span:
        """A span started now under ``parent`` (None: the current context)."""
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=ctx, kind=kind, attributes=attributes or None)

    def shutdown(self) -> None:
        """Export what is buffered (up to :data:`EXPORT_TIMEOUT` s) and stop the exporter."""
        try:
            self.provider.shutdown()
        except Exception as exc:  # the gateway stops all the same
            log.warning("telemetry: flushing spans to %s failed: %s", self.endpoint, exc)


def short_name(name: str) -> str:
    """``name`` for a span name: at most :data:`MAX_NAME` characters (cut ones end with ``…``)."""
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


__all__ = ["MAX_NAME", "MAX_VALUE", "Tracing", "short_name"]
