"""The trace context handed from the upstream CLIENT span to the upstream edge (no OpenTelemetry import:
:mod:`toolcrib.router.wire` reads it on every ``tools/call``, tracing on or off)."""

from __future__ import annotations

from contextvars import ContextVar

outgoing: ContextVar[dict[str, str] | None] = ContextVar("toolcrib_trace_meta", default=None)
"""``{"traceparent": ..., "tracestate": ...}`` of the upstream CLIENT span in progress
(:meth:`toolcrib.observe.telemetry.Telemetry.upstream_layer`), written into the request's
``params._meta`` (SEP-414, unprefixed keys); None, the default, when tracing is off."""

__all__ = ["outgoing"]
