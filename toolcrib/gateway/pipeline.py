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

from toolcrib.gateway.policy import Principal

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
