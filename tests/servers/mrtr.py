"""MRTR fixture: tools, a prompt and a resource that need client input, in both protocol eras.

    python -m tests.servers.mrtr                    # stdio; 2026-07-28 unless --legacy
    python -m tests.servers.mrtr --http 0 --legacy  # Streamable HTTP, 2025-11-25 only

Each item asks its questions one at a time, then answers with what the client said:

- tool ``ask(question)``: a form elicitation {"answer": string} -> ``answer: X`` (or ``action: decline``);
- tool ``sample(prompt)``: sampling -> ``sampled: TEXT``;
- tool ``roots()``: roots/list -> ``roots: URI,URI``;
- tool ``interview(rounds=3)``: ``rounds`` elicitations in a row -> ``answers: A1,A2,A3``;
- tool ``secretive()``: an elicitation whose message and schema carry the ``MRTR_SECRET`` environment
  value, then a sampling request whose message and system prompt carry it -> ``answer: A,TEXT``;
- tool ``ledger()``: what this process saw: ``{"calls": {item: n}, "cancelled": [item, ...],
  "responses": [[key, ...], ...]}``: ``cancelled`` lists items whose mid-call wait for the client was
  cut short by ``notifications/cancelled`` (2025-11-25), ``responses`` the ``inputResponses`` keys of
  each 2026-07-28 call, in order;
- prompt ``greeting``: an elicitation for a name -> one user message ``Hello NAME``;
- resource ``mrtr://answer``: an elicitation -> text ``answer: X``.

2026-07-28: each question is an ``InputRequiredResult`` (one input request, key ``q1``, ``q2``, ...)
whose ``requestState`` is this server's own JSON record of the answers so far, so a multi-round item
only completes when the client (through toolcrib) echoes that state back unchanged. 2025-11-25: each
question is a server-to-client request on the call's own stream, mid-call.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from tests.servers._common import FixtureServer, main

Ctx = ServerRequestContext[Any]
ANSWER_URI = "mrtr://answer"
_RESULTS: dict[str, type[BaseModel]] = {
    "elicitation/create": types.ElicitResult,
    "sampling/createMessage": types.CreateMessageResult,
    "roots/list": types.ListRootsResult,
}


CALLS: Counter[str] = Counter()
CANCELLED: list[str] = []
RESPONSES: list[list[str]] = []


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _elicit(message: str, hint: str = "") -> types.ElicitRequest:
    answer = {"type": "string", **({"description": hint} if hint else {})}
    schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"]}
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(prompt: str, system: str | None = None) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=_text(prompt))
    params = types.CreateMessageRequestParams(messages=[message], max_tokens=10, system_prompt=system)
    return types.CreateMessageRequest(params=params)


def _plan(name: str, args: dict[str, Any]) -> list[types.InputRequest]:
    if name == "ask":
        return [_elicit(str(args.get("question", "question?")))]
    if name == "sample":
        return [_sample(str(args.get("prompt", "say something")))]
    if name == "roots":
        return [types.ListRootsRequest()]
    if name == "interview":
        return [_elicit(f"question {i}") for i in range(1, int(args.get("rounds", 3)) + 1)]
    if name == "secretive":
        secret = os.environ.get("MRTR_SECRET", "")
        return [
            _elicit(f"the password is {secret}; confirm?", hint=f"type {secret} again"),
            _sample(f"repeat {secret}", system=f"you know {secret}"),
        ]
    if name in ("greeting", ANSWER_URI):
        return [_elicit("your name?")]
    raise MCPError(types.INVALID_PARAMS, f"Unknown item: {name}")


def _said(answer: dict[str, Any]) -> str:
    if "roots" in answer:
        return ",".join(r["uri"] for r in answer["roots"])
    if "model" in answer:
        content = answer.get("content") or {}
        return str(content.get("text")) if isinstance(content, dict) else repr(content)
    if answer.get("action") != "accept":
        return f"action: {answer.get('action')}"
    return str((answer.get("content") or {}).get("answer"))


def _finish(name: str, answers: list[dict[str, Any]]) -> str:
    said = [_said(a) for a in answers]
    label = {"sample": "sampled", "roots": "roots", "interview": "answers"}.get(name, "answer")
    if name == "greeting":
        return f"Hello {said[0]}"
    return f"{label}: {','.join(said)}"


async def _run(ctx: Ctx, name: str, args: dict[str, Any], params: Any) -> str | types.InputRequiredResult:
    plan = _plan(name, args)
    CALLS[name] += 1
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        answers = []
        try:
            for request in plan:
                reply = await ctx.session.send_request(request, _RESULTS[request.method], metadata=related)
                answers.append(reply.model_dump(by_alias=True, mode="json", exclude_none=True))
        except anyio.get_cancelled_exc_class():
            CANCELLED.append(name)  # the client cancelled the call while it waited for an answer
            raise
        return _finish(name, answers)
    so_far: list[dict[str, Any]] = json.loads(params.request_state) if params.request_state else []
    RESPONSES.append(sorted(params.input_responses or {}))
    key = f"q{len(so_far) + 1}"
    given = (params.input_responses or {}).get(key)
    if given is not None:
        so_far.append(given.model_dump(by_alias=True, mode="json", exclude_none=True))
    if len(so_far) < len(plan):
        key = f"q{len(so_far) + 1}"
        return types.InputRequiredResult(input_requests={key: plan[len(so_far)]}, request_state=json.dumps(so_far))
    return _finish(name, so_far)


TOOLS = [
    types.Tool(name=name, description=f"MRTR fixture: {name}", input_schema={"type": "object", "properties": props})
    for name, props in (
        ("ask", {"question": {"type": "string"}}),
        ("sample", {"prompt": {"type": "string"}}),
        ("roots", {}),
        ("interview", {"rounds": {"type": "integer", "minimum": 1}}),
        ("secretive", {}),
        ("ledger", {}),
    )
]


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult | types.InputRequiredResult:
    if params.name == "ledger":
        return types.CallToolResult(
            content=[_text(json.dumps({"calls": CALLS, "cancelled": CANCELLED, "responses": RESPONSES}))]
        )
    out = await _run(ctx, params.name, dict(params.arguments or {}), params)
    if isinstance(out, types.InputRequiredResult):
        return out
    return types.CallToolResult(content=[_text(out)])


async def get_prompt(
    ctx: Ctx, params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    out = await _run(ctx, params.name, {}, params)
    if isinstance(out, types.InputRequiredResult):
        return out
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=_text(out))])


async def read_resource(
    ctx: Ctx, params: types.ReadResourceRequestParams
) -> types.ReadResourceResult | types.InputRequiredResult:
    out = await _run(ctx, str(params.uri), {}, params)
    if isinstance(out, types.InputRequiredResult):
        return out
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=str(params.uri), text=out)])


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[types.Prompt(name="greeting", description="Greets you by name")])


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[types.Resource(uri=ANSWER_URI, name="answer")])


async def list_templates(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[])


server = FixtureServer(
    "toolcrib-mrtr",
    version="1.0.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_list_resources=list_resources,
    on_read_resource=read_resource,
    on_list_resource_templates=list_templates,
)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
