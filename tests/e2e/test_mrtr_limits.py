"""MRTR (SEP-2322) through toolcrib at its edges: redaction, audit, parked-call limits, the back channel.

Real processes: toolcrib in front of ``tests.servers.mrtr`` over stdio (2026-07-28, or 2025-11-25 with
``--legacy``: a stdio upstream relates none of its server requests to a call), real SDK clients over
HTTP with API keys for alice and bob.

- every input request toolcrib relays or translates has known secrets scrubbed;
- each ``input_required`` round is an audit call row completed with outcome ``pending``; a forged
  ``requestState`` is refused before anything is audited or forwarded;
- ``[gateway] input_wait``: an abandoned parked call is cancelled upstream, its token then refused;
- the back channel's rule for unrelated server requests (2025-11-25 stdio): a principal's own
  abandoned call does not block its next one; another principal's waiting call does, and neither
  sees the other's request;
- unknown ``inputResponses`` keys next to the expected ones are ignored, on both paths.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import audit_log, key_store, make_config, stdio_server
from tests.e2e.test_mrtr import FIXTURE, MODERN, PRINCIPALS, Answers, client, text
from toolcrib.app import Running, running_gateway
from toolcrib.config import parse_config
from toolcrib.errors import ConfigError
from toolcrib.gateway.trust.redaction import REDACTED

pytestmark = pytest.mark.anyio

LEGACY = "2025-11-25"
CANARY = "Canary-4b1e9d7a2c6f3580"


@pytest.fixture(autouse=True)
def _known_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value of the fixture's ``secret:m/secret``, as toolcrib reads it."""
    monkeypatch.setenv("TOOLCRIB_SECRET_M_SECRET", CANARY)


@asynccontextmanager
async def gateway(tmp_path: Path, era: str, **options: Any) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    """toolcrib (passthrough, keys auth) in front of the stdio fixture speaking ``era``; the fixture's
    ``MRTR_SECRET`` is the ``secret:m/secret`` reference, which toolcrib resolves (and so redacts)."""
    server = stdio_server(FIXTURE, *(() if era == MODERN else ("--legacy",)), env={"MRTR_SECRET": "secret:m/secret"})
    cfg = make_config({"m": server}, tmp_path, {"default": "allow"}, mode="passthrough", auth="keys", **options)
    keys = key_store(cfg)
    tokens = {name: keys.add(name, ["users"]) for name in PRINCIPALS}
    async with running_gateway(cfg, connect_wait=20) as rt:
        assert rt.pool.upstream("m").state.protocol_version == era
        yield rt, tokens


async def round_of(
    c: Client, name: str, args: dict[str, Any] | None = None, state: str | None = None, /, **answers: Any
) -> Any:
    """One raw call (no automatic retry): the result, or the ``InputRequiredResult``."""
    responses: types.InputResponses | None = answers or None
    with anyio.fail_after(30):
        return await c.session.call_tool(
            f"m__{name}", args or {}, input_responses=responses, request_state=state, allow_input_required=True
        )


def only_request(result: Any) -> tuple[str, types.InputRequest, str]:
    """(key, request, requestState) of an ``input_required`` answer holding exactly one request."""
    assert isinstance(result, types.InputRequiredResult), result
    assert result.input_requests is not None and len(result.input_requests) == 1, result
    assert result.request_state is not None
    ((key, request),) = result.input_requests.items()
    return key, request, result.request_state


def accept(answer: str) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": answer})


async def ledger(c: Client) -> dict[str, Any]:
    """What the fixture process saw: ``{"calls": {item: n}, "cancelled": [item, ...]}``."""
    with anyio.fail_after(30):
        seen: dict[str, Any] = json.loads(text(await c.call_tool("m__ledger", {})))
    return seen


def audited(rt: Running, principal: str, tool: str) -> list[tuple[int, str | None]]:
    """(call row seq, outcome) of each call ``principal`` made at ``tool``, oldest first (None while
    the row is not completed)."""
    with audit_log(rt.config) as audit:
        calls = audit.query(principal=principal, tool=tool, kind="call", limit=100)
    return [(c["seq"], c["outcome"] if c["completed"] is not None else None) for c in calls]


# ---- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_input_requests_are_redacted(tmp_path: Path, era: str) -> None:
    """``secretive`` puts a known secret in an elicitation's message and schema, then in a sampling
    request's message and system prompt: relayed (2026-07-28 upstream) or translated (a parked
    2025-11-25 upstream's mid-call requests), the client sees it scrubbed in every place."""
    async with gateway(tmp_path, era) as (rt, tokens), client(rt, tokens["alice"], Answers("alice")) as c:
        key, ask, state = only_request(await round_of(c, "secretive"))
        assert isinstance(ask, types.ElicitRequest) and isinstance(ask.params, types.ElicitRequestFormParams)
        assert ask.params.message == f"the password is {REDACTED}; confirm?"
        assert ask.params.requested_schema["properties"]["answer"]["description"] == f"type {REDACTED} again"
        key2, sample, state2 = only_request(await round_of(c, "secretive", None, state, **{key: accept("yes")}))
        assert isinstance(sample, types.CreateMessageRequest)
        content = sample.params.messages[0].content
        assert isinstance(content, types.TextContent) and content.text == f"repeat {REDACTED}"
        assert sample.params.system_prompt == f"you know {REDACTED}"
        for seen in (ask, sample):
            assert CANARY.lower() not in seen.model_dump_json().lower()
        reply = types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="ok"), model="m", stop_reason="endTurn"
        )
        assert text(await round_of(c, "secretive", None, state2, **{key2: reply})) == "answer: yes,ok"


async def test_session_client_sees_redacted_requests(tmp_path: Path) -> None:
    """Translation B (a 2025-11-25 session, a 2026-07-28 upstream) scrubs the same requests."""
    seen: list[str] = []

    class Recording(Answers):
        async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            seen.append(params.model_dump_json())
            return await super().elicit(context, params)

        async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            seen.append(params.model_dump_json())
            return await super().sample(context, params)

    async with (
        gateway(tmp_path, MODERN) as (rt, tokens),
        client(rt, tokens["alice"], Recording("alice"), era="legacy") as c,
    ):
        with anyio.fail_after(30):
            assert text(await c.call_tool("m__secretive", {})) == "answer: alice-1,alice says hi"
    assert len(seen) == 2 and all(REDACTED in s and CANARY.lower() not in s.lower() for s in seen), seen


# ---- audit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_rounds_are_audited_and_forged_state_is_not_forwarded(tmp_path: Path, era: str) -> None:
    """Two ``input_required`` rounds are two call rows completed with outcome pending, the final
    retry a third call row with outcome ok; a forged ``requestState`` is refused (-32602) with no
    call row and without reaching the upstream."""
    async with gateway(tmp_path, era) as (rt, tokens), client(rt, tokens["alice"], Answers("alice")) as c:
        key, _, state = only_request(await round_of(c, "interview", {"rounds": 2}))
        key2, _, state2 = only_request(await round_of(c, "interview", {"rounds": 2}, state, **{key: accept("one")}))
        before = (await ledger(c))["calls"]
        forged = state2[:-4] + ("AAAA" if not state2.endswith("AAAA") else "BBBB")
        for bad in (forged, "tc1." + "A" * 60, "not-a-token"):
            with pytest.raises(MCPError) as refused:
                await round_of(c, "interview", {"rounds": 2}, bad, **{key2: accept("two")})
            assert refused.value.error.code == types.INVALID_PARAMS
            assert refused.value.error.message == "requestState is invalid or expired; retry the request without it"
        assert (await ledger(c))["calls"] == before  # nothing reached the upstream
        done = await round_of(c, "interview", {"rounds": 2}, state2, **{key2: accept("two")})
        assert text(done) == "answers: one,two"
        # a 2026-07-28 upstream answered each round as its own call; a parked 2025-11-25 call is one
        assert (await ledger(c))["calls"]["interview"] == (3 if era == MODERN else 1)
    rows = audited(rt, "key:alice", "m__interview")
    assert [outcome for _, outcome in rows] == ["pending", "pending", "ok"]
    assert len({seq for seq, _ in rows}) == 3


# ---- parked calls: [gateway] input_wait, the principal ------------------------------------------


def test_input_wait_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "toolcrib.toml"
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError) as err:
            parse_config({"gateway": {"input_wait": bad}}, path)
        first = str(err.value).splitlines()[0]
        assert first == f"{path}: gateway.input_wait: must be a positive number of seconds, such as 300"
    assert parse_config({"gateway": {"input_wait": 2.5}}, path).gateway.input_wait == 2.5
    assert parse_config({}, path).gateway.input_wait == 300


async def test_abandoned_parked_call_is_cancelled_upstream(tmp_path: Path) -> None:
    """With ``input_wait = 1`` a parked call nobody retries is cancelled upstream (the fixture sees
    ``notifications/cancelled`` while it waits for its answer) and its requestState is then refused."""
    async with (
        gateway(tmp_path, LEGACY, input_wait=1) as (rt, tokens),
        client(rt, tokens["alice"], Answers("alice")) as c,
    ):
        parking = rt.parts.gateway.mrtr.parking
        assert parking.ttl == 1
        key, _, state = only_request(await round_of(c, "ask", {"question": "still there?"}))
        with anyio.fail_after(20):
            while "ask" not in (await ledger(c))["cancelled"]:
                await anyio.sleep(0.2)
        with anyio.fail_after(10):
            while parking.calls:
                await anyio.sleep(0.05)
        with pytest.raises(MCPError) as refused:
            await round_of(c, "ask", {"question": "still there?"}, state, **{key: accept("late")})
        assert refused.value.error.code == types.INVALID_PARAMS
        # the upstream is fine: a new call works (given time for its retry on a loaded machine)
        parking.ttl = 30
        key, _, state = only_request(await round_of(c, "ask", {"question": "again?"}))
        assert text(await round_of(c, "ask", {"question": "again?"}, state, **{key: accept("yes")})) == "answer: yes"
    assert [outcome for _, outcome in audited(rt, "key:alice", "m__ask")] == ["pending", "pending", "ok"]


async def test_parked_call_is_bound_to_its_principal(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, LEGACY) as (rt, tokens),
        client(rt, tokens["alice"], Answers("alice")) as alice,
        client(rt, tokens["bob"], Answers("bob")) as bob,
    ):
        key, _, state = only_request(await round_of(alice, "ask", {"question": "alice's?"}))
        with pytest.raises(MCPError) as refused:
            await round_of(bob, "ask", {"question": "alice's?"}, state, **{key: accept("bob")})
        assert refused.value.error.code == types.INVALID_PARAMS
        assert len(rt.parts.gateway.mrtr.parking.calls) == 1  # bob's try did not disturb it
        assert text(await round_of(alice, "ask", {"question": "alice's?"}, state, **{key: accept("a")})) == "answer: a"


async def test_parked_state_is_bound_to_its_arguments_and_parking_is_capped(tmp_path: Path) -> None:
    """A retry with other arguments cannot resume a parked call (it runs its own, and the audit would
    name the others); one principal's parked calls are capped."""
    async with gateway(tmp_path, LEGACY) as (rt, tokens), client(rt, tokens["alice"], Answers("alice")) as alice:
        key, _, state = only_request(await round_of(alice, "ask", {"question": "q?"}))
        with pytest.raises(MCPError) as refused:
            await round_of(alice, "ask", {"question": "DIFFERENT"}, state, **{key: accept("x")})
        assert refused.value.error.code == types.INVALID_PARAMS
        assert text(await round_of(alice, "ask", {"question": "q?"}, state, **{key: accept("a")})) == "answer: a"
        parking = rt.parts.gateway.mrtr.parking
        parking.max_parked = 1
        only_request(await round_of(alice, "ask", {"question": "one?"}))
        with pytest.raises(MCPError) as capped:
            await round_of(alice, "ask", {"question": "two?"})
        assert capped.value.error.code == -32000 and "waiting for input already" in capped.value.error.message


# ---- the back channel of a stdio 2025-11-25 upstream ---------------------------------------------


async def test_own_abandoned_call_does_not_block_the_next(tmp_path: Path) -> None:
    """alice leaves a parked call waiting; her next call's elicitation (unrelated on stdio) is
    routed to that next call, the only one not waiting for an answer, since both act for her.
    Shutting toolcrib down then does not wait out the abandoned call (60 s upstream deadline)."""
    with anyio.fail_after(40):
        async with gateway(tmp_path, LEGACY) as (rt, tokens), client(rt, tokens["alice"], Answers("alice")) as c:
            _, first, _ = only_request(await round_of(c, "ask", {"question": "first?"}))
            assert isinstance(first, types.ElicitRequest) and first.params.message == "first?"
            key, second, state = only_request(await round_of(c, "ask", {"question": "second?"}))
            assert isinstance(second, types.ElicitRequest) and second.params.message == "second?"
            done = await round_of(c, "ask", {"question": "second?"}, state, **{key: accept("2")})
            assert text(done) == "answer: 2"
            assert len(rt.parts.gateway.mrtr.parking.calls) == 1  # the abandoned one, still waiting


async def test_other_principals_waiting_call_refuses_an_unrelated_request(tmp_path: Path) -> None:
    """bob's parked call is waiting; alice's call asks for input: the upstream's unrelated request
    could be either's, so it is refused (alice gets the clear error) and bob never sees it."""
    async with (
        gateway(tmp_path, LEGACY) as (rt, tokens),
        client(rt, tokens["alice"], Answers("alice")) as alice,
        client(rt, tokens["bob"], Answers("bob")) as bob,
    ):
        key, asked, state = only_request(await round_of(bob, "ask", {"question": "bob's question?"}))
        assert isinstance(asked, types.ElicitRequest) and asked.params.message == "bob's question?"
        seen_by_alice = json.dumps(await _outcome(round_of(alice, "ask", {"question": "alice's question?"})))
        assert "toolcrib cannot tell which client call this elicitation belongs to" in seen_by_alice
        assert "alice's question?" not in seen_by_alice
        again = await round_of(bob, "ask", {"question": "bob's question?"}, state)  # no answer: asked again
        key2, asked2, state2 = only_request(again)
        assert key2 == key and isinstance(asked2, types.ElicitRequest)
        assert "alice" not in again.model_dump_json()
        done = await round_of(bob, "ask", {"question": "bob's question?"}, state2, **{key: accept("b")})
        assert text(done) == "answer: b"
        assert (await ledger(alice))["calls"]["ask"] == 2


async def _outcome(pending: Any) -> Any:
    """The call's result as JSON, or its JSON-RPC error's message and data."""
    try:
        result = await pending
    except MCPError as exc:
        return {"error": exc.error.message, "data": exc.error.data}
    return result.model_dump(mode="json", by_alias=True)


# ---- unknown inputResponses keys ------------------------------------------------------------------


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_unknown_input_response_keys_are_ignored(tmp_path: Path, era: str) -> None:
    """A retry holding the expected answer plus unknown keys (well-formed or not an answer at all)
    is answered as if they were absent (SEP-2322: servers SHOULD ignore what they do not recognize)."""
    async with gateway(tmp_path, era) as (rt, tokens), client(rt, tokens["alice"], Answers("alice")) as c:
        key, _, state = only_request(await round_of(c, "interview", {"rounds": 2}))
        extra: dict[str, Any] = {
            "unknown_extra_key": types.ElicitResult(action="accept", content={"foo": "bar"}),
            "another_unexpected": types.ListRootsResult(roots=[]),
        }
        key2, _, state2 = only_request(
            await round_of(c, "interview", {"rounds": 2}, state, **{key: accept("one"), **extra})
        )
        assert key2 not in extra
        done = await round_of(c, "interview", {"rounds": 2}, state2, **{key2: accept("two"), key: accept("x"), **extra})
        assert text(done) == "answers: one,two"
        if era == MODERN:  # relayed: only the keys the upstream asked for in that round reached it
            assert (await ledger(c))["responses"] == [[], [key], [key2]]
