"""The dispatch pipeline: every request that reaches an upstream goes through here.

An :class:`UpstreamCall` is one client request bound for one upstream: ``tools/call`` (by
``invoke``, by a loaded tool's name, in passthrough mode, over stdio), ``resources/read``,
``resources/subscribe`` / ``unsubscribe``, ``prompts/get`` and ``completion/complete``. It passes
layers of shape ``(call, next) -> result``, outermost first:

    audit -> limits -> redaction -> quarantine -> policy -> argument validation -> approvals -> upstream edge
    (the order :func:`toolcrib.app.build` composes them in; approvals: :mod:`toolcrib.gateway.approval`)

Audit observes and never decides; redaction scrubs the result *and* any error on the way out;
policy decides and never calls; argument validation runs before an operator is ever asked to
approve, so an approved call cannot then fail validation. Layers share the typed
:class:`CallState`, never an untyped dict.

Refusals take the shape the method allows: a tool call gets a tool-level error result the model
can read (``isError: true``); every other method gets a JSON-RPC error (:func:`refuse`). The
per-principal limits are the exception: every method gets the JSON-RPC error :data:`LIMITED`
(:func:`limits_layer`), since retrying the same call later succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from toolcrib.errors import InvalidArguments
from toolcrib.gateway.audit.events import Completion
from toolcrib.gateway.audit.log import AuditEvent
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.limits import Limiter, Refusal
from toolcrib.gateway.trust.policy import Decision, Kind
from toolcrib.gateway.trust.redaction import Redactor
from toolcrib.router.validation import validate_arguments

TargetKind = Kind
MODERN = "2026-07-28"
"""The stateless protocol era (per-request ``_meta``, MRTR): a client's ``UpstreamCall.era``."""
HANDSHAKE = "2025-11-25"
"""The session era (``initialize``), whichever handshake version the client negotiated."""
REQUEST_STATE = "request_state"
"""The :class:`~toolcrib.gateway.trust.sealed.Sealer` purpose of every ``requestState`` toolcrib mints."""
Result = Any
"""A result model of the call's method (``CallToolResult``, ``ReadResourceResult``, ...)."""
Next = Callable[["UpstreamCall"], Awaitable[Result]]
Layer = Callable[["UpstreamCall", Next], Awaitable[Result]]


@dataclass
class CallState:
    """What the layers learn about a call on its way through, read by audit at the end."""

    decision: Decision | None = None
    outcome: str | None = None
    """Set by the layer that ended the call early or by the upstream edge on failure (see ``OUTCOMES``)."""
    approver: str | None = None
    error: str | None = None


@dataclass
class UpstreamCall:
    """One client request on its way to one upstream.

    ``target`` is the name the client used and policy sees (``server__tool``, ``server__prompt``,
    or the namespaced resource URI ``server+scheme://...``); ``name`` is the upstream's own name or
    URI for it. ``arguments`` are the tool or prompt arguments, or for a completion
    ``{argument name: partial value}``; subscriptions and reads have none.
    """

    principal: Principal
    method: str
    kind: TargetKind
    target: str
    server: str
    name: str
    arguments: dict[str, Any]
    via: str = "direct"  # direct | invoke | passthrough (tools); the method for everything else
    transport: str = "http"
    session_id: str | None = None
    client_name: str | None = None
    request_id: str | int | None = None
    tool_hash: str | None = None
    completion_context: dict[str, str] | None = None
    """``completion/complete`` only: the other arguments already filled in (``context.arguments``)."""
    relay: Any = None
    """The client-side party of this call (progress, sampling, elicitation, logs), set by the server."""
    era: str = HANDSHAKE
    """The protocol revision the client speaks on this request (``2025-11-25`` sessions or a
    2026-07-28 stateless request's ``_meta`` version)."""
    client_capabilities: dict[str, Any] | None = None
    """The capabilities the client declared (``initialize`` or the request's ``_meta``), wire form."""
    input_responses: dict[str, Any] | None = None
    """2026-07-28 MRTR retry: the client's ``inputResponses`` (wire form), else None."""
    resume: dict[str, Any] | None = None
    """2026-07-28 MRTR retry: the payload of the ``requestState`` toolcrib minted (already opened and
    checked against the principal by the server); ``{"k": "approval" | "upstream" | "parked", ...}``."""
    started: float = field(default_factory=time.perf_counter)
    state: CallState = field(default_factory=CallState)


def tool_error(text: str) -> types.CallToolResult:
    """A tool-level error the model can read and act on (not a protocol error)."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def refuse(call: UpstreamCall, text: str, outcome: str) -> Result:
    """End ``call`` here: a tool error result for tools, else raise a JSON-RPC error (-32602)."""
    call.state.outcome = outcome
    if call.kind == "tool":
        return tool_error(text)
    raise MCPError(code=types.INVALID_PARAMS, message=text)


class Pipeline:
    """Composes layers around a terminal handler once; calling it costs one closure per layer."""

    def __init__(self, layers: Sequence[Layer], terminal: Next) -> None:
        handler = terminal
        for layer in reversed(layers):
            handler = _bind(layer, handler)
        self._handler = handler

    async def call(self, call: UpstreamCall) -> Result:
        return await self._handler(call)


def _bind(layer: Layer, nxt: Next) -> Next:
    async def run(call: UpstreamCall) -> Result:
        return await layer(call, nxt)

    return run


# ---- the trust layers ---------------------------------------------------------------------------

OUTCOMES = {
    "UpstreamTimeout": "timeout",
    "UpstreamCrashed": "upstream_crash",
    "UpstreamUnavailable": "upstream_crash",
    "UpstreamInvalidResult": "protocol_error",
    "protocol_error": "protocol_error",
    "invalid_arguments": "tool_error",
    "denied": "denied",
    "pending": "pending",
    "input_required": "pending",
}
"""``CallState.outcome`` (an error type or a layer's word) -> the ``outcome`` the audit log records;
also the ``outcome`` label of ``toolcrib_requests_total`` (:mod:`toolcrib.observe.metrics`)."""


def _result_bytes(result: Result) -> int | None:
    if not isinstance(result, types.CallToolResult):
        return None
    total = 0
    for block in result.content:
        text = getattr(block, "text", None) or getattr(block, "data", None)
        if isinstance(text, str):
            total += len(text)
    return total


def call_fields(call: UpstreamCall) -> dict[str, Any]:
    """The audit columns every row about ``call`` shares."""
    return {
        "request_id": None if call.request_id is None else str(call.request_id),
        "principal": call.principal.id,
        "client_name": call.client_name,
        "session": call.session_id,
        "transport": call.transport,
        "method": f"tools/call:{call.via}" if call.kind == "tool" else call.method,
        "server": call.server or None,
        "tool": call.target if call.kind == "tool" else None,
        "target": None if call.kind == "tool" else call.target,
        "tool_hash": call.tool_hash,
    }


def audit_layer(sink: AuditWriter) -> Layer:
    """Observe: ONE ``call`` row per call, committed (``outcome = "pending"``) before forwarding (the
    call is not made if that fails) and completed in place when the call ends
    (:class:`~toolcrib.gateway.audit.events.Completion`: the outcome, decision, approver, error,
    latency and bytes). The completion is queued (:meth:`AuditWriter.submit`), not awaited: the
    answer goes back at once and the completion is committed with the writer's next batch, at the
    latest ``LINGER`` (5 ms) later, usually together with the next call's row (at concurrency 1 one
    commit per call instead of two). A gateway killed in that window leaves the row pending, which
    ``toolcrib audit verify`` reports as unfinished; readers in the process see it completed once
    they :meth:`~AuditWriter.flush`. Never decides."""

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        seq = await sink.append(
            AuditEvent(kind="call", arguments=call.arguments, outcome="pending", **call_fields(call))
        )
        outcome: str = "cancelled"
        result: Result = None
        try:
            result = await nxt(call)
            noted = call.state.outcome
            is_error = isinstance(result, types.CallToolResult) and result.is_error
            outcome = OUTCOMES.get(noted, "tool_error") if noted else ("tool_error" if is_error else "ok")
            return result
        except MCPError as exc:
            outcome = OUTCOMES.get(call.state.outcome or "", "protocol_error")
            call.state.error = call.state.error or exc.error.message
            raise
        except Exception:
            outcome = "protocol_error"
            raise
        finally:
            state = call.state
            row = Completion(
                seq=seq,
                outcome=outcome,  # type: ignore[arg-type]
                decision=state.decision.action if state.decision else None,
                rule=state.decision.rule if state.decision else None,
                approver=state.approver,
                latency_ms=(time.perf_counter() - call.started) * 1000,
                bytes=_result_bytes(result) if result is not None else None,
                error=state.error,
            )
            sink.submit(row)  # committed with the next batch: the answer (or the cancellation) never waits for it

    return layer


def redact_layer(redactor: Redactor) -> Layer:
    """Scrub known secret values (raw, case-folded, base64, URL-encoded, hex, zero-width split) from
    every result and every error a client sees."""

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        try:
            result = await nxt(call)
        except MCPError as exc:
            if not len(redactor):
                raise
            error = exc.error
            raise MCPError(
                code=error.code, message=redactor.scrub(error.message), data=redactor.scrub_json(error.data)
            ) from None
        if not len(redactor) or result is None:
            return result
        return redactor.scrub_model(result)

    return layer


Decide = Callable[[Principal, str, Mapping[str, Any], Kind], Decision]
"""``(principal, target, arguments, kind) -> Decision``: the policy in force at the time of the call."""


def policy_layer(decide: Decide) -> Layer:
    """Decide: allow, deny (the caller reads which rule refused), or mark for approval."""

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        decision = decide(call.principal, call.target, call.arguments, call.kind)
        call.state.decision = decision
        if decision.action == "deny":
            text = f"{call.target}: denied by policy rule {decision.rule!r}; ask an operator if you need it"
            return refuse(call, text, "denied")
        return await nxt(call)

    return layer


def validation_layer(schema_of: Callable[[str], dict[str, Any] | None]) -> Layer:
    """Tool arguments against the tool's input schema (JSON Schema), before approvals and the upstream."""

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        if call.kind == "tool" and not call.method.startswith("tasks/"):  # a task's calls carry no arguments
            try:
                validate_arguments(call.target, schema_of(call.target), call.arguments)
            except InvalidArguments as exc:
                return refuse(call, exc.message, "invalid_arguments")
        return await nxt(call)

    return layer


def quarantined_text(key: str) -> str:
    """What a caller who may otherwise use tool ``key`` is told while it is quarantined."""
    return (
        f"{key} is quarantined: its definition changed since it was approved; "
        f"an operator can review it with `toolcrib tools diff {key}`"
    )


def quarantine_layer(is_quarantined: Callable[[str], bool]) -> Layer:
    """A tool whose definition changed since it was pinned is not callable until re-approved."""

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        if call.kind == "tool" and is_quarantined(call.target):
            return refuse(call, quarantined_text(call.target), "denied")
        return await nxt(call)

    return layer


LIMITED = -32000
"""JSON-RPC code of a per-principal limit's refusal, as for the other per-principal caps (listen
streams, parked calls): a server-side condition that passes, unlike -32602 (the request is wrong)."""
UNLIMITED_METHODS = frozenset({"resources/unsubscribe", "tasks/cancel"})
"""Requests that only give something back: never refused by a limit, never counted."""


def limits_layer(limiter: Limiter) -> Layer:
    """Per-principal rate and concurrency limits (:mod:`toolcrib.gateway.trust.limits`, per replica).

    Placed right inside the audit layer, so a refused call is audited (outcome ``denied``, decision
    ``deny``, rule ``limits.rate`` or ``limits.concurrency``) and costs nothing further. A refusal is
    the JSON-RPC error :data:`LIMITED` for every method, tools included, so the client (not only
    the model) sees it; the rate limit's carries ``data = {"retryAfter": SECONDS}``. The concurrency
    slot is given back when the call ends in any way: result, error, cancellation or timeout.
    Every call of :data:`UNLIMITED_METHODS` passes uncounted. With every figure 0 the layer only
    forwards."""
    if not limiter.enabled:

        async def off(call: UpstreamCall, nxt: Next) -> Result:
            return await nxt(call)

        return off

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        if call.method in UNLIMITED_METHODS:
            return await nxt(call)
        admitted = limiter.admit(call.principal)
        if isinstance(admitted, Refusal):
            call.state.decision = Decision(action="deny", rule=admitted.rule, reason=admitted.message)
            call.state.outcome = "denied"
            data = None if admitted.retry_after is None else {"retryAfter": admitted.retry_after}
            raise MCPError(code=LIMITED, message=admitted.message, data=data)
        try:
            return await nxt(call)
        finally:
            admitted.release()

    return layer
