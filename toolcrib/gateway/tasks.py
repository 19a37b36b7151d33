"""The tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663, MCP 2026-07-28), relayed.

An upstream may answer a ``tools/call`` with a task (a flat ``CreateTaskResult``,
``resultType: "task"``; toolcrib declares the extension to every upstream:
:mod:`toolcrib.router.task_claim`). What the client gets depends on what *it* declared:

- A 2026-07-28 request declaring the extension (``_meta.clientCapabilities.extensions``) gets the
  task under a task id toolcrib minted: one sealed token
  (``sealer.seal("task", principal.id, {"server", "task", "target"}, ttl)``, purpose ``task``, AES-GCM:
  :mod:`toolcrib.gateway.trust.sealed`). The token routes ``tasks/get``, ``tasks/update`` and
  ``tasks/cancel`` back to the right upstream with the upstream's own id and no state kept here, so
  it works across reconnects and replicas sharing the secret; another principal's, a forged or an
  expired token is ``-32602`` (SEP-2663: "unknown taskId").
- Any other client gets the task's outcome as the ``tools/call`` result: toolcrib polls
  ``tasks/get`` (the upstream's ``pollIntervalMs``, within the server's ``timeout``) and answers the
  inlined ``result``; ``failed`` becomes a tool error; a task that needs input it cannot relay is
  cancelled upstream and answered ``-32021`` naming the extension (SEP-2575 "Missing Required
  Capabilities", SEP-2663 "Required Capabilities").

Each ``tasks/*`` request is an :class:`~toolcrib.gateway.pipeline.UpstreamCall` of kind ``tool`` on
the task's tool target, through the one pipeline (audit as ``tools/call:tasks/get`` etc., policy on
the target, redaction of the answer; argument validation and approvals belong to the creating
call). ``tasks/*`` from a request that did not declare the extension is ``-32021``; at 2025-11-25 it
is ``-32601``. The extension is advertised in ``capabilities.extensions`` while at least one
connected upstream advertises it.

Task status notifications (``notifications/tasks``): a 2026-07-28 client names its sealed task ids
in ``subscriptions/listen`` (``notifications.taskIds``, :mod:`toolcrib.gateway.listen`); toolcrib
watches each upstream task with ``tasks/get`` (:meth:`TaskMethods.watch`, at the task's
``pollIntervalMs`` within ``WATCH_MIN``..``POLL_MAX`` s) and sends the whole ``DetailedTask``, under
the sealed id, each time its status, message or pending input changes, until it ends. toolcrib's
upstream listen streams do not ask upstreams for ``taskIds`` (router/upstreams.py), so an upstream's
own pushed ``notifications/tasks`` are not what is relayed: its ``tasks/get`` answers are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.client.extension import UnexpectedClaimedResult
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict, Field

from toolcrib.errors import UpstreamTimeout
from toolcrib.gateway.mrtr import MrtrRefusal
from toolcrib.gateway.pipeline import MODERN, UpstreamCall, tool_error
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.sealed import InvalidToken, Sealer
from toolcrib.router.pool import Pool
from toolcrib.router.task_claim import TASKS, CreateTaskResult

if TYPE_CHECKING:
    from toolcrib.gateway.forward import Forwarder
    from toolcrib.gateway.server import Gateway

log = logging.getLogger("toolcrib.tasks")

METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
MISSING_CAPABILITY = -32021
PURPOSE = "task"
DEFAULT_TTL = 24 * 3600.0
"""Seconds a task id stays valid when the upstream's ``ttlMs`` is null (unlimited)."""
MAX_TTL = 7 * 24 * 3600.0
POLL_MIN, POLL_MAX, POLL_DEFAULT = 0.05, 5.0, 0.2
"""Seconds between ``tasks/get`` polls for a client that did not declare the extension."""
ENVELOPE = ("taskId", "status", "result", "error", "inputRequests")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
WATCH_MIN = 0.25
"""Seconds between ``tasks/get`` polls of a watched task, at least (see :meth:`TaskMethods.watch`)."""
Emit = Callable[[dict[str, Any]], Awaitable[bool]]

Send = Callable[[UpstreamCall], Awaitable[Any]]


class TaskIdParams(types.RequestParams):
    """``tasks/get`` / ``tasks/cancel`` params (``tasks/update`` adds ``inputResponses``)."""

    model_config = ConfigDict(extra="allow")
    task_id: str = Field(alias="taskId")
    input_responses: dict[str, Any] | None = Field(default=None, alias="inputResponses")


class WireResult(types.Result):
    """Any result, fields kept as sent (``resultType`` included)."""

    model_config = ConfigDict(extra="allow")


class _TaskRequest(types.Request[TaskIdParams, str]):
    name_param = "taskId"  # SEP-2663 "Routing Headers": Mcp-Name mirrors params.taskId


async def upstream_request(
    pool: Pool, server: str, method: str, task_id: str, responses: dict[str, Any] | None = None
) -> WireResult:
    """Send ``tasks/get`` / ``tasks/update`` / ``tasks/cancel`` for the upstream's ``task_id`` to ``server``."""
    params = TaskIdParams(taskId=task_id, inputResponses=responses if method == "tasks/update" else None)
    request = _TaskRequest(method=method, params=params)
    result: WireResult = await pool.upstream(server).request(
        lambda c: c.session.send_request(request, WireResult), what=method
    )
    return result


def declared(caps: Mapping[str, Any] | None) -> bool:
    """True when wire-form client capabilities declare the tasks extension."""
    extensions = (caps or {}).get("extensions")
    return isinstance(extensions, Mapping) and TASKS in extensions


def missing_capability() -> MrtrRefusal:
    data: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS: {}}}}
    return MrtrRefusal(
        code=MISSING_CAPABILITY, message=f"declare the {TASKS} extension to use tasks (SEP-2663)", data=data
    )


class TaskEdge:
    """The Forwarder's branch for tasks: ``tasks/*`` to the upstream, task results from ``tools/call``."""

    def __init__(self, pool: Pool, sealer: Sealer) -> None:
        self.pool = pool
        self.sealer = sealer

    async def forward(self, call: UpstreamCall, send: Send) -> Any:
        if call.method in METHODS:
            try:
                return await self._upstream(call.server, call.method, call.name, call.input_responses)
            except MCPError as exc:  # the upstream's own answer (e.g. -32602 unknown task) stays a JSON-RPC error
                call.state.outcome = "protocol_error"
                raise MrtrRefusal(code=exc.error.code, message=exc.error.message, data=exc.error.data) from None
        try:
            return await send(call)
        except UnexpectedClaimedResult as exc:
            if not isinstance(exc.result, CreateTaskResult):
                raise
            return await self._created(call, exc.result)

    async def _upstream(
        self, server: str, method: str, task_id: str, responses: dict[str, Any] | None = None
    ) -> WireResult:
        return await upstream_request(self.pool, server, method, task_id, responses)

    async def _created(self, call: UpstreamCall, task: CreateTaskResult) -> Any:
        if call.era == MODERN and declared(call.client_capabilities):
            ttl = DEFAULT_TTL if task.ttl_ms is None else task.ttl_ms / 1000
            payload = {"server": call.server, "task": task.task_id, "target": call.target}
            token = self.sealer.seal(PURPOSE, call.principal.id, payload, min(MAX_TTL, ttl) + 60)
            return task.model_copy(update={"task_id": token, "meta": None})
        return await self._await(call, task)

    async def _await(self, call: UpstreamCall, task: CreateTaskResult) -> Any:
        """Poll the upstream task to its end for a client that cannot hold a task."""
        deadline = self.pool.upstream(call.server).cfg.timeout
        pause = POLL_DEFAULT if task.poll_interval_ms is None else task.poll_interval_ms / 1000
        with anyio.move_on_after(deadline):
            while True:
                state = (await self._upstream(call.server, "tasks/get", task.task_id)).model_dump(
                    by_alias=True, mode="json", exclude_none=True
                )
                status = state.get("status")
                if status == "completed":
                    return types.CallToolResult.model_validate(state.get("result") or {"content": []})
                if status == "failed":
                    error = state.get("error") or {}
                    raise MCPError(code=int(error.get("code", types.INTERNAL_ERROR)), message=str(error.get("message")))
                if status == "cancelled":
                    return tool_error(f"{call.target}: the upstream cancelled this task")
                if status == "input_required":
                    await self._cancel_quietly(call.server, task.task_id)
                    raise missing_capability()
                await anyio.sleep(min(POLL_MAX, max(POLL_MIN, float(state.get("pollIntervalMs", pause * 1000)) / 1000)))
        await self._cancel_quietly(call.server, task.task_id)
        raise UpstreamTimeout(
            f"{call.server}: task for {call.target} did not finish within the {deadline:g} s deadline and was "
            f"cancelled; raise [servers.{call.server}] timeout, or use a client that declares {TASKS}"
        )

    async def _cancel_quietly(self, server: str, task_id: str) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._upstream(server, "tasks/cancel", task_id)
            except Exception as exc:  # best effort: the task expires upstream anyway
                log.debug("could not cancel task %s on %s: %s", task_id, server, exc)


class TaskMethods:
    """``tasks/get``, ``tasks/update``, ``tasks/cancel`` on the Gateway's SDK server."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.supported: dict[str, bool] = {}

    async def handle(self, ctx: Any, params: TaskIdParams) -> WireResult:
        method: str = ctx.method
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(code=types.METHOD_NOT_FOUND, message=f"Method not found: {method}")
        caps = ctx.session.client_capabilities
        if not declared(caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps else None):
            raise missing_capability()
        gw = self.gateway
        info = gw._peer(ctx)
        opened = self.open(params.task_id, info.principal)
        if opened is None:
            log.info("refused a task id from %s", info.principal.id)
            raise MCPError(code=types.INVALID_PARAMS, message="Unknown task: not a task id of this principal")
        server, upstream_id, target = opened
        call = gw._call(ctx, info, method, "tool", target, server, upstream_id, via=method)
        call.input_responses = dict(params.input_responses or {}) if method == "tasks/update" else None
        result = await gw._run(ctx, call)
        if isinstance(result, types.CallToolResult):  # a refusal in tool shape (policy, quarantine, upstream down)
            text = " ".join(getattr(block, "text", "") for block in result.content) or f"{method} refused"
            code = types.INVALID_PARAMS if call.state.outcome in ("denied", "pending") else types.INTERNAL_ERROR
            raise MCPError(code=code, message=text)
        data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        data.pop("_meta", None)  # the upstream's serverInfo stamp is not toolcrib's
        if method != "tasks/get":
            return WireResult.model_validate({k: v for k, v in data.items() if k not in ENVELOPE})
        data["taskId"] = params.task_id
        return WireResult.model_validate(data)

    def open(self, token: str, principal: Principal) -> tuple[str, str, str] | None:
        """``(server, upstream task id, tool target)`` of a task id toolcrib sealed for ``principal``;
        None for a forged, expired or another principal's id."""
        try:
            payload = self.gateway.sealer.open(token, PURPOSE, principal.id)
            opened = (payload["server"], payload["task"], payload["target"])
        except (InvalidToken, KeyError, TypeError):
            return None
        return opened if all(isinstance(v, str) for v in opened) else None

    async def watch(self, server: str, task_id: str, emit: Emit) -> None:
        """Poll the upstream task ``task_id`` on ``server`` and ``emit`` its ``DetailedTask`` (wire dict,
        without ``resultType`` and ``_meta``) whenever its status, status message or pending input
        requests change; returns when it ends, the upstream no longer knows it, or ``emit`` says False."""
        last: tuple[Any, ...] | None = None
        pause = POLL_DEFAULT
        while True:
            try:
                state = (await upstream_request(self.gateway.pool, server, "tasks/get", task_id)).model_dump(
                    by_alias=True, mode="json", exclude_none=True
                )
            except Exception as exc:  # unknown or expired upstream, or the upstream is down: stop watching
                log.debug("stopped watching task %s on %s: %s", task_id, server, exc)
                return
            state.pop("_meta", None)
            state.pop("resultType", None)
            status = state.get("status")
            seen = (status, state.get("statusMessage"), sorted(state.get("inputRequests") or {}))
            if seen != last:
                last = seen
                if not await emit(state):
                    return
            if status in TERMINAL:
                return
            interval = state.get("pollIntervalMs")
            if isinstance(interval, int | float) and not isinstance(interval, bool):
                pause = interval / 1000
            await anyio.sleep(min(POLL_MAX, max(WATCH_MIN, pause)))

    async def upstream_changed(self, server: str, what: str) -> None:
        """Keep ``capabilities.extensions`` in step with the connected upstreams."""
        if what == "connected":
            up = self.gateway.pool.upstreams.get(server)
            if up is None:
                return

            async def caps(c: Any) -> bool:
                extensions = c.server_capabilities.extensions
                return bool(extensions and TASKS in extensions)

            try:
                self.supported[server] = await up.request(caps, what="capabilities")
            except Exception as exc:
                log.debug("could not read %s capabilities: %s", server, exc)
        elif what in ("disconnected", "removed", "stopped"):
            self.supported.pop(server, None)
        extensions = self.gateway.server.extensions
        if any(self.supported.values()):
            extensions[TASKS] = {}
        else:
            extensions.pop(TASKS, None)


def install(gateway: Gateway, forwarder: Forwarder) -> TaskMethods:
    """Wire the tasks extension into ``gateway``: the Forwarder's branch, the three request handlers
    and the capability advertisement."""
    forwarder.tasks = TaskEdge(gateway.pool, gateway.sealer)
    methods = TaskMethods(gateway)
    for method in sorted(METHODS):
        gateway.server.add_request_handler(method, TaskIdParams, methods.handle)
    gateway.pool.subscribe(methods.upstream_changed)
    return methods
