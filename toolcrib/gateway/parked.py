"""Era translation A: a handshake-era upstream's mid-call requests as 2026-07-28 ``input_required`` rounds.

A 2025-11-25 (or legacy HTTP+SSE) upstream asks for elicitation, sampling or roots *during* a
call, as a server-to-client request it holds open; a 2026-07-28 client takes no server requests
and instead answers ``input_required`` rounds (SEP-2322). So for a 2026-07-28 client's call to
such an upstream toolcrib runs the upstream call in the background (:class:`Parking`) and:

1. answers the client with whatever comes first: the result, an error, or the upstream's
   request(s), which become ``inputRequests`` (keys ``r1``, ``r2``, ...) of an ``input_required``
   result whose ``requestState`` is sealed ``{"k": "parked", "id", "target", "args", "round"}``
   (``args``: the SHA-256 of the arguments, so a retry with other arguments is refused, -32602);
2. on the retry, hands each ``inputResponses[key]`` to the request waiting for it (a key the
   client left out is asked again, in a new round) and waits for the next event as in 1.

A parked call is bound to the principal (the sealed token and the call itself), to the target,
and to its round (an older round's token is refused: -32602); one retry at a time resumes it. It
ends with the upstream call's deadline (``[servers.X] timeout``), and after ``ttl`` seconds
(``[gateway] input_wait``, default :data:`PARK_TTL`, capped by that deadline) without the client's
answer or retry it is cancelled (the upstream gets ``notifications/cancelled`` before the error
answering its pending request) and forgotten, so its ``requestState`` is then refused (-32602). A
finished call whose result nobody collects is dropped as well, at once when its upstream stops.
The parked call is in-process state: with several toolcrib replicas, a retry must reach the
replica that holds it (sticky routing); anywhere else it is refused as expired, and the
client starts over without ``requestState``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from toolcrib.gateway.mrtr import Mrtr, MrtrRefusal, OpFactory, invalid_state
from toolcrib.gateway.pipeline import UpstreamCall
from toolcrib.gateway.trust.approvals import args_hash
from toolcrib.router.upstreams import current_caller

log = logging.getLogger("toolcrib.mrtr")

PARK_TTL = 300.0
MAX_PARKED = 64
"""The most calls one principal may have parked at once (-32000 beyond)."""
"""Seconds a parked call waits for the client's answer (or to collect its result) before it is cancelled."""

CANCEL_GRACE = 5.0
"""Seconds an abandoned call's pending upstream request waits for the call's cancellation to be sent."""

_ANSWERS: dict[str, type[BaseModel]] = {
    "elicitation/create": types.ElicitResult,
    "sampling/createMessage": types.CreateMessageResult,
    "roots/list": types.ListRootsResult,
}


@dataclass(eq=False)
class _Ask:
    """One request of the upstream, waiting for the client's answer."""

    key: str
    request: types.InputRequest
    answer: dict[str, Any] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Parked:
    """One upstream call kept running between a 2026-07-28 client's retries.

    It is the call's client-side party (:class:`toolcrib.router.backchannel.Caller`): the
    upstream's requests land in :meth:`elicit`, :meth:`create_message` and :meth:`list_roots`,
    which wait for the client's next retry; log lines and progress go to the retry in progress.
    """

    def __init__(self, principal_id: str, server: str, target: str, ttl: float) -> None:
        self.id = secrets.token_urlsafe(16)
        self.principal_id = principal_id
        self.server = server
        self.target = target
        self.ttl = ttl
        self.round = 0
        self.pending: dict[str, _Ask] = {}
        self.relay: Any = None
        self.busy = False
        self.collected = anyio.Event()
        self.ended = anyio.Event()
        self.scope = anyio.CancelScope()
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = anyio.Event()
        self._keys = itertools.count(1)

    # ---- events from the upstream call ---------------------------------------------------------

    def post(self, kind: str, item: Any) -> None:
        self._queue.append((kind, item))
        self._wake.set()

    async def take(self) -> tuple[str, Any]:
        """The next event: ``("ask", _Ask)``, ``("done", result)`` or ``("error", exception)``."""
        while not self._queue:
            self._wake = anyio.Event()
            await self._wake.wait()
        return self._queue.popleft()

    def more_asks(self) -> list[_Ask]:
        """The requests already queued right behind the one just taken (asked at once)."""
        asks = []
        while self._queue and self._queue[0][0] == "ask":
            asks.append(self._queue.popleft()[1])
        return asks

    # ---- the Caller protocol ---------------------------------------------------------------------

    async def _ask(self, request: types.InputRequest) -> dict[str, Any]:
        ask = _Ask(f"r{next(self._keys)}", request)
        self.post("ask", ask)
        with anyio.move_on_after(self.ttl):
            await ask.done.wait()
        if ask.answer is None:
            # Abandoned: cancel the upstream call (the SDK sends it notifications/cancelled) and answer
            # this request only once that is done, so the upstream learns of the cancellation first.
            self.scope.cancel()
            with anyio.move_on_after(CANCEL_GRACE):
                await self.ended.wait()
            raise MCPError(
                code=types.INTERNAL_ERROR, message="the client did not answer in time; the call is cancelled"
            )
        return ask.answer

    async def create_message(self, params: types.CreateMessageRequestParams) -> dict[str, Any]:
        return await self._ask(types.CreateMessageRequest(params=params))

    async def elicit(self, params: types.ElicitRequestParams) -> dict[str, Any]:
        return await self._ask(types.ElicitRequest(params=params))

    async def list_roots(self) -> dict[str, Any]:
        return await self._ask(types.ListRootsRequest())

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.relay is not None:
            await self.relay.log_message(params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        relay = self.relay
        if relay is not None and relay.wants_progress:
            await relay.progress(progress, total, message)


class Parking:
    """The parked calls of this process; ``host()`` is the task group they run in (None: not serving)."""

    def __init__(self, mrtr: Mrtr, host: Callable[[], anyio.abc.TaskGroup | None], *, ttl: float = PARK_TTL) -> None:
        self.mrtr = mrtr
        self.host = host
        self.ttl = ttl
        self.calls: dict[str, Parked] = {}
        self.max_parked = MAX_PARKED

    async def start(self, call: UpstreamCall, up: Any, op: OpFactory) -> Any:
        """Run ``call`` on the handshake-era upstream ``up`` in the background; the first event's answer."""
        what = f"{call.method} {call.name}"
        tg = self.host()
        if tg is None:
            return await up.request(op(call, None, None), what=what)
        if sum(1 for p in self.calls.values() if p.principal_id == call.principal.id) >= self.max_parked:
            raise MrtrRefusal(
                code=-32000,
                message=f"{call.principal.id} has {self.max_parked} calls waiting for input already; answer or "
                "abandon some (they end after [gateway] input_wait) and retry",
            )
        parked = Parked(call.principal.id, call.server, call.target, min(self.ttl, up.cfg.timeout))
        self.calls[parked.id] = parked
        tg.start_soon(self._run, parked, up, op(call, None, parked.progress), what, name=f"parked:{what}")
        return await self._leg(call, parked)

    async def resume(self, call: UpstreamCall, resume: Mapping[str, Any]) -> Any:
        """A retry carrying ``{"k": "parked", ...}``: deliver the answers, then the next event's answer."""
        parked = self.calls.get(str(resume.get("id")))
        if (
            parked is None
            or parked.principal_id != call.principal.id
            or (parked.server, parked.target) != (call.server, call.target)
            or resume.get("args") != args_hash(call.arguments)  # the parked call runs its own arguments
            or resume.get("round") != parked.round
            or parked.busy
        ):
            raise invalid_state()
        answers = call.input_responses or {}
        given = {key: _answer(key, ask, answers[key]) for key, ask in parked.pending.items() if key in answers}
        for key, answer in given.items():
            ask = parked.pending.pop(key)
            ask.answer = answer
            ask.done.set()
        if parked.pending:  # the client left some out: ask for them again
            return self._round(call, parked)
        return await self._leg(call, parked)

    async def _run(self, parked: Parked, up: Any, op: Any, what: str) -> None:
        token = current_caller.set(parked)
        final = False
        try:
            with parked.scope:
                try:
                    result = await up.request(op, what=what)
                except Exception as exc:
                    parked.post("error", exc)
                else:
                    parked.post("done", result)
                final = True
                # kept for the client's next retry, unless the upstream is stopped (shutdown, removed)
                with anyio.move_on_after(parked.ttl):
                    await _either(parked.collected, up.finished)
        finally:
            current_caller.reset(token)
            self.calls.pop(parked.id, None)
            parked.ended.set()
            if not final:
                parked.post("error", MrtrRefusal(code=types.INVALID_PARAMS, message="the call was cancelled; retry it"))

    async def _leg(self, call: UpstreamCall, parked: Parked) -> Any:
        parked.busy, parked.relay = True, call.relay
        try:
            kind, item = await parked.take()
            if kind != "ask":
                parked.collected.set()
                if kind == "error":
                    raise item
                return item
            for ask in [item, *parked.more_asks()]:
                parked.pending[ask.key] = ask
            return self._round(call, parked)
        finally:
            parked.busy, parked.relay = False, None

    def _round(self, call: UpstreamCall, parked: Parked) -> types.InputRequiredResult:
        parked.round += 1
        payload = {
            "k": "parked",
            "id": parked.id,
            "target": call.target,
            "args": args_hash(call.arguments),
            "round": parked.round,
        }
        requests = {key: ask.request for key, ask in parked.pending.items()}
        try:
            return self.mrtr.input_required(call, requests, payload, parked.ttl)
        except MrtrRefusal:
            parked.scope.cancel()  # the client cannot answer: the upstream call is not left waiting
            raise


async def _either(first: anyio.Event, second: anyio.Event) -> None:
    """Return as soon as one of the two events is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait, first)
        tg.start_soon(wait, second)


def _answer(key: str, ask: _Ask, wire: Any) -> dict[str, Any]:
    """The client's answer to ``ask``, checked against the request's result type; -32602 if it is not one."""
    model = _ANSWERS[ask.request.method]
    try:
        model.model_validate(wire)
    except ValidationError:
        raise MrtrRefusal(
            code=types.INVALID_PARAMS,
            message=f"inputResponses.{key} does not answer its {ask.request.method} request; send a {model.__name__}",
        ) from None
    return dict(wire)
