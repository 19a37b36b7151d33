"""The back channel end to end: an upstream's log lines, elicitations and sampling requests reach
only the client whose call caused them (issue 8, item 2).

Two principals (two API keys) call one upstream at the same time; the fixture
(`tests.servers.backchannel`) holds each call until both are in flight, then logs, elicits and
samples with the caller's marker. A message carrying the other principal's marker, or an answer
that came from the other principal, counts as misrouted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import key_store, make_config, stdio_server
from tests.test_fixtures import http_server
from toolcrib.app import Running, running_gateway

pytestmark = pytest.mark.anyio

FIXTURE = "tests.servers.backchannel"
TOOL = "bc__converse"
PRINCIPALS = ("alice", "bob")
ROUNDS = 100


@dataclass
class Seen:
    """What one principal's client was sent by the gateway, by kind."""

    name: str
    logs: list[str] = field(default_factory=list)
    elicits: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def all(self) -> Iterator[str]:
        yield from self.logs
        yield from self.elicits
        yield from self.samples

    def foreign(self) -> int:
        """Messages carrying another principal's marker."""
        return sum(1 for text in self.all() if not _own(text, self.name))


def _own(text: str, name: str) -> bool:
    return text.split(" ", 1)[-1].startswith(f"{name}-")


@asynccontextmanager
async def keyed_gateway(tmp_path: Path, server: dict[str, Any]) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    cfg = make_config({"bc": server}, tmp_path, {"default": "allow"}, mode="passthrough", auth="keys")
    keys = key_store(cfg)
    tokens = {name: keys.add(name, ["users"]) for name in PRINCIPALS}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


@asynccontextmanager
async def client_for(rt: Running, token: str, seen: Seen) -> AsyncIterator[Client]:
    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        text = content.text if isinstance(content, types.TextContent) else ""
        seen.samples.append(text)
        reply = types.TextContent(type="text", text=f"{seen.name} answered {text}")
        return types.CreateMessageResult(role="assistant", content=reply, model="test", stop_reason="endTurn")

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.elicits.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": f"{seen.name} answered {params.message}"})

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        seen.logs.append(str(params.data))

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(
            streamable_http_client(rt.url, http_client=http),
            mode="legacy",
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            logging_callback=logging,
        ) as client,
    ):
        yield client


def _outcome(result: types.CallToolResult) -> dict[str, Any]:
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def _wrong_answers(outcome: dict[str, Any], name: str, marker: str) -> int:
    """Answers that did not come from this call's own client (0, 1 or 2)."""
    elicited = (outcome.get("elicited") or {}).get("answer")
    return int(elicited != f"{name} answered elicit {marker}") + int(
        outcome.get("sampled") != f"{name} answered sample {marker}"
    )


async def _settle(seen: dict[str, Seen], expected: int) -> None:
    """Log notifications are handled by the client after its call returns; wait for the stragglers."""
    with anyio.move_on_after(10):
        while sum(len(s.logs) for s in seen.values()) < expected:
            await anyio.sleep(0.05)


@contextmanager
def upstream(era: str) -> Iterator[dict[str, Any]]:
    flags = ("--legacy",) if era == "2025-11-25" else ()
    with http_server("backchannel", *flags) as url:
        yield {"url": url, "max_concurrency": 8}


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
async def test_two_principals_never_get_each_others_back_channel(tmp_path: Path, era: str) -> None:
    with upstream(era) as server:
        async with keyed_gateway(tmp_path, server) as (rt, tokens):
            assert rt.pool.upstream("bc").state.protocol_version == era
            seen = {name: Seen(name) for name in PRINCIPALS}
            wrong = 0
            async with (
                client_for(rt, tokens["alice"], seen["alice"]) as alice,
                client_for(rt, tokens["bob"], seen["bob"]) as bob,
            ):
                clients = {"alice": alice, "bob": bob}

                async def one(name: str, round_no: int) -> None:
                    nonlocal wrong
                    marker = f"{name}-{round_no}"
                    args = {"marker": marker, "group": f"{era}-{round_no}", "parties": 2}
                    with anyio.fail_after(30):
                        result = await clients[name].call_tool(TOOL, args)
                    assert not result.is_error, result
                    wrong += _wrong_answers(_outcome(result), name, marker)

                for round_no in range(ROUNDS):
                    async with anyio.create_task_group() as tg:
                        for name in PRINCIPALS:
                            tg.start_soon(one, name, round_no)
                await _settle(seen, ROUNDS * len(PRINCIPALS))
            delivered = sum(len(list(s.all())) for s in seen.values())
            misrouted = sum(s.foreign() for s in seen.values()) + wrong
            print(f"\n{era}: misrouted {misrouted} of {delivered} messages ({ROUNDS} rounds, 2 principals)")
            assert misrouted == 0
            for s in seen.values():
                assert (len(s.logs), len(s.elicits), len(s.samples)) == (ROUNDS, ROUNDS, ROUNDS), s.name


async def test_stdio_refuses_what_it_cannot_attribute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Over stdio nothing says which call a message belongs to: with one call in flight it can
    only be that call's; with two, the elicitation is refused and the log line dropped, each
    kind reported in one (rate-limited) warning."""
    caplog.set_level(logging.WARNING, logger="toolcrib.upstream.backchannel")
    server = stdio_server(FIXTURE, "--legacy", max_concurrency=8)
    async with keyed_gateway(tmp_path, server) as (rt, tokens):
        assert rt.pool.upstream("bc").state.protocol_version == "2025-11-25"
        seen = {name: Seen(name) for name in PRINCIPALS}
        async with (
            client_for(rt, tokens["alice"], seen["alice"]) as alice,
            client_for(rt, tokens["bob"], seen["bob"]) as bob,
        ):
            results: dict[str, types.CallToolResult] = {}

            async def one(name: str, client: Client) -> None:
                args = {"marker": f"{name}-1", "group": "both", "parties": 2, "steps": "log,elicit"}
                with anyio.fail_after(30):
                    results[name] = await client.call_tool(TOOL, args)

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "alice", alice)
                tg.start_soon(one, "bob", bob)
            for name, result in results.items():
                assert result.is_error, name
                outcome = _outcome(result)
                assert outcome["elicited"] is None
                assert [r.split(":")[0] for r in outcome["refused"]] == ["elicit"]
            assert [list(s.all()) for s in seen.values()] == [[], []]
            warnings = [r.getMessage() for r in caplog.records if r.name == "toolcrib.upstream.backchannel"]
            assert len([w for w in warnings if "refused its elicitation/create" in w]) == 1, warnings
            assert len([w for w in warnings if "dropped a log message" in w]) == 1, warnings

            with anyio.fail_after(30):
                single = await alice.call_tool(TOOL, {"marker": "alice-2", "steps": "log,elicit"})
            assert not single.is_error, single
            assert _outcome(single)["elicited"] == {"answer": "alice answered elicit alice-2"}
            await _settle({"alice": seen["alice"]}, 1)
            assert seen["alice"].logs == ["log alice-2"]
            assert seen["alice"].elicits == ["elicit alice-2"]
            assert list(seen["bob"].all()) == []
