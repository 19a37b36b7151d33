"""Multi-round-trip flows for the conformance fixture (SEP-2322, 2026-07-28 `basic/utilities/mrtr`).

The `input-required-result-*` scenarios of `@modelcontextprotocol/conformance` call these tools
and the prompt by exact name. Each flow is one pure `Step`: given the answers of this round and
the state minted by the previous one, it either asks (an `Ask`: input requests keyed by
server-chosen names, plus optional state) or finishes with the method's result.

`run_flow` plays a step in the connection's era:

- 2026-07-28: an `Ask` becomes an `InputRequiredResult` (`resultType: "input_required"`); the
  client retries the same request with `inputResponses` and the echoed `requestState`. The state
  is JSON here and sealed on the wire by the SDK's `RequestStateBoundary` (AES-GCM, bound to the
  method, tool and arguments), which refuses a tampered or foreign token with -32602 before any
  handler runs (`install_request_state_security`).
- 2025-11-25: each input request is sent mid-call as a server-to-client request and the step is
  replayed with the answers, so the same tools work on handshake sessions.

Answers are matched by key and by type: a missing or wrong-typed answer is asked for again
(SEP-2322: servers SHOULD re-request missing information), unknown keys are ignored. A flow only
asks for what the client declared (`elicitation`, `sampling`, `roots`); when it needs a
capability the client lacks it answers -32021 with `requiredCapabilities` (2026-07-28) or a
tool error / -32602 (2025-11-25).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

Answers: TypeAlias = Mapping[str, types.InputResponse]
State: TypeAlias = dict[str, Any]
Final: TypeAlias = types.CallToolResult | types.GetPromptResult


@dataclass(frozen=True)
class Ask:
    """One round's input requests, and the state the retry must echo (None: no requestState)."""

    requests: dict[str, types.InputRequest]
    state: State | None = None


class MissingCapability(Exception):
    """The flow needs a client capability (wire name, e.g. "sampling") the client did not declare."""

    def __init__(self, capability: str) -> None:
        super().__init__(capability)
        self.capability = capability


Step: TypeAlias = Callable[[ServerRequestContext[Any], Answers, State | None], Ask | Final]

CAPABILITIES: dict[str, types.ClientCapabilities] = {
    "elicitation": types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    "sampling": types.ClientCapabilities(sampling=types.SamplingCapability()),
    "roots": types.ClientCapabilities(roots=types.RootsCapability()),
}
_CAPABILITY_OF = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
_ANSWER_TYPE: dict[str, tuple[type[Any], ...]] = {
    "elicitation/create": (types.ElicitResult,),
    "sampling/createMessage": (types.CreateMessageResult, types.CreateMessageResultWithTools),
    "roots/list": (types.ListRootsResult,),
}
MAX_ROUNDS = 8  # handshake era: a flow that keeps asking is a bug, not a conversation


def declared(ctx: ServerRequestContext[Any], capability: str) -> bool:
    return ctx.session.check_client_capability(CAPABILITIES[capability])


def elicit(message: str, properties: dict[str, Any]) -> types.ElicitRequest:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def sample(prompt: str, max_tokens: int) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def list_roots() -> types.ListRootsRequest:
    return types.ListRootsRequest()


def answer(answers: Answers, key: str, request: types.InputRequest) -> Any:
    """The answer under `key` if it has the type `request` expects, else None (re-ask it)."""
    reply = answers.get(key)
    return reply if isinstance(reply, _ANSWER_TYPE[request.method]) else None


def describe(reply: Any) -> str:
    """One line for an answer: elicited content, sampled text or the root URIs."""
    if isinstance(reply, types.ElicitResult):
        return f"{reply.action} {json.dumps(reply.content, sort_keys=True)}"
    if isinstance(reply, types.ListRootsResult):
        return ", ".join(str(root.uri) for root in reply.roots) or "(no roots)"
    content = reply.content
    return content.text if isinstance(content, types.TextContent) else type(content).__name__


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _field(reply: Any, name: str) -> str:
    content = reply.content if isinstance(reply, types.ElicitResult) else None
    return str((content or {}).get(name, "")) if reply.action == "accept" else f"({reply.action})"


# ---- the flows -----------------------------------------------------------------------------

USER_NAME = elicit("What is your name?", {"name": {"type": "string"}})
CONFIRM = elicit("Please confirm", {"ok": {"type": "boolean"}})
CAPITAL = sample("What is the capital of France?", 100)
GREETING = sample("Generate a greeting", 50)


def single(key: str, request: types.InputRequest, finish: Callable[[Any], Final]) -> Step:
    """A one-question flow without requestState: ask `request` under `key`, then `finish(answer)`."""

    def step(ctx: ServerRequestContext[Any], answers: Answers, state: State | None) -> Ask | Final:
        _need(ctx, request)
        reply = answer(answers, key, request)
        return Ask({key: request}) if reply is None else finish(reply)

    return step


def _need(ctx: ServerRequestContext[Any], request: types.InputRequest) -> None:
    capability = _CAPABILITY_OF[request.method]
    if not declared(ctx, capability):
        raise MissingCapability(capability)


def _stateful(flow: str, key: str, request: types.InputRequest, verdict: str) -> Step:
    """One question whose retry must echo the requestState this flow minted."""

    def step(ctx: ServerRequestContext[Any], answers: Answers, state: State | None) -> Ask | Final:
        _need(ctx, request)
        reply = answer(answers, key, request)
        if reply is None or (state or {}).get("flow") != flow:
            return Ask({key: request}, {"flow": flow, "round": 1})
        return _text(f"{verdict}: {describe(reply)}")

    return step


def _gather(flow: str, wanted: dict[str, types.InputRequest]) -> Step:
    """Ask every request whose capability the client declared; re-ask only what is still missing.

    Answers collected in earlier rounds ride in the state, so a client may answer in parts.
    """

    def step(ctx: ServerRequestContext[Any], answers: Answers, state: State | None) -> Ask | Final:
        asked = {k: r for k, r in wanted.items() if declared(ctx, _CAPABILITY_OF[r.method])}
        if not asked:
            raise MissingCapability(_CAPABILITY_OF[next(iter(wanted.values())).method])
        have: dict[str, str] = dict((state or {}).get("have", {})) if (state or {}).get("flow") == flow else {}
        for key, request in asked.items():
            reply = answer(answers, key, request)
            if reply is not None:
                have[key] = describe(reply)
        missing = {k: r for k, r in asked.items() if k not in have}
        if missing:
            return Ask(missing, {"flow": flow, "have": have})
        return _text("Received " + "; ".join(f"{k}: {have[k]}" for k in asked))

    return step


def _multi_round(ctx: ServerRequestContext[Any], answers: Answers, state: State | None) -> Ask | Final:
    """Two questions in two rounds; the state carries round 1's answer into round 2."""
    step1 = elicit("Step 1: What is your name?", {"name": {"type": "string"}})
    step2 = elicit("Step 2: What is your favorite color?", {"color": {"type": "string"}})
    _need(ctx, step1)
    state = state if (state or {}).get("flow") == "multi_round" else None
    if state is not None and state.get("round") == 2:
        color = answer(answers, "step2", step2)
        if color is None:
            return Ask({"step2": step2}, state)
        return _text(f"{state['name']}'s favorite color is {_field(color, 'color')}")
    name = answer(answers, "step1", step1)
    if name is None or state is None:
        return Ask({"step1": step1}, {"flow": "multi_round", "round": 1})
    return Ask({"step2": step2}, {"flow": "multi_round", "round": 2, "name": _field(name, "name")})


def _prompt_finish(reply: Any) -> types.GetPromptResult:
    text = f"Write a short summary using this context: {_field(reply, 'context')}"
    message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.GetPromptResult(description="A prompt built from elicited context", messages=[message])


MIXED: dict[str, types.InputRequest] = {"user_name": USER_NAME, "greeting": GREETING, "client_roots": list_roots()}

TOOL_FLOWS: dict[str, tuple[str, Step]] = {
    "test_input_required_result_elicitation": (
        "Asks for the user's name (key user_name) with an InputRequiredResult, then greets",
        single("user_name", USER_NAME, lambda r: _text(f"Hello, {_field(r, 'name')}!")),
    ),
    "test_input_required_result_sampling": (
        "Asks the client's LLM the capital of France (key capital_question)",
        single("capital_question", CAPITAL, lambda r: _text(f"LLM says: {describe(r)}")),
    ),
    "test_input_required_result_list_roots": (
        "Asks for the client's roots (key client_roots) and lists them",
        single("client_roots", list_roots(), lambda r: _text(f"Client roots: {describe(r)}")),
    ),
    "test_input_required_result_request_state": (
        "Asks for confirmation with a requestState the retry must echo; answers state-ok",
        _stateful("request_state", "confirm", CONFIRM, "state-ok"),
    ),
    "test_input_required_result_tampered_state": (
        "Like _request_state; a tampered requestState is refused with -32602",
        _stateful("tampered_state", "confirm", CONFIRM, "state-ok"),
    ),
    "test_input_required_result_multiple_inputs": (
        "Asks elicitation, sampling and roots at once (with requestState); re-asks only what is missing",
        _gather("multiple_inputs", MIXED),
    ),
    "test_input_required_result_capabilities": (
        "Asks only for inputs whose capability the client declared in _meta",
        _gather("capabilities", MIXED),
    ),
    "test_input_required_result_multi_round": (
        "Two rounds (step1 name, step2 color), each with a fresh requestState",
        _multi_round,
    ),
}
PROMPT_NAME = "test_input_required_result_prompt"
PROMPT_FLOW: Step = single(
    "user_context", elicit("What context should the prompt use?", {"context": {"type": "string"}}), _prompt_finish
)

TOOLS = [
    types.Tool(name=name, description=text, input_schema={"type": "object", "properties": {}})
    for name, (text, _) in TOOL_FLOWS.items()
]
PROMPT = types.Prompt(name=PROMPT_NAME, description="A prompt that first asks the user for context (elicitation)")


# ---- playing a flow in the connection's era ------------------------------------------------


def missing_capability_error(capability: str) -> MCPError:
    """-32021 MissingRequiredClientCapability; `data.requiredCapabilities` is a ClientCapabilities object."""
    return MCPError(
        MISSING_REQUIRED_CLIENT_CAPABILITY,
        f"This request needs the client capability {capability!r}; declare it in clientCapabilities and retry",
        {"requiredCapabilities": {capability: {}}},
    )


def _opened_state(wire: str | None) -> State | None:
    """The JSON state this server minted (already verified and unsealed by `RequestStateBoundary`)."""
    if wire is None:
        return None
    try:
        state = json.loads(wire)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise MCPError(INVALID_PARAMS, "Invalid or expired requestState")
    return state


async def run_flow(
    ctx: ServerRequestContext[Any],
    params: types.CallToolRequestParams | types.GetPromptRequestParams,
    step: Step,
) -> Final | types.InputRequiredResult:
    """Play `step` for one request; raises `MissingCapability` for the caller to shape per method."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        outcome = step(ctx, params.input_responses or {}, _opened_state(params.request_state))
        if isinstance(outcome, Ask):
            wire = None if outcome.state is None else json.dumps(outcome.state, sort_keys=True)
            return types.InputRequiredResult(input_requests=outcome.requests, request_state=wire)
        return outcome
    answers: dict[str, types.InputResponse] = {}
    state: State | None = None
    for _ in range(MAX_ROUNDS):
        outcome = step(ctx, answers, state)
        if not isinstance(outcome, Ask):
            return outcome
        answers, state = {}, outcome.state
        for key, request in outcome.requests.items():
            answers[key] = await ctx.session.send_request(
                request,
                _ANSWER_TYPE[request.method][0],
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
    raise MCPError(INVALID_PARAMS, f"The flow did not finish within {MAX_ROUNDS} rounds")


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    """Serve one MRTR tool (the caller checked `params.name in TOOL_FLOWS`)."""
    try:
        outcome = await run_flow(ctx, params, TOOL_FLOWS[params.name][1])
    except MissingCapability as missing:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise missing_capability_error(missing.capability) from None
        text = f"The client does not support {missing.capability}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)
    assert not isinstance(outcome, types.GetPromptResult), "tool flows finish with a CallToolResult"
    return outcome


async def get_prompt(
    ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    """Serve `test_input_required_result_prompt`."""
    try:
        outcome = await run_flow(ctx, params, PROMPT_FLOW)
    except MissingCapability as missing:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise missing_capability_error(missing.capability) from None
        raise MCPError(INVALID_PARAMS, f"The client does not support {missing.capability}") from None
    assert not isinstance(outcome, types.CallToolResult), "the prompt flow finishes with a GetPromptResult"
    return outcome


def install_request_state_security(server: Server[Any]) -> None:
    """Seal every outgoing requestState and verify every echo with the SDK's boundary.

    Process-local key (`RequestStateSecurity.ephemeral()`): state minted by another fixture
    process, or altered in any byte, is refused with -32602 "Invalid or expired requestState".
    """
    server.middleware.append(RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience=server.name))
