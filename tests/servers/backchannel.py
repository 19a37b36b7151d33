"""Back-channel fixture: one tool that logs, elicits and samples mid-call, each carrying its argument.

    python -m tests.servers.backchannel                    # stdio (2026-07-28 unless --legacy)
    python -m tests.servers.backchannel --http 0 --legacy  # Streamable HTTP, 2025-11-25 only

Tool `converse(marker, group="", parties=1, steps="log,elicit,sample")`:
  - waits until `parties` calls with the same `group` have arrived (an in-process barrier, so
    the test knows that many calls are in flight on this server at once; gives up after 15 s);
  - for each step: `log` sends `notifications/message` with data "log <marker>"; `elicit` asks
    "elicit <marker>"; `sample` asks for a completion of "sample <marker>";
  - waits at a second barrier, then returns JSON {"marker", "elicited", "sampled", "refused"}:
    what the client answered, and the error text of any step the client side refused.
Handshake era: log, elicitation and sampling are sent on the call's own stream
(`related_request_id`). 2026-07-28: the log rides the request's stream (the client opts in
via `_meta`); elicitation and sampling come back as one `InputRequiredResult`, and the
retried call (which carries the answers) skips the first barrier and the log.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers._common import FixtureServer, main

BARRIER_TIMEOUT = 15.0
_arrived: dict[str, int] = defaultdict(int)
_released: dict[str, anyio.Event] = {}

CONVERSE = types.Tool(
    name="converse",
    description="Log, elicit and sample, each carrying the marker, then return what the client answered",
    input_schema={
        "type": "object",
        "properties": {
            "marker": {"type": "string"},
            "group": {"type": "string"},
            "parties": {"type": "integer", "minimum": 1},
            "steps": {"type": "string"},
        },
        "required": ["marker"],
    },
)


async def _barrier(key: str, parties: int) -> None:
    if parties <= 1:
        return
    event = _released.setdefault(key, anyio.Event())
    _arrived[key] += 1
    if _arrived[key] >= parties:
        event.set()
    with anyio.move_on_after(BARRIER_TIMEOUT):
        await event.wait()


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _elicit_request(marker: str) -> types.ElicitRequest:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    return types.ElicitRequest(
        params=types.ElicitRequestFormParams(message=f"elicit {marker}", requested_schema=schema)
    )


def _sample_request(marker: str) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=_text(f"sample {marker}"))
    return types.CreateMessageRequest(params=types.CreateMessageRequestParams(messages=[message], max_tokens=10))


async def _log(ctx: ServerRequestContext[Any], marker: str) -> None:
    await ctx.session.send_log_message("info", f"log {marker}", logger="bc", related_request_id=ctx.request_id)


def _sampled_text(reply: Any) -> str:
    content = getattr(reply, "content", None)
    return content.text if isinstance(content, types.TextContent) else repr(content)


async def _handshake(ctx: ServerRequestContext[Any], marker: str, steps: list[str]) -> dict[str, Any]:
    """2025-11-25: every step is sent on the call's own stream, in order."""
    out: dict[str, Any] = {"marker": marker, "elicited": None, "sampled": None, "refused": []}
    related = ServerMessageMetadata(related_request_id=ctx.request_id)
    for step in steps:
        try:
            if step == "log":
                await ctx.session.send_log_message(
                    "info", f"log {marker}", logger="bc", related_request_id=ctx.request_id
                )
            elif step == "elicit":
                elicited = await ctx.session.send_request(_elicit_request(marker), types.ElicitResult, metadata=related)
                out["elicited"] = elicited.content
            elif step == "sample":
                sampled = await ctx.session.send_request(
                    _sample_request(marker), types.CreateMessageResult, metadata=related
                )
                out["sampled"] = _sampled_text(sampled)
        except MCPError as exc:
            out["refused"].append(f"{step}: {exc.error.message}")
    return out


async def _modern(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams, marker: str, steps: list[str]
) -> dict[str, Any] | types.InputRequiredResult:
    """2026-07-28: log on the first leg, then ask for all inputs at once; the retry carries them."""
    answers = params.input_responses or {}
    if not answers:
        if "log" in steps:
            await _log(ctx, marker)
        wanted: dict[str, types.InputRequest] = {}
        if "elicit" in steps:
            wanted["elicit"] = _elicit_request(marker)
        if "sample" in steps:
            wanted["sample"] = _sample_request(marker)
        if wanted:
            return types.InputRequiredResult(input_requests=wanted)
    elicited = answers.get("elicit")
    sampled = answers.get("sample")
    return {
        "marker": marker,
        "elicited": getattr(elicited, "content", None),
        "sampled": _sampled_text(sampled) if sampled is not None else None,
        "refused": [],
    }


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    if params.name != CONVERSE.name:
        raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name}")
    args = params.arguments or {}
    marker = str(args["marker"])
    group = str(args.get("group") or "")
    parties = int(args.get("parties") or 1)
    steps = [s for s in str(args.get("steps") or "log,elicit,sample").split(",") if s]
    first_leg = not params.input_responses
    if first_leg:
        await _barrier(f"{group}:start", parties)
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        outcome = await _modern(ctx, params, marker, steps)
        if isinstance(outcome, types.InputRequiredResult):
            return outcome
    else:
        outcome = await _handshake(ctx, marker, steps)
    await _barrier(f"{group}:end", parties)
    return types.CallToolResult(content=[_text(json.dumps(outcome))], is_error=bool(outcome["refused"]))


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[CONVERSE])


server = FixtureServer("toolcrib-backchannel", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)

if __name__ == "__main__":
    main(server, description=__doc__ or "")
