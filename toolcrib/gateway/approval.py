"""The approval layer: a call the policy marked ``approve`` goes ahead only once an operator said so.

No model can forge an approval: the decision lives in the approval store
(:mod:`toolcrib.gateway.trust.approvals`), bound to the caller's typed principal id, the target and
the SHA-256 of the exact arguments, single use and expiring. Operators decide out of band
(``toolcrib approvals approve ID``, ``POST /admin/approvals/ID``). What the client is told while
the decision is outstanding depends on the protocol era it speaks:

- **2026-07-28** (stateless, multi-round-trip requests, SEP-2322), for ``tools/call``,
  ``prompts/get`` and ``resources/read`` when the client declared URL-mode elicitation: an
  ``InputRequiredResult`` with one URL-mode ``elicitation/create`` input request (the page where an
  operator approves) and a sealed ``requestState`` ``{"k": "approval", "id", "target", "args"}``.
  The retry carries that payload back (opened and checked by the server, :attr:`UpstreamCall.resume`).
  The input request's key (``approval-<id>``) names the elicitation: 2026-07-28 dropped
  ``elicitationId`` from URL elicitations, so the SDK leaves it off the wire there.
  Approved -> the approval is consumed and the call forwarded; still pending -> input_required again
  (same approval, fresh token); denied, expired or used -> the refusal. The client's
  ``inputResponses`` never approve anything (a ``decline``/``cancel`` only ends the call).
- Any other client in ``hold`` mode (a 2025-11-25 session; a 2026-07-28 client without URL-mode
  elicitation or calling a method with no input_required result): the call waits for the operator
  (up to ``approval_timeout``), its HTTP request held open; a 2025-11-25 client that declared
  URL-mode elicitation is sent an ``elicitation/create`` (mode ``url``) on the call's own stream
  meanwhile, and ``notifications/elicitation/complete`` once the operator decided. Its answer
  decides nothing.
- In ``pending`` mode, those clients get a refusal naming the approval id, to retry after approval.

The capability rule: a server MUST NOT send an elicitation in a mode the client did not declare
(2025-11-25 spec, client/elicitation, "Capabilities": ``elicitation: {"url": {}}`` declares URL
mode; a bare ``elicitation: {}`` means form mode only), and on 2026-07-28 an input request the
client cannot fulfil is one it did not declare the capability for (SEP-2322, capabilities travel in
each request's ``_meta``). Hence the fall-back to the refusal rather than an input request the
client would not understand.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types.methods import INPUT_REQUIRED_METHODS

from toolcrib.gateway.pipeline import MODERN, REQUEST_STATE, Layer, Next, Result, UpstreamCall, refuse
from toolcrib.gateway.trust.approvals import Approval, ApprovalError, AsyncApprovals, Status, args_hash
from toolcrib.gateway.trust.sealed import Sealer

log = logging.getLogger("toolcrib.approval")

RESUME_KIND = "approval"
_WORDS: dict[str, str] = {
    "denied": "denied by an operator",
    "expired": "expired before an operator approved it",
    "used": "already used by another call",
    "pending": "not approved in time",
}


def url_elicitation_declared(capabilities: Mapping[str, Any] | None) -> bool:
    """True when wire-form client ``capabilities`` declare URL-mode elicitation (``elicitation.url``)."""
    elicitation = (capabilities or {}).get("elicitation")
    return isinstance(elicitation, Mapping) and isinstance(elicitation.get("url"), Mapping)


def approval_url(base_url: str, approval_id: str) -> str:
    """Where an operator approves ``approval_id``: ``<public origin>/admin/approvals/<id>``."""
    return f"{base_url.rstrip('/')}/admin/approvals/{approval_id}"


class _Gate:
    """What every approval decision needs: the store, the mode, the sealer and the public origin."""

    def __init__(
        self, store: AsyncApprovals, mode: str, timeout: float, sealer: Sealer, base_url: Callable[[], str]
    ) -> None:
        self.store, self.mode, self.timeout, self.sealer, self.base_url = store, mode, timeout, sealer, base_url

    def message(self, call: UpstreamCall, approval: Approval, url: str) -> str:
        return (
            f"{call.target} needs an operator's approval (id {approval.id}, rule {approval.rule!r}): "
            f"an operator approves it at {url} or with `toolcrib approvals approve {approval.id}`"
        )

    def input_required(self, call: UpstreamCall, approval: Approval) -> types.InputRequiredResult:
        """The 2026-07-28 answer while ``approval`` is pending: one URL elicitation + a sealed requestState."""
        url = approval_url(self.base_url(), approval.id)
        key = f"approval-{approval.id}"
        ask = types.ElicitRequestURLParams(message=self.message(call, approval, url), url=url, elicitation_id=key)
        payload = {"k": RESUME_KIND, "id": approval.id, "target": call.target, "args": approval.args_hash}
        ttl = max(1.0, approval.expires - time.time())
        state = self.sealer.seal(REQUEST_STATE, call.principal.id, payload, ttl)
        call.state.outcome = "input_required"
        return types.InputRequiredResult(input_requests={key: types.ElicitRequest(params=ask)}, request_state=state)

    def refuse_pending(self, call: UpstreamCall, approval: Approval) -> Result:
        hint = f"`toolcrib approvals approve {approval.id}` or POST /admin/approvals/{approval.id}"
        text = (
            f"{call.target} needs an operator's approval (id {approval.id}, rule {approval.rule!r}): "
            f"ask them to run {hint}, then call again with the same arguments"
        )
        return refuse(call, text, "pending")

    def refuse_status(self, call: UpstreamCall, approval_id: str, status: str) -> Result:
        word = _WORDS.get(status, status)
        return refuse(call, f"{call.target}: approval {approval_id} was {word}; the call was not made", "denied")


def approval_layer(
    store: AsyncApprovals, *, mode: str, timeout: float, sealer: Sealer, base_url: Callable[[], str]
) -> Layer:
    """Hold, ask through the client's era, or refuse a call the policy marked ``approve``, until an
    operator decides (see the module docstring for the per-era behaviour).

    ``mode`` is ``"hold"`` or ``"pending"`` (``[policy] approval_mode``); ``timeout`` (seconds) is how
    long an approval request lives and a held call waits; ``sealer`` mints the ``requestState``
    tokens (purpose ``request_state``, bound to the principal); ``base_url()`` is the gateway's
    public origin (``[gateway] public_url`` or the bound address), read per call.
    Errors: a tool error result for tools, else a JSON-RPC -32602 (:func:`refuse`); a resumed
    ``requestState`` minted for another target or other arguments is a -32602.
    """
    gate = _Gate(store, mode, timeout, sealer, base_url)

    async def layer(call: UpstreamCall, nxt: Next) -> Result:
        decision = call.state.decision
        if decision is None or decision.action != "approve" or call.method.startswith("tasks/"):
            return await nxt(call)  # tasks/* ride the approval of the tools/call that created the task
        modern = call.era == MODERN and call.method in INPUT_REQUIRED_METHODS
        if modern and url_elicitation_declared(call.client_capabilities):
            return await _round_trip(gate, call, nxt, decision.rule)
        who = call.principal.id
        granted = await store.consume(who, call.target, call.arguments)
        if granted is None:
            pending = await store.request(who, call.target, call.arguments, ttl=timeout, rule=decision.rule)
            if mode == "pending":
                return gate.refuse_pending(call, pending)
            status = await _hold(gate, call, pending)
            if status == "approved":
                granted = await store.consume(who, call.target, call.arguments)
            if granted is None:
                return gate.refuse_status(call, pending.id, status)
        call.state.approver = granted.approver
        return await nxt(call)

    return layer


async def _round_trip(gate: _Gate, call: UpstreamCall, nxt: Next, rule: str) -> Result:
    """2026-07-28: input_required until the operator decides; the retry's resume says which approval."""
    who, digest = call.principal.id, args_hash(call.arguments)
    resume = call.resume if call.resume is not None and call.resume.get("k") == RESUME_KIND else None
    if resume is not None:
        approval_id = str(resume.get("id"))
        if resume.get("target") != call.target or resume.get("args") != digest:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"{call.target}: this requestState belongs to another call (tool or arguments differ); "
                "call again without it",
            )
        try:
            approval = await gate.store.get(approval_id)
        except ApprovalError:
            return gate.refuse_status(call, approval_id, "expired")
        if approval.principal != who or approval.tool != call.target or approval.args_hash != digest:
            raise MCPError(code=types.INVALID_PARAMS, message=f"{call.target}: call again without this requestState")
        if approval.status == "pending":
            if _declined(call.input_responses, f"approval-{approval.id}"):
                text = (
                    f"{call.target} was not called: the approval page was declined; approval {approval.id} "
                    "stays pending for an operator, call again with the same arguments to continue"
                )
                return refuse(call, text, "pending")
            return gate.input_required(call, approval)
        if approval.status != "approved":
            return gate.refuse_status(call, approval.id, approval.status)
    granted = await gate.store.consume(who, call.target, call.arguments)
    if granted is None:
        if resume is not None:  # approved, but a concurrent retry used it first
            return gate.refuse_status(call, str(resume.get("id")), "used")
        pending = await gate.store.request(who, call.target, call.arguments, ttl=gate.timeout, rule=rule)
        return gate.input_required(call, pending)
    call.state.approver = granted.approver
    return await nxt(call)


def _declined(responses: Mapping[str, Any] | None, key: str) -> bool:
    """True when the client answered our elicitation ``key`` with ``decline`` or ``cancel``.
    An ``accept`` means only that the user was shown the page: it approves nothing."""
    answer = (responses or {}).get(key)
    return isinstance(answer, Mapping) and answer.get("action") in ("decline", "cancel")


async def _hold(gate: _Gate, call: UpstreamCall, approval: Approval) -> Status:
    """2025-11-25 hold mode: wait for the operator; show a URL-elicitation-capable client the page meanwhile.

    The elicitation rides the call's own request stream (:meth:`Relay.elicit`); its answer is ignored.
    Once the operator decided (or the approval expired), ``notifications/elicitation/complete`` tells
    the client the out-of-band step is over (2025-11-25 spec, client/elicitation, URL mode)."""
    relay = call.relay
    if relay is None or not url_elicitation_declared(call.client_capabilities):
        return await gate.store.wait(approval.id, gate.timeout)
    url = approval_url(gate.base_url(), approval.id)
    elicitation_id = f"approval-{approval.id}-{secrets.token_hex(4)}"
    ask = types.ElicitRequestURLParams(
        message=gate.message(call, approval, url), url=url, elicitation_id=elicitation_id
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(_show, relay, ask)
        status = await gate.store.wait(approval.id, gate.timeout)
        if status != "pending":
            await relay.elicitation_complete(elicitation_id)
        tg.cancel_scope.cancel()
    return status


async def _show(relay: Any, ask: types.ElicitRequestURLParams) -> None:
    try:
        await relay.elicit(ask)
    except Exception:  # the client refused or failed the elicitation: the operator still decides
        log.debug("URL elicitation for an approval was not shown", exc_info=True)


__all__ = ["RESUME_KIND", "approval_layer", "approval_url", "url_elicitation_declared"]
