"""What the audit log records: :class:`AuditEvent` (one row to write) and :class:`AuditSink`.

Kinds and their columns are described in :mod:`toolcrib.gateway.audit.log`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from toolcrib.errors import AuditError

Kind = Literal["call", "search", "attempt", "outcome", "auth", "anchor", "tally"]
Outcome = Literal["ok", "tool_error", "protocol_error", "timeout", "cancelled", "upstream_crash", "denied", "pending"]


class AuditRowError(AuditError):
    """One row or completion could not be built or stored because of what it holds (not because the
    log is unwritable): only its own call fails; the other entries of its batch are written
    (:class:`~toolcrib.gateway.audit.writer.AuditWriter` writes them without it)."""


@dataclass(frozen=True)
class AuditEvent:
    """One thing to record. ``arguments`` are the originals: the sink redacts them and HMACs them.

    ``method`` takes any MCP method string; ``tool`` is a namespaced tool key, ``target`` whatever
    else a request names (resource URI, prompt name, completion reference); ``remote`` is the
    client's address (``host:port``). ``error``, ``query`` and ``target`` are redacted too.
    """

    kind: Kind
    request_id: str | int | None = None
    principal: str | None = None
    client_name: str | None = None
    session: str | None = None
    transport: str | None = None
    method: str | None = None
    server: str | None = None
    tool: str | None = None
    tool_hash: str | None = None
    target: str | None = None
    arguments: Mapping[str, Any] | None = None
    query: str | None = None
    results: Sequence[str] | None = None
    decision: str | None = None
    rule: str | None = None
    approver: str | None = None
    outcome: Outcome | None = None
    error: str | None = None
    latency_ms: float | None = None
    bytes: int | None = None
    attempt_seq: int | None = None
    remote: str | None = None
    ts: float | None = None


@dataclass(frozen=True)
class Completion:
    """How the call of the ``call`` row ``seq`` ended: written in place into that row (an ``UPDATE``
    of its :data:`~toolcrib.gateway.audit.schema.COMPLETION` columns plus ``seal``), in the same
    transaction as the next batch's inserts. ``latency_ms`` in milliseconds, ``bytes`` of the
    result's text, ``completed`` epoch seconds (default: when it is built into the batch)."""

    seq: int
    outcome: Outcome
    decision: str | None = None
    rule: str | None = None
    approver: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    bytes: int | None = None
    completed: float | None = None


def auth_refused(
    reason: str,
    *,
    remote: str | None,
    transport: str | None = "http",
    method: str | None = None,
    principal: str | None = None,
    rule: str | None = None,
) -> AuditEvent:
    """The row for a refused authentication: ``kind="auth"``, ``outcome="denied"``, ``reason`` in
    ``error`` (never the credential itself), ``method`` e.g. ``"POST /mcp"`` or ``"GET /admin/audit"``."""
    return AuditEvent(
        kind="auth",
        outcome="denied",
        decision="deny",
        error=reason,
        remote=remote,
        transport=transport,
        method=method,
        principal=principal,
        rule=rule,
    )


class AuditSink(Protocol):
    """Where audit events go. ``append`` returns the event's sequence number."""

    def append(self, event: AuditEvent) -> int: ...

    def close(self) -> None: ...
