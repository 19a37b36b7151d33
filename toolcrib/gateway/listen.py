"""``subscriptions/listen`` for 2026-07-28 clients (SEP-2575): the change events a 2025-11-25
session gets on its GET stream, on a stream the client opened and filtered itself.

Spec: 2026-07-28 basic/patterns/subscriptions (SEP-2575) and the tasks extension's "Task Status
Notifications" (SEP-2663). One listen request is one stream, answered as SSE on its POST:

1. ``notifications/subscriptions/acknowledged`` first, naming the subset of the filter toolcrib
   honours; every frame carries ``_meta["io.modelcontextprotocol/subscriptionId"]`` = the
   request's JSON-RPC id; a kind the client did not ask for is never sent.
2. ``toolsListChanged`` / ``promptsListChanged`` / ``resourcesListChanged``: the pool's change
   reports (:mod:`toolcrib.gateway.changes`), to every stream that asked. In dispatcher mode a
   client's tool list changes only through ``always_expose``; without it ``toolsListChanged`` is
   not honoured and ``server/discover`` says ``tools.listChanged: false`` (what is advertised is
   what is served).
3. ``resourceSubscriptions``: each URI passes the pipeline as ``resources/subscribe`` does for a
   session (policy, audit; the upstream subscribe of :meth:`toolcrib.router.upstreams.Upstream.subscribe`).
   A URI the principal may not read is left out of the acknowledgement exactly like an unknown
   one (and audited as refused); an update reaches only streams that subscribed to that URI and
   whose principal may read it at that moment. The upstream subscription ends with the last
   stream or session that needs it.
4. ``taskIds`` (tasks extension; the request must declare it, else ``-32021``): toolcrib's sealed
   task ids of this principal (another principal's or a forged id is left out, like an unknown
   one). Each honoured task's status is sent as ``notifications/tasks`` (a whole ``DetailedTask``,
   redacted, under the sealed id) when it changes, until it ends: :meth:`toolcrib.gateway.tasks.TaskMethods.watch`.

A stream ends when the client goes away (the upstream subscriptions are released) or on shutdown:
:meth:`Listeners.close` ends every stream gracefully (the ``SubscriptionsListenResult`` is the last
frame), so a draining gateway is not held up by open streams. A client that stops reading loses its
stream once ``BUFFER`` frames are waiting (it re-listens and refetches; there is no replay).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_to_notification,
)
from pydantic import BaseModel

from toolcrib.errors import ToolcribError
from toolcrib.gateway import tasks
from toolcrib.gateway.trust.identity import Principal

if TYPE_CHECKING:
    from toolcrib.gateway.server import Ctx, Gateway, RequestInfo

log = logging.getLogger("toolcrib.listen")

METHOD = "subscriptions/listen"
TASK_IDS = "taskIds"
MAX_PER_STREAM = 100
"""The most ``resourceSubscriptions`` URIs and the most ``taskIds`` one listen stream may name (-32602
beyond): each is a pipeline run, an audit row and an upstream subscription or poller."""
TASK_STATUS = "notifications/tasks"
BUFFER = 256
"""Frames a stream holds for a client that is slow to read; at the cap the stream ends."""
RELEASE_TIMEOUT = 5.0
"""Seconds an upstream unsubscribe may take when a stream ends."""


class Frame(BaseModel):
    """A notification in wire form (``method``, ``params``): what ``send_notification`` dumps."""

    method: str
    params: dict[str, Any] | None = None


@dataclass(eq=False)
class Stream:
    """One open listen stream: who listens, what it was granted, and its outbox."""

    principal: Principal
    meta: dict[str, Any]
    outbox: MemoryObjectSendStream[Frame]
    tools: bool = False
    prompts: bool = False
    resources: bool = False
    uris: set[str] = field(default_factory=set)
    tasks: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Sealed task id -> ``(server, upstream task id, tool target)``."""

    def wants(self, event: ServerEvent) -> bool:
        if isinstance(event, ToolsListChanged):
            return self.tools
        if isinstance(event, PromptsListChanged):
            return self.prompts
        if isinstance(event, ResourcesListChanged):
            return self.resources
        return event.uri in self.uris

    def put(self, frame: Frame) -> None:
        """Queue ``frame``; a stream whose client stopped reading is ended (see module docstring)."""
        try:
            self.outbox.send_nowait(frame)
        except anyio.WouldBlock:
            log.info("listen stream %r of %s: %d frames unread; ending it", self.meta, self.principal.id, BUFFER)
            self.outbox.close()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


def _frame(event: ServerEvent, meta: dict[str, Any]) -> Frame:
    data = event_to_notification(event, meta).model_dump(by_alias=True, mode="json", exclude_none=True)
    return Frame(method=data["method"], params=data.get("params"))


class Listeners:
    """Every open ``subscriptions/listen`` stream of one :class:`~toolcrib.gateway.server.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.streams: set[Stream] = set()
        self.closed = False

    @property
    def tools_announced(self) -> bool:
        """Whether a client's tool list can change (passthrough, or dispatcher with ``always_expose``)."""
        gw = self.gateway
        return gw.mode == "passthrough" or bool(gw.config.gateway.always_expose)

    # ---- events ------------------------------------------------------------------------------

    def publish(self, event: ServerEvent) -> None:
        """Hand ``event`` (resource URIs as the client sees them) to every stream it concerns."""
        for stream in list(self.streams):
            if not stream.wants(event):
                continue
            if isinstance(event, ResourceUpdated) and not self.gateway.may_use(stream.principal, event.uri, "resource"):
                continue
            stream.put(_frame(event, stream.meta))

    def subscribed(self, uri: str) -> bool:
        """True while an open stream is subscribed to ``uri``."""
        return any(uri in s.uris for s in self.streams)

    def close(self) -> None:
        """End every stream gracefully (each sends its result last) and refuse new ones: shutdown."""
        self.closed = True
        for stream in list(self.streams):
            stream.outbox.close()

    # ---- the request -------------------------------------------------------------------------

    async def handle(self, ctx: Ctx, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        """Serve one listen stream until the client leaves or :meth:`close` (module docstring)."""
        gw = self.gateway
        if ctx.request_id is None:
            raise MCPError(code=types.INVALID_REQUEST, message="subscriptions/listen needs a request id")
        info = gw._peer(ctx)
        wanted = params.notifications
        task_ids = _task_ids(wanted)
        uris = list(dict.fromkeys(wanted.resource_subscriptions or ()))
        for name, count in (("resourceSubscriptions", len(uris)), (TASK_IDS, len(task_ids))):
            if count > MAX_PER_STREAM:
                text = f"notifications.{name} names {count} items; at most {MAX_PER_STREAM} per stream, open another"
                raise MCPError(code=types.INVALID_PARAMS, message=text)
        cap = gw.config.gateway.max_sessions_per_principal
        if sum(1 for s in self.streams if s.principal.id == info.principal.id) >= cap:
            text = (
                f"Too many listen streams for {info.principal.id} (max_sessions_per_principal = {cap}); "
                "close one and retry"
            )
            raise MCPError(code=-32000, message=text)
        if task_ids and not tasks.declared(_caps(ctx)):
            raise tasks.missing_capability()
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, recv = anyio.create_memory_object_stream[Frame](BUFFER)
        stream = Stream(
            info.principal,
            meta,
            send,
            tools=bool(wanted.tools_list_changed) and self.tools_announced,
            prompts=bool(wanted.prompts_list_changed),
            resources=bool(wanted.resources_list_changed),
        )
        try:
            async with anyio.create_task_group() as tg:
                if not self.closed:
                    self.streams.add(stream)  # before the ack: an event meanwhile is queued, not lost
                    for uri in uris:
                        if await self._subscribe(ctx, info, uri):
                            stream.uris.add(uri)
                    for token in task_ids:
                        self._watch(tg, stream, token)
                await ctx.session.send_notification(_ack(stream), related_request_id=ctx.request_id)
                if self.closed:
                    send.close()
                await _drain(ctx, recv)
                tg.cancel_scope.cancel()
        finally:
            self.streams.discard(stream)
            send.close()
            recv.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT):
                await self._release(stream.uris)
        return types.SubscriptionsListenResult(_meta=meta)

    async def _subscribe(self, ctx: Ctx, info: RequestInfo, uri: str) -> bool:
        """``resources/subscribe`` of one URI through the pipeline; False when it is not granted."""
        gw = self.gateway
        try:
            call = gw._resource(ctx, info, "resources/subscribe", uri)  # unknown and hidden alike, audited
            result = await gw._run(ctx, call)
        except (MCPError, ToolcribError) as exc:  # refused, unknown, or its upstream is down: not granted
            log.debug("listen: %s not subscribed for %s: %s", uri, info.principal.id, exc)
            return False
        return not isinstance(result, types.InputRequiredResult | types.CallToolResult)

    async def _release(self, uris: set[str]) -> None:
        """Unsubscribe upstream from each of ``uris`` that no stream or session needs any more."""
        gw = self.gateway
        for uri in uris:
            if self.subscribed(uri) or any(uri in p.subscriptions for p in gw.peers):
                continue
            split = gw.pool.catalog.split_uri(uri, gw.pool.upstreams)
            if split is None:
                continue
            try:
                await gw.pool.upstream(split[0]).subscribe(split[1], False)
            except Exception as exc:  # best effort: the upstream forgets it when the connection ends anyway
                log.debug("listen: could not unsubscribe %s: %s", uri, exc)

    def _watch(self, tg: anyio.abc.TaskGroup, stream: Stream, token: str) -> None:
        """Grant ``token`` when it is this principal's task on a tool it may use, and start watching it."""
        gw = self.gateway
        opened = gw.tasks.open(token, stream.principal)
        if opened is None or not gw.may_use(stream.principal, opened[2]):
            return
        stream.tasks[token] = opened
        server, upstream_id, target = opened

        async def emit(task: dict[str, Any]) -> bool:
            if not gw.may_use(stream.principal, target):
                return False
            params = gw.redactor.scrub_json({**task, "taskId": token, "_meta": stream.meta})
            stream.put(Frame(method=TASK_STATUS, params=params))
            return True

        tg.start_soon(gw.tasks.watch, server, upstream_id, emit)


def _ack(stream: Stream) -> Any:
    honored: dict[str, Any] = {
        "toolsListChanged": stream.tools or None,
        "promptsListChanged": stream.prompts or None,
        "resourcesListChanged": stream.resources or None,
        "resourceSubscriptions": sorted(stream.uris) or None,
        TASK_IDS: list(stream.tasks) or None,
    }
    notifications = types.SubscriptionFilter.model_validate({k: v for k, v in honored.items() if v is not None})
    params = types.SubscriptionsAcknowledgedNotificationParams(notifications=notifications, _meta=stream.meta)
    return types.SubscriptionsAcknowledgedNotification(params=params)


async def _drain(ctx: Ctx, recv: MemoryObjectReceiveStream[Frame]) -> None:
    async for frame in recv:
        # send_notification dumps any model with method/params; notifications/tasks is not a core type
        await ctx.session.send_notification(cast(Any, frame), related_request_id=ctx.request_id)


def _task_ids(wanted: types.SubscriptionFilter) -> list[str]:
    raw = (wanted.model_extra or {}).get(TASK_IDS)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise MCPError(code=types.INVALID_PARAMS, message="notifications.taskIds must be a list of task id strings")
    return list(dict.fromkeys(raw))


def _caps(ctx: Ctx) -> dict[str, Any] | None:
    caps = ctx.session.client_capabilities
    return caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps else None


async def discover(gateway: Gateway, ctx: Ctx, params: types.RequestParams | None) -> types.DiscoverResult:
    """``server/discover`` as the SDK derives it, with ``tools.listChanged`` only when tool list changes
    are served (:attr:`Listeners.tools_announced`)."""
    result = await gateway.server._handle_discover(ctx, params)
    tools = result.capabilities.tools
    if tools is not None and not gateway.listeners.tools_announced:
        caps = result.capabilities.model_copy(update={"tools": tools.model_copy(update={"list_changed": False})})
        result = result.model_copy(update={"capabilities": caps})
    return result


def install(gateway: Gateway) -> Listeners:
    """Serve ``subscriptions/listen`` (and the matching ``server/discover``) on ``gateway``'s SDK server."""
    listeners = Listeners(gateway)
    gateway.server.add_request_handler(METHOD, types.SubscriptionsListenRequestParams, listeners.handle)

    async def on_discover(ctx: Ctx, params: types.RequestParams) -> types.DiscoverResult:
        return await discover(gateway, ctx, params)

    gateway.server.add_request_handler("server/discover", types.RequestParams, on_discover)
    return listeners
