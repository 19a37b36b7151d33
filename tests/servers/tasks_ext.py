"""The tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663, MCP 2026-07-28) for the fixture.

An SDK `Extension` (`mcp/server/extension.py`), registered in `everything.EXTENSIONS`: it adds
the tools the conformance suite's `tasks-*` scenarios call, intercepts `tools/call` for them,
and serves `tasks/get`, `tasks/update` and `tasks/cancel`.

Tools (all but `greet` run as tasks when the request declares the extension):

- `greet {name}`: sync only, `Hello, {name}!`.
- `slow_compute {seconds, label}`: optional task; sleeps, then `Computed {label} in {seconds} s`.
- `failing_job`: required task; a tool error (`isError`) after about 1 s.
- `protocol_error_job`: optional task; fails with a JSON-RPC error (status `failed`).
- `confirm_delete {filename}`: required task; parks `input_required` with one `elicitation/create`.
- `multi_input`: required task; two `elicitation/create` requests pending at once.
- `test_tool_with_task`: required task; an MRTR round (`InputRequiredResult` for `user_name`)
  first, then a task whose result greets the gathered name.

Wire rules followed (SEP-2663): the `CreateTaskResult` is flat (`resultType: "task"`, `taskId`,
`status`, `createdAt`, `lastUpdatedAt`, `ttlMs`, `pollIntervalMs`); `tasks/get` inlines `result`
(completed) or `error` (failed) or `inputRequests` (input_required); `tasks/update` and
`tasks/cancel` answer an empty ack; an unknown task id is -32602; a request that did not declare
the extension gets -32021 (SEP-2575) for `tasks/*` and for a required-task tool, and runs an
optional-task tool synchronously. Tasks exist only at 2026-07-28 (claimed result shapes cannot
travel on a 2025-11-25 wire). Status changes are published as `notifications/tasks` to
:attr:`TasksExtension.listeners` (the fixture has no task subscription stream yet).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict, Field

TASKS = "io.modelcontextprotocol/tasks"
HEADER_MISMATCH = -32020
TTL_MS = 10 * 60 * 1000
POLL_MS = 200
MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
TERMINAL = frozenset({"completed", "failed", "cancelled"})

Ctx = ServerRequestContext[Any, Any]


class TaskIdParams(types.RequestParams):
    """`tasks/get` and `tasks/cancel` params."""

    model_config = ConfigDict(extra="allow")
    task_id: str = Field(alias="taskId")


class UpdateParams(TaskIdParams):
    """`tasks/update` params: responses to outstanding `inputRequests`, keyed like them."""

    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _elicit(message: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    return {"method": "elicitation/create", "params": {"mode": "form", "message": message, "requestedSchema": schema}}


@dataclass
class Task:
    """One task's state; `job` is the asyncio task running the tool."""

    id: str
    tool: str
    status: str = "working"
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    answered: anyio.Event = field(default_factory=anyio.Event)
    job: asyncio.Task[None] | None = None

    def detailed(self) -> dict[str, Any]:
        """The SEP-2663 DetailedTask (no `requestState`, no related-task `_meta`)."""
        out: dict[str, Any] = {
            "taskId": self.id,
            "status": self.status,
            "createdAt": self.created,
            "lastUpdatedAt": self.updated,
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_MS,
        }
        if self.status == "input_required":
            out["inputRequests"] = dict(self.pending)
        elif self.status == "completed" and self.result is not None:
            out["result"] = self.result
        elif self.status == "failed" and self.error is not None:
            out["error"] = self.error
        return out


Job = Callable[[Task], Awaitable[types.CallToolResult]]


class TasksExtension(Extension):
    """Serves the SEP-2663 surface for the fixture's task tools."""

    identifier = TASKS

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.listeners: list[Callable[[dict[str, Any]], Awaitable[None]]] = []
        self._seq = itertools.count(1)

    # ---- contributions ---------------------------------------------------------------------

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding("tasks/get", TaskIdParams, self._get, MODERN),
            MethodBinding("tasks/update", UpdateParams, self._update, MODERN),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel, MODERN),
        )

    @property
    def listed_tools(self) -> list[types.Tool]:
        """The tools this extension adds to `tools/list` (read by the fixture's `list_tools`)."""

        def obj(props: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
            return {"type": "object", "properties": props, "required": list(required)}

        s, n = {"type": "string"}, {"type": "number"}
        return [
            types.Tool(name="greet", description="Sync only: Hello, {name}!", input_schema=obj({"name": s})),
            types.Tool(
                name="slow_compute",
                description="Task (optional): sleeps `seconds`, then answers",
                input_schema=obj({"seconds": n, "label": s}),
            ),
            types.Tool(
                name="failing_job", description="Task (required): a tool error after ~1 s", input_schema=obj({})
            ),
            types.Tool(
                name="protocol_error_job", description="Task: fails with a JSON-RPC error", input_schema=obj({})
            ),
            types.Tool(
                name="confirm_delete",
                description="Task (required): asks to confirm, then deletes (pretends to)",
                input_schema=obj({"filename": s}),
            ),
            types.Tool(name="multi_input", description="Task (required): two questions at once", input_schema=obj({})),
            types.Tool(
                name="test_tool_with_task",
                description="MRTR round for user_name, then a task (required)",
                input_schema=obj({}),
            ),
        ]

    # ---- tools/call ------------------------------------------------------------------------

    async def intercept_tool_call(
        self, params: types.CallToolRequestParams, ctx: Ctx, call_next: CallNext
    ) -> HandlerResult:
        name, args = params.name, dict(params.arguments or {})
        if name == "greet":
            return _text(f"Hello, {args.get('name', 'World')}!")
        job, required = self._job(name, args, params)
        if job is None:
            return await call_next(ctx)
        declared = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and _declared(ctx)
        if name == "test_tool_with_task" and declared:
            answer = (params.input_responses or {}).get("user_name")
            if answer is None:
                ask = _elicit("What is your name?", {"name": {"type": "string"}})
                return types.InputRequiredResult(
                    input_requests={"user_name": types.ElicitRequest.model_validate(ask)}, request_state="round-1"
                )
        if not declared:
            if required:
                require_client_extension(ctx, TASKS)  # raises -32021 with requiredCapabilities
                raise MCPError(code=-32021, message=f"{name} runs only as a task (2026-07-28, {TASKS})")
            return await self._run_inline(job, name)
        task = Task(id=f"task-{next(self._seq)}-{secrets.token_hex(4)}", tool=name)
        self.tasks[task.id] = task  # stored before the answer: an immediate tasks/get resolves
        task.job = asyncio.get_running_loop().create_task(self._drive(task, job))
        return {"resultType": "task", **{k: v for k, v in task.detailed().items() if k in _CREATE_KEYS}}

    def _job(self, name: str, args: dict[str, Any], params: types.CallToolRequestParams) -> tuple[Job | None, bool]:
        if name == "slow_compute":
            seconds = float(args.get("seconds", 0) or 0)
            label = str(args.get("label", ""))

            async def slow(task: Task) -> types.CallToolResult:
                await anyio.sleep(seconds)
                return _text(f"Computed {label} in {seconds:g} s")

            return slow, False
        if name == "failing_job":

            async def failing(task: Task) -> types.CallToolResult:
                await anyio.sleep(1)
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text="the job failed")], is_error=True
                )

            return failing, True
        if name == "protocol_error_job":

            async def broken(task: Task) -> types.CallToolResult:
                await anyio.sleep(0.2)
                raise MCPError(code=INTERNAL_ERROR, message="protocol_error_job crashed (on purpose)")

            return broken, False
        if name == "confirm_delete":
            filename = str(args.get("filename", ""))

            async def confirm(task: Task) -> types.CallToolResult:
                (reply,) = await self._ask(
                    task, {"confirm": _elicit(f"Delete {filename}?", {"confirm": {"type": "boolean"}})}
                )
                ok = (
                    isinstance(reply, dict)
                    and reply.get("action") == "accept"
                    and (reply.get("content") or {}).get("confirm")
                )
                return _text(f"Deleted {filename}" if ok else f"Kept {filename}")

            return confirm, True
        if name == "multi_input":

            async def multi(task: Task) -> types.CallToolResult:
                asks = {
                    "name": _elicit("Your name?", {"name": {"type": "string"}}),
                    "confirm": _elicit("Proceed?", {"confirm": {"type": "boolean"}}),
                }
                replies = await self._ask(task, asks)
                return _text(f"Got {len(replies)} answers")

            return multi, True
        if name == "test_tool_with_task":
            reply = (params.input_responses or {}).get("user_name")
            content = reply.get("content") if isinstance(reply, dict) else getattr(reply, "content", None)
            who = (content or {}).get("name", "stranger") if isinstance(content, dict) else "stranger"

            async def hello(task: Task) -> types.CallToolResult:
                await anyio.sleep(0.2)
                return _text(f"Hello, {who}!")

            return hello, True
        return None, False

    async def _run_inline(self, job: Job, name: str) -> types.CallToolResult:
        task = Task(id="inline", tool=name)
        return await job(task)

    async def _drive(self, task: Task, job: Job) -> None:
        try:
            result = await job(task)
        except asyncio.CancelledError:
            return  # tasks/cancel already recorded the status
        except MCPError as exc:
            task.error = exc.error.model_dump(by_alias=True, mode="json", exclude_none=True)
            await self._set(task, "failed")
            return
        except Exception as exc:  # a crash inside the tool is a protocol error, not a tool error
            task.error = {"code": INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}
            await self._set(task, "failed")
            return
        task.result = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._set(task, "completed")

    async def _ask(self, task: Task, requests: dict[str, dict[str, Any]]) -> list[Any]:
        """Park `task` in input_required until every request is answered; the answers, in order."""
        task.pending.update(requests)
        await self._set(task, "input_required")
        while any(k not in task.answers for k in requests):
            await task.answered.wait()
            task.answered = anyio.Event()
        await self._set(task, "working")
        return [task.answers.pop(k) for k in requests]

    async def _set(self, task: Task, status: str) -> None:
        task.status, task.updated = status, _now()
        note = {"method": "notifications/tasks", "params": task.detailed()}
        for listener in list(self.listeners):
            await listener(note)

    # ---- tasks/* ---------------------------------------------------------------------------

    def _find(self, ctx: Ctx, params: TaskIdParams) -> Task:
        require_client_extension(ctx, TASKS)
        _check_name_header(ctx, params.task_id)
        task = self.tasks.get(params.task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown task: {params.task_id}")
        return task

    async def _get(self, ctx: Ctx, params: TaskIdParams) -> dict[str, Any]:
        return {"resultType": "complete", **self._find(ctx, params).detailed()}

    async def _update(self, ctx: Ctx, params: UpdateParams) -> dict[str, Any]:
        task = self._find(ctx, params)
        for key, value in params.input_responses.items():
            if key in task.pending:  # keys that match nothing outstanding are ignored
                task.pending.pop(key)
                task.answers[key] = value
        task.answered.set()
        if task.status == "input_required" and task.pending:
            task.updated = _now()
        return {"resultType": "complete"}

    async def _cancel(self, ctx: Ctx, params: TaskIdParams) -> dict[str, Any]:
        task = self._find(ctx, params)
        if task.status not in TERMINAL:
            task.pending.clear()
            await self._set(task, "cancelled")
            if task.job is not None:
                task.job.cancel()
        return {"resultType": "complete"}


_CREATE_KEYS = ("taskId", "status", "createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs")


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _declared(ctx: Ctx) -> bool:
    caps = ctx.session.client_capabilities
    return bool(caps and caps.extensions and TASKS in caps.extensions)


def _check_name_header(ctx: Ctx, task_id: str) -> None:
    """SEP-2663 "Routing Headers": an `Mcp-Name` header on tasks/* must equal `params.taskId` (-32020)."""
    headers = getattr(ctx.request, "headers", None)
    value = headers.get("mcp-name") if headers is not None else None
    if value is not None and value.strip() != task_id:
        raise MCPError(code=HEADER_MISMATCH, message="Mcp-Name header does not match params.taskId")
