"""Approvals no model can forge, end to end: a real toolcrib (keys auth, a rule with ``approve``),
the echo fixture upstream, and real SDK clients of both protocol eras.

- 2026-07-28: input_required with one URL-mode elicitation (the operator's approval URL) and a sealed
  requestState; retries stay input_required until an operator approves over the admin API; then
  the retry runs the call once. Forged, modified, foreign or mismatched requestStates are refused,
  and no ``inputResponses`` the client sends approves anything.
- 2025-11-25 sessions in hold mode: the held call shows the client the URL elicitation, completes
  after the operator approves, and the client hears ``notifications/elicitation/complete``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import approval_store, audit_log, key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.gateway.trust.approvals import ApprovalBackend

pytestmark = pytest.mark.anyio

TOOL = "echo__echo"
RULES = [{"id": "echo-needs-approval", "tools": [TOOL], "action": "approve"}]


@asynccontextmanager
async def approving_gateway(tmp_path: Path, **policy: Any) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    """The echo fixture behind keys auth; every ``echo__echo`` call needs an operator's approval.
    alice is an operator (group ``admins``), bob a guest."""
    policy = {"rules": RULES, "default": "allow", "approval_mode": "hold", "approval_timeout": 30, **policy}
    cfg = make_config({"echo": stdio_server("tests.servers.echo")}, tmp_path, policy, mode="passthrough", auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


async def _accept(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept")


@asynccontextmanager
async def client_as(rt: Running, token: str, mode: str = "auto", **options: Any) -> AsyncIterator[Client]:
    """An SDK client with ``token``; ``mode="auto"`` negotiates 2026-07-28, ``"legacy"`` a 2025-11-25
    session. It declares elicitation (form and url) unless ``elicitation_callback=None`` is passed."""
    options.setdefault("elicitation_callback", _accept)
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(rt.url, http_client=http), mode=mode, **options) as c,
    ):
        yield c


async def call(c: Client, text: str, state: str | None = None, **responses: str) -> Any:
    """One raw ``tools/call`` of echo (no automatic retry), with ``requestState`` and ``inputResponses``
    (``{key: action}``) when given."""
    answers: types.InputResponses = {k: types.ElicitResult(action=v) for k, v in responses.items()}  # type: ignore[arg-type]
    return await c.session.call_tool(
        TOOL, {"text": text}, request_state=state, input_responses=answers or None, allow_input_required=True
    )


def the_elicitation(result: Any) -> tuple[str, types.ElicitRequestURLParams]:
    """(input request key, URL elicitation params) of an input_required answer holding exactly one."""
    assert isinstance(result, types.InputRequiredResult), result
    assert result.input_requests is not None and len(result.input_requests) == 1
    ((key, request),) = result.input_requests.items()
    assert isinstance(request, types.ElicitRequest) and isinstance(request.params, types.ElicitRequestURLParams)
    return key, request.params


def text_of(result: Any) -> str:
    assert isinstance(result, types.CallToolResult), result
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def operator_decides(rt: Running, token: str, approval_id: str, decision: str = "approve") -> int:
    url = f"http://127.0.0.1:{rt.port}/admin/approvals/{approval_id}"
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, json={"decision": decision}, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


def audit_outcomes(rt: Running, principal: str) -> list[tuple[str, str | None]]:
    """(outcome, approver) of every echo call ``principal`` made, oldest first."""
    with audit_log(rt.config) as audit:
        rows = audit.query(principal=principal, tool=TOOL, limit=100)
    ended = [r for r in rows if r["kind"] == "outcome" or (r["kind"] == "call" and r["completed"] is not None)]
    return [(r["outcome"], r["approver"]) for r in ended]


async def test_modern_client_waits_for_the_operator_then_runs_once(tmp_path: Path) -> None:
    async with approving_gateway(tmp_path) as (rt, tokens), client_as(rt, tokens["alice"]) as alice:
        first = await call(alice, "hello")
        key, ask = the_elicitation(first)
        approval_id = ask.url.rsplit("/", 1)[1]
        assert ask.mode == "url" and ask.url == f"http://127.0.0.1:{rt.port}/admin/approvals/{approval_id}"
        assert TOOL in ask.message and approval_id in ask.message
        assert first.request_state and approval_id not in first.request_state  # sealed, not readable

        again = await call(alice, "hello", first.request_state, **{key: "accept"})  # accept approves nothing
        assert the_elicitation(again) == (key, ask) and again.request_state != first.request_state

        assert await operator_decides(rt, tokens["bob"], approval_id) == 403  # a guest cannot approve
        assert await operator_decides(rt, tokens["alice"], approval_id) == 200
        done = await call(alice, "hello", again.request_state)
        assert text_of(done) == "hello" and not done.is_error

        replay = await call(alice, "hello", again.request_state)  # single use
        assert replay.is_error and f"approval {approval_id} was already used" in text_of(replay)
    assert audit_outcomes(rt, "key:alice") == [
        ("pending", None),
        ("pending", None),
        ("ok", "key:alice"),
        ("denied", None),
    ]


async def test_forged_foreign_and_mismatched_request_states_are_refused(tmp_path: Path) -> None:
    async with (
        approving_gateway(tmp_path) as (rt, tokens),
        client_as(rt, tokens["alice"]) as alice,
        client_as(rt, tokens["bob"]) as bob,
    ):
        first = await call(alice, "hello")
        _, ask = the_elicitation(first)
        approval_id = ask.url.rsplit("/", 1)[1]
        assert await operator_decides(rt, tokens["alice"], approval_id) == 200
        token = first.request_state
        assert token is not None
        middle = len(token) // 2
        forged = [
            token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :],  # one character flipped
            token[:-2],  # truncated
            "tc1." + "A" * 80,  # made up
            "not-a-token",
        ]
        for bad in forged:
            with pytest.raises(MCPError) as err:
                await call(alice, "hello", bad)
            assert err.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as err:  # bob replays alice's genuine token
            await call(bob, "hello", token)
        assert err.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as err:  # alice's token, other arguments
            await call(alice, "goodbye", token)
        assert err.value.error.code == types.INVALID_PARAMS and "another call" in err.value.error.message

        bobs = await call(bob, "hello")  # bob's own identical call needs bob's own approval
        assert the_elicitation(bobs)[1].url != ask.url
        done = await call(alice, "hello", token)  # the approval is still there for alice, unspent
        assert text_of(done) == "hello"
    outcomes = [o for o, _ in audit_outcomes(rt, "key:alice")]
    assert outcomes.count("ok") == 1 and "pending" in outcomes


async def test_input_responses_never_approve(tmp_path: Path) -> None:
    async with approving_gateway(tmp_path) as (rt, tokens), client_as(rt, tokens["alice"]) as alice:
        first = await call(alice, "hello")
        key, ask = the_elicitation(first)
        approval_id = ask.url.rsplit("/", 1)[1]
        state = first.request_state
        for _ in range(3):  # the client insists: "accept", under our key and under made-up ones
            answer = await call(alice, "hello", state, **{key: "accept", "approve": "accept", approval_id: "accept"})
            assert the_elicitation(answer)[0] == key
            state = answer.request_state
        fresh = await call(alice, "hello", None, **{key: "accept"})  # no requestState at all: the same approval
        assert the_elicitation(fresh)[1].url == ask.url
        declined = await call(alice, "hello", state, **{key: "decline"})
        assert declined.is_error and "declined" in text_of(declined)
        store = approval_store(rt.config)
        try:
            assert store.get(approval_id).status == "pending"
        finally:
            store.close()
    assert all(outcome == "pending" for outcome, _ in audit_outcomes(rt, "key:alice"))


async def test_modern_client_without_url_elicitation_gets_the_pending_error(tmp_path: Path) -> None:
    async with (
        approving_gateway(tmp_path, approval_mode="pending") as (rt, tokens),
        client_as(rt, tokens["alice"], elicitation_callback=None) as alice,
    ):
        answer = await call(alice, "hello")
        assert answer.is_error and "needs an operator's approval (id " in text_of(answer)
        approval_id = text_of(answer).split("(id ", 1)[1].split(",", 1)[0]
        assert await operator_decides(rt, tokens["alice"], approval_id) == 200
        assert text_of(await call(alice, "hello")) == "hello"
    assert audit_outcomes(rt, "key:alice") == [("pending", None), ("ok", "key:alice")]


async def test_modern_client_without_url_elicitation_is_held_in_hold_mode(tmp_path: Path) -> None:
    """No URL elicitation to show: the 2026-07-28 request itself waits for the operator, as a session's does."""
    store: ApprovalBackend | None = None
    async with (
        approving_gateway(tmp_path) as (rt, tokens),
        client_as(rt, tokens["alice"], elicitation_callback=None) as alice,
    ):
        results: list[Any] = []

        async def held() -> None:
            results.append(await call(alice, "hello"))

        store = approval_store(rt.config)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(held)
                with anyio.fail_after(20):
                    while not store.list("pending"):
                        await anyio.sleep(0.05)
                assert not results  # held, not refused
                assert await operator_decides(rt, tokens["alice"], store.list("pending")[0].id) == 200
            assert text_of(results[0]) == "hello"
        finally:
            store.close()
    assert audit_outcomes(rt, "key:alice") == [("ok", "key:alice")]


async def test_session_client_sees_the_url_elicitation_while_held(tmp_path: Path) -> None:
    asked: list[types.ElicitRequestURLParams] = []
    completed: list[str] = []

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        asked.append(params)
        return types.ElicitResult(action="accept")  # the user opened the page; that approves nothing

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            completed.append(message.params.elicitation_id)

    async with (
        approving_gateway(tmp_path) as (rt, tokens),
        client_as(rt, tokens["alice"], "legacy", elicitation_callback=on_elicit, message_handler=on_message) as alice,
    ):
        results: list[types.CallToolResult] = []

        async def held() -> None:
            results.append(await alice.call_tool(TOOL, {"text": "held"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            with anyio.fail_after(15):
                while not asked:
                    await anyio.sleep(0.05)
            ask = asked[0]
            approval_id = ask.url.rsplit("/", 1)[1]
            assert ask.url == f"http://127.0.0.1:{rt.port}/admin/approvals/{approval_id}"
            assert TOOL in ask.message and approval_id in ask.message and ask.elicitation_id
            store = approval_store(rt.config)
            try:  # the client answered "accept": the call is still held, the approval still pending
                assert store.get(approval_id).status == "pending" and not results
            finally:
                store.close()
            assert await operator_decides(rt, tokens["alice"], approval_id) == 200
        assert text_of(results[0]) == "held"
        with anyio.fail_after(5):
            while not completed:
                await anyio.sleep(0.05)
        assert completed == [ask.elicitation_id]
    assert audit_outcomes(rt, "key:alice") == [("ok", "key:alice")]
