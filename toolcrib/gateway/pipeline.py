"""The dispatch pipeline: every path that reaches a tool goes through here.

A :class:`ToolCall` passes through layers of shape ``(call, next) -> result``, outermost first:
audit (observes, never decides) -> policy (decides, never calls) -> approvals -> argument
validation -> the upstream edge. ``invoke``, a tool loaded into a session and called by name,
passthrough mode and stdio mode all build a :class:`ToolCall` and await :meth:`Pipeline.call`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from toolcrib.config import PolicyRule
from toolcrib.gateway.audit.log import AuditEvent
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.approvals import ApprovalStore
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.policy import decide
from toolcrib.gateway.trust.secrets import Redactor

Result = types.CallToolResult
Next = Callable[["ToolCall"], Awaitable[Result]]
Layer = Callable[["ToolCall", Next], Awaitable[Result]]


@dataclass
class ToolCall:
    """One tool call on its way to an upstream."""

    principal: Principal
    key: str
    server: str
    tool: str
    arguments: dict[str, Any]
    via: str = "direct"  # direct | invoke | passthrough
    transport: str = "http"
    session_id: str | None = None
    client_name: str | None = None
    request_id: str | int | None = None
    tool_hash: str | None = None
    started: float = field(default_factory=time.perf_counter)
    notes: dict[str, Any] = field(default_factory=dict)


def tool_error(text: str) -> Result:
    """A tool-level error the model can read and act on (not a protocol error)."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


class Pipeline:
    """Composes layers around a terminal handler once; calling it costs one closure per layer."""

    def __init__(self, layers: Sequence[Layer], terminal: Next) -> None:
        handler = terminal
        for layer in reversed(layers):
            handler = _bind(layer, handler)
        self._handler = handler

    async def call(self, call: ToolCall) -> Result:
        return await self._handler(call)


def _bind(layer: Layer, nxt: Next) -> Next:
    async def run(call: ToolCall) -> Result:
        return await layer(call, nxt)

    return run


# ---- the trust layers ---------------------------------------------------------------------------

_OUTCOMES = {
    "UpstreamTimeout": "timeout",
    "UpstreamCrashed": "upstream_crash",
    "UpstreamUnavailable": "upstream_crash",
    "protocol_error": "protocol_error",
    "invalid_arguments": "tool_error",
    "denied": "denied",
    "pending": "pending",
}


def _result_bytes(result: Result) -> int:
    total = 0
    for block in result.content:
        text = getattr(block, "text", None) or getattr(block, "data", None)
        if isinstance(text, str):
            total += len(text)
    return total


def call_fields(call: ToolCall) -> dict[str, Any]:
    """The audit columns every row about ``call`` shares."""
    return {
        "request_id": None if call.request_id is None else str(call.request_id),
        "principal": call.principal.id,
        "client_name": call.client_name,
        "session": call.session_id,
        "transport": call.transport,
        "method": f"tools/call:{call.via}",
        "server": call.server or None,
        "tool": call.key,
        "tool_hash": call.tool_hash,
    }


def audit_layer(sink: AuditWriter) -> Layer:
    """Observe: a row before forwarding (attempt) and one after (outcome). Never decides."""

    async def layer(call: ToolCall, nxt: Next) -> Result:
        common = call_fields(call)
        attempt = await sink.append(AuditEvent(kind="attempt", arguments=call.arguments, **common))
        outcome: str = "cancelled"
        result: Result | None = None
        try:
            result = await nxt(call)
            noted = call.notes.get("outcome")
            outcome = _OUTCOMES.get(noted, "tool_error") if noted else ("tool_error" if result.is_error else "ok")
            return result
        except Exception:
            outcome = "protocol_error"
            raise
        finally:
            decision = call.notes.get("decision")
            sink.submit(
                AuditEvent(
                    kind="outcome",
                    attempt_seq=attempt,
                    outcome=outcome,  # type: ignore[arg-type]
                    decision=decision.action if decision else None,
                    rule=decision.rule if decision else None,
                    approver=call.notes.get("approver"),
                    latency_ms=(time.perf_counter() - call.started) * 1000,
                    bytes=_result_bytes(result) if result is not None else None,
                    error=call.notes.get("error"),
                    **common,
                )
            )

    return layer


def redact_layer(redactor: Redactor) -> Layer:
    """Scrub known secret values (raw, base64, URL-encoded, hex) from everything a client sees."""

    async def layer(call: ToolCall, nxt: Next) -> Result:
        result = await nxt(call)
        if not len(redactor):
            return result
        data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        scrubbed = redactor.scrub_json(data)
        return result if scrubbed == data else types.CallToolResult.model_validate(scrubbed)

    return layer


def policy_layer(rules: Sequence[PolicyRule], default: str) -> Layer:
    """Decide: allow, deny (the model reads which rule refused), or mark for approval."""

    async def layer(call: ToolCall, nxt: Next) -> Result:
        decision = decide(call.principal, call.key, call.arguments, rules, default)
        call.notes["decision"] = decision
        if decision.action == "deny":
            call.notes["outcome"] = "denied"
            return tool_error(f"{call.key}: denied by policy rule {decision.rule!r}; ask an operator if you need it")
        return await nxt(call)

    return layer


def approval_layer(store: ApprovalStore, *, mode: str, timeout: float) -> Layer:
    """Hold (or answer pending) a call the policy marked ``approve`` until an operator decides.

    An approval is bound to the principal, the tool and the hash of the exact arguments, is used
    once, and expires; a retry with different arguments needs a new approval.
    """

    async def layer(call: ToolCall, nxt: Next) -> Result:
        decision = call.notes.get("decision")
        if decision is None or decision.action != "approve":
            return await nxt(call)
        granted = store.consume(call.principal.id, call.key, call.arguments)
        if granted is None:
            pending = store.request(call.principal.id, call.key, call.arguments, ttl=timeout)
            hint = f"`toolcrib approvals approve {pending.id}` or POST /admin/approvals/{pending.id}"
            if mode == "pending":
                call.notes["outcome"] = "pending"
                return tool_error(
                    f"{call.key} needs an operator's approval (id {pending.id}, rule {decision.rule!r}): "
                    f"ask them to run {hint}, then call again with the same arguments"
                )
            status = await store.wait(pending.id, timeout)
            if status == "approved":
                granted = store.consume(call.principal.id, call.key, call.arguments)
            if granted is None:
                call.notes["outcome"] = "denied"
                word = {"denied": "denied", "pending": "not approved in time", "expired": "expired"}.get(status, status)
                return tool_error(f"{call.key}: approval {pending.id} was {word}; the call was not made")
        call.notes["approver"] = granted.approver
        return await nxt(call)

    return layer


def quarantine_layer(is_quarantined: Callable[[str], bool]) -> Layer:
    """A tool whose definition changed since it was pinned is not callable until re-approved."""

    async def layer(call: ToolCall, nxt: Next) -> Result:
        if is_quarantined(call.key):
            call.notes["outcome"] = "denied"
            return tool_error(
                f"{call.key} is quarantined: its definition changed since it was approved; "
                f"an operator can review it with `toolcrib tools diff {call.key}`"
            )
        return await nxt(call)

    return layer
