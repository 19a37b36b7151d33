"""Multi-round-trip requests (MRTR, SEP-2322, MCP 2026-07-28) through toolcrib, end to end.

Real processes: toolcrib in front of ``tests.servers.mrtr`` (stdio or Streamable HTTP, either era),
real SDK clients over HTTP with API keys for two principals (alice, bob):

- 2026-07-28 client, 2026-07-28 upstream: the upstream's ``input_required`` is relayed (passthrough
  and ``invoke``), for tools, prompts and resources, over several rounds;
- a ``requestState`` tampered with, or echoed by another principal, is refused with -32602;
- translation A: a 2025-11-25 upstream's mid-call requests become ``input_required`` rounds;
- translation B: a 2025-11-25 session calling a 2026-07-28 upstream is asked on its session;
- a 2026-07-28 client without the needed capability gets -32021 with ``requiredCapabilities``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import key_store, make_config, stdio_server
from tests.test_fixtures import http_server
from toolcrib.app import Running, running_gateway

pytestmark = pytest.mark.anyio

FIXTURE = "tests.servers.mrtr"
PRINCIPALS = ("alice", "bob")
MODERN = "2026-07-28"


@contextmanager
def upstream(era: str, transport: str = "stdio") -> Iterator[dict[str, Any]]:
    """A [servers.m] table for the fixture speaking ``era`` (the handshake era with --legacy)."""
    flags = ("--legacy",) if era != MODERN else ()
    if transport == "stdio":
        yield stdio_server(FIXTURE, *flags)
        return
    with http_server("mrtr", *flags) as url:
        yield {"url": url}


@asynccontextmanager
async def keyed_gateway(
    tmp_path: Path, server: dict[str, Any], mode: str = "passthrough"
) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    cfg = make_config({"m": server}, tmp_path, {"default": "allow"}, mode=mode, auth="keys")
    keys = key_store(cfg)
    tokens = {name: keys.add(name, ["users"]) for name in PRINCIPALS}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


class Answers:
    """A client's callbacks: elicitations answered ``<name>-<n>``, sampling ``<name> says hi``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[str] = []
        self.elicited = 0

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params.message)
        self.elicited += 1
        return types.ElicitResult(action="accept", content={"answer": f"{self.name}-{self.elicited}"})

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append("sample")
        reply = types.TextContent(type="text", text=f"{self.name} says hi")
        return types.CreateMessageResult(role="assistant", content=reply, model="test", stop_reason="endTurn")

    async def roots(self, context: Any) -> types.ListRootsResult:
        self.asked.append("roots")
        return types.ListRootsResult(
            roots=[
                types.Root.model_validate({"uri": "file:///work/alpha"}),
                types.Root.model_validate({"uri": "file:///work/beta"}),
            ]
        )


@asynccontextmanager
async def client(
    rt: Running, token: str, answers: Answers | None = None, *, era: str = MODERN, **declared: bool
) -> AsyncIterator[Client]:
    """An SDK client of ``era`` (``2026-07-28`` stateless or ``legacy`` session); with ``answers``
    it declares (and answers) elicitation, sampling and roots unless ``declared`` turns one off."""
    kw: dict[str, Any] = {}
    if answers is not None:
        if declared.get("elicitation", True):
            kw["elicitation_callback"] = answers.elicit
        if declared.get("sampling", True):
            kw["sampling_callback"] = answers.sample
        if declared.get("roots", True):
            kw["list_roots_callback"] = answers.roots
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(
            streamable_http_client(rt.url, http_client=http),
            mode="legacy" if era != MODERN else "auto",
            cache=None,
            **kw,
        ) as c,
    ):
        assert c.protocol_version == (MODERN if era == MODERN else "2025-11-25")
        yield c


def text(result: Any) -> str:
    if isinstance(result, types.CallToolResult):
        assert not result.is_error, result
        return "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    if isinstance(result, types.GetPromptResult):
        content = result.messages[0].content
        assert isinstance(content, types.TextContent)
        return content.text
    contents = result.contents[0]
    assert isinstance(contents, types.TextResourceContents)
    return contents.text


async def tool(c: Client, dispatcher: bool, name: str, args: dict[str, Any] | None = None) -> str:
    with anyio.fail_after(30):
        if dispatcher:
            return text(await c.call_tool("invoke", {"tool": f"m__{name}", "arguments": args or {}}))
        return text(await c.call_tool(f"m__{name}", args or {}))


# ---- relay and translation A: a 2026-07-28 client, driven by the SDK --------------------------


@pytest.mark.parametrize(
    ("era", "transport", "mode"),
    [
        (MODERN, "stdio", "passthrough"),
        (MODERN, "stdio", "dispatcher"),
        ("2025-11-25", "stdio", "passthrough"),
        ("2025-11-25", "http", "dispatcher"),
    ],
)
async def test_modern_client_answers_rounds(tmp_path: Path, era: str, transport: str, mode: str) -> None:
    """Every kind of input request, and several rounds in a row, reach a 2026-07-28 client as
    input_required rounds: relayed from a 2026-07-28 upstream, translated from a 2025-11-25 one."""
    with upstream(era, transport) as server:
        async with keyed_gateway(tmp_path, server, mode) as (rt, tokens):
            assert rt.pool.upstream("m").state.protocol_version == era
            answers = Answers("alice")
            dispatcher = mode == "dispatcher"
            async with client(rt, tokens["alice"], answers) as c:
                assert await tool(c, dispatcher, "ask", {"question": "colour?"}) == "answer: alice-1"
                assert await tool(c, dispatcher, "sample", {"prompt": "hello"}) == "sampled: alice says hi"
                assert await tool(c, dispatcher, "roots") == "roots: file:///work/alpha,file:///work/beta"
                assert await tool(c, dispatcher, "interview", {"rounds": 3}) == "answers: alice-2,alice-3,alice-4"
                assert answers.asked == ["colour?", "sample", "roots", "question 1", "question 2", "question 3"]
                with anyio.fail_after(30):
                    assert text(await c.get_prompt("m__greeting")) == "Hello alice-5"
                    assert text(await c.read_resource("m+mrtr://answer")) == "answer: alice-6"


async def _first_round(c: Client, name: str, args: dict[str, Any]) -> types.InputRequiredResult:
    with anyio.fail_after(30):
        first = await c.session.call_tool(name, args, allow_input_required=True)
    assert isinstance(first, types.InputRequiredResult), first
    assert first.input_requests and first.request_state and first.request_state.startswith("tc1.")
    return first


def _accept(answer: str) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": answer})


@pytest.mark.parametrize("era", [MODERN, "2025-11-25"])
async def test_request_state_is_bound_to_its_principal(tmp_path: Path, era: str) -> None:
    """alice's requestState, modified or echoed by bob, is refused (-32602); alice's own resumes."""
    with upstream(era) as server:
        async with (
            keyed_gateway(tmp_path, server) as (rt, tokens),
            client(rt, tokens["alice"], Answers("alice")) as alice,
            client(rt, tokens["bob"], Answers("bob")) as bob,
        ):
            first = await _first_round(alice, "m__interview", {"rounds": 2})
            ((key, request),) = first.input_requests.items()  # type: ignore[union-attr]
            assert isinstance(request, types.ElicitRequest)
            state = first.request_state
            assert state is not None
            tampered = state[:-6] + ("AAAAAA" if not state.endswith("AAAAAA") else "BBBBBB")
            for who, token in ((bob, state), (alice, tampered), (alice, "not-a-token")):
                with pytest.raises(MCPError) as refused:
                    await who.session.call_tool(
                        "m__interview",
                        {"rounds": 2},
                        input_responses={key: _accept("stolen")},
                        request_state=token,
                        allow_input_required=True,
                    )
                assert refused.value.error.code == types.INVALID_PARAMS
                assert "requestState is invalid or expired" in refused.value.error.message
            # a requestState for another target is refused too
            with pytest.raises(MCPError) as other:
                await alice.session.call_tool(
                    "m__ask", {}, input_responses={key: _accept("x")}, request_state=state, allow_input_required=True
                )
            assert other.value.error.code == types.INVALID_PARAMS
            with anyio.fail_after(30):
                second = await alice.session.call_tool(
                    "m__interview",
                    {"rounds": 2},
                    input_responses={key: _accept("one")},
                    request_state=state,
                    allow_input_required=True,
                )
            assert isinstance(second, types.InputRequiredResult)
            assert second.input_requests is not None and second.request_state is not None
            ((key2, _),) = second.input_requests.items()
            with anyio.fail_after(30):
                done = await alice.session.call_tool(
                    "m__interview",
                    {"rounds": 2},
                    input_responses={key2: _accept("two")},
                    request_state=second.request_state,
                    allow_input_required=True,
                )
            assert text(done) == "answers: one,two"


async def test_parked_call_asks_again_for_a_missing_answer(tmp_path: Path) -> None:
    """Translation A: a retry without the answer re-requests it; an older round's token is refused."""
    with upstream("2025-11-25") as server:
        async with keyed_gateway(tmp_path, server) as (rt, tokens), client(rt, tokens["alice"], Answers("a")) as c:
            first = await _first_round(c, "m__ask", {"question": "name?"})
            assert first.input_requests is not None
            ((key, request),) = first.input_requests.items()
            assert isinstance(request, types.ElicitRequest) and request.params.message == "name?"
            with anyio.fail_after(30):
                again = await c.session.call_tool(
                    "m__ask", {"question": "name?"}, request_state=first.request_state, allow_input_required=True
                )
            assert isinstance(again, types.InputRequiredResult) and again.input_requests is not None
            assert list(again.input_requests) == [key]
            with pytest.raises(MCPError) as stale:
                await c.session.call_tool(
                    "m__ask",
                    {"question": "name?"},
                    input_responses={key: _accept("late")},
                    request_state=first.request_state,
                    allow_input_required=True,
                )
            assert stale.value.error.code == types.INVALID_PARAMS
            with anyio.fail_after(30):
                done = await c.session.call_tool(
                    "m__ask",
                    {"question": "name?"},
                    input_responses={key: _accept("Ada")},
                    request_state=again.request_state,
                    allow_input_required=True,
                )
            assert text(done) == "answer: Ada"
            parking = rt.parts.gateway.mrtr.parking
            with anyio.fail_after(5):  # the parked call is forgotten once its result was collected
                while parking.calls:
                    await anyio.sleep(0.05)


# ---- translation B: a 2025-11-25 session, a 2026-07-28 upstream --------------------------------


@pytest.mark.parametrize("mode", ["passthrough", "dispatcher"])
async def test_session_client_is_asked_on_its_session(tmp_path: Path, mode: str) -> None:
    with upstream(MODERN) as server:
        async with keyed_gateway(tmp_path, server, mode) as (rt, tokens):
            answers = Answers("bob")
            async with client(rt, tokens["bob"], answers, era="legacy") as c:
                dispatcher = mode == "dispatcher"
                assert await tool(c, dispatcher, "interview", {"rounds": 2}) == "answers: bob-1,bob-2"
                assert await tool(c, dispatcher, "sample") == "sampled: bob says hi"
                assert await tool(c, dispatcher, "roots") == "roots: file:///work/alpha,file:///work/beta"
                with anyio.fail_after(30):
                    assert text(await c.get_prompt("m__greeting")) == "Hello bob-3"
                assert answers.asked == ["question 1", "question 2", "sample", "roots", "your name?"]


# ---- capabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize("era", [MODERN, "2025-11-25"])
async def test_missing_capability_is_32021(tmp_path: Path, era: str) -> None:
    """A 2026-07-28 client that declared no elicitation (or roots) gets -32021 naming what it lacks."""
    with upstream(era) as server:
        async with keyed_gateway(tmp_path, server) as (rt, tokens):
            answers = Answers("alice")
            async with client(rt, tokens["alice"], answers, elicitation=False, roots=False) as c:
                for name, needed in (("ask", "elicitation"), ("roots", "roots")):
                    with pytest.raises(MCPError) as refused, anyio.fail_after(30):
                        await c.call_tool(f"m__{name}", {})
                    assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
                    data = refused.value.error.data
                    assert isinstance(data, dict) and needed in data["requiredCapabilities"], data
                # what it declared still works
                assert await tool(c, False, "sample") == "sampled: alice says hi"
