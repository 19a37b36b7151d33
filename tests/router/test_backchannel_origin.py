"""Which call an upstream's server request goes to (:meth:`Backchannel._origin`), as a decision table.

Driven through the Backchannel's own entry points with real :class:`Call` objects: calls are
registered with :meth:`Backchannel.call`, each sends a request (:meth:`Backchannel.sent`), some are
then sent a server request *related* to theirs (so they wait for its answer) and some answer it; then
an *unrelated* server request arrives (:meth:`Backchannel.received`, as from stdio or a 2025-11-25
GET stream) and :meth:`Backchannel.caller_for` says whom it would ask. The callers are plain data
(a principal id), not the unit under test.

The rule (module docstring of :mod:`toolcrib.router.backchannel`): an unrelated request goes to the
only call in flight; or, with several, to the one call that is not itself waiting for the answer to
a server request, when that call and every waiting one act for the same principal; otherwise nobody.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from toolcrib.router.backchannel import Backchannel, Call, Caller, current_caller

State = Literal["free", "waiting", "answered"]
PRINCIPALS = ("key:alice", "key:bob", "oauth:carol")


@dataclass
class Who:
    """A client-side party that is nothing but its principal id (never asked anything here)."""

    principal_id: str

    async def create_message(self, params: types.CreateMessageRequestParams) -> dict[str, Any]:
        return {}

    async def elicit(self, params: types.ElicitRequestParams) -> dict[str, Any]:
        return {}

    async def list_roots(self) -> dict[str, Any]:
        return {}

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        return None


@dataclass(frozen=True)
class Spec:
    principal: str | None
    """None: the gateway's own call (a listing), which has no caller."""
    state: State
    """free: no server request sent to it; waiting: one sent and unanswered; answered: one sent and answered."""


specs = st.lists(
    st.builds(Spec, st.sampled_from((*PRINCIPALS, None)), st.sampled_from(("free", "waiting", "answered"))),
    max_size=6,
)


def _elicit(rid: int, related: int | None) -> SessionMessage:
    request = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method="elicitation/create", params={"message": "?"})
    metadata = ServerMessageMetadata(related_request_id=related) if related is not None else None
    return SessionMessage(request, metadata=metadata)


def routed(table: list[Spec], *, related_to: int | None = None) -> tuple[list[Caller | None], Caller | None]:
    """Set up ``table`` on a fresh Backchannel; (the callers, the caller an arriving elicitation
    goes to). ``related_to``: the index of the call the elicitation names, else it names none."""

    async def run() -> tuple[list[Caller | None], Caller | None]:
        bc = Backchannel("up")
        callers: list[Caller | None] = []
        with ExitStack() as stack:
            for i, spec in enumerate(table):
                who = Who(spec.principal) if spec.principal is not None else None
                callers.append(who)
                token = current_caller.set(who)
                try:
                    call: Call = stack.enter_context(bc.call())
                finally:
                    current_caller.reset(token)
                bc.sent(types.JSONRPCRequest(jsonrpc="2.0", id=i, method="tools/call", params={"name": "t"}))
                assert i in call.ids
            for i, spec in enumerate(table):
                if spec.state != "free" and spec.principal is not None:
                    assert bc.received(_elicit(1000 + i, related=i))  # it names call i: call i's
                    assert bc.caller_for(1000 + i) is callers[i]
                if spec.state == "answered" and spec.principal is not None:
                    bc.sent(types.JSONRPCResponse(jsonrpc="2.0", id=1000 + i, result={"action": "cancel"}))
            assert bc.received(_elicit(9999, related_to))
            return callers, bc.caller_for(9999)

    return anyio.run(run)


def expected(table: list[Spec]) -> int | None:
    """The index of the call the rule picks for an unrelated request, or None (refused)."""
    if len(table) == 1:
        return 0 if table[0].principal is not None else None
    waiting = [s for s in table if s.state == "waiting" and s.principal is not None]
    free = [i for i, s in enumerate(table) if not (s.state == "waiting" and s.principal is not None)]
    if len(free) != 1 or table[free[0]].principal is None:
        return None
    who = table[free[0]].principal
    return free[0] if all(s.principal == who for s in waiting) else None


@settings(max_examples=1000, deadline=None, database=None)
@given(specs)
def test_unrelated_request_follows_the_table(table: list[Spec]) -> None:
    callers, chosen = routed(table)
    pick = expected(table)
    assert chosen is (callers[pick] if pick is not None else None)
    if chosen is not None:
        # never a guess across principals: every client call in flight acts for the chosen one's
        # principal, and every other call is waiting for its own answer
        assert all(s.principal in (None, chosen.principal_id) for s in table)
        others = [s for s, c in zip(table, callers, strict=True) if c is not chosen]
        assert all(s.state == "waiting" and s.principal is not None for s in others)


@settings(max_examples=300, deadline=None, database=None)
@given(specs.filter(bool), st.data())
def test_related_request_goes_to_the_call_it_names(table: list[Spec], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(table) - 1))
    callers, chosen = routed(table, related_to=index)
    assert chosen is callers[index]


def _to(table: list[Spec]) -> str | None:
    """The principal an unrelated elicitation would be shown to, or None (refused)."""
    chosen = routed(table)[1]
    return chosen.principal_id if chosen is not None else None


def test_named_cases() -> None:
    alice, bob = "key:alice", "key:bob"
    # (a) alice abandoned a parked call; her next call asks: it is hers
    assert expected([Spec(alice, "waiting"), Spec(alice, "free")]) == 1
    assert _to([Spec(alice, "waiting"), Spec(alice, "free")]) == alice
    # (b) bob's parked call waits; alice's call asks: nobody (never shown to bob, never guessed)
    assert _to([Spec(bob, "waiting"), Spec(alice, "free")]) is None
    # two free calls, even of one principal: nobody can tell which one asked
    assert _to([Spec(alice, "free"), Spec(alice, "free")]) is None
    # an answered request leaves its call free again
    assert _to([Spec(alice, "answered"), Spec(alice, "free")]) is None
    # the only call in flight, waiting or not, is the only possible cause
    assert _to([Spec(alice, "waiting")]) == alice
    assert _to([]) is None
