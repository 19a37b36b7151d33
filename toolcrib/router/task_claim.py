"""toolcrib's side, as a client, of the tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663).

Every upstream :class:`~mcp.Client` is built with :data:`TASKS_CLIENT`, so toolcrib declares the
extension to upstreams (2026-07-28 ``_meta.clientCapabilities.extensions``) and an upstream may
answer a ``tools/call`` with a task (``resultType: "task"``, a flat ``CreateTaskResult``). That
result is never resolved here: it surfaces as :class:`~mcp.client.extension.UnexpectedClaimedResult`
carrying a :class:`CreateTaskResult`, which the gateway's task relay (:mod:`toolcrib.gateway.tasks`)
hands to the client under a sealed task id, or polls to completion for a client that did not
declare the extension.
"""

from __future__ import annotations

from typing import Any, Literal

import mcp_types as types
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim, UnexpectedClaimedResult
from pydantic import ConfigDict, Field

TASKS = "io.modelcontextprotocol/tasks"
"""The extension identifier (SEP-2663)."""


class CreateTaskResult(types.Result):
    """A flat ``Result & Task`` (SEP-2663 "Task Creation"): ``taskId``, ``status``, ``createdAt``,
    ``lastUpdatedAt``, ``ttlMs`` (int ms or null), ``pollIntervalMs``; other fields are kept as sent."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = Field(default="task", alias="resultType")
    task_id: str = Field(alias="taskId")
    status: str
    ttl_ms: int | None = Field(default=None, alias="ttlMs")
    poll_interval_ms: int | None = Field(default=None, alias="pollIntervalMs")


async def _surface(result: CreateTaskResult, ctx: ClaimContext) -> types.CallToolResult:
    raise UnexpectedClaimedResult(result)


class TasksClient(ClientExtension):
    """Declares the tasks extension and claims ``resultType: "task"`` on ``tools/call``."""

    identifier = TASKS

    def claims(self) -> tuple[ResultClaim[Any], ...]:
        return (ResultClaim(result_type="task", model=CreateTaskResult, resolve=_surface),)


TASKS_CLIENT = TasksClient()
