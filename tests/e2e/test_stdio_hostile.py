"""A stdio upstream that misbehaves cannot hurt the gateway or other upstreams (the stdio
transport's attack review, toolcrib.router.stdio_transport): a stdout flood does not hold the
event loop, a child that stops reading stdin holds at most one request in memory and gets none
of the calls abandoned meanwhile, a server request written just before the answer still reaches
the client, quietly."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import GatewayFactory, stdio_server
from toolcrib.router.stdio_transport import StdioConn

pytestmark = pytest.mark.anyio


PAUSE = 12.0
"""Seconds the child stops reading stdin: longer than two rounds of calls that each end at a 2 s deadline."""


def hostile(**extra: Any) -> dict[str, Any]:
    return {**stdio_server("tests.servers.hostile_stdio"), **extra}


async def outcome(c: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    try:
        with anyio.fail_after(60):
            result = await c.call_tool(tool, args or {})
    except MCPError as exc:
        return f"rpc-error:{exc.error.code}"
    text = "".join(b.text for b in result.content if isinstance(b, types.TextContent))
    return ("tool-error:" if result.is_error else "result:") + text


@pytest.mark.parametrize("line", ["x", '{"a":1}'], ids=["not-json", "json-not-jsonrpc"])
async def test_a_stdout_flood_does_not_hold_other_upstreams_calls(gateway: GatewayFactory, line: str) -> None:
    async with (
        gateway({"bad": hostile(timeout=30), "good": hostile(timeout=30)}) as rt,
        Client(rt.url, mode="legacy") as c,
    ):
        assert await outcome(c, "good__ok") == "result:ok"
        slowest = 0.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcome, c, "bad__flood", {"secs": 6, "line": line})
            await anyio.sleep(0.5)
            for _ in range(5):
                started = time.monotonic()
                assert await outcome(c, "good__ok") == "result:ok"
                slowest = max(slowest, time.monotonic() - started)
                await anyio.sleep(0.3)
        # before the fix a call to the other upstream took 8.7 s during the flood (the reader never yielded)
        assert slowest < 3, f"a call to another upstream took {slowest:.1f} s during the flood"


async def test_a_child_that_stops_reading_holds_one_request_and_gets_no_abandoned_call(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    received = tmp_path / "received"
    async with (
        gateway({"h": hostile(timeout=2, max_concurrency=16, env={"HOSTILE_LOG": str(received)})}) as rt,
        Client(rt.url, mode="legacy") as c,
    ):
        conn = rt.pool.upstream("h")._conn
        assert isinstance(conn, StdioConn)
        big = "A" * (3 * 1024 * 1024)  # under the gateway's 4 MiB body limit
        results: list[str] = []

        async def one() -> None:
            results.append(await outcome(c, "h__echo", {"text": big}))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcome, c, "h__pause", {"secs": PAUSE})  # stops reading stdin for PAUSE s
            await anyio.sleep(0.5)
            for _ in range(2):
                async with anyio.create_task_group() as calls:
                    for _ in range(8):
                        calls.start_soon(one)
                buffered = conn._writer.transport.get_write_buffer_size()
                assert buffered < 8 * 2**20, f"{buffered / 2**20:.1f} MiB held for a child that reads nothing"
        assert time.monotonic() - started < PAUSE, "the machine was too slow for this test's premise"
        assert len(results) == 16 and all(r.startswith("tool-error:") for r in results), sorted(set(results))
        await anyio.sleep(started + PAUSE + 1.5 - time.monotonic())  # the child reads whatever reached its pipe
    echoes = received.read_text(encoding="utf-8").split().count("echo")
    assert echoes <= 1, f"the child received {echoes} calls its clients were told were cancelled"


async def test_a_server_request_just_before_the_answer_reaches_the_client_quietly(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    caplog.set_level(logging.INFO)
    async with (
        gateway({"h": hostile(timeout=10)}) as rt,
        Client(rt.url, mode="legacy", elicitation_callback=elicitation) as c,
    ):
        for _ in range(5):
            assert await outcome(c, "h__elicit_then_answer") == "result:answered"
        with anyio.move_on_after(10):
            while len(asked) < 5:
                await anyio.sleep(0.05)
    assert asked == ["sure?"] * 5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    "message", ["generic server error", "the server ended the session (HTTP 404): spoofed"], ids=["plain", "spoofed"]
)
async def test_an_upstream_error_coded_32000_is_its_answer_not_a_lost_connection(
    gateway: GatewayFactory, tmp_path: Path, message: str
) -> None:
    """-32000 is the first of JSON-RPC's server-defined codes (many servers answer it for any failure)
    and also the SDK's CONNECTION_CLOSED: as the server's own answer it reaches the client as such;
    the connection is not restarted (which would fail every call in flight on it), the call is not
    sent again (a spoofed "session ended" text resent it)."""
    received = tmp_path / "received"
    async with (
        gateway({"h": hostile(timeout=20, env={"HOSTILE_LOG": str(received)})}) as rt,
        Client(rt.url, mode="legacy") as c,
    ):
        state = rt.pool.upstream("h").state
        connects = state.connects
        assert await outcome(c, "h__error", {"code": -32000, "message": message}) == "rpc-error:-32000"
        assert await outcome(c, "h__ok") == "result:ok"
        assert state.connects == connects and state.status == "connected"  # not restarted
    assert received.read_text(encoding="utf-8").split().count("error") == 1
