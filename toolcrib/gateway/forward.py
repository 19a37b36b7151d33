"""The terminal of the pipeline: the upstream edge for every method.

:class:`Forwarder` sends an :class:`~toolcrib.gateway.pipeline.UpstreamCall` that passed every layer
to its upstream (bulkhead, deadline and restart are the router's :class:`~toolcrib.router.upstreams.Upstream`)
and maps the answer back into the client's namespace (resource URIs get their ``server+`` prefix).
Upstream failures take the shape the method allows: toolcrib's own failures (deadline, crash,
unavailable) are a tool-level error result for ``tools/call`` and a JSON-RPC error for everything
else; an upstream's own JSON-RPC error reaches a client that called the tool by its name unchanged,
as it would directly, and is a tool error result under ``invoke`` (except -32021, which only the
client can fix by declaring the capability).

A 2026-07-28 client's ``tools/call``, ``prompts/get`` and ``resources/read`` go through
:class:`~toolcrib.gateway.mrtr.Mrtr` (multi-round-trip requests, SEP-2322): they may answer
``input_required``, and its refusals (-32602 for a ``requestState`` that does not fit, -32021 for a
missing client capability) stay JSON-RPC errors whatever the method. A 2025-11-25 client's call lets
the SDK client drive any ``input_required`` round of a 2026-07-28 upstream through toolcrib's
callbacks, which ask the client on its session (:mod:`toolcrib.gateway.relay`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.client import Client
from mcp.client.extension import UnexpectedClaimedResult
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from toolcrib.errors import UpstreamError, UpstreamInvalidResult
from toolcrib.gateway.mrtr import INPUT_METHODS, Mrtr, MrtrRefusal, Op, Progress, Retry
from toolcrib.gateway.pipeline import MODERN, UpstreamCall, tool_error
from toolcrib.gateway.relay import Relay
from toolcrib.router.pool import Pool
from toolcrib.router.wire import wire_of

if TYPE_CHECKING:
    from toolcrib.gateway.tasks import TaskEdge


class Forwarder:
    """``await forwarder(call)``: the call's result model, or a refusal in the method's shape."""

    def __init__(self, pool: Pool, mrtr: Mrtr | None = None) -> None:
        self.pool = pool
        self.mrtr = mrtr
        self.tasks: TaskEdge | None = None
        """The tasks extension (SEP-2663), set by :func:`toolcrib.gateway.tasks.install`."""

    async def __call__(self, call: UpstreamCall) -> Any:
        try:
            if self.tasks is not None:  # tasks/* and task results of tools/call: toolcrib/gateway/tasks.py
                return await self.tasks.forward(call, self._send)
            return await self._send(call)
        except MrtrRefusal:
            call.state.outcome = "protocol_error"
            raise
        except UpstreamError as exc:
            call.state.outcome = type(exc).__name__
            call.state.error = exc.message
            if call.kind == "tool":
                return tool_error(exc.message)
            raise MCPError(code=types.INTERNAL_ERROR, message=exc.message) from None
        except MCPError as exc:
            call.state.outcome = "protocol_error"
            call.state.error = exc.error.message
            if call.via == "invoke" and exc.error.code != types.MISSING_REQUIRED_CLIENT_CAPABILITY:
                # invoke is toolcrib's own tool: the model reads the upstream's refusal as its result
                return tool_error(f"{call.server} answered with an error: {exc.error.message}")
            if call.method == "resources/read":
                raise _not_found_in_era(call, exc) from None
            raise  # a client calling the tool by its name gets the upstream's JSON-RPC error, as direct

    async def _send(self, call: UpstreamCall) -> Any:
        up = self.pool.upstream(call.server)
        if call.method in INPUT_METHODS:
            if self.mrtr is not None and call.era == MODERN:
                result = await self.mrtr.send(call, up, operation)
            else:
                relay: Relay | None = call.relay
                progress = relay.progress if relay is not None and relay.wants_progress else None
                result = await up.request(operation(call, None, progress), what=f"{call.method} {call.name}")
            if call.method == "resources/read" and isinstance(result, types.ReadResourceResult):
                uri = self.pool.catalog.resource_uri
                contents = [c.model_copy(update={"uri": uri(call.server, str(c.uri))}) for c in result.contents]
                return result.model_copy(update={"contents": contents})
            return result
        if call.method in ("resources/subscribe", "resources/unsubscribe"):
            await up.subscribe(call.name, call.method == "resources/subscribe")
            return types.EmptyResult()
        if call.method == "completion/complete":
            ((arg_name, value),) = call.arguments.items()
            ref: Any = (
                types.PromptReference(type="ref/prompt", name=call.name)
                if call.kind == "prompt"
                else types.ResourceTemplateReference(type="ref/resource", uri=call.name)
            )
            return await up.request(
                lambda c: c.complete(ref, {"name": arg_name, "value": value}, call.completion_context),
                what="completion/complete",
            )
        raise MCPError(code=types.METHOD_NOT_FOUND, message=f"{call.method} is not relayed to upstreams")


def operation(call: UpstreamCall, retry: Retry | None, progress: Progress | None) -> Op:
    """The SDK operation for ``tools/call``, ``prompts/get`` or ``resources/read``.

    With ``retry`` the request speaks 2026-07-28 MRTR itself: it carries the client's
    ``inputResponses`` and the upstream's ``requestState``, and an ``InputRequiredResult`` comes
    back as it is. Without, the SDK client answers any round through toolcrib's callbacks.
    """
    name, args = call.name, call.arguments
    if call.method == "tools/call":
        # The first round (no inputResponses, no requestState) is framed by toolcrib: router/wire.py
        first = retry is None or (retry.input_responses is None and retry.request_state is None)

        async def call_tool(c: Client) -> Any:
            wire = wire_of(c) if first else None
            try:
                if wire is not None:
                    return await wire.call_tool(c, name, args, progress, drive=retry is None)
                if retry is None:
                    return await c.call_tool(name, args, progress_callback=progress)
                return await c.session.call_tool(
                    name,
                    args,
                    progress_callback=progress,
                    input_responses=retry.input_responses,
                    request_state=retry.request_state,
                    allow_input_required=True,
                )
            except UnexpectedClaimedResult:
                raise  # a task (a RuntimeError too): the task relay's, gateway/tasks.py
            except (RuntimeError, ValidationError) as exc:  # not a CallToolResult, or breaks its output schema
                raise UpstreamInvalidResult(
                    f"{call.server}: {name} answered with a result that breaks its declared contract "
                    f"({_first_line(exc)}); the server is at fault, report it to its maintainers"
                ) from None

        return call_tool
    if retry is None:
        if call.method == "prompts/get":
            return lambda c: c.get_prompt(name, args)
        return lambda c: c.read_resource(name, cache_mode="bypass")
    responses, state = retry.input_responses, retry.request_state

    async def op(c: Client) -> Any:
        session = c.session
        if call.method == "prompts/get":
            return await session.get_prompt(
                name, args, input_responses=responses, request_state=state, allow_input_required=True
            )
        return await session.read_resource(
            name, input_responses=responses, request_state=state, allow_input_required=True
        )

    return op


def _first_line(exc: Exception) -> str:
    """What went wrong, in at most 200 characters of one line (a pydantic error names the first field)."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(result)"
        return f"{where}: {first['msg']}"[:200]
    return (str(exc).splitlines() or [""])[0][:200]


RESOURCE_NOT_FOUND_2025 = -32002
"""The 2025-11-25 code for an unknown resource URI; 2026-07-28 uses -32602 with ``data.uri`` (SEP-2164)."""


def _not_found_in_era(call: UpstreamCall, exc: MCPError) -> MCPError:
    """An upstream's "resource not found" in the code of the client's revision, naming the URI the
    client asked for: -32602 for a 2026-07-28 client (SEP-2164), -32002 for a 2025-11-25 one (a
    -32602 counts as not-found only with ``data.uri``). Any other error is returned unchanged."""
    err = exc.error
    data = err.data if isinstance(err.data, dict) else {}
    if call.era == MODERN and err.code == RESOURCE_NOT_FOUND_2025:
        return MCPError(code=types.INVALID_PARAMS, message=err.message, data={**data, "uri": call.target})
    if call.era != MODERN and err.code == types.INVALID_PARAMS and "uri" in data:
        return MCPError(code=RESOURCE_NOT_FOUND_2025, message=err.message, data={**data, "uri": call.target})
    return exc
