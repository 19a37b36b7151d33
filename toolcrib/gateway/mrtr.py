"""Multi-round-trip requests (MRTR, SEP-2322, MCP 2026-07-28) through the gateway, in both eras.

In 2026-07-28 a server does not send requests to its client: a ``tools/call``, ``prompts/get`` or
``resources/read`` that needs input answers with an ``InputRequiredResult`` (``inputRequests``
keyed by server-chosen keys, an opaque ``requestState``), and the client retries the same request
carrying ``inputResponses`` and the echoed ``requestState`` (spec 2026-07-28, basic/mrtr). This
module is how toolcrib takes part in that, whoever is on either side:

============================  ================================  ==========================================
client                        upstream                          what toolcrib does
============================  ================================  ==========================================
2026-07-28                    2026-07-28                        relay (:meth:`Mrtr.send`): the upstream's
                                                                ``inputRequests`` go out redacted, its
                                                                ``requestState`` inside toolcrib's own
2026-07-28                    2025-11-25, legacy HTTP+SSE       translation A (:mod:`toolcrib.gateway.parked`):
                                                                the upstream call is parked and its mid-call
                                                                requests become ``input_required`` rounds
2025-11-25 session            2026-07-28                        translation B: the SDK client drives the
                                                                rounds through toolcrib's callbacks, which
                                                                ask the session client (:mod:`.relay`)
============================  ================================  ==========================================

Every ``requestState`` toolcrib hands out is ONE token, ``Sealer.seal("request_state",
principal.id, {"k": "upstream" | "parked" | "approval", ...}, ttl)`` (:mod:`.trust.sealed`): the
spec says servers MUST treat it as attacker-controlled, so it is authenticated, encrypted, bound
to the principal and expiring. :func:`arrive` opens it once on arrival; anything else is refused
with JSON-RPC ``-32602`` (:data:`INVALID_STATE`) before the pipeline runs. ``{"k": "approval"}``
belongs to the approval layer and passes through on ``call.resume`` untouched.

A 2026-07-28 client that did not declare the capability an input request needs (``elicitation``,
``sampling`` (``sampling.tools`` when tools are offered), ``roots``) gets JSON-RPC ``-32021`` with
``data.requiredCapabilities`` (2026-07-28 basic/lifecycle, "missing required client capability";
the SDK's ``MissingRequiredClientCapabilityErrorData``) instead of a round it could not answer.
``inputResponses`` going upstream are the client's own answers: passed as they came, never scrubbed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.client import Client
from mcp.server.context import ServerRequestContext
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter, ValidationError

from toolcrib.gateway.pipeline import HANDSHAKE, MODERN, REQUEST_STATE, UpstreamCall
from toolcrib.gateway.trust.approvals import args_hash
from toolcrib.gateway.trust.redaction import Redactor
from toolcrib.gateway.trust.sealed import InvalidToken, Sealer

log = logging.getLogger("toolcrib.mrtr")

INPUT_METHODS = INPUT_REQUIRED_METHODS
"""The requests that may answer ``input_required`` (tools/call, prompts/get, resources/read;
2026-07-28 basic/mrtr), as the SDK lists them."""
STATE_TTL = 3600.0
"""Seconds a relayed upstream round's ``requestState`` stays valid."""
INVALID_STATE = "requestState is invalid or expired; retry the request without it"

_RESPONSES: TypeAdapter[types.InputResponses] = TypeAdapter(types.InputResponses)


class MrtrRefusal(MCPError):
    """A JSON-RPC error the spec wants for the whole request (never turned into a tool error)."""


def invalid_state() -> MrtrRefusal:
    return MrtrRefusal(code=types.INVALID_PARAMS, message=INVALID_STATE)


def era_of(protocol_version: str | None) -> str:
    """``"2026-07-28"`` for a modern (stateless) request, else ``"2025-11-25"`` (any handshake version)."""
    return MODERN if protocol_version in MODERN_PROTOCOL_VERSIONS else HANDSHAKE


def arrive(call: UpstreamCall, ctx: ServerRequestContext[Any, Any], sealer: Sealer) -> None:
    """Fill ``call.era``, ``.client_capabilities``, ``.input_responses`` and ``.resume`` from the request.

    ``inputResponses`` and ``requestState`` are read (raw, as the client sent them) only on a
    2026-07-28 request of an :data:`INPUT_METHODS` method, where they exist. Raises
    :class:`MrtrRefusal` (-32602, :data:`INVALID_STATE`) for a ``requestState`` that is not a live
    toolcrib token minted for this principal (forged, modified, another principal's, expired).
    """
    call.era = era_of(ctx.protocol_version)
    caps = ctx.session.client_capabilities
    call.client_capabilities = caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps else None
    if call.era != MODERN or call.method not in INPUT_METHODS:
        return
    params = ctx.params or {}
    responses = params.get("inputResponses")
    if isinstance(responses, Mapping):
        call.input_responses = dict(responses)
    token = params.get("requestState")
    if token is None:
        return
    try:
        payload = sealer.open(token, REQUEST_STATE, call.principal.id)
    except InvalidToken as exc:
        log.info("refused a requestState from %s for %s: %s", call.principal.id, call.target, exc)
        raise invalid_state() from None
    if not isinstance(payload, dict) or not isinstance(payload.get("k"), str):
        raise invalid_state()
    call.resume = payload


# ---- capabilities -----------------------------------------------------------------------------


def required_capability(caps: Mapping[str, Any] | None, request: types.InputRequest) -> dict[str, Any] | None:
    """The ``requiredCapabilities`` entry ``request`` needs that ``caps`` (wire form) lacks, or None.

    Elicitation in form mode needs ``elicitation`` with ``form`` (a bare ``{}`` is form support,
    as before modes existed), URL mode needs ``elicitation.url``; sampling needs ``sampling``, and
    ``sampling.tools`` when the request offers tools; ``roots/list`` needs ``roots``.
    """
    caps = caps or {}
    if isinstance(request, types.ElicitRequest):
        declared = caps.get("elicitation")
        if getattr(request.params, "mode", None) == "url":
            return None if isinstance(declared, Mapping) and "url" in declared else {"elicitation": {"url": {}}}
        ok = isinstance(declared, Mapping) and ("form" in declared or "url" not in declared)
        return None if ok else {"elicitation": {"form": {}}}
    if isinstance(request, types.CreateMessageRequest):
        declared = caps.get("sampling")
        tools = bool(request.params.tools or request.params.tool_choice)
        if isinstance(declared, Mapping) and (not tools or "tools" in declared):
            return None
        return {"sampling": {"tools": {}} if tools else {}}
    return None if isinstance(caps.get("roots"), Mapping) else {"roots": {}}


def check_capabilities(call: UpstreamCall, requests: Mapping[str, types.InputRequest]) -> None:
    """Raise -32021 (:class:`MrtrRefusal`) when the client cannot answer one of ``requests``."""
    required: dict[str, Any] = {}
    for request in requests.values():
        missing = required_capability(call.client_capabilities, request)
        for name, value in (missing or {}).items():
            required.setdefault(name, {}).update(value)
    if required:
        names = ", ".join(sorted(required))
        raise MrtrRefusal(
            code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
            message=f"{call.target} needs the client capability {names}; declare it in capabilities and retry",
            data={"requiredCapabilities": required},
        )


def parse_responses(wire: Mapping[str, Any] | None) -> types.InputResponses | None:
    """The client's ``inputResponses`` as SDK models, to send upstream; -32602 if malformed."""
    if wire is None:
        return None
    try:
        return _RESPONSES.validate_python(wire)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"][:1])
        raise MrtrRefusal(
            code=types.INVALID_PARAMS, message=f"inputResponses.{where} is not a valid input response; fix it and retry"
        ) from None


# ---- the relay (2026-07-28 on both sides) -----------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """What goes upstream on a 2026-07-28 request: the client's answers and the upstream's own state."""

    input_responses: types.InputResponses | None = None
    request_state: str | None = None


Progress = ProgressFnT
Op = Callable[[Client], Awaitable[Any]]
OpFactory = Callable[[UpstreamCall, Retry | None, Progress | None], Op]
"""``(call, retry, progress) -> op``: the SDK operation for ``call``. With ``retry`` it speaks
2026-07-28 MRTR itself (``allow_input_required``); with None the SDK client drives any round."""


class Mrtr:
    """The MRTR edge of the :class:`~toolcrib.gateway.forward.Forwarder` for 2026-07-28 clients."""

    def __init__(self, redactor: Redactor, sealer: Sealer, parking: Any = None, *, state_ttl: float = STATE_TTL):
        self.redactor = redactor
        self.sealer = sealer
        self.parking = parking
        """A :class:`toolcrib.gateway.parked.Parking` (translation A), or None: refused as before."""
        self.state_ttl = state_ttl

    async def send(self, call: UpstreamCall, up: Any, op: OpFactory) -> Any:
        """Run ``call`` (``call.era`` is 2026-07-28) on upstream ``up``: its result or an ``InputRequiredResult``.

        On a retry of a relayed round only the ``inputResponses`` keys the upstream asked for in that
        round go upstream (the rest are ignored, SEP-2322: servers SHOULD ignore what they do not
        recognize). Raises :class:`MrtrRefusal` for a ``requestState`` that does not fit this call (-32602) and
        for a missing client capability (-32021); upstream errors as :meth:`Upstream.request` does.
        """
        resume = call.resume if call.resume is not None and call.resume.get("k") != "approval" else None
        kind = resume.get("k") if resume is not None else None
        if kind == "parked" and self.parking is not None:
            return await self.parking.resume(call, resume)
        if up.state.modern:
            state: str | None = None
            if resume is not None:
                if (
                    kind != "upstream"
                    or resume.get("server") != call.server
                    or resume.get("target") != call.target
                    or resume.get("args") != args_hash(call.arguments)
                ):
                    raise invalid_state()
                state = resume.get("state")
            # An approval's answers were the approval layer's; anything else is the client's, as it came,
            # minus keys the upstream did not ask for in the round this retry answers (SEP-2322: servers
            # SHOULD ignore what they do not recognize; toolcrib does not refuse the whole retry for them).
            wire = None if call.resume is not None and resume is None else call.input_responses
            asked = resume.get("keys") if resume is not None else None
            if wire is not None and isinstance(asked, list):
                wire = {key: value for key, value in wire.items() if key in asked}
            responses = parse_responses(wire)
            relay = call.relay
            progress = relay.progress if relay is not None and relay.wants_progress else None
            result = await up.request(op(call, Retry(responses, state), progress), what=f"{call.method} {call.name}")
            if isinstance(result, types.InputRequiredResult):
                requests = result.input_requests or {}
                payload = {
                    "k": "upstream",
                    "server": call.server,
                    "target": call.target,
                    "args": args_hash(call.arguments),
                    "state": result.request_state,
                    "keys": sorted(requests),
                }
                return self.input_required(call, requests, payload, self.state_ttl)
            return result
        if resume is not None or self.parking is None:
            if resume is not None:
                raise invalid_state()
            return await up.request(op(call, None, None), what=f"{call.method} {call.name}")
        return await self.parking.start(call, up, op)

    def input_required(
        self, call: UpstreamCall, requests: Mapping[str, types.InputRequest], payload: dict[str, Any], ttl: float
    ) -> types.InputRequiredResult:
        """One ``input_required`` round for the client: capabilities checked (-32021), requests
        redacted, ``payload`` sealed as the ``requestState``; audited as pending."""
        check_capabilities(call, requests)
        scrubbed = {key: self.redactor.scrub_model(request) for key, request in requests.items()}
        state = self.sealer.seal(REQUEST_STATE, call.principal.id, payload, ttl)
        call.state.outcome = "input_required"
        return types.InputRequiredResult(input_requests=scrubbed or None, request_state=state)
