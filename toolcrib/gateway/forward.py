"""The terminal of the pipeline: the upstream edge for every method.

:class:`Forwarder` sends an :class:`~toolcrib.gateway.pipeline.UpstreamCall` that passed every layer
to its upstream (bulkhead, deadline and restart are the router's :class:`~toolcrib.router.upstreams.Upstream`)
and maps the answer back into the client's namespace (resource URIs get their ``server+`` prefix).
Upstream failures take the shape the method allows: a tool-level error result for ``tools/call``,
a JSON-RPC error for everything else.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from toolcrib.errors import UpstreamError
from toolcrib.gateway.pipeline import UpstreamCall, tool_error
from toolcrib.gateway.relay import Relay
from toolcrib.router.pool import Pool


class Forwarder:
    """``await forwarder(call)``: the call's result model, or a refusal in the method's shape."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def __call__(self, call: UpstreamCall) -> Any:
        try:
            return await self._send(call)
        except UpstreamError as exc:
            call.state.outcome = type(exc).__name__
            call.state.error = exc.message
            if call.kind == "tool":
                return tool_error(exc.message)
            raise MCPError(code=types.INTERNAL_ERROR, message=exc.message) from None
        except MCPError as exc:
            call.state.outcome = "protocol_error"
            if call.kind == "tool":
                return tool_error(f"{call.server} answered with an error: {exc.error.message}")
            raise

    async def _send(self, call: UpstreamCall) -> Any:
        up = self.pool.upstream(call.server)
        if call.method == "tools/call":
            relay: Relay | None = call.relay
            progress = relay.progress if relay is not None and relay.wants_progress else None
            return await up.request(
                lambda c: c.call_tool(call.name, call.arguments, progress_callback=progress),
                what=f"tools/call {call.name}",
            )
        if call.method == "resources/read":
            result: types.ReadResourceResult = await up.request(
                lambda c: c.read_resource(call.name, cache_mode="bypass"), what=f"resources/read {call.name}"
            )
            uri = self.pool.catalog.resource_uri
            contents = [c.model_copy(update={"uri": uri(call.server, str(c.uri))}) for c in result.contents]
            return result.model_copy(update={"contents": contents})
        if call.method in ("resources/subscribe", "resources/unsubscribe"):
            await up.subscribe(call.name, call.method == "resources/subscribe")
            return types.EmptyResult()
        if call.method == "prompts/get":
            return await up.request(lambda c: c.get_prompt(call.name, call.arguments), what=f"prompts/get {call.name}")
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
